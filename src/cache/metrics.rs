//! The cache's counters, listed once: the atomics the cache bumps, the snapshot tests and
//! the admin endpoint read, and the Prometheus series (`s3edge_cache_{name}_total`, plus
//! `cache_bytes`, `cache_entries` and `cache_hit_ratio`) all come from the one list below.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Cache;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! cache_counters {
    ($($name:ident: $help:literal,)*) => {
        /// What the cache did: one atomic per counter.
        #[derive(Debug, Default)]
        pub(crate) struct CacheMetrics {
            $(#[doc = $help] pub(crate) $name: Counter,)*
        }

        /// A snapshot of the cache's counters and size.
        #[derive(Debug, Clone, Copy, Default)]
        pub struct CacheStats {
            $(#[doc = $help] pub $name: u64,)*
            /// Weighted bytes held.
            pub bytes: u64,
            /// Entries held.
            pub entries: u64,
            /// Bytes of chunk buffers kept for reuse (at most a 16th of the capacity, 64 MiB).
            pub pool_bytes: u64,
        }

        impl CacheMetrics {
            /// The counters now, with the store's size.
            pub(crate) fn snapshot(&self, bytes: u64, entries: u64, pool_bytes: u64) -> CacheStats {
                CacheStats { $($name: self.$name.get(),)* bytes, entries, pool_bytes }
            }
        }

        impl CacheStats {
            /// `(name, help, value)` of every counter, in the list's order.
            pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((concat!("cache_", stringify!($name)), $help, self.$name),)*]
            }
        }
    };
}

cache_counters! {
    hits: "Requests answered from fresh cache metadata",
    misses: "Requests whose metadata was fetched",
    stale: "Stale serves (while revalidating or on error)",
    revalidations: "Revalidations sent upstream",
    revalidated_unchanged: "Revalidations answered 304",
    collapsed: "Requests that joined a fetch in flight",
    upstream_fetches: "Upstream requests sent by the cache",
    chunks_stored: "Chunks stored",
    evictions: "Entries evicted for space or age",
    negative_hits: "404s answered from the negative cache",
    bypassed: "Objects too large to cache, relayed",
    fetch_failures: "Chunk fetches that failed (cut, timed out, object changed)",
    buffers_reused: "Chunk fills and joins that reused a dropped chunk's buffer",
    chunks_joined: "Chunks stored in the pieces they arrived in, joined into one buffer at their first hit",
}

/// The cache's series, read at scrape time.
#[derive(Debug)]
pub struct CacheCollector(Cache);

impl CacheCollector {
    pub(super) fn new(cache: Cache) -> Self {
        CacheCollector(cache)
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        for (name, help, value) in s.counters() {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            ("cache_bytes", "Weighted bytes held by the cache", s.bytes),
            ("cache_entries", "Entries held by the cache", s.entries),
            (
                "cache_pool_bytes",
                "Bytes of dropped chunks' buffers kept for reuse",
                s.pool_bytes,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let answered = s.hits + s.stale + s.misses;
        let ratio = if answered == 0 {
            0.0
        } else {
            (s.hits + s.stale) as f64 / answered as f64
        };
        let gauge = ConstGauge::new(ratio);
        gauge.encode(encoder.encode_descriptor(
            "cache_hit_ratio",
            "Share of cacheable requests answered without fetching metadata",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}
