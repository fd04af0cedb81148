//! Reconcilers (deployment, replicaset, garbage collector, namespace, node lifecycle, pod
//! garbage collection, horizontal pod autoscaler) on one shared runtime.
//!
//! Every controller is a kube-runtime `Controller` fed by shared [`bosun_watch::Informer`]s (one
//! watch per kind) and runs an idempotent, level-triggered reconcile that reads what it decides
//! on fresh from the API (or, on the scale-from-zero path, from its informers, with conflicts
//! as the check: the endpoints controller's slices, the deployment controller's ReplicaSets),
//! so any controller can be restarted at any moment.

pub mod apiserver_endpoints;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub use bosun_events as events;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod kinds;
pub mod leader;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
mod podgc;
pub mod replicaset;
pub mod rollout;
pub mod scaletozero;
pub mod serviceaccounts;
pub mod servicelb;
pub mod statefulset;
pub mod storage;
pub mod util;

use std::time::Duration;

use bosun_watch::Informer;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

pub use bosun_watch::ReconcileError;

/// Timings of the controllers. Defaults match Kubernetes.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// A node whose lease was not renewed for this long is marked NotReady/Unknown
    /// (`--node-monitor-grace-period`, 40s). Pods bound to a node that has been missing for
    /// this long are removed.
    pub node_monitor_grace_period: Duration,
    /// Not used any more: pods leave an unreachable node when their own toleration of the
    /// `node.kubernetes.io/unreachable` taint runs out. Kept so configurations still build.
    pub pod_eviction_timeout: Duration,
    /// How often each HorizontalPodAutoscaler is evaluated
    /// (`--horizontal-pod-autoscaler-sync-period`, 15s).
    pub hpa_sync_period: Duration,
    /// bosun's Prometheus API (`http://127.0.0.1:9090`), the default address of the
    /// AnalysisTemplates' prometheus provider; None when the metrics are off.
    pub metrics_url: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            hpa_sync_period: hpa::DEFAULT_SYNC_PERIOD,
            metrics_url: None,
        }
    }
}

/// Runs all controllers with default timings until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(client, ControllerConfig::default(), shutdown).await
}

/// Runs all controllers until `shutdown` is cancelled.
pub async fn run_with(
    client: Client,
    cfg: ControllerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let deployments = Informer::start(Api::<Deployment>::all(client.clone()), stop.clone());
    let replica_sets = Informer::start(Api::<ReplicaSet>::all(client.clone()), stop.clone());
    let pods = Informer::start(Api::<Pod>::all(client.clone()), stop.clone());
    let namespaces = Informer::start(Api::<Namespace>::all(client.clone()), stop.clone());
    let nodes = Informer::start(Api::<Node>::all(client.clone()), stop.clone());
    let services = Informer::start(Api::<Service>::all(client.clone()), stop.clone());
    let slices = Informer::start(Api::<EndpointSlice>::all(client.clone()), stop.clone());
    let leases = Informer::start(
        Api::<Lease>::namespaced(client.clone(), nodelifecycle::LEASE_NAMESPACE),
        stop.clone(),
    );

    // Before discovery, so the garbage collector knows Rollouts as owners.
    if let Err(e) = rollout::install_crds(&client).await {
        tracing::warn!(error = %e, "installing the Rollout CRDs failed");
    }
    let kinds = kinds::discover(&client).await;
    let graph = gc::Graph {
        kinds: std::sync::Arc::new(
            kinds
                .iter()
                .filter(|k| k.in_ownership_graph())
                .map(|k| gc::GraphKind {
                    informer: Informer::start_with(
                        Api::all_with(client.clone(), &k.ar),
                        k.ar.clone(),
                        stop.clone(),
                    ),
                    kind: k.clone(),
                })
                .collect(),
        ),
    };

    // Controllers start once their caches hold a complete list, so "not in cache" means absent.
    let synced = async {
        deployments.ready().await;
        replica_sets.ready().await;
        pods.ready().await;
        namespaces.ready().await;
        nodes.ready().await;
        leases.ready().await;
        services.ready().await;
        slices.ready().await;
        for k in graph.kinds.iter() {
            k.informer.ready().await;
        }
    };
    tokio::select! {
        _ = synced => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    tracing::info!(kinds = graph.kinds.len(), "controllers starting");

    let tasks = vec![
        tokio::spawn(deployment::run(
            client.clone(),
            deployments.clone(),
            replica_sets.clone(),
            pods.clone(),
            stop.clone(),
        )),
        tokio::spawn(replicaset::run(
            client.clone(),
            replica_sets.clone(),
            pods.clone(),
            stop.clone(),
        )),
        tokio::spawn(servicelb::run(
            client.clone(),
            services.clone(),
            nodes.clone(),
            stop.clone(),
        )),
        tokio::spawn(scaletozero::run(
            client.clone(),
            deployments.clone(),
            services.clone(),
            leases.clone(),
            nodes.clone(),
            stop.clone(),
        )),
        tokio::spawn(endpoints::run(
            client.clone(),
            services.clone(),
            pods.clone(),
            slices,
            stop.clone(),
        )),
        tokio::spawn(gc::run(client.clone(), graph.clone(), stop.clone())),
        tokio::spawn(serviceaccounts::run(
            client.clone(),
            namespaces.clone(),
            stop.clone(),
        )),
        tokio::spawn(batch(
            client.clone(),
            pods.clone(),
            nodes.clone(),
            stop.clone(),
        )),
        tokio::spawn(namespace::run(
            client.clone(),
            namespaces,
            kinds,
            graph,
            stop.clone(),
        )),
        tokio::spawn(disruption::run(
            client.clone(),
            Informer::start(
                Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::all(client.clone()),
                stop.clone(),
            ),
            pods.clone(),
            stop.clone(),
        )),
        tokio::spawn(rollout::run(
            client.clone(),
            replica_sets.clone(),
            services.clone(),
            cfg.metrics_url.clone(),
            stop.clone(),
        )),
        tokio::spawn(hpa::run(
            client.clone(),
            Informer::start(Api::all(client.clone()), stop.clone()),
            cfg.hpa_sync_period,
            stop.clone(),
        )),
        tokio::spawn(podgc::run(
            client.clone(),
            cfg.node_monitor_grace_period,
            nodes.clone(),
            pods.clone(),
            stop.clone(),
        )),
        tokio::spawn(statefulset::run(
            client.clone(),
            Informer::start(Api::all(client.clone()), stop.clone()),
            pods.clone(),
            stop.clone(),
        )),
        tokio::spawn(storage::run(
            client.clone(),
            Informer::start(Api::all(client.clone()), stop.clone()),
            Informer::start(Api::all(client.clone()), stop.clone()),
            Informer::start(Api::all(client.clone()), stop.clone()),
            pods.clone(),
            nodes.clone(),
            stop.clone(),
        )),
        tokio::spawn(nodelifecycle::run(
            client.clone(),
            cfg,
            nodes,
            leases,
            pods,
            stop.clone(),
        )),
    ];
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// The Job, CronJob and DaemonSet controllers, with the informers only they use.
async fn batch(
    client: Client,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    stop: CancellationToken,
) {
    use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let jobs = Informer::start(Api::<Job>::all(client.clone()), stop.clone());
    let cron_jobs = Informer::start(Api::<CronJob>::all(client.clone()), stop.clone());
    let daemon_sets = Informer::start(Api::<DaemonSet>::all(client.clone()), stop.clone());
    let revisions = Informer::start(Api::<ControllerRevision>::all(client.clone()), stop.clone());
    tokio::join!(
        jobs.ready(),
        cron_jobs.ready(),
        daemon_sets.ready(),
        revisions.ready()
    );
    tokio::join!(
        job::run(client.clone(), jobs.clone(), pods.clone(), stop.clone()),
        cronjob::run(client.clone(), cron_jobs, jobs, stop.clone()),
        daemonset::run(client, daemon_sets, revisions, pods, nodes, stop),
    );
}
