//! The zero set-up demo: four embedded S3 backends holding a sample recording, the gateway in
//! front of them, and an admin listener, with the URLs to try printed in one place.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use s3edge::config::{AdminConfig, Config};
use s3edge::route::FileKind;
use s3edge::server::Listener;
use tokio::net::TcpListener;

use crate::{Backends, REGIONS, SAMPLE_ACCOUNT, SAMPLE_NAME};

/// Where the demo listens when nothing is asked.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

/// How the demo is started.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the gateway listens; `None`: `default_listen`, or a free port when it is taken.
    pub listen: Option<SocketAddr>,
    /// The address tried first when `listen` is not given ([`DEFAULT_LISTEN`]).
    pub default_listen: SocketAddr,
    /// Where the backends keep their data (`None`: a temporary folder, removed at exit).
    pub data: Option<PathBuf>,
}

/// A started demo: backends seeded, listeners bound, nothing served yet.
pub struct Demo {
    config: Config,
    bound: Option<s3edge::Bound>,
    /// The gateway's address.
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    /// Set when the default port was taken and another was chosen.
    pub fallback_from: Option<SocketAddr>,
    root: PathBuf,
    _backends: Backends,
    _temp: Option<tempfile::TempDir>,
}

impl Demo {
    /// Starts the backends, writes the sample recording and binds the gateway and admin
    /// listeners (admin on a free loopback port).
    pub async fn start(options: DemoOptions) -> anyhow::Result<Demo> {
        let (root, temp) = match options.data {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let backends = Backends::start(&root).await?;
        crate::upload_sample(&backends.regions).await?;
        let (tcp, fallback_from) = bind_gateway(options.listen, options.default_listen).await?;
        let addr = tcp.local_addr()?;
        let admin_tcp = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let admin = admin_tcp.local_addr()?;
        let mut config = Config::for_regions(backends.regions.clone(), addr);
        config.shutdown_grace = Duration::from_secs(5);
        config.admin = Some(AdminConfig {
            listen: admin,
            token: None,
        });
        let bound = s3edge::Bound {
            listeners: vec![Listener { tcp, tls: None }],
            certs: None,
            admin: Some(admin_tcp),
            push: None,
        };
        Ok(Demo {
            config,
            bound: Some(bound),
            addr,
            admin,
            fallback_from,
            root,
            _backends: backends,
            _temp: temp,
        })
    }

    /// What the demo prints: where it listens and the URLs to try.
    pub fn banner(&self) -> String {
        banner(self.addr, self.admin, self.fallback_from, &self.root)
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let bound = self
            .bound
            .take()
            .ok_or_else(|| anyhow::anyhow!("the demo runs once"))?;
        s3edge::run(&self.config, bound, None, shutdown).await?;
        Ok(())
    }
}

/// Binds the gateway: the asked address (its error names it), or the default port, or a
/// free one when the default is taken.
async fn bind_gateway(
    listen: Option<SocketAddr>,
    default: SocketAddr,
) -> anyhow::Result<(TcpListener, Option<SocketAddr>)> {
    if let Some(addr) = listen {
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr}: {e}; choose another with --listen")
        })?;
        return Ok((tcp, None));
    }
    match TcpListener::bind(default).await {
        Ok(tcp) => Ok((tcp, None)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let tcp = TcpListener::bind((default.ip(), 0)).await?;
            Ok((tcp, Some(default)))
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot listen on {default}: {e}; choose another with --listen"
        )),
    }
}

fn banner(
    addr: SocketAddr,
    admin: SocketAddr,
    fallback_from: Option<SocketAddr>,
    root: &Path,
) -> String {
    let account = SAMPLE_ACCOUNT;
    let name = SAMPLE_NAME;
    let mut out = String::new();
    if let Some(taken) = fallback_from {
        let _ = writeln!(
            out,
            "\n{taken} is in use: serving on {addr} instead (choose with --listen)."
        );
    }
    let _ = writeln!(
        out,
        "\ns3edge demo: gateway on http://{addr}, backend data in {}",
        root.display()
    );
    let _ = writeln!(
        out,
        "Four regions, each a SigV4-verifying S3 backend on loopback, hold one sample recording.\n"
    );
    let _ = writeln!(out, "Open in a browser (path form):");
    for spec in REGIONS {
        let _ = writeln!(out, "  http://{addr}/{}/{account}/{name}.mp4", spec.name);
    }
    let _ = writeln!(out, "\nAll four files of eu1 with curl (path form):");
    for kind in FileKind::ALL {
        let _ = writeln!(
            out,
            "  curl -sI http://{addr}/eu1/{account}/{name}{}",
            kind.suffix()
        );
    }
    let _ = writeln!(
        out,
        "\nHost form, as the public LOCATION URLs are resolved:"
    );
    for spec in REGIONS {
        let _ = writeln!(
            out,
            "  curl -s -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' -H 'Host: {}' http://{addr}/{account}/{name}.jpg",
            spec.host
        );
    }
    let _ = writeln!(out, "\nA seek, as players do:");
    let _ = writeln!(
        out,
        "  curl -s -r 1000-1999 -D - -o /dev/null http://{addr}/us2/{account}/{name}_raw.mp4"
    );
    let _ = writeln!(out, "\nAdmin listener (loopback, no token in the demo):");
    let _ = writeln!(out, "  curl -s http://{admin}/healthz");
    let _ = writeln!(out, "  curl -s http://{admin}/readyz");
    let _ = writeln!(out, "  curl -s http://{admin}/metrics");
    let _ = writeln!(
        out,
        "  curl -s -X DELETE http://{admin}/cache/eu1/{account}/{name}"
    );
    let _ = writeln!(out, "\nCtrl-C stops it.");
    out
}
