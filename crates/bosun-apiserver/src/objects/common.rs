//! What the verbs share: type checks, field validation, typed normalization, version
//! conversion at the edges, and responses (with warnings, or as a Table).

use axum::response::Response;
use bosun_api::{KindInfo, conversion, strict};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::meta::{decode_kv, finalizers, meta_str, rv_of};
use crate::Inner;
use crate::ctx::{Ctx, json_response};
use crate::error::{ApiError, ApiResult};

/// Retries of a read-modify-write that lost a race without a client precondition.
pub(crate) const MAX_RETRIES: usize = 32;

/// The stored object at `key` (the start of a read-modify-write), or NotFound naming it.
pub(crate) async fn current(
    inner: &Inner,
    kind: &KindInfo,
    key: &str,
    name: &str,
) -> ApiResult<(bosun_store::KeyValue, Value)> {
    let kv = inner
        .store
        .get(key)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    let obj = decode_kv(&kv)?;
    Ok((kv, obj))
}

pub(crate) fn is_namespace(kind: &KindInfo) -> bool {
    kind.group.is_empty() && kind.kind == "Namespace"
}

pub(crate) fn is_service(kind: &KindInfo) -> bool {
    kind.group.is_empty() && kind.kind == "Service"
}

pub(crate) fn is_pod(kind: &KindInfo) -> bool {
    kind.group.is_empty() && kind.kind == "Pod"
}

/// Kinds whose `metadata.generation` tracks spec changes.
pub(crate) fn has_generation(kind: &KindInfo) -> bool {
    kind.custom.is_some()
        || kind.has_subresource("status") && !matches!(kind.kind, "Namespace" | "Node")
}

/// Whether an object pending deletion can now be removed from the store.
pub(crate) fn ready_to_remove(kind: &KindInfo, obj: &Value) -> bool {
    if meta_str(obj, "deletionTimestamp").is_none() || !finalizers(obj).is_empty() {
        return false;
    }
    if obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0
    {
        return false;
    }
    if is_namespace(kind) {
        return obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
    }
    true
}

/// Checks (or fills in) `apiVersion` and `kind` against the URL's kind.
pub(crate) fn check_type(kind: &KindInfo, obj: &mut Value) -> ApiResult<()> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av != kind.api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                kind.api_version
            )));
        }
        Some(_) => {}
        None => {
            map.insert("apiVersion".into(), json!(kind.api_version));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != kind.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )));
        }
        Some(_) => {}
        None => {
            map.insert("kind".into(), json!(kind.kind));
        }
    }
    Ok(())
}

/// `fieldValidation`: Strict rejects unknown fields, Warn (the default) reports
/// them in `Warning` headers, Ignore drops them silently.
pub(crate) fn field_validation(
    ctx: &Ctx,
    kind: &KindInfo,
    obj: &Value,
    raw: Option<&[u8]>,
) -> ApiResult<Vec<String>> {
    let mode = ctx.q("fieldValidation").unwrap_or("Warn");
    if !matches!(mode, "Strict" | "Warn" | "Ignore") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {mode}"
        )));
    }
    if mode == "Ignore" {
        return Ok(Vec::new());
    }
    let mut msgs: Vec<String> = raw
        .map(strict::duplicate_fields)
        .unwrap_or_default()
        .iter()
        .map(|f| format!("duplicate field \"{f}\""))
        .collect();
    msgs.extend(
        strict::unknown_fields(kind, obj)
            .iter()
            .map(|f| format!("unknown field \"{f}\"")),
    );
    if msgs.is_empty() {
        return Ok(Vec::new());
    }
    if mode == "Strict" {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        )));
    }
    Ok(msgs)
}

/// The body for duplicate-field detection, when it is JSON.
pub(crate) fn json_raw<'a>(ctx: &Ctx, body: &'a [u8]) -> Option<&'a [u8]> {
    matches!(ctx.content_type().as_str(), "" | "application/json").then_some(body)
}

/// Decodes into the kind's type and back: rejects wrong field types and drops unknown fields.
pub(crate) fn normalize(kind: &KindInfo, obj: &Value) -> ApiResult<Value> {
    let mut out = (kind.roundtrip)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            kind.kind, kind.version, kind.kind
        ))
    })?;
    keep_given(&mut out, obj);
    Ok(out)
}

/// Drops what the typed roundtrip invented: required fields the client left out come
/// back as empty defaults, and validation must see them missing (`Required value`).
fn keep_given(out: &mut Value, input: &Value) {
    match (out, input) {
        (Value::Object(o), Value::Object(i)) => {
            o.retain(|k, _| i.get(k).is_some_and(|v| !v.is_null()));
            for (k, v) in o.iter_mut() {
                if let Some(iv) = i.get(k) {
                    keep_given(v, iv);
                }
            }
        }
        (Value::Array(o), Value::Array(i)) if o.len() == i.len() => {
            for (ov, iv) in o.iter_mut().zip(i) {
                keep_given(ov, iv);
            }
        }
        _ => {}
    }
}

/// A served version's object in the stored version (a no-op for most kinds).
pub(crate) fn to_storage(kind: &KindInfo, obj: Value) -> ApiResult<Value> {
    if !conversion::is_converted(kind) {
        return Ok(obj);
    }
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    conversion::to_storage(kind, obj).map_err(|(field, message)| {
        ApiError::invalid(
            kind,
            &name,
            &[bosun_api::FieldError {
                field,
                reason: "FieldValueInvalid",
                message,
            }],
        )
    })
}

/// A stored object in the version `kind` serves.
pub(crate) fn served(kind: &KindInfo, mut obj: Value) -> Value {
    conversion::from_storage(kind, &mut obj);
    obj
}

pub(crate) fn respond(code: StatusCode, obj: &Value, warnings: &[String]) -> Response {
    let mut r = json_response(code, obj);
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

pub(crate) fn object_or_table(ctx: &Ctx, obj: &Value) -> Response {
    if ctx.wants_table() {
        let include = ctx.q("includeObject").unwrap_or("Metadata");
        let mut t = bosun_api::table::table(ctx.kind(), std::slice::from_ref(obj), include);
        if let Some(rv) = rv_of(obj) {
            t["metadata"] = json!({"resourceVersion": rv});
        }
        return table_response(&t);
    }
    json_response(StatusCode::OK, obj)
}

pub(crate) fn table_response(t: &Value) -> Response {
    let mut r = json_response(StatusCode::OK, t);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
    );
    r
}

pub(crate) fn key_of(ctx: &Ctx) -> String {
    ctx.kind().key(ctx.target.namespace.as_deref(), ctx.name())
}
