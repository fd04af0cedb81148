//! Priority admission, as Kubernetes' `Priority` plugin: a pod's `priorityClassName`
//! (or the class marked `globalDefault`) becomes `spec.priority` and `spec.preemptionPolicy`;
//! the two built-in classes exist from the start; user classes stay at or below one billion
//! and at most one is the global default.

use bosun_api::KindInfo;
use bosun_store::ListOptions;
use serde_json::{Value, json};

use crate::Inner;
use crate::error::{ApiError, ApiResult};
use crate::objects::meta::decode_kv;

/// Highest value a user-defined class may have (`HighestUserDefinablePriority`).
const MAX_USER_PRIORITY: i64 = 1_000_000_000;

/// The classes every cluster has, as Kubernetes creates them at start-up.
pub const BUILTIN: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

fn classes_kind(inner: &Inner) -> ApiResult<&'static KindInfo> {
    inner
        .registry
        .by_resource("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| ApiError::internal("the registry has no priorityclasses"))
}

/// The built-in classes, as the server creates them at start-up (when missing).
pub(crate) fn builtin_classes() -> impl Iterator<Item = (&'static str, Value)> {
    BUILTIN.into_iter().map(|(name, value, description)| {
        let body = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": description,
            "preemptionPolicy": "PreemptLowerPriority"});
        (name, body)
    })
}

async fn all_classes(inner: &Inner) -> ApiResult<Vec<Value>> {
    let kind = classes_kind(inner)?;
    let list = inner
        .store
        .list(&kind.key_prefix(), ListOptions::default())
        .await
        .map_err(ApiError::store)?;
    list.kvs.iter().map(decode_kv).collect()
}

fn is_builtin(name: &str) -> bool {
    BUILTIN.iter().any(|(n, _, _)| *n == name)
}

/// Admission for pods and PriorityClasses on create; other kinds pass untouched.
pub(crate) async fn admit(inner: &Inner, kind: &KindInfo, obj: &mut Value) -> ApiResult<()> {
    match (kind.group, kind.plural) {
        ("", "pods") => admit_pod(inner, kind, obj).await,
        ("scheduling.k8s.io", "priorityclasses") => admit_class(inner, kind, obj).await,
        _ => Ok(()),
    }
}

async fn admit_class(inner: &Inner, kind: &KindInfo, obj: &Value) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if is_builtin(name) {
        return Ok(());
    }
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    if value > MAX_USER_PRIORITY {
        return Err(ApiError::invalid(
            kind,
            name,
            &[bosun_api::FieldError {
                field: "value".into(),
                reason: "FieldValueForbidden",
                message: format!(
                    "Forbidden: maximum allowed value of a user defined priority is {MAX_USER_PRIORITY}"
                ),
            }],
        ));
    }
    if name.starts_with("system-") {
        return Err(ApiError::invalid(
            kind,
            name,
            &[bosun_api::FieldError {
                field: "metadata.name".into(),
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: \"{name}\": priority class names with 'system-' prefix are reserved"
                ),
            }],
        ));
    }
    if obj.get("globalDefault").and_then(Value::as_bool) == Some(true)
        && let Some(other) = all_classes(inner).await?.into_iter().find(|c| {
            c.get("globalDefault").and_then(Value::as_bool) == Some(true)
                && c.pointer("/metadata/name").and_then(Value::as_str) != Some(name)
        })
    {
        let other = other
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(ApiError::forbidden(
            kind,
            name,
            &format!(
                "PriorityClass {other} is already marked as default. Only one default can exist"
            ),
        ));
    }
    Ok(())
}

async fn admit_pod(inner: &Inner, kind: &KindInfo, obj: &mut Value) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .or_else(|| obj.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let class_name = spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let class = match &class_name {
        Some(c) => {
            let ckind = classes_kind(inner)?;
            let found = inner
                .store
                .get(&ckind.key(None, c))
                .await
                .map_err(ApiError::store)?;
            match found {
                Some(kv) => Some(decode_kv(&kv)?),
                None => {
                    return Err(ApiError::forbidden(
                        kind,
                        &name,
                        &format!("no PriorityClass with name {c} was found"),
                    ));
                }
            }
        }
        None => all_classes(inner)
            .await?
            .into_iter()
            .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
            // Several defaults can only come from racing creates: the lowest wins, as upstream.
            .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0)),
    };
    let (value, policy) = match &class {
        Some(c) => (
            c.get("value").and_then(Value::as_i64).unwrap_or(0),
            c.get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        ),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    if let Some(given) = spec.get("priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(ApiError::forbidden(
            kind,
            &name,
            &format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
        && class.is_some()
        && given != policy
    {
        return Err(ApiError::forbidden(
            kind,
            &name,
            &format!(
                "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(c) = &class
        && class_name.is_none()
        && let Some(n) = c.pointer("/metadata/name").and_then(Value::as_str)
    {
        spec.insert("priorityClassName".into(), json!(n));
    }
    spec.insert("priority".into(), json!(value));
    spec.entry("preemptionPolicy").or_insert(json!(policy));
    Ok(())
}
