//! HorizontalPodAutoscaler validation (`ValidateHorizontalPodAutoscalerSpec` of
//! `pkg/apis/autoscaling/validation`), with upstream's field paths and messages.

use serde_json::Value;

use super::Validator;

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];
const TARGET_TYPES: &[&str] = &["AverageValue", "Utilization", "Value"];

impl Validator {
    pub(super) fn hpa(&mut self, spec: &Value) {
        let r = spec.get("scaleTargetRef").unwrap_or(&Value::Null);
        for f in ["kind", "name"] {
            if r.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                self.required(format!("spec.scaleTargetRef.{f}"), "");
            }
        }
        let metrics = spec
            .get("metrics")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let min = spec.get("minReplicas").and_then(Value::as_i64);
        let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
        if let Some(m) = min
            && m < 0
        {
            self.invalid(
                "spec.minReplicas".into(),
                &m.into(),
                "must be greater than or equal to 0",
            );
        }
        if max < 1 {
            self.invalid(
                "spec.maxReplicas".into(),
                &max.into(),
                "must be greater than 0",
            );
        }
        if let Some(m) = min
            && max < m
        {
            self.invalid(
                "spec.maxReplicas".into(),
                &max.into(),
                "must be greater than or equal to `minReplicas`",
            );
        }
        // HPAScaleToZero: zero needs a metric that exists without pods.
        if min == Some(0)
            && !metrics.iter().any(|m| {
                matches!(
                    m.get("type").and_then(Value::as_str),
                    Some("Object" | "External")
                )
            })
        {
            self.forbidden(
                "spec.metrics".into(),
                "must specify at least one Object or External metric to support scaling to zero replicas",
            );
        }
        for (i, m) in metrics.iter().enumerate() {
            self.hpa_metric(m, &format!("spec.metrics[{i}]"));
        }
        if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
            for dir in ["scaleUp", "scaleDown"] {
                if let Some(rules) = b.get(dir).filter(|r| !r.is_null()) {
                    self.hpa_rules(rules, &format!("spec.behavior.{dir}"));
                }
            }
        }
    }

    fn hpa_metric(&mut self, m: &Value, path: &str) {
        let Some(t) = m.get("type").and_then(Value::as_str) else {
            self.required(format!("{path}.type"), "must specify a metric source type");
            return;
        };
        if !METRIC_TYPES.contains(&t) {
            self.not_supported(format!("{path}.type"), &t.into(), METRIC_TYPES);
            return;
        }
        let field = match t {
            "Resource" => "resource",
            "Pods" => "pods",
            "Object" => "object",
            "External" => "external",
            _ => "containerResource",
        };
        let Some(src) = m.get(field).filter(|s| !s.is_null()) else {
            self.required(
                format!("{path}.{field}"),
                &format!("must populate information for the given metric source (type {t})"),
            );
            return;
        };
        let path = format!("{path}.{field}");
        match t {
            "Resource" | "ContainerResource" => {
                if src
                    .get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    self.required(format!("{path}.name"), "must specify a resource name");
                }
            }
            _ => {
                if src
                    .pointer("/metric/name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    self.required(format!("{path}.metric.name"), "must specify a metric name");
                }
            }
        }
        if t == "Object" {
            let d = src.get("describedObject").unwrap_or(&Value::Null);
            for f in ["kind", "name"] {
                if d.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    self.required(format!("{path}.describedObject.{f}"), "");
                }
            }
        }
        let target = src.get("target").unwrap_or(&Value::Null);
        let tpath = format!("{path}.target");
        let ttype = target.get("type").and_then(Value::as_str).unwrap_or("");
        if ttype.is_empty() {
            self.required(format!("{tpath}.type"), "must specify a metric target type");
        } else if !TARGET_TYPES.contains(&ttype) {
            self.not_supported(format!("{tpath}.type"), &ttype.into(), TARGET_TYPES);
        }
        if let Some(u) = target.get("averageUtilization").and_then(Value::as_i64)
            && u < 1
        {
            self.invalid(
                format!("{tpath}.averageUtilization"),
                &u.into(),
                "must be greater than 0",
            );
        }
        let has = |f: &str| target.get(f).is_some_and(|v| !v.is_null());
        let ok = match ttype {
            "Utilization" => {
                has("averageUtilization") && matches!(t, "Resource" | "ContainerResource")
            }
            "AverageValue" => has("averageValue"),
            "Value" => has("value") && matches!(t, "Object" | "External"),
            _ => true,
        };
        if !ok {
            let want = match ttype {
                "Utilization" => "averageUtilization",
                "AverageValue" => "averageValue",
                _ => "value",
            };
            self.required(
                format!("{tpath}.{want}"),
                &format!("must set {want} for a {ttype} target of a {t} metric"),
            );
        }
    }

    fn hpa_rules(&mut self, r: &Value, path: &str) {
        if let Some(w) = r.get("stabilizationWindowSeconds").and_then(Value::as_i64)
            && !(0..=3600).contains(&w)
        {
            self.invalid(
                format!("{path}.stabilizationWindowSeconds"),
                &w.into(),
                "must be less than or equal to 3600",
            );
        }
        self.one_of(r, "selectPolicy", path, &["Disabled", "Max", "Min"]);
        let policies = r
            .get("policies")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if policies.is_empty() && r.get("selectPolicy").and_then(Value::as_str) != Some("Disabled")
        {
            self.required(
                format!("{path}.policies"),
                "must specify at least one Policy",
            );
        }
        for (i, p) in policies.iter().enumerate() {
            let pp = format!("{path}.policies[{i}]");
            self.one_of(p, "type", &pp, &["Percent", "Pods"]);
            let period = p.get("periodSeconds").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=1800).contains(&period) {
                self.invalid(
                    format!("{pp}.periodSeconds"),
                    &period.into(),
                    "must be greater than zero and less than or equal to 1800",
                );
            }
            let value = p.get("value").and_then(Value::as_i64).unwrap_or(0);
            if value <= 0 {
                self.invalid(
                    format!("{pp}.value"),
                    &value.into(),
                    "must be greater than zero",
                );
            }
        }
    }
}
