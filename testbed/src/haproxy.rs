//! A real HAProxy running the shipped `config/haproxy.cfg`, its `bind` and `server` lines
//! replaced by a test's or a bench's loopback ports (the fleet test and the fleet bench).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped configuration.
const SHIPPED: &str = include_str!("../../config/haproxy.cfg");

/// HAProxy in front of edges; killed on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    /// Its frontend.
    pub addr: SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped file with the frontend on `port` and one server per `(public, admin)` pair
/// (named edge1, edge2, ...), health-checked on the admin port; `round_robin` replaces the
/// consistent hash (the bench's comparison layout). No runtime socket, logs only emergencies.
pub fn config(port: u16, edges: &[(SocketAddr, SocketAddr)], round_robin: bool) -> String {
    let mut cfg = String::new();
    for line in SHIPPED.lines() {
        let t = line.trim_start();
        if t.starts_with("server ") || t.starts_with("stats socket") {
            continue;
        }
        if t.starts_with("bind ") {
            cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if t.starts_with("log stdout") {
            cfg.push_str("    log stdout format raw local0 emerg\n");
        } else if round_robin && t.starts_with("hash-type") {
            continue;
        } else if round_robin && t.starts_with("balance ") {
            cfg.push_str("    balance roundrobin\n");
        } else {
            cfg.push_str(line);
            cfg.push('\n');
        }
    }
    for (i, (public, admin)) in edges.iter().enumerate() {
        cfg.push_str(&format!(
            "    server edge{} {public} check port {}\n",
            i + 1,
            admin.port()
        ));
    }
    cfg
}

impl Haproxy {
    /// Writes [`config`] into `dir` and starts HAProxy on it; returns once the frontend
    /// accepts connections. HAProxy checks a server on its own address: each pair's public
    /// and admin addresses must share an IP.
    pub fn start(
        dir: &Path,
        edges: &[(SocketAddr, SocketAddr)],
        round_robin: bool,
    ) -> std::io::Result<Haproxy> {
        if edges
            .iter()
            .any(|(public, admin)| public.ip() != admin.ip())
        {
            return Err(std::io::Error::other(
                "an edge's public and admin addresses differ in IP",
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let path = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&path, config(port, edges, round_robin))?;
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut haproxy = Haproxy { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || !matches!(haproxy.child.try_wait(), Ok(None)) {
                return Err(std::io::Error::other(format!(
                    "haproxy did not start on {}",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(haproxy)
    }
}
