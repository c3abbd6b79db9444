//! Purging a recording from the edges' caches (`push.edges`): `DELETE
//! {admin}/cache/{region}/{account}/{name}` on a gateway's admin listener, so no edge keeps
//! serving bytes a push replaced or a delete removed. Purges are queued in the database
//! (see `deletion`), so an edge that is down is purged when it comes back.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::metrics::PushMetrics;
use super::store::PurgeRow;
use crate::config::EdgeConfig;

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

    /// The admin URLs of every edge (the purge queue's keys).
    pub fn admins(&self) -> Vec<String> {
        self.edges.iter().map(|e| e.admin.clone()).collect()
    }

    /// One try of a queued purge; an edge no longer configured counts as done.
    pub async fn try_purge(&self, purge: &PurgeRow) -> Result<(), String> {
        let Some(edge) = self.edges.iter().find(|e| e.admin == purge.admin) else {
            return Ok(());
        };
        let result = self
            .purge_one(edge, &purge.region, &purge.account, &purge.name)
            .await;
        self.metrics
            .purge(if result.is_ok() { "purged" } else { "failed" });
        result
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
        // An admin listener answers a purge at once; a DELETE waits for up to three tries.
        let response = tokio::time::timeout(Duration::from_secs(2), self.client.request(request))
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
