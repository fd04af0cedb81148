//! bosun-bench: the figures in BENCHMARKS.md, measured against a real `bosun up`.
//!
//! `cargo build --release -p bosun-cli -p bosun-testkit && target/release/bosun-bench`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bosun_testkit::{Cluster, bosun_bin};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measure bosun: apply-to-ready, pod replacement, API throughput, memory, size")]
struct Opts {
    /// Replica counts for the apply-to-ready measurement
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    replicas: Vec<usize>,
    /// ConfigMaps created for the API throughput measurement
    #[arg(long, default_value_t = 5000)]
    creates: usize,
    /// Concurrent clients for the API throughput measurement
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Only measure API create throughput, once per store: the embedded store, then
    /// `bosun up --store etcd://...` on a 3-member etcd cluster started for the run
    #[arg(long)]
    compare_stores: bool,
    /// Only measure API create throughput twice on one cluster: as the admin
    /// (system:masters, no RBAC lookup) and as a ServiceAccount allowed by a RoleBinding
    #[arg(long)]
    compare_authz: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = Opts::parse();
    let bin = bosun_bin()?;
    println!(
        "binary: {} ({:.1} MB)",
        bin.display(),
        std::fs::metadata(&bin)?.len() as f64 / 1e6
    );
    if opts.compare_stores {
        return compare_stores(&opts).await;
    }
    if opts.compare_authz {
        return compare_authz(&opts).await;
    }
    let cluster = Cluster::start("bench").await?;
    let client = cluster.client().await?;
    let pid = cluster.pid().context("no bosun pid")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("idle RSS, 0 pods: {:.1} MB", rss_mb(pid)?);

    for &n in &opts.replicas {
        let (total, per_pod) = apply_to_ready(&client, n).await?;
        println!(
            "apply-to-ready {n:>3} replicas: all ready in {:.0} ms; per pod p50 {:.0} ms, p99 {:.0} ms",
            ms(total),
            ms(percentile(&per_pod, 50.0)),
            ms(percentile(&per_pod, 99.0))
        );
        if n == *opts.replicas.iter().max().unwrap_or(&0) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            println!("idle RSS, {n} running pods: {:.1} MB", rss_mb(pid)?);
        }
        delete_deployment(&client, &format!("bench-{n}")).await?;
    }

    let (running, ready) = replace_killed_process(&client).await?;
    println!(
        "killed pod process running again after: {:.0} ms; Ready again (readiness probe, period 1 s) after: {:.0} ms",
        ms(running),
        ms(ready)
    );

    let (rate, p50, p99) = create_throughput(&client, opts.creates, opts.concurrency).await?;
    println!(
        "API create throughput: {rate:.0} objects/s ({} creates, {} clients); latency p50 {:.2} ms, p99 {:.2} ms",
        opts.creates,
        opts.concurrency,
        ms(p50),
        ms(p99)
    );
    drop(cluster);
    Ok(())
}

/// API create throughput as the admin, then as a ServiceAccount that RBAC allows.
async fn compare_authz(opts: &Opts) -> Result<()> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let cluster = Cluster::start("bench").await?;
    let admin = cluster.client().await?;
    let sas: Api<ServiceAccount> = Api::default_namespaced(admin.clone());
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
    )
    .await?;
    let rbs: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::default_namespaced(admin.clone());
    rbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "bench-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "bench", "namespace": "default"}]}))?,
    )
    .await?;
    let tr: TokenRequest = sas
        .create_subresource(
            "token",
            "bench",
            &PostParams::default(),
            &json!({"apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest", "spec": {}}),
        )
        .await?;
    let token = tr.status.context("no token")?.token;
    let kc = Kubeconfig::read_from(cluster.kubeconfig())?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    cfg.auth_info.token = Some(token.into());
    cfg.auth_info.client_certificate_data = None;
    cfg.auth_info.client_key_data = None;
    let sa_client = Client::try_from(cfg)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (label, client, prefix) in [
        ("admin (system:masters)", admin, "bench-admin"),
        ("ServiceAccount (JWT + RBAC)", sa_client, "bench-sa"),
    ] {
        let (rate, p50, p99) =
            create_throughput_named(&client, prefix, opts.creates, opts.concurrency).await?;
        println!(
            "API create throughput as {label}: {rate:.0} objects/s ({} creates, {} clients); latency p50 {:.2} ms, p99 {:.2} ms",
            opts.creates,
            opts.concurrency,
            ms(p50),
            ms(p99)
        );
    }
    drop(cluster);
    Ok(())
}

/// API create throughput on redb and on a 3-member etcd, one after the other.
async fn compare_stores(opts: &Opts) -> Result<()> {
    let etcd = bosun_store::etcd_cluster::EtcdCluster::start(3)
        .await
        .map_err(|e| anyhow::anyhow!("starting etcd: {e}"))?;
    let store = format!(
        "etcd://{}",
        etcd.endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (label, extra) in [
        ("redb", vec![]),
        ("etcd (3 members)", vec!["--store".to_string(), store]),
    ] {
        let cluster = Cluster::start_with("bench", &extra).await?;
        let client = cluster.client().await?;
        let (rate, p50, p99) = create_throughput(&client, opts.creates, opts.concurrency).await?;
        println!(
            "API create throughput on {label}: {rate:.0} objects/s ({} creates, {} clients); latency p50 {:.2} ms, p99 {:.2} ms",
            opts.creates,
            opts.concurrency,
            ms(p50),
            ms(p99)
        );
        drop(cluster);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

fn deployment(name: &str, replicas: usize, command: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"bench": name}},
            "template": {
                "metadata": {"labels": {"bench": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "command": ["sh", "-c", command]}]
                }
            }
        }
    }))?)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates a deployment and times, per pod, from the create call to the pod turning
/// Ready (as seen by a watch); returns the time until all were ready and the sorted
/// per-pod latencies.
async fn apply_to_ready(client: &Client, n: usize) -> Result<(Duration, Vec<Duration>)> {
    let name = format!("bench-{n}");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let cfg = watcher::Config::default().labels(&format!("bench={name}"));
    let mut events = watcher::watcher(pods, cfg).boxed();
    // Let the watch establish before starting the clock.
    while let Some(ev) = events.try_next().await? {
        if matches!(ev, watcher::Event::InitDone) {
            break;
        }
    }
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let start = Instant::now();
    api.create(
        &PostParams::default(),
        &deployment(&name, n, "exec sleep 3600")?,
    )
    .await?;
    let mut ready: HashMap<String, Duration> = HashMap::new();
    let deadline = Duration::from_secs(300);
    while ready.len() < n {
        let ev = tokio::time::timeout(deadline.saturating_sub(start.elapsed()), events.try_next())
            .await
            .context("timed out waiting for pods to become ready")??;
        if let Some(watcher::Event::Apply(p)) = ev
            && is_ready(&p)
        {
            ready
                .entry(p.metadata.name.clone().unwrap_or_default())
                .or_insert(start.elapsed());
        }
    }
    let total = start.elapsed();
    let mut per_pod: Vec<Duration> = ready.into_values().collect();
    per_pod.sort();
    Ok((total, per_pod))
}

async fn delete_deployment(client: &Client, name: &str) -> Result<()> {
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.delete(name, &DeleteParams::foreground()).await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let sel = ListParams::default().labels(&format!("bench={name}"));
    let start = Instant::now();
    while !pods.list(&sel).await?.items.is_empty() {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("pods of {name} not deleted after 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Kills a pod's process with SIGKILL and times until the agent has it running again, and
/// until its readiness probe (TCP, period 1 s) has made the pod Ready again.
async fn replace_killed_process(client: &Client) -> Result<(Duration, Duration)> {
    let marker = format!("bench-kill-{}", std::process::id());
    // The marker in the shell's argv lets us find exactly this process (no exec, so it stays).
    let cmd = format!("python3 -m http.server 8080 --bind 0.0.0.0; echo {marker}");
    let mut d = deployment("bench-kill", 1, &cmd)?;
    if let Some(c) = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
    {
        c.readiness_probe = Some(serde_json::from_value(json!({
            "tcpSocket": {"port": 8080}, "periodSeconds": 1
        }))?);
    }
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &d).await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let sel = ListParams::default().labels("bench=bench-kill");
    let first = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .cloned()
    };
    let restarted_running = |p: &Pod| {
        first(p).is_some_and(|c| {
            c.restart_count >= 1 && c.state.as_ref().is_some_and(|s| s.running.is_some())
        })
    };
    let restarted_ready = |p: &Pod| is_ready(p) && first(p).is_some_and(|c| c.restart_count >= 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pods.list(&sel).await?.items.iter().any(is_ready) {
        if Instant::now() > deadline {
            bail!("bench-kill never became ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let status = std::process::Command::new("pkill")
        .args(["-9", "-f", &marker])
        .status()?;
    if !status.success() {
        bail!("no process matched {marker}");
    }
    let mut running = None;
    let ready = loop {
        let list = pods.list(&sel).await?;
        if running.is_none() && list.items.iter().any(restarted_running) {
            running = Some(start.elapsed());
        }
        if list.items.iter().any(restarted_ready) {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("bench-kill not ready again after a minute");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    delete_deployment(client, "bench-kill").await?;
    Ok((running.unwrap_or(ready), ready))
}

/// Creates `total` ConfigMaps from `concurrency` clients; returns objects/s, p50, p99.
async fn create_throughput(
    client: &Client,
    total: usize,
    concurrency: usize,
) -> Result<(f64, Duration, Duration)> {
    create_throughput_named(client, "bench-cm", total, concurrency).await
}

async fn create_throughput_named(
    client: &Client,
    prefix: &'static str,
    total: usize,
    concurrency: usize,
) -> Result<(f64, Duration, Duration)> {
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let api = api.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(lat);
                }
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("{prefix}-{i}")},
                    "data": {"i": i.to_string()}
                }))?;
                let t = Instant::now();
                api.create(&PostParams::default(), &cm).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok((
        total as f64 / elapsed.as_secs_f64(),
        percentile(&all, 50.0),
        percentile(&all, 99.0),
    ))
}
