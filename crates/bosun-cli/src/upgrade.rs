//! Upgrading `bosun up` in place: a new `bosun up` on the data dir of a running one takes
//! its listening sockets over `DATA_DIR/handoff.sock` (`bosun_proxy::handoff`), serves
//! Service IPs, DNS and the gateway on them as soon as it has loaded their state from the
//! running API server, then lets the old process drain and exit, and only then opens the
//! store and starts the control plane and the agent (on the handed-over API socket, where
//! clients wait in the queue meanwhile). No connection is refused at any point.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bosun_proxy::{handoff, listen};
use tokio_util::sync::CancellationToken;

use crate::up::{self, Tasks, UpOpts};

/// The components that must serve before the old process is told to drain.
const TRAFFIC_PLANE: &[&str] = &["node proxy", "gateway", "cluster DNS"];
/// How long the new traffic plane may take to load before the upgrade is given up (the
/// running process then keeps serving, untouched).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Takes over from a bosun running on `opts`' data dir; false when none runs there (a
/// plain start follows). When true, everything is started, as by a plain start.
pub async fn take_over(
    opts: &UpOpts,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<bool> {
    let data_dir = &opts.server.data_dir;
    let path = handoff::socket_path(data_dir);
    let Some(mut old) = handoff::take_over(&path)
        .await
        .with_context(|| format!("taking over from the bosun serving {}", path.display()))?
    else {
        return Ok(false);
    };
    eprintln!(
        "bosun: upgrading in place: took {} listening sockets from process {}",
        old.sockets.len(),
        old.pid
    );
    listen::inherit(std::mem::take(&mut old.sockets));
    // Until the old process is gone, its API server (on the same address, later on the
    // same socket) is the source; watches reconnect to this process's own afterwards.
    let remote = remote_client(&up::kubeconfig_path(data_dir)).await?;
    let node = up::assigned_node(&remote, &opts.node).await?;
    up::start_node_services(remote, &node, shutdown, tasks)?;
    tokio::select! {
        _ = listen::wait_serving(TRAFFIC_PLANE) => {}
        _ = tokio::time::sleep(LOAD_TIMEOUT) => bail!(
            "upgrade given up: Services, DNS and the gateway did not load within {}s; \
             process {} keeps serving", LOAD_TIMEOUT.as_secs(), old.pid
        ),
        _ = shutdown.cancelled() => bail!("upgrade interrupted; process {} keeps serving", old.pid),
    }
    let pid = old.pid;
    eprintln!("bosun: serving; process {pid} drains and exits");
    old.drain_old()
        .await
        .with_context(|| format!("waiting for process {pid} to exit"))?;
    let (client, pki) = up::start_control_plane(&opts.server, shutdown, tasks).await?;
    // The old process has closed its console listener by now.
    let console = up::console_listener(&opts.server)?;
    up::start_metrics(
        &opts.server,
        console,
        up::alert_rules(&opts.server)?,
        Some(&node),
        &client,
        &pki,
        shutdown,
        tasks,
    )?;
    let id = up::AgentIdentity::local(&pki, &node)?;
    up::start_agent_only(client, id, data_dir, &node, shutdown, tasks)?;
    for key in listen::release_inherited() {
        tracing::info!(%key, "upgrade: socket no longer used, closed");
    }
    Ok(true)
}

/// Serves the handoff socket: when a new process takes over, cancels `shutdown` so that
/// this one stops accepting, drains and exits.
pub fn serve_handoff(data_dir: &std::path::Path, shutdown: &CancellationToken, tasks: &mut Tasks) {
    let path = handoff::socket_path(data_dir);
    let server = match handoff::Server::bind(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "bosun: warning: no in-place upgrade possible ({}: {e})",
                path.display()
            );
            return;
        }
    };
    let sd = shutdown.clone();
    tasks.spawn(async move {
        tokio::select! {
            r = server.wait_for_takeover() => match r {
                Ok(()) => {
                    eprintln!("bosun: a new bosun process took over; draining and exiting");
                    sd.cancel();
                }
                Err(e) => {
                    eprintln!("bosun: warning: in-place upgrade unavailable: {e}");
                    sd.cancelled().await;
                }
            },
            _ = sd.cancelled() => {}
        }
        drop(server);
        ("upgrade handoff", Ok(()))
    });
}

async fn remote_client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}
