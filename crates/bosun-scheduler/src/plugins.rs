//! Filter and score plugins, the two seams of a scheduling decision (as in kube-scheduler's
//! framework): filters rule nodes out with a reason, scores rank the survivors.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::resources::{Resources, allocatable, nonzero_requests, pod_requests};

/// A node with the pods bound to it (including ones this scheduler just bound).
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub pods: Vec<Arc<Pod>>,
}

impl NodeInfo {
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    pub fn requested(&self) -> Resources {
        let mut r = Resources::default();
        for p in &self.pods {
            r.add(&pod_requests(p));
        }
        r
    }

    fn nonzero_requested(&self) -> Resources {
        let mut r = Resources::default();
        for p in &self.pods {
            r.add(&nonzero_requests(p));
        }
        r
    }
}

/// Rules a node out for a pod; the error is the reason shown in "0/N nodes are available".
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    /// `Err` holds one or more reasons (one per missing resource, for example).
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>>;
}

/// Ranks a feasible node from 0 to 100; `feasible` lets a plugin compare across nodes.
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, feasible: &[&NodeInfo]) -> i64;
}

/// The node is Ready and accepts new pods.
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }
    fn filter(&self, _pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        if node.node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
        let ready = node
            .node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready {
            Ok(())
        } else {
            Err(vec!["node(s) were not ready".into()])
        }
    }
}

pub use bosun_controllers::util::tolerates;

/// NoSchedule and NoExecute taints must be tolerated.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[]);
        let taints = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[]);
        for taint in taints {
            if !matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") {
                continue;
            }
            if !tolerations.iter().any(|t| tolerates(t, taint)) {
                return Err(vec![format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.as_deref().unwrap_or("")
                )]);
            }
        }
        Ok(())
    }
}

/// `spec.nodeSelector` and required node affinity on labels.
pub struct NodeSelector;

fn match_expression(
    labels: &BTreeMap<String, String>,
    e: &k8s_openapi::api::core::v1::NodeSelectorRequirement,
) -> bool {
    let v = labels.get(&e.key);
    let values = e.values.as_deref().unwrap_or(&[]);
    match e.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if e.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

impl Filter for NodeSelector {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let empty = BTreeMap::new();
        let labels = node.node.metadata.labels.as_ref().unwrap_or(&empty);
        let spec = pod.spec.as_ref();
        let selector_ok = spec
            .and_then(|s| s.node_selector.as_ref())
            .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
        // Terms are ORed; expressions within a term ANDed.
        let affinity_ok = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|req| {
                req.node_selector_terms.iter().any(|t| {
                    t.match_expressions
                        .iter()
                        .flatten()
                        .all(|e| match_expression(labels, e))
                })
            });
        if selector_ok && affinity_ok {
            Ok(())
        } else {
            Err(vec![
                "node(s) didn't match Pod's node affinity/selector".into(),
            ])
        }
    }
}

/// The pod's requests fit into allocatable minus what the node's pods already request.
pub struct ResourcesFit;

impl Filter for ResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let want = pod_requests(pod);
        let have = allocatable(&node.node);
        let used = node.requested();
        let mut reasons = Vec::new();
        if used.pods + 1 > have.pods {
            reasons.push("Too many pods".to_string());
        }
        if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > have.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            reasons.push("Insufficient memory".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|h| *h > 0)?;
            let ip = p
                .host_ip
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            Some((ip, p.protocol.clone().unwrap_or_else(|| "TCP".into()), hp))
        })
        .collect()
}

/// Requested host ports are free on the node (0.0.0.0 conflicts with every address).
pub struct HostPorts;

impl Filter for HostPorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let wanted = host_ports(pod);
        if wanted.is_empty() {
            return Ok(());
        }
        let used: Vec<_> = node.pods.iter().flat_map(|p| host_ports(p)).collect();
        let conflict = wanted.iter().any(|(ip, proto, port)| {
            used.iter().any(|(uip, uproto, uport)| {
                port == uport
                    && proto == uproto
                    && (ip == uip || ip == "0.0.0.0" || uip == "0.0.0.0")
            })
        });
        if conflict {
            Err(vec![
                "node(s) didn't have free ports for the requested pod ports".into(),
            ])
        } else {
            Ok(())
        }
    }
}

/// Prefers nodes with the most room left after placing the pod (`LeastAllocated`).
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesLeastAllocated"
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, _feasible: &[&NodeInfo]) -> i64 {
        let have = allocatable(&node.node);
        let mut used = node.nonzero_requested();
        used.add(&nonzero_requests(pod));
        let part = |cap: i64, req: i64| {
            if cap <= 0 || req > cap {
                0
            } else {
                (cap - req) * 100 / cap
            }
        };
        (part(have.milli_cpu, used.milli_cpu) + part(have.memory, used.memory)) / 2
    }
}

fn owner_uid(p: &Pod) -> Option<&str> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Spreads pods of the same controller (ReplicaSet ...) across nodes (`SelectorSpread`).
pub struct SpreadByOwner;

impl Score for SpreadByOwner {
    fn name(&self) -> &'static str {
        "SelectorSpread"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, feasible: &[&NodeInfo]) -> i64 {
        let Some(owner) = owner_uid(pod) else {
            return 100;
        };
        let count = |n: &NodeInfo| {
            n.pods
                .iter()
                .filter(|p| owner_uid(p) == Some(owner))
                .count() as i64
        };
        let max = feasible.iter().map(|n| count(n)).max().unwrap_or(0);
        if max == 0 {
            return 100;
        }
        100 * (max - count(node)) / max
    }
}

pub fn default_filters() -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(NodeReady),
        Box::new(NodeSelector),
        Box::new(TaintToleration),
        Box::new(ResourcesFit),
        Box::new(HostPorts),
    ]
}

pub fn default_scores() -> Vec<Box<dyn Score>> {
    vec![Box::new(LeastAllocated), Box::new(SpreadByOwner)]
}

/// Outcome of scheduling one pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    Node(String),
    /// The "0/N nodes are available: ..." message.
    Unschedulable(String),
}

/// Runs filters then scores over `nodes`; ties go to the node whose name sorts first.
pub fn place(
    pod: &Pod,
    nodes: &[NodeInfo],
    filters: &[Box<dyn Filter>],
    scores: &[Box<dyn Score>],
) -> Placement {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    for n in nodes {
        // The first failing filter explains a node, as upstream reports it.
        match filters.iter().find_map(|f| f.filter(pod, n).err()) {
            Some(rs) => {
                for r in rs {
                    *reasons.entry(r).or_default() += 1;
                }
            }
            None => feasible.push(n),
        }
    }
    if feasible.is_empty() {
        let mut msg = format!("0/{} nodes are available", nodes.len());
        if !reasons.is_empty() {
            let parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
            msg.push_str(": ");
            msg.push_str(&parts.join(", "));
        }
        msg.push('.');
        return Placement::Unschedulable(msg);
    }
    let best = feasible
        .iter()
        .map(|n| {
            let total: i64 = scores
                .iter()
                .map(|s| s.weight() * s.score(pod, n, &feasible))
                .sum();
            (total, n.name())
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name.to_string())
        .unwrap_or_default();
    Placement::Node(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, NodeCondition, NodeSpec, NodeStatus, PodSpec,
        ResourceRequirements, Taint, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn node(name: &str, cpu: &str, mem: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("kubernetes.io/hostname".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(mem.into())),
                        ("pods".to_string(), Quantity("110".into())),
                    ]
                    .into(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(cpu: &str, mem: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(
                            [
                                ("cpu".to_string(), Quantity(cpu.into())),
                                ("memory".to_string(), Quantity(mem.into())),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn info(n: Node, pods: Vec<Pod>) -> NodeInfo {
        NodeInfo {
            node: Arc::new(n),
            pods: pods.into_iter().map(Arc::new).collect(),
        }
    }

    fn run(p: &Pod, nodes: &[NodeInfo]) -> Placement {
        place(p, nodes, &default_filters(), &default_scores())
    }

    #[test]
    fn insufficient_cpu_message() {
        let nodes = [info(node("n1", "1", "1Gi"), vec![pod("800m", "100Mi")])];
        assert_eq!(
            run(&pod("500m", "10Mi"), &nodes),
            Placement::Unschedulable("0/1 nodes are available: 1 Insufficient cpu.".into())
        );
        assert_eq!(
            run(&pod("200m", "10Mi"), &nodes),
            Placement::Node("n1".into())
        );
    }

    #[test]
    fn reasons_are_counted_per_node() {
        let mut tainted = node("n2", "4", "4Gi");
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]);
        let mut unready = node("n3", "4", "4Gi");
        unready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let nodes = [
            info(node("n1", "1", "64Mi"), vec![]),
            info(tainted, vec![]),
            info(unready, vec![]),
        ];
        assert_eq!(
            run(&pod("2", "128Mi"), &nodes),
            Placement::Unschedulable(
                "0/3 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were not ready."
                    .into()
            )
        );
    }

    #[test]
    fn tolerations_allow_tainted_nodes() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let eq = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("db".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        };
        assert!(tolerates(&eq, &taint));
        let wrong = Toleration {
            value: Some("web".into()),
            ..eq.clone()
        };
        assert!(!tolerates(&wrong, &taint));
        let exists_all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists_all, &taint));
        let other_effect = Toleration {
            effect: Some("NoExecute".into()),
            ..eq
        };
        assert!(!tolerates(&other_effect, &taint));
    }

    #[test]
    fn node_selector_and_unschedulable() {
        let mut p = pod("100m", "10Mi");
        p.spec.as_mut().unwrap().node_selector =
            Some([("kubernetes.io/hostname".to_string(), "n2".to_string())].into());
        let mut cordoned = node("n3", "4", "4Gi");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let nodes = [
            info(node("n1", "4", "4Gi"), vec![]),
            info(node("n2", "4", "4Gi"), vec![]),
            info(cordoned, vec![]),
        ];
        assert_eq!(run(&p, &nodes), Placement::Node("n2".into()));
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        assert_eq!(
            run(&p, &nodes),
            Placement::Unschedulable(
                "0/3 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 node(s) were unschedulable."
                    .into()
            )
        );
    }

    #[test]
    fn host_port_conflicts() {
        let with_port = |ip: Option<&str>, port: i32| {
            let mut p = pod("10m", "1Mi");
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(port),
                host_ip: ip.map(Into::into),
                ..Default::default()
            }]);
            p
        };
        let n = info(
            node("n1", "4", "4Gi"),
            vec![with_port(Some("10.0.0.1"), 8080)],
        );
        assert!(HostPorts.filter(&with_port(None, 8080), &n).is_err());
        assert!(
            HostPorts
                .filter(&with_port(Some("10.0.0.2"), 8080), &n)
                .is_ok()
        );
        assert!(HostPorts.filter(&with_port(None, 8081), &n).is_ok());
    }

    #[test]
    fn least_allocated_prefers_emptier_node() {
        let busy = info(node("a", "2", "2Gi"), vec![pod("1500m", "1Gi")]);
        let idle = info(node("b", "2", "2Gi"), vec![]);
        let p = pod("100m", "100Mi");
        let f = [&busy, &idle];
        assert!(LeastAllocated.score(&p, &idle, &f) > LeastAllocated.score(&p, &busy, &f));
        assert_eq!(
            run(&p, &[busy.clone(), idle.clone()]),
            Placement::Node("b".into())
        );
    }

    #[test]
    fn spreads_pods_of_one_owner() {
        let owned = |name: &str| {
            let mut p = pod("10m", "1Mi");
            p.metadata.name = Some(name.into());
            p.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]);
            p
        };
        // Node a is emptier in resources but already runs a replica: spreading wins.
        let a = info(node("a", "8", "8Gi"), vec![owned("x")]);
        let b = info(node("b", "2", "2Gi"), vec![pod("100m", "100Mi")]);
        let f = [&a, &b];
        assert_eq!(SpreadByOwner.score(&owned("y"), &a, &f), 0);
        assert_eq!(SpreadByOwner.score(&owned("y"), &b, &f), 100);
        assert_eq!(run(&owned("y"), &[a, b]), Placement::Node("b".into()));
    }

    #[test]
    fn ties_break_by_name() {
        let nodes = [
            info(node("b", "4", "4Gi"), vec![]),
            info(node("a", "4", "4Gi"), vec![]),
        ];
        assert_eq!(run(&pod("1", "1Gi"), &nodes), Placement::Node("a".into()));
    }
}
