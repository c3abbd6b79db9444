//! Cache counters: cheap atomics, read by the admin endpoint and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the cache did.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Answered from fresh metadata (and cached or in-flight chunks).
    pub hits: Counter,
    /// Metadata had to be fetched.
    pub misses: Counter,
    /// Served stale (stale-while-revalidate or stale-if-error).
    pub stale: Counter,
    /// Revalidations sent upstream.
    pub revalidations: Counter,
    /// Revalidations the backend answered 304.
    pub revalidated_unchanged: Counter,
    /// Requests that waited for another request's fetch instead of sending their own.
    pub collapsed: Counter,
    /// Upstream requests the cache sent (probes and chunk runs).
    pub upstream_fetches: Counter,
    /// Chunks stored.
    pub chunks_stored: Counter,
    /// Entries evicted for space or age.
    pub evictions: Counter,
    /// 404s answered from the negative cache.
    pub negative_hits: Counter,
    /// Objects streamed through without caching (too large).
    pub bypassed: Counter,
    /// Chunk fetches that failed (cut, timed out, object changed).
    pub fetch_failures: Counter,
}
