//! Binds pending pods to nodes: filter and score plugins, priority, preemption.
//!
//! Pods with no `spec.nodeName` whose `schedulerName` is `default-scheduler` (or unset) wait
//! in a queue ordered by `spec.priority` ([`queue`]). One loop takes the most important,
//! runs filters ([`plugins::Filter`]) and scores ([`plugins::Score`]) against a cache of
//! nodes and their pods kept from the informers' events ([`cache`]), counts the pod on the
//! chosen node at once ("assumes" it) and binds it through `pods/NAME/binding` in a task of
//! its own, so that the next decision does not wait for the write. A pod that fits nowhere
//! gets `PodScheduled=False` (`Unschedulable`, with upstream's "0/N nodes are available"
//! message) and a `FailedScheduling` event; it may preempt lower-priority pods
//! ([`preempt`]), and is retried when a node or a pod changes, after a back-off.

pub mod affinity;
pub mod cache;
#[cfg(test)]
mod feature_tests;
pub mod plugins;
pub mod preempt;
pub mod queue;
pub mod resources;
pub mod spread;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use bosun_events::{NORMAL, Recorder, WARNING, object_reference};
use bosun_watch::Informer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use cache::Cache;
use plugins::{Filter, Placement, Score, place_from};
use preempt::priority;
use queue::Queue;

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// How long a binding this scheduler made counts against a node before the pod cache
/// shows it; after that the cache is the truth.
const ASSUME_TTL: Duration = Duration::from_secs(30);
/// Bindings in flight at once; the store commits concurrent writes together.
const MAX_BINDS_IN_FLIGHT: usize = 512;
/// How often the cache is checked against the informers' stores for missed deletions.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Events waiting to be written; beyond this they are dropped (they are a courtesy).
const EVENT_BACKLOG: usize = 16384;

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

fn key_of(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

fn ref_of(key: &str) -> ObjectRef<Pod> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    ObjectRef::new(name).within(ns)
}

fn scheduled_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
}

/// What a bind task reports back to the loop.
enum Outcome {
    /// The binding failed for a reason worth retrying.
    Retry { uid: String, key: String, prio: i32 },
    /// Already bound elsewhere or gone: the informer will tell.
    Forget { uid: String },
}

/// An Event to write: only the reference to its pod, not a copy of the pod.
struct Event {
    pod: ObjectReference,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

struct Scheduler {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    pdbs: Store<PodDisruptionBudget>,
    filters: Vec<Box<dyn Filter>>,
    scores: Vec<Box<dyn Score>>,
    cache: Cache,
    queue: Queue,
    next_start: usize,
    binds: Arc<Semaphore>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    events: mpsc::Sender<Event>,
}

impl Scheduler {
    fn on_pod(&mut self, seen: Arc<Pod>) {
        let mut changed = false;
        let key = key_of(&seen);
        let latest = self.pods.get(&ref_of(&key));
        let seen_uid = seen.metadata.uid.clone().unwrap_or_default();
        let same = latest
            .as_ref()
            .is_some_and(|l| l.metadata.uid.as_deref() == Some(seen_uid.as_str()));
        if !same {
            changed |= self.cache.remove_pod(&seen_uid);
        }
        match latest {
            None => self.queue.done(&key),
            Some(pod) => {
                let was = pod
                    .metadata
                    .uid
                    .as_deref()
                    .is_some_and(|u| self.cache.placed(u));
                let counts = self.cache.update_pod(pod.clone());
                // A bound pod that changed (came, finished, is going away) may make room
                // for, or be the peer of, a parked pod.
                changed |= was || counts;
                if wants(&pod) && !counts {
                    let nominated = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.nominated_node_name.as_deref());
                    self.cache.nominate(&pod, nominated);
                    self.queue.add(&key, priority(&pod));
                } else {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.cache.unnominate(uid);
                    }
                    self.queue.done(&key);
                }
            }
        }
        if changed {
            self.queue.cluster_changed();
        }
    }

    fn on_node(&mut self, seen: Arc<Node>) {
        let name = seen.name_any();
        match self.nodes.get(&ObjectRef::new(&name)) {
            Some(n) => self.cache.set_node(n),
            None => self.cache.remove_node(&name),
        }
        self.queue.cluster_changed();
    }

    /// Forgets pods and nodes deleted while an informer subscription had fallen behind.
    fn sweep(&mut self) {
        let pods = &self.pods;
        let nodes = &self.nodes;
        self.cache.sweep(
            |p| {
                pods.get(&ref_of(&key_of(p)))
                    .is_some_and(|l| l.metadata.uid == p.metadata.uid)
            },
            |n| nodes.get(&ObjectRef::new(n)).is_some(),
        );
    }

    fn on_outcome(&mut self, o: Outcome) {
        match o {
            Outcome::Forget { uid } => self.cache.forget(&uid),
            Outcome::Retry { uid, key, prio } => {
                self.cache.forget(&uid);
                self.queue.retry(&key, prio);
            }
        }
    }

    fn event(&self, pod: &Pod, type_: &'static str, reason: &'static str, message: String) {
        let _ = self.events.try_send(Event {
            pod: object_reference(pod),
            type_,
            reason,
            message,
        });
    }

    async fn schedule_one(&mut self) {
        let Some(key) = self.queue.pop() else {
            return;
        };
        let Some(pod) = self.pods.get(&ref_of(&key)) else {
            self.queue.done(&key);
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !wants(&pod) || self.cache.placed(&uid) {
            self.queue.done(&key);
            return;
        }
        self.cache.expire(ASSUME_TTL);
        let nodes = self.cache.nodes();
        let start = if nodes.is_empty() {
            0
        } else {
            self.next_start % nodes.len()
        };
        let (placement, processed) = place_from(
            &pod,
            nodes,
            &self.filters,
            &self.scores,
            start,
            self.cache.nominated(),
        );
        self.next_start = start + processed;
        match placement {
            Placement::Node(node) => {
                self.queue.done(&key);
                self.cache.assume(pod.clone(), &node);
                self.bind(pod, node).await;
            }
            Placement::Unschedulable(diag) => {
                let prio = priority(&pod);
                let mut msg = diag.message();
                let policy = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.preemption_policy.as_deref())
                    .unwrap_or("PreemptLowerPriority");
                let mut nominated = None;
                if policy == "Never" {
                    msg.push_str(" preemption: not eligible due to preemptionPolicy=Never.");
                } else if self.waiting_for_victims(&pod) {
                    // Victims chosen earlier are still terminating: no new preemption.
                    nominated = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.nominated_node_name.clone());
                } else {
                    let pdbs = self.pdbs.state();
                    match preempt::select(
                        &pod,
                        self.cache.nodes(),
                        &diag,
                        &self.filters,
                        &pdbs,
                        self.cache.nominated(),
                    ) {
                        Ok(c) => {
                            self.preempt(&pod, &c);
                            // The room is reserved from now on, before the status shows it.
                            self.cache.nominate(&pod, Some(&c.node));
                            nominated = Some(c.node);
                        }
                        Err(post) => {
                            msg.push(' ');
                            msg.push_str(&post);
                        }
                    }
                }
                self.report_unschedulable(&pod, msg, nominated);
                self.queue.unschedulable(&key, prio);
            }
        }
    }

    /// Whether pods this pod preempted earlier are still on its nominated node.
    fn waiting_for_victims(&self, pod: &Pod) -> bool {
        let Some(node) = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .and_then(|n| self.cache.node(n))
        else {
            return false;
        };
        let prio = priority(pod);
        node.pods
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some() && priority(p) < prio)
    }

    async fn bind(&mut self, pod: Arc<Pod>, node: String) {
        let Ok(permit) = self.binds.clone().acquire_owned().await else {
            return;
        };
        let client = self.client.clone();
        let outcomes = self.outcomes.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let uid = pod.uid().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    uid: Some(uid.clone()),
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
                Ok(_) => {
                    let _ = events.try_send(Event {
                        pod: object_reference(&*pod),
                        type_: NORMAL,
                        reason: "Scheduled",
                        message: format!("Successfully assigned {ns}/{name} to {node}"),
                    });
                }
                Err(e)
                    if bosun_watch::errors::is_conflict(&e)
                        || bosun_watch::errors::is_not_found(&e) =>
                {
                    let _ = outcomes.send(Outcome::Forget { uid });
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "binding failed");
                    let _ = outcomes.send(Outcome::Retry {
                        uid,
                        key: format!("{ns}/{name}"),
                        prio: priority(&pod),
                    });
                }
            }
        });
    }

    /// Sets `PodScheduled=False` (and the nominated node) unless already so; one event.
    fn report_unschedulable(&self, pod: &Arc<Pod>, msg: String, nominated: Option<String>) {
        let unchanged = scheduled_condition(pod).is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(msg.as_str())
        }) && pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone())
            == nominated;
        if unchanged {
            return;
        }
        let mut conds: Vec<PodCondition> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        conds.retain(|c| c.type_ != "PodScheduled");
        conds.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(msg.clone()),
            last_transition_time: Some(Time(jiff::Timestamp::now())),
            ..Default::default()
        });
        let patch = serde_json::json!({"status": {
            "phase": pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into()),
            "conditions": conds,
            "nominatedNodeName": nominated,
        }});
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let name = pod.name_any();
        tokio::spawn(async move {
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                && !bosun_watch::errors::is_not_found(&e)
            {
                tracing::warn!(pod = %name, error = %e, "setting PodScheduled=False");
            }
        });
        self.event(pod, WARNING, "FailedScheduling", msg);
    }

    /// Marks the victims (`DisruptionTarget`) and deletes them gracefully.
    fn preempt(&self, pod: &Pod, c: &preempt::Candidate) {
        let preemptor = pod.uid().unwrap_or_default();
        for v in &c.victims {
            self.event(
                v,
                NORMAL,
                "Preempted",
                format!("Preempted by pod {preemptor} on node {}", c.node),
            );
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &v.namespace().unwrap_or_default());
            let name = v.name_any();
            let uid = v.uid();
            let mut conds: Vec<PodCondition> = v
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            conds.retain(|c| c.type_ != "DisruptionTarget");
            conds.push(PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some("PreemptionByScheduler".into()),
                message: Some(format!(
                    "{DEFAULT_SCHEDULER}: preempting to accommodate a higher priority pod"
                )),
                last_transition_time: Some(Time(jiff::Timestamp::now())),
                ..Default::default()
            });
            let patch = serde_json::json!({"status": {"conditions": conds}});
            tokio::spawn(async move {
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                let mut dp = DeleteParams::default();
                if let Some(uid) = uid {
                    dp.preconditions = Some(kube::api::Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    });
                }
                if let Err(e) = api.delete(&name, &dp).await
                    && !bosun_watch::errors::is_not_found(&e)
                    && !bosun_watch::errors::is_conflict(&e)
                {
                    tracing::warn!(pod = %name, error = %e, "deleting a preemption victim");
                }
            });
        }
    }
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
    let _stop_informers = stop.clone().drop_guard();
    let pods = Informer::start(Api::<Pod>::all(client.clone()), stop.clone());
    let nodes = Informer::start(Api::<Node>::all(client.clone()), stop.clone());
    let pdbs = Informer::start(
        Api::<PodDisruptionBudget>::all(client.clone()),
        stop.clone(),
    );
    tokio::select! {
        _ = async { pods.ready().await; nodes.ready().await; pdbs.ready().await; } => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    let mut filters = filters;
    filters.push(Box::new(
        volumes::VolumeBinding::start(&client, stop.clone()).await,
    ));
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel();
    let (event_tx, mut event_rx) = mpsc::channel::<Event>(EVENT_BACKLOG);
    let recorder = Recorder::new(client.clone(), DEFAULT_SCHEDULER);
    let ev_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = ev_stop.cancelled() => return,
                ev = event_rx.recv() => ev,
            };
            let Some(ev) = ev else { return };
            if let Err(e) = recorder
                .record_ref(ev.pod, ev.type_, ev.reason, &ev.message)
                .await
            {
                tracing::debug!(error = %e, reason = ev.reason, "writing event failed");
            }
        }
    });
    let mut s = Scheduler {
        client,
        pods: pods.store(),
        nodes: nodes.store(),
        pdbs: pdbs.store(),
        filters,
        scores,
        cache: Cache::default(),
        queue: Queue::default(),
        next_start: 0,
        binds: Arc::new(Semaphore::new(MAX_BINDS_IN_FLIGHT)),
        outcomes: outcome_tx,
        events: event_tx,
    };
    // Nodes first, so that the pods listed next land on them.
    for n in s.nodes.state() {
        s.cache.set_node(n);
    }
    let mut pod_events = Box::pin(pods.subscribe());
    let mut node_events = Box::pin(nodes.subscribe());
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = s
            .queue
            .next_due()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + queue::MAX_PARKED);
        let idle = s.queue.is_empty();
        // Events first: each decision should see every change already delivered.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            Some(o) = outcome_rx.recv() => s.on_outcome(o),
            Some(n) = node_events.next() => s.on_node(n),
            Some(p) = pod_events.next() => s.on_pod(p),
            _ = tokio::time::sleep_until(due) => s.queue.flush(),
            _ = sweep.tick() => s.sweep(),
            _ = std::future::ready(()), if !idle => s.schedule_one().await,
        }
    }
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
