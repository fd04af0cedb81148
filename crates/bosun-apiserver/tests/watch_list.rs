//! Lists (paging, selectors, resourceVersion) and watches (replay, selectors,
//! bookmarks, expiry) through real HTTP requests on the router.

mod common;

use common::{TestApi, configmap, pod};
use http::StatusCode;
use serde_json::json;

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn list_paging_with_continue() {
    let api = TestApi::new().await;
    for i in 0..7 {
        api.post(
            CMS,
            &configmap(&format!("c{i}"), json!({"i": i.to_string()})),
        )
        .await;
    }
    let first = api.get(&format!("{CMS}?limit=3")).await;
    assert_eq!(first.status, StatusCode::OK);
    let rv = first.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut names: Vec<String> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().into())
        .collect();
    let mut cont = first.body["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    // A write between pages does not show up: pages come from one snapshot.
    api.post(CMS, &configmap("c9", json!({}))).await;
    loop {
        let page = api.get(&format!("{CMS}?limit=3&continue={cont}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_eq!(page.body["metadata"]["resourceVersion"], rv.as_str());
        names.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page.body["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => cont = c.to_string(),
            _ => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("c{i}")).collect::<Vec<_>>());
    let bad = api.get(&format!("{CMS}?limit=3&continue=garbage")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn list_selectors() {
    let api = TestApi::new().await;
    api.post(CMS, &configmap("a", json!({"app": "web", "tier": "fe"})))
        .await;
    api.post(CMS, &configmap("b", json!({"app": "web", "tier": "be"})))
        .await;
    api.post(CMS, &configmap("c", json!({"app": "db"}))).await;
    let names = |r: &common::Resp| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = api.get(&format!("{CMS}?labelSelector=app%3Dweb")).await;
    assert_eq!(names(&r), ["a", "b"]);
    let r = api
        .get(&format!("{CMS}?labelSelector=app%3D%3Dweb,tier!%3Dfe"))
        .await;
    assert_eq!(names(&r), ["b"]);
    let r = api
        .get(&format!("{CMS}?labelSelector=tier%20in%20(fe,xx)"))
        .await;
    assert_eq!(names(&r), ["a"]);
    let r = api
        .get(&format!("{CMS}?labelSelector=tier%20notin%20(fe)"))
        .await;
    assert_eq!(names(&r), ["b", "c"]);
    let r = api.get(&format!("{CMS}?labelSelector=!tier")).await;
    assert_eq!(names(&r), ["c"]);
    let r = api.get(&format!("{CMS}?labelSelector=tier")).await;
    assert_eq!(names(&r), ["a", "b"]);
    let r = api
        .get(&format!("{CMS}?fieldSelector=metadata.name%3Db"))
        .await;
    assert_eq!(names(&r), ["b"]);
    let r = api
        .get(&format!(
            "{CMS}?fieldSelector=metadata.name!%3Db,metadata.namespace%3Ddefault"
        ))
        .await;
    assert_eq!(names(&r), ["a", "c"]);
    // Limit counts matching items only.
    let r = api
        .get(&format!("{CMS}?labelSelector=app%3Dweb&limit=1"))
        .await;
    assert_eq!(names(&r), ["a"]);
    assert!(r.body["metadata"]["continue"].is_string());
    let r = api.get(&format!("{CMS}?labelSelector=a%20b")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let mut p = pod("on-n1");
    p["spec"]["nodeName"] = json!("n1");
    api.post(PODS, &p).await;
    api.post(PODS, &pod("unbound")).await;
    let r = api
        .get(&format!("{PODS}?fieldSelector=spec.nodeName%3Dn1"))
        .await;
    assert_eq!(names(&r), ["on-n1"]);
    let r = api
        .get(&format!("{PODS}?fieldSelector=spec.nodeName%3D"))
        .await;
    assert_eq!(names(&r), ["unbound"]);
}

#[tokio::test]
async fn list_at_exact_revision() {
    let api = TestApi::new().await;
    let a = api.post(CMS, &configmap("a", json!({}))).await.body;
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.post(CMS, &configmap("b", json!({}))).await;
    let r = api
        .get(&format!(
            "{CMS}?resourceVersion={rv}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = api.get(&format!("{CMS}?resourceVersion=0")).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn watch_sends_state_then_changes() {
    let api = TestApi::new().await;
    api.post(CMS, &configmap("before", json!({}))).await;
    let mut w = api.watch(&format!("{CMS}?watch=true")).await;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["type"], "ADDED");
    assert_eq!(e["object"]["metadata"]["name"], "before");

    let created = api.post(CMS, &configmap("new", json!({}))).await.body;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["type"], "ADDED");
    assert_eq!(e["object"]["metadata"]["name"], "new");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    api.patch(
        &format!("{CMS}/new"),
        "application/merge-patch+json",
        &json!({"data": {"x": "y"}}),
    )
    .await;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(e["object"]["data"]["x"], "y");

    let del = api.delete(&format!("{CMS}/new"), None).await;
    assert_eq!(del.status, StatusCode::OK);
    let e = w.next_event().await.unwrap();
    assert_eq!(e["type"], "DELETED");
    assert_eq!(e["object"]["metadata"]["name"], "new");
}

#[tokio::test]
async fn watch_replays_from_resource_version() {
    let api = TestApi::new().await;
    let a = api.post(CMS, &configmap("a", json!({}))).await.body;
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.post(CMS, &configmap("b", json!({}))).await;
    api.delete(&format!("{CMS}/a"), None).await;
    let mut w = api
        .watch(&format!("{CMS}?watch=1&resourceVersion={rv}"))
        .await;
    let e1 = w.next_event().await.unwrap();
    assert_eq!(
        (
            e1["type"].as_str(),
            e1["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    let e2 = w.next_event().await.unwrap();
    assert_eq!(
        (
            e2["type"].as_str(),
            e2["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("a"))
    );
}

#[tokio::test]
async fn watch_label_selector_transitions() {
    let api = TestApi::new().await;
    api.post(CMS, &configmap("x", json!({"app": "other"})))
        .await;
    let rv = api.get(CMS).await.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=true&labelSelector=app%3Dweb&resourceVersion={rv}"
        ))
        .await;
    let url = format!("{CMS}/x");
    api.patch(
        &url,
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["type"], "ADDED", "starts matching");
    api.patch(
        &url,
        "application/merge-patch+json",
        &json!({"data": {"z": "1"}}),
    )
    .await;
    assert_eq!(w.next_event().await.unwrap()["type"], "MODIFIED");
    api.patch(
        &url,
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "gone"}}}),
    )
    .await;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["type"], "DELETED", "stops matching");
    assert_eq!(e["object"]["metadata"]["labels"]["app"], "gone");
    // Changes to non-matching objects are not sent.
    api.post(CMS, &configmap("y", json!({"app": "nope"}))).await;
    api.post(CMS, &configmap("z", json!({"app": "web"}))).await;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["object"]["metadata"]["name"], "z");
}

#[tokio::test]
async fn watch_bookmarks_and_timeout() {
    let api = TestApi::new().await;
    let rv = api.get(CMS).await.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=true&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=2"
        ))
        .await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(e["object"]["kind"], "ConfigMap");
    let brv: i64 = e["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(brv >= rv.parse::<i64>().unwrap());
    // The stream ends at timeoutSeconds.
    let mut n = 0;
    while w.next().await.is_some() {
        n += 1;
        assert!(n < 100, "watch did not end");
    }
    // Without allowWatchBookmarks no bookmark is sent.
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=true&resourceVersion={rv}&timeoutSeconds=1"
        ))
        .await;
    assert!(w.next().await.is_none());
}

#[tokio::test]
async fn watch_initial_events_end_bookmark() {
    let api = TestApi::new().await;
    api.post(CMS, &configmap("a", json!({}))).await;
    let mut w = api.watch(&format!("{CMS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")).await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn watch_too_old_resource_version_is_gone() {
    let api = TestApi::new().await;
    api.post(CMS, &configmap("a", json!({}))).await;
    api.post(CMS, &configmap("b", json!({}))).await;
    let cur = api.store.current_revision().await.unwrap();
    api.store.compact(cur).await.unwrap();
    let mut w = api
        .watch(&format!("{CMS}?watch=true&resourceVersion=2"))
        .await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert!(
        e["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version")
    );
    assert!(w.next().await.is_none(), "stream ends after the error");
    let r = api
        .get(&format!(
            "{CMS}?resourceVersion=2&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(r.status, StatusCode::GONE);
}

#[tokio::test]
async fn watch_single_object_by_name() {
    let api = TestApi::new().await;
    let rv = api.get(CMS).await.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=true&fieldSelector=metadata.name%3Db&resourceVersion={rv}"
        ))
        .await;
    api.post(CMS, &configmap("a", json!({}))).await;
    api.post(CMS, &configmap("b", json!({}))).await;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["object"]["metadata"]["name"], "b");
    // Legacy /watch/ path for one object.
    let mut w = api
        .watch(&format!(
            "/api/v1/watch/namespaces/default/configmaps/a?resourceVersion={rv}"
        ))
        .await;
    let e = w.next_event().await.unwrap();
    assert_eq!(e["object"]["metadata"]["name"], "a");
}

#[tokio::test]
async fn watches_without_selectors_and_with_them_see_the_same_changes_their_own_way() {
    // Unfiltered watches share each change's encoded line; a selector watch must still
    // see its own view (ADDED when an object starts matching).
    let api = TestApi::new().await;
    api.post(CMS, &configmap("x", json!({"app": "other"})))
        .await;
    let rv = api.get(CMS).await.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut plain = api
        .watch(&format!("{CMS}?watch=true&resourceVersion={rv}"))
        .await;
    let mut all = api
        .watch(&format!(
            "/api/v1/configmaps?watch=true&resourceVersion={rv}"
        ))
        .await;
    let mut web = api
        .watch(&format!(
            "{CMS}?watch=true&labelSelector=app%3Dweb&resourceVersion={rv}"
        ))
        .await;
    api.patch(
        &format!("{CMS}/x"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await;
    api.post(CMS, &configmap("y", json!({"app": "web"}))).await;
    api.delete(&format!("{CMS}/x"), None).await;
    let seen = |e: serde_json::Value| {
        (
            e["type"].as_str().unwrap().to_string(),
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let mut lines = Vec::new();
    for w in [&mut plain, &mut all, &mut web] {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(seen(w.next_event().await.unwrap()));
        }
        lines.push(got);
    }
    let kinds = |v: &[(String, String, String)]| {
        v.iter()
            .map(|(t, n, _)| format!("{t} {n}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&lines[0]), ["MODIFIED x", "ADDED y", "DELETED x"]);
    assert_eq!(lines[0], lines[1], "same changes, same lines");
    assert_eq!(kinds(&lines[2]), ["ADDED x", "ADDED y", "DELETED x"]);
    assert_eq!(
        lines[0].iter().map(|l| &l.2).collect::<Vec<_>>(),
        lines[2].iter().map(|l| &l.2).collect::<Vec<_>>()
    );
}

/// A list without selectors is written from the stored bytes; a field selector that every
/// object matches takes the decoding path. Both must give the same bytes.
#[tokio::test]
async fn lists_spliced_from_stored_bytes_equal_decoded_lists() {
    let api = TestApi::new().await;
    let all = "fieldSelector=metadata.namespace%3Ddefault";
    // Empty lists.
    let spliced = api.get(CMS).await;
    let decoded = api.get(&format!("{CMS}?{all}")).await;
    assert_eq!(spliced.status, StatusCode::OK);
    assert_eq!(spliced.text, decoded.text);
    assert_eq!(spliced.body["items"], json!([]));

    let mut odd = configmap("odd", json!({}));
    odd["data"] = json!({"quote": "say \"hi\" line\nbreak \u{1} tab\t \\ end", "unicode": "zürich ✓ 日本", "e": ""});
    assert_eq!(api.post(CMS, &odd).await.status, StatusCode::CREATED);
    let mut labelled = configmap("labelled", json!({"app": "web"}));
    labelled["metadata"]["annotations"] = json!({"a/b": "{\"json\": [1, 2.5, -3e2, null, true]}"});
    api.post(CMS, &labelled).await;
    for i in 0..3 {
        api.post(
            CMS,
            &configmap(&format!("plain-{i}"), json!({"i": i.to_string()})),
        )
        .await;
    }
    let mut p = pod("p");
    p["spec"]["nodeName"] = json!("n1");
    api.post(PODS, &p).await;

    for base in [CMS, PODS] {
        let spliced = api.get(base).await;
        let decoded = api.get(&format!("{base}?{all}")).await;
        assert_eq!(spliced.status, StatusCode::OK, "{}", spliced.text);
        assert_eq!(spliced.text, decoded.text);
        assert!(spliced.body["items"].as_array().unwrap().iter().all(|i| {
            i["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|rv| rv.parse::<i64>().is_ok())
        }));
    }
    assert_eq!(
        api.get(CMS).await.body["items"].as_array().unwrap().len(),
        5
    );
    // Pages: the same items, revision and continue token either way.
    let spliced = api.get(&format!("{CMS}?limit=2")).await;
    let decoded = api.get(&format!("{CMS}?limit=2&{all}")).await;
    assert_eq!(spliced.text, decoded.text);
    let cont = spliced.body["metadata"]["continue"].as_str().unwrap();
    let spliced = api.get(&format!("{CMS}?limit=2&continue={cont}")).await;
    let decoded = api
        .get(&format!("{CMS}?limit=2&continue={cont}&{all}"))
        .await;
    assert_eq!(spliced.text, decoded.text);
    assert_eq!(spliced.body["items"].as_array().unwrap().len(), 2);
}
