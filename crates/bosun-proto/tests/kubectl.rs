//! Real kubectl request bodies decode to the JSON kubectl itself renders for the same object.
//!
//! `fixtures/<name>.pb` are bodies kubectl 1.33 POSTed, `fixtures/<name>.json` the output of the
//! same command with `--dry-run=client -o json`. The live test repeats the capture against a local
//! HTTP server when kubectl is installed; `BOSUN_PROTO_RECORD_FIXTURES=1 cargo test -p bosun-proto
//! --test kubectl live_` rewrites the fixtures from it (`BOSUN_TEST_KUBECTL` picks the binary).

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// JSON equivalence of a decoded body and kubectl's JSON rendering.
///
/// `null` equals absence (`creationTimestamp: null` is the zero time). Extra
/// zero numbers and `false` in the decoded object are accepted: Go's protobuf encoder writes every
/// non-pointer field, so a zero `omitempty` field is on the wire although its JSON omits it.
fn equivalent(decoded: &Value, want: &Value, path: &str) -> Result<(), String> {
    match (decoded, want) {
        (Value::Object(d), Value::Object(w)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match d.get(k) {
                    None if wv.is_null() => {}
                    None => return Err(format!("{p}: missing, want {wv}")),
                    Some(dv) => equivalent(dv, wv, &p)?,
                }
            }
            for (k, dv) in d {
                let absent = w.get(k).is_none_or(Value::is_null);
                let zero = dv.is_null() || *dv == json!(0) || *dv == json!(false);
                if absent && !zero {
                    return Err(format!("{path}.{k}: unexpected {dv}"));
                }
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(w)) if d.len() == w.len() => d
            .iter()
            .zip(w)
            .enumerate()
            .try_for_each(|(i, (dv, wv))| equivalent(dv, wv, &format!("{path}[{i}]"))),
        _ if decoded == want => Ok(()),
        _ => Err(format!("{path}: got {decoded}, want {want}")),
    }
}

const FIXTURES: &[&str] = &[
    "create-namespace",
    "create-configmap",
    "create-secret",
    "create-deployment",
    "create-service-nodeport",
];

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn captured_kubectl_bodies_decode_to_kubectl_json() {
    for name in FIXTURES {
        let decoded = bosun_proto::decode(&fixture(&format!("{name}.pb")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Value = serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap();
        if let Err(e) = equivalent(&decoded, &want, "") {
            panic!("{name}: {e}\ndecoded: {decoded:#}");
        }
    }
}

#[test]
fn captured_bodies_carry_the_expected_values() {
    let cm = bosun_proto::decode(&fixture("create-configmap.pb")).unwrap();
    assert_eq!(cm["data"], json!({"a": "b"}));
    assert_eq!(cm["binaryData"], json!({"blob": "AAH+/wo="}));
    let secret = bosun_proto::decode(&fixture("create-secret.pb")).unwrap();
    assert_eq!(secret["data"]["password"], json!("cHc="));
    assert_eq!(secret["type"], json!("Opaque"));
    let svc = bosun_proto::decode(&fixture("create-service-nodeport.pb")).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], json!("http"));
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], json!(30080));
    let deploy = bosun_proto::decode(&fixture("create-deployment.pb")).unwrap();
    // A pointer field set to zero survives (`--replicas=0`).
    assert_eq!(deploy["spec"]["replicas"], json!(0));
    // Unset strings kubectl's encoder wrote as "" must not reach the server as values.
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert!(c.get("imagePullPolicy").is_none(), "{c}");
    assert!(deploy["metadata"].get("namespace").is_none());
}

/// Decoded bodies go through bosun's create pipeline (typed decode, unknown fields, defaults,
/// validation) exactly like kubectl's JSON for the same object.
#[test]
fn captured_bodies_pass_bosuns_create_pipeline_like_json() {
    use bosun_api::{Registry, defaults, strict, validation};
    for name in FIXTURES {
        let mut decoded = bosun_proto::decode(&fixture(&format!("{name}.pb"))).unwrap();
        let mut json: Value = serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap();
        let kind = Registry::builtin()
            .by_kind(
                json["apiVersion"].as_str().unwrap(),
                json["kind"].as_str().unwrap(),
            )
            .unwrap_or_else(|| panic!("{name}: not a bosun kind"));
        for obj in [&mut decoded, &mut json] {
            if kind.namespaced {
                obj["metadata"]["namespace"] = json!("default");
            }
            *obj = (kind.roundtrip)(obj).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                strict::unknown_fields(kind, obj),
                Vec::<String>::new(),
                "{name}"
            );
            defaults::apply_defaults(kind, obj);
            let errors: Vec<String> = validation::validate_create(kind, obj)
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            assert_eq!(errors, Vec::<String>::new(), "{name}");
        }
        if let Err(e) = equivalent(&decoded, &json, "") {
            panic!("{name} after defaulting: {e}\ndecoded: {decoded:#}\njson: {json:#}");
        }
    }
}

/// kubectl 1.33 without the version dispatcher, or the dispatcher (which picks 1.33 from /version).
fn kubectl() -> Option<String> {
    if let Ok(k) = std::env::var("BOSUN_TEST_KUBECTL") {
        return Some(k);
    }
    [
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
        "/usr/bin/kubectl",
        "/usr/local/bin/kubectl",
    ]
    .iter()
    .find(|p| Path::new(p).exists())
    .map(|p| p.to_string())
}

type Captured = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Records POST bodies and answers them with the decoded object, so kubectl prints what bosun
/// would store.
async fn handle(
    captured: Captured,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if method == axum::http::Method::GET && uri.path() == "/version" {
        let v = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"});
        return axum::Json(v).into_response();
    }
    if method != axum::http::Method::POST {
        return StatusCode::NOT_FOUND.into_response();
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    captured
        .lock()
        .unwrap()
        .push((uri.path().to_string(), ct.clone(), body.to_vec()));
    // kubectl before 1.33 sends JSON; echo it so those versions can run this test too.
    if ct == "application/json" {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        return (StatusCode::CREATED, axum::Json(v)).into_response();
    }
    if !bosun_proto::is_protobuf(&ct) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, ct).into_response();
    }
    match bosun_proto::decode(&body) {
        Ok(v) => (StatusCode::CREATED, axum::Json(v)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// Runs kubectl with `extra` flags and `-o json` placed before any `--` (which starts a command).
fn run(kubectl: &str, cmd: &[&str], extra: &[&str]) -> Value {
    let split = cmd.iter().position(|a| *a == "--").unwrap_or(cmd.len());
    let mut args: Vec<&str> = cmd[..split].to_vec();
    args.extend(extra);
    args.extend(["-o", "json"]);
    args.extend(&cmd[split..]);
    let out = std::process::Command::new(kubectl)
        .args(&args)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("kubectl {args:?} output: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_kubectl_create_commands() {
    let Some(kubectl) = kubectl() else {
        bosun_testkit::skip(
            "kubectl is not installed: live capture not exercised (fixtures still are)",
        );
        return;
    };
    let captured: Captured = Arc::default();
    let app = axum::Router::new().fallback({
        let captured = captured.clone();
        move |m, u, h, b| handle(captured.clone(), m, u, h, b)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("--server=http://{}", listener.local_addr().unwrap());
    let serve = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = std::env::temp_dir().join(format!("bosun-proto-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let blob = dir.join("blob");
    std::fs::write(&blob, [0u8, 1, 0xfe, 0xff, b'\n']).unwrap();
    let from_file = format!("--from-file=blob={}", blob.display());

    // (fixture name or "", command)
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("create-namespace", vec!["create", "namespace", "dev"]),
        (
            "create-configmap",
            vec!["create", "configmap", "x", "--from-literal=a=b", &from_file],
        ),
        (
            "create-secret",
            vec![
                "create",
                "secret",
                "generic",
                "s",
                "--from-literal=password=pw",
                "--type=Opaque",
            ],
        ),
        (
            "",
            vec![
                "create",
                "secret",
                "docker-registry",
                "reg",
                "--docker-server=r.example",
                "--docker-username=u",
                "--docker-password=p",
            ],
        ),
        (
            "create-deployment",
            vec![
                "create",
                "deployment",
                "web",
                "--image=nginx:1.27",
                "--replicas=0",
                "--port=8080",
                "--",
                "/bin/sh",
                "-c",
                "sleep 1",
            ],
        ),
        (
            "create-service-nodeport",
            vec![
                "create",
                "service",
                "nodeport",
                "np",
                "--tcp=80:http",
                "--node-port=30080",
            ],
        ),
        (
            "",
            vec!["create", "service", "clusterip", "cip", "--tcp=80:8080"],
        ),
        (
            "",
            vec!["create", "job", "once", "--image=busybox", "--", "true"],
        ),
        (
            "",
            vec![
                "create",
                "cronjob",
                "tick",
                "--image=busybox",
                "--schedule=*/5 * * * *",
                "--",
                "date",
            ],
        ),
        ("", vec!["create", "serviceaccount", "robot"]),
        (
            "",
            vec![
                "create",
                "priorityclass",
                "high",
                "--value=1000",
                "--description=important",
            ],
        ),
        (
            "",
            vec!["create", "quota", "q", "--hard=cpu=2,memory=1Gi,pods=10"],
        ),
        (
            "",
            vec![
                "create",
                "poddisruptionbudget",
                "pdb",
                "--selector=app=web",
                "--min-available=50%",
            ],
        ),
        (
            "",
            vec![
                "create",
                "ingress",
                "ing",
                "--rule=example.com/path*=svc:8080",
            ],
        ),
    ];
    let mut failures = Vec::new();
    let record = std::env::var_os("BOSUN_PROTO_RECORD_FIXTURES").is_some();
    let mut protobuf_bodies = 0;
    for (fixture, cmd) in &commands {
        let (k, server) = (kubectl.clone(), server.clone());
        let cmd_owned: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let (want, printed) = tokio::task::spawn_blocking(move || {
            let cmd: Vec<&str> = cmd_owned.iter().map(String::as_str).collect();
            (
                run(&k, &cmd, &["--dry-run=client"]),
                run(&k, &cmd, &[&server]),
            )
        })
        .await
        .unwrap();
        let (path, ct, body) = captured.lock().unwrap().pop().expect("kubectl sent a POST");
        if !bosun_proto::is_protobuf(&ct) {
            assert_eq!(ct, "application/json", "{cmd:?} to {path}");
            continue;
        }
        protobuf_bodies += 1;
        let decoded = bosun_proto::decode(&body).unwrap();
        if record && !fixture.is_empty() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
            std::fs::write(dir.join(format!("{fixture}.pb")), &body).unwrap();
            let pretty = serde_json::to_string_pretty(&want).unwrap() + "\n";
            std::fs::write(dir.join(format!("{fixture}.json")), pretty).unwrap();
        }
        // What kubectl printed is the server's answer: the decoded object, read back by kubectl.
        assert_eq!(printed["kind"], want["kind"], "{cmd:?}");
        if let Err(e) =
            equivalent(&decoded, &want, "").and_then(|()| equivalent(&printed, &want, ""))
        {
            failures.push(format!("{cmd:?}: {e}\ndecoded: {decoded}\nwant: {want}"));
        }
    }
    serve.abort();
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!(
        "{kubectl}: {protobuf_bodies} of {} bodies were protobuf",
        commands.len()
    );
    if std::env::var_os("BOSUN_TEST_KUBECTL").is_none() {
        // The default kubectl is 1.33, whose typed create commands all send protobuf.
        assert_eq!(protobuf_bodies, commands.len());
    }
}
