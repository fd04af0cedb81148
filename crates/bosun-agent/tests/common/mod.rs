//! Test support: an in-memory ClusterApi that records what pod workers report, and helpers
//! to run a pod worker over real processes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bosun_agent::api::ClusterApi;
use bosun_agent::network::{BridgeNetwork, HostNetwork, PodNetwork};
use bosun_agent::pod::{PodContext, PodWorker};
use bosun_agent::runtime::ProcessRuntime;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct FakeApi {
    pub config_maps: Mutex<HashMap<String, ConfigMap>>,
    pub secrets: Mutex<HashMap<String, Secret>>,
    pub statuses: Mutex<Vec<PodStatus>>,
    pub events: Mutex<Vec<(bool, String, String)>>,
    pub finalized: Mutex<Vec<String>>,
    /// The pod counts as a ready endpoint until then; when it first did not.
    pub ready_endpoint_until: Mutex<Option<std::time::SystemTime>>,
    pub left_endpoints_at: Mutex<Option<std::time::SystemTime>>,
}

#[async_trait]
impl ClusterApi for FakeApi {
    async fn config_map(&self, _ns: &str, name: &str) -> anyhow::Result<Option<ConfigMap>> {
        Ok(self.config_maps.lock().unwrap().get(name).cloned())
    }
    async fn secret(&self, _ns: &str, name: &str) -> anyhow::Result<Option<Secret>> {
        Ok(self.secrets.lock().unwrap().get(name).cloned())
    }
    async fn in_ready_endpoints(&self, _pod: &Pod) -> anyhow::Result<bool> {
        let now = std::time::SystemTime::now();
        let ready = self
            .ready_endpoint_until
            .lock()
            .unwrap()
            .is_some_and(|t| now < t);
        if !ready {
            self.left_endpoints_at.lock().unwrap().get_or_insert(now);
        }
        Ok(ready)
    }
    async fn update_pod_status(&self, _pod: &Pod, status: &PodStatus) -> anyhow::Result<()> {
        self.statuses.lock().unwrap().push(status.clone());
        Ok(())
    }
    async fn finalize_pod_deletion(&self, pod: &Pod) -> anyhow::Result<()> {
        self.finalized
            .lock()
            .unwrap()
            .push(pod.metadata.uid.clone().unwrap_or_default());
        Ok(())
    }
    async fn event(&self, _pod: &Pod, warning: bool, reason: &str, message: &str) {
        self.events
            .lock()
            .unwrap()
            .push((warning, reason.into(), message.into()));
    }
}

impl FakeApi {
    pub fn last(&self) -> Option<PodStatus> {
        self.statuses.lock().unwrap().last().cloned()
    }
    pub fn events_with(&self, reason: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.1 == reason)
            .map(|e| e.2.clone())
            .collect()
    }
}

pub fn shim_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bosun-agent-shim"))
}

/// Whether the test can create namespaces; says loudly (past the test harness' output
/// capture) when it cannot.
pub fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        bosun_testkit::skip("needs root for network and mount namespaces");
    }
    root
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:06x}", rand::random::<u32>() & 0xffffff)
}

/// A random 10.x /24 used only inside namespaces the test creates.
pub fn unique_cidr() -> ipnet::Ipv4Net {
    let r: u32 = rand::random();
    let ip = std::net::Ipv4Addr::new(10, (200 + (r % 50)) as u8, ((r >> 8) % 256) as u8, 0);
    ipnet::Ipv4Net::new_assert(ip, 24)
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub api: Arc<FakeApi>,
    pub ctx: Arc<PodContext>,
    pub bridge: Option<Arc<BridgeNetwork>>,
}

impl Harness {
    /// With `netns`, pods get their own network namespaces on a fresh bridge (root only).
    pub async fn new(netns: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api = Arc::new(FakeApi::default());
        let (network, bridge): (Arc<dyn PodNetwork>, _) = if netns {
            let b = Arc::new(BridgeNetwork::new(&unique("bt"), unique_cidr(), dir.path()).unwrap());
            b.init().await.unwrap();
            (b.clone(), Some(b))
        } else {
            (
                Arc::new(HostNetwork {
                    node_ip: "127.0.0.1".parse().unwrap(),
                }),
                None,
            )
        };
        let ctx = Arc::new(Self::context(dir.path().into(), api.clone(), network));
        Self {
            dir,
            api,
            ctx,
            bridge,
        }
    }

    pub fn context(data: PathBuf, api: Arc<FakeApi>, network: Arc<dyn PodNetwork>) -> PodContext {
        PodContext {
            process_runtime: Arc::new(ProcessRuntime::new(data.join("pods"), shim_exe())),
            image_runtime: None,
            network,
            api,
            node_name: "node-a".into(),
            node_ip: "127.0.0.1".parse().unwrap(),
            pods_dir: data.join("pods"),
            backoff_base: Duration::from_millis(300),
            backoff_max: Duration::from_secs(2),
            backoff_reset: Duration::from_secs(600),
            sync_interval: Duration::from_millis(100),
            node_cpu: 2.0,
            node_memory: 1e9,
            cluster_dns: None,
            cpus: Arc::new(bosun_agent::cpus::CpuManager::none()),
        }
    }

    pub fn spawn(&self, pod: Pod) -> RunningWorker {
        spawn_worker(self.ctx.clone(), pod)
    }

    pub async fn cleanup(&self) {
        if let Some(b) = &self.bridge {
            b.cleanup().await.unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        Cleanup {
            pods_dir: self.dir.path().join("pods"),
            bridge: self.bridge.as_ref().map(|b| b.name().to_string()),
        }
        .run();
    }
}

/// Leaves nothing behind even when a test fails: kills the containers the test started
/// and removes its bridge and pod namespaces (on drop).
pub struct Cleanup {
    pub pods_dir: PathBuf,
    pub bridge: Option<String>,
}

impl Cleanup {
    fn run(&self) {
        kill_all(&self.pods_dir);
        if let Some(b) = &self.bridge {
            let prefix = format!("{b}-");
            for e in std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    let _ = std::process::Command::new("ip")
                        .args(["netns", "del", &n])
                        .status();
                }
            }
            let _ = std::process::Command::new("ip")
                .args(["link", "del", b])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// SIGKILLs every shim and container recorded under `pods_dir`.
pub fn kill_all(pods_dir: &std::path::Path) {
    use bosun_agent::osutil::same_process;
    use bosun_agent::shim_spec::ShimState;
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let states = std::fs::read_dir(pods_dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|p| {
            std::fs::read_dir(p.path().join("containers"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .flat_map(|c| std::fs::read_dir(c.path()).into_iter().flatten().flatten())
        .filter_map(|a| ShimState::read(&a.path().join("state.json")).ok());
    for st in states {
        if same_process(st.shim_pid, st.shim_start_ticks) {
            let _ = kill(Pid::from_raw(st.shim_pid as i32), Signal::SIGKILL);
        }
        if let (Some(pid), Some(t)) = (st.pid, st.pid_start_ticks)
            && same_process(pid, t)
        {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

pub struct RunningWorker {
    pub tx: tokio::sync::watch::Sender<Option<Pod>>,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

pub fn spawn_worker(ctx: Arc<PodContext>, pod: Pod) -> RunningWorker {
    let uid = pod.metadata.uid.clone().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(Some(pod));
    let shutdown = CancellationToken::new();
    let w = PodWorker::new(ctx, uid, rx);
    let handle = tokio::spawn(w.run(shutdown.clone()));
    RunningWorker {
        tx,
        shutdown,
        handle,
    }
}

pub fn pod(spec: serde_json::Value) -> Pod {
    let uid = uuid_like();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p1", "namespace": "default", "uid": uid, "labels": {"app": "web"}},
        "spec": spec,
    }))
    .unwrap()
}

pub fn uuid_like() -> String {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Polls the recorded statuses until `f` holds for the latest, or panics after `secs`.
pub async fn wait_for(
    api: &FakeApi,
    secs: u64,
    what: &str,
    f: impl Fn(&PodStatus) -> bool,
) -> PodStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = api.last()
            && f(&s)
        {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last status: {}\nevents: {:?}",
                serde_json::to_string_pretty(&api.last()).unwrap(),
                api.events.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn cstatus<'a>(
    s: &'a PodStatus,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::ContainerStatus {
    s.container_statuses
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name == name)
        .unwrap()
}

pub fn condition(s: &PodStatus, ty: &str) -> String {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

/// Deletes the pod gracefully (as the API server marks it) and waits for the worker to end.
pub async fn delete_and_wait(w: RunningWorker, mut pod: Pod, grace: i64) {
    pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    w.tx.send(Some(pod)).unwrap();
    tokio::time::timeout(Duration::from_secs(grace as u64 + 20), w.handle)
        .await
        .expect("worker finished")
        .unwrap();
}

/// Gives every container of the pod spec `spec` the host directory `dir` at the same path
/// (a hostPath volume): process pods see the host read-only and /tmp as their own, so a
/// test that shares files with its pod says so.
pub fn with_host_dir(mut spec: serde_json::Value, dir: &std::path::Path) -> serde_json::Value {
    let path = dir.to_str().unwrap().to_string();
    spec.as_object_mut()
        .unwrap()
        .entry("volumes")
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "host-dir", "hostPath": {"path": path}}));
    for field in ["initContainers", "containers"] {
        for c in spec
            .get_mut(field)
            .and_then(|v| v.as_array_mut())
            .into_iter()
            .flatten()
        {
            c.as_object_mut()
                .unwrap()
                .entry("volumeMounts")
                .or_insert_with(|| serde_json::json!([]))
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"name": "host-dir", "mountPath": path}));
        }
    }
    spec
}
