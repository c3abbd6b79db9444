//! Probes: one request asks the backend about an object for every concurrent asker (its
//! metadata, or a revalidation), storing the answer's first chunks on the way.

use std::sync::Arc;

use http::header::{
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::watch;

use super::CacheInner;
use super::inflight::{ProbeResult, Probed, claim_run, lock};
use super::run::{Fill, range_header};
use super::store::{ChunkKey, MetaState, ObjectKey, ObjectMeta, StoredMeta};
use crate::body::UpstreamBody;
use crate::error::GatewayError;
use crate::route::FileKind;
use crate::upstream::{self, Upstream};

/// Asks the backend about an object, once for all concurrent askers. With a validator,
/// a 304 refreshes the stored metadata; otherwise the answer's first chunks are stored
/// on the way. `start` is the chunk a miss wants first; `seen_nothing` says the caller
/// found no metadata at all (so metadata stored since then answers it).
pub(super) async fn probe(
    cache: &Arc<CacheInner>,
    upstream: &Arc<Upstream>,
    object: &ObjectKey,
    kind: FileKind,
    validator: Option<Arc<StoredMeta>>,
    start: u64,
    seen_nothing: bool,
) -> Result<Probed, Arc<GatewayError>> {
    let mut receiver = loop {
        {
            let mut probes = lock(&cache.fetches.probes);
            if let Some(rx) = probes.get(object) {
                cache.metrics.collapsed.inc();
                break rx.clone();
            }
            // A miss whose probe finished between the caller's lookup and this lock
            // must not probe again: the answer is in the store.
            if !(seen_nothing && cache.store.has_meta(object)) {
                let (tx, rx) = watch::channel(None);
                probes.insert(object.clone(), rx.clone());
                let probe = Probe {
                    inner: cache.clone(),
                    object: object.clone(),
                    kind,
                    validator,
                    start,
                    tx,
                    since: cache.store.generation(),
                };
                tokio::spawn(probe.run(upstream.clone()));
                break rx;
            }
        }
        if let Some(meta) = cache.store.meta(object).await {
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

/// One probe: the leader's fetch, run as its own task so no client can cancel it.
struct Probe {
    inner: Arc<CacheInner>,
    object: ObjectKey,
    kind: FileKind,
    validator: Option<Arc<StoredMeta>>,
    start: u64,
    tx: watch::Sender<ProbeResult>,
    /// The store's purge generation before the fetch.
    since: u64,
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
            inner.run_chunks
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
                .put_meta(self.object.clone(), probed.meta.clone(), self.since)
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
        let mut probes = lock(&self.inner.fetches.probes);
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
        let end = (first + inner.run_chunks).min(chunk_count);
        let key = ChunkKey {
            object: self.object.clone(),
            etag: found.etag.clone(),
            index: first,
        };
        let run = claim_run(&mut lock(&inner.fetches.chunks), &inner.store, key, end);
        (!run.is_empty()).then(|| Fill::new(inner.clone(), run, found.length, self.since))
    }
}

impl Drop for Probe {
    // Even a probe that ends abnormally leaves no entry behind for later requests to join.
    fn drop(&mut self) {
        self.unregister();
    }
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

/// Representation metadata from a backend answer. Every value kept is a copy: hyper's header
/// values are slices of its connection's read buffer, so one kept in the store would pin that
/// whole buffer for as long as the metadata lives, and the connection would allocate (and the
/// kernel zero) a new one for its next answer.
fn parse_meta(headers: &HeaderMap, kind: FileKind, length: u64) -> ObjectMeta {
    let etag_header = headers
        .get(ETAG)
        .map(detached)
        .unwrap_or(HeaderValue::from_static("\"\""));
    let etag: Arc<str> = etag_header.to_str().unwrap_or("\"\"").into();
    let last_modified = headers.get(LAST_MODIFIED).map(detached);
    let last_modified_time = last_modified
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let content_type = detached(&kind.content_type_for(headers.get(CONTENT_TYPE)));
    ObjectMeta {
        etag,
        etag_header,
        last_modified,
        last_modified_time,
        length,
        content_type,
    }
}

/// A copy of a header value, in memory of its own.
fn detached(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn kept_metadata_does_not_pin_the_connections_read_buffer() {
        // As hyper parses a head: every value a slice of the one read buffer.
        let head =
            Bytes::from(b"\"0123456789abcdef\"Tue, 01 Dec 2026 10:00:00 GMTvideo/x-test".to_vec());
        let value = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(head.slice(range)).expect("valid value")
        };
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, value(0..18));
        headers.insert(LAST_MODIFIED, value(18..47));
        headers.insert(CONTENT_TYPE, value(47..59));
        let meta = parse_meta(&headers, FileKind::Processed, 30_000);
        drop(headers);
        assert_eq!(meta.etag_header, "\"0123456789abcdef\"");
        assert_eq!(&*meta.etag, "\"0123456789abcdef\"");
        assert_eq!(
            meta.last_modified.as_ref().map(HeaderValue::as_bytes),
            Some(&b"Tue, 01 Dec 2026 10:00:00 GMT"[..])
        );
        assert!(meta.last_modified_time.is_some());
        assert_eq!(meta.content_type, "video/x-test");
        // Nothing the metadata keeps shares the buffer: the connection can reuse it.
        assert!(head.try_into_mut().is_ok());
    }
}
