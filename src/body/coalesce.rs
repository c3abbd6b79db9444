//! Fewer, larger reads of a long upstream body. An upstream connection reads as soon as any
//! data arrives: on loopback and fast links that is a 40 KB read, a wake-up and a frame passed
//! through every task on the way to the client, about 1,200 of each per 50 MB. While a
//! response still has well over [`LOW_WATER`] bytes to come, its connection asks the kernel
//! (`SO_RCVLOWAT`) not to wake it before that many are buffered, so each read, frame and
//! client write carries about 256 KB.
//!
//! It must never stall a body: the mark is raised only while the bytes still to come on the
//! socket are certainly more than it (the body's remaining length less what hyper may hold,
//! at most [`READ_BUFFER`] read ahead and one frame queued), it drops back to 1 once less than
//! [`MARGIN`] plus the mark is left, and a wait longer than [`MAX_WAIT`] (a slow or trickling
//! upstream) drops it for the rest of the body. Dropping it wakes the connection, which applies it
//! before its next read (and the kernel signals data already above the new mark).

use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The wake-up threshold while a long body streams.
pub(crate) const LOW_WATER: u32 = 256 * 1024;
/// hyper's largest read buffer on upstream connections (set on the client), which bounds
/// what it can have read ahead of the body's consumer.
pub(crate) const READ_BUFFER: usize = 512 * 1024;
/// Bytes still to come below which the mark is back at 1: what hyper may hold (its read
/// buffer and one queued frame), with room to spare for TLS records.
const MARGIN: u64 = 4 * READ_BUFFER as u64;
/// The longest wait for a full mark before it is dropped for the rest of the body.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(20);

/// What a connection's current response wants, and the connection task to wake when it
/// lowers the mark.
#[derive(Debug)]
struct Shared {
    wanted: AtomicU32,
    waker: AtomicWaker,
}

/// A response's handle on its connection's low-water mark (an extension of every response
/// the connection carries).
#[derive(Debug, Clone)]
pub(crate) struct Coalescer(Arc<Shared>);

impl Coalescer {
    fn want(&self, bytes: u32) {
        self.0.wanted.store(bytes, Ordering::Release);
    }
}

/// A body's use of the mark: raised while `remaining` allows, dropped for good once it no
/// longer does, after a long wait, or when the body is dropped.
#[derive(Debug)]
pub(crate) struct Coalescing {
    handle: Option<Coalescer>,
    /// Bytes of the body not yet handed to its consumer.
    remaining: u64,
}

impl Coalescing {
    /// Raises the mark when the body (`remaining` bytes, if its length is known) is long enough.
    pub(crate) fn start(handle: Option<&Coalescer>, remaining: Option<u64>) -> Self {
        let handle = match (handle, remaining) {
            (Some(handle), Some(remaining)) if remaining >= MARGIN + u64::from(LOW_WATER) => {
                handle.want(LOW_WATER);
                Some(handle.clone())
            }
            _ => None,
        };
        Coalescing {
            handle,
            remaining: remaining.unwrap_or(0),
        }
    }

    /// Whether the mark is raised (the body's waits are bounded by [`MAX_WAIT`]).
    pub(crate) fn active(&self) -> bool {
        self.handle.is_some()
    }

    /// Counts `bytes` handed out; drops the mark before the body's tail.
    pub(crate) fn received(&mut self, bytes: usize) {
        self.remaining = self.remaining.saturating_sub(bytes as u64);
        if self.handle.is_some() && self.remaining < MARGIN + u64::from(LOW_WATER) {
            self.stop();
        }
    }

    /// Drops the mark for the rest of the body and wakes the connection to apply it.
    pub(crate) fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.want(1);
            handle.0.waker.wake();
        }
    }
}

impl Drop for Coalescing {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An upstream TCP connection that applies its response's low-water mark before each read.
#[derive(Debug)]
pub(crate) struct CoalescingIo {
    inner: TokioIo<TcpStream>,
    shared: Arc<Shared>,
    applied: u32,
}

impl CoalescingIo {
    /// Wraps a new connection (mark at the kernel's default, 1).
    pub(crate) fn new(inner: TokioIo<TcpStream>) -> Self {
        CoalescingIo {
            inner,
            shared: Arc::new(Shared {
                wanted: AtomicU32::new(1),
                waker: AtomicWaker::new(),
            }),
            applied: 1,
        }
    }

    /// Sets the socket's mark to what the response wants, if it changed.
    fn apply(&mut self) {
        let wanted = self.shared.wanted.load(Ordering::Acquire);
        if wanted == self.applied {
            return;
        }
        match set_receive_low_water(self.inner.inner(), wanted) {
            Ok(()) => self.applied = wanted,
            // A socket that refuses it reads as before (the response's wish is dropped).
            Err(error) => {
                tracing::debug!(%error, "SO_RCVLOWAT refused");
                self.shared.wanted.store(self.applied, Ordering::Release);
            }
        }
    }
}

impl Connection for CoalescingIo {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(Coalescer(self.shared.clone()))
    }
}

impl Read for CoalescingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.apply();
        if this.applied > 1 {
            this.shared.waker.register(cx.waker());
            // A drop stored before the registration found no waker to wake: look again.
            this.apply();
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl Write for CoalescingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// `setsockopt(SO_RCVLOWAT)`: neither `rustix`, `socket2` nor `nix` offers it.
#[allow(unsafe_code)]
fn set_receive_low_water(socket: &TcpStream, bytes: u32) -> std::io::Result<()> {
    let fd = socket.as_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket borrowed for the call; the kernel reads `size_of::<c_int>()`
    // bytes from `&value`, which lives on this stack frame until the call returns.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: the server's end, and the client's wrapped (as tokio I/O again).
    async fn pair() -> (TcpStream, TokioIo<CoalescingIo>, Coalescer) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let io = CoalescingIo::new(TokioIo::new(client.unwrap()));
        let handle = Coalescer(io.shared.clone());
        (server.unwrap().0, TokioIo::new(io), handle)
    }

    #[tokio::test]
    async fn a_raised_mark_holds_small_arrivals_and_dropping_it_releases_them() {
        let (mut server, mut client, handle) = pair().await;
        let mut coalescing = Coalescing::start(Some(&handle), Some(8 << 20));
        assert!(coalescing.active());
        let mut buf = vec![0u8; 1 << 20];
        let reader = tokio::spawn(async move {
            let n = client.read(&mut buf).await.unwrap();
            (client, buf, n)
        });
        // A read finds what is already there: let the reader park first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // 100 KiB is below the mark: the reader is not woken.
        server.write_all(&[1u8; 100 * 1024]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished(), "a read woke below the mark");
        // Past the mark: one read takes all of it.
        server.write_all(&[2u8; 200 * 1024]).await.unwrap();
        let (mut client, mut buf, n) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(n >= LOW_WATER as usize, "{n}");
        let mut total = n;
        while total < 300 * 1024 {
            total += client.read(&mut buf).await.unwrap();
        }
        // A small arrival waits again, until the mark is dropped: then it comes at once.
        let reader = tokio::spawn(async move {
            let n = client.read(&mut buf).await.unwrap();
            (client, buf, n)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.write_all(&[3u8; 10_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished(), "a read woke below the mark");
        coalescing.stop();
        let (_, buf, n) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 10_000);
        assert!(buf[..n].iter().all(|&b| b == 3));
        assert!(!coalescing.active());
    }

    #[tokio::test]
    async fn short_or_unsized_bodies_and_their_tails_leave_the_mark_at_one() {
        let (_server, _client, handle) = pair().await;
        let floor = MARGIN + u64::from(LOW_WATER);
        for remaining in [None, Some(0), Some(floor - 1)] {
            assert!(!Coalescing::start(Some(&handle), remaining).active());
            assert_eq!(handle.0.wanted.load(Ordering::Acquire), 1);
        }
        assert!(!Coalescing::start(None, Some(floor * 2)).active());
        let mut body = Coalescing::start(Some(&handle), Some(floor + 10));
        assert!(body.active());
        assert_eq!(handle.0.wanted.load(Ordering::Acquire), LOW_WATER);
        body.received(10);
        assert!(body.active());
        body.received(1);
        assert!(!body.active(), "dropped before the tail");
        assert_eq!(handle.0.wanted.load(Ordering::Acquire), 1);
        // A body dropped halfway drops the mark too.
        let body = Coalescing::start(Some(&handle), Some(floor * 2));
        assert_eq!(handle.0.wanted.load(Ordering::Acquire), LOW_WATER);
        drop(body);
        assert_eq!(handle.0.wanted.load(Ordering::Acquire), 1);
    }
}
