//! Stored objects as JSON values: decoding from the store (with `resourceVersion` from
//! the key's revision), encoding for it, metadata access, timestamps. A leaf every
//! handler and admission module uses.

use bosun_store::KeyValue;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

pub(crate) fn now_rfc3339() -> String {
    ts_rfc3339(jiff::Timestamp::now().as_second())
}

pub(crate) fn ts_rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The stored object with `metadata.resourceVersion` filled in from the store.
pub(crate) fn decode_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    set_rv(&mut v, kv.mod_revision);
    Ok(v)
}

pub(crate) fn set_rv(obj: &mut Value, rev: i64) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rev.to_string()));
}

pub(crate) fn encode(obj: &Value) -> Bytes {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    Bytes::from(serde_json::to_vec(&o).unwrap_or_default())
}

pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let m = obj
        .as_object_mut()
        .expect("object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("metadata object")
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub(crate) fn rv_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion")
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

pub(crate) fn parse_rv(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version {s:?}")))
}
