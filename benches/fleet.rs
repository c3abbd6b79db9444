//! The fleet of edges: three s3edge edges (256 MiB caches) behind HAProxy with the consistent
//! hash of `config/haproxy.cfg`, against (a) the same three edges round-robin and (b) one edge
//! with a 768 MiB cache (also behind HAProxy). About 600 MiB of recordings, requested with a
//! Zipf popularity; every layout replays the same request sequence from cold caches. Reports
//! hit ratio and the bytes the edges fetched from the bucket; then a drill: one edge stops
//! (only its share of recordings misses), and comes back (HAProxy gives it its share again).
//!
//! `cargo bench --bench fleet` (needs `haproxy`). Loopback only; bounded in requests and time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use s3edge::config::{AdminConfig, Config};
use s3edge::route::FileKind;
use s3edge_testbed::haproxy::Haproxy;
use s3edge_testbed::{self as demo, Backends};
use support::{free_port, wait_port};

const MIB: u64 = 1024 * 1024;
/// Recordings in the working set (about 2 MiB each: about 600 MiB).
const RECORDINGS: usize = 300;
/// Requests per layout.
const REQUESTS: usize = 8_000;
/// Requests per drill phase.
const DRILL_REQUESTS: usize = 4_000;
/// Zipf exponent of the popularity.
const ZIPF_S: f64 = 1.0;
/// Requests in flight.
const CONCURRENCY: usize = 8;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("fleet: `haproxy` is needed (apt-get install haproxy)");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

/// Bytes the bucket sent to the edges, counted by a TCP relay in front of it.
#[derive(Clone, Default)]
struct Origin {
    bytes: Arc<AtomicU64>,
}

impl Origin {
    async fn start(target: SocketAddr) -> (Origin, SocketAddr) {
        let origin = Origin::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = origin.bytes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut from_server, mut to_server) = server.into_split();
                    let (mut from_client, mut to_client) = client.split();
                    // Counted as they flow: the edges keep their connections open.
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = from_server.read(&mut buf).await.unwrap_or(0);
                            if n == 0 || to_client.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        let _ = to_client.shutdown().await;
                    };
                    let up = async {
                        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                        let _ = to_server.shutdown().await;
                    };
                    tokio::join!(down, up);
                });
            }
        });
        (origin, addr)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// One request of the replayed sequence.
#[derive(Clone)]
struct Ask {
    recording: usize,
    kind: FileKind,
}

/// The same sequence for every layout: Zipf over recordings, the file by a fixed mix.
fn sequence(n: usize, seed: u64) -> Vec<Ask> {
    let weights: Vec<f64> = (1..=RECORDINGS)
        .map(|r| 1.0 / (r as f64).powf(ZIPF_S))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(RECORDINGS);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    // Popularity rank -> recording: shuffled, so rank does not follow the name's hash.
    let mut order: Vec<usize> = (0..RECORDINGS).collect();
    rng.shuffle(&mut order);
    (0..n)
        .map(|_| {
            let u = rng.f64();
            let rank = cumulative.partition_point(|c| *c < u).min(RECORDINGS - 1);
            let kind = match rng.u32(0..100) {
                0..50 => FileKind::Processed,
                50..75 => FileKind::Snapshot,
                75..90 => FileKind::Filmstrip,
                _ => FileKind::Raw,
            };
            Ask {
                recording: order[rank],
                kind,
            }
        })
        .collect()
}

fn size_of(recording: usize, kind: FileKind) -> usize {
    let jitter = recording * 997 % 65_536;
    match kind {
        FileKind::Processed => 1_200 * 1024 + jitter,
        FileKind::Raw => 700 * 1024 + jitter,
        FileKind::Snapshot => 30 * 1024 + jitter / 8,
        FileKind::Filmstrip => 70 * 1024 + jitter / 4,
    }
}

fn path_of(recording: usize, kind: FileKind) -> String {
    format!("/eu1/FLEETACCOUNT/rec{recording:04}{}", kind.suffix())
}

struct Edge {
    child: Child,
    port: u16,
    admin: u16,
    config: PathBuf,
}

impl Edge {
    fn start(dir: &Path, base: &Config, capacity: u64, name: &str) -> Edge {
        let (port, admin) = (free_port(), free_port());
        let mut config = base.clone();
        config.http_listeners = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        config.admin = Some(AdminConfig {
            listen: format!("127.0.0.1:{admin}").parse().unwrap(),
            token: None,
        });
        config.cache.capacity = capacity;
        config.cache.ttl = Duration::from_secs(3600);
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, demo::render_toml(&config)).unwrap();
        Edge {
            child: serve(&path, port, admin),
            port,
            admin,
            config: path,
        }
    }

    /// Starts the edge again on its config and ports (after [`Edge::kill`]).
    fn respawn(&mut self) {
        self.child = serve(&self.config, self.port, self.admin);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s3edge serve` on `config`; returns once its listeners accept.
fn serve(config: &Path, port: u16, admin: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_s3edge"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    wait_port(admin);
    child
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy on `config/haproxy.cfg` over `edges` (round-robin for layout (a)); waits for the
/// health checks' first round.
fn start_haproxy(dir: &Path, edges: &[&Edge], round_robin: bool) -> Haproxy {
    let pairs: Vec<(SocketAddr, SocketAddr)> = edges
        .iter()
        .map(|e| {
            (
                SocketAddr::from(([127, 0, 0, 1], e.port)),
                SocketAddr::from(([127, 0, 0, 1], e.admin)),
            )
        })
        .collect();
    let haproxy = Haproxy::start(dir, &pairs, round_robin).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    haproxy
}

/// What a replay saw.
#[derive(Default, Clone)]
struct Tally {
    requests: u64,
    hits: u64,
    bytes: u64,
    errors: u64,
    /// Requests and hits by answering edge.
    by_edge: HashMap<String, (u64, u64)>,
    /// Answering edge per recording (consistent hashing: one each).
    edge_of: HashMap<usize, std::collections::BTreeSet<String>>,
    /// Every answered request: recording, hit.
    answered: Vec<(usize, bool)>,
}

/// A request's answer: hit, body bytes, answering edge.
type Answer = (bool, u64, String);

async fn replay(port: u16, asks: &[Ask]) -> Tally {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http();
    let results: Vec<(usize, Option<Answer>)> = futures_util::stream::iter(asks.iter().cloned())
        .map(|ask| {
            let client = client.clone();
            async move {
                let uri = format!(
                    "http://127.0.0.1:{port}{}",
                    path_of(ask.recording, ask.kind)
                );
                let answer = async {
                    let response = client.get(uri.parse().ok()?).await.ok()?;
                    if response.status() != 200 {
                        return None;
                    }
                    let hit = response
                        .headers()
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("; hit"));
                    let edge = response
                        .headers()
                        .get("x-s3edge-edge")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    if body.len() != size_of(ask.recording, ask.kind) {
                        return None;
                    }
                    Some((hit, body.len() as u64, edge))
                };
                let answer = tokio::time::timeout(Duration::from_secs(30), answer)
                    .await
                    .ok()
                    .flatten();
                (ask.recording, answer)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut tally = Tally::default();
    for (recording, answer) in results {
        tally.requests += 1;
        match answer {
            Some((hit, bytes, edge)) => {
                tally.hits += u64::from(hit);
                tally.bytes += bytes;
                let e = tally.by_edge.entry(edge.clone()).or_default();
                e.0 += 1;
                e.1 += u64::from(hit);
                tally.edge_of.entry(recording).or_default().insert(edge);
                tally.answered.push((recording, hit));
            }
            None => tally.errors += 1,
        }
    }
    tally
}

fn ratio(hits: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        hits as f64 / requests as f64
    }
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::start(&dir.path().join("backends")).await.unwrap();
    let eu1 = backends.regions[0].clone();
    let writer = demo::writer(&eu1);
    writer.ensure_bucket().await.unwrap();
    let started = Instant::now();
    let mut working_set = 0u64;
    for r in 0..RECORDINGS {
        for kind in FileKind::ALL {
            let len = size_of(r, kind);
            working_set += len as u64;
            let key = format!("FLEETACCOUNT/rec{r:04}{}", kind.suffix());
            let body = Bytes::from(vec![u8::try_from(r % 251).unwrap(); len]);
            writer
                .put_object(&key, body, http::HeaderMap::new())
                .await
                .unwrap();
        }
    }
    eprintln!(
        "fleet: {RECORDINGS} recordings, {:.0} MiB, stored in {:.1} s",
        working_set as f64 / MIB as f64,
        started.elapsed().as_secs_f64()
    );
    let target: SocketAddr = eu1.endpoint.authority().unwrap().as_str().parse().unwrap();
    let (origin, origin_addr) = Origin::start(target).await;
    let mut base = Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
    base.regions[0].endpoint = format!("http://{origin_addr}").parse().unwrap();
    let asks = sequence(REQUESTS, 7);

    let mut rows = Vec::new();
    let layouts: [(&str, usize, u64, bool); 3] = [
        ("3 edges x 256 MiB, consistent hash", 3, 256 * MIB, false),
        ("(a) 3 edges x 256 MiB, round-robin", 3, 256 * MIB, true),
        ("(b) 1 edge x 768 MiB", 1, 768 * MIB, false),
    ];
    let mut drill = None;
    for (name, n, capacity, rr) in layouts {
        let edges: Vec<Edge> = (0..n)
            .map(|i| Edge::start(dir.path(), &base, capacity, &format!("edge{i}-{n}-{rr}")))
            .collect();
        let haproxy = start_haproxy(dir.path(), &edges.iter().collect::<Vec<_>>(), rr);
        let before = origin.bytes();
        let t0 = Instant::now();
        let tally = replay(haproxy.addr.port(), &asks).await;
        let secs = t0.elapsed().as_secs_f64();
        let upstream = origin.bytes() - before;
        rows.push((name, tally.clone(), upstream, secs));
        if !rr && n == 3 {
            let split = tally.edge_of.values().filter(|e| e.len() > 1).count();
            eprintln!("fleet: consistent hash: {split} recordings answered by more than one edge");
            drill = Some(run_drill(edges, haproxy, &origin, &tally).await);
        }
    }
    println!(
        "\n## Fleet: {RECORDINGS} recordings ({:.0} MiB), {REQUESTS} requests, Zipf s={ZIPF_S}, {CONCURRENCY} in flight, cold caches\n",
        working_set as f64 / MIB as f64
    );
    println!("| layout | hit ratio | upstream MiB | client MiB | errors | s |");
    println!("|---|---|---|---|---|---|");
    for (name, t, upstream, secs) in &rows {
        println!(
            "| {name} | {:.1} % | {:.0} | {:.0} | {} | {secs:.1} |",
            100.0 * ratio(t.hits, t.requests),
            *upstream as f64 / MIB as f64,
            t.bytes as f64 / MIB as f64,
            t.errors
        );
    }
    let hash = ratio(rows[0].1.hits, rows[0].1.requests);
    let single = ratio(rows[2].1.hits, rows[2].1.requests);
    let rr = ratio(rows[1].1.hits, rows[1].1.requests);
    println!(
        "\nconsistent hash vs one 768 MiB edge: {:+.1} points; vs round-robin: {:+.1} points",
        100.0 * (hash - single),
        100.0 * (hash - rr)
    );
    if let Some(d) = drill {
        println!("{d}");
    }
}

/// Stops edge 2 of the consistent-hash layout, replays, brings it back, replays.
async fn run_drill(
    mut edges: Vec<Edge>,
    haproxy: Haproxy,
    origin: &Origin,
    warm: &Tally,
) -> String {
    // Which recordings were each edge's (from the warm-up replay).
    let owner: HashMap<usize, String> = warm
        .edge_of
        .iter()
        .filter_map(|(r, e)| e.iter().next().map(|e| (*r, e.clone())))
        .collect();
    let asks = sequence(DRILL_REQUESTS, 11);
    let mut out = String::from(
        "\n## Drill: edge2 stops, then returns\n\n| phase | edge | requests | hit ratio |\n|---|---|---|---|\n",
    );
    let phase = |label: &str, t: &Tally, upstream: u64, out: &mut String| {
        // Hits by (answering edge, whether the recording was that edge's before).
        for edge in ["edge1", "edge2", "edge3"] {
            let Some((n, h)) = t.by_edge.get(edge) else {
                out.push_str(&format!("| {label} | {edge} | 0 | - |\n"));
                continue;
            };
            out.push_str(&format!(
                "| {label} | {edge} | {n} | {:.1} % |\n",
                100.0 * ratio(*h, *n)
            ));
        }
        out.push_str(&format!(
            "| {label} | all | {} | {:.1} % (upstream {:.0} MiB, errors {}) |\n",
            t.requests,
            100.0 * ratio(t.hits, t.requests),
            upstream as f64 / MIB as f64,
            t.errors
        ));
    };
    // Steady state first: the same caches, a new sequence.
    let before = origin.bytes();
    let steady = replay(haproxy.addr.port(), &asks).await;
    phase("steady", &steady, origin.bytes() - before, &mut out);

    edges[1].kill();
    // fall 2 x inter 1s; meanwhile `retries` + `redispatch` carry requests to the next edge.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = origin.bytes();
    let down = replay(haproxy.addr.port(), &asks).await;
    phase("edge2 down", &down, origin.bytes() - before, &mut out);
    let (own, moved) = split_by_owner(&down, &owner);
    let (steady_own, steady_moved) = split_by_owner(&steady, &owner);
    out.push_str(&format!(
        "\nedge2 down: recordings of edge1/edge3 hit {:.1} % (steady: {:.1} %); edge2's recordings, now on the others, hit {:.1} % (steady on edge2: {:.1} %)\n",
        100.0 * own,
        100.0 * steady_own,
        100.0 * moved,
        100.0 * steady_moved
    ));

    edges[1].respawn();
    // rise 5 x inter 1s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = origin.bytes();
    let back = replay(haproxy.addr.port(), &asks).await;
    phase("edge2 back", &back, origin.bytes() - before, &mut out);
    let returned = back
        .edge_of
        .iter()
        .filter(|(r, e)| owner.get(r).is_some_and(|o| o == "edge2") && e.contains("edge2"))
        .count();
    let owned = owner.values().filter(|o| *o == "edge2").count();
    out.push_str(&format!(
        "edge2 back: {returned} of its {owned} recordings requested again are answered by it again (its cache was empty)\n"
    ));
    drop(haproxy);
    out
}

/// Hit ratios of requests for recordings that were not edge2's, and for edge2's.
fn split_by_owner(t: &Tally, owner: &HashMap<usize, String>) -> (f64, f64) {
    let (mut own, mut moved) = ((0u64, 0u64), (0u64, 0u64));
    for (recording, hit) in &t.answered {
        let slot = if owner.get(recording).is_some_and(|o| o == "edge2") {
            &mut moved
        } else {
            &mut own
        };
        slot.0 += 1;
        slot.1 += u64::from(*hit);
    }
    (ratio(own.1, own.0), ratio(moved.1, moved.0))
}
