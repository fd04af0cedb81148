//! URL parsing and dispatch of resource requests.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, header};

use crate::Inner;
use crate::ctx::{Ctx, Target, parse_query};
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::objects;

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
                objects::watch::watch(ctx).await
            } else {
                objects::read::list(ctx).await
            }
        }
        (&Method::GET, true, None) => {
            if ctx.target.watch_path || ctx.flag("watch") {
                objects::watch::watch(ctx).await
            } else {
                objects::read::get(ctx).await
            }
        }
        (&Method::GET, true, Some("status" | "ephemeralcontainers")) => {
            objects::read::get(ctx).await
        }
        (&Method::GET, true, Some("scale")) => objects::subresources::get_scale(ctx).await,
        (&Method::GET, true, Some("log")) => crate::logs::logs(ctx).await,
        (&Method::POST, false, None) => {
            let body = read_body(&ctx, body).await?;
            objects::create::create(ctx, body).await
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
            objects::subresources::bind(ctx, body).await
        }
        (
            &Method::PUT,
            true,
            None | Some("status" | "finalize" | "approval" | "ephemeralcontainers"),
        ) => {
            let body = read_body(&ctx, body).await?;
            objects::update::update(ctx, body).await
        }
        (&Method::PUT, true, Some("scale")) => {
            let body = read_body(&ctx, body).await?;
            objects::subresources::update_scale(ctx, body).await
        }
        (&Method::PATCH, true, None | Some("status" | "ephemeralcontainers")) => {
            let body = read_body(&ctx, body).await?;
            objects::patch::patch(ctx, body).await
        }
        (&Method::PATCH, true, Some("scale")) => {
            let body = read_body(&ctx, body).await?;
            objects::subresources::patch_scale(ctx, body).await
        }
        (&Method::DELETE, true, None) => {
            let body = read_body(&ctx, body).await?;
            objects::delete::delete(ctx, body).await
        }
        (&Method::DELETE, false, None) => {
            let body = read_body(&ctx, body).await?;
            objects::delete::delete_collection(ctx, body).await
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
