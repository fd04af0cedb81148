//! VolumeBinding filter: a pod whose claim is bound to a volume pinned to some nodes (a
//! local-path volume lives on one node) may only go to those nodes. Unbound claims of a
//! `WaitForFirstConsumer` class follow the pod: the volume binder provisions where the pod
//! lands.

use std::sync::Arc;

use bosun_controllers::informer::Informer;
use bosun_controllers::storage::logic::node_affinity_matches;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

use crate::plugins::{Filter, NodeInfo};

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

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
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
            Err(reasons)
        }
    }
}
