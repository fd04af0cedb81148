//! PUT and the read-modify-write loop every change of a stored object goes through.

use std::sync::Arc;

use axum::response::Response;
use bosun_api::{KindInfo, conversion, defaults, validation};
use bosun_store::StoreError;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::common::{
    MAX_RETRIES, check_type, current, field_validation, has_generation, is_namespace, is_service,
    json_raw, normalize, ready_to_remove, respond, served, to_storage,
};
use super::meta::{encode, meta_mut, meta_str, rv_of, set_rv};
use crate::Inner;
use crate::ctx::{Ctx, parse_doc};
use crate::error::{ApiError, ApiResult};
use crate::services;

/// Which part of the stored object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The main resource: everything but `status` (for kinds with a status subresource).
    Main,
    /// `/status`: only `status`.
    Status,
    /// `namespaces/NAME/finalize`: only `spec.finalizers`.
    Finalize,
    /// Server-internal changes (binding): taken as given, without update validation.
    Internal,
    /// `pods/NAME/ephemeralcontainers`: only `spec.ephemeralContainers`, by additions.
    Ephemeral,
}

pub(crate) fn mode_for(ctx: &Ctx) -> Mode {
    match ctx.target.sub.as_deref() {
        // A CSR's approval is a condition in its status (`kubectl certificate approve`).
        Some("status") | Some("approval") => Mode::Status,
        Some("finalize") => Mode::Finalize,
        Some("ephemeralcontainers") => Mode::Ephemeral,
        _ => Mode::Main,
    }
}

/// Builds the object to store from the stored `cur` and the client's `new`.
fn merge_for_update(kind: &KindInfo, mode: Mode, cur: &Value, new: Value) -> Value {
    let rv = rv_of(&new).map(String::from);
    let uid = meta_str(&new, "uid").map(String::from);
    let mut out = match mode {
        Mode::Main | Mode::Internal => {
            let mut n = new;
            if mode == Mode::Main && kind.has_subresource("status") {
                match cur.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if mode == Mode::Main && is_namespace(kind) {
                n["spec"] = cur.get("spec").cloned().unwrap_or_else(|| json!({}));
            }
            if mode == Mode::Main && is_service(kind) {
                services::carry_over(cur, &mut n);
            }
            n
        }
        Mode::Status => {
            let mut n = cur.clone();
            match new.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        }
        Mode::Ephemeral => {
            let mut n = cur.clone();
            match new.pointer("/spec/ephemeralContainers") {
                Some(list) if !list.is_null() => n["spec"]["ephemeralContainers"] = list.clone(),
                _ => {
                    if let Some(spec) = n.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.remove("ephemeralContainers");
                    }
                }
            }
            n
        }
        Mode::Finalize => {
            let mut n = cur.clone();
            let fins = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            n["spec"]["finalizers"] = fins;
            n
        }
    };
    // System-managed metadata always comes from the stored object.
    {
        let cur_meta = cur.get("metadata").and_then(Value::as_object);
        let m = meta_mut(&mut out);
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match cur_meta.and_then(|c| c.get(f)) {
                Some(v) => {
                    m.insert(f.into(), v.clone());
                }
                None => {
                    m.remove(f);
                }
            }
        }
        match rv {
            Some(rv) => m.insert("resourceVersion".into(), json!(rv)),
            None => m.remove("resourceVersion"),
        };
        if let Some(uid) = uid {
            // Kept for the precondition check, restored after it.
            m.insert("x-bosun-uid".into(), json!(uid));
        }
    }
    if has_generation(kind) && out.get("spec") != cur.get("spec") {
        let g = cur
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(&mut out).insert("generation".into(), json!(g + 1));
    }
    out
}

/// The object as far as a write would change it: without its resourceVersion, and
/// without the times of its managedFields entries (a write that changes nothing else
/// must not happen only to move a timestamp, as in Kubernetes).
fn comparable(v: &Value) -> Value {
    let mut o = v.clone();
    let m = meta_mut(&mut o);
    m.remove("resourceVersion");
    if let Some(entries) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
        for e in entries.iter_mut().filter_map(Value::as_object_mut) {
            e.remove("time");
        }
    }
    o
}

/// `comparable(a) == comparable(b)` without copying either object.
fn same_write(a: &Value, b: &Value) -> bool {
    fn meta(v: &Value) -> Option<&Map<String, Value>> {
        v.get("metadata").and_then(Value::as_object)
    }
    let (Some(ta), Some(tb), Some(ma), Some(mb)) = (a.as_object(), b.as_object(), meta(a), meta(b))
    else {
        return comparable(a) == comparable(b);
    };
    // Maps compare regardless of key order, as `Value`'s equality does.
    if ta.len() != tb.len()
        || !ta
            .iter()
            .all(|(k, v)| k == "metadata" || tb.get(k) == Some(v))
    {
        return false;
    }
    let rv = |m: &Map<String, Value>| m.contains_key("resourceVersion") as usize;
    if ma.len() - rv(ma) != mb.len() - rv(mb) {
        return false;
    }
    ma.iter().all(|(k, va)| {
        if k == "resourceVersion" {
            return true;
        }
        let Some(vb) = mb.get(k) else {
            return false;
        };
        match (k.as_str(), va, vb) {
            ("managedFields", Value::Array(ea), Value::Array(eb)) => {
                ea.len() == eb.len() && ea.iter().zip(eb).all(|(x, y)| same_entry(x, y))
            }
            _ => va == vb,
        }
    })
}

/// Two managedFields entries, their `time` aside.
fn same_entry(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let time = |m: &Map<String, Value>| m.contains_key("time") as usize;
            a.len() - time(a) == b.len() - time(b)
                && a.iter().all(|(k, v)| k == "time" || b.get(k) == Some(v))
        }
        // `comparable` drops `time` from object entries only.
        (Value::Object(_), _) | (_, Value::Object(_)) => false,
        _ => a == b,
    }
}

pub(crate) struct Updated {
    pub obj: Value,
}

/// Read-modify-write of one object: `mutate` gets the stored object (with its
/// resourceVersion) and returns the client's version of it. A resourceVersion in
/// that version is a precondition (409 on mismatch); without one, lost races retry.
pub(crate) async fn update_loop<F>(
    inner: &Arc<Inner>,
    kind: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
    mode: Mode,
    dry_run: bool,
    mut mutate: F,
) -> ApiResult<Updated>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let key = kind.key(ns, name);
    for _ in 0..MAX_RETRIES {
        let (cur_kv, cur) = current(inner, kind, &key, name).await?;
        let wanted = if conversion::is_converted(kind) {
            to_storage(kind, mutate(&served(kind, cur.clone()))?)?
        } else {
            mutate(&cur)?
        };
        let mut new = merge_for_update(kind, mode, &cur, wanted);
        if let Some(rv) = rv_of(&new)
            && rv != cur_kv.mod_revision.to_string()
        {
            return Err(ApiError::conflict(kind, name));
        }
        if let Some(uid) = meta_mut(&mut new).remove("x-bosun-uid") {
            let cur_uid = meta_str(&cur, "uid").unwrap_or_default();
            if uid.as_str() != Some(cur_uid) {
                return Err(ApiError::conflict_msg(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {}, UID in object meta: {cur_uid}",
                        uid.as_str().unwrap_or_default()
                    ),
                ));
            }
        }
        if mode != Mode::Internal && mode != Mode::Finalize {
            defaults::apply_defaults(kind, &mut new);
            let errs = if mode == Mode::Ephemeral {
                validation::validate_ephemeral_update(&new, &cur)
            } else {
                validation::validate_update(kind, &new, &cur)
            };
            if !errs.is_empty() {
                return Err(ApiError::invalid(kind, name, &errs));
            }
        }
        set_rv(&mut new, cur_kv.mod_revision);
        if same_write(&new, &cur)
            && !ready_to_remove(kind, &cur)
            // A value under an old key (or plaintext) is written again: that is how
            // read + update re-encrypts with the current key, as in Kubernetes.
            && !inner.encryption.stale(&key).await.map_err(ApiError::store)?
        {
            return Ok(Updated {
                obj: served(kind, cur),
            });
        }
        if dry_run {
            return Ok(Updated {
                obj: served(kind, new),
            });
        }
        match inner
            .store
            .update(&key, encode(&new), Some(cur_kv.mod_revision), cur_kv.lease)
            .await
        {
            Ok(kv) => {
                set_rv(&mut new, kv.mod_revision);
                if is_service(kind) {
                    services::release_dropped(inner, &cur, &new).await;
                }
                if ready_to_remove(kind, &new) {
                    match inner.store.delete(&key, Some(kv.mod_revision)).await {
                        Ok(_) => {
                            if is_service(kind) {
                                services::release(inner, &new).await;
                            }
                            return Ok(Updated {
                                obj: served(kind, new),
                            });
                        }
                        // Someone wrote in between; that write decides.
                        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                        Err(e) => return Err(ApiError::store(e)),
                    }
                }
                return Ok(Updated {
                    obj: served(kind, new),
                });
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind, name)),
            Err(e) => return Err(ApiError::store(e)),
        }
    }
    Err(ApiError::conflict(kind, name))
}

/// Checks that a body names the object of the URL.
pub(crate) fn check_identity(ctx: &Ctx, obj: &mut Value) -> ApiResult<()> {
    let kind = ctx.kind();
    match meta_str(obj, "name") {
        Some(n) if n != ctx.name() => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                ctx.name()
            )));
        }
        Some(_) => {}
        None => {
            meta_mut(obj).insert("name".into(), json!(ctx.name()));
        }
    }
    if kind.namespaced
        && let (Some(b), Some(u)) = (meta_str(obj, "namespace"), ctx.target.namespace.as_deref())
        && b != u
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

pub(crate) async fn update(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let mut obj = parse_doc(&ctx.content_type(), &body)?;
    check_type(kind, &mut obj)?;
    check_identity(&ctx, &mut obj)?;
    let warnings = field_validation(&ctx, kind, &obj, json_raw(&ctx, &body))?;
    let obj = normalize(kind, &obj)?;
    let mode = mode_for(&ctx);
    let up = update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        ctx.name(),
        mode,
        ctx.dry_run(),
        |_cur| Ok(obj.clone()),
    )
    .await?;
    Ok(respond(StatusCode::OK, &up.obj, &warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_write_agrees_with_comparing_copies() {
        let base = json!({"metadata": {"name": "p", "resourceVersion": "5", "labels": {"a": "b"},
            "managedFields": [{"manager": "m", "time": "2026-01-01T00:00:00Z"}, "odd"]},
            "spec": {"x": 1}, "status": {"phase": "Pending"}});
        let variants = [
            base.clone(),
            json!({"spec": {"x": 1}, "status": {"phase": "Pending"}, "metadata": {
                "labels": {"a": "b"}, "name": "p", "managedFields": [{"manager": "m",
                "time": "2027-01-01T00:00:00Z"}, "odd"]}}),
            json!({"metadata": {"name": "p", "resourceVersion": "6", "labels": {"a": "b"},
                "managedFields": [{"manager": "m"}, "odd"]},
                "spec": {"x": 1}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "p", "resourceVersion": "5", "labels": {"a": "c"},
                "managedFields": [{"manager": "m", "time": "t"}, "odd"]},
                "spec": {"x": 1}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "p", "resourceVersion": "5", "labels": {"a": "b"},
                "managedFields": [{"manager": "n", "time": "t"}, "odd"]},
                "spec": {"x": 1}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "p", "labels": {"a": "b"},
                "managedFields": [{"manager": "m", "time": "t"}]},
                "spec": {"x": 1}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "p", "resourceVersion": "5", "labels": {"a": "b"},
                "managedFields": [{"manager": "m", "time": "t"}, "odd"]},
                "spec": {"x": 2}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "p", "labels": {"a": "b"},
                "managedFields": [{"manager": "m", "time": "t"}, "odd"]},
                "spec": {"x": 1}}),
            json!({"metadata": {"name": "p", "resourceVersion": "5", "uid": "u", "labels": {"a": "b"},
                "managedFields": [{"manager": "m", "time": "t"}, "odd"]},
                "spec": {"x": 1}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "p", "managedFields": "none"}, "spec": {"x": 1}}),
            json!({"metadata": {"name": "p", "managedFields": "none"}, "spec": {"x": 1}}),
            json!({"metadata": "odd", "spec": {"x": 1}}),
            json!({"spec": {"x": 1}}),
            json!({"metadata": {}, "spec": {"x": 1}}),
            json!({"metadata": {"resourceVersion": "1"}, "spec": {"x": 1}}),
        ];
        for a in &variants {
            for b in &variants {
                assert_eq!(
                    same_write(a, b),
                    comparable(a) == comparable(b),
                    "{a} vs {b}"
                );
            }
        }
    }
}
