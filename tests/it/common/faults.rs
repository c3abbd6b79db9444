//! A misbehaving backend for fault tests: a TCP proxy on `127.0.0.1:0` in front of a real
//! s3s backend that, per connection, passes traffic, answers an error status, resets, hangs,
//! cuts the response after some bytes, or trickles it. The bytes it does pass are the real
//! backend's, so signatures are still verified.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the next connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards both ways.
    Pass,
    /// Reads the request and answers this status (S3 XML error body, then closes).
    Status(u16),
    /// Reads the request and closes the connection without an answer.
    Reset,
    /// Reads the request and never answers (the socket stays open).
    Hang,
    /// Forwards, but closes both sides after this many response bytes.
    CutAfter(usize),
    /// Forwards the response in pieces of `bytes`, one every `every`.
    Trickle { bytes: usize, every: Duration },
}

/// The proxy; dropping it stops accepting (open connections end with their tasks).
pub struct FaultProxy {
    /// Where the gateway should connect.
    pub addr: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    connections: Arc<AtomicU64>,
    /// Bumped on every change of plan: open connections close, so the gateway's pooled
    /// connections meet the new fault too.
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Plan {
    /// Faults for the next connections, in order; then `then` for the rest.
    next: std::collections::VecDeque<Fault>,
    then: Fault,
}

impl FaultProxy {
    /// Starts a proxy to `target` that passes traffic. Callable from a sync closure inside
    /// the test's runtime (it binds with std and hands the socket to tokio).
    pub fn start(target: SocketAddr) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let plan = Arc::new(Mutex::new(Plan {
            next: Default::default(),
            then: Fault::Pass,
        }));
        let connections = Arc::new(AtomicU64::new(0));
        let (generation, generation_rx) = tokio::sync::watch::channel(0u64);
        let task = {
            let plan = plan.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let fault = {
                        let mut plan = plan.lock().unwrap();
                        let then = plan.then;
                        plan.next.pop_front().unwrap_or(then)
                    };
                    let mut changed = generation_rx.clone();
                    changed.mark_unchanged();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = handle(client, target, fault) => {}
                            _ = changed.changed() => {}
                        }
                    });
                }
            })
        };
        FaultProxy {
            addr,
            plan,
            connections,
            generation,
            task,
        }
    }

    /// Applies `fault` to every new connection.
    pub fn set(&self, fault: Fault) {
        let mut plan = self.plan.lock().unwrap();
        plan.next.clear();
        plan.then = fault;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Applies `faults` to the next connections, one each, then `then`.
    pub fn script(&self, faults: &[Fault], then: Fault) {
        let mut plan = self.plan.lock().unwrap();
        plan.next = faults.iter().copied().collect();
        plan.then = then;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// The endpoint URL for a region config.
    pub fn endpoint(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(mut client: TcpStream, target: SocketAddr, fault: Fault) {
    let _ = client.set_nodelay(true);
    match fault {
        Fault::Status(status) => {
            if read_head(&mut client).await {
                // The code S3 sends with that status.
                let code = match status {
                    403 => "AccessDenied",
                    404 => "NoSuchBucket",
                    500 => "InternalError",
                    _ => "SlowDown",
                };
                let body = format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code></Error>");
                let reply = format!(
                    "HTTP/1.1 {status} Injected\r\ncontent-type: application/xml\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(reply.as_bytes()).await;
            }
        }
        Fault::Reset => {
            let _ = read_head(&mut client).await;
        }
        Fault::Hang => {
            let _ = read_head(&mut client).await;
            // Bounded: the test ends long before.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Fault::Pass | Fault::CutAfter(_) | Fault::Trickle { .. } => {
            let Ok(upstream) = TcpStream::connect(target).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            let (mut client_read, mut client_write) = client.into_split();
            let (mut upstream_read, mut upstream_write) = upstream.into_split();
            let requests = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
            });
            let mut sent = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let want = match fault {
                    Fault::CutAfter(limit) => (limit - sent).min(buf.len()),
                    Fault::Trickle { bytes, .. } => bytes.min(buf.len()),
                    _ => buf.len(),
                };
                if want == 0 {
                    break;
                }
                let n = match upstream_read.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent += n;
                if let Fault::Trickle { every, .. } = fault {
                    tokio::time::sleep(every).await;
                }
            }
            requests.abort();
            // Dropping both halves closes the client connection short of the body.
        }
    }
}

/// Reads until the end of a request head (GET/HEAD have no body); false on EOF.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut seen = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}
