//! Per-region upstream: a pooled keep-alive client, SigV4 signing with `aws-sigv4`, retries
//! with jittered backoff before the first byte, the region's circuit breaker, and the
//! mapping of backend statuses into what the client may see.

mod body;

pub use body::{UpstreamBody, UpstreamBodyError};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::circuit::Circuit;
use crate::config::{Addressing, Config, RegionConfig, RetryPolicy, Timeouts};
use crate::credentials::SigningCredentials;
use crate::error::GatewayError;
use crate::metrics::{Metrics, RegionMetrics};
use body::InFlight;

/// Backend statuses worth another try: the backend or a proxy in front of it is overloaded
/// or restarting.
const RETRIED_STATUSES: [StatusCode; 4] = [
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// Request headers a client may pass to the backend; everything else stays here.
pub const FORWARDED_REQUEST_HEADERS: [HeaderName; 6] = [
    http::header::RANGE,
    http::header::IF_RANGE,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
];

type HttpsClient = Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

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
    client: HttpsClient,
    /// `scheme://authority` of every request (virtual-hosted: the bucket's host).
    base: String,
    /// Encoded path in front of every key: `/bucket/prefix` or `/prefix`.
    path_prefix: String,
    /// SigV4 signing region.
    signing_region: String,
    /// The identity requests are signed with (refreshed in the background when temporary).
    credentials: SigningCredentials,
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
    ) -> Result<Self, GatewayError> {
        let timeouts = region.timeouts.unwrap_or(config.timeouts);
        let metrics = Arc::new(metrics.region(&Arc::from(region.name.as_str())));
        let scheme = region.endpoint.scheme_str().unwrap_or("https");
        let authority = region
            .endpoint
            .authority()
            .ok_or(GatewayError::Internal("endpoint without host"))?;
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
            client: build_client(timeouts, region.connect_to)?,
            base,
            path_prefix,
            signing_region: region.signing_region.clone(),
            credentials: SigningCredentials::new(region),
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
            let request = self.signed(method.clone(), &url, forward.clone(), Bytes::new())?;
            let in_flight = InFlight::new(&self.metrics.in_flight);
            let started = std::time::Instant::now();
            let outcome = self.send(request).await;
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
        in_flight: InFlight,
    ) -> Response<UpstreamBody> {
        let idle = self.timeouts.body_idle;
        let metrics = self.metrics.clone();
        response.map(|body| UpstreamBody::new(body, idle, metrics, in_flight))
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
        self.credentials.current().is_some()
    }

    /// Whether the region's circuit is open (requests fail fast).
    pub fn is_unavailable(&self) -> bool {
        self.circuit.is_open()
    }

    /// Region name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes an object (the write path: demo set-up, admin tools). `headers` carry the
    /// storage policy (`x-amz-storage-class`, `x-amz-server-side-encryption`, content type).
    pub async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<(), GatewayError> {
        let url = self.object_url(key);
        let request = self.signed(Method::PUT, &url, headers, body)?;
        let response = self.send(request).await?;
        self.check_redirect(&response)?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(upstream_status_error(response).await)
    }

    /// Whether the backend answers a signed HEAD of the bucket within `timeout` (any status
    /// below 500 counts: a 403 still proves the backend is up). For readiness checks.
    pub async fn probe(&self, timeout: std::time::Duration) -> bool {
        let Ok(head) = self.signed(
            Method::HEAD,
            &self.bucket_url(),
            HeaderMap::new(),
            Bytes::new(),
        ) else {
            return false;
        };
        matches!(
            tokio::time::timeout(timeout, self.client.request(head)).await,
            Ok(Ok(response)) if !response.status().is_server_error()
        )
    }

    fn bucket_url(&self) -> String {
        match self.addressing {
            Addressing::Path => format!("{}/{}", self.base, encode_key(&self.bucket)),
            Addressing::VirtualHosted => format!("{}/", self.base),
        }
    }

    /// Creates the bucket unless it already exists and is ours (demo and test set-up).
    pub async fn ensure_bucket(&self) -> Result<(), GatewayError> {
        let url = self.bucket_url();
        let head = self.signed(Method::HEAD, &url, HeaderMap::new(), Bytes::new())?;
        if self.send(head).await?.status().is_success() {
            return Ok(());
        }
        // Outside us-east-1, S3 (and compatible stores) require the region in the body.
        let body = if self.signing_region == "us-east-1" {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.signing_region
            ))
        };
        let create = self.signed(Method::PUT, &url, HeaderMap::new(), body)?;
        let response = self.send(create).await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(upstream_status_error(response).await)
    }

    fn signed(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        // Only visible-ASCII header values can be signed; anything else is not forwarded.
        headers.retain_valid_ascii();
        let signable_headers = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable_body = if body.is_empty() && method != Method::PUT {
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Bytes(&body)
        };
        let signable = SignableRequest::new(method.as_str(), url, signable_headers, signable_body)
            .map_err(|e| GatewayError::Signing(e.to_string()))?;
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity = self
            .credentials
            .current()
            .ok_or(GatewayError::NoCredentials)?;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.signing_region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| GatewayError::Signing(e.to_string()))?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| GatewayError::Signing(e.to_string()))?
            .into_parts();
        let uri: Uri = url
            .parse()
            .map_err(|_| GatewayError::Internal("unparsable upstream url"))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|_| GatewayError::Internal("unbuildable upstream request"))?;
        *request.headers_mut() = headers;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, GatewayError> {
        match tokio::time::timeout(self.timeouts.response_head, self.client.request(request)).await
        {
            Err(_) => Err(GatewayError::UpstreamTimeout("response head")),
            Ok(Err(e)) if e.is_connect() && is_timeout(&e) => {
                Err(GatewayError::UpstreamTimeout("connect"))
            }
            Ok(Err(e)) => Err(GatewayError::UpstreamConnect(e)),
            Ok(Ok(response)) => Ok(response),
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

/// Turns an unexpected backend answer into an error, reading at most a little of the XML
/// body for the S3 error code (for the log; the client never sees it).
pub async fn upstream_status_error<B>(response: Response<B>) -> GatewayError
where
    B: http_body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), 16 * 1024);
    let code =
        match tokio::time::timeout(std::time::Duration::from_secs(1), limited.collect()).await {
            Ok(Ok(collected)) => s3_error_code(&collected.to_bytes()),
            _ => None,
        };
    GatewayError::UpstreamStatus {
        status,
        code: code.unwrap_or_else(|| "-".into()),
    }
}

/// The `<Code>` of an S3 XML error document.
fn s3_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    Some(text[start..end].chars().take(64).collect())
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        source = err.source();
    }
    false
}

fn build_client(
    timeouts: Timeouts,
    connect_to: Option<std::net::IpAddr>,
) -> Result<HttpsClient, GatewayError> {
    let mut http = HttpConnector::new_with_resolver(Resolver { connect_to });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    http.set_keepalive(Some(std::time::Duration::from_secs(30)));
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|_| GatewayError::Internal("tls protocol versions"))?
    .with_root_certificates(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(timeouts.pool_idle)
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Name resolution for the upstream: the system resolver, or a fixed address when the
/// region sets `connect_to` (private endpoints, tests); Host, SNI and signature are unchanged.
#[derive(Debug, Clone)]
struct Resolver {
    connect_to: Option<std::net::IpAddr>,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(ip) = self.connect_to {
            return Box::pin(std::future::ready(Ok(vec![std::net::SocketAddr::new(
                ip, 0,
            )]
            .into_iter())));
        }
        let mut system = GaiResolver::new();
        let resolving = system.call(name);
        Box::pin(async move { Ok(resolving.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// S3 URI encoding of a key: every byte but `A-Z a-z 0-9 - _ . ~` and `/` is percent-encoded.
pub fn encode_key(key: &str) -> Cow<'_, str> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let keep = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/');
    if key.bytes().all(keep) {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

/// Keeps only headers whose values can be signed.
trait RetainValidAscii {
    fn retain_valid_ascii(&mut self);
}

impl RetainValidAscii for HeaderMap {
    fn retain_valid_ascii(&mut self) {
        let invalid: Vec<HeaderName> = self
            .iter()
            .filter(|(_, v)| v.to_str().is_err())
            .map(|(k, _)| k.clone())
            .collect();
        for name in invalid {
            self.remove(name);
        }
    }
}

/// Copies the forwardable request headers of a client request.
pub fn forwardable_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in client.get_all(&name) {
            let value: HeaderValue = value.clone();
            out.append(name.clone(), value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_keys_like_s3() {
        assert_eq!(encode_key("abc/def_raw.mp4"), "abc/def_raw.mp4");
        assert_eq!(encode_key("a b+c(d)'é/"), "a%20b%2Bc%28d%29%27%C3%A9/");
        assert_eq!(encode_key("~x-y.z"), "~x-y.z");
    }

    #[test]
    fn reads_s3_error_codes() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><RequestId>1</RequestId></Error>";
        assert_eq!(s3_error_code(xml).as_deref(), Some("AccessDenied"));
        assert_eq!(s3_error_code(b"nope"), None);
    }
}
