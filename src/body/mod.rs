//! One response body type: an upstream stream passed through frame by frame, cached pieces,
//! a producer's stream of pieces, a small fixed body, or nothing. It counts the bytes it hands out and
//! writes the access log line when the response ends (completed, failed or dropped).
//!
//! - [`upstream`]: the backend's body under an idle limit ([`UpstreamBody`]).
//! - [`coalesce`]: fewer, larger reads of a long backend body (`SO_RCVLOWAT`).
//! - [`log`]: the access log record and the cache's outcome as the log and metrics see it.

pub(crate) mod coalesce;
pub(crate) mod log;
pub(crate) mod upstream;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub(crate) use log::{AccessLog, CacheResult};
pub(crate) use upstream::{InFlightGuard, UpstreamBody};

/// The producer of a streamed body failed before its end: the response is cut, never
/// completed short.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the body's producer failed before its end")]
pub struct StreamCut;

/// The body of every response the gateway sends.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    log: Option<Box<AccessLog>>,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Full(Option<Bytes>),
    Parts(std::collections::VecDeque<Bytes>),
    Stream(Option<Bytes>, PieceStream),
    Upstream(UpstreamBody),
}

/// Pieces produced by polling, in the connection's own task.
pub struct PieceStream(
    Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, StreamCut>> + Send + 'static>>,
);

impl PieceStream {
    /// Boxes a stream of pieces.
    pub fn new(
        stream: impl futures_util::Stream<Item = Result<Bytes, StreamCut>> + Send + 'static,
    ) -> Self {
        PieceStream(Box::pin(stream))
    }
}

impl std::fmt::Debug for PieceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PieceStream")
    }
}

/// Why a body stream ended early.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl ResponseBody {
    /// No body (HEAD, 204, 304).
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Empty,
            log: None,
        }
    }

    /// A body held in memory.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            log: None,
        }
    }

    /// Cached pieces, sent in order without copying.
    pub fn parts(parts: Vec<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Parts(parts.into()),
            log: None,
        }
    }

    /// `first`, then the stream's pieces, polled when the connection wants more; an `Err`
    /// cuts the response.
    pub fn stream(first: Option<Bytes>, pieces: PieceStream) -> Self {
        ResponseBody {
            kind: Kind::Stream(first, pieces),
            log: None,
        }
    }

    /// The backend's body, forwarded as it arrives; backpressure reaches the backend.
    pub fn upstream(body: UpstreamBody) -> Self {
        ResponseBody {
            kind: Kind::Upstream(body),
            log: None,
        }
    }

    /// Attaches the access log record, written when this body is dropped.
    pub fn with_log(mut self, mut log: AccessLog) -> Self {
        // hyper never polls a body that is already at its end.
        log.complete |= self.is_end_stream();
        self.log = Some(Box::new(log));
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BodyError>>> = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Parts(parts) => Poll::Ready(parts.pop_front().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(first, pieces) => match first.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => pieces
                    .0
                    .as_mut()
                    .poll_next(cx)
                    .map(|piece| piece.map(|r| r.map(Frame::data).map_err(BodyError::from))),
            },
            Kind::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BodyError::from))),
        };
        if let Some(log) = this.log.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        log.bytes += data.len() as u64;
                    }
                    // hyper stops polling once the known length is reached.
                    log.complete = this.kind.is_end_stream();
                }
                Poll::Ready(Some(Err(e))) => log.failure = Some(e.to_string()),
                Poll::Ready(None) => log.complete = true,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Parts(parts) => SizeHint::with_exact(parts.iter().map(|b| b.len() as u64).sum()),
            Kind::Stream(..) => SizeHint::default(),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Parts(parts) => parts.is_empty(),
            // Ends when the producer closes the channel; hyper knows the length from headers.
            Kind::Stream(..) => false,
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }
}
