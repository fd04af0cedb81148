//! Kubernetes' Node authorizer for `system:node:NAME` in `system:nodes`: a node reads only
//! the Secrets, ConfigMaps and PersistentVolumeClaims its own pods use, asks tokens only for
//! their ServiceAccounts, and writes only its own Node, its own Lease and the status of pods
//! bound to it. Everything else is left to
//! RBAC (`system:node`).
//!
//! bosun's node also runs the gateway, which serves TLS from Secrets: a node may therefore
//! list and watch Secrets of type `kubernetes.io/tls` (and only with that field selector).

use std::sync::Arc;

use bosun_store::ListOptions;
use serde_json::Value;

use crate::Inner;
use crate::attrs::Attrs;
use crate::user::{NODES, User};

/// The Secret holding the token the API server presents to node agents; nodes read it (and
/// no other kube-system Secret) so that they can check who calls their logs endpoint.
pub const KUBELET_ACCESS_PATH: &str = "/api/v1/namespaces/kube-system/secrets/bosun-kubelet-access";

pub enum Decision {
    Allow,
    Deny(String),
    NoOpinion,
}

/// The node name of a node identity.
pub fn node_name(user: &User) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES) {
        return None;
    }
    user.name
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
}

/// The Secret, ConfigMap and PVC names a pod refers to.
fn refs(pod: &Value) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut secrets, mut cms, mut pvcs) = (Vec::new(), Vec::new(), Vec::new());
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
    let spec = pod.get("spec");
    for v in spec
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        secrets.extend(s(v.pointer("/secret/secretName")));
        cms.extend(s(v.pointer("/configMap/name")));
        pvcs.extend(s(v.pointer("/persistentVolumeClaim/claimName")));
        for src in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            secrets.extend(s(src.pointer("/secret/name")));
            cms.extend(s(src.pointer("/configMap/name")));
        }
    }
    for p in spec
        .and_then(|s| s.get("imagePullSecrets"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        secrets.extend(s(p.get("name")));
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec
            .and_then(|s| s.get(list))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                secrets.extend(s(e.pointer("/valueFrom/secretKeyRef/name")));
                cms.extend(s(e.pointer("/valueFrom/configMapKeyRef/name")));
            }
            for e in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                secrets.extend(s(e.pointer("/secretRef/name")));
                cms.extend(s(e.pointer("/configMapRef/name")));
            }
        }
    }
    (secrets, cms, pvcs)
}

fn on_node(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

async fn pods_in(inner: &Arc<Inner>, ns: &str) -> Vec<Value> {
    let prefix = format!("/registry/core/pods/{ns}/");
    match inner.store.list(&prefix, ListOptions::default()).await {
        Ok(l) => l
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| {
            v.replace("%3D", "=")
                .replace("%3d", "=")
                .replace("%2F", "/")
                .replace("%2f", "/")
        })
}

/// Decides the requests the Node authorizer governs.
pub async fn authorize(inner: &Arc<Inner>, node: &str, a: &Attrs, query: &str) -> Decision {
    if !a.resource_request || !a.api_group.is_empty() && a.api_group != "coordination.k8s.io" {
        return Decision::NoOpinion;
    }
    let deny = |why: &str| Decision::Deny(format!("node '{node}' {why}"));
    let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
    match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "secrets" | "configmaps" | "persistentvolumeclaims") => {
            if !read {
                return deny(&format!("cannot {} {}", a.verb, a.resource));
            }
            if a.resource == "secrets" && a.verb == "get" && a.path == KUBELET_ACCESS_PATH {
                return Decision::Allow;
            }
            if a.resource == "secrets"
                && matches!(a.verb.as_str(), "list" | "watch")
                && query_param(query, "fieldSelector").as_deref() == Some("type=kubernetes.io/tls")
            {
                return Decision::Allow;
            }
            if a.verb != "get" || a.name.is_empty() {
                return deny(&format!(
                    "can only get individual {} its pods use",
                    a.resource
                ));
            }
            let used = pods_in(inner, &a.namespace).await.iter().any(|p| {
                if !on_node(p, node) {
                    return false;
                }
                let (s, c, v) = refs(p);
                let names = match a.resource.as_str() {
                    "secrets" => s,
                    "configmaps" => c,
                    _ => v,
                };
                names.contains(&a.name)
            });
            if used {
                Decision::Allow
            } else {
                deny(&format!(
                    "has no relationship to {} '{}/{}'",
                    a.resource.trim_end_matches('s'),
                    a.namespace,
                    a.name
                ))
            }
        }
        // Tokens only for the ServiceAccounts of its own pods (their projected volumes).
        ("", "serviceaccounts") if a.subresource == "token" => {
            if a.verb != "create" {
                return deny("can only create tokens for service accounts");
            }
            let used = pods_in(inner, &a.namespace).await.iter().any(|p| {
                on_node(p, node)
                    && p.pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        .unwrap_or("default")
                        == a.name
            });
            if used {
                Decision::Allow
            } else {
                deny(&format!(
                    "has no relationship to serviceaccount '{}/{}'",
                    a.namespace, a.name
                ))
            }
        }
        ("", "nodes") if !read && a.verb != "create" => {
            if a.name == node {
                Decision::NoOpinion
            } else {
                deny("can only modify its own Node object")
            }
        }
        ("coordination.k8s.io", "leases") if !read && a.namespace == "kube-node-lease" => {
            // Its heartbeat, and the activity Leases of its node proxy and gateway (scale
            // to zero).
            let activity = |c: &str| a.name.strip_prefix(c) == Some(node);
            if a.name == node
                || activity("bosun-proxy-")
                || activity("bosun-gateway-")
                || (a.verb == "create" && a.name.is_empty())
            {
                Decision::NoOpinion
            } else {
                deny("can only modify its own Lease")
            }
        }
        ("", "pods") if a.subresource == "status" && !read => {
            let key = format!("/registry/core/pods/{}/{}", a.namespace, a.name);
            let pod: Option<Value> = match inner.store.get(&key).await {
                Ok(Some(kv)) => serde_json::from_slice(&kv.value).ok(),
                _ => None,
            };
            match pod {
                Some(p) if on_node(&p, node) => Decision::NoOpinion,
                Some(_) => deny("can only update the status of pods bound to it"),
                None => Decision::NoOpinion,
            }
        }
        _ => Decision::NoOpinion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_references() {
        let pod = json!({"spec": {
            "volumes": [{"name": "a", "secret": {"secretName": "s1"}},
                        {"name": "b", "configMap": {"name": "c1"}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "v1"}},
                        {"name": "d", "projected": {"sources": [{"secret": {"name": "s2"}},
                            {"configMap": {"name": "kube-root-ca.crt"}}]}}],
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "x",
                "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "c2"}}]}]}});
        let (s, c, v) = refs(&pod);
        assert_eq!(s, vec!["s1", "s2", "pull", "s3"]);
        assert_eq!(c, vec!["c1", "kube-root-ca.crt", "c2"]);
        assert_eq!(v, vec!["v1"]);
    }

    #[test]
    fn node_names() {
        let n = User {
            name: "system:node:n1".into(),
            groups: vec![NODES.into()],
        };
        assert_eq!(node_name(&n), Some("n1"));
        let fake = User {
            name: "system:node:n1".into(),
            groups: vec![],
        };
        assert_eq!(node_name(&fake), None);
    }
}
