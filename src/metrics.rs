//! Process metrics in Prometheus (OpenMetrics) text: requests, bytes, upstream latency and
//! errors, connections, the circuit breakers, and any collector handed in (the cache's).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Region name, or `-` when the route did not resolve.
    pub region: Arc<str>,
    /// Status sent to the client.
    pub status: u16,
    /// What the cache did: hit, stale, miss, revalidated, bypass or none.
    pub cache: &'static str,
}

/// Labels of a region-wide series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabel {
    /// Region name.
    pub region: Arc<str>,
}

/// Labels of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Region name.
    pub region: Arc<str>,
    /// connect, reset, timeout_connect, timeout_head, timeout_body, status_5xx, body_cut,
    /// circuit_open.
    pub kind: &'static str,
}

/// Every series the gateway exports; cheap to clone (the series are shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Encoded on scrape.
    registry: Registry,
    /// Finished requests.
    requests: Family<RequestLabels, Counter>,
    /// Body bytes sent to clients.
    bytes_out: Family<RegionLabel, Counter>,
    /// Responses whose body was cut short (the client saw an aborted transfer).
    responses_cut: Family<RegionLabel, Counter>,
    /// Time from sending an upstream request to its response head.
    upstream_latency: Family<RegionLabel, Histogram>,
    /// Upstream failures by kind.
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Retries sent.
    upstream_retries: Family<RegionLabel, Counter>,
    /// Upstream requests whose response has not ended.
    upstream_in_flight: Family<RegionLabel, Gauge>,
    /// 1 while a region's circuit is open.
    circuit_open: Family<RegionLabel, Gauge>,
    /// Client connections open now.
    open_connections: Gauge,
    /// Client connections accepted.
    connections: Counter,
}

/// One region's series, looked up once per upstream instead of per request.
#[derive(Debug, Clone)]
pub struct RegionMetrics {
    /// Region name, the label value.
    pub region: Arc<str>,
    /// Response-head latency.
    pub latency: Histogram,
    /// Retries sent.
    pub retries: Counter,
    /// Upstream requests in flight.
    pub in_flight: Gauge,
    /// Circuit state (0 closed, 1 open).
    pub circuit_open: Gauge,
    metrics: Metrics,
}

impl RegionMetrics {
    /// Counts one upstream failure.
    pub fn error(&self, kind: &'static str) {
        self.metrics
            .inner
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                region: self.region.clone(),
                kind,
            })
            .inc();
    }
}

impl Metrics {
    /// A fresh set of series; `extra` (the cache's collector) is read at every scrape.
    pub fn new(extra: Option<Box<dyn Collector>>) -> Metrics {
        let mut registry = Registry::with_prefix("s3edge");
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes_out = Family::<RegionLabel, Counter>::default();
        let responses_cut = Family::<RegionLabel, Counter>::default();
        let upstream_latency = Family::<RegionLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let upstream_retries = Family::<RegionLabel, Counter>::default();
        let upstream_in_flight = Family::<RegionLabel, Gauge>::default();
        let circuit_open = Family::<RegionLabel, Gauge>::default();
        let open_connections = Gauge::default();
        let connections = Counter::default();
        registry.register(
            "requests",
            "Requests answered, by region, status and cache result",
            requests.clone(),
        );
        registry.register(
            "response_bytes",
            "Body bytes sent to clients",
            bytes_out.clone(),
        );
        registry.register(
            "responses_cut",
            "Responses aborted mid-body because the backend failed",
            responses_cut.clone(),
        );
        registry.register(
            "upstream_response_seconds",
            "Time from an upstream request to its response head",
            upstream_latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by region and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Upstream requests retried",
            upstream_retries.clone(),
        );
        registry.register(
            "upstream_in_flight",
            "Upstream requests whose response has not ended",
            upstream_in_flight.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while the region's circuit breaker is open",
            circuit_open.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            connections.clone(),
        );
        if let Some(collector) = extra {
            registry.register_collector(collector);
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                bytes_out,
                responses_cut,
                upstream_latency,
                upstream_errors,
                upstream_retries,
                upstream_in_flight,
                circuit_open,
                open_connections,
                connections,
            }),
        }
    }

    /// The series of one region.
    pub fn region(&self, region: &Arc<str>) -> RegionMetrics {
        let label = RegionLabel {
            region: region.clone(),
        };
        let i = &self.inner;
        RegionMetrics {
            region: region.clone(),
            latency: i.upstream_latency.get_or_create(&label).clone(),
            retries: i.upstream_retries.get_or_create(&label).clone(),
            in_flight: i.upstream_in_flight.get_or_create(&label).clone(),
            circuit_open: i.circuit_open.get_or_create(&label).clone(),
            metrics: self.clone(),
        }
    }

    /// Counts a finished request and its body bytes.
    pub fn request(&self, labels: &RequestLabels, bytes: u64, cut: bool) {
        let i = &self.inner;
        i.requests.get_or_create(labels).inc();
        let region = RegionLabel {
            region: labels.region.clone(),
        };
        if bytes > 0 {
            i.bytes_out.get_or_create(&region).inc_by(bytes);
        }
        if cut {
            i.responses_cut.get_or_create(&region).inc();
        }
    }

    /// Counts an accepted connection; the guard counts it closed when dropped.
    pub fn connection(&self) -> ConnectionGuard {
        self.inner.connections.inc();
        self.inner.open_connections.inc();
        ConnectionGuard(self.inner.open_connections.clone())
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> i64 {
        self.inner.open_connections.get()
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Marks a client connection closed when dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Latency buckets from 1 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}
