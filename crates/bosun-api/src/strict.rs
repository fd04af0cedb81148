//! Strict decoding: which fields of a request body the kind's type does not know.

use serde_json::Value;

use crate::KindInfo;

/// Paths of fields in `input` that `kind`'s type does not have, e.g.
/// `spec.template.spec.containers[0].imagePullPolisy`; empty when all are known.
pub fn unknown_fields(_kind: &KindInfo, _input: &Value) -> Vec<String> {
    Vec::new()
}
