//! Listeners: plain HTTP and HTTPS (rustls, one certificate per SNI name with a default,
//! HTTP/1.1 and HTTP/2 by ALPN), client limits, and graceful shutdown with a deadline.
//!
//! Limits: at most `max_connections` open connections (further clients wait in the listen
//! backlog); a request head must arrive within `header_read_timeout` and fit in
//! `max_header_bytes` (else 431); a connection that moves no byte for `keep_alive_idle` is
//! closed; HTTP/2 streams and flow-control windows are bounded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{CertificateConfig, Limits};
use crate::idle::{Activity, IdleTracked, idle_for};
use crate::service::LiveGateway;

/// A bound listener and, for HTTPS, its TLS acceptor.
pub struct Listener {
    /// The bound socket (tests bind port 0 and pass it in).
    pub tcp: TcpListener,
    /// `Some` for an HTTPS listener.
    pub tls: Option<TlsAcceptor>,
}

/// Serves `gateway` on every listener until `shutdown` resolves, then lets in-flight
/// responses finish for at most `grace`.
pub async fn serve(
    gateway: impl Into<LiveGateway>,
    listeners: Vec<Listener>,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let live: LiveGateway = gateway.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(limits.h2_connection_window)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_send_buf_size(256 * 1024);
    let shared = Arc::new(Shared {
        builder,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
    });
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let accept = accept_loop(
            listener,
            live.clone(),
            shared.clone(),
            graceful.clone(),
            stop_rx.clone(),
        );
        accept_tasks.push(tokio::spawn(accept));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing in-flight responses");
    let _ = stop_tx.send(true);
    for task in accept_tasks {
        let _ = task.await;
    }
    // The accept loops are gone, so this is the last reference (connections hold watchers).
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        return;
    };
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over: closing remaining connections");
        }
    }
}

/// What every accept loop shares.
struct Shared {
    /// HTTP/1.1 and HTTP/2 settings.
    builder: auto::Builder<TokioExecutor>,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    /// Client limits.
    limits: Limits,
}

async fn accept_loop(
    listener: Listener,
    live: LiveGateway,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Wait for a free slot first: excess clients queue in the kernel's backlog instead of
        // costing a descriptor and a task each.
        let permit = tokio::select! {
            permit = shared.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let gateway = live.current();
        let counted = gateway.metrics().connection();
        let shared = shared.clone();
        let tls = listener.tls.clone();
        let live = live.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let _counted = counted;
            let (stream, activity) = IdleTracked::new(stream);
            let result = match tls {
                None => serve_io(stream, live, &shared, watcher, &activity).await,
                Some(acceptor) => {
                    let handshake = shared.limits.header_read_timeout;
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_io(stream, live, &shared, watcher, &activity).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "tls handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// Serves one client connection until it ends, the server drains it, or it idles out.
async fn serve_io<I>(
    io: I,
    live: LiveGateway,
    shared: &Shared,
    watcher: Watcher,
    activity: &Activity,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Each request takes the gateway current when it arrives (reloads apply at once).
    let service = service_fn(move |request| {
        let gateway = live.current();
        async move { Ok::<_, Infallible>(gateway.handle(request).await) }
    });
    let conn = shared.builder.serve_connection(TokioIo::new(io), service);
    let limits = &shared.limits;
    tokio::select! {
        result = watcher.watch(conn.into_owned()) => result,
        () = idle_for(activity, limits.keep_alive_idle, limits.header_read_timeout) => Ok(()),
    }
}

/// Builds the TLS acceptor: certificates by SNI name, a default for the rest, h2 and http/1.1.
pub fn tls_acceptor(certificates: &[CertificateConfig]) -> io::Result<TlsAcceptor> {
    CertStore::load(certificates)?.acceptor()
}

/// The certificates the TLS listeners present; replaced whole on reload, so a handshake
/// sees either the old set or the new one.
#[derive(Debug, Clone)]
pub struct CertStore {
    current: Arc<arc_swap::ArcSwap<SniResolver>>,
}

impl CertStore {
    /// Reads every certificate and key; fails on the first unreadable one.
    pub fn load(certificates: &[CertificateConfig]) -> io::Result<CertStore> {
        Ok(CertStore {
            current: Arc::new(arc_swap::ArcSwap::from_pointee(SniResolver::load(
                certificates,
            )?)),
        })
    }

    /// Presents `loaded`'s certificates from now on.
    pub fn swap(&self, loaded: CertStore) {
        self.current.store(loaded.current.load_full());
    }

    /// An acceptor that always presents the current set.
    pub fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello)
    }
}

fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> io::Result<CertifiedKey> {
    let with_path = |path: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    };
    let cert_pem = std::fs::read(cert_path).map_err(|e| with_path(cert_path, &e))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| with_path(cert_path, &e))?;
    if chain.is_empty() {
        return Err(with_path(cert_path, &"no certificate in file"));
    }
    let key_pem = std::fs::read(key_path).map_err(|e| with_path(key_path, &e))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| with_path(key_path, &e))?
        .ok_or_else(|| with_path(key_path, &"no private key in file"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| with_path(key_path, &e))
}

/// Picks a certificate by the client's SNI name, falling back to the default.
#[derive(Debug, Default)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn load(certificates: &[CertificateConfig]) -> io::Result<SniResolver> {
        let provider = rustls::crypto::ring::default_provider();
        let mut resolver = SniResolver::default();
        for cert in certificates {
            let key = Arc::new(load_certified_key(&cert.cert, &cert.key, &provider)?);
            for name in &cert.server_names {
                resolver.by_name.insert(name.clone(), key.clone());
            }
            if cert.default || resolver.default.is_none() && certificates.len() == 1 {
                resolver.default = Some(key);
            }
        }
        Ok(resolver)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()))
            .or(self.default.as_ref())
            .cloned()
    }
}
