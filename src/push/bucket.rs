//! A destination bucket through aws-sdk-s3: its client (one per destination, with the request
//! checksum, retry and timeout settings every upload relies on), the storage policy it applies
//! (ours: the provider's storage classes, SSE and the environment tag; a customer's: their
//! storage class only), object keys, the listing, deleting and lifecycle calls of the sweeps,
//! and S3 errors as [`UploadError`] codes.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::model::Destination;
use crate::config::{Addressing, CredentialSource, RegionConfig};
use crate::policy;
use crate::route::FileKind;

/// The object tag naming a recording's environment.
pub const ENV_TAG: &str = "s3edge-env";

/// Why an upload failed: the S3 error code (or a transport class) and a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct UploadError {
    /// `AccessDenied`, `NoSuchBucket`, `InvalidStorageClass`, … or `Timeout`, `Connect`,
    /// `Http503`, `Io`, `Config`.
    pub code: String,
    /// What happened.
    pub message: String,
}

impl UploadError {
    pub(super) fn new(code: &str, message: impl Into<String>) -> Self {
        UploadError {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Where and how one destination is written.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub(super) client: Client,
    /// The bucket name.
    pub bucket: String,
    /// In front of `{ACCOUNT}/{NAME}{suffix}`.
    pub key_prefix: String,
    policy: Policy,
}

#[derive(Debug, Clone)]
enum Policy {
    /// Our bucket: the provider's storage classes and encryption.
    Complimentary(crate::config::Provider),
    /// A customer's: their storage class, if any; no encryption header.
    Customer(Option<String>),
}

impl Bucket {
    /// Which of `keys` exist: one ListObjectsV2 under `prefix` (their common prefix).
    pub async fn existing(
        &self,
        prefix: &str,
        keys: &[String],
    ) -> Result<Vec<String>, UploadError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let listed = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(sdk_error)?;
            found.extend(
                listed
                    .contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter(|k| keys.iter().any(|want| want == k))
                    .map(str::to_string),
            );
            match listed.next_continuation_token() {
                Some(next) if listed.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        found.sort();
        Ok(found)
    }

    /// Deletes `keys`, at most 1,000 per DeleteObjects request (S3's limit); a key that is
    /// already gone counts as deleted.
    pub async fn delete(&self, keys: &[String]) -> Result<(), UploadError> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| UploadError::new("Request", e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| UploadError::new("Request", e.to_string()))?;
            let answer = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(sdk_error)?;
            if let Some(e) = answer
                .errors()
                .iter()
                .find(|e| e.code() != Some("NoSuchKey"))
            {
                return Err(UploadError::new(
                    e.code().unwrap_or("DeleteObjects"),
                    format!(
                        "{}: {}",
                        e.key().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The bucket's lifecycle rules (none when it has no configuration).
    pub async fn lifecycle_rules(
        &self,
    ) -> Result<Vec<aws_sdk_s3::types::LifecycleRule>, UploadError> {
        match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(answer) => Ok(answer.rules().to_vec()),
            Err(e) => {
                let e = sdk_error(e);
                if e.code == "NoSuchLifecycleConfiguration" {
                    Ok(Vec::new())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Puts the bucket's lifecycle configuration (`None`: deletes it).
    pub async fn put_lifecycle(
        &self,
        configuration: Option<aws_sdk_s3::types::BucketLifecycleConfiguration>,
    ) -> Result<(), UploadError> {
        match configuration {
            Some(c) => self
                .client
                .put_bucket_lifecycle_configuration()
                .bucket(&self.bucket)
                .lifecycle_configuration(c)
                .send()
                .await
                .map(|_| ())
                .map_err(sdk_error),
            None => self
                .client
                .delete_bucket_lifecycle()
                .bucket(&self.bucket)
                .send()
                .await
                .map(|_| ())
                .map_err(sdk_error),
        }
    }

    /// The object key of a file.
    pub fn key(&self, account: &str, name: &str, kind: FileKind) -> String {
        format!("{}{account}/{name}{}", self.key_prefix, kind.suffix())
    }

    pub(super) fn storage_class(&self, kind: FileKind) -> Option<String> {
        match &self.policy {
            Policy::Complimentary(provider) => {
                Some(policy::storage_class(*provider, kind).to_string())
            }
            Policy::Customer(class) => class.clone(),
        }
    }

    /// `x-amz-tagging` of our bucket's objects (environment names need no escaping); a
    /// customer's bucket gets none (not every S3-compatible store keeps tags).
    pub(super) fn tagging(&self, env: &str) -> Option<String> {
        match &self.policy {
            Policy::Complimentary(_) => Some(format!("{ENV_TAG}={env}")),
            Policy::Customer(_) => None,
        }
    }

    pub(super) fn encrypted(&self) -> bool {
        match &self.policy {
            Policy::Complimentary(provider) => policy::server_side_encryption(*provider).is_some(),
            Policy::Customer(_) => false,
        }
    }
}

pub(super) async fn complimentary_bucket(region: &RegionConfig, timeout: Duration) -> Bucket {
    let (keys, source) = match &region.push_credentials {
        Some(c) => (c.keys.clone(), c.source.clone()),
        None => (region.credentials.clone(), region.credential_source.clone()),
    };
    let provider = if source == CredentialSource::Static {
        aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                keys.access_key_id,
                keys.secret_access_key,
                keys.session_token,
                None,
                "s3edge-config",
            ),
        )
    } else {
        crate::credentials::provider(&source, &region.signing_region).await
    };
    let endpoint = region.endpoint.to_string();
    Bucket {
        client: client(
            endpoint.trim_end_matches('/'),
            &region.signing_region,
            region.addressing == Addressing::Path,
            provider,
            timeout,
        ),
        bucket: region.bucket.clone(),
        key_prefix: region.key_prefix.clone(),
        policy: Policy::Complimentary(region.provider),
    }
}

/// A customer's destination: path-style addressing (any S3-compatible store takes it; AWS too),
/// their storage class, no encryption header.
pub(super) fn customer_bucket(d: &Destination, timeout: Duration) -> Bucket {
    let credentials = aws_credential_types::Credentials::new(
        &d.access_key_id,
        &d.secret_access_key,
        None,
        None,
        "s3edge-destination",
    );
    Bucket {
        client: client(
            &d.endpoint,
            &d.region,
            true,
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
            timeout,
        ),
        bucket: d.bucket.clone(),
        key_prefix: d.key_prefix.clone(),
        policy: Policy::Customer(d.storage_class.clone()),
    }
}

fn client(
    endpoint: &str,
    region: &str,
    path_style: bool,
    credentials: aws_credential_types::provider::SharedCredentialsProvider,
    timeout: Duration,
) -> Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .force_path_style(path_style)
        .credentials_provider(credentials)
        .http_client(http)
        // A checksum on every request, chosen per request (SHA-256 known from the spool for
        // PutObject, CRC32C computed while sending for parts); none the SDK adds on its own.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(
            aws_sdk_s3::config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(timeout)
                .build(),
        )
        .build();
    Client::from_conf(config)
}

pub(super) async fn abort(bucket: &Bucket, key: &str, upload_id: &str) {
    if let Err(e) = bucket
        .client
        .abort_multipart_upload()
        .bucket(&bucket.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(%key, error = %sdk_error(e), "could not abort a multipart upload");
    }
}

/// An SDK error as a code and message: the S3 error code when the store sent one.
pub(super) fn sdk_error<E>(
    error: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> UploadError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_s3::error::SdkError;
    let code = match &error {
        SdkError::ServiceError(e) => e
            .err()
            .code()
            .map(str::to_string)
            .unwrap_or_else(|| format!("Http{}", e.raw().status().as_u16())),
        SdkError::TimeoutError(_) => "Timeout".into(),
        SdkError::DispatchFailure(d) if d.is_timeout() => "Timeout".into(),
        SdkError::DispatchFailure(_) => "Connect".into(),
        SdkError::ResponseError(_) => "Response".into(),
        SdkError::ConstructionFailure(_) => "Request".into(),
        _ => "Unknown".into(),
    };
    let message = match &error {
        SdkError::ServiceError(e) => e.err().message().map(str::to_string).unwrap_or_else(|| {
            // No S3 error document: say what the store did answer.
            let body = e.raw().body().bytes().unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned();
            format!("{} ({}): {body}", error, e.err())
        }),
        _ => std::error::Error::source(&error).map_or_else(|| error.to_string(), |s| s.to_string()),
    };
    UploadError { code, message }
}
