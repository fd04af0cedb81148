//! The per-pod worker: converges a pod's containers to its spec (level-triggered), runs its
//! probes, restarts per restartPolicy with CrashLoopBackOff, terminates gracefully, and
//! reports the pod's status. The worker does the I/O; what it decides from its
//! observations (restarts and back-off, container and pod statuses) is in `status`.

pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, EphemeralContainer, LifecycleHandler, Pod,
    PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::ClusterApi;
use crate::env::{PodFacts, container_env_with, process_argv};
use crate::network::{PodNet, PodNetwork};
use crate::probe::{ProbeEvent, Resume, Target, run_container_probes};
use crate::resources::Resources;
use status::{Backoff, Observed, Tracked, backoff_delay, container_id, grace_period, is_sidecar};

use crate::runtime::{
    ContainerKey, ContainerLaunch, ImageLaunch, ImagePullError, Runtime, RuntimeState,
};

/// Shared by all pod workers of a node.
pub struct PodContext {
    /// Runs containers without an image (and `runtimeClassName: process`).
    pub process_runtime: Arc<dyn Runtime>,
    /// Runs containers with an image; None on a node without one (e.g. no Docker).
    pub image_runtime: Option<Arc<dyn Runtime>>,
    pub network: Arc<dyn PodNetwork>,
    pub api: Arc<dyn ClusterApi>,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub pods_dir: PathBuf,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A container that ran this long before exiting restarts without back-off.
    pub backoff_reset: Duration,
    /// How often a pod is re-synced without a change (container exits, back-off expiry).
    pub sync_interval: Duration,
    pub node_cpu: f64,
    pub node_memory: f64,
    /// Cluster DNS for `dnsPolicy: ClusterFirst` pods; None keeps the host's resolver.
    pub cluster_dns: Option<crate::dns::ClusterDns>,
    /// Which CPUs each container runs on.
    pub cpus: Arc<crate::cpus::CpuManager>,
}

#[derive(Default)]
struct CState {
    /// Latest attempt (== restartCount); None before the first was created.
    attempt: Option<u32>,
    started: bool,
    ready: bool,
    probes: Option<(u32, tokio::task::AbortHandle)>,
    /// Waits for the exit of this attempt and wakes the worker the moment it happens.
    exit_watch: Option<(u32, tokio::task::AbortHandle)>,
    restart_at: Option<Instant>,
    backoff_n: u32,
    /// Why the container is not running when that is not an exit (config error, ...).
    waiting: Option<(String, String)>,
    /// Attempt whose exit was already reported (event).
    exit_seen: Option<u32>,
    /// Message explaining the next restart (liveness failure), for the event.
    kill_reason: Option<String>,
    /// Probe state to resume from for an adopted, running attempt.
    resume: Option<(u32, Resume)>,
    /// Image pull back-off: no new pull before this, and how many pulls failed in a row.
    pull_retry_at: Option<Instant>,
    pull_failures: u32,
    /// When and why the last pull failed (ErrImagePull shows for a moment, then the
    /// back-off).
    pull_failed: Option<(Instant, String)>,
    /// The CPUs the current attempt was put on (None: not known, e.g. adopted).
    cpus: Option<(u32, crate::cpus::CpuSet)>,
    /// Why the container did not get the exclusive CPUs it asked for (reported once).
    cpus_short: Option<String>,
}

impl CState {
    fn tracked(&self) -> Tracked {
        Tracked {
            attempt: self.attempt,
            started: self.started,
            ready: self.ready,
            waiting: self.waiting.clone(),
            restart_pending: self.restart_at.is_some(),
        }
    }
}

pub struct PodWorker {
    ctx: Arc<PodContext>,
    uid: String,
    pod_rx: watch::Receiver<Option<Pod>>,
    probe_tx: mpsc::Sender<ProbeEvent>,
    probe_rx: mpsc::Receiver<ProbeEvent>,
    /// Exits of running attempts, as the runtime reports them.
    exit_tx: mpsc::Sender<ContainerKey>,
    exit_rx: mpsc::Receiver<ContainerKey>,
    containers: HashMap<String, CState>,
    net: Option<PodNet>,
    last_status: Option<serde_json::Value>,
    start_time: Option<Time>,
    warned_host_network: bool,
    terminal: bool,
    /// The app containers finished for good: sidecars were stopped and stay stopped.
    main_done: bool,
    unhealthy_events: HashMap<String, Instant>,
    last_pod: Option<Pod>,
    /// When the configMap/secret volumes were last written.
    volumes_at: Option<Instant>,
    /// Labels and annotations the downwardAPI volumes were last written from.
    volumes_meta: Option<String>,
    /// When the emptyDir size limits were last checked.
    storage_checked: Option<Instant>,
    /// The eviction message once the pod was evicted (it then fails for good).
    evicted: Option<String>,
    /// Ephemeral containers and the container whose processes they share (`--target`).
    ephemeral_targets: HashMap<String, String>,
}

/// How often emptyDir usage is compared with `sizeLimit` (the kubelet's eviction
/// manager looks every 10 s).
const STORAGE_CHECK: Duration = Duration::from_secs(2);

/// The longest a stopping pod waits to leave the endpoints before its SIGTERM.
const ENDPOINTS_WAIT_MAX: Duration = Duration::from_secs(5);

/// How long a failed image pull shows as ErrImagePull before ImagePullBackOff.
const PULL_ERROR_SHOWN: Duration = Duration::from_secs(3);

/// How often running pods' configMap and secret volumes are refreshed from the API.
const VOLUME_REFRESH: Duration = Duration::from_secs(60);

/// What a downwardAPI volume may show that changes while the pod runs.
fn volume_meta(pod: &Pod) -> String {
    serde_json::to_string(&(&pod.metadata.labels, &pod.metadata.annotations)).unwrap_or_default()
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

enum Want {
    /// Keep running (or restart) per policy.
    Run,
    /// Pod is terminating or gone: stop everything.
    Stop,
}

impl PodWorker {
    pub fn new(ctx: Arc<PodContext>, uid: String, pod_rx: watch::Receiver<Option<Pod>>) -> Self {
        let (probe_tx, probe_rx) = mpsc::channel(64);
        let (exit_tx, exit_rx) = mpsc::channel(16);
        Self {
            ctx,
            uid,
            pod_rx,
            probe_tx,
            probe_rx,
            exit_tx,
            exit_rx,
            containers: HashMap::new(),
            net: None,
            last_status: None,
            start_time: None,
            warned_host_network: false,
            terminal: false,
            main_done: false,
            unhealthy_events: HashMap::new(),
            last_pod: None,
            volumes_at: None,
            volumes_meta: None,
            storage_checked: None,
            evicted: None,
            ephemeral_targets: HashMap::new(),
        }
    }

    fn pod_dir(&self) -> PathBuf {
        self.ctx.pods_dir.join(&self.uid)
    }

    fn runtime_for(&self, pod: &Pod, c: &Container) -> Result<Arc<dyn Runtime>, (String, String)> {
        let class = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref());
        let has_image = c.image.as_deref().is_some_and(|i| !i.is_empty());
        if class == Some("process") || !has_image {
            return Ok(self.ctx.process_runtime.clone());
        }
        match &self.ctx.image_runtime {
            Some(r) => Ok(r.clone()),
            None => Err((
                "ErrImagePull".into(),
                format!(
                    "node {} has no container image runtime: cannot run image {:?}; use runtimeClassName: process with a command to run it as a host process",
                    self.ctx.node_name,
                    c.image.as_deref().unwrap_or("")
                ),
            )),
        }
    }

    /// Learns the attempts that exist on disk (after an agent restart).
    async fn adopt(&mut self, pod: &Pod) {
        let mut runtimes = vec![self.ctx.process_runtime.clone()];
        runtimes.extend(self.ctx.image_runtime.clone());
        for rt in runtimes {
            let keys = match rt.adopt().await {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(runtime = rt.name(), error = %format!("{e:#}"), "cannot list containers");
                    continue;
                }
            };
            for k in keys.into_iter().filter(|k| k.pod_uid == self.uid) {
                let cs = self.containers.entry(k.container.clone()).or_default();
                if cs.attempt.is_none_or(|a| a < k.attempt) {
                    cs.attempt = Some(k.attempt);
                }
            }
        }
        // What the pod's status says of adopted containers is where probing resumes.
        let api_statuses: Vec<ContainerStatus> = pod
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .cloned()
            .collect();
        for st in api_statuses {
            let runtime = find_container(pod, &st.name)
                .and_then(|c| self.runtime_for(pod, c).ok())
                .map(|r| r.name())
                .unwrap_or("process");
            let Some(cs) = self.containers.get_mut(&st.name) else {
                continue;
            };
            let Some(attempt) = cs.attempt else { continue };
            let key = ContainerKey {
                pod_uid: self.uid.clone(),
                container: st.name.clone(),
                attempt,
            };
            if st.container_id.as_deref() == Some(container_id(runtime, &key).as_str()) {
                cs.resume = Some((
                    attempt,
                    Resume {
                        started: st.started.unwrap_or(false),
                        ready: st.ready,
                    },
                ));
            }
        }
        // Lost supervisors are reported once, here, as the agent comes back.
        let names: Vec<(String, u32)> = self
            .containers
            .iter()
            .filter_map(|(n, c)| c.attempt.map(|a| (n.clone(), a)))
            .collect();
        for (name, attempt) in names {
            let key = self.key(&name, attempt);
            let Some(rt) = find_container(pod, &name).and_then(|c| self.runtime_for(pod, c).ok())
            else {
                continue;
            };
            if let Ok(RuntimeState::Exited {
                reason, message, ..
            }) = rt.status(&key).await
                && reason == "ContainerStatusUnknown"
            {
                self.ctx
                    .api
                    .event(
                        pod,
                        true,
                        "ContainerLost",
                        &format!(
                            "container {name}: {}",
                            message.unwrap_or_else(|| "supervisor gone".into())
                        ),
                    )
                    .await;
                if let Some(cs) = self.containers.get_mut(&name) {
                    cs.exit_seen = Some(attempt);
                }
            }
        }
    }

    fn key(&self, name: &str, attempt: u32) -> ContainerKey {
        ContainerKey {
            pod_uid: self.uid.clone(),
            container: name.to_string(),
            attempt,
        }
    }

    /// Runs until the pod is gone (and cleaned up) or `shutdown` (containers keep running).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut adopted = false;
        loop {
            let pod = self.pod_rx.borrow_and_update().clone();
            match pod {
                Some(pod) => {
                    if !adopted {
                        adopted = true;
                        self.adopt(&pod).await;
                        // An eviction survives an agent restart: the pod stays Failed.
                        if let Some(st) = pod.status.as_ref().filter(|s| {
                            s.phase.as_deref() == Some("Failed")
                                && s.reason.as_deref() == Some("Evicted")
                        }) {
                            self.evicted = Some(st.message.clone().unwrap_or_default());
                        }
                    }
                    self.last_pod = Some(pod.clone());
                    if pod.metadata.deletion_timestamp.is_some() {
                        self.terminate(&pod).await;
                        self.report(&pod, Want::Stop).await;
                        if let Err(e) = self.cleanup().await {
                            tracing::warn!(pod = %pod_ref(&pod), error = %e, "cleanup failed; retrying");
                        } else if let Err(e) = self.ctx.api.finalize_pod_deletion(&pod).await {
                            tracing::warn!(pod = %pod_ref(&pod), error = %e, "cannot confirm deletion; retrying");
                        } else {
                            return;
                        }
                    } else {
                        self.sync(&pod).await;
                        self.report(&pod, Want::Run).await;
                    }
                }
                None => {
                    // Removed from the API without a graceful deletion.
                    if let Some(pod) = self.last_pod.clone() {
                        self.terminate(&pod).await;
                    }
                    match self.cleanup().await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(uid = %self.uid, error = %e, "cleanup failed; retrying")
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.stop_probes();
                    return;
                }
                changed = self.pod_rx.changed() => {
                    if changed.is_err() {
                        // The agent dropped this worker: like shutdown.
                        self.stop_probes();
                        return;
                    }
                }
                Some(ev) = self.probe_rx.recv() => self.on_probe(ev).await,
                // A container exited: sync now (restart, status) instead of at the next tick.
                Some(_) = self.exit_rx.recv() => {}
                _ = tokio::time::sleep(self.ctx.sync_interval) => {}
            }
            // Take every queued probe result before syncing again.
            while let Ok(ev) = self.probe_rx.try_recv() {
                self.on_probe(ev).await;
            }
        }
    }

    fn stop_probes(&mut self) {
        for cs in self.containers.values_mut() {
            if let Some((_, h)) = cs.probes.take() {
                h.abort();
            }
            if let Some((_, h)) = cs.exit_watch.take() {
                h.abort();
            }
        }
    }

    async fn on_probe(&mut self, ev: ProbeEvent) {
        let Some(pod) = self.last_pod.clone() else {
            return;
        };
        let current = |s: &Self, k: &ContainerKey| {
            s.containers.get(&k.container).and_then(|c| c.attempt) == Some(k.attempt)
        };
        match ev {
            ProbeEvent::Started(k) if current(self, &k) => {
                if let Some(cs) = self.containers.get_mut(&k.container) {
                    cs.started = true;
                }
            }
            ProbeEvent::Ready(k, ok) if current(self, &k) => {
                if let Some(cs) = self.containers.get_mut(&k.container) {
                    cs.ready = ok;
                }
            }
            ProbeEvent::Unhealthy {
                key,
                message,
                probe,
            } if current(self, &key) => {
                // At most one Unhealthy event per container and probe every 10 seconds.
                let id = format!("{}/{probe}", key.container);
                let due = self
                    .unhealthy_events
                    .get(&id)
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
                if due {
                    self.unhealthy_events.insert(id, Instant::now());
                    self.ctx.api.event(&pod, true, "Unhealthy", &message).await;
                }
            }
            ProbeEvent::Failed {
                key,
                probe,
                message,
            } if current(self, &key) => {
                let Some(c) = find_container(&pod, &key.container).cloned() else {
                    return;
                };
                self.ctx
                    .api
                    .event(
                        &pod,
                        false,
                        "Killing",
                        &format!(
                            "Container {} failed {probe} probe, will be restarted",
                            key.container
                        ),
                    )
                    .await;
                if let Some(cs) = self.containers.get_mut(&key.container) {
                    cs.ready = false;
                    cs.kill_reason = Some(message);
                    if let Some((_, h)) = cs.probes.take() {
                        h.abort();
                    }
                }
                let Ok(rt) = self.runtime_for(&pod, &c) else {
                    return;
                };
                let grace = grace_period(&pod);
                tokio::spawn(async move {
                    if let Err(e) = rt.stop(&key, grace).await {
                        tracing::warn!(error = %e, "stop after probe failure");
                    }
                });
            }
            _ => {} // about an older attempt
        }
    }

    async fn ensure_network(&mut self, pod: &Pod) -> Result<PodNet, String> {
        if let Some(n) = &self.net {
            return Ok(n.clone());
        }
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let net = if host_network {
            PodNet {
                ip: self.ctx.node_ip,
                netns: None,
            }
        } else {
            let n = self
                .ctx
                .network
                .setup(&self.uid)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if !self.ctx.network.isolated() && !self.warned_host_network {
                self.warned_host_network = true;
                self.ctx
                    .api
                    .event(
                        pod,
                        true,
                        "HostNetworkFallback",
                        "the node agent cannot create network namespaces (no privileges): the pod shares the node's network and IP",
                    )
                    .await;
            }
            n
        };
        // Image containers share the pod network through the image runtime's sandbox.
        let spec = pod.spec.clone().unwrap_or_default();
        let image_rt = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| self.uses_image(pod, c))
            .and_then(|c| self.runtime_for(pod, c).ok());
        if let Some(rt) = image_rt {
            rt.prepare_pod(
                &self.uid,
                pod.metadata.name.as_deref().unwrap_or(""),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                &net,
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
        }
        self.net = Some(net.clone());
        Ok(net)
    }

    async fn sync(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.clone() else {
            return;
        };
        if self.start_time.is_none() {
            self.start_time = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .or_else(|| Some(now()));
            let meta = crate::logstore::pod_meta(pod, &self.uid);
            let _ = std::fs::create_dir_all(self.pod_dir());
            let _ = crate::osutil::write_atomic(
                &self.pod_dir().join("pod.json"),
                meta.to_string().as_bytes(),
            );
        }
        if self.terminal || self.evicted.is_some() {
            return;
        }
        if self
            .storage_checked
            .is_none_or(|t| t.elapsed() >= STORAGE_CHECK)
        {
            self.storage_checked = Some(Instant::now());
            if let Some(msg) = crate::volumes::empty_dir_over_limit(pod, &self.pod_dir()).await {
                self.evict(pod, msg).await;
                return;
            }
        }
        let net = match self.ensure_network(pod).await {
            Ok(n) => n,
            Err(e) => {
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    let cs = self.containers.entry(c.name.clone()).or_default();
                    if cs.attempt.is_none() {
                        cs.waiting =
                            Some(("ContainerCreating".into(), format!("pod network: {e}")));
                    }
                }
                self.ctx
                    .api
                    .event(
                        pod,
                        true,
                        "FailedCreatePodSandBox",
                        &format!("pod network: {e}"),
                    )
                    .await;
                return;
            }
        };
        // Mounted configMaps and secrets follow their objects, as in Kubernetes.
        let has_volumes = spec.volumes.as_ref().is_some_and(|v| !v.is_empty());
        // downwardAPI volumes follow label and annotation changes without waiting.
        let meta = has_volumes.then(|| volume_meta(pod));
        if has_volumes
            && self.volumes_at.is_some_and(|t| {
                t.elapsed() >= VOLUME_REFRESH
                    || (meta.is_some() && self.volumes_meta.is_some() && meta != self.volumes_meta)
            })
        {
            self.volumes_at = Some(Instant::now());
            self.volumes_meta = meta;
            if let Err(e) =
                crate::volumes::prepare(self.ctx.api.as_ref(), pod, &self.pod_dir()).await
            {
                tracing::warn!(pod = %pod_ref(pod), error = %e, "volume refresh failed");
            }
        }
        let policy = status::restart_policy(&spec);
        // Init containers, one after the other; app containers only once all succeeded.
        // Sidecars (init containers with `restartPolicy: Always`) start in that order, keep
        // running beside the app containers, and are restarted whenever they exit.
        let initialized = spec.containers.iter().any(|c| {
            self.containers
                .get(&c.name)
                .is_some_and(|cs| cs.attempt.is_some())
        });
        let mut sidecars = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            if is_sidecar(c) {
                sidecars.push(c.clone());
                if self.main_done {
                    continue;
                }
                self.sync_container(pod, c, "Always", &net).await;
                if !initialized && !self.is_running(pod, c).await {
                    return;
                }
                continue;
            }
            match self
                .sync_container(pod, c, status::init_policy(&policy), &net)
                .await
            {
                Some(0) => continue,
                _ => return,
            }
        }
        let mut all_done = !spec.containers.is_empty();
        for c in &spec.containers {
            if self.sync_container(pod, c, &policy, &net).await.is_none() {
                all_done = false;
            }
        }
        for ec in spec.ephemeral_containers.iter().flatten() {
            self.sync_ephemeral(pod, ec, &net).await;
        }
        if all_done && !sidecars.is_empty() && !self.main_done {
            // The app containers finished for good (a Job's pod): the sidecars stop too,
            // last started first, so the pod can complete.
            self.main_done = true;
            let pod_ip = self.net.as_ref().map(|n| n.ip).unwrap_or(self.ctx.node_ip);
            for c in sidecars.iter().rev() {
                self.stop_container(pod, c, grace_period(pod), pod_ip).await;
            }
        }
        self.apply_cpus(pod).await;
    }

    /// Evicts the pod as the kubelet's eviction manager does: a Warning `Evicted` event,
    /// every container killed at once, and the pod Failed with reason `Evicted` and a
    /// `DisruptionTarget` condition (reason `TerminationByKubelet`).
    async fn evict(&mut self, pod: &Pod, msg: String) {
        tracing::info!(pod = %pod_ref(pod), message = %msg, "evicting");
        self.ctx.api.event(pod, true, "Evicted", &msg).await;
        self.evicted = Some(msg);
        let spec = pod.spec.clone().unwrap_or_default();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let Some(attempt) = self.containers.get(&c.name).and_then(|cs| cs.attempt) else {
                continue;
            };
            let Ok(rt) = self.runtime_for(pod, c) else {
                continue;
            };
            let key = self.key(&c.name, attempt);
            if matches!(rt.status(&key).await, Ok(RuntimeState::Running { .. }))
                && let Err(e) = rt.stop(&key, Duration::ZERO).await
            {
                tracing::warn!(container = %c.name, error = %e, "stop on eviction failed");
            }
        }
        self.stop_probes();
    }

    /// Starts an ephemeral container once (they are never restarted): a container sharing
    /// the pod's network (and the target's processes) in a Docker pod, a session in the
    /// target container's namespaces in a process pod (`ephemeral.rs`).
    async fn sync_ephemeral(&mut self, pod: &Pod, ec: &EphemeralContainer, net: &PodNet) {
        let c = ephemeral_as_container(ec);
        if let Some(t) = &ec.target_container_name {
            self.ephemeral_targets.insert(c.name.clone(), t.clone());
        }
        if self.uses_image(pod, &c) {
            self.sync_container(pod, &c, "Never", net).await;
            return;
        }
        let log = crate::runtime::log_path(&self.ctx.pods_dir, &self.key(&c.name, 0));
        if crate::ephemeral::get(&self.uid, &c.name).is_some() || log.exists() {
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let Some(target) = ec
            .target_container_name
            .clone()
            .or_else(|| spec.containers.first().map(|c| c.name.clone()))
        else {
            return;
        };
        // The target must have started: the session enters its namespaces.
        let Some(attempt) = self.containers.get(&target).and_then(|cs| cs.attempt) else {
            return;
        };
        let key = self.key(&target, attempt);
        let Some(tc) = find_container(pod, &target).cloned() else {
            return;
        };
        let Ok(rt) = self.runtime_for(pod, &tc) else {
            return;
        };
        let mut argv: Vec<String> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .cloned()
            .collect();
        if argv.is_empty() {
            argv.push("sh".into());
        }
        crate::ephemeral::start(
            &self.uid,
            &c.name,
            rt,
            key,
            argv,
            c.stdin.unwrap_or(false),
            c.tty.unwrap_or(false),
            log,
        );
        let msg = format!("Started container {}", c.name);
        self.ctx.api.event(pod, false, "Started", &msg).await;
    }

    /// The status of a process pod's ephemeral container, from its session.
    fn ephemeral_session_status(&self, c: &Container) -> ContainerStatus {
        let log = crate::runtime::log_path(&self.ctx.pods_dir, &self.key(&c.name, 0));
        let state = match crate::ephemeral::get(&self.uid, &c.name).map(|s| s.state()) {
            Some(crate::ephemeral::SessionState::Running { started_at }) => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at),
                }),
                ..Default::default()
            },
            Some(crate::ephemeral::SessionState::Exited {
                exit_code,
                started_at,
                finished_at,
                message,
            }) => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
                    message,
                    started_at: Some(started_at),
                    finished_at: Some(finished_at),
                    ..Default::default()
                }),
                ..Default::default()
            },
            // Started before the agent restarted: its session is gone.
            None if log.exists() => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 137,
                    reason: Some("ContainerStatusUnknown".into()),
                    message: Some(
                        "The container could not be located when the pod was terminated".into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            },
            None => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            },
        };
        ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(state.running.is_some()),
            state: Some(state),
            ..Default::default()
        }
    }

    /// Whether the container's current attempt is running.
    async fn is_running(&self, pod: &Pod, c: &Container) -> bool {
        let Some(attempt) = self.containers.get(&c.name).and_then(|cs| cs.attempt) else {
            return false;
        };
        let Ok(rt) = self.runtime_for(pod, c) else {
            return false;
        };
        matches!(
            rt.status(&self.key(&c.name, attempt)).await,
            Ok(RuntimeState::Running { .. })
        )
    }

    /// Stops one running container: its preStop hook, SIGTERM, then SIGKILL after `grace`.
    async fn stop_container(&self, pod: &Pod, c: &Container, grace: Duration, pod_ip: IpAddr) {
        let Some(attempt) = self.containers.get(&c.name).and_then(|cs| cs.attempt) else {
            return;
        };
        let Ok(rt) = self.runtime_for(pod, c) else {
            return;
        };
        let key = self.key(&c.name, attempt);
        if !matches!(rt.status(&key).await, Ok(RuntimeState::Running { .. })) {
            return;
        }
        let deadline = Instant::now() + grace;
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(msg) = run_hook(hook, c, &key, &rt, pod_ip, left).await {
                let msg = format!("PreStopHook failed for container {}: {msg}", c.name);
                self.ctx
                    .api
                    .event(pod, true, "FailedPreStopHook", &msg)
                    .await;
            }
        }
        let msg = format!("Stopping container {}", c.name);
        self.ctx.api.event(pod, false, "Killing", &msg).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = rt.stop(&key, left).await {
            tracing::warn!(container = %c.name, error = %e, "stop failed");
        }
    }

    /// Converges one container; returns its exit code when it has exited for good.
    async fn sync_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        policy: &str,
        net: &PodNet,
    ) -> Option<i32> {
        let rt = match self.runtime_for(pod, c) {
            Ok(rt) => rt,
            Err(w) => {
                self.containers.entry(c.name.clone()).or_default().waiting = Some(w);
                return None;
            }
        };
        let attempt = self.containers.entry(c.name.clone()).or_default().attempt;
        let Some(attempt) = attempt else {
            self.start_attempt(pod, c, &rt, 0, net).await;
            return None;
        };
        let key = self.key(&c.name, attempt);
        let state = match rt.status(&key).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %pod_ref(pod), container = %c.name, error = %e, "status");
                return None;
            }
        };
        match state {
            RuntimeState::NotFound => {
                self.start_attempt(pod, c, &rt, attempt, net).await;
                None
            }
            RuntimeState::Created => {
                if let Err(e) = rt.start(&key).await {
                    self.containers.get_mut(&c.name)?.waiting =
                        Some(("StartError".into(), format!("{e:#}")));
                }
                None
            }
            RuntimeState::Running { .. } => {
                let cs = self.containers.get_mut(&c.name)?;
                cs.waiting = None;
                // postStart runs once per attempt, before its probes start; an attempt
                // adopted after an agent restart already ran it.
                let fresh = cs.probes.as_ref().map(|p| p.0) != Some(attempt)
                    && cs.resume.as_ref().is_none_or(|(a, _)| *a != attempt);
                if fresh && !self.post_start(pod, c, &key, &rt, net).await {
                    return None;
                }
                self.watch_running(c, &key, &rt, net);
                None
            }
            RuntimeState::Exited {
                exit_code,
                started_at,
                finished_at,
                reason,
                message,
                ..
            } => {
                let name = c.name.clone();
                let backoff = Backoff {
                    base: self.ctx.backoff_base,
                    max: self.ctx.backoff_max,
                    reset: self.ctx.backoff_reset,
                };
                let cs = self.containers.get_mut(&name)?;
                if let Some((_, h)) = cs.probes.take() {
                    h.abort();
                }
                if let Some((_, h)) = cs.exit_watch.take() {
                    h.abort();
                }
                cs.ready = false;
                cs.started = false;
                let first_sight = cs.exit_seen != Some(attempt);
                cs.exit_seen = Some(attempt);
                if first_sight {
                    if reason == "OOMKilled" {
                        tracing::warn!(pod = %pod_ref(pod), container = %name, exit_code, "container killed by the kernel's OOM killer (memory limit reached)");
                    } else {
                        tracing::info!(pod = %pod_ref(pod), container = %name, exit_code, %reason, "container exited");
                    }
                }
                let restart = status::restarts(policy, exit_code);
                if first_sight && reason == "ContainerStatusUnknown" {
                    let msg = format!("container {name}: {}", message.clone().unwrap_or_default());
                    self.ctx.api.event(pod, true, "ContainerLost", &msg).await;
                }
                let cs = self.containers.get_mut(&name)?;
                if !restart {
                    return Some(exit_code);
                }
                if cs.restart_at.is_none() {
                    let ran = status::ran_for(started_at.as_deref(), &finished_at);
                    let (n, delay) = backoff.next(ran, cs.backoff_n);
                    cs.backoff_n = n;
                    cs.restart_at = Some(Instant::now() + delay);
                    if !delay.is_zero() {
                        let msg = format!(
                            "Back-off {delay:?} restarting failed container={name} pod={}",
                            pod_ref(pod)
                        );
                        cs.waiting = Some(("CrashLoopBackOff".into(), msg.clone()));
                        self.ctx.api.event(pod, true, "BackOff", &msg).await;
                    }
                }
                let cs = self.containers.get_mut(&name)?;
                if cs.restart_at.is_some_and(|t| Instant::now() >= t) {
                    cs.restart_at = None;
                    cs.backoff_n = cs.backoff_n.saturating_add(1);
                    if let Some(reason) = cs.kill_reason.take() {
                        tracing::info!(pod = %pod_ref(pod), container = %name, %reason, "restarting");
                    }
                    self.start_attempt(pod, c, &rt, attempt + 1, net).await;
                    // Keep the previous attempt (its log is `previous`), drop older ones.
                    if attempt >= 1 {
                        let old = self.key(&name, attempt - 1);
                        let _ = rt.remove(&old).await;
                        let _ = std::fs::remove_file(rt.log_path(&old));
                        for f in crate::cri_log::log_files(&rt.log_path(&old)) {
                            let _ = std::fs::remove_file(f);
                        }
                    }
                }
                None
            }
        }
    }

    /// Starts what follows a running attempt, once per attempt: its probes (resumed from
    /// the pod's status for an adopted attempt) and the wait for its exit.
    fn watch_running(
        &mut self,
        c: &Container,
        key: &ContainerKey,
        rt: &Arc<dyn Runtime>,
        net: &PodNet,
    ) {
        let exit_tx = self.exit_tx.clone();
        let probe_tx = self.probe_tx.clone();
        let Some(cs) = self.containers.get_mut(&c.name) else {
            return;
        };
        let attempt = key.attempt;
        if cs.probes.as_ref().map(|p| p.0) != Some(attempt) {
            if let Some((_, h)) = cs.probes.take() {
                h.abort();
            }
            let resume = match cs.resume.take() {
                Some((a, r)) if a == attempt => r,
                _ => Resume::default(),
            };
            cs.started = resume.started;
            cs.ready = resume.ready;
            let t = Target {
                pod_ip: net.ip,
                key: key.clone(),
                runtime: rt.clone(),
            };
            let h = tokio::spawn(run_container_probes(c.clone(), t, probe_tx, resume));
            cs.probes = Some((attempt, h.abort_handle()));
        }
        if rt.reports_exits() && cs.exit_watch.as_ref().map(|w| w.0) != Some(attempt) {
            if let Some((_, h)) = cs.exit_watch.take() {
                h.abort();
            }
            let (rt, key) = (rt.clone(), key.clone());
            let h = tokio::spawn(async move {
                rt.wait_exit(&key).await;
                let _ = exit_tx.send(key).await;
            });
            cs.exit_watch = Some((attempt, h.abort_handle()));
        }
    }

    /// Runs `c`'s postStart hook, if it has one; on failure, records the Kubernetes event
    /// and kills the container (restarted per policy), and answers false.
    async fn post_start(
        &mut self,
        pod: &Pod,
        c: &Container,
        key: &ContainerKey,
        rt: &Arc<dyn Runtime>,
        net: &PodNet,
    ) -> bool {
        let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return true;
        };
        let Err(msg) = run_hook(hook, c, key, rt, net.ip, POST_START_TIMEOUT).await else {
            return true;
        };
        let msg = format!("PostStartHook failed for container {}: {msg}", c.name);
        self.ctx
            .api
            .event(pod, true, "FailedPostStartHook", &msg)
            .await;
        // As the kubelet does: the container is killed and restarted per policy.
        if let Some(cs) = self.containers.get_mut(&c.name) {
            cs.kill_reason = Some(msg);
        }
        if let Err(e) = rt.stop(key, grace_period(pod)).await {
            tracing::warn!(container = %c.name, error = %e, "stop failed");
        }
        false
    }

    async fn start_attempt(
        &mut self,
        pod: &Pod,
        c: &Container,
        rt: &Arc<dyn Runtime>,
        attempt: u32,
        net: &PodNet,
    ) {
        let key = self.key(&c.name, attempt);
        if let Some(cs) = self.containers.get_mut(&c.name)
            && cs.pull_retry_at.is_some_and(|t| Instant::now() < t)
        {
            if let Some((at, err)) = &cs.pull_failed
                && at.elapsed() >= PULL_ERROR_SHOWN
            {
                let msg = format!(
                    "Back-off pulling image \"{}\": {err}",
                    c.image.as_deref().unwrap_or("")
                );
                cs.waiting = Some(("ImagePullBackOff".into(), msg));
            }
            return;
        }
        let launch = match self.launch_for(pod, c, net).await {
            Ok(l) => l,
            Err(msg) => {
                let cs = self.containers.entry(c.name.clone()).or_default();
                let changed = cs.waiting.as_ref().map(|w| &w.1) != Some(&msg);
                cs.waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
                if changed {
                    self.ctx
                        .api
                        .event(pod, true, "Failed", &format!("Error: {msg}"))
                        .await;
                }
                return;
            }
        };
        if let Err(e) = rt.create(&key, &launch).await {
            if let Some(pe) = e.downcast_ref::<ImagePullError>() {
                let (base, max) = (self.ctx.backoff_base, self.ctx.backoff_max);
                let cs = self.containers.entry(c.name.clone()).or_default();
                cs.pull_failures = cs.pull_failures.saturating_add(1);
                let delay = backoff_delay(cs.pull_failures, base, max);
                cs.pull_retry_at = Some(Instant::now() + delay.max(PULL_ERROR_SHOWN));
                cs.pull_failed = Some((Instant::now(), pe.message.clone()));
                cs.waiting = Some((pe.reason.to_string(), pe.message.clone()));
                self.ctx
                    .api
                    .event(pod, true, "Failed", &format!("Error: {}", pe.message))
                    .await;
                self.ctx
                    .api
                    .event(
                        pod,
                        false,
                        "BackOff",
                        &format!(
                            "Back-off pulling image \"{}\"",
                            c.image.as_deref().unwrap_or("")
                        ),
                    )
                    .await;
                return;
            }
            let msg = format!("{e:#}");
            let reason = match e.downcast_ref::<crate::runtime::ContainerConfigError>() {
                Some(ce) => non_root_message(&ce.0, pod, c),
                None => msg.clone(),
            };
            let (why, msg) = if e.is::<crate::runtime::ContainerConfigError>() {
                ("CreateContainerConfigError", reason)
            } else {
                ("CreateContainerError", msg)
            };
            self.containers.entry(c.name.clone()).or_default().waiting =
                Some((why.into(), msg.clone()));
            self.ctx
                .api
                .event(pod, true, "Failed", &format!("Error: {msg}"))
                .await;
            return;
        }
        {
            let cs = self.containers.entry(c.name.clone()).or_default();
            cs.attempt = Some(attempt);
            cs.cpus = launch.cpus.clone().map(|cpus| (attempt, cpus));
            cs.waiting = None;
            cs.pull_retry_at = None;
            cs.pull_failures = 0;
            cs.pull_failed = None;
            cs.started = false;
            cs.ready = false;
        }
        self.ctx
            .api
            .event(
                pod,
                false,
                "Created",
                &format!("Created container {}", c.name),
            )
            .await;
        match rt.start(&key).await {
            Ok(RuntimeState::Running { .. }) => {
                self.ctx
                    .api
                    .event(
                        pod,
                        false,
                        "Started",
                        &format!("Started container {}", c.name),
                    )
                    .await;
                // As the kubelet: postStart right after the start, before any probe.
                if !self.post_start(pod, c, &key, rt, net).await {
                    return;
                }
                if let Ok(RuntimeState::Running { .. }) = rt.status(&key).await {
                    self.warn_state(pod, c, &key).await;
                    // Probe from the start (after initialDelaySeconds), not a sync later.
                    self.watch_running(c, &key, rt, net);
                }
            }
            Ok(RuntimeState::Exited {
                reason, message, ..
            }) if reason == "StartError" => {
                let msg = message.unwrap_or_default();
                self.ctx
                    .api
                    .event(pod, true, "Failed", &format!("Error: {msg}"))
                    .await;
            }
            Ok(_) => {}
            Err(e) => {
                self.ctx
                    .api
                    .event(pod, true, "Failed", &format!("Error: {e:#}"))
                    .await;
            }
        }
    }

    /// Surfaces shim warnings (e.g. volumes not mounted for lack of privileges) as Events.
    async fn warn_state(&self, pod: &Pod, c: &Container, key: &ContainerKey) {
        let path = self
            .ctx
            .pods_dir
            .join(&key.pod_uid)
            .join("containers")
            .join(&key.container)
            .join(key.attempt.to_string())
            .join("state.json");
        if let Ok(st) = crate::shim_spec::ShimState::read(&path) {
            for w in st.warnings {
                tracing::warn!(pod = %pod_ref(pod), container = %c.name, "{w}");
                self.ctx
                    .api
                    .event(
                        pod,
                        true,
                        "RuntimeWarning",
                        &format!("container {}: {w}", c.name),
                    )
                    .await;
            }
        }
    }

    async fn launch_for(
        &mut self,
        pod: &Pod,
        c: &Container,
        net: &PodNet,
    ) -> Result<ContainerLaunch, String> {
        let facts = PodFacts {
            pod,
            pod_ip: net.ip.to_string(),
            host_ip: self.ctx.node_ip.to_string(),
            node_name: &self.ctx.node_name,
            node_cpu: self.ctx.node_cpu,
            node_memory: self.ctx.node_memory,
        };
        // The Services (for the service variables) and the volumes' objects (a ServiceAccount
        // token, ConfigMaps, Secrets) are read from the API at the same time: a container
        // starting from zero waits for them.
        let pod_dir = self.pod_dir();
        let (services, vols) = tokio::join!(
            crate::dns::service_env_for(self.ctx.api.as_ref(), pod),
            crate::volumes::prepare(self.ctx.api.as_ref(), pod, &pod_dir),
        );
        let services =
            services.map_err(|e| format!("listing services for the service variables: {e:#}"))?;
        let mut env = container_env_with(self.ctx.api.as_ref(), &facts, c, services)
            .await
            .map_err(|e| e.0)?;
        let image = self.uses_image(pod, c);
        let security = crate::security::Security::of(pod, c);
        // A process has no image user: without runAsUser it runs as root.
        let isolation = if image {
            None
        } else {
            security
                .check_non_root(None)
                .map_err(|m| non_root_message(&m, pod, c))?;
            // With hostNetwork the pod keeps the node's hostname, as in Kubernetes.
            let host_network = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            Some(crate::security::Isolation::for_process(
                &security,
                if host_network {
                    String::new()
                } else {
                    crate::isolation::pod_hostname(pod)
                },
            ))
        };
        let argv = if image {
            Vec::new()
        } else {
            process_argv(c, &env).map_err(|e| e.0)?
        };
        let vols = vols.map_err(|e| e.0)?;
        self.volumes_at = Some(Instant::now());
        self.volumes_meta = Some(volume_meta(pod));
        let mut mounts = crate::volumes::mounts_for(c, &vols).map_err(|e| e.0)?;
        // Cluster DNS listens on the pod bridge, which host-network fallback nodes lack.
        let cluster_dns = self
            .ctx
            .cluster_dns
            .as_ref()
            .filter(|_| self.ctx.network.isolated());
        mounts.extend(
            crate::dns::prepare_resolv_conf(pod, cluster_dns, &self.pod_dir()).map_err(|e| e.0)?,
        );
        // An isolated process with a network of its own gets the pod's hosts file.
        if isolation.is_some()
            && net.netns.is_some()
            && !mounts
                .iter()
                .any(|m| m.target == std::path::Path::new("/etc/hosts"))
        {
            let domain = cluster_dns.map_or("cluster.local", |d| d.domain.as_str());
            mounts.push(
                crate::isolation::prepare_hosts_file(
                    pod,
                    &net.ip.to_string(),
                    domain,
                    &self.pod_dir(),
                )
                .map_err(|e| format!("writing the pod's hosts file: {e}"))?,
            );
        }
        // A host process needs a PATH to find its command, which Kubernetes images bring.
        if !image && env.get("PATH").is_none() {
            env.set(
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        if !image && env.get("HOSTNAME").is_none() {
            env.set("HOSTNAME".into(), crate::isolation::pod_hostname(pod));
        }
        let working_dir = c
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .map(PathBuf::from);
        // An ephemeral container with a target shares the target's processes.
        let pid_of = self
            .ephemeral_targets
            .get(&c.name)
            .and_then(|t| {
                self.containers
                    .get(t)
                    .and_then(|cs| cs.attempt)
                    .map(|a| (t, a))
            })
            .map(|(t, a)| crate::docker::container_name(&self.key(t, a)));
        let image = image.then(|| {
            let expand = |v: &Option<Vec<String>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|s| crate::env::expand(s, &env)).collect())
            };
            ImageLaunch {
                stdin: c.stdin.unwrap_or(false),
                tty: c.tty.unwrap_or(false),
                pid_of: pid_of.clone(),
                image: c.image.clone().unwrap_or_default(),
                pull_policy: c
                    .image_pull_policy
                    .clone()
                    .unwrap_or_else(|| default_pull_policy(c.image.as_deref().unwrap_or(""))),
                command: expand(&c.command).filter(|v: &Vec<String>| !v.is_empty()),
                args: expand(&c.args),
                ports: c
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p.container_port,
                            p.protocol.as_deref().unwrap_or("TCP").to_lowercase()
                        )
                    })
                    .collect(),
            }
        });
        let resources = resources_of(c);
        let cpus = self.place_cpus(pod, c, &resources).await;
        Ok(ContainerLaunch {
            argv,
            env: env.into_vec(),
            working_dir,
            netns: net.netns.clone(),
            mounts,
            resources,
            cpus,
            image,
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            security,
            isolation,
        })
    }

    /// The CPUs a container runs on, from the CPU manager: its own CPUs when it is a
    /// Guaranteed app container asking for whole cores, else the shared pool.
    async fn place_cpus(
        &mut self,
        pod: &Pod,
        c: &Container,
        r: &Resources,
    ) -> Option<crate::cpus::CpuSet> {
        let spec = pod.spec.as_ref()?;
        let app = spec.containers.iter().any(|x| x.name == c.name);
        let demand = crate::cpus::Demand {
            guaranteed: app && status::qos_class(spec) == "Guaranteed",
            cpu_request: r.cpu_request,
        };
        let placement = self.ctx.cpus.place(&self.uid, &c.name, demand)?;
        if let crate::cpus::Placement::SharedShort { why, .. } = &placement {
            let cs = self.containers.entry(c.name.clone()).or_default();
            if cs.cpus_short.as_ref() != Some(why) {
                cs.cpus_short = Some(why.clone());
                self.ctx
                    .api
                    .event(
                        pod,
                        true,
                        "CPUsShared",
                        &format!("container {}: {why}", c.name),
                    )
                    .await;
            }
        }
        Some(placement.cpus().clone())
    }

    /// Keeps running containers on the CPUs the CPU manager has for them now: the shared
    /// pool shrinks and grows as pods with exclusive CPUs come and go.
    async fn apply_cpus(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.clone() else {
            return;
        };
        for c in &spec.containers {
            let Some(attempt) = self.containers.get(&c.name).and_then(|cs| cs.attempt) else {
                continue;
            };
            let Some(want) = self.place_cpus(pod, c, &resources_of(c)).await else {
                return;
            };
            let applied = self.containers.get(&c.name).and_then(|cs| cs.cpus.clone());
            if applied.as_ref() == Some(&(attempt, want.clone())) {
                continue;
            }
            let Ok(rt) = self.runtime_for(pod, c) else {
                continue;
            };
            let key = self.key(&c.name, attempt);
            if !matches!(rt.status(&key).await, Ok(RuntimeState::Running { .. })) {
                continue;
            }
            match rt.set_cpus(&key, &want).await {
                Ok(()) => {
                    if let Some(cs) = self.containers.get_mut(&c.name) {
                        cs.cpus = Some((attempt, want));
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %pod_ref(pod), container = %c.name, error = %format!("{e:#}"), "cannot move container to its CPUs")
                }
            }
        }
    }

    /// Waits until no EndpointSlice lists the pod as ready, for at most half the grace
    /// period and `ENDPOINTS_WAIT_MAX`; the endpoints controller takes a deleting pod out
    /// at once, so this is the time its update takes to be written.
    async fn leave_endpoints(&self, pod: &Pod, grace: Duration) {
        if !self.containers.values().any(|c| c.attempt.is_some()) {
            return;
        }
        let until = Instant::now() + (grace / 2).min(ENDPOINTS_WAIT_MAX);
        loop {
            match self.ctx.api.in_ready_endpoints(pod).await {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) => {
                    tracing::debug!(pod = %pod_ref(pod), error = %format!("{e:#}"), "cannot read endpoints");
                    return;
                }
            }
            if Instant::now() >= until {
                tracing::info!(pod = %pod_ref(pod), "still a ready endpoint; stopping anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a container runs on the image runtime (one exists, it has an image, and the
    /// pod does not ask for the process runtime).
    fn uses_image(&self, pod: &Pod, c: &Container) -> bool {
        self.runtime_for(pod, c)
            .is_ok_and(|rt| !Arc::ptr_eq(&rt, &self.ctx.process_runtime))
    }

    /// Stops every container: preStop hook, SIGTERM, grace period, SIGKILL. Traffic
    /// leaves first: no container is told to stop while an EndpointSlice still lists the
    /// pod as ready (waited for up to a bounded part of the grace period).
    async fn terminate(&mut self, pod: &Pod) {
        self.stop_probes();
        crate::ephemeral::remove_pod(&self.uid);
        let grace = grace_period(pod);
        let deadline = Instant::now() + grace;
        self.leave_endpoints(pod, grace).await;
        let pod_ip = self.net.as_ref().map(|n| n.ip).unwrap_or(self.ctx.node_ip);
        let mut stops = Vec::new();
        // App containers (and a still-running init container) first; sidecars after them,
        // the last started first, so they serve the app containers to the end.
        let spec = pod.spec.clone().unwrap_or_default();
        let sidecars: Vec<Container> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c))
            .rev()
            .cloned()
            .collect();
        let spec_containers: Vec<Container> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| !is_sidecar(c))
            .chain(&spec.containers)
            .cloned()
            .collect();
        for c in spec_containers {
            let Some(attempt) = self.containers.get(&c.name).and_then(|cs| cs.attempt) else {
                continue;
            };
            let Ok(rt) = self.runtime_for(pod, &c) else {
                continue;
            };
            let key = self.key(&c.name, attempt);
            if !matches!(rt.status(&key).await, Ok(RuntimeState::Running { .. })) {
                continue;
            }
            let api = self.ctx.api.clone();
            let pod = pod.clone();
            stops.push(async move {
                if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Err(msg) = run_hook(hook, &c, &key, &rt, pod_ip, left).await {
                        api.event(
                            &pod,
                            true,
                            "FailedPreStopHook",
                            &format!("PreStopHook failed for container {}: {msg}", c.name),
                        )
                        .await;
                    }
                }
                api.event(
                    &pod,
                    false,
                    "Killing",
                    &format!("Stopping container {}", c.name),
                )
                .await;
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = rt.stop(&key, left).await {
                    tracing::warn!(container = %c.name, error = %e, "stop failed");
                }
            });
        }
        futures::future::join_all(stops).await;
        for c in &sidecars {
            let left = deadline.saturating_duration_since(Instant::now());
            self.stop_container(pod, c, left, pod_ip).await;
        }
        for cs in self.containers.values_mut() {
            cs.restart_at = None;
            cs.ready = false;
        }
    }

    /// Removes the pod's containers, files and network.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        self.stop_probes();
        crate::ephemeral::remove_pod(&self.uid);
        // Memory-backed volumes are mounts: unmounted first, or the directory cannot go.
        crate::volumes::unmount_volumes(&self.pod_dir());
        self.ctx.process_runtime.remove_pod(&self.uid).await?;
        if let Some(r) = &self.ctx.image_runtime {
            r.remove_pod(&self.uid).await?;
        }
        self.ctx.network.teardown(&self.uid).await?;
        self.net = None;
        self.ctx.cpus.release(&self.uid);
        let _ = tokio::fs::remove_dir_all(self.pod_dir()).await;
        Ok(())
    }

    /// Builds the status and writes it when it differs from what the API has.
    async fn report(&mut self, pod: &Pod, want: Want) {
        let status = self.build_status(pod, &want).await;
        let phase = status.phase.clone();
        let value = serde_json::to_value(&status).unwrap_or_default();
        let api_value = pod
            .status
            .as_ref()
            .map(|s| serde_json::to_value(s).unwrap_or_default());
        if Some(&value) != self.last_status.as_ref() && Some(&value) != api_value.as_ref() {
            match self.ctx.api.update_pod_status(pod, &status).await {
                Ok(()) => self.last_status = Some(value),
                Err(e) => tracing::warn!(pod = %pod_ref(pod), error = %e, "status update failed"),
            }
        }
        if matches!(want, Want::Run)
            && matches!(phase.as_deref(), Some("Succeeded" | "Failed"))
            && !self.terminal
        {
            // A finished pod keeps its status and logs but gives back its network.
            self.terminal = true;
            self.stop_probes();
            if let Err(e) = self.ctx.network.teardown(&self.uid).await {
                tracing::warn!(pod = %pod_ref(pod), error = %e, "network teardown");
            }
        }
    }

    async fn container_status(
        &self,
        pod: &Pod,
        c: &Container,
        terminating: bool,
    ) -> ContainerStatus {
        let tracked = self.containers.get(&c.name).map(CState::tracked);
        let rt = self.runtime_for(pod, c);
        let mut o = Observed {
            pod_uid: self.uid.clone(),
            runtime: rt.as_ref().map(|r| r.name()).map_err(Clone::clone),
            current: None,
            previous: None,
            tracked,
        };
        if let (Ok(rt), Some(attempt)) = (&rt, o.tracked.as_ref().and_then(|t| t.attempt)) {
            if attempt > 0 {
                o.previous = rt.status(&self.key(&c.name, attempt - 1)).await.ok();
            }
            o.current = rt.status(&self.key(&c.name, attempt)).await.ok();
        }
        status::container_status(c, &o, terminating)
    }

    async fn build_status(&self, pod: &Pod, want: &Want) -> PodStatus {
        let terminating = matches!(want, Want::Stop);
        let spec = pod.spec.clone().unwrap_or_default();
        let mut init = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            init.push(self.container_status(pod, c, terminating).await);
        }
        let mut app = Vec::new();
        for c in &spec.containers {
            app.push(self.container_status(pod, c, terminating).await);
        }
        let mut ephemeral = Vec::new();
        for ec in spec.ephemeral_containers.iter().flatten() {
            let c = ephemeral_as_container(ec);
            ephemeral.push(if self.uses_image(pod, &c) {
                self.container_status(pod, &c, terminating).await
            } else {
                self.ephemeral_session_status(&c)
            });
        }
        // Transition times carry over from what this worker last wrote (newer than the
        // pod object until the watch catches up), else from the pod's status.
        let prev_conditions: Vec<PodCondition> = self
            .last_status
            .as_ref()
            .and_then(|v| v.get("conditions").cloned())
            .and_then(|c| serde_json::from_value(c).ok())
            .or_else(|| pod.status.as_ref().and_then(|s| s.conditions.clone()))
            .unwrap_or_default();
        let facts = status::PodFacts {
            terminating,
            evicted: self.evicted.clone(),
            network_ready: self.net.is_some(),
            pod_ip: self
                .net
                .as_ref()
                .map(|n| n.ip.to_string())
                .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone())),
            node_ip: self.ctx.node_ip.to_string(),
            start_time: self.start_time.clone(),
            prev_conditions,
            now: now(),
        };
        status::pod_status(&spec, init, app, ephemeral, &facts)
    }
}

/// A refusal of the container's security settings, worded as the kubelet words it.
fn non_root_message(m: &str, pod: &Pod, c: &Container) -> String {
    format!(
        "{m} (pod: \"{}_{}({})\", container: {})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or(""),
        c.name
    )
}

/// Kubernetes' default pull policy: Always for `:latest` or no tag, else IfNotPresent.
fn default_pull_policy(image: &str) -> String {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || name.split_once(':').is_some_and(|(_, t)| t != "latest") {
        "IfNotPresent".into()
    } else {
        "Always".into()
    }
}

/// A container's CPU and memory figures; the request defaults to the limit.
fn resources_of(c: &Container) -> Resources {
    let r = c.resources.clone().unwrap_or_default();
    let get =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| {
            m.as_ref()
                .and_then(|m| m.get(k))
                .and_then(|q| crate::env::parse_quantity(&q.0))
        };
    let cpu_limit = get(&r.limits, "cpu").filter(|v| *v > 0.0);
    Resources {
        cpu_limit,
        cpu_request: get(&r.requests, "cpu").or(cpu_limit),
        memory_limit: get(&r.limits, "memory")
            .filter(|v| *v > 0.0)
            .map(|v| v as u64),
    }
}

/// An ephemeral container as the container the runtimes start: the same fields, less
/// `targetContainerName`.
fn ephemeral_as_container(ec: &EphemeralContainer) -> Container {
    let mut v = serde_json::to_value(ec).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("targetContainerName");
    }
    serde_json::from_value(v).unwrap_or_else(|_| Container {
        name: ec.name.clone(),
        ..Default::default()
    })
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

async fn run_hook(
    h: &LifecycleHandler,
    c: &Container,
    key: &ContainerKey,
    rt: &Arc<dyn Runtime>,
    pod_ip: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    let timeout = timeout.max(Duration::from_secs(1));
    if let Some(ex) = &h.exec {
        let argv = ex.command.clone().unwrap_or_default();
        if argv.is_empty() {
            return Err("exec hook without command".into());
        }
        return match rt.exec(key, &argv, timeout).await {
            Ok(o) if o.exit_code == 0 => Ok(()),
            Ok(o) => Err(format!("exit code {}: {}", o.exit_code, o.output.trim())),
            Err(e) => Err(format!("{e:#}")),
        };
    }
    if let Some(hg) = &h.http_get {
        return crate::probe::http_get(c, pod_ip, hg, timeout)
            .await
            .map(|_| ());
    }
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    Err("hook has no action".into())
}

/// Longest wait for a postStart hook (the kubelet bounds an httpGet hook likewise).
const POST_START_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests;
