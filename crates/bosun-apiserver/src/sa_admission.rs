//! Kubernetes' ServiceAccount admission for pods: `serviceAccountName` defaults to
//! `default`; a pod naming a ServiceAccount that does not exist is refused; and unless the
//! pod or its ServiceAccount says `automountServiceAccountToken: false`, the pod gets the
//! projected volume `kube-api-access-XXXXX` (a bound, expiring token from the TokenRequest
//! API, the cluster CA from `kube-root-ca.crt` and the namespace) mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container. The agent fills the
//! volume in and renews the token before it expires (`bosun-agent::volumes`).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::Inner;
use crate::error::{ApiError, ApiResult};

/// Where the official clients' in-cluster configuration looks for the token, CA and namespace.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Kubernetes' default for the projected token (one hour, plus a little so that clients
/// notice an old token being used).
pub const TOKEN_EXPIRATION: i64 = 3607;
pub const VOLUME_PREFIX: &str = "kube-api-access-";

/// The ServiceAccount a pod runs as, defaulted: `serviceAccountName`, else the deprecated
/// `serviceAccount`, else `default`. Both fields are set to it, as Kubernetes does.
pub fn default_service_account(pod: &mut Value) -> String {
    let spec = &mut pod["spec"];
    let given = |f: &str| {
        spec.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let name = given("serviceAccountName")
        .or_else(|| given("serviceAccount"))
        .unwrap_or_else(|| "default".into());
    spec["serviceAccountName"] = json!(name);
    spec["serviceAccount"] = json!(name);
    name
}

/// The projected volume Kubernetes gives a pod for its ServiceAccount.
pub fn api_access_volume(name: &str) -> Value {
    json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}})
}

fn containers_mut(spec: &mut Value) -> impl Iterator<Item = &mut Value> {
    let mut out = Vec::new();
    if let Some(m) = spec.as_object_mut() {
        for (k, v) in m.iter_mut() {
            if matches!(
                k.as_str(),
                "containers" | "initContainers" | "ephemeralContainers"
            ) && let Some(list) = v.as_array_mut()
            {
                out.extend(list.iter_mut());
            }
        }
    }
    out.into_iter()
}

fn mounts_at(c: &Value, path: &str) -> bool {
    c.get("volumeMounts")
        .and_then(Value::as_array)
        .is_some_and(|ms| {
            ms.iter().any(|m| {
                m.get("mountPath")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.trim_end_matches('/') == path)
            })
        })
}

/// Adds the API access volume and mounts it in every container that does not already
/// mount something at [`MOUNT_PATH`]. Returns the volume's name, or None when the pod
/// already has one (its spec came from another pod) or no container wants it.
pub fn mount_api_access(pod: &mut Value, volume_name: &str) -> Option<String> {
    let spec = pod.get_mut("spec")?;
    let has = spec
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                v.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.starts_with(VOLUME_PREFIX))
                    && v.pointer("/projected/sources")
                        .and_then(Value::as_array)
                        .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
            })
        });
    if has {
        return None;
    }
    let mut mounted = false;
    for c in containers_mut(spec) {
        if mounts_at(c, MOUNT_PATH) {
            continue;
        }
        if !c.get("volumeMounts").is_some_and(Value::is_array) {
            c["volumeMounts"] = json!([]);
        }
        if let Some(ms) = c["volumeMounts"].as_array_mut() {
            ms.push(json!({"name": volume_name, "mountPath": MOUNT_PATH, "readOnly": true}));
            mounted = true;
        }
    }
    if !mounted {
        return None;
    }
    if !spec.get("volumes").is_some_and(Value::is_array) {
        spec["volumes"] = json!([]);
    }
    spec["volumes"]
        .as_array_mut()?
        .push(api_access_volume(volume_name));
    Some(volume_name.to_string())
}

/// Whether the token is mounted: the pod's own setting wins over its ServiceAccount's.
pub fn automount(pod: &Value, service_account: Option<&Value>) -> bool {
    pod.pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            service_account
                .and_then(|sa| sa.get("automountServiceAccountToken"))
                .and_then(Value::as_bool)
        })
        .unwrap_or(true)
}

/// Admits a new pod in `ns` (see the module comment).
pub(crate) async fn admit(inner: &Arc<Inner>, ns: &str, pod: &mut Value) -> ApiResult<()> {
    let sa_name = default_service_account(pod);
    let key = format!("/registry/core/serviceaccounts/{ns}/{sa_name}");
    let sa: Option<Value> = match inner.store.get(&key).await.map_err(ApiError::store)? {
        Some(kv) => Some(crate::objects::meta::decode_kv(&kv)?),
        None => None,
    };
    // `default` is made by a controller right after its namespace; a pod created in that
    // moment is not refused (its token is issued once the ServiceAccount exists).
    if sa.is_none() && sa_name != "default" {
        let pod_name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            ),
        )
        .with_details(json!({"name": pod_name, "kind": "pods"})));
    }
    if automount(pod, sa.as_ref()) {
        mount_api_access(
            pod,
            &format!("{VOLUME_PREFIX}{}", crate::objects::meta::random_suffix()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn service_account_defaults() {
        let mut p = pod(json!({"containers": []}));
        assert_eq!(default_service_account(&mut p), "default");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["serviceAccount"], "default");
        let mut p = pod(json!({"serviceAccount": "old", "containers": []}));
        assert_eq!(default_service_account(&mut p), "old");
        let mut p = pod(json!({"serviceAccountName": "new", "serviceAccount": "old"}));
        assert_eq!(default_service_account(&mut p), "new");
    }

    #[test]
    fn volume_is_mounted_in_every_container_once() {
        let mut p = pod(json!({
            "initContainers": [{"name": "i"}],
            "containers": [{"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}],
            "volumes": [{"name": "mine", "emptyDir": {}}]}));
        assert_eq!(
            mount_api_access(&mut p, "kube-api-access-abcde").as_deref(),
            Some("kube-api-access-abcde")
        );
        let vols = p["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(
            vols[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        let m = &p["spec"]["initContainers"][0]["volumeMounts"][0];
        assert_eq!(m["mountPath"], MOUNT_PATH);
        assert_eq!(m["readOnly"], true);
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-abcde"
        );
        // b keeps its own volume at that path.
        assert_eq!(
            p["spec"]["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // A second admission (a copied spec) adds nothing.
        assert_eq!(mount_api_access(&mut p, "kube-api-access-zzzzz"), None);
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn automount_setting_of_pod_wins() {
        let sa_off = json!({"automountServiceAccountToken": false});
        let p = pod(json!({}));
        assert!(automount(&p, None));
        assert!(!automount(&p, Some(&sa_off)));
        let p = pod(json!({"automountServiceAccountToken": true}));
        assert!(automount(&p, Some(&sa_off)));
        let p = pod(json!({"automountServiceAccountToken": false}));
        assert!(!automount(&p, Some(&json!({}))));
    }
}
