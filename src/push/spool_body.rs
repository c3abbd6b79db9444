//! A byte range of a spool file as an upload's body: read on the blocking pool in blocks of
//! 1 MiB, each straight into the buffer that is sent (the file was just written, so it is
//! read through the page cache).
//!
//! Why not the SDK's file body (`ByteStream::read_from().path(…)`): it reads through
//! `tokio::fs`, whose reads land in a buffer of its own and are copied out of it, 256 KiB per
//! trip to the blocking pool; this was half the push process's `memmove` on the push bench.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::source::BLOCK;

/// Bytes `offset..offset + length` of the file at `path`. Retryable: each try of the request
/// reads the range again (a reader starts only once the body is polled).
pub(super) fn spool_range(path: PathBuf, offset: u64, length: u64) -> ByteStream {
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(RangeBody {
            start: Some((path.clone(), offset)),
            blocks: None,
            left: length,
        })
    }))
}

/// A range being read: the reader starts on the first poll.
struct RangeBody {
    start: Option<(PathBuf, u64)>,
    blocks: Option<mpsc::Receiver<io::Result<Bytes>>>,
    /// Bytes not yet handed out.
    left: u64,
}

/// Blocks read ahead of the sender: one, the range is in the page cache (with a block being
/// read and one being sent, a part in flight holds about 3 MiB).
const AHEAD: usize = 1;

impl Body for RangeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if let Some((path, offset)) = self.start.take() {
            let (tx, rx) = mpsc::channel(AHEAD);
            let length = self.left;
            tokio::task::spawn_blocking(move || read_range(path, offset, length, &tx));
            self.blocks = Some(rx);
        }
        let Some(blocks) = self.blocks.as_mut() else {
            return Poll::Ready(None);
        };
        match blocks.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(block))) => {
                self.left = self.left.saturating_sub(block.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(block))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.left = 0;
                Poll::Ready(Some(Err(e)))
            }
            // The reader stopped without an error before the range's end: never send a short
            // body under the length the request announced.
            Poll::Ready(None) => {
                self.left = 0;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spool file ended before the range",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Sends `length` bytes of `path` from `offset` into `tx`, in blocks of [`BLOCK`]; an error
/// (the file is gone or shorter) goes to the body.
fn read_range(path: PathBuf, offset: u64, length: u64, tx: &mpsc::Sender<io::Result<Bytes>>) {
    if let Err(e) = send_range(&path, offset, length, tx) {
        let _ = tx.blocking_send(Err(e));
    }
}

fn send_range(
    path: &std::path::Path,
    offset: u64,
    length: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    file.seek(io::SeekFrom::Start(offset))?;
    let mut left = length;
    while left > 0 {
        let want = left.min(BLOCK as u64);
        // Read into the spare capacity: a block is not zeroed first (a direct read's
        // aligned block is; through the page cache alignment does not matter).
        let mut block = Vec::with_capacity(usize::try_from(want).unwrap_or(BLOCK));
        (&mut file).take(want).read_to_end(&mut block)?;
        if block.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: {} of {length} bytes", path.display(), length - left),
            ));
        }
        left -= block.len() as u64;
        // The body is gone (the request ended): stop reading.
        if tx.blocking_send(Ok(Bytes::from(block))).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(stream: ByteStream) -> io::Result<Vec<u8>> {
        stream
            .collect()
            .await
            .map(|b| b.into_bytes().to_vec())
            .map_err(|e| {
                // The whole chain: the stream's error says only "streaming error".
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                io::Error::other(text)
            })
    }

    #[tokio::test]
    async fn a_range_is_read_whole_and_again_on_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 777)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let (offset, length) = (1_000_001u64, 2 * 1024 * 1024 + 5);
        let range = &data[offset as usize..(offset + length) as usize];

        let stream = spool_range(path.clone(), offset, length);
        assert_eq!(stream.size_hint(), (length, Some(length)));
        let body = stream.into_inner();
        let again = body.try_clone().expect("a retry can rebuild the body");
        assert_eq!(collect(ByteStream::new(body)).await.unwrap(), range);
        assert_eq!(collect(ByteStream::new(again)).await.unwrap(), range);

        // The last bytes of the file.
        let tail = spool_range(path, data.len() as u64 - 10, 10);
        assert_eq!(collect(tail).await.unwrap(), &data[data.len() - 10..]);
    }

    #[tokio::test]
    async fn a_short_or_missing_file_is_an_error_not_a_short_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 5000]).unwrap();
        let short = spool_range(path.clone(), 1000, 5000);
        let error = collect(short).await.unwrap_err();
        assert!(error.to_string().contains("4000 of 5000"), "{error}");

        let missing = spool_range(dir.path().join("gone"), 0, 10);
        assert!(collect(missing).await.is_err());

        // A body that is never polled starts no reader.
        let mut unpolled = RangeBody {
            start: Some((path, 0)),
            blocks: None,
            left: 10,
        };
        assert!(unpolled.blocks.is_none());
        let frame = unpolled.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 10);
    }
}
