//! CronJob controller: starts a Job at each time of `spec.schedule` (in `spec.timeZone`),
//! honouring `concurrencyPolicy`, `startingDeadlineSeconds` and `suspend`, keeps
//! `status.active`/`lastScheduleTime`/`lastSuccessfulTime`, and trims finished Jobs to the
//! history limits. Level-triggered like `CronJobControllerV2`: each pass works out the most
//! recent missed time from `lastScheduleTime`, so a restart neither skips nor repeats a run.

use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::job::finished;
use crate::util::{controller_of, controller_ref, is_not_found, time};

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
const RESYNC: Duration = Duration::from_secs(300);

// ------------------------------------------------------------------ pure logic

/// Parses a schedule as Kubernetes accepts it: five fields or a `@hourly`-style macro.
pub fn parse_schedule(s: &str) -> Result<Cron, String> {
    let s = s.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| e.to_string())
}

/// The zone a schedule is read in: `timeZone`, else the server's own zone (as the
/// controller manager's local time in Kubernetes).
pub fn zone(name: Option<&str>) -> Result<jiff::tz::TimeZone, String> {
    match name {
        Some(n) if !n.is_empty() => {
            jiff::tz::TimeZone::get(n).map_err(|_| format!("unknown time zone {n}"))
        }
        _ => Ok(jiff::tz::TimeZone::system()),
    }
}

/// The latest scheduled time in `(earliest, now]`, if any.
pub fn most_recent(
    cron: &Cron,
    tz: &jiff::tz::TimeZone,
    earliest: jiff::Timestamp,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let at = now.to_zoned(tz.clone());
    let t = cron.find_previous_occurrence(&at, true).ok()?.timestamp();
    (t > earliest).then_some(t)
}

/// The first scheduled time after `now`.
pub fn next_after(
    cron: &Cron,
    tz: &jiff::tz::TimeZone,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let at = now.to_zoned(tz.clone());
    cron.find_next_occurrence(&at, false)
        .ok()
        .map(|z| z.timestamp())
}

/// Name of the Job for the run scheduled at `t`: the CronJob's name and the minute, as
/// Kubernetes names it (so a run is created once even if two passes race).
pub fn job_name(cj: &str, t: jiff::Timestamp) -> String {
    format!("{cj}-{}", t.as_second().div_euclid(60))
}

/// RFC 3339 in the schedule's zone, `Z` for UTC, as Go formats it.
fn rfc3339(t: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> String {
    let z = t.to_zoned(tz.clone());
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job a CronJob starts for the time `t` (`getJobFromTemplate2`).
pub fn job_for(cj: &CronJob, t: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> Job {
    let tmpl = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339(t, tz));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), t)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref("batch/v1", "CronJob", &cj.metadata)]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn started(j: &Job) -> Option<jiff::Timestamp> {
    j.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(j.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// Finished Jobs beyond the history limits, oldest first (`removeOldestJobs`).
pub fn beyond_history(jobs: &[Job], ok_limit: i32, failed_limit: i32) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, limit) in [("Complete", ok_limit), ("Failed", failed_limit)] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .filter(|j| finished(j.status.as_ref()) == Some(kind))
            .collect();
        done.sort_by_key(|j| started(j));
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        out.extend(done.iter().take(excess).map(|j| j.name_any()));
    }
    out
}

// ------------------------------------------------------------------ reconcile

struct Ctx {
    client: Client,
    recorder: Recorder,
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = cj.namespace().unwrap_or_default();
    let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cj) = api.get_opt(&cj.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = cj.spec.clone().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut jobs: Vec<Job> = job_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    let now = crate::util::now();
    let mut status = cj.status.clone().unwrap_or_default();

    // Jobs that finished since the last pass.
    let was_active: Vec<String> = status
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.uid.clone())
        .collect();
    for j in &jobs {
        if let Some(c) = finished(j.status.as_ref())
            && j.uid().is_some_and(|u| was_active.contains(&u))
        {
            let msg = format!("Saw completed job: {}, condition: {c}", j.name_any());
            ctx.recorder
                .record(&cj, NORMAL, "SawCompletedJob", &msg)
                .await;
        }
    }
    if let Some(t) = jobs
        .iter()
        .filter(|j| finished(j.status.as_ref()) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref())
        .map(|t| t.0)
        .max()
        && status.last_successful_time.as_ref().is_none_or(|l| l.0 < t)
    {
        status.last_successful_time = Some(time(t));
    }

    // History first, so a deleted Job never shows as active.
    let trim = beyond_history(
        &jobs,
        spec.successful_jobs_history_limit.unwrap_or(3),
        spec.failed_jobs_history_limit.unwrap_or(1),
    );
    for name in &trim {
        delete_job(&ctx, &cj, &job_api, name).await?;
    }
    jobs.retain(|j| !trim.contains(&j.name_any()));

    let mut next: Option<Duration> = None;
    let schedule = parse_schedule(&spec.schedule);
    let tz = zone(spec.time_zone.as_deref());
    match (&schedule, &tz) {
        (Err(e), _) => {
            let msg = format!("invalid schedule: {}: {e}", spec.schedule);
            ctx.recorder
                .record(&cj, WARNING, "InvalidSchedule", &msg)
                .await;
        }
        (_, Err(e)) => {
            ctx.recorder
                .record(&cj, WARNING, "UnknownTimeZone", e)
                .await;
        }
        (Ok(cron), Ok(tz)) => {
            next = next_after(cron, tz, now)
                .map(|t| t.duration_since(now).unsigned_abs() + Duration::from_millis(100));
            if spec.suspend != Some(true) {
                let mut earliest = status
                    .last_schedule_time
                    .as_ref()
                    .or(cj.metadata.creation_timestamp.as_ref())
                    .map_or(now, |t| t.0);
                if let Some(sds) = spec.starting_deadline_seconds {
                    earliest = earliest.max(now - jiff::SignedDuration::from_secs(sds));
                }
                if let Some(t) = most_recent(cron, tz, earliest, now) {
                    run_at(&ctx, &cj, &job_api, &mut jobs, &mut status, t, tz).await?;
                }
            }
        }
    }

    let mut active: Vec<ObjectReference> = jobs
        .iter()
        .filter(|j| finished(j.status.as_ref()).is_none())
        .map(job_ref)
        .collect();
    active.sort_by(|a, b| a.name.cmp(&b.name));
    status.active = (!active.is_empty()).then_some(active);
    if cj.status.as_ref() != Some(&status)
        && (cj.status.is_some() || status != CronJobStatus::default())
    {
        let mut updated = cj.clone();
        updated.status = Some(status);
        api.replace_status(&cj.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    Ok(Action::requeue(next.map_or(RESYNC, |n| n.min(RESYNC))))
}

/// Starts the run scheduled at `t`, as `concurrencyPolicy` allows.
async fn run_at(
    ctx: &Ctx,
    cj: &CronJob,
    api: &Api<Job>,
    jobs: &mut Vec<Job>,
    status: &mut CronJobStatus,
    t: jiff::Timestamp,
    tz: &jiff::tz::TimeZone,
) -> Result<(), ReconcileError> {
    let spec = cj.spec.clone().unwrap_or_default();
    let name = job_name(&cj.name_any(), t);
    if jobs.iter().any(|j| j.name_any() == name) {
        status.last_schedule_time = Some(time(t));
        return Ok(());
    }
    let running: Vec<String> = jobs
        .iter()
        .filter(|j| finished(j.status.as_ref()).is_none())
        .map(|j| j.name_any())
        .collect();
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !running.is_empty() => {
            // Kubernetes waits: the run starts when the running Job ends, if still in time.
            tracing::debug!(cronjob = %cj.name_any(), "prior run active; Forbid");
            return Ok(());
        }
        Some("Replace") => {
            for n in &running {
                delete_job(ctx, cj, api, n).await?;
            }
            jobs.retain(|j| !running.contains(&j.name_any()));
        }
        _ => {}
    }
    let job = job_for(cj, t, tz);
    match api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            let msg = format!("Created job {}", j.name_any());
            ctx.recorder
                .record(cj, NORMAL, "SuccessfulCreate", &msg)
                .await;
            jobs.push(j);
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Created by an earlier pass whose status write was lost; ours if we own it.
            if let Some(j) = api.get_opt(&name).await?
                && controller_of(&j.metadata).is_some_and(|r| Some(&r.uid) == cj.uid().as_ref())
            {
                jobs.push(j);
            }
        }
        Err(e) => {
            let msg = format!("Error creating job: {e}");
            ctx.recorder.record(cj, WARNING, "FailedCreate", &msg).await;
            return Err(e.into());
        }
    }
    status.last_schedule_time = Some(time(t));
    Ok(())
}

async fn delete_job(
    ctx: &Ctx,
    cj: &CronJob,
    api: &Api<Job>,
    name: &str,
) -> Result<(), ReconcileError> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            let msg = format!("Deleted job {name}");
            ctx.recorder
                .record(cj, NORMAL, "SuccessfulDelete", &msg)
                .await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn run(
    client: Client,
    cron_jobs: Informer<CronJob>,
    jobs: Informer<Job>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "cronjob-controller"),
        client,
    });
    let controller = Controller::for_shared_stream(cron_jobs.subscribe(), cron_jobs.store())
        .owns_shared_stream(jobs.subscribe());
    drive(
        "cronjob",
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
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_macros_and_rejections() {
        let utc = jiff::tz::TimeZone::UTC;
        let c = parse_schedule("*/5 * * * *").unwrap();
        assert_eq!(
            next_after(&c, &utc, ts("2026-01-01T10:02:30Z")),
            Some(ts("2026-01-01T10:05:00Z"))
        );
        let h = parse_schedule("@hourly").unwrap();
        assert_eq!(
            most_recent(
                &h,
                &utc,
                ts("2026-01-01T09:00:00Z"),
                ts("2026-01-01T10:59:00Z")
            ),
            Some(ts("2026-01-01T10:00:00Z"))
        );
        // Nothing new since the last run.
        assert_eq!(
            most_recent(
                &h,
                &utc,
                ts("2026-01-01T10:00:00Z"),
                ts("2026-01-01T10:59:00Z")
            ),
            None
        );
        assert!(parse_schedule("TZ=UTC * * * * *").is_err());
        assert!(parse_schedule("* * *").is_err());
        assert!(parse_schedule("0 0 0 * * *").is_err());
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let c = parse_schedule("0 9 * * *").unwrap();
        let berlin = zone(Some("Europe/Berlin")).unwrap();
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(
            next_after(&c, &berlin, ts("2026-01-15T00:00:00Z")),
            Some(ts("2026-01-15T08:00:00Z"))
        );
        assert_eq!(
            rfc3339(ts("2026-01-15T08:00:00Z"), &berlin),
            "2026-01-15T09:00:00+01:00"
        );
        assert_eq!(
            rfc3339(ts("2026-01-15T08:00:00Z"), &jiff::tz::TimeZone::UTC),
            "2026-01-15T08:00:00Z"
        );
        assert!(zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn job_names_use_the_scheduled_minute() {
        assert_eq!(
            job_name("hello", ts("2026-01-01T00:01:00Z")),
            format!("hello-{}", 1_767_225_660 / 60)
        );
    }

    fn job(name: &str, cond: Option<&str>, start: i64) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(JobStatus {
                start_time: Some(Time(jiff::Timestamp::from_second(start).unwrap())),
                conditions: cond.map(|c| {
                    vec![JobCondition {
                        type_: c.into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn history_keeps_the_newest() {
        let jobs = vec![
            job("ok1", Some("Complete"), 1),
            job("ok3", Some("Complete"), 3),
            job("ok2", Some("Complete"), 2),
            job("bad1", Some("Failed"), 1),
            job("bad2", Some("Failed"), 2),
            job("run", None, 0),
        ];
        assert_eq!(beyond_history(&jobs, 2, 1), ["ok1", "bad1"]);
        assert_eq!(beyond_history(&jobs, 0, 0).len(), 5);
    }
}
