//! Discovery, OpenAPI, version, strict decoding, validation and Table output.

mod common;

use common::{TestApi, deployment, pod};
use http::{Method, StatusCode};
use serde_json::json;

const AGG: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

#[tokio::test]
async fn version_and_health() {
    let api = TestApi::new().await;
    let v = api.get("/version").await;
    assert_eq!(v.body["major"], "1");
    assert_eq!(v.body["minor"], "33");
    assert_eq!(v.body["gitVersion"], "v1.33.0");
    for p in ["/healthz", "/livez", "/readyz"] {
        let r = api.get(p).await;
        assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "ok"));
    }
}

#[tokio::test]
async fn classic_discovery() {
    let api = TestApi::new().await;
    let r = api.get("/api").await;
    assert_eq!(r.body["kind"], "APIVersions");
    assert_eq!(r.body["versions"], json!(["v1"]));
    let r = api.get("/apis").await;
    assert_eq!(r.body["kind"], "APIGroupList");
    let groups: Vec<&str> = r.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(
        groups.contains(&"apps") && groups.contains(&"coordination.k8s.io"),
        "{groups:?}"
    );
    assert_eq!(
        r.body["groups"][0]["preferredVersion"]["groupVersion"],
        "apps/v1"
    );

    let r = api.get("/api/v1").await;
    assert_eq!(r.body["kind"], "APIResourceList");
    assert_eq!(r.body["groupVersion"], "v1");
    let res = r.body["resources"].as_array().unwrap();
    let find = |n: &str| {
        res.iter()
            .find(|x| x["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing"))
            .clone()
    };
    let pods = find("pods");
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["namespaced"], true);
    assert_eq!(pods["kind"], "Pod");
    assert_eq!(pods["singularName"], "pod");
    assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
    assert_eq!(find("pods/log")["verbs"], json!(["get"]));
    assert_eq!(find("pods/binding")["kind"], "Binding");
    assert_eq!(find("namespaces/finalize")["verbs"], json!(["update"]));
    assert_eq!(find("namespaces")["namespaced"], false);

    let r = api.get("/apis/apps/v1").await;
    let res = r.body["resources"].as_array().unwrap();
    let scale = res
        .iter()
        .find(|x| x["name"] == "deployments/scale")
        .unwrap();
    assert_eq!(
        (
            scale["group"].as_str(),
            scale["version"].as_str(),
            scale["kind"].as_str()
        ),
        (Some("autoscaling"), Some("v1"), Some("Scale"))
    );
    let d = res.iter().find(|x| x["name"] == "deployments").unwrap();
    assert_eq!(d["shortNames"], json!(["deploy"]));
    assert_eq!(d["categories"], json!(["all"]));
    assert_eq!(api.get("/apis/apps").await.body["kind"], "APIGroup");
    assert_eq!(api.get("/apis/nope/v1").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn aggregated_discovery() {
    let api = TestApi::new().await;
    let r = api.get_accept("/apis", AGG).await;
    assert_eq!(
        r.headers["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(r.body["kind"], "APIGroupDiscoveryList");
    let apps = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .unwrap()
        .clone();
    let res = apps["versions"][0]["resources"].as_array().unwrap();
    let d = res.iter().find(|x| x["resource"] == "deployments").unwrap();
    assert_eq!(d["scope"], "Namespaced");
    assert_eq!(d["responseKind"]["kind"], "Deployment");
    assert_eq!(d["shortNames"], json!(["deploy"]));
    let scale = d["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subresource"] == "scale")
        .unwrap();
    assert_eq!(scale["responseKind"]["group"], "autoscaling");

    let r = api.get_accept("/api", AGG).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let core = &r.body["items"][0]["versions"][0];
    assert_eq!(core["version"], "v1");
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["resource"] == "pods" && x["shortNames"] == json!(["po"]))
    );
    // Plain JSON accept gets the classic answer.
    let r = api.get_accept("/api", "application/json").await;
    assert_eq!(r.body["kind"], "APIVersions");
}

#[tokio::test]
async fn openapi_v3_documents() {
    let api = TestApi::new().await;
    let idx = api.get("/openapi/v3").await;
    assert_eq!(idx.status, StatusCode::OK);
    let url = idx.body["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 in index")
        .to_string();
    assert!(url.contains("?hash="));
    let doc = api.get(&url).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(
        doc.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(doc.body["components"]["schemas"].is_object());
    let stale = api.get("/openapi/v3/apis/apps/v1?hash=0000").await;
    assert_eq!(stale.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        api.get("/openapi/v3/apis/nope/v1").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn strict_field_validation() {
    let api = TestApi::new().await;
    let url = "/apis/apps/v1/namespaces/default/deployments";
    let mut d = deployment("web", 1);
    d["spec"]["foo"] = json!(1);
    let r = api.post(&format!("{url}?fieldValidation=Strict"), &d).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["reason"], "BadRequest");
    assert_eq!(
        r.body["message"],
        "strict decoding error: unknown field \"spec.foo\""
    );
    assert_eq!(
        api.get(&format!("{url}/web")).await.status,
        StatusCode::NOT_FOUND
    );

    let r = api.post(&format!("{url}?fieldValidation=Warn"), &d).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let warn = r
        .headers
        .get("warning")
        .expect("warning header")
        .to_str()
        .unwrap();
    assert!(
        warn.starts_with("299 - ") && warn.contains("spec.foo"),
        "{warn}"
    );
    assert!(
        r.body["spec"].get("foo").is_none(),
        "unknown fields are dropped"
    );

    let r = api
        .patch(
            &format!("{url}/web?fieldValidation=Strict"),
            "application/merge-patch+json",
            &json!({"spec": {"bar": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        "strict decoding error: unknown field \"spec.bar\""
    );

    let r = api.call(Method::POST, &format!("{url}?fieldValidation=Strict"), "application/json",
        r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"dup","name":"dup"},"spec":{}}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("duplicate field"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn validation_errors_are_422() {
    let api = TestApi::new().await;
    let url = "/apis/apps/v1/namespaces/default/deployments";
    let mut d = deployment("web", 1);
    d["spec"].as_object_mut().unwrap().remove("selector");
    let r = api.post(url, &d).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(r.body["details"]["kind"], "Deployment");
    assert_eq!(r.body["details"]["group"], "apps");
    let causes = r.body["details"]["causes"].as_array().unwrap();
    assert!(
        causes
            .iter()
            .any(|c| c["field"] == "spec.selector" && c["reason"] == "FieldValueRequired"),
        "{causes:?}"
    );
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Deployment.apps \"web\" is invalid: "),
        "{}",
        r.text
    );
    assert_eq!(
        api.get(&format!("{url}/web")).await.status,
        StatusCode::NOT_FOUND
    );

    let r = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
}

#[tokio::test]
async fn table_output() {
    let api = TestApi::new().await;
    api.post(
        "/apis/apps/v1/namespaces/default/deployments",
        &deployment("web", 2),
    )
    .await;
    let r = api
        .get_accept("/apis/apps/v1/namespaces/default/deployments", TABLE)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["kind"], "Table");
    assert_eq!(r.body["apiVersion"], "meta.k8s.io/v1");
    assert!(r.body["metadata"]["resourceVersion"].is_string());
    let cols: Vec<&str> = r.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &cols[..5],
        ["Name", "Ready", "Up-to-date", "Available", "Age"]
    );
    assert_eq!(r.body["rows"][0]["cells"][0], "web");
    assert_eq!(r.body["rows"][0]["cells"][1], "0/2");
    assert_eq!(r.body["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    api.post("/api/v1/namespaces/default/pods", &pod("p")).await;
    let r = api
        .get_accept(
            "/api/v1/namespaces/default/pods/p?includeObject=Object",
            TABLE,
        )
        .await;
    assert_eq!(r.body["kind"], "Table");
    assert_eq!(r.body["rows"][0]["cells"][2], "Pending");
    assert_eq!(r.body["rows"][0]["object"]["kind"], "Pod");
    let r = api.get_accept("/api/v1/namespaces", TABLE).await;
    assert_eq!(r.body["columnDefinitions"][1]["name"], "Status");
    assert_eq!(r.body["rows"][0]["cells"][1], "Active");
}
