//! Range and conditional requests as video players send them.

use crate::common::{Harness, sample_path};
use http::{Method, StatusCode};
use s3edge::route::FileKind;

#[tokio::test]
async fn every_range_form() {
    let h = Harness::start().await;
    let path = sample_path("eu1", FileKind::Processed);
    let full = s3edge_testbed::sample_file(FileKind::Processed);
    let len = full.len();
    let cases = [
        ("bytes=0-0", 0, 0),
        ("bytes=0-99", 0, 99),
        ("bytes=0-", 0, len - 1),
        ("bytes=-500", len - 500, len - 1),
        ("bytes=1000-", 1000, len - 1),
        ("bytes=50000-59999", 50_000, 59_999),
        (&*format!("bytes=100-{}", len + 1000), 100, len - 1),
        (&*format!("bytes=-{}", len * 2), 0, len - 1),
    ];
    for (range, first, last) in cases {
        let reply = h.get(&path, &[("range", range)]).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(reply.body, full.slice(first..=last), "{range}");
        assert_eq!(
            reply.header("content-range"),
            Some(format!("bytes {first}-{last}/{len}").as_str()),
            "{range}"
        );
        assert_eq!(
            reply.header("content-length"),
            Some((last - first + 1).to_string().as_str())
        );
        assert_eq!(reply.header("accept-ranges"), Some("bytes"));
        assert_eq!(reply.header("content-type"), Some("video/mp4"));
    }
}

#[tokio::test]
async fn range_past_the_end_is_416() {
    let h = Harness::start().await;
    let path = sample_path("us1", FileKind::Snapshot);
    let len = s3edge_testbed::sample_file(FileKind::Snapshot).len();
    let reply = h.get(&path, &[("range", &format!("bytes={len}-"))]).await;
    assert_eq!(reply.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(&reply.body[..], b"range not satisfiable\n");
    assert!(!String::from_utf8_lossy(&reply.body).contains("<Error>"));
}

#[tokio::test]
async fn head_with_range_is_206() {
    let h = Harness::start().await;
    let path = sample_path("eu2", FileKind::Raw);
    let len = s3edge_testbed::sample_file(FileKind::Raw).len();
    let reply = h
        .send(Method::HEAD, &path, &[("range", "bytes=10-19")])
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("content-length"), Some("10"));
    assert_eq!(
        reply.header("content-range"),
        Some(format!("bytes 10-19/{len}").as_str())
    );
}

#[tokio::test]
async fn if_range_match_gives_range_and_mismatch_gives_whole_object() {
    let h = Harness::start().await;
    let path = sample_path("us2", FileKind::Processed);
    let full = s3edge_testbed::sample_file(FileKind::Processed);
    let first = h.get(&path, &[]).await;
    let etag = first.header("etag").unwrap().to_string();
    let modified = first.header("last-modified").unwrap().to_string();

    for validator in [etag.as_str(), modified.as_str()] {
        let hit = h
            .get(
                &path,
                &[("range", "bytes=100-199"), ("if-range", validator)],
            )
            .await;
        assert_eq!(hit.status, StatusCode::PARTIAL_CONTENT, "{validator}");
        assert_eq!(hit.body, full.slice(100..200));
    }
    for validator in [
        "\"0123456789abcdef0123456789abcdef\"",
        "W/\"weak-never-matches\"",
        "Thu, 01 Jan 2015 00:00:00 GMT",
    ] {
        let miss = h
            .get(
                &path,
                &[("range", "bytes=100-199"), ("if-range", validator)],
            )
            .await;
        assert_eq!(miss.status, StatusCode::OK, "{validator}");
        assert_eq!(miss.body, full, "{validator}");
        assert_eq!(miss.header("content-range"), None);
    }
    let both = h
        .get(
            &path,
            &[
                ("range", "bytes=0-9"),
                ("if-range", &etag),
                ("if-match", &etag),
            ],
        )
        .await;
    // Both match: the range (the cache evaluates both exactly).
    assert_eq!(both.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(both.body, full.slice(0..10));
}

#[tokio::test]
async fn if_range_next_to_if_match_without_cache_ignores_range() {
    // Passing through, If-Range next to the client's own If-Match cannot be delegated to the
    // backend: Range is ignored, which RFC 9110 allows.
    let h = Harness::start_with(|c| c.cache.enabled = false).await;
    let path = sample_path("us2", FileKind::Processed);
    let full = s3edge_testbed::sample_file(FileKind::Processed);
    let etag = h.get(&path, &[]).await.header("etag").unwrap().to_string();
    let both = h
        .get(
            &path,
            &[
                ("range", "bytes=0-9"),
                ("if-range", &etag),
                ("if-match", &etag),
            ],
        )
        .await;
    assert_eq!(both.status, StatusCode::OK);
    assert_eq!(both.body, full);
}

#[tokio::test]
async fn not_modified_and_precondition_failed() {
    let h = Harness::start().await;
    let path = sample_path("eu1", FileKind::Filmstrip);
    let first = h.get(&path, &[]).await;
    let etag = first.header("etag").unwrap().to_string();
    let modified = first.header("last-modified").unwrap().to_string();

    let by_etag = h.get(&path, &[("if-none-match", &etag)]).await;
    assert_eq!(by_etag.status, StatusCode::NOT_MODIFIED);
    assert!(by_etag.body.is_empty());
    assert_eq!(by_etag.header("etag"), Some(etag.as_str()));

    let by_date = h.get(&path, &[("if-modified-since", &modified)]).await;
    assert_eq!(by_date.status, StatusCode::NOT_MODIFIED);

    let head = h
        .send(Method::HEAD, &path, &[("if-none-match", &etag)])
        .await;
    assert_eq!(head.status, StatusCode::NOT_MODIFIED);

    let changed = h.get(&path, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body, first.body);

    let old = h
        .get(
            &path,
            &[("if-modified-since", "Thu, 01 Jan 2015 00:00:00 GMT")],
        )
        .await;
    assert_eq!(old.status, StatusCode::OK);

    let failed = h.get(&path, &[("if-match", "\"other\"")]).await;
    assert_eq!(failed.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(&failed.body[..], b"precondition failed\n");

    let matched = h.get(&path, &[("if-match", &etag)]).await;
    assert_eq!(matched.status, StatusCode::OK);

    let unmodified = h
        .get(
            &path,
            &[("if-unmodified-since", "Thu, 01 Jan 2015 00:00:00 GMT")],
        )
        .await;
    assert_eq!(unmodified.status, StatusCode::PRECONDITION_FAILED);
}
