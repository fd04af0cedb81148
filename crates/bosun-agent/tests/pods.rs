//! Pod lifecycle through the pod worker, with real processes (and real namespaces as root).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn sh(script: &str) -> serde_json::Value {
    json!(["/bin/sh", "-c", script])
}

async fn log_of(
    h: &Harness,
    pod: &k8s_openapi::api::core::v1::Pod,
    c: &str,
    attempt: u32,
) -> String {
    let path = h
        .dir
        .path()
        .join("pods")
        .join(pod.metadata.uid.as_ref().unwrap())
        .join("logs")
        .join(c)
        .join(format!("{attempt}.log"));
    let (out, _) = bosun_agent::cri_log::read_log(&path, &Default::default()).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn crash_loop_backs_off_exponentially() {
    let h = Harness::new(false).await;
    let p = pod(json!({
        "restartPolicy": "Always",
        "containers": [{"name": "crash", "command": sh("echo boom; exit 3")}]
    }));
    let w = h.spawn(p.clone());
    let s = wait_for(&h.api, 30, "3 restarts in back-off", |s| {
        let c = cstatus(s, "crash");
        c.restart_count >= 3
            && c.state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
    })
    .await;
    let c = cstatus(&s, "crash");
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert_eq!(
        s.phase.as_deref(),
        Some("Running"),
        "Always restarts: still Running"
    );
    assert!(!c.ready);
    // Delays double: 300ms, 600ms, 1.2s, then capped at 2s.
    let backoffs = h.api.events_with("BackOff");
    assert!(backoffs.len() >= 2, "{backoffs:?}");
    assert!(backoffs[0].starts_with("Back-off 300ms"), "{backoffs:?}");
    assert!(backoffs[1].starts_with("Back-off 600ms"), "{backoffs:?}");
    // restartCount never goes backwards across reports.
    let counts: Vec<i32> = h
        .api
        .statuses
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.container_statuses.as_ref().unwrap()[0].restart_count)
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    // The log of the current and previous instance are kept, older ones dropped.
    assert_eq!(
        log_of(&h, &p, "crash", c.restart_count as u32).await,
        "boom\n"
    );
    assert_eq!(
        log_of(&h, &p, "crash", c.restart_count as u32 - 1).await,
        "boom\n"
    );
    delete_and_wait(w, p.clone(), 1).await;
    assert_eq!(h.api.finalized.lock().unwrap().len(), 1);
    assert!(
        !h.dir
            .path()
            .join("pods")
            .join(p.metadata.uid.unwrap())
            .exists()
    );
}

#[tokio::test]
async fn restart_policies_and_phases() {
    let h = Harness::new(false).await;
    let ok = pod(json!({
        "restartPolicy": "OnFailure",
        "containers": [{"name": "job", "command": sh("echo done")}]
    }));
    let w = h.spawn(ok.clone());
    let s = wait_for(&h.api, 20, "Succeeded", |s| {
        s.phase.as_deref() == Some("Succeeded")
    })
    .await;
    let c = cstatus(&s, "job");
    assert_eq!(c.restart_count, 0);
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(condition(&s, "Ready"), "False");
    assert_eq!(
        s.pod_ip.as_deref(),
        Some("127.0.0.1"),
        "host network: pod IP = node IP"
    );
    assert_eq!(h.api.events_with("HostNetworkFallback").len(), 1);
    w.shutdown.cancel();
    w.handle.await.unwrap();

    let h2 = Harness::new(false).await;
    let fail = pod(json!({
        "restartPolicy": "Never",
        "containers": [{"name": "job", "command": sh("exit 7")}]
    }));
    let w = h2.spawn(fail.clone());
    let s = wait_for(&h2.api, 20, "Failed", |s| {
        s.phase.as_deref() == Some("Failed")
    })
    .await;
    let c = cstatus(&s, "job");
    assert_eq!(c.restart_count, 0);
    assert_eq!(
        c.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        7
    );
    delete_and_wait(w, fail, 1).await;
}

#[tokio::test]
async fn config_errors_are_reported_and_retried() {
    let h = Harness::new(false).await;
    let p = pod(json!({
        "containers": [
            {"name": "app", "command": sh("echo $A; sleep 30"),
             "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}}]},
            {"name": "nocmd"},
            {"name": "img", "image": "nginx:1.27"}
        ]
    }));
    let w = h.spawn(p.clone());
    let s = wait_for(&h.api, 20, "config error", |s| {
        cstatus(s, "app")
            .state
            .as_ref()
            .and_then(|x| x.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CreateContainerConfigError")
    })
    .await;
    let app = cstatus(&s, "app").state.clone().unwrap().waiting.unwrap();
    assert!(app.message.unwrap().contains("configmap \"cfg\" not found"));
    let nocmd = cstatus(&s, "nocmd").state.clone().unwrap().waiting.unwrap();
    assert_eq!(nocmd.reason.as_deref(), Some("CreateContainerConfigError"));
    assert!(nocmd.message.unwrap().contains("no command"));
    let img = cstatus(&s, "img").state.clone().unwrap().waiting.unwrap();
    assert_eq!(img.reason.as_deref(), Some("ErrImagePull"));
    assert!(img.message.unwrap().contains("runtimeClassName: process"));
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    // Level-triggered: once the ConfigMap exists the container starts.
    h.api.config_maps.lock().unwrap().insert(
        "cfg".into(),
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"a": "from-cm"}}))
            .unwrap(),
    );
    wait_for(&h.api, 20, "app running", |s| {
        cstatus(s, "app")
            .state
            .as_ref()
            .and_then(|x| x.running.as_ref())
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log_of(&h, &p, "app", 0).await, "from-cm\n");
    delete_and_wait(w, p, 2).await;
}

#[tokio::test]
async fn environment_volumes_and_downward_api() {
    if !is_root() {
        return;
    }
    let h = Harness::new(true).await;
    h.api.config_maps.lock().unwrap().insert(
        "cfg".into(),
        serde_json::from_value(json!({"metadata": {"name": "cfg"},
            "data": {"greeting": "hello", "LEVEL": "debug", "settings.ini": "x=1\n"}}))
        .unwrap(),
    );
    h.api.secrets.lock().unwrap().insert(
        "sec".into(),
        serde_json::from_value(json!({"metadata": {"name": "sec"},
            "data": {"password": "czNjcjN0"}})) // "s3cr3t"
        .unwrap(),
    );
    let mount = h.dir.path().join("mnt-config");
    let script = "echo \"$GREETING|$CFG_LEVEL|$PASS|$NAME|$NS|$APP|$IP|$NODE|$COMBINED|$MEM|$OPT\"; \
                  cat /proc/self/cwd/settings.ini; echo args:$0:$1; stat -c %a secret/pw; touch new 2>/dev/null && echo writable || echo read-only";
    let p = pod(json!({
        "restartPolicy": "Never",
        "volumes": [
            {"name": "config", "configMap": {"name": "cfg"}},
            {"name": "secret", "secret": {"secretName": "sec", "defaultMode": 256,
                "items": [{"key": "password", "path": "pw"}]}},
            {"name": "scratch", "emptyDir": {}}
        ],
        "containers": [{
            "name": "main",
            "command": ["/bin/sh", "-c", script],
            "args": ["$(GREETING)-arg", "$$(GREETING)"],
            "workingDir": mount.to_str().unwrap(),
            "resources": {"limits": {"memory": "64Mi"}},
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                        {"secretRef": {"name": "missing", "optional": true}}],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "COMBINED", "value": "$(GREETING)/$(NAME)/$(UNDEFINED)"},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}
            ],
            "volumeMounts": [
                {"name": "config", "mountPath": mount.to_str().unwrap()},
                {"name": "secret", "mountPath": mount.join("secret").to_str().unwrap(), "readOnly": true}
            ]
        }]
    }));
    let w = h.spawn(p.clone());
    let s = wait_for(&h.api, 20, "Succeeded", |s| {
        s.phase.as_deref() == Some("Succeeded")
    })
    .await;
    let ip = s.pod_ip.clone().unwrap();
    assert_ne!(ip, "127.0.0.1", "own network namespace");
    assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, ip);
    let log = log_of(&h, &p, "main", 0).await;
    let mut lines = log.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("hello|debug|s3cr3t|p1|default|web|{ip}|node-a|hello/p1/$(UNDEFINED)|64|")
    );
    assert_eq!(lines.next().unwrap(), "x=1");
    assert_eq!(lines.next().unwrap(), "args:hello-arg:$(GREETING)");
    assert_eq!(lines.next().unwrap(), "400", "defaultMode applied");
    assert_eq!(
        lines.next().unwrap(),
        "read-only",
        "configMap volumes are read-only"
    );
    assert!(
        !mount.join("settings.ini").exists(),
        "mounted only inside the container"
    );
    assert_eq!(s.qos_class.as_deref(), Some("Burstable"));
    delete_and_wait(w, p, 2).await;
    h.cleanup().await;
}

#[tokio::test]
async fn readiness_liveness_and_startup_probes() {
    if !is_root() {
        return;
    }
    let h = Harness::new(true).await;
    // Serves HTTP on 8080 after a short delay; is "alive" while the file `alive` exists,
    // which it removes after a while (first instance only: later ones find the marker).
    let script = "mkdir -p www; cd www; \
        if [ -e ../first-done ]; then touch alive; else touch ../first-done; touch alive; (sleep 3; rm -f alive) & fi; \
        sleep 1; exec python3 -m http.server 8080 --bind 0.0.0.0";
    let p = pod(with_host_dir(
        json!({
            "containers": [{
                "name": "web",
                "command": sh(script),
                "workingDir": h.dir.path().to_str().unwrap(),
                "ports": [{"name": "http", "containerPort": 8080}],
                "startupProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 30},
                "readinessProbe": {"httpGet": {"path": "/alive", "port": 8080}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["test", "-e", "www/alive"]}, "periodSeconds": 1, "failureThreshold": 2}
            }],
            "terminationGracePeriodSeconds": 2
        }),
        h.dir.path(),
    ));
    let w = h.spawn(p.clone());
    // Not started and not ready before the server listens.
    let s0 = wait_for(&h.api, 20, "running", |s| {
        cstatus(s, "web")
            .state
            .as_ref()
            .and_then(|x| x.running.as_ref())
            .is_some()
    })
    .await;
    assert!(!cstatus(&s0, "web").ready);
    let s = wait_for(&h.api, 20, "ready", |s| cstatus(s, "web").ready).await;
    assert_eq!(cstatus(&s, "web").started, Some(true));
    assert_eq!(condition(&s, "Ready"), "True");
    assert_eq!(condition(&s, "ContainersReady"), "True");
    let ip = s.pod_ip.clone().unwrap();
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{ip}:8080/alive"),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // The file goes away: readiness fails (404), liveness fails and the container restarts.
    let s = wait_for(&h.api, 30, "restart after liveness failure", |s| {
        cstatus(s, "web").restart_count >= 1
    })
    .await;
    assert_eq!(
        cstatus(&s, "web")
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        143,
        "SIGTERM ended http.server"
    );
    assert!(!h.api.events_with("Unhealthy").is_empty());
    assert!(
        h.api
            .events_with("Killing")
            .iter()
            .any(|m| m.contains("liveness"))
    );
    // The new instance keeps its file and becomes ready again.
    wait_for(&h.api, 30, "ready again", |s| {
        cstatus(s, "web").ready && cstatus(s, "web").restart_count == 1
    })
    .await;
    delete_and_wait(w, p, 2).await;
    h.cleanup().await;
}

#[tokio::test]
async fn graceful_deletion_runs_prestop_then_sigterm() {
    let h = Harness::new(false).await;
    let marker = h.dir.path().join("prestop-ran");
    let p = pod(with_host_dir(
        json!({
            "containers": [{
                "name": "svc",
                "command": sh("trap 'echo term; exit 0' TERM; while true; do sleep 0.1; done"),
                "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", format!("echo hook > {}", marker.display())]}}}
            }]
        }),
        h.dir.path(),
    ));
    let w = h.spawn(p.clone());
    wait_for(&h.api, 20, "ready", |s| cstatus(s, "svc").ready).await;
    let log_path = h
        .dir
        .path()
        .join("pods")
        .join(p.metadata.uid.as_ref().unwrap())
        .join("logs/svc/0.log");
    let log_copy = h.dir.path().join("log-copy");
    // Keep a hard link: the log goes away with the pod.
    std::fs::hard_link(&log_path, &log_copy).unwrap();
    delete_and_wait(w, p.clone(), 5).await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hook\n");
    let log = std::fs::read_to_string(&log_copy).unwrap();
    assert!(log.contains("stdout F term"), "{log}");
    let s = h.api.last().unwrap();
    let t = cstatus(&s, "svc")
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(t.exit_code, 0);
    assert_eq!(
        h.api.finalized.lock().unwrap().as_slice(),
        [p.metadata.uid.clone().unwrap()]
    );
}

#[tokio::test]
async fn sigterm_waits_until_the_pod_left_its_endpoints() {
    let h = Harness::new(false).await;
    let marker = h.dir.path().join("term-at");
    let p = pod(with_host_dir(
        json!({
            "containers": [{
                "name": "svc",
                "command": sh(&format!("trap 'date +%s.%N > {}; exit 0' TERM; while true; do sleep 0.05; done", marker.display())),
            }]
        }),
        h.dir.path(),
    ));
    let w = h.spawn(p.clone());
    wait_for(&h.api, 20, "ready", |s| cstatus(s, "svc").ready).await;
    // The endpoints still list the pod for a moment after its deletion starts.
    *h.api.ready_endpoint_until.lock().unwrap() =
        Some(std::time::SystemTime::now() + Duration::from_millis(800));
    delete_and_wait(w, p.clone(), 5).await;
    let left = h
        .api
        .left_endpoints_at
        .lock()
        .unwrap()
        .expect("endpoints never asked");
    let left = left
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let term: f64 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        term >= left,
        "SIGTERM at {term}, but the pod left its endpoints at {left}"
    );
}

#[tokio::test]
async fn worker_restart_adopts_running_containers() {
    let h = Harness::new(false).await;
    let p = pod(json!({
        "containers": [{"name": "long", "command": sh("echo started; while true; do sleep 0.1; done")}]
    }));
    let w = h.spawn(p.clone());
    let s = wait_for(&h.api, 20, "ready", |s| cstatus(s, "long").ready).await;
    let started = cstatus(&s, "long")
        .state
        .clone()
        .unwrap()
        .running
        .unwrap()
        .started_at;
    // Steady state: nothing changes, nothing is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = h.api.statuses.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        h.api.statuses.lock().unwrap().len(),
        writes,
        "status written only on change"
    );
    // The agent goes away; the container does not.
    w.shutdown.cancel();
    w.handle.await.unwrap();
    let api2 = std::sync::Arc::new(FakeApi::default());
    let ctx2 = std::sync::Arc::new(Harness::context(
        h.dir.path().into(),
        api2.clone(),
        h.ctx.network.clone(),
    ));
    let w2 = spawn_worker(ctx2, p.clone());
    let s2 = wait_for(&api2, 20, "ready after adoption", |s| {
        cstatus(s, "long").ready
    })
    .await;
    let c = cstatus(&s2, "long");
    assert_eq!(c.restart_count, 0, "not restarted");
    assert_eq!(
        c.state.clone().unwrap().running.unwrap().started_at,
        started
    );
    assert_eq!(log_of(&h, &p, "long", 0).await, "started\n");
    delete_and_wait(w2, p, 2).await;
}

#[tokio::test]
async fn init_containers_run_first_in_order() {
    let h = Harness::new(false).await;
    let work = h.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let p = pod(with_host_dir(
        json!({
            "restartPolicy": "Never",
            "initContainers": [
                {"name": "one", "command": sh("sleep 0.5; echo one >> order"), "workingDir": work.to_str().unwrap()},
                {"name": "two", "command": sh("echo two >> order"), "workingDir": work.to_str().unwrap()}
            ],
            "containers": [
                {"name": "app", "command": sh("echo app >> order"), "workingDir": work.to_str().unwrap()}
            ]
        }),
        h.dir.path(),
    ));
    let w = h.spawn(p.clone());
    let early = wait_for(&h.api, 20, "first init running", |s| {
        s.init_container_statuses.as_ref().is_some_and(|i| {
            i[0].state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .is_some()
        })
    })
    .await;
    assert_eq!(early.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&early, "Initialized"), "False");
    let app = cstatus(&early, "app")
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(app.reason.as_deref(), Some("PodInitializing"));
    let s = wait_for(&h.api, 20, "Succeeded", |s| {
        s.phase.as_deref() == Some("Succeeded")
    })
    .await;
    assert_eq!(condition(&s, "Initialized"), "True");
    for i in s.init_container_statuses.as_ref().unwrap() {
        let t = i.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(t.reason.as_deref(), Some("Completed"));
    }
    assert_eq!(
        std::fs::read_to_string(work.join("order")).unwrap(),
        "one\ntwo\napp\n"
    );
    delete_and_wait(w, p, 1).await;

    // A failing init container with restartPolicy Never fails the pod; the app never runs.
    let h2 = Harness::new(false).await;
    let p2 = pod(json!({
        "restartPolicy": "Never",
        "initContainers": [{"name": "bad", "command": sh("exit 2")}],
        "containers": [{"name": "app", "command": sh("echo must-not-run")}]
    }));
    let w2 = h2.spawn(p2.clone());
    let s = wait_for(&h2.api, 20, "Failed", |s| {
        s.phase.as_deref() == Some("Failed")
    })
    .await;
    assert!(cstatus(&s, "app").state.as_ref().unwrap().waiting.is_some());
    assert!(
        h2.api
            .events_with("Started")
            .iter()
            .all(|m| !m.contains("app"))
    );
    delete_and_wait(w2, p2, 1).await;
}

/// The pid of a container attempt's process, from its shim's state file.
fn workload_pid(h: &Harness, pod: &k8s_openapi::api::core::v1::Pod, c: &str, attempt: u32) -> u32 {
    let path = h
        .dir
        .path()
        .join("pods")
        .join(pod.metadata.uid.as_ref().unwrap())
        .join("containers")
        .join(c)
        .join(attempt.to_string())
        .join("state.json");
    bosun_agent::shim_spec::ShimState::read(&path)
        .unwrap()
        .pid
        .unwrap()
}

#[tokio::test]
async fn killed_process_restarts_and_turns_ready_on_its_exit_not_on_a_resync() {
    let h = Harness::new(false).await;
    // The periodic resync is effectively off and the readiness probe runs once an hour: the
    // restart must come from the exit itself and the probe must run as the container starts.
    let mut ctx = Harness::context(h.dir.path().into(), h.api.clone(), h.ctx.network.clone());
    ctx.sync_interval = Duration::from_secs(3600);
    let p = pod(json!({
        "restartPolicy": "Always",
        "containers": [{
            "name": "main",
            "command": ["sleep", "300"],
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 3600}
        }]
    }));
    let w = spawn_worker(std::sync::Arc::new(ctx), p.clone());
    wait_for(&h.api, 30, "ready", |s| condition(s, "Ready") == "True").await;
    let first = workload_pid(&h, &p, "main", 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_for(&h.api, 30, "restarted and ready again", |s| {
        let c = cstatus(s, "main");
        c.restart_count == 1
            && c.state.as_ref().is_some_and(|st| st.running.is_some())
            && condition(s, "Ready") == "True"
    })
    .await;
    let last = cstatus(&s, "main")
        .last_state
        .clone()
        .and_then(|l| l.terminated)
        .expect("the killed run is the last state");
    assert_eq!((last.exit_code, last.signal), (137, Some(9)));
    let second = workload_pid(&h, &p, "main", 1);
    assert_ne!(first, second);
    assert!(
        bosun_agent::osutil::proc_start_ticks(second).is_some(),
        "new process runs"
    );
    delete_and_wait(w, p, 5).await;
}
