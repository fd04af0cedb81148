//! `additionalPrinterColumns`: the Table a custom kind answers `kubectl get` with.

use serde_json::{Value, json};

use super::PrinterColumn;

/// The columns of a CRD version; `Age` alone when it declares none, as Kubernetes.
pub fn of_version(v: &Value) -> Vec<PrinterColumn> {
    let declared: Vec<PrinterColumn> = v
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let f = |k: &str| {
                c.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            PrinterColumn {
                name: f("name"),
                ty: f("type"),
                format: f("format"),
                description: f("description"),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                json_path: f("jsonPath"),
            }
        })
        .collect();
    if declared.is_empty() {
        return vec![PrinterColumn {
            name: "Age".into(),
            ty: "date".into(),
            format: String::new(),
            description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        }];
    }
    declared
}

/// Column definitions: `Name` first, then the declared columns.
pub fn definitions(cols: &[PrinterColumn]) -> Vec<Value> {
    let mut out = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    for c in cols {
        let ty = if c.ty == "date" {
            "string"
        } else {
            c.ty.as_str()
        };
        out.push(json!({
            "name": c.name, "type": ty, "format": c.format,
            "description": c.description, "priority": c.priority,
        }));
    }
    out
}

/// One row's cells.
pub fn cells(cols: &[PrinterColumn], obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut out = vec![
        obj.pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
    ];
    for c in cols {
        let found = eval(obj, &c.json_path);
        let cell = match found.first() {
            None => Value::Null,
            Some(v) if c.ty == "date" => {
                match v.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
                    Some(t) => json!(crate::table::human_duration(
                        now.as_second() - t.as_second()
                    )),
                    None => Value::Null,
                }
            }
            Some(v) if found.len() == 1 => (*v).clone(),
            Some(_) => json!(
                found
                    .iter()
                    .map(|v| v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        out.push(cell);
    }
    out
}

/// Evaluates the JSONPath subset CRDs use: `.a.b`, `.a[0]`, `.a[*].b`,
/// `.a[?(@.type=="Ready")].status`, optionally wrapped in `{}`.
pub fn eval<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur: Vec<&Value> = vec![obj];
    let mut rest = path.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            cur = cur.into_iter().filter_map(|v| v.get(field)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let sel = &r[..end];
            rest = &r[end + 1..];
            cur = select(cur, sel);
        } else {
            return Vec::new();
        }
    }
    cur
}

fn select<'a>(cur: Vec<&'a Value>, sel: &str) -> Vec<&'a Value> {
    let items = cur.into_iter().filter_map(Value::as_array).flatten();
    if sel == "*" {
        return items.collect();
    }
    if let Ok(i) = sel.parse::<usize>() {
        return items.skip(i).take(1).collect();
    }
    // Filter `?(@.field=="value")` (or != ).
    let inner = sel.trim_start_matches("?(").trim_end_matches(')');
    let (lhs, rhs, eq) = match (inner.split_once("=="), inner.split_once("!=")) {
        (Some((l, r)), _) => (l, r, true),
        (None, Some((l, r))) => (l, r, false),
        _ => return Vec::new(),
    };
    let field = lhs.trim().trim_start_matches('@');
    let want = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
    items
        .filter(|it| {
            let got = eval(it, field);
            let matches = got.first().is_some_and(|v| match v {
                Value::String(s) => s == want,
                other => *other == want,
            });
            matches == eq
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}]}});
        assert_eq!(eval(&o, ".spec.replicas"), vec![&json!(3)]);
        assert_eq!(eval(&o, ".spec.ports[1].port"), vec![&json!(443)]);
        assert_eq!(eval(&o, ".spec.ports[*].port").len(), 2);
        assert_eq!(
            eval(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![&json!("True")]
        );
        assert!(eval(&o, ".spec.missing").is_empty());
    }
}
