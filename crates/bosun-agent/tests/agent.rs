//! The whole agent against a real (in-process) API server: node registration, lease, pods
//! bound to the node running as processes in their own network namespaces, the logs
//! endpoint, and graceful deletion.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bosun_agent::{AgentConfig, NetworkMode};
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn tls_config() -> Arc<rustls::ServerConfig> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    Arc::new(cfg)
}

async fn eventually<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn curl(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-m", "5"])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn web_pod(name: &str, port: u16) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "node-t",
            "runtimeClassName": "process",
            "terminationGracePeriodSeconds": 5,
            // No controller here creates the `default` ServiceAccount or signs tokens: a
            // token volume would never be ready (the in-cluster tests cover it).
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "web",
                "command": ["python3", "-u", "-m", "http.server", port.to_string(), "--bind", "0.0.0.0"],
                "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "readinessProbe": {"httpGet": {"path": "/", "port": port as i32}, "periodSeconds": 1}
            }]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_pods_through_the_api() {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        bosun_testkit::skip(
            "not root: running with host networking; the two-replica part is skipped",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store =
        bosun_store::RedbStore::open(&dir.path().join("store.redb"), Default::default()).unwrap();
    let server = bosun_apiserver::ApiServer::new(bosun_apiserver::ApiServerConfig::new(
        store,
        "api-token",
        "",
    ))
    .await
    .unwrap();
    let client = kube::Client::new(server.router(), "default");
    let bridge = unique("bt");
    let _guard = Cleanup {
        pods_dir: dir.path().join("agent/pods"),
        bridge: root.then(|| bridge.clone()),
    };
    let mut cfg = AgentConfig::new(
        "node-t",
        dir.path().join("agent"),
        "127.0.0.1".parse().unwrap(),
        unique_cidr(),
        tls_config(),
        "agent-token",
        shim_exe(),
    );
    cfg.kubelet_port = 0;
    cfg.bridge_name = bridge.clone();
    cfg.network = if root {
        NetworkMode::Bridge
    } else {
        NetworkMode::Host
    };
    cfg.sync_interval = Duration::from_millis(200);
    let first = CancellationToken::new();
    let agent1 = tokio::spawn(bosun_agent::run(client.clone(), cfg.clone(), first.clone()));
    let shutdown = CancellationToken::new();
    let mut agent = None;

    let result = async {
        let nodes: Api<Node> = Api::all(client.clone());
        // Registered, with the status the agent writes right after creating the Node.
        let node = eventually(20, "node registered", async || {
            nodes.get("node-t").await.ok().filter(|n| {
                n.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.is_some() && s.daemon_endpoints.is_some())
            })
        })
        .await;
        let status = node.status.clone().unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.node_info.unwrap().kubelet_version, "v1.33.0-bosun");
        assert_eq!(status.capacity.unwrap()["pods"].0, "110");
        let port = status
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port;
        assert!(port > 0);
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let lease = eventually(20, "lease", async || leases.get("node-t").await.ok()).await;
        assert_eq!(
            lease.spec.unwrap().holder_identity.as_deref(),
            Some("node-t")
        );

        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let names: &[&str] = if root {
            &["web-1", "web-2"]
        } else {
            &["web-1"]
        };
        let http_port = if root {
            8080
        } else {
            20000 + (rand::random::<u16>() % 20000)
        };
        for n in names {
            pods.create(&PostParams::default(), &web_pod(n, http_port))
                .await?;
        }
        let mut ips = Vec::new();
        for n in names {
            let p = eventually(30, "pod ready", async || {
                let p = pods.get(n).await.ok()?;
                let s = p.status.clone()?;
                let ready = s
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (ready && s.phase.as_deref() == Some("Running")).then_some(p)
            })
            .await;
            let s = p.status.unwrap();
            assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
            assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
            ips.push(s.pod_ip.unwrap());
        }
        if root {
            assert_ne!(ips[0], ips[1], "each replica has its own IP");
        }
        for ip in &ips {
            let (ok, body) = curl(&[&format!("http://{ip}:{http_port}/")]).await;
            assert!(ok && body.contains("Directory listing"), "{body}");
        }
        // Logs through the agent's HTTPS endpoint, as the API server proxies them.
        let base = format!("https://127.0.0.1:{port}/containerLogs/default/web-1/web");
        let auth = "Authorization: Bearer agent-token";
        let logs = eventually(10, "access log", async || {
            let (_, body) = curl(&["-k", "-H", auth, &base]).await;
            body.contains("\"GET / HTTP/1.1\" 200").then_some(body)
        })
        .await;
        assert!(logs.contains("Serving HTTP on 0.0.0.0"), "{logs}");
        let (_, stamped) = curl(&[
            "-k",
            "-H",
            auth,
            &format!("{base}?timestamps=true&tailLines=1"),
        ])
        .await;
        let (ts, _) = stamped.split_once(' ').unwrap();
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{stamped}");
        assert_eq!(stamped.lines().count(), 1);
        let (_, denied) = curl(&["-k", "-o", "/dev/null", "-w", "%{http_code}", &base]).await;
        assert_eq!(denied, "401");
        let (_, missing) = curl(&[
            "-k",
            "-H",
            auth,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://127.0.0.1:{port}/containerLogs/default/nope/web"),
        ])
        .await;
        assert_eq!(missing, "404");

        // The agent restarts; its pods keep running and are adopted, not restarted.
        let before = pods
            .get("web-1")
            .await?
            .status
            .unwrap()
            .container_statuses
            .unwrap();
        first.cancel();
        tokio::time::timeout(Duration::from_secs(20), agent1).await???;
        let mut cfg2 = cfg.clone();
        cfg2.teardown_on_shutdown = true;
        agent = Some(tokio::spawn(bosun_agent::run(
            client.clone(),
            cfg2,
            shutdown.clone(),
        )));
        let (ok, _) = curl(&[&format!("http://{}:{http_port}/", ips[0])]).await;
        assert!(ok, "served while no agent runs");
        // The new agent resumes from the pod's status: no readiness blip, no restart.
        let mut watch_ready = Vec::new();
        for _ in 0..20 {
            let s = pods.get("web-1").await?.status.unwrap();
            watch_ready.push(s.container_statuses.unwrap()[0].ready);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(watch_ready.iter().all(|r| *r), "{watch_ready:?}");
        let after = pods.get("web-1").await?.status.unwrap();
        let c = &after.container_statuses.unwrap()[0];
        assert_eq!(c.restart_count, 0);
        assert!(c.ready);
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at,
            before[0]
                .state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at
        );

        // Graceful deletion: the agent stops the container and confirms; the pod goes away.
        pods.delete("web-1", &DeleteParams::default()).await?;
        eventually(30, "pod deleted", async || {
            pods.get("web-1").await.is_err().then_some(())
        })
        .await;
        let (ok, _) = curl(&["-m", "1", &format!("http://{}:{http_port}/", ips[0])]).await;
        assert!(!ok, "the deleted pod no longer serves");
        anyhow::Ok(())
    }
    .await;
    shutdown.cancel();
    first.cancel();
    let stopped = match agent {
        Some(a) => tokio::time::timeout(Duration::from_secs(30), a).await,
        None => Ok(Ok(bosun_agent::cleanup_node(&cfg).await)),
    };
    if root {
        assert!(
            !std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(),
            "bridge removed on teardown"
        );
    }
    result.unwrap();
    stopped.expect("agent stopped").unwrap().unwrap();
}
