//! One response body type: an upstream stream passed through frame by frame, a small fixed
//! body, or nothing. It counts the bytes it hands out and writes the access log line when the
//! response ends (completed, failed or dropped by the client).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::cache::fill::FillFailed;
use crate::metrics::{Metrics, RequestLabels};
use crate::upstream::UpstreamBody;

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
    Channel(Option<Bytes>, mpsc::Receiver<Result<Bytes, FillFailed>>),
    Upstream(UpstreamBody),
}

/// Why a body stream ended early.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

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

    /// `first`, then pieces produced by a task; an `Err` cuts the response (never a short
    /// "complete" body).
    pub fn channel(first: Option<Bytes>, rx: mpsc::Receiver<Result<Bytes, FillFailed>>) -> Self {
        ResponseBody {
            kind: Kind::Channel(first, rx),
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
            Kind::Channel(first, rx) => match first.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => rx
                    .poll_recv(cx)
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
            Kind::Channel(..) => SizeHint::default(),
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
            Kind::Channel(..) => false,
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }
}

/// A response of our own: a status and a fixed short text, never backend detail.
pub fn short_response(
    status: http::StatusCode,
    message: &'static str,
) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(ResponseBody::full(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// One access log line, filled in along the request and written on drop.
#[derive(Debug)]
pub struct AccessLog {
    /// Request method.
    pub method: http::Method,
    /// Host as the client sent it.
    pub host: String,
    /// Path without the query string.
    pub path: String,
    /// Region name, when the route resolved.
    pub region: Option<std::sync::Arc<str>>,
    /// Status sent to the client.
    pub status: u16,
    /// Status the backend answered, when it was asked directly.
    pub upstream_status: Option<u16>,
    /// The response's `Cache-Status`, when the cache answered.
    pub cache: Option<http::HeaderValue>,
    /// Body bytes handed to the client.
    pub bytes: u64,
    /// When the request arrived.
    pub start: Instant,
    /// The body ended normally.
    pub complete: bool,
    /// Why the body stream failed, if it did.
    pub failure: Option<String>,
    /// Where the request is counted.
    pub metrics: Metrics,
}

/// The metrics label of a `Cache-Status` value.
fn cache_label(status: Option<&http::HeaderValue>) -> &'static str {
    let Some(value) = status.map(http::HeaderValue::as_bytes) else {
        return "none";
    };
    let has = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
    if has(b"detail=stale") {
        "stale"
    } else if has(b"; hit") {
        "hit"
    } else if has(b"fwd=stale") {
        "revalidated"
    } else if has(b"fwd=miss") {
        "miss"
    } else {
        "bypass"
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let labels = RequestLabels {
            region: self
                .region
                .clone()
                .unwrap_or_else(|| std::sync::Arc::from("-")),
            // No status yet: the client went away before the response head (nginx's 499).
            status: if self.status == 0 { 499 } else { self.status },
            cache: cache_label(self.cache.as_ref()),
        };
        self.metrics
            .request(&labels, self.bytes, self.failure.is_some());
        let outcome = match (&self.failure, self.complete) {
            (Some(_), _) => "failed",
            (None, true) => "complete",
            (None, false) => "aborted",
        };
        tracing::info!(
            target: "s3edge::access",
            method = %self.method,
            host = %self.host,
            path = %self.path,
            region = self.region.as_deref().unwrap_or("-"),
            status = self.status,
            upstream_status = self.upstream_status,
            cache = self.cache.as_ref().and_then(|v| v.to_str().ok()),
            bytes = self.bytes,
            duration_ms = format_args!("{duration_ms:.3}"),
            outcome,
            failure = self.failure.as_deref(),
        );
    }
}
