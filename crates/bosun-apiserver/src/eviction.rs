//! `pods/NAME/eviction` (policy/v1 Eviction), what `kubectl drain` uses: the pod is deleted
//! unless that would leave a matching policy/v1 PodDisruptionBudget with fewer healthy pods
//! than it requires, which is refused with 429 (kubectl retries). Healthy means Ready and not
//! being deleted; the budget's base is the matching pods not being deleted.

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use crate::ctx::{Ctx, json_response, parse_doc};
use crate::error::{ApiError, ApiResult};
use crate::objects::delete::{delete_object, delete_opts_from};
use crate::objects::meta::{decode_kv, meta_str};
use crate::objects::read::{ListQuery, list_objects};
use crate::selector::{LabelSelector, label_selector_string};

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn terminating(pod: &Value) -> bool {
    meta_str(pod, "deletionTimestamp").is_some()
}

/// `minAvailable` / `maxUnavailable` as a count of `total` (percentages round up, as
/// Kubernetes does for both).
fn count(v: &Value, total: usize) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as usize),
        Value::String(s) => {
            let p: usize = s.strip_suffix('%')?.parse().ok()?;
            Some((p * total).div_ceil(100))
        }
        _ => None,
    }
}

/// Healthy pods the budget requires, out of `expected` matching pods.
pub(crate) fn desired_healthy(spec: &Value, expected: usize) -> usize {
    if let Some(min) = spec.get("minAvailable").and_then(|v| count(v, expected)) {
        return min;
    }
    if let Some(max) = spec.get("maxUnavailable").and_then(|v| count(v, expected)) {
        return expected.saturating_sub(max);
    }
    0
}

/// Why evicting `pod` would break a budget (name, needed, healthy), if it would.
fn violated(pod: &Value, pods: &[Value], pdbs: &[Value]) -> Option<(String, usize, usize)> {
    if !ready(pod) || terminating(pod) {
        // An unhealthy pod does not count towards any budget.
        return None;
    }
    for pdb in pdbs {
        let Some(sel) = pdb.pointer("/spec/selector") else {
            continue;
        };
        let Ok(sel) = LabelSelector::parse(&label_selector_string(sel)) else {
            continue;
        };
        if sel.is_empty() || !sel.matches(pod) {
            continue;
        }
        let matching: Vec<&Value> = pods
            .iter()
            .filter(|p| sel.matches(p) && !terminating(p))
            .collect();
        let healthy = matching.iter().filter(|p| ready(p)).count();
        let needed = desired_healthy(&pdb["spec"], matching.len());
        if healthy < needed + 1 {
            let name = meta_str(pdb, "name").unwrap_or_default().to_string();
            return Some((name, needed, healthy));
        }
    }
    None
}

fn all_in(
    inner: &std::sync::Arc<crate::Inner>,
    group: &str,
    plural: &str,
    ns: &str,
) -> impl std::future::Future<Output = ApiResult<Vec<Value>>> {
    let kind = inner.registry.by_resource(group, "v1", plural);
    let inner = inner.clone();
    let ns = ns.to_string();
    async move {
        let Some(kind) = kind else {
            return Ok(Vec::new());
        };
        let q = ListQuery {
            labels: LabelSelector::default(),
            fields: Default::default(),
            limit: None,
            cont: None,
            resource_version: None,
            rv_match: None,
        };
        Ok(list_objects(&inner, kind, Some(&ns), &q).await?.items)
    }
}

pub(crate) async fn evict(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let ns = ctx.target.namespace.clone().unwrap_or_default();
    let name = ctx.name().to_string();
    let kind = ctx.kind();
    let eviction = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_doc(&ctx.content_type(), &body)?
    };
    let kv = ctx
        .inner
        .store
        .get(&kind.key(Some(&ns), &name))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(kind, &name))?;
    let pod = decode_kv(&kv)?;
    let pods = all_in(&ctx.inner, "", "pods", &ns).await?;
    let pdbs = all_in(&ctx.inner, "policy", "poddisruptionbudgets", &ns).await?;
    if let Some((pdb, needed, healthy)) = violated(&pod, &pods, &pdbs) {
        return Err(ApiError::new(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
        )
        .with_details(json!({"causes": [{
            "reason": "DisruptionBudget",
            "message": format!(
                "The disruption budget {pdb} needs {needed} healthy pods and has {healthy} currently"
            ),
        }]})));
    }
    let delete_options = eviction.get("deleteOptions").cloned().map(|mut o| {
        if let Some(m) = o.as_object_mut() {
            m.insert("kind".into(), json!("DeleteOptions"));
        }
        o
    });
    let opts = delete_opts_from(&ctx, delete_options)?;
    delete_object(&ctx.inner, kind, Some(&ns), &name, &opts).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, deleting: bool) -> Value {
        let mut p = json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
        }
        p
    }

    #[test]
    fn budgets() {
        let pdb = |spec: Value| {
            let mut s = spec;
            s["selector"] = json!({"matchLabels": {"app": "web"}});
            json!({"metadata": {"name": "web"}, "spec": s})
        };
        let pods = vec![
            pod("a", true, false),
            pod("b", true, false),
            pod("c", true, false),
        ];
        let min2 = [pdb(json!({"minAvailable": 2}))];
        assert_eq!(violated(&pods[0], &pods, &min2), None);
        let min3 = [pdb(json!({"minAvailable": 3}))];
        assert_eq!(violated(&pods[0], &pods, &min3), Some(("web".into(), 3, 3)));
        let max0 = [pdb(json!({"maxUnavailable": 0}))];
        assert!(violated(&pods[0], &pods, &max0).is_some());
        let pct = [pdb(json!({"minAvailable": "50%"}))];
        assert_eq!(violated(&pods[0], &pods, &pct), None);
        // One pod already down: the budget of 2 allows no more.
        let down = vec![
            pod("a", true, false),
            pod("b", true, false),
            pod("c", false, false),
        ];
        assert!(violated(&down[0], &down, &min2).is_some());
        // An unready pod may always go.
        assert_eq!(violated(&down[2], &down, &min3), None);
        assert_eq!(desired_healthy(&json!({"maxUnavailable": "34%"}), 3), 1);
    }
}
