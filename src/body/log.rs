//! The access log: one record filled in along a request and written (and counted in the
//! metrics) when the response body ends or is dropped.

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{Metrics, RequestLabels};

/// What the cache did for a request, as the log and the metrics see it (the cache's
/// `Cache-Status` header says more, for clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheResult {
    /// The cache was not involved (disabled, or the request never reached it).
    #[default]
    None,
    /// Answered from fresh metadata.
    Hit,
    /// Answered stale (while revalidating, or because the backend failed).
    Stale,
    /// The backend confirmed the stored copy.
    Revalidated,
    /// Fetched from the backend and stored.
    Miss,
    /// Relayed past the cache (too large, or a HEAD miss).
    Bypass,
}

impl CacheResult {
    /// The `cache` label of `requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::None => "none",
            CacheResult::Hit => "hit",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// One access log line, filled in along the request and written on drop.
#[derive(Debug)]
pub struct AccessLog {
    /// Request method.
    pub method: http::Method,
    /// Host as the client sent it.
    pub host: String,
    /// Path without the query string.
    pub path: String,
    /// Region name, when the route resolved.
    pub region: Option<Arc<str>>,
    /// Status sent to the client.
    pub status: u16,
    /// Status the backend answered, when it was asked directly.
    pub upstream_status: Option<u16>,
    /// What the cache did.
    pub cache: CacheResult,
    /// Body bytes handed to the client.
    pub bytes: u64,
    /// When the request arrived.
    pub start: Instant,
    /// The body ended normally.
    pub complete: bool,
    /// Why the body stream failed, if it did.
    pub failure: Option<String>,
    /// Where the request is counted.
    pub metrics: Metrics,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let labels = RequestLabels {
            region: self.region.clone().unwrap_or_else(|| Arc::from("-")),
            // No status yet: the client went away before the response head (nginx's 499).
            status: if self.status == 0 { 499 } else { self.status },
            cache: self.cache.label(),
        };
        self.metrics
            .request(&labels, self.bytes, self.failure.is_some());
        let outcome = match (&self.failure, self.complete) {
            (Some(_), _) => "failed",
            (None, true) => "complete",
            (None, false) => "aborted",
        };
        tracing::info!(
            target: "s3edge::access",
            method = %self.method,
            host = %self.host,
            path = %self.path,
            region = self.region.as_deref().unwrap_or("-"),
            status = self.status,
            upstream_status = self.upstream_status,
            cache = self.cache.label(),
            bytes = self.bytes,
            duration_ms = format_args!("{duration_ms:.3}"),
            outcome,
            failure = self.failure.as_deref(),
        );
    }
}
