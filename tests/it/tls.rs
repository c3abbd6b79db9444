//! TLS termination with certificates generated here: SNI picks the certificate, ALPN picks
//! HTTP/1.1 or HTTP/2, and the bytes are the same either way.

use std::sync::Arc;

use crate::common::{Harness, sample_key, within};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use s3edge::config::CertificateConfig;
use s3edge::route::FileKind;
use s3edge_testbed::REGIONS;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct TlsGateway {
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    edge_cert: CertificateDer<'static>,
    eu1_cert: CertificateDer<'static>,
    _server: crate::common::Served,
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
    let server = crate::common::serve(&config, Some(acceptor)).await;
    TlsGateway {
        addr: server.addr,
        roots,
        edge_cert: edge.cert.der().clone(),
        eu1_cert: eu1.cert.der().clone(),
        _server: server,
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
    assert_eq!(
        body,
        s3edge_testbed::sample_file(FileKind::Processed).slice(0..1024)
    );
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
        assert_eq!(body, s3edge_testbed::sample_file(kind), "{kind:?}");
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
    // Accept whatever is presented, then look at it: it must be the default certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = ServerName::try_from("other.test".to_string()).unwrap();
    let stream = within(TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .expect("the gateway presents its default certificate to an unknown name");
    assert_eq!(peer_cert(&stream), gw.edge_cert);
    assert_ne!(peer_cert(&stream), gw.eu1_cert);
}

/// Accepts any certificate (its signatures still checked), so a test can look at what a
/// server presents to a name it does not know.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
