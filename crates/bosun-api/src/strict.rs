//! Strict decoding: which fields of a request body the kind's type does not know.
//!
//! The body is walked alongside the kind's OpenAPI schema (the same [`Schemas`] the
//! documents publish): objects by `properties`, maps by `additionalProperties`, lists
//! by `items`. Schemas with neither (`FieldsV1`, `RawExtension`) take anything, as the
//! Go types do.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::KindInfo;
use crate::openapi::Schemas;

/// Paths of fields in `input` that `kind`'s type does not have, e.g.
/// `spec.template.spec.containers[0].imagePullPolisy`; empty when all are known.
pub fn unknown_fields(kind: &KindInfo, input: &Value) -> Vec<String> {
    if let Some(custom) = &kind.custom {
        return custom.unknown_fields(input);
    }
    let schemas = Schemas::for_kind(kind);
    let Some(root) = schemas.of_kind(kind) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&schemas, schemas.resolve(root), input, "", &mut out);
    out
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(schemas: &Schemas, schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                return;
            }
            for (key, v) in map {
                let child = join(path, key);
                match props.and_then(|p| p.get(key)).or(additional) {
                    Some(s) => walk(schemas, schemas.resolve(s), v, &child, out),
                    None => out.push(child),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                let s = schemas.resolve(s);
                for (i, v) in items.iter().enumerate() {
                    walk(schemas, s, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Paths of keys that occur more than once in the same JSON object of `body`
/// (`metadata.name`), as Kubernetes' strict decoding reports them. A body that is not
/// JSON yields no paths (decoding reports that error itself).
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Dups {
        path: String::new(),
        out: &mut out,
    }
    .deserialize(&mut de);
    out
}

struct Dups<'a> {
    path: String,
    out: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Dups<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Dups<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let seed = Dups {
                path: format!("{}[{i}]", self.path),
                out: &mut *self.out,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            if !seen.insert(key) && !self.out.contains(&path) {
                self.out.push(path.clone());
            }
            map.next_value_seed(Dups {
                path,
                out: &mut *self.out,
            })?;
        }
        Ok(())
    }
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

    fn nginx() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "nginx",
                "labels": {"app": "nginx", "app.kubernetes.io/part-of": "shop"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
            },
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "nginx"}},
                "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "nginx"}, "creationTimestamp": null},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx:1.25",
                            "ports": [{"containerPort": 80}],
                            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": 0.1}},
                            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                            "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
                        }],
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "securityContext": {}
                    }
                }
            },
            "status": {}
        })
    }

    #[test]
    fn a_real_manifest_has_no_unknown_fields() {
        assert_eq!(
            unknown_fields(kind("Deployment"), &nginx()),
            Vec::<String>::new()
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                        "data": {"app.properties": "a=b", "x": ""}, "binaryData": {"b": "AAEC"}});
        assert!(unknown_fields(kind("ConfigMap"), &cm).is_empty());
    }

    #[test]
    fn reports_misspelt_fields_with_kubernetes_paths() {
        let mut d = nginx();
        d["spec"]["replicass"] = json!(3);
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolisy"] = json!("Always");
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerport"] = json!(80);
        d["metadata"]["nmae"] = Value::Null;
        let got = unknown_fields(kind("Deployment"), &d);
        for want in [
            "spec.replicass",
            "spec.template.spec.containers[0].imagePullPolisy",
            "spec.template.spec.containers[0].ports[0].containerport",
            "metadata.nmae",
        ] {
            assert!(got.contains(&want.to_string()), "{want} not in {got:?}");
        }
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn service_and_pod_fields() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPort": "http", "prot": "TCP"}], "selector": {"app": "x"}}});
        assert_eq!(
            unknown_fields(kind("Service"), &svc),
            ["spec.ports[0].prot"]
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}], "runtimeClassName": "process",
                     "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi", "medium": ""}}]},
            "specc": {}});
        assert_eq!(unknown_fields(kind("Pod"), &pod), ["specc"]);
    }

    #[test]
    fn duplicates_are_found_with_their_path() {
        let body = br#"{"metadata":{"name":"a","name":"b"},"spec":{"containers":[{"name":"x","image":"y","image":"z"}]}}"#;
        assert_eq!(
            duplicate_fields(body),
            ["metadata.name", "spec.containers[0].image"]
        );
        assert!(duplicate_fields(br#"{"a":{"b":1},"c":{"b":2}}"#).is_empty());
        assert!(duplicate_fields(b"not json").is_empty());
    }
}
