//! The pod worker's decisions, as pure functions of what it observed: restart and back-off,
//! container statuses, phase, conditions and the pod status as a whole. The worker
//! (`mod.rs`) asks the runtimes and the API; everything here is computed from its answers,
//! so it is tested without processes or a clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::runtime::{ContainerKey, RuntimeState};

/// Back-off before restart number `n` (0-based count of restarts already done in this
/// crash series): the first restart is immediate, then base, 2*base, ... up to max.
pub fn backoff_delay(n: u32, base: Duration, max: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// The pod's back-off settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// A container that ran this long before exiting restarts without back-off.
    pub reset: Duration,
}

impl Backoff {
    /// The wait before restarting a container that ran for `ran`, `n` restarts into its
    /// crash series, and the series count that wait belongs to (a long run starts a new
    /// series).
    pub fn next(&self, ran: Duration, n: u32) -> (u32, Duration) {
        let n = if ran >= self.reset { 0 } else { n };
        (n, backoff_delay(n, self.base, self.max))
    }
}

/// Whether a container that exited with `exit_code` is started again under `policy`.
pub fn restarts(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

/// The restart policy of (non-sidecar) init containers in a pod with `policy`: they run
/// again after a failure unless the pod never restarts anything.
pub fn init_policy(policy: &str) -> &'static str {
    if policy == "Never" {
        "Never"
    } else {
        "OnFailure"
    }
}

/// How long an attempt ran, from the runtime's timestamps (zero when unknown).
pub fn ran_for(started_at: Option<&str>, finished_at: &str) -> Duration {
    match (started_at.and_then(time), time(finished_at)) {
        (Some(s), Some(f)) => f.0.duration_since(s.0).unsigned_abs(),
        _ => Duration::ZERO,
    }
}

/// An init container with `restartPolicy: Always`: a sidecar.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The pod's restart policy (Kubernetes' default is Always).
pub fn restart_policy(spec: &PodSpec) -> String {
    spec.restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into())
}

/// The pod's grace period: the deletion's when deleting, else the spec's (default 30 s).
pub fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

pub(crate) fn time(s: &str) -> Option<Time> {
    s.parse::<jiff::Timestamp>().ok().map(Time)
}

pub(crate) fn container_id(runtime: &str, key: &ContainerKey) -> String {
    format!(
        "{runtime}://{}/{}/{}",
        key.pod_uid, key.container, key.attempt
    )
}

/// What the worker keeps of one container between syncs, as far as its status shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracked {
    /// Latest attempt (== restartCount); None before the first was created.
    pub attempt: Option<u32>,
    pub started: bool,
    pub ready: bool,
    /// Why the container is not running when that is not an exit (reason, message).
    pub waiting: Option<(String, String)>,
    /// A restart is scheduled (back-off running).
    pub restart_pending: bool,
}

/// Everything one container's status is made of.
#[derive(Debug, Clone)]
pub struct Observed {
    pub pod_uid: String,
    /// The worker's record; None before the container was first synced.
    pub tracked: Option<Tracked>,
    /// The name of the runtime that runs it, or why none can (reason, message).
    pub runtime: Result<&'static str, (String, String)>,
    /// The runtime's answer for the latest attempt (None: not asked, or it failed).
    pub current: Option<RuntimeState>,
    /// The runtime's answer for the attempt before it.
    pub previous: Option<RuntimeState>,
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

fn terminated(
    runtime: &str,
    s: &RuntimeState,
    key: &ContainerKey,
) -> Option<ContainerStateTerminated> {
    match s {
        RuntimeState::Exited {
            exit_code,
            signal,
            started_at,
            finished_at,
            reason,
            message,
        } => Some(ContainerStateTerminated {
            exit_code: *exit_code,
            signal: *signal,
            reason: Some(reason.clone()),
            message: message.clone(),
            started_at: started_at.as_deref().and_then(time),
            finished_at: time(finished_at),
            container_id: Some(container_id(runtime, key)),
        }),
        _ => None,
    }
}

/// The waiting state the worker recorded, else ContainerCreating.
fn recorded_waiting(t: &Tracked) -> ContainerState {
    let (reason, msg) = t
        .waiting
        .clone()
        .unwrap_or(("ContainerCreating".into(), String::new()));
    waiting(&reason, Some(msg).filter(|m| !m.is_empty()))
}

/// One container's status, as the kubelet reports it.
pub fn container_status(c: &Container, o: &Observed, terminating: bool) -> ContainerStatus {
    let mut st = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        restart_count: o.tracked.as_ref().and_then(|t| t.attempt).unwrap_or(0) as i32,
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    let Some(t) = &o.tracked else {
        st.state = Some(waiting("ContainerCreating", None));
        return st;
    };
    let runtime = match &o.runtime {
        Ok(name) => *name,
        Err((reason, msg)) => {
            st.state = Some(waiting(reason, Some(msg.clone())));
            return st;
        }
    };
    let Some(attempt) = t.attempt else {
        st.state = Some(recorded_waiting(t));
        return st;
    };
    let key = |attempt| ContainerKey {
        pod_uid: o.pod_uid.clone(),
        container: c.name.clone(),
        attempt,
    };
    let current = key(attempt);
    st.container_id = Some(container_id(runtime, &current));
    if attempt > 0
        && let Some(s) = &o.previous
        && let Some(t) = terminated(runtime, s, &key(attempt - 1))
    {
        st.last_state = Some(ContainerState {
            terminated: Some(t),
            ..Default::default()
        });
    }
    match &o.current {
        Some(RuntimeState::Running { started_at, .. }) => {
            st.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: started_at.as_deref().and_then(time),
                }),
                ..Default::default()
            });
            st.started = Some(t.started);
            st.ready = t.ready && t.started && !terminating;
        }
        Some(s @ RuntimeState::Exited { .. }) => {
            let term = terminated(runtime, s, &current);
            match (&t.waiting, t.restart_pending, terminating) {
                // Waiting to restart: the exit becomes the last state.
                (Some((reason, msg)), true, false) => {
                    st.state = Some(waiting(reason, Some(msg.clone())));
                    st.last_state = term.map(|t| ContainerState {
                        terminated: Some(t),
                        ..Default::default()
                    });
                }
                _ => {
                    st.state = Some(ContainerState {
                        terminated: term,
                        ..Default::default()
                    });
                }
            }
        }
        Some(RuntimeState::Created) | Some(RuntimeState::NotFound) | None => {
            st.state = Some(recorded_waiting(t));
        }
    }
    st
}

/// The kubelet's phase rules.
pub fn phase_of(statuses: &[ContainerStatus], policy: &str, terminating: bool) -> String {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let policy = if terminating { "Never" } else { policy };
    if waiting > 0 && !terminating {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        }
    } else {
        "Pending"
    }
    .to_string()
}

/// Kubernetes QoS class from the containers' requests and limits.
pub fn qos_class(spec: &PodSpec) -> String {
    let mut any = false;
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.clone().unwrap_or_default();
        let limits: BTreeMap<_, _> = r.limits.unwrap_or_default();
        let requests: BTreeMap<_, _> = r.requests.unwrap_or_default();
        if !limits.is_empty() || !requests.is_empty() {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = limits.get(res);
            let q = requests.get(res).or(l);
            match (l, q) {
                (Some(l), Some(q)) if l == q => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
    .into()
}

/// Everything the pod's status is made of besides its containers' own.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// Stopping: containers are not ready and exits do not restart.
    pub terminating: bool,
    /// The eviction message, once the pod was evicted.
    pub evicted: Option<String>,
    /// The pod's network is set up.
    pub network_ready: bool,
    pub pod_ip: Option<String>,
    pub node_ip: String,
    pub start_time: Option<Time>,
    /// Conditions last written, whose transition times carry over.
    pub prev_conditions: Vec<PodCondition>,
    pub now: Time,
}

/// The pod's status from its containers' statuses (`init` in the order of
/// `spec.initContainers`, `app` in that of `spec.containers`).
pub fn pod_status(
    spec: &PodSpec,
    init: Vec<ContainerStatus>,
    mut app: Vec<ContainerStatus>,
    ephemeral: Vec<ContainerStatus>,
    f: &PodFacts,
) -> PodStatus {
    let policy = restart_policy(spec);
    let mut init_done = true;
    let mut init_failed = false;
    let mut sidecar_running = false;
    for (c, s) in spec.init_containers.iter().flatten().zip(&init) {
        let st = s.state.clone().unwrap_or_default();
        if is_sidecar(c) {
            sidecar_running |= st.running.is_some();
            if st.running.is_none() && s.restart_count == 0 && st.terminated.is_none() {
                init_done = false;
            }
            continue;
        }
        let ok = st.terminated.as_ref().is_some_and(|t| t.exit_code == 0);
        if !ok {
            init_done = false;
            if policy == "Never" && st.terminated.is_some() {
                init_failed = true;
            }
        }
    }
    if !init_done {
        // App containers wait for the init containers, as the kubelet reports it.
        for s in &mut app {
            if let Some(w) = s.state.as_mut().and_then(|st| st.waiting.as_mut())
                && w.reason.as_deref() == Some("ContainerCreating")
            {
                w.reason = Some("PodInitializing".into());
            }
        }
    }
    let terminating = f.terminating;
    let phase = if init_failed || f.evicted.is_some() {
        "Failed".to_string()
    } else if !init_done {
        "Pending".to_string()
    } else {
        match phase_of(&app, &policy, terminating) {
            // Finished app containers: the pod completes once its sidecars stopped.
            p if sidecar_running && !terminating && (p == "Succeeded" || p == "Failed") => {
                "Running".to_string()
            }
            p => p,
        }
    };
    let all_ready = !app.is_empty() && app.iter().all(|s| s.ready);
    let unready: Vec<&str> = app
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let prev = &f.prev_conditions;
    let cond = |ty: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let since = prev
            .iter()
            .find(|c| c.type_ == ty && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .or_else(|| Some(f.now.clone()));
        PodCondition {
            type_: ty.into(),
            status: status.into(),
            last_transition_time: since,
            reason: if ok { None } else { reason.map(String::from) },
            message: if ok { None } else { message },
            ..Default::default()
        }
    };
    let completed = matches!(phase.as_str(), "Succeeded" | "Failed");
    let not_ready_reason = if completed {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let not_ready_msg =
        (!completed).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let mut conditions = vec![
        cond(
            "PodReadyToStartContainers",
            f.network_ready || completed,
            None,
            None,
        ),
        cond(
            "Initialized",
            init_done,
            Some("ContainersNotInitialized"),
            Some("containers with incomplete status".into()),
        ),
        cond(
            "Ready",
            all_ready,
            Some(not_ready_reason),
            not_ready_msg.clone(),
        ),
        cond(
            "ContainersReady",
            all_ready,
            Some(not_ready_reason),
            not_ready_msg,
        ),
        cond("PodScheduled", true, None, None),
    ];
    if let Some(msg) = &f.evicted {
        let since = prev
            .iter()
            .find(|c| c.type_ == "DisruptionTarget")
            .and_then(|c| c.last_transition_time.clone())
            .or_else(|| Some(f.now.clone()));
        conditions.insert(
            0,
            PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some("TerminationByKubelet".into()),
                message: Some(msg.clone()),
                last_transition_time: since,
                ..Default::default()
            },
        );
    }
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: Some(f.node_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: f.node_ip.clone(),
        }]),
        pod_ip: f.pod_ip.clone(),
        pod_ips: f.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: f.start_time.clone(),
        qos_class: Some(qos_class(spec)),
        container_statuses: Some(app),
        init_container_statuses: (!init.is_empty()).then_some(init),
        ephemeral_container_statuses: (!ephemeral.is_empty()).then_some(ephemeral),
        reason: f.evicted.as_ref().map(|_| "Evicted".to_string()),
        message: f.evicted.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
