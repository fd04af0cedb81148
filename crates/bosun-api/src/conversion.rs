//! Kinds served in a second version next to the one stored, with Kubernetes' conversion
//! between them. Today one: `autoscaling/v1` HorizontalPodAutoscaler, stored as
//! `autoscaling/v2` (as Kubernetes stores it). What v1 cannot say (metrics other than a
//! CPU utilization target, `behavior`, conditions, other current metrics) travels in the
//! `autoscaling.alpha.kubernetes.io/*` annotations Kubernetes uses for it, so an object
//! read in v1 and written back keeps everything.
//!
//! Pure functions over `serde_json::Value`; the API server converts a served version's
//! request body to the stored version before defaulting, validation and storage, and
//! every object it returns back to the version the client asked for.

use std::sync::OnceLock;

use k8s_openapi::api::autoscaling;
use serde_json::{Map, Value, json};

use crate::registry::{KindInfo, kind_of};

/// `metrics` other than the CPU utilization target (v1 `MetricSpec` list).
pub const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// `status.currentMetrics` (v1 `MetricStatus` list).
pub const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// `status.conditions`.
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// `spec.behavior` (in its v2 form).
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// The `autoscaling/v1` HorizontalPodAutoscaler, served beside the stored v2.
pub fn hpa_v1() -> &'static KindInfo {
    static KIND: OnceLock<KindInfo> = OnceLock::new();
    KIND.get_or_init(|| {
        kind_of::<autoscaling::v1::HorizontalPodAutoscaler>(&["hpa"], &["all"], &["status"])
    })
}

/// The kinds served only through conversion (not in the registry: nothing lists them
/// as stored kinds, and discovery prefers the stored version).
pub fn served_kinds() -> [&'static KindInfo; 1] {
    [hpa_v1()]
}

/// A converted kind by URL form.
pub fn by_resource(group: &str, version: &str, plural: &str) -> Option<&'static KindInfo> {
    served_kinds()
        .into_iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// Whether objects of `kind` are stored in another version.
pub fn is_converted(kind: &KindInfo) -> bool {
    std::ptr::eq(kind, hpa_v1())
}

/// Converts a stored object to the version `kind` serves (no-op for other kinds).
pub fn from_storage(kind: &KindInfo, obj: &mut Value) {
    if is_converted(kind) && obj.get("apiVersion").and_then(Value::as_str) != Some("autoscaling/v1")
    {
        *obj = hpa_v2_to_v1(obj);
    }
}

/// Converts a client's object of `kind` to the stored version. The error names the
/// field that could not be converted.
pub fn to_storage(kind: &KindInfo, obj: Value) -> Result<Value, (String, String)> {
    if is_converted(kind) && obj.get("apiVersion").and_then(Value::as_str) == Some("autoscaling/v1")
    {
        hpa_v1_to_v2(&obj)
    } else {
        Ok(obj)
    }
}

fn take(m: &mut Map<String, Value>, k: &str) -> Option<Value> {
    m.remove(k).filter(|v| !v.is_null())
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v.filter(|v| !v.is_null()) {
        m.insert(k.into(), v);
    }
}

fn obj(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

// ---------------------------------------------------------------- v2 -> v1

/// A stored `autoscaling/v2` HorizontalPodAutoscaler as `autoscaling/v1`.
pub fn hpa_v2_to_v1(v2: &Value) -> Value {
    let mut out = v2.as_object().cloned().unwrap_or_default();
    out.insert("apiVersion".into(), json!("autoscaling/v1"));
    let mut spec = obj(out.get("spec"));
    let mut status = obj(out.get("status"));
    let mut annotations: Map<String, Value> = Map::new();

    let metrics = take(&mut spec, "metrics")
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
    let mut other = Vec::new();
    for m in metrics {
        let cpu_util = m.get("type").and_then(Value::as_str) == Some("Resource")
            && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
            && m.pointer("/resource/target/averageUtilization").is_some();
        if cpu_util {
            spec.insert(
                "targetCPUUtilizationPercentage".into(),
                m.pointer("/resource/target/averageUtilization")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        } else {
            other.push(metric_spec_to_v1(&m));
        }
    }
    if !other.is_empty() {
        annotations.insert(
            METRICS_ANNOTATION.into(),
            json!(Value::Array(other).to_string()),
        );
    }
    if let Some(b) = take(&mut spec, "behavior") {
        annotations.insert(BEHAVIOR_ANNOTATION.into(), json!(b.to_string()));
    }

    let current = take(&mut status, "currentMetrics")
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
    if !current.is_empty() {
        let mut v1 = Vec::new();
        for m in &current {
            if m.get("type").and_then(Value::as_str) == Some("Resource")
                && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
                && let Some(u) = m.pointer("/resource/current/averageUtilization")
            {
                status.insert("currentCPUUtilizationPercentage".into(), u.clone());
            }
            v1.push(metric_status_to_v1(m));
        }
        annotations.insert(
            CURRENT_METRICS_ANNOTATION.into(),
            json!(Value::Array(v1).to_string()),
        );
    }
    if let Some(c) = take(&mut status, "conditions")
        && c.as_array().is_some_and(|a| !a.is_empty())
    {
        annotations.insert(CONDITIONS_ANNOTATION.into(), json!(c.to_string()));
    }
    if !annotations.is_empty() {
        let meta = out
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(meta) = meta {
            let a = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(a) = a.as_object_mut() {
                a.extend(annotations);
            }
        }
    }
    out.insert("spec".into(), Value::Object(spec));
    if out.contains_key("status") {
        out.insert("status".into(), Value::Object(status));
    }
    Value::Object(out)
}

/// Which half of a v2 metric is converted: the spec's `target` (`targetValue`, ...) or the
/// status's `current` (`currentValue`, ...). The two differ only in those names and in
/// which v1 fields are required (and so written as "0" when v2 leaves them out).
#[derive(Clone, Copy)]
enum Side {
    Spec,
    Status,
}

impl Side {
    /// The v2 field holding the values, also the prefix of the v1 field names.
    fn key(self) -> &'static str {
        match self {
            Side::Spec => "target",
            Side::Status => "current",
        }
    }

    /// `targetAverageValue`, `currentValue`, ...
    fn v1_name(self, rest: &str) -> String {
        format!("{}{rest}", self.key())
    }
}

fn metric_spec_to_v1(m: &Value) -> Value {
    metric_to_v1(m, Side::Spec)
}

fn metric_status_to_v1(m: &Value) -> Value {
    metric_to_v1(m, Side::Status)
}

fn metric_to_v1(m: &Value, side: Side) -> Value {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    let values = |src: &Value| obj(src.get(side.key()));
    let required = |v: Option<&Value>| Some(v.cloned().unwrap_or_else(|| json!("0")));
    let status_required = |v: Option<&Value>| match side {
        Side::Spec => v.cloned(),
        Side::Status => required(v),
    };
    match ty {
        "Resource" | "ContainerResource" => {
            let field = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let src = m.get(field).cloned().unwrap_or_default();
            let v = values(&src);
            let mut r = Map::new();
            put(&mut r, "name", src.get("name").cloned());
            put(&mut r, "container", src.get("container").cloned());
            put(
                &mut r,
                &side.v1_name("AverageUtilization"),
                v.get("averageUtilization").cloned(),
            );
            put(
                &mut r,
                &side.v1_name("AverageValue"),
                status_required(v.get("averageValue")),
            );
            out.insert(field.into(), Value::Object(r));
        }
        "Pods" => {
            let src = m.get("pods").cloned().unwrap_or_default();
            let mut r = Map::new();
            put(&mut r, "metricName", src.pointer("/metric/name").cloned());
            put(&mut r, "selector", src.pointer("/metric/selector").cloned());
            put(
                &mut r,
                &side.v1_name("AverageValue"),
                values(&src).get("averageValue").cloned(),
            );
            out.insert("pods".into(), Value::Object(r));
        }
        "Object" => {
            let src = m.get("object").cloned().unwrap_or_default();
            let v = values(&src);
            let mut r = Map::new();
            put(&mut r, "target", src.get("describedObject").cloned());
            put(&mut r, "metricName", src.pointer("/metric/name").cloned());
            put(&mut r, "selector", src.pointer("/metric/selector").cloned());
            put(&mut r, &side.v1_name("Value"), required(v.get("value")));
            put(&mut r, "averageValue", v.get("averageValue").cloned());
            out.insert("object".into(), Value::Object(r));
        }
        "External" => {
            let src = m.get("external").cloned().unwrap_or_default();
            let v = values(&src);
            let mut r = Map::new();
            put(&mut r, "metricName", src.pointer("/metric/name").cloned());
            put(
                &mut r,
                "metricSelector",
                src.pointer("/metric/selector").cloned(),
            );
            put(
                &mut r,
                &side.v1_name("Value"),
                status_required(v.get("value")),
            );
            put(
                &mut r,
                &side.v1_name("AverageValue"),
                v.get("averageValue").cloned(),
            );
            out.insert("external".into(), Value::Object(r));
        }
        _ => {}
    }
    Value::Object(out)
}

// ---------------------------------------------------------------- v1 -> v2

type ConvResult<T> = Result<T, (String, String)>;

/// Parses one of the annotations as JSON; the error names the annotation.
fn annotation_json(a: &mut Map<String, Value>, key: &str) -> ConvResult<Option<Value>> {
    let Some(raw) = a.remove(key) else {
        return Ok(None);
    };
    let text = raw.as_str().unwrap_or_default();
    serde_json::from_str(text).map(Some).map_err(|e| {
        (
            format!("metadata.annotations[{key}]"),
            format!("Invalid value: {raw}: {e}"),
        )
    })
}

/// An `autoscaling/v1` HorizontalPodAutoscaler as the stored `autoscaling/v2`.
pub fn hpa_v1_to_v2(v1: &Value) -> ConvResult<Value> {
    let mut out = v1.as_object().cloned().unwrap_or_default();
    out.insert("apiVersion".into(), json!("autoscaling/v2"));
    let mut meta = obj(out.get("metadata"));
    let mut annotations = obj(meta.get("annotations"));
    let other_metrics = annotation_json(&mut annotations, METRICS_ANNOTATION)?;
    let current_metrics = annotation_json(&mut annotations, CURRENT_METRICS_ANNOTATION)?;
    let conditions = annotation_json(&mut annotations, CONDITIONS_ANNOTATION)?;
    let behavior = annotation_json(&mut annotations, BEHAVIOR_ANNOTATION)?;
    if meta.contains_key("annotations") {
        if annotations.is_empty() {
            meta.remove("annotations");
        } else {
            meta.insert("annotations".into(), Value::Object(annotations));
        }
        out.insert("metadata".into(), Value::Object(meta));
    }

    let mut spec = obj(out.get("spec"));
    let cpu = take(&mut spec, "targetCPUUtilizationPercentage");
    let mut metrics = Vec::new();
    if let Some(other) = other_metrics {
        let Value::Array(list) = other else {
            return Err((
                format!("metadata.annotations[{METRICS_ANNOTATION}]"),
                "Invalid value: must be a JSON list of metrics".into(),
            ));
        };
        metrics.extend(list.iter().map(metric_spec_to_v2));
    }
    if let Some(cpu) = cpu {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": cpu}}}));
    }
    if !metrics.is_empty() {
        spec.insert("metrics".into(), Value::Array(metrics));
    }
    put(&mut spec, "behavior", behavior);
    out.insert("spec".into(), Value::Object(spec));

    if out.get("status").is_some_and(|s| !s.is_null()) {
        let mut status = obj(out.get("status"));
        let cpu_now = take(&mut status, "currentCPUUtilizationPercentage");
        let mut current = Vec::new();
        if let Some(Value::Array(list)) = current_metrics {
            current.extend(list.iter().map(metric_status_to_v2));
        } else if let Some(u) = cpu_now {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": u}}}));
        }
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        put(&mut status, "conditions", conditions);
        status.entry("desiredReplicas").or_insert_with(|| json!(0));
        out.insert("status".into(), Value::Object(status));
    }
    Ok(Value::Object(out))
}

fn metric_spec_to_v2(m: &Value) -> Value {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    let identifier = |name: Option<&Value>, sel: Option<&Value>| {
        let mut id = Map::new();
        put(&mut id, "name", name.cloned());
        put(&mut id, "selector", sel.cloned());
        Value::Object(id)
    };
    match ty {
        "Resource" | "ContainerResource" => {
            let field = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let src = m.get(field).cloned().unwrap_or_default();
            let mut r = Map::new();
            put(&mut r, "name", src.get("name").cloned());
            put(&mut r, "container", src.get("container").cloned());
            let target = match src.get("targetAverageUtilization") {
                Some(u) if !u.is_null() => {
                    json!({"type": "Utilization", "averageUtilization": u})
                }
                _ => json!({"type": "AverageValue",
                    "averageValue": src.get("targetAverageValue").cloned().unwrap_or(Value::Null)}),
            };
            r.insert("target".into(), target);
            out.insert(field.into(), Value::Object(r));
        }
        "Pods" => {
            let src = m.get("pods").cloned().unwrap_or_default();
            out.insert(
                "pods".into(),
                json!({
                    "metric": identifier(src.get("metricName"), src.get("selector")),
                    "target": {"type": "AverageValue",
                        "averageValue": src.get("targetAverageValue").cloned().unwrap_or(Value::Null)},
                }),
            );
        }
        "Object" => {
            let src = m.get("object").cloned().unwrap_or_default();
            let target = match src.get("averageValue") {
                Some(a) if !a.is_null() => json!({"type": "AverageValue", "averageValue": a}),
                _ => json!({"type": "Value",
                    "value": src.get("targetValue").cloned().unwrap_or(Value::Null)}),
            };
            let mut r = Map::new();
            put(&mut r, "describedObject", src.get("target").cloned());
            r.insert(
                "metric".into(),
                identifier(src.get("metricName"), src.get("selector")),
            );
            r.insert("target".into(), target);
            out.insert("object".into(), Value::Object(r));
        }
        "External" => {
            let src = m.get("external").cloned().unwrap_or_default();
            let target = match src.get("targetAverageValue") {
                Some(a) if !a.is_null() => json!({"type": "AverageValue", "averageValue": a}),
                _ => json!({"type": "Value",
                    "value": src.get("targetValue").cloned().unwrap_or(Value::Null)}),
            };
            out.insert(
                "external".into(),
                json!({
                    "metric": identifier(src.get("metricName"), src.get("metricSelector")),
                    "target": target,
                }),
            );
        }
        _ => {}
    }
    Value::Object(out)
}

fn metric_status_to_v2(m: &Value) -> Value {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    let identifier = |name: Option<&Value>, sel: Option<&Value>| {
        let mut id = Map::new();
        put(&mut id, "name", name.cloned());
        put(&mut id, "selector", sel.cloned());
        Value::Object(id)
    };
    match ty {
        "Resource" | "ContainerResource" => {
            let field = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let src = m.get(field).cloned().unwrap_or_default();
            let mut r = Map::new();
            put(&mut r, "name", src.get("name").cloned());
            put(&mut r, "container", src.get("container").cloned());
            let mut c = Map::new();
            put(
                &mut c,
                "averageUtilization",
                src.get("currentAverageUtilization").cloned(),
            );
            put(
                &mut c,
                "averageValue",
                src.get("currentAverageValue").cloned(),
            );
            r.insert("current".into(), Value::Object(c));
            out.insert(field.into(), Value::Object(r));
        }
        "Pods" => {
            let src = m.get("pods").cloned().unwrap_or_default();
            let mut c = Map::new();
            put(
                &mut c,
                "averageValue",
                src.get("currentAverageValue").cloned(),
            );
            out.insert(
                "pods".into(),
                json!({"metric": identifier(src.get("metricName"), src.get("selector")),
                    "current": c}),
            );
        }
        "Object" => {
            let src = m.get("object").cloned().unwrap_or_default();
            let mut c = Map::new();
            put(&mut c, "value", src.get("currentValue").cloned());
            put(&mut c, "averageValue", src.get("averageValue").cloned());
            let mut r = Map::new();
            put(&mut r, "describedObject", src.get("target").cloned());
            r.insert(
                "metric".into(),
                identifier(src.get("metricName"), src.get("selector")),
            );
            r.insert("current".into(), Value::Object(c));
            out.insert("object".into(), Value::Object(r));
        }
        "External" => {
            let src = m.get("external").cloned().unwrap_or_default();
            let mut c = Map::new();
            put(&mut c, "value", src.get("currentValue").cloned());
            put(
                &mut c,
                "averageValue",
                src.get("currentAverageValue").cloned(),
            );
            out.insert(
                "external".into(),
                json!({"metric": identifier(src.get("metricName"), src.get("metricSelector")),
                    "current": c}),
            );
        }
        _ => {}
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "annotations": {"team": "a"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
                        "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "External", "external": {
                        "metric": {"name": "queue_depth", "selector": {"matchLabels": {"q": "jobs"}}},
                        "target": {"type": "Value", "value": "30"}}},
                    {"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 60}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu",
                        "current": {"averageUtilization": 75, "averageValue": "150m"}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
            },
        })
    }

    #[test]
    fn v2_reads_as_v1_with_the_annotations_and_back() {
        let v1 = hpa_v2_to_v1(&v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        let a = &v1["metadata"]["annotations"];
        assert_eq!(a["team"], "a");
        let other: Value = serde_json::from_str(a[METRICS_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(other[0]["pods"]["metricName"], "requests_per_second");
        assert_eq!(other[0]["pods"]["targetAverageValue"], "10");
        assert_eq!(
            other[1]["external"]["metricSelector"]["matchLabels"]["q"],
            "jobs"
        );
        assert_eq!(other[1]["external"]["targetValue"], "30");
        assert!(
            a[BEHAVIOR_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("stabilizationWindowSeconds")
        );
        assert!(
            a[CONDITIONS_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("AbleToScale")
        );
        // The v1 form decodes into the v1 type.
        serde_json::from_value::<autoscaling::v1::HorizontalPodAutoscaler>(v1.clone()).unwrap();

        let back = hpa_v1_to_v2(&v1).unwrap();
        assert_eq!(back["apiVersion"], "autoscaling/v2");
        assert_eq!(back["metadata"]["annotations"], json!({"team": "a"}));
        // Kubernetes puts the annotation's metrics first, the CPU target last.
        let want = v2()["spec"]["metrics"].clone();
        assert_eq!(back["spec"]["metrics"], want);
        assert_eq!(back["spec"]["behavior"], v2()["spec"]["behavior"]);
        assert_eq!(back["status"]["conditions"], v2()["status"]["conditions"]);
        assert_eq!(
            back["status"]["currentMetrics"],
            v2()["status"]["currentMetrics"]
        );
        serde_json::from_value::<autoscaling::v2::HorizontalPodAutoscaler>(back).unwrap();
    }

    #[test]
    fn kubectl_autoscale_v1_becomes_a_cpu_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}});
        let v2 = to_storage(hpa_v1(), v1).unwrap();
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert!(v2.get("status").is_none());
    }

    #[test]
    fn every_metric_kind_reads_as_v1_on_both_sides() {
        let describe = json!({"kind": "Service", "name": "web"});
        let spec = |t: Value| {
            [
                json!({"type": "Resource", "resource": {"name": "memory", "target": t.clone()}}),
                json!({"type": "ContainerResource", "containerResource": {"name": "cpu",
                    "container": "app", "target": t.clone()}}),
                json!({"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": t.clone()}}),
                json!({"type": "Object", "object": {"describedObject": describe.clone(),
                    "metric": {"name": "hits"}, "target": t.clone()}}),
                json!({"type": "External", "external": {"metric": {"name": "q"}, "target": t}}),
            ]
        };
        let [res, cres, pods, object, external] =
            spec(json!({"averageUtilization": 40, "averageValue": "1Gi"}))
                .map(|m| metric_spec_to_v1(&m));
        assert_eq!(
            res["resource"],
            json!({"name": "memory",
            "targetAverageUtilization": 40, "targetAverageValue": "1Gi"})
        );
        assert_eq!(cres["containerResource"]["container"], "app");
        assert_eq!(
            pods["pods"],
            json!({"metricName": "rps", "targetAverageValue": "1Gi"})
        );
        assert_eq!(
            object["object"],
            json!({"target": describe, "metricName": "hits",
            "targetValue": "0", "averageValue": "1Gi"})
        );
        assert_eq!(
            external["external"],
            json!({"metricName": "q", "targetAverageValue": "1Gi"})
        );

        let status = |c: Value| {
            spec(c).map(|m| {
                let mut m = m;
                let ty = m["type"].as_str().unwrap().to_string();
                let field = if ty == "ContainerResource" {
                    "containerResource".to_string()
                } else {
                    ty.to_lowercase()
                };
                let inner = m[&field].as_object_mut().unwrap();
                let values = inner.remove("target").unwrap();
                inner.insert("current".into(), values);
                metric_status_to_v1(&m)
            })
        };
        // Fields v1 requires in a status are written as "0" when v2 leaves them out.
        let [res, _, pods, object, external] = status(json!({"averageUtilization": 90}));
        assert_eq!(
            res["resource"],
            json!({"name": "memory",
            "currentAverageUtilization": 90, "currentAverageValue": "0"})
        );
        assert_eq!(pods["pods"], json!({"metricName": "rps"}));
        assert_eq!(object["object"]["currentValue"], "0");
        assert_eq!(
            external["external"],
            json!({"metricName": "q", "currentValue": "0"})
        );
        let [_, _, _, object, external] = status(json!({"value": "7", "averageValue": "2"}));
        assert_eq!(object["object"]["currentValue"], "7");
        assert_eq!(object["object"]["averageValue"], "2");
        assert_eq!(
            external["external"],
            json!({"metricName": "q",
            "currentValue": "7", "currentAverageValue": "2"})
        );
    }

    #[test]
    fn a_bad_annotation_names_itself() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {METRICS_ANNOTATION: "{nope"}},
            "spec": {"maxReplicas": 4}});
        let (field, _) = hpa_v1_to_v2(&v1).unwrap_err();
        assert_eq!(field, format!("metadata.annotations[{METRICS_ANNOTATION}]"));
    }
}
