//! The CDN-style edge cache: metadata with freshness windows, aligned body chunks, collapsed
//! streaming fetches, conditionals and ranges answered from memory.
//!
//! - [`store`]: the byte-bounded moka store of metadata and chunks.
//! - [`probe`]: one collapsed request for an object's metadata (or its revalidation).
//! - [`run`]: one collapsed request for a run of missing chunks.
//! - [`inflight`]: chunks being fetched (followed by their readers), probes awaited, and
//!   the registry of both.
//! - [`metrics`]: the counters, and their Prometheus collector.
//!
//! A request: metadata (fresh, stale-while-revalidate, revalidated, or probed) → client
//! preconditions and Range against it → a body assembled from the chunks it covers, stored or
//! followed while they arrive.

mod buffers;
mod inflight;
pub mod metrics;
mod probe;
mod run;
mod store;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{
    ACCEPT_RANGES, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::body::{CacheResult, PieceStream, ResponseBody, StreamCut};
use crate::conditional::{self, Precondition, Validators};
use crate::config::CacheConfig;
use crate::error::GatewayError;
use crate::range::{self, Span};
use crate::respond;
use crate::route::{FileKind, ObjectRef};
use crate::upstream::Upstream;
use buffers::BufferPool;
use inflight::{ChunkReader, Fetches};
use metrics::CacheMetrics;
pub use metrics::{CacheCollector, CacheStats};
use run::ChunkSource;
use store::{ChunkKey, MetaState, ObjectKey, ObjectMeta, Store, StoredMeta};

/// The standard `Cache-Status` header (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// At most this many stored chunks are gathered without a producer.
const DIRECT_CHUNKS: u64 = 16;

/// Buffers of dropped chunks kept for reuse: a 16th of the capacity, at most this.
const POOL_MAX: u64 = 64 * 1024 * 1024;

/// The edge cache; cheap to clone.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

/// Shared state of the cache and its fetch tasks.
#[derive(Debug)]
struct CacheInner {
    /// Metadata and chunks, bounded in bytes.
    store: Store,
    /// Fetches in flight, joined by concurrent misses.
    fetches: Fetches,
    /// The counters.
    metrics: Arc<CacheMetrics>,
    /// The settings it was built with.
    config: CacheConfig,
    /// Bytes per chunk.
    chunk_size: u64,
    /// Chunks one upstream request fetches at most: the read-ahead bound.
    run_chunks: u64,
    /// Larger objects are relayed, not stored.
    max_object_size: u64,
    /// `Cache-Control` of cached answers.
    cache_control: HeaderValue,
    /// `Cache-Control` of cached 404s.
    negative_cache_control: HeaderValue,
}

/// What the cache did for a request, for `Cache-Status`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Fresh; seconds of freshness left.
    Hit(i64),
    /// Stale, served while a background revalidation runs.
    StaleWhileRevalidate(i64),
    /// Stale, served because the backend failed.
    StaleIfError(i64),
    /// The backend confirmed the stored copy (304).
    Revalidated,
    /// Fetched from the backend.
    Miss,
}

impl Outcome {
    /// The outcome as the log and the metrics count it.
    fn result(self) -> CacheResult {
        match self {
            Outcome::Hit(_) => CacheResult::Hit,
            Outcome::StaleWhileRevalidate(_) | Outcome::StaleIfError(_) => CacheResult::Stale,
            Outcome::Revalidated => CacheResult::Revalidated,
            Outcome::Miss => CacheResult::Miss,
        }
    }

    fn header(self) -> HeaderValue {
        let text = match self {
            Outcome::Hit(ttl) => format!("s3edge; hit; ttl={ttl}"),
            Outcome::StaleWhileRevalidate(ttl) => {
                format!("s3edge; hit; ttl={ttl}; detail=stale-while-revalidate")
            }
            Outcome::StaleIfError(ttl) => format!("s3edge; hit; ttl={ttl}; detail=stale-if-error"),
            Outcome::Revalidated => "s3edge; fwd=stale; fwd-status=304; stored".into(),
            Outcome::Miss => "s3edge; fwd=miss; stored".into(),
        };
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("s3edge"))
    }
}

/// The cache's answer.
// Returned once per request and matched at once: boxing the response would cost an
// allocation on every hit to save a move.
#[allow(clippy::large_enum_variant)]
pub enum Served {
    /// A response built from the cache; the outcome is also in its `Cache-Status`.
    Response(Response<ResponseBody>, CacheResult),
    /// Not for the cache: relay it and send this `Cache-Status`.
    Bypass(Bypass),
}

/// Why a request goes past the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// A HEAD for an object without metadata is not worth fetching chunks for.
    HeadMiss,
    /// Larger than `cache.max_object_size`.
    TooLarge,
}

impl Bypass {
    /// The `Cache-Status` of a relayed answer.
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Bypass::HeadMiss => "s3edge; fwd=method; detail=head-miss",
            Bypass::TooLarge => "s3edge; fwd=bypass; detail=too-large",
        })
    }
}

impl Cache {
    /// A cache with the given settings (assumed validated).
    pub fn new(config: &CacheConfig) -> Cache {
        let metrics = Arc::new(CacheMetrics::default());
        let header = |text: &str| {
            HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("no-store"))
        };
        let chunk_size = config.chunk_size.max(1);
        // Prefaulted, the pool holds the whole capacity: buffers move between it and the store.
        let bound = if config.prefault {
            config.capacity
        } else {
            (config.capacity / 16).min(POOL_MAX)
        };
        let pool = Arc::new(BufferPool::new(to_usize(chunk_size), bound));
        if config.prefault {
            let pool = pool.clone();
            let spawned = std::thread::Builder::new()
                .name("cache-prefault".into())
                .spawn(move || pool.prefault());
            if let Err(error) = spawned {
                tracing::warn!(%error, "cache prefault thread not started");
            }
        }
        Cache {
            inner: Arc::new(CacheInner {
                store: Store::new(config.capacity, metrics.clone(), pool),
                fetches: Fetches::default(),
                metrics,
                chunk_size,
                run_chunks: config.read_ahead_chunks.max(1),
                max_object_size: config.max_object_size,
                cache_control: header(&config.cache_control),
                negative_cache_control: header(&format!(
                    "max-age={}",
                    config.negative_ttl.as_secs()
                )),
                config: config.clone(),
            }),
        }
    }

    /// Answers a GET or HEAD for `object` from the cache, fetching what is missing.
    pub async fn serve(
        &self,
        upstream: &Arc<Upstream>,
        object: &ObjectRef,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Served, GatewayError> {
        let key = ObjectKey {
            region: object.region,
            key: object.key.clone(),
        };
        if method == Method::HEAD && !self.inner.store.has_meta(&key) {
            // A HEAD miss is not worth fetching chunks for: ask the backend directly.
            self.inner.metrics.misses.inc();
            return Ok(Served::Bypass(Bypass::HeadMiss));
        }
        let (meta, outcome) = self.lookup(upstream, &key, object.kind, headers).await?;
        let age = meta.validated_at.elapsed().as_secs();
        let found = match &meta.state {
            MetaState::Missing => {
                let mut response = respond::error_response(&GatewayError::NotFound);
                let h = response.headers_mut();
                h.insert(CACHE_CONTROL, self.inner.negative_cache_control.clone());
                h.insert(AGE, HeaderValue::from(age));
                h.insert(CACHE_STATUS, outcome.header());
                return Ok(Served::Response(response, outcome.result()));
            }
            MetaState::Found(found) => found,
        };
        if found.length > self.inner.max_object_size {
            self.inner.metrics.bypassed.inc();
            return Ok(Served::Bypass(Bypass::TooLarge));
        }
        let validators = Validators {
            etag: &found.etag,
            last_modified: found.last_modified_time,
        };
        // A chunk read again is joined into one buffer; a miss reads what it just stored
        // as it is.
        let join = !matches!(outcome, Outcome::Miss);
        let mut response = match conditional::evaluate(headers, validators) {
            Precondition::NotModified => respond::not_modified(),
            Precondition::Failed => respond::precondition_failed(),
            Precondition::Proceed => {
                let whole = Span {
                    start: 0,
                    end: found.length,
                };
                match conditional::effective_range(headers, validators)
                    .map(|r| r.resolve(found.length))
                {
                    Some(Err(range::Unsatisfiable)) => {
                        respond::range_not_satisfiable(respond::unsatisfied_range(found.length))
                    }
                    Some(Ok(span)) => {
                        self.file_response(upstream, &key, found, method, span, true, join)
                            .await?
                    }
                    None => {
                        self.file_response(upstream, &key, found, method, whole, false, join)
                            .await?
                    }
                }
            }
        };
        let h = response.headers_mut();
        h.insert(ETAG, found.etag_header.clone());
        if let Some(modified) = &found.last_modified {
            h.insert(LAST_MODIFIED, modified.clone());
        }
        h.insert(CACHE_CONTROL, self.inner.cache_control.clone());
        h.insert(AGE, HeaderValue::from(age));
        h.insert(CACHE_STATUS, outcome.header());
        Ok(Served::Response(response, outcome.result()))
    }

    /// Fresh metadata, stale within its windows, or from the backend (a probe starts at the
    /// chunk where the client's Range does).
    async fn lookup(
        &self,
        upstream: &Arc<Upstream>,
        key: &ObjectKey,
        kind: FileKind,
        headers: &HeaderMap,
    ) -> Result<(Arc<StoredMeta>, Outcome), GatewayError> {
        let inner = &self.inner;
        let config = &inner.config;
        // Only a probe needs it: hits never parse the Range twice.
        let start = || first_wanted_chunk(headers, inner.chunk_size);
        let Some(meta) = inner.store.meta(key).await else {
            inner.metrics.misses.inc();
            let probed = probe::probe(inner, upstream, key, kind, None, start(), true).await;
            return probed
                .map(|p| (p.meta, Outcome::Miss))
                .map_err(GatewayError::Shared);
        };
        let found = matches!(meta.state, MetaState::Found(_));
        let ttl = if found {
            config.ttl
        } else {
            config.negative_ttl
        };
        let age = meta.validated_at.elapsed();
        let left = signed_secs(ttl, age);
        if age < ttl {
            if found {
                inner.metrics.hits.inc();
            } else {
                inner.metrics.negative_hits.inc();
            }
            return Ok((meta, Outcome::Hit(left)));
        }
        if found && age < ttl + config.stale_while_revalidate {
            inner.metrics.stale.inc();
            if meta.claim_revalidation() {
                let cache = inner.clone();
                let (upstream, key, validator) = (upstream.clone(), key.clone(), meta.clone());
                tokio::spawn(async move {
                    if let Err(error) =
                        probe::probe(&cache, &upstream, &key, kind, Some(validator), 0, false).await
                    {
                        tracing::warn!(key = %key.key, error = %error.detail(), "background revalidation failed");
                    }
                });
            }
            return Ok((meta, Outcome::StaleWhileRevalidate(left)));
        }
        let validator = found.then(|| meta.clone());
        match probe::probe(inner, upstream, key, kind, validator, start(), false).await {
            Ok(probed) if probed.unchanged => Ok((probed.meta, Outcome::Revalidated)),
            Ok(probed) => Ok((probed.meta, Outcome::Miss)),
            Err(error) if found && age < ttl + config.stale_if_error => {
                tracing::warn!(key = %key.key, error = %error.detail(), "backend failed: serving stale");
                inner.metrics.stale.inc();
                Ok((meta, Outcome::StaleIfError(left)))
            }
            Err(error) => Err(GatewayError::Shared(error)),
        }
    }

    /// A 200 or 206 of `span`: headers from the metadata, body from the chunks (joined if
    /// `join`).
    #[allow(clippy::too_many_arguments)]
    async fn file_response(
        &self,
        upstream: &Arc<Upstream>,
        key: &ObjectKey,
        found: &ObjectMeta,
        method: &Method,
        span: Span,
        partial: bool,
        join: bool,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let body = if method == Method::HEAD || span.is_empty() {
            ResponseBody::empty()
        } else {
            self.body(upstream, key, found, span, join).await?
        };
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, found.content_type.clone());
        h.insert(CONTENT_LENGTH, HeaderValue::from(span.len()));
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if partial {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Some(value) = respond::content_range(span.start, span.end - 1, found.length) {
                response.headers_mut().insert(CONTENT_RANGE, value);
            }
        }
        Ok(response)
    }

    /// The bytes of `span`: straight from the store when every chunk is there, otherwise
    /// from a producer that follows fetches as they arrive. The producer's first piece is
    /// awaited before the response head goes out, so head and first bytes leave together and
    /// a fetch that fails at once is a clean 502 rather than a cut body.
    async fn body(
        &self,
        upstream: &Arc<Upstream>,
        key: &ObjectKey,
        found: &ObjectMeta,
        span: Span,
        join: bool,
    ) -> Result<ResponseBody, GatewayError> {
        let inner = &self.inner;
        let (first, last) = (
            span.start / inner.chunk_size,
            (span.end - 1) / inner.chunk_size,
        );
        if last - first < DIRECT_CHUNKS {
            let mut parts = Vec::with_capacity(usize::try_from(last - first + 1).unwrap_or(1));
            let mut whole = true;
            for index in first..=last {
                let chunk = inner.store.chunk(&chunk_key(key, found, index), join).await;
                let (lo, hi) = chunk_span(index, inner.chunk_size, span);
                if !chunk.is_some_and(|c| c.slices_into(lo, hi, &mut parts)) {
                    whole = false;
                    break;
                }
            }
            if whole {
                return Ok(ResponseBody::parts(parts));
            }
        }
        let (first, last) = (
            span.start / inner.chunk_size,
            (span.end - 1) / inner.chunk_size,
        );
        let producer = Producer {
            inner: inner.clone(),
            upstream: upstream.clone(),
            key: key.clone(),
            found: found.clone(),
            span,
            next: first,
            last,
            reading: None,
            stored: VecDeque::new(),
            join,
            ended: false,
        };
        let mut pieces = Box::pin(futures_util::stream::unfold(producer, |mut p| async move {
            p.next().await.map(|piece| (piece, p))
        }));
        match pieces.next().await {
            Some(Ok(first)) => Ok(ResponseBody::stream(Some(first), PieceStream::new(pieces))),
            Some(Err(_)) => Err(GatewayError::UpstreamFetch),
            None => Err(GatewayError::Internal("chunk producer ended without data")),
        }
    }

    /// Drops the cached files of an account, of a recording (`name`: all four files) or one
    /// file (`file`: `{NAME}{suffix}`) in a region.
    pub fn purge(
        &self,
        region: usize,
        account: &str,
        target: PurgeTarget,
    ) -> Result<(), GatewayError> {
        let prefix = format!("{account}/");
        let matches: Box<dyn Fn(&str) -> bool + Send + Sync> = match target {
            PurgeTarget::Account => Box::new(move |key: &str| key.starts_with(&prefix)),
            PurgeTarget::Recording(name) => {
                let stem = format!("{prefix}{name}");
                Box::new(move |key: &str| {
                    key.strip_prefix(&stem)
                        .is_some_and(|suffix| FileKind::ALL.iter().any(|k| k.suffix() == suffix))
                })
            }
            PurgeTarget::File(file) => {
                let exact = format!("{prefix}{file}");
                Box::new(move |key: &str| key == exact)
            }
        };
        self.inner
            .store
            .purge(region, matches)
            .map_err(|_| GatewayError::Internal("cache purge unsupported"))
    }

    /// Drops everything (the region table changed: indexes may now name other buckets).
    pub fn clear(&self) {
        self.inner.store.clear();
    }

    /// Counters and size now.
    pub fn stats(&self) -> CacheStats {
        self.inner.metrics.snapshot(
            self.inner.store.weighted_size(),
            self.inner.store.entry_count(),
            self.inner.store.pool().held(),
        )
    }

    /// The Prometheus collector of this cache's counters, read at every scrape.
    pub fn collector(&self) -> CacheCollector {
        CacheCollector::new(self.clone())
    }

    /// Applies pending evictions and purges now.
    pub async fn sync(&self) {
        self.inner.store.sync().await;
    }
}

/// What a purge drops.
#[derive(Debug, Clone)]
pub enum PurgeTarget {
    /// Every file of the account.
    Account,
    /// The four files of one recording.
    Recording(String),
    /// One file, `{NAME}{suffix}`.
    File(String),
}

/// The pieces of a span, chunk by chunk, stored or followed while they arrive; polled by the
/// response body itself (no task and channel between them), so it stops when the client
/// leaves. Fills run in their own tasks and finish regardless.
struct Producer {
    inner: Arc<CacheInner>,
    upstream: Arc<Upstream>,
    key: ObjectKey,
    found: ObjectMeta,
    span: Span,
    /// The next chunk to look up.
    next: u64,
    /// The span's last chunk.
    last: u64,
    /// The chunk being followed while it is fetched.
    reading: Option<Reading>,
    /// Slices of a stored chunk (one, or one per piece) not yet handed out.
    stored: VecDeque<Bytes>,
    /// Chunks stored in pieces are joined as they are read (the request is a hit).
    join: bool,
    /// A failure was reported: nothing follows it.
    ended: bool,
}

/// A chunk followed while it is fetched: where its reader is, and the part the span wants.
struct Reading {
    reader: ChunkReader,
    position: u64,
    lo: u64,
    hi: u64,
}

impl Producer {
    /// The next piece of the span; `Err` once if a fetch failed (the response is cut, never
    /// completed short), `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, StreamCut>> {
        let chunk = self.inner.chunk_size;
        loop {
            if let Some(slice) = self.stored.pop_front() {
                return Some(Ok(slice));
            }
            if let Some(reading) = &mut self.reading {
                if reading.position >= reading.hi {
                    self.reading = None;
                    continue;
                }
                match reading.reader.next().await {
                    Some(Ok(piece)) => {
                        let (from, to) = (reading.position, reading.position + piece.len() as u64);
                        reading.position = to;
                        let (a, b) = (from.max(reading.lo), to.min(reading.hi));
                        if a < b {
                            return Some(Ok(piece.slice(to_usize(a - from)..to_usize(b - from))));
                        }
                        continue;
                    }
                    Some(Err(_)) | None => return self.fail(),
                }
            }
            if self.ended || self.next > self.last {
                return None;
            }
            let index = self.next;
            self.next += 1;
            let source = run::chunk_source(
                &self.inner,
                &self.upstream,
                &self.key,
                &self.found,
                index,
                self.join,
            )
            .await;
            match source {
                ChunkSource::Stored(stored) => {
                    let (lo, hi) = chunk_span(index, chunk, self.span);
                    if !stored.slices_into(lo, hi, &mut self.stored) {
                        return self.fail();
                    }
                }
                ChunkSource::Filling(reader) => {
                    let chunk_start = index * chunk;
                    self.reading = Some(Reading {
                        reader,
                        position: 0,
                        lo: self.span.start.max(chunk_start) - chunk_start,
                        hi: self.span.end.min(chunk_start + chunk) - chunk_start,
                    });
                }
            }
        }
    }

    fn fail(&mut self) -> Option<Result<Bytes, StreamCut>> {
        self.ended = true;
        self.reading = None;
        self.stored.clear();
        Some(Err(StreamCut))
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn chunk_key(key: &ObjectKey, found: &ObjectMeta, index: u64) -> ChunkKey {
    ChunkKey {
        object: key.clone(),
        etag: found.etag.clone(),
        index,
    }
}

/// The bytes of chunk `index` (offsets within it) that fall in `span`.
fn chunk_span(index: u64, chunk: u64, span: Span) -> (usize, usize) {
    let chunk_start = index * chunk;
    let lo = to_usize(span.start.max(chunk_start) - chunk_start);
    let hi = to_usize(span.end.min(chunk_start + chunk) - chunk_start);
    (lo, hi)
}

/// The chunk a miss should fetch first: where the client's Range starts.
fn first_wanted_chunk(headers: &HeaderMap, chunk: u64) -> u64 {
    match headers
        .get(RANGE)
        .and_then(|v| range::parse_range(v.as_bytes()))
    {
        Some(range::ByteRange::FromTo(first, _) | range::ByteRange::From(first)) => first / chunk,
        _ => 0,
    }
}

fn signed_secs(ttl: Duration, age: Duration) -> i64 {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
    ttl.saturating_sub(age)
}
