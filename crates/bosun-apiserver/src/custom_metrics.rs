//! `custom.metrics.k8s.io/v1beta2`: request figures of pods and Services from the node
//! proxies, for HorizontalPodAutoscaler `Pods` and `Object` metrics. Each node agent serves
//! what its proxies (node proxy and gateway) saw at `/stats/load`; this sums requests per
//! second and in-flight requests over nodes and takes the highest p99.
//!
//! Metrics (per pod: `namespaces/NS/pods/NAME|*/METRIC?labelSelector=`, per Service:
//! `namespaces/NS/services/NAME/METRIC`):
//! * `requests_per_second` over the last 10 s,
//! * `requests_in_flight` now,
//! * `request_duration_p99_seconds` over the last 10 s (time to response headers).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use crate::Inner;
use crate::ctx::json_response;
use crate::error::{ApiError, ApiResult};
use crate::metrics::{agent_get, list_objects};
use crate::selector::LabelSelector;

pub(crate) const GROUP: &str = "custom.metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta2";
const GROUP_VERSION: &str = "custom.metrics.k8s.io/v1beta2";
/// The metrics served and the `/stats/load` field of each.
pub const METRICS: &[(&str, &str)] = &[
    ("requests_per_second", "requestsPerSecond"),
    ("requests_in_flight", "requestsInFlight"),
    ("request_duration_p99_seconds", "latencyP99Seconds"),
];

fn resource_names() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for kind in ["pods", "services"] {
        for (m, _) in METRICS {
            out.push((format!("{kind}/{m}"), true));
        }
    }
    out
}

pub(crate) fn aggregated_group() -> Value {
    let resources: Vec<Value> = resource_names()
        .into_iter()
        .map(|(r, ns)| {
            json!({
                "resource": r,
                "responseKind": {"group": GROUP, "version": VERSION, "kind": "MetricValueList"},
                "scope": if ns { "Namespaced" } else { "Cluster" },
                "singularResource": "",
                "verbs": ["get"],
            })
        })
        .collect();
    json!({
        "metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{"version": VERSION, "resources": resources, "freshness": "Current"}],
    })
}

pub(crate) fn api_group() -> Value {
    let v = json!({"groupVersion": GROUP_VERSION, "version": VERSION});
    json!({"name": GROUP, "versions": [v.clone()], "preferredVersion": v})
}

pub(crate) async fn group(State(_): State<Arc<Inner>>) -> Response {
    let mut g = api_group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &g)
}

pub(crate) async fn resources(State(_): State<Arc<Inner>>) -> Response {
    let rs: Vec<Value> = resource_names()
        .into_iter()
        .map(|(r, ns)| json!({"name": r, "singularName": "", "namespaced": ns, "kind": "MetricValueList", "verbs": ["get"]}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": rs}),
    )
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct MetricQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

/// Per (kind, name) of the namespace: (requests/s, in flight, p99), summed over nodes.
async fn load(inner: &Inner, ns: &str) -> ApiResult<HashMap<(String, String), [f64; 3]>> {
    let nodes = list_objects(inner, "nodes", None).await?;
    let docs =
        futures::future::join_all(nodes.iter().map(|n| agent_get(inner, n, "/stats/load"))).await;
    let mut out: HashMap<(String, String), [f64; 3]> = HashMap::new();
    for (n, d) in nodes.iter().zip(docs) {
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                let node = n
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                tracing::warn!(%node, error = %format!("{e:#}"), "node load figures unavailable");
                continue;
            }
        };
        for item in d["items"].as_array().into_iter().flatten() {
            if item["namespace"] != ns {
                continue;
            }
            let key = (
                item["kind"].as_str().unwrap_or("").to_string(),
                item["name"].as_str().unwrap_or("").to_string(),
            );
            let e = out.entry(key).or_default();
            let f = |k: &str| item[k].as_f64().unwrap_or(0.0);
            e[0] += f("requestsPerSecond");
            e[1] += f("requestsInFlight");
            e[2] = e[2].max(f("latencyP99Seconds"));
        }
    }
    Ok(out)
}

fn quantity(v: f64) -> String {
    let m = (v * 1000.0).round() as i64;
    if m % 1000 == 0 {
        format!("{}", m / 1000)
    } else {
        format!("{m}m")
    }
}

fn metric_index(metric: &str) -> ApiResult<usize> {
    METRICS
        .iter()
        .position(|(m, _)| *m == metric)
        .ok_or_else(|| not_found(metric))
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the metric {what} for the requested object"),
    )
}

fn value_item(kind: &str, ns: &str, name: &str, metric: &str, v: f64) -> Value {
    json!({
        "describedObject": {"kind": kind, "namespace": ns, "name": name, "apiVersion": "/v1"},
        "metric": {"name": metric},
        "timestamp": format!("{:.0}", jiff::Timestamp::now()),
        "windowSeconds": 10,
        "value": quantity(v),
    })
}

fn list(items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "MetricValueList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}),
    )
}

/// `namespaces/{ns}/{resource}/{name}/{metric}`: `pods` (name `*` = every pod the
/// labelSelector matches) or `services`.
pub(crate) async fn object_metric(
    State(inner): State<Arc<Inner>>,
    Path((ns, resource, name, metric)): Path<(String, String, String, String)>,
    Query(q): Query<MetricQuery>,
) -> ApiResult<Response> {
    let i = metric_index(&metric)?;
    let figures = load(&inner, &ns).await?;
    match resource.as_str() {
        "pods" => {
            let sel =
                LabelSelector::parse(q.label_selector.as_deref().unwrap_or("")).map_err(|e| {
                    ApiError::bad_request(format!("unable to parse labelSelector: {e}"))
                })?;
            let pods = list_objects(&inner, "pods", Some(&ns)).await?;
            let items: Vec<Value> = pods
                .iter()
                .filter(|p| sel.matches(p))
                .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str))
                .filter(|n| name == "*" || *n == name)
                .map(|n| {
                    let v = figures
                        .get(&("Pod".to_string(), n.to_string()))
                        .map(|f| f[i])
                        .unwrap_or(0.0);
                    value_item("Pod", &ns, n, &metric, v)
                })
                .collect();
            if items.is_empty() && name != "*" {
                return Err(not_found(&format!("{metric} of pod {name}")));
            }
            Ok(list(items))
        }
        "services" => {
            let svcs = list_objects(&inner, "services", Some(&ns)).await?;
            if !svcs
                .iter()
                .any(|s| s.pointer("/metadata/name").and_then(Value::as_str) == Some(name.as_str()))
            {
                return Err(not_found(&format!("{metric} of service {name}")));
            }
            let v = figures
                .get(&("Service".to_string(), name.clone()))
                .map(|f| f[i])
                .unwrap_or(0.0);
            Ok(list(vec![value_item("Service", &ns, &name, &metric, v)]))
        }
        other => Err(not_found(&format!("{metric} of {other}"))),
    }
}
