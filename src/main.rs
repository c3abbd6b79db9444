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
    let bound = s3edge::bind(&config).await?;
    s3edge::run(&config, bound, Some(path), s3edge::shutdown_signal()).await?;
    Ok(())
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
