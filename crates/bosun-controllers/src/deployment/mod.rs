//! Deployment controller: owns ReplicaSets and rolls them as Kubernetes does.

pub mod logic;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::events::Recorder;
use crate::util::{LabelMatcher, controller_of, is_not_found};
pub use sync::{DeploymentOps, sync_deployment};

/// Periodic re-check, the informer resync of upstream: a safety net, not the trigger.
const RESYNC: Duration = Duration::from_secs(300);

struct Ctx {
    client: Client,
    recorder: Recorder,
}

/// [`DeploymentOps`] against the API server.
pub struct KubeOps<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
}

#[async_trait]
impl DeploymentOps for KubeOps<'_> {
    async fn list_replica_sets(&self, ns: &str) -> Result<Vec<ReplicaSet>> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
        Ok(api.list(&ListParams::default()).await?.items)
    }

    async fn list_pods(&self, ns: &str, selector: &LabelMatcher) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut lp = ListParams::default();
        if let Some(q) = selector.query() {
            lp = lp.labels(&q);
        }
        Ok(api.list(&lp).await?.items)
    }

    async fn get_deployment(&self, ns: &str, name: &str) -> Result<Option<Deployment>> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    async fn create_replica_set(&self, rs: &ReplicaSet) -> Result<Option<ReplicaSet>> {
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        match api.create(&PostParams::default(), rs).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if crate::util::is_conflict(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_replica_set(&self, ns: &str, name: &str) -> Result<Option<ReplicaSet>> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    async fn update_replica_set(&self, rs: &ReplicaSet) -> Result<ReplicaSet> {
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        Ok(api
            .replace(&rs.name_any(), &PostParams::default(), rs)
            .await?)
    }

    async fn delete_replica_set(&self, rs: &ReplicaSet) -> Result<()> {
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: rs.uid().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&rs.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn update_status(&self, d: &Deployment) -> Result<Deployment> {
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        Ok(api
            .replace_status(&d.name_any(), &PostParams::default(), d)
            .await?)
    }

    async fn set_revision_annotation(&self, d: &Deployment, revision: &str) -> Result<Deployment> {
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": d.resource_version(),
                "annotations": {logic::REVISION: revision}
            }
        });
        Ok(api
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?)
    }

    async fn event(&self, d: &Deployment, type_: &str, reason: &str, message: String) {
        self.recorder.record(d, type_, reason, &message).await;
    }

    fn now(&self) -> jiff::Timestamp {
        crate::util::now()
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    // Decide from the current object, not the cached one: the status written by the previous
    // pass is part of the input (progress detection compares against it).
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let Some(d) = api.get_opt(&d.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let ops = KubeOps {
        client: &ctx.client,
        recorder: &ctx.recorder,
    };
    let requeue = sync_deployment(&ops, &d).await?;
    Ok(Action::requeue(requeue.map_or(RESYNC, |r| r.min(RESYNC))))
}

/// Deployments whose selector matches an object's labels in its namespace.
fn matching_deployments(
    store: &Store<Deployment>,
    ns: Option<String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<ObjectRef<Deployment>> {
    store
        .state()
        .into_iter()
        .filter(|d| d.namespace() == ns)
        .filter(|d| {
            let m = LabelMatcher::new(d.spec.as_ref().map(|s| &s.selector));
            !m.is_empty() && m.matches(Some(labels))
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

pub(crate) async fn run(
    client: Client,
    deployments: Informer<Deployment>,
    replica_sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        client,
    });
    let d_store = deployments.store();
    let rs_store = replica_sets.store();
    let orphan_store = d_store.clone();
    let pod_d_store = d_store.clone();
    let controller = Controller::for_shared_stream(deployments.subscribe(), d_store)
        .owns_shared_stream(replica_sets.subscribe())
        // Orphaned RSs that a deployment may adopt.
        .watches_shared_stream(replica_sets.subscribe(), move |rs: Arc<ReplicaSet>| {
            if controller_of(&rs.metadata).is_some() {
                return Vec::new();
            }
            matching_deployments(&orphan_store, rs.namespace(), rs.labels())
        })
        // Recreate waits for old pods to go: their deletion must wake the deployment.
        .watches_shared_stream(pods.subscribe(), move |pod: Arc<Pod>| {
            let Some(owner) = controller_of(&pod.metadata) else {
                return Vec::new();
            };
            if owner.kind != "ReplicaSet" {
                return Vec::new();
            }
            let rs_ref = ObjectRef::<ReplicaSet>::new(&owner.name)
                .within(&pod.namespace().unwrap_or_default());
            let Some(rs) = rs_store.get(&rs_ref) else {
                return Vec::new();
            };
            match controller_of(&rs.metadata) {
                Some(d) if d.kind == "Deployment" => {
                    let r = ObjectRef::<Deployment>::new(&d.name)
                        .within(&pod.namespace().unwrap_or_default());
                    match pod_d_store.get(&r) {
                        Some(dep) if logic::is_recreate(&dep) => vec![r],
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            }
        });
    drive(
        "deployment",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests;
