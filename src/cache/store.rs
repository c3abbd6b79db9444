//! The moka store: one byte-weighted cache holding object metadata and aligned body chunks,
//! so one capacity bounds all cached memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use moka::notification::RemovalCause;

use super::buffers::BufferPool;
use super::metrics::CacheMetrics;

/// Bytes charged per entry on top of its body: key, moka node and bookkeeping.
const ENTRY_OVERHEAD: u32 = 192;

/// One object in one region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ObjectKey {
    /// Region index.
    pub region: usize,
    /// Key without the region's prefix.
    pub key: Arc<str>,
}

/// One aligned chunk of one version (ETag) of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ChunkKey {
    /// The object.
    pub object: ObjectKey,
    /// The version the bytes belong to: bytes of two ETags never mix.
    pub etag: Arc<str>,
    /// Chunk index: bytes `index * chunk_size ..`.
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StoreKey {
    Meta(ObjectKey),
    Chunk(ChunkKey),
}

#[derive(Debug, Clone)]
enum StoreValue {
    Meta(Arc<StoredMeta>),
    Chunk(StoredChunk),
}

/// A stored chunk: the pieces it arrived in, until its first hit joins them into one buffer.
/// A miss pays no second copy (most chunks of a recording watched once are never read
/// again); a chunk read again is one slice and one write from then on.
#[derive(Debug, Clone)]
pub(super) enum StoredChunk {
    /// One contiguous buffer.
    One(Bytes),
    /// The pieces a fill published, in order: slices of the fill's one buffer.
    Pieces(Arc<[Bytes]>),
}

impl StoredChunk {
    /// A chunk stored as it arrived: one piece is already one buffer.
    pub(super) fn from_pieces(mut pieces: Vec<Bytes>) -> Self {
        if pieces.len() <= 1 {
            StoredChunk::One(pieces.pop().unwrap_or_default())
        } else {
            StoredChunk::Pieces(pieces.into())
        }
    }

    /// Its length in bytes.
    pub(super) fn len(&self) -> usize {
        match self {
            StoredChunk::One(bytes) => bytes.len(),
            StoredChunk::Pieces(pieces) => pieces.iter().map(Bytes::len).sum(),
        }
    }

    /// Appends bytes `lo..hi` of the chunk to `out` as slices of what it holds (no copy);
    /// false, and nothing appended, if `lo..hi` is empty or the chunk is shorter than `hi`.
    pub(super) fn slices_into(&self, lo: usize, hi: usize, out: &mut impl Extend<Bytes>) -> bool {
        if lo >= hi || hi > self.len() {
            return false;
        }
        match self {
            StoredChunk::One(bytes) => out.extend([bytes.slice(lo..hi)]),
            StoredChunk::Pieces(pieces) => {
                let mut start = 0;
                for piece in pieces.iter() {
                    let end = start + piece.len();
                    let (a, b) = (lo.max(start), hi.min(end));
                    if a < b {
                        out.extend([piece.slice(a - start..b - start)]);
                    }
                    start = end;
                }
            }
        }
        true
    }

    /// The slice that owns its buffer once every other slice of it is gone (for the pool).
    fn first(&self) -> Option<Bytes> {
        match self {
            StoredChunk::One(bytes) => Some(bytes.clone()),
            StoredChunk::Pieces(pieces) => pieces.first().cloned(),
        }
    }
}

/// What the backend said about an object, and when.
#[derive(Debug)]
pub(super) struct StoredMeta {
    /// Found (with validators) or missing (negative caching).
    pub state: MetaState,
    /// When the backend last confirmed it.
    pub validated_at: Instant,
    /// A background revalidation is running (stale-while-revalidate runs one at a time).
    pub revalidating: AtomicBool,
}

impl StoredMeta {
    /// Metadata confirmed now.
    pub(super) fn new(state: MetaState) -> Arc<Self> {
        Arc::new(StoredMeta {
            state,
            validated_at: Instant::now(),
            revalidating: AtomicBool::new(false),
        })
    }

    /// Claims the one background revalidation; false if one is running.
    pub(super) fn claim_revalidation(&self) -> bool {
        !self.revalidating.swap(true, Ordering::AcqRel)
    }
}

/// Found or missing.
#[derive(Debug, Clone)]
pub(super) enum MetaState {
    /// The object exists.
    Found(ObjectMeta),
    /// The backend answered 404.
    Missing,
}

/// An object's representation metadata.
#[derive(Debug, Clone)]
pub(super) struct ObjectMeta {
    /// Strong ETag with its quotes.
    pub etag: Arc<str>,
    /// The same, ready to send.
    pub etag_header: HeaderValue,
    /// Last-Modified as the backend sent it.
    pub last_modified: Option<HeaderValue>,
    /// Last-Modified, parsed.
    pub last_modified_time: Option<SystemTime>,
    /// Full length in bytes.
    pub length: u64,
    /// Content-Type to send.
    pub content_type: HeaderValue,
}

/// The cache memory.
#[derive(Debug, Clone)]
pub(super) struct Store {
    cache: moka::future::Cache<StoreKey, StoreValue>,
    /// Bumped by every purge: a fill that fetched before a purge does not store what it got
    /// (the object may have been deleted or replaced in the bucket since).
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// Chunk bytes inserted since evictions last ran: moka evicts in batches, so without
    /// this a stream of misses would hold more than the capacity until its next housekeeping.
    unsettled: Arc<std::sync::atomic::AtomicU64>,
    /// Evictions run once this many bytes were inserted (a 32nd of the capacity).
    settle_every: u64,
    /// Where evicted chunks' buffers go, and fills take theirs.
    pool: Arc<BufferPool>,
    /// The cache's counters (joins and the buffers they reuse).
    metrics: Arc<CacheMetrics>,
}

impl Store {
    /// A store holding at most `capacity` weighted bytes.
    pub(super) fn new(capacity: u64, metrics: Arc<CacheMetrics>, pool: Arc<BufferPool>) -> Store {
        let listener_pool = pool.clone();
        let listener_metrics = metrics.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .weigher(|key: &StoreKey, value: &StoreValue| -> u32 {
                let body = match value {
                    StoreValue::Meta(_) => 128,
                    StoreValue::Chunk(chunk) => u32::try_from(chunk.len()).unwrap_or(u32::MAX),
                };
                let key = match key {
                    StoreKey::Meta(k) => k.key.len(),
                    StoreKey::Chunk(k) => k.object.key.len() + k.etag.len(),
                };
                body.saturating_add(ENTRY_OVERHEAD)
                    .saturating_add(u32::try_from(key).unwrap_or(u32::MAX))
            })
            .eviction_listener(move |_key, value, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    listener_metrics.evictions.inc();
                }
                // Every removal, a join's replacement included, hands the buffer over once.
                if let Some(first) = match &value {
                    StoreValue::Chunk(chunk) => chunk.first(),
                    StoreValue::Meta(_) => None,
                } {
                    listener_pool.give(first);
                }
            })
            .support_invalidation_closures()
            .build();
        Store {
            cache,
            generation: Arc::default(),
            unsettled: Arc::default(),
            settle_every: (capacity / 32).max(1),
            pool,
            metrics,
        }
    }

    /// Stored metadata of an object.
    pub(super) async fn meta(&self, key: &ObjectKey) -> Option<Arc<StoredMeta>> {
        match self.cache.get(&StoreKey::Meta(key.clone())).await {
            Some(StoreValue::Meta(meta)) => Some(meta),
            _ => None,
        }
    }

    /// Whether metadata is stored (synchronous: usable under a lock).
    pub(super) fn has_meta(&self, key: &ObjectKey) -> bool {
        self.cache.contains_key(&StoreKey::Meta(key.clone()))
    }

    /// The purge generation now: taken before a fetch, handed to `put_*` after it.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores an entry fetched in generation `since`, unless a purge came in between.
    async fn put(&self, key: StoreKey, value: StoreValue, since: u64) {
        if self.generation() != since {
            return;
        }
        self.cache.insert(key.clone(), value).await;
        // A purge between the check and the insert may have missed this entry.
        if self.generation() != since {
            self.cache.invalidate(&key).await;
        }
    }

    /// Stores metadata fetched in generation `since`.
    pub(super) async fn put_meta(&self, key: ObjectKey, meta: Arc<StoredMeta>, since: u64) {
        self.put(StoreKey::Meta(key), StoreValue::Meta(meta), since)
            .await;
    }

    /// Drops an object's metadata (it changed, or was purged).
    pub(super) async fn forget_meta(&self, key: &ObjectKey) {
        self.cache.invalidate(&StoreKey::Meta(key.clone())).await;
    }

    /// A stored chunk; with `join` (the request is a hit), one stored in pieces is joined
    /// into one buffer, which replaces it in the store.
    pub(super) async fn chunk(&self, key: &ChunkKey, join: bool) -> Option<StoredChunk> {
        let since = self.generation();
        let chunk = match self.cache.get(&StoreKey::Chunk(key.clone())).await {
            Some(StoreValue::Chunk(chunk)) => chunk,
            _ => return None,
        };
        let StoredChunk::Pieces(pieces) = &chunk else {
            return Some(chunk);
        };
        if !join {
            return Some(chunk);
        }
        let len = pieces.iter().map(Bytes::len).sum();
        let (mut buf, reused) = self.pool.take(len);
        if reused {
            self.metrics.buffers_reused.inc();
        }
        for piece in pieces.iter() {
            buf.extend_from_slice(piece);
        }
        let joined = StoredChunk::One(buf.freeze());
        self.metrics.chunks_joined.inc();
        // The pieces' buffer goes to the pool through the eviction listener (cause
        // `Replaced`), or through the purge that made this put a no-op.
        self.put(
            StoreKey::Chunk(key.clone()),
            StoreValue::Chunk(joined.clone()),
            since,
        )
        .await;
        Some(joined)
    }

    /// Whether a chunk is stored (synchronous: usable under a lock).
    pub(super) fn has_chunk(&self, key: &ChunkKey) -> bool {
        self.cache.contains_key(&StoreKey::Chunk(key.clone()))
    }

    /// Stores a chunk fetched in generation `since`.
    pub(super) async fn put_chunk(&self, key: ChunkKey, chunk: StoredChunk, since: u64) {
        let len = chunk.len() as u64;
        self.put(StoreKey::Chunk(key), StoreValue::Chunk(chunk), since)
            .await;
        let unsettled = self.unsettled.fetch_add(len, Ordering::AcqRel) + len;
        if unsettled >= self.settle_every {
            self.unsettled.store(0, Ordering::Release);
            self.cache.run_pending_tasks().await;
        }
    }

    /// The pool fills take their chunk buffers from.
    pub(super) fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Drops every entry of objects in `region` whose key satisfies `matches`.
    pub(super) fn purge(
        &self,
        region: usize,
        matches: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<(), moka::PredicateError> {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.cache
            .invalidate_entries_if(move |key, _| {
                let object = match key {
                    StoreKey::Meta(o) => o,
                    StoreKey::Chunk(c) => &c.object,
                };
                object.region == region && matches(&object.key)
            })
            .map(|_| ())
    }

    /// Drops every entry.
    pub(super) fn clear(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// Weighted bytes held.
    pub(super) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Entries held.
    pub(super) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies pending evictions and invalidations now (tests, metrics).
    pub(super) async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_in_pieces_slices_like_one_buffer() {
        let whole: Bytes = (0..100u8).collect::<Vec<u8>>().into();
        let pieces = StoredChunk::from_pieces(vec![
            whole.slice(0..10),
            whole.slice(10..45),
            whole.slice(45..46),
            whole.slice(46..100),
        ]);
        let one = StoredChunk::from_pieces(vec![whole.clone()]);
        assert!(matches!(one, StoredChunk::One(_)));
        assert_eq!(pieces.len(), 100);
        for (lo, hi) in [
            (0, 100),
            (0, 10),
            (9, 11),
            (10, 45),
            (44, 47),
            (45, 46),
            (99, 100),
        ] {
            let mut out = Vec::new();
            assert!(pieces.slices_into(lo, hi, &mut out), "{lo}..{hi}");
            assert!(out.iter().all(|s| !s.is_empty()), "{lo}..{hi}: {out:?}");
            assert_eq!(out.concat(), whole[lo..hi], "{lo}..{hi}");
            let mut single = Vec::new();
            assert!(one.slices_into(lo, hi, &mut single));
            assert_eq!(single, vec![whole.slice(lo..hi)]);
        }
        let mut out = Vec::new();
        assert!(!pieces.slices_into(50, 101, &mut out));
        assert!(!pieces.slices_into(7, 7, &mut out));
        assert!(out.is_empty());
        assert!(
            matches!(StoredChunk::from_pieces(Vec::new()), StoredChunk::One(b) if b.is_empty())
        );
    }
}
