//! TLS termination with certificates generated here: SNI picks the certificate, ALPN picks
//! HTTP/1.1 or HTTP/2, and the bytes are the same either way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{Harness, sample_key, within};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use s3edge::config::CertificateConfig;
use s3edge::demo::{self, REGIONS};
use s3edge::route::FileKind;
use s3edge::server::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

struct TlsGateway {
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    edge_cert: CertificateDer<'static>,
    eu1_cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

async fn start_tls(h: &Harness) -> TlsGateway {
    let dir = tempfile::tempdir().unwrap();
    let edge = rcgen::generate_simple_self_signed(vec!["edge.test".to_string()]).unwrap();
    let eu1 = rcgen::generate_simple_self_signed(vec![REGIONS[0].host.to_string()]).unwrap();
    let mut certificates = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    for (name, generated, server_names, default) in [
        ("edge", &edge, vec![], true),
        ("eu1", &eu1, vec![REGIONS[0].host.to_string()], false),
    ] {
        let cert = dir.path().join(format!("{name}.pem"));
        let key = dir.path().join(format!("{name}-key.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
        roots.add(generated.cert.der().clone()).unwrap();
        certificates.push(CertificateConfig {
            cert,
            key,
            server_names,
            default,
        });
    }
    let mut config = h.config.clone();
    config.certificates = certificates;
    let acceptor = s3edge::server::tls_acceptor(&config.certificates).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        let listeners = vec![Listener {
            tcp,
            tls: Some(acceptor),
        }];
        let bound = s3edge::Bound {
            listeners,
            certs: None,
        };
        let _ = s3edge::run(&config, bound, None, std::future::pending()).await;
    });
    TlsGateway {
        addr,
        roots,
        edge_cert: edge.cert.der().clone(),
        eu1_cert: eu1.cert.der().clone(),
        _dir: dir,
    }
}

/// Connects with a given SNI name and ALPN list; returns the stream.
async fn connect(
    gw: &TlsGateway,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(gw.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = within(TcpStream::connect(gw.addr)).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    within(TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .unwrap()
}

fn peer_cert(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn http1_over_tls_with_sni() {
    let h = Harness::start().await;
    let gw = start_tls(&h).await;
    let stream = connect(&gw, REGIONS[0].host, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(&stream), gw.eu1_cert);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(format!("/{}", sample_key(FileKind::Processed)))
        .header("host", REGIONS[0].host)
        .header("range", "bytes=0-1023")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within(sender.send_request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, demo::sample_file(FileKind::Processed).slice(0..1024));
}

#[tokio::test]
async fn http2_over_tls_and_default_certificate() {
    let h = Harness::start().await;
    let gw = start_tls(&h).await;
    let stream = connect(&gw, "edge.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_cert(&stream), gw.edge_cert);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Several streams on one connection, path form, each file kind.
    for kind in FileKind::ALL {
        let request = Request::get(format!("https://edge.test/us2/{}", sample_key(kind)))
            .header("origin", "https://app.example")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within(sender.send_request(request)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{kind:?}");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        assert_eq!(response.headers()["content-type"], kind.content_type());
        let body = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, demo::sample_file(kind), "{kind:?}");
    }
    // Host form over HTTP/2: the :authority names the region.
    let request = Request::get(format!(
        "https://{}/{}",
        REGIONS[1].host,
        sample_key(FileKind::Snapshot)
    ))
    .body(Empty::<Bytes>::new())
    .unwrap();
    let response = within(sender.send_request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_sni_gets_the_default_certificate() {
    let h = Harness::start().await;
    let gw = start_tls(&h).await;
    // The default certificate does not name this host, so verification must fail.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(gw.roots.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = ServerName::try_from("other.test".to_string()).unwrap();
    let result = within(TlsConnector::from(Arc::new(config)).connect(name, tcp)).await;
    assert!(
        result.is_err(),
        "a certificate for other.test was presented"
    );
}
