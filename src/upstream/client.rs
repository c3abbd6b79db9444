//! The pooled HTTP(S) client of one region: keep-alive, TCP_NODELAY, rustls with the web PKI
//! roots, a connect timeout, an optional fixed address (`connect_to`), and the wait for the
//! response head bounded by `timeouts.response_head`. Its TCP connections read long bodies in
//! large steps ([`crate::body::coalesce`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;

use crate::body::coalesce::{CoalescingIo, READ_BUFFER};

use crate::config::Timeouts;
use crate::error::{GatewayError, StartupError};

type HttpsClient = Client<HttpsConnector<Tcp>, Empty<Bytes>>;

/// A region's connection pool and its time limits.
#[derive(Debug)]
pub(crate) struct BackendClient {
    client: HttpsClient,
    response_head: std::time::Duration,
}

impl BackendClient {
    /// A pool with the region's timeouts; `connect_to` replaces name resolution.
    pub(crate) fn new(
        timeouts: Timeouts,
        connect_to: Option<std::net::IpAddr>,
    ) -> Result<Self, StartupError> {
        Ok(BackendClient {
            client: build_client(timeouts, connect_to)?,
            response_head: timeouts.response_head,
        })
    }

    /// Sends one request and waits at most `response_head` for the answer's head.
    pub(crate) async fn send(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, GatewayError> {
        match tokio::time::timeout(self.response_head, self.client.request(request)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout("response head")),
            Ok(Err(e)) if e.is_connect() && is_timeout(&e) => {
                Err(GatewayError::UpstreamTimeout("connect"))
            }
            Ok(Err(e)) => Err(GatewayError::UpstreamConnect(e)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Sends one request, bounded by `timeout` instead (readiness checks).
    pub(crate) async fn send_within(
        &self,
        request: Request<Empty<Bytes>>,
        timeout: std::time::Duration,
    ) -> Option<Response<Incoming>> {
        tokio::time::timeout(timeout, self.client.request(request))
            .await
            .ok()?
            .ok()
    }
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
) -> Result<HttpsClient, StartupError> {
    let mut http = HttpConnector::new_with_resolver(Resolver { connect_to });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    http.set_keepalive(Some(std::time::Duration::from_secs(30)));
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartupError::Upstream {
        region: String::new(),
        reason: format!("tls protocol versions: {e}"),
    })?
    .with_root_certificates(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(Tcp(http));
    Ok(Client::builder(TokioExecutor::new())
        // Bounds what hyper reads ahead of a body's consumer (see `coalesce`).
        .http1_max_buf_size(READ_BUFFER)
        .pool_idle_timeout(timeouts.pool_idle)
        .pool_max_idle_per_host(256)
        .build(https))
}

/// The TCP connector, its connections wrapped to coalesce the reads of long bodies.
#[derive(Debug, Clone)]
struct Tcp(HttpConnector<Resolver>);

impl tower_service::Service<http::Uri> for Tcp {
    type Response = CoalescingIo;
    type Error = <HttpConnector<Resolver> as tower_service::Service<http::Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<CoalescingIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(CoalescingIo::new(connecting.await?)) })
    }
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
