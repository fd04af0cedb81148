//! The controllers against the real API server (in-process, over a redb store in a temporary
//! directory). A small stand-in kubelet marks pods Running and Ready, since no agent runs here.

use std::future::Future;
use std::time::Duration;

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_controllers::ControllerConfig;
use bosun_store::{RedbOptions, RedbStore};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Cluster {
    client: Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn cluster(cfg: ControllerConfig) -> Cluster {
    let c = api_only().await;
    start_controllers(&c.client, cfg, c.shutdown.child_token());
    c
}

/// The API server without controllers.
async fn api_only() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    Cluster {
        client: Client::new(server.router(), "default"),
        shutdown: CancellationToken::new(),
        _dir: dir,
    }
}

fn start_controllers(
    client: &Client,
    cfg: ControllerConfig,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let c = client.clone();
    tokio::spawn(async move { bosun_controllers::run_with(c, cfg, stop).await.unwrap() })
}

/// Polls `f` until it returns `Some`, failing the test after a generous limit.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Marks every pending pod Running and Ready, as a kubelet would once containers start.
fn fake_kubelet(client: Client, stop: CancellationToken) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        while !stop.is_cancelled() {
            for p in pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Running");
                if ready || p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap());
                let now = jiff::Timestamp::now().to_string();
                let status = json!({"status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
                ]}});
                let _ = api
                    .patch_status(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

fn deployment(name: &str, replicas: i32, arg: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"kubernetes.io/change-cause": arg}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "containers": [{"name": "main", "command": ["/bin/sleep", arg]}]
                }
            }
        }
    }))
    .unwrap()
}

/// `kubectl rollout status` says "successfully rolled out".
fn rolled_out(d: &Deployment) -> bool {
    let (Some(spec), Some(st)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    let timed_out = st.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    st.observed_generation >= d.metadata.generation
        && st.updated_replicas.unwrap_or(0) >= want
        && st.replicas.unwrap_or(0) == st.updated_replicas.unwrap_or(0)
        && st.available_replicas.unwrap_or(0) >= st.updated_replicas.unwrap_or(0)
        && !timed_out
}

async fn owned_pods(client: &Client, app: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test]
async fn deployment_rolls_out_updates_and_rolls_back() {
    let c = cluster(ControllerConfig::default()).await;
    fake_kubelet(c.client.clone(), c.shutdown.clone());
    let deps: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    deps.create(&PostParams::default(), &deployment("web", 3, "v1"))
        .await
        .unwrap();

    let d = eventually("first rollout", || async {
        deps.get("web").await.ok().filter(rolled_out)
    })
    .await;
    let st = d.status.as_ref().unwrap();
    assert_eq!(
        (st.replicas, st.ready_replicas, st.available_replicas),
        (Some(3), Some(3), Some(3))
    );
    let conds = st.conditions.as_ref().unwrap();
    assert!(conds.iter().any(|c| c.type_ == "Available"
        && c.status == "True"
        && c.reason.as_deref() == Some("MinimumReplicasAvailable")));
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Progressing"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    );

    let pods = owned_pods(&c.client, "web").await;
    assert_eq!(pods.len(), 3);
    let rs1 = rss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .remove(0);
    for p in &pods {
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, rs1.uid().unwrap());
        assert_eq!(owner.block_owner_deletion, Some(true));
        let suffix = p
            .name_any()
            .strip_prefix(&format!("{}-", rs1.name_any()))
            .unwrap()
            .to_string();
        assert_eq!(suffix.len(), 5, "pod name {}", p.name_any());
    }

    // A deleted pod is replaced.
    let victim = pods[0].name_any();
    Api::<Pod>::default_namespaced(c.client.clone())
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    eventually("replacement pod", || async {
        let now = owned_pods(&c.client, "web").await;
        (now.len() == 3 && now.iter().all(|p| p.name_any() != victim)).then_some(())
    })
    .await;

    // Update the template: a second RS takes over.
    let patch = json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "v2"}},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "command": ["/bin/sleep", "v2"]}]}}}});
    deps.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("second rollout", || async {
        let d = deps.get("web").await.ok()?;
        let rs = rss.list(&ListParams::default()).await.ok()?.items;
        (rolled_out(&d)
            && rs.len() == 2
            && rs
                .iter()
                .filter(|r| r.spec.as_ref().unwrap().replicas == Some(0))
                .count()
                == 1)
            .then_some(())
    })
    .await;
    let rs = rss.list(&ListParams::default()).await.unwrap().items;
    let rev = |r: &ReplicaSet| {
        r.annotations()
            .get("deployment.kubernetes.io/revision")
            .cloned()
            .unwrap_or_default()
    };
    let v2 = rs.iter().find(|r| rev(r) == "2").expect("revision 2");
    assert_eq!(
        v2.annotations()
            .get("kubernetes.io/change-cause")
            .map(String::as_str),
        Some("v2")
    );
    assert_eq!(v2.spec.as_ref().unwrap().replicas, Some(3));

    // Undo (what `kubectl rollout undo` does): put revision 1's template back.
    let mut tmpl = rs1.spec.as_ref().unwrap().template.clone().unwrap();
    tmpl.metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .remove("pod-template-hash");
    let undo = json!({"spec": {"template": tmpl}});
    deps.patch("web", &PatchParams::default(), &Patch::Merge(&undo))
        .await
        .unwrap();
    eventually("rollback", || async {
        let d = deps.get("web").await.ok()?;
        let back = rss.get(&rs1.name_any()).await.ok()?;
        (rolled_out(&d) && rev(&back) == "3" && back.spec.as_ref()?.replicas == Some(3))
            .then_some(())
    })
    .await;
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    let events: Api<Event> = Api::default_namespaced(c.client.clone());
    let msgs: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    assert!(
        msgs.iter()
            .any(|m| *m == format!("Scaled up replica set {} from 0 to 3", rs1.name_any())),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with(&format!("Created pod: {}-", rs1.name_any())))
    );
}

#[tokio::test]
async fn scaling_creates_and_deletes_pods() {
    let c = cluster(ControllerConfig::default()).await;
    let deps: Api<Deployment> = Api::default_namespaced(c.client.clone());
    deps.create(&PostParams::default(), &deployment("api", 2, "v1"))
        .await
        .unwrap();
    eventually("2 pods", || async {
        (owned_pods(&c.client, "api").await.len() == 2).then_some(())
    })
    .await;
    deps.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    eventually("5 pods", || async {
        (owned_pods(&c.client, "api").await.len() == 5).then_some(())
    })
    .await;
    deps.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually("1 pod", || async {
        (owned_pods(&c.client, "api").await.len() == 1).then_some(())
    })
    .await;
    let d = eventually("status", || async {
        deps.get("api")
            .await
            .ok()
            .filter(|d| d.status.as_ref().and_then(|s| s.replicas) == Some(1))
    })
    .await;
    assert_eq!(
        d.status.unwrap().available_replicas,
        Some(0),
        "no kubelet: nothing is ready"
    );
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to be deleted"), || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await
}

#[tokio::test]
async fn garbage_collection_background_foreground_orphan() {
    let c = cluster(ControllerConfig::default()).await;
    let deps: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());

    // Background: the deployment goes at once, its RS and pods follow.
    deps.create(&PostParams::default(), &deployment("bg", 2, "v1"))
        .await
        .unwrap();
    eventually("bg pods", || async {
        (owned_pods(&c.client, "bg").await.len() == 2).then_some(())
    })
    .await;
    deps.delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    eventually("bg dependents gone", || async {
        let rs = rss
            .list(&ListParams::default().labels("app=bg"))
            .await
            .ok()?
            .items;
        (rs.is_empty() && owned_pods(&c.client, "bg").await.is_empty()).then_some(())
    })
    .await;

    // Foreground: the deployment stays (with the finalizer) until its dependents are gone.
    deps.create(&PostParams::default(), &deployment("fg", 2, "v1"))
        .await
        .unwrap();
    eventually("fg pods", || async {
        (owned_pods(&c.client, "fg").await.len() == 2).then_some(())
    })
    .await;
    deps.delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_gone(&deps, "fg").await;
    assert!(
        rss.list(&ListParams::default().labels("app=fg"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(owned_pods(&c.client, "fg").await.is_empty());

    // Orphan: the RS goes, its pods stay without the owner reference.
    deps.create(&PostParams::default(), &deployment("or", 2, "v1"))
        .await
        .unwrap();
    eventually("or pods", || async {
        (owned_pods(&c.client, "or").await.len() == 2).then_some(())
    })
    .await;
    deps.delete("or", &DeleteParams::orphan()).await.unwrap();
    wait_gone(&deps, "or").await;
    let rs = rss
        .list(&ListParams::default().labels("app=or"))
        .await
        .unwrap()
        .items;
    assert_eq!(rs.len(), 1, "orphaned RS survives");
    assert!(
        rs[0]
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())
    );
    let rs_name = rs[0].name_any();
    rss.delete(
        &rs_name,
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_gone(&rss, &rs_name).await;
    let pods = owned_pods(&c.client, "or").await;
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| {
        p.metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())
    }));

    // A dependent created for an owner that no longer exists is collected.
    let cms: Api<ConfigMap> = Api::default_namespaced(c.client.clone());
    let dangling: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "dangling", "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "ghost",
            "uid": "00000000-0000-0000-0000-000000000000"}]}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &dangling).await.unwrap();
    wait_gone(&cms, "dangling").await;
}

#[tokio::test]
async fn namespace_deletion_empties_and_finalizes() {
    let c = cluster(ControllerConfig::default()).await;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap(),
    )
    .await
    .unwrap();
    let deps: Api<Deployment> = Api::namespaced(c.client.clone(), "team-a");
    deps.create(&PostParams::default(), &deployment("svc", 2, "v1"))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "team-a");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}})).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "team-a");
    eventually("pods in team-a", || async {
        (pods.list(&ListParams::default()).await.ok()?.items.len() == 2).then_some(())
    })
    .await;
    nss.delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&nss, "team-a").await;
    assert!(
        cms.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn silent_node_goes_unknown_and_loses_its_pods() {
    let cfg = ControllerConfig {
        node_monitor_grace_period: Duration::from_millis(600),
        pod_eviction_timeout: Duration::from_millis(600),
        ..Default::default()
    };
    let c = cluster(cfg).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})),
        )
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "n1"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}}))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    // A second node that stays healthy: with no Ready node left nothing would be evicted.
    let n2: Node = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
    nodes.create(&PostParams::default(), &n2).await.unwrap();
    nodes
        .patch_status(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})),
        )
        .await
        .unwrap();
    let renewer = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                let t = jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                let l: Lease = serde_json::from_value(json!({"metadata": {"name": "n2"},
                    "spec": {"holderIdentity": "n2", "leaseDurationSeconds": 40, "renewTime": t}}))
                .unwrap();
                if leases
                    .replace("n2", &PostParams::default(), &l)
                    .await
                    .is_err()
                {
                    let _ = leases.create(&PostParams::default(), &l).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "on-n1"},
        "spec": {"nodeName": "n1", "runtimeClassName": "process", "terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "command": ["/bin/true"]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let ready = |n: &Node| {
        n.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")
            .cloned()
    };
    let cond = eventually("node Unknown", || async {
        let n = nodes.get("n1").await.ok()?;
        ready(&n).filter(|c| c.status == "Unknown")
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        cond.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    eventually("unreachable taint", || async {
        let n = nodes.get("n1").await.ok()?;
        n.spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
            .then_some(())
    })
    .await;
    wait_gone(&pods, "on-n1").await;
    let n2 = nodes.get("n2").await.unwrap();
    assert!(
        n2.spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty()
    );
    renewer.abort();
}

#[tokio::test]
async fn restarted_controllers_pick_up_existing_state_without_duplicates() {
    let c = api_only().await;
    let deps: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    // Created while no controller runs.
    deps.create(&PostParams::default(), &deployment("early", 3, "v1"))
        .await
        .unwrap();
    let first = c.shutdown.child_token();
    let handle = start_controllers(&c.client, ControllerConfig::default(), first.clone());
    eventually("3 pods", || async {
        (owned_pods(&c.client, "early").await.len() == 3).then_some(())
    })
    .await;

    // Stop the controllers, change things behind their back, start fresh ones.
    first.cancel();
    handle.await.unwrap();
    deps.patch(
        "early",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .unwrap();
    let victim = owned_pods(&c.client, "early").await[0].name_any();
    Api::<Pod>::default_namespaced(c.client.clone())
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    start_controllers(
        &c.client,
        ControllerConfig::default(),
        c.shutdown.child_token(),
    );
    eventually("4 pods after restart", || async {
        let pods = owned_pods(&c.client, "early").await;
        (pods.len() == 4 && pods.iter().all(|p| p.name_any() != victim)).then_some(())
    })
    .await;
    // Settled: still exactly one RS and four pods a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    assert_eq!(owned_pods(&c.client, "early").await.len(), 4);
}

#[tokio::test]
async fn repeated_events_are_aggregated() {
    let c = api_only().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.client.clone());
    let cm = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "subject"}})).unwrap(),
        )
        .await
        .unwrap();
    let rec = bosun_controllers::events::Recorder::new(c.client.clone(), "test-controller");
    rec.record(&cm, "Warning", "Flapping", "it flaps").await;
    rec.record(&cm, "Warning", "Flapping", "it flaps").await;
    rec.record(&cm, "Warning", "Flapping", "it flaps").await;
    rec.record(&cm, "Normal", "Other", "something else").await;
    let events: Vec<Event> = Api::<Event>::default_namespaced(c.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 2, "{events:?}");
    let flap = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("Flapping"))
        .unwrap();
    assert_eq!(flap.count, Some(3));
    assert!(flap.last_timestamp.as_ref().unwrap().0 >= flap.first_timestamp.as_ref().unwrap().0);
    assert_eq!(
        flap.source.as_ref().unwrap().component.as_deref(),
        Some("test-controller")
    );
    assert_eq!(flap.reporting_component.as_deref(), Some("test-controller"));
    assert_eq!(flap.involved_object.kind.as_deref(), Some("ConfigMap"));
    assert_eq!(flap.involved_object.uid, cm.uid());
}

#[tokio::test]
async fn pods_bound_to_a_missing_node_are_removed_and_replaced() {
    let cfg = ControllerConfig {
        node_monitor_grace_period: Duration::from_millis(300),
        pod_eviction_timeout: Duration::from_secs(300),
        ..Default::default()
    };
    let c = cluster(cfg).await;
    let deps: Api<Deployment> = Api::default_namespaced(c.client.clone());
    deps.create(&PostParams::default(), &deployment("orph", 1, "v1"))
        .await
        .unwrap();
    let pod = eventually("pod", || async {
        owned_pods(&c.client, "orph").await.into_iter().next()
    })
    .await;
    // Bind it to a node that does not exist (as if the node had been deleted).
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name_any()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "ghost"}});
    let _: serde_json::Value = pods
        .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
        .await
        .unwrap();
    wait_gone(&pods, &pod.name_any()).await;
    eventually("replacement", || async {
        let now = owned_pods(&c.client, "orph").await;
        (now.len() == 1 && now[0].name_any() != pod.name_any()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_last_node_keeps_its_pods_when_it_goes_silent() {
    let cfg = ControllerConfig {
        node_monitor_grace_period: Duration::from_millis(300),
        ..Default::default()
    };
    let c = cluster(cfg).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "only"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            "only",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "on-only"},
        "spec": {"nodeName": "only", "runtimeClassName": "process", "containers": [{"name": "c", "command": ["/bin/true"]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually("node Unknown", || async {
        let n = nodes.get("only").await.ok()?;
        n.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown")
            .then_some(())
    })
    .await;
    // Past the default toleration (5 s): with nowhere to go, nothing is evicted or tainted.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let p = pods.get("on-only").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_none());
    let n = nodes.get("only").await.unwrap();
    assert!(n.spec.and_then(|s| s.taints).unwrap_or_default().is_empty());
}

/// Requests the API server counted (its `/metrics`) for one verb and resource.
async fn request_count(client: &Client, verb: &str, resource: &str) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    let (verb, resource) = (
        format!("verb=\"{verb}\""),
        format!("resource=\"{resource}\""),
    );
    text.lines()
        .filter_map(|l| l.strip_prefix("apiserver_request_total{"))
        .filter(|l| l.contains(&verb) && l.contains(&resource))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn scaling_works_from_the_informers_replica_sets() {
    let c = cluster(ControllerConfig::default()).await;
    let deps: Api<Deployment> = Api::default_namespaced(c.client.clone());
    deps.create(&PostParams::default(), &deployment("wake", 1, "v1"))
        .await
        .unwrap();
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let rs = eventually("the ReplicaSet", || async {
        rss.list(&ListParams::default().labels("app=wake"))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    eventually("1 pod", || async {
        (owned_pods(&c.client, "wake").await.len() == 1).then_some(())
    })
    .await;
    let lists = request_count(&c.client, "LIST", "replicasets").await;
    // Down to zero and back, as scale to zero does: each scale is the ReplicaSet write.
    for n in [0, 2, 1] {
        deps.patch(
            "wake",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await
        .unwrap();
        eventually("the ReplicaSet scaled", || async {
            let r = rss.get(&rs.name_any()).await.unwrap();
            (r.spec.and_then(|s| s.replicas) == Some(n)).then_some(())
        })
        .await;
        eventually("the pods", || async {
            (owned_pods(&c.client, "wake").await.len() == n as usize).then_some(())
        })
        .await;
    }
    assert_eq!(
        request_count(&c.client, "LIST", "replicasets").await,
        lists,
        "the deployment controller listed ReplicaSets from the API"
    );
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}
