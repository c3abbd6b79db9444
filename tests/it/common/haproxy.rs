//! A real HAProxy running `config/haproxy.cfg`, with this test's edges as its servers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// HAProxy in front of edges; killed on drop.
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

impl Haproxy {
    /// Starts HAProxy on `config/haproxy.cfg` in `dir`: the frontend on a free loopback port,
    /// one server per `(public, admin)` pair (named edge1, edge2, ...), health-checked on the
    /// admin port as the shipped file does.
    pub fn start(dir: &Path, edges: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/haproxy.cfg"),
        )
        .unwrap();
        let mut cfg = String::new();
        for line in shipped.lines() {
            let t = line.trim_start();
            if t.starts_with("server ") || t.starts_with("stats socket") {
                continue;
            }
            if t.starts_with("bind ") {
                cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            } else {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
        for (i, (public, admin)) in edges.iter().enumerate() {
            assert_eq!(
                public.ip(),
                admin.ip(),
                "HAProxy checks the server's address"
            );
            cfg.push_str(&format!(
                "    server edge{} {public} check port {}\n",
                i + 1,
                admin.port()
            ));
        }
        let path = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is not installed (apt install haproxy; .ci/setup does it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy { child, addr }
    }
}
