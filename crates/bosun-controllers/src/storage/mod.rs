//! Persistent volumes: the binder that pairs claims with volumes, the built-in local-path
//! provisioner (a directory under the chosen node's data dir, pinned to that node), reclaim
//! policies, and the `pvc-protection` / `pv-protection` finalizers.
//!
//! With `WaitForFirstConsumer` (the default class) a claim waits until the scheduler has put
//! a pod that uses it on a node; the volume is then made on that node. The directory itself is
//! created by the agent when it mounts the volume and removed by it when a `Delete` volume
//! goes (the `bosun.dev/local-path-cleanup` finalizer).

pub mod logic;

use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::util::{is_conflict, is_not_found, pod_is_active};
use logic::*;

const RESYNC: Duration = Duration::from_secs(300);

struct Ctx {
    client: Client,
    recorder: Recorder,
    pods: Store<Pod>,
    nodes: Store<Node>,
    classes: Store<StorageClass>,
    volumes: Store<PersistentVolume>,
}

/// Claims a pod mounts.
fn claims_of(p: &Pod) -> impl Iterator<Item = &str> {
    p.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// Pods (not finished) in the claim's namespace that mount it.
fn consumers(pods: &Store<Pod>, c: &PersistentVolumeClaim) -> Vec<Arc<Pod>> {
    let name = c.name_any();
    pods.state()
        .into_iter()
        .filter(|p| p.namespace() == c.namespace())
        .filter(|p| !matches!(crate::util::pod_phase(p), "Succeeded" | "Failed"))
        .filter(|p| claims_of(p).any(|n| n == name))
        .collect()
}

fn has_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

/// The finalizer list with `f` added or removed, as a merge patch with a resourceVersion
/// precondition (a merge patch replaces the whole list).
fn finalizers_patch(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
    add: bool,
) -> serde_json::Value {
    let mut list: Vec<String> = meta.finalizers.clone().unwrap_or_default();
    list.retain(|x| x != f);
    if add {
        list.push(f.into());
    }
    json!({"metadata": {"finalizers": list, "resourceVersion": meta.resource_version}})
}

fn claim_phase(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn set_claim_phase(
    api: &Api<PersistentVolumeClaim>,
    c: &PersistentVolumeClaim,
    phase: &str,
    pv: Option<&PersistentVolume>,
) -> Result<(), kube::Error> {
    if claim_phase(c) == phase && pv.is_none() {
        return Ok(());
    }
    let mut status = json!({"phase": phase});
    if let Some(v) = pv.and_then(|v| v.spec.as_ref()) {
        status["accessModes"] = json!(v.access_modes);
        status["capacity"] = json!(v.capacity);
    }
    api.patch_status(
        &c.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn set_volume_phase(
    api: &Api<PersistentVolume>,
    v: &PersistentVolume,
    phase: &str,
) -> Result<(), kube::Error> {
    if volume_phase(v) == phase && v.status.is_some() {
        return Ok(());
    }
    let status = json!({"status": {
        "phase": phase,
        "lastPhaseTransitionTime": crate::util::time(crate::util::now()),
    }});
    api.patch_status(
        &v.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await?;
    Ok(())
}

async fn reconcile_claim(
    c: Arc<PersistentVolumeClaim>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    let ns = c.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(c) = claims.get_opt(&c.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let name = c.name_any();
    if c.metadata.deletion_timestamp.is_some() {
        // pvc-protection: the claim stays while a pod may still use it.
        if has_finalizer(&c.metadata, PVC_PROTECTION)
            && !consumers(&ctx.pods, &c).iter().any(|p| {
                pod_is_active(p)
                    || p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                        && p.metadata.deletion_timestamp.is_some()
            })
        {
            claims
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&finalizers_patch(&c.metadata, PVC_PROTECTION, false)),
                )
                .await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer(&c.metadata, PVC_PROTECTION) {
        claims
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&finalizers_patch(&c.metadata, PVC_PROTECTION, true)),
            )
            .await?;
        return Ok(Action::requeue(Duration::from_millis(10)));
    }
    // A claim without a class gets the default one, as Kubernetes assigns it retroactively.
    if c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_ref())
        .is_none()
        && c.spec
            .as_ref()
            .and_then(|s| s.volume_name.as_ref())
            .is_none()
    {
        let classes = ctx.classes.state();
        if let Some(d) = pick_default(classes.iter().map(|c| c.as_ref())) {
            let patch = json!({"spec": {"storageClassName": d.name_any()}});
            claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Action::requeue(Duration::from_millis(10)));
        }
    }

    // Bound already: keep both sides consistent.
    if let Some(vname) = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
        && c.annotations().contains_key(BIND_COMPLETED)
    {
        match volumes.get_opt(&vname).await? {
            Some(v) if claim_ref_is(&v, &c) => {
                set_volume_phase(&volumes, &v, "Bound").await?;
                if claim_phase(&c) != "Bound" {
                    set_claim_phase(&claims, &c, "Bound", Some(&v)).await?;
                }
            }
            _ => {
                if claim_phase(&c) != "Lost" {
                    set_claim_phase(&claims, &c, "Lost", None).await?;
                    ctx.recorder
                        .record(&c, WARNING, "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
                        .await;
                }
            }
        }
        return Ok(Action::requeue(RESYNC));
    }

    let class_name = c
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default();
    let class = ctx
        .classes
        .get(&ObjectRef::new(&class_name))
        .map(|c| (*c).clone());
    let wait_for_consumer = class
        .as_ref()
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer");
    // The node the scheduler chose for a pod of this claim.
    let selected = consumers(&ctx.pods, &c).into_iter().find_map(|p| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
    });
    let node = selected
        .as_ref()
        .and_then(|n| ctx.nodes.get(&ObjectRef::new(n)))
        .map(|n| (*n).clone());
    if wait_for_consumer && node.is_none() {
        if claim_phase(&c) != "Pending" {
            set_claim_phase(&claims, &c, "Pending", None).await?;
            ctx.recorder
                .record(
                    &c,
                    NORMAL,
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await;
        }
        return Ok(Action::requeue(RESYNC));
    }

    let all = ctx.volumes.state();
    let found = find_match(&c, all.iter().map(|v| v.as_ref()), node.as_ref()).cloned();
    let volume = match found {
        Some(v) => v,
        None => {
            let Some(class) = class.filter(|cl| cl.provisioner == PROVISIONER) else {
                if claim_phase(&c) != "Pending" {
                    set_claim_phase(&claims, &c, "Pending", None).await?;
                    let msg = if class_name.is_empty() {
                        "no persistent volumes available for this claim and no storage class is set"
                            .to_string()
                    } else {
                        format!("storageclass.storage.k8s.io \"{class_name}\" not found")
                    };
                    ctx.recorder
                        .record(&c, WARNING, "ProvisioningFailed", &msg)
                        .await;
                }
                return Ok(Action::requeue(Duration::from_secs(15)));
            };
            // Immediate binding: any ready node will do (the first by name).
            let node = match node {
                Some(n) => n,
                None => {
                    let mut nodes: Vec<Arc<Node>> = ctx.nodes.state();
                    nodes.sort_by_key(|n| n.name_any());
                    match nodes
                        .into_iter()
                        .find(|n| n.annotations().contains_key(NODE_LOCAL_PATH_DIR))
                    {
                        Some(n) => (*n).clone(),
                        None => return Ok(Action::requeue(Duration::from_secs(5))),
                    }
                }
            };
            let Some(base) = node.annotations().get(NODE_LOCAL_PATH_DIR).cloned() else {
                // The node's agent has not said where its volumes live yet.
                return Ok(Action::requeue(Duration::from_secs(2)));
            };
            let pv = provision(&c, &class, &node.name_any(), &base);
            let created = match volumes.create(&PostParams::default(), &pv).await {
                Ok(v) => {
                    ctx.recorder
                        .record(
                            &c,
                            NORMAL,
                            "ProvisioningSucceeded",
                            &format!(
                                "Successfully provisioned volume {} on node {}",
                                v.name_any(),
                                node.name_any()
                            ),
                        )
                        .await;
                    v
                }
                Err(e) if is_conflict(&e) => match volumes.get_opt(&pv.name_any()).await? {
                    Some(v) => v,
                    None => return Ok(Action::requeue(Duration::from_millis(50))),
                },
                Err(e) => return Err(e.into()),
            };
            let annotate = json!({"metadata": {"annotations": {
                SELECTED_NODE: node.name_any(),
                STORAGE_PROVISIONER: PROVISIONER,
            }}});
            claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&annotate))
                .await?;
            created
        }
    };

    // Bind: the volume first (its claimRef reserves it), then the claim.
    let vname = volume.name_any();
    if !claim_ref_is(&volume, &c)
        || volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.as_ref())
            .is_none()
    {
        let patch = json!({"metadata": {"resourceVersion": volume.metadata.resource_version},
            "spec": {"claimRef": claim_ref(&c)}});
        volumes
            .patch(&vname, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let fresh = volumes.get(&vname).await?;
    set_volume_phase(&volumes, &fresh, "Bound").await?;
    let patch = json!({
        "metadata": {"annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
        "spec": {"volumeName": vname},
    });
    let bound = claims
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    set_claim_phase(&claims, &bound, "Bound", Some(&fresh)).await?;
    Ok(Action::requeue(RESYNC))
}

async fn reconcile_volume(
    v: Arc<PersistentVolume>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(v) = volumes.get_opt(&v.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let name = v.name_any();
    let claim = match v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
        Some(r) => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(
                ctx.client.clone(),
                r.namespace.as_deref().unwrap_or("default"),
            );
            let c = api.get_opt(r.name.as_deref().unwrap_or("")).await?;
            Some(c.filter(|c| r.uid.is_none() || c.metadata.uid == r.uid))
        }
        None => None,
    };
    if v.metadata.deletion_timestamp.is_some() {
        // pv-protection: the volume stays while a claim is bound to it.
        let bound = matches!(&claim, Some(Some(c)) if c.metadata.deletion_timestamp.is_none());
        if has_finalizer(&v.metadata, PV_PROTECTION) && !bound {
            volumes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&finalizers_patch(&v.metadata, PV_PROTECTION, false)),
                )
                .await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer(&v.metadata, PV_PROTECTION) {
        volumes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&finalizers_patch(&v.metadata, PV_PROTECTION, true)),
            )
            .await?;
        return Ok(Action::requeue(Duration::from_millis(10)));
    }
    match claim {
        None => set_volume_phase(&volumes, &v, "Available").await?,
        Some(Some(_)) => {
            // Bound, or reserved for a claim the claim side is about to bind.
        }
        Some(None) => {
            // The claim is gone: reclaim.
            let policy = v
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                .unwrap_or("Retain");
            if volume_phase(&v) != "Released" && volume_phase(&v) != "Failed" {
                set_volume_phase(&volumes, &v, "Released").await?;
            }
            if policy == "Delete" {
                if v.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER) {
                    match volumes.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    let patch = json!({"status": {"phase": "Failed", "message": "error getting deleter volume plugin for volume: no deletable volume plugin matched"}});
                    if volume_phase(&v) != "Failed" {
                        volumes
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await?;
                        ctx.recorder
                            .record(&v, WARNING, "VolumeFailedDelete", "error getting deleter volume plugin for volume: no deletable volume plugin matched")
                            .await;
                    }
                }
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Creates the default StorageClass unless a class of that name exists.
async fn ensure_default_class(client: &Client) {
    let api: Api<StorageClass> = Api::all(client.clone());
    match api.create(&PostParams::default(), &default_class()).await {
        Ok(_) => tracing::info!(class = DEFAULT_CLASS, "default storage class created"),
        Err(e) if is_conflict(&e) => {}
        Err(e) => tracing::warn!(error = %e, "cannot create the default storage class"),
    }
}

pub(crate) async fn run(
    client: Client,
    claims: Informer<PersistentVolumeClaim>,
    volumes: Informer<PersistentVolume>,
    classes: Informer<StorageClass>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    shutdown: CancellationToken,
) {
    ensure_default_class(&client).await;
    // Decisions read these caches: start once they hold a complete list.
    tokio::select! {
        _ = async { claims.ready().await; volumes.ready().await; classes.ready().await } => {}
        _ = shutdown.cancelled() => return,
    }
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "persistentvolume-controller"),
        client,
        pods: pods.store(),
        nodes: nodes.store(),
        classes: classes.store(),
        volumes: volumes.store(),
    });
    // Claims wake up when a pod that uses them is scheduled or goes, and when a volume
    // that names them changes.
    let claim_controller = Controller::for_shared_stream(claims.subscribe(), claims.store())
        .watches_shared_stream(pods.subscribe(), |p: Arc<Pod>| {
            let ns = p.namespace().unwrap_or_default();
            claims_of(&p)
                .map(|n| ObjectRef::<PersistentVolumeClaim>::new(n).within(&ns))
                .collect::<Vec<_>>()
        })
        .watches_shared_stream(volumes.subscribe(), |v: Arc<PersistentVolume>| {
            v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| {
                    Some(
                        ObjectRef::<PersistentVolumeClaim>::new(r.name.as_deref()?)
                            .within(r.namespace.as_deref().unwrap_or("default")),
                    )
                })
                .into_iter()
                .collect::<Vec<_>>()
        });
    let volume_controller = Controller::for_shared_stream(volumes.subscribe(), volumes.store())
        .watches_shared_stream(claims.subscribe(), {
            let store = volumes.store();
            move |c: Arc<PersistentVolumeClaim>| {
                store
                    .state()
                    .into_iter()
                    .filter(|v| {
                        claim_ref_is(v, &c)
                            || v.spec
                                .as_ref()
                                .and_then(|s| s.claim_ref.as_ref())
                                .is_some_and(|r| {
                                    r.name == c.metadata.name && r.namespace == c.metadata.namespace
                                })
                    })
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            }
        });
    tokio::join!(
        drive(
            "persistentvolumeclaim",
            claim_controller,
            ctx.clone(),
            reconcile_claim,
            DEFAULT_CONCURRENCY,
            shutdown.clone(),
        ),
        drive(
            "persistentvolume",
            volume_controller,
            ctx,
            reconcile_volume,
            DEFAULT_CONCURRENCY,
            shutdown,
        ),
    );
}
