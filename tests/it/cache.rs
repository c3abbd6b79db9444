//! The edge cache against real backends with request counters.

use std::time::Duration;

use crate::common::{Harness, random_bytes as pattern, sample_path, within};
use bytes::Bytes;
use http::StatusCode;
use s3edge::config::Config;
use s3edge::route::FileKind;

const KIB: u64 = 1024;

/// Small chunks so that small test objects span many of them.
fn small_chunks(c: &mut Config) {
    c.cache.chunk_size = 64 * KIB;
}

/// xorshift64: a fixed-seed source of test ranges.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn eu1(h: &Harness) -> &s3edge_testbed::backend::S3Backend {
    &h.backends.backends[0]
}

#[tokio::test]
async fn second_get_is_served_without_the_backend() {
    let h = Harness::start().await;
    let path = sample_path("eu1", FileKind::Snapshot);
    let first = h.get(&path, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.header("cache-status"),
        Some("s3edge; fwd=miss; stored")
    );
    let before = h.upstream_requests();
    for _ in 0..5 {
        let again = h.get(&path, &[]).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, s3edge_testbed::sample_file(FileKind::Snapshot));
        assert!(
            again
                .header("cache-status")
                .unwrap()
                .starts_with("s3edge; hit; ttl=")
        );
        assert!(again.header("age").is_some());
        assert_eq!(again.header("cache-control"), Some("max-age=60"));
        assert_eq!(again.header("etag"), first.header("etag"));
        assert_eq!(again.header("content-type"), Some("image/jpeg"));
    }
    assert_eq!(h.upstream_requests(), before, "a hit went upstream");
    // HEAD, conditionals and ranges of a cached object never go upstream either.
    let etag = first.header("etag").unwrap().to_string();
    let head = h.send(http::Method::HEAD, &path, &[]).await;
    assert_eq!(
        head.header("content-length"),
        first.header("content-length")
    );
    let not_modified = h.get(&path, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    let failed = h.get(&path, &[("if-match", "\"nope\"")]).await;
    assert_eq!(failed.status, StatusCode::PRECONDITION_FAILED);
    let partial = h.get(&path, &[("range", "bytes=10-19")]).await;
    assert_eq!(
        partial.body,
        s3edge_testbed::sample_file(FileKind::Snapshot).slice(10..20)
    );
    let len = s3edge_testbed::sample_file(FileKind::Snapshot).len();
    let past = h.get(&path, &[("range", &format!("bytes={len}-"))]).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    assert_eq!(h.upstream_requests(), before);
    let stats = h.cache().stats();
    assert!(stats.hits >= 9, "{stats:?}");
}

#[tokio::test]
async fn random_ranges_match_the_backend_bytes() {
    let h = Harness::start_with(small_chunks).await;
    let body = pattern(1_000_003, 7);
    let key = format!("{}/ranges_raw.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
    h.put("eu1", &key, body.clone()).await;
    let path = format!("/eu1/{key}");
    let len = body.len() as u64;
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    for i in 0..300 {
        let (header, start, end) = match rng.below(4) {
            0 => {
                let a = rng.below(len);
                let b = a + rng.below(300_000);
                (format!("bytes={a}-{b}"), a, (b + 1).min(len))
            }
            1 => {
                let a = rng.below(len);
                (format!("bytes={a}-"), a, len)
            }
            2 => {
                let n = 1 + rng.below(200_000);
                (format!("bytes=-{n}"), len.saturating_sub(n), len)
            }
            _ => {
                let a = rng.below(len / 65_536) * 65_536;
                (
                    format!("bytes={a}-{}", a + 65_535),
                    a,
                    (a + 65_536).min(len),
                )
            }
        };
        let reply = h.get(&path, &[("range", &header)]).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "#{i} {header}");
        assert!(
            reply.body == body.slice(start as usize..end as usize),
            "#{i} {header}: bytes differ"
        );
        assert_eq!(
            reply.header("content-range"),
            Some(format!("bytes {start}-{}/{len}", end - 1).as_str()),
            "#{i} {header}"
        );
    }
    // Every chunk was fetched at most once: 16 chunks of 64 KiB per fetch at most, so the
    // object needed at most its 16 chunks' worth of requests.
    let chunks = len.div_ceil(64 * KIB);
    let stats = h.cache().stats();
    assert!(stats.upstream_fetches <= chunks, "{stats:?}");
    let whole = h.get(&path, &[]).await;
    assert!(whole.body == body);
}

#[tokio::test]
async fn concurrent_cold_requests_collapse_into_one_upstream_request() {
    let h = Harness::start().await;
    let body = pattern(2 * 1024 * 1024, 11);
    let key = format!("{}/popular.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
    h.put("eu1", &key, body.clone()).await;
    let before = eu1(&h).stats.requests();
    let path = format!("/eu1/{key}");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = h.client.clone();
        let url = format!("http://{}{path}", h.addr);
        tasks.push(tokio::spawn(async move {
            use http_body_util::BodyExt;
            let mut request = http::Request::get(url);
            if i % 2 == 1 {
                request = request.header("range", "bytes=1048000-1049999");
            }
            let request = request.body(http_body_util::Empty::<Bytes>::new()).unwrap();
            let response = client.request(request).await.unwrap();
            let status = response.status();
            (
                i,
                status,
                response.into_body().collect().await.unwrap().to_bytes(),
            )
        }));
    }
    for task in tasks {
        let (i, status, got) = within(task).await.unwrap();
        if i % 2 == 1 {
            assert_eq!(status, StatusCode::PARTIAL_CONTENT);
            assert!(got == body.slice(1_048_000..1_050_000), "request {i}");
        } else {
            assert_eq!(status, StatusCode::OK);
            assert!(got == body, "request {i}");
        }
    }
    assert_eq!(
        eu1(&h).stats.requests() - before,
        1,
        "one upstream request for 200 clients"
    );
    assert!(h.cache().stats().collapsed >= 199);
}

#[tokio::test]
async fn a_failed_fetch_is_not_cached_and_does_not_poison() {
    let h = Harness::start().await;
    let path = sample_path("us1", FileKind::Processed);
    let old = &h.backends.backends[2];
    let addr = old.addr;
    old.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Ten concurrent requests share the failed attempt.
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(h.get(&path, &[]));
    }
    for reply in futures_util::future::join_all(replies).await {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }
    // The backend comes back on the same address with the same data: the next request is
    // served, nothing of the failure was remembered.
    let region = &h.config.regions[2];
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let dir = h.backends_root().join("us1");
    let _revived = s3edge_testbed::backend::S3Backend::start(
        listener,
        s3edge_testbed::backend::BackendOptions {
            region: region.signing_region.clone(),
            access_key: region.credentials.access_key_id.clone(),
            secret_key: region.credentials.secret_access_key.clone(),
            provider: region.provider,
            root: dir,
            redirect_to_region: None,
            public_read: false,
            virtual_host_domain: None,
        },
    )
    .unwrap();
    let again = h.get(&path, &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, s3edge_testbed::sample_file(FileKind::Processed));
    assert_eq!(h.cache().stats().negative_hits, 0);
}

#[tokio::test]
async fn overwritten_object_is_new_after_the_ttl_never_a_mix() {
    let h = Harness::start_with(|c| {
        small_chunks(c);
        c.cache.ttl = Duration::from_millis(500);
        c.cache.stale_while_revalidate = Duration::ZERO;
    })
    .await;
    let key = format!("{}/changing.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
    let old = pattern(300_000, 1);
    let new = pattern(300_000, 2);
    h.put("eu1", &key, old.clone()).await;
    let path = format!("/eu1/{key}");
    // Cache only the first chunk of the old version.
    let first = h.get(&path, &[("range", "bytes=0-99")]).await;
    assert_eq!(first.body, old.slice(0..100));
    h.put("eu1", &key, new.clone()).await;
    // Within the TTL the old metadata stands; the missing chunks are fetched with If-Match and
    // fail on the new version: the response is cut rather than spliced.
    let url = format!("http://{}{path}", h.addr);
    let request = http::Request::get(url)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = within(h.client.request(request)).await.unwrap();
    let status = response.status();
    let collected = within(http_body_util::BodyExt::collect(response.into_body())).await;
    match status {
        // The first missing chunk failed before the head went out: a clean 502.
        StatusCode::BAD_GATEWAY => {}
        // Or the head went out: the body is the whole of one version, or it is cut.
        StatusCode::OK => {
            if let Ok(bytes) = collected {
                let bytes = bytes.to_bytes();
                assert!(bytes == old || bytes == new, "a spliced body was served");
            }
        }
        other => panic!("unexpected {other}"),
    }
    // After the TTL (or the dropped metadata), only the new version is served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fresh = h.get(&path, &[]).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert!(fresh.body == new, "old bytes after the TTL");
    let tail = h.get(&path, &[("range", "bytes=-1000")]).await;
    assert!(tail.body == new.slice(new.len() - 1000..));
}

#[tokio::test]
async fn revalidation_with_304_refetches_no_bytes() {
    let h = Harness::start_with(|c| {
        c.cache.ttl = Duration::from_millis(300);
        c.cache.stale_while_revalidate = Duration::ZERO;
    })
    .await;
    let path = sample_path("eu1", FileKind::Processed);
    let first = h.get(&path, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = eu1(&h).stats.requests();
    let second = h.get(&path, &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        second.body,
        s3edge_testbed::sample_file(FileKind::Processed)
    );
    assert_eq!(
        second.header("cache-status"),
        Some("s3edge; fwd=stale; fwd-status=304; stored")
    );
    assert_eq!(eu1(&h).stats.requests() - before, 1);
    let seen = eu1(&h).stats.recent();
    let revalidation = seen.last().unwrap();
    assert_eq!(
        revalidation.headers["if-none-match"],
        first.header("etag").unwrap()
    );
    let stats = h.cache().stats();
    assert_eq!(stats.revalidated_unchanged, 1, "{stats:?}");
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_in_the_background() {
    let h = Harness::start_with(|c| {
        c.cache.ttl = Duration::from_millis(300);
        c.cache.stale_while_revalidate = Duration::from_secs(30);
    })
    .await;
    let path = sample_path("eu2", FileKind::Snapshot);
    h.get(&path, &[]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = h.backends.backends[1].stats.requests();
    let stale = h.get(&path, &[]).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(
        stale
            .header("cache-status")
            .unwrap()
            .contains("detail=stale-while-revalidate"),
        "{:?}",
        stale.header("cache-status")
    );
    assert_eq!(stale.body, s3edge_testbed::sample_file(FileKind::Snapshot));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.cache().stats().revalidated_unchanged == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no background revalidation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.backends.backends[1].stats.requests() - before, 1);
    let fresh = h.get(&path, &[]).await;
    assert!(
        fresh
            .header("cache-status")
            .unwrap()
            .starts_with("s3edge; hit; ttl=")
    );
}

#[tokio::test]
async fn negative_cache_expires() {
    let h = Harness::start_with(|c| c.cache.negative_ttl = Duration::from_millis(400)).await;
    let key = format!("{}/later.jpg", s3edge_testbed::SAMPLE_ACCOUNT);
    let path = format!("/eu1/{key}");
    let before = eu1(&h).stats.requests();
    assert_eq!(h.get(&path, &[]).await.status, StatusCode::NOT_FOUND);
    let cached = h.get(&path, &[]).await;
    assert_eq!(cached.status, StatusCode::NOT_FOUND);
    assert!(
        cached
            .header("cache-status")
            .unwrap()
            .starts_with("s3edge; hit")
    );
    assert_eq!(
        eu1(&h).stats.requests() - before,
        1,
        "the 404 was not cached"
    );
    h.put("eu1", &key, Bytes::from_static(b"jpeg")).await;
    assert_eq!(h.get(&path, &[]).await.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found = h.get(&path, &[]).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(&found.body[..], b"jpeg");
}

#[tokio::test]
async fn stale_if_error_with_the_backend_stopped() {
    let h = Harness::start_with(|c| {
        c.cache.ttl = Duration::from_millis(300);
        c.cache.stale_while_revalidate = Duration::ZERO;
        c.cache.stale_if_error = Duration::from_secs(60);
    })
    .await;
    let path = sample_path("us2", FileKind::Filmstrip);
    assert_eq!(h.get(&path, &[]).await.status, StatusCode::OK);
    h.backends.backends[3].stop();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stale = h.get(&path, &[]).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, s3edge_testbed::sample_file(FileKind::Filmstrip));
    assert!(
        stale
            .header("cache-status")
            .unwrap()
            .contains("stale-if-error")
    );
    // Without a cached copy the same failure is a 502.
    let uncached = h.get(&sample_path("us2", FileKind::Raw), &[]).await;
    assert_eq!(uncached.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn purge_drops_a_file_a_recording_or_an_account() {
    let h = Harness::start().await;
    let account = s3edge_testbed::SAMPLE_ACCOUNT;
    for kind in FileKind::ALL {
        h.get(&sample_path("eu1", kind), &[]).await;
    }
    let (admin_addr, _stop) = crate::common::start_admin(&h, Some("a-long-admin-token-1234")).await;
    let admin = |method: &str, path: &str, token: Option<&str>| {
        let url = format!("http://{admin_addr}{path}");
        let mut request = http::Request::builder().method(method).uri(url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let client = h.client.clone();
        async move {
            let response = within(client.request(request)).await.unwrap();
            response.status()
        }
    };
    let token = Some("a-long-admin-token-1234");
    let file = format!("/cache/eu1/{account}/{}.jpg", s3edge_testbed::SAMPLE_NAME);
    assert_eq!(admin("DELETE", &file, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        admin("DELETE", &file, Some("wrong")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(admin("DELETE", &file, token).await, StatusCode::OK);
    h.cache().sync().await;
    let h = &h;
    let status_of = |kind| {
        let path = sample_path("eu1", kind);
        async move {
            h.get(&path, &[])
                .await
                .header("cache-status")
                .unwrap()
                .to_string()
        }
    };
    assert!(status_of(FileKind::Snapshot).await.contains("fwd=miss"));
    assert!(status_of(FileKind::Processed).await.contains("hit"));

    let recording = format!("/cache/eu1/{account}/{}", s3edge_testbed::SAMPLE_NAME);
    assert_eq!(admin("DELETE", &recording, token).await, StatusCode::OK);
    h.cache().sync().await;
    for kind in FileKind::ALL {
        assert!(status_of(kind).await.contains("fwd=miss"), "{kind:?}");
    }
    assert_eq!(
        admin("DELETE", &format!("/cache/eu1/{account}"), token).await,
        StatusCode::OK
    );
    h.cache().sync().await;
    assert!(status_of(FileKind::Raw).await.contains("fwd=miss"));
    assert_eq!(
        admin("DELETE", "/cache/eu9/x", token).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin("DELETE", "/cache/eu1/../x", token).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(admin("GET", "/healthz", token).await, StatusCode::OK);
    assert_eq!(admin("GET", "/metrics", token).await, StatusCode::OK);
}

/// A gateway whose cache holds `capacity` bytes in small chunks.
async fn small_cache(capacity: u64) -> Harness {
    Harness::start_with(|c| {
        small_chunks(c);
        c.cache.capacity = capacity;
    })
    .await
}

#[tokio::test]
async fn capacity_holds_after_four_times_capacity_passed_through() {
    let capacity = 2 * 1024 * 1024;
    let h = small_cache(capacity).await;
    let mut total = 0u64;
    for i in 0..16 {
        let body = pattern(512 * 1024 + i, i as u64 + 100);
        let key = format!("{}/fill-{i}.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
        h.put("eu1", &key, body.clone()).await;
        let reply = h.get(&format!("/eu1/{key}"), &[]).await;
        assert!(reply.body == body);
        total += body.len() as u64;
    }
    assert!(total >= 4 * capacity);
    let cache = h.cache();
    cache.sync().await;
    let stats = cache.stats();
    assert!(
        stats.bytes <= capacity,
        "{} bytes held, capacity {capacity}",
        stats.bytes
    );
    assert!(stats.evictions > 0, "{stats:?}");
}

#[tokio::test]
async fn reused_chunk_buffers_never_show_the_bytes_they_held_before() {
    let capacity = 2 * 1024 * 1024;
    let h = small_cache(capacity).await;
    // Every object a whole number of chunks but one (its short last chunk gets a buffer of
    // its own), each with other bytes: a reused buffer holding old bytes would show.
    let mut objects = Vec::new();
    for i in 0..24u64 {
        let len = if i == 7 { 300 * 1024 + 5 } else { 512 * 1024 };
        let body = pattern(usize::try_from(len).unwrap(), i + 500);
        let key = format!("{}/reuse-{i}.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
        h.put("eu1", &key, body.clone()).await;
        let reply = h.get(&format!("/eu1/{key}"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body == body, "object {i} on its miss");
        objects.push((key, body));
    }
    let stats = h.cache().stats();
    assert!(stats.evictions > 0, "{stats:?}");
    assert!(stats.buffers_reused > 0, "no buffer was reused: {stats:?}");
    // At most a 16th of the capacity is kept.
    assert!(stats.pool_bytes <= capacity / 16, "{stats:?}");
    // Read again (from what the cache kept of them, filled into reused buffers, or fetched
    // anew): exact bytes, whole and in ranges that cross chunks.
    for (key, body) in objects.iter().rev().take(4) {
        let reply = h.get(&format!("/eu1/{key}"), &[]).await;
        assert!(reply.body == *body);
        let reply = h
            .get(&format!("/eu1/{key}"), &[("range", "bytes=65000-200000")])
            .await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
        assert!(reply.body == body.slice(65000..200001));
    }
}

#[tokio::test]
async fn a_prefaulted_cache_fills_from_its_pool_with_exact_bytes() {
    let capacity = 2 * 1024 * 1024;
    let h = Harness::start_with(|c| {
        small_chunks(c);
        c.cache.capacity = capacity;
        c.cache.prefault = true;
    })
    .await;
    // The background thread touches the whole capacity's buffers.
    within(async {
        while h.cache().stats().pool_bytes < capacity {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for i in 0..3u64 {
        let body = pattern(256 * 1024, i + 900);
        let key = format!("{}/prefault-{i}.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
        h.put("eu1", &key, body.clone()).await;
        for _ in 0..2 {
            let reply = h.get(&format!("/eu1/{key}"), &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(reply.body == body, "object {i}");
        }
        let reply = h
            .get(&format!("/eu1/{key}"), &[("range", "bytes=60000-70000")])
            .await;
        assert!(reply.body == body.slice(60000..70001));
    }
    let stats = h.cache().stats();
    // Every whole chunk (12 of them) took a kept buffer, its fill's copy too when it came in
    // pieces: nothing new was allocated for them.
    assert!(stats.buffers_reused >= 12, "{stats:?}");
    assert!(stats.pool_bytes <= capacity, "{stats:?}");
}

#[tokio::test]
async fn a_seek_fetches_only_the_chunks_it_covers() {
    let h = Harness::start_with(small_chunks).await;
    let body = pattern(4 * 1024 * 1024, 5);
    let key = format!("{}/long_raw.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
    h.put("eu1", &key, body.clone()).await;
    let reply = h
        .get(
            &format!("/eu1/{key}"),
            &[("range", "bytes=3000000-3000099")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert!(reply.body == body.slice(3_000_000..3_000_100));
    let seen = eu1(&h).stats.recent();
    let range = seen.last().unwrap().headers["range"]
        .to_str()
        .unwrap()
        .to_string();
    let chunk_start = 3_000_000 / (64 * 1024) * (64 * 1024);
    assert!(
        range.starts_with(&format!("bytes={chunk_start}-")),
        "{range}"
    );
}

#[tokio::test]
async fn objects_over_the_size_limit_stream_through() {
    let h = Harness::start_with(|c| c.cache.max_object_size = 100 * KIB).await;
    let path = sample_path("eu1", FileKind::Raw);
    let raw = s3edge_testbed::sample_file(FileKind::Raw);
    assert!(raw.len() as u64 > 100 * KIB);
    for _ in 0..2 {
        let reply = h.get(&path, &[("range", "bytes=1000-")]).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
        assert!(reply.body == raw.slice(1000..));
        assert_eq!(
            reply.header("cache-status"),
            Some("s3edge; fwd=bypass; detail=too-large")
        );
    }
    // Only the metadata is kept: the second request went straight to the backend once.
    let before = eu1(&h).stats.requests();
    h.get(&path, &[]).await;
    assert_eq!(eu1(&h).stats.requests() - before, 1);
    let stats = h.cache().stats();
    assert_eq!(stats.chunks_stored, 0, "{stats:?}");
    assert!(stats.bypassed >= 3);
}

#[tokio::test]
async fn head_miss_asks_the_backend_and_head_hit_does_not() {
    let h = Harness::start().await;
    let path = sample_path("eu1", FileKind::Processed);
    let len = s3edge_testbed::sample_file(FileKind::Processed)
        .len()
        .to_string();
    let before = eu1(&h).stats.requests();
    let miss = h.send(http::Method::HEAD, &path, &[]).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.header("content-length"), Some(len.as_str()));
    let seen = eu1(&h).stats.recent();
    assert_eq!(seen.last().unwrap().method, http::Method::HEAD);
    assert_eq!(eu1(&h).stats.requests() - before, 1);
    h.get(&path, &[]).await;
    let before = eu1(&h).stats.requests();
    let hit = h.send(http::Method::HEAD, &path, &[]).await;
    assert_eq!(hit.header("content-length"), Some(len.as_str()));
    assert!(hit.header("cache-status").unwrap().contains("hit"));
    assert_eq!(eu1(&h).stats.requests(), before);
}

#[tokio::test]
async fn a_chunk_that_cannot_be_fetched_is_a_clean_502() {
    let h = Harness::start_with(small_chunks).await;
    let body = pattern(20 * 64 * 1024, 9);
    let key = format!("{}/partly.mp4", s3edge_testbed::SAMPLE_ACCOUNT);
    h.put("eu1", &key, body.clone()).await;
    let path = format!("/eu1/{key}");
    // The first request stores the metadata and the first 16 chunks.
    let first = h.get(&path, &[("range", "bytes=0-99")]).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.cache().stats().chunks_stored < 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first run was not stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eu1(&h).stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cached = h.get(&path, &[("range", "bytes=1000000-1000099")]).await;
    assert_eq!(cached.status, StatusCode::PARTIAL_CONTENT);
    assert!(cached.body == body.slice(1_000_000..1_000_100));
    // Chunk 18 was never fetched and cannot be now: an honest 502 before any byte.
    let missing = h.get(&path, &[("range", "bytes=1200000-1200099")]).await;
    assert_eq!(missing.status, StatusCode::BAD_GATEWAY);
    assert_eq!(&missing.body[..], b"bad gateway\n");
}
