//! Prometheus metrics of the upstream layer, in base units (seconds, bytes). The series
//! every request updates are sharded per data-path thread ([`crate::sharded`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::sharded::{self, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SvcLabels {
    pub namespace: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub namespace: String,
    pub service: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub namespace: String,
    pub service: String,
    /// `rx` = from the client, `tx` = to the client.
    pub direction: &'static str,
}

type HistogramFamily = Family<SvcLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<StatusLabels, sharded::Counter>,
    pub duration: HistogramFamily,
    pub connect_errors: Family<SvcLabels, Counter>,
    pub retries: Family<SvcLabels, Counter>,
    pub retries_exhausted_budget: Family<SvcLabels, Counter>,
    pub ejections: Family<SvcLabels, Counter>,
    pub bytes: Family<DirLabels, sharded::Counter>,
    pub tcp_connections: Family<SvcLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100us .. ~52s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            connect_errors: Family::default(),
            retries: Family::default(),
            retries_exhausted_budget: Family::default(),
            ejections: Family::default(),
            bytes: Family::default(),
            tcp_connections: Family::default(),
        };
        registry.register(
            "upstream_requests",
            "HTTP requests by Service and response status",
            m.requests.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time from request to response headers, retries included",
            m.duration.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Failed connection attempts to endpoints",
            m.connect_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retried HTTP attempts",
            m.retries.clone(),
        );
        registry.register(
            "upstream_retries_budget_exhausted",
            "Retries skipped because the retry budget was spent",
            m.retries_exhausted_budget.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        registry.register(
            "upstream_bytes",
            "Body bytes relayed (rx from clients, tx to clients)",
            m.bytes.clone(),
        );
        registry.register(
            "upstream_tcp_connections",
            "L4 connections balanced to endpoints",
            m.tcp_connections.clone(),
        );
        m
    }
}
