//! The `s3edge` command: `serve`, `check-config`, `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use s3edge::config::Config;
use s3edge::demo;
use s3edge::route::FileKind;
use s3edge::service::Gateway;

/// mimalloc, measured with benches/load/load_fault.sh (10,000 connections, same machine):
/// 5,470 vs 4,164 req/s with glibc, and RSS fell after a second round (1,230 MB) where
/// glibc's climbed (1,473 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Streaming, signing edge gateway in front of the recording buckets.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway with a config file until SIGINT or SIGTERM.
    Serve {
        /// The TOML config file.
        #[arg(long, short, default_value = "config/s3edge.toml")]
        config: PathBuf,
    },
    /// Validate a config file and say exactly which key is wrong.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Zero set-up demo: four embedded S3 backends with a sample recording, and the gateway.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the backends keep their data (default: a temporary folder).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// One embedded S3 backend (as in `demo`) on a fixed address, seeded with synthetic
    /// recordings: the origin of load and fault drills (kill it, start it again).
    Backend(BackendArgs),
}

/// `s3edge backend` options.
#[derive(Debug, clap::Args)]
struct BackendArgs {
    /// Where the backend listens.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Where it keeps its objects (kept across restarts).
    #[arg(long)]
    data: PathBuf,
    /// Signing region it accepts.
    #[arg(long, default_value = "eu-central-1")]
    region: String,
    /// Bucket to create and seed.
    #[arg(long, default_value = "eu1-addpipe")]
    bucket: String,
    /// Access key id it accepts.
    #[arg(long, default_value = "LOADKEY")]
    access_key: String,
    /// Secret key it accepts (test credentials only).
    #[arg(long, default_value = "load-secret")]
    secret_key: String,
    /// Synthetic recordings `{account}/rec-{i}.mp4` to write, unless already there.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Size of each synthetic recording.
    #[arg(long, default_value = "256KiB")]
    object_size: bytesize::ByteSize,
    /// Account hash of the synthetic recordings.
    #[arg(long, default_value = "loadtest0000")]
    account: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::CheckConfig { file } => check_config(file),
            Command::Demo { listen, data } => run_demo(listen, data).await,
            Command::Backend(args) => run_backend(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    raise_descriptor_limit(config.limits.max_connections);
    let bound = s3edge::bind(&config).await?;
    s3edge::run(&config, bound, Some(path), s3edge::shutdown_signal()).await?;
    Ok(())
}

/// Every client connection costs a descriptor (two with its upstream connection): raise the
/// soft limit to the hard one, and say so when `max_connections` still does not fit.
fn raise_descriptor_limit(max_connections: usize) {
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(1024);
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            max_connections,
            "the descriptor limit is below what limits.max_connections may need; \
             raise `ulimit -n` (hard) or lower max_connections"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the descriptor limit"),
    }
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    println!(
        "{}: ok ({} regions, {} http and {} https listeners)",
        path.display(),
        config.regions.len(),
        config.http_listeners.len(),
        config.https_listeners.len()
    );
    Ok(())
}

async fn run_demo(listen: SocketAddr, data: Option<PathBuf>) -> anyhow::Result<()> {
    let temp;
    let root = match data {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let backends = demo::Backends::start(&root).await?;
    let mut config = Config::for_regions(backends.regions.clone(), listen);
    config.shutdown_grace = Duration::from_secs(5);
    let gateway = Gateway::new(&config)?;
    demo::upload_sample(&gateway, &config.regions).await?;
    let bound = s3edge::bind(&config).await?;
    let addr = bound
        .listeners
        .first()
        .and_then(|l| l.tcp.local_addr().ok())
        .unwrap_or(listen);
    print_demo_urls(addr, &root);
    s3edge::run(&config, bound, None, s3edge::shutdown_signal()).await?;
    Ok(())
}

async fn run_backend(args: BackendArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let backend = demo::backend::S3Backend::start(
        listener,
        demo::backend::BackendOptions {
            region: args.region.clone(),
            access_key: args.access_key.clone(),
            secret_key: args.secret_key.clone(),
            provider: s3edge::config::Provider::Aws,
            root: args.data.clone(),
            redirect_to_region: None,
            public_read: false,
            virtual_host_domain: None,
        },
    )?;
    let seed = demo::Seed {
        bucket: args.bucket,
        signing_region: args.region,
        access_key: args.access_key,
        secret_key: args.secret_key,
        account: args.account,
        count: args.seed,
        size: args.object_size.as_u64(),
    };
    demo::seed_objects(&backend, &args.data, &seed).await?;
    tracing::info!(addr = %backend.addr, "backend listening");
    s3edge::shutdown_signal().await;
    backend.stop();
    Ok(())
}

fn print_demo_urls(addr: SocketAddr, root: &std::path::Path) {
    let account = demo::SAMPLE_ACCOUNT;
    let name = demo::SAMPLE_NAME;
    println!(
        "\ns3edge demo: gateway on http://{addr}, backend data in {}",
        root.display()
    );
    println!(
        "Four regions, each a SigV4-verifying S3 backend on loopback, hold one sample recording.\n"
    );
    println!("Open in a browser (path form):");
    for spec in demo::REGIONS {
        println!("  http://{addr}/{}/{account}/{name}.mp4", spec.name);
    }
    println!("\nAll four files of eu1 with curl (path form):");
    for kind in FileKind::ALL {
        println!(
            "  curl -sI http://{addr}/eu1/{account}/{name}{}",
            kind.suffix()
        );
    }
    println!("\nHost form, as the public LOCATION URLs are resolved:");
    for spec in demo::REGIONS {
        println!(
            "  curl -s -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' -H 'Host: {}' http://{addr}/{account}/{name}.jpg",
            spec.host
        );
    }
    println!("\nA seek, as players do:");
    println!("  curl -s -r 1000-1999 -D - -o /dev/null http://{addr}/us2/{account}/{name}_raw.mp4");
    println!("\nCtrl-C stops it.\n");
}
