//! Node lifecycle: a node whose Lease in `kube-node-lease` stops being renewed is marked
//! Unknown after the grace period and tainted `node.kubernetes.io/unreachable:NoExecute`;
//! each of its pods is deleted once its toleration of that taint runs out (taint-based
//! eviction; admission gives pods a default toleration, see `bosun_api::defaults`), so
//! their ReplicaSets replace them on healthy nodes. A node heard from again loses the taint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::ControllerConfig;
use crate::events::{NORMAL, Recorder};
use crate::util::is_not_found;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const UNKNOWN_REASON: &str = "NodeStatusUnknown";
pub const UNKNOWN_MESSAGE: &str = "Kubelet stopped posting node status.";
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// How long a pod stays on an unreachable node: `None` = for ever (a toleration without
/// seconds), `Some(0)` = not tolerated at all.
pub fn unreachable_toleration(pod: &Pod) -> Option<Duration> {
    let tols = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    let mut best: Option<Option<Duration>> = None;
    for t in tols.into_iter().flatten() {
        let key_ok = match t.operator.as_deref() {
            Some("Exists") => t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == UNREACHABLE_TAINT),
            _ => t.key.as_deref() == Some(UNREACHABLE_TAINT),
        };
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        if !(key_ok && effect_ok) {
            continue;
        }
        let this = t
            .toleration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64));
        best = Some(match (best, this) {
            (Some(None), _) | (_, None) => None,
            (Some(Some(a)), Some(b)) => Some(a.max(b)),
            (None, Some(b)) => Some(b),
        });
    }
    best.unwrap_or(Some(Duration::ZERO))
}

/// Sets every condition to Unknown (`NodeStatusUnknown`); returns whether anything changed.
pub fn mark_unknown(node: &mut Node, now: jiff::Timestamp) -> bool {
    let status = node.status.get_or_insert_with(Default::default);
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if !conds.iter().any(|c| c.type_ == "Ready") {
        conds.push(k8s_openapi::api::core::v1::NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            ..Default::default()
        });
    }
    let mut changed = false;
    for c in conds.iter_mut() {
        if c.status != "Unknown" || c.reason.as_deref() != Some(UNKNOWN_REASON) {
            c.status = "Unknown".into();
            c.reason = Some(UNKNOWN_REASON.into());
            c.message = Some(UNKNOWN_MESSAGE.into());
            c.last_transition_time = Some(Time(now));
            changed = true;
        }
    }
    changed
}

struct Ctx {
    client: Client,
    cfg: ControllerConfig,
    leases: Store<Lease>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
    /// When each node's lease was last seen to change, by this process's clock: comparing
    /// against the agent's own timestamps would make clock skew look like an outage.
    /// Restarting forgets it, which only grants every node a fresh grace period.
    observed: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let name = node.name_any();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
    let renew = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.to_string());
    let silence = {
        let mut obs = ctx.observed.lock().await;
        let now = Instant::now();
        let entry = obs.entry(name.clone()).or_insert((renew.clone(), now));
        if entry.0 != renew {
            *entry = (renew, now);
        }
        now.duration_since(entry.1)
    };
    let grace = ctx.cfg.node_monitor_grace_period;
    if silence <= grace {
        if has_unreachable_taint(&node) {
            set_taint(&ctx, &name, false).await?;
        }
        return Ok(Action::requeue(
            grace - silence + Duration::from_millis(100),
        ));
    }
    set_unknown(&ctx, &name).await?;
    // As Kubernetes' full-disruption mode: with no other node Ready the fault is as likely on
    // this side (a stalled control plane) and there is nowhere to go, so nothing is evicted.
    let others_ready = ctx
        .nodes
        .state()
        .iter()
        .any(|n| n.name_any() != name && is_ready(n));
    if !others_ready {
        return Ok(Action::requeue(grace));
    }
    if !has_unreachable_taint(&node) {
        set_taint(&ctx, &name, true).await?;
    }
    Ok(match evict_pods(&ctx, &node, silence - grace).await? {
        Some(wait) => Action::requeue(wait),
        None => Action::requeue(grace),
    })
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn has_unreachable_taint(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == UNREACHABLE_TAINT))
}

/// Adds or removes the `unreachable:NoExecute` taint, keeping every other taint.
async fn set_taint(ctx: &Ctx, name: &str, on: bool) -> Result<(), ReconcileError> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let Some(mut node) = api.get_opt(name).await? else {
        return Ok(());
    };
    let taints = node
        .spec
        .get_or_insert_with(Default::default)
        .taints
        .get_or_insert_with(Vec::new);
    let had = taints.iter().any(|t| t.key == UNREACHABLE_TAINT);
    if had == on {
        return Ok(());
    }
    taints.retain(|t| t.key != UNREACHABLE_TAINT);
    if on {
        taints.push(k8s_openapi::api::core::v1::Taint {
            key: UNREACHABLE_TAINT.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(crate::util::now())),
            value: None,
        });
    }
    match api.replace(name, &PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        // Someone else wrote the node meanwhile: the next pass sees the new version.
        Err(e) if crate::util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn set_unknown(ctx: &Ctx, name: &str) -> Result<(), ReconcileError> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let Some(mut node) = api.get_opt(name).await? else {
        return Ok(());
    };
    let was_ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if mark_unknown(&mut node, crate::util::now()) {
        if was_ready {
            tracing::warn!(node = %name, "node stopped reporting; its Ready condition is now Unknown");
        }
        api.replace_status(name, &PostParams::default(), &node)
            .await?;
        if was_ready {
            ctx.recorder
                .record(
                    &node,
                    NORMAL,
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
        }
    }
    Ok(())
}

/// Deletes the pods bound to an unreachable node whose toleration of the taint has run out
/// (`unreachable_for` is how long the node has been unreachable). Pods already past their
/// grace period are removed outright: the node's agent, which would finish them, is gone.
/// Returns when to look again if pods remain.
async fn evict_pods(
    ctx: &Ctx,
    node: &Node,
    unreachable_for: Duration,
) -> Result<Option<Duration>, ReconcileError> {
    let name = node.name_any();
    let now = crate::util::now();
    let mut next: Option<Duration> = None;
    let mut announced = false;
    for pod in ctx.pods.state() {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str()) {
            continue;
        }
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let mut dp = DeleteParams {
            preconditions: pod.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match &pod.metadata.deletion_timestamp {
            Some(t) if t.0 <= now => dp.grace_period_seconds = Some(0),
            Some(t) => {
                // Look again when its grace period runs out.
                let wait = t.0.duration_since(now).unsigned_abs() + Duration::from_millis(100);
                next = Some(next.map_or(wait, |n| n.min(wait)));
                continue;
            }
            None => {
                match unreachable_toleration(&pod) {
                    None => continue,
                    Some(tol) if tol > unreachable_for => {
                        let wait = tol - unreachable_for + Duration::from_millis(100);
                        next = Some(next.map_or(wait, |n| n.min(wait)));
                        continue;
                    }
                    Some(_) => {}
                }
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30)
                    .max(0) as u64;
                let wait = Duration::from_secs(grace) + Duration::from_millis(100);
                next = Some(next.map_or(wait, |n| n.min(wait)));
                if !announced {
                    tracing::warn!(node = %name, "node unreachable past the eviction timeout; evicting its pods");
                    ctx.recorder
                        .record(
                            node,
                            NORMAL,
                            "DeletingAllPods",
                            &format!("Deleting all Pods from Node {name}."),
                        )
                        .await;
                    announced = true;
                }
                tracing::info!(node = %name, pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "evicting pod");
                ctx.recorder
                    .record(
                        pod.as_ref(),
                        NORMAL,
                        "NodeControllerEviction",
                        &format!(
                            "Marking for deletion Pod {} from Node {name}",
                            pod.name_any()
                        ),
                    )
                    .await;
            }
        }
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) || crate::util::is_conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(next)
}

pub(crate) async fn run(
    client: Client,
    cfg: ControllerConfig,
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods: Informer<Pod>,
    shutdown: CancellationToken,
) {
    let controller = Controller::for_shared_stream(nodes.subscribe(), nodes.store())
        .watches_shared_stream(leases.subscribe(), |l: Arc<Lease>| {
            (l.namespace().as_deref() == Some(LEASE_NAMESPACE))
                .then(|| ObjectRef::<Node>::new(&l.name_any()))
        });
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "node-controller"),
        client,
        cfg,
        leases: leases.store(),
        nodes: nodes.store(),
        pods: pods.store(),
        observed: Mutex::new(HashMap::new()),
    });
    drive(
        "node-lifecycle",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

    #[test]
    fn toleration_of_unreachable() {
        let pod = |tols: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"spec": {"containers": [], "tolerations": tols}}),
            )
            .unwrap()
        };
        let s = Duration::from_secs;
        assert_eq!(
            unreachable_toleration(&pod(serde_json::json!([]))),
            Some(s(0))
        );
        let default = serde_json::json!([{"key": UNREACHABLE_TAINT, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 5}]);
        assert_eq!(unreachable_toleration(&pod(default)), Some(s(5)));
        // A toleration without seconds keeps the pod for ever; so does a bare Exists.
        let forever = serde_json::json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}]);
        assert_eq!(unreachable_toleration(&pod(forever)), None);
        assert_eq!(
            unreachable_toleration(&pod(serde_json::json!([{"operator": "Exists"}]))),
            None
        );
        // Other taints and effects do not count.
        let other = serde_json::json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 100},
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]);
        assert_eq!(unreachable_toleration(&pod(other)), Some(s(0)));
    }

    #[test]
    fn marks_conditions_unknown_once() {
        let mut node = Node {
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("KubeletReady".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let now = jiff::Timestamp::now();
        assert!(mark_unknown(&mut node, now));
        let c = &node.status.as_ref().unwrap().conditions.as_ref().unwrap()[0];
        assert_eq!(c.status, "Unknown");
        assert_eq!(c.reason.as_deref(), Some(UNKNOWN_REASON));
        assert_eq!(c.message.as_deref(), Some(UNKNOWN_MESSAGE));
        assert!(!mark_unknown(&mut node, now), "second pass changes nothing");
        // A node without any condition gets a Ready=Unknown one.
        let mut bare = Node::default();
        assert!(mark_unknown(&mut bare, now));
        assert_eq!(bare.status.unwrap().conditions.unwrap()[0].type_, "Ready");
    }
}
