//! The resilience and limits tables: upstream timeouts, retries, the per-region circuit
//! breaker, and what a client may send or hold open.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

/// Upstream time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// From sending the request to the response head.
    pub response_head: Duration,
    /// Longest silence between two body frames before the transfer is abandoned.
    pub body_idle: Duration,
    /// Idle connections kept in the pool this long.
    pub pool_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            response_head: Duration::from_secs(15),
            body_idle: Duration::from_secs(15),
            pool_idle: Duration::from_secs(60),
        }
    }
}

/// Retries of an idempotent GET/HEAD that failed before anything reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total, the first included (1 = no retry).
    pub attempts: u32,
    /// Base of the exponential backoff; each wait is drawn uniformly below its cap.
    pub backoff: Duration,
    /// Cap of one wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// The per-region circuit breaker: after `failures` consecutive failed requests the region
/// fails fast (or is served stale) for `open_for`, then one trial request decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    /// Consecutive failures that open the circuit (0 = never).
    pub failures: u32,
    /// First cool-down; it doubles while trials keep failing.
    pub open_for: Duration,
    /// Longest cool-down.
    pub max_open_for: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        CircuitPolicy {
            failures: 5,
            open_for: Duration::from_secs(2),
            max_open_for: Duration::from_secs(30),
        }
    }
}

/// What a client may send or hold open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections, at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Request head (request line and headers) in bytes; more gets 431.
    pub max_header_bytes: usize,
    /// Request target in bytes; longer gets 414.
    pub max_uri_bytes: usize,
    /// Time allowed for a request head to arrive (and, HTTP/1.1, idle time between requests).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 and HTTP/2).
    pub keep_alive_idle: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_streams: u32,
    /// HTTP/2 flow-control window of one stream, bytes.
    pub h2_stream_window: u32,
    /// HTTP/2 flow-control window of a connection, bytes.
    pub h2_connection_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 2048,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(60),
            h2_max_streams: 128,
            h2_stream_window: 1024 * 1024,
            h2_connection_window: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    #[serde(default, with = "humantime_serde")]
    connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    response_head: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    body_idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pool_idle: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCircuit {
    failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    open_for: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_open_for: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_connections: Option<usize>,
    max_header_bytes: Option<bytesize::ByteSize>,
    max_uri_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keep_alive_idle: Option<Duration>,
    h2_max_streams: Option<u32>,
    h2_stream_window: Option<bytesize::ByteSize>,
    h2_connection_window: Option<bytesize::ByteSize>,
}

impl Validator<'_> {
    /// `[timeouts]` or `[regions.X.timeouts]`: unset keys take `defaults`.
    pub(super) fn timeouts(
        &self,
        table: &str,
        raw: &RawTimeouts,
        defaults: Timeouts,
    ) -> Result<Timeouts, ConfigError> {
        let timeouts = Timeouts {
            connect: raw.connect.unwrap_or(defaults.connect),
            response_head: raw.response_head.unwrap_or(defaults.response_head),
            body_idle: raw.body_idle.unwrap_or(defaults.body_idle),
            pool_idle: raw.pool_idle.unwrap_or(defaults.pool_idle),
        };
        for (key, value) in [
            ("connect", timeouts.connect),
            ("response_head", timeouts.response_head),
            ("body_idle", timeouts.body_idle),
        ] {
            if value.is_zero() {
                return Err(self.err(format!("{table}.{key}"), "must be greater than zero"));
            }
        }
        Ok(timeouts)
    }

    pub(super) fn retry(&self, raw: RawRetry) -> Result<RetryPolicy, ConfigError> {
        let d = RetryPolicy::default();
        let retry = RetryPolicy {
            attempts: raw.attempts.unwrap_or(d.attempts),
            backoff: raw.backoff.unwrap_or(d.backoff),
            max_backoff: raw.max_backoff.unwrap_or(d.max_backoff),
        };
        if !(1..=10).contains(&retry.attempts) {
            return Err(self.err("retry.attempts", "must be between 1 and 10"));
        }
        if retry.max_backoff < retry.backoff {
            return Err(self.err("retry.max_backoff", "must not be below retry.backoff"));
        }
        Ok(retry)
    }

    pub(super) fn circuit(&self, raw: RawCircuit) -> Result<CircuitPolicy, ConfigError> {
        let d = CircuitPolicy::default();
        let circuit = CircuitPolicy {
            failures: raw.failures.unwrap_or(d.failures),
            open_for: raw.open_for.unwrap_or(d.open_for),
            max_open_for: raw.max_open_for.unwrap_or(d.max_open_for),
        };
        if circuit.open_for.is_zero() {
            return Err(self.err("circuit.open_for", "must be greater than zero"));
        }
        if circuit.max_open_for < circuit.open_for {
            return Err(self.err("circuit.max_open_for", "must not be below open_for"));
        }
        Ok(circuit)
    }

    pub(super) fn limits(&self, raw: RawLimits) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let size = |v: Option<bytesize::ByteSize>, default: u64| v.map_or(default, |b| b.as_u64());
        let window = |key: &str, v: Option<bytesize::ByteSize>, default: u32| {
            u32::try_from(size(v, u64::from(default)))
                .ok()
                .filter(|w| (65_535..=i32::MAX as u32).contains(w))
                .ok_or_else(|| self.err(key, "must be between 64 KiB and 2 GiB"))
        };
        let limits = Limits {
            max_connections: raw.max_connections.unwrap_or(d.max_connections),
            max_header_bytes: usize::try_from(size(raw.max_header_bytes, 16 * 1024))
                .unwrap_or(usize::MAX),
            max_uri_bytes: raw.max_uri_bytes.unwrap_or(d.max_uri_bytes),
            header_read_timeout: raw.header_read_timeout.unwrap_or(d.header_read_timeout),
            keep_alive_idle: raw.keep_alive_idle.unwrap_or(d.keep_alive_idle),
            h2_max_streams: raw.h2_max_streams.unwrap_or(d.h2_max_streams),
            h2_stream_window: window(
                "limits.h2_stream_window",
                raw.h2_stream_window,
                d.h2_stream_window,
            )?,
            h2_connection_window: window(
                "limits.h2_connection_window",
                raw.h2_connection_window,
                d.h2_connection_window,
            )?,
        };
        if limits.max_connections == 0 {
            return Err(self.err("limits.max_connections", "must be at least 1"));
        }
        // hyper's HTTP/1.1 read buffer cannot be smaller than 8 KiB.
        if !(8192..=1024 * 1024).contains(&limits.max_header_bytes) {
            return Err(self.err("limits.max_header_bytes", "must be between 8 KiB and 1 MiB"));
        }
        if !(64..=65_535).contains(&limits.max_uri_bytes) {
            return Err(self.err("limits.max_uri_bytes", "must be between 64 and 65535"));
        }
        for (key, value) in [
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.keep_alive_idle", limits.keep_alive_idle),
        ] {
            if value.is_zero() {
                return Err(self.err(key, "must be greater than zero"));
            }
        }
        if limits.h2_max_streams == 0 {
            return Err(self.err("limits.h2_max_streams", "must be at least 1"));
        }
        Ok(limits)
    }
}
