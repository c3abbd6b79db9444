//! The backend's response body as the gateway reads it: frames pass through unchanged, a
//! silence longer than `body_idle` ends it with an error (a trickling or hung backend never
//! holds a client forever), and a cut is counted. Dropping it marks the upstream request done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, Sleep};

use crate::metrics::RegionMetrics;

/// Why the backend's body ended early.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    /// The connection failed or closed before the announced length.
    #[error("backend body cut: {0}")]
    Cut(#[source] hyper::Error),
    /// No frame arrived for longer than the idle limit.
    #[error("backend body idle for more than {0:?}")]
    Idle(Duration),
}

/// A backend body with an idle limit between frames.
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    idle: Duration,
    /// When the last frame (or the head) arrived.
    last: Instant,
    /// Armed only while waiting, so a fast transfer never touches the timer.
    timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<RegionMetrics>,
    _in_flight: InFlightGuard,
}

impl UpstreamBody {
    pub(crate) fn new(
        body: Incoming,
        idle: Duration,
        metrics: Arc<RegionMetrics>,
        in_flight: InFlightGuard,
    ) -> Self {
        UpstreamBody {
            body,
            idle,
            last: Instant::now(),
            timer: None,
            metrics,
            _in_flight: in_flight,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.metrics.error("body_cut");
                Poll::Ready(Some(Err(UpstreamBodyError::Cut(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.last + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                this.metrics.error("timeout_body");
                Poll::Ready(Some(Err(UpstreamBodyError::Idle(this.idle))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts an upstream request in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlightGuard(Gauge);

impl InFlightGuard {
    /// Starts counting.
    pub(crate) fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        InFlightGuard(gauge.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
