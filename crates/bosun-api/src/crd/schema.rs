//! Structural-schema handling of custom objects, as apiextensions-apiserver does it on
//! every write: pruning of unknown fields, defaulting from `default`, then validation
//! (types, required, enum, pattern, bounds, int-or-string, embedded resources).

use regex::Regex;
use serde_json::{Map, Value};

use crate::FieldError;

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn flag(schema: &Value, ext: &str) -> bool {
    schema.get(ext).and_then(Value::as_bool).unwrap_or(false)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// Schema of array items or map values, when it is a schema (not `true`/`false`).
fn sub<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    schema.get(key).filter(|s| s.is_object())
}

/// Removes the fields the schema does not know (below `x-kubernetes-preserve-unknown-fields`
/// nothing is removed), returning their paths (`spec.replica`) for warnings or a strict
/// rejection. The root's `apiVersion`, `kind` and `metadata` are always kept.
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = obj.as_object_mut() {
        prune_object(schema, m, "", true, &mut out);
    }
    out
}

fn prune_object(
    schema: &Value,
    m: &mut Map<String, Value>,
    path: &str,
    root_like: bool,
    out: &mut Vec<String>,
) {
    let props = properties(schema);
    let additional = sub(schema, "additionalProperties");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let keep_meta = root_like || flag(schema, "x-kubernetes-embedded-resource");
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        let field = join(path, &k);
        if keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child_schema = props.and_then(|p| p.get(&k)).or(additional);
        match child_schema {
            Some(s) => {
                if let Some(v) = m.get_mut(&k) {
                    prune_value(s, v, &field, out);
                }
            }
            None if preserve || schema.get("additionalProperties") == Some(&Value::Bool(true)) => {}
            None => {
                m.remove(&k);
                out.push(field);
            }
        }
    }
}

fn prune_value(schema: &Value, v: &mut Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m)
            if properties(schema).is_some()
                || sub(schema, "additionalProperties").is_some()
                || !flag(schema, "x-kubernetes-preserve-unknown-fields") =>
        {
            prune_object(schema, m, path, false, out);
        }
        Value::Array(items) => {
            if let Some(s) = sub(schema, "items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(s, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Fills in `default`s of absent properties, depth first, as the API server does
/// after pruning.
pub fn default(schema: &Value, obj: &mut Value) {
    match obj {
        Value::Object(m) => {
            if let Some(props) = properties(schema) {
                for (k, s) in props {
                    if !m.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(v) = m.get_mut(k) {
                        default(s, v);
                    }
                }
            }
            if let Some(s) = sub(schema, "additionalProperties") {
                for v in m.values_mut() {
                    default(s, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = sub(schema, "items") {
                for item in items {
                    default(s, item);
                }
            }
        }
        _ => {}
    }
}

/// Problems of `obj` against the schema, with Kubernetes' field paths and messages.
pub fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    if let Some(m) = obj.as_object() {
        // The root's metadata is validated as ObjectMeta elsewhere; apiVersion and kind
        // were checked against the URL.
        let mut rest = m.clone();
        for k in ["apiVersion", "kind", "metadata"] {
            rest.remove(k);
        }
        let mut root = schema.clone();
        if let Some(Value::Object(p)) = root.get_mut("properties") {
            for k in ["apiVersion", "kind", "metadata"] {
                p.remove(k);
            }
        }
        if let Some(Value::Array(req)) = root.get_mut("required") {
            req.retain(|r| !matches!(r.as_str(), Some("apiVersion" | "kind" | "metadata")));
        }
        check(&root, &Value::Object(rest), "", &mut out);
    }
    out
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn err(out: &mut Vec<FieldError>, path: &str, reason: &'static str, message: String) {
    out.push(FieldError {
        field: path.to_string(),
        reason,
        message,
    });
}

fn check(schema: &Value, v: &Value, path: &str, out: &mut Vec<FieldError>) {
    let shown = if path.is_empty() { "body" } else { path };
    if v.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            let ty = schema["type"].as_str().unwrap_or_default();
            err(
                out,
                path,
                "FieldValueTypeInvalid",
                format!("Invalid value: \"null\": {shown} in body must be of type {ty}: \"null\""),
            );
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(type_name(v), "integer" | "string") {
            err(
                out,
                path,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: {}: {shown} in body must be of type integer,string: {:?}",
                    show(v),
                    type_name(v)
                ),
            );
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let fits = actual == ty || (ty == "number" && actual == "integer");
        if !fits {
            err(
                out,
                path,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{actual}\": {shown} in body must be of type {ty}: \"{actual}\""
                ),
            );
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let supported: Vec<String> = options.iter().map(show).collect();
        err(
            out,
            path,
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                show(v),
                supported.join(", ")
            ),
        );
    }
    match v {
        Value::String(s) => check_string(schema, s, path, shown, out),
        Value::Number(n) => check_number(schema, v, n.as_f64().unwrap_or(0.0), path, shown, out),
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                err(
                    out,
                    path,
                    "FieldValueInvalid",
                    format!("Invalid value: {n}: {shown} in body should have at least {min} items"),
                );
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                err(
                    out,
                    path,
                    "FieldValueTooMany",
                    format!("Too many: {n}: must have at most {max} items"),
                );
            }
            if let Some(s) = sub(schema, "items") {
                for (i, item) in items.iter().enumerate() {
                    check(s, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            if embedded {
                for f in ["apiVersion", "kind"] {
                    if m.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                        err(
                            out,
                            &join(path, f),
                            "FieldValueRequired",
                            "Required value: must not be empty".into(),
                        );
                    }
                }
            }
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    err(
                        out,
                        &join(path, r),
                        "FieldValueRequired",
                        "Required value".into(),
                    );
                }
            }
            let props = properties(schema);
            let additional = sub(schema, "additionalProperties");
            for (k, child) in m {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    check(s, child, &join(path, k), out);
                }
            }
            let n = m.len() as u64;
            if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
                && n < min
            {
                err(
                    out,
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {n}: {shown} in body should have at least {min} properties"
                    ),
                );
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && n > max
            {
                err(
                    out,
                    path,
                    "FieldValueTooMany",
                    format!("Too many: {n}: must have at most {max} items"),
                );
            }
        }
        _ => {}
    }
}

fn check_string(schema: &Value, s: &str, path: &str, shown: &str, out: &mut Vec<FieldError>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        err(
            out,
            path,
            "FieldValueInvalid",
            format!("Invalid value: {s:?}: {shown} in body should be at least {min} chars long"),
        );
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        err(
            out,
            path,
            "FieldValueTooLong",
            format!("Too long: may not be more than {max} bytes"),
        );
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        match Regex::new(p) {
            Ok(re) if !re.is_match(s) => err(
                out,
                path,
                "FieldValueInvalid",
                format!("Invalid value: {s:?}: {shown} in body should match '{p}'"),
            ),
            Ok(_) => {}
            Err(_) => err(
                out,
                path,
                "FieldValueInvalid",
                format!("Invalid value: {s:?}: the schema's pattern '{p}' does not compile"),
            ),
        }
    }
}

fn check_number(
    schema: &Value,
    v: &Value,
    x: f64,
    path: &str,
    shown: &str,
    out: &mut Vec<FieldError>,
) {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMinimum");
        if x < min || (exclusive && x <= min) {
            let rel = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            err(
                out,
                path,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {v}: {shown} in body should be {rel} {}",
                    schema["minimum"]
                ),
            );
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMaximum");
        if x > max || (exclusive && x >= max) {
            let rel = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            err(
                out,
                path,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {v}: {shown} in body should be {rel} {}",
                    schema["maximum"]
                ),
            );
        }
    }
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
        && m > 0.0
        && (x / m).fract() != 0.0
    {
        err(
            out,
            path,
            "FieldValueInvalid",
            format!(
                "Invalid value: {v}: {shown} in body should be a multiple of {}",
                schema["multipleOf"]
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "name": {"type": "string", "pattern": "^[a-z]+$"},
                "port": {"x-kubernetes-int-or-string": true},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                             "properties": {"spec": {"type": "object"}}},
            }},
        }})
    }

    #[test]
    fn prunes_unknown_and_reports_paths() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "spec": {"size": 1, "colour": "red", "extra": {"anything": 1},
                     "labels": {"a": "b"}, "template": {"apiVersion": "v1", "kind": "Pod", "bogus": 1}},
            "junk": true});
        let pruned = prune(&schema(), &mut o);
        let mut pruned = pruned;
        pruned.sort();
        assert_eq!(pruned, vec!["junk", "spec.colour", "spec.template.bogus"]);
        assert_eq!(o["spec"]["extra"]["anything"], 1);
        assert_eq!(o["spec"]["labels"]["a"], "b");
        assert_eq!(o["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_absent_fields() {
        let mut o = json!({"spec": {"size": 2}});
        default(&schema(), &mut o);
        assert_eq!(o["spec"]["color"], "red");
    }

    #[test]
    fn validation_names_each_field() {
        let o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {},
            "spec": {"size": "big", "color": "green", "name": "A1", "port": true,
                     "tags": ["a", "b", "c"], "template": {"kind": "Pod"}}});
        let errs = validate(&schema(), &o);
        let mut errs = errs;
        errs.sort_by(|a, b| a.field.cmp(&b.field));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.color",
                "spec.name",
                "spec.port",
                "spec.size",
                "spec.tags",
                "spec.template.apiVersion"
            ]
        );
        assert!(
            errs[3]
                .message
                .contains("spec.size in body must be of type integer"),
            "{:?}",
            errs[3]
        );
        assert_eq!(errs[0].reason, "FieldValueNotSupported");
        let missing = validate(&schema(), &json!({"spec": {}}));
        assert_eq!(missing[0].field, "spec.size");
        assert_eq!(missing[0].reason, "FieldValueRequired");
        let high = validate(&schema(), &json!({"spec": {"size": 11}}));
        assert!(
            high[0]
                .message
                .contains("should be less than or equal to 10")
        );
        assert!(validate(&schema(), &json!({"spec": {"size": 3, "port": "http"}})).is_empty());
    }
}
