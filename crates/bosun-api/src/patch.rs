//! The three patch formats of the Kubernetes API: JSON merge patch (RFC 7386), JSON
//! patch (RFC 6902) and strategic merge patch.
//!
//! The strategic merge follows apimachinery's `strategicpatch` package as the API
//! server applies it (parallel lists merged, unmatched nulls ignored), with list merge
//! keys and strategies read from the same [`Schemas`] the OpenAPI documents publish.

use serde_json::{Map, Value};

use crate::KindInfo;
use crate::openapi::Schemas;

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

/// RFC 6902 (`application/json-patch+json`). Either every operation applies or the
/// result is an error (the original is never half-patched).
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Invalid(format!("invalid JSON patch: {e}")))?;
    let mut out = original.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| PatchError::Invalid(e.to_string()))?;
    Ok(out)
}

/// `application/strategic-merge-patch+json`, with list merge keys and strategies from
/// the kind's schema, and the `$patch`, `$setElementOrder`, `$retainKeys` and
/// `$deleteFromPrimitiveList` directives.
pub fn strategic_merge_patch(
    kind: &KindInfo,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let schemas = Schemas::for_kind(kind);
    let schema = schemas.of_kind(kind).map(|s| schemas.resolve(s));
    let Value::Object(patch) = patch else {
        return Err(PatchError::Invalid(
            "strategic merge patch must be a JSON object".into(),
        ));
    };
    let original = match original {
        Value::Object(m) => Some(m.clone()),
        Value::Null => None,
        _ => {
            return Err(PatchError::Invalid(
                "the object to patch must be a JSON object".into(),
            ));
        }
    };
    let merger = Merger { schemas: &schemas };
    merger
        .merge_map(original, patch.clone(), schema)
        .map(Value::Object)
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

fn invalid(msg: impl Into<String>) -> PatchError {
    PatchError::Invalid(msg.into())
}

/// Patch metadata of one field, looked up in the parent's (resolved) schema.
struct FieldInfo<'a> {
    merge: bool,
    merge_key: Option<&'a str>,
    /// Resolved schema of the value (for lists: of each item).
    schema: Option<&'a Value>,
}

struct Merger<'a> {
    schemas: &'a Schemas,
}

impl<'a> Merger<'a> {
    fn field(&self, parent: Option<&'a Value>, key: &str, list: bool) -> FieldInfo<'a> {
        let prop = parent.and_then(|p| self.schemas.field(p, key));
        let strategy = prop
            .and_then(|p| p.get("x-kubernetes-patch-strategy"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let merge_key = prop
            .and_then(|p| p.get("x-kubernetes-patch-merge-key"))
            .and_then(Value::as_str);
        let schema = prop.map(|p| {
            let p = self.schemas.resolve(p);
            match (list, p.get("items")) {
                (true, Some(items)) => self.schemas.resolve(items),
                _ => p,
            }
        });
        FieldInfo {
            merge: strategy.split(',').any(|s| s == "merge"),
            merge_key,
            schema,
        }
    }

    fn merge_map(
        &self,
        original: Option<Map<String, Value>>,
        mut patch: Map<String, Value>,
        schema: Option<&'a Value>,
    ) -> Result<Map<String, Value>, PatchError> {
        if let Some(directive) = patch.remove(DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => self.merge_map(None, patch, schema),
                Some("delete") => Ok(Map::new()),
                _ => Err(invalid(format!(
                    "unknown patch type: {directive} in map: {}",
                    Value::Object(patch)
                ))),
            };
        }
        let mut original = original.unwrap_or_default();

        if let Some(retain) = patch.remove(RETAIN_KEYS) {
            let keys = retain
                .as_array()
                .ok_or_else(|| invalid(format!("invalid {RETAIN_KEYS}: must be a list")))?;
            let listed = |k: &str| keys.iter().any(|r| r.as_str() == Some(k));
            let stray = patch.iter().find(|(k, v)| {
                !v.is_null()
                    && !k.starts_with(DELETE_PRIMITIVE)
                    && !k.starts_with(SET_ORDER)
                    && !listed(k)
            });
            if let Some((k, _)) = stray {
                return Err(invalid(format!(
                    "invalid patch: field {k} is not listed in {RETAIN_KEYS}"
                )));
            }
            original.retain(|k, _| listed(k));
        }

        // Deletions from primitive lists first, so a parallel addition in the same
        // patch is not removed again.
        let deletes: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(DELETE_PRIMITIVE))
            .cloned()
            .collect();
        for key in deletes {
            let values = patch.remove(&key).unwrap_or(Value::Null);
            let field = &key[DELETE_PRIMITIVE.len()..];
            let values = values
                .as_array()
                .ok_or_else(|| invalid(format!("{key} must be a list")))?;
            if let Some(current) = original.get_mut(field) {
                let list = current
                    .as_array_mut()
                    .ok_or_else(|| invalid(format!("{field} is not a list")))?;
                list.retain(|v| !values.contains(v));
            }
        }

        let orders: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ORDER))
            .cloned()
            .collect();
        for key in orders {
            let order = patch.remove(&key).unwrap_or(Value::Null);
            let field = key[SET_ORDER.len()..].to_string();
            let Value::Array(order) = order else {
                return Err(invalid(format!("{key} must be a list")));
            };
            let patch_list = match patch.remove(&field) {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => Some(a),
                Some(_) => return Err(invalid(format!("{field} must be a list"))),
            };
            let original_list = match original.remove(&field) {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => Some(a),
                Some(other) => {
                    return Err(invalid(format!("{field} is not a list: {other}")));
                }
            };
            if patch_list.is_none() && original_list.is_none() {
                continue;
            }
            let info = self.field(schema, &field, true);
            let server_order = original_list.clone().unwrap_or_default();
            let merged = self.merge_list(
                original_list.unwrap_or_default(),
                patch_list.unwrap_or_default(),
                &info,
            )?;
            let merged = if info.merge {
                let key = info.merge_key;
                let (in_order, server_only): (Vec<Value>, Vec<Value>) = merged
                    .into_iter()
                    .partition(|item| index_of(&order, item, key).is_some());
                normalize_order(in_order, server_only, &order, &server_order, key)
            } else {
                merged
            };
            original.insert(field, Value::Array(merged));
        }

        for (key, value) in patch {
            if key.starts_with('$') {
                return Err(invalid(format!("unknown patch directive: {key}")));
            }
            if value.is_null() {
                original.remove(&key);
                continue;
            }
            let merged = match (original.remove(&key), value) {
                (Some(Value::Object(o)), Value::Object(p)) => {
                    let info = self.field(schema, &key, false);
                    Value::Object(self.merge_map(Some(o), p, info.schema)?)
                }
                (Some(Value::Array(o)), Value::Array(p)) => {
                    let info = self.field(schema, &key, true);
                    Value::Array(self.merge_list(o, p, &info)?)
                }
                // Absent, or a different type: the patch value wins, cleaned of
                // directives and nulls by merging it into nothing.
                (_, Value::Object(p)) => {
                    let info = self.field(schema, &key, false);
                    Value::Object(self.merge_map(None, p, info.schema)?)
                }
                (_, Value::Array(p)) => {
                    let info = self.field(schema, &key, true);
                    Value::Array(self.merge_list(Vec::new(), p, &info)?)
                }
                (_, scalar) => scalar,
            };
            original.insert(key, merged);
        }
        Ok(original)
    }

    /// Merges two lists by the field's strategy: replaced unless the strategy is
    /// `merge`; then by merge key for objects, as a set for primitives.
    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: Vec<Value>,
        info: &FieldInfo<'a>,
    ) -> Result<Vec<Value>, PatchError> {
        if !info.merge {
            let mut out = Vec::with_capacity(patch.len());
            for item in patch {
                match item {
                    Value::Object(m) => {
                        if m.get(DIRECTIVE).is_some_and(|d| d != "replace") {
                            return Err(invalid(format!(
                                "{DIRECTIVE} directive on an item of a list without merge strategy: {}",
                                Value::Object(m)
                            )));
                        }
                        out.push(Value::Object(self.merge_map(None, m, info.schema)?));
                    }
                    other => out.push(other),
                }
            }
            return Ok(out);
        }
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let of_maps = original.iter().chain(&patch).any(Value::is_object);
        if !of_maps {
            let mut merged = original.clone();
            for v in &patch {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            let (from_patch, server_only): (Vec<Value>, Vec<Value>) =
                merged.into_iter().partition(|v| patch.contains(v));
            return Ok(normalize_order(
                from_patch,
                server_only,
                &patch,
                &original,
                None,
            ));
        }
        let Some(key) = info.merge_key else {
            return Err(invalid(
                "cannot merge lists of objects without a merge key".to_string(),
            ));
        };
        let server_order = original.clone();
        let mut merged = original;
        let mut items = Vec::with_capacity(patch.len());
        let mut replace = false;
        for item in patch {
            let Value::Object(mut m) = item else {
                return Err(invalid(format!(
                    "list items must all be objects, found {item}"
                )));
            };
            match m.remove(DIRECTIVE) {
                None => items.push(m),
                Some(d) if d == "delete" => {
                    let v = m.get(key).ok_or_else(|| {
                        invalid(format!(
                            "map: {} does not contain declared merge key: {key}",
                            Value::Object(m.clone())
                        ))
                    })?;
                    merged.retain(|o| o.get(key) != Some(v));
                }
                Some(d) if d == "replace" => replace = true,
                Some(d) if d == "merge" => {
                    return Err(invalid(
                        "merging lists cannot yet be specified in the patch",
                    ));
                }
                Some(d) => {
                    return Err(invalid(format!(
                        "unknown patch type: {d} in map: {}",
                        Value::Object(m)
                    )));
                }
            }
        }
        if replace {
            merged.clear();
        }
        let mut patch_order = Vec::with_capacity(items.len());
        for item in items {
            let Some(v) = item.get(key).cloned() else {
                return Err(invalid(format!(
                    "map: {} does not contain declared merge key: {key}",
                    Value::Object(item)
                )));
            };
            patch_order.push(Value::Object(Map::from_iter([(
                key.to_string(),
                v.clone(),
            )])));
            match merged.iter_mut().find(|o| o.get(key) == Some(&v)) {
                Some(Value::Object(existing)) => {
                    let current = std::mem::take(existing);
                    *existing = self.merge_map(Some(current), item, info.schema)?;
                }
                _ => merged.push(Value::Object(self.merge_map(None, item, info.schema)?)),
            }
        }
        let (from_patch, server_only): (Vec<Value>, Vec<Value>) = merged
            .into_iter()
            .partition(|o| index_of(&patch_order, o, Some(key)).is_some());
        Ok(normalize_order(
            from_patch,
            server_only,
            &patch_order,
            &server_order,
            Some(key),
        ))
    }
}

/// Position of `item` in `list`: by merge key for objects, by value otherwise.
fn index_of(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    match key {
        Some(k) => {
            let v = item.get(k)?;
            list.iter().position(|o| o.get(k) == Some(v))
        }
        None => list.iter().position(|o| o == item),
    }
}

/// Orders patch items by `patch_order` and server-only items by `server_order`, then
/// interleaves them: each server-only item goes before the first patch item that
/// follows it in the live object, keeping both relative orders (apimachinery's
/// `normalizeElementOrder`).
fn normalize_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    patch_items.sort_by_key(|v| index_of(patch_order, v, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| index_of(server_order, v, key).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (Some(l), Some(r)) => {
                let li = index_of(server_order, l, key);
                let ri = index_of(server_order, r, key);
                match (li, ri) {
                    (Some(li), Some(ri)) if li < ri => out.extend(left.next()),
                    _ => out.extend(right.next()),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Registry;

    fn kind(k: &str) -> &'static KindInfo {
        Registry::builtin()
            .kinds
            .iter()
            .find(|i| i.kind == k)
            .unwrap()
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "finalizers": ["a.example.com/x"],
                "annotations": {"deployment.kubernetes.io/revision": "1"}
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "nginx:1.25",
                                "imagePullPolicy": "IfNotPresent",
                                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                                "terminationMessagePath": "/dev/termination-log"
                            },
                            {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "3600"]}
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                        "restartPolicy": "Always"
                    }
                }
            }
        })
    }

    fn smp(original: &Value, patch: Value) -> Value {
        strategic_merge_patch(kind("Deployment"), original, &patch).unwrap()
    }

    #[test]
    fn kubectl_apply_updates_image_and_env_keeping_the_rest() {
        // What kubectl 1.32 `apply` sends after the manifest changed the image, B's
        // value and added C.
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}\n"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                    "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
                    "image": "nginx:1.26",
                    "name": "web"
                }]
            }}}
        });
        let out = smp(&deployment(), patch);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["name"], "web");
        assert_eq!(c[0]["image"], "nginx:1.26");
        assert_eq!(c[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            c[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}])
        );
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(c[1]["name"], "sidecar");
        assert_eq!(c[1]["command"], json!(["sleep", "3600"]));
        assert_eq!(
            out["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        assert!(!out.to_string().contains('$'), "directives leaked: {out}");
    }

    #[test]
    fn kubectl_apply_removes_container_and_env() {
        // Sent by kubectl 1.32 `apply` after the manifest dropped env B and the sidecar.
        let patch = json!({"metadata": {}, "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [
                {"$setElementOrder/env": [{"name": "A"}], "env": [{"$patch": "delete", "name": "B"}], "name": "web"},
                {"$patch": "delete", "name": "sidecar"}
            ]
        }}}});
        let out = smp(&deployment(), patch);
        let c = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["name"], "web");
        assert_eq!(c[0]["image"], "nginx:1.25");
        assert_eq!(c[0]["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [{"$setElementOrder/env": [{"name": "B"}, {"name": "A"}], "name": "web"}]
        }}}});
        let out = smp(&deployment(), patch);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["name"], "sidecar");
        assert_eq!(c[1]["env"][0]["name"], "B");
        assert_eq!(c[1]["env"][1]["name"], "A");
    }

    #[test]
    fn kubectl_set_env_and_set_image_merge_into_the_named_container() {
        // Exactly what kubectl 1.32 sends for `set env deploy/web FOO=bar -c web` ...
        let out = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
                "containers": [{"$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "FOO"}],
                                "env": [{"name": "FOO", "value": "bar"}], "name": "web"}]
            }}}}),
        );
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "nginx:1.25");
        assert_eq!(
            c[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}])
        );
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "FOO", "value": "bar"}])
        );
        assert_eq!(c[1]["name"], "sidecar");
        // ... and for `set image deploy/web sidecar=busybox:1.37`.
        let out = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
                "containers": [{"image": "busybox:1.37", "name": "sidecar"}]
            }}}}),
        );
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "nginx:1.25");
        assert_eq!(c[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(c[1]["image"], "busybox:1.37");
        assert_eq!(c[1]["command"], json!(["sleep", "3600"]));
    }

    #[test]
    fn without_element_order_new_items_go_first_as_upstream() {
        let out = smp(
            &deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"env":[{"name":"FOO","value":"bar"}],"name":"web"}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "FOO", "value": "bar"}, {"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        let out = smp(
            &deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"image":"redis:7","name":"cache"}]}}}}),
        );
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cache", "web", "sidecar"]);
    }

    #[test]
    fn retain_keys_and_null_clear_the_rolling_update() {
        let out = smp(
            &deployment(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": null, "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        // Volumes are merge,retainKeys: switching a volume's source drops the old one.
        let out = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {"volumes": [
                {"$retainKeys": ["configMap", "name"], "configMap": {"name": "cfg"}, "name": "data"}
            ]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "configMap": {"name": "cfg"}}])
        );
    }

    #[test]
    fn primitive_merge_lists_union_and_delete() {
        let out = smp(
            &deployment(),
            json!({"metadata": {"finalizers": ["b.example.com/y"]}}),
        );
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["b.example.com/y", "a.example.com/x"])
        );
        let out = smp(
            &deployment(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example.com/x"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        // Lists without a merge strategy are replaced.
        let out = smp(
            &deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"sidecar","command":["true"]}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][1]["command"],
            json!(["true"])
        );
    }

    #[test]
    fn replace_and_delete_directives() {
        let out = smp(
            &deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"x"}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
        let out = smp(
            &deployment(),
            json!({"spec":{"selector":{"$patch":"replace","matchLabels":{"tier":"x"}}}}),
        );
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels": {"tier": "x"}})
        );
        let out = smp(
            &deployment(),
            json!({"metadata":{"annotations":{"$patch":"delete"}}}),
        );
        assert_eq!(out["metadata"]["annotations"], json!({}));
        let err = strategic_merge_patch(
            kind("Deployment"),
            &deployment(),
            &json!({"spec":{"template":{"spec":{"containers":[{"$patch":"delete"}]}}}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("merge key"), "{err}");
        assert!(strategic_merge_patch(kind("Deployment"), &deployment(), &json!([1])).is_err());
        assert!(
            strategic_merge_patch(
                kind("Deployment"),
                &deployment(),
                &json!({"spec": {"$patch": "bogus"}})
            )
            .is_err()
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},
            "spec":{"ports":[{"name":"http","port":80,"targetPort":8080,"protocol":"TCP"}],"selector":{"app":"web"}}});
        let out = strategic_merge_patch(
            kind("Service"),
            &svc,
            &json!({"spec":{"ports":[{"port":443,"targetPort":8443}]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        let out = strategic_merge_patch(
            kind("Service"),
            &svc,
            &json!({"spec":{"ports":[{"port":80,"targetPort":9090}]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"name":"http","port":80,"targetPort":9090,"protocol":"TCP"}])
        );
    }

    #[test]
    fn server_only_items_keep_their_place() {
        let pod = json!({"spec": {"containers": [{"name":"a"},{"name":"injected"},{"name":"b"}]}});
        let out = strategic_merge_patch(
            kind("Pod"),
            &pod,
            &json!({"spec": {"$setElementOrder/containers": [{"name":"b"},{"name":"a"}], "containers": [{"name":"a","image":"x"}]}}),
        )
        .unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        // The server-only item stays before the item that followed it in the live list.
        assert_eq!(names, ["injected", "b", "a"]);
    }

    #[test]
    fn rollout_undo_json_patch_and_errors() {
        let d = deployment();
        let patch = json!([
            {"op": "replace", "path": "/spec/template", "value": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.24"}]}}},
            {"op": "replace", "path": "/metadata/annotations", "value": {"deployment.kubernetes.io/revision": "3"}}
        ]);
        let out = json_patch(&d, &patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.24"
        );
        assert_eq!(
            out["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "3"
        );
        assert_eq!(out["spec"]["replicas"], 2);
        let err = json_patch(
            &d,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 5}]),
        );
        assert!(err.is_err());
        assert!(json_patch(&d, &json!({"op": "add"})).is_err());
        assert!(json_patch(&d, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn merge_patch_deletes_with_null() {
        let out = json_merge_patch(
            &json!({"spec": {"replicas": 1, "paused": true}}),
            &json!({"spec": {"replicas": 3, "paused": null}}),
        );
        assert_eq!(out, json!({"spec": {"replicas": 3}}));
    }
}
