//! A real PostgreSQL for the push tests: `initdb` + `postgres` from the apt package, on a
//! loopback port, in a temporary directory, stopped when the test process ends.
//!
//! `S3EDGE_TEST_DATABASE=postgres` runs the push and deletion tests on PostgreSQL (a fresh
//! database per service); without it they use SQLite. The fleet tests always use PostgreSQL.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use s3edge::config::Database;

/// One PostgreSQL server.
pub struct Postgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

static SHARED: OnceLock<Postgres> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A loopback port for a server that a test stops and starts again on it. It is taken below
/// the kernel's ephemeral range, where no listener bound to port 0 and no outgoing connection
/// can land while the server is down. A port from `bind(0)` could: a client retrying the
/// stopped server may even be given that very port and connect to itself (TCP simultaneous
/// open), and the restart then failed with "Address already in use". Never handed out twice.
fn restartable_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let below = ephemeral.saturating_sub(16384).max(1024)..ephemeral;
    for _ in 0..1000 {
        let port = fastrand::u16(below.clone());
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {below:?}");
}

/// The database the push tests use: SQLite, or a fresh PostgreSQL database when
/// `S3EDGE_TEST_DATABASE=postgres`.
pub fn test_database() -> Database {
    match std::env::var("S3EDGE_TEST_DATABASE").as_deref() {
        Ok("postgres") => Database::Postgres(shared().create_database()),
        Ok("sqlite") | Err(_) => Database::Sqlite,
        Ok(other) => panic!("S3EDGE_TEST_DATABASE={other:?}: use sqlite or postgres"),
    }
}

/// The server shared by this test process (started on first use).
pub fn shared() -> &'static Postgres {
    SHARED.get_or_init(Postgres::start)
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt install postgresql; .ci/setup does it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/postgres")
}

/// Runs `cmd` as the `postgres` user when this process is root (PostgreSQL refuses root).
fn as_postgres(mut cmd: Command) -> Command {
    if is_root() {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        use std::os::unix::process::CommandExt;
        cmd.uid(id("-u")).gid(id("-g"));
    }
    cmd
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl Postgres {
    /// Creates a cluster in a new directory and starts it.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "s3edge-pg-{}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null());
        let out = as_postgres(initdb).output().unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Postgres {
            dir,
            port: restartable_port(),
            bin,
        };
        pg.run();
        pg
    }

    /// Starts the server (again) on its data directory and port; returns once it answers.
    pub fn run(&self) {
        // fsync off: a killed server loses nothing the OS holds (the tests kill processes, not
        // the machine); commits stay synchronous, so an acknowledged commit is in the WAL.
        // A watchdog shell stops the server when this test process is gone, and then removes
        // its directory (a server stopped by a test is started again on the same one).
        let script = format!(
            "{bin}/postgres -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 \
             -c fsync=off -c full_page_writes=off \
             -c max_connections=300 >>{dir}/log 2>&1 & pg=$!; \
             while [ -d /proc/{me} ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done; \
             kill -QUIT $pg 2>/dev/null; wait $pg; \
             [ -d /proc/{me} ] || rm -rf {dir}",
            bin = self.bin.display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
            port = self.port,
            me = std::process::id(),
        );
        let mut sh = Command::new("sh");
        sh.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut watchdog = as_postgres(sh).spawn().unwrap();
        std::thread::spawn(move || watchdog.wait());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server at once (SIGQUIT: no checkpoint, connections cut), as a crash would.
    pub fn stop(&self) {
        let pid = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string();
        Command::new("kill").args(["-QUIT", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "PostgreSQL did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://` URL of a database on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!(
            "t{}_{}",
            NEXT_DB.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(&name)
    }

    /// Runs one statement with `psql`; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }
}
