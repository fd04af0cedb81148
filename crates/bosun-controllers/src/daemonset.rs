//! DaemonSet controller: one pod per eligible node (nodeSelector, required node affinity,
//! taints against the pod's tolerations plus the ones Kubernetes adds to daemon pods),
//! rolling updates (`maxUnavailable`, `maxSurge`) or `OnDelete`, and ControllerRevisions
//! holding the template history that `kubectl rollout history/undo ds/x` read and apply.
//!
//! Daemon pods are bound by the controller itself (`spec.nodeName`), with the node-name
//! affinity Kubernetes sets for the scheduler, so they run on cordoned nodes as upstream's do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use bosun_api::matching::node_term_matches;

use crate::events::{NORMAL, Recorder};
use crate::util::{
    LabelMatcher, controller_of, controller_ref, fnv32a, is_not_found, pod_available_in,
    pod_from_template, pod_is_available, pod_is_ready, pod_node, pod_phase, record_creations,
    safe_encode, scaled_value,
};

pub const REVISION_HASH: &str = "controller-revision-hash";
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";
const RESYNC: Duration = Duration::from_secs(300);

// ------------------------------------------------------------------ node eligibility

/// Tolerations Kubernetes adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`).
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut out = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out
}

/// Whether the daemon pod of `ds` should run on `node`, and whether one already there may
/// stay (`NodeShouldRunDaemonPod`): NoSchedule taints stop new pods only.
pub fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or("");
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|req| {
            req.node_selector_terms
                .iter()
                .any(|t| node_term_matches(t, labels, name))
        });
    if !selector_ok || !affinity_ok {
        return (false, false);
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations(spec.host_network == Some(true)));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| crate::util::tolerates(tol, t)))
    };
    if untolerated("NoExecute") {
        return (false, false);
    }
    (!untolerated("NoSchedule"), true)
}

// ------------------------------------------------------------------ revisions

/// The revision data Kubernetes stores: a patch replacing the pod template (`getPatch`).
pub fn revision_data(ds: &DaemonSet) -> Value {
    let template = ds.spec.as_ref().map(|s| &s.template);
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The hash naming a revision (`ControllerRevisionHash`).
pub fn revision_hash(data: &Value, collisions: i32) -> String {
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if collisions > 0 {
        bytes.extend(collisions.to_string().as_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

fn same_data(a: Option<&RawExtension>, b: &Value) -> bool {
    a.is_some_and(|a| &a.0 == b)
}

// ------------------------------------------------------------------ pod decisions

/// A daemon pod for `node` at revision `hash`.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let mut pod = pod_from_template(ds, ds.spec.as_ref().map(|s| &s.template));
    let labels = pod.metadata.labels.get_or_insert_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(
        TEMPLATE_GENERATION.into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    let spec = pod.spec.get_or_insert_default();
    let mut tolerations = spec.tolerations.take().unwrap_or_default();
    for t in daemon_tolerations(spec.host_network == Some(true)) {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    spec.tolerations = Some(tolerations);
    // The node-name term upstream gives the scheduler; bound here directly.
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    spec.node_name = Some(node.into());
    pod
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.labels().get(REVISION_HASH).map(String::as_str)
}

fn is_failed(p: &Pod) -> bool {
    pod_phase(p) == "Failed"
}

/// What to do about the pods of one DaemonSet, per node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods (by name) to delete.
    pub delete: Vec<String>,
}

/// Decides creations and deletions (`manage` + `rollingUpdate`). `nodes` maps each node
/// name to `(should_run, may_stay)`; `pods` are the DaemonSet's live pods.
pub fn plan(
    ds: &DaemonSet,
    nodes: &BTreeMap<String, (bool, bool)>,
    pods: &[Pod],
    hash: &str,
    now: jiff::Timestamp,
) -> Plan {
    let spec = ds.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        by_node
            .entry(pod_node(p).unwrap_or(""))
            .or_default()
            .push(p);
    }
    let mut out = Plan::default();
    for (node, (run, stay)) in nodes {
        let here = by_node.remove(node.as_str()).unwrap_or_default();
        if !run && !stay {
            out.delete.extend(here.iter().map(|p| p.name_any()));
            continue;
        }
        // Failed pods are replaced.
        let (failed, live): (Vec<&Pod>, Vec<&Pod>) = here.into_iter().partition(|p| is_failed(p));
        out.delete.extend(failed.iter().map(|p| p.name_any()));
        if live.is_empty() {
            if *run {
                out.create.push(node.clone());
            }
            continue;
        }
        // More than one pod: keep the newest of the current revision (else the oldest).
        if live.len() > 1 {
            let mut keep = live.clone();
            keep.sort_by_key(|p| {
                (
                    hash_of(p) != Some(hash),
                    p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                )
            });
            let current: Vec<&&Pod> = keep.iter().filter(|p| hash_of(p) == Some(hash)).collect();
            let old: Vec<&&Pod> = keep.iter().filter(|p| hash_of(p) != Some(hash)).collect();
            // A surge pair (old + new) is left to the rolling update.
            let surge_pair = current.len() == 1 && old.len() == 1;
            if !surge_pair {
                out.delete.extend(keep.iter().skip(1).map(|p| p.name_any()));
            }
        }
    }
    // Pods on nodes that no longer exist or were never eligible.
    for (_, here) in by_node {
        out.delete.extend(here.iter().map(|p| p.name_any()));
    }
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() == Some("OnDelete") {
        return out;
    }
    // Rolling update over the nodes that should run a pod.
    let desired = nodes.values().filter(|(r, _)| *r).count() as i32;
    let ru = strategy.rolling_update.clone().unwrap_or_default();
    let max_surge =
        scaled_value(&ru.max_surge.unwrap_or(IntOrString::Int(0)), desired, true).unwrap_or(0);
    let mut max_unavailable = scaled_value(
        &ru.max_unavailable.unwrap_or(IntOrString::Int(1)),
        desired,
        true,
    )
    .unwrap_or(1);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let available = |p: &Pod| pod_is_available(p, min_ready, now);
    let mut unavailable = 0;
    let mut old_candidates: Vec<(&str, &Pod, bool)> = Vec::new();
    let mut surging = 0;
    let mut surge_ready: Vec<&Pod> = Vec::new();
    for (node, (run, stay)) in nodes {
        if !run && !stay {
            continue;
        }
        let here: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_failed(p))
            .filter(|p| pod_node(p) == Some(node.as_str()))
            .filter(|p| !out.delete.contains(&p.name_any()))
            .collect();
        // A node that only keeps a pod it already has (NoSchedule taint) counts only then.
        if !run && here.is_empty() {
            continue;
        }
        let new = here.iter().find(|p| hash_of(p) == Some(hash));
        let old = here.iter().find(|p| hash_of(p) != Some(hash));
        match (new, old) {
            (Some(n), Some(o)) => {
                surging += 1;
                if available(n) {
                    surge_ready.push(o);
                } else if !available(o) {
                    unavailable += 1;
                }
            }
            (Some(n), None) => {
                if !available(n) {
                    unavailable += 1;
                }
            }
            (None, Some(o)) => {
                let ok = available(o);
                if !ok {
                    unavailable += 1;
                }
                old_candidates.push((node.as_str(), o, ok));
            }
            (None, None) => unavailable += 1,
        }
    }
    // A surged node whose new pod is available lets its old pod go.
    out.delete.extend(surge_ready.iter().map(|p| p.name_any()));
    if max_surge > 0 {
        let mut room = (max_surge - surging).max(0);
        for (node, o, ok) in &old_candidates {
            if !ok {
                // An unavailable old pod is replaced at once.
                out.delete.push(o.name_any());
            } else if room > 0 {
                room -= 1;
                out.create.push(node.to_string());
            }
        }
        return out;
    }
    // Unavailable old pods go first, they cost nothing; then available ones within budget.
    let mut budget = max_unavailable - unavailable;
    for (_, o, ok) in &old_candidates {
        if !ok {
            out.delete.push(o.name_any());
        }
    }
    for (_, o, ok) in &old_candidates {
        if *ok && budget > 0 {
            budget -= 1;
            out.delete.push(o.name_any());
        }
    }
    out
}

/// Status from the pods after this pass's plan.
pub fn status_of(
    ds: &DaemonSet,
    nodes: &BTreeMap<String, (bool, bool)>,
    pods: &[Pod],
    hash: &str,
    now: jiff::Timestamp,
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut st = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_failed(p))
        .collect();
    for (node, (run, _)) in nodes {
        let here: Vec<&&Pod> = live
            .iter()
            .filter(|p| pod_node(p) == Some(node.as_str()))
            .collect();
        let wanted = *run;
        if wanted {
            st.desired_number_scheduled += 1;
            if here.is_empty() {
                continue;
            }
            st.current_number_scheduled += 1;
            let newest = here
                .iter()
                .find(|p| hash_of(p) == Some(hash))
                .or_else(|| here.first())
                .map(|p| **p);
            if let Some(p) = newest {
                if pod_is_ready(p) {
                    st.number_ready += 1;
                }
                if pod_is_available(p, min_ready, now) {
                    st.number_available = Some(st.number_available.unwrap_or(0) + 1);
                }
                if hash_of(p) == Some(hash) {
                    st.updated_number_scheduled =
                        Some(st.updated_number_scheduled.unwrap_or(0) + 1);
                }
            }
        } else if !here.is_empty() {
            st.number_misscheduled += 1;
        }
    }
    let available = st.number_available.unwrap_or(0);
    st.number_available = Some(available);
    st.updated_number_scheduled = Some(st.updated_number_scheduled.unwrap_or(0));
    st.number_unavailable = Some(st.desired_number_scheduled - available);
    st
}

// ------------------------------------------------------------------ reconcile

struct Ctx {
    client: Client,
    recorder: Recorder,
    nodes: Store<Node>,
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(ds) = api.get_opt(&ds.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let matcher = LabelMatcher::new(Some(&spec.selector));
    if matcher.is_empty() {
        return Ok(Action::await_change());
    }
    let uid = ds.uid().unwrap_or_default();
    let now = crate::util::now();
    let hash = sync_revisions(&ctx, &ds, &matcher).await?;

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut lp = ListParams::default();
    if let Some(q) = matcher.query() {
        lp = lp.labels(&q);
    }
    let pods: Vec<Pod> = pod_api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let nodes: BTreeMap<String, (bool, bool)> = ctx
        .nodes
        .state()
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| (n.name_any(), should_run(&ds, n)))
        .collect();
    let plan = plan(&ds, &nodes, &pods, &hash, now);

    let dels = join_all(
        pods.iter()
            .filter(|p| plan.delete.contains(&p.name_any()))
            .map(|p| {
                let dp = DeleteParams {
                    preconditions: p.uid().map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let api = pod_api.clone();
                let name = p.name_any();
                async move { (name.clone(), api.delete(&name, &dp).await) }
            }),
    )
    .await;
    for (name, r) in dels {
        match r {
            Ok(_) => {
                let msg = format!("Deleted pod: {name}");
                ctx.recorder
                    .record(&ds, NORMAL, "SuccessfulDelete", &msg)
                    .await;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let made = join_all(plan.create.iter().map(|node| {
        let pod = pod_for(&ds, node, &hash);
        let api = pod_api.clone();
        async move { api.create(&PostParams::default(), &pod).await }
    }))
    .await;
    let (created, create_err) = record_creations(&ctx.recorder, &ds, made).await;

    let mut after: Vec<Pod> = pods
        .into_iter()
        .filter(|p| !plan.delete.contains(&p.name_any()))
        .collect();
    after.extend(created);
    let status = status_of(&ds, &nodes, &after, &hash, now);
    if ds.status.as_ref() != Some(&status) {
        let mut updated = ds.clone();
        updated.status = Some(status);
        api.replace_status(&ds.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    if let Some(e) = create_err {
        return Err(anyhow::anyhow!(e).into());
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let next = after
        .iter()
        .filter_map(|p| pod_available_in(p, min_ready, now))
        .min()
        .map(|d| d + Duration::from_millis(50));
    Ok(Action::requeue(next.map_or(RESYNC, |n| n.min(RESYNC))))
}

/// Makes sure a ControllerRevision holds the current template, numbered newest; trims old
/// unused ones to `revisionHistoryLimit`. Returns the current revision's hash.
async fn sync_revisions(
    ctx: &Ctx,
    ds: &DaemonSet,
    matcher: &LabelMatcher,
) -> Result<String, ReconcileError> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = ds.uid().unwrap_or_default();
    let mut lp = ListParams::default();
    if let Some(q) = matcher.query() {
        lp = lp.labels(&q);
    }
    let mut revs: Vec<ControllerRevision> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    revs.sort_by_key(|r| r.revision);
    let data = revision_data(ds);
    let max = revs.last().map_or(0, |r| r.revision);
    let current_hash = if let Some(r) = revs.iter().find(|r| same_data(r.data.as_ref(), &data)) {
        let hash = r
            .labels()
            .get(REVISION_HASH)
            .cloned()
            .unwrap_or_else(|| r.name_any());
        if r.revision < max {
            // A rollback to an old template: it becomes the newest revision again.
            let mut bumped = r.clone();
            bumped.revision = max + 1;
            bumped.metadata.annotations = ds.metadata.annotations.clone();
            api.replace(&r.name_any(), &PostParams::default(), &bumped)
                .await?;
        }
        hash
    } else {
        let mut collisions = ds
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        loop {
            let hash = revision_hash(&data, collisions);
            let mut labels = ds
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH.into(), hash.clone());
            let rev = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{hash}", ds.name_any())),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: ds.metadata.annotations.clone(),
                    owner_references: Some(vec![controller_ref(
                        "apps/v1",
                        "DaemonSet",
                        &ds.metadata,
                    )]),
                    ..Default::default()
                },
                data: Some(RawExtension(data.clone())),
                revision: max + 1,
            };
            match api.create(&PostParams::default(), &rev).await {
                Ok(_) => break hash,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Same name, other content: count a collision and try the next hash.
                    match api.get_opt(&format!("{}-{hash}", ds.name_any())).await? {
                        Some(r)
                            if same_data(r.data.as_ref(), &data)
                                && controller_of(&r.metadata).is_some_and(|o| o.uid == uid) =>
                        {
                            break hash;
                        }
                        _ => collisions += 1,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    // History: old revisions no live pod uses, beyond the limit, oldest first.
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut in_use: HashMap<String, ()> = HashMap::new();
    if revs.len() > limit + 1 {
        for p in pods.list(&lp).await?.items {
            if let Some(h) = p.labels().get(REVISION_HASH) {
                in_use.insert(h.clone(), ());
            }
        }
        let old: Vec<&ControllerRevision> = revs
            .iter()
            .filter(|r| r.labels().get(REVISION_HASH) != Some(&current_hash))
            .filter(|r| {
                r.labels()
                    .get(REVISION_HASH)
                    .is_none_or(|h| !in_use.contains_key(h))
            })
            .collect();
        let excess = old.len().saturating_sub(limit);
        for r in old.iter().take(excess) {
            match api.delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(current_hash)
}

pub(crate) async fn run(
    client: Client,
    daemon_sets: Informer<DaemonSet>,
    revisions: Informer<ControllerRevision>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
        client,
        nodes: nodes.store(),
    });
    let all = daemon_sets.store();
    let controller = Controller::for_shared_stream(daemon_sets.subscribe(), daemon_sets.store())
        .owns_shared_stream(pods.subscribe())
        .owns_shared_stream(revisions.subscribe())
        // A node joining, leaving or changing labels or taints concerns every DaemonSet.
        .watches_shared_stream(nodes.subscribe(), move |_n: Arc<Node>| {
            all.state()
                .into_iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        });
    drive(
        "daemonset",
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
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::api::core::v1::Taint;
    use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodSpec, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn ds(surge: i32, unavailable: i32) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "agent".to_string())].into()),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "agent".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                },
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_surge: Some(IntOrString::Int(surge)),
                        max_unavailable: Some(IntOrString::Int(unavailable)),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(REVISION_HASH.to_string(), hash.to_string())].into()),
                creation_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: ready.then(|| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn nodes(names: &[&str]) -> BTreeMap<String, (bool, bool)> {
        names
            .iter()
            .map(|n| (n.to_string(), (true, true)))
            .collect()
    }

    #[test]
    fn eligibility_follows_selectors_and_taints() {
        let mut d = ds(0, 1);
        let n = node("n1", &[("disk", "ssd")], vec![]);
        assert_eq!(should_run(&d, &n), (true, true));
        // Cordoned and memory-pressured nodes still run daemons.
        let cordoned = node(
            "n2",
            &[],
            vec![taint("node.kubernetes.io/unschedulable", "NoSchedule")],
        );
        assert_eq!(should_run(&d, &cordoned), (true, true));
        let master = node(
            "n3",
            &[],
            vec![taint("node-role.kubernetes.io/control-plane", "NoSchedule")],
        );
        assert_eq!(should_run(&d, &master), (false, true));
        let evict = node("n4", &[], vec![taint("dedicated", "NoExecute")]);
        assert_eq!(should_run(&d, &evict), (false, false));
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .node_selector = Some([("disk".to_string(), "hdd".to_string())].into());
        assert_eq!(should_run(&d, &n), (false, false));
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .node_selector = None;
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(should_run(&d, &evict), (true, true));
    }

    #[test]
    fn creates_one_pod_per_node_and_removes_extras() {
        let d = ds(0, 1);
        let now = jiff::Timestamp::now();
        let p = plan(
            &d,
            &nodes(&["a", "b"]),
            &[pod("x", "a", "h1", true)],
            "h1",
            now,
        );
        assert_eq!(p.create, ["b"]);
        assert!(p.delete.is_empty());
        let p = plan(
            &d,
            &nodes(&["a"]),
            &[
                pod("x", "a", "h1", true),
                pod("y", "a", "h1", true),
                pod("z", "gone", "h1", true),
            ],
            "h1",
            now,
        );
        assert!(p.create.is_empty());
        assert_eq!(p.delete.len(), 2);
        assert!(p.delete.contains(&"z".to_string()));
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let d = ds(0, 1);
        let now = jiff::Timestamp::now();
        let old = [
            pod("a", "a", "old", true),
            pod("b", "b", "old", true),
            pod("c", "c", "old", true),
        ];
        let p = plan(&d, &nodes(&["a", "b", "c"]), &old, "new", now);
        assert_eq!(p.delete.len(), 1);
        assert!(p.create.is_empty());
        // One node already without a pod: no more deletions until it is back.
        let p = plan(&d, &nodes(&["a", "b", "c"]), &old[1..], "new", now);
        assert_eq!(p.create, ["a"]);
        assert!(p.delete.is_empty());
        // A node only tolerated for pods already there (NoSchedule) does not hold it up.
        let mut with_tainted = nodes(&["a", "b", "c"]);
        with_tainted.insert("t".into(), (false, true));
        let p = plan(&d, &with_tainted, &old, "new", now);
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn surge_starts_new_pods_before_removing_old() {
        let d = ds(1, 0);
        let now = jiff::Timestamp::now();
        let old = [pod("a", "a", "old", true), pod("b", "b", "old", true)];
        let p = plan(&d, &nodes(&["a", "b"]), &old, "new", now);
        assert_eq!(p.create.len(), 1);
        assert!(p.delete.is_empty());
        let pods = [
            pod("a", "a", "old", true),
            pod("a2", "a", "new", true),
            pod("b", "b", "old", true),
        ];
        let p = plan(&d, &nodes(&["a", "b"]), &pods, "new", now);
        assert_eq!(p.delete, ["a"]);
    }

    #[test]
    fn revision_data_replaces_the_template() {
        let d = ds(0, 1);
        let data = revision_data(&d);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let h = revision_hash(&data, 0);
        assert_ne!(h, revision_hash(&data, 1));
        let s = status_of(
            &d,
            &nodes(&["a", "b"]),
            &[pod("x", "a", &h, true)],
            &h,
            jiff::Timestamp::now(),
        );
        assert_eq!(s.desired_number_scheduled, 2);
        assert_eq!(s.current_number_scheduled, 1);
        assert_eq!(s.number_ready, 1);
        assert_eq!(s.updated_number_scheduled, Some(1));
        assert_eq!(s.number_unavailable, Some(1));
    }
}
