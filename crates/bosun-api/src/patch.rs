//! The three patch formats of the Kubernetes API: JSON merge patch (RFC 7386), JSON
//! patch (RFC 6902) and strategic merge patch.

use serde_json::Value;

use crate::KindInfo;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PatchError {
    /// The patch document is malformed or cannot be applied; the text says why.
    #[error("{0}")]
    Invalid(String),
}

/// RFC 7386 (`application/merge-patch+json`).
pub fn json_merge_patch(original: &Value, patch: &Value) -> Value {
    let mut out = original.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// RFC 6902 (`application/json-patch+json`).
pub fn json_patch(_original: &Value, _patch: &Value) -> Result<Value, PatchError> {
    Err(PatchError::Invalid("json patch not implemented".into()))
}

/// `application/strategic-merge-patch+json`, with list merge keys and strategies from
/// the kind's schema, and the `$patch`, `$setElementOrder`, `$retainKeys` and
/// `$deleteFromPrimitiveList` directives.
pub fn strategic_merge_patch(
    _kind: &KindInfo,
    _original: &Value,
    _patch: &Value,
) -> Result<Value, PatchError> {
    Err(PatchError::Invalid("strategic merge patch not implemented".into()))
}
