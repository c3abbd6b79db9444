//! The push service's Prometheus series, prefixed `s3edge_push_`: recordings by state,
//! attempts and failures by destination (and S3 error code), bytes pushed, upload durations,
//! webhook deliveries and edge purges by outcome, spool bytes.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `destination` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// `complimentary` or the customer's destination name.
    pub destination: String,
}

/// `destination` and `code` labels of a failed attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `complimentary` or the customer's destination name.
    pub destination: String,
    /// The S3 error code, or the transport class.
    pub code: String,
}

/// A `state` or `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: String,
}

/// An `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// delivered, retry, failed / purged, failed.
    pub outcome: &'static str,
}

/// An `admin` label: an edge's admin URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminLabel {
    /// The edge's admin URL.
    pub admin: String,
}

/// A `by` label: who deleted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByLabel {
    /// `api` or `lifecycle`.
    pub by: &'static str,
}

/// The series; cheap to clone.
#[derive(Clone, Debug)]
pub struct PushMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    recordings: Family<StateLabel, Gauge>,
    attempts: Family<DestinationLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    bytes: Family<DestinationLabel, Counter>,
    upload_seconds: Histogram,
    deliveries: Family<OutcomeLabel, Counter>,
    purges: Family<OutcomeLabel, Counter>,
    early: Family<OutcomeLabel, Counter>,
    purges_pending: Family<AdminLabel, Gauge>,
    deletions: Family<ByLabel, Counter>,
    spool_bytes: Gauge,
}

impl Default for PushMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("s3edge_push");
        let recordings = Family::<StateLabel, Gauge>::default();
        let attempts = Family::<DestinationLabel, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let bytes = Family::<DestinationLabel, Counter>::default();
        let upload_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        let purges = Family::<OutcomeLabel, Counter>::default();
        let early = Family::<OutcomeLabel, Counter>::default();
        let spool_bytes = Gauge::default();
        let purges_pending = Family::<AdminLabel, Gauge>::default();
        let deletions = Family::<ByLabel, Counter>::default();
        registry.register("recordings", "Recordings by state", recordings.clone());
        registry.register("attempts", "Push attempts by destination", attempts.clone());
        registry.register(
            "failures",
            "Failed push attempts by destination and S3 error code",
            failures.clone(),
        );
        registry.register("bytes", "Bytes pushed by destination", bytes.clone());
        registry.register(
            "upload_duration_seconds",
            "Time to upload one file",
            upload_seconds.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            deliveries.clone(),
        );
        registry.register(
            "edge_purges",
            "Edge cache purges by outcome",
            purges.clone(),
        );
        registry.register(
            "early_uploads",
            "Multipart uploads started while the file arrived, by outcome (used: completed by \
             the commit's attempt; failed; unclaimed: aborted, no commit took it)",
            early.clone(),
        );
        registry.register(
            "edge_purges_pending",
            "Purges an edge has not acknowledged yet (retried until it does)",
            purges_pending.clone(),
        );
        registry.register(
            "deletions",
            "Recordings deleted, by who asked (api, lifecycle)",
            deletions.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of files in the spool",
            spool_bytes.clone(),
        );
        PushMetrics {
            inner: Arc::new(Inner {
                registry,
                recordings,
                attempts,
                failures,
                bytes,
                upload_seconds,
                deliveries,
                purges,
                early,
                purges_pending,
                deletions,
                spool_bytes,
            }),
        }
    }
}

impl PushMetrics {
    /// Counts an attempt.
    pub fn attempt(&self, destination: &str) {
        self.inner
            .attempts
            .get_or_create(&DestinationLabel {
                destination: destination.to_string(),
            })
            .inc();
    }

    /// Counts a failed attempt.
    pub fn failure(&self, destination: &str, code: &str) {
        self.inner
            .failures
            .get_or_create(&FailureLabels {
                destination: destination.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Counts an uploaded file.
    pub fn uploaded(&self, destination: &str, bytes: u64, seconds: f64) {
        self.inner
            .bytes
            .get_or_create(&DestinationLabel {
                destination: destination.to_string(),
            })
            .inc_by(bytes);
        self.inner.upload_seconds.observe(seconds);
    }

    /// Counts a webhook delivery attempt.
    pub fn delivery(&self, outcome: &'static str) {
        self.inner
            .deliveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts an edge purge.
    pub fn purge(&self, outcome: &'static str) {
        self.inner
            .purges
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts an early upload's end.
    pub fn early_upload(&self, outcome: &'static str) {
        self.inner
            .early
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts deleted recordings.
    pub fn deleted(&self, by: &'static str, n: u64) {
        self.inner
            .deletions
            .get_or_create(&ByLabel { by })
            .inc_by(n);
    }

    /// Sets the purges waiting per edge (0 for edges with none).
    pub fn pending_purges(&self, admins: &[String], pending: &[(String, i64)]) {
        for admin in admins.iter().chain(pending.iter().map(|(a, _)| a)) {
            let n = pending
                .iter()
                .find(|(a, _)| a == admin)
                .map_or(0, |(_, n)| *n);
            self.inner
                .purges_pending
                .get_or_create(&AdminLabel {
                    admin: admin.clone(),
                })
                .set(n);
        }
    }

    /// Sets the gauges read from the database and the spool, then encodes every series.
    pub fn encode(&self, recordings: &[(String, i64)], spool_bytes: u64) -> String {
        for state in super::model::RecordingState::LISTED
            .iter()
            .map(|s| s.as_str().to_string())
            .chain(["open".to_string()])
        {
            let n = recordings
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.inner
                .recordings
                .get_or_create(&StateLabel { state })
                .set(n);
        }
        self.inner
            .spool_bytes
            .set(i64::try_from(spool_bytes).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}
