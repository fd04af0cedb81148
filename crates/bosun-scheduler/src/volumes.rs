//! VolumeBinding filter: a pod whose claim is bound to a volume pinned to some nodes (a
//! local-path volume lives on one node) may only go to those nodes. Unbound claims of a
//! `WaitForFirstConsumer` class follow the pod: the volume binder provisions where the pod
//! lands.

use std::sync::Arc;

use bosun_api::matching::node_affinity_matches;
use bosun_watch::Informer;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

use crate::plugins::{CycleState, Filter, NodeInfo, Reject};

pub struct VolumeBinding {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
}

impl VolumeBinding {
    /// Starts the claim and volume caches and waits for their first list.
    pub async fn start(client: &Client, stop: CancellationToken) -> Self {
        let claims = Informer::start(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            stop.clone(),
        );
        let volumes = Informer::start(Api::<PersistentVolume>::all(client.clone()), stop);
        claims.ready().await;
        volumes.ready().await;
        VolumeBinding {
            claims: claims.store(),
            volumes: volumes.store(),
        }
    }

    pub fn new(claims: Store<PersistentVolumeClaim>, volumes: Store<PersistentVolume>) -> Self {
        VolumeBinding { claims, volumes }
    }
}

impl Filter for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &CycleState) -> Result<(), Reject> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut reasons = Vec::new();
        let claims = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref());
        for c in claims {
            // A claim the cache has not seen yet (created just before the pod) does not
            // block: the agent waits for it to be bound before starting the pod.
            let Some(claim): Option<Arc<PersistentVolumeClaim>> =
                self.claims.get(&ObjectRef::new(&c.claim_name).within(ns))
            else {
                continue;
            };
            if claim.metadata.deletion_timestamp.is_some() {
                reasons.push(format!(
                    "persistentvolumeclaim \"{}\" is being deleted",
                    c.claim_name
                ));
                continue;
            }
            let Some(vname) = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            match self.volumes.get(&ObjectRef::new(vname)) {
                Some(v) if !node_affinity_matches(&v, &node.node) => {
                    reasons.push("node(s) had volume node affinity conflict".into());
                }
                _ => {}
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            // No preemption moves a volume (`UnschedulableAndUnresolvable` upstream).
            Err(Reject {
                reasons,
                unresolvable: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimSpec,
        PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, PodSpec, Volume,
        VolumeNodeAffinity,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(String::from),
            ..Default::default()
        }
    }

    fn node(name: &str) -> NodeInfo {
        let mut m = meta(name, None);
        m.labels = Some([("kubernetes.io/hostname".to_string(), name.to_string())].into());
        NodeInfo::new(
            Arc::new(Node {
                metadata: m,
                ..Default::default()
            }),
            Vec::new(),
        )
    }

    #[test]
    fn bound_claim_pins_the_pod_to_its_volume_node() {
        let mut claims: Writer<PersistentVolumeClaim> = Writer::default();
        let mut volumes: Writer<PersistentVolume> = Writer::default();
        claims.apply_watcher_event(&Event::Apply(PersistentVolumeClaim {
            metadata: meta("data", Some("default")),
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some("pv1".into()),
                ..Default::default()
            }),
            status: None,
        }));
        volumes.apply_watcher_event(&Event::Apply(PersistentVolume {
            metadata: meta("pv1", None),
            spec: Some(PersistentVolumeSpec {
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec!["n1".into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }));
        let f = VolumeBinding::new(claims.as_reader(), volumes.as_reader());
        let pod = |claim: &str| Pod {
            metadata: meta("p", Some("default")),
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "v".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        };
        assert!(f.filter(&pod("data"), &node("n1"), &None).is_ok());
        assert_eq!(
            f.filter(&pod("data"), &node("n2"), &None)
                .unwrap_err()
                .reasons,
            vec!["node(s) had volume node affinity conflict".to_string()]
        );
        // A claim not seen yet does not block.
        assert!(f.filter(&pod("other"), &node("n2"), &None).is_ok());
    }
}
