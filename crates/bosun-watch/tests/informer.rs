//! The informer against the real API server (in-process, redb in a temporary directory).

use std::sync::Arc;
use std::time::Duration;

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_store::{RedbOptions, RedbStore};
use bosun_watch::{Informer, Notice};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn client() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    (Client::new(server.router(), "default"), dir)
}

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

/// The next notice, as "touched NAME" or "synced".
async fn next<S: Stream<Item = Notice<ConfigMap>> + Unpin>(s: &mut S) -> String {
    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
        Ok(Some(Notice::Touched(o))) => format!("touched {}", o.name_any()),
        Ok(Some(Notice::Synced)) => "synced".into(),
        Ok(None) => "end".into(),
        Err(_) => "timeout".into(),
    }
}

#[tokio::test]
async fn notices_existing_objects_then_synced_then_changes_and_deletions() {
    let (client, _dir) = client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &config_map("a", json!({})))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let inf = Informer::start(api.clone(), stop.clone());
    let mut n = Box::pin(inf.notices());
    assert_eq!(next(&mut n).await, "touched a");
    assert_eq!(next(&mut n).await, "synced");

    let b = api
        .create(&PostParams::default(), &config_map("b", json!({})))
        .await
        .unwrap();
    assert_eq!(next(&mut n).await, "touched b");
    assert!(inf.current(&b).is_some());

    api.delete("b", &DeleteParams::default()).await.unwrap();
    assert_eq!(next(&mut n).await, "touched b");
    assert!(inf.current(&b).is_none(), "a deleted object is not current");

    // A new object of the same name is another object.
    api.create(&PostParams::default(), &config_map("b", json!({})))
        .await
        .unwrap();
    assert_eq!(next(&mut n).await, "touched b");
    assert!(inf.current(&b).is_none());

    // A late subscriber hears the cache, then that it is complete.
    let mut late = Box::pin(inf.notices());
    let mut first = vec![next(&mut late).await, next(&mut late).await];
    first.sort();
    assert_eq!(first, ["touched a", "touched b"]);
    assert_eq!(next(&mut late).await, "synced");

    // subscribe() is the touched objects alone.
    let names: Vec<String> = inf
        .subscribe()
        .take(2)
        .map(|o: Arc<ConfigMap>| o.name_any())
        .collect()
        .await;
    assert_eq!(names.len(), 2);
    stop.cancel();
}

#[tokio::test]
async fn selectors_narrow_the_cache_and_ready_waits_for_the_list() {
    let (client, _dir) = client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, app) in [("x", "web"), ("y", "db")] {
        api.create(
            &PostParams::default(),
            &config_map(name, json!({"app": app})),
        )
        .await
        .unwrap();
    }
    let stop = CancellationToken::new();
    let inf = Informer::start_config(
        api.clone(),
        watcher::Config::default().labels("app=web"),
        stop.clone(),
    );
    tokio::time::timeout(Duration::from_secs(10), inf.ready())
        .await
        .unwrap();
    let names: Vec<String> = inf.store().state().iter().map(|o| o.name_any()).collect();
    assert_eq!(names, ["x"]);
    stop.cancel();
}

#[tokio::test]
async fn a_changed_object_is_notified_as_the_cached_copy() {
    let (client, _dir) = client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let stop = CancellationToken::new();
    let inf = Informer::start(api.clone(), stop.clone());
    let mut n = Box::pin(inf.notices());
    assert_eq!(next(&mut n).await, "synced");
    let c = api
        .create(&PostParams::default(), &config_map("c", json!({"k": "v"})))
        .await
        .unwrap();
    let touched = match tokio::time::timeout(Duration::from_secs(10), n.next()).await {
        Ok(Some(Notice::Touched(o))) => o,
        other => panic!("expected a notice for c, got {other:?}"),
    };
    assert_eq!(touched.labels().get("k").map(String::as_str), Some("v"));
    // One copy per object: subscribers share the cache's.
    let cached = inf.current(&c).expect("c is cached");
    assert!(Arc::ptr_eq(&touched, &cached));
    stop.cancel();
}
