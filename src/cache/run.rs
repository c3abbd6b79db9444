//! Runs of missing chunks fetched by one upstream Range request with `If-Match` (bytes of
//! two versions never mix), split into chunks as they arrive and stored when complete.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use http::header::{IF_MATCH, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::inflight::{ChunkReader, Run, claim_run, lock};
use super::store::{ChunkKey, ObjectKey, ObjectMeta, StoredChunk};
use super::{CacheInner, to_usize};
use crate::body::UpstreamBody;
use crate::upstream::{self, Upstream};

/// Where a chunk's bytes come from.
pub(super) enum ChunkSource {
    /// Stored.
    Stored(StoredChunk),
    /// Being fetched.
    Filling(ChunkReader),
}

/// A chunk from the store (joined into one buffer if `join` and it is stored in pieces), from
/// the fetch in flight, or from a new fetch of the run of missing chunks starting here.
pub(super) async fn chunk_source(
    cache: &Arc<CacheInner>,
    upstream: &Arc<Upstream>,
    object: &ObjectKey,
    meta: &ObjectMeta,
    index: u64,
    join: bool,
) -> ChunkSource {
    let key = ChunkKey {
        object: object.clone(),
        etag: meta.etag.clone(),
        index,
    };
    loop {
        if let Some(chunk) = cache.store.chunk(&key, join).await {
            return ChunkSource::Stored(chunk);
        }
        let run = {
            let mut chunks = lock(&cache.fetches.chunks);
            if let Some(cell) = chunks.get(&key) {
                cache.metrics.collapsed.inc();
                return ChunkSource::Filling(cell.reader());
            }
            // Stored between our lookup and the lock: read it from the store.
            if cache.store.has_chunk(&key) {
                continue;
            }
            let chunk_count = meta.length.div_ceil(cache.chunk_size).max(1);
            let end = (index + cache.run_chunks).min(chunk_count);
            claim_run(&mut chunks, &cache.store, key.clone(), end)
        };
        let reader = run.first().map(|(_, cell)| cell.reader());
        let since = cache.store.generation();
        let fill = Fill::new(cache.clone(), run, meta.length, since);
        tokio::spawn(fill.run(upstream.clone(), meta.clone()));
        if let Some(reader) = reader {
            return ChunkSource::Filling(reader);
        }
    }
}

/// Bytes gathered before they are published to readers while more of the answer is ready
/// at once: fewer, larger pieces (fewer wake-ups and writes), and a piece never waits for
/// bytes that have not arrived.
const COALESCE: usize = 256 * 1024;

/// A run of consecutive chunks filled from one upstream response. Dropping it fails every
/// chunk not yet complete, so no reader waits for a fetch that ended.
pub(super) struct Fill {
    inner: Arc<CacheInner>,
    run: Run,
    /// The object's length: the last chunk may be short.
    length: u64,
    /// Index into `run` of the chunk being filled.
    current: usize,
    /// Bytes of the current chunk received.
    filled: u64,
    /// The current chunk's one buffer, sized to it: its part not yet published. Published
    /// pieces are slices of it, so the upstream's frames are released at once (its read
    /// buffer is reused instead of reallocated, which would fault in fresh memory), and the
    /// store keeps them as they are until a hit joins them.
    buf: BytesMut,
    /// The store's purge generation before the fetch.
    since: u64,
}

impl Fill {
    /// A fill whose fetch starts after the store's purge generation `since` was read.
    pub(super) fn new(inner: Arc<CacheInner>, run: Run, length: u64, since: u64) -> Self {
        Fill {
            inner,
            run,
            length,
            current: 0,
            filled: 0,
            buf: BytesMut::new(),
            since,
        }
    }

    /// Fetches the run's bytes with `If-Match`, so a changed object fails instead of mixing.
    pub(super) async fn run(self, upstream: Arc<Upstream>, meta: ObjectMeta) {
        let Some(((first_key, _), (last_key, _))) = self.run.first().zip(self.run.last()) else {
            return;
        };
        let chunk = self.inner.chunk_size;
        let start = first_key.index * chunk;
        let end = ((last_key.index + 1) * chunk).min(meta.length);
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, range_header(start, end.saturating_sub(1)));
        headers.insert(IF_MATCH, meta.etag_header.clone());
        self.inner.metrics.upstream_fetches.inc();
        let object = first_key.object.clone();
        match upstream.fetch(Method::GET, &object.key, headers).await {
            Ok(response) if response.status() == StatusCode::PARTIAL_CONTENT => {
                self.stream(response.into_body()).await;
            }
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::PRECONDITION_FAILED | StatusCode::NOT_FOUND
                ) =>
            {
                tracing::info!(key = %object.key, status = %response.status(), "object changed or deleted while cached: metadata dropped");
                self.inner.store.forget_meta(&object).await;
            }
            Ok(response) => {
                let error = upstream::upstream_status_error(response).await;
                tracing::warn!(key = %object.key, error = %error.detail(), "chunk fetch failed");
            }
            Err(error) if !error.is_server_fault() => {
                tracing::debug!(key = %object.key, error = %error.detail(), "chunk fetch failed");
            }
            Err(error) => {
                tracing::warn!(key = %object.key, error = %error.detail(), "chunk fetch failed");
            }
        }
    }

    /// Copies the body into the run's chunks as it arrives; stores each complete chunk.
    pub(super) async fn stream(mut self, mut body: UpstreamBody) {
        while self.current < self.run.len() {
            // What is ready now is gathered; before waiting, what was gathered is published.
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    self.publish();
                    body.frame().await
                }
            };
            let frame = match frame {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    tracing::warn!(%error, "upstream body failed mid-chunk");
                    return;
                }
                None => {
                    tracing::warn!("upstream body ended short of the chunk");
                    return;
                }
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            while !data.is_empty() && self.current < self.run.len() {
                let expected = self.expected_len();
                if self.filled == 0 {
                    let (buf, reused) = self.inner.store.pool().take(to_usize(expected));
                    if reused {
                        self.inner.metrics.buffers_reused.inc();
                    }
                    self.buf = buf;
                }
                let want = usize::try_from(expected - self.filled).unwrap_or(usize::MAX);
                let take = want.min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data.advance(take);
                self.filled += take as u64;
                if self.filled == expected {
                    self.publish();
                    self.complete().await;
                } else if self.buf.len() >= COALESCE {
                    self.publish();
                }
            }
        }
    }

    /// Hands the gathered bytes of the current chunk to its readers.
    fn publish(&mut self) {
        if let Some((_, cell)) = self.run.get(self.current)
            && !self.buf.is_empty()
        {
            cell.push(self.buf.split().freeze());
        }
    }

    /// Length of the chunk being filled.
    fn expected_len(&self) -> u64 {
        let chunk = self.inner.chunk_size;
        let start = self.run[self.current].0.index * chunk;
        (start + chunk).min(self.length) - start
    }

    /// Stores the current chunk and moves to the next.
    async fn complete(&mut self) {
        let (key, cell) = &self.run[self.current];
        let pieces = cell.finish();
        if self.length <= self.inner.max_object_size {
            self.inner
                .store
                .put_chunk(key.clone(), StoredChunk::from_pieces(pieces), self.since)
                .await;
            self.inner.metrics.chunks_stored.inc();
        }
        // Stored first, then unregistered: a reader finds it in one place or the other.
        lock(&self.inner.fetches.chunks).remove(key);
        self.current += 1;
        self.filled = 0;
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let unfinished = self.run.get(self.current..).unwrap_or_default();
        if unfinished.is_empty() {
            return;
        }
        self.inner.metrics.fetch_failures.inc();
        let mut chunks = lock(&self.inner.fetches.chunks);
        for (key, cell) in unfinished {
            cell.fail();
            chunks.remove(key);
        }
    }
}

pub(super) fn range_header(first: u64, last: u64) -> HeaderValue {
    let mut value = String::with_capacity(32);
    value.push_str("bytes=");
    value.push_str(&first.to_string());
    value.push('-');
    value.push_str(&last.to_string());
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("bytes=0-"))
}
