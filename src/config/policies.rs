//! The resilience and limits tables: upstream timeouts, retries, the per-region circuit
//! breaker, and what a client may send or hold open.

use std::time::Duration;

use super::document::Section;

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

/// `[timeouts]` or `[regions.X.timeouts]`: unset keys take `defaults`.
pub(super) fn timeouts(t: Option<&Section<'_, '_>>, defaults: Timeouts) -> Timeouts {
    let Some(t) = t else {
        return defaults;
    };
    let timeouts = Timeouts {
        connect: t.positive_duration("connect").unwrap_or(defaults.connect),
        response_head: t
            .positive_duration("response_head")
            .unwrap_or(defaults.response_head),
        body_idle: t
            .positive_duration("body_idle")
            .unwrap_or(defaults.body_idle),
        pool_idle: t.duration("pool_idle").unwrap_or(defaults.pool_idle),
    };
    t.finish();
    timeouts
}

/// `[retry]`.
pub(super) fn retry(t: Option<&Section<'_, '_>>) -> RetryPolicy {
    let d = RetryPolicy::default();
    let Some(t) = t else {
        return d;
    };
    let retry = RetryPolicy {
        attempts: t
            .number("attempts", 1..=10)
            .map_or(d.attempts, |n| n as u32),
        backoff: t.duration("backoff").unwrap_or(d.backoff),
        max_backoff: t.duration("max_backoff").unwrap_or(d.max_backoff),
    };
    if retry.max_backoff < retry.backoff {
        t.problem("max_backoff", "must not be below retry.backoff");
    }
    t.finish();
    retry
}

/// `[circuit]`.
pub(super) fn circuit(t: Option<&Section<'_, '_>>) -> CircuitPolicy {
    let d = CircuitPolicy::default();
    let Some(t) = t else {
        return d;
    };
    let circuit = CircuitPolicy {
        failures: t
            .number("failures", 0..=u64::from(u32::MAX))
            .map_or(d.failures, |n| n as u32),
        open_for: t.positive_duration("open_for").unwrap_or(d.open_for),
        max_open_for: t.duration("max_open_for").unwrap_or(d.max_open_for),
    };
    if circuit.max_open_for < circuit.open_for {
        t.problem("max_open_for", "must not be below open_for");
    }
    t.finish();
    circuit
}

/// `[limits]`.
pub(super) fn limits(t: Option<&Section<'_, '_>>) -> Limits {
    let d = Limits::default();
    let Some(t) = t else {
        return d;
    };
    let window = |name: &str, default: u32| match t.size(name) {
        Some(w) if (65_535..=i32::MAX as u64).contains(&w) => w as u32,
        Some(_) => {
            t.problem(name, "must be between 64 KiB and 2 GiB");
            default
        }
        None => default,
    };
    let max_header_bytes = match t.size("max_header_bytes") {
        // hyper's HTTP/1.1 read buffer cannot be smaller than 8 KiB.
        Some(n) if (8192..=1024 * 1024).contains(&n) => n as usize,
        Some(_) => {
            t.problem("max_header_bytes", "must be between 8 KiB and 1 MiB");
            d.max_header_bytes
        }
        None => d.max_header_bytes,
    };
    let limits = Limits {
        max_connections: t
            .number("max_connections", 1..=10_000_000)
            .map_or(d.max_connections, |n| n as usize),
        max_header_bytes,
        max_uri_bytes: t
            .number("max_uri_bytes", 64..=65_535)
            .map_or(d.max_uri_bytes, |n| n as usize),
        header_read_timeout: t
            .positive_duration("header_read_timeout")
            .unwrap_or(d.header_read_timeout),
        keep_alive_idle: t
            .positive_duration("keep_alive_idle")
            .unwrap_or(d.keep_alive_idle),
        h2_max_streams: t
            .number("h2_max_streams", 1..=u64::from(u32::MAX))
            .map_or(d.h2_max_streams, |n| n as u32),
        h2_stream_window: window("h2_stream_window", d.h2_stream_window),
        h2_connection_window: window("h2_connection_window", d.h2_connection_window),
    };
    t.finish();
    limits
}
