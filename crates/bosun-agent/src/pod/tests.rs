//! The pod worker against a recording fake runtime, on tokio's paused clock: restart
//! policies and back-off, init containers, liveness restarts, graceful deletion and preStop
//! hooks, checked from the calls the worker made and when it made them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{PodContext, PodWorker};
use crate::fake_runtime::{Call, FakeRuntime, RecordingApi, Run};
use crate::network::HostNetwork;
use crate::runtime::RuntimeState;

const UID: &str = "0000-uid";
const BASE: Duration = Duration::from_secs(10);
const MAX: Duration = Duration::from_secs(40);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

struct Worker {
    rt: Arc<FakeRuntime>,
    api: Arc<RecordingApi>,
    tx: watch::Sender<Option<Pod>>,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
    start: Instant,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Starts a worker for `spec` (a pod spec as JSON) with a fresh fake runtime; `script`
    /// sets the fake up before the worker sees the pod.
    fn spawn(spec: serde_json::Value, script: impl FnOnce(&FakeRuntime)) -> Worker {
        Self::spawn_with(spec, script, Arc::new(RecordingApi::default()))
    }

    fn spawn_with(
        spec: serde_json::Value,
        script: impl FnOnce(&FakeRuntime),
        api: Arc<RecordingApi>,
    ) -> Worker {
        let rt = FakeRuntime::new();
        script(&rt);
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = Arc::new(PodContext {
            process_runtime: rt.clone(),
            image_runtime: None,
            network: Arc::new(HostNetwork {
                node_ip: "127.0.0.1".parse().expect("ip"),
            }),
            api: api.clone(),
            node_name: "node-a".into(),
            node_ip: "127.0.0.1".parse().expect("ip"),
            pods_dir: dir.path().join("pods"),
            backoff_base: BASE,
            backoff_max: MAX,
            backoff_reset: secs(600),
            sync_interval: secs(1),
            node_cpu: 2.0,
            node_memory: 1e9,
            cluster_dns: None,
            cpus: Arc::new(crate::cpus::CpuManager::none()),
        });
        let (tx, rx) = watch::channel(Some(pod(spec)));
        let shutdown = CancellationToken::new();
        let worker = PodWorker::new(ctx, UID.into(), rx);
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        Worker {
            rt,
            api,
            tx,
            shutdown,
            handle,
            start: Instant::now(),
            _dir: dir,
        }
    }

    /// When `container`'s attempts started, since the worker started.
    fn starts(&self, container: &str) -> Vec<Duration> {
        self.rt
            .starts(container)
            .into_iter()
            .map(|(t, _)| t.duration_since(self.start))
            .collect()
    }

    /// Marks the pod deleted with `grace` seconds, as the API server does.
    fn delete(&self, grace: i64) {
        self.tx.send_modify(|p| {
            if let Some(p) = p {
                p.metadata.deletion_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
                );
                p.metadata.deletion_grace_period_seconds = Some(grace);
            }
        });
    }

    fn phase(&self) -> Option<String> {
        self.api.last_status().and_then(|s| s.phase)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": UID},
        "spec": spec,
    }))
    .expect("pod")
}

fn app(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "command": ["app"]})
}

#[tokio::test(start_paused = true)]
async fn always_restarts_with_doubling_back_off() {
    let w = Worker::spawn(serde_json::json!({"containers": [app("a")]}), |rt| {
        rt.script("a", &[Run::ExitAfter(secs(1), 1)])
    });
    tokio::time::sleep(secs(150)).await;
    // Each attempt runs 1 s; the first restart is immediate, then 10, 20, 40, 40 s
    // (plus at most one 1 s sync).
    let starts = w.starts("a");
    let gaps: Vec<Duration> = starts.windows(2).map(|p| p[1] - p[0] - secs(1)).collect();
    assert!(starts.len() >= 6, "{starts:?}");
    assert!(gaps[0] < secs(1), "first restart at once: {gaps:?}");
    for (gap, want) in gaps.iter().skip(1).zip([10, 20, 40, 40]) {
        assert!(
            *gap >= secs(want) && *gap <= secs(want + 1),
            "back-off {gap:?}, want {want} s: {gaps:?}"
        );
    }
    assert!(!w.api.events("BackOff").is_empty());
    let waiting = w
        .api
        .statuses()
        .iter()
        .filter_map(|s| {
            s.container_statuses
                .as_ref()?
                .first()?
                .state
                .clone()?
                .waiting
        })
        .filter_map(|wt| wt.reason)
        .any(|r| r == "CrashLoopBackOff");
    assert!(waiting, "CrashLoopBackOff was reported");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn on_failure_restarts_until_success() {
    let w = Worker::spawn(
        serde_json::json!({"restartPolicy": "OnFailure", "containers": [app("a")]}),
        |rt| {
            rt.script(
                "a",
                &[Run::ExitAfter(secs(1), 2), Run::ExitAfter(secs(1), 0)],
            )
        },
    );
    tokio::time::sleep(secs(60)).await;
    assert_eq!(w.starts("a").len(), 2);
    assert_eq!(w.phase().as_deref(), Some("Succeeded"));
    let st = w.api.last_status().expect("status");
    let c = &st.container_statuses.expect("statuses")[0];
    assert_eq!(c.restart_count, 1);
    assert_eq!(
        c.last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(2)
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn never_leaves_a_failed_container_failed() {
    let w = Worker::spawn(
        serde_json::json!({"restartPolicy": "Never", "containers": [app("a")]}),
        |rt| rt.script("a", &[Run::ExitAfter(secs(1), 3)]),
    );
    tokio::time::sleep(secs(60)).await;
    assert_eq!(w.starts("a").len(), 1);
    assert_eq!(w.phase().as_deref(), Some("Failed"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_before_the_app() {
    let w = Worker::spawn(
        serde_json::json!({
            "initContainers": [app("i1"), app("i2")],
            "containers": [app("a")],
        }),
        |rt| {
            // i1 fails once: it runs again before i2 starts.
            rt.script(
                "i1",
                &[Run::ExitAfter(secs(2), 1), Run::ExitAfter(secs(2), 0)],
            );
            rt.script("i2", &[Run::ExitAfter(secs(3), 0)]);
        },
    );
    tokio::time::sleep(secs(30)).await;
    let order: Vec<String> =
        w.rt.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::Start(k) => Some(format!("{}/{}", k.container, k.attempt)),
                _ => None,
            })
            .collect();
    assert_eq!(order, ["i1/0", "i1/1", "i2/0", "a/0"]);
    let (i1, i2, a) = (w.starts("i1"), w.starts("i2"), w.starts("a"));
    assert!(
        i2[0] >= i1[1] + secs(2),
        "i2 after i1 succeeded: {i1:?} {i2:?}"
    );
    assert!(
        a[0] >= i2[0] + secs(3),
        "the app after i2 finished: {i2:?} {a:?}"
    );
    assert_eq!(w.phase().as_deref(), Some("Running"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let w = Worker::spawn(
        serde_json::json!({"containers": [{
            "name": "a", "command": ["app"],
            "livenessProbe": {"exec": {"command": ["check"]}, "periodSeconds": 1,
                              "failureThreshold": 2},
        }]}),
        // Healthy three times, then never again.
        |rt| rt.exec_results("a", &["check"], &[0, 0, 0, 1]),
    );
    tokio::time::sleep(secs(20)).await;
    let term = w.rt.calls().into_iter().find_map(|(t, c)| match c {
        Call::Signal { key, force: false } if key.attempt == 0 => Some(t),
        _ => None,
    });
    let term = term.expect("attempt 0 got SIGTERM");
    let starts = w.rt.starts("a");
    assert!(starts.len() >= 2, "{starts:?}");
    assert!(starts[1].0 >= term, "restarted after the kill");
    let killing = w.api.events("Killing");
    assert!(
        killing.iter().any(|m| m.contains("failed liveness probe")),
        "{killing:?}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deletion_sends_sigterm_then_sigkill_after_the_grace_period() {
    let w = Worker::spawn(serde_json::json!({"containers": [app("a")]}), |rt| {
        rt.ignore_term("a")
    });
    tokio::time::sleep(secs(5)).await;
    assert!(matches!(
        w.rt.state_of("a", 0),
        Some(RuntimeState::Running { .. })
    ));
    w.delete(7);
    tokio::time::sleep(secs(30)).await;
    let signals: Vec<(Instant, bool)> =
        w.rt.calls()
            .into_iter()
            .filter_map(|(t, c)| match c {
                Call::Signal { force, .. } => Some((t, force)),
                _ => None,
            })
            .collect();
    assert_eq!(
        signals.iter().map(|s| s.1).collect::<Vec<_>>(),
        [false, true],
        "SIGTERM, then SIGKILL"
    );
    let waited = signals[1].0.duration_since(signals[0].0);
    assert!(
        waited >= secs(6) && waited <= secs(7),
        "SIGKILL when the grace period ran out: {waited:?}"
    );
    assert_eq!(w.api.finalized(), [UID]);
    assert!(
        w.rt.calls()
            .iter()
            .any(|(_, c)| *c == Call::RemovePod(UID.into()))
    );
    assert!(w.handle.is_finished(), "the worker ends with its pod");
}

#[tokio::test(start_paused = true)]
async fn a_container_that_stops_on_sigterm_gets_no_sigkill() {
    let w = Worker::spawn(serde_json::json!({"containers": [app("a")]}), |_| {});
    tokio::time::sleep(secs(5)).await;
    w.delete(30);
    tokio::time::sleep(secs(5)).await;
    let forced: Vec<bool> =
        w.rt.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::Signal { force, .. } => Some(force),
                _ => None,
            })
            .collect();
    assert_eq!(forced, [false]);
    assert_eq!(w.api.finalized(), [UID]);
}

#[tokio::test(start_paused = true)]
async fn the_pre_stop_hook_runs_before_the_stop() {
    let w = Worker::spawn(
        serde_json::json!({"containers": [{
            "name": "a", "command": ["app"],
            "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}},
        }]}),
        |_| {},
    );
    tokio::time::sleep(secs(5)).await;
    w.delete(30);
    tokio::time::sleep(secs(5)).await;
    let calls: Vec<Call> = w.rt.calls().into_iter().map(|(_, c)| c).collect();
    let hook = calls
        .iter()
        .position(|c| matches!(c, Call::Exec { argv, .. } if argv == &["drain"]))
        .expect("preStop ran");
    let term = calls
        .iter()
        .position(|c| matches!(c, Call::Signal { force: false, .. }))
        .expect("SIGTERM sent");
    assert!(hook < term, "{calls:?}");
    assert_eq!(w.api.finalized(), [UID]);
}

#[tokio::test(start_paused = true)]
async fn a_containers_reads_from_the_api_go_out_together() {
    // The Services (for the service variables), the token and the ConfigMap of a
    // `kube-api-access` volume wait for each other here: read one after another, the first
    // would wait forever and the container would never start.
    let api = Arc::new(RecordingApi::default());
    api.meet(3);
    let w = Worker::spawn_with(
        serde_json::json!({
            "containers": [{"name": "a", "command": ["app"],
                            "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "optional": true}}]}}]
        }),
        |rt| rt.script("a", &[Run::ExitAfter(secs(3600), 0)]),
        api,
    );
    tokio::time::sleep(secs(5)).await;
    assert_eq!(w.starts("a").len(), 1, "the container started");
    w.stop().await;
}
