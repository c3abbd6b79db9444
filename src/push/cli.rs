//! `s3edge push put|commit|status|retry` (the push API from a shell) and `s3edge urls`
//! (a recording's URLs, without a server).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures_util::StreamExt;
use http::Method;
use tokio::sync::Semaphore;

use super::client::{PushClient, Reply};
use super::model::split_file;
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
        /// Then commit each recording the files belong to, once every one of its files was
        /// accepted (a recording with a refused file is not committed).
        #[arg(long)]
        commit: bool,
        /// Files sent at once (a folder of many recordings goes up in one call).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        parallel: u16,
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
            parallel,
            files,
        } => {
            let recordings = recordings_of(&files, name.as_deref())?;
            let failed = put(&client, &env, recordings, commit, usize::from(parallel)).await;
            return match failed {
                Some(failed) => Err(anyhow::anyhow!("{failed}")),
                None => Ok(()),
            };
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

/// The files of one recording: each path and the name it is uploaded as.
struct Recording<'f> {
    name: String,
    files: Vec<(&'f Path, String)>,
}

/// Groups files by recording, in the order given; a file whose name is none of the four kinds
/// fails the call before anything is sent.
fn recordings_of<'f>(
    files: &'f [PathBuf],
    name: Option<&str>,
) -> anyhow::Result<Vec<Recording<'f>>> {
    let mut recordings: Vec<Recording<'f>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for file in files {
        let upload = match name {
            Some(name) => rename(file, name)?,
            None => file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string(),
        };
        let Some((recording, _)) = split_file(&upload) else {
            anyhow::bail!(
                "{upload}: a file is named {{NAME}}.mp4, {{NAME}}.jpg, {{NAME}}_filmstrip.jpg or \
                 {{NAME}}_raw.mp4, NAME being 1-128 of A-Z a-z 0-9 _ -"
            );
        };
        let at = *index.entry(recording.to_string()).or_insert_with(|| {
            recordings.push(Recording {
                name: recording.to_string(),
                files: Vec::new(),
            });
            recordings.len() - 1
        });
        recordings[at].files.push((file.as_path(), upload));
    }
    Ok(recordings)
}

/// Files at least this large are sent one at a time (the push service's default
/// `multipart_threshold`: such a file goes up to the bucket while it arrives).
const LARGE_FILE: u64 = 64 * 1024 * 1024;

/// PUTs every file, at most `parallel` at once (large ones one at a time), and commits each
/// recording whose files were all accepted (when `commit`). Each answer is printed as it
/// comes, one JSON per line; the result says why the call failed, if it did.
async fn put(
    client: &PushClient,
    env: &str,
    recordings: Vec<Recording<'_>>,
    commit: bool,
    parallel: usize,
) -> Option<String> {
    let slots = Semaphore::new(parallel);
    let large_slot = Semaphore::new(1);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let fail = |why: String| {
        if let Ok(mut failed) = failed.lock() {
            *failed = Some(why);
        }
    };
    // A reply printed; whether it is a success.
    let answered = |reply: Result<Reply, String>| match reply {
        Ok(reply) => {
            println!("{}", String::from_utf8_lossy(&reply.body));
            if !reply.status.is_success() {
                fail(format!("the push API answered {}", reply.status));
            }
            reply.status.is_success()
        }
        Err(error) => {
            eprintln!("{error}");
            fail(error);
            false
        }
    };
    futures_util::stream::iter(recordings)
        .for_each_concurrent(parallel, |recording| {
            let (slots, large_slot, answered) = (&slots, &large_slot, &answered);
            async move {
                let puts = recording.files.iter().map(|(path, upload)| async move {
                    // Large files go one at a time: one already keeps the service busy, and
                    // each is then complete (committed, pushed) as early as it can be,
                    // instead of all of them at the end.
                    let large = std::fs::metadata(path).is_ok_and(|m| m.len() >= LARGE_FILE);
                    let _large = if large {
                        large_slot.acquire().await.ok()
                    } else {
                        None
                    };
                    let Ok(_slot) = slots.acquire().await else {
                        return false;
                    };
                    answered(client.put_file(env, path, Some(upload)).await)
                });
                let accepted = futures_util::future::join_all(puts).await;
                if commit && accepted.iter().all(|ok| *ok) {
                    answered(client.commit(env, &recording.name).await);
                }
            }
        })
        .await;
    failed.into_inner().ok().flatten()
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
