//! The default ClusterRoles and ClusterRoleBindings Kubernetes creates at start
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`), trimmed to the resources bosun serves.
//! They carry `rbac.authorization.kubernetes.io/autoupdate: "true"`; missing ones are created
//! at every start, existing ones are left as the administrator keeps them.

use serde_json::{Value, json};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn meta(name: &str, labels: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    json!({"name": name, "labels": labels,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(name, labels), "rules": rules})
}

fn aggregated(name: &str, labels: Value, selector_label: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(name, labels),
        "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {selector_label: "true"}}]},
        "rules": []})
}

fn binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(name, json!({})),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects})
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn concat(a: &[&'static str], b: &[&'static str]) -> Vec<&'static str> {
    a.iter().chain(b).copied().collect()
}

const AGG_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGG_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGG_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// Default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let rw = concat(READ, WRITE);
    let view_core = [
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "pods",
        "pods/log",
        "pods/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "serviceaccounts",
        "services",
        "services/status",
        "bindings",
        "events",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces/status",
    ];
    let apps = [
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let batch = ["cronjobs", "cronjobs/status", "jobs", "jobs/status"];
    let gateway = [
        "gateways",
        "gateways/status",
        "httproutes",
        "httproutes/status",
    ];
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", json!({}), AGG_ADMIN),
        aggregated("edit", json!({AGG_ADMIN: "true"}), AGG_EDIT),
        aggregated(
            "view",
            json!({AGG_ADMIN: "true", AGG_EDIT: "true"}),
            AGG_VIEW,
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({AGG_ADMIN: "true"}),
            vec![
                rule(&[""], &["namespaces"], READ),
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                    &rw,
                ),
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({AGG_EDIT: "true"}),
            vec![
                rule(
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                    &concat(
                        &["create", "delete", "deletecollection", "patch", "update"],
                        &[],
                    ),
                ),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                        "endpoints",
                    ],
                    &rw,
                ),
                rule(&[""], &["secrets"], READ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(&["apps"], &apps, &rw),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], &rw),
                rule(&["batch"], &batch, &rw),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                    &rw,
                ),
                rule(&["policy"], &["poddisruptionbudgets"], &rw),
                rule(&["gateway.networking.k8s.io"], &gateway, &rw),
                rule(&["coordination.k8s.io"], &["leases"], &rw),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({AGG_VIEW: "true"}),
            vec![
                rule(&[""], &view_core, READ),
                rule(&[""], &["namespaces"], READ),
                rule(&["apps"], &apps, READ),
                rule(
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                    READ,
                ),
                rule(&["batch"], &batch, READ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    READ,
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                    READ,
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["gateway.networking.k8s.io"], &gateway, READ),
                rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
                rule(&["custom.metrics.k8s.io"], &["*"], READ),
                rule(&["external.metrics.k8s.io"], &["*"], READ),
            ],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:node-bootstrapper",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        // What a node's agent, node proxy, DNS and gateway use; the Node authorizer
        // narrows Secrets, ConfigMaps, PVCs, Nodes, Leases and pod status to the node's own.
        cluster_role(
            "system:node",
            json!({}),
            vec![
                rule(&["*"], &["*"], READ),
                rule(&[""], &["nodes", "nodes/status"], &rw),
                rule(
                    &[""],
                    &["pods", "pods/status", "pods/eviction", "events"],
                    &rw,
                ),
                rule(&["events.k8s.io"], &["events"], &rw),
                rule(&["coordination.k8s.io"], &["leases"], &rw),
                rule(
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                    &["create", "get", "list", "watch"],
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses/status", "ingressclasses"],
                    &rw,
                ),
                rule(
                    &["gateway.networking.k8s.io"],
                    &[
                        "gateways/status",
                        "httproutes/status",
                        "gatewayclasses/status",
                    ],
                    &rw,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
    ]
}

/// Default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            vec![group("system:masters")],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            vec![group("system:authenticated")],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            vec![group("system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            vec![group("system:bootstrappers")],
        ),
        binding("system:node", "system:node", vec![group("system:nodes")]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_decodes_as_rbac_types() {
        for v in cluster_roles() {
            let _: k8s_openapi::api::rbac::v1::ClusterRole =
                serde_json::from_value(v.clone()).unwrap();
        }
        for v in cluster_role_bindings() {
            let _: k8s_openapi::api::rbac::v1::ClusterRoleBinding =
                serde_json::from_value(v).unwrap();
        }
    }
}
