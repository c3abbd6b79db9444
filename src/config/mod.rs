//! Configuration: TOML (unknown keys refused) → a validated runtime [`Config`].
//!
//! Every error names the file, the key and the reason, so `s3edge check-config` can say
//! exactly what is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod policies;

pub use policies::{CircuitPolicy, Limits, RetryPolicy, Timeouts};
use policies::{RawCircuit, RawLimits, RawRetry, RawTimeouts};

/// A configuration problem: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file being read.
    pub file: String,
    /// The dotted key at fault (or `-` for the whole file).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Addressing {
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    VirtualHosted,
}

/// Who runs the bucket: decides the storage classes and encryption used on writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SourceKind {
    Static,
    DefaultChain,
    Profile,
    Container,
    Instance,
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
    /// This region's own timeouts, when they differ from `[timeouts]`.
    pub timeouts: Option<Timeouts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    cors: RawCors,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    circuit: RawCircuit,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    regions: BTreeMap<String, RawRegion>,
    #[serde(default)]
    cache: RawCache,
    admin: Option<RawAdmin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    capacity: Option<bytesize::ByteSize>,
    max_object_size: Option<bytesize::ByteSize>,
    chunk_size: Option<bytesize::ByteSize>,
    read_ahead_chunks: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_while_revalidate: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_if_error: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    negative_ttl: Option<Duration>,
    cache_control: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    token: Option<String>,
    token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default)]
    http: Vec<String>,
    #[serde(default)]
    https: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    server_names: Vec<String>,
    #[serde(default)]
    default: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allow_origin: Option<String>,
    allow_methods: Option<String>,
    max_age: Option<u64>,
    allow_headers: Option<String>,
    expose_headers: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    hosts: Vec<String>,
    endpoint: String,
    bucket: String,
    signing_region: String,
    #[serde(default = "default_addressing")]
    addressing: Addressing,
    #[serde(default)]
    key_prefix: String,
    provider: Provider,
    connect_to: Option<String>,
    credentials: RawCredentials,
    timeouts: Option<RawTimeouts>,
}

fn default_addressing() -> Addressing {
    Addressing::VirtualHosted
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    source: Option<SourceKind>,
    profile: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    access_key_id_env: Option<String>,
    secret_access_key_env: Option<String>,
    session_token_env: Option<String>,
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
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` looks up environment variables.
    pub fn parse(
        file: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            key: toml_error_key(&e, text),
            reason: e.message().to_string(),
        })?;
        Validator { file, env }.validate(raw)
    }
}

/// Names the table and line the TOML parser stopped at (`regions.eu1 (line 9)`).
fn toml_error_key(e: &toml::de::Error, text: &str) -> String {
    let Some(span) = e.span() else {
        return "-".into();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.lines().count().max(1);
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match table {
        Some(table) => format!("{table} (line {line})"),
        None => format!("line {line}"),
    }
}

struct Validator<'a> {
    file: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let http_listeners = self.addrs("server.http", &raw.server.http)?;
        let https_listeners = self.addrs("server.https", &raw.server.https)?;
        if http_listeners.is_empty() && https_listeners.is_empty() {
            return Err(self.err("server", "no listener: set server.http or server.https"));
        }
        let certificates = self.certificates(raw.tls)?;
        if !https_listeners.is_empty() && certificates.is_empty() {
            return Err(self.err(
                "tls.certificates",
                "server.https is set but no certificate is configured",
            ));
        }
        let cors = self.cors(raw.cors)?;
        let timeouts = self.timeouts("timeouts", &raw.timeouts, Timeouts::default())?;
        let retry = self.retry(raw.retry)?;
        let circuit = self.circuit(raw.circuit)?;
        let limits = self.limits(raw.limits)?;
        if raw.regions.is_empty() {
            return Err(self.err("regions", "at least one region is required"));
        }
        let mut regions = Vec::with_capacity(raw.regions.len());
        for (name, region) in raw.regions {
            regions.push(self.region(name, region, timeouts)?);
        }
        self.unique_hosts(&regions)?;
        let cache = self.cache(raw.cache)?;
        let admin = raw.admin.map(|a| self.admin(a)).transpose()?;
        Ok(Config {
            cache,
            admin,
            http_listeners,
            https_listeners,
            certificates,
            shutdown_grace: raw.server.shutdown_grace.unwrap_or(Duration::from_secs(10)),
            cors,
            timeouts,
            retry,
            circuit,
            limits,
            regions,
        })
    }

    fn cache(&self, raw: RawCache) -> Result<CacheConfig, ConfigError> {
        let d = CacheConfig::default();
        let size = |v: Option<bytesize::ByteSize>, default: u64| v.map_or(default, |b| b.as_u64());
        let ttl = raw.ttl.unwrap_or(d.ttl);
        let cache = CacheConfig {
            enabled: raw.enabled.unwrap_or(d.enabled),
            capacity: size(raw.capacity, d.capacity),
            max_object_size: size(raw.max_object_size, d.max_object_size),
            chunk_size: size(raw.chunk_size, d.chunk_size),
            read_ahead_chunks: raw.read_ahead_chunks.unwrap_or(d.read_ahead_chunks),
            ttl,
            stale_while_revalidate: raw
                .stale_while_revalidate
                .unwrap_or(d.stale_while_revalidate),
            stale_if_error: raw.stale_if_error.unwrap_or(d.stale_if_error),
            negative_ttl: raw.negative_ttl.unwrap_or(d.negative_ttl),
            cache_control: raw
                .cache_control
                .unwrap_or_else(|| format!("max-age={}", ttl.as_secs())),
        };
        if !(64 * 1024..=64 * 1024 * 1024).contains(&cache.chunk_size) {
            return Err(self.err("cache.chunk_size", "must be between 64 KiB and 64 MiB"));
        }
        if cache.enabled && cache.capacity < cache.chunk_size * 4 {
            return Err(self.err("cache.capacity", "must hold at least four chunks"));
        }
        if http::HeaderValue::from_str(&cache.cache_control).is_err() {
            return Err(self.err("cache.cache_control", "not a valid header value"));
        }
        Ok(cache)
    }

    fn admin(&self, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            self.err(
                "admin.listen",
                format!("`{}` is not an IP:port address", raw.listen),
            )
        })?;
        let token = match (raw.token, raw.token_env) {
            (Some(_), Some(_)) => {
                return Err(self.err("admin.token", "set either token or token_env, not both"));
            }
            (Some(t), None) => Some(t),
            (None, Some(var)) => {
                Some((self.env)(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    self.err(
                        "admin.token_env",
                        format!("environment variable {var} is not set"),
                    )
                })?)
            }
            (None, None) => None,
        };
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(self.err("admin.token", "use at least 16 characters"));
        }
        if !listen.ip().is_loopback() && token.is_none() {
            return Err(self.err(
                "admin.token",
                "required when admin.listen is not a loopback address",
            ));
        }
        Ok(AdminConfig { listen, token })
    }

    fn addrs(&self, key: &str, values: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.parse().map_err(|_| {
                    self.err(
                        format!("{key}[{i}]"),
                        format!("`{v}` is not an IP:port address"),
                    )
                })
            })
            .collect()
    }

    fn certificates(&self, tls: RawTls) -> Result<Vec<CertificateConfig>, ConfigError> {
        let mut out = Vec::with_capacity(tls.certificates.len());
        for (i, c) in tls.certificates.into_iter().enumerate() {
            let key = format!("tls.certificates[{i}]");
            if c.server_names.is_empty() && !c.default {
                return Err(self.err(
                    format!("{key}.server_names"),
                    "empty: give host names or set default = true",
                ));
            }
            for (field, path) in [("cert", &c.cert), ("key", &c.key)] {
                if !path.is_file() {
                    return Err(self.err(
                        format!("{key}.{field}"),
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
            out.push(CertificateConfig {
                cert: c.cert,
                key: c.key,
                server_names: c
                    .server_names
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
                default: c.default,
            });
        }
        if out.iter().filter(|c| c.default).count() > 1 {
            return Err(self.err(
                "tls.certificates",
                "more than one certificate has default = true",
            ));
        }
        Ok(out)
    }

    fn cors(&self, raw: RawCors) -> Result<CorsConfig, ConfigError> {
        let d = CorsConfig::default();
        let cors = CorsConfig {
            allow_origin: raw.allow_origin.unwrap_or(d.allow_origin),
            allow_methods: raw.allow_methods.unwrap_or(d.allow_methods),
            max_age: raw.max_age.unwrap_or(d.max_age),
            allow_headers: raw.allow_headers.unwrap_or(d.allow_headers),
            expose_headers: raw.expose_headers.unwrap_or(d.expose_headers),
        };
        for (key, value) in [
            ("cors.allow_origin", &cors.allow_origin),
            ("cors.allow_methods", &cors.allow_methods),
            ("cors.allow_headers", &cors.allow_headers),
            ("cors.expose_headers", &cors.expose_headers),
        ] {
            if http::HeaderValue::from_str(value).is_err() {
                return Err(self.err(key, "not a valid header value"));
            }
        }
        Ok(cors)
    }

    fn region(
        &self,
        name: String,
        raw: RawRegion,
        defaults: Timeouts,
    ) -> Result<RegionConfig, ConfigError> {
        let key = |field: &str| format!("regions.{name}.{field}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(self.err(
                format!("regions.{name}"),
                "region names use a-z, 0-9 and - only",
            ));
        }
        let mut hosts = Vec::with_capacity(raw.hosts.len());
        for (i, host) in raw.hosts.iter().enumerate() {
            let host = host.to_ascii_lowercase();
            if host.is_empty()
                || host.contains(['/', ':', ' '])
                || http::uri::Authority::try_from(host.as_str()).is_err()
            {
                return Err(self.err(
                    format!("{}[{i}]", key("hosts")),
                    format!("`{host}` is not a host name"),
                ));
            }
            hosts.push(host);
        }
        let endpoint: http::Uri = raw
            .endpoint
            .parse()
            .map_err(|_| self.err(key("endpoint"), format!("`{}` is not a URL", raw.endpoint)))?;
        let scheme_ok = matches!(endpoint.scheme_str(), Some("http" | "https"));
        let path_ok = matches!(endpoint.path(), "" | "/") && endpoint.query().is_none();
        if !scheme_ok || endpoint.host().is_none() || !path_ok {
            return Err(self.err(
                key("endpoint"),
                "must be http:// or https:// host[:port] with no path",
            ));
        }
        if !is_valid_bucket(&raw.bucket) {
            return Err(self.err(
                key("bucket"),
                format!("`{}` is not a valid S3 bucket name", raw.bucket),
            ));
        }
        if raw.signing_region.is_empty()
            || !raw
                .signing_region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(self.err(
                key("signing_region"),
                "must be a region name such as eu-central-1",
            ));
        }
        if raw.addressing == Addressing::VirtualHosted
            && raw.bucket.contains('.')
            && endpoint.scheme_str() == Some("https")
        {
            return Err(self.err(
                key("addressing"),
                "a bucket name with dots cannot be virtual-hosted over https: use addressing = \"path\"",
            ));
        }
        let connect_to = match raw.connect_to {
            None => None,
            Some(ip) => Some(ip.parse().map_err(|_| {
                self.err(key("connect_to"), format!("`{ip}` is not an IP address"))
            })?),
        };
        let (credentials, credential_source) = self.credentials(&name, raw.credentials)?;
        let timeouts = raw
            .timeouts
            .map(|t| self.timeouts(&key("timeouts"), &t, defaults))
            .transpose()?;
        Ok(RegionConfig {
            name,
            hosts,
            endpoint,
            bucket: raw.bucket,
            signing_region: raw.signing_region,
            addressing: raw.addressing,
            key_prefix: raw.key_prefix,
            provider: raw.provider,
            connect_to,
            credentials,
            credential_source,
            timeouts,
        })
    }

    fn credentials(
        &self,
        region: &str,
        mut raw: RawCredentials,
    ) -> Result<(StaticCredentials, CredentialSource), ConfigError> {
        let base = format!("regions.{region}.credentials");
        let source = raw.source.take().unwrap_or(SourceKind::Static);
        let has_keys = raw.access_key_id.is_some()
            || raw.access_key_id_env.is_some()
            || raw.secret_access_key.is_some()
            || raw.secret_access_key_env.is_some();
        if source != SourceKind::Static {
            if has_keys {
                return Err(self.err(
                    format!("{base}.source"),
                    "keys are only read with source = \"static\"",
                ));
            }
            let profile = raw.profile.take();
            if profile.is_some()
                && !matches!(source, SourceKind::Profile | SourceKind::DefaultChain)
            {
                return Err(self.err(
                    format!("{base}.profile"),
                    "only used with source = \"profile\" or \"default-chain\"",
                ));
            }
            let dynamic = match source {
                SourceKind::DefaultChain => CredentialSource::DefaultChain { profile },
                SourceKind::Profile => CredentialSource::Profile { profile },
                SourceKind::Container => CredentialSource::Container,
                SourceKind::Instance => CredentialSource::Instance,
                SourceKind::WebIdentity => CredentialSource::WebIdentity,
                SourceKind::Static => CredentialSource::Static,
            };
            return Ok((StaticCredentials::none(), dynamic));
        }
        if raw.profile.is_some() {
            return Err(self.err(
                format!("{base}.profile"),
                "only used with source = \"profile\" or \"default-chain\"",
            ));
        }
        let pick = |inline: Option<String>,
                    env_name: Option<String>,
                    field: &str,
                    required: bool| match (inline, env_name) {
            (Some(_), Some(_)) => Err(self.err(
                format!("{base}.{field}"),
                format!("set either {field} or {field}_env, not both"),
            )),
            (Some(v), None) if v.is_empty() => Err(self.err(format!("{base}.{field}"), "is empty")),
            (Some(v), None) => Ok(Some(v)),
            (None, Some(var)) => match (self.env)(&var) {
                Some(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(self.err(
                    format!("{base}.{field}_env"),
                    format!("environment variable {var} is not set"),
                )),
            },
            (None, None) if required => Err(self.err(
                format!("{base}.{field}"),
                format!("missing: set {field} or {field}_env"),
            )),
            (None, None) => Ok(None),
        };
        let access_key_id = pick(
            raw.access_key_id,
            raw.access_key_id_env,
            "access_key_id",
            true,
        )?;
        let secret_access_key = pick(
            raw.secret_access_key,
            raw.secret_access_key_env,
            "secret_access_key",
            true,
        )?;
        let session_token = pick(
            raw.session_token,
            raw.session_token_env,
            "session_token",
            false,
        )?;
        match (access_key_id, secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => Ok((
                StaticCredentials {
                    access_key_id,
                    secret_access_key,
                    session_token,
                },
                CredentialSource::Static,
            )),
            _ => Err(self.err(base, "incomplete credentials")),
        }
    }

    fn unique_hosts(&self, regions: &[RegionConfig]) -> Result<(), ConfigError> {
        let mut seen = BTreeMap::new();
        for region in regions {
            for host in &region.hosts {
                if let Some(other) = seen.insert(host.as_str(), region.name.as_str()) {
                    return Err(self.err(
                        format!("regions.{}.hosts", region.name),
                        format!("`{host}` is already a host of region {other}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// S3 bucket naming rules: 3–63 of a-z, 0-9, `.`, `-`, starting and ending alphanumeric.
fn is_valid_bucket(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
http = ["127.0.0.1:8080"]

[regions.eu1]
hosts = ["EU1-addpipe.s3.eu-central-1.amazonaws.com"]
endpoint = "https://s3.eu-central-1.amazonaws.com"
bucket = "eu1-addpipe"
signing_region = "eu-central-1"
provider = "aws"
credentials = { access_key_id_env = "EU1_KEY", secret_access_key_env = "EU1_SECRET" }
"#;

    fn env(name: &str) -> Option<String> {
        match name {
            "EU1_KEY" => Some("AKIA".into()),
            "EU1_SECRET" => Some("wJalrXUtnFEMI-value".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("test.toml", text, &env)
    }

    #[test]
    fn good_config_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.regions.len(), 1);
        let r = &c.regions[0];
        assert_eq!(r.hosts, ["eu1-addpipe.s3.eu-central-1.amazonaws.com"]);
        assert_eq!(r.addressing, Addressing::VirtualHosted);
        assert_eq!(r.credentials.access_key_id, "AKIA");
        assert_eq!(c.cors.max_age, 3000);
        assert!(!format!("{:?}", r.credentials).contains("wJalrXUtnFEMI"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("provider = \"aws\"", "provider = \"aws\"\ncolour = 1"),
                "regions.eu1",
            ),
            (
                GOOD.replace("https://s3", "ftp://s3"),
                "regions.eu1.endpoint",
            ),
            (
                GOOD.replace("eu1-addpipe\"", "EU1_addpipe\""),
                "regions.eu1.bucket",
            ),
            (
                GOOD.replace("EU1_SECRET", "MISSING"),
                "regions.eu1.credentials.secret_access_key_env",
            ),
            (
                GOOD.replace("127.0.0.1:8080", "localhost"),
                "server.http[0]",
            ),
            (
                GOOD.replace("[server]", "[server]\nshutdown_grace = \"soon\""),
                "server (line",
            ),
        ];
        let second_region = GOOD.replace("[regions.eu1]", "[regions.eu2]");
        let duplicate_host = format!(
            "{GOOD}\n{}",
            &second_region[second_region.find("[regions.eu2]").unwrap_or(0)..]
        );
        let cases = cases.into_iter().chain([
            (
                GOOD.replace("[server]", "[server]\nhttps = [\"127.0.0.1:8443\"]"),
                "tls.certificates",
            ),
            (duplicate_host, "regions.eu2.hosts"),
            (
                GOOD.replace("[regions.eu1]", "[regions.EU_1]"),
                "regions.EU_1",
            ),
            (
                GOOD.replace("provider = \"aws\"", "provider = \"gcs\""),
                "regions.eu1 (line",
            ),
            (
                GOOD.replace("eu-central-1\"\nprovider", "eu central\"\nprovider"),
                "regions.eu1.signing_region",
            ),
            (
                GOOD.replace(
                    "https://s3.eu-central-1.amazonaws.com",
                    "https://s3.eu-central-1.amazonaws.com/bucket",
                ),
                "regions.eu1.endpoint",
            ),
        ]);
        for (text, key) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.key.starts_with(key), "{key}: {err}");
            assert_eq!(err.file, "test.toml");
        }
    }
}
