//! The Job, CronJob and DaemonSet controllers against the real API server (in-process, over
//! a redb store in a temporary directory). A stand-in kubelet decides how each pod ends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_controllers::ControllerConfig;
use bosun_store::{RedbOptions, RedbStore};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Cluster {
    client: Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    let c = Cluster {
        client: Client::new(server.router(), "default"),
        shutdown: CancellationToken::new(),
        _dir: dir,
    };
    let client = c.client.clone();
    let stop = c.shutdown.child_token();
    tokio::spawn(async move {
        bosun_controllers::run_with(client, ControllerConfig::default(), stop)
            .await
            .unwrap()
    });
    c
}

async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// How the stand-in kubelet ends a pod: "Running" (stays), "Succeeded" or "Failed".
type Fate = Arc<dyn Fn(&Pod) -> &'static str + Send + Sync>;

/// Moves every new pod to the phase `fate` picks, as a kubelet would once its containers
/// ran; finished pods carry their container's exit and finish time.
fn kubelet(client: Client, stop: CancellationToken, fate: Fate) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        while !stop.is_cancelled() {
            for p in pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("");
                if !phase.is_empty() && phase != "Pending"
                    || p.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap());
                let now = jiff::Timestamp::now().to_string();
                let status = match fate(&p) {
                    "Running" => {
                        json!({"status": {"phase": "Running", "startTime": now, "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}})
                    }
                    end => {
                        let code = if end == "Succeeded" { 0 } else { 1 };
                        json!({"status": {"phase": end, "startTime": now, "containerStatuses": [{
                            "name": "main", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": code, "startedAt": now, "finishedAt": now,
                                "reason": if code == 0 { "Completed" } else { "Error" }}}}]}})
                    }
                };
                let _ = api
                    .patch_status(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut spec = spec;
    spec["template"] = json!({"spec": {
        "restartPolicy": "Never",
        "runtimeClassName": "process",
        "containers": [{"name": "main", "command": ["/bin/true"]}]
    }});
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn has_condition(j: &Job, ty: &str) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
}

async fn job_pods(client: &Client, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn job_retries_after_backoff_and_completes() {
    let c = cluster().await;
    // The first pod fails, the second succeeds.
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    kubelet(
        c.client.clone(),
        c.shutdown.child_token(),
        Arc::new(move |_p| {
            if s.fetch_add(1, Ordering::SeqCst) == 0 {
                "Failed"
            } else {
                "Succeeded"
            }
        }),
    );
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    jobs.create(
        &PostParams::default(),
        &job("retry", json!({"backoffLimit": 2})),
    )
    .await
    .unwrap();
    let done = eventually("the job to complete", Duration::from_secs(40), || async {
        let j = jobs.get("retry").await.ok()?;
        has_condition(&j, "Complete").map(|_| j)
    })
    .await;
    let st = done.status.clone().unwrap();
    assert_eq!(
        (st.succeeded, st.failed, st.active),
        (Some(1), Some(1), None)
    );
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(
        has_condition(&done, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    let pods = job_pods(&c.client, "retry").await;
    assert_eq!(pods.len(), 2, "one failed pod and one that succeeded");
    // The retry waited for the 10 s back-off after the failure.
    let created: Vec<jiff::Timestamp> = pods
        .iter()
        .map(|p| p.metadata.creation_timestamp.as_ref().unwrap().0)
        .collect();
    let gap = created.iter().max().unwrap().as_second() - created.iter().min().unwrap().as_second();
    assert!(gap >= 9, "second pod started {gap}s after the first");
    for p in &pods {
        assert!(
            p.finalizers().is_empty(),
            "tracking finalizer removed once counted"
        );
        assert_eq!(
            p.labels().get("job-name").map(String::as_str),
            Some("retry")
        );
    }
}

#[tokio::test]
async fn job_over_its_backoff_limit_fails() {
    let c = cluster().await;
    kubelet(
        c.client.clone(),
        c.shutdown.child_token(),
        Arc::new(|_| "Failed"),
    );
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    jobs.create(
        &PostParams::default(),
        &job("doomed", json!({"backoffLimit": 0})),
    )
    .await
    .unwrap();
    let j = eventually("the job to fail", Duration::from_secs(20), || async {
        let j = jobs.get("doomed").await.ok()?;
        has_condition(&j, "Failed").map(|_| j)
    })
    .await;
    assert_eq!(
        has_condition(&j, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(j.status.unwrap().failed, Some(1));
}

#[tokio::test]
async fn indexed_parallel_job_runs_every_index_once() {
    let c = cluster().await;
    kubelet(
        c.client.clone(),
        c.shutdown.child_token(),
        Arc::new(|_| "Succeeded"),
    );
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    jobs.create(
        &PostParams::default(),
        &job(
            "idx",
            json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}),
        ),
    )
    .await
    .unwrap();
    let j = eventually(
        "the indexed job to complete",
        Duration::from_secs(20),
        || async {
            let j = jobs.get("idx").await.ok()?;
            has_condition(&j, "Complete").map(|_| j)
        },
    )
    .await;
    let st = j.status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-3"));
    assert_eq!(st.succeeded, Some(4));
    let mut idx: Vec<String> = job_pods(&c.client, "idx")
        .await
        .iter()
        .map(|p| {
            let i = p.annotations()["batch.kubernetes.io/job-completion-index"].clone();
            let spec = p.spec.as_ref().unwrap();
            assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
            assert!(p.name_any().starts_with(&format!("idx-{i}-")));
            i
        })
        .collect();
    idx.sort();
    assert_eq!(idx, ["0", "1", "2", "3"]);
}

#[tokio::test]
async fn deadline_fails_the_job_and_ttl_removes_it() {
    let c = cluster().await;
    kubelet(
        c.client.clone(),
        c.shutdown.child_token(),
        Arc::new(|_| "Running"),
    );
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    jobs.create(
        &PostParams::default(),
        &job(
            "slow",
            json!({"parallelism": 2, "completions": 2, "activeDeadlineSeconds": 2}),
        ),
    )
    .await
    .unwrap();
    let j = eventually("the deadline", Duration::from_secs(20), || async {
        let j = jobs.get("slow").await.ok()?;
        has_condition(&j, "Failed").map(|_| j)
    })
    .await;
    assert_eq!(
        has_condition(&j, "Failed").as_deref(),
        Some("DeadlineExceeded")
    );
    assert_eq!(
        has_condition(&j, "FailureTarget").as_deref(),
        Some("DeadlineExceeded")
    );
    assert!(j.status.as_ref().unwrap().active.is_none());
    eventually(
        "the running pods to go",
        Duration::from_secs(10),
        || async { job_pods(&c.client, "slow").await.is_empty().then_some(()) },
    )
    .await;

    // A finished Job with a TTL is deleted with its pods.
    jobs.create(
        &PostParams::default(),
        &job(
            "short-lived",
            json!({"ttlSecondsAfterFinished": 1, "activeDeadlineSeconds": 1}),
        ),
    )
    .await
    .unwrap();
    eventually("the TTL", Duration::from_secs(20), || async {
        jobs.get_opt("short-lived")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn suspended_job_starts_nothing_until_resumed() {
    let c = cluster().await;
    kubelet(
        c.client.clone(),
        c.shutdown.child_token(),
        Arc::new(|_| "Succeeded"),
    );
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    jobs.create(
        &PostParams::default(),
        &job("later", json!({"suspend": true})),
    )
    .await
    .unwrap();
    let j = eventually(
        "the Suspended condition",
        Duration::from_secs(10),
        || async {
            let j = jobs.get("later").await.ok()?;
            has_condition(&j, "Suspended").map(|_| j)
        },
    )
    .await;
    assert!(j.status.unwrap().start_time.is_none());
    assert!(job_pods(&c.client, "later").await.is_empty());
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    eventually(
        "the resumed job to complete",
        Duration::from_secs(20),
        || async { has_condition(&jobs.get("later").await.ok()?, "Complete") },
    )
    .await;
}

#[tokio::test]
async fn cronjob_starts_a_job_on_schedule_and_records_it() {
    let c = cluster().await;
    kubelet(
        c.client.clone(),
        c.shutdown.child_token(),
        Arc::new(|_| "Succeeded"),
    );
    let cjs: Api<CronJob> = Api::default_namespaced(c.client.clone());
    let cj: CronJob = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "timeZone": "Etc/UTC", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "runtimeClassName": "process",
            "containers": [{"name": "main", "command": ["/bin/true"]}]}}}}}
    }))
    .unwrap();
    cjs.create(&PostParams::default(), &cj).await.unwrap();
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    let j = eventually("the scheduled job", Duration::from_secs(75), || async {
        jobs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let scheduled = j.annotations()["batch.kubernetes.io/cronjob-scheduled-timestamp"].clone();
    let t: jiff::Timestamp = scheduled.parse().unwrap();
    assert_eq!(t.as_second() % 60, 0, "runs on the minute");
    assert_eq!(j.name_any(), format!("tick-{}", t.as_second() / 60));
    let owner = &j.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    let cj = eventually("lastSuccessfulTime", Duration::from_secs(20), || async {
        let cj = cjs.get("tick").await.ok()?;
        let st = cj.status.clone()?;
        (st.last_successful_time.is_some() && st.active.is_none()).then_some(cj)
    })
    .await;
    assert_eq!(cj.status.unwrap().last_schedule_time.unwrap().0, t);
}

fn ready_node(name: &str, taints: serde_json::Value) -> Node {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints}}),
    )
    .unwrap()
}

#[tokio::test]
async fn daemonset_runs_one_pod_per_eligible_node_and_rolls_updates() {
    let c = cluster().await;
    kubelet(
        c.client.clone(),
        c.shutdown.child_token(),
        Arc::new(|_| "Running"),
    );
    let nodes: Api<Node> = Api::all(c.client.clone());
    for (n, taints) in [
        ("n1", json!([])),
        (
            "n2",
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        ),
        (
            "n3",
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        ),
    ] {
        nodes
            .create(&PostParams::default(), &ready_node(n, taints))
            .await
            .unwrap();
    }
    let dss: Api<DaemonSet> = Api::default_namespaced(c.client.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "annotations": {"kubernetes.io/change-cause": "v1"}},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"runtimeClassName": "process", "containers": [{"name": "main", "command": ["/bin/sleep", "1"]}]}}}
    }))
    .unwrap();
    dss.create(&PostParams::default(), &ds).await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let on_nodes = |v: &[Pod]| {
        let mut n: Vec<String> = v
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        n.sort();
        n
    };
    eventually(
        "a pod on n1 and n2 (not the tainted n3)",
        Duration::from_secs(15),
        || async {
            let v = pods
                .list(&ListParams::default().labels("app=agent"))
                .await
                .ok()?
                .items;
            (on_nodes(&v) == ["n1", "n2"]).then_some(())
        },
    )
    .await;
    let st = eventually("status", Duration::from_secs(10), || async {
        let st = dss.get("agent").await.ok()?.status?;
        (st.number_ready == 2).then_some(st)
    })
    .await;
    assert_eq!(
        (st.desired_number_scheduled, st.current_number_scheduled),
        (2, 2)
    );

    // A template change rolls out node by node under a new revision.
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "command": ["/bin/sleep", "2"]}]}}}})),
    )
    .await
    .unwrap();
    let revs: Api<ControllerRevision> = Api::default_namespaced(c.client.clone());
    let st = eventually(
        "the update to roll out",
        Duration::from_secs(20),
        || async {
            let d = dss.get("agent").await.ok()?;
            let st = d.status?;
            (st.observed_generation == d.metadata.generation
                && st.updated_number_scheduled == Some(2)
                && st.number_available == Some(2))
            .then_some(st)
        },
    )
    .await;
    assert_eq!(st.number_unavailable, Some(0));

    let mut list = revs
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|r| r.revision);
    assert_eq!(list.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        list[1]
            .annotations()
            .get("kubernetes.io/change-cause")
            .map(String::as_str),
        Some("v2")
    );
    let live = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    let hash = list[1].labels()["controller-revision-hash"].clone();
    assert!(
        live.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .all(|p| p.labels()["controller-revision-hash"] == hash)
    );

    // Tolerating the taint brings n3 in.
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}}}})),
    )
    .await
    .unwrap();
    eventually("a pod on n3 too", Duration::from_secs(20), || async {
        let v = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items;
        (on_nodes(&v) == ["n1", "n2", "n3"]).then_some(())
    })
    .await;
}
