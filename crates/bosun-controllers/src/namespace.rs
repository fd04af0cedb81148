//! Namespace controller: empties a terminating namespace, then removes the `kubernetes`
//! finalizer through `/finalize` so the API server can delete it.

use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::gc::Graph;
use crate::kinds::Kind;
use crate::util::is_not_found;

pub const FINALIZER: &str = "kubernetes";
/// How soon to look again while objects terminate; deletions also trigger a pass directly.
const WAIT: Duration = Duration::from_secs(2);

struct Ctx {
    client: Client,
    kinds: Vec<Kind>,
}

/// Deletes what is left; returns how many objects remain (including terminating ones).
async fn delete_contents(ctx: &Ctx, ns: &str) -> anyhow::Result<(usize, Vec<String>)> {
    let mut remaining = 0;
    let mut failures = Vec::new();
    for k in ctx.kinds.iter().filter(|k| k.namespaced) {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &k.ar);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => {
                failures.push(format!("{}: {e}", k.ar.plural));
                continue;
            }
        };
        for o in list.items {
            remaining += 1;
            if o.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api.delete(&o.name_any(), &dp).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => remaining -= 1,
                Err(e) => failures.push(format!("{} {}: {e}", k.ar.plural, o.name_any())),
            }
        }
    }
    Ok((remaining, failures))
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if ok { "False" } else { "True" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(crate::util::now())),
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let Some(ns) = api.get_opt(&ns.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let has_finalizer = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    if !has_finalizer {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let (remaining, failures) = delete_contents(&ctx, &name).await?;

    // Conditions as upstream reports them, so `kubectl describe ns` explains a slow delete.
    let mut status = ns.status.clone().unwrap_or_default();
    let conds = vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            true,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
        condition(
            "NamespaceDeletionContentFailure",
            failures.is_empty(),
            if failures.is_empty() {
                "ContentDeleted"
            } else {
                "ContentDeletionFailed"
            },
            if failures.is_empty() {
                "All content successfully deleted, may be waiting on finalization".into()
            } else {
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    failures.len(),
                    failures.join(", ")
                )
            },
        ),
        condition(
            "NamespaceContentRemaining",
            remaining == 0,
            if remaining == 0 {
                "ContentRemoved"
            } else {
                "SomeResourcesRemain"
            },
            if remaining == 0 {
                "All content successfully removed".into()
            } else {
                format!("Some resources are remaining: {remaining} objects")
            },
        ),
    ];
    if status_changed(&status, &conds) {
        status.conditions = Some(conds);
        let mut updated = ns.clone();
        updated.status = Some(NamespaceStatus {
            phase: Some("Terminating".into()),
            ..status
        });
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            Err(e) if crate::util::is_conflict(&e) || is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if remaining > 0 || !failures.is_empty() {
        return Ok(Action::requeue(WAIT));
    }

    // Empty: hand the namespace back to the API server.
    let Some(mut fresh) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if let Some(f) = fresh.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        f.retain(|x| x != FINALIZER);
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &fresh)
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

fn status_changed(old: &NamespaceStatus, new: &[NamespaceCondition]) -> bool {
    let old = old.conditions.clone().unwrap_or_default();
    old.len() != new.len()
        || old.iter().zip(new).any(|(a, b)| {
            a.type_ != b.type_
                || a.status != b.status
                || a.reason != b.reason
                || a.message != b.message
        })
}

fn terminating(store: &Store<Namespace>, ns: &str) -> bool {
    store
        .get(&ObjectRef::new(ns))
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
}

pub(crate) async fn run(
    client: Client,
    namespaces: Informer<Namespace>,
    kinds: Vec<Kind>,
    graph: Graph,
    shutdown: CancellationToken,
) {
    let mut controller = Controller::for_shared_stream(namespaces.subscribe(), namespaces.store());
    // A deletion inside a terminating namespace may be the last one it waited for.
    for k in graph.kinds.iter().filter(|k| k.kind.namespaced) {
        let store = namespaces.store();
        controller = controller.watches_shared_stream_with(
            k.informer.subscribe(),
            move |o: Arc<DynamicObject>| {
                o.namespace()
                    .filter(|ns| terminating(&store, ns))
                    .map(|ns| ObjectRef::<Namespace>::new(&ns))
            },
            k.kind.ar.clone(),
        );
    }
    let ctx = Arc::new(Ctx { client, kinds });
    drive(
        "namespace",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}
