//! Scheduling throughput: simulated nodes (Node objects, no agent) and pending pods in an
//! in-process API server on a redb store; prints how fast the scheduler binds them all.
//!
//! `cargo run --release -p bosun-scheduler --example sched_bench -- [NODES] [PODS]`
//! (defaults 1000 and 10000). The clock starts when the scheduler starts, with every pod
//! already pending, and stops when a watch has seen every pod bound.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_store::{RedbOptions, RedbStore};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// As in the `bosun` binary, which this measures a part of.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As `bosun` does at start-up (bosun-cli/src/alloc.rs): no transparent huge pages, which
    // mimalloc's arenas would otherwise get and the kernel zero 2 MiB at a time.
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let pods: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(&dir.path().join("bench.redb"), RedbOptions::default())?;
    let server = ApiServer::new(ApiServerConfig::new(store, "token", "")).await?;
    let client = Client::new(server.router(), "default");

    let t = Instant::now();
    let node_api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..nodes)
        .map(|i| {
            let api = node_api.clone();
            async move {
                let name = format!("node-{i:04}");
                let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name,
                        "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}}}))?;
                api.create(&PostParams::default(), &node).await?;
                let status = json!({"status": {
                    "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let pod_api: Api<Pod> = Api::default_namespaced(client.clone());
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = pod_api.clone();
            async move {
                // Ten "ReplicaSets", so default spreading has owners to count.
                let rs = i % 10;
                let pod: Pod = serde_json::from_value(json!({"metadata": {
                        "name": format!("pod-{i:05}"), "labels": {"app": format!("app-{rs}")},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "name": format!("rs-{rs}"), "uid": format!("rs-uid-{rs}"),
                            "controller": true}]},
                    "spec": {"runtimeClassName": "process", "containers": [{"name": "main",
                        "command": ["/bin/sleep", "1000"],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}))?;
                api.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!(
        "created {nodes} nodes and {pods} pods in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let mut bound: HashSet<String> = HashSet::new();
    let watch = watcher(pod_api.clone(), watcher::Config::default());
    futures::pin_mut!(watch);
    // Wait for the watch's initial list before starting the clock.
    while let Some(ev) = watch.try_next().await? {
        if matches!(ev, watcher::Event::InitDone) {
            break;
        }
    }
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let (c, s) = (client.clone(), shutdown.clone());
    tokio::spawn(async move { bosun_scheduler::run(c, s).await });
    let deadline = start + Duration::from_secs(600);
    while bound.len() < pods {
        let ev = tokio::time::timeout_at(deadline.into(), watch.try_next())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {pods} pods bound in 600 s", bound.len()))??;
        if let Some(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
            && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        {
            bound.insert(p.name_any());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_start).map(|(end, start)| end - start);
    // Spread check: how many pods the fullest and emptiest node got.
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for p in pod_api.list(&Default::default()).await?.items {
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    println!(
        "scheduled {pods} pods on {nodes} nodes in {secs:.2} s: {:.0} pods/s (pods per node: min {}, max {})",
        pods as f64 / secs,
        per_node.values().min().copied().unwrap_or(0),
        per_node.values().max().copied().unwrap_or(0),
    );
    // On a shared machine the wall clock mostly measures the other processes; the CPU time
    // the process used meanwhile (all its threads: API server, store, scheduler, watches)
    // does not.
    if let Some(cpu) = cpu {
        println!(
            "CPU time while scheduling: {cpu:.2} s ({:.0} us per pod; {:.0} pods per CPU-second)",
            cpu * 1e6 / pods as f64,
            pods as f64 / cpu,
        );
    }
    Ok(())
}

/// User and system CPU time of this process so far (`/proc/self/stat`, in the kernel's
/// USER_HZ ticks, 100 per second on Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
