//! Chunk buffers of evicted or purged chunks, kept for the next fills. Memory the process
//! has touched is reused without page faults; fresh memory is zeroed by the kernel on first
//! touch, which a `perf` profile of cold transfers put at half of the gateway's CPU. The pool
//! is bounded, so what it keeps beyond the cache's capacity is at most its bound.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use super::inflight::lock;

/// Buffers of one chunk size, at most `max` of them.
#[derive(Debug)]
pub(super) struct BufferPool {
    buffers: Mutex<Vec<BytesMut>>,
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
            buffers: Mutex::new(Vec::with_capacity(max.min(1024))),
            size,
            max,
        }
    }

    /// An empty buffer for at least `len` bytes: a kept one when `len` fits, else a new one.
    pub(super) fn take(&self, len: usize) -> BytesMut {
        if len <= self.size
            && let Some(buf) = lock(&self.buffers).pop()
        {
            return buf;
        }
        BytesMut::with_capacity(len)
    }

    /// Keeps the buffer behind a dropped chunk if nothing else holds it (a response still
    /// sending it keeps it alive, and it is freed later as usual) and the pool has room.
    pub(super) fn give(&self, first: Bytes) {
        let Ok(mut buf) = first.try_into_mut() else {
            return;
        };
        buf.clear();
        if buf.capacity() < self.size {
            return;
        }
        let mut buffers = lock(&self.buffers);
        if buffers.len() < self.max {
            buffers.push(buf);
        }
    }

    /// Bytes held.
    pub(super) fn held(&self) -> u64 {
        (lock(&self.buffers).len() * self.size) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_chunks_buffer_is_reused_once_nothing_holds_it() {
        let pool = BufferPool::new(1024, 2048);
        let mut buf = pool.take(1024);
        buf.extend_from_slice(&[7; 600]);
        let first = buf.split().freeze();
        buf.extend_from_slice(&[8; 424]);
        let second = buf.split().freeze();
        let address = first.as_ptr();
        // The second piece still shares the buffer: not reusable yet.
        pool.give(first.clone());
        assert_eq!(pool.held(), 0);
        drop(second);
        drop(buf);
        pool.give(first);
        assert_eq!(pool.held(), 1024);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty() && again.capacity() >= 1024);
        // Larger than the pool's size: a new buffer.
        assert!(pool.take(4096).capacity() >= 4096);
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
