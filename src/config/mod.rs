//! Configuration: a TOML file → the validated runtime [`Config`].
//!
//! - this module: the runtime types and [`Config::load`] / [`Config::parse`];
//! - [`document`]: the spanned TOML reader (typed getters, lines, unknown keys);
//! - [`read`]: every table's keys and checks;
//! - [`policies`]: timeouts, retries, the circuit breaker and client limits.
//!
//! Every problem names the file, the line, the dotted key and the reason, and all of a file's
//! problems are reported at once, so `s3edge check-config` says exactly what is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod document;
mod fields;
mod policies;
mod push;
mod read;
#[cfg(test)]
mod tests;

pub use policies::{CircuitPolicy, Limits, RetryPolicy, Timeouts};
pub use push::{
    DEFAULT_RETRY_DELAYS, DEFAULT_WEBHOOK_DELAYS, Database, EdgeConfig, KeepFailed, PushConfig,
};

/// One configuration problem: which file and line, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file being read.
    pub file: String,
    /// The dotted key at fault (`regions.eu1.bucket`); empty for the whole file.
    pub key: String,
    /// The line of the key (or of its table when the key is missing), when known.
    pub line: Option<usize>,
    /// What is wrong, and what would be accepted.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `FILE:LINE: KEY: REASON`, leaving out what is not known.
        let mut place = self.file.clone();
        if let Some(line) = self.line {
            place.push_str(&format!(":{line}"));
        }
        if !self.key.is_empty() {
            if !place.is_empty() {
                place.push_str(": ");
            }
            place.push_str(&self.key);
        }
        if place.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{place}: {}", self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem of a config file (at least one), in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// One problem not tied to a key (the file cannot be read or parsed).
    fn single(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain-HTTP listen addresses.
    pub http_listeners: Vec<SocketAddr>,
    /// HTTPS listen addresses (need at least one certificate).
    pub https_listeners: Vec<SocketAddr>,
    /// Certificates, selected by SNI; the one marked default answers unknown names.
    pub certificates: Vec<CertificateConfig>,
    /// How long in-flight responses may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// CORS header values.
    pub cors: CorsConfig,
    /// Upstream timeouts (regions may override them).
    pub timeouts: Timeouts,
    /// Retries of idempotent requests that failed before the first byte.
    pub retry: RetryPolicy,
    /// When a failing region is cut off, and for how long.
    pub circuit: CircuitPolicy,
    /// Limits on what clients may hold or send.
    pub limits: Limits,
    /// The regions, in the order they appear in the file (sorted by name).
    pub regions: Vec<RegionConfig>,
    /// The in-memory edge cache.
    pub cache: CacheConfig,
    /// The admin listener (purge, health, metrics), if any.
    pub admin: Option<AdminConfig>,
    /// The push service (the write side), if this node runs it.
    pub push: Option<PushConfig>,
}

/// The in-memory edge cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Off: every request goes to the backend.
    pub enabled: bool,
    /// Bytes of bodies and metadata kept, at most.
    pub capacity: u64,
    /// Objects larger than this are streamed through, not stored.
    pub max_object_size: u64,
    /// Objects are stored as aligned chunks of this size.
    pub chunk_size: u64,
    /// Chunks one upstream request of the cache fetches at most (1–64): a miss reads this
    /// far ahead of the client, so a stalled client makes the cache hold at most
    /// `read_ahead_chunks × chunk_size` bytes beyond what it has read.
    pub read_ahead_chunks: u64,
    /// How long metadata is fresh before it is revalidated.
    pub ttl: Duration,
    /// After the TTL, serve stale while one background revalidation runs.
    pub stale_while_revalidate: Duration,
    /// After the TTL, serve stale when the backend fails.
    pub stale_if_error: Duration,
    /// How long a backend 404 is remembered.
    pub negative_ttl: Duration,
    /// `Cache-Control` sent to clients.
    pub cache_control: String,
    /// Touch the whole capacity's chunk buffers at start (a background thread), so misses
    /// copy into memory that is already mapped instead of pages the kernel zeroes first.
    pub prefault: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            capacity: 512 * 1024 * 1024,
            max_object_size: 4 * 1024 * 1024 * 1024,
            chunk_size: 1024 * 1024,
            read_ahead_chunks: 16,
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(10),
            cache_control: "max-age=60".into(),
            prefault: false,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens; loopback unless a token is set.
    pub listen: SocketAddr,
    /// Bearer token required on purge requests (required off loopback).
    pub token: Option<String>,
}

/// One TLS certificate chain and key, and the host names it serves.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    /// PEM certificate chain file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
    /// SNI names this certificate answers (lower case).
    pub server_names: Vec<String>,
    /// Whether it answers clients that send no or an unknown SNI name.
    pub default: bool,
}

/// CORS header values sent when a request carries `Origin`.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// `Access-Control-Allow-Origin`.
    pub allow_origin: String,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: String,
    /// `Access-Control-Max-Age`, seconds.
    pub max_age: u64,
    /// `Access-Control-Allow-Headers` answered to preflights.
    pub allow_headers: String,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: String,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allow_origin: "*".into(),
            allow_methods: "GET".into(),
            max_age: 3000,
            allow_headers:
                "Range, If-Range, If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since"
                    .into(),
            expose_headers: "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified"
                .into(),
        }
    }
}

/// How the bucket appears in upstream URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    VirtualHosted,
}

/// Who runs the bucket: decides the storage classes and encryption used on writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Amazon S3: all storage classes, SSE-S3 at rest.
    Aws,
    /// Scaleway Object Storage: STANDARD only, no SSE-S3.
    Scaleway,
}

/// Static credentials for one region, already resolved from the config or environment.
#[derive(Clone)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    // Secrets never reach a log line, even through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl StaticCredentials {
    /// No keys: the region takes its credentials from a dynamic source.
    pub fn none() -> Self {
        StaticCredentials {
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: None,
        }
    }
}

/// Where a region's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// The keys in the config (or environment variables it names).
    #[default]
    Static,
    /// The standard AWS chain: environment, profile files, web identity, container, instance.
    DefaultChain {
        /// Profile name (default: `AWS_PROFILE` or `default`).
        profile: Option<String>,
    },
    /// The shared profile files (`~/.aws/credentials`, `~/.aws/config`, or `AWS_*_FILE`).
    Profile {
        /// Profile name (default: `AWS_PROFILE` or `default`).
        profile: Option<String>,
    },
    /// The container credential endpoint (`AWS_CONTAINER_CREDENTIALS_*`).
    Container,
    /// The EC2 instance metadata service (IMDSv2).
    Instance,
    /// STS web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`).
    WebIdentity,
}

/// One region: where its files live and how to reach them.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// Name used in the `/{region}/` path prefix.
    pub name: String,
    /// Public host names routed to this region (lower case, no port).
    pub hosts: Vec<String>,
    /// Upstream endpoint, `http://` or `https://`, no path.
    pub endpoint: http::Uri,
    /// Bucket name.
    pub bucket: String,
    /// SigV4 signing region.
    pub signing_region: String,
    /// Path or virtual-hosted addressing.
    pub addressing: Addressing,
    /// Prefix in front of every key (may need URI encoding).
    pub key_prefix: String,
    /// Storage provider (write policy).
    pub provider: Provider,
    /// Connect to this address instead of resolving the endpoint's host.
    pub connect_to: Option<std::net::IpAddr>,
    /// Credentials (empty unless `credential_source` is static).
    pub credentials: StaticCredentials,
    /// Where credentials come from: the config, or a standard AWS source refreshed in the
    /// background.
    pub credential_source: CredentialSource,
    /// Credentials of writes (the push service), when they differ from `credentials`: the
    /// gateway's read key can stay read-only.
    pub push_credentials: Option<RegionCredentials>,
    /// This region's own timeouts, when they differ from `[timeouts]`.
    pub timeouts: Option<Timeouts>,
}

/// Keys or a dynamic source, as `credentials` takes them.
#[derive(Debug, Clone)]
pub struct RegionCredentials {
    /// The keys (empty unless the source is static).
    pub keys: StaticCredentials,
    /// Where they come from.
    pub source: CredentialSource,
}

impl Config {
    /// Defaults for everything but the regions, with one plain-HTTP listener (demo, tests).
    pub fn for_regions(regions: Vec<RegionConfig>, http: SocketAddr) -> Config {
        Config {
            http_listeners: vec![http],
            https_listeners: Vec::new(),
            certificates: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            cors: CorsConfig::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            circuit: CircuitPolicy::default(),
            limits: Limits::default(),
            regions,
            cache: CacheConfig::default(),
            admin: None,
            push: None,
        }
    }

    /// Reads and validates a config file; environment variables it names are read now.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(ConfigError {
                file: String::new(),
                key: String::new(),
                line: None,
                reason: format!("cannot read {file}: {}", io_reason(&e)),
            })
        })?;
        Config::parse(&file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` looks up environment variables.
    pub fn parse(
        file: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let doc = document::Document::new(file, text);
        let parsed = doc.parse().map_err(ConfigErrors::single)?;
        let root = doc.root(parsed.as_table());
        let config = read::config(&root, env);
        drop(root);
        match config {
            Some(config) if doc.is_clean() => Ok(config),
            _ => Err(ConfigErrors(doc.into_problems())),
        }
    }
}

/// An I/O error as a sentence, without Rust's `(os error N)` suffix.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}
