//! Chunk buffers kept for the next fills: those of evicted or purged chunks, and the fills'
//! own once a chunk is stored as one copy. Memory the process has touched is reused without
//! page faults; fresh memory is zeroed by the kernel on first touch, which a `perf` profile of
//! cold transfers put at half of the gateway's CPU. The pool is bounded, so what it keeps
//! beyond the cache's capacity is at most its bound.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};

/// Buffers of one chunk size, at most `max` of them.
#[derive(Debug)]
pub(super) struct BufferPool {
    /// First pieces of dropped buffers: each owns its buffer once every other slice of it is
    /// gone (the store's entry goes after its eviction listener has run, and a response may
    /// still be sending it), so they are reclaimed when a fill asks.
    returned: Mutex<VecDeque<Bytes>>,
    /// Capacity of every pooled buffer.
    size: usize,
    /// Buffers kept at most.
    max: usize,
}

impl BufferPool {
    /// A pool of `size`-byte buffers holding at most `bound` bytes.
    pub(super) fn new(size: usize, bound: u64) -> Self {
        let max = usize::try_from(bound / size.max(1) as u64).unwrap_or(0);
        BufferPool {
            returned: Mutex::new(VecDeque::with_capacity(max.min(1024))),
            size,
            max,
        }
    }

    /// An empty buffer for at least `len` bytes: a kept one when `len` is a chunk's size
    /// (a short last chunk gets its own, so the store's weight stays its memory) and one is
    /// free of readers (`true`), else a new one.
    pub(super) fn take(&self, len: usize) -> (BytesMut, bool) {
        if len == self.size {
            let mut returned = self.returned();
            for _ in 0..returned.len() {
                let Some(first) = returned.pop_front() else {
                    break;
                };
                match first.try_into_mut() {
                    Ok(mut buf) if buf.capacity() >= self.size => {
                        buf.clear();
                        return (buf, true);
                    }
                    // Smaller than a chunk (cannot happen for a first piece): dropped.
                    Ok(_) => {}
                    // Still read: kept for a later fill.
                    Err(first) => returned.push_back(first),
                }
            }
        }
        (BytesMut::with_capacity(len), false)
    }

    /// Keeps the first piece of a dropped buffer, and with it the buffer, if the pool has
    /// room.
    pub(super) fn give(&self, first: Bytes) {
        let mut returned = self.returned();
        if returned.len() < self.max {
            returned.push_back(first);
        }
    }

    /// Fills the pool to its bound with buffers whose pages are touched (`cache.prefault`):
    /// run on a thread of its own at start.
    pub(super) fn prefault(&self) {
        for _ in 0..self.max {
            if self.returned().len() >= self.max {
                return;
            }
            let mut buf = BytesMut::with_capacity(self.size);
            buf.resize(self.size, 0);
            self.give(buf.freeze());
        }
    }

    /// The kept pieces; a panic elsewhere never wedges the pool (each critical section is
    /// one push or pop).
    fn returned(&self) -> MutexGuard<'_, VecDeque<Bytes>> {
        self.returned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes held.
    pub(super) fn held(&self) -> u64 {
        (self.returned().len() * self.size) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_chunks_buffer_is_reused_once_nothing_holds_it() {
        let pool = BufferPool::new(1024, 2048);
        let (mut buf, reused) = pool.take(1024);
        assert!(!reused);
        buf.extend_from_slice(&[7; 600]);
        let first = buf.split().freeze();
        buf.extend_from_slice(&[8; 424]);
        let second = buf.split().freeze();
        drop(buf);
        let address = first.as_ptr();
        pool.give(first);
        assert_eq!(pool.held(), 1024);
        // The second piece still shares the buffer: a new one, the kept one stays.
        let (other, reused) = pool.take(1024);
        assert!(!reused);
        assert_ne!(other.as_ptr(), address);
        assert_eq!(pool.held(), 1024);
        drop(second);
        // A short chunk gets a buffer of its own size.
        assert!(pool.take(100).0.capacity() < 1024);
        assert_eq!(pool.held(), 1024);
        let (again, reused) = pool.take(1024);
        assert!(reused);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty() && again.capacity() >= 1024);
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn prefault_fills_the_pool_with_reusable_buffers() {
        let pool = BufferPool::new(1024, 4096);
        pool.prefault();
        assert_eq!(pool.held(), 4096);
        let (buf, reused) = pool.take(1024);
        assert!(reused && buf.is_empty() && buf.capacity() >= 1024);
        assert_eq!(pool.held(), 3072);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let pool = BufferPool::new(1024, 2048);
        for _ in 0..5 {
            let mut buf = BytesMut::with_capacity(1024);
            buf.extend_from_slice(&[1; 1024]);
            pool.give(buf.freeze());
        }
        assert_eq!(pool.held(), 2048);
    }
}
