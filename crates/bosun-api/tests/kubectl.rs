//! Runs the real kubectl (1.27 through 1.33, as installed here) against a small HTTP
//! server that serves bosun's discovery-free minimum: `/version`, classic discovery,
//! the OpenAPI v2/v3 documents and one live Deployment. Asserts that kubectl trusts
//! the server with field validation (`fieldValidation=Strict`), computes a strategic
//! merge patch from the documents' merge keys, and that bosun's strategic merge turns
//! that patch into the intended object.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bosun_api::openapi::OpenApi;
use bosun_api::patch::strategic_merge_patch;
use bosun_api::{KindInfo, Registry};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    body: String,
}

struct Fake {
    api: OpenApi,
    live: Value,
    minor: &'static str,
    log: Mutex<Vec<Request>>,
}

fn deployment_kind() -> &'static KindInfo {
    Registry::builtin()
        .by_kind("apps/v1", "Deployment")
        .unwrap()
}

impl Fake {
    fn respond(&self, req: &Request) -> (u16, &'static str, Vec<u8>) {
        let json = |v: Value| (200, "application/json", serde_json::to_vec(&v).unwrap());
        let resource = |name: &str, kind: &str, short: &str| {
            json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind,
                   "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": [short]})
        };
        match req.path.as_str() {
            "/version" => json(
                json!({"major": "1", "minor": self.minor, "gitVersion": format!("v1.{}.0", self.minor)}),
            ),
            "/api" => json(json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
            "/apis" => json(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{"name": "apps",
                "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]}),
            ),
            "/api/v1" => json(json!({"kind": "APIResourceList", "groupVersion": "v1",
                "resources": [resource("pods", "Pod", "po")]})),
            "/apis/apps/v1" => json(json!({"kind": "APIResourceList", "groupVersion": "apps/v1",
                "resources": [resource("deployments", "Deployment", "deploy")]})),
            "/openapi/v2" => (
                200,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                self.api.v2_protobuf().to_vec(),
            ),
            "/openapi/v3" => json(self.api.index().clone()),
            "/apis/apps/v1/namespaces/default/deployments/web" => json(self.live.clone()),
            p => match p
                .strip_prefix("/openapi/v3/")
                .and_then(|d| self.api.document_bytes(d))
            {
                Some(doc) => (200, "application/json", doc.to_vec()),
                None => (
                    404,
                    "application/json",
                    serde_json::to_vec(
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"}),
                    )
                    .unwrap(),
                ),
            },
        }
    }

    fn serve(self: Arc<Self>, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let mut length = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let req = Request {
                method,
                path: path.to_string(),
                query: query.to_string(),
                body: String::from_utf8(body).unwrap(),
            };
            self.log.lock().unwrap().push(req.clone());
            let (code, ct, body) = self.respond(&req);
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if out.write_all(head.as_bytes()).is_err() || out.write_all(&body).is_err() {
                return;
            }
        }
    }
}

fn applied() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "web", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}}}})
}

/// Runs `kubectl.<minor> apply` with a changed manifest; returns the PATCH it sent.
fn apply_with(minor: &'static str) -> Option<(Request, Value)> {
    let bin = format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}");
    if !Path::new(&bin).exists() {
        bosun_testkit::skip(&format!("{bin} is not installed"));
        return None;
    }
    let mut live = applied();
    live["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": applied().to_string()
    });
    live["metadata"]["uid"] = json!("0d4b1c6e-0000-4000-8000-000000000001");
    live["metadata"]["resourceVersion"] = json!("7");
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    let fake = Arc::new(Fake {
        api: OpenApi::build(Registry::builtin()),
        live: live.clone(),
        minor,
        log: Mutex::new(Vec::new()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = fake.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let f = server.clone();
            std::thread::spawn(move || f.serve(stream));
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: f, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             contexts: [{{name: f, context: {{cluster: f, user: u}}}}]\ncurrent-context: f\nusers: [{{name: u, user: {{}}}}]\n"
        ),
    )
    .unwrap();
    let mut changed = applied();
    let web = &mut changed["spec"]["template"]["spec"]["containers"][0];
    web["image"] = json!("nginx:1.26");
    web["env"] = json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"}, {"name": "C", "value": "3"}]);
    let manifest = dir.path().join("web.json");
    std::fs::write(&manifest, changed.to_string()).unwrap();

    let out = Command::new(&bin)
        .arg("apply")
        .arg("-f")
        .arg(&manifest)
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl 1.{minor} apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fake.log.lock().unwrap();
    let patch = log
        .iter()
        .find(|r| r.method == "PATCH")
        .cloned()
        .expect("kubectl sent no PATCH");
    Some((patch, live))
}

fn check(minor: &'static str) {
    let Some((patch, live)) = apply_with(minor) else {
        return;
    };
    assert!(
        patch.query.contains("fieldValidation=Strict"),
        "1.{minor}: kubectl did not leave validation to the server: {}",
        patch.query
    );
    let body: Value = serde_json::from_str(&patch.body).unwrap();
    let spec = &body["spec"]["template"]["spec"];
    // Merge keys understood: only the changed container and env entries are sent.
    assert_eq!(
        spec["$setElementOrder/containers"],
        json!([{"name": "web"}, {"name": "sidecar"}]),
        "1.{minor}: {body}"
    );
    assert_eq!(spec["containers"].as_array().unwrap().len(), 1, "{body}");
    let merged = strategic_merge_patch(deployment_kind(), &live, &body).unwrap();
    let c = &merged["spec"]["template"]["spec"]["containers"];
    assert_eq!(c[0]["image"], "nginx:1.26");
    assert_eq!(c[0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        c[0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"}, {"name": "C", "value": "3"}])
    );
    assert_eq!(c[1]["command"], json!(["sleep", "3600"]));
}

#[test]
fn kubectl_1_27_apply_uses_v2_for_validation_and_v3_for_merge_keys() {
    check("27");
}

#[test]
fn kubectl_1_33_apply_uses_v3() {
    check("33");
}

#[test]
fn kubectl_1_32_apply() {
    check("32");
}
