//! CRUD, subresources and deletion semantics through real HTTP requests on the router.

mod common;

use common::{TestApi, configmap, deployment, pod};
use http::{Method, StatusCode};
use serde_json::json;

const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";
const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn system_namespaces_exist() {
    let api = TestApi::new().await;
    let r = api.get("/api/v1/namespaces").await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&ns), "{ns} missing from {names:?}");
    }
    let d = api.get("/api/v1/namespaces/default").await;
    assert_eq!(d.body["status"]["phase"], "Active");
    assert_eq!(d.body["spec"]["finalizers"], json!(["kubernetes"]));
}

#[tokio::test]
async fn create_get_list() {
    let api = TestApi::new().await;
    let r = api.post(DEPLOYS, &deployment("web", 2)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let m = &r.body["metadata"];
    assert_eq!(m["namespace"], "default");
    assert_eq!(m["generation"], 1);
    assert!(!m["uid"].as_str().unwrap().is_empty());
    assert!(m["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    let rv: i64 = m["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert_eq!(rv, api.store.current_revision().await.unwrap());

    let g = api.get(&format!("{DEPLOYS}/web")).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body["metadata"]["uid"], m["uid"]);
    assert_eq!(g.body["spec"]["replicas"], 2);

    let dup = api.post(DEPLOYS, &deployment("web", 1)).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.body["reason"], "AlreadyExists");
    assert_eq!(
        dup.body["message"],
        "deployments.apps \"web\" already exists"
    );

    let l = api.get(DEPLOYS).await;
    assert_eq!(l.body["kind"], "DeploymentList");
    assert_eq!(l.body["items"].as_array().unwrap().len(), 1);
    assert!(l.body["metadata"]["resourceVersion"].as_str().is_some());

    let nf = api.get(&format!("{DEPLOYS}/nope")).await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    assert_eq!(nf.body["kind"], "Status");
    assert_eq!(nf.body["message"], "deployments.apps \"nope\" not found");
    assert_eq!(nf.body["details"]["group"], "apps");
    assert_eq!(nf.body["details"]["kind"], "deployments");
}

#[tokio::test]
async fn generate_name_and_all_namespaces() {
    let api = TestApi::new().await;
    let mut cm = configmap("", json!({}));
    cm["metadata"] = json!({"generateName": "cfg-"});
    let a = api.post(CMS, &cm).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let name = a.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");
    let b = api
        .post(
            "/api/v1/namespaces/kube-system/configmaps",
            &configmap("x", json!({})),
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    let all = api.get("/api/v1/configmaps").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    let one = api.get("/api/v1/namespaces/kube-system/configmaps").await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn create_errors_store_nothing() {
    let api = TestApi::new().await;
    let before = api.store.current_revision().await.unwrap();
    let r = api
        .post(
            "/api/v1/namespaces/missing/configmaps",
            &configmap("a", json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], "namespaces \"missing\" not found");

    let r = api
        .call(Method::POST, CMS, "application/json", "{not json")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["reason"], "BadRequest");

    let mut wrong = configmap("a", json!({}));
    wrong["kind"] = json!("Secret");
    let r = api.post(CMS, &wrong).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    let mut wrong_av = deployment("a", 1);
    wrong_av["apiVersion"] = json!("apps/v1beta1");
    let r = api.post(DEPLOYS, &wrong_av).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let mut bad_type = deployment("a", 1);
    bad_type["spec"]["replicas"] = json!("many");
    let r = api.post(DEPLOYS, &bad_type).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    let r = api
        .post(
            CMS,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");

    let big = "x".repeat(70 * 1024);
    let r = api.post(CMS, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"k": big}})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["code"], 413);

    let r = api.post(DEPLOYS, &deployment("dry", 1)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let after_real = api.store.current_revision().await.unwrap();
    assert_eq!(
        after_real,
        before + 1,
        "only the one real create was stored"
    );
    let r = api
        .post(
            &format!("{CMS}?dryRun=All"),
            &configmap("dryrun", json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        api.get(&format!("{CMS}/dryrun")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.store.current_revision().await.unwrap(), after_real);
}

#[tokio::test]
async fn yaml_body_accepted() {
    let api = TestApi::new().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: \"1\"\n";
    let r = api.call(Method::POST, CMS, "application/yaml", yaml).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["data"]["a"], "1");
}

#[tokio::test]
async fn update_conflict_generation_and_status() {
    let api = TestApi::new().await;
    let created = api.post(DEPLOYS, &deployment("web", 1)).await.body;
    let url = format!("{DEPLOYS}/web");

    let mut v1 = created.clone();
    v1["spec"]["replicas"] = json!(3);
    v1["status"] = json!({"replicas": 99});
    let r = api.put(&url, &v1).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["metadata"]["generation"], 2);
    assert_eq!(r.body["spec"]["replicas"], 3);
    assert!(
        r.body.get("status").is_none() || r.body["status"]["replicas"] != 99,
        "status ignored on main PUT"
    );

    // Stale resourceVersion.
    let r = api.put(&url, &created).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["reason"], "Conflict");
    assert_eq!(
        r.body["message"],
        "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply your changes to the latest version and try again"
    );

    // Metadata-only change keeps the generation.
    let mut cur = api.get(&url).await.body;
    cur["metadata"]["labels"]["extra"] = json!("1");
    let r = api.put(&url, &cur).await;
    assert_eq!(r.body["metadata"]["generation"], 2);

    // Status PUT changes only status.
    let mut st = r.body.clone();
    st["status"] = json!({"replicas": 3, "observedGeneration": 2});
    st["spec"]["replicas"] = json!(10);
    let r = api.put(&format!("{url}/status"), &st).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["replicas"], 3);
    assert_eq!(r.body["spec"]["replicas"], 3);
    assert_eq!(r.body["metadata"]["generation"], 2);

    // Without resourceVersion the update is unconditional.
    let mut norv = r.body.clone();
    norv["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    norv["spec"]["replicas"] = json!(4);
    let r = api.put(&url, &norv).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["spec"]["replicas"], 4);
    assert_eq!(r.body["status"]["replicas"], 3, "status survives main PUT");

    // Name mismatch.
    let r = api.put(&format!("{DEPLOYS}/other"), &norv).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn merge_patch_and_status_patch() {
    let api = TestApi::new().await;
    api.post(DEPLOYS, &deployment("web", 1)).await;
    let url = format!("{DEPLOYS}/web");
    let r = api
        .patch(
            &url,
            "application/merge-patch+json",
            &json!({"spec": {"replicas": 5}, "metadata": {"labels": {"x": "y"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["spec"]["replicas"], 5);
    assert_eq!(r.body["metadata"]["labels"]["x"], "y");
    assert_eq!(r.body["metadata"]["labels"]["app"], "web");
    assert_eq!(r.body["metadata"]["generation"], 2);

    let r = api
        .patch(
            &format!("{url}/status"),
            "application/merge-patch+json",
            &json!({"status": {"readyReplicas": 2}, "spec": {"replicas": 0}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["readyReplicas"], 2);
    assert_eq!(r.body["spec"]["replicas"], 5);

    // A stale resourceVersion in a patch is a precondition.
    let r = api
        .patch(
            &url,
            "application/merge-patch+json",
            &json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let r = api
        .patch(
            &format!("{DEPLOYS}/missing"),
            "application/merge-patch+json",
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.patch(&url, "text/plain", &json!({})).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn json_patch_and_strategic_merge_patch() {
    let api = TestApi::new().await;
    let mut d = deployment("web", 1);
    d["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
        {"name": "b", "image": "b:1"}
    ]);
    api.post(DEPLOYS, &d).await;
    let url = format!("{DEPLOYS}/web");
    let r = api
        .patch(
            &url,
            "application/json-patch+json",
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 7}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["spec"]["replicas"], 7);

    // Containers merge by name: b's image changes, a keeps its env.
    let smp =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}});
    let r = api
        .patch(&url, "application/strategic-merge-patch+json", &smp)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let cs = r.body["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(cs.len(), 2);
    let a = cs.iter().find(|c| c["name"] == "a").unwrap();
    let b = cs.iter().find(|c| c["name"] == "b").unwrap();
    assert_eq!(a["env"][0]["value"], "1");
    assert_eq!(b["image"], "b:2");
}

#[tokio::test]
async fn server_side_apply_creates_then_updates() {
    let api = TestApi::new().await;
    let url = format!("{CMS}/applied?fieldManager=me");
    let y1 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  labels:\n    a: \"1\"\ndata:\n  one: \"1\"\n  two: \"2\"\n";
    let r = api
        .call(Method::PATCH, &url, "application/apply-patch+yaml", y1)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["metadata"]["managedFields"][0]["manager"], "me");
    // Someone else adds a key; the manager drops "two".
    api.patch(
        &format!("{CMS}/applied"),
        "application/merge-patch+json",
        &json!({"data": {"other": "x"}}),
    )
    .await;
    let y2 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  one: \"11\"\n";
    let r = api
        .call(Method::PATCH, &url, "application/apply-patch+yaml", y2)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["data"], json!({"one": "11", "other": "x"}));
    assert!(
        r.body["metadata"]
            .get("labels")
            .is_none_or(|l| l.get("a").is_none())
    );
    // The same configuration again, a second later: nothing is written, not even a new
    // managedFields time, so the resourceVersion stays.
    let rv = r.body["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = api
        .call(Method::PATCH, &url, "application/apply-patch+yaml", y2)
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["metadata"]["resourceVersion"], rv);
    let r = api
        .call(
            Method::PATCH,
            &format!("{CMS}/applied"),
            "application/apply-patch+yaml",
            y2,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "fieldManager is required"
    );
}

#[tokio::test]
async fn delete_returns_status_or_object() {
    let api = TestApi::new().await;
    api.post(CMS, &configmap("c", json!({}))).await;
    let r = api.delete(&format!("{CMS}/c"), Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["status"], "Success");
    assert_eq!(r.body["details"]["name"], "c");
    assert_eq!(
        api.get(&format!("{CMS}/c")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&format!("{CMS}/c"), None).await.status,
        StatusCode::NOT_FOUND
    );

    // Unbound pods go at once and the answer is the pod.
    api.post(PODS, &pod("p")).await;
    let r = api.delete(&format!("{PODS}/p"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["kind"], "Pod");
    assert_eq!(
        api.get(&format!("{PODS}/p")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_preconditions() {
    let api = TestApi::new().await;
    let c = api.post(CMS, &configmap("c", json!({}))).await.body;
    let r = api
        .delete(
            &format!("{CMS}/c"),
            Some(&json!({"preconditions": {"uid": "other"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api
        .delete(
            &format!("{CMS}/c"),
            Some(&json!({"preconditions": {"resourceVersion": "1"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api
        .delete(
            &format!("{CMS}/c"),
            Some(&json!({"preconditions": {"uid": c["metadata"]["uid"]}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let api = TestApi::new().await;
    let mut cm = configmap("f", json!({}));
    cm["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.post(CMS, &cm).await;
    let url = format!("{CMS}/f");
    let r = api.delete(&url, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.text
    );
    let g = api.get(&url).await;
    assert_eq!(
        g.status,
        StatusCode::OK,
        "still there while the finalizer is"
    );
    // Removing the last finalizer removes the object.
    let r = api
        .patch(
            &url,
            "application/merge-patch+json",
            &json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(api.get(&url).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn propagation_policies_add_finalizers() {
    let api = TestApi::new().await;
    api.post(DEPLOYS, &deployment("fg", 1)).await;
    let r = api
        .delete(
            &format!("{DEPLOYS}/fg"),
            Some(&json!({"propagationPolicy": "Foreground"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(r.body["metadata"]["generation"], 2);

    api.post(DEPLOYS, &deployment("or", 1)).await;
    let r = api
        .delete(&format!("{DEPLOYS}/or?propagationPolicy=Orphan"), None)
        .await;
    assert_eq!(r.body["metadata"]["finalizers"], json!(["orphan"]));

    let r = api
        .delete(
            &format!("{DEPLOYS}/or"),
            Some(&json!({"propagationPolicy": "Sideways"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn bound_pod_graceful_deletion() {
    let api = TestApi::new().await;
    let mut p = pod("g");
    p["spec"]["terminationGracePeriodSeconds"] = json!(20);
    api.post(PODS, &p).await;
    let url = format!("{PODS}/g");
    let r = api.post(&format!("{url}/binding"), &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "g"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let g = api.get(&url).await.body;
    assert_eq!(g["spec"]["nodeName"], "n1");
    let r = api
        .post(
            &format!("{url}/binding"),
            &json!({"target": {"kind": "Node", "name": "n2"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let r = api.delete(&url, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 20);
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(api.get(&url).await.status, StatusCode::OK);
    // A shorter grace period shortens; a longer one does not lengthen.
    let r = api
        .delete(&format!("{url}?gracePeriodSeconds=5"), None)
        .await;
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 5);
    let r = api
        .delete(&format!("{url}?gracePeriodSeconds=50"), None)
        .await;
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 5);
    // The node agent's final delete.
    let r = api
        .delete(&url, Some(&json!({"gracePeriodSeconds": 0})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(api.get(&url).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn namespace_termination_and_finalize() {
    let api = TestApi::new().await;
    let r = api
        .post(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    api.post(
        "/api/v1/namespaces/team/configmaps",
        &configmap("c", json!({})),
    )
    .await;
    let r = api.delete("/api/v1/namespaces/team", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"]["phase"], "Terminating");
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(r.body["spec"]["finalizers"], json!(["kubernetes"]));

    let r = api
        .post(
            "/api/v1/namespaces/team/configmaps",
            &configmap("d", json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.body["reason"], "Forbidden");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("because it is being terminated")
    );

    // A main-resource PUT cannot drop spec.finalizers; /finalize can.
    let mut ns = api.get("/api/v1/namespaces/team").await.body;
    ns["spec"]["finalizers"] = json!([]);
    let r = api.put("/api/v1/namespaces/team", &ns).await;
    assert_eq!(r.body["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(
        api.get("/api/v1/namespaces/team").await.status,
        StatusCode::OK
    );
    let r = api.put("/api/v1/namespaces/team/finalize", &ns).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        api.get("/api/v1/namespaces/team").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_collection_with_selector() {
    let api = TestApi::new().await;
    api.post(CMS, &configmap("a", json!({"t": "x"}))).await;
    api.post(CMS, &configmap("b", json!({"t": "x"}))).await;
    api.post(CMS, &configmap("c", json!({"t": "y"}))).await;
    let r = api
        .delete(&format!("{CMS}?labelSelector=t%3Dx"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let l = api.get(CMS).await;
    let names: Vec<_> = l.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("c")]);
}

#[tokio::test]
async fn scale_subresource() {
    let api = TestApi::new().await;
    api.post(DEPLOYS, &deployment("web", 2)).await;
    let url = format!("{DEPLOYS}/web/scale");
    let s = api.get(&url).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body["kind"], "Scale");
    assert_eq!(s.body["apiVersion"], "autoscaling/v1");
    assert_eq!(s.body["spec"]["replicas"], 2);
    assert_eq!(s.body["status"]["selector"], "app=web");
    let r = api
        .patch(
            &url,
            "application/merge-patch+json",
            &json!({"spec": {"replicas": 4}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["kind"], "Scale");
    assert_eq!(r.body["spec"]["replicas"], 4);
    assert_eq!(
        api.get(&format!("{DEPLOYS}/web")).await.body["spec"]["replicas"],
        4
    );
    let mut put = r.body.clone();
    put["spec"]["replicas"] = json!(1);
    let r = api.put(&url, &put).await;
    assert_eq!(r.body["spec"]["replicas"], 1);
    // Stale resourceVersion on the Scale.
    let r = api.put(&url, &put).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api
        .patch(
            &url,
            "application/merge-patch+json",
            &json!({"spec": {"replicas": -1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn routing_errors() {
    let api = TestApi::new().await;
    let r = api.get("/api/v1/namespaces/default/widgets").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["kind"], "Status");
    let r = api.get("/apis/nope.io/v1/things").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call(Method::POST, &format!("{CMS}/x"), "application/json", "{}")
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body["reason"], "MethodNotAllowed");
    let r = api
        .get("/api/v1/namespaces/default/configmaps/x/status")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// Protobuf length-delimited field.
fn pb_len(tag: u8, data: &[u8], out: &mut Vec<u8>) {
    assert!(data.len() < 128);
    out.push(tag << 3 | 2);
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

#[tokio::test]
async fn protobuf_bodies_as_typed_clients_send_them() {
    let api = TestApi::new().await;
    let mut meta = Vec::new();
    pb_len(1, b"pb", &mut meta);
    let mut entry = Vec::new();
    pb_len(1, b"k", &mut entry);
    pb_len(2, b"v", &mut entry);
    let mut cm = Vec::new();
    pb_len(1, &meta, &mut cm);
    pb_len(2, &entry, &mut cm);
    let mut type_meta = Vec::new();
    pb_len(1, b"v1", &mut type_meta);
    pb_len(2, b"ConfigMap", &mut type_meta);
    let mut body = b"k8s\0".to_vec();
    pb_len(1, &type_meta, &mut body);
    pb_len(2, &cm, &mut body);
    let r = api
        .call(
            Method::POST,
            CMS,
            "application/vnd.kubernetes.protobuf",
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        api.get(&format!("{CMS}/pb")).await.body["data"],
        json!({"k": "v"})
    );
    let r = api
        .call(
            Method::POST,
            CMS,
            "application/vnd.kubernetes.protobuf",
            body[4..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api.call(Method::POST, CMS, "application/xml", "<x/>").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let api = TestApi::new().await;
    let svcs = "/api/v1/namespaces/default/services";
    let svc = |name: &str, ty: &str, extra: serde_json::Value| {
        let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": ty, "selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}});
        if let (Some(spec), Some(extra)) = (s["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        s
    };
    let a = api.post(svcs, &svc("a", "ClusterIP", json!({}))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let ip = a.body["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10."), "{ip}");
    assert_eq!(a.body["spec"]["clusterIPs"], json!([ip]));

    // An explicit address that is taken is refused, and nothing is stored.
    let r = api
        .post(svcs, &svc("b", "ClusterIP", json!({"clusterIP": ip})))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["details"]["causes"][0]["field"], "spec.clusterIP");
    assert_eq!(
        api.get(&format!("{svcs}/b")).await.status,
        StatusCode::NOT_FOUND
    );

    let h = api
        .post(
            svcs,
            &svc("headless", "ClusterIP", json!({"clusterIP": "None"})),
        )
        .await;
    assert_eq!(h.body["spec"]["clusterIP"], "None");

    let np = api.post(svcs, &svc("np", "NodePort", json!({}))).await;
    assert_eq!(np.status, StatusCode::CREATED, "{}", np.text);
    let port = np.body["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&port));
    let mut taken = svc("np2", "NodePort", json!({}));
    taken["spec"]["ports"][0]["nodePort"] = json!(port);
    let r = api.post(svcs, &taken).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body["details"]["causes"][0]["field"],
        "spec.ports[0].nodePort"
    );

    // An update that leaves the ClusterIP and node port out keeps them.
    let mut upd = svc("np", "NodePort", json!({}));
    upd["spec"]["selector"] = json!({"app": "other"});
    let r = api.put(&format!("{svcs}/np"), &upd).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["spec"]["clusterIP"], np.body["spec"]["clusterIP"]);
    assert_eq!(r.body["spec"]["ports"][0]["nodePort"], port);

    // Deleting frees both: another Service can take them.
    api.delete(&format!("{svcs}/a"), None).await;
    api.delete(&format!("{svcs}/np"), None).await;
    let r = api
        .post(svcs, &svc("c", "ClusterIP", json!({"clusterIP": ip})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = api.post(svcs, &taken).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["spec"]["ports"][0]["nodePort"], port);
}
