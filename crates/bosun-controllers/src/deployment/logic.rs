//! Pure rollout arithmetic, following Kubernetes' pkg/controller/deployment/util.

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::util::{fnv32a, safe_encode, scaled_value};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Upstream's default `--deployment-controller-max-rev-history-length-in-chars`... a fixed 2000.
pub const MAX_REV_HISTORY_CHARS: usize = 2000;

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const MIN_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn set_rs_replicas(rs: &mut ReplicaSet, n: i32) {
    rs.spec.get_or_insert_with(Default::default).replicas = Some(n);
}

pub fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

pub fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

pub fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

pub fn is_rolling_update(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

pub fn is_paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

pub fn min_ready_seconds(d: &Deployment) -> i32 {
    d.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

/// Surge rounds up, unavailable rounds down; both zero would deadlock so unavailable becomes 1
/// (`ResolveFenceposts`). Defaults are 25%/25% as in apps/v1.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let default = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&default), desired, true)
        .map_err(|e| format!("spec.strategy.rollingUpdate.maxSurge: {e}"))?;
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&default), desired, false)
        .map_err(|e| format!("spec.strategy.rollingUpdate.maxUnavailable: {e}"))?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

fn fenceposts(d: &Deployment) -> Result<(i32, i32), String> {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
}

pub fn max_surge(d: &Deployment) -> Result<i32, String> {
    if !is_rolling_update(d) {
        return Ok(0);
    }
    Ok(fenceposts(d)?.0)
}

pub fn max_unavailable(d: &Deployment) -> Result<i32, String> {
    if !is_rolling_update(d) || replicas(d) == 0 {
        return Ok(0);
    }
    Ok(fenceposts(d)?.1.min(replicas(d)))
}

/// pod-template-hash: FNV-1a over the template's canonical JSON plus the collision count,
/// encoded with the vowel-free alphabet.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Templates equal apart from the pod-template-hash label (`EqualIgnoreHash`).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.remove(POD_TEMPLATE_HASH);
        }
        let mut v = serde_json::to_value(&t).unwrap_or_default();
        normalize(&mut v);
        v
    };
    strip(a) == strip(b)
}

/// Drops empty maps and arrays so `labels: {}` and a missing `labels` compare equal.
fn normalize(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for x in m.values_mut() {
                normalize(x);
            }
            m.retain(|_, x| match x {
                serde_json::Value::Null => false,
                serde_json::Value::Object(o) => !o.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty(),
                _ => true,
            });
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

pub fn selector_with_hash(sel: &LabelSelector, hash: &str) -> LabelSelector {
    let mut s = sel.clone();
    s.match_labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    s
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub fn max_revision(rss: &[ReplicaSet]) -> i64 {
    rss.iter().map(revision).max().unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> Option<jiff::Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Oldest first; ties by name (`ReplicaSetsByCreationTimestamp`).
pub fn cmp_by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    created(a)
        .cmp(&created(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Sorting used when distributing an increase: larger first, newer first on ties.
pub fn cmp_by_size_newer(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    rs_replicas(b)
        .cmp(&rs_replicas(a))
        .then_with(|| cmp_by_creation(b, a))
}

/// Sorting used when distributing a decrease: larger first, older first on ties.
pub fn cmp_by_size_older(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    rs_replicas(b)
        .cmp(&rs_replicas(a))
        .then_with(|| cmp_by_creation(a, b))
}

pub fn cmp_by_revision(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    revision(a)
        .cmp(&revision(b))
        .then_with(|| cmp_by_creation(a, b))
}

/// The RS whose template equals the deployment's; the oldest if several do.
pub fn find_new_rs<'a>(d: &Deployment, rss: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let tmpl = &d.spec.as_ref()?.template;
    let mut sorted: Vec<&ReplicaSet> = rss.iter().collect();
    sorted.sort_by(|a, b| cmp_by_creation(a, b));
    sorted.into_iter().find(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, tmpl))
    })
}

pub fn active(rss: &[ReplicaSet]) -> Vec<ReplicaSet> {
    rss.iter().filter(|r| rs_replicas(r) > 0).cloned().collect()
}

pub fn sum_replicas(rss: &[ReplicaSet]) -> i32 {
    rss.iter().map(rs_replicas).sum()
}

pub fn sum_actual(rss: &[ReplicaSet]) -> i32 {
    rss.iter().map(rs_status_replicas).sum()
}

pub fn sum_available(rss: &[ReplicaSet]) -> i32 {
    rss.iter().map(rs_available).sum()
}

pub fn sum_ready(rss: &[ReplicaSet]) -> i32 {
    rss.iter().map(rs_ready).sum()
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

pub fn desired_annotation(rs: &ReplicaSet) -> Option<i32> {
    annotation_i32(rs, DESIRED_REPLICAS)
}

/// True when the annotations needed changing.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let ann = rs.metadata.annotations.get_or_insert_with(Default::default);
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if ann.get(k) != Some(&v) {
            ann.insert(k.to_string(), v);
            changed = true;
        }
    }
    changed
}

fn skip_copy_annotation(k: &str) -> bool {
    matches!(
        k,
        LAST_APPLIED | REVISION | REVISION_HISTORY | DESIRED_REPLICAS | MAX_REPLICAS | ROLLBACK_TO
    )
}

/// Copies user annotations (change-cause and friends) from the deployment onto the RS.
pub fn copy_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let mut changed = false;
    let ann = rs.metadata.annotations.get_or_insert_with(Default::default);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip_copy_annotation(k) || ann.get(k) == Some(v) {
            continue;
        }
        ann.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// `SetNewReplicaSetAnnotations`: revision bump, revision history, replicas annotations.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> Result<bool, String> {
    let mut changed = copy_annotations(d, rs);
    let ann = rs.metadata.annotations.get_or_insert_with(Default::default);
    let old = ann.get(REVISION).cloned().unwrap_or_default();
    let old_int: i64 = if old.is_empty() {
        0
    } else {
        match old.parse() {
            Ok(v) => v,
            Err(_) => return Ok(false),
        }
    };
    if old_int < new_revision {
        ann.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if !old.is_empty() {
            let history = ann.get(REVISION_HISTORY).cloned().unwrap_or_default();
            if history.is_empty() {
                ann.insert(REVISION_HISTORY.into(), old.clone());
            } else {
                let mut parts: Vec<&str> = history.split(',').collect();
                let mut total = history.len() + old.len() + 1;
                let mut start = 0;
                while total > MAX_REV_HISTORY_CHARS && start < parts.len() {
                    total -= parts[start].len() + 1;
                    start += 1;
                }
                if total <= MAX_REV_HISTORY_CHARS {
                    parts = parts.split_off(start);
                    parts.push(&old);
                    let joined = parts.join(",");
                    ann.insert(REVISION_HISTORY.into(), joined);
                }
            }
        }
    }
    if !exists && set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d)?) {
        changed = true;
    }
    Ok(changed)
}

/// Replicas the new RS may have now (`NewRSNewReplicas`).
pub fn new_rs_new_replicas(
    d: &Deployment,
    all: &[ReplicaSet],
    new_rs: &ReplicaSet,
) -> Result<i32, String> {
    if is_recreate(d) {
        return Ok(replicas(d));
    }
    let current = sum_replicas(all);
    let max_total = replicas(d) + max_surge(d)?;
    if current >= max_total {
        return Ok(rs_replicas(new_rs));
    }
    let up = (max_total - current).min(replicas(d) - rs_replicas(new_rs));
    Ok(rs_replicas(new_rs) + up)
}

pub fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = rs else { return false };
    desired_annotation(rs) == Some(replicas(d))
        && rs_replicas(rs) == replicas(d)
        && rs_available(rs) == replicas(d)
}

/// A scaling event: an active RS was sized for a different replica count.
pub fn is_scaling_event(d: &Deployment, all: &[ReplicaSet]) -> bool {
    active(all)
        .iter()
        .any(|rs| desired_annotation(rs).is_some_and(|v| v != replicas(d)))
}

/// Go's `math.Round` semantics for positive and negative halves.
fn round_half_away(x: f64) -> i32 {
    x.round() as i32
}

fn rs_fraction(rs: &ReplicaSet, d: &Deployment) -> Result<i32, String> {
    if replicas(d) == 0 {
        return Ok(-rs_replicas(rs));
    }
    let deployment_replicas = replicas(d) + max_surge(d)?;
    let annotated = annotation_i32(rs, MAX_REPLICAS).unwrap_or_else(|| {
        d.status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or_default()
    });
    if annotated == 0 {
        return Ok(0);
    }
    let size = f64::from(rs_replicas(rs)) * f64::from(deployment_replicas) / f64::from(annotated);
    Ok(round_half_away(size) - rs_replicas(rs))
}

fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> Result<i32, String> {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return Ok(0);
    }
    let fraction = rs_fraction(rs, d)?;
    let allowed = to_add - added;
    Ok(if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    })
}

/// Proportional scaling of the active RSs of a rolling update that was resized mid-rollout.
/// Returns the new size for each given RS, in the input order.
pub fn proportional_scale(d: &Deployment, rss: &[ReplicaSet]) -> Result<Vec<i32>, String> {
    let current = sum_replicas(rss);
    let allowed = if replicas(d) > 0 {
        replicas(d) + max_surge(d)?
    } else {
        0
    };
    let to_add = allowed - current;
    let mut order: Vec<usize> = (0..rss.len()).collect();
    if to_add > 0 {
        order.sort_by(|&a, &b| cmp_by_size_newer(&rss[a], &rss[b]));
    } else if to_add < 0 {
        order.sort_by(|&a, &b| cmp_by_size_older(&rss[a], &rss[b]));
    }
    let mut sizes: Vec<i32> = rss.iter().map(rs_replicas).collect();
    let mut added = 0;
    if to_add != 0 {
        for &i in &order {
            let p = proportion(&rss[i], d, to_add, added)?;
            sizes[i] += p;
            added += p;
        }
        if let Some(&first) = order.first() {
            sizes[first] = (sizes[first] + to_add - added).max(0);
        }
    }
    Ok(sizes)
}

pub fn get_condition<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// `SetDeploymentCondition`: no-op when status and reason are unchanged; keeps the
/// transition time when only the reason changes.
pub fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(cur) = get_condition(status, &cond.type_) {
        if cur.status == cond.status && cur.reason == cond.reason {
            return;
        }
        if cur.status == cond.status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(status, &cond.type_.clone());
    status.conditions.get_or_insert_with(Vec::new).push(cond);
}

pub fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
        if c.is_empty() {
            status.conditions = None;
        }
    }
}

pub fn calculate_status(
    all: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    d: &Deployment,
    now: jiff::Timestamp,
) -> Result<DeploymentStatus, String> {
    let available = sum_available(all);
    let total = sum_replicas(all);
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum_actual(all)),
        updated_replicas: Some(new_rs.map_or(0, rs_status_replicas)),
        ready_replicas: Some(sum_ready(all)),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: None,
    };
    if available >= replicas(d) - max_unavailable(d)? {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "True",
                MIN_REPLICAS_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "False",
                MIN_REPLICAS_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    Ok(status)
}

pub fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = replicas(d);
    s.updated_replicas.unwrap_or(0) == r
        && s.replicas.unwrap_or(0) == r
        && s.available_replicas.unwrap_or(0) == r
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

pub fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

pub fn deployment_timed_out(d: &Deployment, s: &DeploymentStatus, now: jiff::Timestamp) -> bool {
    let Some(deadline) = progress_deadline(d) else {
        return false;
    };
    let Some(cond) = get_condition(s, PROGRESSING) else {
        return false;
    };
    match cond.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => cond
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0 + jiff::SignedDuration::from_secs(i64::from(deadline)) < now),
    }
}

/// Progressing condition maintenance of `syncRolloutStatus`; returns the new status.
pub fn rollout_status(
    all: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    d: &Deployment,
    now: jiff::Timestamp,
) -> Result<DeploymentStatus, String> {
    let mut status = calculate_status(all, new_rs, d, now)?;
    if progress_deadline(d).is_none() {
        remove_condition(&mut status, PROGRESSING);
    }
    let old_status = d.status.clone().unwrap_or_default();
    let current = get_condition(&old_status, PROGRESSING);
    let complete = status.replicas == status.updated_replicas
        && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    let name = d.metadata.name.clone().unwrap_or_default();
    if progress_deadline(d).is_some() && !complete {
        if deployment_complete(d, &status) {
            let msg = match new_rs {
                Some(rs) => format!(
                    "ReplicaSet \"{}\" has successfully progressed.",
                    rs.metadata.name.clone().unwrap_or_default()
                ),
                None => format!("Deployment \"{name}\" has successfully progressed."),
            };
            set_condition(
                &mut status,
                new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE, msg, now),
            );
        } else if deployment_progressing(d, &status) {
            let msg = match new_rs {
                Some(rs) => format!(
                    "ReplicaSet \"{}\" is progressing.",
                    rs.metadata.name.clone().unwrap_or_default()
                ),
                None => format!("Deployment \"{name}\" is progressing."),
            };
            let mut cond = new_condition(PROGRESSING, "True", RS_UPDATED, msg, now);
            if let Some(cur) = current {
                if cur.status == "True" {
                    cond.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, cond);
        } else if deployment_timed_out(d, &status, now) {
            let msg = match new_rs {
                Some(rs) => format!(
                    "ReplicaSet \"{}\" has timed out progressing.",
                    rs.metadata.name.clone().unwrap_or_default()
                ),
                None => format!("Deployment \"{name}\" has timed out progressing."),
            };
            set_condition(
                &mut status,
                new_condition(PROGRESSING, "False", TIMED_OUT, msg, now),
            );
        }
    }
    Ok(status)
}

/// When to look again so an expiring progress deadline is noticed without new events.
pub fn requeue_stuck(
    d: &Deployment,
    s: &DeploymentStatus,
    now: jiff::Timestamp,
) -> Option<std::time::Duration> {
    let deadline = progress_deadline(d)?;
    let cond = get_condition(s, PROGRESSING)?;
    if deployment_complete(d, s) || cond.reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let at =
        cond.last_update_time.as_ref()?.0 + jiff::SignedDuration::from_secs(i64::from(deadline));
    let after = at.duration_since(now);
    if after < jiff::SignedDuration::from_secs(1) {
        Some(std::time::Duration::from_millis(100))
    } else {
        Some(after.unsigned_abs() + std::time::Duration::from_secs(1))
    }
}

/// Old RSs beyond revisionHistoryLimit that may be deleted, oldest revision first.
pub fn cleanup_candidates(d: &Deployment, old: &[ReplicaSet]) -> Vec<ReplicaSet> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let mut alive: Vec<ReplicaSet> = old
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    if alive.len() <= limit {
        return Vec::new();
    }
    let diff = alive.len() - limit;
    alive.sort_by(cmp_by_revision);
    alive
        .into_iter()
        .take(diff)
        .filter(|rs| {
            rs_status_replicas(rs) == 0
                && rs_replicas(rs) == 0
                && rs.metadata.generation.unwrap_or(0)
                    <= rs
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0)
        })
        .collect()
}
