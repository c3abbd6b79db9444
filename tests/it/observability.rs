//! The admin listener as an operator's probes and Prometheus see it: `/healthz`,
//! `/readyz` (each region's backend asked), and `/metrics` after real traffic.

use std::time::{Duration, Instant};

use crate::common::{Harness, Reply, sample_path, start_admin, within};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use s3edge::route::FileKind;

async fn admin_get(h: &Harness, addr: std::net::SocketAddr, path: &str) -> Reply {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within(h.client.request(request)).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: within(body.collect()).await.unwrap().to_bytes(),
    }
}

/// Scrapes until `sample` has `value` (the access record is counted when the body ends,
/// which can be just after the client has read it).
async fn wait_for_sample(
    h: &Harness,
    addr: std::net::SocketAddr,
    sample: &str,
    value: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8(admin_get(h, addr, "/metrics").await.body.to_vec()).unwrap();
        if text.lines().any(|l| l == format!("{sample} {value}")) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no `{sample} {value}` in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_after_traffic() {
    let h = Harness::start().await;
    let (admin, _stop) = start_admin(&h, None).await;
    let health = admin_get(&h, admin, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(&health.body[..], b"ok\n");

    let ready = admin_get(&h, admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(&ready.body[..], b"eu1: ok\neu2: ok\nus1: ok\nus2: ok\n");

    let path = sample_path("eu1", FileKind::Snapshot);
    let miss = h.get(&path, &[]).await;
    assert_eq!(miss.status, StatusCode::OK);
    let hit = h.get(&path, &[]).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(h.get("/eu1/nope", &[]).await.status, StatusCode::NOT_FOUND);

    let text = wait_for_sample(
        &h,
        admin,
        r#"s3edge_requests_total{region="eu1",status="200",cache="hit"}"#,
        "1",
    )
    .await;
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(r#"s3edge_requests_total{region="eu1",status="200",cache="miss"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"s3edge_requests_total{region="-",status="404",cache="none"} 1"#),
        "{text}"
    );
    let bytes = 2 * miss.body.len();
    assert!(
        has(&format!(
            r#"s3edge_response_bytes_total{{region="eu1"}} {bytes}"#
        )),
        "{text}"
    );
    assert!(
        has(r#"s3edge_upstream_response_seconds_count{region="eu1"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"s3edge_upstream_in_flight{region="eu1"} 0"#),
        "{text}"
    );
    assert!(has(r#"s3edge_circuit_open{region="eu1"} 0"#), "{text}");
    assert!(has("s3edge_cache_hits_total 1"), "{text}");
    assert!(has("s3edge_cache_misses_total 1"), "{text}");
    assert!(has("s3edge_cache_hit_ratio 0.5"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("s3edge_cache_bytes ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("s3edge_open_connections ")),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    let scrape = admin_get(&h, admin, "/metrics").await;
    assert!(
        scrape
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        scrape.header("content-type")
    );
    // No credential ever appears in the exposition.
    let secret = &h.config.regions[0].credentials.secret_access_key;
    assert!(!String::from_utf8_lossy(&scrape.body).contains(secret.as_str()));
}

#[tokio::test]
async fn readiness_names_an_unreachable_region() {
    let (_refusing, closed_addr) = crate::common::refused_addr();
    for cache in [false, true] {
        let h = Harness::start_with(|c| {
            c.cache.enabled = cache;
            let us1 = c.regions.iter_mut().find(|r| r.name == "us1").unwrap();
            us1.endpoint = format!("http://{closed_addr}").parse().unwrap();
        })
        .await;
        let (admin, _stop) = start_admin(&h, None).await;
        let ready = admin_get(&h, admin, "/readyz").await;
        let body = String::from_utf8_lossy(&ready.body).to_string();
        if cache {
            // Files already cached can still be served stale: stay in rotation.
            assert_eq!(ready.status, StatusCode::OK, "{body}");
            assert!(body.contains("us1: unreachable, serving stale\n"), "{body}");
        } else {
            assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(body.contains("us1: unreachable\n"), "{body}");
        }
        assert!(body.contains("eu1: ok\n"), "{body}");
    }
}
