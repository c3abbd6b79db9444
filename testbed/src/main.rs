//! `s3edge-testbed`: the demo (`demo`) and a standalone seeded backend for load and fault
//! drills (`backend`). Built from the testbed crate, so the deployable `s3edge` binary links
//! no S3 server code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use s3edge::config::Provider;
use s3edge::logging::LogFormat;
use s3edge_testbed::backend::{BackendOptions, S3Backend};
use s3edge_testbed::demo::{Demo, DemoOptions};
use s3edge_testbed::{Seed, seed_objects};

/// Embedded S3 backends for trying and testing s3edge.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Zero set-up demo: four embedded S3 backends with a sample recording, the gateway and
    /// its admin listener.
    Demo {
        /// Where the gateway listens (default 127.0.0.1:8080, or a free port when taken).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where the backends keep their data (default: a temporary folder).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// One embedded S3 backend on a fixed address, seeded with synthetic recordings: the
    /// origin of load and fault drills (kill it, start it again).
    Backend(BackendArgs),
}

/// `backend` options.
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
    /// Also answer anonymous GET/HEAD (for peers that cannot sign, such as nginx or Varnish
    /// in a side-by-side bench).
    #[arg(long)]
    public_read: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    s3edge::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3edge-testbed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { listen, data } => {
                run_demo(DemoOptions {
                    listen,
                    default_listen: s3edge_testbed::demo::DEFAULT_LISTEN,
                    data,
                })
                .await
            }
            Command::Backend(args) => run_backend(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3edge-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_demo(options: DemoOptions) -> anyhow::Result<()> {
    let demo = Demo::start(options).await?;
    println!("{}", demo.banner());
    demo.run(s3edge::shutdown_signal()).await
}

async fn run_backend(args: BackendArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let backend = S3Backend::start(
        listener,
        BackendOptions {
            region: args.region.clone(),
            access_key: args.access_key.clone(),
            secret_key: args.secret_key.clone(),
            provider: Provider::Aws,
            root: args.data.clone(),
            redirect_to_region: None,
            public_read: args.public_read,
            virtual_host_domain: None,
        },
    )?;
    let seed = Seed {
        bucket: args.bucket,
        signing_region: args.region,
        access_key: args.access_key,
        secret_key: args.secret_key,
        account: args.account,
        count: args.seed,
        size: args.object_size.as_u64(),
    };
    seed_objects(&backend, &args.data, &seed).await?;
    tracing::info!(addr = %backend.addr, "backend listening");
    s3edge::shutdown_signal().await;
    backend.stop();
    Ok(())
}
