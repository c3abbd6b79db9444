//! s3edge against nginx `proxy_cache`, nginx `proxy_cache` + `slice 1m` and Varnish (malloc),
//! release build, one run.
//!
//! `cargo bench --bench peers` (needs `wrk`, `h2load`, `nginx`, `varnishd`, `curl`, `taskset`). Each server
//! is pinned to core 0, the load generator to core 1. The origin is one s3s-fs backend in this
//! process, on its own thread and runtime: on core 1 with the clients by default, or with
//! `S3EDGE_PEERS_ORIGIN_CORE=0` on the servers' core (a real edge pays for every byte it moves
//! on the cores it has; this layout shows it). s3edge signs its requests; nginx and Varnish
//! read the same objects anonymously (the bucket is public-read for this run), since they
//! cannot sign SigV4. `S3EDGE_PEERS_BIN=PATH` runs another s3edge binary (a before/after pair);
//! `S3EDGE_PEERS_PREFAULT=1` turns on `cache.prefault` and measures once it has finished.
//!
//! - P1 cache hit, 30 KB snapshot, 16 and 64 connections: req/s and server CPU per request
//!   (`/proc/PID/stat`).
//! - P2 cache hit, random 1 MiB ranges of a 50 MB mp4: MB/s.
//! - P3 miss path: p50 and p99 of 30 KB misses (each request a new object), and cold
//!   stream-through of 50 MB objects: MB/s against the direct backend, and server CPU per MB.
//! - P4 a lone cold 2 MB GET, and 200 concurrent cold requests for one 2 MB object (h2load,
//!   200 connections): upstream requests and p99.
//! - P5 RSS of s3edge after 4 × capacity of distinct objects passed through, cold
//!   stream-through once the cache is full (a real edge's steady state), RSS after a purge;
//!   RSS after 2 × capacity of distinct 30 KB snapshots (many entries: what each costs
//!   beyond its bytes shows).
//!
//! Only loopback addresses are used; every run is bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

#[path = "support/mod.rs"]
mod support;

use support::{free_port, wait_port};

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use s3edge::config::Config;
use s3edge_testbed::{self as demo, Backends};

const SNAPSHOT: usize = 30 * 1024;
const VIDEO: usize = 50 * 1024 * 1024;
const POPULAR: usize = 2 * 1024 * 1024;
const MISSES: usize = 300;
/// Cold 50 MB objects streamed through each server.
const COLD: usize = 5;
/// P5's 30 KB snapshots: 2 × its 128 MiB cache.
const SMALL_OBJECTS: usize = 2 * 128 * 1024 * 1024 / SNAPSHOT;
const LOAD_SECS: u32 = 8;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for tool in ["wrk", "h2load", "nginx", "varnishd", "curl", "taskset"] {
        if Command::new("which")
            .arg(tool)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!(
                "peers: `{tool}` is needed (apt-get install wrk nghttp2-client nginx-light varnish curl util-linux)"
            );
            std::process::exit(2);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // The origin and the clients live on core 1; servers get core 0.
    pin_self(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(cores));
}

/// The core of the origin: `S3EDGE_PEERS_ORIGIN_CORE` (1, the clients' core, by default).
fn origin_core() -> usize {
    std::env::var("S3EDGE_PEERS_ORIGIN_CORE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Starts the origin on a thread of its own pinned to `core` (its blocking threads inherit the
/// pinning); it serves until the process ends.
fn start_origin(root: PathBuf, core: usize) -> Backends {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let tid = std::fs::read_link("/proc/thread-self").unwrap();
        let tid = tid.file_name().unwrap().to_string_lossy().into_owned();
        let _ = Command::new("taskset")
            .args(["-p", "-c", &core.to_string(), &tid])
            .stdout(Stdio::null())
            .status();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            tx.send(Backends::start_with(&root, true).await.unwrap())
                .unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

fn pin_self(core: usize) {
    let pid = std::process::id().to_string();
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid])
        .stdout(Stdio::null())
        .status();
}

struct Server {
    name: &'static str,
    base: String,
    /// s3edge's admin listener.
    admin: Option<String>,
    child: Child,
    /// A folder outside the temporary directory to remove afterwards (nginx's tmpfs cache).
    scratch: Option<PathBuf>,
}

impl Server {
    fn pids(&self) -> Vec<u32> {
        descendants(self.child.id())
    }

    fn cpu_ticks(&self) -> u64 {
        self.pids().iter().map(|pid| cpu_of(*pid)).sum()
    }

    /// Minor page faults of all its processes (each one a page the kernel zeroed or mapped).
    fn minor_faults(&self) -> u64 {
        self.pids().iter().map(|pid| stat_fields(*pid)[7]).sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // TERM to the root lets nginx and varnishd stop their own children (killing the
        // children first makes a master respawn them); KILL whatever is left after that.
        let pids = self.pids();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in pids.into_iter().rev() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.wait();
        if let Some(cache) = &self.scratch {
            let _ = std::fs::remove_dir_all(cache);
        }
    }
}

fn descendants(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
                let ppid = after
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(parent) && !all.contains(&pid) {
                    all.push(pid);
                }
            }
        }
        i += 1;
    }
    all
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_of(pid: u32) -> u64 {
    let fields = stat_fields(pid);
    fields[11] + fields[12]
}

/// The numeric fields of `/proc/PID/stat` after the command name (0 is the state, 7
/// `minflt`, 11 `utime`, 12 `stime`); zeros if the process is gone.
fn stat_fields(pid: u32) -> [u64; 16] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut fields = [0u64; 16];
    for (field, value) in fields.iter_mut().zip(after.split_whitespace()) {
        *field = value.parse().unwrap_or(0);
    }
    fields
}

/// A `/proc/PID/status` memory line (`VmHWM:`, `VmRSS:`) in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn start_s3edge(dir: &Path, config: &Config, capacity: u64) -> Server {
    let port = free_port();
    let mut config = config.clone();
    config.http_listeners = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    config.cache.capacity = capacity;
    config.cache.ttl = Duration::from_secs(3600);
    config.cache.prefault = prefault();
    config.admin = Some(s3edge::config::AdminConfig {
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        token: None,
    });
    let path = dir.join(format!("s3edge-{port}.toml"));
    std::fs::write(&path, demo::render_toml(&config)).unwrap();
    let binary =
        std::env::var("S3EDGE_PEERS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_s3edge").into());
    let mut server = spawn_pinned(
        "s3edge",
        port,
        &binary,
        &["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        &[("RUST_LOG", "warn"), ("TOKIO_WORKER_THREADS", "1")],
    );
    if let Some(admin) = &config.admin {
        server.admin = Some(format!("http://{}", admin.listen));
    }
    if config.cache.prefault {
        wait_prefaulted(&server, capacity);
    }
    server
}

/// `S3EDGE_PEERS_PREFAULT=1`: s3edge runs with `cache.prefault` (measured once it is done).
fn prefault() -> bool {
    std::env::var("S3EDGE_PEERS_PREFAULT").is_ok_and(|v| v == "1")
}

/// Waits (at most a minute) until the prefault thread has filled the pool.
fn wait_prefaulted(server: &Server, capacity: u64) {
    let admin = server.admin.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = Command::new("curl")
            .args(["-s", &format!("{admin}/metrics")])
            .output()
            .unwrap();
        let held: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("s3edge_cache_pool_bytes "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if held + (1 << 20) > capacity {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("prefault did not finish within a minute");
}

/// nginx `proxy_cache` on a tmpfs cache, with `slice 1m` or without.
fn start_nginx(dir: &Path, origin: SocketAddr, slice: bool) -> Server {
    let port = free_port();
    let (name, slice_lines, key) = if slice {
        (
            "nginx-slice",
            "slice 1m;\n      proxy_set_header Range $slice_range;",
            "$uri$slice_range",
        )
    } else {
        ("nginx", "", "$uri")
    };
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cache = PathBuf::from(format!("/dev/shm/s3edge-bench-nginx-{port}"));
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).unwrap();
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  proxy_cache_path {cache} levels=1:2 keys_zone=edge:64m max_size=4g inactive=1h use_temp_path=off;
  upstream origin {{ server {origin}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /eu1/ {{
      rewrite ^/eu1/(.*)$ /eu1-addpipe/$1 break;
      {slice_lines}
      proxy_cache edge;
      proxy_cache_key {key};
      proxy_cache_valid 200 206 1h;
      proxy_cache_lock on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://origin;
    }}
  }}
}}
"#,
        dir = dir.display(),
        cache = cache.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut server = spawn_pinned(name, port, "nginx", &["-c".as_ref(), path.as_os_str()], &[]);
    server.scratch = Some(cache);
    server
}

fn start_varnish(dir: &Path, origin: SocketAddr) -> Server {
    let port = free_port();
    let vcl = format!(
        r#"vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{}"; }}
sub vcl_recv {{
  set req.url = regsub(req.url, "^/eu1/", "/eu1-addpipe/");
  unset req.http.Cookie;
}}
sub vcl_backend_response {{ set beresp.ttl = 1h; }}
"#,
        origin.port()
    );
    let path = dir.join("bench.vcl");
    std::fs::write(&path, vcl).unwrap();
    let workdir = dir.join("varnish");
    std::fs::create_dir_all(&workdir).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<&std::ffi::OsStr> = vec![
        "-F".as_ref(),
        "-a".as_ref(),
        listen.as_ref(),
        "-f".as_ref(),
        path.as_os_str(),
        "-s".as_ref(),
        "malloc,2g".as_ref(),
        "-n".as_ref(),
        workdir.as_os_str(),
        "-p".as_ref(),
        "thread_pools=1".as_ref(),
        "-p".as_ref(),
        "thread_pool_min=50".as_ref(),
    ];
    spawn_pinned("varnish", port, "varnishd", &args, &[])
}

/// Runs `program args…` on core 0 and waits until it listens on `port`.
fn spawn_pinned(
    name: &'static str,
    port: u16,
    program: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> Server {
    let mut command = Command::new("taskset");
    command.args(["-c", "0", program]).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Server {
        name,
        base: format!("http://127.0.0.1:{port}/eu1"),
        admin: None,
        child,
        scratch: None,
    }
}

struct Load {
    rps: f64,
    mb_per_s: f64,
    cpu_us_per_request: f64,
}

/// wrk on core 1 against `url` for LOAD_SECS; `lua` optional.
fn wrk(server: &Server, url: &str, connections: u32, lua: Option<&Path>) -> Load {
    let cpu_before = server.cpu_ticks();
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "taskset", "-c", "1", "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{LOAD_SECS}s"));
    if let Some(lua) = lua {
        cmd.arg("-s").arg(lua);
    }
    let out = cmd.arg(url).output().unwrap();
    let cpu_after = server.cpu_ticks();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("Non-2xx"), "{}: {text}", server.name);
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let field = |label: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0")
            .to_string()
    };
    let rps: f64 = field("Requests/sec").parse().unwrap_or(0.0);
    let transfer = field("Transfer/sec");
    let mb_per_s = parse_size(&transfer) / 1e6;
    let ticks = cpu_after.saturating_sub(cpu_before) as f64;
    let cpu_us_per_request = if requests > 0.0 {
        ticks * 10_000.0 / requests
    } else {
        0.0
    };
    Load {
        rps,
        mb_per_s,
        cpu_us_per_request,
    }
}

fn parse_size(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    n * match unit {
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn timed_get(client: &HttpClient, url: &str) -> (Duration, usize) {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), client.get(url.parse().unwrap()))
        .await
        .expect("request timed out")
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    // Counted, not kept: a client that gathers 200 bodies of 2 MB measures its own
    // allocations more than the server.
    let mut body = response.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len();
        }
    }
    (started.elapsed(), len)
}

/// `count` concurrent GETs of `url` by h2load (HTTP/1.1, one connection each, on core 1):
/// each request's time from its log, after checking every answer is a 200 of the whole
/// object.
fn collapsed_gets(dir: &Path, url: &str, count: usize) -> Vec<Duration> {
    let log = dir.join("h2load.log");
    // h2load appends to its log.
    let _ = std::fs::remove_file(&log);
    let out = Command::new("timeout")
        .args(["60", "taskset", "-c", "1", "h2load", "--h1"])
        .arg(format!("-n{count}"))
        .arg(format!("-c{count}"))
        .arg(format!("--log-file={}", log.display()))
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let data: usize = text
        .lines()
        .find(|l| l.starts_with("traffic:"))
        .and_then(|l| l.rsplit_once(") data"))
        .and_then(|(head, _)| head.rsplit_once('('))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(data, count * POPULAR, "h2load {url}: {text}");
    let times: Vec<Duration> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.get(1), Some(&"200"), "h2load {url}: {line}");
            Duration::from_micros(fields[2].parse().unwrap())
        })
        .collect();
    assert_eq!(times.len(), count, "h2load {url}");
    times
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let index = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[index.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether a part runs: `S3EDGE_PEERS=p1,p4` selects parts (default: all).
fn part(name: &str) -> bool {
    std::env::var("S3EDGE_PEERS").map_or(true, |v| v.split(',').any(|p| p.trim() == name))
}

/// With `S3EDGE_PEERS_PERF=DIR`, records a perf profile of the server during a load.
fn perf_start(server: &Server, label: &str) -> Option<Child> {
    let dir = std::env::var("S3EDGE_PEERS_PERF").ok()?;
    let pid = server.child.id().to_string();
    let out = format!("{dir}/perf-{}-{label}.data", server.name);
    Command::new("perf")
        .args(["record", "-g", "-o", &out, "-p", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn perf_stop(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

/// Server CPU (ms), speed (MB/s) and the server's minor page faults of one cold
/// stream-through by curl on core 1.
fn cold_transfer(server: Option<&Server>, url: &str) -> (f64, f64, u64) {
    let before = server.map_or(0, Server::cpu_ticks);
    let faults = server.map_or(0, Server::minor_faults);
    let (status, size, secs) = support::curl_download(Some(1), url);
    let cpu_ms = server.map_or(0, Server::cpu_ticks).saturating_sub(before) as f64 * 10.0;
    let faults = server
        .map_or(0, Server::minor_faults)
        .saturating_sub(faults);
    assert_eq!((status, size), (200, VIDEO), "{url}");
    (cpu_ms, size as f64 / secs.max(1e-9) / 1e6, faults)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn goal(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

async fn run(cores: usize) {
    let dir = tempfile::tempdir().unwrap();
    let origin_core = origin_core();
    let backends = start_origin(dir.path().to_path_buf(), origin_core);
    let origin = backends.backends[0].addr;
    let mut config = Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
    config.shutdown_grace = Duration::from_secs(1);
    let writer = demo::writer(&config.regions[0]);
    let upstream = &writer;
    let account = demo::SAMPLE_ACCOUNT;
    let put = |key: String, body: Bytes| async move {
        upstream
            .put_object(&key, body, http::HeaderMap::new())
            .await
            .unwrap();
    };
    // Index order: the servers, then the direct backend.
    let names = ["s3edge", "nginx", "nginx-slice", "varnish", "direct"];
    let (s3edge, nginx, slice, varnish, direct) = (0, 1, 2, 3, 4);
    let signed_misses: Vec<String> = (0..MISSES)
        .map(|i| format!("{account}/miss-signed-{i}.jpg"))
        .collect();
    let snapshot: Bytes = support::pattern(SNAPSHOT, 251);
    let video: Bytes = support::pattern(VIDEO, 241);
    let popular: Bytes = support::pattern(POPULAR, 239);
    eprintln!("peers: uploading objects to the origin…");
    put(format!("{account}/hot.jpg"), snapshot.clone()).await;
    for key in &signed_misses {
        put(key.clone(), snapshot.clone()).await;
    }
    put(format!("{account}/hot.mp4"), video.clone()).await;
    for name in names {
        for i in 0..MISSES {
            put(format!("{account}/miss-{name}-{i}.jpg"), snapshot.clone()).await;
        }
        for i in 0..COLD {
            put(format!("{account}/cold-{name}-{i}.mp4"), video.clone()).await;
        }
        put(format!("{account}/popular-{name}.mp4"), popular.clone()).await;
        for i in 0..3 {
            put(format!("{account}/lone-{name}-{i}.mp4"), popular.clone()).await;
        }
    }
    for i in 0..11 {
        put(format!("{account}/flood-{i}.mp4"), video.clone()).await;
    }
    for i in 0..COLD {
        put(format!("{account}/steady-{i}.mp4"), video.clone()).await;
    }
    if part("p5") {
        futures_util::stream::iter(0..SMALL_OBJECTS)
            .for_each_concurrent(16, |i| {
                put(format!("{account}/small-{i}.jpg"), snapshot.clone())
            })
            .await;
    }

    let servers = vec![
        start_s3edge(dir.path(), &config, 1024 * 1024 * 1024),
        start_nginx(dir.path(), origin, false),
        start_nginx(dir.path(), origin, true),
        start_varnish(dir.path(), origin),
    ];
    let direct_base = format!("http://{origin}/eu1-addpipe");
    let base = |i: usize| {
        servers
            .get(i)
            .map_or(direct_base.clone(), |s| s.base.clone())
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut report = String::new();
    let mut binary = std::env::var("S3EDGE_PEERS_BIN").unwrap_or_else(|_| "this build".into());
    if prefault() {
        binary.push_str(", cache.prefault = true");
    }
    let _ = writeln!(
        report,
        "\nmachine: {cores} cores; release build ({binary}); loopback; origin: s3s-fs in the bench process (core {origin_core}), public-read for nginx/varnish, SigV4 for s3edge",
    );
    let _ = writeln!(
        report,
        "servers pinned to core 0 (taskset), wrk and clients on core 1{}; s3edge RUST_LOG=warn, nginx access_log off\n",
        if origin_core == 0 {
            ", the origin on core 0 with the servers"
        } else {
            ", the origin with them"
        }
    );

    // P1
    if part("p1") {
        for connections in [16, 64] {
            let mut p1 = Vec::new();
            for s in &servers {
                let url = format!("{}/{account}/hot.jpg", s.base);
                for _ in 0..3 {
                    timed_get(&client, &url).await;
                }
                let load = wrk(s, &url, connections, None);
                p1.push((s.name, load));
            }
            let _ = writeln!(
                report,
                "P1 cache hit, 30 KB snapshot (wrk -t1 -c{connections} -d{LOAD_SECS}s):"
            );
            for (name, l) in &p1 {
                let _ = writeln!(
                    report,
                    "  {name:11} {:>9.0} req/s  {:>6.2} µs CPU/request",
                    l.rps, l.cpu_us_per_request
                );
            }
            let rps = p1[s3edge].1.rps / p1[nginx].1.rps;
            let cpu = p1[s3edge].1.cpu_us_per_request / p1[nginx].1.cpu_us_per_request;
            let _ = writeln!(
                report,
                "  s3edge/nginx: {rps:.2} × req/s (goal ≥ 1: {}), {cpu:.2} × CPU/request (goal ≤ 0.8: {})\n",
                goal(rps >= 1.0),
                goal(cpu <= 0.8)
            );
        }
    }
    // P2
    if part("p2") {
        let lua = dir.path().join("ranges.lua");
        std::fs::write(
            &lua,
            format!(
                r#"math.randomseed(42)
local size = {VIDEO}
local len = 1048576
request = function()
  local start = math.random(0, size - len - 1)
  return wrk.format("GET", nil, {{ ["Range"] = "bytes=" .. start .. "-" .. (start + len - 1) }})
end
"#
            ),
        )
        .unwrap();
        let mut p2 = Vec::new();
        for s in &servers {
            let url = format!("{}/{account}/hot.mp4", s.base);
            timed_get(&client, &url).await;
            timed_get(&client, &url).await;
            let perf = perf_start(s, "p2");
            let load = wrk(s, &url, 8, Some(&lua));
            perf_stop(perf);
            p2.push((s.name, load));
        }
        let _ = writeln!(
            report,
            "P2 cache hit, random 1 MiB ranges of a 50 MB mp4 (wrk -t1 -c8 -d{LOAD_SECS}s):"
        );
        for (name, l) in &p2 {
            let _ = writeln!(
                report,
                "  {name:11} {:>8.0} MB/s  {:>7.0} req/s  {:>7.1} µs CPU/request",
                l.mb_per_s, l.rps, l.cpu_us_per_request
            );
        }
        let ratio = p2[s3edge].1.mb_per_s / p2[slice].1.mb_per_s.max(p2[varnish].1.mb_per_s);
        let _ = writeln!(
            report,
            "  s3edge / best of nginx-slice and varnish: {ratio:.2} × (goal ≥ 1.2: {})\n",
            goal(ratio >= 1.2)
        );
    }
    // P3 latency
    if part("p3") {
        // Every miss object is read once from the origin first, so its file is in the page
        // cache for every server alike: P3 measures the proxies, not the origin's disk.
        for name in names {
            for i in 0..MISSES {
                let url = format!("{direct_base}/{account}/miss-{name}-{i}.jpg");
                timed_get(&client, &url).await;
            }
        }
        for key in &signed_misses {
            timed_get(&client, &format!("{direct_base}/{key}")).await;
        }
        let mut tails = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let mut times = Vec::with_capacity(MISSES);
            let perf = servers.get(index).and_then(|s| perf_start(s, "p3"));
            for i in 0..MISSES {
                let url = format!("{}/{account}/miss-{name}-{i}.jpg", base(index));
                times.push(timed_get(&client, &url).await.0);
            }
            perf_stop(perf);
            tails.push((
                *name,
                percentile(times.clone(), 0.5),
                percentile(times, 0.99),
            ));
        }
        // The backend verifies s3edge's SigV4 signature but not the anonymous peers'
        // requests: s3edge's fair baseline is a signed (presigned) direct request.
        let mut signed = Vec::with_capacity(MISSES);
        for key in &signed_misses {
            let url = support::presign(&config.regions[0], key);
            signed.push(timed_get(&client, &url).await.0);
        }
        let _ = writeln!(
            report,
            "P3 miss path, 30 KB objects, one request at a time, {MISSES} distinct objects each:"
        );
        for (name, p50, p99) in &tails {
            let _ = writeln!(
                report,
                "  {name:11} p50 {:>6.3} ms  p99 {:>6.3} ms",
                ms(*p50),
                ms(*p99)
            );
        }
        let _ = writeln!(
            report,
            "  direct, presigned (signature verified): p50 {:.3} ms  p99 {:.3} ms",
            ms(percentile(signed.clone(), 0.5)),
            ms(percentile(signed, 0.99))
        );
        let best = |f: fn(&(&str, Duration, Duration)) -> Duration| {
            [nginx, slice, varnish]
                .iter()
                .map(|&i| f(&tails[i]))
                .min()
                .unwrap()
        };
        let (best50, best99) = (best(|t| t.1), best(|t| t.2));
        let _ = writeln!(
            report,
            "  s3edge / best peer: p50 {:.2} × ({:.3} ms), p99 {:.2} × ({:.3} ms) (goal ≤ 1: {})\n",
            ms(tails[s3edge].1) / ms(best50),
            ms(best50),
            ms(tails[s3edge].2) / ms(best99),
            ms(best99),
            goal(tails[s3edge].1 <= best50 && tails[s3edge].2 <= best99)
        );

        // P3 cold stream-through, with the server's CPU around each transfer. Rounds go
        // through every server in turn, so a drift of the machine during the part (this VM's
        // fresh memory costs more or less from one second to the next) falls on all alike.
        let mut per_server: Vec<(f64, Vec<f64>, u64)> = vec![(0.0, Vec::new(), 0); names.len()];
        let perfs: Vec<Option<Child>> = servers.iter().map(|s| perf_start(s, "cold")).collect();
        for i in 0..COLD {
            for (index, name) in names.iter().enumerate() {
                let url = format!("{}/{account}/cold-{name}-{i}.mp4", base(index));
                let (ms, speed, faulted) = cold_transfer(servers.get(index), &url);
                let entry = &mut per_server[index];
                entry.0 += ms;
                entry.1.push(speed);
                entry.2 += faulted;
            }
        }
        perfs.into_iter().for_each(perf_stop);
        let mb = (COLD * VIDEO) as f64 / 1e6;
        let cold: Vec<(&str, f64, f64, f64)> = names
            .iter()
            .zip(per_server)
            .map(|(name, (cpu, speeds, faults))| {
                (*name, median(speeds), cpu / mb, faults as f64 / mb)
            })
            .collect();
        let _ = writeln!(
            report,
            "P3 cold stream-through of a 50 MB object (curl, median of {COLD} distinct objects; server CPU from /proc/PID/stat around each transfer):"
        );
        for (name, speed, cpu, faults) in &cold {
            let cpu = if *name == "direct" {
                String::new()
            } else {
                format!("  {cpu:>5.2} ms CPU/MB  {faults:>6.1} page faults/MB")
            };
            let _ = writeln!(
                report,
                "  {name:11} {speed:>7.0} MB/s  ({:.2} × direct){cpu}",
                speed / cold[direct].1
            );
        }
        let nginx_speed = cold[nginx].1.max(cold[slice].1);
        let nginx_cpu = cold[nginx].2.min(cold[slice].2);
        let _ = writeln!(
            report,
            "  s3edge: {:.2} × direct (goal ≥ 0.9: {}), {:.2} × the faster nginx (goal ≥ 1: {}), {:.2} × the leaner nginx's CPU/MB (goal ≤ 1: {})\n",
            cold[s3edge].1 / cold[direct].1,
            goal(cold[s3edge].1 >= 0.9 * cold[direct].1),
            cold[s3edge].1 / nginx_speed,
            goal(cold[s3edge].1 >= nginx_speed),
            cold[s3edge].2 / nginx_cpu,
            goal(cold[s3edge].2 <= nginx_cpu)
        );
    }
    // P4
    if part("p4") {
        let _ = writeln!(
            report,
            "P4 cold 2 MB object: a lone GET (median of 3 objects), then 200 concurrent GETs of another:"
        );
        let mut p4 = Vec::new();
        for s in &servers {
            let mut lone = Vec::new();
            for i in 0..3 {
                let url = format!("{}/{account}/lone-{}-{i}.mp4", s.base, s.name);
                lone.push(timed_get(&client, &url).await.0);
            }
            let lone = percentile(lone, 0.5);
            let url = format!("{}/{account}/popular-{}.mp4", s.base, s.name);
            let before = backends.backends[0].stats.requests();
            let perf = perf_start(s, "p4");
            let times = collapsed_gets(dir.path(), &url, 200);
            perf_stop(perf);
            let upstream = backends.backends[0].stats.requests() - before;
            let p99 = percentile(times, 0.99);
            let _ = writeln!(
                report,
                "  {:11} lone {:>6.2} ms  collapsed: upstream requests {upstream:>3}  p99 {:>8.2} ms",
                s.name,
                ms(lone),
                ms(p99),
            );
            p4.push((lone, upstream, p99));
        }
        let (lone, upstream, p99) = p4[s3edge];
        let _ = writeln!(
            report,
            "  s3edge / varnish: lone {:.2} × (goal ≤ 1: {}), collapsed p99 {:.2} × with {upstream} upstream request(s) (goal ≤ 1 with 1: {})\n",
            ms(lone) / ms(p4[varnish].0),
            goal(lone <= p4[varnish].0),
            ms(p99) / ms(p4[varnish].2),
            goal(upstream == 1 && p99 <= p4[varnish].2)
        );
    }
    drop(servers);

    // P5
    if part("p5") {
        let capacity: u64 = 128 * 1024 * 1024;
        let s = start_s3edge(dir.path(), &config, capacity);
        let idle = vm_kib(s.child.id(), "VmRSS:") << 10;
        let mut passed = 0u64;
        for i in 0..11 {
            let url = format!("{}/{account}/flood-{i}.mp4", s.base);
            passed += timed_get(&client, &url).await.1 as u64;
        }
        // A real edge's cache is full: cold objects now replace evicted ones.
        let (mut cpu, mut speeds, mut faults) = (0.0, Vec::new(), 0);
        for i in 0..COLD {
            let url = format!("{}/{account}/steady-{i}.mp4", s.base);
            let (ms, speed, faulted) = cold_transfer(Some(&s), &url);
            cpu += ms;
            faults += faulted;
            speeds.push(speed);
        }
        let pid = s.child.id();
        let (peak, now) = (vm_kib(pid, "VmHWM:") << 10, vm_kib(pid, "VmRSS:") << 10);
        let admin = s.admin.clone().unwrap();
        let purge = Command::new("curl")
            .args([
                "-s",
                "-X",
                "DELETE",
                &format!("{admin}/cache/eu1/{account}"),
            ])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&purge.stdout).contains("purged"));
        // Freed memory goes back to the OS after the allocator's purge delay.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let purged = vm_kib(pid, "VmRSS:") << 10;
        let limit = capacity + (64 << 20);
        let _ = writeln!(
            report,
            "{}; 3 s after a purge of everything: {} MiB",
            rss_line(
                "distinct objects",
                [idle, passed, capacity, peak, now, limit]
            ),
            purged >> 20,
        );
        let _ = writeln!(
            report,
            "P5 cold stream-through of {COLD} more 50 MB objects through the full cache: {:.0} MB/s (median), {:.2} ms CPU/MB, {:.1} page faults/MB",
            median(speeds),
            cpu / ((COLD * VIDEO) as f64 / 1e6),
            faults as f64 / ((COLD * VIDEO) as f64 / 1e6)
        );
        drop(s);

        // Many small entries: a leak per entry, or memory an entry pins beyond its bytes,
        // shows here and not with 50 MB objects.
        let s = start_s3edge(dir.path(), &config, capacity);
        let idle = vm_kib(s.child.id(), "VmRSS:") << 10;
        let mut passed = 0u64;
        for i in 0..SMALL_OBJECTS {
            let url = format!("{}/{account}/small-{i}.jpg", s.base);
            passed += timed_get(&client, &url).await.1 as u64;
        }
        let pid = s.child.id();
        let (peak, now) = (vm_kib(pid, "VmHWM:") << 10, vm_kib(pid, "VmRSS:") << 10);
        let _ = writeln!(
            report,
            "{}",
            rss_line(
                &format!("distinct 30 KB snapshots ({SMALL_OBJECTS})"),
                [idle, passed, capacity, peak, now, limit],
            ),
        );
        drop(s);
    }
    println!("{report}");
}

/// P5's memory line: `[idle, passed, capacity, peak, now, limit]` in bytes, after `what`
/// passed through the cache.
fn rss_line(what: &str, [idle, passed, capacity, peak, now, limit]: [u64; 6]) -> String {
    format!(
        "P5 RSS {} MiB idle; after {} MiB of {what} through a {} MiB cache: peak {} MiB, now {} MiB (goal ≤ {} MiB: {})",
        idle >> 20,
        passed >> 20,
        capacity >> 20,
        peak >> 20,
        now >> 20,
        limit >> 20,
        goal(peak <= limit),
    )
}
