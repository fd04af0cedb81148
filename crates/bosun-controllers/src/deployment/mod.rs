//! Deployment controller: owns ReplicaSets and rolls them as Kubernetes does.

pub mod logic;
pub mod sync;

use std::collections::HashMap;
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
    replica_sets: Store<ReplicaSet>,
    written: Written,
}

/// This controller's own ReplicaSet writes (by uid: the object the API returned, or None
/// once deleted) that the informer has not shown yet. A pass that runs before the informer
/// catches up (triggered by the Deployment's status write, say) decides on these rather than
/// on the informer's older copies, as it would on a fresh list.
#[derive(Default)]
struct Written(std::sync::Mutex<HashMap<String, (String, Option<ReplicaSet>)>>);

fn rv_of(rs: &ReplicaSet) -> Option<u64> {
    rs.metadata.resource_version.as_deref()?.parse().ok()
}

impl Written {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Option<ReplicaSet>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, rs: &ReplicaSet, gone: bool) {
        if let Some(uid) = rs.metadata.uid.clone() {
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            self.lock().insert(uid, (ns, (!gone).then(|| rs.clone())));
        }
    }

    /// The ReplicaSets of `ns` as of this controller's last writes: the informer's copies,
    /// with newer own writes in their place and own deletions left out. None when that
    /// cannot be told from the cache (a created object the informer has not shown yet).
    fn merge(&self, ns: &str, cached: &[Arc<ReplicaSet>]) -> Option<Vec<ReplicaSet>> {
        let mut w = self.lock();
        let mut out = Vec::with_capacity(cached.len());
        let mut seen = std::collections::HashSet::new();
        for rs in cached {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            match w.get(&uid).map(|(_, mine)| mine) {
                None => out.push(ReplicaSet::clone(rs)),
                Some(None) => {} // deleted by this controller; the informer is behind
                Some(Some(mine)) => match (rv_of(mine), rv_of(rs)) {
                    (Some(m), Some(c)) if m > c => out.push(mine.clone()),
                    (Some(_), Some(_)) => {
                        w.remove(&uid);
                        out.push(ReplicaSet::clone(rs));
                    }
                    _ => return None,
                },
            }
            seen.insert(uid);
        }
        let unseen = |uid: &String, ns_of: &String| ns_of == ns && !seen.contains(uid);
        if w.iter()
            .any(|(uid, (n, mine))| mine.is_some() && unseen(uid, n))
        {
            return None;
        }
        // Deleted and dropped by the informer too: nothing left to wait for.
        w.retain(|uid, (n, mine)| mine.is_some() || !unseen(uid, n));
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Some(out)
    }

    /// Forgets writes the API no longer has (after a list from the API).
    fn forget_missing(&self, ns: &str, listed: &[ReplicaSet]) {
        let live: std::collections::HashSet<&str> = listed
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        self.lock()
            .retain(|uid, (n, _)| n != ns || live.contains(uid.as_str()));
    }
}

/// [`DeploymentOps`] against the API server, reading ReplicaSets from the informer.
pub struct KubeOps<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
    replica_sets: &'a Store<ReplicaSet>,
    written: &'a Written,
}

#[async_trait]
impl DeploymentOps for KubeOps<'_> {
    async fn list_replica_sets(&self, ns: &str) -> Result<Vec<ReplicaSet>> {
        // The informer's copies: a wake from zero then costs the scale write alone, not a
        // list of the namespace's ReplicaSets before it. Not before the informer's first
        // list: an empty cache would hide the old ReplicaSets from a rollout.
        let ready = self.replica_sets.wait_until_ready().await.is_ok();
        let cached: Vec<Arc<ReplicaSet>> = self
            .replica_sets
            .state()
            .into_iter()
            .filter(|r| r.metadata.namespace.as_deref() == Some(ns))
            .collect();
        if ready && let Some(list) = self.written.merge(ns, &cached) {
            return Ok(list);
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
        let items = api.list(&ListParams::default()).await?.items;
        self.written.forget_missing(ns, &items);
        Ok(items)
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
            Ok(c) => {
                self.written.note(&c, false);
                Ok(Some(c))
            }
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
        let updated = api
            .replace(&rs.name_any(), &PostParams::default(), rs)
            .await?;
        self.written.note(&updated, false);
        Ok(updated)
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
            Ok(either) => {
                // Still there (finalizers, or the collector yet to remove it), or gone.
                match either.left() {
                    Some(left) => self.written.note(&left, false),
                    None => self.written.note(rs, true),
                }
                Ok(())
            }
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
        replica_sets: &ctx.replica_sets,
        written: &ctx.written,
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
    let rs_store = replica_sets.store();
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        client,
        replica_sets: rs_store.clone(),
        written: Written::default(),
    });
    let d_store = deployments.store();
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
