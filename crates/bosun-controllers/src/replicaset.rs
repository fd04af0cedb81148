//! ReplicaSet controller: keeps `spec.replicas` active pods matching the selector.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::util::{
    LabelMatcher, controller_of, controller_ref, is_not_found, pod_available_in, pod_is_active,
    pod_is_available, pod_is_ready, pod_phase, pod_ready_since,
};

/// Most pods created or deleted in one pass (`BurstReplicas`).
const BURST: i32 = 500;
const RESYNC: Duration = Duration::from_secs(300);
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn phase_rank(p: &Pod) -> u8 {
    match pod_phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

fn deletion_cost(p: &Pod) -> i64 {
    p.annotations()
        .get(DELETION_COST)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
        })
}

fn node_name(p: &Pod) -> &str {
    crate::util::pod_node(p).unwrap_or("")
}

/// Deletion preference (`ActivePodsWithRanks`): `Less` means delete first.
fn cmp_for_deletion(a: &Pod, b: &Pod, ranks: &HashMap<String, usize>) -> Ordering {
    let assigned = |p: &Pod| !node_name(p).is_empty();
    let rank = |p: &Pod| ranks.get(node_name(p)).copied().unwrap_or(0);
    let ready_since = |p: &Pod| pod_ready_since(p).flatten();
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| pod_is_ready(a).cmp(&pod_is_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        // Pods doubled up on a node go first.
        .then_with(|| rank(b).cmp(&rank(a)))
        // Ready for less time first (unknown readiness time first).
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            (x, y) => x.is_some().cmp(&y.is_some()),
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        // Newer first; missing creation time first.
        .then_with(|| match (created(a), created(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            (x, y) => x.is_some().cmp(&y.is_some()),
        })
}

/// Picks `n` pods to delete from `active`, most expendable first.
pub fn pods_to_delete(active: &[Pod], n: usize) -> Vec<Pod> {
    let mut ranks: HashMap<String, usize> = HashMap::new();
    for p in active {
        if !node_name(p).is_empty() {
            *ranks.entry(node_name(p).to_string()).or_default() += 1;
        }
    }
    let mut sorted: Vec<&Pod> = active.iter().collect();
    sorted.sort_by(|a, b| cmp_for_deletion(a, b, &ranks));
    sorted.into_iter().take(n).cloned().collect()
}

/// Status from the active pods; the second value is when a ready pod will turn available.
pub fn calculate_status(
    rs: &ReplicaSet,
    active: &[Pod],
    create_error: Option<&str>,
    now: jiff::Timestamp,
) -> (ReplicaSetStatus, Option<Duration>) {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels: BTreeMap<String, String> = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut fully = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut next: Option<Duration> = None;
    for p in active {
        let labels = p.labels();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            fully += 1;
        }
        if pod_is_ready(p) {
            ready += 1;
            if pod_is_available(p, min_ready, now) {
                available += 1;
            } else if let Some(d) = pod_available_in(p, min_ready, now) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
    }
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(msg) = create_error {
        let prev = old
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure");
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(msg.to_string()),
            last_transition_time: prev
                .and_then(|c| c.last_transition_time.clone())
                .or(Some(Time(now))),
        });
    }
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    };
    (status, next.map(|d| d + Duration::from_millis(50)))
}

/// The pod a ReplicaSet creates from its template (`GetPodFromTemplate`).
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let tmpl = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

/// Batch sizes of a slow start: 1, 2, 4 ... so a failing template costs one request, not 500.
pub fn slow_start_batches(total: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = total;
    let mut size = 1;
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size *= 2;
    }
    out
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    pods: Store<Pod>,
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = rs.namespace().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(rs) = rs_api.get_opt(&rs.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let matcher = LabelMatcher::new(Some(&spec.selector));
    if matcher.is_empty() {
        return Ok(Action::await_change());
    }
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = rs.metadata.deletion_timestamp.is_some();

    // Release owned pods that stopped matching (seen in the cache; rare and harmless if late).
    for p in ctx.pods.state() {
        if p.namespace().as_deref() == Some(ns.as_str())
            && controller_of(&p.metadata).is_some_and(|r| r.uid == uid)
            && !matcher.matches(Some(p.labels()))
            && !deleting
            && p.metadata.deletion_timestamp.is_none()
        {
            let mut released = (*p).clone();
            if let Some(refs) = released.metadata.owner_references.as_mut() {
                refs.retain(|r| r.uid != uid);
            }
            if let Err(e) = pod_api
                .replace(&p.name_any(), &PostParams::default(), &released)
                .await
                && !is_not_found(&e)
            {
                return Err(e.into());
            }
        }
    }

    // Claim from a fresh list so pods created by the previous pass are counted.
    let mut lp = ListParams::default();
    if let Some(q) = matcher.query() {
        lp = lp.labels(&q);
    }
    let mut owned = Vec::new();
    for p in pod_api.list(&lp).await?.items {
        match controller_of(&p.metadata) {
            Some(r) if r.uid == uid => owned.push(p),
            Some(_) => {}
            None if !deleting && p.metadata.deletion_timestamp.is_none() && pod_is_active(&p) => {
                let mut adopted = p.clone();
                adopted
                    .metadata
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
                match pod_api
                    .replace(&p.name_any(), &PostParams::default(), &adopted)
                    .await
                {
                    Ok(p) => owned.push(p),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {}
        }
    }
    let active: Vec<Pod> = owned.into_iter().filter(pod_is_active).collect();

    let mut create_error = None;
    if !deleting {
        let want = spec.replicas.unwrap_or(1);
        let diff = active.len() as i32 - want;
        if diff < 0 {
            create_error = create_pods(&ctx, &rs, (-diff).min(BURST) as usize).await;
        } else if diff > 0 {
            delete_pods(
                &ctx,
                &rs,
                &pods_to_delete(&active, diff.min(BURST) as usize),
            )
            .await?;
        }
    }

    let (status, next) =
        calculate_status(&rs, &active, create_error.as_deref(), crate::util::now());
    if rs.status.as_ref() != Some(&status) {
        let mut updated = rs.clone();
        updated.status = Some(status);
        rs_api
            .replace_status(&rs.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    if let Some(e) = create_error {
        return Err(anyhow::anyhow!(e).into());
    }
    Ok(Action::requeue(next.map_or(RESYNC, |n| n.min(RESYNC))))
}

/// Creates `n` pods in slow-start batches; returns the first error message.
async fn create_pods(ctx: &Ctx, rs: &ReplicaSet, n: usize) -> Option<String> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let pod = pod_from_template(rs);
    let pp = PostParams::default();
    for batch in slow_start_batches(n) {
        let results = join_all((0..batch).map(|_| api.create(&pp, &pod))).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(p) => {
                    ctx.recorder
                        .record(
                            rs,
                            NORMAL,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", p.name_any()),
                        )
                        .await;
                }
                Err(e) => {
                    let msg = format!("Error creating: {e}");
                    ctx.recorder.record(rs, WARNING, "FailedCreate", &msg).await;
                    failed = Some(msg);
                }
            }
        }
        if failed.is_some() {
            return failed;
        }
    }
    None
}

async fn delete_pods(ctx: &Ctx, rs: &ReplicaSet, pods: &[Pod]) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let results = join_all(pods.iter().map(|p| {
        let dp = DeleteParams {
            preconditions: p.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        let api = api.clone();
        async move { (p.name_any(), api.delete(&p.name_any(), &dp).await) }
    }))
    .await;
    let mut first_err = None;
    for (name, r) in results {
        match r {
            Ok(_) => {
                ctx.recorder
                    .record(
                        rs,
                        NORMAL,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                ctx.recorder
                    .record(rs, WARNING, "FailedDelete", &format!("Error deleting: {e}"))
                    .await;
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

pub(crate) async fn run(
    client: Client,
    replica_sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    shutdown: CancellationToken,
) {
    let rs_store = replica_sets.store();
    let orphan_rs = rs_store.clone();
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
        client,
        pods: pods.store(),
    });
    let controller = Controller::for_shared_stream(replica_sets.subscribe(), rs_store)
        .owns_shared_stream(pods.subscribe())
        // Orphan pods a ReplicaSet may adopt.
        .watches_shared_stream(pods.subscribe(), move |p: Arc<Pod>| {
            if controller_of(&p.metadata).is_some() {
                return Vec::new();
            }
            orphan_rs
                .state()
                .into_iter()
                .filter(|rs| rs.namespace() == p.namespace())
                .filter(|rs| {
                    let m = LabelMatcher::new(rs.spec.as_ref().map(|s| &s.selector));
                    !m.is_empty() && m.matches(Some(p.labels()))
                })
                .map(|rs| ObjectRef::from_obj(rs.as_ref()))
                .collect::<Vec<_>>()
        });
    drive(
        "replicaset",
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
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{
        ContainerStatus, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn ts(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(ts(created))),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(ts(t))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn names(p: &[Pod]) -> Vec<String> {
        p.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_unready() {
        let pods = vec![
            pod("ready-old", "n1", "Running", Some(10), 0),
            pod("unscheduled", "", "Pending", None, 5),
            pod("pending", "n2", "Pending", None, 5),
            pod("notready", "n3", "Running", None, 5),
            pod("ready-new", "n4", "Running", Some(50), 40),
        ];
        assert_eq!(
            names(&pods_to_delete(&pods, 5)),
            [
                "unscheduled",
                "pending",
                "notready",
                "ready-new",
                "ready-old"
            ]
        );
        assert_eq!(names(&pods_to_delete(&pods, 1)), ["unscheduled"]);
    }

    #[test]
    fn deletion_prefers_doubled_up_then_restarts() {
        let mut a = pod("a", "n1", "Running", Some(10), 0);
        let b = pod("b", "n2", "Running", Some(10), 0);
        let c = pod("c", "n2", "Running", Some(10), 0);
        assert_eq!(
            names(&pods_to_delete(&[a.clone(), b.clone(), c.clone()], 1))[0],
            "b"
        );
        // Same node spread: more restarts goes first.
        a.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            restart_count: 3,
            ..Default::default()
        }]);
        let d = pod("d", "n3", "Running", Some(10), 0);
        assert_eq!(names(&pods_to_delete(&[d, a], 1)), ["a"]);
    }

    fn rs(replicas: i32, min_ready: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: Some(min_ready),
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(
                            [
                                ("app".to_string(), "web".to_string()),
                                ("tier".to_string(), "fe".to_string()),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                }),
            }),
            status: None,
        }
    }

    #[test]
    fn status_counts_ready_available_and_fully_labeled() {
        let r = rs(3, 10);
        let mut full = pod("a", "n1", "Running", Some(0), 0);
        full.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "fe".into());
        let pods = vec![
            full,
            pod("b", "n1", "Running", Some(95), 0),
            pod("c", "n1", "Pending", None, 0),
        ];
        let (s, next) = calculate_status(&r, &pods, None, ts(100));
        assert_eq!(s.replicas, 3);
        assert_eq!(s.fully_labeled_replicas, Some(1));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.observed_generation, Some(3));
        // b becomes available 5s later.
        let next = next.unwrap();
        assert!(next >= Duration::from_secs(5) && next < Duration::from_secs(6));
        let (s, _) = calculate_status(&r, &pods, Some("Error creating: quota"), ts(200));
        assert_eq!(s.available_replicas, Some(2));
        let c = &s.conditions.unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.reason.as_deref()),
            ("ReplicaFailure", Some("FailedCreate"))
        );
    }

    #[test]
    fn template_pod_is_owned_and_named_after_rs() {
        let p = pod_from_template(&rs(1, 0));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ReplicaSet", "u1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(
            p.metadata.labels.unwrap().get("tier").map(String::as_str),
            Some("fe")
        );
    }

    #[test]
    fn slow_start() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), [1]);
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
    }
}
