//! Object-state metrics under kube-state-metrics' names and labels (`kube_pod_*`,
//! `kube_deployment_*`, `kube_node_*`), rendered from the watch caches of Pods, Deployments
//! and Nodes. Served at `/metrics/kube-state` on the console listener and scraped from there
//! as job `kube-state-metrics`, so the standard dashboards and alerting rules work
//! unchanged, and an outside Prometheus can scrape the same endpoint.

use std::fmt::Write;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store as Cache;

/// The watch caches the renderer reads.
#[derive(Clone)]
pub struct Caches {
    pub pods: Cache<Pod>,
    pub nodes: Cache<Node>,
    pub deployments: Cache<Deployment>,
}

impl Caches {
    pub fn render(&self) -> String {
        render(
            &self.pods.state(),
            &self.deployments.state(),
            &self.nodes.state(),
        )
    }
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        self.text.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            self.text.push_str(k);
            self.text.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        let _ = writeln!(self.text, "}} {value}");
    }
}

fn b(x: bool) -> f64 {
    if x { 1.0 } else { 0.0 }
}

/// The exposition text for `pods`, `deployments` and `nodes`.
pub fn render(pods: &[Arc<Pod>], deployments: &[Arc<Deployment>], nodes: &[Arc<Node>]) -> String {
    let mut o = Out {
        text: String::with_capacity(256 * (pods.len() + deployments.len() + nodes.len()) + 1024),
    };
    render_pods(&mut o, pods);
    render_deployments(&mut o, deployments);
    render_nodes(&mut o, nodes);
    o.text
}

const PHASES: [&str; 5] = ["Pending", "Succeeded", "Failed", "Unknown", "Running"];

fn render_pods(o: &mut Out, pods: &[Arc<Pod>]) {
    let meta = |p: &Pod| {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
            p.metadata.uid.clone().unwrap_or_default(),
        )
    };
    o.family("kube_pod_info", "gauge", "Information about pod.");
    for p in pods {
        let (ns, name, uid) = meta(p);
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let owner = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        let (ok, on) = owner
            .map(|r| (r.kind.as_str(), r.name.as_str()))
            .unwrap_or(("<none>", "<none>"));
        o.sample(
            "kube_pod_info",
            &[
                ("namespace", &ns),
                ("pod", &name),
                ("uid", &uid),
                ("node", &node),
                ("pod_ip", &ip),
                ("created_by_kind", ok),
                ("created_by_name", on),
            ],
            1.0,
        );
    }
    o.family(
        "kube_pod_owner",
        "gauge",
        "Information about the Pod's owner.",
    );
    for p in pods {
        let (ns, name, uid) = meta(p);
        for r in p.metadata.owner_references.iter().flatten() {
            let ctl = if r.controller == Some(true) {
                "true"
            } else {
                "false"
            };
            o.sample(
                "kube_pod_owner",
                &[
                    ("namespace", &ns),
                    ("pod", &name),
                    ("uid", &uid),
                    ("owner_kind", &r.kind),
                    ("owner_name", &r.name),
                    ("owner_is_controller", ctl),
                ],
                1.0,
            );
        }
    }
    o.family("kube_pod_status_phase", "gauge", "The pods current phase.");
    for p in pods {
        let (ns, name, uid) = meta(p);
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        for ph in PHASES {
            o.sample(
                "kube_pod_status_phase",
                &[
                    ("namespace", &ns),
                    ("pod", &name),
                    ("uid", &uid),
                    ("phase", ph),
                ],
                b(phase == ph),
            );
        }
    }
    o.family(
        "kube_pod_status_ready",
        "gauge",
        "Describes whether the pod is ready to serve requests.",
    );
    for p in pods {
        let (ns, name, uid) = meta(p);
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.to_ascii_lowercase());
        let Some(ready) = ready else { continue };
        for cond in ["true", "false", "unknown"] {
            o.sample(
                "kube_pod_status_ready",
                &[
                    ("namespace", &ns),
                    ("pod", &name),
                    ("uid", &uid),
                    ("condition", cond),
                ],
                b(ready == cond),
            );
        }
    }
    type Stat = k8s_openapi::api::core::v1::ContainerStatus;
    let containers = |p: &Pod| -> Vec<Stat> {
        let s = p.status.as_ref();
        s.and_then(|s| s.init_container_statuses.clone())
            .into_iter()
            .flatten()
            .chain(
                s.and_then(|s| s.container_statuses.clone())
                    .into_iter()
                    .flatten(),
            )
            .collect()
    };
    let per_container =
        |o: &mut Out, name_: &str, kind: &str, help: &str, f: &dyn Fn(&Stat) -> Option<f64>| {
            o.family(name_, kind, help);
            for p in pods {
                let (ns, name, uid) = meta(p);
                for c in containers(p) {
                    if let Some(v) = f(&c) {
                        o.sample(
                            name_,
                            &[
                                ("namespace", &ns),
                                ("pod", &name),
                                ("uid", &uid),
                                ("container", &c.name),
                            ],
                            v,
                        );
                    }
                }
            }
        };
    per_container(
        o,
        "kube_pod_container_status_restarts_total",
        "counter",
        "The number of container restarts per container.",
        &|c| Some(c.restart_count as f64),
    );
    per_container(
        o,
        "kube_pod_container_status_ready",
        "gauge",
        "Describes whether the containers readiness check succeeded.",
        &|c| Some(b(c.ready)),
    );
    per_container(
        o,
        "kube_pod_container_status_running",
        "gauge",
        "Describes whether the container is currently in running state.",
        &|c| Some(b(c.state.as_ref().is_some_and(|s| s.running.is_some()))),
    );
    per_container(
        o,
        "kube_pod_container_status_waiting",
        "gauge",
        "Describes whether the container is currently in waiting state.",
        &|c| Some(b(c.state.as_ref().is_some_and(|s| s.waiting.is_some()))),
    );
    per_container(
        o,
        "kube_pod_container_status_terminated",
        "gauge",
        "Describes whether the container is currently in terminated state.",
        &|c| Some(b(c.state.as_ref().is_some_and(|s| s.terminated.is_some()))),
    );
    // Reasons: one series for the current reason only, as kube-state-metrics 2 does.
    let reasons = |o: &mut Out, name_: &str, help: &str, f: &dyn Fn(&Stat) -> Option<String>| {
        o.family(name_, "gauge", help);
        for p in pods {
            let (ns, name, uid) = meta(p);
            for c in containers(p) {
                if let Some(r) = f(&c).filter(|r| !r.is_empty()) {
                    o.sample(
                        name_,
                        &[
                            ("namespace", &ns),
                            ("pod", &name),
                            ("uid", &uid),
                            ("container", &c.name),
                            ("reason", &r),
                        ],
                        1.0,
                    );
                }
            }
        }
    };
    reasons(
        o,
        "kube_pod_container_status_waiting_reason",
        "Describes the reason the container is currently in waiting state.",
        &|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone(),
    );
    reasons(
        o,
        "kube_pod_container_status_terminated_reason",
        "Describes the reason the container is currently in terminated state.",
        &|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone(),
    );
    reasons(
        o,
        "kube_pod_container_status_last_terminated_reason",
        "Describes the last reason the container was in terminated state.",
        &|c| c.last_state.as_ref()?.terminated.as_ref()?.reason.clone(),
    );
}

fn render_deployments(o: &mut Out, deployments: &[Arc<Deployment>]) {
    type F = fn(&Deployment) -> Option<f64>;
    let gauges: [(&str, &str, F); 8] = [
        (
            "kube_deployment_spec_replicas",
            "Number of desired pods for a deployment.",
            |d| Some(d.spec.as_ref()?.replicas.unwrap_or(1) as f64),
        ),
        (
            "kube_deployment_status_replicas",
            "The number of replicas per deployment.",
            |d| Some(d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) as f64),
        ),
        (
            "kube_deployment_status_replicas_ready",
            "The number of ready replicas per deployment.",
            |d| {
                Some(
                    d.status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0) as f64,
                )
            },
        ),
        (
            "kube_deployment_status_replicas_available",
            "The number of available replicas per deployment.",
            |d| {
                Some(
                    d.status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0) as f64,
                )
            },
        ),
        (
            "kube_deployment_status_replicas_unavailable",
            "The number of unavailable replicas per deployment.",
            |d| {
                Some(
                    d.status
                        .as_ref()
                        .and_then(|s| s.unavailable_replicas)
                        .unwrap_or(0) as f64,
                )
            },
        ),
        (
            "kube_deployment_status_replicas_updated",
            "The number of updated replicas per deployment.",
            |d| {
                Some(
                    d.status
                        .as_ref()
                        .and_then(|s| s.updated_replicas)
                        .unwrap_or(0) as f64,
                )
            },
        ),
        (
            "kube_deployment_status_observed_generation",
            "The generation observed by the deployment controller.",
            |d| Some(d.status.as_ref()?.observed_generation? as f64),
        ),
        (
            "kube_deployment_metadata_generation",
            "Sequence number representing a specific generation of the desired state.",
            |d| Some(d.metadata.generation? as f64),
        ),
    ];
    for (metric, help, f) in gauges {
        o.family(metric, "gauge", help);
        for d in deployments {
            if let Some(v) = f(d) {
                let ns = d.metadata.namespace.clone().unwrap_or_default();
                let name = d.metadata.name.clone().unwrap_or_default();
                o.sample(metric, &[("namespace", &ns), ("deployment", &name)], v);
            }
        }
    }
    o.family(
        "kube_deployment_spec_paused",
        "gauge",
        "Whether the deployment is paused and will not be processed by the deployment controller.",
    );
    for d in deployments {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        o.sample(
            "kube_deployment_spec_paused",
            &[("namespace", &ns), ("deployment", &name)],
            b(paused),
        );
    }
    o.family(
        "kube_deployment_status_condition",
        "gauge",
        "The current status conditions of a deployment.",
    );
    for d in deployments {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        for c in d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
        {
            let reason = c.reason.clone().unwrap_or_default();
            for st in ["true", "false", "unknown"] {
                o.sample(
                    "kube_deployment_status_condition",
                    &[
                        ("namespace", &ns),
                        ("deployment", &name),
                        ("condition", &c.type_),
                        ("status", st),
                        ("reason", &reason),
                    ],
                    b(c.status.eq_ignore_ascii_case(st)),
                );
            }
        }
    }
}

fn render_nodes(o: &mut Out, nodes: &[Arc<Node>]) {
    o.family(
        "kube_node_info",
        "gauge",
        "Information about a cluster node.",
    );
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let info = n.status.as_ref().and_then(|s| s.node_info.clone());
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .unwrap_or_default();
        let get = |f: fn(&k8s_openapi::api::core::v1::NodeSystemInfo) -> String| {
            info.as_ref().map(f).unwrap_or_default()
        };
        let pod_cidr = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .unwrap_or_default();
        o.sample(
            "kube_node_info",
            &[
                ("node", &name),
                ("kernel_version", &get(|i| i.kernel_version.clone())),
                ("os_image", &get(|i| i.os_image.clone())),
                (
                    "container_runtime_version",
                    &get(|i| i.container_runtime_version.clone()),
                ),
                ("kubelet_version", &get(|i| i.kubelet_version.clone())),
                ("internal_ip", &ip),
                ("pod_cidr", &pod_cidr),
            ],
            1.0,
        );
    }
    o.family(
        "kube_node_spec_unschedulable",
        "gauge",
        "Whether a node can schedule new pods.",
    );
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let u = n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        o.sample("kube_node_spec_unschedulable", &[("node", &name)], b(u));
    }
    o.family(
        "kube_node_status_condition",
        "gauge",
        "The condition of a cluster node.",
    );
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        for c in n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
        {
            for st in ["true", "false", "unknown"] {
                o.sample(
                    "kube_node_status_condition",
                    &[("node", &name), ("condition", &c.type_), ("status", st)],
                    b(c.status.eq_ignore_ascii_case(st)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_looping_pod_and_not_ready_node() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                          "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "r", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "c", "ready": false, "restartCount": 4, "image": "", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }))
        .unwrap();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}
        }))
        .unwrap();
        let text = render(&[Arc::new(pod)], &[], &[Arc::new(node)]);
        let (samples, bad) = crate::textparse::parse(&text);
        assert_eq!(bad, 0, "{text}");
        let find = |name: &str, want: &[(&str, &str)]| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && want
                            .iter()
                            .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
                })
                .map(|s| s.value)
        };
        assert_eq!(
            find(
                "kube_pod_container_status_restarts_total",
                &[("pod", "p"), ("container", "c")]
            ),
            Some(4.0)
        );
        assert_eq!(
            find(
                "kube_pod_container_status_waiting_reason",
                &[("reason", "CrashLoopBackOff"), ("namespace", "ns")]
            ),
            Some(1.0)
        );
        assert_eq!(
            find("kube_pod_status_phase", &[("phase", "Running")]),
            Some(1.0)
        );
        assert_eq!(
            find(
                "kube_pod_info",
                &[("created_by_kind", "ReplicaSet"), ("node", "n1")]
            ),
            Some(1.0)
        );
        assert_eq!(
            find(
                "kube_node_status_condition",
                &[("node", "n1"), ("condition", "Ready"), ("status", "true")]
            ),
            Some(0.0)
        );
        assert_eq!(
            find(
                "kube_node_status_condition",
                &[("condition", "Ready"), ("status", "false")]
            ),
            Some(1.0)
        );
    }
}
