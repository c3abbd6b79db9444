//! Early uploads: a file over the multipart threshold goes up to our bucket while it arrives,
//! and only the commit's attempt completes it. Before the commit nothing is visible; a
//! replaced, refused or never committed file leaves no multipart upload behind.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use s3edge::route::FileKind;
use serde_json::json;

use crate::push::{PushHarness, pattern, recording};

const BUCKET: &str = "eu1-addpipe";

/// Waits until `probe` is true, failing after 20 s with `what`.
async fn until(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !probe() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn early_outcome(h: &PushHarness, outcome: &str) -> f64 {
    let (code, text) = h.call(Method::GET, "/metrics", Bytes::new(), &[]).await;
    assert_eq!(code, StatusCode::OK);
    let start = format!("s3edge_push_early_uploads_total{{outcome=\"{outcome}\"}} ");
    text.as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(start.as_str()))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_goes_up_while_it_arrives_and_its_commit_completes_it() {
    let h = PushHarness::start(|_| {}).await;
    let (code, _) = h
        .put_env("env", json!({"account": "ACC", "region": "eu1"}))
        .await;
    assert_eq!(code, StatusCode::OK);
    let backend = h.backend("eu1");
    let files = recording(12 * 1024 * 1024 + 5);
    for (kind, body) in &files {
        let file = format!("rec{}", kind.suffix());
        assert_eq!(
            h.put_file("env", &file, body.clone()).await,
            StatusCode::CREATED
        );
    }
    // Uncommitted: the raw file's upload is open in the bucket, and no object is visible.
    until("an early multipart upload is open", || {
        backend.open_multipart_uploads() == 1
    })
    .await;
    assert!(backend.object(BUCKET, "ACC/rec_raw.mp4").is_none());
    assert!(backend.object(BUCKET, "ACC/rec.mp4").is_none());

    let (code, status) = h.commit("env", "rec").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{status}");
    let status = h.wait_for("env", "rec", "pushed").await;
    assert_eq!(status["destinations"][0]["attempts"], 1);
    for (kind, body) in &files {
        let key = format!("ACC/rec{}", kind.suffix());
        let stored = backend.object(BUCKET, &key).expect("stored");
        assert!(stored == body.as_ref(), "{key} differs");
        if *kind == FileKind::Raw {
            let policy = backend.stored_policy(BUCKET, &key).unwrap();
            assert_eq!(policy.storage_class, "STANDARD_IA");
            assert_eq!(policy.sse.as_deref(), Some("AES256"));
        }
    }
    assert_eq!(backend.open_multipart_uploads(), 0);
    assert_eq!(early_outcome(&h, "used").await, 1.0);
    // Its second name in the spool is gone with it.
    let tmp: Vec<_> = std::fs::read_dir(h.dir.path().join("spool/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "left in spool/tmp: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_refused_and_uncommitted_early_uploads_leave_nothing_behind() {
    let mut h = PushHarness::start(|_| {}).await;
    h.put_env("env", json!({"account": "ACC", "region": "eu1"}))
        .await;
    let open = h.backend("eu1").open_multipart_uploads_probe();
    let len = 11 * 1024 * 1024 + 3;

    // Replaced before the commit: the object is the second body, whole.
    let first = pattern(len, 7);
    let second = pattern(len, 8);
    assert_eq!(
        h.put_file("env", "a_raw.mp4", first).await,
        StatusCode::CREATED
    );
    assert_eq!(
        h.put_file("env", "a_raw.mp4", second.clone()).await,
        StatusCode::CREATED
    );
    until("the first early upload aborted", || open() == 1).await;
    h.commit("env", "a").await;
    h.wait_for("env", "a", "pushed").await;
    let stored = h.backend("eu1").object(BUCKET, "ACC/a_raw.mp4").unwrap();
    assert!(
        stored == second.as_ref(),
        "the object is not the second body"
    );
    until("no upload open after the push", || open() == 0).await;

    // Refused (its digest is wrong): 400, and its early upload is aborted.
    let body = pattern(len, 9);
    let wrong = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
    let (code, answer) = h
        .call(
            Method::PUT,
            "/v1/recordings/env/b_raw.mp4",
            body,
            &[("content-digest", &format!("sha-256=:{wrong}:"))],
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    until("the refused file's upload aborted", || open() == 0).await;
    assert!(h.backend("eu1").object(BUCKET, "ACC/b_raw.mp4").is_none());

    // Never committed, then a clean stop: nothing stays open. After the restart the commit
    // pushes the kept file the ordinary way.
    let third = pattern(len, 10);
    assert_eq!(
        h.put_file("env", "c_raw.mp4", third.clone()).await,
        StatusCode::CREATED
    );
    until("the uncommitted file's upload open", || open() == 1).await;
    h.restart().await;
    assert_eq!(open(), 0);
    assert!(h.backend("eu1").object(BUCKET, "ACC/c_raw.mp4").is_none());
    let (code, _) = h.commit("env", "c").await;
    assert_eq!(code, StatusCode::ACCEPTED);
    h.wait_for("env", "c", "pushed").await;
    let stored = h.backend("eu1").object(BUCKET, "ACC/c_raw.mp4").unwrap();
    assert!(stored == third.as_ref(), "c_raw.mp4 differs");
    assert_eq!(open(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_our_storage_nothing_goes_up_early() {
    let h = PushHarness::start(|_| {}).await;
    h.put_env(
        "env",
        json!({"account": "ACC", "region": "eu1", "complimentary_storage": false}),
    )
    .await;
    assert_eq!(
        h.put_file("env", "r_raw.mp4", pattern(12 * 1024 * 1024, 3))
            .await,
        StatusCode::CREATED
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.backend("eu1").open_multipart_uploads(), 0);
    assert_eq!(early_outcome(&h, "used").await, 0.0);
}
