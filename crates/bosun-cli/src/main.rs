//! `bosun`: one binary for the whole platform. `bosun up` runs a complete single-node
//! cluster; `bosun server` and `bosun agent` split it across machines; the remaining
//! verbs are everyday client commands that work without kubectl.

mod alloc;
mod apply;
mod cidr;
mod client;
mod cluster;
mod csrsign;
mod failover;
mod get;
mod identity;
mod join;
mod kubeconfig;
mod logging;
mod logs;
mod metrics_only;
mod node_record;
mod nodecert;
mod output;
mod pki;
mod rollout;
mod sans;
mod secrets;
mod size;
mod store;
mod traces;
mod up;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc keeps per-thread free lists: with glibc's malloc, arena locks and chunk
/// consolidation took about a tenth of the proxy's samples under load and 45% of the
/// scheduler benchmark's (many threads building and dropping JSON documents).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bosun",
    version,
    about = "Run microservices with Kubernetes' API in one small binary",
    long_about = "bosun runs microservices the way Kubernetes does — Deployments, rolling updates, \
                  rollbacks, self-healing — from a single binary. Start a cluster with `bosun up`, \
                  then use kubectl (KUBECONFIG is written to the data dir) or the verbs below.",
    after_help = "Examples:\n  bosun up --data-dir ./bosun-data\n  export KUBECONFIG=./bosun-data/kubeconfig\n  bosun apply -f web.yaml --wait\n  bosun get pods -o wide\n  bosun logs deploy/web -f\n  bosun rollout undo deploy/web"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr as `text` (coloured on a terminal) or `json` (one object per
    /// line); which ones by RUST_LOG (default: info for bosun, warn for libraries)
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
}

/// Where client verbs find the cluster.
#[derive(Args, Clone, Debug)]
pub struct ClientOpts {
    /// kubeconfig to use (default: $KUBECONFIG, then ./bosun-data/kubeconfig, then ~/.kube/config)
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace (default: the kubeconfig's, else "default")
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a complete single-node cluster: API server, controllers, scheduler and node agent
    Up(Box<up::UpOpts>),
    /// Run the control plane only (API server, controllers, scheduler); nodes join with `bosun agent`
    Server(up::ServerOpts),
    /// Run a node agent that joins an existing server
    Agent(up::AgentOpts),
    /// Stop every pod of this node and remove its pod networks (run with bosun stopped)
    Reset(up::ResetOpts),
    /// Create or update resources from manifests (files, directories or - for stdin)
    Apply(apply::ApplyOpts),
    /// Show resources as a table (like kubectl get)
    Get(get::GetOpts),
    /// Print or follow the logs of pods, a deployment, or everything matching a label selector
    Logs(logs::LogsOpts),
    /// Show recent request traces recorded by the gateway and the node proxies
    Traces(traces::TracesOpts),
    /// Watch, list or undo a deployment's rollouts
    Rollout(rollout::RolloutOpts),
    /// Manage join tokens for new machines (`bosun token create --ttl 24h`)
    Token(join::TokenOpts),
    /// Manage Secrets' encryption at rest (rotate-key)
    Secrets(secrets::SecretsOpts),
    /// Move the control plane's state between stores (`bosun store migrate --help`)
    Store(store::StoreCmd),
    /// Write every object of the store to a file (etcd: live; embedded store: stopped)
    Backup(store::BackupOpts),
    /// Load a `bosun backup` file into an empty store
    Restore(store::RestoreOpts),
    /// Write a kubeconfig for another server of the cluster (`--server https://HOST:6443`)
    Kubeconfig(kubeconfig::KubeconfigOpts),
    /// The metrics store alone on static targets (for benchmarks)
    #[command(hide = true)]
    MetricsOnly(metrics_only::MetricsOnlyOpts),
    /// Supervise one container process (started by the agent)
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    alloc::configure();
    let cli = Cli::parse();
    if let Command::Shim { args } = cli.command {
        bosun_agent::shim_main(args);
    }
    // Not for the shim above: it must stay single-threaded and small.
    if let Err(e) = logging::init(cli.log_format) {
        eprintln!("{} {e:#}", output::error_label());
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Up(o) => up::up(*o).await,
            Command::Server(o) => up::server(o).await,
            Command::Agent(o) => up::agent(o).await,
            Command::Reset(o) => up::reset(o).await,
            Command::Apply(o) => apply::run(o).await,
            Command::Get(o) => get::run(o).await,
            Command::Logs(o) => logs::run(o).await,
            Command::Traces(o) => traces::run(o).await,
            Command::Rollout(o) => rollout::run(o).await,
            Command::Token(o) => join::token(o).await,
            Command::Secrets(o) => secrets::run(o).await,
            Command::Store(o) => store::run(o).await,
            Command::Backup(o) => store::backup(o).await,
            Command::Restore(o) => store::restore(o).await,
            Command::Kubeconfig(o) => kubeconfig::run(o),
            Command::MetricsOnly(o) => metrics_only::run(o).await,
            Command::Shim { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::fatal(&output::error_message(&e));
            ExitCode::FAILURE
        }
    }
}
