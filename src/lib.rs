//! s3edge: an edge gateway in front of the recording buckets.
//!
//! # Layout (dependencies point down this list: nothing imports a module above it)
//! - [`server`]: listeners (plain HTTP, HTTPS with SNI, HTTP/1.1 and HTTP/2), client limits,
//!   graceful shutdown; `idle`: the keep-alive idle limit. [`admin`]: health, readiness,
//!   metrics and purge on a separate listener; `reload`: SIGHUP swaps in a new config.
//! - [`service`]: one request through its phases: method → route → cache or relay →
//!   response headers → CORS (`cors`).
//! - [`cache`]: the in-memory edge cache: metadata, chunks, collapsed fetches, freshness.
//! - [`upstream`]: per-region client, SigV4 signing, fetch with retries, status → error;
//!   `circuit`: the per-region circuit breaker; `credentials`: signing identities and their
//!   refresh.
//! - `respond`: the responses the gateway writes itself (304, 412, 416, errors).
//! - `body`: the one response body type, the backend's idle-limited body, the access log.
//! - [`conditional`]: preconditions, If-Range, the headers forwarded upstream;
//!   [`range`]: Range arithmetic; [`route`]: Host and path → [`route::ObjectRef`], the only
//!   URL parser.
//! - [`metrics`]: the Prometheus series; `error`: the request-path [`GatewayError`] and
//!   the start-up [`StartupError`].
//! - [`config`]: TOML → validated [`config::Config`]; [`policy`]: storage class and
//!   encryption of writes; [`logging`]: the binaries' log output.
//!
//! The write side, [`push`], stands beside the read path (it shares `config`, `route`,
//! `policy` and `credentials`, and purges edges through their admin listeners).
//!
//! The demo and the embedded S3 backends of the tests live in the `s3edge-testbed` crate of
//! this workspace: the deployable build links no S3 server code.

pub mod admin;
pub(crate) mod body;
pub mod cache;
pub(crate) mod circuit;
pub mod conditional;
pub mod config;
pub(crate) mod cors;
pub(crate) mod credentials;
pub(crate) mod error;
pub(crate) mod idle;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod push;
pub mod range;
pub(crate) mod reload;
pub(crate) mod respond;
pub mod route;
pub mod server;
pub mod service;
pub mod upstream;

use std::future::Future;

use tokio::net::TcpListener;

use config::Config;
pub use error::{GatewayError, StartupError};
use server::Listener;
use service::Gateway;

/// Bound listeners and, when there are HTTPS ones, the certificates they present.
pub struct Bound {
    /// Plain and TLS listeners.
    pub listeners: Vec<Listener>,
    /// Certificates of the TLS listeners (reloadable).
    pub certs: Option<server::CertStore>,
    /// The admin listener, when the config has one.
    pub admin: Option<TcpListener>,
    /// The push API's listener, when this node runs the push service.
    pub push: Option<TcpListener>,
}

/// Binds every listener of the config (HTTPS ones with their TLS acceptor, and the admin
/// listener), so that a taken port is an error before anything runs.
pub async fn bind(config: &Config) -> Result<Bound, StartupError> {
    let mut listeners = Vec::new();
    for addr in &config.http_listeners {
        listeners.push(Listener {
            tcp: bind_addr(*addr).await?,
            tls: None,
        });
    }
    let mut certs = None;
    if !config.https_listeners.is_empty() {
        let store = server::CertStore::load(&config.certificates).map_err(StartupError::Tls)?;
        let acceptor = store.acceptor().map_err(StartupError::Tls)?;
        for addr in &config.https_listeners {
            listeners.push(Listener {
                tcp: bind_addr(*addr).await?,
                tls: Some(acceptor.clone()),
            });
        }
        certs = Some(store);
    }
    let admin = match &config.admin {
        Some(admin) => Some(bind_addr(admin.listen).await?),
        None => None,
    };
    let push = match &config.push {
        Some(push) => Some(bind_addr(push.listen).await?),
        None => None,
    };
    Ok(Bound {
        listeners,
        certs,
        admin,
        push,
    })
}

async fn bind_addr(addr: std::net::SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Runs the gateway on already-bound listeners until `shutdown` resolves, then drains.
/// With `config_path`, SIGHUP reloads the config from that file.
pub async fn run(
    config: &Config,
    bound: Bound,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let Bound {
        listeners,
        certs,
        admin,
        push,
    } = bound;
    let live = service::LiveGateway::from(Gateway::new(config)?);
    let (admin_stop, admin_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listener) = admin {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listening");
        }
        let token = config.admin.as_ref().and_then(|a| a.token.clone());
        tokio::spawn(admin::serve(
            listener,
            live.clone(),
            token,
            admin_stop_rx.clone(),
        ));
    }
    let push_task = push.map(|listener| {
        tokio::spawn(push::run(
            std::sync::Arc::new(config.clone()),
            listener,
            admin_stop_rx.clone(),
        ))
    });
    if let Some(path) = config_path {
        // Registered before "listening" is logged, so a SIGHUP from then on is a reload.
        let reloader = reload::Reloader::new(path, config.clone(), live.clone(), certs);
        let hangups = reload::Hangups::register();
        tokio::spawn(reload::on_sighup(
            std::sync::Arc::new(reloader),
            hangups,
            admin_stop_rx.clone(),
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
        live,
        listeners,
        config.limits,
        config.shutdown_grace,
        shutdown,
    )
    .await;
    let _ = admin_stop.send(true);
    if let Some(task) = push_task {
        match task.await {
            Ok(result) => result?,
            Err(e) => tracing::error!(error = %e, "the push service ended abnormally"),
        }
    }
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
