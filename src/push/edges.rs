//! Purging a recording from the edges' caches (`push.edges`): `DELETE
//! {admin}/cache/{region}/{account}/{name}` on every gateway's admin listener, so no edge keeps
//! serving bytes a push replaced.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::metrics::PushMetrics;
use crate::config::EdgeConfig;

/// One edge's answer to a purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// The edge's admin URL.
    pub admin: String,
    /// `None` when purged, else why not.
    pub error: Option<String>,
}

/// The edges and a client to reach them.
#[derive(Debug, Clone)]
pub struct Edges {
    edges: Vec<EdgeConfig>,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    metrics: PushMetrics,
}

impl Edges {
    /// The configured edges.
    pub fn new(edges: Vec<EdgeConfig>, metrics: PushMetrics) -> Result<Self, rustls::Error> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(super::webhook::tls_config()?)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Edges {
            edges,
            client: Client::builder(TokioExecutor::new()).build(https),
            metrics,
        })
    }

    /// Purges a recording's four files on every edge, each tried a few times.
    pub async fn purge(&self, region: &str, account: &str, name: &str) -> Vec<Purged> {
        let purges = self.edges.iter().map(|edge| async move {
            let mut error = None;
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                match self.purge_one(edge, region, account, name).await {
                    Ok(()) => {
                        error = None;
                        break;
                    }
                    Err(e) => error = Some(e),
                }
            }
            self.metrics
                .purge(if error.is_none() { "purged" } else { "failed" });
            if let Some(e) = &error {
                tracing::warn!(admin = %edge.admin, %region, %account, %name, error = %e, "edge purge failed");
            }
            Purged {
                admin: edge.admin.clone(),
                error,
            }
        });
        futures_util::future::join_all(purges).await
    }

    async fn purge_one(
        &self,
        edge: &EdgeConfig,
        region: &str,
        account: &str,
        name: &str,
    ) -> Result<(), String> {
        let mut request = Request::builder()
            .method(Method::DELETE)
            .uri(format!("{}/cache/{region}/{account}/{name}", edge.admin));
        if let Some(token) = &edge.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let response = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}
