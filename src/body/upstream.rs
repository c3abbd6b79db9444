//! The backend's response body as the gateway reads it: frames pass through unchanged, a
//! silence longer than `body_idle` ends it with an error (a trickling or hung backend never
//! holds a client forever), and a cut is counted. Dropping it marks the upstream request done.
//! A long body asks its connection for fewer, larger reads ([`super::coalesce`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, Sleep};

use super::coalesce::{Coalescer, Coalescing, MAX_WAIT};
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
    coalescing: Coalescing,
    _in_flight: InFlightGuard,
}

impl UpstreamBody {
    /// `connection` is the response's handle on its connection's reads, if it has one.
    pub(crate) fn new(
        body: Incoming,
        connection: Option<&Coalescer>,
        idle: Duration,
        metrics: Arc<RegionMetrics>,
        in_flight: InFlightGuard,
    ) -> Self {
        let coalescing = Coalescing::start(connection, body.size_hint().exact());
        UpstreamBody {
            coalescing,
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
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.last = Instant::now();
                    if let Some(data) = frame.data_ref() {
                        this.coalescing.received(data.len());
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.coalescing.stop();
                    this.metrics.error("body_cut");
                    return Poll::Ready(Some(Err(UpstreamBodyError::Cut(error))));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            // While reads are coalesced a wait is short: a longer one means a slow upstream,
            // whose bytes then pass as they come.
            let coalescing = this.coalescing.active();
            let deadline = if coalescing {
                this.last + MAX_WAIT.min(this.idle)
            } else {
                this.last + this.idle
            };
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if coalescing {
                this.coalescing.stop();
                continue;
            }
            this.metrics.error("timeout_body");
            return Poll::Ready(Some(Err(UpstreamBodyError::Idle(this.idle))));
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
