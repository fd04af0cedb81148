//! DELETE of one object (finalizers, graceful pod deletion, propagation) and of
//! collections.

use std::sync::Arc;

use axum::response::Response;
use bosun_api::KindInfo;
use bosun_store::StoreError;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::common::{MAX_RETRIES, current, is_namespace, is_pod, is_service, served};
use super::meta::{encode, finalizers, meta_mut, meta_str, set_rv, ts_rfc3339};
use super::read::{ListQuery, list_objects, list_value};
use crate::Inner;
use crate::ctx::{Ctx, json_response, parse_doc};
use crate::error::{ApiError, ApiResult};
use crate::services;

#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOpts {
    propagation: Option<String>,
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<String>,
    dry_run: bool,
}

fn delete_opts(ctx: &Ctx, body: &[u8]) -> ApiResult<DeleteOpts> {
    let v = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_doc(&ctx.content_type(), body)?)
    };
    delete_opts_from(ctx, v)
}

/// DeleteOptions from a decoded body (or an Eviction's `deleteOptions`) and the query.
pub(crate) fn delete_opts_from(ctx: &Ctx, v: Option<Value>) -> ApiResult<DeleteOpts> {
    let mut o = DeleteOpts {
        dry_run: ctx.dry_run(),
        ..Default::default()
    };
    if let Some(v) = v {
        if let Some(k) = v.get("kind").and_then(Value::as_str)
            && k != "DeleteOptions"
        {
            return Err(ApiError::bad_request(format!(
                "expected DeleteOptions in the request body, got {k}"
            )));
        }
        o.propagation = v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from);
        if o.propagation.is_none() {
            o.propagation = match v.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            };
        }
        o.grace = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
            o.dry_run |= d.iter().any(|x| x == "All");
        }
    }
    if o.propagation.is_none() {
        o.propagation = ctx.q("propagationPolicy").map(String::from);
    }
    if o.propagation.is_none() && ctx.q("orphanDependents") == Some("true") {
        o.propagation = Some("Orphan".into());
    }
    if o.grace.is_none()
        && let Some(g) = ctx.q("gracePeriodSeconds")
    {
        o.grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = &o.propagation
        && !matches!(p.as_str(), "Background" | "Foreground" | "Orphan")
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "DeleteOptions.meta.k8s.io is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            ),
        ));
    }
    if o.grace.is_some_and(|g| g < 0) {
        o.grace = Some(0);
    }
    Ok(o)
}

pub(crate) struct Deleted {
    pub obj: Value,
    /// Gone from the store (as opposed to marked for deletion).
    pub removed: bool,
}

pub(crate) async fn delete_object(
    inner: &Arc<Inner>,
    kind: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<Deleted> {
    let key = kind.key(ns, name);
    for _ in 0..MAX_RETRIES {
        let (cur_kv, cur) = current(inner, kind, &key, name).await?;
        if let Some(uid) = &opts.uid {
            let cur_uid = meta_str(&cur, "uid").unwrap_or_default();
            if uid != cur_uid {
                return Err(ApiError::conflict_msg(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {cur_uid}"
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.rv {
            let cur_rv = cur_kv.mod_revision.to_string();
            if *rv != cur_rv {
                return Err(ApiError::conflict_msg(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {cur_rv}"
                    ),
                ));
            }
        }
        let mut new = cur.clone();
        let mut fins = finalizers(&cur);
        match opts.propagation.as_deref() {
            Some("Foreground") if !fins.iter().any(|f| f == "foregroundDeletion") => {
                fins.retain(|f| f != "orphan");
                fins.push("foregroundDeletion".into());
            }
            Some("Orphan") if !fins.iter().any(|f| f == "orphan") => {
                fins.retain(|f| f != "foregroundDeletion");
                fins.push("orphan".into());
            }
            _ => {}
        }
        if !fins.is_empty() {
            meta_mut(&mut new).insert("finalizers".into(), json!(fins));
        }
        let mut grace = 0i64;
        if is_pod(kind) {
            let bound = cur
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let terminal = matches!(
                cur.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            grace = opts.grace.unwrap_or_else(|| {
                cur.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            if !bound || terminal {
                grace = 0;
            }
            if let Some(existing) = cur
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
            {
                // A second delete can only shorten the grace period.
                grace = grace.min(existing);
            }
        }
        let ns_pending = is_namespace(kind)
            && cur
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        let pending = grace > 0 || !fins.is_empty() || ns_pending;
        if pending {
            let already = meta_str(&cur, "deletionTimestamp").is_some();
            let cur_grace = cur
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if !already || cur_grace != Some(grace) {
                let now = jiff::Timestamp::now().as_second();
                let m = meta_mut(&mut new);
                m.insert("deletionTimestamp".into(), json!(ts_rfc3339(now + grace)));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                if !already && let Some(g) = m.get("generation").and_then(Value::as_i64) {
                    m.insert("generation".into(), json!(g + 1));
                }
            }
            if is_namespace(kind) {
                new["status"]["phase"] = json!("Terminating");
            }
            if new == cur {
                return Ok(Deleted {
                    obj: cur,
                    removed: false,
                });
            }
            if opts.dry_run {
                return Ok(Deleted {
                    obj: new,
                    removed: false,
                });
            }
            match inner
                .store
                .update(&key, encode(&new), Some(cur_kv.mod_revision), cur_kv.lease)
                .await
            {
                Ok(kv) => {
                    set_rv(&mut new, kv.mod_revision);
                    return Ok(Deleted {
                        obj: new,
                        removed: false,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind, name)),
                Err(e) => return Err(ApiError::store(e)),
            }
        }
        if opts.dry_run {
            return Ok(Deleted {
                obj: cur,
                removed: true,
            });
        }
        match inner.store.delete(&key, Some(cur_kv.mod_revision)).await {
            Ok(kv) => {
                let mut obj = cur;
                if is_service(kind) {
                    services::release(inner, &obj).await;
                }
                set_rv(&mut obj, kv.mod_revision);
                return Ok(Deleted { obj, removed: true });
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind, name)),
            Err(e) => return Err(ApiError::store(e)),
        }
    }
    Err(ApiError::conflict(kind, name))
}

/// What DELETE answers: the object while it is pending deletion (and always for
/// pods and services, as Kubernetes), else a success `Status`.
fn delete_response(kind: &KindInfo, d: &Deleted) -> Response {
    let returns_object = is_pod(kind) || (kind.group.is_empty() && kind.kind == "Service");
    if !d.removed || returns_object {
        return json_response(StatusCode::OK, &served(kind, d.obj.clone()));
    }
    let mut details = json!({
        "name": meta_str(&d.obj, "name").unwrap_or_default(),
        "kind": kind.plural,
        "uid": meta_str(&d.obj, "uid").unwrap_or_default(),
    });
    if !kind.group.is_empty() {
        details["group"] = json!(kind.group);
    }
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    });
    json_response(StatusCode::OK, &status)
}

pub(crate) async fn delete(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let opts = delete_opts(&ctx, &body)?;
    if is_namespace(ctx.kind()) && matches!(ctx.name(), "default" | "kube-system" | "kube-public") {
        return Err(ApiError::forbidden(
            ctx.kind(),
            ctx.name(),
            "this namespace may not be deleted",
        ));
    }
    let d = delete_object(
        &ctx.inner,
        ctx.kind(),
        ctx.target.namespace.as_deref(),
        ctx.name(),
        &opts,
    )
    .await?;
    Ok(delete_response(ctx.kind(), &d))
}

pub(crate) async fn delete_collection(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let opts = delete_opts(&ctx, &body)?;
    let q = ListQuery::from_ctx(&ctx)?;
    let out = list_objects(&ctx.inner, kind, ctx.target.namespace.as_deref(), &q).await?;
    let mut items = Vec::new();
    for obj in out.items {
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let ns = meta_str(&obj, "namespace").map(String::from);
        match delete_object(&ctx.inner, kind, ns.as_deref(), &name, &opts).await {
            Ok(d) => items.push(d.obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let rev = ctx
        .inner
        .store
        .current_revision()
        .await
        .map_err(ApiError::store)?;
    Ok(json_response(
        StatusCode::OK,
        &list_value(kind, rev, None, items),
    ))
}
