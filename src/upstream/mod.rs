//! Per-region upstream: fetch with retries (jittered backoff, before the first byte only),
//! the region's circuit breaker, and the body's idle limit.
//!
//! - [`client`]: the pooled HTTP(S) client, name resolution, the response-head timeout.
//! - [`sign`]: SigV4 signing and S3 key encoding.
//! - [`status`]: backend statuses turned into errors (S3 error code read for the log).

mod client;
mod sign;
mod status;

pub use sign::encode_key;
pub use status::upstream_status_error;

use std::sync::Arc;

use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::coalesce::Coalescer;
use crate::body::{InFlightGuard, UpstreamBody};
use crate::circuit::Circuit;
use crate::config::{Addressing, Config, RegionConfig, RetryPolicy, Timeouts};
use crate::credentials::SigningCredentials;
use crate::error::{GatewayError, StartupError};
use crate::metrics::{Metrics, RegionMetrics};
use client::BackendClient;
use sign::Signer;

/// Backend statuses worth another try: the backend or a proxy in front of it is overloaded
/// or restarting.
const RETRIED_STATUSES: [StatusCode; 4] = [
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// One region's backend: where its bucket is and how to sign for it.
#[derive(Debug)]
pub struct Upstream {
    /// Region name, for logs.
    name: String,
    /// Bucket name, for the misconfiguration log on redirects.
    bucket: String,
    /// Path or virtual-hosted addressing.
    addressing: Addressing,
    /// Pooled HTTP/1.1 client with keep-alive and TCP_NODELAY.
    client: BackendClient,
    /// `scheme://authority` of every request (virtual-hosted: the bucket's host).
    base: String,
    /// Encoded path in front of every key: `/bucket/prefix` or `/prefix`.
    path_prefix: String,
    /// Signs every request with the region's identity.
    signer: Signer,
    /// Limits on waiting for the backend.
    timeouts: Timeouts,
    /// Retries before the first byte.
    retry: RetryPolicy,
    /// Fails fast while the backend keeps failing.
    circuit: Circuit,
    /// This region's series.
    metrics: Arc<RegionMetrics>,
}

impl Upstream {
    /// Builds the client and precomputes the URL parts of a region; the region's own
    /// timeouts win over the config's defaults.
    pub fn new(
        region: &RegionConfig,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<Self, StartupError> {
        let timeouts = region.timeouts.unwrap_or(config.timeouts);
        let metrics = Arc::new(metrics.region(&Arc::from(region.name.as_str())));
        let scheme = region.endpoint.scheme_str().unwrap_or("https");
        let authority = region
            .endpoint
            .authority()
            .ok_or_else(|| StartupError::Upstream {
                region: region.name.clone(),
                reason: "the endpoint has no host".into(),
            })?;
        let (base, mut path_prefix) = match region.addressing {
            Addressing::Path => (
                format!("{scheme}://{authority}"),
                format!("/{}", encode_key(&region.bucket)),
            ),
            Addressing::VirtualHosted => (
                format!("{scheme}://{}.{authority}", region.bucket),
                String::new(),
            ),
        };
        path_prefix.push('/');
        path_prefix.push_str(&encode_key(&region.key_prefix));
        Ok(Upstream {
            name: region.name.clone(),
            bucket: region.bucket.clone(),
            addressing: region.addressing,
            client: BackendClient::new(timeouts, region.connect_to).map_err(|e| match e {
                StartupError::Upstream { reason, .. } => StartupError::Upstream {
                    region: region.name.clone(),
                    reason,
                },
                other => other,
            })?,
            base,
            path_prefix,
            signer: Signer::new(
                region.signing_region.clone(),
                SigningCredentials::new(region),
            ),
            timeouts,
            retry: config.retry,
            circuit: Circuit::new(config.circuit, (*metrics).clone()),
            metrics,
        })
    }

    /// The upstream URL of a key (the region's key prefix is added here).
    pub fn object_url(&self, key: &str) -> String {
        let encoded = encode_key(key);
        let mut url =
            String::with_capacity(self.base.len() + self.path_prefix.len() + encoded.len());
        url.push_str(&self.base);
        url.push_str(&self.path_prefix);
        url.push_str(&encoded);
        url
    }

    /// Sends a signed GET or HEAD for `key` carrying only the forwardable headers. A connect
    /// error, a reset or a 500/502/503/504 is retried (nothing has reached the client yet);
    /// while the region's circuit is open, fails at once.
    pub async fn fetch(
        &self,
        method: Method,
        key: &str,
        forward: HeaderMap,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        if self.circuit.admit().is_err() {
            self.metrics.error("circuit_open");
            return Err(GatewayError::RegionUnavailable);
        }
        let url = self.object_url(key);
        let mut attempt = 1;
        loop {
            let request = self.signer.sign(method.clone(), &url, forward.clone())?;
            let in_flight = InFlightGuard::new(&self.metrics.in_flight);
            let started = std::time::Instant::now();
            let outcome = self.client.send(request).await;
            let (failure, retryable) = match &outcome {
                Ok(response) => {
                    self.metrics
                        .latency
                        .observe(started.elapsed().as_secs_f64());
                    let status = response.status();
                    let failed = status.is_server_error().then_some("status_5xx");
                    (failed, RETRIED_STATUSES.contains(&status))
                }
                Err(error) => (Some(error.upstream_kind()), error.is_retryable()),
            };
            let Some(kind) = failure else {
                self.circuit.success();
                let response = outcome?;
                self.check_redirect(&response)?;
                return Ok(self.idle_limited(response, in_flight));
            };
            self.metrics.error(kind);
            if retryable && attempt < self.retry.attempts {
                drop(outcome);
                self.metrics.retries.inc();
                tokio::time::sleep(self.backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            self.circuit.failure();
            // The caller maps a final 5xx to its own error (and reads the S3 code for the log).
            return outcome.map(|response| self.idle_limited(response, in_flight));
        }
    }

    /// The response with its body under this region's idle limit, counted in flight.
    fn idle_limited(
        &self,
        response: Response<Incoming>,
        in_flight: InFlightGuard,
    ) -> Response<UpstreamBody> {
        let idle = self.timeouts.body_idle;
        let metrics = self.metrics.clone();
        let (head, body) = response.into_parts();
        let connection = head.extensions.get::<Coalescer>();
        let body = UpstreamBody::new(body, connection, idle, metrics, in_flight);
        Response::from_parts(head, body)
    }

    /// The wait before retry `attempt` (1-based): exponential, capped, with equal jitter so
    /// that gateways retrying the same backend spread out.
    fn backoff(&self, attempt: u32) -> std::time::Duration {
        let exp = self
            .retry
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let cap = exp.min(self.retry.max_backoff);
        let half = cap / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Whether requests can be signed (a dynamic source has answered).
    pub fn has_credentials(&self) -> bool {
        self.signer.has_identity()
    }

    /// Whether the region's circuit is open (requests fail fast).
    pub fn is_unavailable(&self) -> bool {
        self.circuit.is_open()
    }

    /// Region name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the backend answers a signed HEAD of the bucket within `timeout` (any status
    /// below 500 counts: a 403 still proves the backend is up). For readiness checks.
    pub async fn is_reachable(&self, timeout: std::time::Duration) -> bool {
        let Ok(head) = self
            .signer
            .sign(Method::HEAD, &self.bucket_url(), HeaderMap::new())
        else {
            return false;
        };
        self.client
            .send_within(head, timeout)
            .await
            .is_some_and(|response| !response.status().is_server_error())
    }

    fn bucket_url(&self) -> String {
        match self.addressing {
            Addressing::Path => format!("{}/{}", self.base, encode_key(&self.bucket)),
            Addressing::VirtualHosted => format!("{}/", self.base),
        }
    }

    /// A 301 means the bucket is in another region: our configuration is wrong.
    fn check_redirect<B>(&self, response: &Response<B>) -> Result<(), GatewayError> {
        if response.status() != StatusCode::MOVED_PERMANENTLY {
            return Ok(());
        }
        let actual = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        tracing::error!(
            region = %self.name,
            bucket = %self.bucket,
            actual_region = %actual,
            "misconfiguration: the bucket is in another region; fix regions.{}.endpoint and signing_region",
            self.name
        );
        Err(GatewayError::WrongRegion {
            bucket: self.bucket.clone(),
            actual,
        })
    }
}
