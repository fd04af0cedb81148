use super::*;

fn container(json: serde_json::Value) -> Container {
    serde_json::from_value(json).unwrap()
}

fn exited(code: i32) -> RuntimeState {
    RuntimeState::Exited {
        exit_code: code,
        signal: None,
        started_at: Some("2026-01-01T00:00:00Z".into()),
        finished_at: "2026-01-01T00:00:05Z".into(),
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        message: None,
    }
}

fn running() -> RuntimeState {
    RuntimeState::Running {
        pid: Some(42),
        started_at: Some("2026-01-01T00:00:10Z".into()),
    }
}

fn observed(tracked: Option<Tracked>, current: Option<RuntimeState>) -> Observed {
    Observed {
        pod_uid: "uid-1".into(),
        tracked,
        runtime: Ok("process"),
        current,
        previous: None,
    }
}

fn tracked(attempt: u32) -> Tracked {
    Tracked {
        attempt: Some(attempt),
        ..Default::default()
    }
}

fn state(s: &ContainerStatus) -> ContainerState {
    s.state.clone().unwrap_or_default()
}

fn waiting_reason(s: &ContainerStatus) -> Option<String> {
    state(s).waiting.and_then(|w| w.reason)
}

fn facts() -> PodFacts {
    PodFacts {
        terminating: false,
        evicted: None,
        network_ready: true,
        pod_ip: Some("10.0.0.5".into()),
        node_ip: "192.168.1.2".into(),
        start_time: None,
        prev_conditions: Vec::new(),
        now: time("2026-01-01T01:00:00Z").unwrap(),
    }
}

fn spec(json: serde_json::Value) -> PodSpec {
    serde_json::from_value(json).unwrap()
}

fn condition<'a>(st: &'a PodStatus, ty: &str) -> &'a PodCondition {
    st.conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == ty)
        .unwrap()
}

#[test]
fn backoff_doubles_and_caps() {
    let b = Duration::from_secs(10);
    let m = Duration::from_secs(300);
    let seq: Vec<u64> = (0..8).map(|n| backoff_delay(n, b, m).as_secs()).collect();
    assert_eq!(seq, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(backoff_delay(100, b, m), m);
}

#[test]
fn a_long_run_starts_a_new_crash_series() {
    let b = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(300),
        reset: Duration::from_secs(600),
    };
    assert_eq!(
        b.next(Duration::from_secs(1), 3),
        (3, Duration::from_secs(40))
    );
    assert_eq!(b.next(Duration::from_secs(600), 3), (0, Duration::ZERO));
    assert_eq!(b.next(Duration::ZERO, 0), (0, Duration::ZERO));
}

#[test]
fn restart_policy_decides_restarts() {
    assert!(restarts("Always", 0));
    assert!(restarts("Always", 1));
    assert!(!restarts("OnFailure", 0));
    assert!(restarts("OnFailure", 137));
    assert!(!restarts("Never", 1));
    assert_eq!(init_policy("Always"), "OnFailure");
    assert_eq!(init_policy("OnFailure"), "OnFailure");
    assert_eq!(init_policy("Never"), "Never");
    assert_eq!(restart_policy(&PodSpec::default()), "Always");
}

#[test]
fn run_time_from_the_runtime_timestamps() {
    assert_eq!(
        ran_for(Some("2026-01-01T00:00:00Z"), "2026-01-01T00:01:30Z"),
        Duration::from_secs(90)
    );
    assert_eq!(ran_for(None, "2026-01-01T00:01:30Z"), Duration::ZERO);
    assert_eq!(
        ran_for(Some("garbage"), "2026-01-01T00:01:30Z"),
        Duration::ZERO
    );
}

#[test]
fn grace_period_prefers_the_deletion() {
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [], "terminationGracePeriodSeconds": 5}
    }))
    .unwrap();
    assert_eq!(grace_period(&pod), Duration::from_secs(5));
    pod.metadata.deletion_grace_period_seconds = Some(2);
    assert_eq!(grace_period(&pod), Duration::from_secs(2));
    assert_eq!(grace_period(&Pod::default()), Duration::from_secs(30));
}

#[test]
fn container_before_its_first_sync_is_creating() {
    let c = container(serde_json::json!({"name": "a", "image": "nginx"}));
    let st = container_status(&c, &observed(None, None), false);
    assert_eq!(waiting_reason(&st).as_deref(), Some("ContainerCreating"));
    assert_eq!(st.restart_count, 0);
    assert_eq!(st.image, "nginx");
    assert_eq!(st.started, Some(false));
}

#[test]
fn container_without_a_runtime_says_why() {
    let c = container(serde_json::json!({"name": "a", "image": "nginx"}));
    let mut o = observed(Some(Tracked::default()), None);
    o.runtime = Err(("ErrImagePull".into(), "no image runtime".into()));
    let st = container_status(&c, &o, false);
    let w = state(&st).waiting.unwrap();
    assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(w.message.as_deref(), Some("no image runtime"));
}

#[test]
fn recorded_waiting_reason_shows_before_the_first_attempt() {
    let c = container(serde_json::json!({"name": "a"}));
    let t = Tracked {
        waiting: Some(("CreateContainerConfigError".into(), "bad".into())),
        ..Default::default()
    };
    let st = container_status(&c, &observed(Some(t), None), false);
    assert_eq!(
        waiting_reason(&st).as_deref(),
        Some("CreateContainerConfigError")
    );
}

#[test]
fn running_container_is_ready_only_when_started_and_not_terminating() {
    let c = container(serde_json::json!({"name": "a"}));
    let t = Tracked {
        attempt: Some(0),
        started: true,
        ready: true,
        ..Default::default()
    };
    let st = container_status(&c, &observed(Some(t.clone()), Some(running())), false);
    assert!(state(&st).running.is_some());
    assert!(st.ready);
    assert_eq!(st.started, Some(true));
    assert_eq!(st.container_id.as_deref(), Some("process://uid-1/a/0"));
    let st = container_status(&c, &observed(Some(t.clone()), Some(running())), true);
    assert!(!st.ready);
    let not_started = Tracked {
        started: false,
        ..t
    };
    let st = container_status(&c, &observed(Some(not_started), Some(running())), false);
    assert!(!st.ready);
}

#[test]
fn exit_waiting_for_back_off_is_the_last_state() {
    let c = container(serde_json::json!({"name": "a"}));
    let t = Tracked {
        attempt: Some(2),
        waiting: Some(("CrashLoopBackOff".into(), "Back-off 20s".into())),
        restart_pending: true,
        ..Default::default()
    };
    let st = container_status(&c, &observed(Some(t.clone()), Some(exited(1))), false);
    assert_eq!(waiting_reason(&st).as_deref(), Some("CrashLoopBackOff"));
    let last = st.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.container_id.as_deref(), Some("process://uid-1/a/2"));
    assert_eq!(st.restart_count, 2);
    // Terminating, the exit is the state itself.
    let st = container_status(&c, &observed(Some(t), Some(exited(1))), true);
    assert_eq!(state(&st).terminated.unwrap().exit_code, 1);
}

#[test]
fn finished_container_shows_its_exit_and_the_previous_one() {
    let c = container(serde_json::json!({"name": "a"}));
    let mut o = observed(Some(tracked(1)), Some(exited(0)));
    o.previous = Some(exited(2));
    let st = container_status(&c, &o, false);
    let t = state(&st).terminated.unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let last = st.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 2);
    assert_eq!(last.container_id.as_deref(), Some("process://uid-1/a/0"));
}

#[test]
fn unknown_runtime_state_falls_back_to_what_was_recorded() {
    let c = container(serde_json::json!({"name": "a"}));
    let st = container_status(&c, &observed(Some(tracked(0)), None), false);
    assert_eq!(waiting_reason(&st).as_deref(), Some("ContainerCreating"));
    let st = container_status(
        &c,
        &observed(Some(tracked(0)), Some(RuntimeState::Created)),
        false,
    );
    assert_eq!(waiting_reason(&st).as_deref(), Some("ContainerCreating"));
}

fn status_of(name: &str, s: RuntimeState, t: Tracked) -> ContainerStatus {
    container_status(
        &container(serde_json::json!({"name": name})),
        &observed(Some(t), Some(s)),
        false,
    )
}

#[test]
fn phases_follow_the_kubelet() {
    let run = status_of("a", running(), tracked(0));
    let ok = status_of("b", exited(0), tracked(0));
    let failed = status_of("c", exited(1), tracked(0));
    let creating = container_status(
        &container(serde_json::json!({"name": "d"})),
        &observed(None, None),
        false,
    );
    assert_eq!(
        phase_of(&[run.clone(), ok.clone()], "Never", false),
        "Running"
    );
    assert_eq!(
        phase_of(std::slice::from_ref(&ok), "Never", false),
        "Succeeded"
    );
    assert_eq!(
        phase_of(&[ok.clone(), failed.clone()], "Never", false),
        "Failed"
    );
    assert_eq!(
        phase_of(std::slice::from_ref(&failed), "OnFailure", false),
        "Running"
    );
    assert_eq!(
        phase_of(std::slice::from_ref(&ok), "OnFailure", false),
        "Succeeded"
    );
    assert_eq!(
        phase_of(std::slice::from_ref(&ok), "Always", false),
        "Running"
    );
    assert_eq!(
        phase_of(&[creating.clone(), run], "Always", false),
        "Pending"
    );
    // Stopping, nothing restarts: the exits decide.
    assert_eq!(phase_of(&[ok, failed, creating], "Always", true), "Failed");
    assert_eq!(phase_of(&[], "Always", false), "Pending");
}

#[test]
fn qos() {
    let mut spec = spec(serde_json::json!({"containers": [{"name": "a"}]}));
    assert_eq!(qos_class(&spec), "BestEffort");
    spec.containers[0].resources = serde_json::from_value(serde_json::json!({
        "limits": {"cpu": "1", "memory": "1Gi"}
    }))
    .unwrap();
    assert_eq!(qos_class(&spec), "Guaranteed");
    spec.containers[0].resources = serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "1"}
    }))
    .unwrap();
    assert_eq!(qos_class(&spec), "Burstable");
}

#[test]
fn running_pod_is_ready_with_its_conditions() {
    let s = spec(serde_json::json!({"containers": [{"name": "a"}]}));
    let t = Tracked {
        attempt: Some(0),
        started: true,
        ready: true,
        ..Default::default()
    };
    let st = pod_status(
        &s,
        vec![],
        vec![status_of("a", running(), t)],
        vec![],
        &facts(),
    );
    assert_eq!(st.phase.as_deref(), Some("Running"));
    for ty in [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ] {
        assert_eq!(condition(&st, ty).status, "True", "{ty}");
    }
    assert_eq!(st.pod_ip.as_deref(), Some("10.0.0.5"));
    assert_eq!(st.pod_ips.unwrap()[0].ip, "10.0.0.5");
    assert_eq!(st.host_ip.as_deref(), Some("192.168.1.2"));
    assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));
    assert!(st.init_container_statuses.is_none());
}

#[test]
fn unready_containers_are_named_and_transition_times_carry_over() {
    let s = spec(serde_json::json!({"containers": [{"name": "a"}, {"name": "b"}]}));
    let earlier = time("2026-01-01T00:30:00Z").unwrap();
    let mut f = facts();
    f.prev_conditions = vec![PodCondition {
        type_: "Ready".into(),
        status: "False".into(),
        last_transition_time: Some(earlier.clone()),
        ..Default::default()
    }];
    let st = pod_status(
        &s,
        vec![],
        vec![
            status_of("a", running(), tracked(0)),
            status_of("b", running(), tracked(0)),
        ],
        vec![],
        &f,
    );
    let ready = condition(&st, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("containers with unready status: [a b]")
    );
    assert_eq!(ready.last_transition_time, Some(earlier));
    // A condition without a previous one of that status starts now.
    assert_eq!(
        condition(&st, "ContainersReady").last_transition_time,
        Some(f.now.clone())
    );
}

#[test]
fn init_containers_hold_the_app_containers() {
    let s = spec(serde_json::json!({
        "initContainers": [{"name": "i1"}, {"name": "i2"}],
        "containers": [{"name": "a"}]
    }));
    let app = container_status(
        &container(serde_json::json!({"name": "a"})),
        &observed(None, None),
        false,
    );
    let st = pod_status(
        &s,
        vec![
            status_of("i1", exited(0), tracked(0)),
            status_of("i2", running(), tracked(0)),
        ],
        vec![app],
        vec![],
        &facts(),
    );
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&st, "Initialized").status, "False");
    let a = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(waiting_reason(a).as_deref(), Some("PodInitializing"));
    assert_eq!(st.init_container_statuses.unwrap().len(), 2);
}

#[test]
fn a_failed_init_container_fails_a_never_restarting_pod() {
    let s = spec(serde_json::json!({
        "restartPolicy": "Never",
        "initContainers": [{"name": "i1"}],
        "containers": [{"name": "a"}]
    }));
    let app = container_status(
        &container(serde_json::json!({"name": "a"})),
        &observed(None, None),
        false,
    );
    let st = pod_status(
        &s,
        vec![status_of("i1", exited(3), tracked(0))],
        vec![app],
        vec![],
        &facts(),
    );
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    let ready = condition(&st, "Ready");
    assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    assert_eq!(ready.message, None);
}

#[test]
fn a_running_sidecar_keeps_a_finished_pod_running() {
    let s = spec(serde_json::json!({
        "restartPolicy": "Never",
        "initContainers": [{"name": "side", "restartPolicy": "Always"}],
        "containers": [{"name": "a"}]
    }));
    let app = || vec![status_of("a", exited(0), tracked(0))];
    let st = pod_status(
        &s,
        vec![status_of("side", running(), tracked(0))],
        app(),
        vec![],
        &facts(),
    );
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&st, "Initialized").status, "True");
    let st = pod_status(
        &s,
        vec![status_of("side", exited(143), tracked(0))],
        app(),
        vec![],
        &facts(),
    );
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
}

#[test]
fn an_evicted_pod_fails_with_a_disruption_condition() {
    let s = spec(serde_json::json!({"containers": [{"name": "a"}]}));
    let mut f = facts();
    f.evicted = Some("ephemeral storage over limit".into());
    let st = pod_status(
        &s,
        vec![],
        vec![status_of("a", running(), tracked(0))],
        vec![],
        &f,
    );
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    assert_eq!(st.message.as_deref(), Some("ephemeral storage over limit"));
    let first = &st.conditions.as_ref().unwrap()[0];
    assert_eq!(first.type_, "DisruptionTarget");
    assert_eq!(first.reason.as_deref(), Some("TerminationByKubelet"));
}

#[test]
fn a_finished_pod_without_network_still_reports_ready_to_start() {
    let s = spec(serde_json::json!({"restartPolicy": "Never", "containers": [{"name": "a"}]}));
    let mut f = facts();
    f.network_ready = false;
    let st = pod_status(
        &s,
        vec![],
        vec![status_of("a", exited(0), tracked(0))],
        vec![],
        &f,
    );
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    assert_eq!(condition(&st, "PodReadyToStartContainers").status, "True");
}
