//! Prometheus metrics of the API server under Kubernetes' names, served on `/metrics`
//! (a non-resource URL: admins, or whoever RBAC lets `get` it):
//! `apiserver_request_total{verb,group,resource,subresource,code}` and
//! `apiserver_request_duration_seconds{verb,group,resource,subresource}` (time to the
//! response headers, so a watch counts its start only). Every request is counted, the
//! in-process client's (controllers, scheduler, agent) included.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Inner;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    group: String,
    resource: String,
    subresource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: &'static str,
    group: String,
    resource: String,
    subresource: String,
}

type Histograms = Family<DurationLabels, Histogram, fn() -> Histogram>;

/// Appends more metrics (another component of the process) to `/metrics`, in the
/// OpenMetrics text format without the closing `# EOF`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

pub(crate) struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms,
    pub(crate) store: Arc<crate::store_metrics::StoreMetrics>,
    extra: Vec<MetricsSource>,
}

fn latency_histogram() -> Histogram {
    // Kubernetes' buckets for apiserver_request_duration_seconds.
    Histogram::new([
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    ])
}

impl ApiMetrics {
    pub fn new(
        storage_file: Option<std::path::PathBuf>,
        extra: Vec<MetricsSource>,
    ) -> Arc<ApiMetrics> {
        let mut registry = Registry::default();
        let store = crate::store_metrics::StoreMetrics::new(&mut registry, storage_file);
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Histograms =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "apiserver_request",
            "API requests by verb, group, resource, subresource and HTTP status code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Time from request to response headers",
            duration.clone(),
        );
        Arc::new(ApiMetrics {
            registry,
            requests,
            duration,
            store,
            extra,
        })
    }
}

/// What a request is, in the terms of Kubernetes' request metrics. Resources bosun does
/// not serve are "other", so odd paths cannot create series without bound.
fn classify(inner: &Inner, method: &str, path: &str, query: &str) -> DurationLabels {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => ("", "", &[][..]),
    };
    let (resource, name, sub) = match rest {
        ["namespaces", _, r, tail @ ..] => (*r, tail.first(), tail.get(1)),
        [r, tail @ ..] => (*r, tail.first(), tail.get(1)),
        [] => ("", None, None),
    };
    let known = !resource.is_empty()
        && inner
            .registry
            .by_resource(group, version, resource)
            .is_some();
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match method {
        "GET" if watch => "WATCH",
        "GET" if name.is_none() && !resource.is_empty() => "LIST",
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "OTHER",
    };
    let sub = match sub {
        Some(s)
            if known
                && matches!(
                    *s,
                    "status"
                        | "scale"
                        | "log"
                        | "exec"
                        | "attach"
                        | "portforward"
                        | "binding"
                        | "eviction"
                        | "finalize"
                        | "proxy"
                        | "ephemeralcontainers"
                        | "approval"
                        | "token"
                ) =>
        {
            s.to_string()
        }
        Some(_) if known => "other".to_string(),
        _ => String::new(),
    };
    DurationLabels {
        verb,
        group: if known {
            group.to_string()
        } else {
            String::new()
        },
        resource: match (known, resource.is_empty()) {
            (true, _) => resource.to_string(),
            (false, true) => String::new(),
            (false, false) => "other".to_string(),
        },
        subresource: sub,
    }
}

/// Counts and times every request.
pub(crate) async fn track(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let labels = classify(
        &inner,
        req.method().as_str(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    );
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &inner.prom;
    m.duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            verb: labels.verb,
            group: labels.group,
            resource: labels.resource,
            subresource: labels.subresource,
            code: resp.status().as_u16().to_string(),
        })
        .inc();
    resp
}

/// GET /metrics.
pub(crate) async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    let mut out = String::new();
    inner.prom.store.refresh();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &inner.prom.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    if !inner.prom.extra.is_empty() {
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        for f in &inner.prom.extra {
            f(&mut out);
        }
        out.push_str("# EOF\n");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
