//! The push service's values: environments and their destinations as the API takes them,
//! where a push goes, and the states of recordings and pushes.

use serde::{Deserialize, Serialize};

use crate::route::FileKind;

/// Our own bucket of the environment's region: the destination named `complimentary`.
pub const COMPLIMENTARY: &str = "complimentary";

/// An environment: whose recordings, which region, where else they go, who is told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// The account hash in every key and URL.
    pub account: String,
    /// The region whose bucket is the complimentary storage.
    pub region: String,
    /// Push to our bucket (turning it off affects only recordings committed afterwards).
    #[serde(default = "yes")]
    pub complimentary_storage: bool,
    /// Who is told when a destination has all files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// The customer's own S3-compatible destinations.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// Recordings older than this many calendar days are deleted (absent or 0: kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after_days: Option<u32>,
}

fn yes() -> bool {
    true
}

/// A webhook receiver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where deliveries are POSTed.
    pub url: String,
    /// The HMAC-SHA256 key of `X-S3edge-Signature`.
    pub secret: String,
}

/// A customer's S3-compatible destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Unique within the environment; not `complimentary`.
    pub name: String,
    /// `https://host[:port]` of the store.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// Its signing region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// In front of `{ACCOUNT}/{NAME}{suffix}`.
    #[serde(default)]
    pub key_prefix: String,
    /// `x-amz-storage-class` of every object (the store's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

impl Environment {
    /// The environment as `GET` shows it: secrets replaced.
    pub fn redacted(&self) -> Environment {
        let mut env = self.clone();
        if let Some(w) = &mut env.webhook {
            w.secret = REDACTED.into();
        }
        for d in &mut env.destinations {
            d.secret_access_key = REDACTED.into();
        }
        env
    }
}

/// What replaces a secret in answers.
pub const REDACTED: &str = "<redacted>";

/// Where one destination's files go, fixed when the recording is committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The complimentary bucket of a region of the config.
    Complimentary {
        /// Region name.
        region: String,
    },
    /// A customer's destination.
    Customer(Destination),
}

/// A recording's state, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingState {
    /// Receiving files; not committed.
    Open,
    /// Committed; no attempt yet.
    Queued,
    /// An attempt is running.
    Pushing,
    /// An attempt failed; another is scheduled.
    Retrying,
    /// Every destination has every file.
    Pushed,
    /// A destination used its last attempt.
    Failed,
    /// No destination applies.
    Skipped,
    /// Deleted (a tombstone): by the API or the lifecycle.
    Deleted,
}

impl RecordingState {
    /// The API's word.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Open => "open",
            RecordingState::Queued => "queued",
            RecordingState::Pushing => "pushing",
            RecordingState::Retrying => "retrying",
            RecordingState::Pushed => "pushed",
            RecordingState::Failed => "failed",
            RecordingState::Skipped => "skipped",
            RecordingState::Deleted => "deleted",
        }
    }

    /// The state from its word.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "open" => RecordingState::Open,
            "queued" => RecordingState::Queued,
            "pushing" => RecordingState::Pushing,
            "retrying" => RecordingState::Retrying,
            "pushed" => RecordingState::Pushed,
            "failed" => RecordingState::Failed,
            "skipped" => RecordingState::Skipped,
            "deleted" => RecordingState::Deleted,
            _ => return None,
        })
    }

    /// Every state a recording can be listed by.
    pub const LISTED: [RecordingState; 7] = [
        RecordingState::Queued,
        RecordingState::Pushing,
        RecordingState::Retrying,
        RecordingState::Pushed,
        RecordingState::Failed,
        RecordingState::Skipped,
        RecordingState::Deleted,
    ];
}

/// Environment names: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn is_valid_env(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Account hashes and recording names: the URL scheme's 1–128 of `A-Z a-z 0-9 _ -`.
pub fn is_valid_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::route::MAX_SEGMENT_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `{NAME}{suffix}` → the name and the kind.
pub fn split_file(file: &str) -> Option<(&str, FileKind)> {
    FileKind::ALL
        .iter()
        .find_map(|kind| file.strip_suffix(kind.suffix()).map(|name| (name, *kind)))
        .filter(|(name, _)| is_valid_segment(name))
}

/// A file kind from its suffix as stored.
pub fn kind_of_suffix(suffix: &str) -> Option<FileKind> {
    FileKind::ALL.into_iter().find(|k| k.suffix() == suffix)
}
