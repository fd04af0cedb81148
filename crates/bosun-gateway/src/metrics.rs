//! Prometheus metrics of the gateway, in base units (seconds, bytes). The series every
//! request updates are sharded per data-path thread ([`bosun_proxy::sharded`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use bosun_proxy::sharded::{self, Histogram, Series};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `httproute/NS/NAME`, `ingress/NS/NAME`, or "" when no route matched.
    pub route: String,
    /// `NS/SERVICE` of the chosen backend, or "".
    pub service: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `http` or `https`.
    pub listener: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<RequestLabels, sharded::Counter>,
    pub duration: HistogramFamily,
    pub request_bytes: Family<RouteLabels, sharded::Counter>,
    pub response_bytes: Family<RouteLabels, sharded::Counter>,
    pub rate_limited: Family<RouteLabels, Counter>,
    pub mirrored: Family<RouteLabels, Counter>,
    pub connections: Family<ListenerLabels, Counter>,
    pub open_connections: Family<ListenerLabels, Gauge>,
    pub tls_handshake_errors: Counter,
    pub table_builds: Counter,
    pub routes: Gauge,
    /// The series of requests that matched no rule (route "").
    pub unmatched: std::sync::Arc<std::sync::OnceLock<RouteHandles>>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl GatewayMetrics {
    /// Registers the metrics under `bosun_gateway_` in `registry`.
    pub fn new(registry: &mut Registry) -> GatewayMetrics {
        let m = GatewayMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            rate_limited: Family::default(),
            mirrored: Family::default(),
            connections: Family::default(),
            open_connections: Family::default(),
            tls_handshake_errors: Counter::default(),
            table_builds: Counter::default(),
            routes: Gauge::default(),
            unmatched: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("bosun_gateway");
        r.register(
            "requests",
            "HTTP requests by route, backend Service and status code",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request to response headers",
            m.duration.clone(),
        );
        r.register(
            "request_bytes",
            "Request body bytes received from clients",
            m.request_bytes.clone(),
        );
        r.register(
            "response_bytes",
            "Response body bytes sent to clients",
            m.response_bytes.clone(),
        );
        r.register(
            "rate_limited",
            "Requests rejected with 429 by a route's rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "mirrored_requests",
            "Requests copied to a mirror backend",
            m.mirrored.clone(),
        );
        r.register(
            "connections",
            "Accepted client connections",
            m.connections.clone(),
        );
        r.register(
            "open_connections",
            "Client connections currently open",
            m.open_connections.clone(),
        );
        r.register(
            "tls_handshake_errors",
            "Failed TLS handshakes",
            m.tls_handshake_errors.clone(),
        );
        r.register(
            "route_table_builds",
            "Route table rebuilds",
            m.table_builds.clone(),
        );
        r.register(
            "route_entries",
            "Request matches in the current route table",
            m.routes.clone(),
        );
        m
    }
}

/// What every request of one rule touches, resolved on its first request instead of a
/// label set being built and hashed per request (see [`crate::routes::RuleAction`]).
#[derive(Debug)]
pub struct RouteHandles {
    /// The `route` label (`ingress/NS/NAME`, `httproute/NS/NAME`; "" when nothing matched).
    pub route: std::sync::Arc<str>,
    pub duration: Histogram,
    pub request_bytes: sharded::Counter,
    pub response_bytes: sharded::Counter,
    /// `requests` by (backend index of the rule, status): the few a rule answers with.
    requests: Series<(Option<usize>, u16)>,
}

impl RouteHandles {
    pub fn new(route: String, m: &GatewayMetrics) -> RouteHandles {
        let labels = RouteLabels { route };
        // One statement each: `get_or_create` holds a read guard of the family.
        let duration = m.duration.get_or_create(&labels).clone();
        let request_bytes = m.request_bytes.get_or_create(&labels).clone();
        let response_bytes = m.response_bytes.get_or_create(&labels).clone();
        RouteHandles {
            route: labels.route.into(),
            duration,
            request_bytes,
            response_bytes,
            requests: Series::default(),
        }
    }

    /// Counts a request answered with `code` by `backend` (an index into the rule's
    /// backends, None before one was chosen); `service` names it on first use.
    pub fn count(
        &self,
        m: &GatewayMetrics,
        backend: Option<usize>,
        code: u16,
        service: impl FnOnce() -> String,
    ) {
        self.requests.inc((backend, code), || {
            m.requests
                .get_or_create(&RequestLabels {
                    route: self.route.to_string(),
                    service: service(),
                    code,
                })
                .clone()
        });
    }
}
