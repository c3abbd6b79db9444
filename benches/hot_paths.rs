//! Criterion micro-benchmarks of the hot pieces: route parsing, range arithmetic, and a cache
//! hit through `Cache::serve` (metadata lookup, preconditions, range, chunk slices).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use s3edge::cache::{Cache, Served};
use s3edge::conditional::{self, Validators};
use s3edge::config::Config;
use s3edge::range;
use s3edge::route::Router;
use s3edge::upstream::Upstream;
use s3edge_testbed::{self as demo, Backends};

fn routing(c: &mut Criterion) {
    let hosts: Vec<Vec<String>> = demo::REGIONS
        .iter()
        .map(|r| vec![r.host.to_string()])
        .collect();
    let router = Router::new(
        demo::REGIONS
            .iter()
            .zip(&hosts)
            .map(|(r, h)| (r.name, h.as_slice())),
    );
    let path = format!(
        "/{}/{}_filmstrip.jpg",
        demo::SAMPLE_ACCOUNT,
        demo::SAMPLE_NAME
    );
    let prefixed = format!("/us2{path}");
    c.bench_function("route/host form", |b| {
        b.iter(|| {
            router.resolve(
                black_box(Some("us2-addpipe.s3.us-east-1.amazonaws.com:443")),
                black_box(&path),
            )
        })
    });
    c.bench_function("route/path form", |b| {
        b.iter(|| router.resolve(black_box(Some("edge.example.com")), black_box(&prefixed)))
    });
    c.bench_function("route/rejected", |b| {
        b.iter(|| {
            router.resolve(
                black_box(Some("edge.example.com")),
                black_box("/eu1/../etc/passwd"),
            )
        })
    });
}

fn ranges(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("range", HeaderValue::from_static("bytes=1048576-2097151"));
    headers.insert(
        "if-range",
        HeaderValue::from_static("\"0123456789abcdef0123456789abcdef\""),
    );
    headers.insert("if-none-match", HeaderValue::from_static("\"x\", \"y\""));
    let validators = Validators {
        etag: "\"0123456789abcdef0123456789abcdef\"",
        last_modified: None,
    };
    c.bench_function("range/parse+resolve", |b| {
        b.iter(|| {
            range::parse_range(black_box(b"bytes=1048576-2097151")).map(|r| r.resolve(52_428_800))
        })
    });
    c.bench_function("range/preconditions+if-range", |b| {
        b.iter(|| {
            let p = conditional::evaluate(black_box(&headers), validators);
            (
                p,
                conditional::effective_range(black_box(&headers), validators),
            )
        })
    });
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cache, upstream, object, _backends) = rt.block_on(async {
        let backends = Backends::start(dir.path()).await.unwrap();
        let config = Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
        demo::upload_sample(&config.regions).await.unwrap();
        let upstream = Arc::new(
            Upstream::new(
                &config.regions[0],
                &config,
                &s3edge::metrics::Metrics::new(None),
            )
            .unwrap(),
        );
        let router = Router::new(
            config
                .regions
                .iter()
                .map(|r| (r.name.as_str(), r.hosts.as_slice())),
        );
        let path = format!("/eu1/{}/{}.jpg", demo::SAMPLE_ACCOUNT, demo::SAMPLE_NAME);
        let object = router.resolve(None, &path).unwrap();
        let cache = Cache::new(&config.cache);
        // Warm: the first serve fetches and stores.
        let _ = cache
            .serve(&upstream, &object, &Method::GET, &HeaderMap::new())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        (cache, upstream, object, backends)
    });
    let mut range = HeaderMap::new();
    range.insert("range", HeaderValue::from_static("bytes=100-4195"));
    for (name, headers) in [
        ("cache/hit whole snapshot", HeaderMap::new()),
        ("cache/hit range", range),
    ] {
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                match cache
                    .serve(&upstream, &object, &Method::GET, &headers)
                    .await
                    .unwrap()
                {
                    Served::Response(r, _) => black_box(r),
                    Served::Bypass(_) => unreachable!(),
                }
            })
        });
    }
}

criterion_group!(benches, routing, ranges, cache_hit);
criterion_main!(benches);
