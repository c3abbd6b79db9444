//! Bulk deletion as the `s3edge` binary: a job over 2,000 recordings, `kill -9` while a batch
//! waits for the bucket, restarted on the same spool: the job resumes and completes, every
//! recording before the date is gone, the ones after it and other environments stay, and no
//! request named a key outside the environment's account prefix.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use s3edge::config::Config;
use s3edge::push::client::PushClient;
use serde_json::Value;

use crate::common::faults::{Fault, FaultProxy};
use crate::common::within;
use crate::push::{backends_with_buckets, test_push_config};
use crate::push_process::spawn;

const RECORDINGS: usize = 2000;
const LATER: usize = 10;

async fn json(client: &PushClient, method: Method, path: &str) -> (StatusCode, Value) {
    let reply = within(client.call(method, path, Bytes::new()))
        .await
        .unwrap();
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, value)
}

/// One small file per recording, committed; `n` recordings of `env`, 16 at a time.
async fn commit_many(client: &PushClient, env: &str, names: impl Iterator<Item = String>) {
    futures_util::stream::iter(names)
        .for_each_concurrent(16, |name| async move {
            let body = Bytes::from(format!("snapshot of {name}"));
            let path = format!("/v1/recordings/{env}/{name}.jpg");
            let reply = within(client.call(Method::PUT, &path, body)).await.unwrap();
            assert_eq!(reply.status, StatusCode::CREATED, "{name}");
            let path = format!("/v1/recordings/{env}/{name}/commit");
            let reply = within(client.call(Method::POST, &path, Bytes::new()))
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{name}");
        })
        .await;
}

async fn count(client: &PushClient, env: &str, state: &str) -> usize {
    let (_, v) = json(
        client,
        Method::GET,
        &format!("/v1/recordings?env={env}&state={state}&limit=10000"),
    )
    .await;
    v["recordings"].as_array().map_or(0, Vec::len)
}

async fn wait_pushed(client: &PushClient, env: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(client, env, "pushed").await < n {
        assert!(Instant::now() < deadline, "{env}: not all pushed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Multi-threaded: the fault proxy keeps serving while the test waits for log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_deletion_survives_kill_9_and_stays_inside_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends_with_buckets(dir.path()).await;
    let mut config = Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
    let eu1_addr = crate::common::endpoint_addr(&config.regions[0]);
    let proxy = FaultProxy::start(eu1_addr);
    config.regions[0].endpoint = proxy.endpoint();
    let mut push = test_push_config(dir.path().join("spool"));
    push.concurrency = 16;
    config.push = Some(push);
    let path = dir.path().join("s3edge.toml");
    std::fs::write(&path, s3edge_testbed::render_toml(&config)).unwrap();

    let (mut child, api) = spawn(&path);
    let client = PushClient::new(&format!("http://{api}"), None);
    for (env, account) in [("bulk", "BULK"), ("keep", "KEEP")] {
        let body = serde_json::json!({"account": account, "region": "eu1"}).to_string();
        let reply =
            within(client.call(Method::PUT, &format!("/v1/environments/{env}"), body.into()))
                .await
                .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    let started = Instant::now();
    commit_many(&client, "bulk", (0..RECORDINGS).map(|i| format!("old-{i}"))).await;
    commit_many(&client, "keep", (0..LATER).map(|i| format!("other-{i}"))).await;
    wait_pushed(&client, "bulk", RECORDINGS).await;
    let before = chrono::Utc::now() + chrono::Duration::milliseconds(200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    commit_many(&client, "bulk", (0..LATER).map(|i| format!("late-{i}"))).await;
    wait_pushed(&client, "bulk", RECORDINGS + LATER).await;
    wait_pushed(&client, "keep", LATER).await;
    eprintln!(
        "{} recordings committed and pushed in {:.1} s",
        RECORDINGS + 2 * LATER,
        started.elapsed().as_secs_f64()
    );

    // The bucket stops answering: the first batch is tombstoned and waits for DeleteObjects.
    proxy.set(Fault::Hang);
    let before = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (code, job) = json(
        &client,
        Method::DELETE,
        &format!(
            "/v1/environments/bulk/recordings?before={}",
            before.replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    let location = job["job"].as_str().unwrap().to_string();
    assert!(location.starts_with("/v1/jobs/"), "{job}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let at_kill = loop {
        let (_, progress) = json(&client, Method::GET, &location).await;
        if progress["deleted"].as_i64().unwrap_or(0) > 0 {
            break progress;
        }
        assert!(Instant::now() < deadline, "{progress}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(at_kill["state"], "running", "{at_kill}");
    assert_eq!(at_kill["total"], RECORDINGS, "{at_kill}");
    assert!(
        at_kill["deleted"].as_i64().unwrap() < RECORDINGS as i64,
        "{at_kill}"
    );
    // std's kill is SIGKILL: no shutdown path runs.
    child.kill().unwrap();
    let _ = child.wait();

    proxy.set(Fault::Pass);
    let (_child, api) = spawn(&path);
    let client = PushClient::new(&format!("http://{api}"), None);
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let (code, progress) = json(&client, Method::GET, &location).await;
        assert_eq!(code, StatusCode::OK);
        if progress["state"] == "done" {
            break progress;
        }
        assert!(Instant::now() < deadline, "{progress}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["deleted"], RECORDINGS, "{done}");
    assert!(done["finished_at"].is_string());
    eprintln!("job at the kill: {at_kill}; after the restart: {done}");

    assert_eq!(count(&client, "bulk", "deleted").await, RECORDINGS);
    assert_eq!(count(&client, "bulk", "pushed").await, LATER);
    assert_eq!(count(&client, "keep", "pushed").await, LATER);
    let eu1 = &backends.backends[0];
    for i in 0..RECORDINGS {
        let key = format!("BULK/old-{i}.jpg");
        assert!(eu1.object("eu1-addpipe", &key).is_none(), "{key}");
    }
    for i in 0..LATER {
        for key in [format!("BULK/late-{i}.jpg"), format!("KEEP/other-{i}.jpg")] {
            assert!(eu1.object("eu1-addpipe", &key).is_some(), "{key}");
        }
    }
    // The backend's own log of the keys requests named: deletions and listings stayed in
    // the account's prefix and never named a recording after the date.
    let touched = eu1.keys_requested();
    let deletes: Vec<_> = touched
        .iter()
        .filter(|k| k.operation.starts_with("Delete") || k.operation == "ListObjectsV2")
        .collect();
    assert!(deletes.len() >= RECORDINGS * 4, "{} keys", deletes.len());
    for k in &deletes {
        assert!(k.key.starts_with("BULK/old-"), "{} {}", k.operation, k.key);
    }
}
