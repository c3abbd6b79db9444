//! `[push]`: the write side's listener, spool, schedule, retention, upload sizes, webhooks
//! and the edges whose caches a push purges.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::document::Section;
use super::fields::{Env, guarded_listener, secret};

/// The push service.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Where the push API listens.
    pub listen: SocketAddr,
    /// Bearer token of the API (required off loopback).
    pub token: Option<String>,
    /// Durable state: the database and the files waiting to be pushed.
    pub spool: PathBuf,
    /// Waits between attempts: 12 delays = 13 attempts.
    pub retry_delays: Vec<Duration>,
    /// How long the files of a failed recording are kept.
    pub keep_failed: KeepFailed,
    /// The time zone in which calendar days are counted.
    pub retention_timezone: chrono_tz::Tz,
    /// Drills and tests: the length of one "day" wherever days are counted.
    pub day_length: Option<Duration>,
    /// Public base of edge URLs: `{edge_url}/{region}/{ACCOUNT}/{NAME}{suffix}`.
    pub edge_url: Option<String>,
    /// Uploads in flight.
    pub concurrency: usize,
    /// Files at least this large go up as multipart uploads.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads.
    pub part_size: u64,
    /// Larger PUT bodies are refused with 413.
    pub max_file_size: u64,
    /// Waits between webhook delivery attempts.
    pub webhook_retry_delays: Vec<Duration>,
    /// How long a webhook receiver has to answer.
    pub webhook_timeout: Duration,
    /// Gateways whose caches a push or delete purges.
    pub edges: Vec<EdgeConfig>,
    /// How often the lifecycle sweeper runs (`delete_after_days` of environments).
    pub sweep_every: Duration,
    /// Where the push state lives: SQLite in the spool, or a PostgreSQL shared by nodes.
    pub database: Database,
}

/// `push.database`.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// `{spool}/push.db`, this node's alone.
    Sqlite,
    /// A `postgres://` URL: several push nodes share it.
    Postgres(String),
}

impl std::fmt::Debug for Database {
    // The URL may carry a password: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite => f.write_str("Sqlite"),
            Database::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// How long a failed recording's files stay in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepFailed {
    /// Calendar days in `retention_timezone` (or `day_length` units).
    Days(u32),
    /// A plain duration (drills and tests).
    For(Duration),
}

/// One gateway's admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// `http://host:port` of its admin listener.
    pub admin: String,
    /// Its bearer token, if it has one.
    pub token: Option<String>,
}

/// The default schedule: 12 delays, 13 attempts, the last about 70 h after commit.
pub const DEFAULT_RETRY_DELAYS: [u64; 12] = [
    60,
    5 * 60,
    15 * 60,
    30 * 60,
    3600,
    2 * 3600,
    4 * 3600,
    6 * 3600,
    8 * 3600,
    12 * 3600,
    16 * 3600,
    20 * 3600,
];

/// The default webhook retry waits.
pub const DEFAULT_WEBHOOK_DELAYS: [u64; 6] = [60, 5 * 60, 30 * 60, 2 * 3600, 6 * 3600, 12 * 3600];

/// Reads `[push]`.
pub(super) fn push(t: &Section<'_, '_>, env: Env<'_>) -> Option<PushConfig> {
    let (listen, token) = guarded_listener(t, env, "127.0.0.1:9093");
    let spool = t.required_string("spool").map(PathBuf::from);
    let retry_delays = durations(t, "retry_delays", &DEFAULT_RETRY_DELAYS);
    if retry_delays.len() > 100 {
        t.problem("retry_delays", "at most 100 delays");
    }
    let days = t.number("keep_failed_days", 0..=3650);
    let keep_for = t.duration("keep_failed_for");
    let keep_failed = match (keep_for, days) {
        (Some(d), _) => KeepFailed::For(d),
        (None, Some(n)) => KeepFailed::Days(n as u32),
        (None, None) => KeepFailed::Days(28),
    };
    let retention_timezone = match t.string("retention_timezone") {
        Some(name) => match name.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                t.problem(
                    "retention_timezone",
                    format!("{name:?} is not an IANA time zone; write e.g. \"Europe/Bucharest\""),
                );
                chrono_tz::Europe::Bucharest
            }
        },
        None => chrono_tz::Europe::Bucharest,
    };
    let day_length = t.positive_duration("day_length");
    let edge_url = t
        .string("edge_url")
        .map(|u| u.trim_end_matches('/').to_string());
    if let Some(url) = &edge_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        t.problem(
            "edge_url",
            format!("{url:?} is not an http(s) URL; write e.g. \"https://edge.example.com\""),
        );
    }
    let concurrency = t.number("concurrency", 1..=1024).unwrap_or(8) as usize;
    let part_size = t.size("part_size").unwrap_or(16 * 1024 * 1024);
    if !(5 * 1024 * 1024..=5 * 1024 * 1024 * 1024).contains(&part_size) {
        t.problem(
            "part_size",
            "must be between 5 MiB (S3's minimum) and 5 GiB",
        );
    }
    let multipart_threshold = t.size("multipart_threshold").unwrap_or(64 * 1024 * 1024);
    if multipart_threshold < 5 * 1024 * 1024 {
        t.problem("multipart_threshold", "must be at least 5 MiB");
    }
    let max_file_size = t.size("max_file_size").unwrap_or(16 * 1024 * 1024 * 1024);
    if max_file_size > 10_000 * part_size {
        t.problem(
            "max_file_size",
            "more than 10,000 parts of part_size: raise part_size or lower max_file_size",
        );
    }
    let webhook_retry_delays = durations(t, "webhook_retry_delays", &DEFAULT_WEBHOOK_DELAYS);
    let webhook_timeout = t
        .positive_duration("webhook_timeout")
        .unwrap_or(Duration::from_secs(10));
    let edges = edges(t, env);
    let sweep_every = t
        .positive_duration("sweep_every")
        .unwrap_or(Duration::from_secs(3600));
    let database = match secret(t, "database", false, env) {
        None => Database::Sqlite,
        Some(v) if v == "sqlite" => Database::Sqlite,
        Some(v) if v.starts_with("postgres://") || v.starts_with("postgresql://") => {
            Database::Postgres(v)
        }
        Some(_) => {
            t.problem(
                "database",
                "write \"sqlite\" or a URL such as \"postgres://s3edge@db.internal/s3edge\"",
            );
            Database::Sqlite
        }
    };
    t.finish();
    Some(PushConfig {
        listen: listen?,
        token,
        spool: spool?,
        retry_delays,
        keep_failed,
        retention_timezone,
        day_length,
        edge_url,
        concurrency,
        multipart_threshold,
        part_size,
        max_file_size,
        webhook_retry_delays,
        webhook_timeout,
        edges,
        sweep_every,
        database,
    })
}

/// A list of durations, or the default.
fn durations(t: &Section<'_, '_>, name: &str, default: &[u64]) -> Vec<Duration> {
    if !t.has(name) {
        // Marks the key as known.
        let _ = t.strings(name);
        return default.iter().map(|s| Duration::from_secs(*s)).collect();
    }
    let mut out = Vec::new();
    for (i, text) in t.strings(name).iter().enumerate() {
        match humantime::parse_duration(text) {
            Ok(d) => out.push(d),
            Err(_) => t.problem(
                name,
                format!("item {i}: {text:?} is not a duration; write e.g. \"5m\" or \"2h\""),
            ),
        }
    }
    out
}

/// `edges = [{ admin = "...", token_env = "..." }]`.
fn edges(t: &Section<'_, '_>, env: Env<'_>) -> Vec<EdgeConfig> {
    let mut out = Vec::new();
    for edge in t.inline_tables("edges") {
        let admin = edge.required_string("admin");
        let token = secret(&edge, "token", false, env);
        if let Some(url) = &admin
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            edge.problem(
                "admin",
                format!("{url:?} is not an http(s) URL; write e.g. \"http://127.0.0.1:9091\""),
            );
        }
        edge.finish();
        if let Some(admin) = admin {
            out.push(EdgeConfig {
                admin: admin.trim_end_matches('/').to_string(),
                token,
            });
        }
    }
    out
}
