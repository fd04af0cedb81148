//! The agent: registers the node, keeps its lease, serves logs, and runs a worker per pod
//! bound to this node.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bosun_watch::{Informer, Notice};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::KubeApi;
use crate::cpus::{CpuManager, CpuSet};
use crate::network::{BridgeNetwork, HostNetwork, PodNetwork, can_manage_network};
use crate::node::{CapacityOverrides, Machine, NodeFacts};
use crate::pod::{PodContext, PodWorker};
use crate::runtime::{ProcessRuntime, Runtime};

/// How pods get their network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Own namespaces on the bridge when privileged, else the host network (with a warning).
    #[default]
    Auto,
    Bridge,
    Host,
}

#[derive(Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Pods (containers, logs, volumes), network state.
    pub data_dir: PathBuf,
    pub node_ip: IpAddr,
    /// Port of the HTTPS endpoint (logs); 0 picks a free one.
    pub kubelet_port: u16,
    /// e.g. 10.88.0.0/24
    pub pod_cidr: ipnet::Ipv4Net,
    /// e.g. "bosun0" (at most 15 characters)
    pub bridge_name: String,
    pub tls: Arc<rustls::ServerConfig>,
    /// Bearer token the API server presents to the HTTPS endpoint.
    pub token: String,
    /// The bosun binary; containers run under `<shim_exe> shim run ...`.
    pub shim_exe: PathBuf,
    pub capacity: CapacityOverrides,
    pub network: NetworkMode,
    /// CrashLoopBackOff: first delay, doubling up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub sync_interval: Duration,
    /// On shutdown, stop all pods and remove the bridge and pod networks (else pods keep
    /// running for the next agent to adopt).
    pub teardown_on_shutdown: bool,
    /// Cluster DNS that pods with `dnsPolicy: ClusterFirst` get as their resolver.
    pub cluster_dns: Option<crate::dns::ClusterDns>,
    /// Run containers with an image on the local Docker engine when one answers.
    pub docker: bool,
    /// How containers get CPUs (`static`: Guaranteed whole-core containers get their own).
    pub cpu_manager_policy: crate::cpus::Policy,
    /// CPUs never given to one container alone (default: the first CPU).
    pub reserved_cpus: Option<crate::cpus::CpuSet>,
    /// Host paths process pods never see besides `data_dir` (e.g. the cluster's credentials).
    pub hidden_paths: Vec<PathBuf>,
    /// The request load per pod and Service that the node's proxies saw, served at
    /// `/stats/load` (the custom metrics API reads it); None serves an empty list.
    pub load_stats: Option<crate::server::LoadStats>,
    /// A container's log is rotated at this size ...
    pub container_log_max_bytes: u64,
    /// ... keeping this many files.
    pub container_log_max_files: usize,
    /// How long and how much of each pod's logs are kept, deleted pods' included.
    pub log_retention: crate::logstore::Retention,
    /// Request spans of this node's proxy and gateway, served at `/traces`.
    pub traces: Option<Arc<dyn crate::server::TraceSource>>,
}

impl AgentConfig {
    /// A configuration with Kubernetes' defaults for everything not given.
    pub fn new(
        node_name: impl Into<String>,
        data_dir: PathBuf,
        node_ip: IpAddr,
        pod_cidr: ipnet::Ipv4Net,
        tls: Arc<rustls::ServerConfig>,
        token: impl Into<String>,
        shim_exe: PathBuf,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            data_dir,
            node_ip,
            kubelet_port: 10250,
            pod_cidr,
            bridge_name: "bosun0".into(),
            tls,
            token: token.into(),
            shim_exe,
            capacity: CapacityOverrides::default(),
            network: NetworkMode::Auto,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            sync_interval: Duration::from_secs(1),
            teardown_on_shutdown: false,
            cluster_dns: None,
            docker: true,
            cpu_manager_policy: crate::cpus::Policy::Static,
            reserved_cpus: None,
            hidden_paths: Vec::new(),
            load_stats: None,
            container_log_max_bytes: 10 << 20,
            container_log_max_files: 5,
            log_retention: crate::logstore::Retention::default(),
            traces: None,
        }
    }

    fn pods_dir(&self) -> PathBuf {
        self.data_dir.join("pods")
    }

    /// Logs of deleted pods, kept for their retention.
    fn log_archive_dir(&self) -> PathBuf {
        self.data_dir.join("pod-logs")
    }

    /// Value of the owner label on this agent's Docker containers: its data directory, so
    /// agents sharing an engine never touch each other's containers.
    fn docker_owner(&self) -> String {
        std::fs::canonicalize(&self.data_dir)
            .unwrap_or_else(|_| self.data_dir.clone())
            .to_string_lossy()
            .into_owned()
    }
}

/// The Docker runtime, or None (with the reason logged) when no engine answers.
async fn make_docker(cfg: &AgentConfig) -> Option<Arc<dyn Runtime>> {
    if !cfg.docker {
        return None;
    }
    match crate::docker::DockerRuntime::connect(cfg.pods_dir(), cfg.docker_owner()).await {
        Ok(d) => {
            tracing::info!("Docker engine found: containers with an image run on it");
            Some(Arc::new(d.with_log_limits(
                cfg.container_log_max_bytes,
                cfg.container_log_max_files,
            )))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no Docker engine: pods with images cannot run on this node");
            None
        }
    }
}

fn make_cpu_manager(cfg: &AgentConfig, pods_dir: &std::path::Path) -> CpuManager {
    let all = match CpuSet::of_this_process() {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the node's CPUs: containers are not pinned");
            return CpuManager::none();
        }
    };
    let m = CpuManager::new(
        cfg.cpu_manager_policy,
        all.clone(),
        cfg.reserved_cpus.clone(),
        pods_dir,
    )
    .confining();
    tracing::info!(policy = ?m.policy(), cpus = %all, shared = %m.shared_pool(), "CPU manager");
    m
}

async fn make_network(cfg: &AgentConfig) -> Result<Arc<dyn PodNetwork>> {
    let host = || -> Arc<dyn PodNetwork> {
        Arc::new(HostNetwork {
            node_ip: cfg.node_ip,
        })
    };
    match cfg.network {
        NetworkMode::Host => Ok(host()),
        NetworkMode::Bridge => {
            let n = BridgeNetwork::new(&cfg.bridge_name, cfg.pod_cidr, &cfg.data_dir)?;
            n.init().await.context("set up pod bridge")?;
            Ok(Arc::new(n))
        }
        NetworkMode::Auto => {
            if !can_manage_network() {
                tracing::warn!(
                    "no privileges for network namespaces (needs root or CAP_NET_ADMIN+CAP_SYS_ADMIN and iproute2): pods use the host network"
                );
                return Ok(host());
            }
            let n = BridgeNetwork::new(&cfg.bridge_name, cfg.pod_cidr, &cfg.data_dir)?;
            match n.init().await {
                Ok(()) => Ok(Arc::new(n)),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot set up the pod bridge: pods use the host network");
                    Ok(host())
                }
            }
        }
    }
}

struct WorkerHandle {
    tx: watch::Sender<Option<Pod>>,
    join: tokio::task::JoinHandle<()>,
}

/// Runs the node agent until `shutdown`.
pub async fn run(
    client: kube::Client,
    cfg: AgentConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let pods_dir = cfg.pods_dir();
    std::fs::create_dir_all(&pods_dir).with_context(|| format!("create {}", pods_dir.display()))?;
    // Pods' files (Secret volumes, logs) are for root and the pods themselves only.
    for d in [&cfg.data_dir, &pods_dir] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", d.display()))?;
    }
    let cgroups = crate::cgroup::Layout::detect();
    match &cgroups {
        Ok(l) => tracing::info!(version = l.version(), "container cgroups"),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no container cgroups: CPU and memory limits of process pods are not enforced")
        }
    }
    let archive_dir = cfg.log_archive_dir();
    std::fs::create_dir_all(&archive_dir)
        .with_context(|| format!("create {}", archive_dir.display()))?;
    let mut process_runtime = ProcessRuntime::new(pods_dir.clone(), cfg.shim_exe.clone())
        .with_log_archive(archive_dir.clone());
    process_runtime.log_max_bytes = cfg.container_log_max_bytes;
    process_runtime.log_max_files = cfg.container_log_max_files;
    let runtime: Arc<dyn Runtime> =
        Arc::new(process_runtime.with_cgroups(cgroups).with_hidden_paths(
            std::iter::once(cfg.data_dir.clone()).chain(cfg.hidden_paths.iter().cloned()),
        ));
    let image_runtime = make_docker(&cfg).await;
    let network = make_network(&cfg).await?;

    let listener = std::net::TcpListener::bind(SocketAddr::new(cfg.node_ip, cfg.kubelet_port))
        .with_context(|| format!("bind agent endpoint {}:{}", cfg.node_ip, cfg.kubelet_port))?;
    let port = listener.local_addr()?.port();
    let mut state =
        crate::server::ServerState::new(pods_dir.clone(), cfg.token.clone(), cfg.node_name.clone())
            .with_log_archive(archive_dir.clone())
            .with_streaming(crate::streaming::Streaming {
                process: runtime.clone(),
                image: image_runtime.clone(),
                network: network.clone(),
            })
            .with_load_stats(cfg.load_stats.clone());
    if let Some(t) = &cfg.traces {
        state = state.with_traces(t.clone());
    }
    // CPU rates are differences between readings: sample regularly so that a reader
    // (`kubectl top`) gets a rate over the last window even on its first request.
    {
        let st = state.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let st = st.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    crate::stats::summary(&st.pods_dir, &st.node_name, &st.stats)
                })
                .await;
            }
        });
    }
    // Log retention: by age and size, for live pods and the archive of deleted ones.
    {
        let (pods, archive, r) = (
            pods_dir.clone(),
            archive_dir.clone(),
            cfg.log_retention.clone(),
        );
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let (p, a, r) = (pods.clone(), archive.clone(), r.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    crate::logstore::sweep(&p, &a, &r, std::time::SystemTime::now())
                })
                .await;
            }
        });
    }
    let server = tokio::spawn(crate::server::serve(
        listener,
        cfg.tls.clone(),
        state,
        shutdown.clone(),
    ));

    let facts = NodeFacts {
        name: cfg.node_name.clone(),
        ip: cfg.node_ip,
        pod_cidr: cfg.pod_cidr,
        kubelet_port: port,
        overrides: cfg.capacity.clone(),
        data_dir: cfg.data_dir.clone(),
    };
    // The API server may still be starting: keep trying.
    let node_uid = loop {
        match crate::node::register(&client, &facts).await {
            Ok(uid) => break uid,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "node registration failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    tracing::info!(node = %cfg.node_name, port, isolated = network.isolated(), "node registered");
    tokio::spawn(crate::local_path::run(
        client.clone(),
        cfg.node_name.clone(),
        cfg.data_dir.clone(),
        shutdown.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        facts.clone(),
        node_uid,
        shutdown.clone(),
    ));

    let machine = Machine::probe(&cfg.data_dir);
    let cpus = Arc::new(make_cpu_manager(&cfg, &pods_dir));
    let ctx = Arc::new(PodContext {
        process_runtime: runtime.clone(),
        image_runtime: image_runtime.clone(),
        network: network.clone(),
        api: Arc::new(KubeApi {
            client: client.clone(),
            node_name: cfg.node_name.clone(),
            events: bosun_events::Recorder::on_node(client.clone(), "kubelet", &cfg.node_name),
        }),
        node_name: cfg.node_name.clone(),
        node_ip: cfg.node_ip,
        pods_dir: pods_dir.clone(),
        backoff_base: cfg.backoff_base,
        backoff_max: cfg.backoff_max,
        backoff_reset: Duration::from_secs(600),
        sync_interval: cfg.sync_interval,
        node_cpu: cfg
            .capacity
            .cpu
            .as_deref()
            .and_then(crate::env::parse_quantity)
            .unwrap_or(machine.cpus as f64),
        node_memory: cfg
            .capacity
            .memory
            .as_deref()
            .and_then(crate::env::parse_quantity)
            .unwrap_or(machine.memory_bytes as f64),
        cluster_dns: cfg.cluster_dns.clone(),
        cpus,
    });

    let result = watch_pods(
        client,
        &cfg,
        ctx,
        runtime.clone(),
        network.clone(),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = heartbeat.await;
    let _ = server.await;
    if cfg.teardown_on_shutdown {
        cleanup_node(&cfg).await?;
    }
    result
}

async fn heartbeat(
    client: kube::Client,
    facts: NodeFacts,
    node_uid: String,
    shutdown: CancellationToken,
) {
    // The Lease every second: the control plane notices a lost node within seconds.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = crate::node::renew_lease(&client, &facts, &node_uid).await {
            tracing::warn!(error = %format!("{e:#}"), "lease renewal failed");
        }
        n += 1;
        // The full status (with conditions' heartbeat times) every minute, and at once when
        // the node lifecycle controller has marked the node not Ready (a late heartbeat); the
        // lease is the frequent liveness signal.
        if n.is_multiple_of(10) {
            let api: Api<Node> = Api::all(client.clone());
            let prev = api.get(&facts.name).await.ok().and_then(|n| n.status);
            let ready = prev
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready && !n.is_multiple_of(60) {
                continue;
            }
            let res = match prev {
                Some(_) => crate::node::update_status(&client, &facts, prev.as_ref()).await,
                None => crate::node::register(&client, &facts).await.map(|_| ()),
            };
            if let Err(e) = res {
                tracing::warn!(error = %format!("{e:#}"), "node status update failed");
            }
        }
    }
}

async fn watch_pods(
    client: kube::Client,
    cfg: &AgentConfig,
    ctx: Arc<PodContext>,
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn PodNetwork>,
    shutdown: CancellationToken,
) -> Result<()> {
    let api: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let watch_stop = shutdown.child_token();
    let _stop_watch = watch_stop.clone().drop_guard();
    let pods = Informer::start_config(api, wc, watch_stop);
    let mut notices = std::pin::pin!(pods.notices());
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let worker_stop = CancellationToken::new();
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = notices.next() => n,
        };
        workers.retain(|_, w| !w.join.is_finished());
        match notice {
            Some(Notice::Touched(touched)) => {
                let Some(uid) = touched.metadata.uid.clone() else {
                    continue;
                };
                match (pods.current(&touched), workers.get(&uid)) {
                    (Some(pod), Some(w)) => {
                        let _ = w.tx.send(Some(Pod::clone(&pod)));
                    }
                    (Some(pod), None) => {
                        let (tx, rx) = watch::channel(Some(Pod::clone(&pod)));
                        let w = PodWorker::new(ctx.clone(), uid.clone(), rx);
                        let join = tokio::spawn(w.run(worker_stop.clone()));
                        workers.insert(uid, WorkerHandle { tx, join });
                    }
                    // Deleted (or replaced by a new pod of the same name, notified apart).
                    (None, Some(w)) => {
                        let _ = w.tx.send(None);
                    }
                    (None, None) => {}
                }
            }
            Some(Notice::Synced) => {
                // Pods deleted while the watch was down were notified already; this also
                // covers a subscriber that fell behind.
                let seen: HashSet<String> = pods
                    .store()
                    .state()
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                for (uid, w) in &workers {
                    if !seen.contains(uid) {
                        let _ = w.tx.send(None);
                    }
                }
                // Pods left on this node (on disk or with a network) whose object is gone.
                let mut orphans: HashSet<String> = std::fs::read_dir(&ctx.pods_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                orphans.extend(network.list().await.unwrap_or_default());
                if let Some(rt) = &ctx.image_runtime {
                    orphans.extend(
                        rt.adopt()
                            .await
                            .unwrap_or_default()
                            .into_iter()
                            .map(|k| k.pod_uid),
                    );
                }
                for uid in orphans {
                    if seen.contains(&uid) || workers.contains_key(&uid) {
                        continue;
                    }
                    tracing::info!(%uid, "removing pod that is no longer bound to this node");
                    if let Err(e) = runtime.remove_pod(&uid).await {
                        tracing::warn!(%uid, error = %format!("{e:#}"), "remove orphaned pod");
                    }
                    if let Some(rt) = &ctx.image_runtime
                        && let Err(e) = rt.remove_pod(&uid).await
                    {
                        tracing::warn!(%uid, error = %format!("{e:#}"), "remove orphaned pod containers");
                    }
                    if let Err(e) = network.teardown(&uid).await {
                        tracing::warn!(%uid, error = %format!("{e:#}"), "remove orphaned pod network");
                    }
                    ctx.cpus.release(&uid);
                }
            }
            None => break,
        }
    }
    // Workers stop; their containers keep running for the next agent.
    worker_stop.cancel();
    for (_, w) in workers {
        let _ = w.join.await;
    }
    Ok(())
}

/// Stops every pod of this agent and removes the pod networks, the bridge and the pods'
/// files: leaves the node as it was before the agent ran.
pub async fn cleanup_node(cfg: &AgentConfig) -> Result<()> {
    let runtime = ProcessRuntime::new(cfg.pods_dir(), cfg.shim_exe.clone());
    let mut uids: HashSet<String> = runtime
        .adopt()
        .await?
        .into_iter()
        .map(|k| k.pod_uid)
        .collect();
    uids.extend(
        std::fs::read_dir(cfg.pods_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned()),
    );
    for uid in &uids {
        runtime.remove_pod(uid).await?;
    }
    if cfg.docker
        && let Ok(d) =
            crate::docker::DockerRuntime::connect(cfg.pods_dir(), cfg.docker_owner()).await
    {
        d.remove_all().await?;
    }
    if let Ok(layout) = crate::cgroup::Layout::detect() {
        for uid in &uids {
            layout.remove_pod(uid);
        }
    }
    if cfg.network != NetworkMode::Host && can_manage_network() {
        BridgeNetwork::new(&cfg.bridge_name, cfg.pod_cidr, &cfg.data_dir)?
            .cleanup()
            .await?;
    }
    Ok(())
}
