//! PATCH: JSON, merge and strategic merge patches, and server-side apply with
//! `managedFields`.

use axum::response::Response;
use bosun_api::{KindInfo, defaults, patch};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::common::{check_type, field_validation, key_of, normalize, respond};
use super::create::create_object;
use super::meta::{meta_mut, meta_str, now_rfc3339, rv_of};
use super::update::{check_identity, mode_for, update_loop};
use crate::ctx::{Ctx, parse_doc};
use crate::error::{ApiError, ApiResult};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub(crate) fn patch_type(ct: &str) -> ApiResult<PatchType> {
    match ct {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn apply_patch(kind: &KindInfo, pt: PatchType, cur: &Value, p: &Value) -> ApiResult<Value> {
    let out = match pt {
        PatchType::Json => patch::json_patch(cur, p),
        PatchType::Merge => {
            if !p.is_object() {
                return Err(ApiError::bad_request("merge patch must be a JSON object"));
            }
            Ok(patch::json_merge_patch(cur, p))
        }
        PatchType::Strategic => {
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge_patch(kind, cur, p)
        }
        PatchType::Apply => unreachable!("apply is handled separately"),
    };
    out.map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(crate) async fn patch(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let ct = ctx.content_type();
    let pt = patch_type(&ct)?;
    if pt == PatchType::Apply {
        return apply(ctx, body).await;
    }
    let p: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mode = mode_for(&ctx);
    let mut warnings = Vec::new();
    let up = update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        ctx.name(),
        mode,
        ctx.dry_run(),
        |cur| {
            let mut patched = apply_patch(kind, pt, cur, &p)?;
            if patched.get("apiVersion") != cur.get("apiVersion")
                || patched.get("kind") != cur.get("kind")
            {
                return Err(ApiError::bad_request(
                    "a patch may not change apiVersion or kind",
                ));
            }
            check_identity(&ctx, &mut patched)?;
            let raw = (pt != PatchType::Json).then_some(&body[..]);
            warnings = field_validation(&ctx, kind, &patched, raw)?;
            normalize(kind, &patched)
        },
    )
    .await?;
    Ok(respond(StatusCode::OK, &up.obj, &warnings))
}

/// The set of fields an applied configuration sets, in `FieldsV1` form. Maps are
/// followed; lists and scalars are owned as a whole.
fn field_set(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, sub) in m {
                out.insert(format!("f:{k}"), field_set(sub));
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// Removes from `obj` the fields owned in `old` but not in `new` (fields a manager
/// applied before and has dropped from its configuration).
fn remove_dropped(obj: &mut Value, old: &Value, new: &Value) {
    let (Some(old), Some(target)) = (old.as_object(), obj.as_object_mut()) else {
        return;
    };
    for (k, old_sub) in old {
        let Some(field) = k.strip_prefix("f:") else {
            continue;
        };
        match new.get(k) {
            None => {
                target.remove(field);
            }
            Some(new_sub) => {
                if let Some(child) = target.get_mut(field) {
                    remove_dropped(child, old_sub, new_sub);
                }
            }
        }
    }
}

fn set_managed(obj: &mut Value, manager: &str, api_version: &str, fields: Value, op: &str) {
    let entry = json!({
        "manager": manager,
        "operation": op,
        "apiVersion": api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    let m = meta_mut(obj);
    let mf = m.entry("managedFields").or_insert_with(|| json!([]));
    if !mf.is_array() {
        *mf = json!([]);
    }
    let arr = mf.as_array_mut().expect("array");
    arr.retain(|e| {
        !(e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some(op))
    });
    arr.push(entry);
}

/// Server-side apply: creates the object when absent; otherwise removes the fields
/// this manager applied before but no longer sets, and merges the configuration
/// with the kind's strategic merge rules.
async fn apply(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let manager = ctx
        .q("fieldManager")
        .ok_or_else(|| {
            ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager to be set",
            )
        })?
        .to_string();
    let mut config = parse_doc("application/apply-patch+yaml", &body)?;
    check_type(kind, &mut config)?;
    if meta_str(&config, "name").is_none() {
        return Err(ApiError::bad_request("metadata.name is required for apply"));
    }
    check_identity(&ctx, &mut config)?;
    let warnings = field_validation(&ctx, kind, &config, None)?;
    let config = normalize(kind, &config)?;
    let mut applied = config.clone();
    if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in ["name", "namespace", "resourceVersion", "managedFields"] {
            m.remove(f);
        }
    }
    if kind.group.is_empty()
        && kind.kind == "Secret"
        && let Some(m) = applied.as_object_mut()
    {
        // stringData is stored as data: the manager owns the data keys it sets that way,
        // so dropping one from a later configuration removes it.
        defaults::merge_string_data(m);
    }
    let fields = field_set(&applied);
    let ns = ctx.target.namespace.as_deref();
    let exists = ctx
        .inner
        .store
        .get(&key_of(&ctx))
        .await
        .map_err(ApiError::store)?
        .is_some();
    if !exists {
        let mut obj = config.clone();
        set_managed(
            &mut obj,
            &manager,
            kind.api_version,
            fields.clone(),
            "Apply",
        );
        match create_object(&ctx.inner, kind, ns, obj, ctx.dry_run()).await {
            Ok(created) => return Ok(respond(StatusCode::CREATED, &created, &warnings)),
            // Lost a race with another creator: fall through to the update path.
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    let mode = mode_for(&ctx);
    let up = update_loop(
        &ctx.inner,
        kind,
        ns,
        ctx.name(),
        mode,
        ctx.dry_run(),
        |cur| {
            let mut base = cur.clone();
            let previous = cur
                .pointer("/metadata/managedFields")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter().find(|e| {
                        e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                            && e.get("operation").and_then(Value::as_str) == Some("Apply")
                    })
                })
                .and_then(|e| e.get("fieldsV1"))
                .cloned();
            if let Some(prev) = previous {
                remove_dropped(&mut base, &prev, &fields);
            }
            let mut merged = patch::strategic_merge_patch(kind, &base, &applied)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            set_managed(
                &mut merged,
                &manager,
                kind.api_version,
                fields.clone(),
                "Apply",
            );
            // Apply has no optimistic lock unless the configuration carries one.
            match rv_of(&config) {
                Some(rv) => {
                    meta_mut(&mut merged).insert("resourceVersion".into(), json!(rv));
                }
                None => {
                    meta_mut(&mut merged).remove("resourceVersion");
                }
            }
            normalize(kind, &merged)
        },
    )
    .await?;
    Ok(respond(StatusCode::OK, &up.obj, &warnings))
}
