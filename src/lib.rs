//! s3edge: an edge gateway in front of the recording buckets.
//!
//! # Layout (the data path, in order)
//! - [`server`]: listeners (plain HTTP, HTTPS with SNI, HTTP/1.1 and HTTP/2), client limits,
//!   graceful shutdown; [`idle`]: the keep-alive idle limit.
//! - [`service`]: one request through its phases: method → route → upstream → response → CORS.
//! - [`route`]: Host and path → a typed [`route::ObjectRef`]; the only URL parser.
//! - [`cache`]: the in-memory edge cache: metadata, chunks, collapsed fetches, freshness.
//! - [`range`]: Range, If-Range and precondition arithmetic.
//! - [`upstream`]: per-region pooled client, SigV4 signing, retries, idle-limited bodies.
//! - [`circuit`]: the per-region circuit breaker.
//! - [`body`]: the one response body type, and the access log written when it ends.
//! - [`cors`]: CORS headers and preflights.
//! - [`error`]: the one request-path error type and its responses.
//! - [`config`]: TOML → validated [`config::Config`].
//! - [`policy`]: storage class and encryption of writes.
//! - [`admin`]: health, readiness, metrics and purge on a separate (loopback) listener.
//! - [`metrics`]: the Prometheus series.
//! - [`demo`]: embedded S3 backends and a sample recording (`s3edge demo`, tests).

pub mod admin;
pub mod body;
pub mod cache;
pub mod circuit;
pub mod config;
pub mod cors;
pub mod demo;
pub mod error;
pub mod idle;
pub mod metrics;
pub mod policy;
pub mod range;
pub mod route;
pub mod server;
pub mod service;
pub mod upstream;

use std::future::Future;

use tokio::net::TcpListener;

use config::Config;
use server::Listener;
use service::Gateway;

/// Binds every listener of the config (HTTPS ones with their TLS acceptor).
pub async fn bind(config: &Config) -> std::io::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for addr in &config.http_listeners {
        listeners.push(Listener {
            tcp: bind_addr(*addr).await?,
            tls: None,
        });
    }
    if !config.https_listeners.is_empty() {
        let acceptor = server::tls_acceptor(&config.certificates)?;
        for addr in &config.https_listeners {
            listeners.push(Listener {
                tcp: bind_addr(*addr).await?,
                tls: Some(acceptor.clone()),
            });
        }
    }
    Ok(listeners)
}

async fn bind_addr(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Runs the gateway on already-bound listeners until `shutdown` resolves, then drains.
pub async fn run(
    config: &Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), error::GatewayError> {
    let gateway = Gateway::new(config)?;
    let (admin_stop, admin_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(admin) = &config.admin {
        let listener = bind_addr(admin.listen)
            .await
            .map_err(|_| error::GatewayError::Internal("cannot bind the admin listener"))?;
        tracing::info!(addr = %admin.listen, "admin listening");
        tokio::spawn(admin::serve(
            listener,
            gateway.clone(),
            admin.token.clone(),
            admin_stop_rx,
        ));
    }
    for listener in &listeners {
        if let Ok(addr) = listener.tcp.local_addr() {
            let scheme = if listener.tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(%addr, scheme, "listening");
        }
    }
    server::serve(
        gateway,
        listeners,
        config.limits,
        config.shutdown_grace,
        shutdown,
    )
    .await;
    let _ = admin_stop.send(true);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
