//! `metrics.k8s.io/v1beta1` (what `kubectl top` reads): PodMetrics and NodeMetrics built on
//! request from each node agent's `/stats/summary`, reached over HTTPS like pod logs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::Inner;
use crate::ctx::json_response;
use crate::error::{ApiError, ApiResult};
use crate::objects::meta::decode_kv;
use crate::selector::LabelSelector;

pub(crate) const GROUP: &str = "metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";
/// The agents' CPU rates are measured over about this window.
const WINDOW: &str = "10s";

/// Aggregated-discovery entry of the group.
pub(crate) fn aggregated_group() -> Value {
    let res = |plural: &str, singular: &str, kind: &str, scope: &str| {
        json!({
            "resource": plural,
            "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
            "scope": scope,
            "singularResource": singular,
            "verbs": ["get", "list"],
        })
    };
    json!({
        "metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{
            "version": VERSION,
            "resources": [
                res("nodes", "", "NodeMetrics", "Cluster"),
                res("pods", "", "PodMetrics", "Namespaced"),
            ],
            "freshness": "Current",
        }],
    })
}

/// Classic-discovery entry of the group (APIGroupList item).
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
    let r = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]});
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": GROUP_VERSION,
            "resources": [r("nodes", "NodeMetrics", false), r("pods", "PodMetrics", true)],
        }),
    )
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct ListQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

fn kind<'a>(inner: &'a Inner, plural: &str) -> ApiResult<&'a bosun_api::KindInfo> {
    inner
        .registry
        .by_resource("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no {plural} kind")))
}

pub(crate) async fn list_objects(
    inner: &Inner,
    plural: &str,
    ns: Option<&str>,
) -> ApiResult<Vec<Value>> {
    let k = kind(inner, plural)?;
    let prefix = match ns {
        Some(ns) => format!("{}{ns}/", k.key_prefix()),
        None => k.key_prefix(),
    };
    let res = inner
        .store
        .list(&prefix, Default::default())
        .await
        .map_err(ApiError::store)?;
    res.kvs.iter().map(decode_kv).collect()
}

fn node_endpoint(node: &Value) -> Option<(std::net::IpAddr, u16)> {
    let ip = node
        .pointer("/status/addresses")?
        .as_array()?
        .iter()
        .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))?
        .get("address")?
        .as_str()?
        .parse()
        .ok()?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")?
        .as_u64()
        .filter(|p| *p > 0 && *p < 65536)?;
    Some((ip, port as u16))
}

/// GET `/stats/summary` of one node agent.
async fn summary(inner: &Inner, node: &Value) -> anyhow::Result<Value> {
    agent_get(inner, node, "/stats/summary").await
}

/// GET a JSON document from one node agent (`/stats/summary`, `/stats/load`), body
/// included within 10 s.
pub(crate) async fn agent_get(inner: &Inner, node: &Value, path: &str) -> anyhow::Result<Value> {
    let work = async {
        let resp = agent_request(inner, node, path, None).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>(serde_json::from_slice(&body)?)
    };
    let (ip, port) = node_endpoint(node).ok_or_else(|| anyhow::anyhow!("no agent endpoint"))?;
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| anyhow::anyhow!("node agent {ip}:{port} did not answer in 10s"))?
}

/// GET `path` of a node's agent over TLS (cluster CA) with the kubelet token; an error
/// unless it answers 2xx within `connect_timeout` (for the headers).
pub(crate) async fn agent_request(
    inner: &Inner,
    node: &Value,
    path: &str,
    connect_timeout: Option<Duration>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let tls = inner
        .log_tls
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the API server has no cluster CA"))?;
    let (ip, port) = node_endpoint(node).ok_or_else(|| anyhow::anyhow!("no agent endpoint"))?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect((ip, port)).await?;
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(path)
            .header(header::HOST, format!("{ip}:{port}"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", inner.kubelet_token),
            )
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok::<_, anyhow::Error>(resp)
    };
    match connect_timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| anyhow::anyhow!("node agent {ip}:{port} did not answer in {t:?}"))?,
        None => work.await,
    }
}

/// Summaries of the named nodes (all when None), fetched in parallel; unreachable agents
/// are left out (their pods then have no metrics, as with metrics-server).
async fn summaries(inner: &Inner, only: Option<&str>) -> ApiResult<Vec<(Value, Value)>> {
    let nodes: Vec<Value> = list_objects(inner, "nodes", None)
        .await?
        .into_iter()
        .filter(|n| {
            only.is_none_or(|o| n.pointer("/metadata/name").and_then(Value::as_str) == Some(o))
        })
        .collect();
    let results = futures::future::join_all(nodes.iter().map(|n| summary(inner, n))).await;
    let mut out = Vec::new();
    for (n, r) in nodes.into_iter().zip(results) {
        match r {
            Ok(s) => out.push((n, s)),
            Err(e) => {
                let node = n
                    .pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                tracing::warn!(%node, error = %format!("{e:#}"), "node stats unavailable")
            }
        }
    }
    Ok(out)
}

fn cpu(v: &Value) -> String {
    format!(
        "{}n",
        v.pointer("/cpu/usageNanoCores")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    )
}

fn memory(v: &Value) -> String {
    let b = v
        .pointer("/memory/workingSetBytes")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    format!("{}Ki", b / 1024)
}

fn now() -> String {
    format!("{:.0}", jiff::Timestamp::now())
}

fn pod_metrics(pod: &Value, stats: &Value) -> Value {
    let containers: Vec<Value> = stats
        .get("containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "name": c.get("name").cloned().unwrap_or(Value::Null),
                        "usage": {"cpu": cpu(c), "memory": memory(c)},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let meta = &pod["metadata"];
    json!({
        "kind": "PodMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": meta.get("labels").cloned().unwrap_or(json!({})),
            "creationTimestamp": now(),
        },
        "timestamp": stats.pointer("/cpu/time").cloned().unwrap_or_else(|| json!(now())),
        "window": WINDOW,
        "containers": containers,
    })
}

fn node_metrics(node: &Value, s: &Value) -> Value {
    let n = &s["node"];
    json!({
        "kind": "NodeMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {
            "name": node["metadata"]["name"],
            "labels": node["metadata"].get("labels").cloned().unwrap_or(json!({})),
            "creationTimestamp": now(),
        },
        "timestamp": n.pointer("/cpu/time").cloned().unwrap_or_else(|| json!(now())),
        "window": WINDOW,
        "usage": {"cpu": cpu(n), "memory": memory(n)},
    })
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": kind,
            "apiVersion": GROUP_VERSION,
            "metadata": {},
            "items": items,
        }),
    )
}

fn selector(q: &ListQuery) -> ApiResult<LabelSelector> {
    LabelSelector::parse(q.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))
}

async fn pods_metrics(
    inner: &Inner,
    ns: Option<&str>,
    sel: &LabelSelector,
) -> ApiResult<Vec<Value>> {
    let pods: Vec<Value> = list_objects(inner, "pods", ns)
        .await?
        .into_iter()
        .filter(|p| sel.matches(p))
        .collect();
    if pods.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_uid = std::collections::HashMap::new();
    for (_, s) in summaries(inner, None).await? {
        for p in s
            .get("pods")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(uid) = p.pointer("/podRef/uid").and_then(Value::as_str) {
                by_uid.insert(uid.to_string(), p.clone());
            }
        }
    }
    Ok(pods
        .iter()
        .filter_map(|p| {
            let uid = p.pointer("/metadata/uid").and_then(Value::as_str)?;
            by_uid.get(uid).map(|s| pod_metrics(p, s))
        })
        .collect())
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{resource}.{GROUP} \"{name}\" not found"),
    )
    .with_details(json!({"name": name, "group": GROUP, "kind": resource}))
}

pub(crate) async fn all_pods(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let sel = selector(&q)?;
    Ok(list(
        "PodMetricsList",
        pods_metrics(&inner, None, &sel).await?,
    ))
}

pub(crate) async fn ns_pods(
    State(inner): State<Arc<Inner>>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let sel = selector(&q)?;
    Ok(list(
        "PodMetricsList",
        pods_metrics(&inner, Some(&ns), &sel).await?,
    ))
}

pub(crate) async fn one_pod(
    State(inner): State<Arc<Inner>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let items = pods_metrics(
        &inner,
        Some(&ns),
        &LabelSelector::parse("").unwrap_or_default(),
    )
    .await?;
    items
        .into_iter()
        .find(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(name.as_str()))
        .map(|p| json_response(StatusCode::OK, &p))
        .ok_or_else(|| not_found("pods", &name))
}

pub(crate) async fn nodes(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let sel = selector(&q)?;
    let items = summaries(&inner, None)
        .await?
        .into_iter()
        .filter(|(n, _)| sel.matches(n))
        .map(|(n, s)| node_metrics(&n, &s))
        .collect();
    Ok(list("NodeMetricsList", items))
}

pub(crate) async fn one_node(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    summaries(&inner, Some(&name))
        .await?
        .into_iter()
        .next()
        .map(|(n, s)| json_response(StatusCode::OK, &node_metrics(&n, &s)))
        .ok_or_else(|| not_found("nodes", &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metrics_from_summary() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u"}});
        let s = json!({
            "podRef": {"uid": "u"},
            "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 5},
            "containers": [{"name": "c", "cpu": {"usageNanoCores": 250000000u64}, "memory": {"workingSetBytes": 2097152u64}}],
        });
        let m = pod_metrics(&pod, &s);
        assert_eq!(m["containers"][0]["usage"]["cpu"], "250000000n");
        assert_eq!(m["containers"][0]["usage"]["memory"], "2048Ki");
        assert_eq!(m["metadata"]["namespace"], "ns");
        assert_eq!(m["timestamp"], "2026-01-01T00:00:00Z");
    }
}
