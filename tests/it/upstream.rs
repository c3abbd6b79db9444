//! Signing, addressing and backend failures: a signing bug or a leak of backend detail
//! fails here.

use std::time::{Duration, Instant};

use crate::common::{Harness, sample_key, sample_path};
use http::StatusCode;
use s3edge::config::{Addressing, StaticCredentials};
use s3edge::route::FileKind;
use s3edge_testbed::REGIONS;
use s3edge_testbed::backend::{BackendOptions, S3Backend};
use tokio::net::TcpListener;

/// A 502 of our own: no XML, no request id, no bucket name.
fn assert_opaque_502(reply: &crate::common::Reply) {
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(&reply.body[..], b"bad gateway\n");
    for (name, _) in &reply.headers {
        assert!(!name.as_str().starts_with("x-amz"), "{name} leaked");
    }
}

#[tokio::test]
async fn signing_with_the_wrong_region_fails() {
    // eu2 signed with eu1's signing region: the backend checks the credential scope.
    let h = Harness::start_with(|c| c.regions[1].signing_region = "eu-central-1".into()).await;
    let before = h.backends.backends[1].stats.requests();
    let reply = h.get(&sample_path("eu2", FileKind::Snapshot), &[]).await;
    assert_opaque_502(&reply);
    assert_eq!(h.backends.backends[1].stats.requests(), before + 1);
    // The other regions are unaffected.
    let ok = h.get(&sample_path("eu1", FileKind::Snapshot), &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn signing_with_another_regions_key_fails() {
    let h = Harness::start_with(|c| {
        c.regions[1].credentials = c.regions[0].credentials.clone();
    })
    .await;
    let reply = h.get(&sample_path("eu2", FileKind::Processed), &[]).await;
    assert_opaque_502(&reply);
}

#[tokio::test]
async fn wrong_secret_is_a_502_without_backend_detail() {
    let h = Harness::start_with(|c| {
        c.regions[3].credentials.secret_access_key = "not-the-secret".into();
    })
    .await;
    let reply = h
        .get(
            &sample_path("us2", FileKind::Raw),
            &[("origin", "https://a.example")],
        )
        .await;
    assert_opaque_502(&reply);
    let body = String::from_utf8_lossy(&reply.body);
    for secret in [
        "SignatureDoesNotMatch",
        "RequestId",
        "us2-addpipe",
        "<?xml",
        "HostId",
    ] {
        assert!(!body.contains(secret), "{secret} leaked");
    }
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn session_tokens_are_signed_in() {
    let h = Harness::start_with(|c| {
        c.regions[2].credentials.session_token = Some("FQoGZXIvYXdzEXAMPLETOKEN".into());
    })
    .await;
    let reply = h.get(&sample_path("us1", FileKind::Snapshot), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = h.backends.backends[2].stats.recent();
    let last = seen.last().unwrap();
    assert_eq!(
        last.headers["x-amz-security-token"],
        "FQoGZXIvYXdzEXAMPLETOKEN"
    );
    let auth = last.headers["authorization"].to_str().unwrap();
    assert!(auth.contains("x-amz-security-token"), "{auth}");
    assert!(last.headers.contains_key("x-amz-content-sha256"));
}

#[tokio::test]
async fn key_prefix_needing_encoding_still_signs() {
    for prefix in [
        "recordings/",
        "with space/",
        "a+b/",
        "(paren)/",
        "it's/",
        "vidéo-日本/",
    ] {
        let h = Harness::start_with(|c| c.regions[0].key_prefix = prefix.to_string()).await;
        crate::common::within(s3edge_testbed::upload_sample(&h.config.regions[..1]))
            .await
            .unwrap_or_else(|e| panic!("{prefix}: upload failed: {e}"));
        let reply = h.get(&sample_path("eu1", FileKind::Processed), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{prefix}");
        assert_eq!(
            reply.body,
            s3edge_testbed::sample_file(FileKind::Processed),
            "{prefix}"
        );
        let seen = h.backends.backends[0].stats.recent();
        let path = seen.last().unwrap().uri.path().to_string();
        let expected_key = format!("{prefix}{}", sample_key(FileKind::Processed));
        let encoded = s3edge::upstream::encode_key(&expected_key);
        assert_eq!(path, format!("/eu1-addpipe/{encoded}"), "{prefix}");
    }
}

#[tokio::test]
async fn virtual_hosted_addressing() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = S3Backend::start(
        listener,
        BackendOptions {
            region: "eu-central-1".into(),
            access_key: "VHKEY".into(),
            secret_key: "vh-secret".into(),
            provider: s3edge::config::Provider::Aws,
            root: dir.path().join("vh"),
            redirect_to_region: None,
            public_read: false,
            virtual_host_domain: Some(format!("s3.edge.test:{port}")),
        },
    )
    .unwrap();
    let h = Harness::start_with(|c| {
        let region = &mut c.regions[0];
        region.endpoint = format!("http://s3.edge.test:{port}").parse().unwrap();
        region.addressing = Addressing::VirtualHosted;
        region.connect_to = Some("127.0.0.1".parse().unwrap());
        region.credentials = StaticCredentials {
            access_key_id: "VHKEY".into(),
            secret_access_key: "vh-secret".into(),
            session_token: None,
        };
    })
    .await;
    crate::common::within(s3edge_testbed::upload_sample(&h.config.regions[..1]))
        .await
        .unwrap();
    let reply = h.get(&sample_path("eu1", FileKind::Filmstrip), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, s3edge_testbed::sample_file(FileKind::Filmstrip));
    let seen = backend.stats.recent();
    let last = seen.last().unwrap();
    assert_eq!(
        last.headers["host"],
        format!("eu1-addpipe.s3.edge.test:{port}").as_str()
    );
    assert_eq!(
        last.uri.path(),
        format!("/{}", sample_key(FileKind::Filmstrip))
    );
}

#[tokio::test]
async fn bucket_in_another_region_is_a_logged_502() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = S3Backend::start(
        listener,
        BackendOptions {
            region: "us-east-1".into(),
            access_key: "K".into(),
            secret_key: "S".into(),
            provider: s3edge::config::Provider::Aws,
            root: dir.path().join("r"),
            redirect_to_region: Some("ap-southeast-2".into()),
            public_read: false,
            virtual_host_domain: None,
        },
    )
    .unwrap();
    let h = Harness::start_with(|c| {
        c.regions[3].endpoint = backend.endpoint().parse().unwrap();
    })
    .await;
    let reply = h.get(&sample_path("us2", FileKind::Snapshot), &[]).await;
    assert_opaque_502(&reply);
    assert_eq!(backend.stats.requests(), 1);
}

#[tokio::test]
async fn unreachable_backend_is_502_and_a_hung_one_504() {
    // A listener that accepts and never answers.
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            held.push(stream);
        }
    });
    let h = Harness::start_with(|c| {
        c.timeouts.response_head = Duration::from_millis(500);
        c.regions[1].endpoint = format!("http://{hung_addr}").parse().unwrap();
    })
    .await;
    h.backends.backends[2].stop();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let refused = h.get(&sample_path("us1", FileKind::Snapshot), &[]).await;
    assert_opaque_502(&refused);

    let started = Instant::now();
    let timed_out = h.get(&sample_path("eu2", FileKind::Snapshot), &[]).await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(&timed_out.body[..], b"gateway timeout\n");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    holder.abort();
}

#[tokio::test]
async fn the_regions_are_distinct_backends() {
    // Each region's signing identity is its own: a request for one region never goes to another.
    let h = Harness::start().await;
    for (index, spec) in REGIONS.iter().enumerate() {
        let before: Vec<u64> = h
            .backends
            .backends
            .iter()
            .map(|b| b.stats.requests())
            .collect();
        let reply = h
            .get(&sample_path(spec.name, FileKind::Snapshot), &[])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        for (other, backend) in h.backends.backends.iter().enumerate() {
            let expected = before[other] + u64::from(other == index);
            assert_eq!(
                backend.stats.requests(),
                expected,
                "{} hit backend {other}",
                spec.name
            );
        }
    }
}

#[tokio::test]
async fn upstream_connections_are_kept_alive() {
    for cached in [false, true] {
        let h = Harness::start_with(|c| c.cache.enabled = cached).await;
        let backend = &h.backends.backends[0];
        let before = backend.stats.connections();
        for i in 0..20 {
            // Distinct objects, so that every request reaches the backend.
            let key = format!("{}/keepalive-{i}.jpg", s3edge_testbed::SAMPLE_ACCOUNT);
            h.put("eu1", &key, bytes::Bytes::from(vec![7u8; 30 * 1024]))
                .await;
            let reply = h.get(&format!("/eu1/{key}"), &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body.len(), 30 * 1024);
        }
        // `put` uses its own client; the gateway's requests share one pooled connection.
        let gateway_connections = backend.stats.connections() - before - 20;
        assert!(
            gateway_connections <= 2,
            "cached={cached}: {gateway_connections} upstream connections for 20 sequential requests"
        );
    }
}
