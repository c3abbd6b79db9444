//! The two error layers: [`GatewayError`] for the request path (each variant knows its
//! status and short public body; the detail, never a credential, goes to the log) and
//! [`StartupError`] for building and binding the gateway (reported once, to the operator).

use http::StatusCode;

/// Everything that can end a request without a backend answer passed through.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The method is not GET, HEAD or OPTIONS.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The URL names no file this gateway serves, or the backend has no such object.
    #[error("not found")]
    NotFound,
    /// The path is malformed (encoded bytes, dot or empty segments, bad characters).
    #[error("bad path: {0}")]
    BadPath(&'static str),
    /// A CORS preflight asked for a method or header we do not allow.
    #[error("preflight refused: {0}")]
    PreflightRefused(&'static str),
    /// The backend answered a status we do not pass through (403, 5xx, 400, ...).
    #[error("backend answered {status} ({code})")]
    UpstreamStatus {
        /// The backend's status.
        status: StatusCode,
        /// The S3 error code when the backend sent one, for the log only.
        code: String,
    },
    /// The bucket lives in another region: a configuration error on our side.
    #[error("bucket {bucket} is in region {actual}, not where the config points")]
    WrongRegion {
        /// The configured bucket.
        bucket: String,
        /// The region the backend named in `x-amz-bucket-region`.
        actual: String,
    },
    /// A cache fetch from the backend failed before any byte was sent.
    #[error("backend fetch failed")]
    UpstreamFetch,
    /// The backend did not answer in time.
    #[error("backend timed out ({0})")]
    UpstreamTimeout(&'static str),
    /// The backend could not be reached or the connection failed.
    #[error("backend unreachable")]
    UpstreamConnect(#[source] hyper_util::client::legacy::Error),
    /// The region's circuit is open: its backend kept failing, so it is not asked now.
    #[error("region unavailable (circuit open)")]
    RegionUnavailable,
    /// The region's credential source has not answered yet.
    #[error("no credentials yet")]
    NoCredentials,
    /// The request target is longer than the configured limit.
    #[error("uri too long")]
    UriTooLong,
    /// The request could not be signed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// A bug or an impossible state; never caused by input.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The error of a fetch shared by collapsed requests.
    #[error(transparent)]
    Shared(std::sync::Arc<GatewayError>),
}

/// Why the gateway could not start (or a reload could not be built).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    /// A region's upstream client could not be built.
    #[error("region {region}: {reason}")]
    Upstream {
        /// The region.
        region: String,
        /// What is wrong.
        reason: String,
    },
    /// The push service could not start (spool, database).
    #[error("push: {0}")]
    Push(String),
    /// A CORS header value is not a valid header.
    #[error("cors: {0} is not a valid header value")]
    Cors(&'static str),
}

impl GatewayError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Shared(inner) => inner.status(),
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::BadPath(_) => StatusCode::BAD_REQUEST,
            GatewayError::PreflightRefused(_) => StatusCode::FORBIDDEN,
            GatewayError::UpstreamStatus { .. }
            | GatewayError::WrongRegion { .. }
            | GatewayError::UpstreamFetch
            | GatewayError::UpstreamConnect(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::RegionUnavailable | GatewayError::NoCredentials => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::Signing(_) | GatewayError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The short body the client sees: fixed text, never backend detail.
    pub fn public_message(&self) -> &'static str {
        match self {
            GatewayError::Shared(inner) => inner.public_message(),
            GatewayError::MethodNotAllowed => "method not allowed\n",
            GatewayError::NotFound => "not found\n",
            GatewayError::BadPath(_) => "bad request\n",
            GatewayError::PreflightRefused(_) => "cors preflight refused\n",
            GatewayError::UpstreamStatus { .. }
            | GatewayError::WrongRegion { .. }
            | GatewayError::UpstreamFetch
            | GatewayError::UpstreamConnect(_) => "bad gateway\n",
            GatewayError::UpstreamTimeout(_) => "gateway timeout\n",
            GatewayError::RegionUnavailable | GatewayError::NoCredentials => {
                "service unavailable\n"
            }
            GatewayError::UriTooLong => "uri too long\n",
            GatewayError::Signing(_) | GatewayError::Internal(_) => "internal error\n",
        }
    }

    /// The error and its sources, for the log (never for the client).
    pub fn detail(&self) -> String {
        let mut detail = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        detail
    }

    /// The metrics label of an upstream failure.
    pub fn upstream_kind(&self) -> &'static str {
        match self {
            GatewayError::Shared(inner) => inner.upstream_kind(),
            GatewayError::UpstreamConnect(e) if e.is_connect() => "connect",
            GatewayError::UpstreamConnect(_) => "reset",
            GatewayError::UpstreamTimeout("connect") => "timeout_connect",
            GatewayError::UpstreamTimeout(_) => "timeout_head",
            GatewayError::UpstreamStatus { .. } => "status",
            GatewayError::RegionUnavailable => "circuit_open",
            _ => "other",
        }
    }

    /// Whether an idempotent request that failed this way may be sent again: the backend
    /// was unreachable or dropped the connection. A response-head timeout is not retried,
    /// so the client hears within the configured time.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamConnect(_) | GatewayError::UpstreamTimeout("connect")
        )
    }

    /// Whether operators need to hear about it (server-side faults), as opposed to client
    /// noise. A fast-failed request of an open circuit is not: the circuit logged once.
    pub fn is_server_fault(&self) -> bool {
        self.status().is_server_error() && !self.is_circuit_open()
    }

    /// A request failed fast because its region's circuit is open.
    fn is_circuit_open(&self) -> bool {
        match self {
            GatewayError::Shared(inner) => inner.is_circuit_open(),
            GatewayError::RegionUnavailable => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_circuit_is_a_503_but_not_logged_as_a_fault() {
        let fast = GatewayError::RegionUnavailable;
        assert_eq!(fast.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!fast.is_server_fault());
        assert!(!GatewayError::Shared(std::sync::Arc::new(fast)).is_server_fault());
        assert!(GatewayError::UpstreamTimeout("response head").is_server_fault());
        assert!(!GatewayError::NotFound.is_server_fault());
    }
}
