//! Binds pending pods to nodes: filter and score plugins.
//!
//! Pods with no `spec.nodeName` whose `schedulerName` is `default-scheduler` (or unset) are
//! placed one at a time: filters ([`plugins::Filter`]) rule nodes out, scores
//! ([`plugins::Score`]) rank the rest, and the pod is bound through `pods/NAME/binding`. A pod
//! that fits nowhere gets `PodScheduled=False` (`Unschedulable`) and a `FailedScheduling`
//! event, and is retried whenever a node or a pod changes.

pub mod plugins;
pub mod resources;
pub mod volumes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bosun_controllers::events::{NORMAL, Recorder, WARNING};
use bosun_controllers::informer::Informer;
use bosun_controllers::runtime::{ReconcileError, drive};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use plugins::{Filter, NodeInfo, Placement, Score, place};

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// How long a binding this scheduler made counts against a node before the pod cache
/// shows it; after that the cache is the truth.
const ASSUME_TTL: Duration = Duration::from_secs(30);
/// Unschedulable pods are retried on every node or pod change; this is the fallback.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(60);

/// Whether this scheduler is responsible for `pod` right now.
pub fn wants(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let unbound = spec
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty);
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n.is_empty() || n == DEFAULT_SCHEDULER);
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    unbound && ours && !finished && pod.metadata.deletion_timestamp.is_none()
}

fn is_active(p: &Pod) -> bool {
    !matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

struct Ctx {
    client: Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
    filters: Vec<Box<dyn Filter>>,
    scores: Vec<Box<dyn Score>>,
    /// Pods bound by this scheduler that the pod cache may not reflect yet (uid -> node).
    assumed: Mutex<HashMap<String, (String, Pod, Instant)>>,
}

impl Ctx {
    /// Nodes with the pods on them, from the caches plus recent bindings.
    async fn snapshot(&self) -> Vec<NodeInfo> {
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        let mut cached_nodes: HashMap<String, String> = HashMap::new();
        for p in self.pods.state() {
            if let Some(uid) = p.uid() {
                cached_nodes.insert(
                    uid,
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default(),
                );
            }
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if !node.is_empty() && is_active(&p) {
                by_node.entry(node).or_default().push(p);
            }
        }
        let mut assumed = self.assumed.lock().await;
        assumed.retain(|uid, (node, pod, at)| {
            let in_cache = cached_nodes.get(uid);
            let keep = at.elapsed() < ASSUME_TTL && in_cache.is_some_and(|n| n.is_empty());
            if keep {
                by_node
                    .entry(node.clone())
                    .or_default()
                    .push(Arc::new(pod.clone()));
            }
            keep
        });
        let mut out: Vec<NodeInfo> = self
            .nodes
            .state()
            .into_iter()
            .map(|n| {
                let pods = by_node.remove(&n.name_any()).unwrap_or_default();
                NodeInfo { node: n, pods }
            })
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }
}

fn scheduled_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pod) = api.get_opt(&pod.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if !wants(&pod) {
        return Ok(Action::await_change());
    }
    let name = pod.name_any();
    let nodes = ctx.snapshot().await;
    match place(&pod, &nodes, &ctx.filters, &ctx.scores) {
        Placement::Node(node) => {
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    uid: pod.uid(),
                    ..Default::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    ..Default::default()
                },
            };
            let res: Result<serde_json::Value, kube::Error> = api
                .create_subresource("binding", &name, &PostParams::default(), &binding)
                .await;
            match res {
                Ok(_) => {}
                // Already bound (by us earlier or someone else) or gone: nothing to do.
                Err(e)
                    if bosun_controllers::util::is_conflict(&e)
                        || bosun_controllers::util::is_not_found(&e) =>
                {
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(uid) = pod.uid() {
                let mut bound = pod.clone();
                bound.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
                ctx.assumed
                    .lock()
                    .await
                    .insert(uid, (node.clone(), bound, Instant::now()));
            }
            ctx.recorder
                .record(
                    &pod,
                    NORMAL,
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node}"),
                )
                .await;
            Ok(Action::await_change())
        }
        Placement::Unschedulable(msg) => {
            let unchanged = scheduled_condition(&pod).is_some_and(|c| {
                c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some(msg.as_str())
            });
            if !unchanged {
                let mut updated = pod.clone();
                let status = updated.status.get_or_insert_with(Default::default);
                status.phase.get_or_insert_with(|| "Pending".into());
                let conds = status.conditions.get_or_insert_with(Vec::new);
                conds.retain(|c| c.type_ != "PodScheduled");
                conds.push(PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(msg.clone()),
                    last_transition_time: Some(Time(jiff::Timestamp::now())),
                    ..Default::default()
                });
                match api
                    .replace_status(&name, &PostParams::default(), &updated)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if bosun_controllers::util::is_conflict(&e) => {
                        return Ok(Action::requeue(Duration::from_millis(50)));
                    }
                    Err(e) if bosun_controllers::util::is_not_found(&e) => {
                        return Ok(Action::await_change());
                    }
                    Err(e) => return Err(e.into()),
                }
                ctx.recorder
                    .record(&pod, WARNING, "FailedScheduling", &msg)
                    .await;
            }
            Ok(Action::requeue(RETRY_UNSCHEDULABLE))
        }
    }
}

/// Pending pods this scheduler handles, for retries when capacity may have appeared.
fn pending(store: &Store<Pod>) -> Vec<ObjectRef<Pod>> {
    store
        .state()
        .into_iter()
        .filter(|p| wants(p))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Runs the scheduler with the default plugins until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(
        client,
        plugins::default_filters(),
        plugins::default_scores(),
        shutdown,
    )
    .await
}

/// Runs the scheduler with the given plugins until `shutdown`.
pub async fn run_with(
    client: Client,
    filters: Vec<Box<dyn Filter>>,
    scores: Vec<Box<dyn Score>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let pods = Informer::start(Api::<Pod>::all(client.clone()), stop.clone());
    let nodes = Informer::start(Api::<Node>::all(client.clone()), stop.clone());
    tokio::select! {
        _ = async { pods.ready().await; nodes.ready().await; } => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    let mut filters = filters;
    filters.push(Box::new(
        volumes::VolumeBinding::start(&client, stop.clone()).await,
    ));
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), DEFAULT_SCHEDULER),
        client,
        nodes: nodes.store(),
        pods: pods.store(),
        filters,
        scores,
        assumed: Mutex::new(HashMap::new()),
    });
    let on_node = pods.store();
    let on_pod = pods.store();
    let controller = Controller::for_shared_stream(
        pods.subscribe()
            .filter(|p| futures::future::ready(wants(p))),
        pods.store(),
    )
    // A node appearing or changing may make room for any pending pod ...
    .watches_shared_stream(nodes.subscribe(), move |_n: Arc<Node>| pending(&on_node))
    // ... and so may a pod finishing or going away.
    .watches_shared_stream(
        pods.subscribe().filter(|p| {
            futures::future::ready(p.metadata.deletion_timestamp.is_some() || !is_active(p))
        }),
        move |_p: Arc<Pod>| pending(&on_pod),
    );
    // One pod at a time: each decision must see the previous binding.
    drive("scheduler", controller, ctx, reconcile, 1, stop).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn only_unbound_default_pods_are_wanted() {
        let mut p = Pod {
            spec: Some(PodSpec::default()),
            ..Default::default()
        };
        assert!(wants(&p));
        p.spec.as_mut().unwrap().scheduler_name = Some(DEFAULT_SCHEDULER.into());
        assert!(wants(&p));
        p.spec.as_mut().unwrap().scheduler_name = Some("other".into());
        assert!(!wants(&p));
        p.spec.as_mut().unwrap().scheduler_name = None;
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert!(!wants(&p));
        p.spec.as_mut().unwrap().node_name = None;
        p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(!wants(&p));
    }
}
