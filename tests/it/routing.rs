//! Every region × file kind × Host and path form, byte-exact, and everything that must be
//! refused before it reaches a backend.

use crate::common::{Harness, sample_key, sample_path};
use http::{Method, StatusCode};
use s3edge::route::FileKind;
use s3edge_testbed::REGIONS;

#[tokio::test]
async fn every_region_kind_and_form_is_byte_exact() {
    let h = Harness::start().await;
    for spec in REGIONS {
        for kind in FileKind::ALL {
            let expected = s3edge_testbed::sample_file(kind);
            let by_path = h.get(&sample_path(spec.name, kind), &[]).await;
            let by_host = h
                .get(&format!("/{}", sample_key(kind)), &[("host", spec.host)])
                .await;
            let upper_host = spec.host.to_uppercase() + ":443";
            let by_host_case = h
                .get(&format!("/{}", sample_key(kind)), &[("host", &upper_host)])
                .await;
            for reply in [&by_path, &by_host, &by_host_case] {
                assert_eq!(reply.status, StatusCode::OK, "{} {kind:?}", spec.name);
                assert_eq!(reply.body, expected, "{} {kind:?}", spec.name);
                assert_eq!(reply.header("content-type"), Some(kind.content_type()));
                assert_eq!(
                    reply.header("content-length"),
                    Some(expected.len().to_string().as_str())
                );
                assert_eq!(reply.header("accept-ranges"), Some("bytes"));
                assert!(reply.header("etag").is_some_and(|e| e.starts_with('"')));
                assert!(reply.header("last-modified").is_some());
                for (name, _) in &reply.headers {
                    assert!(!name.as_str().starts_with("x-amz-"), "{name} leaked");
                    assert_ne!(name.as_str(), "server");
                }
            }
        }
    }
}

#[tokio::test]
async fn head_answers_headers_without_body() {
    let h = Harness::start().await;
    let expected = s3edge_testbed::sample_file(FileKind::Raw);
    let reply = h
        .send(Method::HEAD, &sample_path("us1", FileKind::Raw), &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
    assert_eq!(
        reply.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(reply.header("content-type"), Some("video/mp4"));
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
}

#[tokio::test]
async fn storage_policy_was_applied_on_write() {
    let h = Harness::start().await;
    for (index, spec) in REGIONS.iter().enumerate() {
        let backend = &h.backends.backends[index];
        for kind in FileKind::ALL {
            let stored = backend
                .stored_policy(spec.bucket, &sample_key(kind))
                .unwrap();
            let expected_class = s3edge::policy::storage_class(spec.provider, kind);
            assert_eq!(
                stored.storage_class, expected_class,
                "{} {kind:?}",
                spec.name
            );
            let expected_sse = s3edge::policy::server_side_encryption(spec.provider);
            assert_eq!(stored.sse.as_deref(), expected_sse, "{}", spec.name);
        }
    }
    // eu2 is Scaleway: STANDARD, no SSE; eu1 is AWS: raw recordings go to STANDARD_IA.
    let eu2 = h.backends.backends[1]
        .stored_policy("eu2-addpipe", &sample_key(FileKind::Raw))
        .unwrap();
    assert_eq!((eu2.storage_class.as_str(), eu2.sse), ("STANDARD", None));
    let eu1 = h.backends.backends[0]
        .stored_policy("eu1-addpipe", &sample_key(FileKind::Raw))
        .unwrap();
    assert_eq!(eu1.storage_class, "STANDARD_IA");
    assert_eq!(eu1.sse.as_deref(), Some("AES256"));
}

#[tokio::test]
async fn rejected_paths_never_reach_a_backend() {
    let h = Harness::start().await;
    let host = REGIONS[0].host;
    let hash = s3edge_testbed::SAMPLE_ACCOUNT;
    let cases: Vec<(String, Option<&str>, StatusCode)> = vec![
        ("/".into(), Some(host), StatusCode::NOT_FOUND),
        ("/".into(), None, StatusCode::NOT_FOUND),
        (
            format!("/{hash}/rec.txt"),
            Some(host),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/{hash}/rec.MP4"),
            Some(host),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/{hash}/rec_raw.mov"),
            Some(host),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/{hash}/a/rec.mp4"),
            Some(host),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/eu1/{hash}/a/rec.mp4"),
            None,
            StatusCode::NOT_FOUND,
        ),
        ("/eu1".into(), None, StatusCode::NOT_FOUND),
        ("/eu1/".into(), None, StatusCode::BAD_REQUEST),
        (format!("/eu1/{hash}"), None, StatusCode::NOT_FOUND),
        (format!("/eu9/{hash}/rec.mp4"), None, StatusCode::NOT_FOUND),
        (
            format!("/{hash}/rec.mp4"),
            Some("evil.example.com"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/{hash}/rec.mp4"),
            Some("127.0.0.1"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/{hash}/../rec.mp4"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/eu1/../{hash}/rec.mp4"),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/{hash}/%2e%2e.mp4"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/{hash}/rec%2Emp4"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/{hash}//rec.mp4"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("//{hash}/rec.mp4"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/{hash}/rec.mp4/"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/{hash}/re.c.jpg"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/{hash}/_raw.mp4"),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/{}/rec.jpg", "a".repeat(129)),
            Some(host),
            StatusCode::BAD_REQUEST,
        ),
    ];
    let before = h.upstream_requests();
    for (path, host, status) in &cases {
        let headers: Vec<(&str, &str)> = host.iter().map(|h| ("host", *h)).collect();
        let reply = h.get(path, &headers).await;
        assert_eq!(reply.status, *status, "{path} host={host:?}");
        assert!(reply.body.len() < 64, "{path}: body should be short");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    assert_eq!(
        h.upstream_requests(),
        before,
        "a refused request reached a backend"
    );
}

/// The README's rule, case by case: a malformed path is 400, a well-formed path that names no
/// file is 404, and neither reaches a bucket.
#[tokio::test]
async fn the_documented_rule_for_400_and_404() {
    let h = Harness::start().await;
    let cases: &[(&str, StatusCode)] = &[
        // 404: well formed, but no file of ours.
        ("/", StatusCode::NOT_FOUND),
        ("/eu1", StatusCode::NOT_FOUND),
        ("/eu1/H", StatusCode::NOT_FOUND),
        ("/eu1/H/x/N.jpg", StatusCode::NOT_FOUND),
        ("/xx9/H/N.jpg", StatusCode::NOT_FOUND),
        ("/eu1/H/N.txt", StatusCode::NOT_FOUND),
        ("/eu1/H/N.MP4", StatusCode::NOT_FOUND),
        ("/H/N.jpg", StatusCode::NOT_FOUND),
        // 400: malformed.
        ("/eu1/", StatusCode::BAD_REQUEST),
        ("/eu1//N.jpg", StatusCode::BAD_REQUEST),
        ("/eu1/H/N.jpg/", StatusCode::BAD_REQUEST),
        ("/eu1/../N.jpg", StatusCode::BAD_REQUEST),
        ("/eu1/H/N%2Ejpg", StatusCode::BAD_REQUEST),
        ("/eu1/H/N~1.jpg", StatusCode::BAD_REQUEST),
        ("/eu1/H/N.x.jpg", StatusCode::BAD_REQUEST),
    ];
    let before = h.upstream_requests();
    for (path, status) in cases {
        // An unknown Host: only the path decides.
        let reply = h.get(path, &[("host", "edge.test")]).await;
        assert_eq!(reply.status, *status, "{path}");
        let text = if *status == StatusCode::NOT_FOUND {
            &b"not found\n"[..]
        } else {
            &b"bad request\n"[..]
        };
        assert_eq!(&reply.body[..], text, "{path}");
    }
    assert_eq!(
        h.upstream_requests(),
        before,
        "a refused request reached a backend"
    );
}

#[tokio::test]
async fn other_methods_are_refused_with_allow() {
    let h = Harness::start().await;
    let before = h.upstream_requests();
    for method in ["PUT", "POST", "DELETE", "PATCH", "PROPFIND"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = h
            .send(method.clone(), &sample_path("eu1", FileKind::Snapshot), &[])
            .await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD, OPTIONS"));
    }
    assert_eq!(h.upstream_requests(), before);
}

#[tokio::test]
async fn query_strings_are_neither_forwarded_nor_meaningful() {
    let h = Harness::start().await;
    let path = sample_path("eu1", FileKind::Snapshot);
    let plain = h.get(&path, &[]).await;
    for query in [
        "list-type=2",
        "acl",
        "versionId=abc",
        "response-content-type=text/html",
        "uploads",
        "X-Amz-Signature=00",
    ] {
        let reply = h.get(&format!("{path}?{query}"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}");
        assert_eq!(reply.body, plain.body, "{query}");
        assert_eq!(reply.header("content-type"), Some("image/jpeg"), "{query}");
        let seen = h.backends.backends[0].stats.recent();
        let last = seen.last().unwrap();
        assert_eq!(last.uri.query(), None, "{query} was forwarded");
    }
    // A listing of the bucket through the gateway is impossible: only file keys route.
    let listing = h.get("/eu1/?list-type=2", &[]).await;
    assert_eq!(listing.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn client_credentials_and_headers_are_not_forwarded() {
    for cached in [false, true] {
        client_headers_stay_here(cached).await;
    }
}

async fn client_headers_stay_here(cached: bool) {
    let h = Harness::start_with(|c| c.cache.enabled = cached).await;
    let reply = h
        .get(
            &sample_path("us2", FileKind::Snapshot),
            &[
                ("authorization", "AWS4-HMAC-SHA256 Credential=CLIENTKEY/x"),
                ("cookie", "session=secret-cookie"),
                ("x-amz-security-token", "client-token"),
                ("x-amz-meta-evil", "1"),
                ("x-forwarded-for", "10.0.0.1"),
                ("user-agent", "client-agent"),
                ("range", "bytes=0-9"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    let seen = h.backends.backends[3].stats.recent();
    let last = seen.last().unwrap();
    let auth = last.headers["authorization"].to_str().unwrap();
    assert!(auth.contains("Credential=DEMOUS2KEY/"), "{auth}");
    assert!(!auth.contains("CLIENTKEY"));
    for name in [
        "cookie",
        "x-amz-security-token",
        "x-amz-meta-evil",
        "x-forwarded-for",
    ] {
        assert!(!last.headers.contains_key(name), "{name} was forwarded");
    }
    assert_ne!(
        last.headers.get("user-agent").map(|v| v.as_bytes()),
        Some(&b"client-agent"[..])
    );
    if !cached {
        // Passing through, the client's Range goes upstream as sent.
        assert_eq!(last.headers["range"], "bytes=0-9");
    }
}

#[tokio::test]
async fn missing_object_is_a_short_404() {
    let h = Harness::start().await;
    let before = h.backends.backends[1].stats.requests();
    let reply = h
        .get(
            &format!(
                "/eu2/{}/nosuchrecording.jpg",
                s3edge_testbed::SAMPLE_ACCOUNT
            ),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(&reply.body[..], b"not found\n");
    assert_eq!(h.backends.backends[1].stats.requests(), before + 1);
}
