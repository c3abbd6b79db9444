//! The demo as a newcomer meets it: every URL it prints answers (the files, the admin
//! listener's health, readiness, metrics and purge), and a taken default port falls back to a
//! free one and says so.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use s3edge_testbed::demo::{Demo, DemoOptions};

use crate::common::{Reply, within};

/// Sends one request to an `http://host:port/path` URL.
async fn fetch(method: Method, url: &str, host: Option<&str>) -> Reply {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = within(client.request(request.body(Default::default()).unwrap()))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: within(body.collect()).await.unwrap().to_bytes(),
    }
}

/// Every `http://…` URL of a banner line, with the `Host` and method the line's curl uses.
fn urls(banner: &str) -> Vec<(Method, String, Option<String>)> {
    banner
        .lines()
        // The indented lines are the ones to try.
        .filter(|line| line.starts_with("  "))
        .filter_map(|line| {
            let start = line.find("http://")?;
            let url = line[start..].split_whitespace().next()?.to_string();
            let host = line
                .split("-H 'Host: ")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .map(str::to_string);
            let method = if line.contains("-X DELETE") {
                Method::DELETE
            } else if line.contains("curl -sI") {
                Method::HEAD
            } else {
                Method::GET
            };
            Some((method, url, host))
        })
        .collect()
}

#[tokio::test]
async fn every_printed_url_answers_including_the_admin_listener() {
    let demo = Demo::start(DemoOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        default_listen: s3edge_testbed::demo::DEFAULT_LISTEN,
        data: None,
    })
    .await
    .unwrap();
    let banner = demo.banner();
    let admin = demo.admin;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(demo.run(async {
        let _ = stopped.await;
    }));
    let urls = urls(&banner);
    let admin_urls: Vec<_> = urls
        .iter()
        .filter(|(_, url, _)| url.contains(&admin.to_string()))
        .collect();
    let paths: Vec<&str> = admin_urls
        .iter()
        .map(|(_, url, _)| url.rsplit_once(&admin.to_string()).unwrap().1)
        .collect();
    assert_eq!(paths.len(), 4, "{banner}");
    assert!(
        paths[..3] == ["/healthz", "/readyz", "/metrics"],
        "{banner}"
    );
    assert!(paths[3].starts_with("/cache/eu1/"), "{banner}");
    // The files first, then the admin URLs (the purge last), as a reader would try them.
    assert!(urls.len() >= 4 + 4 + 4 + 1 + 4, "{banner}");
    for (method, url, host) in &urls {
        let reply = fetch(method.clone(), url, host.as_deref()).await;
        assert_eq!(reply.status, StatusCode::OK, "{method} {url} host={host:?}");
        if url.ends_with("/metrics") {
            assert!(
                String::from_utf8_lossy(&reply.body).contains("s3edge_requests_total"),
                "metrics body"
            );
        }
        if url.ends_with("/healthz") {
            assert_eq!(&reply.body[..], b"ok\n");
        }
    }
    let _ = stop.send(());
    within(running).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_taken_default_port_falls_back_to_a_free_one_and_says_so() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr: SocketAddr = taken.local_addr().unwrap();
    let demo = Demo::start(DemoOptions {
        listen: None,
        default_listen: taken_addr,
        data: None,
    })
    .await
    .unwrap();
    assert_eq!(demo.fallback_from, Some(taken_addr));
    assert_ne!(demo.addr, taken_addr);
    let banner = demo.banner();
    assert!(
        banner.contains(&format!(
            "{taken_addr} is in use: serving on {} instead (choose with --listen).",
            demo.addr
        )),
        "{banner}"
    );
    // An address asked for explicitly is not replaced: the error names it and the flag.
    let asked = Demo::start(DemoOptions {
        listen: Some(taken_addr),
        default_listen: taken_addr,
        data: None,
    })
    .await;
    let error = asked.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.contains(&format!("cannot listen on {taken_addr}")) && error.contains("--listen"),
        "{error}"
    );
}
