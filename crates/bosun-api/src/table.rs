//! `meta.k8s.io/v1` Table output for `kubectl get`: the columns Kubernetes prints per kind.

use serde_json::Value;

use crate::KindInfo;

/// A `Table` for `objects` of `kind` (rows carry the object, or its metadata only when
/// `include_object` is "Metadata").
pub fn table(_kind: &KindInfo, _objects: &[Value], _include_object: &str) -> Value {
    Value::Null
}
