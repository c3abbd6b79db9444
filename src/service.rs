//! One request through the phases, top to bottom: method and target checks → route → the
//! cache (which answers or says why it bypasses) → else the relay: conditional translation,
//! signed upstream fetch, the backend's answer mapped to the client's → CORS → the access
//! log, written when the body ends.

use std::sync::Arc;
use std::time::Instant;

use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_ENCODING, CONTENT_LANGUAGE,
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, EXPIRES, HOST, LAST_MODIFIED,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{AccessLog, CacheResult, ResponseBody, UpstreamBody};
use crate::cache::{CACHE_STATUS, Cache, Served};
use crate::conditional::Forward;
use crate::config::Config;
use crate::cors::{self, Cors};
use crate::error::{GatewayError, StartupError};
use crate::metrics::Metrics;
use crate::respond::{self, ALLOWED_METHODS};
use crate::route::{ObjectRef, Router};
use crate::upstream::{self, Upstream};

/// Backend response headers the client gets; everything else (`x-amz-*`, `Server`) is dropped.
const PASSED_RESPONSE_HEADERS: [HeaderName; 9] = [
    CONTENT_LENGTH,
    CONTENT_RANGE,
    ETAG,
    LAST_MODIFIED,
    CACHE_CONTROL,
    EXPIRES,
    CONTENT_ENCODING,
    CONTENT_DISPOSITION,
    CONTENT_LANGUAGE,
];

/// The gateway: cheap to clone, shared by every connection.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Host and path → object.
    router: Router,
    /// One backend per region, indexed like the router's regions.
    upstreams: Vec<Arc<Upstream>>,
    /// The edge cache, unless disabled.
    cache: Option<Cache>,
    /// Region names, for the access log.
    region_names: Vec<Arc<str>>,
    /// CORS header values.
    cors: Cors,
    /// Process metrics.
    metrics: Metrics,
    /// Longest request target accepted.
    max_uri_bytes: usize,
}

/// The gateway currently serving, swapped whole on reload: a request keeps the gateway it
/// started with, so in-flight requests finish on the old config.
#[derive(Clone, Debug)]
pub struct LiveGateway(Arc<arc_swap::ArcSwap<Gateway>>);

impl LiveGateway {
    /// The gateway new requests use.
    pub fn current(&self) -> Gateway {
        Gateway::clone(&self.0.load())
    }

    /// Makes `gateway` the one new requests use.
    pub fn replace(&self, gateway: Gateway) {
        self.0.store(Arc::new(gateway));
    }
}

impl From<Gateway> for LiveGateway {
    fn from(gateway: Gateway) -> Self {
        LiveGateway(Arc::new(arc_swap::ArcSwap::from_pointee(gateway)))
    }
}

impl Gateway {
    /// Builds the per-region clients, the router and a new cache from a validated config.
    pub fn new(config: &Config) -> Result<Self, StartupError> {
        let cache = config.cache.enabled.then(|| Cache::new(&config.cache));
        let collector = cache
            .as_ref()
            .map(|c| Box::new(c.collector()) as Box<dyn prometheus_client::collector::Collector>);
        let metrics = Metrics::new(collector);
        Gateway::build(config, cache, metrics)
    }

    /// A gateway for a new config that keeps this one's cache and metrics (reload).
    pub fn reconfigured(&self, config: &Config) -> Result<Self, StartupError> {
        Gateway::build(config, self.inner.cache.clone(), self.inner.metrics.clone())
    }

    fn build(
        config: &Config,
        cache: Option<Cache>,
        metrics: Metrics,
    ) -> Result<Self, StartupError> {
        let router = Router::new(
            config
                .regions
                .iter()
                .map(|r| (r.name.as_str(), r.hosts.as_slice())),
        );
        let upstreams = config
            .regions
            .iter()
            .map(|r| Upstream::new(r, config, &metrics).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let cors = Cors::new(&config.cors).map_err(|_| StartupError::Cors("a [cors] value"))?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                router,
                upstreams,
                cache,
                region_names: config
                    .regions
                    .iter()
                    .map(|r| Arc::from(r.name.as_str()))
                    .collect(),
                cors,
                metrics,
                max_uri_bytes: config.limits.max_uri_bytes,
            }),
        })
    }

    /// The index of a region in the region table.
    pub fn region_index(&self, region: &str) -> Option<usize> {
        self.inner.region_names.iter().position(|n| **n == *region)
    }

    /// The upstreams, in region order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.inner.upstreams
    }

    /// Process metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The edge cache, when enabled.
    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    /// Answers one request; never fails, errors become short responses.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let has_origin = cors::has_origin(request.headers());
        let mut log = AccessLog {
            method: request.method().clone(),
            host: request_host(&request).unwrap_or("-").to_string(),
            path: request.uri().path().to_string(),
            region: None,
            status: 0,
            upstream_status: None,
            cache: CacheResult::None,
            bytes: 0,
            start,
            complete: false,
            failure: None,
            metrics: self.inner.metrics.clone(),
        };
        let mut response = match self.handle_inner(&request, &mut log).await {
            Ok(response) => response,
            Err(error) => {
                let detail = error.detail();
                if error.is_server_fault() {
                    tracing::warn!(host = %log.host, path = %log.path, error = %detail, "request failed");
                } else {
                    tracing::debug!(host = %log.host, path = %log.path, error = %detail, "request refused");
                }
                respond::error_response(&error)
            }
        };
        self.inner.cors.apply(has_origin, response.headers_mut());
        log.status = response.status().as_u16();
        response.map(|body| body.with_log(log))
    }

    async fn handle_inner(
        &self,
        request: &Request<Incoming>,
        log: &mut AccessLog,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let method = request.method();
        if method == Method::OPTIONS {
            return self.options(request.headers());
        }
        if method != Method::GET && method != Method::HEAD {
            return Err(GatewayError::MethodNotAllowed);
        }
        let uri = request.uri();
        let target_len = uri.path().len() + uri.query().map_or(0, |q| q.len() + 1);
        if target_len > self.inner.max_uri_bytes {
            return Err(GatewayError::UriTooLong);
        }
        let object = self
            .inner
            .router
            .resolve(request_host(request), request.uri().path())?;
        log.region = self.inner.region_names.get(object.region).cloned();
        let upstream = self
            .inner
            .upstreams
            .get(object.region)
            .ok_or(GatewayError::Internal("route to unknown region"))?;
        let mut bypassed = None;
        if let Some(cache) = &self.inner.cache {
            match cache
                .serve(upstream, &object, method, request.headers())
                .await?
            {
                Served::Response(response, result) => {
                    log.cache = result;
                    return Ok(response);
                }
                Served::Bypass(reason) => {
                    log.cache = CacheResult::Bypass;
                    bypassed = Some(reason.header());
                }
            }
        }
        let forward = Forward::from_request(request.headers());
        // Only a translated If-Range can need a second request: the whole object, unconditional.
        let whole_object = forward.whole_object();
        let mut response = upstream
            .fetch(method.clone(), &object.key, forward.headers)
            .await?;
        if response.status() == StatusCode::PRECONDITION_FAILED
            && let Some(forward) = whole_object
        {
            // If-Range did not match: the client gets the whole, current object (RFC 9110 §13.1.5).
            response = upstream.fetch(method.clone(), &object.key, forward).await?;
        }
        log.upstream_status = Some(response.status().as_u16());
        let mut response = relay(method, &object, response).await?;
        if let Some(status) = bypassed {
            response.headers_mut().insert(CACHE_STATUS, status);
        }
        Ok(response)
    }

    fn options(&self, headers: &HeaderMap) -> Result<Response<ResponseBody>, GatewayError> {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        if headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD) {
            *response.headers_mut() = self.inner.cors.preflight(headers)?;
        }
        response.headers_mut().insert(ALLOW, ALLOWED_METHODS);
        Ok(response)
    }
}

/// Maps the backend's answer to the client's: statuses players rely on pass through with
/// the file's headers; everything else becomes our own short error.
async fn relay(
    method: &Method,
    object: &ObjectRef,
    response: Response<UpstreamBody>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let status = response.status();
    match status {
        StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED => {}
        StatusCode::PRECONDITION_FAILED => return Ok(respond::precondition_failed()),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let range = response.headers().get(CONTENT_RANGE).cloned();
            return Ok(respond::range_not_satisfiable(range));
        }
        StatusCode::NOT_FOUND => {
            return match upstream::upstream_status_error(response).await {
                GatewayError::UpstreamStatus { code, .. } if code == "NoSuchBucket" => {
                    tracing::error!(key = %object, "misconfiguration: the bucket does not exist");
                    Err(GatewayError::UpstreamStatus { status, code })
                }
                _ => Err(GatewayError::NotFound),
            };
        }
        _ => return Err(upstream::upstream_status_error(response).await),
    }
    let (parts, body) = response.into_parts();
    let mut headers = HeaderMap::with_capacity(12);
    for name in PASSED_RESPONSE_HEADERS {
        if status == StatusCode::NOT_MODIFIED && name == CONTENT_LENGTH {
            continue;
        }
        if let Some(value) = parts.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    headers.insert(
        CONTENT_TYPE,
        object
            .kind
            .content_type_for(parts.headers.get(CONTENT_TYPE)),
    );
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let body = if method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
        ResponseBody::empty()
    } else {
        ResponseBody::upstream(body)
    };
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    *reply.headers_mut() = headers;
    Ok(reply)
}

/// The Host the client addressed: the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .host()
        .or_else(|| request.headers().get(HOST)?.to_str().ok())
}
