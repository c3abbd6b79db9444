//! Stream-through throughput and added latency, gateway vs the direct backend, release build.
//!
//! `cargo bench --bench passthrough` starts four demo S3 backends in this process, uploads a
//! 30 KB snapshot and a 50 MB recording, runs `target/release/s3edge serve` in front of them as
//! its own process, and measures with external clients on loopback:
//! - added latency: `wrk -t1 -c1` (one request at a time) for the 30 KB object, p50/p99,
//!   gateway vs the backend reached through a presigned URL;
//! - throughput: `curl` downloading the 50 MB object (median of 7), gateway vs direct.
//!
//! Both paths hit the same backend, which verifies a SigV4 signature either way (header
//! signature from the gateway, query signature of the presigned URL). Every run is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use support::presign;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use s3edge::config::Config;
use s3edge_testbed::{self as demo, Backends};

const SMALL: usize = 30 * 1024;
const LARGE: usize = 50 * 1024 * 1024;

/// wrk's latency percentiles (ms) and requests/s for one connection, 5 s.
fn wrk_latency(url: &str) -> (f64, f64, f64) {
    let out = Command::new("timeout")
        .args(["30", "wrk", "-t1", "-c1", "-d5s", "--latency", url])
        .output()
        .expect("wrk is needed: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let pick = |label: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or("");
        parse_ms(line.split_whitespace().nth(1).unwrap_or("0"))
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(text.contains("requests in"), "wrk failed: {text}");
    assert!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    (pick("50%"), pick("99%"), rps)
}

fn parse_ms(v: &str) -> f64 {
    if let Some(us) = v.strip_suffix("us") {
        us.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().unwrap_or(0.0)
    } else if let Some(s) = v.strip_suffix('s') {
        s.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

/// Median download speed in MB/s over `runs` curl downloads.
fn curl_throughput(url: &str, expected: usize, runs: usize) -> f64 {
    let mut speeds: Vec<f64> = (0..runs)
        .map(|_| {
            let (status, size, seconds) = support::curl_download(None, url);
            assert_eq!((status, size), (200, expected), "{url}");
            size as f64 / seconds.max(1e-9) / 1e6
        })
        .collect();
    speeds.sort_by(f64::total_cmp);
    speeds[runs / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run only on bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backends = runtime.block_on(Backends::start(dir.path())).unwrap();
    let mut config = Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
    // The pass-through path (issue 2's figures); `peers` measures the cache.
    config.cache.enabled = false;
    let small_key = format!("{}/bench-small.jpg", demo::SAMPLE_ACCOUNT);
    let large_key = format!("{}/bench-large.mp4", demo::SAMPLE_ACCOUNT);
    runtime.block_on(async {
        demo::upload_sample(&config.regions).await.unwrap();
        let upstream = demo::writer(&config.regions[0]);
        let small: Bytes = support::pattern(SMALL, 251);
        let large: Bytes = support::pattern(LARGE, 241);
        upstream
            .put_object(&small_key, small, http::HeaderMap::new())
            .await
            .unwrap();
        upstream
            .put_object(&large_key, large, http::HeaderMap::new())
            .await
            .unwrap();
    });

    // The gateway as its own process, on a port we pick by binding here and handing over.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.http_listeners = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, demo::render_toml(&config)).unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_s3edge"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/eu1");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let region = &config.regions[0];
    let small_direct = presign(region, &small_key);
    let large_direct = presign(region, &large_key);
    let small_gateway =
        format!("{base}/{}", small_key.split_once('/').unwrap().0) + "/bench-small.jpg";
    let large_gateway =
        format!("{base}/{}", large_key.split_once('/').unwrap().0) + "/bench-large.mp4";

    println!(
        "machine: {} cores; release build; loopback; backend = s3s-fs (in this process)",
        num_cpus()
    );
    let (d50, d99, drps) = wrk_latency(&small_direct);
    let (g50, g99, grps) = wrk_latency(&small_gateway);
    println!("30 KB object, wrk -t1 -c1 -d5s:");
    println!("  direct   p50 {d50:.3} ms  p99 {d99:.3} ms  {drps:.0} req/s");
    println!("  gateway  p50 {g50:.3} ms  p99 {g99:.3} ms  {grps:.0} req/s");
    println!(
        "  added latency p50 {:.3} ms, p99 {:.3} ms",
        g50 - d50,
        g99 - d99
    );
    let direct = curl_throughput(&large_direct, LARGE, 7);
    let through = curl_throughput(&large_gateway, LARGE, 7);
    println!("50 MB object, curl, median of 7:");
    println!("  direct   {direct:.0} MB/s");
    println!(
        "  gateway  {through:.0} MB/s  ({:.2} x direct)",
        through / direct
    );
    let _ = gateway.kill();
    let _ = gateway.wait();
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
