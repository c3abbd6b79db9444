//! `video_copied_s3` webhooks: the JSON body, its HMAC-SHA256 signature
//! (`X-S3edge-Signature: sha256=<hex>`, as receivers of GitHub-style webhooks verify), and the
//! durable delivery loop: a delivery keeps its id on every retry, is retried on timeouts and
//! non-2xx after each of `push.webhook_retry_delays`, and is done at the first 2xx.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;

use super::schedule::{millis, now_ms};
use super::store::{DeliveryRow, Store};
use super::urls::Urls;

/// The event name.
pub const EVENT: &str = "video_copied_s3";

/// The body of a `video_copied_s3` delivery.
#[derive(Debug, Serialize)]
pub struct Copied<'a> {
    /// Always `video_copied_s3`.
    pub event: &'static str,
    /// Environment.
    pub env: &'a str,
    /// Account hash.
    pub account: &'a str,
    /// Recording name.
    pub name: &'a str,
    /// Region of the environment.
    pub region: &'a str,
    /// Destination that has all files.
    pub destination: &'a str,
    /// Origin and edge URLs.
    pub urls: &'a Urls,
    /// When the destination got the last file (RFC 3339).
    pub pushed_at: String,
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A new delivery id.
pub fn delivery_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Sends due deliveries until `stop`.
pub struct Deliverer {
    store: Store,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    delays: Vec<Duration>,
    timeout: Duration,
    metrics: super::metrics::PushMetrics,
}

impl Deliverer {
    /// A deliverer with the service's retry waits and receiver timeout.
    pub fn new(
        store: Store,
        delays: Vec<Duration>,
        timeout: Duration,
        metrics: super::metrics::PushMetrics,
    ) -> Result<Self, rustls::Error> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Deliverer {
            store,
            client: Client::builder(TokioExecutor::new()).build(https),
            delays,
            timeout,
            metrics,
        })
    }

    /// Delivers what is due, then waits for a wake-up or the next due time.
    pub async fn run(
        self,
        wake: std::sync::Arc<tokio::sync::Notify>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let due = match self.store.due_deliveries(now_ms()).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(%error, "webhook deliveries unreadable");
                    Vec::new()
                }
            };
            let sends = due.into_iter().map(|d| self.deliver(d));
            futures_util::future::join_all(sends).await;
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn deliver(&self, d: DeliveryRow) {
        let outcome = self.send(&d).await;
        let delivered = outcome.is_ok();
        let error = outcome.err();
        let next = if delivered {
            None
        } else {
            usize::try_from(d.attempts)
                .ok()
                .and_then(|i| self.delays.get(i))
                .map(|delay| now_ms() + millis(*delay))
        };
        let label = match (delivered, next) {
            (true, _) => "delivered",
            (false, Some(_)) => "retry",
            (false, None) => "failed",
        };
        self.metrics.delivery(label);
        if !delivered {
            tracing::info!(id = %d.id, url = %d.url, error = error.as_deref().unwrap_or("-"), outcome = label, "webhook delivery failed");
        }
        // A receiver that answered 2xx must not hear from us again: kept trying until saved.
        super::until_saved("webhook delivery state", || {
            self.store
                .delivery_attempted(&d.id, delivered, error.as_deref(), next)
        })
        .await;
    }

    async fn send(&self, d: &DeliveryRow) -> Result<(), String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(&d.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "s3edge-webhook")
            .header("x-s3edge-event", EVENT)
            .header("x-s3edge-delivery", &d.id)
            .header(
                "x-s3edge-signature",
                signature(&d.secret, d.body.as_bytes()),
            )
            .body(Full::new(Bytes::from(d.body.clone())))
            .map_err(|e| format!("bad request: {e}"))?;
        let response = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Read (a little of) the answer so the connection can be reused.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            Ok::<_, String>(status)
        })
        .await
        .map_err(|_| "timed out".to_string())??;
        if response.is_success() {
            Ok(())
        } else {
            Err(format!("answered {response}"))
        }
    }
}

/// TLS to receivers: ring, the web PKI roots.
pub(crate) fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_github() {
        // HMAC-SHA256("It's a Secret to Everybody", "Hello, World!"), GitHub's documented example.
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
