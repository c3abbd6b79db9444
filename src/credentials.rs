//! A region's signing credentials: fixed from the config, or taken from a standard AWS
//! source (profile files, web identity, container or instance metadata) through
//! `aws-config`'s providers and refreshed in the background before they expire.
//!
//! Refresh rules: a failed or non-200 answer is an error, never credentials (the providers
//! check status and parse strictly); after a failure the current credentials stay in use
//! while the refresh is retried with backoff; a secret never reaches a log line.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::identity::Identity;

use crate::config::{CredentialSource, RegionConfig};

/// Longest lead before expiry at which a refresh starts.
const REFRESH_LEAD: Duration = Duration::from_secs(5 * 60);
/// Longest wait between retries of a failed refresh.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// The identity requests of one region are signed with.
#[derive(Debug)]
pub(crate) struct SigningCredentials {
    /// `None` until a dynamic source answered for the first time.
    current: Arc<ArcSwapOption<Identity>>,
}

impl SigningCredentials {
    /// Static credentials at once; for a dynamic source, starts the refresh task (it ends
    /// when these credentials are dropped, for example after a reload).
    pub(crate) fn new(region: &RegionConfig) -> Self {
        let current = Arc::new(ArcSwapOption::empty());
        if region.credential_source == CredentialSource::Static {
            let c = &region.credentials;
            let credentials = Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "s3edge-config",
            );
            current.store(Some(Arc::new(credentials.into())));
        } else {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(refresh(
                        region.credential_source.clone(),
                        region.name.clone(),
                        region.signing_region.clone(),
                        Arc::downgrade(&current),
                    ));
                }
                Err(_) => tracing::error!(
                    region = %region.name,
                    "no runtime to fetch credentials on; requests will fail"
                ),
            }
        }
        SigningCredentials { current }
    }

    /// Fixed credentials, for tests.
    #[cfg(test)]
    pub(crate) fn fixed(credentials: Credentials) -> Self {
        SigningCredentials {
            current: Arc::new(ArcSwapOption::new(Some(Arc::new(credentials.into())))),
        }
    }

    /// The identity to sign with now, if any.
    pub(crate) fn current(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }
}

/// Fetches credentials, stores them, and fetches again before they expire, until the
/// owning [`SigningCredentials`] is dropped.
async fn refresh(
    source: CredentialSource,
    region: String,
    signing_region: String,
    slot: Weak<ArcSwapOption<Identity>>,
) {
    let provider = provider(&source, &signing_region).await;
    let mut failures = 0u32;
    loop {
        let outcome = provider.provide_credentials().await;
        let Some(current) = slot.upgrade() else {
            return;
        };
        let wait = match outcome {
            Ok(credentials) => {
                failures = 0;
                let expiry = credentials.expiry();
                current.store(Some(Arc::new(credentials.into())));
                let Some(expiry) = expiry else {
                    tracing::info!(%region, ?source, "credentials loaded (no expiry)");
                    return;
                };
                let wait = refresh_delay(expiry, SystemTime::now());
                tracing::info!(
                    %region,
                    ?source,
                    expires_in_s = expiry
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs(),
                    refresh_in_s = wait.as_secs(),
                    "credentials loaded"
                );
                wait
            }
            Err(error) => {
                failures += 1;
                let valid_for = current
                    .load()
                    .as_ref()
                    .and_then(|identity| identity.expiration())
                    .and_then(|e| e.duration_since(SystemTime::now()).ok());
                let wait = retry_delay(failures, valid_for);
                let retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                let error = error_chain(&error);
                if current.load().is_some() {
                    tracing::warn!(
                        %region,
                        ?source,
                        %error,
                        valid_for_s = valid_for.map(|d| d.as_secs()),
                        retry_in_ms,
                        "credential refresh failed; keeping the current credentials"
                    );
                } else {
                    tracing::error!(
                        %region,
                        ?source,
                        %error,
                        retry_in_ms,
                        "credential fetch failed; the region answers 503 until it succeeds"
                    );
                }
                wait
            }
        };
        drop(current);
        tokio::time::sleep(wait).await;
    }
}

/// When to refresh credentials expiring at `expiry`: a quarter of their remaining life
/// early, at most five minutes early, and never sooner than in one second.
fn refresh_delay(expiry: SystemTime, now: SystemTime) -> Duration {
    let left = expiry.duration_since(now).unwrap_or_default();
    let lead = (left / 4).min(REFRESH_LEAD);
    left.saturating_sub(lead).max(Duration::from_secs(1))
}

/// Exponential backoff from 500 ms, capped, and never so long that valid credentials
/// expire before the next try.
fn retry_delay(failures: u32, valid_for: Option<Duration>) -> Duration {
    let backoff = Duration::from_millis(500)
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(MAX_RETRY_WAIT);
    match valid_for {
        Some(left) => backoff.min((left / 2).max(Duration::from_millis(200))),
        None => backoff,
    }
}

pub(crate) async fn provider(
    source: &CredentialSource,
    signing_region: &str,
) -> SharedCredentialsProvider {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = ProviderConfig::without_region()
        .with_region(Some(aws_config::Region::new(signing_region.to_string())))
        .with_http_client(http);
    match source {
        CredentialSource::Container => SharedCredentialsProvider::new(
            aws_config::ecs::EcsCredentialsProvider::builder()
                .configure(&conf)
                .build(),
        ),
        CredentialSource::Instance => SharedCredentialsProvider::new(
            aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                .configure(&conf)
                .build(),
        ),
        CredentialSource::WebIdentity => SharedCredentialsProvider::new(
            aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                .configure(&conf)
                .build(),
        ),
        CredentialSource::Profile { profile } => {
            let mut builder =
                aws_config::profile::ProfileFileCredentialsProvider::builder().configure(&conf);
            if let Some(name) = profile {
                builder = builder.profile_name(name);
            }
            SharedCredentialsProvider::new(builder.build())
        }
        // Static credentials never start a refresh; the chain is the sensible reading anyway.
        CredentialSource::DefaultChain { profile: _ } | CredentialSource::Static => {
            let mut builder =
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .configure(conf);
            if let CredentialSource::DefaultChain {
                profile: Some(name),
            } = source
            {
                builder = builder.profile_name(name);
            }
            SharedCredentialsProvider::new(builder.build().await)
        }
    }
}

/// An error and its sources on one line (credential errors carry no secrets).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_a_quarter_of_the_life_early_at_most_five_minutes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = refresh_delay(now + Duration::from_secs(3600), now);
        assert_eq!(hour, Duration::from_secs(3300));
        let short = refresh_delay(now + Duration::from_secs(8), now);
        assert_eq!(short, Duration::from_secs(6));
        let expired = refresh_delay(now - Duration::from_secs(5), now);
        assert_eq!(expired, Duration::from_secs(1));
    }

    #[test]
    fn retries_back_off_but_not_past_the_current_expiry() {
        assert_eq!(retry_delay(1, None), Duration::from_millis(500));
        assert_eq!(retry_delay(3, None), Duration::from_secs(2));
        assert_eq!(retry_delay(20, None), MAX_RETRY_WAIT);
        assert_eq!(
            retry_delay(20, Some(Duration::from_secs(10))),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_delay(20, Some(Duration::ZERO)),
            Duration::from_millis(200)
        );
    }
}
