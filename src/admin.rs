//! The admin listener (loopback by default): health, readiness, metrics, and purge.
//!
//! - `GET /healthz` → `ok` while the process serves
//! - `GET /readyz` → 200 when every region's backend answers, or can be served stale from
//!   the cache; 503 otherwise. The body lists each region's state.
//! - `GET /metrics` → Prometheus (OpenMetrics) text
//! - `DELETE /cache/{region}/{account}` → drop an account's files
//! - `DELETE /cache/{region}/{account}/{name}` → drop a recording's four files
//! - `DELETE /cache/{region}/{account}/{name}{suffix}` → drop one file
//!
//! When a token is configured, every request needs `Authorization: Bearer {token}`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cache::PurgeTarget;
use crate::route::FileKind;
use crate::service::{Gateway, LiveGateway};

/// Serves the admin endpoints until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    gateway: impl Into<LiveGateway>,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let live: LiveGateway = gateway.into();
    let token: Option<Arc<str>> = token.map(Into::into);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let live = live.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = live.current();
                let token = token.clone();
                async move { Ok::<_, Infallible>(handle(&gateway, token.as_deref(), &request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    gateway: &Gateway,
    token: Option<&str>,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(token) = token {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            return text(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
        }
    }
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") => readyz(gateway).await,
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, gateway.metrics().encode());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::DELETE, _) if path.starts_with("/cache/") => {
            purge(gateway, &path["/cache/".len()..]).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

async fn purge(gateway: &Gateway, rest: &str) -> Response<Full<Bytes>> {
    let Some(cache) = gateway.cache() else {
        return text(StatusCode::CONFLICT, "cache disabled\n".into());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let (region, account, target) = match segments.as_slice() {
        [region, account] if valid(account) => (*region, *account, PurgeTarget::Account),
        [region, account, item] if valid(account) => {
            let is_file = FileKind::ALL
                .iter()
                .any(|k| item.strip_suffix(k.suffix()).is_some_and(valid));
            let target = if is_file {
                PurgeTarget::File((*item).to_string())
            } else if valid(item) {
                PurgeTarget::Recording((*item).to_string())
            } else {
                return text(StatusCode::BAD_REQUEST, "bad file name\n".into());
            };
            (*region, *account, target)
        }
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "use /cache/{region}/{account}[/{name}[{suffix}]]\n".into(),
            );
        }
    };
    let Some(index) = gateway.region_index(region) else {
        return text(StatusCode::NOT_FOUND, "unknown region\n".into());
    };
    match cache.purge(index, account, target) {
        Ok(()) => {
            // Apply the invalidation now, so the memory is released without waiting for
            // traffic to drive the cache's housekeeping.
            cache.sync().await;
            tracing::info!(region, account, path = rest, "cache purge");
            text(StatusCode::OK, "purged\n".into())
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "purge failed\n".into()),
    }
}

/// Asks every region's backend at once; a region that does not answer still counts as
/// ready when the cache can serve its files stale.
async fn readyz(gateway: &Gateway) -> Response<Full<Bytes>> {
    let probes = gateway.upstreams().iter().map(|upstream| async move {
        let reachable = upstream.is_reachable(READY_PROBE_TIMEOUT).await;
        (
            upstream.name().to_string(),
            reachable,
            upstream.is_unavailable(),
            upstream.has_credentials(),
        )
    });
    let results = futures_util::future::join_all(probes).await;
    let can_serve_stale = gateway.cache().is_some();
    let mut ready = true;
    let mut body = String::new();
    for (name, reachable, circuit_open, has_credentials) in results {
        let state = match (reachable, can_serve_stale) {
            _ if !has_credentials => {
                ready = false;
                "no credentials yet"
            }
            (true, _) => "ok",
            (false, true) => "unreachable, serving stale",
            (false, false) => {
                ready = false;
                "unreachable"
            }
        };
        let circuit = if circuit_open { " (circuit open)" } else { "" };
        body.push_str(&format!("{name}: {state}{circuit}\n"));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, body)
}

/// How long `/readyz` waits for each backend.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Compares secrets without leaking their common prefix length through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
