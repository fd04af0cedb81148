//! Garbage collector: removes dependents whose owners are gone and carries out the
//! `foregroundDeletion` and `orphan` finalizers, generically over every discovered kind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams, Preconditions, PropagationPolicy};
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::kinds::Kind;
use crate::util::is_not_found;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// What is known about one owner of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists with the referenced uid.
    Present,
    /// Exists and is being deleted in the foreground, waiting for its dependents.
    WaitingForDependents,
    /// Confirmed absent by a live read (404 or another uid under that name).
    Absent,
    /// Of a kind bosun does not serve; never treated as gone.
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Delete the object; foreground when an owner waits on it (`blockOwnerDeletion`).
    Delete {
        foreground: bool,
    },
    /// Drop references to owners that are gone; others remain.
    RemoveRefs(Vec<String>),
}

/// `attemptToDeleteItem`: what to do with an object given the state of each of its owners.
pub fn decide(refs: &[OwnerReference], states: &[OwnerState]) -> Decision {
    if refs.is_empty() {
        return Decision::Keep;
    }
    let absent: Vec<String> = refs
        .iter()
        .zip(states)
        .filter(|(_, s)| **s == OwnerState::Absent)
        .map(|(r, _)| r.uid.clone())
        .collect();
    let waiting = refs.iter().zip(states).any(|(r, s)| {
        *s == OwnerState::WaitingForDependents && r.block_owner_deletion == Some(true)
    });
    let solid = states
        .iter()
        .filter(|s| matches!(s, OwnerState::Present | OwnerState::Unknown))
        .count();
    if solid > 0 {
        // A live owner keeps the object; only dangling references go.
        return if absent.is_empty() {
            Decision::Keep
        } else {
            Decision::RemoveRefs(absent)
        };
    }
    // Every owner is gone or waits on this object: delete it, in the foreground when an
    // owner waits and this object blocks it.
    Decision::Delete {
        foreground: waiting,
    }
}

pub fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

/// Dependents blocking a foreground deletion: those pointing at `uid` with blockOwnerDeletion.
pub fn blocks(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
}

fn references(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|r| r.uid == uid)
}

/// One cached kind of the ownership graph.
#[derive(Clone)]
pub struct GraphKind {
    pub kind: Kind,
    pub informer: Informer<DynamicObject>,
}

#[derive(Clone)]
pub struct Graph {
    pub kinds: Arc<Vec<GraphKind>>,
}

impl Graph {
    fn find(&self, api_version: &str, kind: &str) -> Option<&GraphKind> {
        self.kinds
            .iter()
            .find(|k| k.kind.ar.api_version == api_version && k.kind.ar.kind == kind)
    }

    /// Cached objects that reference `uid` as an owner, with their kinds.
    pub fn dependents(&self, uid: &str) -> Vec<(ApiResource, Arc<DynamicObject>)> {
        let mut out = Vec::new();
        for k in self.kinds.iter() {
            for o in k.informer.store().state() {
                if references(&o.metadata, uid) {
                    out.push((k.kind.ar.clone(), o));
                }
            }
        }
        out
    }
}

struct Ctx {
    client: Client,
    graph: Graph,
}

fn api_for(client: &Client, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

async fn owner_state(ctx: &Ctx, ns: Option<&str>, r: &OwnerReference) -> Result<OwnerState> {
    let Some(gk) = ctx.graph.find(&r.api_version, &r.kind) else {
        return Ok(OwnerState::Unknown);
    };
    let ns = if gk.kind.namespaced { ns } else { None };
    // Caches lag: an owner missing from the cache is confirmed with a live read before its
    // dependents are deleted.
    let cached = gk
        .informer
        .store()
        .get(&ObjectRef::new_with(&r.name, gk.kind.ar.clone()).within(ns.unwrap_or_default()));
    let owner = match cached.filter(|o| o.metadata.uid.as_deref() == Some(r.uid.as_str())) {
        Some(o) => Some((*o).clone()),
        None => {
            api_for(&ctx.client, &gk.kind.ar, ns)
                .get_opt(&r.name)
                .await?
        }
    };
    Ok(match owner {
        Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
            if o.metadata.deletion_timestamp.is_some() && has_finalizer(&o.metadata, FOREGROUND) {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Present
            }
        }
        _ => OwnerState::Absent,
    })
}

fn delete_params(uid: Option<String>, policy: PropagationPolicy) -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(policy),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    }
}

/// Removes owner references (by uid) from an object, re-reading on conflict.
async fn strip_refs(api: &Api<DynamicObject>, name: &str, uids: &[String]) -> Result<()> {
    for _ in 0..5 {
        let Some(mut o) = api.get_opt(name).await? else {
            return Ok(());
        };
        let before = o.metadata.owner_references.as_ref().map_or(0, Vec::len);
        if let Some(refs) = o.metadata.owner_references.as_mut() {
            refs.retain(|r| !uids.contains(&r.uid));
        }
        if o.metadata.owner_references.as_ref().map_or(0, Vec::len) == before {
            return Ok(());
        }
        match api.replace(name, &PostParams::default(), &o).await {
            Ok(_) => return Ok(()),
            Err(e) if crate::util::is_conflict(&e) => continue,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not update owner references of {name}: repeated conflicts")
}

async fn remove_finalizer(api: &Api<DynamicObject>, name: &str, finalizer: &str) -> Result<()> {
    for _ in 0..5 {
        let Some(mut o) = api.get_opt(name).await? else {
            return Ok(());
        };
        if !has_finalizer(&o.metadata, finalizer) {
            return Ok(());
        }
        if let Some(f) = o.metadata.finalizers.as_mut() {
            f.retain(|x| x != finalizer);
        }
        match api.replace(name, &PostParams::default(), &o).await {
            Ok(_) => return Ok(()),
            Err(e) if crate::util::is_conflict(&e) => continue,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not remove finalizer {finalizer} from {name}: repeated conflicts")
}

async fn reconcile(
    obj: Arc<DynamicObject>,
    ctx: Arc<(Ctx, ApiResource, bool)>,
) -> Result<Action, ReconcileError> {
    let (ctx, ar, namespaced) = (&ctx.0, &ctx.1, ctx.2);
    let ns = if namespaced { obj.namespace() } else { None };
    let api = api_for(&ctx.client, ar, ns.as_deref());
    let Some(obj) = api.get_opt(&obj.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let uid = obj.uid().unwrap_or_default();
    let name = obj.name_any();

    if obj.metadata.deletion_timestamp.is_some() {
        if has_finalizer(&obj.metadata, ORPHAN) {
            for (dar, dep) in ctx.graph.dependents(&uid) {
                let dapi = api_for(&ctx.client, &dar, dep.namespace().as_deref());
                strip_refs(&dapi, &dep.name_any(), std::slice::from_ref(&uid)).await?;
            }
            remove_finalizer(&api, &name, ORPHAN).await?;
            return Ok(Action::await_change());
        }
        if has_finalizer(&obj.metadata, FOREGROUND) {
            let mut blocking = 0;
            for (dar, dep) in ctx.graph.dependents(&uid) {
                let dapi = api_for(&ctx.client, &dar, dep.namespace().as_deref());
                if blocks(&dep.metadata, &uid) {
                    blocking += 1;
                }
                if dep.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let others_alive = {
                    let mut alive = false;
                    for r in dep.metadata.owner_references.iter().flatten() {
                        if r.uid != uid
                            && matches!(
                                owner_state(ctx, dep.namespace().as_deref(), r).await?,
                                OwnerState::Present | OwnerState::Unknown
                            )
                        {
                            alive = true;
                        }
                    }
                    alive
                };
                if others_alive {
                    strip_refs(&dapi, &dep.name_any(), std::slice::from_ref(&uid)).await?;
                    continue;
                }
                let policy = if blocks(&dep.metadata, &uid) {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                };
                match dapi
                    .delete(&dep.name_any(), &delete_params(dep.uid(), policy))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) || crate::util::is_conflict(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if blocking == 0 {
                remove_finalizer(&api, &name, FOREGROUND).await?;
            }
            // Dependents' deletions trigger this object again; the requeue is a safety net.
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        return Ok(Action::await_change());
    }

    let refs = obj.metadata.owner_references.clone().unwrap_or_default();
    if refs.is_empty() {
        return Ok(Action::await_change());
    }
    let mut states = Vec::with_capacity(refs.len());
    for r in &refs {
        states.push(owner_state(ctx, ns.as_deref(), r).await?);
    }
    match decide(&refs, &states) {
        Decision::Keep => {}
        Decision::RemoveRefs(uids) => strip_refs(&api, &name, &uids).await?,
        Decision::Delete { foreground } => {
            let policy = if foreground {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            tracing::debug!(kind = %ar.kind, name, "deleting object whose owners are gone");
            match api.delete(&name, &delete_params(Some(uid), policy)).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) || crate::util::is_conflict(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

/// Objects of `target` to look at when `o` (of another or the same kind) changes: its
/// dependents when it goes away, its owners when it goes away (a foreground owner may finish).
fn related(
    target: &GraphKind,
    source_store: &Store<DynamicObject>,
    source_ar: &ApiResource,
    o: &DynamicObject,
) -> Vec<ObjectRef<DynamicObject>> {
    let gone = o.metadata.deletion_timestamp.is_some()
        || source_store
            .get(
                &ObjectRef::new_with(&o.name_any(), source_ar.clone())
                    .within(&o.namespace().unwrap_or_default()),
            )
            .is_none();
    let deleting_with_finalizer = o.metadata.deletion_timestamp.is_some()
        && (has_finalizer(&o.metadata, FOREGROUND) || has_finalizer(&o.metadata, ORPHAN));
    let mut out = Vec::new();
    let uid = o.uid().unwrap_or_default();
    if gone || deleting_with_finalizer {
        for d in target.informer.store().state() {
            if references(&d.metadata, &uid) {
                out.push(ObjectRef::from_obj_with(d.as_ref(), target.kind.ar.clone()));
            }
        }
    }
    if gone {
        for r in o.metadata.owner_references.iter().flatten() {
            if r.api_version == target.kind.ar.api_version && r.kind == target.kind.ar.kind {
                let mut oref = ObjectRef::new_with(&r.name, target.kind.ar.clone());
                if target.kind.namespaced {
                    oref = oref.within(&o.namespace().unwrap_or_default());
                }
                out.push(oref);
            }
        }
    }
    out
}

pub(crate) async fn run(client: Client, graph: Graph, shutdown: CancellationToken) {
    let mut tasks = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    for target in graph.kinds.iter() {
        if seen
            .insert(
                format!("{}/{}", target.kind.ar.api_version, target.kind.ar.kind),
                (),
            )
            .is_some()
        {
            continue;
        }
        let ar = target.kind.ar.clone();
        let mut controller = Controller::for_shared_stream_with(
            target.informer.subscribe(),
            target.informer.store(),
            ar.clone(),
        );
        for source in graph.kinds.iter() {
            let t = target.clone();
            let store = source.informer.store();
            let sar = source.kind.ar.clone();
            controller = controller.watches_shared_stream_with(
                source.informer.subscribe(),
                move |o: Arc<DynamicObject>| related(&t, &store, &sar, &o),
                source.kind.ar.clone(),
            );
        }
        let ctx = Arc::new((
            Ctx {
                client: client.clone(),
                graph: graph.clone(),
            },
            ar,
            target.kind.namespaced,
        ));
        tasks.push(tokio::spawn(drive(
            "garbage-collector",
            controller,
            ctx,
            reconcile,
            DEFAULT_CONCURRENCY,
            shutdown.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: uid.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    use OwnerState::*;

    #[test]
    fn keeps_objects_with_a_live_owner() {
        assert_eq!(decide(&[], &[]), Decision::Keep);
        assert_eq!(decide(&[r("a", true)], &[Present]), Decision::Keep);
        assert_eq!(decide(&[r("a", true)], &[Unknown]), Decision::Keep);
    }

    #[test]
    fn deletes_when_all_owners_are_gone() {
        assert_eq!(
            decide(&[r("a", true)], &[Absent]),
            Decision::Delete { foreground: false }
        );
        assert_eq!(
            decide(&[r("a", true), r("b", false)], &[Absent, Absent]),
            Decision::Delete { foreground: false }
        );
    }

    #[test]
    fn drops_only_dangling_references_when_another_owner_lives() {
        assert_eq!(
            decide(&[r("a", true), r("b", true)], &[Absent, Present]),
            Decision::RemoveRefs(vec!["a".into()])
        );
    }

    #[test]
    fn foreground_owner_deletes_blocking_dependents_in_foreground() {
        assert_eq!(
            decide(&[r("a", true)], &[WaitingForDependents]),
            Decision::Delete { foreground: true }
        );
        assert_eq!(
            decide(&[r("a", false)], &[WaitingForDependents]),
            Decision::Delete { foreground: false }
        );
        assert_eq!(
            decide(
                &[r("a", false), r("b", true)],
                &[Absent, WaitingForDependents]
            ),
            Decision::Delete { foreground: true }
        );
    }

    #[test]
    fn blocking_and_finalizers() {
        let meta = ObjectMeta {
            owner_references: Some(vec![r("a", true), r("b", false)]),
            finalizers: Some(vec![FOREGROUND.into()]),
            ..Default::default()
        };
        assert!(blocks(&meta, "a"));
        assert!(!blocks(&meta, "b"));
        assert!(!blocks(&meta, "c"));
        assert!(has_finalizer(&meta, FOREGROUND));
        assert!(!has_finalizer(&meta, ORPHAN));
    }
}
