//! The endpoints controller against the real API server (in-process, redb in a temporary
//! directory). Pods are created bound to a node and given a status by hand, as an agent would.

use std::future::Future;
use std::time::Duration;

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_store::{RedbOptions, RedbStore};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    let client = Client::new(server.router(), "default");
    let shutdown = CancellationToken::new();
    let (c, stop) = (client.clone(), shutdown.child_token());
    tokio::spawn(async move { bosun_controllers::run(c, stop).await.unwrap() });
    Cluster {
        client,
        shutdown,
        _dir: dir,
    }
}

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

async fn running_pod(client: &Client, name: &str, app: &str, ip: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": "n1", "runtimeClassName": "process",
                 "containers": [{"name": "c", "command": ["sleep", "1"],
                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// (address, ready, serving, terminating) of the service's managed slices.
async fn slice_endpoints(client: &Client, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    let mut out: Vec<_> = slices
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|s| s.endpoints.clone())
        .map(|e| {
            let c = e.conditions.unwrap_or_default();
            (
                e.addresses[0].clone(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn endpoints_follow_pods_and_terminating_pods_leave_at_once() {
    let c = cluster().await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();

    // An empty slice appears first, owned by the service.
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let lp = ListParams::default().labels("kubernetes.io/service-name=web");
    let first = eventually("an empty slice", || async {
        slices.list(&lp).await.unwrap().items.into_iter().next()
    })
    .await;
    let labels = first.labels();
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpointslice-controller.k8s.io")
    );
    assert_eq!(first.owner_references()[0].uid, svc.uid().unwrap());

    running_pod(&c.client, "web-a", "web", "10.77.0.2", true).await;
    running_pod(&c.client, "web-b", "web", "10.77.0.3", false).await;
    running_pod(&c.client, "db", "db", "10.77.0.9", true).await;
    let want = vec![
        ("10.77.0.2".to_string(), true, true, false),
        ("10.77.0.3".to_string(), false, false, false),
    ];
    eventually("both web pods in the slice", || async {
        (slice_endpoints(&c.client, "web").await == want).then_some(())
    })
    .await;
    let s = &slices.list(&lp).await.unwrap().items[0];
    let port = &s.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(8080))
    );
    assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));

    // v1 Endpoints: ready and not-ready addresses.
    let endpoints: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    eventually("v1 endpoints", || async {
        let ep = endpoints.get_opt("web").await.unwrap()?;
        let subset = ep.subsets?.into_iter().next()?;
        let ready: Vec<String> = subset.addresses?.into_iter().map(|a| a.ip).collect();
        (ready == ["10.77.0.2"]).then_some(())
    })
    .await;

    // Graceful deletion of a pod bound to a node sets deletionTimestamp and leaves the pod to
    // its agent; the endpoint must turn terminating right away.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    pods.delete("web-a", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        pods.get("web-a")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let want = vec![
        ("10.77.0.2".to_string(), false, true, true),
        ("10.77.0.3".to_string(), false, false, false),
    ];
    eventually("the deleted pod marked terminating", || async {
        (slice_endpoints(&c.client, "web").await == want).then_some(())
    })
    .await;
    eventually("the terminating pod out of v1 endpoints", || async {
        let ep = endpoints.get("web").await.unwrap();
        let addrs: Vec<String> = ep
            .subsets
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| a.ip)
            .collect();
        addrs.is_empty().then_some(())
    })
    .await;

    // Relabelling a pod out of the selector removes it.
    pods.patch(
        "web-b",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    let want = vec![("10.77.0.2".to_string(), false, true, true)];
    eventually("the relabelled pod gone", || async {
        (slice_endpoints(&c.client, "web").await == want).then_some(())
    })
    .await;

    // Deleting the service collects its slices and endpoints.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("slices collected", || async {
        slices
            .list(&lp)
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    eventually("endpoints collected", || async {
        endpoints
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn headless_services_get_slices() {
    let c = cluster().await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    running_pod(&c.client, "db-0", "db", "10.77.1.5", true).await;
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let lp = ListParams::default().labels("kubernetes.io/service-name=db");
    let s = eventually("the headless slice", || async {
        slices
            .list(&lp)
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|s| !s.endpoints.is_empty())
    })
    .await;
    assert!(s.labels().contains_key("service.kubernetes.io/headless"));
    assert_eq!(s.endpoints[0].addresses, ["10.77.1.5"]);
    assert_eq!(
        s.endpoints[0].target_ref.as_ref().unwrap().name.as_deref(),
        Some("db-0")
    );
    assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(5432));
}

/// Requests the API server counted for endpointslices, by verb (its `/metrics`).
async fn slice_requests(client: &Client) -> std::collections::BTreeMap<String, u64> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        if !rest.contains("resource=\"endpointslices\"") || !rest.contains("subresource=\"\"") {
            continue;
        }
        let verb = rest
            .split("verb=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap_or_default();
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let code = rest
            .split("code=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap_or_default();
        *out.entry(verb.to_string()).or_default() += n;
        *out.entry(format!("{verb} {code}")).or_default() += n;
    }
    out
}

/// The ready addresses of the service's v1 Endpoints (read with GET: no slice requests).
async fn ready_addresses(client: &Client, svc: &str) -> Vec<String> {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eps.get_opt(svc)
        .await
        .unwrap()
        .and_then(|e| e.subsets)
        .into_iter()
        .flatten()
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .collect()
}

#[tokio::test]
async fn a_pod_readiness_change_is_one_slice_write_from_the_cache() {
    let c = cluster().await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "cold"},
        "spec": {"selector": {"app": "cold"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    running_pod(&c.client, "cold-a", "cold", "10.77.2.2", false).await;
    eventually("the pod in the slice, not ready", || async {
        let want = vec![("10.77.2.2".to_string(), false, false, false)];
        (slice_endpoints(&c.client, "cold").await == want).then_some(())
    })
    .await;
    // The v1 Endpoints are written after the slices: once they list the pod, the slice
    // writes of that pass are done.
    let eps: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    eventually("the pod in the Endpoints", || async {
        let e = eps.get_opt("cold").await.unwrap()?;
        e.subsets?
            .iter()
            .any(|s| {
                s.not_ready_addresses
                    .as_ref()
                    .is_some_and(|a| !a.is_empty())
            })
            .then_some(())
    })
    .await;
    let before = slice_requests(&c.client).await;

    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for ready in [true, false, true] {
        let status = json!({"status": {"conditions": [
            {"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        pods.patch_status("cold-a", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        let want: Vec<String> = if ready {
            vec!["10.77.2.2".into()]
        } else {
            Vec::new()
        };
        eventually("the Endpoints to follow the pod's readiness", || async {
            (ready_addresses(&c.client, "cold").await == want).then_some(())
        })
        .await;
    }
    let after = slice_requests(&c.client).await;
    let n = |m: &std::collections::BTreeMap<String, u64>, v: &str| m.get(v).copied().unwrap_or(0);
    // Each change is a write against the informer's copy: no list of slices, and no read
    // but the garbage collector's one look at each changed object (a read before each
    // write would make two per write).
    let grew = |v: &str| n(&after, v) - n(&before, v);
    assert_eq!(grew("LIST"), 0, "{before:?} -> {after:?}");
    assert!(grew("PUT") >= 3, "{before:?} -> {after:?}");
    assert!(grew("GET") <= grew("PUT"), "{before:?} -> {after:?}");
    let s = slice_endpoints(&c.client, "cold").await;
    assert_eq!(s, [("10.77.2.2".to_string(), true, true, false)]);
}
