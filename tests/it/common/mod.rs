//! Test harness: four real, SigV4-verifying S3 backends and the gateway, all on
//! `127.0.0.1:0`, reached through a real hyper client. Every await has a timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use s3edge::config::Config;
use s3edge::route::FileKind;
use s3edge::server::Listener;
use s3edge::service::Gateway;
use s3edge_testbed::{self as demo, Backends};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod faults;
pub mod pg;
pub mod process;

/// Upper bound on any single step of a test.
pub const STEP: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test instead of hanging.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("step took longer than {STEP:?}"),
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The sample recording's key for a kind.
/// `len` bytes of xorshift64 output from `seed`: not periodic, so a misplaced slice shows.
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

pub fn sample_key(kind: FileKind) -> String {
    format!(
        "{}/{}{}",
        demo::SAMPLE_ACCOUNT,
        demo::SAMPLE_NAME,
        kind.suffix()
    )
}

/// Path form of the sample recording's file in a region.
pub fn sample_path(region: &str, kind: FileKind) -> String {
    format!("/{region}/{}", sample_key(kind))
}

/// A gateway serving on `127.0.0.1:0` in this process; stopped when dropped.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The gateway (shares its cache with the running server).
    pub gateway: Gateway,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The one way tests start a gateway server: plain HTTP, or HTTPS with `tls`.
pub async fn serve(config: &Config, tls: Option<tokio_rustls::TlsAcceptor>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let gateway = Gateway::new(config).unwrap();
    let served = gateway.clone();
    let (limits, grace) = (config.limits, config.shutdown_grace);
    let task = tokio::spawn(async move {
        let listeners = vec![Listener { tcp: listener, tls }];
        s3edge::server::serve(served, listeners, limits, grace, async {
            let _ = rx.await;
        })
        .await;
    });
    Served {
        addr,
        gateway,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl Served {
    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            within(task).await.unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The socket address of a region's (loopback) endpoint, for a proxy in front of it.
pub fn endpoint_addr(region: &s3edge::config::RegionConfig) -> SocketAddr {
    region
        .endpoint
        .authority()
        .unwrap()
        .as_str()
        .parse()
        .unwrap()
}

/// An address whose connections are refused by construction: a socket bound to a loopback
/// port but never listening. The port stays reserved while the socket lives.
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Four backends and a gateway in front of them.
pub struct Harness {
    pub backends: Backends,
    pub config: Config,
    pub addr: SocketAddr,
    pub client: Client<HttpConnector, Empty<Bytes>>,
    /// The gateway under test (shares the cache with the running server).
    pub gateway: Gateway,
    server: Option<Served>,
    _dir: tempfile::TempDir,
}

/// A config for the demo regions with one plain listener.
pub fn config_for(backends: &Backends) -> Config {
    Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap())
}

impl Harness {
    /// Backends with the sample recording, and the gateway with the default test config.
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// Like [`Harness::start`], with the config adjusted before the gateway starts.
    /// The sample is uploaded with the unmodified config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let backends = within(Backends::start(dir.path())).await.unwrap();
        within(demo::upload_sample(&backends.regions))
            .await
            .unwrap();
        let mut config = config_for(&backends);
        adjust(&mut config);
        let server = serve(&config, None).await;
        Harness {
            backends,
            config,
            addr: server.addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            gateway: server.gateway.clone(),
            server: Some(server),
            _dir: dir,
        }
    }

    /// Writes an object straight to a region's backend (signed, not through the cache).
    pub async fn put(&self, region: &str, key: &str, body: Bytes) {
        let region = self
            .backends
            .regions
            .iter()
            .find(|r| r.name == region)
            .unwrap();
        within(demo::writer(region).put_object(key, body, HeaderMap::new()))
            .await
            .unwrap();
    }

    /// The gateway's cache.
    pub fn cache(&self) -> s3edge::cache::Cache {
        self.gateway.cache().expect("cache enabled").clone()
    }

    /// The folder holding the backends' data (`{root}/{region}`).
    pub fn backends_root(&self) -> std::path::PathBuf {
        self._dir.path().to_path_buf()
    }

    /// Requests seen by all backends together.
    pub fn upstream_requests(&self) -> u64 {
        self.backends
            .backends
            .iter()
            .map(|b| b.stats.requests())
            .sum()
    }

    /// Sends a request to the gateway and reads the whole answer.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Empty::new()).unwrap();
        let response = within(self.client.request(request)).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = within(body.collect()).await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// GET with headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }
}

/// Starts the admin listener for a harness's gateway; dropping the sender stops it.
pub async fn start_admin(
    h: &Harness,
    token: Option<&str>,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(s3edge::admin::serve(
        listener,
        h.gateway.clone(),
        token.map(str::to_string),
        rx,
    ));
    (addr, tx)
}
