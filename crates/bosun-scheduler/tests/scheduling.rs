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
        Some("0/1 nodes are available: 1 Insufficient cpu.")
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
    let scheduled = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .filter_map(|e| e.message)
        .collect::<Vec<_>>();
    assert!(
        scheduled.contains(&"Successfully assigned default/big to large".to_string()),
        "{scheduled:?}"
    );

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
        Some("0/2 nodes are available: 2 Insufficient cpu.")
    );
}
