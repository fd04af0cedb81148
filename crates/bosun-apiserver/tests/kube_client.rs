//! The API as the controllers use it: a kube::Client over the router.

mod common;

use std::time::Duration;

use common::TestApi;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(common::deployment(name, 1)).unwrap()
}

#[tokio::test]
async fn kube_client_crud_and_watcher() {
    let api = TestApi::new().await;
    let client = kube::Client::new(api.router.clone(), "default");
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());

    let created = deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let list = deploys.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    // Conflict surfaces as a kube error with code 409.
    let mut stale = created.clone();
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    stale.spec.as_mut().unwrap().replicas = Some(5);
    match deploys.replace("web", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("expected conflict, got {other:?}"),
    }

    // Scale through the scale subresource.
    let scale = deploys
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));

    // Status through /status.
    let st = deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 3, "observedGeneration": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().replicas, Some(3));

    // watcher: initial list then live events.
    let mut stream = watcher(deploys.clone(), watcher::Config::default()).boxed();
    let mut seen_init = false;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        if let watcher::Event::InitDone = ev.unwrap() {
            seen_init = true;
            break;
        }
    }
    assert!(seen_init);
    deploys
        .create(&PostParams::default(), &deployment("api"))
        .await
        .unwrap();
    let mut got = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        if let watcher::Event::Apply(d) = ev.unwrap() {
            got = d.metadata.name;
            break;
        }
    }
    assert_eq!(got.as_deref(), Some("api"));
    let del = deploys
        .delete("api", &DeleteParams::background())
        .await
        .unwrap();
    assert!(del.is_right(), "deployments answer a Status on deletion");
    let mut deleted = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        if let watcher::Event::Delete(d) = ev.unwrap() {
            deleted = d.metadata.name;
            break;
        }
    }
    assert_eq!(deleted.as_deref(), Some("api"));
}

#[tokio::test]
async fn kube_client_cluster_scoped_and_apply() {
    let api = TestApi::new().await;
    let client = kube::Client::new(api.router.clone(), "default");
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_string()));

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let cm: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "info"}, "data": {"a": "1"}})).unwrap();
    let applied = cms
        .patch(
            "info",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "1");
    let all: Api<ConfigMap> = Api::all(client);
    let listed = all.list(&ListParams::default().labels("")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let v = kube::Client::new(api.router.clone(), "default")
        .apiserver_version()
        .await
        .unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
}
