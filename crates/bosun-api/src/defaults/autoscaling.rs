//! HorizontalPodAutoscaler defaults (`autoscaling/v2` `SetDefaults_HorizontalPodAutoscaler`
//! and `SetDefaults_HorizontalPodAutoscalerBehavior`).

use serde_json::{Map, Value, json};

use super::{object, set, unset};

/// minReplicas 1, CPU at 80% when no metric is given, and every unset field of a given
/// `behavior` direction filled from Kubernetes' defaults.
pub(super) fn hpa(obj: &mut Map<String, Value>) {
    let spec = object(obj, "spec");
    set(spec, "minReplicas", json!(1));
    if spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    if unset(spec, "behavior") {
        return;
    }
    let behavior = object(spec, "behavior");
    let up = object(behavior, "scaleUp");
    set(up, "stabilizationWindowSeconds", json!(0));
    set(up, "selectPolicy", json!("Max"));
    set(
        up,
        "policies",
        json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
               {"type": "Percent", "value": 100, "periodSeconds": 15}]),
    );
    let down = object(behavior, "scaleDown");
    set(down, "selectPolicy", json!("Max"));
    set(
        down,
        "policies",
        json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
    );
}
