//! The scheduler against the real API server (in-process, redb store in a temporary dir).

use std::future::Future;
use std::time::Duration;

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_store::{RedbOptions, RedbStore};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn add_node(client: &Client, name: &str, cpu: &str, memory: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
        "labels": {"kubernetes.io/hostname": name}}}))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "runtimeClassName": "process",
        "containers": [{"name": "main", "command": ["/bin/sleep", "1000"],
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}}))
    .unwrap()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone().filter(|n| !n.is_empty())
}

#[tokio::test]
async fn binds_fitting_pods_and_reports_unschedulable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    let client = Client::new(server.router(), "default");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    add_node(&client, "small", "1", "1Gi").await;
    let (c, s) = (client.clone(), shutdown.clone());
    tokio::spawn(async move { bosun_scheduler::run(c, s).await.unwrap() });

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("fits", "600m"))
        .await
        .unwrap();
    let bound = eventually("binding", || async {
        node_of(&pods.get("fits").await.ok()?)
    })
    .await;
    assert_eq!(bound, "small");

    // 600m of 1 CPU is taken: 600m more does not fit.
    pods.create(&PostParams::default(), &pod("big", "600m"))
        .await
        .unwrap();
    let cond = eventually("Unschedulable condition", || async {
        let p = pods.get("big").await.ok()?;
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
    })
    .await;
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        cond.message.as_deref(),
        Some(
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        )
    );
    assert!(node_of(&pods.get("big").await.unwrap()).is_none());
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let failed = eventually("FailedScheduling event", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(failed.involved_object.name.as_deref(), Some("big"));

    // A new node with room: the pending pod is retried without being touched.
    add_node(&client, "large", "4", "8Gi").await;
    let bound = eventually("retry after node added", || async {
        node_of(&pods.get("big").await.ok()?)
    })
    .await;
    assert_eq!(bound, "large");
    // The event is written after the binding.
    eventually("Scheduled event for big", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Scheduled"))
            .find(|e| e.message.as_deref() == Some("Successfully assigned default/big to large"))
    })
    .await;

    // Pods for another scheduler are left alone.
    let mut other = pod("other", "10m");
    other.spec.as_mut().unwrap().scheduler_name = Some("custom".into());
    pods.create(&PostParams::default(), &other).await.unwrap();
    pods.create(&PostParams::default(), &pod("after", "10m"))
        .await
        .unwrap();
    eventually("later pod bound", || async {
        node_of(&pods.get("after").await.ok()?)
    })
    .await;
    assert!(node_of(&pods.get("other").await.unwrap()).is_none());
    assert_eq!(pods.get("other").await.unwrap().name_any(), "other");
}

#[tokio::test]
async fn back_to_back_pods_do_not_overcommit_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    let client = Client::new(server.router(), "default");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    add_node(&client, "a", "1", "4Gi").await;
    add_node(&client, "b", "1", "4Gi").await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    // Created before the scheduler starts, so they arrive together.
    for i in 0..4 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), "400m"))
            .await
            .unwrap();
    }
    let (c, s) = (client.clone(), shutdown.clone());
    tokio::spawn(async move { bosun_scheduler::run(c, s).await.unwrap() });
    let placed = eventually("all four bound", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        let nodes: Vec<String> = list.iter().filter_map(node_of).collect();
        (nodes.len() == 4).then_some(nodes)
    })
    .await;
    // 2 x 400m per 1-CPU node: exactly two each.
    assert_eq!(placed.iter().filter(|n| *n == "a").count(), 2);
    assert_eq!(placed.iter().filter(|n| *n == "b").count(), 2);
    pods.create(&PostParams::default(), &pod("p4", "400m"))
        .await
        .unwrap();
    let cond = eventually("fifth unschedulable", || async {
        pods.get("p4")
            .await
            .ok()?
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
    })
    .await;
    assert_eq!(
        cond.message.as_deref(),
        Some(
            "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        )
    );
}

async fn start() -> (Client, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    (
        Client::new(server.router(), "default"),
        CancellationToken::new(),
        dir,
    )
}

fn scheduler(client: &Client, shutdown: &CancellationToken) {
    let (c, s) = (client.clone(), shutdown.clone());
    tokio::spawn(async move { bosun_scheduler::run(c, s).await.unwrap() });
}

async fn condition(
    pods: &Api<Pod>,
    name: &str,
) -> Option<k8s_openapi::api::core::v1::PodCondition> {
    pods.get(name)
        .await
        .ok()?
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
}

#[tokio::test]
async fn anti_affinity_spreads_one_per_node_and_retries_when_a_pod_goes() {
    let (client, shutdown, _dir) = start().await;
    let _stop = shutdown.clone().drop_guard();
    add_node(&client, "a", "4", "8Gi").await;
    add_node(&client, "b", "4", "8Gi").await;
    scheduler(&client, &shutdown);
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let web = |name: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"runtimeClassName": "process",
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}},
                     "topologyKey": "kubernetes.io/hostname"}]}},
                "containers": [{"name": "main", "command": ["/bin/sleep", "1000"]}]}}))
        .unwrap()
    };
    for n in ["w0", "w1", "w2"] {
        pods.create(&PostParams::default(), &web(n)).await.unwrap();
    }
    let cond = eventually("one replica Pending", || async {
        for n in ["w0", "w1", "w2"] {
            if let Some(c) = condition(&pods, n).await {
                return Some((n, c));
            }
        }
        None
    })
    .await;
    assert_eq!(cond.1.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        cond.1.message.as_deref(),
        Some(
            "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        )
    );
    let mut placed = Vec::new();
    for n in ["w0", "w1", "w2"].into_iter().filter(|n| *n != cond.0) {
        placed.push((n, node_of(&pods.get(n).await.unwrap()).unwrap()));
    }
    assert_ne!(placed[0].1, placed[1].1);
    // One replica goes away: the pending one takes its node.
    pods.delete(
        placed[0].0,
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    let bound = eventually("pending replica bound after a pod left", || async {
        node_of(&pods.get(cond.0).await.ok()?)
    })
    .await;
    assert_eq!(bound, placed[0].1);
}

#[tokio::test]
async fn priority_classes_and_preemption() {
    let (client, shutdown, _dir) = start().await;
    let _stop = shutdown.clone().drop_guard();
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    // Built in, as in every Kubernetes cluster.
    assert_eq!(
        classes.get("system-node-critical").await.unwrap().value,
        2_000_001_000
    );
    assert_eq!(
        classes.get("system-cluster-critical").await.unwrap().value,
        2_000_000_000
    );
    for (name, value, default) in [("low", 100, true), ("high", 1000, false)] {
        let pc = serde_json::from_value(json!({"metadata": {"name": name}, "value": value,
            "globalDefault": default}))
        .unwrap();
        classes.create(&PostParams::default(), &pc).await.unwrap();
    }
    // Only one global default; user classes stay at or below one billion.
    let second: k8s_openapi::api::scheduling::v1::PriorityClass = serde_json::from_value(
        json!({"metadata": {"name": "other"}, "value": 5, "globalDefault": true}),
    )
    .unwrap();
    let err = classes
        .create(&PostParams::default(), &second)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("PriorityClass low is already marked as default"),
        "{err}"
    );
    let huge: k8s_openapi::api::scheduling::v1::PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "huge"}, "value": 2_000_000_000}))
            .unwrap();
    let err = classes
        .create(&PostParams::default(), &huge)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("maximum allowed value of a user defined priority is 1000000000"),
        "{err}"
    );

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut missing = pod("nope", "10m");
    missing.spec.as_mut().unwrap().priority_class_name = Some("missing".into());
    let err = pods
        .create(&PostParams::default(), &missing)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no PriorityClass with name missing was found"),
        "{err}"
    );
    let mut forged = pod("forged", "10m");
    forged.spec.as_mut().unwrap().priority_class_name = Some("high".into());
    forged.spec.as_mut().unwrap().priority = Some(7);
    let err = pods
        .create(&PostParams::default(), &forged)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the integer value of priority (7) must not be provided"),
        "{err}"
    );

    add_node(&client, "only", "1", "4Gi").await;
    scheduler(&client, &shutdown);
    // The global default applies to a pod without a class.
    let victim = pods
        .create(&PostParams::default(), &pod("victim", "800m"))
        .await
        .unwrap();
    let spec = victim.spec.as_ref().unwrap();
    assert_eq!(
        (spec.priority_class_name.as_deref(), spec.priority),
        (Some("low"), Some(100))
    );
    eventually("victim bound", || async {
        node_of(&pods.get("victim").await.ok()?)
    })
    .await;

    let mut vip = pod("vip", "800m");
    vip.spec.as_mut().unwrap().priority_class_name = Some("high".into());
    let vip = pods.create(&PostParams::default(), &vip).await.unwrap();
    assert_eq!(vip.spec.as_ref().unwrap().priority, Some(1000));
    // The victim is marked and deleted gracefully; the preemptor is nominated to its node.
    let doomed = eventually("victim terminating", || async {
        let p = pods.get("victim").await.ok()?;
        p.metadata.deletion_timestamp.is_some().then_some(p)
    })
    .await;
    let target = doomed
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("DisruptionTarget condition");
    assert_eq!(target.reason.as_deref(), Some("PreemptionByScheduler"));
    let nominated = eventually("nominated node", || async {
        pods.get("vip").await.ok()?.status?.nominated_node_name
    })
    .await;
    assert_eq!(nominated, "only");
    assert!(node_of(&pods.get("vip").await.unwrap()).is_none());
    // The kubelet's part: the victim's containers stopped, the pod is removed.
    pods.delete(
        "victim",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    let bound = eventually("preemptor bound", || async {
        node_of(&pods.get("vip").await.ok()?)
    })
    .await;
    assert_eq!(bound, "only");
    let events: Api<Event> = Api::default_namespaced(client.clone());
    eventually("Preempted event", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Preempted")
                    && e.involved_object.name.as_deref() == Some("victim")
            })
    })
    .await;

    // A lower-priority pod never preempts: it waits with upstream's message.
    let mut small = pod("small", "800m");
    small.spec.as_mut().unwrap().priority_class_name = Some("low".into());
    pods.create(&PostParams::default(), &small).await.unwrap();
    let cond = eventually("small pending", || async {
        condition(&pods, "small").await
    })
    .await;
    assert_eq!(
        cond.message.as_deref(),
        Some(
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        )
    );
}

async fn add_zoned_node(client: &Client, name: &str, zone: Option<&str>, cpu: &str) {
    add_node(client, name, cpu, "8Gi").await;
    if let Some(zone) = zone {
        let nodes: Api<Node> = Api::all(client.clone());
        let labels = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .unwrap();
    }
}

/// A pod owned by the ReplicaSet `rs` (no controller runs here: the owner is only a name).
fn replica(name: &str, rs: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": rs},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                "uid": format!("{rs}-0000"), "controller": true}]},
        "spec": {"runtimeClassName": "process",
            "containers": [{"name": "main", "command": ["/bin/sleep", "1000"],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}))
    .unwrap()
}

async fn per_node(pods: &Api<Pod>, rs: &str, want: usize) -> Vec<(String, usize)> {
    let placed = eventually("replicas bound", || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={rs}")))
            .await
            .ok()?
            .items;
        let nodes: Vec<String> = list.iter().filter_map(node_of).collect();
        (nodes.len() == want).then_some(nodes)
    })
    .await;
    let mut out: Vec<(String, usize)> = Vec::new();
    for n in ["server", "node-1", "node-2"] {
        out.push((n.into(), placed.iter().filter(|p| *p == n).count()));
    }
    out
}

/// Nodes join after the scheduler has started (as agents do), the first without a zone
/// label (the server's own node): a ReplicaSet's pods, all at once or one at a time, end
/// up evenly over the three.
#[tokio::test]
async fn replicas_spread_over_nodes_that_joined_after_the_start() {
    let (client, shutdown, _dir) = start().await;
    let _stop = shutdown.clone().drop_guard();
    scheduler(&client, &shutdown);
    // Let the scheduler list an empty cluster first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    add_zoned_node(&client, "server", None, "4").await;
    add_zoned_node(&client, "node-1", Some("zone-1"), "3750m").await;
    add_zoned_node(&client, "node-2", Some("zone-2"), "3750m").await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let even = vec![
        ("server".to_string(), 2),
        ("node-1".to_string(), 2),
        ("node-2".to_string(), 2),
    ];

    // All at once: most decisions see the earlier replicas only as assumed, not yet bound.
    let created: Vec<_> = (0..6)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &replica(&format!("all-{i}"), "all"))
                    .await
                    .unwrap()
            }
        })
        .collect();
    futures::future::join_all(created).await;
    assert_eq!(per_node(&pods, "all", 6).await, even);

    // One at a time, each bound before the next arrives.
    for i in 0..6 {
        pods.create(&PostParams::default(), &replica(&format!("one-{i}"), "one"))
            .await
            .unwrap();
        per_node(&pods, "one", i + 1).await;
    }
    assert_eq!(per_node(&pods, "one", 6).await, even);
}

#[tokio::test]
async fn a_preemptors_nominated_room_is_not_taken_by_a_pod_of_equal_priority() {
    let (client, shutdown, _dir) = start().await;
    let _stop = shutdown.clone().drop_guard();
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    let pc = serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1000})).unwrap();
    classes.create(&PostParams::default(), &pc).await.unwrap();
    add_node(&client, "only", "1", "4Gi").await;
    scheduler(&client, &shutdown);
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("victim", "800m"))
        .await
        .unwrap();
    eventually("victim bound", || async {
        node_of(&pods.get("victim").await.ok()?)
    })
    .await;
    let important = |name: &str| {
        let mut p = pod(name, "800m");
        p.spec.as_mut().unwrap().priority_class_name = Some("high".into());
        p
    };
    pods.create(&PostParams::default(), &important("vip"))
        .await
        .unwrap();
    let nominated = eventually("nominated node", || async {
        pods.get("vip").await.ok()?.status?.nominated_node_name
    })
    .await;
    assert_eq!(nominated, "only");
    // The victim's containers stopped; at once a pod of the same priority arrives, while
    // the preemptor is still in its back-off. The freed room is the preemptor's.
    pods.delete(
        "victim",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &important("late"))
        .await
        .unwrap();
    let bound = eventually("preemptor bound", || async {
        node_of(&pods.get("vip").await.ok()?)
    })
    .await;
    assert_eq!(bound, "only");
    let cond = eventually("late pod pending", || async {
        condition(&pods, "late").await
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(node_of(&pods.get("late").await.unwrap()).is_none());
}

#[tokio::test]
async fn preemption_evicts_a_pod_whose_anti_affinity_keeps_the_preemptor_out() {
    let (client, shutdown, _dir) = start().await;
    let _stop = shutdown.clone().drop_guard();
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    let pc = serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1000})).unwrap();
    classes.create(&PostParams::default(), &pc).await.unwrap();
    // Plenty of CPU: only the running pod's anti-affinity stands in the way.
    add_node(&client, "only", "8", "16Gi").await;
    scheduler(&client, &shutdown);
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let loner: Pod = serde_json::from_value(
        json!({"metadata": {"name": "loner", "labels": {"app": "loner"}},
        "spec": {"runtimeClassName": "process",
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}},
                 "topologyKey": "kubernetes.io/hostname"}]}},
            "containers": [{"name": "main", "command": ["/bin/sleep", "1000"]}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &loner).await.unwrap();
    eventually("loner bound", || async {
        node_of(&pods.get("loner").await.ok()?)
    })
    .await;
    let mut web = pod("web", "100m");
    web.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    web.spec.as_mut().unwrap().priority_class_name = Some("high".into());
    pods.create(&PostParams::default(), &web).await.unwrap();
    eventually("loner preempted", || async {
        let p = pods.get("loner").await.ok()?;
        p.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    let nominated = eventually("nominated node", || async {
        pods.get("web").await.ok()?.status?.nominated_node_name
    })
    .await;
    assert_eq!(nominated, "only");
    pods.delete("loner", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let bound = eventually("preemptor bound", || async {
        node_of(&pods.get("web").await.ok()?)
    })
    .await;
    assert_eq!(bound, "only");
}
