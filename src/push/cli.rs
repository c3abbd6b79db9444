//! `s3edge push put|commit|status|retry` (the push API from a shell) and `s3edge urls`
//! (a recording's URLs, without a server).

use std::path::PathBuf;

use http::Method;

use super::client::PushClient;
use super::urls::{location, urls};
use crate::config::Config;

/// Where the push API is and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The push API (default: `push.listen` of --config, else http://127.0.0.1:9093).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// A config file to read `push.listen` from.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The bearer token (default: the environment variable S3EDGE_PUSH_TOKEN).
    #[arg(long, global = true)]
    pub token: Option<String>,
}

/// `s3edge push …`.
#[derive(Debug, clap::Subcommand)]
pub enum PushCommand {
    /// Upload files of a recording: each named {NAME}.mp4, {NAME}.jpg, {NAME}_filmstrip.jpg
    /// or {NAME}_raw.mp4.
    Put {
        /// Environment.
        #[arg(long)]
        env: String,
        /// Upload under this recording NAME instead of the files' own names.
        #[arg(long)]
        name: Option<String>,
        /// Then commit the recording(s) the files belong to, when every file was accepted
        /// (one call instead of two for a processing server's script).
        #[arg(long)]
        commit: bool,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Commit a recording: its push starts.
    Commit {
        /// Environment.
        #[arg(long)]
        env: String,
        /// Recording NAME.
        #[arg(long)]
        name: String,
    },
    /// Show a recording's state.
    Status {
        /// Environment.
        #[arg(long)]
        env: String,
        /// Recording NAME.
        #[arg(long)]
        name: String,
    },
    /// Push a failed recording again (a fresh attempt series).
    Retry {
        /// Environment.
        #[arg(long)]
        env: String,
        /// Recording NAME.
        #[arg(long)]
        name: String,
    },
}

/// `s3edge urls …`.
#[derive(Debug, clap::Args)]
pub struct UrlsArgs {
    /// A config: its regions' hosts and `push.edge_url` (without: the production regions,
    /// origin URLs only).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Region.
    #[arg(long)]
    pub region: String,
    /// Account hash.
    #[arg(long)]
    pub account: String,
    /// Recording NAME.
    #[arg(long)]
    pub name: String,
}

/// Runs a `push` command; the API's JSON answer goes to stdout.
pub async fn push(api: ApiArgs, command: PushCommand) -> anyhow::Result<()> {
    let base = match (&api.url, &api.config) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => {
            let config = Config::load(path)?;
            let push = config
                .push
                .ok_or_else(|| anyhow::anyhow!("{}: no [push] table", path.display()))?;
            format!("http://{}", push.listen)
        }
        (None, None) => "http://127.0.0.1:9093".to_string(),
    };
    let token = api.token.or_else(|| {
        std::env::var("S3EDGE_PUSH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    let client = PushClient::new(&base, token);
    let replies = match command {
        PushCommand::Put {
            env,
            name,
            commit,
            files,
        } => {
            let mut replies = Vec::new();
            let mut recordings: Vec<String> = Vec::new();
            for file in &files {
                let renamed = match &name {
                    Some(name) => Some(rename(file, name)?),
                    None => None,
                };
                let reply = client
                    .put_file(&env, file, renamed.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)?;
                let own = file.file_name().and_then(|n| n.to_str());
                if let Some((recording, _)) = renamed
                    .as_deref()
                    .or(own)
                    .and_then(super::model::split_file)
                    && !recordings.iter().any(|r| r == recording)
                {
                    recordings.push(recording.to_string());
                }
                replies.push(reply);
            }
            if commit && replies.iter().all(|r| r.status.is_success()) {
                for recording in recordings {
                    replies.push(
                        client
                            .commit(&env, &recording)
                            .await
                            .map_err(anyhow::Error::msg)?,
                    );
                }
            }
            replies
        }
        PushCommand::Commit { env, name } => vec![
            client
                .commit(&env, &name)
                .await
                .map_err(anyhow::Error::msg)?,
        ],
        PushCommand::Status { env, name } => vec![
            client
                .call(
                    Method::GET,
                    &format!("/v1/recordings/{env}/{name}"),
                    bytes::Bytes::new(),
                )
                .await
                .map_err(anyhow::Error::msg)?,
        ],
        PushCommand::Retry { env, name } => vec![
            client
                .call(
                    Method::POST,
                    &format!("/v1/recordings/{env}/{name}/push"),
                    bytes::Bytes::new(),
                )
                .await
                .map_err(anyhow::Error::msg)?,
        ],
    };
    let mut failed = None;
    for reply in replies {
        println!("{}", String::from_utf8_lossy(&reply.body));
        if !reply.status.is_success() {
            failed = Some(reply.status);
        }
    }
    match failed {
        Some(status) => Err(anyhow::anyhow!("the push API answered {status}")),
        None => Ok(()),
    }
}

/// `{name}{suffix}` for a file whose own name ends in one of the four suffixes.
fn rename(file: &std::path::Path, name: &str) -> anyhow::Result<String> {
    let own = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    crate::route::FileKind::ALL
        .iter()
        .find(|k| own.ends_with(k.suffix()))
        .map(|k| format!("{name}{}", k.suffix()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{own}: the file name must end in .mp4, .jpg, _filmstrip.jpg or _raw.mp4"
            )
        })
}

/// Prints a recording's URLs as the API gives them: `{"origin": {suffix: url}, "edge": …}`.
pub fn print_urls(args: UrlsArgs) -> anyhow::Result<()> {
    for (what, value) in [("account", &args.account), ("name", &args.name)] {
        if !super::model::is_valid_segment(value) {
            anyhow::bail!("--{what} {value:?}: 1-128 of A-Z a-z 0-9 _ -");
        }
    }
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let host = location(config.as_ref(), &args.region)
        .ok_or_else(|| anyhow::anyhow!("no region {:?}", args.region))?;
    let edge = config
        .as_ref()
        .and_then(|c| c.push.as_ref())
        .and_then(|p| p.edge_url.clone());
    let urls = urls(
        Some(&host),
        edge.as_deref(),
        &args.region,
        &args.account,
        &args.name,
    );
    println!("{}", serde_json::to_string_pretty(&urls)?);
    Ok(())
}
