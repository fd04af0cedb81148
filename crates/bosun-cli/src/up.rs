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
use ipnet::Ipv4Net;
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
    /// Most client connections the API server holds at once; at the cap, the oldest
    /// connection that has not presented a valid token makes room
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Most client connections from one IP address
    #[arg(long, default_value_t = 512)]
    pub max_connections_per_ip: usize,
    /// Address range Service cluster IPs are allocated from (/8 to /30)
    #[arg(long, default_value_t = bosun_apiserver::DEFAULT_SERVICE_CIDR,
          value_parser = crate::cidr::parser(8, 30))]
    pub service_cidr: Ipv4Net,
    #[command(flatten)]
    pub store: crate::store::StoreOpts,
    /// Join the cluster an etcd store already holds (its CA, tokens and encryption key):
    /// the contents of DATA_DIR/server-token of one of its servers
    #[arg(long, env = "BOSUN_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Another name or address for the serving certificate (a shared DNS name or a load
    /// balancer in front of the servers); may be repeated
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// A node whose Lease (renewed every second) is this old is NotReady and tainted
    /// unreachable; its pods leave after their toleration (default 5 s), e.g. 3s, 40s
    #[arg(long, default_value = "2s", value_parser = crate::join::parse_ttl)]
    pub node_monitor_grace_period: std::time::Duration,
    /// How often each HorizontalPodAutoscaler reads its metrics and rescales (Kubernetes'
    /// --horizontal-pod-autoscaler-sync-period), e.g. 5s, 15s
    #[arg(long, default_value = "15s", value_parser = crate::join::parse_ttl)]
    pub horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// Range nodes' pod CIDRs (/24 each) are allocated from (/8 to /24)
    #[arg(long, default_value_t = bosun_controllers::nodeipam::DEFAULT_CLUSTER_CIDR,
          value_parser = crate::cidr::parser(8, 24))]
    pub cluster_cidr: Ipv4Net,
    /// Audit log file (audit.k8s.io/v1 Events, one JSON line per request; default
    /// DATA_DIR/audit.log; "-" writes none)
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// Size in MiB at which the audit log is rotated
    #[arg(long, default_value_t = 100)]
    pub audit_log_maxsize: u64,
    /// Rotated audit log files kept
    #[arg(long, default_value_t = 5)]
    pub audit_log_maxbackup: usize,
    /// Audit policy (an audit.k8s.io/v1 Policy: per rule a level of None, Metadata,
    /// Request or RequestResponse); without it every request is logged at Metadata.
    /// Secrets' and tokens' bodies are never logged.
    #[arg(long)]
    pub audit_policy_file: Option<PathBuf>,
    /// Address of the web console and its Prometheus-compatible query API (/api/v1/query,
    /// ...; default 127.0.0.1:9090, Prometheus' port: point Grafana at it); "off" serves none.
    /// When the default port is taken bosun says so and runs without it
    #[arg(long)]
    pub console_listen: Option<String>,
    /// How often the built-in metrics scrape bosun's components, the nodes and the pods
    /// annotated prometheus.io/scrape, e.g. 15s, 1m
    #[arg(long, default_value = "15s", value_parser = crate::join::parse_ttl)]
    pub metrics_scrape_interval: std::time::Duration,
    /// Metric samples older than this are deleted, e.g. 15d, 12h
    #[arg(long, default_value = "15d", value_parser = crate::join::parse_ttl)]
    pub metrics_retention: std::time::Duration,
    /// Most disk space the metrics store's blocks take, in MiB (oldest go first)
    #[arg(long, default_value_t = 1024)]
    pub metrics_retention_size: u64,
    /// A Prometheus rule file (groups of alerting and recording rules), evaluated on the
    /// built-in metrics; may be given several times. An alert named like a built-in one
    /// replaces it
    #[arg(long, value_name = "FILE")]
    pub alert_rules: Vec<PathBuf>,
    /// Evaluate the built-in alerts (KubePodCrashLooping, KubeDeploymentRolloutStuck,
    /// KubeDeploymentReplicasUnavailable, KubeNodeNotReady, ServiceHighErrorRate,
    /// ServiceHighLatency)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub alert_builtin: bool,
    /// A threshold of the built-in alerts, NAME=VALUE, e.g. service_error_ratio=0.1,
    /// crashloop_for=2m (see docs/alerts.md for the names and defaults); repeatable
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_param)]
    pub alert_param: Vec<(String, String)>,
    /// POST firing and resolved alerts to this URL in Alertmanager's webhook format
    /// (retried with backoff); repeatable
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Vec<String>,
}

fn parse_param(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?}: expected NAME=VALUE")),
    }
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
    /// Address range for this node's pods (default: a /24 the server assigns from its
    /// --cluster-cidr)
    #[arg(long, value_parser = crate::cidr::parser(8, 30))]
    pub pod_cidr: Option<Ipv4Net>,
    /// Zone of this node (label topology.kubernetes.io/zone)
    #[arg(long)]
    pub zone: Option<String>,
    /// Taints the node registers with, KEY[=VALUE]:EFFECT, comma-separated
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Resources kept back from pods, e.g. cpu=500m,memory=512Mi: the Node's allocatable is
    /// its capacity minus these
    #[arg(long, value_delimiter = ',', value_parser = parse_reserved)]
    pub system_reserved: Vec<(String, String)>,
    /// How pods reach pods on other nodes: `host-gw` (routes via the nodes' addresses, one
    /// L2 network) or `vxlan` (encapsulated in UDP 8472, across routers)
    #[arg(long, default_value = "host-gw", value_parser = clap::value_parser!(bosun_agent::routes::Backend))]
    pub flannel_backend: bosun_agent::routes::Backend,
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
    /// How long pods' log lines are kept, deleted pods' included (e.g. 12h, 7d); a pod's
    /// `bosun.dev/log-retention` annotation overrides it
    #[arg(long, default_value = "7d", value_parser = parse_age)]
    pub log_retention: std::time::Duration,
    /// Most log bytes kept per pod, all containers and restarts together (oldest files go
    /// first); a pod's `bosun.dev/log-max-size` annotation overrides it
    #[arg(long, default_value = "100Mi", value_parser = crate::size::parse_bytes)]
    pub pod_log_max_size: usize,
    /// Most log bytes kept for all deleted pods of the node together (oldest pod first)
    #[arg(long, default_value = "1Gi", value_parser = crate::size::parse_bytes)]
    pub log_archive_max_size: usize,
    /// A container's log file is rotated at this size
    #[arg(long, default_value = "10Mi", value_parser = crate::size::parse_bytes)]
    pub container_log_max_size: usize,
    /// Log files kept per container (the live one and rotated ones)
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: usize,
    /// Send the gateway's and node proxy's request spans to this OTLP/gRPC collector,
    /// e.g. http://127.0.0.1:4317
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Recent request spans kept in memory per node (served at /traces)
    #[arg(long, default_value_t = bosun_proxy::upstream::trace::DEFAULT_CAPACITY)]
    pub trace_buffer_spans: usize,
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    bosun_agent::logstore::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration like 12h or 7d"))
}

/// The process's span recorder (shared by the node proxy, the gateway and the agent).
fn node_tracer(node: &NodeOpts) -> Result<bosun_proxy::upstream::trace::Tracer> {
    Ok(crate::traces::tracer(
        &node_name(node)?,
        node.trace_buffer_spans,
        node.otlp_endpoint.as_deref(),
    ))
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
    /// URL of an API server to join, e.g. https://10.0.0.1:6443; give it once per server,
    /// the first that answers is used
    #[arg(long = "server", alias = "join", required = true)]
    pub servers: Vec<String>,
    /// Join token: the contents of the server's DATA_DIR/node-token, or one from
    /// `bosun token create` (only needed until the node has its certificate)
    #[arg(long, env = "BOSUN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA pin (sha256:...) when the token does not carry it
    #[arg(long)]
    pub ca_cert_hash: Option<String>,
    /// Instead of a token: a directory holding the cluster's ca.crt, ca.key and token copied
    /// from the server's DATA_DIR/pki (gives this node the cluster's admin rights)
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    /// Where pod state and logs live on this node
    #[arg(long, default_value = "bosun-agent-data", env = "BOSUN_DATA_DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeOpts,
}

pub async fn up(opts: UpOpts) -> Result<ExitCode> {
    let alerts = alert_rules(&opts.server)?;
    let shutdown = shutdown_on_signal();
    let mut tasks = JoinSet::new();
    // A bosun already running on this data dir hands over its sockets (upgrade in place).
    if !crate::upgrade::take_over(&opts, &shutdown, &mut tasks).await? {
        let (client, pki) = start_control_plane(&opts.server, &shutdown, &mut tasks).await?;
        let mut node = assigned_node(&client, &opts.node).await?;
        let console = console_listener(&opts.server)?;
        if console.is_some() {
            // The built-in metrics scrape the gateway and the node proxy: give them an
            // address when none was asked for.
            if node.gateway_admin_port.is_none() {
                node.gateway_admin_port = Some(free_local_port()?);
            }
            if node.proxy_metrics_listen.is_none() {
                node.proxy_metrics_listen =
                    Some((IpAddr::from([127, 0, 0, 1]), free_local_port()?).into());
            }
        }
        start_metrics(
            &opts.server,
            console,
            alerts,
            Some(&node),
            &client,
            &pki,
            &shutdown,
            &mut tasks,
        )?;
        start_agent_only(
            client.clone(),
            AgentIdentity::local(&pki, &node)?,
            &opts.server.data_dir,
            &node,
            &shutdown,
            &mut tasks,
        )?;
        start_node_services(client, &node, &shutdown, &mut tasks)?;
    }
    crate::upgrade::serve_handoff(&opts.server.data_dir, &shutdown, &mut tasks);
    println!(
        "bosun is up. Use it with:\n  export KUBECONFIG={}",
        kubeconfig_path(&opts.server.data_dir).display()
    );
    print_join_hint(&opts.server);
    supervise(tasks, shutdown).await
}

pub async fn server(opts: ServerOpts) -> Result<ExitCode> {
    let alerts = alert_rules(&opts)?;
    let shutdown = shutdown_on_signal();
    let mut tasks = JoinSet::new();
    let (client, pki) = start_control_plane(&opts, &shutdown, &mut tasks).await?;
    let console = console_listener(&opts)?;
    start_metrics(
        &opts, console, alerts, None, &client, &pki, &shutdown, &mut tasks,
    )?;
    println!(
        "bosun server is up. Use it with:\n  export KUBECONFIG={}",
        kubeconfig_path(&opts.data_dir).display()
    );
    print_join_hint(&opts);
    supervise(tasks, shutdown).await
}

pub async fn agent(opts: AgentOpts) -> Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    let mut tasks = JoinSet::new();
    std::fs::create_dir_all(&opts.data_dir)?;
    crate::pki::chmod(&opts.data_dir, 0o700)?;
    let server = opts.servers.first().cloned().unwrap_or_default();
    let (client, serving, kubelet_token, joined) = match &opts.pki_dir {
        Some(dir) => {
            let pki = Pki::load_existing(dir)?;
            pki.write_kubeconfig(&opts.data_dir.join("kubeconfig"), &server)?;
            let serving = node_serving_cert(&pki, &opts.node)?;
            (
                crate::nodecert::failover_bearer_client(&pki.ca_pem, &opts.servers, &pki.token)?,
                serving,
                pki.kubelet_token,
                server,
            )
        }
        None => {
            let name = node_name(&opts.node)?;
            let creds = crate::nodecert::obtain(
                &opts.servers,
                opts.token.as_deref(),
                opts.ca_cert_hash.as_deref(),
                &opts.data_dir,
                &name,
                opts.node.node_ip,
            )
            .await?;
            let creds = std::sync::Arc::new(creds);
            let (c, sd) = (creds.clone(), shutdown.clone());
            tasks.spawn(async move {
                c.renew_loop(name, sd).await;
                ("certificate renewal", Ok(()))
            });
            let serving = crate::pki::Serving {
                cert_pem: creds.serving.cert_pem.clone(),
                key_pem: creds.serving.key_pem.clone(),
            };
            (
                creds.client.clone(),
                serving,
                creds.kubelet_token.clone(),
                creds.server.clone(),
            )
        }
    };
    let node = assigned_node(&client, &opts.node).await?;
    let id = AgentIdentity {
        serving,
        kubelet_token: &kubelet_token,
        pki_dir: opts.pki_dir.as_deref(),
    };
    start_agent_only(
        client.clone(),
        id,
        &opts.data_dir,
        &node,
        &shutdown,
        &mut tasks,
    )?;
    start_node_services(client, &node, &shutdown, &mut tasks)?;
    println!("bosun agent joined {joined}");
    supervise(tasks, shutdown).await
}

/// Tells how other machines join this server.
fn print_join_hint(opts: &ServerOpts) {
    let host = opts
        .advertise_address
        .map(|a| a.to_string())
        .unwrap_or_else(|| "THIS_HOST".into());
    println!(
        "Join another machine with:\n  bosun agent --server https://{host}:{} --token \"$(cat {})\" --node-ip ITS_IP",
        opts.listen.port(),
        opts.data_dir.join(crate::join::TOKEN_FILE).display()
    );
}

pub(crate) fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig")
}

pub(crate) type Tasks = JoinSet<(&'static str, Result<()>)>;

/// Opens the store, starts the API server, controllers and scheduler; returns an
/// in-process client for the agent.
pub(crate) async fn start_control_plane(
    opts: &ServerOpts,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<(kube::Client, Pki)> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    // The store holds every Secret and the keys sign for the whole cluster: root only.
    crate::pki::chmod(&opts.data_dir, 0o700)?;
    let Some(store) = crate::store::open_waiting(&opts.store, &opts.data_dir, shutdown).await?
    else {
        anyhow::bail!("stopped before the store answered");
    };
    let on_etcd = opts.store.kind()? != crate::store::StoreKind::Redb;
    let mut server_token = None;
    if on_etcd {
        // Every server of one etcd shares one identity, kept sealed in the store.
        server_token = Some(
            crate::identity::ensure(store.as_ref(), &opts.data_dir, opts.join_token.as_deref())
                .await?,
        );
    } else if opts.join_token.is_some() {
        anyhow::bail!("--join-token joins servers on one etcd store: it needs --store etcd://...");
    }
    let pki = Pki::load_or_create(&opts.data_dir)?;
    let mut api_cfg =
        bosun_apiserver::ApiServerConfig::new(store.clone(), pki.token.clone(), pki.ca_pem.clone());
    api_cfg.service_cidr = opts.service_cidr;
    if !on_etcd {
        api_cfg.storage_file = Some(opts.data_dir.join("store.redb"));
    }
    api_cfg.extra_metrics = vec![std::sync::Arc::new(bosun_watch::metrics::encode)];
    api_cfg.kubelet_token = Some(pki.kubelet_token.clone());
    api_cfg.limits.max_connections = opts.max_connections;
    api_cfg.limits.max_connections_per_ip = opts.max_connections_per_ip;
    api_cfg.encryption_config = Some(opts.data_dir.join(bosun_apiserver::encryption::CONFIG_FILE));
    api_cfg.service_account_key = Some(opts.data_dir.join("sa.key"));
    api_cfg.external_metrics = metrics_api_url(opts);
    let audit_path = opts
        .audit_log_path
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("audit.log"));
    if audit_path.as_os_str() != "-" {
        let mut audit = bosun_apiserver::audit::AuditConfig::new(audit_path);
        audit.max_bytes = opts.audit_log_maxsize << 20;
        audit.max_backups = opts.audit_log_maxbackup;
        if let Some(p) = &opts.audit_policy_file {
            audit.policy = Some(bosun_apiserver::audit_policy::Policy::load(p)?);
        }
        api_cfg.audit = Some(audit);
    }
    let api = bosun_apiserver::ApiServer::new(api_cfg)
        .await
        .context("starting the API server")?;
    if let Some(token) = server_token {
        // A key rotation on any server reaches every other one.
        let encryption = api.encryption();
        let (data_dir, stop) = (opts.data_dir.clone(), shutdown.clone());
        tasks.spawn(async move {
            let reload = move || encryption.reload();
            crate::identity::follow(store, data_dir, token, reload, stop).await;
            ("encryption configuration follower", Ok(()))
        });
    }

    let advertise = opts
        .advertise_address
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut ips = vec![IpAddr::from([127, 0, 0, 1]), advertise];
    if !opts.listen.ip().is_unspecified() {
        ips.push(opts.listen.ip());
    }
    let (mut names, sans) = (server_names(), crate::sans::split(&opts.tls_san));
    names.extend(sans.names);
    ips.extend(sans.ips);
    ips.push(crate::cidr::first_host(opts.service_cidr));
    let serving = pki.serving_cert("bosun-apiserver", &names, &ips)?;
    // Through `listen`: an upgrade in place hands this socket over too.
    let listener = bosun_proxy::listen::tcp_std(opts.listen)
        .with_context(|| format!("listening on {}", opts.listen))?;
    let port = listener.local_addr()?.port();
    let url = format!("https://{}", SocketAddr::new(advertise, port));
    pki.write_kubeconfig(&kubeconfig_path(&opts.data_dir), &url)?;

    let tls = serving.server_config_with_client_ca(&pki.ca_pem)?;
    let sd = shutdown.clone();
    let server = api.clone();
    tasks.spawn(async move { ("api server", server.serve_tls(listener, tls, sd).await) });

    let client = kube::Client::new(api.router(), "default");
    // Every server keeps a Lease of its own; the live ones are the `kubernetes` Service's
    // endpoints.
    let (c, sd, me) = (
        client.clone(),
        shutdown.clone(),
        SocketAddr::new(advertise, port),
    );
    let service_ip = Some(crate::cidr::first_host(opts.service_cidr));
    tasks.spawn(async move {
        (
            "API server endpoints",
            bosun_controllers::apiserver_endpoints::run(c, me, service_ip, sd).await,
        )
    });
    let ctl = bosun_controllers::ControllerConfig {
        node_monitor_grace_period: opts.node_monitor_grace_period,
        hpa_sync_period: opts.horizontal_pod_autoscaler_sync_period,
        metrics_url: metrics_api_url(opts),
        ..Default::default()
    };
    if on_etcd {
        // Servers sharing an etcd store elect the one that runs the singleton loops.
        crate::join::publish_joins(&client, &pki, &opts.data_dir, &url).await?;
        let loops = crate::store::Singletons {
            controllers: ctl,
            cluster_cidr: opts.cluster_cidr,
            signer: crate::join::signer(&pki)?,
        };
        let (c, sd) = (client.clone(), shutdown.clone());
        tasks.spawn(async move {
            (
                "leader",
                crate::store::elected_singletons(c, loops, sd).await,
            )
        });
        return Ok((client, pki));
    }
    let (c, sd) = (client.clone(), shutdown.clone());
    tasks.spawn(async move { ("controllers", bosun_controllers::run_with(c, ctl, sd).await) });
    let (c, sd) = (client.clone(), shutdown.clone());
    tasks.spawn(async move { ("scheduler", bosun_scheduler::run(c, sd).await) });
    let (c, sd, cidr) = (client.clone(), shutdown.clone(), opts.cluster_cidr);
    tasks.spawn(async move {
        (
            "pod CIDR allocator",
            bosun_controllers::nodeipam::run(c, cidr, sd).await,
        )
    });
    crate::join::serve_joins(&client, &pki, &opts.data_dir, &url, shutdown, tasks).await?;
    Ok((client, pki))
}

/// Who a node agent is: the certificate it serves with, the token the API server calls it
/// with, and where the cluster's credentials are when this machine holds them (hidden
/// from pods).
pub(crate) struct AgentIdentity<'a> {
    pub serving: crate::pki::Serving,
    pub kubelet_token: &'a str,
    pub pki_dir: Option<&'a Path>,
}

impl<'a> AgentIdentity<'a> {
    /// The agent of a machine that holds the cluster's credentials (`bosun up`).
    pub fn local(pki: &'a Pki, node: &NodeOpts) -> Result<Self> {
        Ok(AgentIdentity {
            serving: node_serving_cert(pki, node)?,
            kubelet_token: &pki.kubelet_token,
            pki_dir: Some(&pki.dir),
        })
    }
}

/// Registers the node (or finds it registered) and returns its options with the pod CIDR
/// the server assigned.
pub(crate) async fn assigned_node(client: &kube::Client, node: &NodeOpts) -> Result<NodeOpts> {
    let mut node = node.clone();
    let cidr = crate::cluster::register_node(client, &node_name(&node)?, &node).await?;
    node.pod_cidr = Some(cidr);
    Ok(node)
}

/// The node agent and its pod routes, without the traffic components.
pub(crate) fn start_agent_only(
    client: kube::Client,
    id: AgentIdentity,
    data_dir: &Path,
    node: &NodeOpts,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<()> {
    let mut cfg = agent_config(&id.serving, id.kubelet_token, data_dir, node)?;
    cfg.hidden_paths.extend(id.pki_dir.map(Path::to_path_buf));
    cfg.traces = Some(crate::traces::source(&node_tracer(node)?));
    // Before anything is created: `bosun reset` removes what this record names.
    crate::node_record::NodeRecord::new(
        &cfg.node_name,
        &node.bridge,
        &node.service_interface,
        pod_cidr(node),
    )
    .save(data_dir)?;
    let sd = shutdown.clone();
    let agent_client = client.clone();
    tasks.spawn(async move { ("agent", bosun_agent::run(agent_client, cfg, sd).await) });
    if bosun_agent::network::can_manage_network() {
        let rc = bosun_agent::routes::RouteConfig {
            node_name: node_name(node)?,
            node_ip: node.node_ip.to_string(),
            pod_cidr: pod_cidr(node),
            backend: node.flannel_backend,
            data_dir: data_dir.to_path_buf(),
        };
        let sd = shutdown.clone();
        tasks.spawn(async move { ("pod routes", bosun_agent::routes::run(client, rc, sd).await) });
    }
    Ok(())
}

/// The per-node traffic components: cluster DNS, the node proxy (Service virtual IPs)
/// and the gateway (Ingress / HTTPRoute). Each takes its own `kube::Client`.
pub(crate) fn start_node_services(
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
        cfg.node_name = Some(node_name(node)?);
        cfg.tracer = Some(node_tracer(node)?);
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
        cfg.node_name = Some(node_name(node)?);
        cfg.tracer = Some(node_tracer(node)?);
        if std::env::var("BOSUN_GATEWAY_ACCESS_LOG").is_ok_and(|v| v == "json") {
            cfg.access_log = bosun_gateway::AccessLog::Json;
        }
        tasks.spawn(async move { ("gateway", bosun_gateway::run(c, cfg, sd).await) });
    }
    Ok(())
}

/// Where the built-in metrics' Prometheus API will answer (the console listener): the API
/// server's `external.metrics.k8s.io` and the Rollout analysis' default address.
fn metrics_api_url(opts: &ServerOpts) -> Option<String> {
    match opts.console_listen.as_deref() {
        Some("off") => None,
        Some(addr) => {
            let mut a: SocketAddr = addr.parse().ok()?;
            if a.ip().is_unspecified() {
                a.set_ip(IpAddr::from([127, 0, 0, 1]));
            }
            Some(format!("http://{a}"))
        }
        None => Some("http://127.0.0.1:9090".into()),
    }
}

/// The console's listener: `--console-listen`, or 127.0.0.1:9090 when that is free.
pub(crate) fn console_listener(opts: &ServerOpts) -> Result<Option<std::net::TcpListener>> {
    match opts.console_listen.as_deref() {
        Some("off") => Ok(None),
        Some(addr) => {
            let addr: SocketAddr = addr
                .parse()
                .with_context(|| format!("--console-listen {addr:?}: not an IP:PORT or off"))?;
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("--console-listen: listening on {addr}"))?;
            Ok(Some(l))
        }
        None => match std::net::TcpListener::bind(("127.0.0.1", 9090)) {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                eprintln!(
                    "bosun: the console and metrics API are off: 127.0.0.1:9090: {e} (choose another address with --console-listen)"
                );
                Ok(None)
            }
        },
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
/// A loopback port for an internal listener that is bound later. Taken below the kernel's
/// ephemeral range: a port handed out by `bind(0)` is free only until the next outgoing
/// connection takes it as its local port, which under load happens between the pick and
/// the bind (the listener then fails with "address already in use").
fn free_local_port() -> Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low);
    for _ in 0..if from < to { 200 } else { 0 } {
        let port = rand::random_range(from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The built-in metrics: scrapes bosun's endpoints, the node agents and annotated pods
/// into DATA_DIR/metrics and serves the Prometheus API on the console listener.
/// The alerting rules (built-in and `--alert-rules`), checked before anything starts.
pub(crate) fn alert_rules(opts: &ServerOpts) -> Result<bosun_metrics::AlertsConfig> {
    let groups =
        bosun_metrics::load_rules(opts.alert_builtin, &opts.alert_param, &opts.alert_rules)
            .context("--alert-rules")?;
    for url in &opts.alert_webhook {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            anyhow::bail!("--alert-webhook {url:?}: not an http:// or https:// URL");
        }
    }
    Ok(bosun_metrics::AlertsConfig {
        groups,
        webhooks: opts.alert_webhook.clone(),
        events: true,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn start_metrics(
    opts: &ServerOpts,
    console: Option<std::net::TcpListener>,
    alerts: bosun_metrics::AlertsConfig,
    node: Option<&NodeOpts>,
    client: &kube::Client,
    pki: &Pki,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<()> {
    let Some(listener) = console else {
        return Ok(());
    };
    let mut api = opts.listen;
    if api.ip().is_unspecified() {
        api.set_ip(IpAddr::from([127, 0, 0, 1]));
    }
    let mut statics = vec![bosun_metrics::apiserver_target(api, &pki.token)];
    if let Some(node) = node {
        if let Some(p) = node.gateway_admin_port {
            statics.push(bosun_metrics::static_target(
                "bosun-gateway",
                &format!("http://127.0.0.1:{p}/metrics"),
            )?);
        }
        if let Some(mut a) = node.proxy_metrics_listen {
            if a.ip().is_unspecified() {
                a.set_ip(IpAddr::from([127, 0, 0, 1]));
            }
            statics.push(bosun_metrics::static_target(
                "bosun-proxy",
                &format!("http://{a}/metrics"),
            )?);
        }
    }
    let cfg = bosun_metrics::MetricsConfig {
        data_dir: Some(opts.data_dir.join("metrics")),
        retention: bosun_metrics::Retention {
            age: opts.metrics_retention,
            max_bytes: opts.metrics_retention_size << 20,
            ..Default::default()
        },
        scrape_interval: opts
            .metrics_scrape_interval
            .max(std::time::Duration::from_secs(1)),
        statics,
        agent: Some(bosun_metrics::AgentAccess {
            token: pki.kubelet_token.clone(),
            tls: bosun_metrics::client_tls(&pki.ca_pem)?,
        }),
        extra_routes: Some(console_routes(api, &listener, pki)?),
        alerts,
    };
    println!(
        "Metrics (Prometheus API) at http://{}/api/v1/query",
        listener.local_addr()?
    );
    println!("Web console at http://{}/", listener.local_addr()?);
    let (c, sd) = (client.clone(), shutdown.clone());
    tasks.spawn(async move {
        (
            "metrics",
            bosun_metrics::run(Some(c), cfg, listener, sd).await,
        )
    });
    Ok(())
}

/// The web console, served beside the Prometheus API: it calls the API server at `api`
/// with each signed-in user's credentials and the metrics API on its own listener.
fn console_routes(
    api: SocketAddr,
    listener: &std::net::TcpListener,
    pki: &Pki,
) -> Result<bosun_console::Router> {
    let mut own = listener.local_addr()?;
    if own.ip().is_unspecified() {
        own.set_ip(IpAddr::from([127, 0, 0, 1]));
    }
    Ok(bosun_console::router(bosun_console::ConsoleConfig {
        api_url: format!("https://{api}"),
        ca_pem: pki.ca_pem.clone(),
        prometheus_url: format!("http://{own}"),
    }))
}

/// Cluster DNS listens on the pod bridge's gateway address (the .1 of the pod CIDR): every
/// pod of the node reaches it, and it cannot clash with the host's own resolver.
fn cluster_dns_ip(node: &NodeOpts) -> Result<IpAddr> {
    Ok(bosun_agent::network::gateway(pod_cidr(node)).into())
}

/// `RESOURCE=QUANTITY` for --system-reserved.
fn parse_reserved(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not RESOURCE=QUANTITY, e.g. cpu=500m"))?;
    if !matches!(k, "cpu" | "memory" | "ephemeral-storage") {
        return Err(format!(
            "{k:?}: only cpu, memory and ephemeral-storage can be reserved"
        ));
    }
    if bosun_agent::env::parse_quantity(v).is_none() {
        return Err(format!("{v:?} is not a quantity like 500m or 512Mi"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The node's pod CIDR; resolved before the agent starts (a placeholder for `reset`, which
/// finds what to remove by bridge name).
fn pod_cidr(node: &NodeOpts) -> Ipv4Net {
    node.pod_cidr.unwrap_or(DEFAULT_POD_CIDR)
}

/// The placeholder of [`pod_cidr`]: the first /24 of the default cluster CIDR.
const DEFAULT_POD_CIDR: Ipv4Net = Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 42, 0, 0), 24);

fn node_name(node: &NodeOpts) -> Result<String> {
    Ok(match &node.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()?
            .to_string_lossy()
            .to_ascii_lowercase(),
    })
}

/// The node's serving certificate signed with the local CA key (`up`, `agent --pki-dir`).
fn node_serving_cert(pki: &Pki, node: &NodeOpts) -> Result<crate::pki::Serving> {
    let name = node_name(node)?;
    pki.serving_cert(
        &name,
        &[name.clone(), "localhost".into()],
        &[node.node_ip, IpAddr::from([127, 0, 0, 1])],
    )
}

/// The agent's configuration for this node; its state lives in `DATA_DIR/agent`.
fn agent_config(
    serving: &crate::pki::Serving,
    kubelet_token: &str,
    data_dir: &Path,
    node: &NodeOpts,
) -> Result<bosun_agent::AgentConfig> {
    let node_name = node_name(node)?;
    let mut cfg = bosun_agent::AgentConfig::new(
        node_name,
        data_dir.join("agent"),
        node.node_ip,
        pod_cidr(node),
        serving.server_config()?,
        kubelet_token,
        std::env::current_exe().context("finding the bosun executable")?,
    );
    // Process pods see neither the cluster's state nor its credentials.
    cfg.hidden_paths = vec![data_dir.to_path_buf()];
    cfg.kubelet_port = node.kubelet_port;
    cfg.capacity.reserved = node.system_reserved.iter().cloned().collect();
    cfg.bridge_name = node.bridge.clone();
    cfg.cpu_manager_policy = node.cpu_manager_policy;
    cfg.reserved_cpus = node.reserved_cpus.clone();
    cfg.load_stats = Some(std::sync::Arc::new(|| {
        bosun_proxy::upstream::load::table().snapshot()
    }));
    cfg.container_log_max_bytes = node.container_log_max_size as u64;
    cfg.container_log_max_files = node.container_log_max_files.max(1);
    cfg.log_retention = bosun_agent::logstore::Retention {
        max_age: node.log_retention,
        max_pod_bytes: node.pod_log_max_size as u64,
        max_archive_bytes: node.log_archive_max_size as u64,
    };
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
    /// Accepted for compatibility; reset needs no credentials
    #[arg(long, hide = true)]
    pub pki_dir: Option<PathBuf>,
    /// Node name (default: the one recorded in DATA_DIR, else the host name)
    #[arg(long)]
    pub node_name: Option<String>,
    /// Pod address range (default: the one recorded in DATA_DIR)
    #[arg(long, value_parser = crate::cidr::parser(8, 30))]
    pub pod_cidr: Option<Ipv4Net>,
    /// Pod bridge to remove (default: the one recorded in DATA_DIR; a different value
    /// overrides the record, with a warning)
    #[arg(long)]
    pub bridge: Option<String>,
    /// Service interface to remove (default: the one recorded in DATA_DIR)
    #[arg(long)]
    pub service_interface: Option<String>,
}

/// Stops every pod of this node and removes what its start-up created on the host: the
/// pod network namespaces, the bridge, the service interface and the iptables rules, as
/// recorded in DATA_DIR (flags override the record, and stand in for it, with a warning).
/// Run it with bosun stopped; pods otherwise outlive bosun on purpose.
pub async fn reset(opts: ResetOpts) -> Result<ExitCode> {
    use crate::node_record::{NodeRecord, remove_iptables_rules};
    let record = NodeRecord::load(&opts.data_dir)?;
    if record.is_none() {
        eprintln!(
            "bosun: warning: {} has no record of the node's network; removing the names from \
             the flags (or their defaults)",
            NodeRecord::path(&opts.data_dir).display()
        );
    }
    // NodeOpts with every default, then the record, then the flags on top.
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        node: NodeOpts,
    }
    let mut node = <Defaults as clap::Parser>::try_parse_from(["bosun"])?.node;
    fn pick<T: Clone + PartialEq + std::fmt::Display>(
        what: &str,
        flag: &Option<T>,
        recorded: Option<&T>,
        default: T,
    ) -> T {
        match (flag, recorded) {
            (Some(f), Some(r)) if f != r => {
                eprintln!(
                    "bosun: warning: --{what} {f} overrides the recorded {what} {r}, which stays"
                );
                f.clone()
            }
            (Some(f), _) => f.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => default,
        }
    }
    let r = record.as_ref();
    node.bridge = pick("bridge", &opts.bridge, r.map(|r| &r.bridge), node.bridge);
    node.service_interface = pick(
        "service-interface",
        &opts.service_interface,
        r.map(|r| &r.service_interface),
        node.service_interface,
    );
    node.pod_cidr = Some(pick(
        "pod-cidr",
        &opts.pod_cidr,
        r.map(|r| &r.pod_cidr),
        pod_cidr(&node),
    ));
    node.node_name = opts
        .node_name
        .clone()
        .or_else(|| r.map(|r| r.node_name.clone()));
    // The configuration is only used to find what to remove: no credentials are needed.
    let serving = crate::pki::Serving::self_signed("reset")?;
    let cfg = agent_config(&serving, "", &opts.data_dir, &node)?;
    bosun_agent::cleanup_node(&cfg).await?;
    bosun_agent::routes::cleanup(&opts.data_dir).await;
    bosun_proxy::vip::remove_interface(&node.service_interface).await?;
    if let Some(r) = r
        && r.bridge == node.bridge
    {
        remove_iptables_rules(&r.iptables).await;
    }
    if opts.purge {
        std::fs::remove_dir_all(&opts.data_dir)
            .with_context(|| format!("removing {}", opts.data_dir.display()))?;
    }
    println!(
        "bosun: node reset: pods stopped, pod networks, bridge {} and service interface {} removed",
        node.bridge, node.service_interface
    );
    Ok(ExitCode::SUCCESS)
}

fn server_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
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
                Ok(()) => crate::logging::fatal(&format!("bosun: {name} stopped unexpectedly")),
                Err(e) => crate::logging::fatal(&format!("bosun: {name} failed: {e:#}")),
            }
            code = ExitCode::FAILURE;
            shutdown.cancel();
        } else if let Err(e) = result {
            eprintln!("bosun: {name}: {e:#}");
        }
    }
    Ok(code)
}
