//! Hostile or broken clients: oversized heads (431), long URIs (414), slow headers, idle
//! keep-alive connections, and more connections than allowed. Raw TCP where the client
//! must misbehave in ways a well-behaved HTTP client cannot.

use std::time::{Duration, Instant};

use crate::common::{Harness, within};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads whatever arrives until the peer closes or `wait` passes; `None` means still open.
async fn read_until_close(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response head and a `content-length` body from a keep-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = within(stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before a full response");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .map_or(0, |v| v.trim().parse().unwrap());
            if seen.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let h = Harness::start().await;
    let before = h.upstream_requests();
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let filler = "a".repeat(20 * 1024);
    let request = format!("GET /eu1/x/y.mp4 HTTP/1.1\r\nhost: gw\r\nx-filler: {filler}\r\n\r\n");
    // The gateway may answer before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let reply = read_until_close(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection is closed after a 431");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 431"), "got: {text}");
    assert_eq!(h.upstream_requests(), before);
}

#[tokio::test]
async fn a_long_uri_gets_414_without_asking_the_backend() {
    let h = Harness::start().await;
    let before = h.upstream_requests();
    let path = format!("/eu1/{}/name.mp4", "a".repeat(3000));
    let reply = h.get(&path, &[]).await;
    assert_eq!(reply.status, StatusCode::URI_TOO_LONG);
    assert_eq!(&reply.body[..], b"uri too long\n");
    assert_eq!(h.upstream_requests(), before);
    // A long query string counts too, though it is never forwarded.
    let reply = h
        .get(&format!("/eu1/a/b.mp4?{}", "q".repeat(3000)), &[])
        .await;
    assert_eq!(reply.status, StatusCode::URI_TOO_LONG);
}

#[tokio::test]
async fn a_slow_header_client_is_disconnected() {
    let h =
        Harness::start_with(|c| c.limits.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream
        .write_all(b"GET /eu1/a/b.mp4 HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a slow-header client is cut off");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A client that never sends a byte is cut off the same way.
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    assert!(
        read_until_close(&mut silent, Duration::from_secs(5))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = Harness::start_with(|c| c.limits.keep_alive_idle = Duration::from_millis(400)).await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream
        .write_all(b"GET /nope HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let reply = read_response(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    // Still open for a next request right away...
    stream
        .write_all(b"GET /nope HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 404"));
    // ...and closed once idle for longer than the limit.
    let idle_from = Instant::now();
    let closed = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(closed, Some(Vec::new()), "closed without a byte");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(300) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let h = Harness::start_with(|c| c.limits.max_connections = 2).await;
    let first = TcpStream::connect(h.addr).await.unwrap();
    let _second = TcpStream::connect(h.addr).await.unwrap();
    // Let the gateway accept both.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.gateway.metrics().open_connections() < 2 {
        assert!(
            Instant::now() < deadline,
            "the two connections were not accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = TcpStream::connect(h.addr).await.unwrap();
    third
        .write_all(b"GET /nope HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection is not served while two are open"
    );
    assert_eq!(h.gateway.metrics().open_connections(), 2);
    drop(first);
    let reply = read_response(&mut third).await;
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
}
