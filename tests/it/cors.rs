//! CORS on every status, and preflights answered locally.

use crate::common::{Harness, sample_path};
use http::{Method, StatusCode};
use s3edge::route::FileKind;

const ORIGIN: (&str, &str) = ("origin", "https://app.example.com");

fn assert_cors(reply: &crate::common::Reply, what: &str) {
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("*"),
        "{what}"
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET"),
        "{what}"
    );
    assert_eq!(
        reply.header("access-control-max-age"),
        Some("3000"),
        "{what}"
    );
    let exposed = reply.header("access-control-expose-headers").unwrap_or("");
    for name in [
        "Content-Range",
        "Content-Length",
        "Accept-Ranges",
        "ETag",
        "Last-Modified",
    ] {
        assert!(exposed.contains(name), "{what}: {name} not exposed");
    }
    assert_eq!(reply.header("vary"), Some("Origin"), "{what}");
}

#[tokio::test]
async fn cors_headers_on_200_206_304_404_and_errors() {
    let h = Harness::start().await;
    let path = sample_path("eu1", FileKind::Processed);
    let ok = h.get(&path, &[ORIGIN]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_cors(&ok, "200");
    let etag = ok.header("etag").unwrap().to_string();

    let partial = h.get(&path, &[ORIGIN, ("range", "bytes=0-1")]).await;
    assert_eq!(partial.status, StatusCode::PARTIAL_CONTENT);
    assert_cors(&partial, "206");

    let not_modified = h.get(&path, &[ORIGIN, ("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_cors(&not_modified, "304");

    let missing = h
        .get(
            &format!("/eu1/{}/gone.mp4", s3edge_testbed::SAMPLE_ACCOUNT),
            &[ORIGIN],
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_cors(&missing, "404 from backend");

    let refused = h.get("/eu1/x/y.txt", &[ORIGIN]).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_cors(&refused, "404 local");

    let bad = h.get("/eu1/x/../y.mp4", &[ORIGIN]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_cors(&bad, "400");

    let head = h.send(Method::HEAD, &path, &[ORIGIN]).await;
    assert_cors(&head, "HEAD");
}

#[tokio::test]
async fn no_origin_no_cors_but_vary() {
    let h = Harness::start().await;
    let reply = h.get(&sample_path("eu2", FileKind::Snapshot), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    // A shared cache must not serve this copy to a browser that sends Origin.
    assert_eq!(reply.header("vary"), Some("Origin"));
}

#[tokio::test]
async fn preflight_is_answered_locally() {
    let h = Harness::start().await;
    let path = sample_path("us1", FileKind::Processed);
    let before = h.upstream_requests();
    for method in ["GET", "HEAD"] {
        let reply = h
            .send(
                Method::OPTIONS,
                &path,
                &[
                    ORIGIN,
                    ("access-control-request-method", method),
                    ("access-control-request-headers", "range"),
                ],
            )
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{method}");
        assert_cors(&reply, "preflight");
        let allowed = reply
            .header("access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("range"), "{allowed}");
        assert!(allowed.contains("if-none-match"), "{allowed}");
        assert!(reply.body.is_empty());
    }
    for method in ["PUT", "DELETE", "POST"] {
        let reply = h
            .send(
                Method::OPTIONS,
                &path,
                &[ORIGIN, ("access-control-request-method", method)],
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method}");
        assert_eq!(reply.header("access-control-allow-headers"), None);
    }
    assert_eq!(
        h.upstream_requests(),
        before,
        "a preflight reached a backend"
    );
}

#[tokio::test]
async fn cors_values_are_configurable() {
    let h = Harness::start_with(|c| {
        c.cors.allow_origin = "https://app.example.com".into();
        c.cors.allow_methods = "GET, HEAD".into();
        c.cors.max_age = 60;
    })
    .await;
    let reply = h
        .get(&sample_path("eu1", FileKind::Snapshot), &[ORIGIN])
        .await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, HEAD")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("60"));
}
