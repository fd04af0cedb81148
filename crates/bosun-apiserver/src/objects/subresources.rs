//! The scale subresource and pod binding.

use axum::response::Response;
use bosun_api::{KindInfo, patch};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::meta::{meta_mut, meta_str, now_rfc3339};
use super::patch::{PatchType, patch_type};
use super::read::get_object;
use super::update::{Mode, update_loop};
use crate::ctx::{Ctx, json_response, parse_doc};
use crate::error::{ApiError, ApiResult};
use crate::selector::label_selector_string;

fn to_scale(kind: &KindInfo, obj: &Value) -> Value {
    let mut meta = Map::new();
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{f}")) {
            meta.insert(f.into(), v.clone());
        }
    }
    let paths = crate::crds::scale_pointers(kind);
    let replicas = obj
        .pointer(&paths.0)
        .and_then(Value::as_i64)
        .unwrap_or(if kind.custom.is_some() { 0 } else { 1 });
    let status_replicas = obj.pointer(&paths.1).and_then(Value::as_i64).unwrap_or(0);
    let selector = match obj.pointer(&paths.2) {
        Some(Value::String(s)) => s.clone(),
        Some(sel) => label_selector_string(sel),
        None => String::new(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": replicas},
        "status": {"replicas": status_replicas, "selector": selector},
    })
}

pub(crate) async fn get_scale(ctx: Ctx) -> ApiResult<Response> {
    let obj = get_object(&ctx).await?;
    Ok(json_response(StatusCode::OK, &to_scale(ctx.kind(), &obj)))
}

fn replicas_from_scale(scale: &Value) -> ApiResult<i64> {
    scale
        .pointer("/spec/replicas")
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| ApiError::bad_request("spec.replicas must be an integer"))
        })
        .unwrap_or(Ok(0))
}

fn check_replicas(ctx: &Ctx, replicas: i64) -> ApiResult<()> {
    if replicas < 0 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "Scale.autoscaling \"{}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0",
                ctx.name()
            ),
        )
        .with_details(json!({"name": ctx.name(), "group": "autoscaling", "kind": "Scale", "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: {replicas}: must be greater than or equal to 0"), "field": "spec.replicas"}]})));
    }
    Ok(())
}

async fn scale_write<F>(ctx: &Ctx, mut new_scale: F) -> ApiResult<Response>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let kind = ctx.kind();
    let up = update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        ctx.name(),
        Mode::Main,
        ctx.dry_run(),
        |cur| {
            let scale = new_scale(&to_scale(kind, cur))?;
            let replicas = replicas_from_scale(&scale)?;
            check_replicas(ctx, replicas)?;
            let mut obj = cur.clone();
            crate::crds::set_pointer(
                &mut obj,
                &crate::crds::scale_pointers(kind).0,
                json!(replicas),
            );
            match scale
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                Some(rv) if !rv.is_empty() => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv));
                }
                _ => {
                    meta_mut(&mut obj).remove("resourceVersion");
                }
            }
            Ok(obj)
        },
    )
    .await?;
    Ok(json_response(StatusCode::OK, &to_scale(kind, &up.obj)))
}

pub(crate) async fn update_scale(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let scale = parse_doc(&ctx.content_type(), &body)?;
    if let Some(k) = scale.get("kind").and_then(Value::as_str)
        && k != "Scale"
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind (Scale)"
        )));
    }
    scale_write(&ctx, |_| Ok(scale.clone())).await
}

pub(crate) async fn patch_scale(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let pt = patch_type(&ctx.content_type())?;
    let p: Value = match pt {
        PatchType::Apply => parse_doc("application/apply-patch+yaml", &body)?,
        _ => serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
    };
    scale_write(&ctx, |cur| match pt {
        PatchType::Json => {
            patch::json_patch(cur, &p).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        // A Scale has no lists, so strategic merge and apply reduce to a merge patch.
        _ => Ok(patch::json_merge_patch(cur, &p)),
    })
    .await
}

pub(crate) async fn bind(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let binding = parse_doc(&ctx.content_type(), &body)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                format!(
                    "Binding \"{}\" is invalid: target.name: Required value",
                    ctx.name()
                ),
            )
        })?
        .to_string();
    let name = ctx.name().to_string();
    update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        &name,
        Mode::Internal,
        ctx.dry_run(),
        |cur| {
            if meta_str(cur, "deletionTimestamp").is_some() {
                return Err(ApiError::conflict_msg(
                    kind,
                    &name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            if let Some(existing) = cur.pointer("/spec/nodeName").and_then(Value::as_str)
                && !existing.is_empty()
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{existing}\""
                    ),
                )
                .with_details(json!({"name": name, "kind": "pods/binding"})));
            }
            let mut obj = cur.clone();
            obj["spec"]["nodeName"] = json!(node);
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
            let conds = match obj["status"]["conditions"].take() {
                Value::Array(c) => c,
                _ => Vec::new(),
            };
            let mut conds: Vec<Value> = conds
                .into_iter()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"))
                .collect();
            conds.push(cond);
            obj["status"]["conditions"] = json!(conds);
            meta_mut(&mut obj).remove("resourceVersion");
            Ok(obj)
        },
    )
    .await?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok(json_response(StatusCode::CREATED, &status))
}
