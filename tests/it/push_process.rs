//! The push service as the `s3edge` binary. `kill -9` in the middle of pushing many
//! recordings (some multipart), restarted on the same spool: every committed recording ends
//! `pushed`, byte-exact in the bucket, the spool holds none of them, and no multipart upload
//! is left open. And the operator's CLI and metrics against the running process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use s3edge::config::Config;
use s3edge::push::client::PushClient;
use s3edge::route::FileKind;
use serde_json::Value;

use crate::common::faults::{Fault, FaultProxy};
use crate::common::process::{Spawned, spawn_gateway_with_log, wait_for_log};
use crate::common::within;
use crate::push::{backends_with_buckets, pattern, test_push_config};

const RECORDINGS: usize = 24;
/// Every fourth recording has a raw file of three multipart parts.
const LARGE_RAW: usize = 11 * 1024 * 1024;

fn files_of(i: usize) -> Vec<(FileKind, Bytes)> {
    let seed = u8::try_from(i % 250).unwrap();
    let raw = if i.is_multiple_of(4) {
        LARGE_RAW
    } else {
        200 * 1024
    };
    vec![
        (FileKind::Processed, pattern(400 * 1024, seed)),
        (FileKind::Snapshot, pattern(30 * 1024, seed.wrapping_add(1))),
        (
            FileKind::Filmstrip,
            pattern(80 * 1024, seed.wrapping_add(2)),
        ),
        (FileKind::Raw, pattern(raw, seed.wrapping_add(3))),
    ]
}

/// Starts `s3edge serve` and reads the push API's address from its log.
pub(crate) fn spawn(config: &std::path::Path) -> (Spawned, SocketAddr) {
    let (child, _gateway, log) = spawn_gateway_with_log(config);
    let line = wait_for_log(&log, "push API listening");
    let start = line.find("\"addr\":\"").unwrap() + 8;
    let addr = line[start..].split('"').next().unwrap().parse().unwrap();
    (child, addr)
}

/// Uploads and commits recording `i`; `false` when the service stopped answering.
async fn upload(client: &PushClient, dir: &std::path::Path, i: usize) -> bool {
    let name = format!("rec-{i}");
    for (kind, body) in files_of(i) {
        let file = dir.join(format!("{name}{}", kind.suffix()));
        std::fs::write(&file, &body).unwrap();
        match within(client.put_file("crash", &file, None)).await {
            // Committed just before a kill whose answer never arrived: the files are fixed,
            // and committing again answers the state.
            Ok(reply) if reply.status == http::StatusCode::CONFLICT => break,
            Ok(reply) => assert_eq!(reply.status, http::StatusCode::CREATED, "{name}"),
            Err(_) => return false,
        }
    }
    match within(client.call(
        Method::POST,
        &format!("/v1/recordings/crash/{name}/commit"),
        Bytes::new(),
    ))
    .await
    {
        Ok(reply) => {
            assert_eq!(reply.status, http::StatusCode::ACCEPTED);
            true
        }
        Err(_) => false,
    }
}

async fn state(client: &PushClient, name: &str) -> String {
    let reply = within(client.call(
        Method::GET,
        &format!("/v1/recordings/crash/{name}"),
        Bytes::new(),
    ))
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    v["state"].as_str().unwrap_or("-").to_string()
}

// Multi-threaded: the fault proxy keeps serving while the test waits for log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_push_loses_nothing_and_leaves_no_multipart_upload() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends_with_buckets(dir.path()).await;
    let mut config = Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
    // A slow bucket (every answer trickles), so pushes are still running when the process dies.
    let eu1_addr = crate::common::endpoint_addr(&config.regions[0]);
    let proxy = FaultProxy::start(eu1_addr);
    proxy.set(Fault::Trickle {
        bytes: 128,
        every: Duration::from_millis(20),
    });
    config.regions[0].endpoint = proxy.endpoint();
    // The gateway listener is there only so the process logs "listening" like every run.
    let mut push = test_push_config(dir.path().join("spool"));
    push.concurrency = 4;
    config.push = Some(push);
    let path = dir.path().join("s3edge.toml");
    std::fs::write(&path, s3edge_testbed::render_toml(&config)).unwrap();

    let (mut child, api) = spawn(&path);
    let client = PushClient::new(&format!("http://{api}"), None);
    let env = serde_json::json!({"account": "CRASH", "region": "eu1"}).to_string();
    let reply = within(client.call(Method::PUT, "/v1/environments/crash", env.into()))
        .await
        .unwrap();
    assert!(reply.status.is_success());
    let upload_dir = tempfile::tempdir().unwrap();
    // Once half the recordings are committed, the first multipart upload seen open in the
    // bucket triggers `kill -9`.
    let armed = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let open_at_kill = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (armed, killed, open_at_kill) = (armed.clone(), killed.clone(), open_at_kill.clone());
        let uploads = backends.backends[0].open_multipart_uploads_probe();
        let pid = child.id();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let open = uploads();
                if armed.load(Ordering::SeqCst) && open > 0 {
                    open_at_kill.store(open, Ordering::SeqCst);
                    killed.store(true, Ordering::SeqCst);
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut committed = 0;
    for i in 0..RECORDINGS {
        if killed.load(Ordering::SeqCst) || !upload(&client, upload_dir.path(), i).await {
            break;
        }
        committed = i + 1;
        if i + 1 == RECORDINGS / 2 {
            armed.store(true, Ordering::SeqCst);
        }
    }
    within(watcher).await.unwrap();
    assert!(
        killed.load(Ordering::SeqCst),
        "no multipart upload was seen open"
    );
    let _ = child.wait();
    drop(child);
    let unfinished = (0..committed)
        .filter(|i| {
            std::fs::read_dir(
                dir.path()
                    .join("spool/files/crash")
                    .join(format!("rec-{i}")),
            )
            .is_ok()
        })
        .count();
    proxy.set(Fault::Pass);

    let (_child, api) = spawn(&path);
    let eu1 = &backends.backends[0];
    let client = PushClient::new(&format!("http://{api}"), None);
    // What was not acknowledged before the kill is handed over again.
    for i in committed..RECORDINGS {
        assert!(
            upload(&client, upload_dir.path(), i).await,
            "rec-{i} after the restart"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..RECORDINGS {
        let name = format!("rec-{i}");
        loop {
            let s = state(&client, &name).await;
            if s == "pushed" {
                break;
            }
            assert!(Instant::now() < deadline, "{name} is {s}, not pushed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (kind, body) in files_of(i) {
            let key = format!("CRASH/{name}{}", kind.suffix());
            let stored = eu1
                .object("eu1-addpipe", &key)
                .expect("object in the bucket");
            assert!(stored == body, "{key}: bytes differ");
        }
    }
    // The spool lets go of pushed recordings; the bucket has no open multipart upload.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = std::fs::read_dir(dir.path().join("spool/files/crash"))
            .map(|d| d.count())
            .unwrap_or(0);
        let open = eu1.open_multipart_uploads();
        if left == 0 && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} recordings still spooled, {open} multipart uploads open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "at the kill: {} multipart uploads open, {unfinished} of {committed} committed recordings not yet pushed",
        open_at_kill.load(Ordering::SeqCst)
    );
}

/// The operator's tools against a running process: `s3edge push put|commit|status|retry`,
/// `s3edge urls`, and the `s3edge_push_` series on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_metrics_of_a_running_push_service() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends_with_buckets(dir.path()).await;
    let mut config = Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
    let mut push = test_push_config(dir.path().join("spool"));
    push.token = Some("cli-token-0123456789".into());
    config.push = Some(push);
    let path = dir.path().join("s3edge.toml");
    std::fs::write(&path, s3edge_testbed::render_toml(&config)).unwrap();
    let (_child, api) = spawn(&path);
    let url = format!("http://{api}");
    let client = PushClient::new(&url, Some("cli-token-0123456789".into()));
    let env = serde_json::json!({"account": "CLI", "region": "us2"}).to_string();
    let reply = within(client.call(Method::PUT, "/v1/environments/cli", env.into()))
        .await
        .unwrap();
    assert!(reply.status.is_success());
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut paths = Vec::new();
    for (kind, body) in files_of(1) {
        let p = files.join(format!("take-1{}", kind.suffix()));
        std::fs::write(&p, &body).unwrap();
        paths.push(p);
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(crate::common::process::BIN)
            .arg("push")
            .args(["--url", &url])
            .args(args)
            .env("S3EDGE_PUSH_TOKEN", "cli-token-0123456789")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Files named take-1*, uploaded as recording "rec-cli".
    let mut put = vec!["put", "--env", "cli", "--name", "rec-cli"];
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    put.extend(names.iter().map(String::as_str));
    let (ok, out, err) = cli(&put);
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains("\"file\":\"rec-cli_raw.mp4\""), "{out}");
    let (ok, out, err) = cli(&["commit", "--env", "cli", "--name", "rec-cli"]);
    assert!(ok, "{out}{err}");
    // `status` until the recording is pushed (30 s at most).
    let pushed = |name: &str| {
        let (ok, out, _) = cli(&["status", "--env", "cli", "--name", name]);
        assert!(ok, "{out}");
        out.contains("\"state\":\"pushed\"")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pushed("rec-cli") {
        assert!(Instant::now() < deadline, "rec-cli never pushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A retry of a pushed recording is refused, with the API's error and a failing exit.
    let (ok, out, err) = cli(&["retry", "--env", "cli", "--name", "rec-cli"]);
    assert!(!ok);
    assert!(out.contains("\"error\":\"conflict\""), "{out}");
    assert!(err.contains("409"), "{err}");
    // A wrong token changes nothing.
    let out = std::process::Command::new(crate::common::process::BIN)
        .args([
            "push",
            "--url",
            &url,
            "--token",
            "wrong-token-0123456789",
            "commit",
            "--env",
            "cli",
            "--name",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unauthorized"));

    // `s3edge urls` with the config: its hosts and edge URLs.
    let out = std::process::Command::new(crate::common::process::BIN)
        .args(["urls", "--config"])
        .arg(&path)
        .args(["--region", "us2", "--account", "CLI", "--name", "rec-cli"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let urls: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        urls["origin"]["_filmstrip.jpg"],
        "https://us2-addpipe.s3.us-east-1.amazonaws.com/CLI/rec-cli_filmstrip.jpg"
    );
    assert_eq!(
        urls["edge"][".mp4"],
        "https://edge.test/us2/CLI/rec-cli.mp4"
    );

    // Metrics: recordings by state, attempts, bytes, spool.
    let reply = within(client.call(Method::GET, "/metrics", Bytes::new()))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&reply.body);
    for needle in [
        "s3edge_push_recordings{state=\"pushed\"} 1",
        "s3edge_push_attempts_total{destination=\"complimentary\"} 1",
        "s3edge_push_upload_duration_seconds_count 4",
        "s3edge_push_spool_bytes",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let total: u64 = files_of(1).iter().map(|(_, b)| b.len() as u64).sum();
    assert!(
        text.contains(&format!(
            "s3edge_push_bytes_total{{destination=\"complimentary\"}} {total}"
        )),
        "{text}"
    );

    // `put --commit`: the files, then the commit, in one call.
    let mut put = vec!["put", "--env", "cli", "--name", "rec-cli2", "--commit"];
    put.extend(names.iter().map(String::as_str));
    let (ok, out, err) = cli(&put);
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    let committed: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(committed["name"], "rec-cli2", "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pushed("rec-cli2") {
        assert!(Instant::now() < deadline, "rec-cli2 never pushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A file of a name of none of the four kinds fails the call before anything is sent.
    let small = dir.path().join("rec-cli3.jpg");
    let bad = dir.path().join("rec-cli3.txt");
    std::fs::write(&small, b"jpeg").unwrap();
    std::fs::write(&bad, b"text").unwrap();
    let (small, bad) = (small.display().to_string(), bad.display().to_string());
    let (ok, out, err) = cli(&["put", "--env", "cli", "--commit", &small, &bad]);
    assert!(!ok);
    assert_eq!(out, "", "something was sent");
    assert!(
        err.contains("rec-cli3.txt: a file is named {NAME}.mp4"),
        "{err}"
    );
    let reply = within(client.call(Method::GET, "/v1/recordings/cli/rec-cli3", Bytes::new()))
        .await
        .unwrap();
    assert_eq!(reply.status, http::StatusCode::NOT_FOUND);
    // Two recordings in one call: one of rec-cli2's files comes after its commit (409), so
    // rec-cli2 is not committed again; rec-cli3's file is accepted and rec-cli3 committed.
    let again = dir.path().join("rec-cli2.jpg");
    std::fs::write(&again, b"late").unwrap();
    let again = again.display().to_string();
    let (ok, out, _) = cli(&[
        "put",
        "--env",
        "cli",
        "--commit",
        "--parallel",
        "2",
        &small,
        &again,
    ]);
    assert!(!ok, "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l["error"] == "conflict").count(),
        1,
        "{out}"
    );
    let commits: Vec<&Value> = lines.iter().filter(|l| l.get("state").is_some()).collect();
    assert_eq!(commits.len(), 1, "{out}");
    assert_eq!(commits[0]["name"], "rec-cli3", "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pushed("rec-cli3") {
        assert!(Instant::now() < deadline, "rec-cli3 never pushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A file that reads as other bytes than its size promised (it changed while it was sent;
    // here a file of size 0 that reads as text): the service's answer shows it, the call
    // fails and the recording is not committed.
    let changing = dir.path().join("rec-cli4.jpg");
    std::os::unix::fs::symlink("/proc/self/status", &changing).unwrap();
    let changing = changing.display().to_string();
    let (ok, out, err) = cli(&["put", "--env", "cli", "--commit", &changing]);
    assert!(!ok, "{out}");
    assert_eq!(out, "", "{out}");
    // The request took the 0 bytes it announced: the rest of what the file read as is
    // either still being read (then it is longer than its size) or read (then its CRC32C
    // differs from that of 0 bytes); both say so.
    assert!(err.contains("rec-cli4.jpg: "), "{err}");
    assert!(err.contains("but the service kept 0 bytes"), "{err}");
    assert!(err.contains("changed while it was sent"), "{err}");
    let reply = within(client.call(Method::GET, "/v1/recordings/cli/rec-cli4", Bytes::new()))
        .await
        .unwrap();
    // Not committed: the API does not show it yet.
    assert_eq!(reply.status, http::StatusCode::NOT_FOUND);
}
