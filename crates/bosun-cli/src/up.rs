//! `bosun up`, `bosun server` and `bosun agent`: wiring the components into processes.
//!
//! `up` runs everything in one process. Controllers, scheduler and agent still reach
//! the API server only through a `kube::Client`; in-process that client calls the
//! server's router directly (no socket, no TLS), over the network it is plain HTTPS.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::pki::Pki;

#[derive(Args, Clone)]
pub struct ServerOpts {
    /// Where the store, credentials, kubeconfig, pod state and logs live
    #[arg(long, default_value = "bosun-data", env = "BOSUN_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address the Kubernetes API listens on (HTTPS)
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// Address written into the kubeconfig (default: 127.0.0.1)
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// Address range Service cluster IPs are allocated from
    #[arg(long, default_value = bosun_apiserver::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: String,
}

#[derive(Args, Clone)]
pub struct NodeOpts {
    /// This node's name (default: the host name)
    #[arg(long)]
    pub node_name: Option<String>,
    /// The address other nodes and the API server reach this node at
    #[arg(long, default_value = "127.0.0.1")]
    pub node_ip: IpAddr,
    /// Port of the node agent's HTTPS endpoint (logs, stats)
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Address range for this node's pods
    #[arg(long, default_value = "10.42.0.0/24")]
    pub pod_cidr: String,
    /// Name of the bridge pods attach to
    #[arg(long, default_value = "bosun0")]
    pub bridge: String,
    /// Name of the interface that carries Service virtual IPs on this node
    #[arg(long, default_value = "bosun-svc0")]
    pub service_interface: String,
    /// DNS domain of the cluster
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Port of the gateway's plain-HTTP listener (Ingress and HTTPRoute)
    #[arg(long, default_value_t = 80)]
    pub http_port: u16,
    /// Port of the gateway's TLS listener
    #[arg(long, default_value_t = 443)]
    pub https_port: u16,
    /// Port on 127.0.0.1 for the gateway's /metrics and /healthz (off when unset)
    #[arg(long)]
    pub gateway_admin_port: Option<u16>,
    /// Address for the node proxy's Prometheus /metrics (off when unset)
    #[arg(long)]
    pub proxy_metrics_listen: Option<SocketAddr>,
    /// How containers get CPUs: `static` gives each container of a Guaranteed pod that
    /// requests whole cores (e.g. cpu: "2" in requests and limits) CPUs of its own, and
    /// keeps every other container off them; `none` lets every container use every CPU
    #[arg(long, default_value = "static", value_parser = clap::value_parser!(bosun_agent::cpus::Policy))]
    pub cpu_manager_policy: bosun_agent::cpus::Policy,
    /// CPUs that are never given to one container, as a list like `0` or `0-1,4`; they
    /// stay with the node's own processes and the shared pool (default: the first CPU)
    #[arg(long, value_parser = clap::value_parser!(bosun_agent::cpus::CpuSet))]
    pub reserved_cpus: Option<bosun_agent::cpus::CpuSet>,
}

#[derive(Args, Clone)]
pub struct UpOpts {
    #[command(flatten)]
    pub server: ServerOpts,
    #[command(flatten)]
    pub node: NodeOpts,
}

#[derive(Args, Clone)]
pub struct AgentOpts {
    /// URL of the API server to join, e.g. https://10.0.0.1:6443
    #[arg(long)]
    pub join: String,
    /// Directory holding the cluster's ca.crt, ca.key and token (copied from the server's DATA_DIR/pki)
    #[arg(long)]
    pub pki_dir: PathBuf,
    /// Where pod state and logs live on this node
    #[arg(long, default_value = "bosun-agent-data", env = "BOSUN_DATA_DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeOpts,
}

pub async fn up(opts: UpOpts) -> Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    let mut tasks = JoinSet::new();
    let (client, pki) = start_control_plane(&opts.server, &shutdown, &mut tasks).await?;
    start_agent(
        client,
        &pki,
        &opts.server.data_dir,
        &opts.node,
        &shutdown,
        &mut tasks,
    )?;
    println!(
        "bosun is up. Use it with:\n  export KUBECONFIG={}",
        kubeconfig_path(&opts.server.data_dir).display()
    );
    supervise(tasks, shutdown).await
}

pub async fn server(opts: ServerOpts) -> Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    let mut tasks = JoinSet::new();
    start_control_plane(&opts, &shutdown, &mut tasks).await?;
    println!(
        "bosun server is up. Use it with:\n  export KUBECONFIG={}",
        kubeconfig_path(&opts.data_dir).display()
    );
    supervise(tasks, shutdown).await
}

pub async fn agent(opts: AgentOpts) -> Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    let mut tasks = JoinSet::new();
    let pki = Pki::load_existing(&opts.pki_dir)?;
    let kubeconfig = opts.data_dir.join("kubeconfig");
    std::fs::create_dir_all(&opts.data_dir)?;
    crate::pki::chmod(&opts.data_dir, 0o700)?;
    pki.write_kubeconfig(&kubeconfig, &opts.join)?;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    start_agent(
        client,
        &pki,
        &opts.data_dir,
        &opts.node,
        &shutdown,
        &mut tasks,
    )?;
    println!("bosun agent joined {}", opts.join);
    supervise(tasks, shutdown).await
}

fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig")
}

type Tasks = JoinSet<(&'static str, Result<()>)>;

/// Opens the store, starts the API server, controllers and scheduler; returns an
/// in-process client for the agent.
async fn start_control_plane(
    opts: &ServerOpts,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<(kube::Client, Pki)> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    // The store holds every Secret and the keys sign for the whole cluster: root only.
    crate::pki::chmod(&opts.data_dir, 0o700)?;
    let pki = Pki::load_or_create(&opts.data_dir)?;
    let store_path = opts.data_dir.join("store.redb");
    let store = bosun_store::RedbStore::open(&store_path, bosun_store::RedbOptions::default())
        .context("opening the store")?;
    crate::pki::chmod(&store_path, 0o600)?;
    let mut api_cfg =
        bosun_apiserver::ApiServerConfig::new(store, pki.token.clone(), pki.ca_pem.clone());
    api_cfg.service_cidr = opts.service_cidr.clone();
    let api = bosun_apiserver::ApiServer::new(api_cfg)
        .await
        .context("starting the API server")?;

    let advertise = opts
        .advertise_address
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut ips = vec![IpAddr::from([127, 0, 0, 1]), advertise];
    if !opts.listen.ip().is_unspecified() {
        ips.push(opts.listen.ip());
    }
    let serving = pki.serving_cert("bosun-apiserver", &server_names(), &ips)?;
    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("listening on {}", opts.listen))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let url = format!("https://{}", SocketAddr::new(advertise, port));
    pki.write_kubeconfig(&kubeconfig_path(&opts.data_dir), &url)?;

    let tls = serving.server_config()?;
    let sd = shutdown.clone();
    let server = api.clone();
    tasks.spawn(async move { ("api server", server.serve_tls(listener, tls, sd).await) });

    let client = kube::Client::new(api.router(), "default");
    let (c, sd) = (client.clone(), shutdown.clone());
    tasks.spawn(async move { ("controllers", bosun_controllers::run(c, sd).await) });
    let (c, sd) = (client.clone(), shutdown.clone());
    tasks.spawn(async move { ("scheduler", bosun_scheduler::run(c, sd).await) });
    Ok((client, pki))
}

fn start_agent(
    client: kube::Client,
    pki: &Pki,
    data_dir: &Path,
    node: &NodeOpts,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<()> {
    let cfg = agent_config(pki, data_dir, node)?;
    let sd = shutdown.clone();
    let agent_client = client.clone();
    tasks.spawn(async move { ("agent", bosun_agent::run(agent_client, cfg, sd).await) });
    start_node_services(client, node, shutdown, tasks)
}

/// The per-node traffic components: cluster DNS, the node proxy (Service virtual IPs)
/// and the gateway (Ingress / HTTPRoute). Each takes its own `kube::Client`.
fn start_node_services(
    client: kube::Client,
    node: &NodeOpts,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<()> {
    {
        let (c, sd) = (client.clone(), shutdown.clone());
        let listen = vec![(cluster_dns_ip(node)?, 53).into()];
        let upstreams = bosun_dns::host_upstreams(&listen);
        let cfg = bosun_dns::DnsConfig {
            listen,
            cluster_domain: node.cluster_domain.clone(),
            upstreams,
        };
        tasks.spawn(async move { ("cluster DNS", bosun_dns::run(c, cfg, sd).await) });
    }
    {
        let (c, sd) = (client.clone(), shutdown.clone());
        let mut cfg = bosun_proxy::ProxyConfig::new(&node.service_interface, node.node_ip);
        cfg.metrics_listen = node.proxy_metrics_listen;
        tasks.spawn(async move { ("node proxy", bosun_proxy::run(c, cfg, sd).await) });
    }
    {
        let (c, sd) = (client.clone(), shutdown.clone());
        let any = std::net::IpAddr::from([0, 0, 0, 0]);
        let mut cfg = bosun_gateway::GatewayConfig::new(
            (any, node.http_port).into(),
            (any, node.https_port).into(),
        );
        cfg.admin_listen = node
            .gateway_admin_port
            .map(|p| (std::net::IpAddr::from([127, 0, 0, 1]), p).into());
        cfg.address = Some(node.node_ip.to_string());
        if std::env::var("BOSUN_GATEWAY_ACCESS_LOG").is_ok_and(|v| v == "json") {
            cfg.access_log = bosun_gateway::AccessLog::Json;
        }
        tasks.spawn(async move { ("gateway", bosun_gateway::run(c, cfg, sd).await) });
    }
    Ok(())
}

/// Cluster DNS listens on the pod bridge's gateway address (the .1 of the pod CIDR): every
/// pod of the node reaches it, and it cannot clash with the host's own resolver.
fn cluster_dns_ip(node: &NodeOpts) -> Result<IpAddr> {
    Ok(bosun_agent::network::Cidr::parse(&node.pod_cidr)?
        .gateway()
        .into())
}

/// The agent's configuration for this node; its state lives in `DATA_DIR/agent`.
fn agent_config(pki: &Pki, data_dir: &Path, node: &NodeOpts) -> Result<bosun_agent::AgentConfig> {
    let node_name = match &node.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()?
            .to_string_lossy()
            .to_ascii_lowercase(),
    };
    let serving = pki.serving_cert(
        &node_name,
        &[node_name.clone(), "localhost".into()],
        &[node.node_ip, IpAddr::from([127, 0, 0, 1])],
    )?;
    let mut cfg = bosun_agent::AgentConfig::new(
        node_name,
        data_dir.join("agent"),
        node.node_ip,
        node.pod_cidr.clone(),
        serving.server_config()?,
        pki.token.clone(),
        std::env::current_exe().context("finding the bosun executable")?,
    );
    // Process pods see neither the cluster's state nor its credentials.
    cfg.hidden_paths = vec![data_dir.to_path_buf(), pki.dir.clone()];
    cfg.kubelet_port = node.kubelet_port;
    cfg.bridge_name = node.bridge.clone();
    cfg.cpu_manager_policy = node.cpu_manager_policy;
    cfg.reserved_cpus = node.reserved_cpus.clone();
    cfg.cluster_dns = Some(bosun_agent::dns::ClusterDns {
        nameserver: cluster_dns_ip(node)?,
        domain: node.cluster_domain.clone(),
    });
    Ok(cfg)
}

#[derive(Args, Clone)]
pub struct ResetOpts {
    /// The data dir of the `bosun up` (or `bosun agent`) to reset
    #[arg(long, default_value = "bosun-data", env = "BOSUN_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Also delete the data dir (the store, credentials and logs)
    #[arg(long)]
    pub purge: bool,
    /// Where the cluster credentials are (default: DATA_DIR/pki; for `bosun agent`, its --pki-dir)
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeOpts,
}

/// Stops every pod of this node and removes their network namespaces and the bridge.
/// Run it with bosun stopped; pods otherwise outlive bosun on purpose.
pub async fn reset(opts: ResetOpts) -> Result<ExitCode> {
    let pki_dir = opts
        .pki_dir
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("pki"));
    let pki = Pki::load_existing(&pki_dir)?;
    let cfg = agent_config(&pki, &opts.data_dir, &opts.node)?;
    bosun_agent::cleanup_node(&cfg).await?;
    bosun_proxy::vip::remove_interface(&opts.node.service_interface).await?;
    if opts.purge {
        std::fs::remove_dir_all(&opts.data_dir)
            .with_context(|| format!("removing {}", opts.data_dir.display()))?;
    }
    println!(
        "bosun: node reset: pods stopped, pod networks and bridge {} removed",
        opts.node.bridge
    );
    Ok(ExitCode::SUCCESS)
}

fn server_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
    ];
    if let Ok(h) = nix::unistd::gethostname() {
        names.push(h.to_string_lossy().into_owned());
    }
    names
}

/// Cancels the returned token on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!(
            "bosun: shutting down (pods keep running; they are re-adopted at the next start)"
        );
        t.cancel();
    });
    token
}

/// Waits for shutdown; a component that stops on its own is an error that stops all.
async fn supervise(mut tasks: Tasks, shutdown: CancellationToken) -> Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    while let Some(done) = tasks.join_next().await {
        let (name, result) = done.context("a component panicked")?;
        if !shutdown.is_cancelled() {
            match result {
                Ok(()) => eprintln!("bosun: {name} stopped unexpectedly"),
                Err(e) => eprintln!("bosun: {name} failed: {e:#}"),
            }
            code = ExitCode::FAILURE;
            shutdown.cancel();
        } else if let Err(e) = result {
            eprintln!("bosun: {name}: {e:#}");
        }
    }
    Ok(code)
}
