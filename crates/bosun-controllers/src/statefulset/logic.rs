//! Pure StatefulSet decisions, following Kubernetes' pkg/controller/statefulset
//! (`stateful_set_control.go`, `stateful_set_utils.go`): from the set, its pods, claims and
//! revisions, what to create, delete or update next, and the status to report.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

use crate::util::{
    controller_ref, fnv32a, pod_is_available, pod_is_ready, pod_is_terminating, pod_phase,
    safe_encode, scaled_value,
};

pub const REVISION_HASH: &str = "controller-revision-hash";
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

pub fn replicas(s: &StatefulSet) -> i32 {
    s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn name(s: &StatefulSet) -> &str {
    s.metadata.name.as_deref().unwrap_or("")
}

fn start_ordinal(s: &StatefulSet) -> i32 {
    s.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

pub fn is_parallel(s: &StatefulSet) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        == Some("Parallel")
}

pub fn is_on_delete(s: &StatefulSet) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete")
}

fn rolling(
    s: &StatefulSet,
) -> Option<&k8s_openapi::api::apps::v1::RollingUpdateStatefulSetStrategy> {
    s.spec
        .as_ref()?
        .update_strategy
        .as_ref()?
        .rolling_update
        .as_ref()
}

pub fn partition(s: &StatefulSet) -> i32 {
    rolling(s).and_then(|r| r.partition).unwrap_or(0).max(0)
}

/// Pods that may be unavailable at once during a rolling update (default 1, at least 1).
pub fn max_unavailable(s: &StatefulSet) -> i32 {
    rolling(s)
        .and_then(|r| r.max_unavailable.as_ref())
        .and_then(|m| scaled_value(m, replicas(s), false).ok())
        .unwrap_or(1)
        .max(1)
}

fn min_ready_seconds(s: &StatefulSet) -> i32 {
    s.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

pub fn revision_history_limit(s: &StatefulSet) -> usize {
    s.spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize
}

fn retention(s: &StatefulSet) -> (bool, bool) {
    let p = s
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let del = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    (
        del(p.and_then(|p| p.when_deleted.as_ref())),
        del(p.and_then(|p| p.when_scaled.as_ref())),
    )
}

pub fn claim_templates(s: &StatefulSet) -> &[PersistentVolumeClaim] {
    s.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or(&[])
}

pub fn pod_name(s: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", name(s))
}

pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The ordinal of a pod of `set`, from its name (`getParentNameAndOrdinal`).
pub fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    let n = pod.metadata.name.as_deref()?;
    let rest = n.strip_prefix(set)?.strip_prefix('-')?;
    if rest.starts_with('+') || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

pub fn pod_revision(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

fn running_and_ready(p: &Pod) -> bool {
    pod_phase(p) == "Running" && pod_is_ready(p)
}

fn running_and_available(p: &Pod, min_ready: i32, now: jiff::Timestamp) -> bool {
    pod_phase(p) == "Running" && pod_is_available(p, min_ready, now)
}

fn finished(p: &Pod) -> bool {
    matches!(pod_phase(p), "Succeeded" | "Failed")
}

// ------------------------------------------------------------------ revisions

/// A revision's data: the template as a strategic merge patch that replaces it whole, as
/// upstream stores it (so `kubectl rollout undo` can apply it to the set).
pub fn revision_data(s: &StatefulSet) -> Value {
    let mut tmpl = serde_json::to_value(s.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    if let Some(o) = tmpl.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": tmpl}})
}

/// The template stored in a revision.
pub fn revision_template(r: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = r.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

pub fn revision_name(s: &StatefulSet, data: &Value, collision_count: i32) -> String {
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if collision_count > 0 {
        bytes.extend_from_slice(&(collision_count as u32).to_le_bytes());
    }
    format!("{}-{}", name(s), safe_encode(&fnv32a(&bytes).to_string()))
}

fn same_data(a: &ControllerRevision, data: &Value) -> bool {
    a.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// The revision object for the set's template.
pub fn new_revision(s: &StatefulSet, data: Value, name: String, number: i64) -> ControllerRevision {
    let mut labels: BTreeMap<String, String> = s
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), name.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: s.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![controller_ref("apps/v1", "StatefulSet", &s.metadata)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: number,
    }
}

/// What the revisions say: the update revision (created or renumbered when needed), the
/// current one, and the collision count to write back.
#[derive(Debug, Clone)]
pub struct Revisions {
    pub update: ControllerRevision,
    pub current: ControllerRevision,
    /// Revision to create (the update revision is new).
    pub create: Option<ControllerRevision>,
    /// Revision whose number is raised (an old template came back, e.g. `rollout undo`).
    pub renumber: Option<ControllerRevision>,
    pub collision_count: i32,
}

pub fn revisions(s: &StatefulSet, existing: &[ControllerRevision]) -> Revisions {
    let data = revision_data(s);
    let mut collision_count = s
        .status
        .as_ref()
        .and_then(|st| st.collision_count)
        .unwrap_or(0);
    let max = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut sorted: Vec<&ControllerRevision> = existing.iter().collect();
    sorted.sort_by_key(|r| r.revision);
    // The newest revision holding the same template, as upstream's history.FindEqualRevisions.
    let equal = sorted.iter().rev().find(|r| same_data(r, &data)).copied();
    let (update, create, renumber) = match equal {
        Some(r) if r.revision == max => (r.clone(), None, None),
        Some(r) => {
            let mut r2 = r.clone();
            r2.revision = max + 1;
            (r2.clone(), None, Some(r2))
        }
        None => {
            // A name already used by a different template is a hash collision.
            let mut name = revision_name(s, &data, collision_count);
            while existing
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(name.as_str()))
            {
                collision_count += 1;
                name = revision_name(s, &data, collision_count);
            }
            let r = new_revision(s, data, name, max + 1);
            (r.clone(), Some(r), None)
        }
    };
    let current_name = s.status.as_ref().and_then(|st| st.current_revision.clone());
    let current = current_name
        .and_then(|n| {
            existing
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(n.as_str()))
                .cloned()
        })
        .unwrap_or_else(|| update.clone());
    Revisions {
        update,
        current,
        create,
        renumber,
        collision_count,
    }
}

/// Revisions beyond the history limit, oldest first, never one a pod or the status uses.
pub fn revisions_to_prune(
    s: &StatefulSet,
    existing: &[ControllerRevision],
    pods: &[Pod],
    revs: &Revisions,
) -> Vec<String> {
    let live: std::collections::HashSet<&str> = pods
        .iter()
        .filter_map(pod_revision)
        .chain([
            revs.update.metadata.name.as_deref().unwrap_or(""),
            revs.current.metadata.name.as_deref().unwrap_or(""),
        ])
        .collect();
    let mut history: Vec<&ControllerRevision> = existing
        .iter()
        .filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or("")))
        .collect();
    history.sort_by_key(|r| r.revision);
    let limit = revision_history_limit(s);
    let excess = history.len().saturating_sub(limit);
    history
        .into_iter()
        .take(excess)
        .filter_map(|r| r.metadata.name.clone())
        .collect()
}

// ------------------------------------------------------------------ pods and claims

/// The claims a pod of `s` with `ordinal` uses, one per template (`getPersistentVolumeClaims`).
pub fn claims_for(s: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let (when_deleted, _) = retention(s);
    let sel_labels = s
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    claim_templates(s)
        .iter()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut c = t.clone();
            let mut labels = c.metadata.labels.clone().unwrap_or_default();
            labels.extend(sel_labels.clone());
            c.metadata = ObjectMeta {
                name: Some(claim_name(&tname, name(s), ordinal)),
                namespace: s.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: t.metadata.annotations.clone(),
                owner_references: when_deleted.then(|| {
                    let mut r = controller_ref("apps/v1", "StatefulSet", &s.metadata);
                    // The claim belongs to the set only for garbage collection.
                    r.controller = None;
                    vec![r]
                }),
                ..Default::default()
            };
            c.status = None;
            c
        })
        .collect()
}

/// A new pod for `ordinal` from `template` at `revision` (`newVersionedStatefulSetPod`).
pub fn new_pod(s: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let pname = pod_name(s, ordinal);
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), revision.into());
    labels.insert(POD_NAME.into(), pname.clone());
    labels.insert(POD_INDEX.into(), ordinal.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(pname.clone());
    spec.subdomain = s
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|n| !n.is_empty());
    let mut volumes: Vec<Volume> = spec.volumes.take().unwrap_or_default();
    for t in claim_templates(s) {
        let tname = t.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != tname);
        volumes.push(Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, name(s), ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(pname),
            namespace: s.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![controller_ref("apps/v1", "StatefulSet", &s.metadata)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// One step the controller takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreateClaim(Box<PersistentVolumeClaim>),
    /// Creates the pod of an ordinal at a revision (`true`: the update revision).
    CreatePod {
        ordinal: i32,
        update: bool,
    },
    DeletePod(String),
    DeleteClaim(String),
}

/// The plan of one pass: the steps, in order, and the status to report afterwards.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub status: StatefulSetStatus,
    /// Waiting for a pod to become available after minReadySeconds: check again then.
    pub requeue: Option<std::time::Duration>,
}

/// Decides the next steps (`updateStatefulSet`). `pods` are the set's pods (owned, selector
/// matching); `claims` the namespace's claims by name; `now` for minReadySeconds.
pub fn plan(
    s: &StatefulSet,
    revs: &Revisions,
    pods: &[Pod],
    claims: &HashMap<String, PersistentVolumeClaim>,
    now: jiff::Timestamp,
) -> Plan {
    let set = name(s);
    let want = replicas(s).max(0);
    let start = start_ordinal(s);
    let end = start + want;
    let update_rev = revs.update.metadata.name.clone().unwrap_or_default();
    let current_rev = revs.current.metadata.name.clone().unwrap_or_default();
    let min_ready = min_ready_seconds(s);
    let parallel = is_parallel(s);
    let (_, when_scaled) = retention(s);

    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    for p in pods {
        if let Some(o) = ordinal_of(set, p) {
            by_ordinal.insert(o, p);
        }
    }
    let mut steps = Vec::new();
    let mut requeue = None;

    // Status as observed before acting.
    let mut status = StatefulSetStatus {
        observed_generation: s.metadata.generation,
        collision_count: Some(revs.collision_count),
        current_revision: Some(current_rev.clone()),
        update_revision: Some(update_rev.clone()),
        ..Default::default()
    };
    let (mut replicas_n, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for p in by_ordinal.values() {
        if pod_is_terminating(p) || finished(p) {
            continue;
        }
        replicas_n += 1;
        if running_and_ready(p) {
            ready += 1;
        }
        if running_and_available(p, min_ready, now) {
            available += 1;
        } else if let Some(d) = crate::util::pod_available_in(p, min_ready, now) {
            requeue = Some(requeue.map_or(d, |r: std::time::Duration| r.min(d)));
        }
        match pod_revision(p) {
            Some(r) if r == current_rev => current += 1,
            _ => {}
        }
        if pod_revision(p) == Some(update_rev.as_str()) {
            updated += 1;
        }
    }
    status.replicas = replicas_n;
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);

    // Partition: ordinals below it stay at the current revision (`newVersionedStatefulSetPod`).
    let use_update = |ordinal: i32| -> bool {
        if is_on_delete(s) {
            return true;
        }
        let part = partition(s);
        let current_n = s
            .status
            .as_ref()
            .and_then(|st| st.current_replicas)
            .unwrap_or(0);
        let below = if rolling(s).and_then(|r| r.partition).is_some() {
            ordinal - start < part
        } else {
            ordinal - start < current_n
        };
        current_rev == update_rev || !below
    };

    // 1. Failed pods are deleted, then recreated; missing ones are created in order.
    let mut blocked = false;
    for ordinal in start..end {
        let pod = by_ordinal.get(&ordinal).copied();
        match pod {
            Some(p) if finished(p) && !pod_is_terminating(p) => {
                steps.push(Step::DeletePod(pod_name(s, ordinal)));
                if !parallel {
                    blocked = true;
                    break;
                }
            }
            None => {
                for c in claims_for(s, ordinal) {
                    let cname = c.metadata.name.clone().unwrap_or_default();
                    if !claims.contains_key(&cname) {
                        steps.push(Step::CreateClaim(Box::new(c)));
                    }
                }
                steps.push(Step::CreatePod {
                    ordinal,
                    update: use_update(ordinal),
                });
                if !parallel {
                    blocked = true;
                    break;
                }
            }
            Some(p) if pod_is_terminating(p) => {
                if !parallel {
                    blocked = true;
                    break;
                }
            }
            Some(p) if !running_and_available(p, min_ready, now) => {
                if !parallel {
                    blocked = true;
                    break;
                }
            }
            Some(_) => {}
        }
    }

    // 2. Condemned pods (beyond the replicas), highest ordinal first; ordered management
    //    deletes one at a time and only while every other pod is healthy.
    let condemned: Vec<&Pod> = by_ordinal
        .iter()
        .rev()
        .filter(|(o, _)| **o >= end || **o < start)
        .map(|(_, p)| *p)
        .collect();
    if !blocked {
        for p in &condemned {
            if pod_is_terminating(p) {
                if !parallel {
                    blocked = true;
                    break;
                }
                continue;
            }
            steps.push(Step::DeletePod(p.metadata.name.clone().unwrap_or_default()));
            if !parallel {
                blocked = true;
                break;
            }
        }
    }
    // Claims of scaled-away ordinals go when the policy says so, once their pod is gone.
    if when_scaled {
        for cname in claims.keys() {
            for t in claim_templates(s) {
                let tname = t.metadata.name.clone().unwrap_or_default();
                let prefix = format!("{tname}-{set}-");
                let Some(o) = cname
                    .strip_prefix(&prefix)
                    .and_then(|o| o.parse::<i32>().ok())
                else {
                    continue;
                };
                if (o >= end || o < start) && !by_ordinal.contains_key(&o) {
                    steps.push(Step::DeleteClaim(cname.clone()));
                }
            }
        }
    }

    // 3. Rolling update: from the highest ordinal down to the partition, replace pods of
    //    other revisions, at most maxUnavailable unavailable at once.
    if !blocked && !is_on_delete(s) {
        let part = partition(s);
        let unavailable = (start..end)
            .filter(|o| {
                by_ordinal
                    .get(o)
                    .is_none_or(|p| !running_and_available(p, min_ready, now))
            })
            .count() as i32;
        let mut budget = max_unavailable(s) - unavailable;
        for ordinal in (start + part..end).rev() {
            let Some(p) = by_ordinal.get(&ordinal) else {
                continue;
            };
            if pod_revision(p) == Some(update_rev.as_str()) || pod_is_terminating(p) {
                continue;
            }
            if budget <= 0 {
                break;
            }
            // An unavailable pod is replaced without using up the budget twice.
            if running_and_available(p, min_ready, now) {
                budget -= 1;
            }
            steps.push(Step::DeletePod(pod_name(s, ordinal)));
        }
    }

    // A finished roll makes the update revision current (`completeRollingUpdate`).
    if !is_on_delete(s)
        && updated == replicas_n
        && ready == replicas_n
        && replicas_n == want
        && steps.is_empty()
    {
        status.current_revision = Some(update_rev);
        status.current_replicas = Some(updated);
    }
    Plan {
        steps,
        status,
        requeue,
    }
}
