//! Deleting recordings through the push API: the bucket and two warm edges are emptied before
//! the DELETE returns; an edge that is down is purged when it comes back; the lifecycle sweep
//! takes only recordings older than N days; bad input changes nothing.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use s3edge::config::EdgeConfig;
use s3edge::route::FileKind;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::common::faults::{Fault, FaultProxy};
use crate::common::{Served, within};
use crate::push::{PushHarness, recording};

/// An edge's admin listener, bound before the push service is told of it.
pub(crate) async fn bind_admin() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

pub(crate) fn edge(admin: &str) -> EdgeConfig {
    EdgeConfig {
        admin: admin.to_string(),
        token: None,
    }
}

/// A gateway with a cache reading the harness's buckets directly, its admin on `admin`.
pub(crate) async fn start_edge(
    h: &PushHarness,
    admin: TcpListener,
) -> (Served, tokio::sync::watch::Sender<bool>) {
    let mut config = h.config.clone();
    config.push = None;
    config.http_listeners = vec!["127.0.0.1:0".parse().unwrap()];
    config.regions = h.backends.regions.clone();
    let served = crate::common::serve(&config, None).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(s3edge::admin::serve(
        admin,
        served.gateway.clone(),
        None,
        stopped,
    ));
    (served, stop)
}

/// GET through an edge: status, Cache-Status, body.
async fn get(edge: &Served, path: &str) -> (StatusCode, String, Bytes) {
    get_showing(edge.addr, path, "cache-status").await
}

/// GET `path` from `addr`: status, the value of `header` (empty when absent), body.
pub(crate) async fn get_showing(
    addr: std::net::SocketAddr,
    path: &str,
    header: &str,
) -> (StatusCode, String, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let url = format!("http://{addr}{path}");
    let response = within(client.get(url.parse().unwrap())).await.unwrap();
    let status = response.status();
    let value = response
        .headers()
        .get(header)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, value, body)
}

/// Warms an edge with every file of a recording: the second GET is a hit.
async fn warm(edge: &Served, account: &str, name: &str, files: &[(FileKind, Bytes)]) {
    for (kind, body) in files {
        let path = format!("/eu1/{account}/{name}{}", kind.suffix());
        let (status, _, got) = get(edge, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(&got, body, "{path}");
        let (status, cache, _) = get(edge, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(cache.contains("hit"), "{path}: {cache}");
    }
}

/// The four object keys of a recording in eu1's bucket, and the bucket.
fn keys(h: &PushHarness, account: &str, name: &str) -> (String, Vec<String>) {
    let eu1 = h.config.regions.iter().find(|r| r.name == "eu1").unwrap();
    let mut keys: Vec<String> = FileKind::ALL
        .iter()
        .map(|k| format!("{}{account}/{name}{}", eu1.key_prefix, k.suffix()))
        .collect();
    keys.sort();
    (eu1.bucket.clone(), keys)
}

pub(crate) async fn delete(h: &PushHarness, path: &str) -> (StatusCode, Value) {
    h.call(Method::DELETE, path, Bytes::new(), &[]).await
}

async fn metric(h: &PushHarness, line_start: &str) -> Option<f64> {
    let (code, text) = h.call(Method::GET, "/metrics", Bytes::new(), &[]).await;
    assert_eq!(code, StatusCode::OK);
    text.as_str()?
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_empties_the_bucket_and_both_warm_edges_at_once() {
    let (admin1, url1) = bind_admin().await;
    let (admin2, url2) = bind_admin().await;
    let edges = vec![edge(&url1), edge(&url2)];
    let h = PushHarness::start(move |c| c.push.as_mut().unwrap().edges = edges).await;
    let (e1, _s1) = start_edge(&h, admin1).await;
    let (e2, _s2) = start_edge(&h, admin2).await;
    h.put_env("del", json!({"account": "ACCD", "region": "eu1"}))
        .await;
    let files = recording(64 * 1024);
    for name in ["rec-1", "rec-2"] {
        h.push_recording("del", name, &files).await;
        h.wait_for("del", name, "pushed").await;
    }
    for e in [&e1, &e2] {
        warm(e, "ACCD", "rec-1", &files).await;
        warm(e, "ACCD", "rec-2", &files).await;
    }

    let (code, answer) = delete(&h, "/v1/recordings/del/rec-1").await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let (bucket, want) = keys(&h, "ACCD", "rec-1");
    let mut deleted: Vec<String> = answer["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    deleted.sort();
    assert_eq!(deleted, want);
    assert_eq!(
        answer["edges"],
        json!([
            {"admin": url1, "purged": true, "error": null},
            {"admin": url2, "purged": true, "error": null}
        ])
    );
    // Right after the answer: no edge serves a byte of it, from cache or otherwise.
    for e in [&e1, &e2] {
        for (kind, body) in &files {
            let path = format!("/eu1/ACCD/rec-1{}", kind.suffix());
            let (status, cache, got) = get(e, &path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {cache}");
            assert_ne!(&got, body);
        }
        // The other recording is untouched and still a hit.
        let (status, cache, _) = get(e, "/eu1/ACCD/rec-2.mp4").await;
        assert_eq!(status, StatusCode::OK);
        assert!(cache.contains("hit"), "{cache}");
    }
    let backend = h.backend("eu1");
    for key in &want {
        assert!(backend.object(&bucket, key).is_none(), "{key} still stored");
    }
    for key in keys(&h, "ACCD", "rec-2").1 {
        assert!(backend.object(&bucket, &key).is_some(), "{key} was deleted");
    }
    let (code, status) = h.status("del", "rec-1").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["state"], "deleted");
    assert_eq!(status["deleted_by"], "api");
    assert!(status["deleted_at"].is_string(), "{status}");
    assert_eq!(h.spool_files("del", "rec-1"), 0);

    // Again: 200, nothing left to remove, the edges purged again.
    let (code, again) = delete(&h, "/v1/recordings/del/rec-1").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(again["deleted"], json!([]));
    assert_eq!(again["edges"].as_array().unwrap().len(), 2);
    // A name this service never pushed: the keys follow from the URL scheme.
    let (code, ghost) = delete(&h, "/v1/recordings/del/never-pushed").await;
    assert_eq!(code, StatusCode::OK, "{ghost}");
    assert_eq!(ghost["deleted"], json!([]));
    // A deleted name is not committed again.
    assert_eq!(
        h.put_file("del", "rec-1.jpg", Bytes::from_static(b"x"))
            .await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        metric(&h, "s3edge_push_deletions_total{by=\"api\"}").await,
        Some(3.0)
    );
    for url in [&url1, &url2] {
        let line = format!("s3edge_push_edge_purges_pending{{admin=\"{url}\"}}");
        assert_eq!(metric(&h, &line).await, Some(0.0), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_down_during_a_delete_is_purged_when_it_comes_back() {
    let (admin, _) = bind_admin().await;
    // The push service reaches the edge's admin only through this proxy.
    let proxy = FaultProxy::start(admin.local_addr().unwrap());
    let url = format!("http://{}", proxy.addr);
    let edges = vec![edge(&url)];
    let h = PushHarness::start(move |c| c.push.as_mut().unwrap().edges = edges).await;
    let (e, _stop) = start_edge(&h, admin).await;
    h.put_env("down", json!({"account": "ACCE", "region": "eu1"}))
        .await;
    let files = recording(32 * 1024);
    h.push_recording("down", "rec-1", &files).await;
    h.wait_for("down", "rec-1", "pushed").await;
    warm(&e, "ACCE", "rec-1", &files).await;

    proxy.set(Fault::Reset);
    let (code, answer) = delete(&h, "/v1/recordings/down/rec-1").await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["deleted"].as_array().unwrap().len(), 4);
    let reported = &answer["edges"][0];
    assert_eq!(reported["admin"], url.as_str());
    assert_eq!(reported["purged"], false);
    assert!(
        reported["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{answer}"
    );
    let pending = format!("s3edge_push_edge_purges_pending{{admin=\"{url}\"}}");
    assert_eq!(metric(&h, &pending).await, Some(1.0));
    // Cut off from the push service, the edge still answers from its cache: the reason the
    // purge is queued.
    let (status, cache, _) = get(&e, "/eu1/ACCE/rec-1.jpg").await;
    assert_eq!(status, StatusCode::OK);
    assert!(cache.contains("hit"), "{cache}");

    proxy.set(Fault::Pass);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&h, &pending).await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued purge never reached the edge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (kind, _) in &files {
        let path = format!("/eu1/ACCE/rec-1{}", kind.suffix());
        let (status, cache, _) = get(&e, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {cache}");
    }
    assert!(
        metric(&h, "s3edge_push_edge_purges_total{outcome=\"failed\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );
}

#[tokio::test]
async fn the_lifecycle_deletes_only_recordings_older_than_n_days() {
    let h = PushHarness::start(|c| {
        c.push.as_mut().unwrap().day_length = Some(Duration::from_secs(1));
    })
    .await;
    h.put_env(
        "short",
        json!({"account": "ACCS", "region": "eu1", "delete_after_days": 2}),
    )
    .await;
    h.put_env("other", json!({"account": "ACCO", "region": "eu1"}))
        .await;
    h.put_env(
        "long",
        json!({"account": "ACCL", "region": "eu1", "delete_after_days": 30}),
    )
    .await;
    let files = recording(16 * 1024);
    for (env, name) in [("short", "old-1"), ("other", "old-2"), ("long", "old-3")] {
        h.push_recording(env, name, &files).await;
        h.wait_for(env, name, "pushed").await;
    }
    // Two "days" and a bit later, a young recording.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    h.push_recording("short", "young", &files).await;
    h.wait_for("short", "young", "pushed").await;

    let sweep = || h.call(Method::POST, "/v1/lifecycle/sweep", Bytes::new(), &[]);
    let (code, swept) = sweep().await;
    assert_eq!(code, StatusCode::OK, "{swept}");
    assert_eq!(
        swept,
        json!({"deleted": [{"env": "short", "name": "old-1"}]})
    );
    let (_, old) = h.status("short", "old-1").await;
    assert_eq!(old["state"], "deleted");
    assert_eq!(old["deleted_by"], "lifecycle");
    for (env, name) in [("short", "young"), ("other", "old-2"), ("long", "old-3")] {
        assert_eq!(
            h.status(env, name).await.1["state"],
            "pushed",
            "{env}/{name}"
        );
    }
    let backend = h.backend("eu1");
    let (bucket, gone) = keys(&h, "ACCS", "old-1");
    for key in gone {
        assert!(backend.object(&bucket, &key).is_none(), "{key}");
    }
    for key in keys(&h, "ACCS", "young").1 {
        assert!(backend.object(&bucket, &key).is_some(), "{key}");
    }

    // A day setting added later applies to existing recordings at the next sweep.
    h.put_env(
        "other",
        json!({"account": "ACCO", "region": "eu1", "delete_after_days": 1}),
    )
    .await;
    let (code, swept) = sweep().await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        swept,
        json!({"deleted": [{"env": "other", "name": "old-2"}]})
    );
    // Nothing more is old enough.
    assert_eq!(sweep().await.1, json!({"deleted": []}));
    assert_eq!(
        metric(&h, "s3edge_push_deletions_total{by=\"lifecycle\"}").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn bad_deletes_are_clear_4xx_and_delete_nothing() {
    const TOKEN: &str = "delete-token-0123456789";
    let h = PushHarness::start(|c| c.push.as_mut().unwrap().token = Some(TOKEN.into())).await;
    let auth = format!("Bearer {TOKEN}");
    let with = [("authorization", auth.as_str())];
    let (code, _) = h
        .call(
            Method::PUT,
            "/v1/environments/bad",
            json!({"account": "ACCB", "region": "eu1"}).to_string(),
            &with,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let files = recording(8 * 1024);
    for (kind, body) in &files {
        let (code, _) = h
            .call(
                Method::PUT,
                &format!("/v1/recordings/bad/rec-1{}", kind.suffix()),
                body.clone(),
                &with,
            )
            .await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let (code, _) = h
        .call(
            Method::POST,
            "/v1/recordings/bad/rec-1/commit",
            Bytes::new(),
            &with,
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, s) = h
            .call(Method::GET, "/v1/recordings/bad/rec-1", Bytes::new(), &with)
            .await;
        if s["state"] == "pushed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Method, path, headers, status, error word.
    type Case<'a> = (
        Method,
        &'a str,
        &'a [(&'a str, &'a str)],
        StatusCode,
        &'a str,
    );
    let cases: &[Case] = &[
        (
            Method::DELETE,
            "/v1/recordings/bad/rec-1",
            &[],
            StatusCode::UNAUTHORIZED,
            "",
        ),
        (
            Method::DELETE,
            "/v1/recordings/bad/rec-1",
            &[("authorization", "Bearer wrong-token-0123456789")],
            StatusCode::UNAUTHORIZED,
            "",
        ),
        (
            Method::DELETE,
            "/v1/recordings/nope/rec-1",
            &with,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/recordings/bad/rec.1",
            &with,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/recordings/bad/rec%201",
            &with,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/environments/bad/recordings",
            &with,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/environments/bad/recordings?before=2026-13-01",
            &with,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/environments/bad/recordings?before=yesterday",
            &with,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/environments/bad/recordings?before=2026-01-01T00:00:00",
            &with,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/environments/bad/recordings?before=2126-01-01&after=1",
            &with,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/environments/nope/recordings?before=2126-01-01",
            &with,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/environments/bad/recordings?before=2126-01-01",
            &[],
            StatusCode::UNAUTHORIZED,
            "",
        ),
        (
            Method::GET,
            "/v1/jobs/0123456789abcdef",
            &with,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/lifecycle/sweep",
            &[],
            StatusCode::UNAUTHORIZED,
            "",
        ),
        (
            Method::GET,
            "/v1/lifecycle/sweep",
            &with,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, headers, want, error) in cases {
        let (code, body) = h.call(method.clone(), path, Bytes::new(), headers).await;
        assert_eq!(code, *want, "{method} {path}: {body}");
        if !error.is_empty() {
            assert_eq!(body["error"], *error, "{method} {path}: {body}");
            assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
    }
    // Nothing was deleted: the recording is still pushed and in the bucket.
    let (_, s) = h
        .call(Method::GET, "/v1/recordings/bad/rec-1", Bytes::new(), &with)
        .await;
    assert_eq!(s["state"], "pushed");
    let (bucket, keys) = keys(&h, "ACCB", "rec-1");
    for key in keys {
        assert!(h.backend("eu1").object(&bucket, &key).is_some(), "{key}");
    }
    let touched = h.backend("eu1").keys_requested();
    assert!(
        touched
            .iter()
            .all(|k| !k.operation.starts_with("Delete") && k.operation != "ListObjectsV2"),
        "{touched:?}"
    );
}
