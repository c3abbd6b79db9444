//! What is being fetched: every missing chunk has exactly one fetch, a cell that readers
//! follow piece by piece while it arrives (the first byte never waits for the whole chunk;
//! the pieces are slices of the fill's one buffer, whose upstream frames are released at once);
//! every object being probed has one probe, whose answer joiners await. A failed fetch fails
//! only the readers of that attempt. [`Fetches`] registers both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::store::{ChunkKey, ObjectKey, Store, StoredMeta};
use crate::body::StreamCut;
use crate::error::GatewayError;

/// One chunk being fetched: its pieces so far, then its end or a failure.
#[derive(Debug)]
pub(crate) struct ChunkCell {
    state: Mutex<CellState>,
    changed: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct CellState {
    pieces: Vec<Bytes>,
    outcome: Option<Result<(), StreamCut>>,
}

impl ChunkCell {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(ChunkCell {
            state: Mutex::new(CellState::default()),
            changed: watch::channel(()).0,
        })
    }

    /// Publishes the next piece to the readers.
    pub(super) fn push(&self, piece: Bytes) {
        lock(&self.state).pieces.push(piece);
        self.changed.send_replace(());
    }

    /// Completes the chunk: its pieces, for the store.
    pub(super) fn finish(&self) -> Vec<Bytes> {
        let pieces = {
            let mut state = lock(&self.state);
            state.outcome = Some(Ok(()));
            state.pieces.clone()
        };
        self.changed.send_replace(());
        pieces
    }

    pub(super) fn fail(&self) {
        {
            let mut state = lock(&self.state);
            if state.outcome.is_none() {
                state.pieces.clear();
                state.outcome = Some(Err(StreamCut));
            }
        }
        self.changed.send_replace(());
    }

    /// Follows the chunk from its first byte.
    pub(super) fn reader(self: &Arc<Self>) -> ChunkReader {
        ChunkReader {
            changed: self.changed.subscribe(),
            cell: self.clone(),
            piece: 0,
        }
    }
}

/// Reads a chunk as it arrives.
#[derive(Debug)]
pub(crate) struct ChunkReader {
    cell: Arc<ChunkCell>,
    changed: watch::Receiver<()>,
    piece: usize,
}

impl ChunkReader {
    /// The next bytes of the chunk; `None` at its end.
    pub(super) async fn next(&mut self) -> Option<Result<Bytes, StreamCut>> {
        loop {
            {
                let state = lock(&self.cell.state);
                if let Some(Err(e)) = &state.outcome {
                    return Some(Err(*e));
                }
                if let Some(piece) = state.pieces.get(self.piece) {
                    self.piece += 1;
                    return Some(Ok(piece.clone()));
                }
                if state.outcome.is_some() {
                    return None;
                }
            }
            // Subscribed before the state was read, so no update is missed.
            if self.changed.changed().await.is_err() {
                return Some(Err(StreamCut));
            }
        }
    }
}

/// A probe's answer: fresh metadata, and whether the backend confirmed an unchanged object.
#[derive(Debug, Clone)]
pub(crate) struct Probed {
    /// The metadata now stored.
    pub(super) meta: Arc<StoredMeta>,
    /// The backend answered 304 to our validator.
    pub(super) unchanged: bool,
}

pub(super) type ProbeResult = Option<Result<Probed, Arc<GatewayError>>>;

/// Fetches in flight, so concurrent misses share one.
#[derive(Debug, Default)]
pub(crate) struct Fetches {
    /// Chunks being filled.
    pub(super) chunks: Mutex<HashMap<ChunkKey, Arc<ChunkCell>>>,
    /// Metadata probes running.
    pub(super) probes: Mutex<HashMap<ObjectKey, watch::Receiver<ProbeResult>>>,
}

/// A run of consecutive chunks claimed for one upstream request.
pub(super) type Run = Vec<(ChunkKey, Arc<ChunkCell>)>;

/// Claims the chunks from `first` on, at most `limit`, stopping before the first one that is
/// stored or already being fetched; the caller holds the chunk registry's lock.
pub(super) fn claim_run(
    chunks: &mut HashMap<ChunkKey, Arc<ChunkCell>>,
    store: &Store,
    first: ChunkKey,
    end: u64,
) -> Run {
    let mut run = Vec::new();
    for index in first.index..end {
        let key = ChunkKey {
            index,
            ..first.clone()
        };
        if chunks.contains_key(&key) || store.has_chunk(&key) {
            break;
        }
        let cell = ChunkCell::new();
        chunks.insert(key.clone(), cell.clone());
        run.push((key, cell));
    }
    run
}

/// Locks a registry; a panic elsewhere never wedges the cache (the data stay consistent:
/// every critical section is a single insert, remove or push).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
