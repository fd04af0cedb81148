//! Validation of objects on create and update, with Kubernetes' field paths and reasons.

use serde_json::Value;

use crate::{FieldError, KindInfo};

/// Problems with a new object (names, required fields, value ranges ...).
pub fn validate_create(_kind: &KindInfo, _obj: &Value) -> Vec<FieldError> {
    Vec::new()
}

/// Problems with an update from `old` to `obj`, immutable fields included.
pub fn validate_update(_kind: &KindInfo, _obj: &Value, _old: &Value) -> Vec<FieldError> {
    Vec::new()
}
