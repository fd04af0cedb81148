//! Log search across nodes: `GET /apis/logs.bosun.dev/v1/namespaces/NS/podlogs` (one
//! namespace) and `GET /apis/logs.bosun.dev/v1/podlogs` (all), authorized as `get` on
//! `pods/log` (in NS, or cluster-wide). Each node agent's `/logs` searches its pods' logs,
//! deleted pods' included; this module asks every agent at once over the authenticated path
//! pod logs use, and merges the answers by time.
//!
//! Query: `labelSelector`, `pods` (comma-separated names), `container`, `sinceSeconds` or
//! `sinceTime`, `grep` (a regular expression), `tailLines` (newest lines of each container),
//! `limit` (newest lines overall, default 1000),
//! `includeDeleted` (default true), `follow`. Without `follow` the answer is one JSON
//! document, a `PodLogList` with `items` in time order and `warnings` for nodes that could
//! not answer; with `follow=true` it is a stream of JSON lines, one per log line.
//!
//! The traces of the node proxies and gateways (`/bosun/v1/traces`) are gathered the same
//! way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::Inner;
use crate::ctx::json_response;
use crate::error::{ApiError, ApiResult};
use crate::metrics::agent_request;
use crate::objects::meta::decode_kv;

pub(crate) const GROUP: &str = "logs.bosun.dev";
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// The query parameters passed on to the agents (the rest are ignored).
const PASSED: &[&str] = &[
    "labelSelector",
    "pods",
    "container",
    "sinceSeconds",
    "sinceTime",
    "grep",
    "limit",
    "tailLines",
    "includeDeleted",
    "follow",
];

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Checks the parameters here, so a mistake is one 400 Status naming the field rather
/// than an error from every node.
fn validate(params: &HashMap<String, String>) -> ApiResult<usize> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let Some(s) = get("labelSelector") {
        crate::selector::LabelSelector::parse(s)
            .map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?;
    }
    if let Some(s) = get("sinceSeconds")
        && s.parse::<i64>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "sinceSeconds: invalid number {s:?}"
        )));
    }
    if let Some(t) = get("tailLines")
        && t.parse::<usize>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "tailLines: invalid number {t:?}"
        )));
    }
    if let Some(t) = get("sinceTime")
        && t.parse::<jiff::Timestamp>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "sinceTime: invalid RFC 3339 time {t:?}"
        )));
    }
    if let Some(g) = get("grep") {
        regex::RegexBuilder::new(g)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| ApiError::bad_request(format!("grep: {e}")))?;
    }
    for b in ["follow", "includeDeleted"] {
        if let Some(v) = get(b)
            && !matches!(v, "true" | "false" | "1" | "0")
        {
            return Err(ApiError::bad_request(format!("{b}: invalid boolean {v:?}")));
        }
    }
    match get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| n.min(MAX_LIMIT))
            .ok_or_else(|| ApiError::bad_request(format!("limit: invalid number {l:?}"))),
    }
}

pub(crate) async fn search_ns(
    State(inner): State<Arc<Inner>>,
    Path(ns): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    search(inner, Some(ns), params)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn search_all(
    State(inner): State<Arc<Inner>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    search(inner, None, params)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn search(
    inner: Arc<Inner>,
    ns: Option<String>,
    params: HashMap<String, String>,
) -> ApiResult<Response> {
    let limit = validate(&params)?;
    let follow = matches!(params.get("follow").map(String::as_str), Some("true" | "1"));
    let mut query: Vec<String> = PASSED
        .iter()
        .filter_map(|k| params.get(*k).map(|v| format!("{k}={}", encode(v))))
        .collect();
    if let Some(ns) = &ns {
        query.push(format!("namespace={}", encode(ns)));
    }
    let path = format!("/logs?{}", query.join("&"));
    let nodes = list_nodes(&inner).await?;
    if follow {
        return Ok(follow_all(inner, nodes, path));
    }
    let answers = futures::future::join_all(nodes.iter().map(|n| {
        let inner = inner.clone();
        let path = path.clone();
        async move {
            let resp = agent_request(&inner, n, &path, Some(Duration::from_secs(10))).await?;
            let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
                .await
                .map_err(|_| anyhow::anyhow!("no complete answer in 30s"))??
                .to_bytes();
            Ok::<_, anyhow::Error>(body)
        }
    }))
    .await;
    let mut items: Vec<Value> = Vec::new();
    let mut warnings = Vec::new();
    for (n, a) in nodes.iter().zip(answers) {
        match a {
            Ok(body) => items.extend(
                body.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .filter_map(|l| serde_json::from_slice::<Value>(l).ok()),
            ),
            Err(e) => warnings.push(format!("node {}: {e:#}", node_name(n))),
        }
    }
    items.sort_by(|a, b| {
        a["timestamp"]
            .as_str()
            .unwrap_or("")
            .cmp(b["timestamp"].as_str().unwrap_or(""))
    });
    let skip = items.len().saturating_sub(limit);
    items.drain(..skip);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": "PodLogList",
            "apiVersion": format!("{GROUP}/v1"),
            "items": items,
            "warnings": warnings,
        }),
    ))
}

/// Streams the JSON lines of every agent as they come.
fn follow_all(inner: Arc<Inner>, nodes: Vec<Value>, path: String) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    for n in nodes {
        let (inner, path, tx) = (inner.clone(), path.clone(), tx.clone());
        tokio::spawn(async move {
            let resp = match agent_request(&inner, &n, &path, Some(Duration::from_secs(10))).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = %node_name(&n), error = %format!("{e:#}"), "log search: node unavailable");
                    return;
                }
            };
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    frame = body.frame() => match frame {
                        Some(Ok(f)) => {
                            if let Some(d) = f.data_ref() {
                                buf.extend_from_slice(d);
                                // Pass on whole lines only, so lines of two nodes never mix.
                                if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
                                    let rest = buf.split_off(end + 1);
                                    let lines = std::mem::replace(&mut buf, rest);
                                    if tx.send(lines.into()).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        _ => return,
                    }
                }
            }
        });
    }
    drop(tx);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /bosun/v1/traces`: recent spans of every node's proxy and gateway (`traceId`,
/// `service`, `limit` narrow them), newest first.
pub(crate) async fn traces(
    State(inner): State<Arc<Inner>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let run = async {
        let limit = match params.get("limit") {
            None => 1000,
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit: invalid number {l:?}")))?,
        };
        let query: Vec<String> = ["traceId", "service", "limit"]
            .iter()
            .filter_map(|k| params.get(*k).map(|v| format!("{k}={}", encode(v))))
            .collect();
        let path = format!("/traces?{}", query.join("&"));
        let nodes = list_nodes(&inner).await?;
        let answers = futures::future::join_all(nodes.iter().map(|n| {
            let (inner, path) = (inner.clone(), path.clone());
            async move {
                let resp = agent_request(&inner, n, &path, Some(Duration::from_secs(10))).await?;
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<Value, anyhow::Error>(serde_json::from_slice(&body)?)
            }
        }))
        .await;
        let mut spans = Vec::new();
        let mut warnings = Vec::new();
        for (n, a) in nodes.iter().zip(answers) {
            match a {
                Ok(v) => {
                    if let Some(s) = v["spans"].as_array() {
                        spans.extend(s.iter().cloned());
                    }
                }
                Err(e) => warnings.push(format!("node {}: {e:#}", node_name(n))),
            }
        }
        spans.sort_by_key(|s| std::cmp::Reverse(s["startTimeUnixNano"].as_u64().unwrap_or(0)));
        spans.truncate(limit);
        Ok::<_, ApiError>(json_response(
            StatusCode::OK,
            &json!({"spans": spans, "warnings": warnings}),
        ))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

fn node_name(n: &Value) -> &str {
    n.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

async fn list_nodes(inner: &Inner) -> ApiResult<Vec<Value>> {
    let k = inner
        .registry
        .by_resource("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("no nodes kind"))?;
    let res = inner
        .store
        .list(&k.key_prefix(), Default::default())
        .await
        .map_err(ApiError::store)?;
    res.kvs.iter().map(decode_kv).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(validate(&p(&[])).unwrap(), DEFAULT_LIMIT);
        assert_eq!(validate(&p(&[("limit", "5")])).unwrap(), 5);
        for (k, v) in [
            ("limit", "x"),
            ("limit", "0"),
            ("grep", "a("),
            ("sinceSeconds", "1h"),
            ("tailLines", "-1"),
            ("sinceTime", "yesterday"),
            ("labelSelector", "a b"),
            ("follow", "yes"),
        ] {
            let e = validate(&p(&[(k, v)])).unwrap_err();
            assert_eq!(e.code, 400);
            assert!(e.message.starts_with(k), "{}", e.message);
        }
    }
}
