//! `external.metrics.k8s.io/v1beta1`: series of bosun's built-in metrics (the Prometheus
//! API on the console listener, `bosun-metrics`) by metric name and label selector, for
//! HorizontalPodAutoscaler `External` metrics, as prometheus-adapter serves a Prometheus.
//!
//! `GET .../namespaces/NS/METRIC?labelSelector=SEL` asks the metrics API for the instant
//! vector `METRIC` and answers an `ExternalMetricValueList` with one item per series whose
//! labels match `SEL` and whose `namespace` label is `NS` (series without a `namespace`
//! label, such as the API server's own, are cluster-wide and served in every namespace).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

use crate::Inner;
use crate::ctx::json_response;
use crate::error::{ApiError, ApiResult};
use crate::selector::LabelSelector;

pub(crate) const GROUP: &str = "external.metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn aggregated_group() -> Value {
    json!({
        "metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{"version": VERSION, "resources": [{
            "resource": "*",
            "responseKind": {"group": GROUP, "version": VERSION, "kind": "ExternalMetricValueList"},
            "scope": "Namespaced",
            "singularResource": "",
            "verbs": ["get"],
        }], "freshness": "Current"}],
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
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
            "resources": [{"name": "*", "singularName": "", "namespaced": true,
                "kind": "ExternalMetricValueList", "verbs": ["get"]}]}),
    )
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct MetricQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_metric_name(m: &str) -> bool {
    let mut chars = m.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The value as a Kubernetes quantity: milli-units when not whole.
fn quantity(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let milli = (v * 1000.0).round() as i64;
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// The items of an `ExternalMetricValueList` from a Prometheus instant-query answer.
pub(crate) fn items(answer: &Value, ns: &str, metric: &str, sel: &LabelSelector) -> Vec<Value> {
    let result = answer
        .pointer("/data/result")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for series in result {
        let mut labels: Map<String, Value> = series
            .get("metric")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        labels.remove("__name__");
        if labels
            .get("namespace")
            .and_then(Value::as_str)
            .is_some_and(|n| n != ns)
        {
            continue;
        }
        if !sel.matches(&json!({"metadata": {"labels": labels}})) {
            continue;
        }
        let Some([ts, v]) = series
            .get("value")
            .and_then(Value::as_array)
            .and_then(|a| <&[Value; 2]>::try_from(a.as_slice()).ok())
        else {
            continue;
        };
        let Some(v) = v.as_str().and_then(|s| s.parse::<f64>().ok()) else {
            continue;
        };
        let ts = ts.as_f64().unwrap_or(0.0);
        let timestamp = jiff::Timestamp::from_millisecond((ts * 1000.0) as i64)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        out.push(json!({
            "metricName": metric,
            "metricLabels": labels,
            "timestamp": timestamp,
            "value": quantity(v),
        }));
    }
    out
}

/// One instant query of the metrics API at `base` (`http://HOST:PORT`).
async fn query(base: &str, q: &str) -> anyhow::Result<Value> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("metrics API {base:?} is not an http:// address"))?
        .trim_end_matches('/')
        .to_string();
    let work = async {
        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(format!("/api/v1/query?query={q}"))
            .header(http::header::HOST, authority.as_str())
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            anyhow::bail!(
                "metrics API answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok::<_, anyhow::Error>(serde_json::from_slice(&body)?)
    };
    tokio::time::timeout(QUERY_TIMEOUT, work)
        .await
        .map_err(|_| anyhow::anyhow!("metrics API at {base} did not answer in 10s"))?
}

pub(crate) async fn metric(
    State(inner): State<Arc<Inner>>,
    Path((ns, metric)): Path<(String, String)>,
    Query(q): Query<MetricQuery>,
) -> ApiResult<Response> {
    if !valid_metric_name(&metric) {
        return Err(ApiError::bad_request(format!(
            "metricName: Invalid value: {metric:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        )));
    }
    let sel = LabelSelector::parse(q.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
    let Some(base) = inner.external_metrics.as_deref() else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "external metrics come from bosun's built-in metrics, which are off (--console-listen off)",
        ));
    };
    let answer = query(base, &metric).await.map_err(|e| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("unable to fetch external metric {metric}: {e:#}"),
        )
    })?;
    let items = items(&answer, &ns, &metric, &sel);
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "ExternalMetricValueList", "apiVersion": GROUP_VERSION,
            "metadata": {}, "items": items}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_the_namespace_matching_the_selector() {
        let answer = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "queue_depth", "namespace": "shop", "queue": "orders"},
             "value": [1700000000.5, "12"]},
            {"metric": {"__name__": "queue_depth", "namespace": "shop", "queue": "mail"},
             "value": [1700000000.5, "3.25"]},
            {"metric": {"__name__": "queue_depth", "namespace": "other", "queue": "orders"},
             "value": [1700000000.5, "99"]},
            {"metric": {"__name__": "queue_depth", "queue": "orders"},
             "value": [1700000000.5, "1"]},
        ]}});
        let all = items(&answer, "shop", "queue_depth", &LabelSelector::default());
        assert_eq!(all.len(), 3);
        assert_eq!(all[1]["value"], "3250m");
        assert_eq!(
            all[0]["metricLabels"],
            json!({"namespace": "shop", "queue": "orders"})
        );
        assert_eq!(all[0]["timestamp"], "2023-11-14T22:13:20Z");
        let sel = LabelSelector::parse("queue=orders").unwrap();
        let some = items(&answer, "shop", "queue_depth", &sel);
        assert_eq!(some.len(), 2);
        assert!(some.iter().all(|i| i["metricLabels"]["queue"] == "orders"));
    }

    #[test]
    fn metric_names() {
        assert!(valid_metric_name("bosun_proxy_requests_total"));
        assert!(valid_metric_name("job:rate5m"));
        assert!(!valid_metric_name("1abc"));
        assert!(!valid_metric_name("a{b}"));
        assert!(!valid_metric_name(""));
    }
}
