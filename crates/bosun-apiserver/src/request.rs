//! URL parsing and dispatch of resource requests.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bosun_api::KindInfo;
use bytes::Bytes;
use http::{HeaderMap, Method, header};
use serde_json::Value;

use crate::Inner;
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::watch;

/// What a resource URL names.
pub(crate) struct Target {
    pub kind: &'static KindInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// Legacy `/watch/` path prefix.
    pub watch_path: bool,
}

/// Everything a resource handler needs from the request.
pub(crate) struct Ctx {
    pub inner: Arc<Inner>,
    pub target: Target,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

impl Ctx {
    pub fn kind(&self) -> &'static KindInfo {
        self.target.kind
    }

    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.q(key), Some("true" | "1"))
    }

    pub fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }

    /// The name from the URL (present for object requests).
    pub fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or_default()
    }

    pub fn wants_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| {
                a.split(',').next().is_some_and(|first| {
                    first.contains("as=Table") && first.contains("g=meta.k8s.io")
                })
            })
    }

    pub fn content_type(&self) -> String {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    }
}

pub(crate) fn parse_query(uri: &http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Resolves the part of a path after `/api/v1` or `/apis/G/V`.
fn resolve(inner: &Inner, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let (watch_path, rest) = match rest.first() {
        Some(&"watch") => (true, &rest[1..]),
        _ => (false, rest),
    };
    let t = |kind, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Some(Target {
            kind,
            namespace: namespace.map(String::from),
            name: name.map(String::from),
            sub: sub.map(String::from),
            watch_path,
        })
    };
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && let Some(kind) =
            crate::crds::by_resource(inner, group, version, rest[2]).filter(|k| k.namespaced)
    {
        return match rest.len() {
            3 => t(kind, Some(rest[1]), None, None),
            4 => t(kind, Some(rest[1]), Some(rest[3]), None),
            5 => t(kind, Some(rest[1]), Some(rest[3]), Some(rest[4])),
            _ => None,
        };
    }
    let kind = crate::crds::by_resource(inner, group, version, rest.first()?)?;
    if kind.namespaced && rest.len() > 1 {
        // Namespaced objects are only addressed under /namespaces/NS/.
        return None;
    }
    match rest.len() {
        1 => t(kind, None, None, None),
        2 => t(kind, None, Some(rest[1]), None),
        3 => t(kind, None, Some(rest[1]), Some(rest[2])),
        _ => None,
    }
}

/// Fallback handler: discovery documents and every resource URL.
pub(crate) async fn dispatch(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    match dispatch_inner(inner, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch_inner(inner: Arc<Inner>, req: Request) -> ApiResult<Response> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return discovery::api_versions(&inner, req.headers()),
        ["apis"] => return discovery::api_groups(&inner, req.headers()),
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g] => return discovery::api_group(&inner, g),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return discovery::resource_list(&inner, group, version);
    }
    let target = resolve(&inner, group, version, rest).ok_or_else(ApiError::no_route)?;
    if let Some(sub) = &target.sub
        && !target.kind.has_subresource(sub)
    {
        return Err(ApiError::no_route());
    }
    if matches!(
        target.sub.as_deref(),
        Some("exec" | "attach" | "portforward")
    ) {
        return crate::streaming::proxy(inner, target, req).await;
    }
    let (parts, body) = req.into_parts();
    let ctx = Ctx {
        query: parse_query(&parts.uri),
        inner,
        target,
        headers: parts.headers,
    };
    let method = parts.method;
    if crate::crds::is_crd(ctx.kind()) && method != Method::GET {
        let inner = ctx.inner.clone();
        let res = route(ctx, method, body).await;
        if res.as_ref().is_ok_and(|r| r.status().is_success()) {
            // The new kinds are served when the write returns, as the client expects.
            crate::crds::refresh(&inner).await?;
        }
        return res;
    }
    // Deletes free quota; a written quota gets its status at once.
    let quota_ns = ctx.target.namespace.clone().filter(|_| {
        method == Method::DELETE
            || (method != Method::GET
                && ctx.kind().plural == "resourcequotas"
                && ctx.kind().group.is_empty())
    });
    let inner = ctx.inner.clone();
    let res = route(ctx, method, body).await;
    if let Some(ns) = quota_ns
        && res.as_ref().is_ok_and(|r| r.status().is_success())
    {
        crate::quota::touch(&inner, &ns);
    }
    res
}

async fn route(ctx: Ctx, method: Method, body: Body) -> ApiResult<Response> {
    let has_name = ctx.target.name.is_some();
    let sub = ctx.target.sub.clone();
    match (&method, has_name, sub.as_deref()) {
        (&Method::GET, false, None) => {
            if ctx.target.watch_path || ctx.flag("watch") {
                watch::watch(ctx).await
            } else {
                objects::list(ctx).await
            }
        }
        (&Method::GET, true, None) => {
            if ctx.target.watch_path || ctx.flag("watch") {
                watch::watch(ctx).await
            } else {
                objects::get(ctx).await
            }
        }
        (&Method::GET, true, Some("status" | "ephemeralcontainers")) => objects::get(ctx).await,
        (&Method::GET, true, Some("scale")) => objects::get_scale(ctx).await,
        (&Method::GET, true, Some("log")) => crate::logs::logs(ctx).await,
        (&Method::POST, false, None) => {
            let body = read_body(&ctx, body).await?;
            objects::create(ctx, body).await
        }
        (&Method::POST, true, Some("eviction")) => {
            let body = read_body(&ctx, body).await?;
            crate::eviction::evict(ctx, body).await
        }
        (&Method::POST, true, Some("token")) => {
            let body = read_body(&ctx, body).await?;
            crate::sa_token::token_request(ctx, body).await
        }
        (&Method::POST, true, Some("binding")) => {
            let body = read_body(&ctx, body).await?;
            objects::bind(ctx, body).await
        }
        (
            &Method::PUT,
            true,
            None | Some("status" | "finalize" | "approval" | "ephemeralcontainers"),
        ) => {
            let body = read_body(&ctx, body).await?;
            objects::update(ctx, body).await
        }
        (&Method::PUT, true, Some("scale")) => {
            let body = read_body(&ctx, body).await?;
            objects::update_scale(ctx, body).await
        }
        (&Method::PATCH, true, None | Some("status" | "ephemeralcontainers")) => {
            let body = read_body(&ctx, body).await?;
            objects::patch(ctx, body).await
        }
        (&Method::PATCH, true, Some("scale")) => {
            let body = read_body(&ctx, body).await?;
            objects::patch_scale(ctx, body).await
        }
        (&Method::DELETE, true, None) => {
            let body = read_body(&ctx, body).await?;
            objects::delete(ctx, body).await
        }
        (&Method::DELETE, false, None) => {
            let body = read_body(&ctx, body).await?;
            objects::delete_collection(ctx, body).await
        }
        _ => Err(ApiError::method_not_allowed(&method)),
    }
}

/// Reads the whole body, refusing more than the configured limit with 413.
async fn read_body(ctx: &Ctx, body: Body) -> ApiResult<Bytes> {
    let limit = ctx.inner.max_body_bytes;
    if let Some(len) = ctx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // to_bytes reports the limit through a LengthLimitError source.
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return ApiError::too_large(limit);
            }
            src = s.source();
        }
        ApiError::bad_request(format!("reading request body: {e}"))
    })
}

/// Decodes a JSON or YAML document into an object.
pub(crate) fn parse_doc(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let yaml = match content_type {
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => true,
        "" | "application/json" | "text/json" => false,
        "application/vnd.kubernetes.protobuf" => {
            return bosun_proto::decode(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}")));
        }
        // Patch bodies are JSON; their handlers pass the patch type here.
        ct if ct.ends_with("patch+json") => false,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let v: Value = if yaml {
        serde_saphyr::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    Ok(v)
}

pub(crate) fn json_response(code: http::StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
