//! The `s3edge` command: `serve`, `check-config`, `push` (the push API from a shell), `urls`
//! and `lifecycle`. The demo is `s3edge-testbed demo`, in the testbed crate, so this binary links no
//! S3 server code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use s3edge::config::{Config, ConfigErrors};
use s3edge::logging::LogFormat;

/// mimalloc, measured with benches/load/load_fault.sh (10,000 connections, same machine):
/// 5,470 vs 4,164 req/s with glibc, and RSS fell after a second round (1,230 MB) where
/// glibc's climbed (1,473 MB). The `system-allocator` feature builds with glibc's instead,
/// for heap profilers (`heaptrack`) that see only malloc.
#[cfg(not(feature = "system-allocator"))]
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
    /// Hand files to a push service and follow them (put, commit, status, retry).
    Push {
        #[command(flatten)]
        api: s3edge::push::cli::ApiArgs,
        #[command(subcommand)]
        command: s3edge::push::cli::PushCommand,
    },
    /// Print a recording's origin (and edge) URLs.
    Urls(s3edge::push::cli::UrlsArgs),
    /// S3 bucket lifecycle rules for the environments' `delete_after_days`.
    Lifecycle {
        #[command(subcommand)]
        command: s3edge::push::lifecycle::LifecycleCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    s3edge::logging::init(cli.log_format);
    // The blocking pool serves file I/O (spool, uploads) and DNS; each of its threads keeps an
    // allocator heap, so a bound on them is a bound on memory (push of 3 × 1 GiB: 46 threads
    // and 181 MiB RSS unbounded; 200 small recordings: 130 MiB with 32 threads).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
    {
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
            Command::Push { api, command } => s3edge::push::cli::push(api, command).await,
            Command::Urls(args) => s3edge::push::cli::print_urls(args),
            Command::Lifecycle { command } => s3edge::push::lifecycle::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ConfigErrors>() {
                // One problem per line, as editors and CI logs read them, then a count.
                Some(problems) => {
                    eprintln!("{problems}");
                    let n = problems.0.len();
                    let plural = if n == 1 { "" } else { "s" };
                    eprintln!("s3edge: {n} problem{plural} in the configuration");
                }
                None => eprintln!("s3edge: {e:#}"),
            }
            ExitCode::FAILURE
        }
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
