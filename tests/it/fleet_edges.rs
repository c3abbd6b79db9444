//! Edges behind a real HAProxy on `config/haproxy.cfg`: a recording's four files land on one
//! edge, and an edge cut off from the push node and from HAProxy's health checks (its cache
//! still warm) never serves a recording deleted meanwhile: it gets the purge it missed before
//! HAProxy sends it traffic again.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use s3edge::route::FileKind;
use s3edge_testbed::haproxy::Haproxy;
use serde_json::json;

use crate::common::faults::{Fault, FaultProxy};
use crate::common::within;
use crate::delete::{bind_admin, delete, edge, get_showing, start_edge};
use crate::push::{PushHarness, pattern};

/// GET through HAProxy: status, the answering edge, body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, Bytes) {
    get_showing(addr, path, "x-s3edge-edge").await
}

fn small(i: usize) -> Vec<(FileKind, Bytes)> {
    FileKind::ALL
        .iter()
        .enumerate()
        .map(|(k, kind)| (*kind, pattern(4096 + k * 100 + i, (i + k) as u8)))
        .collect()
}

// Multi-threaded: the fault proxy and the edges keep serving while HAProxy is waited on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_edge_never_serves_a_recording_deleted_while_it_was_cut_off() {
    let (admin1, url1) = bind_admin().await;
    let (admin2, real2) = bind_admin().await;
    let (admin3, url3) = bind_admin().await;
    let admin2_addr: SocketAddr = real2.trim_start_matches("http://").parse().unwrap();
    // Edge 2's admin listener is reached through a proxy: cutting it cuts both the push
    // node's purges and HAProxy's health checks, while its cache stays warm.
    let cut = FaultProxy::start(admin2_addr);
    let url2 = cut.endpoint().to_string().trim_end_matches('/').to_string();
    let admins = [url1.clone(), url2.clone(), url3.clone()];
    let h = PushHarness::start(move |c| {
        c.push.as_mut().unwrap().edges = admins.iter().map(|a| edge(a)).collect();
    })
    .await;
    let (e1, _s1) = start_edge(&h, admin1).await;
    let (e2, _s2) = start_edge(&h, admin2).await;
    let (e3, _s3) = start_edge(&h, admin3).await;
    let admin_of = |url: &str| -> SocketAddr { url.trim_start_matches("http://").parse().unwrap() };
    let dir = tempfile::tempdir().unwrap();
    let haproxy = Haproxy::start(
        dir.path(),
        &[
            (e1.addr, admin_of(&url1)),
            (e2.addr, admin_of(&url2)),
            (e3.addr, admin_of(&url3)),
        ],
        false,
    )
    .expect("haproxy (apt install haproxy; .ci/setup does it)");
    h.put_env("fleet", json!({"account": "ACCF", "region": "eu1"}))
        .await;
    // Twenty recordings: each one's four files are answered by one edge, twice (a hit).
    let names: Vec<String> = (0..20).map(|i| format!("rec-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        h.push_recording("fleet", name, &small(i)).await;
    }
    for name in &names {
        h.wait_for("fleet", name, "pushed").await;
    }
    let mut owner: HashMap<String, String> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let mut edges = BTreeSet::new();
        for _ in 0..2 {
            for (kind, body) in small(i) {
                let path = format!("/eu1/ACCF/{name}{}", kind.suffix());
                let (status, edge, got) = get(haproxy.addr, &path).await;
                assert_eq!(status, StatusCode::OK, "{path}");
                assert_eq!(got, body, "{path}");
                edges.insert(edge);
            }
        }
        assert_eq!(edges.len(), 1, "{name} answered by {edges:?}");
        owner.insert(name.clone(), edges.into_iter().next().unwrap());
    }
    let spread: BTreeSet<&String> = owner.values().collect();
    assert_eq!(spread.len(), 3, "twenty recordings all on {spread:?}");
    let victim = names.iter().find(|n| owner[*n] == "edge2").unwrap().clone();

    // Edge 2 is cut off; HAProxy takes it out (fall 2 x inter 1s).
    cut.set(Fault::Reset);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, answer) = delete(&h, &format!("/v1/recordings/fleet/{victim}")).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["deleted"].as_array().unwrap().len(), 4, "{answer}");
    let purged: HashMap<String, bool> = answer["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let admin = e["admin"].as_str().unwrap().to_string();
            (admin, e["purged"].as_bool().unwrap())
        })
        .collect();
    let want: HashMap<String, bool> = HashMap::from([
        (url1.clone(), true),
        (url2.clone(), false),
        (url3.clone(), true),
    ]);
    assert_eq!(purged, want, "{answer}");
    // Edge 2 still holds it, but gets no traffic.
    let direct = format!("/eu1/ACCF/{victim}.mp4");
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let response = within(client.get(format!("http://{}{direct}", e2.addr).parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "edge 2's cache was warm");

    // It comes back. From the first moment on, HAProxy answers 404 for every file of the
    // deleted recording, and edge 2 answers its own recordings again once it is back in.
    cut.set(Fault::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served_by = BTreeSet::new();
    let other = names
        .iter()
        .find(|n| owner[*n] == "edge2" && **n != victim)
        .cloned();
    while Instant::now() < deadline {
        for kind in FileKind::ALL {
            let path = format!("/eu1/ACCF/{victim}{}", kind.suffix());
            let (status, edge, _) = get(haproxy.addr, &path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path} from {edge}");
        }
        if let Some(other) = &other {
            let (status, edge, _) = get(haproxy.addr, &format!("/eu1/ACCF/{other}.jpg")).await;
            assert_eq!(status, StatusCode::OK);
            served_by.insert(edge);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if other.is_some() {
        assert!(
            served_by.contains("edge2"),
            "edge 2 never came back: {served_by:?}"
        );
    }
    // And directly: edge 2 was purged.
    let response = within(client.get(format!("http://{}{direct}", e2.addr).parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    drop(haproxy);
    let _ = (&e1, &e3);
}
