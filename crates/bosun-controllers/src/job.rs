//! Job controller: runs pods to completion (`completions`, `parallelism`, Indexed mode),
//! retries failures with exponential back-off up to `backoffLimit`, enforces
//! `activeDeadlineSeconds` and `suspend`, and deletes finished Jobs after
//! `ttlSecondsAfterFinished`.
//!
//! Terminated pods are counted as Kubernetes counts them: every pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer; a finished pod is first recorded in
//! `status.uncountedTerminatedPods`, then its finalizer is removed, then it moves into
//! `succeeded`/`failed`. So a pod is counted exactly once even if it is deleted, and a
//! restart between the steps loses nothing.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::replicaset::{pods_to_delete, slow_start_batches};
use crate::util::{LabelMatcher, controller_of, controller_ref, is_not_found, pod_is_ready, time};

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// First retry delay after a failed pod; doubles per consecutive failure (`DefaultJobPodFailureBackOff`).
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest retry delay (`MaxJobPodFailureBackOff`).
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);
const RESYNC: Duration = Duration::from_secs(300);

// ------------------------------------------------------------------ pure logic

/// `Some("Complete")` or `Some("Failed")` once the Job has finished.
pub fn finished(status: Option<&JobStatus>) -> Option<&str> {
    condition(status, "Complete")
        .or_else(|| condition(status, "Failed"))
        .map(|c| c.type_.as_str())
}

fn condition<'a>(status: Option<&'a JobStatus>, type_: &str) -> Option<&'a JobCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Sets (or replaces) condition `type_`, keeping the transition time when nothing changed.
fn set_condition(
    status: &mut JobStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = Some(time(now));
        }
        c.status = value.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(time(now));
        return;
    }
    conds.push(JobCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(time(now)),
        last_transition_time: Some(time(now)),
    });
}

/// Parses `completedIndexes` ("1,3-5") into a set.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats a set of indexes as Kubernetes does: ascending, runs collapsed to "a-b".
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// Delay before the next pod after `consecutive` failures: 10s, 20s, 40s ... at most 6 min.
pub fn backoff(consecutive: u32) -> Duration {
    if consecutive == 0 {
        return Duration::ZERO;
    }
    let shift = (consecutive - 1).min(16);
    (BACKOFF_BASE * (1u32 << shift)).min(BACKOFF_MAX)
}

/// The completion index of a pod of an Indexed Job.
pub fn pod_index(p: &Pod) -> Option<i32> {
    p.annotations()
        .get(COMPLETION_INDEX)
        .or_else(|| p.labels().get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
}

/// Terminal from the Job's point of view: finished, or deleted before it succeeded (which
/// Kubernetes counts as a failure).
fn pod_outcome(p: &Pod) -> Option<bool> {
    match crate::util::pod_phase(p) {
        "Succeeded" => Some(true),
        "Failed" => Some(false),
        _ if p.metadata.deletion_timestamp.is_some() => Some(false),
        _ => None,
    }
}

/// When the pod finished: its last container's finish time, else when it was deleted.
fn pod_finished_at(p: &Pod) -> Option<jiff::Timestamp> {
    let st = p.status.as_ref();
    st.and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| p.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| {
            st.and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
                .max()
        })
}

/// What `spec.podFailurePolicy` makes of a failed pod, as Kubernetes'
/// `matchPodFailurePolicy`: the first rule that matches decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAction {
    /// No rule matched, or a `Count` rule: the failure counts toward `backoffLimit`.
    Count,
    /// Not counted, and the pod is replaced.
    Ignore,
    /// The Job fails at once with this message (reason `PodFailurePolicy`).
    FailJob(String),
    /// The pod's index fails: it is not retried (`status.failedIndexes`).
    FailIndex,
}

/// The rule of `job`'s `podFailurePolicy` a failed pod matches.
pub fn failure_policy_action(job: &Job, pod: &Pod) -> PolicyAction {
    let Some(policy) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return PolicyAction::Count;
    };
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let status = pod.status.clone().unwrap_or_default();
    for (index, rule) in policy.rules.iter().enumerate() {
        let matched = if let Some(req) = &rule.on_exit_codes {
            let statuses = status.container_statuses.iter().flatten();
            let init = status.init_container_statuses.iter().flatten();
            statuses.chain(init).find_map(|c| {
                let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
                let name_ok = req.container_name.as_ref().is_none_or(|n| *n == c.name);
                let listed = req.values.contains(&code);
                let op_ok = if req.operator == "NotIn" { !listed } else { listed };
                (name_ok && code != 0 && op_ok).then(|| {
                    format!(
                        "Container {} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {index}",
                        c.name, rule.action
                    )
                })
            })
        } else if let Some(patterns) = &rule.on_pod_conditions {
            status.conditions.iter().flatten().find_map(|c| {
                patterns
                    .iter()
                    .any(|p| {
                        let want = if p.status.is_empty() {
                            "True"
                        } else {
                            p.status.as_str()
                        };
                        p.type_ == c.type_ && want == c.status
                    })
                    .then(|| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {} rule at index {index}",
                            c.type_, rule.action
                        )
                    })
            })
        } else {
            None
        };
        if let Some(msg) = matched {
            return match rule.action.as_str() {
                "Ignore" => PolicyAction::Ignore,
                "FailJob" => PolicyAction::FailJob(msg),
                "FailIndex" => PolicyAction::FailIndex,
                _ => PolicyAction::Count,
            };
        }
    }
    PolicyAction::Count
}

/// Failures since the last success and when the latest of them happened: the input of the
/// pod-failure back-off.
pub fn consecutive_failures(pods: &[Pod]) -> (u32, Option<jiff::Timestamp>) {
    let last_success = pods
        .iter()
        .filter(|p| crate::util::pod_phase(p) == "Succeeded")
        .filter_map(pod_finished_at)
        .max();
    let mut n = 0;
    let mut last = None;
    for p in pods.iter().filter(|p| pod_outcome(p) == Some(false)) {
        let at = pod_finished_at(p);
        if last_success.is_some_and(|s| at.is_none_or(|a| a <= s)) {
            continue;
        }
        n += 1;
        last = last.max(at);
    }
    (n, last)
}

/// The pod a Job creates, for completion index `index` in Indexed mode.
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let tmpl = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(JOB_NAME.into(), name.clone());
    labels.insert("job-name".into(), name.clone());
    labels.insert(CONTROLLER_UID.into(), uid.clone());
    labels.insert("controller-uid".into(), uid);
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    let mut spec = tmpl.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            if spec.hostname.as_deref().is_none_or(str::is_empty) {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let envs = c.env.get_or_insert_with(Vec::new);
                if !envs.iter().any(|e| e.name == env.name) {
                    envs.push(env.clone());
                }
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_ref("batch/v1", "Job", &job.metadata)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// What one pass decides about pods, from the Job and its pods' counts.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Pods to create: `None` entries for NonIndexed, the index for Indexed.
    pub create: Vec<Option<i32>>,
    /// Active pods (by name) to delete.
    pub delete: Vec<String>,
}

/// Decides which pods to create and delete for a running (not finished, not suspended) Job.
pub fn plan(job: &Job, active: &[Pod], succeeded: i32, completed: &BTreeSet<i32>) -> Plan {
    plan_with_failed(job, active, succeeded, completed, &BTreeSet::new())
}

/// [`plan`] for an Indexed Job some of whose indexes failed for good (not retried).
pub fn plan_with_failed(
    job: &Job,
    active: &[Pod],
    succeeded: i32,
    completed: &BTreeSet<i32>,
    failed_indexes: &BTreeSet<i32>,
) -> Plan {
    let done: BTreeSet<i32> = completed.union(failed_indexes).copied().collect();
    let completed = &done;
    let spec = job.spec.clone().unwrap_or_default();
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut plan = Plan {
        create: Vec::new(),
        delete: Vec::new(),
    };
    if indexed {
        let completions = spec.completions.unwrap_or(0);
        // Keep one pod per pending index; extra and already-completed ones go.
        let mut seen = HashSet::new();
        let mut keep = Vec::new();
        for p in active {
            match pod_index(p) {
                Some(i) if (0..completions).contains(&i) && !completed.contains(&i) => {
                    if seen.insert(i) {
                        keep.push(p.clone());
                    } else {
                        plan.delete.push(p.name_any());
                    }
                }
                _ => plan.delete.push(p.name_any()),
            }
        }
        if keep.len() > parallelism {
            for p in pods_to_delete(&keep, keep.len() - parallelism) {
                seen.remove(&pod_index(&p).unwrap_or(-1));
                plan.delete.push(p.name_any());
            }
        }
        let room = parallelism.saturating_sub(seen.len());
        plan.create = (0..completions)
            .filter(|i| !completed.contains(i) && !seen.contains(i))
            .take(room)
            .map(Some)
            .collect();
        return plan;
    }
    let want = match spec.completions {
        Some(c) => (c - succeeded).max(0) as usize,
        // A work queue: once one pod succeeded no new pods start.
        None if succeeded > 0 => active.len().min(parallelism),
        None => parallelism,
    }
    .min(parallelism);
    if active.len() > want {
        plan.delete = pods_to_delete(active, active.len() - want)
            .iter()
            .map(|p| p.name_any())
            .collect();
    } else {
        plan.create = vec![None; want - active.len()];
    }
    plan
}

/// True when the Job met its success criteria with these counts.
pub fn succeeded_enough(
    job: &Job,
    succeeded: i32,
    completed: &BTreeSet<i32>,
    active: usize,
) -> bool {
    let spec = job.spec.clone().unwrap_or_default();
    if spec.completion_mode.as_deref() == Some("Indexed") {
        let c = spec.completions.unwrap_or(0);
        return (0..c).all(|i| completed.contains(&i));
    }
    match spec.completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active == 0,
    }
}

// ------------------------------------------------------------------ reconcile

struct Ctx {
    client: Client,
    recorder: Recorder,
}

fn requeue_min(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn until(at: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    if at <= now {
        Duration::ZERO
    } else {
        at.duration_since(now).unsigned_abs()
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = job.namespace().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(job) = api.get_opt(&job.name_any()).await? else {
        // Gone: its pods must not keep the finalizer nobody will remove any more.
        let uid = job.uid().unwrap_or_default();
        let lp = ListParams::default().labels(&format!("{CONTROLLER_UID}={uid}"));
        let orphans = pod_api.list(&lp).await?.items;
        release(&pod_api, orphans.iter()).await?;
        return Ok(Action::await_change());
    };
    let uid = job.uid().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let matcher = LabelMatcher::new(spec.selector.as_ref());
    let mut lp = ListParams::default();
    if let Some(q) = matcher.query().filter(|_| !matcher.is_empty()) {
        lp = lp.labels(&q);
    }
    let pods: Vec<Pod> = pod_api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let now = crate::util::now();

    if job.metadata.deletion_timestamp.is_some() {
        // Let the garbage collector remove the pods: nothing will count them any more.
        release(&pod_api, pods.iter()).await?;
        return Ok(Action::await_change());
    }
    if let Some(done) = finished(job.status.as_ref()) {
        release(&pod_api, pods.iter()).await?;
        return finished_job(&api, &job, done, now).await;
    }

    // Count newly terminated pods: record, release, then add to the totals.
    let mut status = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut completed = status
        .completed_indexes
        .as_deref()
        .map(parse_indexes)
        .unwrap_or_default();
    let mut unc = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_s: BTreeSet<String> = unc
        .succeeded
        .take()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut unc_f: BTreeSet<String> = unc.failed.take().unwrap_or_default().into_iter().collect();
    let mut failed_indexes = status
        .failed_indexes
        .as_deref()
        .map(parse_indexes)
        .unwrap_or_default();
    let per_index_limit = spec.backoff_limit_per_index.filter(|_| indexed);
    // Failed pods the podFailurePolicy ignores: released, never counted.
    let policy_job = job.clone();
    let policy = |p: &Pod| {
        if crate::util::pod_phase(p) == "Failed" {
            failure_policy_action(&policy_job, p)
        } else {
            PolicyAction::Count
        }
    };
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    let mut policy_failure: Option<String> = None;
    let tracked = |p: &Pod| p.finalizers().iter().any(|f| f == TRACKING_FINALIZER);
    let mut recorded = false;
    for p in pods.iter().filter(|p| tracked(p)) {
        let pid = p.uid().unwrap_or_default();
        if unc_s.contains(&pid) || unc_f.contains(&pid) {
            continue;
        }
        match pod_outcome(p) {
            Some(true) => {
                unc_s.insert(pid);
                if indexed && let Some(i) = pod_index(p) {
                    completed.insert(i);
                }
                recorded = true;
            }
            Some(false) => match policy(p) {
                PolicyAction::Ignore => {
                    ignored.insert(pid);
                }
                action => {
                    unc_f.insert(pid);
                    recorded = true;
                    let index = pod_index(p).filter(|_| indexed);
                    match action {
                        PolicyAction::FailJob(msg) => {
                            policy_failure.get_or_insert(msg);
                        }
                        PolicyAction::FailIndex => failed_indexes.extend(index),
                        _ => {
                            // `backoffLimitPerIndex`: the index fails once more of its
                            // pods failed than the limit allows.
                            if let (Some(limit), Some(i)) = (per_index_limit, index) {
                                let failures = pods
                                    .iter()
                                    .filter(|q| pod_index(q) == Some(i))
                                    .filter(|q| pod_outcome(q) == Some(false))
                                    .filter(|q| policy(q) != PolicyAction::Ignore)
                                    .count();
                                if failures as i32 > limit {
                                    failed_indexes.insert(i);
                                }
                            }
                        }
                    }
                }
            },
            None => {}
        }
    }
    let now_failed_indexes = |status: &mut JobStatus, set: &BTreeSet<i32>| {
        if indexed && (per_index_limit.is_some() || !set.is_empty()) {
            status.failed_indexes = Some(format_indexes(set));
        }
    };
    // Decided with the pods that caused it, so a restart cannot lose it.
    if let Some(msg) = &policy_failure
        && condition(Some(&status), "FailureTarget").is_none()
        && condition(Some(&status), "SuccessCriteriaMet").is_none()
    {
        set_condition(
            &mut status,
            "FailureTarget",
            "True",
            "PodFailurePolicy",
            msg,
            now,
        );
        ctx.recorder
            .record(&job, WARNING, "PodFailurePolicy", msg)
            .await;
    }
    let with_uncounted = |status: &mut JobStatus, s: &BTreeSet<String>, f: &BTreeSet<String>| {
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: (!s.is_empty()).then(|| s.iter().cloned().collect()),
            failed: (!f.is_empty()).then(|| f.iter().cloned().collect()),
        });
    };
    let mut job = job;
    if recorded {
        with_uncounted(&mut status, &unc_s, &unc_f);
        if indexed {
            status.completed_indexes = Some(format_indexes(&completed));
        }
        now_failed_indexes(&mut status, &failed_indexes);
        job.status = Some(status.clone());
        job = api
            .replace_status(&job.name_any(), &PostParams::default(), &job)
            .await?;
    }
    let to_release: Vec<&Pod> = pods
        .iter()
        .filter(|p| tracked(p))
        .filter(|p| {
            let pid = p.uid().unwrap_or_default();
            unc_s.contains(&pid) || unc_f.contains(&pid) || ignored.contains(&pid)
        })
        .collect();
    release(&pod_api, to_release.into_iter()).await?;
    // Every recorded pod has now lost its finalizer (or is gone): count it.
    let succeeded = status.succeeded.unwrap_or(0) + unc_s.len() as i32;
    let failed = status.failed.unwrap_or(0) + unc_f.len() as i32;
    unc_s.clear();
    unc_f.clear();
    with_uncounted(&mut status, &unc_s, &unc_f);

    let active: Vec<Pod> = pods
        .iter()
        .filter(|p| pod_outcome(p).is_none())
        .cloned()
        .collect();
    let terminating = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some()
                && !matches!(crate::util::pod_phase(p), "Succeeded" | "Failed")
        })
        .count() as i32;
    let mut next: Option<Duration> = None;
    let suspended = spec.suspend == Some(true);

    let failure_target = condition(Some(&status), "FailureTarget").is_some();
    let success_target = condition(Some(&status), "SuccessCriteriaMet").is_some();
    let mut delete: Vec<String> = Vec::new();
    let mut create: Vec<Option<i32>> = Vec::new();

    if !failure_target && !success_target {
        if !suspended && status.start_time.is_none() {
            status.start_time = Some(time(now));
        }
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline = spec
            .active_deadline_seconds
            .filter(|_| !suspended)
            .zip(status.start_time.as_ref())
            .map(|(s, t)| t.0 + jiff::SignedDuration::from_secs(s));
        let all_indexes_done = indexed
            && !failed_indexes.is_empty()
            && (0..spec.completions.unwrap_or(0))
                .all(|i| completed.contains(&i) || failed_indexes.contains(&i));
        let fail = if failed > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if all_indexes_done {
            Some(("FailedIndexes", "Job has failed indexes"))
        } else if deadline.is_some_and(|d| d <= now) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };
        if let Some((reason, message)) = fail {
            set_condition(&mut status, "FailureTarget", "True", reason, message, now);
            ctx.recorder.record(&job, WARNING, reason, message).await;
        } else if succeeded_enough(&job, succeeded, &completed, active.len()) {
            let msg = "Reached expected number of succeeded pods";
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                msg,
                now,
            );
        } else {
            if let Some(d) = deadline {
                next = requeue_min(next, Some(until(d, now) + Duration::from_millis(50)));
            }
            if suspended {
                delete = active.iter().map(|p| p.name_any()).collect();
                if condition(Some(&status), "Suspended").is_none() {
                    set_condition(
                        &mut status,
                        "Suspended",
                        "True",
                        "JobSuspended",
                        "Job suspended",
                        now,
                    );
                    ctx.recorder
                        .record(&job, NORMAL, "Suspended", "Job suspended")
                        .await;
                }
            } else {
                if condition(Some(&status), "Suspended").is_some() {
                    set_condition(
                        &mut status,
                        "Suspended",
                        "False",
                        "JobResumed",
                        "Job resumed",
                        now,
                    );
                    // The deadline counts from the resumption, as in Kubernetes.
                    status.start_time = Some(time(now));
                    ctx.recorder
                        .record(&job, NORMAL, "Resumed", "Job resumed")
                        .await;
                }
                let p = plan_with_failed(&job, &active, succeeded, &completed, &failed_indexes);
                delete = p.delete;
                create = p.create;
                if !create.is_empty() {
                    let counted: Vec<Pod> = pods
                        .iter()
                        .filter(|p| policy(p) != PolicyAction::Ignore)
                        .cloned()
                        .collect();
                    let (n, last) = consecutive_failures(&counted);
                    let wait = last.map(|l| {
                        let at = l + jiff::SignedDuration::try_from(backoff(n)).unwrap_or_default();
                        until(at, now)
                    });
                    if let Some(w) = wait.filter(|w| !w.is_zero()) {
                        create.clear();
                        next = requeue_min(next, Some(w + Duration::from_millis(50)));
                    }
                }
            }
        }
    }
    // A Job that met its end stops its pods, and finishes once none is left running.
    let ending_failed = condition(Some(&status), "FailureTarget").is_some();
    let ending_ok = condition(Some(&status), "SuccessCriteriaMet").is_some();
    if ending_failed || ending_ok {
        delete = active.iter().map(|p| p.name_any()).collect();
    }
    let deleted = delete_pods(&ctx, &job, &pod_api, &active, &delete).await?;
    let mut created = 0;
    let mut create_error = None;
    if !create.is_empty() {
        (created, create_error) = create_pods(&ctx, &job, &pod_api, &create).await;
    }
    // Pods we just deleted count as failed once they terminate; until then they terminate.
    let still_active = active.len() as i32 - deleted + created;
    let still_terminating = terminating + deleted;
    if (ending_failed || ending_ok) && still_active == 0 && still_terminating == 0 {
        if ending_failed {
            let c = condition(Some(&status), "FailureTarget")
                .cloned()
                .unwrap_or_default();
            let (r, m) = (c.reason.unwrap_or_default(), c.message.unwrap_or_default());
            set_condition(&mut status, "Failed", "True", &r, &m, now);
        } else {
            let msg = "Reached expected number of succeeded pods";
            set_condition(
                &mut status,
                "Complete",
                "True",
                "CompletionsReached",
                msg,
                now,
            );
            status.completion_time = Some(time(now));
            ctx.recorder
                .record(&job, NORMAL, "Completed", "Job completed")
                .await;
        }
    }
    let ready = active
        .iter()
        .filter(|p| !delete.contains(&p.name_any()) && pod_is_ready(p))
        .count() as i32;
    status.active = (still_active > 0).then_some(still_active);
    status.ready = Some(ready);
    status.terminating = Some(still_terminating);
    status.succeeded = (succeeded > 0).then_some(succeeded);
    status.failed = (failed > 0).then_some(failed);
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }
    now_failed_indexes(&mut status, &failed_indexes);
    if job.status.as_ref() != Some(&status) {
        let mut updated = job.clone();
        updated.status = Some(status.clone());
        api.replace_status(&job.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    if let Some(e) = create_error {
        return Err(anyhow::anyhow!(e).into());
    }
    if let Some(done) = finished(Some(&status)).map(String::from) {
        let mut j = job.clone();
        j.status = Some(status);
        return finished_job(&api, &j, &done, now).await;
    }
    Ok(Action::requeue(next.map_or(RESYNC, |n| n.min(RESYNC))))
}

/// A finished Job waits for its TTL, then goes with its pods.
async fn finished_job(
    api: &Api<Job>,
    job: &Job,
    done: &str,
    now: jiff::Timestamp,
) -> Result<Action, ReconcileError> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let status = job.status.as_ref();
    let finished_at = status
        .and_then(|s| s.completion_time.as_ref())
        .filter(|_| done == "Complete")
        .or_else(|| condition(status, done).and_then(|c| c.last_transition_time.as_ref()))
        .map_or(now, |t| t.0);
    let expire = finished_at + jiff::SignedDuration::from_secs(i64::from(ttl));
    if expire > now {
        return Ok(Action::requeue(
            until(expire, now) + Duration::from_millis(50),
        ));
    }
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: job.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => {
            tracing::info!(job = %job.name_any(), "deleted finished job after its TTL");
            Ok(Action::await_change())
        }
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the tracking finalizer from `pods` (those that have it).
async fn release<'a>(
    api: &Api<Pod>,
    pods: impl Iterator<Item = &'a Pod>,
) -> Result<(), ReconcileError> {
    let results = join_all(
        pods.filter(|p| p.finalizers().iter().any(|f| f == TRACKING_FINALIZER))
            .map(|p| {
                let rest: Vec<&String> = p
                    .finalizers()
                    .iter()
                    .filter(|f| *f != TRACKING_FINALIZER)
                    .collect();
                // The resourceVersion makes the patch fail rather than drop a finalizer
                // someone added in between.
                let patch = json!({"metadata": {
                    "finalizers": rest,
                    "resourceVersion": p.resource_version(),
                }});
                let name = p.name_any();
                async move {
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                }
            }),
    )
    .await;
    for r in results {
        match r {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn delete_pods(
    ctx: &Ctx,
    job: &Job,
    api: &Api<Pod>,
    active: &[Pod],
    names: &[String],
) -> Result<i32, ReconcileError> {
    let results = join_all(
        active
            .iter()
            .filter(|p| names.contains(&p.name_any()))
            .map(|p| {
                let dp = DeleteParams {
                    preconditions: p.uid().map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let name = p.name_any();
                async move { (name.clone(), api.delete(&name, &dp).await) }
            }),
    )
    .await;
    let mut n = 0;
    for (name, r) in results {
        match r {
            Ok(_) => {
                n += 1;
                let msg = format!("Deleted pod: {name}");
                ctx.recorder
                    .record(job, NORMAL, "SuccessfulDelete", &msg)
                    .await;
            }
            Err(e) if is_not_found(&e) => n += 1,
            Err(e) => {
                let msg = format!("Error deleting: {e}");
                ctx.recorder
                    .record(job, WARNING, "FailedDelete", &msg)
                    .await;
                return Err(e.into());
            }
        }
    }
    Ok(n)
}

/// Creates pods in slow-start batches; returns how many were made and the first error.
async fn create_pods(
    ctx: &Ctx,
    job: &Job,
    api: &Api<Pod>,
    indexes: &[Option<i32>],
) -> (i32, Option<String>) {
    let pp = PostParams::default();
    let mut made = 0;
    let mut left = indexes.iter();
    for batch in slow_start_batches(indexes.len()) {
        let pods: Vec<Pod> = left
            .by_ref()
            .take(batch)
            .map(|i| pod_for(job, *i))
            .collect();
        let results = join_all(pods.iter().map(|p| api.create(&pp, p))).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(p) => {
                    made += 1;
                    let msg = format!("Created pod: {}", p.name_any());
                    ctx.recorder
                        .record(job, NORMAL, "SuccessfulCreate", &msg)
                        .await;
                }
                Err(e) => {
                    let msg = format!("Error creating: {e}");
                    ctx.recorder
                        .record(job, WARNING, "FailedCreate", &msg)
                        .await;
                    failed = Some(msg);
                }
            }
        }
        if failed.is_some() {
            return (made, failed);
        }
    }
    (made, None)
}

pub(crate) async fn run(
    client: Client,
    jobs: Informer<Job>,
    pods: Informer<Pod>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "job-controller"),
        client,
    });
    tokio::spawn(release_orphans(
        ctx.client.clone(),
        jobs.store(),
        pods.subscribe(),
        shutdown.clone(),
    ));
    let controller = Controller::for_shared_stream(jobs.subscribe(), jobs.store())
        .owns_shared_stream(pods.subscribe());
    drive(
        "job",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}

/// Pods whose Job is gone (deleted without waiting for them) still carry the tracking
/// finalizer, which would keep them forever: release them.
async fn release_orphans(
    client: Client,
    jobs: kube::runtime::reflector::Store<Job>,
    pods: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    futures::pin_mut!(pods);
    loop {
        let p = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = pods.next() => match p { Some(p) => p, None => return },
        };
        if !p.finalizers().iter().any(|f| f == TRACKING_FINALIZER) {
            continue;
        }
        let ns = p.namespace().unwrap_or_default();
        let owner = controller_of(&p.metadata)
            .filter(|r| r.kind == "Job")
            .cloned();
        let cached = owner.as_ref().is_some_and(|r| {
            let key = kube::runtime::reflector::ObjectRef::<Job>::new(&r.name).within(&ns);
            jobs.get(&key)
                .is_some_and(|j| j.uid().as_deref() == Some(r.uid.as_str()))
        });
        let alive = cached
            || match &owner {
                Some(r) => match Api::<Job>::namespaced(client.clone(), &ns)
                    .get_opt(&r.name)
                    .await
                {
                    Ok(Some(j)) => j.uid().as_deref() == Some(r.uid.as_str()),
                    Ok(None) => false,
                    Err(_) => true,
                },
                None => false,
            };
        if !alive {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if let Err(e) = release(&api, std::iter::once(p.as_ref())).await {
                tracing::debug!(pod = %p.name_any(), error = %e, "releasing an orphaned job pod");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec, PodStatus,
        PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.into()),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            ..Default::default()
                        }],
                        restart_policy: Some("Never".into()),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, phase: &str, index: Option<i32>, finished: Option<i64>) -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: finished.map(|s| {
                    vec![ContainerStatus {
                        state: Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                finished_at: Some(Time(
                                    jiff::Timestamp::from_second(1_700_000_000 + s).unwrap(),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        };
        if let Some(i) = index {
            p.metadata.annotations = Some([(COMPLETION_INDEX.to_string(), i.to_string())].into());
        }
        p
    }

    #[test]
    fn indexes_round_trip() {
        let s = parse_indexes("0,2-4,7");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&s), "0,2-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(format_indexes(&[1, 2].into()), "1-2");
    }

    #[test]
    fn backoff_doubles_up_to_six_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(7), Duration::from_secs(360));
        assert_eq!(backoff(40), Duration::from_secs(360));
    }

    #[test]
    fn failures_count_since_the_last_success() {
        let pods = vec![
            pod("a", "Failed", None, Some(1)),
            pod("b", "Succeeded", None, Some(2)),
            pod("c", "Failed", None, Some(3)),
            pod("d", "Failed", None, Some(5)),
            pod("e", "Running", None, None),
        ];
        let (n, last) = consecutive_failures(&pods);
        assert_eq!(n, 2);
        assert_eq!(last.unwrap().as_second(), 1_700_000_005);
    }

    #[test]
    fn non_indexed_plan_fills_parallelism_up_to_remaining_completions() {
        let j = job(Some(5), 2, false);
        let none = BTreeSet::new();
        assert_eq!(plan(&j, &[], 0, &none).create.len(), 2);
        assert_eq!(plan(&j, &[], 4, &none).create.len(), 1);
        let active = vec![
            pod("a", "Running", None, None),
            pod("b", "Pending", None, None),
        ];
        let p = plan(&j, &active, 4, &none);
        assert_eq!((p.create.len(), p.delete), (0, vec!["b".to_string()]));
        // Work queue: nothing new once one pod succeeded.
        let q = job(None, 3, false);
        assert_eq!(plan(&q, &[], 0, &none).create.len(), 3);
        assert_eq!(plan(&q, &active, 1, &none).create.len(), 0);
        assert!(succeeded_enough(&q, 1, &none, 0));
        assert!(!succeeded_enough(&q, 1, &none, 1));
    }

    #[test]
    fn indexed_plan_starts_pending_indexes_once() {
        let j = job(Some(4), 2, true);
        let done: BTreeSet<i32> = [0].into();
        let active = vec![pod("p1", "Running", Some(1), None)];
        let p = plan(&j, &active, 1, &done);
        assert_eq!(p.create, vec![Some(2)]);
        assert!(p.delete.is_empty());
        let dup = vec![
            pod("p1", "Running", Some(1), None),
            pod("p1b", "Running", Some(1), None),
            pod("p0", "Running", Some(0), None),
        ];
        let p = plan(&j, &dup, 1, &done);
        assert_eq!(p.delete.len(), 2);
        assert_eq!(p.create, vec![Some(2)]);
        assert!(succeeded_enough(&j, 4, &[0, 1, 2, 3].into(), 0));
        assert!(!succeeded_enough(&j, 4, &[0, 1, 3].into(), 0));
    }

    #[test]
    fn pod_failure_policy_first_matching_rule_decides() {
        let mut j = job(Some(1), 1, false);
        j.spec.as_mut().unwrap().pod_failure_policy = Some(
            serde_json::from_value(serde_json::json!({"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
                {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [2]}},
            ]}))
            .unwrap(),
        );
        let failed = |code: i32, conditions: &[&str]| {
            let mut p = pod("p", "Failed", None, Some(0));
            p.metadata.namespace = Some("ns".into());
            let st = p.status.get_or_insert_with(Default::default);
            st.container_statuses = Some(vec![ContainerStatus {
                name: "main".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: code,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
            st.conditions = Some(
                conditions
                    .iter()
                    .map(|c| k8s_openapi::api::core::v1::PodCondition {
                        type_: c.to_string(),
                        status: "True".into(),
                        ..Default::default()
                    })
                    .collect(),
            );
            p
        };
        assert_eq!(
            failure_policy_action(&j, &failed(42, &[])),
            PolicyAction::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0"
                    .into()
            )
        );
        assert_eq!(
            failure_policy_action(&j, &failed(137, &["DisruptionTarget"])),
            PolicyAction::Ignore
        );
        assert_eq!(
            failure_policy_action(&j, &failed(7, &[])),
            PolicyAction::Count
        );
        assert_eq!(
            failure_policy_action(&j, &failed(2, &[])),
            PolicyAction::FailIndex
        );
        // Exit code 1 matches no rule: counted.
        assert_eq!(
            failure_policy_action(&j, &failed(1, &[])),
            PolicyAction::Count
        );
    }

    #[test]
    fn indexed_pod_carries_its_index() {
        let p = pod_for(&job(Some(3), 3, true), Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(
            p.annotations().get(COMPLETION_INDEX).map(String::as_str),
            Some("2")
        );
        assert_eq!(p.labels().get(JOB_NAME).map(String::as_str), Some("pi"));
        assert_eq!(
            p.labels().get(CONTROLLER_UID).map(String::as_str),
            Some("u1")
        );
        assert!(p.finalizers().iter().any(|f| f == TRACKING_FINALIZER));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, "JOB_COMPLETION_INDEX");
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("Job", Some(true)));
    }
}
