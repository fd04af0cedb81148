//! A recording fake [`Runtime`] and [`ClusterApi`] for unit tests of the pod worker: no
//! processes, no files, no API server. The runtime records every call with the (tokio)
//! time it came at, and the test scripts how each container behaves: how long each
//! attempt runs and with which exit code, whether SIGTERM ends it, and what its exec
//! commands (probes, hooks) answer. Timestamps come from tokio's clock, so tests run on
//! paused time and never depend on how fast the machine is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Result, bail};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use tokio::time::Instant;

use crate::api::ClusterApi;
use crate::cpus::CpuSet;
use crate::runtime::{ContainerKey, ContainerLaunch, ExecOutput, Runtime, RuntimeState};

/// One call into the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Create(ContainerKey),
    Start(ContainerKey),
    /// SIGTERM (`force` false) or SIGKILL.
    Signal {
        key: ContainerKey,
        force: bool,
    },
    Exec {
        key: ContainerKey,
        argv: Vec<String>,
    },
    Remove(ContainerKey),
    RemovePod(String),
}

/// How one attempt of a container behaves once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// Exits by itself after this long with this code.
    ExitAfter(Duration, i32),
    /// Runs until signalled.
    Forever,
}

#[derive(Default)]
struct State {
    calls: Vec<(Instant, Call)>,
    containers: BTreeMap<ContainerKey, RuntimeState>,
    /// Per container name, what its next attempts do (the last plan repeats).
    runs: HashMap<String, VecDeque<Run>>,
    /// Containers that ignore SIGTERM (only SIGKILL ends them).
    ignore_term: Vec<String>,
    /// Per container name and command (words joined by spaces): exit codes of its next
    /// runs (the last repeats); commands not scripted exit 0.
    execs: HashMap<(String, String), VecDeque<i32>>,
}

pub(crate) struct FakeRuntime {
    shared: Arc<Shared>,
}

/// The fake's state, shared with the tasks that end attempts on schedule.
struct Shared {
    state: Mutex<State>,
    /// Bumped at every state change, so `wait_exit` wakes at an exit.
    changes: tokio::sync::watch::Sender<u64>,
    /// Tokio's time at creation: the origin of the wall-clock timestamps reported.
    origin: Instant,
}

/// The wall-clock time the fake reports at tokio time `t`.
fn stamp(origin: Instant, t: Instant) -> String {
    let base = jiff::Timestamp::from_second(1_767_225_600).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let since = jiff::SignedDuration::try_from(t.duration_since(origin)).unwrap_or_default();
    format!("{:.9}", base.checked_add(since).unwrap_or(base))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Ends a running attempt with `code` (and `signal`); false when it was not running.
    fn exit(&self, key: &ContainerKey, code: i32, signal: Option<i32>) -> bool {
        let finished_at = stamp(self.origin, Instant::now());
        let mut st = self.lock();
        let Some(s) = st.containers.get_mut(key) else {
            return false;
        };
        let RuntimeState::Running { started_at, .. } = s else {
            return false;
        };
        *s = RuntimeState::Exited {
            exit_code: code,
            signal,
            started_at: started_at.clone(),
            finished_at,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
        };
        drop(st);
        self.changed();
        true
    }
}

impl FakeRuntime {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(FakeRuntime {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changes: tokio::sync::watch::channel(0).0,
                origin: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    fn changed(&self) {
        self.shared.changed();
    }

    /// What the next attempts of `container` do, in order; the last one repeats.
    pub(crate) fn script(&self, container: &str, runs: &[Run]) {
        self.lock()
            .runs
            .insert(container.into(), runs.iter().copied().collect());
    }

    /// `container` ignores SIGTERM.
    pub(crate) fn ignore_term(&self, container: &str) {
        self.lock().ignore_term.push(container.into());
    }

    /// Exit codes of the next runs of `argv` in `container`; the last one repeats.
    pub(crate) fn exec_results(&self, container: &str, argv: &[&str], codes: &[i32]) {
        self.lock().execs.insert(
            (container.into(), argv.join(" ")),
            codes.iter().copied().collect(),
        );
    }

    /// Every call so far, with the time it came at.
    pub(crate) fn calls(&self) -> Vec<(Instant, Call)> {
        self.lock().calls.clone()
    }

    /// The times `container` was started, attempt by attempt.
    pub(crate) fn starts(&self, container: &str) -> Vec<(Instant, u32)> {
        self.calls()
            .into_iter()
            .filter_map(|(t, c)| match c {
                Call::Start(k) if k.container == container => Some((t, k.attempt)),
                _ => None,
            })
            .collect()
    }

    /// The current state of an attempt.
    pub(crate) fn state_of(&self, container: &str, attempt: u32) -> Option<RuntimeState> {
        self.lock()
            .containers
            .iter()
            .find(|(k, _)| k.container == container && k.attempt == attempt)
            .map(|(_, s)| s.clone())
    }

    fn record(&self, call: Call) {
        self.lock().calls.push((Instant::now(), call));
    }

    fn exit(&self, key: &ContainerKey, code: i32, signal: Option<i32>) -> bool {
        self.shared.exit(key, code, signal)
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, key: &ContainerKey, _launch: &ContainerLaunch) -> Result<()> {
        self.record(Call::Create(key.clone()));
        self.lock()
            .containers
            .entry(key.clone())
            .or_insert(RuntimeState::Created);
        Ok(())
    }

    async fn start(&self, key: &ContainerKey) -> Result<RuntimeState> {
        self.record(Call::Start(key.clone()));
        let run = {
            let mut st = self.lock();
            let run = match st.runs.get_mut(&key.container) {
                Some(q) if q.len() > 1 => q.pop_front(),
                Some(q) => q.front().copied(),
                None => None,
            }
            .unwrap_or(Run::Forever);
            let running = RuntimeState::Running {
                pid: Some(1000 + key.attempt),
                started_at: Some(stamp(self.shared.origin, Instant::now())),
            };
            match st.containers.get_mut(key) {
                Some(s @ RuntimeState::Created) => *s = running.clone(),
                _ => bail!("container {key:?} is not created"),
            }
            run
        };
        self.changed();
        if let Run::ExitAfter(after, code) = run {
            let shared = self.shared.clone();
            let key = key.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                shared.exit(&key, code, None);
            });
        }
        self.status(key).await
    }

    async fn signal(&self, key: &ContainerKey, force: bool) -> Result<()> {
        self.record(Call::Signal {
            key: key.clone(),
            force,
        });
        let ignores = self.lock().ignore_term.contains(&key.container);
        if force {
            self.exit(key, 137, Some(9));
        } else if !ignores {
            self.exit(key, 143, Some(15));
        }
        Ok(())
    }

    async fn status(&self, key: &ContainerKey) -> Result<RuntimeState> {
        Ok(self
            .lock()
            .containers
            .get(key)
            .cloned()
            .unwrap_or(RuntimeState::NotFound))
    }

    async fn exec(
        &self,
        key: &ContainerKey,
        argv: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput> {
        self.record(Call::Exec {
            key: key.clone(),
            argv: argv.to_vec(),
        });
        let mut st = self.lock();
        let code = match st.execs.get_mut(&(key.container.clone(), argv.join(" "))) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().copied(),
            None => None,
        }
        .unwrap_or(0);
        Ok(ExecOutput {
            exit_code: code,
            output: String::new(),
        })
    }

    async fn adopt(&self) -> Result<Vec<ContainerKey>> {
        Ok(self.lock().containers.keys().cloned().collect())
    }

    async fn remove(&self, key: &ContainerKey) -> Result<()> {
        self.record(Call::Remove(key.clone()));
        self.lock().containers.remove(key);
        self.changed();
        Ok(())
    }

    async fn remove_pod(&self, pod_uid: &str) -> Result<()> {
        self.record(Call::RemovePod(pod_uid.into()));
        self.lock().containers.retain(|k, _| k.pod_uid != pod_uid);
        self.changed();
        Ok(())
    }

    fn log_path(&self, key: &ContainerKey) -> PathBuf {
        PathBuf::from(format!(
            "/nonexistent/fake-runtime/{}/{}/{}.log",
            key.pod_uid, key.container, key.attempt
        ))
    }

    async fn set_cpus(&self, _key: &ContainerKey, _cpus: &CpuSet) -> Result<()> {
        Ok(())
    }

    fn reports_exits(&self) -> bool {
        true
    }

    async fn wait_exit(&self, key: &ContainerKey) {
        let mut changes = self.shared.changes.subscribe();
        loop {
            match self.status(key).await {
                Ok(RuntimeState::Running { .. } | RuntimeState::Created) => {}
                _ => return,
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A recording [`ClusterApi`]: statuses written, events, confirmed deletions.
#[derive(Default)]
pub(crate) struct RecordingApi {
    statuses: Mutex<Vec<PodStatus>>,
    events: Mutex<Vec<(bool, String, String)>>,
    finalized: Mutex<Vec<String>>,
    /// When set, reads (ConfigMaps, Services, tokens) wait here until this many are under
    /// way at once; then it is cleared.
    meet: Mutex<Option<Arc<tokio::sync::Barrier>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl RecordingApi {
    pub(crate) fn last_status(&self) -> Option<PodStatus> {
        locked(&self.statuses).last().cloned()
    }

    pub(crate) fn statuses(&self) -> Vec<PodStatus> {
        locked(&self.statuses).clone()
    }

    /// Messages of the events with `reason`.
    pub(crate) fn events(&self, reason: &str) -> Vec<String> {
        locked(&self.events)
            .iter()
            .filter(|e| e.1 == reason)
            .map(|e| e.2.clone())
            .collect()
    }

    pub(crate) fn finalized(&self) -> Vec<String> {
        locked(&self.finalized).clone()
    }

    /// Makes the next `n` reads wait for each other (see `meet`).
    pub(crate) fn meet(&self, n: usize) {
        *locked(&self.meet) = Some(Arc::new(tokio::sync::Barrier::new(n)));
    }

    async fn rendezvous(&self) {
        let b = locked(&self.meet).clone();
        if let Some(b) = b
            && b.wait().await.is_leader()
        {
            *locked(&self.meet) = None;
        }
    }
}

#[async_trait]
impl ClusterApi for RecordingApi {
    async fn config_map(&self, _ns: &str, _name: &str) -> Result<Option<ConfigMap>> {
        self.rendezvous().await;
        Ok(None)
    }
    async fn services(&self, _ns: &str) -> Result<Vec<k8s_openapi::api::core::v1::Service>> {
        self.rendezvous().await;
        Ok(Vec::new())
    }
    async fn service_account_token(
        &self,
        _pod: &Pod,
        _sa: &str,
        _audience: Option<&str>,
        _expiration_seconds: i64,
    ) -> Result<String> {
        self.rendezvous().await;
        Ok("header.claims.signature".into())
    }
    async fn secret(&self, _ns: &str, _name: &str) -> Result<Option<Secret>> {
        Ok(None)
    }
    async fn update_pod_status(&self, _pod: &Pod, status: &PodStatus) -> Result<()> {
        locked(&self.statuses).push(status.clone());
        Ok(())
    }
    async fn finalize_pod_deletion(&self, pod: &Pod) -> Result<()> {
        locked(&self.finalized).push(pod.metadata.uid.clone().unwrap_or_default());
        Ok(())
    }
    async fn event(&self, _pod: &Pod, warning: bool, reason: &str, message: &str) {
        locked(&self.events).push((warning, reason.into(), message.into()));
    }
}
