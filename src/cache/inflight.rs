//! What is being fetched: every missing chunk has exactly one fetch, a cell that readers
//! follow piece by piece while it arrives (the first byte never waits for the whole chunk);
//! every object being probed has one probe, whose answer joiners await. A failed fetch fails
//! only the readers of that attempt. [`Fetches`] registers both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::store::{ChunkKey, ObjectKey, Store, StoredMeta};
use crate::body::StreamCut;
use crate::error::GatewayError;

/// One chunk being fetched: the frames so far, then the whole chunk or a failure.
#[derive(Debug)]
pub(crate) struct ChunkCell {
    state: Mutex<CellState>,
    changed: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct CellState {
    frames: Vec<Bytes>,
    filled: usize,
    outcome: Option<Result<Bytes, StreamCut>>,
}

impl ChunkCell {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(ChunkCell {
            state: Mutex::new(CellState::default()),
            changed: watch::channel(()).0,
        })
    }

    pub(super) fn push(&self, frame: Bytes) {
        {
            let mut state = lock(&self.state);
            state.filled += frame.len();
            state.frames.push(frame);
        }
        self.changed.send_replace(());
    }

    /// Completes the chunk: one contiguous buffer, exactly sized, for the store.
    pub(super) fn finish(&self) -> Option<Bytes> {
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

    pub(super) fn fail(&self) {
        {
            let mut state = lock(&self.state);
            if state.outcome.is_none() {
                state.frames.clear();
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
            frame: 0,
            offset: 0,
        }
    }
}

/// Reads a chunk as it arrives.
#[derive(Debug)]
pub(crate) struct ChunkReader {
    cell: Arc<ChunkCell>,
    changed: watch::Receiver<()>,
    frame: usize,
    offset: usize,
}

impl ChunkReader {
    /// The next bytes of the chunk; `None` at its end.
    pub(super) async fn next(&mut self) -> Option<Result<Bytes, StreamCut>> {
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
