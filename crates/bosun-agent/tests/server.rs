//! The logs endpoint over real container logs: follow until exit, previous, tail, auth.

mod common;

use std::time::Duration;

use axum::body::Body;
use bosun_agent::runtime::{ContainerKey, ContainerLaunch, ProcessRuntime, Runtime, RuntimeState};
use bosun_agent::server::{ServerState, router};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get(state: &ServerState, uri: &str, token: Option<&str>) -> (u16, String) {
    let mut req = http::Request::get(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(15), resp.into_body().collect())
        .await
        .expect("response body ends")
        .unwrap()
        .to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn container_logs_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let rt = ProcessRuntime::new(pods.clone(), common::shim_exe());
    let uid = common::uuid_like();
    std::fs::create_dir_all(pods.join(&uid)).unwrap();
    std::fs::write(
        pods.join(&uid).join("pod.json"),
        serde_json::json!({"namespace": "default", "name": "p", "uid": uid}).to_string(),
    )
    .unwrap();
    let key = |attempt| ContainerKey {
        pod_uid: uid.clone(),
        container: "c".into(),
        attempt,
    };
    let sh = |s: &str| ContainerLaunch {
        argv: vec!["/bin/sh".into(), "-c".into(), s.into()],
        ..Default::default()
    };
    rt.create(&key(0), &sh("echo a0; exit 1")).await.unwrap();
    rt.start(&key(0)).await.unwrap();
    while !matches!(
        rt.status(&key(0)).await.unwrap(),
        RuntimeState::Exited { .. }
    ) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.create(
        &key(1),
        &sh("for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done"),
    )
    .await
    .unwrap();
    rt.start(&key(1)).await.unwrap();
    let state = ServerState::new(pods.clone(), "tok", "node-a");
    let (code, stats) = get(&state, "/stats/summary", Some("tok")).await;
    assert_eq!(code, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["node"]["nodeName"], "node-a");
    assert_eq!(stats["pods"][0]["podRef"]["name"], "p");
    assert_eq!(stats["pods"][0]["containers"][0]["name"], "c");
    assert!(
        stats["pods"][0]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let base = "/containerLogs/default/p/c";
    // Follow streams until the container exits, then ends.
    let (code, body) = get(&state, &format!("{base}?follow=true"), Some("tok")).await;
    assert_eq!(code, 200);
    assert_eq!(body, "line1\nline2\nline3\nline4\nline5\n");
    assert_eq!(
        get(&state, &format!("{base}?previous=true"), Some("tok"))
            .await
            .1,
        "a0\n"
    );
    assert_eq!(
        get(&state, &format!("{base}?tailLines=2"), Some("tok"))
            .await
            .1,
        "line4\nline5\n"
    );
    assert_eq!(
        get(&state, &format!("{base}?limitBytes=8"), Some("tok"))
            .await
            .1,
        "line1\nli"
    );
    assert_eq!(
        get(&state, &format!("{base}?sinceSeconds=3600"), Some("tok"))
            .await
            .1
            .lines()
            .count(),
        5
    );
    assert_eq!(
        get(&state, &format!("{base}?follow=maybe"), Some("tok"))
            .await
            .0,
        400
    );
    assert_eq!(get(&state, base, None).await.0, 401);
    assert_eq!(get(&state, base, Some("wrong")).await.0, 401);
    assert_eq!(
        get(&state, "/containerLogs/default/p/other", Some("tok"))
            .await
            .0,
        400
    );
    assert_eq!(
        get(&state, "/containerLogs/default/q/c", Some("tok"))
            .await
            .0,
        404
    );
    assert_eq!(get(&state, "/healthz", None).await, (200, "ok".into()));
    rt.remove_pod(&uid).await.unwrap();
}
