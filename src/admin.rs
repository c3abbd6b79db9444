//! The admin listener (loopback by default): health, cache metrics, and purge.
//!
//! - `GET /healthz` → `ok`
//! - `GET /metrics` → Prometheus text of the cache counters
//! - `DELETE /cache/{region}/{account}` → drop an account's files
//! - `DELETE /cache/{region}/{account}/{name}` → drop a recording's four files
//! - `DELETE /cache/{region}/{account}/{name}{suffix}` → drop one file
//!
//! When a token is configured, every request needs `Authorization: Bearer {token}`.

use std::convert::Infallible;
use std::fmt::Write as _;
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
use crate::service::Gateway;

/// Serves the admin endpoints until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let token: Option<Arc<str>> = token.map(Into::into);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let gateway = gateway.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handle(&gateway, token.as_deref(), &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(
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
        (&Method::GET, "/metrics") => text(StatusCode::OK, metrics(gateway)),
        (&Method::DELETE, _) if path.starts_with("/cache/") => {
            purge(gateway, &path["/cache/".len()..])
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn purge(gateway: &Gateway, rest: &str) -> Response<Full<Bytes>> {
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
            tracing::info!(region, account, path = rest, "cache purge");
            text(StatusCode::OK, "purged\n".into())
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "purge failed\n".into()),
    }
}

fn metrics(gateway: &Gateway) -> String {
    let mut out = String::new();
    let Some(cache) = gateway.cache() else {
        return "# cache disabled\n".into();
    };
    let s = cache.stats();
    let counters = [
        (
            "s3edge_cache_hits_total",
            "Requests answered from fresh cache metadata.",
            s.hits,
        ),
        (
            "s3edge_cache_misses_total",
            "Requests whose metadata was fetched.",
            s.misses,
        ),
        (
            "s3edge_cache_stale_total",
            "Stale serves (while revalidating or on error).",
            s.stale,
        ),
        (
            "s3edge_cache_revalidations_total",
            "Revalidations sent upstream.",
            s.revalidations,
        ),
        (
            "s3edge_cache_revalidated_unchanged_total",
            "Revalidations answered 304.",
            s.revalidated_unchanged,
        ),
        (
            "s3edge_cache_collapsed_total",
            "Requests that joined a fetch in flight.",
            s.collapsed,
        ),
        (
            "s3edge_cache_upstream_fetches_total",
            "Upstream requests sent by the cache.",
            s.upstream_fetches,
        ),
        (
            "s3edge_cache_chunks_stored_total",
            "Chunks stored.",
            s.chunks_stored,
        ),
        (
            "s3edge_cache_evictions_total",
            "Entries evicted for space or age.",
            s.evictions,
        ),
        (
            "s3edge_cache_negative_hits_total",
            "404s answered from the negative cache.",
            s.negative_hits,
        ),
        (
            "s3edge_cache_bypassed_total",
            "Objects too large to cache, relayed.",
            s.bypassed,
        ),
        (
            "s3edge_cache_fetch_failures_total",
            "Chunk fetches that failed.",
            s.fetch_failures,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    for (name, help, value) in [
        (
            "s3edge_cache_bytes",
            "Weighted bytes held by the cache.",
            s.bytes,
        ),
        (
            "s3edge_cache_entries",
            "Entries held by the cache.",
            s.entries,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}

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
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
