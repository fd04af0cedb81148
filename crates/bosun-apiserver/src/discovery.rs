//! `/version`, health, API discovery (classic and aggregated) and OpenAPI v3.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bosun_api::KindInfo;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::Inner;
use crate::ctx::json_response;
use crate::error::{ApiError, ApiResult};

/// Content-Type of an aggregated discovery answer; kubectl uses the answer only when
/// the header is exactly this.
pub const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The Kubernetes version bosun speaks; kubectl's dispatcher picks the matching client.
pub(crate) async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0",
            "gitCommit": "bosun",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "none",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
        }),
    )
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(crate) async fn health() -> &'static str {
    "ok"
}

const RESOURCE_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// (subresource, group, version, kind, verbs) for each subresource a kind serves.
fn subresource_info(
    kind: &KindInfo,
    sub: &str,
) -> (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        "log" => ("", "v1", "Pod", &["get"]),
        "exec" => ("", "v1", "PodExecOptions", &["create", "get"]),
        "attach" => ("", "v1", "PodAttachOptions", &["create", "get"]),
        "portforward" => ("", "v1", "PodPortForwardOptions", &["create", "get"]),
        "binding" => ("", "v1", "Binding", &["create"]),
        "eviction" => ("policy", "v1", "Eviction", &["create"]),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest", &["create"]),
        "finalize" => ("", "v1", "Namespace", &["update"]),
        _ => (
            kind.group,
            kind.version,
            kind.kind,
            &["get", "patch", "update"],
        ),
    }
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|part| {
                let p = part.replace(' ', "");
                p.contains("g=apidiscovery.k8s.io")
                    && p.contains("v=v2;")
                    && p.contains("as=APIGroupDiscoveryList")
                    || p.contains("g=apidiscovery.k8s.io")
                        && p.ends_with("v=v2")
                        && p.contains("as=APIGroupDiscoveryList")
            })
        })
}

fn aggregated_response(v: &Value) -> ApiResult<Response> {
    let mut r = json_response(StatusCode::OK, v);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(AGGREGATED_CT),
    );
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(r)
}

fn aggregated_group(inner: &Inner, group: &str) -> Value {
    let all = crate::crds::all_kinds(inner);
    let versions: Vec<Value> = crate::crds::group_versions(inner)
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| {
            let resources: Vec<Value> = all
                .iter()
                .copied()
                .filter(|k| k.group == g && k.version == v)
                .map(|k| {
                    let subs: Vec<Value> = k
                        .subresources
                        .iter()
                        .map(|s| {
                            let (sg, sv, sk, verbs) = subresource_info(k, s);
                            json!({
                                "subresource": s,
                                "responseKind": {"group": sg, "version": sv, "kind": sk},
                                "verbs": verbs,
                            })
                        })
                        .collect();
                    let mut r = json!({
                        "resource": k.plural,
                        "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular,
                        "verbs": RESOURCE_VERBS,
                    });
                    if !k.short_names.is_empty() {
                        r["shortNames"] = json!(k.short_names);
                    }
                    if !k.categories.is_empty() {
                        r["categories"] = json!(k.categories);
                    }
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut meta = json!({"creationTimestamp": null});
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({"metadata": meta, "versions": versions})
}

fn aggregated_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

pub(crate) fn api_versions(inner: &Inner, headers: &HeaderMap) -> ApiResult<Response> {
    if wants_aggregated(headers) {
        return aggregated_response(&aggregated_list(vec![aggregated_group(inner, "")]));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
    ))
}

fn groups(inner: &Inner) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (g, _) in crate::crds::group_versions(inner) {
        if !g.is_empty() && !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

fn api_group_obj(inner: &Inner, group: &str) -> Value {
    let versions: Vec<Value> = crate::crds::group_versions(inner)
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

pub(crate) fn api_groups(inner: &Inner, headers: &HeaderMap) -> ApiResult<Response> {
    if wants_aggregated(headers) {
        let mut items: Vec<Value> = groups(inner)
            .into_iter()
            .map(|g| aggregated_group(inner, g))
            .collect();
        items.push(crate::metrics::aggregated_group());
        items.push(crate::custom_metrics::aggregated_group());
        items.push(crate::external_metrics::aggregated_group());
        return aggregated_response(&aggregated_list(items));
    }
    let mut gs: Vec<Value> = groups(inner)
        .into_iter()
        .map(|g| api_group_obj(inner, g))
        .collect();
    gs.push(crate::metrics::api_group());
    gs.push(crate::custom_metrics::api_group());
    gs.push(crate::external_metrics::api_group());
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
    ))
}

pub(crate) fn api_group(inner: &Inner, group: &str) -> ApiResult<Response> {
    if !groups(inner).contains(&group) {
        return Err(ApiError::no_route());
    }
    let mut g = api_group_obj(inner, group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &g))
}

pub(crate) fn resource_list(inner: &Inner, group: &str, version: &str) -> ApiResult<Response> {
    let kinds: Vec<&KindInfo> = crate::crds::all_kinds(inner)
        .into_iter()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return Err(ApiError::no_route());
    }
    let mut resources = Vec::new();
    for k in kinds {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": RESOURCE_VERBS,
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        for s in k.subresources {
            let (sg, sv, sk, verbs) = subresource_info(k, s);
            let mut r = json!({
                "name": format!("{}/{}", k.plural, s),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": sk,
                "verbs": verbs,
            });
            if sg != group || sv != version {
                r["group"] = json!(sg);
                r["version"] = json!(sv);
            }
            resources.push(r);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

pub(crate) async fn openapi_index(State(inner): State<Arc<Inner>>) -> Response {
    let idx = inner.openapi.index();
    if idx.is_null() {
        return ApiError::no_route().into_response();
    }
    let custom = inner.crds.get();
    match custom
        .openapi
        .index()
        .get("paths")
        .and_then(Value::as_object)
    {
        Some(extra) if !extra.is_empty() => {
            let mut merged = idx.clone();
            if let Some(p) = merged.get_mut("paths").and_then(Value::as_object_mut) {
                p.extend(extra.clone());
            }
            json_response(StatusCode::OK, &merged)
        }
        _ => json_response(StatusCode::OK, idx),
    }
}

pub(crate) async fn openapi_doc(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let custom = inner.crds.get();
    let api = if inner.openapi.document_bytes(&path).is_some() {
        &inner.openapi
    } else {
        &custom.openapi
    };
    let Some(doc) = api.document_bytes(&path) else {
        return ApiError::no_route().into_response();
    };
    let mut r = (StatusCode::OK, doc.to_vec()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let hash = api.hash(&path);
    let h = r.headers_mut();
    match (q.get("hash"), hash) {
        (Some(asked), Some(h_now)) if asked == h_now => {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, immutable"),
            );
            h.insert(
                header::EXPIRES,
                HeaderValue::from_static("Fri, 01 Jan 2100 00:00:00 GMT"),
            );
        }
        (Some(_), Some(h_now)) => {
            // An outdated hash: send the client to the current document.
            let loc = format!("/openapi/v3/{path}?hash={h_now}");
            let mut redirect = StatusCode::MOVED_PERMANENTLY.into_response();
            if let Ok(v) = HeaderValue::from_str(&loc) {
                redirect.headers_mut().insert(header::LOCATION, v);
            }
            return redirect;
        }
        _ => {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
        }
    }
    if let Some(hv) = hash.and_then(|x| HeaderValue::from_str(&format!("\"{x}\"")).ok()) {
        r.headers_mut().insert(header::ETAG, hv);
    }
    r
}

/// `GET /openapi/v2`: only in protobuf, which is all kubectl accepts there (older
/// kubectl reads it to decide on server-side field validation).
pub(crate) async fn openapi_v2(State(inner): State<Arc<Inner>>) -> Response {
    let body = inner.openapi.v2_protobuf();
    if body.is_empty() {
        return ApiError::no_route().into_response();
    }
    // Custom kinds follow: a protobuf message appended to another merges into it.
    let custom = inner.crds.get();
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(custom.openapi.v2_protobuf());
    let mut r = (StatusCode::OK, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
    );
    r
}
