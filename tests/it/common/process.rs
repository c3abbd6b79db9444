//! The `s3edge` binary as a child process: config files, its log, its address.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use s3edge::config::Config;

/// The gateway binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_s3edge");

/// Writes the config for `s3edge serve` with the cache off: these tests are about streaming
/// through, and the cache would keep the bytes.
pub fn write_config(dir: &Path, config: &Config, grace: Duration) -> std::path::PathBuf {
    let mut config = config.clone();
    config.cache.enabled = false;
    write_config_keeping_cache(dir, &config, grace)
}

/// Writes the config for `s3edge serve` as it is (cache settings included).
pub fn write_config_keeping_cache(
    dir: &Path,
    config: &Config,
    grace: Duration,
) -> std::path::PathBuf {
    let mut config = config.clone();
    config.http_listeners = vec!["127.0.0.1:0".parse().unwrap()];
    config.shutdown_grace = grace;
    let path = dir.join("s3edge.toml");
    std::fs::write(&path, s3edge_testbed::render_toml(&config)).unwrap();
    path
}

/// A spawned `s3edge` process, killed and reaped when dropped: a failed assert never leaves
/// it running.
pub struct Spawned(Child);

impl Spawned {
    /// Guards a child started by the test itself.
    pub fn new(child: Child) -> Self {
        Spawned(child)
    }
}

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `s3edge serve` and reads its listening address from the JSON log.
pub fn spawn_gateway(config: &Path) -> (Spawned, SocketAddr) {
    let (child, addr, _log) = spawn_gateway_with_log(config);
    (child, addr)
}

/// Like [`spawn_gateway`], also handing out every later log line.
pub fn spawn_gateway_with_log(
    config: &Path,
) -> (Spawned, SocketAddr, std::sync::mpsc::Receiver<String>) {
    spawn_gateway_env(config, &[])
}

/// Like [`spawn_gateway_with_log`], with extra environment variables.
pub fn spawn_gateway_env(
    config: &Path,
    env: &[(&str, &str)],
) -> (Spawned, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut child = Spawned(
        Command::new(BIN)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"listening\"")
                && let Some(start) = line.find("\"addr\":\"")
            {
                let rest = &line[start + 8..];
                let addr = rest[..rest.find('"').unwrap()].to_string();
                let _ = tx.send(addr);
            }
            let _ = log_tx.send(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("gateway did not report its address");
    (child, addr.parse().unwrap(), log_rx)
}

/// Waits for a log line containing `needle`.
pub fn wait_for_log(log: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no log line with `{needle}`; the log:\n{}", seen.join("\n")),
        }
    }
}

/// Sends `kill -{signal}` to the gateway.
pub fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} failed");
}

/// A GET on a fresh HTTP/1.1 connection (Host `edge.test`), returning as soon as the head
/// arrives.
pub async fn get_fresh(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> hyper::Response<hyper::body::Incoming> {
    let stream = super::within(tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::get(path).header("host", "edge.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    super::within(sender.send_request(request)).await.unwrap()
}
