//! Faults upstream: a misbehaving backend (a proxy in front of a real s3s backend, see
//! `common/faults.rs`) hangs, refuses, answers 503, resets, cuts the body, or trickles it.
//! The client must get a timely 504/502/503, a retried success, or an aborted transfer:
//! never a hang, never a short body presented as complete, never a partial cache entry.

use std::time::{Duration, Instant};

use crate::common::faults::{Fault, FaultProxy};
use crate::common::{Harness, within};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use s3edge::config::Config;
use s3edge_testbed::SAMPLE_ACCOUNT;

/// A harness whose eu1 backend sits behind a fault proxy (passing traffic for now).
async fn start(adjust: impl FnOnce(&mut Config)) -> (Harness, FaultProxy) {
    let mut proxy = None;
    let h = Harness::start_with(|c| {
        let eu1 = c.regions.iter_mut().find(|r| r.name == "eu1").unwrap();
        let target = crate::common::endpoint_addr(eu1);
        let p = FaultProxy::start(target);
        eu1.endpoint = p.endpoint();
        proxy = Some(p);
        adjust(c);
    })
    .await;
    (h, proxy.unwrap())
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u64 * 131 + u64::from(seed)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Puts an object in eu1 (through the proxy, which must be passing) and returns its path.
async fn put_object(h: &Harness, name: &str, body: &Bytes) -> String {
    let key = format!("{SAMPLE_ACCOUNT}/{name}.mp4");
    h.put("eu1", &key, body.clone()).await;
    format!("/eu1/{key}")
}

/// What a client saw: status, headers, and the body or the error that cut it.
struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

async fn fetch<C>(client: &Client<C, Empty<Bytes>>, url: &str) -> Outcome
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = Request::get(url).body(Empty::new()).unwrap();
    let response = within(client.request(request)).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = within(body.collect())
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("{e:?}"));
    Outcome {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The value of one Prometheus sample, 0 when absent.
fn metric(h: &Harness, sample: &str) -> f64 {
    let text = h.gateway.metrics().encode();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn url(h: &Harness, path: &str) -> String {
    format!("http://{}{path}", h.addr)
}

#[tokio::test]
async fn a_hung_backend_gets_504_within_the_configured_time() {
    for cache in [false, true] {
        let (h, proxy) = start(|c| {
            c.cache.enabled = cache;
            c.timeouts.response_head = Duration::from_millis(400);
        })
        .await;
        let body = pattern(10_000, 1);
        let path = put_object(&h, "hung", &body).await;
        proxy.set(Fault::Hang);
        let started = Instant::now();
        let reply = h.get(&path, &[]).await;
        let took = started.elapsed();
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "cache {cache}");
        assert_eq!(&reply.body[..], b"gateway timeout\n");
        // One attempt only: a head timeout is not retried, so the client hears in time.
        assert!(
            took < Duration::from_secs(3),
            "took {took:?} (cache {cache})"
        );
        assert!(took >= Duration::from_millis(350), "took {took:?}");
        assert_eq!(
            metric(
                &h,
                "s3edge_upstream_errors_total{region=\"eu1\",kind=\"timeout_head\"}"
            ),
            1.0
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_answered_502() {
    let (_refusing, closed_addr) = crate::common::refused_addr();
    let h = Harness::start_with(|c| {
        c.cache.enabled = false;
        c.retry.backoff = Duration::from_millis(10);
        let eu1 = c.regions.iter_mut().find(|r| r.name == "eu1").unwrap();
        eu1.endpoint = format!("http://{closed_addr}").parse().unwrap();
    })
    .await;
    let started = Instant::now();
    let reply = h
        .get(
            &crate::common::sample_path("eu1", s3edge::route::FileKind::Processed),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(&reply.body[..], b"bad gateway\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        metric(
            &h,
            "s3edge_upstream_errors_total{region=\"eu1\",kind=\"connect\"}"
        ),
        3.0,
        "three attempts"
    );
    assert_eq!(
        metric(&h, "s3edge_upstream_retries_total{region=\"eu1\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_503_and_a_reset_are_retried_and_the_client_never_sees_them() {
    for cache in [false, true] {
        let (h, proxy) = start(|c| {
            c.cache.enabled = cache;
            c.retry.backoff = Duration::from_millis(5);
        })
        .await;
        let body = pattern(200_000, 2);
        let path = put_object(&h, "flaky", &body).await;
        let before = proxy.connections();
        proxy.script(&[Fault::Status(503), Fault::Reset], Fault::Pass);
        let reply = h.get(&path, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "cache {cache}");
        assert_eq!(reply.body, body);
        assert!(proxy.connections() - before >= 3);
        assert_eq!(
            metric(&h, "s3edge_upstream_retries_total{region=\"eu1\"}"),
            2.0
        );
        assert_eq!(
            metric(
                &h,
                "s3edge_upstream_errors_total{region=\"eu1\",kind=\"status_5xx\"}"
            ),
            1.0
        );
    }
}

#[tokio::test]
async fn a_persistent_503_becomes_502_after_bounded_attempts() {
    let (h, proxy) = start(|c| {
        c.cache.enabled = false;
        c.retry.backoff = Duration::from_millis(5);
        c.circuit.failures = 0;
    })
    .await;
    let body = pattern(1000, 3);
    let path = put_object(&h, "down", &body).await;
    proxy.set(Fault::Status(503));
    let before = proxy.connections();
    let reply = h.get(&path, &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(&reply.body[..], b"bad gateway\n");
    assert_eq!(proxy.connections() - before, 3, "attempts are bounded");
}

#[tokio::test]
async fn a_cut_body_aborts_the_response_and_nothing_partial_is_cached() {
    for cache in [false, true] {
        let (h, proxy) = start(|c| c.cache.enabled = cache).await;
        let body = pattern(1_000_000, 4);
        let path = put_object(&h, "cut", &body).await;
        proxy.script(&[Fault::CutAfter(200_000)], Fault::Pass);
        let first = fetch(&h.client, &url(&h, &path)).await;
        assert_eq!(first.status, StatusCode::OK, "cache {cache}");
        assert_eq!(
            first.headers.get("content-length").unwrap(),
            "1000000",
            "the head promised the whole object"
        );
        assert!(
            first.body.is_err(),
            "a cut body must not look complete (cache {cache})"
        );
        assert_eq!(
            metric(&h, "s3edge_responses_cut_total{region=\"eu1\"}"),
            1.0
        );
        // The next request gets the whole, correct object (twice with the cache: the
        // second answer comes from what was stored).
        for _ in 0..2 {
            let again = h.get(&path, &[]).await;
            assert_eq!(again.status, StatusCode::OK);
            assert!(again.body == body, "bytes differ (cache {cache})");
        }
    }
}

#[tokio::test]
async fn an_http2_client_gets_a_reset_stream_and_keeps_its_connection() {
    let (h, proxy) = start(|c| c.cache.enabled = false).await;
    let body = pattern(1_000_000, 5);
    let path = put_object(&h, "cut2", &body).await;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    proxy.script(&[Fault::CutAfter(300_000)], Fault::Pass);
    let first = fetch(&client, &url(&h, &path)).await;
    assert_eq!(first.status, StatusCode::OK);
    let error = first.body.unwrap_err();
    assert!(
        error.contains("Reset") && error.contains("INTERNAL_ERROR"),
        "expected a reset stream, got: {error}"
    );
    let again = fetch(&client, &url(&h, &path)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.unwrap() == body);
}

#[tokio::test]
async fn a_trickling_backend_is_cut_at_the_idle_limit_but_a_slow_one_completes() {
    for cache in [false, true] {
        let (h, proxy) = start(|c| {
            c.cache.enabled = cache;
            c.timeouts.body_idle = Duration::from_millis(300);
        })
        .await;
        let body = pattern(300_000, 6);
        let path = put_object(&h, "trickle", &body).await;
        proxy.set(Fault::Trickle {
            bytes: 16 * 1024,
            every: Duration::from_millis(800),
        });
        let started = Instant::now();
        let stalled = fetch(&h.client, &url(&h, &path)).await;
        assert!(
            // Cut mid-body, or refused before the first byte: never a complete 200.
            stalled.body.is_err() || stalled.status.is_server_error(),
            "a stalled body never completes (cache {cache}): {}",
            stalled.status
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        proxy.set(Fault::Trickle {
            bytes: 64 * 1024,
            every: Duration::from_millis(50),
        });
        let slow = h.get(&path, &[]).await;
        assert_eq!(slow.status, StatusCode::OK);
        assert!(
            slow.body == body,
            "slow but steady completes (cache {cache})"
        );
        assert!(
            metric(
                &h,
                "s3edge_upstream_errors_total{region=\"eu1\",kind=\"timeout_body\"}"
            ) >= 1.0
        );
    }
}

#[tokio::test]
async fn a_failing_region_opens_its_circuit_fails_fast_and_recovers() {
    let (h, proxy) = start(|c| {
        c.cache.enabled = false;
        c.retry.attempts = 1;
        c.circuit.failures = 2;
        c.circuit.open_for = Duration::from_millis(400);
    })
    .await;
    let body = pattern(5000, 7);
    let path = put_object(&h, "breaker", &body).await;
    proxy.set(Fault::Status(503));
    for _ in 0..2 {
        assert_eq!(h.get(&path, &[]).await.status, StatusCode::BAD_GATEWAY);
    }
    let asked = proxy.connections();
    let fast = h.get(&path, &[]).await;
    assert_eq!(fast.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fast.header("retry-after"), Some("2"));
    assert_eq!(&fast.body[..], b"service unavailable\n");
    assert_eq!(
        proxy.connections(),
        asked,
        "an open circuit does not ask the backend"
    );
    assert_eq!(metric(&h, "s3edge_circuit_open{region=\"eu1\"}"), 1.0);
    // Other regions are not affected.
    let other = h
        .get(
            &crate::common::sample_path("eu2", s3edge::route::FileKind::Snapshot),
            &[],
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    // The backend comes back; after the cool-down one trial closes the circuit.
    proxy.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let recovered = h.get(&path, &[]).await;
    assert_eq!(recovered.status, StatusCode::OK);
    assert!(recovered.body == body);
    assert_eq!(metric(&h, "s3edge_circuit_open{region=\"eu1\"}"), 0.0);
    assert_eq!(h.get(&path, &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_open_circuit_is_served_stale_from_the_cache() {
    let (h, proxy) = start(|c| {
        c.cache.ttl = Duration::from_millis(200);
        c.cache.stale_while_revalidate = Duration::ZERO;
        c.retry.attempts = 1;
        c.circuit.failures = 1;
        c.circuit.open_for = Duration::from_secs(30);
    })
    .await;
    let body = pattern(100_000, 8);
    let path = put_object(&h, "stale", &body).await;
    assert_eq!(h.get(&path, &[]).await.status, StatusCode::OK);
    proxy.set(Fault::Status(503));
    tokio::time::sleep(Duration::from_millis(250)).await;
    for _ in 0..3 {
        let stale = h.get(&path, &[]).await;
        assert_eq!(stale.status, StatusCode::OK);
        assert!(stale.body == body);
        assert!(
            stale
                .header("cache-status")
                .unwrap()
                .contains("stale-if-error"),
            "{:?}",
            stale.header("cache-status")
        );
    }
    assert_eq!(metric(&h, "s3edge_circuit_open{region=\"eu1\"}"), 1.0);
}

#[tokio::test]
async fn chunks_kept_in_the_pieces_they_arrived_in_are_joined_at_their_first_hit() {
    let (h, proxy) = start(|c| c.cache.chunk_size = 64 * 1024).await;
    // Not periodic (a misplaced piece would show): 3 whole chunks and a short one.
    let body = crate::common::random_bytes(3 * 65_536 + 10_000, 0x9e37_79b9_7f4a_7c15);
    let path = put_object(&h, "pieces", &body).await;
    // Every chunk comes in several upstream reads.
    proxy.set(Fault::Trickle {
        bytes: 16 * 1024,
        every: Duration::from_millis(5),
    });
    let miss = h.get(&path, &[]).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert!(miss.body == body);
    assert!(
        miss.header("cache-status")
            .unwrap_or("")
            .contains("fwd=miss")
    );
    h.cache().sync().await;
    let stats = h.cache().stats();
    assert_eq!(stats.chunks_stored, 4, "{stats:?}");
    assert_eq!(
        stats.chunks_joined, 0,
        "a miss copies nothing twice: {stats:?}"
    );
    proxy.set(Fault::Pass);
    // A range hit across chunks 0 and 1 joins those two, and reads them right.
    let range = h.get(&path, &[("range", "bytes=60000-70000")]).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert!(range.body == body.slice(60_000..70_001));
    assert!(range.header("cache-status").unwrap_or("").contains("; hit"));
    assert_eq!(h.cache().stats().chunks_joined, 2);
    // The whole object: the other whole chunk is joined (the short last one may have
    // come in one piece); then nothing is joined again.
    for _ in 0..2 {
        let hit = h.get(&path, &[]).await;
        assert_eq!(hit.status, StatusCode::OK);
        assert!(hit.body == body);
    }
    let joined = h.cache().stats().chunks_joined;
    assert!((3..=4).contains(&joined), "{joined}");
    let tail = h.get(&path, &[("range", "bytes=131000-")]).await;
    assert!(tail.body == body.slice(131_000..));
    let stats = h.cache().stats();
    assert_eq!(stats.chunks_joined, joined, "{stats:?}");
    assert_eq!(stats.upstream_fetches, 1, "{stats:?}");
}

/// A long body is read in large steps (its upstream connection's low-water mark,
/// `body::coalesce`): it arrives whole from a fast upstream, the kept-alive connection then
/// answers the next requests at once (the mark is back at 1 before the body's end), and a
/// trickling upstream whose bytes come slower than the mark fills is not cut as idle.
#[tokio::test]
async fn long_bodies_read_in_large_steps_arrive_whole_and_leave_the_connection_reusable() {
    let (h, proxy) = start(|c| {
        c.cache.enabled = false;
        // A stalled read or head would end here, long before the test's own limits.
        c.timeouts.body_idle = Duration::from_millis(200);
        c.timeouts.response_head = Duration::from_secs(1);
    })
    .await;
    // Long enough to raise the mark: more than its margin (2 MiB) and the mark (256 KiB).
    let long = crate::common::random_bytes(6 << 20, 0x2545_f491_4f6c_dd1d);
    let short = crate::common::random_bytes(10_000, 0x9e37_79b9_7f4a_7c15);
    let long_path = put_object(&h, "long", &long).await;
    let short_path = put_object(&h, "short", &short).await;
    let first = h.get(&short_path, &[]).await;
    assert!(first.status == StatusCode::OK && first.body == short);
    let connections = proxy.connections();
    for _ in 0..2 {
        // Time for the connection to go back to the pool, so the next request reuses it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = h.get(&long_path, &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body.len(), long.len());
        assert!(got.body == long);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = h.get(&short_path, &[]).await;
        assert_eq!(next.status, StatusCode::OK);
        assert!(next.body == short);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let range = h
            .get(&long_path, &[("range", "bytes=3000000-6291455")])
            .await;
        assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
        assert!(range.body == long.slice(3_000_000..));
    }
    assert_eq!(
        proxy.connections(),
        connections,
        "every request after the first rode the same connection"
    );
    // 16 KiB every 20 ms fills the mark in 320 ms, past the 200 ms idle limit: the mark is
    // dropped after a short wait and the body passes as it comes.
    let slow = crate::common::random_bytes(2_560 * 1024, 0x1234_5678_9abc_def1);
    let slow_path = put_object(&h, "slow", &slow).await;
    proxy.set(Fault::Trickle {
        bytes: 16 * 1024,
        every: Duration::from_millis(20),
    });
    let got = h.get(&slow_path, &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == slow);
    assert_eq!(
        metric(
            &h,
            "s3edge_upstream_errors_total{region=\"eu1\",kind=\"timeout_body\"}"
        ),
        0.0
    );
}
