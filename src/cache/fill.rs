//! Collapsed, streaming fetches: every missing chunk has exactly one fetch in flight, which
//! readers follow frame by frame while it arrives (the first byte never waits for the whole
//! chunk), and which stores the chunk when it is complete. A failed fetch stores nothing and
//! fails only the readers of that attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::header::{
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LAST_MODIFIED,
    RANGE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::CacheInner;
use super::store::{ChunkKey, MetaState, ObjectKey, ObjectMeta, StoredMeta};
use crate::error::GatewayError;
use crate::route::FileKind;
use crate::upstream::{self, Upstream, UpstreamBody};

/// At most this many chunks are fetched by one upstream request.
pub const MAX_RUN_CHUNKS: u64 = 16;

/// A fetch ended before its chunk was complete.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("upstream fetch of a chunk failed")]
pub struct FillFailed;

/// One chunk being fetched: the frames so far, then the whole chunk or a failure.
#[derive(Debug)]
pub struct ChunkCell {
    state: Mutex<CellState>,
    changed: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct CellState {
    frames: Vec<Bytes>,
    filled: usize,
    outcome: Option<Result<Bytes, FillFailed>>,
}

impl ChunkCell {
    fn new() -> Arc<Self> {
        Arc::new(ChunkCell {
            state: Mutex::new(CellState::default()),
            changed: watch::channel(()).0,
        })
    }

    fn push(&self, frame: Bytes) {
        {
            let mut state = lock(&self.state);
            state.filled += frame.len();
            state.frames.push(frame);
        }
        self.changed.send_replace(());
    }

    /// Completes the chunk: one contiguous buffer, exactly sized, for the store.
    fn finish(&self) -> Option<Bytes> {
        let bytes = {
            let mut state = lock(&self.state);
            let frames = std::mem::take(&mut state.frames);
            let bytes = if frames.len() == 1 {
                frames.into_iter().next().unwrap_or_default()
            } else {
                let mut buf = BytesMut::with_capacity(state.filled);
                for frame in &frames {
                    buf.extend_from_slice(frame);
                }
                buf.freeze()
            };
            state.outcome = Some(Ok(bytes.clone()));
            bytes
        };
        self.changed.send_replace(());
        Some(bytes)
    }

    fn fail(&self) {
        {
            let mut state = lock(&self.state);
            if state.outcome.is_none() {
                state.frames.clear();
                state.outcome = Some(Err(FillFailed));
            }
        }
        self.changed.send_replace(());
    }

    /// Follows the chunk from its first byte.
    pub fn reader(self: &Arc<Self>) -> ChunkReader {
        ChunkReader {
            changed: self.changed.subscribe(),
            cell: self.clone(),
            frame: 0,
            offset: 0,
        }
    }
}

/// Reads a chunk as it arrives.
#[derive(Debug)]
pub struct ChunkReader {
    cell: Arc<ChunkCell>,
    changed: watch::Receiver<()>,
    frame: usize,
    offset: usize,
}

impl ChunkReader {
    /// The next bytes of the chunk; `None` at its end.
    pub async fn next(&mut self) -> Option<Result<Bytes, FillFailed>> {
        loop {
            {
                let state = lock(&self.cell.state);
                match &state.outcome {
                    Some(Ok(all)) => {
                        if self.offset >= all.len() {
                            return None;
                        }
                        let rest = all.slice(self.offset..);
                        self.offset = all.len();
                        return Some(Ok(rest));
                    }
                    Some(Err(e)) => return Some(Err(*e)),
                    None => {
                        if let Some(frame) = state.frames.get(self.frame) {
                            self.frame += 1;
                            self.offset += frame.len();
                            return Some(Ok(frame.clone()));
                        }
                    }
                }
            }
            // Subscribed before the state was read, so no update is missed.
            if self.changed.changed().await.is_err() {
                return Some(Err(FillFailed));
            }
        }
    }
}

/// A probe's answer: fresh metadata, and whether the backend confirmed an unchanged object.
#[derive(Debug, Clone)]
pub struct Probed {
    /// The metadata now stored.
    pub meta: Arc<StoredMeta>,
    /// The backend answered 304 to our validator.
    pub unchanged: bool,
}

type ProbeResult = Option<Result<Probed, Arc<GatewayError>>>;

/// Fetches in flight, so concurrent misses share one.
#[derive(Debug, Default)]
pub struct Inflight {
    chunks: Mutex<HashMap<ChunkKey, Arc<ChunkCell>>>,
    probes: Mutex<HashMap<ObjectKey, watch::Receiver<ProbeResult>>>,
}

/// Where a chunk's bytes come from.
pub enum ChunkSource {
    /// Stored.
    Stored(Bytes),
    /// Being fetched.
    Filling(ChunkReader),
}

impl CacheInner {
    /// A chunk from the store, from the fetch in flight, or from a new fetch of the run of
    /// missing chunks starting here.
    pub async fn chunk_source(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        object: &ObjectKey,
        meta: &ObjectMeta,
        index: u64,
    ) -> ChunkSource {
        let key = ChunkKey {
            object: object.clone(),
            etag: meta.etag.clone(),
            index,
        };
        loop {
            if let Some(bytes) = self.store.chunk(&key).await {
                return ChunkSource::Stored(bytes);
            }
            let run = {
                let mut chunks = lock(&self.inflight.chunks);
                if let Some(cell) = chunks.get(&key) {
                    self.metrics.collapsed.inc();
                    return ChunkSource::Filling(cell.reader());
                }
                // Stored between our lookup and the lock: read it from the store.
                if self.store.has_chunk(&key) {
                    continue;
                }
                let chunk_count = meta.length.div_ceil(self.chunk_size).max(1);
                let end = (index + MAX_RUN_CHUNKS).min(chunk_count);
                let mut run = Vec::new();
                for i in index..end {
                    let k = ChunkKey {
                        index: i,
                        ..key.clone()
                    };
                    if i > index && (chunks.contains_key(&k) || self.store.has_chunk(&k)) {
                        break;
                    }
                    let cell = ChunkCell::new();
                    chunks.insert(k.clone(), cell.clone());
                    run.push((k, cell));
                }
                run
            };
            let reader = run.first().map(|(_, cell)| cell.reader());
            let fill = Fill::new(self.clone(), run, meta.length);
            tokio::spawn(fill.run(upstream.clone(), meta.clone()));
            if let Some(reader) = reader {
                return ChunkSource::Filling(reader);
            }
        }
    }

    /// Asks the backend about an object, once for all concurrent askers. With a validator,
    /// a 304 refreshes the stored metadata; otherwise the answer's first chunks are stored
    /// on the way. `start` is the chunk a miss wants first; `seen_nothing` says the caller
    /// found no metadata at all (so metadata stored since then answers it).
    pub async fn probe(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        object: &ObjectKey,
        kind: FileKind,
        validator: Option<Arc<StoredMeta>>,
        start: u64,
        seen_nothing: bool,
    ) -> Result<Probed, Arc<GatewayError>> {
        let mut receiver = loop {
            {
                let mut probes = lock(&self.inflight.probes);
                if let Some(rx) = probes.get(object) {
                    self.metrics.collapsed.inc();
                    break rx.clone();
                }
                // A miss whose probe finished between the caller's lookup and this lock
                // must not probe again: the answer is in the store.
                if !(seen_nothing && self.store.has_meta(object)) {
                    let (tx, rx) = watch::channel(None);
                    probes.insert(object.clone(), rx.clone());
                    let probe = Probe {
                        inner: self.clone(),
                        object: object.clone(),
                        kind,
                        validator,
                        start,
                        tx,
                    };
                    tokio::spawn(probe.run(upstream.clone()));
                    break rx;
                }
            }
            if let Some(meta) = self.store.meta(object).await {
                return Ok(Probed {
                    meta,
                    unchanged: false,
                });
            }
        };
        match receiver.wait_for(Option::is_some).await {
            Ok(result) => result
                .clone()
                .unwrap_or_else(|| Err(Arc::new(GatewayError::Internal("probe without result")))),
            Err(_) => Err(Arc::new(GatewayError::Internal("probe abandoned"))),
        }
    }
}

/// One probe: the leader's fetch, run as its own task so no client can cancel it.
struct Probe {
    inner: Arc<CacheInner>,
    object: ObjectKey,
    kind: FileKind,
    validator: Option<Arc<StoredMeta>>,
    start: u64,
    tx: watch::Sender<ProbeResult>,
}

impl Probe {
    async fn run(self, upstream: Arc<Upstream>) {
        let inner = self.inner.clone();
        let chunk = inner.chunk_size;
        let validator_etag = self.validator.as_ref().and_then(|m| match &m.state {
            MetaState::Found(found) => Some(found.etag_header.clone()),
            MetaState::Missing => None,
        });
        let mut first = if validator_etag.is_some() {
            0
        } else {
            self.start
        };
        let run = if validator_etag.is_some() {
            1
        } else {
            MAX_RUN_CHUNKS
        };
        if validator_etag.is_some() {
            inner.metrics.revalidations.inc();
        }
        let outcome = loop {
            let mut headers = HeaderMap::new();
            headers.insert(
                RANGE,
                range_header(first * chunk, (first + run) * chunk - 1),
            );
            if let Some(etag) = &validator_etag {
                headers.insert(IF_NONE_MATCH, etag.clone());
            }
            inner.metrics.upstream_fetches.inc();
            match upstream.fetch(Method::GET, &self.object.key, headers).await {
                // Shorter than where this client wanted to start: learn it from the start.
                Ok(r) if r.status() == StatusCode::RANGE_NOT_SATISFIABLE && first > 0 => first = 0,
                other => break other,
            }
        };
        let (result, fill) = match outcome {
            Err(e) => (Err(Arc::new(e)), None),
            Ok(response) => match self.interpret(response, first).await {
                Ok((probed, fill)) => (Ok(probed), fill),
                Err(e) => (Err(e), None),
            },
        };
        if let Ok(probed) = &result {
            inner
                .store
                .put_meta(self.object.clone(), probed.meta.clone())
                .await;
        }
        self.tx.send_replace(Some(result));
        self.unregister();
        if let Some((fill, body)) = fill {
            fill.stream(body).await;
        }
    }

    /// Removes this probe from the registry (only this one: a newer probe may have replaced it).
    fn unregister(&self) {
        let mut probes = lock(&self.inner.inflight.probes);
        if probes
            .get(&self.object)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            probes.remove(&self.object);
        }
    }

    /// Reads the answer's head into metadata, registering the chunks its body carries.
    async fn interpret(
        &self,
        response: http::Response<UpstreamBody>,
        first: u64,
    ) -> Result<(Probed, Option<(Fill, UpstreamBody)>), Arc<GatewayError>> {
        let inner = &self.inner;
        let probed = |state: MetaState, unchanged: bool| Probed {
            meta: StoredMeta::new(state),
            unchanged,
        };
        match response.status() {
            StatusCode::NOT_MODIFIED => {
                let state = self.validator.as_ref().map(|m| m.state.clone());
                inner.metrics.revalidated_unchanged.inc();
                Ok((probed(state.unwrap_or(MetaState::Missing), true), None))
            }
            StatusCode::NOT_FOUND => Ok((probed(MetaState::Missing, false), None)),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // From the start and still unsatisfiable: an empty object.
                let found = parse_meta(response.headers(), self.kind, 0);
                Ok((probed(MetaState::Found(found), false), None))
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                let length = response_length(&response)
                    .ok_or_else(|| Arc::new(GatewayError::Internal("backend sent no length")))?;
                let found = parse_meta(response.headers(), self.kind, length);
                let offset = if response.status() == StatusCode::OK {
                    0
                } else {
                    first * inner.chunk_size
                };
                let fill = if length <= inner.max_object_size && offset < length {
                    self.register(&found, offset)
                } else {
                    None
                };
                let fill = fill.map(|fill| (fill, response.into_body()));
                Ok((probed(MetaState::Found(found), false), fill))
            }
            _ => Err(Arc::new(upstream::upstream_status_error(response).await)),
        }
    }

    /// Claims the chunks this answer carries that nobody else has or fetches.
    fn register(&self, found: &ObjectMeta, offset: u64) -> Option<Fill> {
        let inner = &self.inner;
        let first = offset / inner.chunk_size;
        let chunk_count = found.length.div_ceil(inner.chunk_size);
        let end = (first + MAX_RUN_CHUNKS).min(chunk_count);
        let mut chunks = lock(&inner.inflight.chunks);
        let mut run = Vec::new();
        for index in first..end {
            let key = ChunkKey {
                object: self.object.clone(),
                etag: found.etag.clone(),
                index,
            };
            if chunks.contains_key(&key) || inner.store.has_chunk(&key) {
                break;
            }
            let cell = ChunkCell::new();
            chunks.insert(key.clone(), cell.clone());
            run.push((key, cell));
        }
        drop(chunks);
        (!run.is_empty()).then(|| Fill::new(inner.clone(), run, found.length))
    }
}

impl Drop for Probe {
    // Even a probe that ends abnormally leaves no entry behind for later requests to join.
    fn drop(&mut self) {
        self.unregister();
    }
}

/// A run of consecutive chunks filled from one upstream response. Dropping it fails every
/// chunk not yet complete, so no reader waits for a fetch that ended.
struct Fill {
    inner: Arc<CacheInner>,
    run: Vec<(ChunkKey, Arc<ChunkCell>)>,
    /// The object's length: the last chunk may be short.
    length: u64,
    /// Index into `run` of the chunk being filled.
    current: usize,
    /// Bytes of the current chunk received.
    filled: u64,
}

impl Fill {
    fn new(inner: Arc<CacheInner>, run: Vec<(ChunkKey, Arc<ChunkCell>)>, length: u64) -> Self {
        Fill {
            inner,
            run,
            length,
            current: 0,
            filled: 0,
        }
    }

    /// Fetches the run's bytes with `If-Match`, so a changed object fails instead of mixing.
    async fn run(self, upstream: Arc<Upstream>, meta: ObjectMeta) {
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

    /// Splits the body into the run's chunks; stores each complete chunk.
    async fn stream(mut self, mut body: UpstreamBody) {
        while self.current < self.run.len() {
            let frame = match body.frame().await {
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
                let want = usize::try_from(expected - self.filled).unwrap_or(usize::MAX);
                let piece = data.split_to(want.min(data.len()));
                self.filled += piece.len() as u64;
                self.run[self.current].1.push(piece);
                if self.filled == expected {
                    self.complete().await;
                }
            }
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
        if let Some(bytes) = cell.finish()
            && self.length <= self.inner.max_object_size
        {
            self.inner.store.put_chunk(key.clone(), bytes).await;
            self.inner.metrics.chunks_stored.inc();
        }
        // Stored first, then unregistered: a reader finds it in one place or the other.
        lock(&self.inner.inflight.chunks).remove(key);
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
        let mut chunks = lock(&self.inner.inflight.chunks);
        for (key, cell) in unfinished {
            cell.fail();
            chunks.remove(key);
        }
    }
}

/// Locks a registry; a panic elsewhere never wedges the cache (the data stay consistent:
/// every critical section is a single insert, remove or push).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn range_header(first: u64, last: u64) -> HeaderValue {
    let mut value = String::with_capacity(32);
    value.push_str("bytes=");
    value.push_str(&first.to_string());
    value.push('-');
    value.push_str(&last.to_string());
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("bytes=0-"))
}

/// The full length from `Content-Range: bytes a-b/len` (206) or `Content-Length` (200).
fn response_length(response: &http::Response<UpstreamBody>) -> Option<u64> {
    let headers = response.headers();
    if response.status() == StatusCode::PARTIAL_CONTENT {
        let range = headers.get(CONTENT_RANGE)?.to_str().ok()?;
        return range.rsplit_once('/')?.1.trim().parse().ok();
    }
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Representation metadata from a backend answer.
fn parse_meta(headers: &HeaderMap, kind: FileKind, length: u64) -> ObjectMeta {
    let etag_header = headers
        .get(ETAG)
        .cloned()
        .unwrap_or(HeaderValue::from_static("\"\""));
    let etag: Arc<str> = etag_header.to_str().unwrap_or("\"\"").into();
    let last_modified = headers.get(LAST_MODIFIED).cloned();
    let last_modified_time = last_modified
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let content_type = match headers.get(CONTENT_TYPE) {
        Some(v) if !crate::service::is_generic_type(v) => v.clone(),
        _ => HeaderValue::from_static(kind.content_type()),
    };
    ObjectMeta {
        etag,
        etag_header,
        last_modified,
        last_modified_time,
        length,
        content_type,
    }
}
