//! Listeners: plain HTTP and HTTPS (rustls, one certificate per SNI name with a default,
//! HTTP/1.1 and HTTP/2 by ALPN), and graceful shutdown with a deadline.

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
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::CertificateConfig;
use crate::service::Gateway;

/// How long a client may take for its TLS handshake or its request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    gateway: Gateway,
    listeners: Vec<Listener>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let accept = accept_loop(
            listener,
            gateway.clone(),
            builder.clone(),
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
    // The accept loops are gone, so this is the last reference.
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

async fn accept_loop(
    listener: Listener,
    gateway: Gateway,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
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
        let gateway = gateway.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = listener.tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request).await) }
            });
            let result =
                match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "tls handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "tls handshake timed out");
                                    return;
                                }
                            };
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// Builds the TLS acceptor: certificates by SNI name, a default for the rest, h2 and http/1.1.
pub fn tls_acceptor(certificates: &[CertificateConfig]) -> io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
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

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()))
            .or(self.default.as_ref())
            .cloned()
    }
}
