//! Pod garbage collection (upstream's PodGC, orphan part): pods bound to a node that no longer
//! exists can never be run or finished by an agent, so they are removed outright and their
//! ReplicaSets replace them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder};
use crate::util::{is_conflict, is_not_found, pod_node};

struct Ctx {
    client: Client,
    nodes: Store<Node>,
    recorder: Recorder,
    /// A node must stay missing this long before its pods go, so a node that is being
    /// (re-)registered does not lose pods bound to it in the meantime.
    quarantine: Duration,
    /// When each missing node was first noticed missing (by this process).
    missing_since: Mutex<HashMap<String, Instant>>,
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let Some(node) = pod_node(&pod) else {
        return Ok(Action::await_change());
    };
    if ctx.nodes.get(&ObjectRef::new(node)).is_some() {
        ctx.missing_since.lock().await.remove(node);
        return Ok(Action::await_change());
    }
    let since = *ctx
        .missing_since
        .lock()
        .await
        .entry(node.to_string())
        .or_insert_with(Instant::now);
    if since.elapsed() < ctx.quarantine {
        return Ok(Action::requeue(
            ctx.quarantine - since.elapsed() + Duration::from_millis(50),
        ));
    }
    // The cache may lag behind a node that was just registered: confirm with a live read.
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    if nodes.get_opt(node).await?.is_some() {
        ctx.missing_since.lock().await.remove(node);
        return Ok(Action::await_change());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: pod.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {
            ctx.recorder
                .record(
                    pod.as_ref(),
                    NORMAL,
                    "PodGCOrphaned",
                    &format!("Deleting pod bound to non-existent node {node}"),
                )
                .await;
        }
        Err(e) if is_not_found(&e) || is_conflict(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

pub(crate) async fn run(
    client: Client,
    quarantine: Duration,
    nodes: Informer<Node>,
    pods: Informer<Pod>,
    shutdown: CancellationToken,
) {
    let pod_store = pods.store();
    let node_store = nodes.store();
    let controller = Controller::for_shared_stream(pods.subscribe(), pods.store())
        // A node going away orphans the pods bound to it.
        .watches_shared_stream(nodes.subscribe(), move |n: Arc<Node>| {
            let name = n.name_any();
            if node_store.get(&ObjectRef::new(&name)).is_some() {
                return Vec::new();
            }
            pod_store
                .state()
                .into_iter()
                .filter(|p| pod_node(p) == Some(name.as_str()))
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect()
        });
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "pod-garbage-collector"),
        client,
        nodes: nodes.store(),
        quarantine,
        missing_since: Mutex::new(HashMap::new()),
    });
    drive(
        "pod-gc",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}
