//! A minimal signed S3 writer for seeding test and demo backends: create a bucket, put an
//! object. The product's write side uses aws-sdk-s3; this exists so the testbed needs no
//! write path inside the gateway.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A failed write: what was asked and what the backend said.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct WriteError {
    /// The request (`PUT bucket/key`).
    pub what: String,
    /// The status and body, or the transport error.
    pub reason: String,
}

/// Signs path-style requests for one bucket of a plain-HTTP backend.
#[derive(Debug, Clone)]
pub struct S3Client {
    endpoint: String,
    /// Sent as `Host` (and signed) instead of the endpoint's authority.
    host: Option<String>,
    bucket: String,
    /// Put in front of every key, as the gateway's region config does.
    key_prefix: String,
    region: String,
    credentials: Credentials,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl S3Client {
    /// A client for `bucket` at `endpoint` (`http://host:port`), signing for `region`.
    pub fn new(endpoint: &str, bucket: &str, region: &str, access_key: &str, secret: &str) -> Self {
        S3Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            host: None,
            bucket: bucket.to_string(),
            key_prefix: String::new(),
            region: region.to_string(),
            credentials: Credentials::new(access_key, secret, None, None, "testbed"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Every key gets this prefix (as a region's `key_prefix`).
    pub fn with_key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_string();
        self
    }

    /// Connects to the endpoint but names `host` in `Host` (a backend reached through
    /// `connect_to`).
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    /// Creates the bucket unless it exists (outside us-east-1 with its LocationConstraint,
    /// as S3 requires).
    pub async fn ensure_bucket(&self) -> Result<(), WriteError> {
        let url = format!("{}/{}", self.endpoint, self.bucket);
        let (status, _) = self
            .send(Method::HEAD, &url, HeaderMap::new(), Bytes::new())
            .await?;
        if status.is_success() {
            return Ok(());
        }
        let body = if self.region == "us-east-1" {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            ))
        };
        self.expect_success(Method::PUT, &url, HeaderMap::new(), body)
            .await
    }

    /// Writes `{key_prefix}{key}` with `headers` (storage class, encryption, content type).
    pub async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<(), WriteError> {
        let full = format!("{}{key}", self.key_prefix);
        let url = format!(
            "{}/{}/{}",
            self.endpoint,
            self.bucket,
            s3edge::upstream::encode_key(&full)
        );
        self.expect_success(Method::PUT, &url, headers, body).await
    }

    async fn expect_success(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(), WriteError> {
        let what = format!("{method} {url}");
        let (status, text) = self.send(method, url, headers, body).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(WriteError {
                what,
                reason: format!("{status}: {text}"),
            })
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, String), WriteError> {
        let what = format!("{method} {url}");
        let failed = |reason: String| WriteError {
            what: what.clone(),
            reason,
        };
        let request = self
            .signed(method, url, headers, body)
            .map_err(|e| failed(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn signed(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(host) = &self.host {
            headers.insert(http::header::HOST, host.parse()?);
        }
        let signable_headers = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable = SignableRequest::new(
            method.as_str(),
            url,
            signable_headers,
            SignableBody::Bytes(&body),
        )?;
        // S3's rules: keys encoded once, paths not normalised, the payload hash in a header.
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()?
            .into();
        let (instructions, _) = sign(signable, &params)?.into_parts();
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(body))?;
        *request.headers_mut() = headers;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }
}
