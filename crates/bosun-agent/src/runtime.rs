//! Container runtimes. `Runtime` is the seam between the pod worker and whatever runs the
//! containers; `ProcessRuntime` runs each container as a host process under `bosun shim`.
//! A Docker runtime implements the same trait.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::osutil::{now_rfc3339, same_process, write_atomic};
use crate::resources::Resources;
use crate::shim_spec::{BindMount, ExecSpec, ShimSpec, ShimState};

/// One run (attempt) of one container of one pod. `attempt` is the restart count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerKey {
    pub pod_uid: String,
    pub container: String,
    pub attempt: u32,
}

/// Everything needed to create a container.
#[derive(Debug, Clone, Default)]
pub struct ContainerLaunch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    pub mounts: Vec<BindMount>,
    /// CPU and memory limits (and the CPU request, for weights).
    pub resources: Resources,
    /// The CPUs the container may run on (the CPU manager's choice); None = any.
    pub cpus: Option<crate::cpus::CpuSet>,
    /// Set for containers with an image (image runtimes): `argv` is then unused.
    pub image: Option<ImageLaunch>,
    pub pod_name: String,
    pub pod_namespace: String,
    /// The container's securityContext (merged with the pod's).
    pub security: crate::security::Security,
    /// How a process container is isolated; None runs it in the host's namespaces as root.
    pub isolation: Option<crate::security::Isolation>,
}

/// What an image runtime needs beyond the process runtime's fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageLaunch {
    pub image: String,
    /// Always, IfNotPresent or Never.
    pub pull_policy: String,
    /// Kubernetes semantics: `command` replaces the image's ENTRYPOINT, `args` its CMD.
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// containerPorts as "PORT/PROTOCOL".
    pub ports: Vec<String>,
    /// Keep stdin open (`stdin: true`) and give it a terminal (`tty: true`), for attach.
    pub stdin: bool,
    pub tty: bool,
    /// The image runtime's name of a container whose PID namespace this one joins (an
    /// ephemeral container's target).
    pub pid_of: Option<String>,
}

/// The image of a container cannot be had: reported as ErrImagePull / ImagePullBackOff
/// (or ErrImageNeverPull) rather than as a container error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ImagePullError {
    /// ErrImagePull or ErrImageNeverPull.
    pub reason: &'static str,
    pub message: String,
}

/// The container's settings cannot be honoured (e.g. runAsNonRoot with an image that runs
/// as root): reported as CreateContainerConfigError.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ContainerConfigError(pub String);

#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeState {
    /// Created but its process is not (yet) running.
    Created,
    Running {
        pid: Option<u32>,
        started_at: Option<String>,
    },
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        started_at: Option<String>,
        finished_at: String,
        /// Kubernetes reason: Completed, Error, StartError, ContainerStatusUnknown.
        reason: String,
        message: Option<String>,
    },
    NotFound,
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub output: String,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Prepares the container; idempotent for the same key.
    async fn create(&self, key: &ContainerKey, launch: &ContainerLaunch) -> Result<()>;
    /// Starts a created container and returns once it runs (or failed to start).
    async fn start(&self, key: &ContainerKey) -> Result<RuntimeState>;
    /// Sends SIGTERM (`force` = false) or SIGKILL to the container.
    async fn signal(&self, key: &ContainerKey, force: bool) -> Result<()>;
    async fn status(&self, key: &ContainerKey) -> Result<RuntimeState>;
    /// Runs a command in the container's namespaces.
    async fn exec(
        &self,
        key: &ContainerKey,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput>;
    /// Runs a command in the container's namespaces with the client's streams
    /// (`kubectl exec`) and returns its exit code.
    async fn exec_stream(
        &self,
        key: &ContainerKey,
        argv: &[String],
        io: crate::streamio::StreamIo,
    ) -> Result<i32> {
        let _ = (key, argv, io);
        bail!("the {} runtime cannot stream a command", self.name())
    }
    /// Connects the client's streams to the container's main process (`kubectl attach`).
    async fn attach(&self, key: &ContainerKey, io: crate::streamio::StreamIo) -> Result<()> {
        let _ = (key, io);
        bail!("the {} runtime cannot attach", self.name())
    }
    /// Every container this runtime knows on this node (running or not): used on agent
    /// start to re-adopt what survived it.
    async fn adopt(&self) -> Result<Vec<ContainerKey>>;
    /// Removes one container attempt (must not be running). Its log is kept until the pod
    /// goes.
    async fn remove(&self, key: &ContainerKey) -> Result<()>;
    /// Removes everything of a pod, killing what still runs.
    async fn remove_pod(&self, pod_uid: &str) -> Result<()>;
    /// The CRI log file of an attempt.
    fn log_path(&self, key: &ContainerKey) -> PathBuf;

    /// Moves a running container to other CPUs (the CPU manager's shared pool changed).
    async fn set_cpus(&self, key: &ContainerKey, cpus: &crate::cpus::CpuSet) -> Result<()>;

    /// Prepares what a pod's containers share before any is created (an image runtime's
    /// sandbox holding the pod's network namespace); idempotent.
    async fn prepare_pod(
        &self,
        _pod_uid: &str,
        _pod_name: &str,
        _pod_namespace: &str,
        _net: &crate::network::PodNet,
    ) -> Result<()> {
        Ok(())
    }

    /// Identifier reported as `containerID` (`<runtime>://...`).
    fn container_id(&self, key: &ContainerKey) -> String {
        format!(
            "{}://{}/{}/{}",
            self.name(),
            key.pod_uid,
            key.container,
            key.attempt
        )
    }

    /// Whether `wait_exit` learns of an exit the moment it happens (rather than by asking
    /// `status` again and again); the pod worker then waits on it for every running attempt.
    fn reports_exits(&self) -> bool {
        false
    }

    /// Returns once the attempt no longer runs (or cannot be found). This default asks
    /// `status` every 100 ms.
    async fn wait_exit(&self, key: &ContainerKey) {
        while let Ok(RuntimeState::Running { .. } | RuntimeState::Created) = self.status(key).await
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the final state.
    async fn stop(&self, key: &ContainerKey, grace: Duration) -> Result<RuntimeState> {
        match self.status(key).await? {
            RuntimeState::Running { .. } | RuntimeState::Created => {}
            other => return Ok(other),
        }
        self.signal(key, false).await?;
        let _ = tokio::time::timeout(grace, self.wait_exit(key)).await;
        match self.status(key).await? {
            RuntimeState::Running { .. } | RuntimeState::Created => {}
            other => return Ok(other),
        }
        self.signal(key, true).await?;
        for _ in 0..100 {
            match self.status(key).await? {
                RuntimeState::Running { .. } | RuntimeState::Created => {}
                other => return Ok(other),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("container {key:?} did not exit after SIGKILL")
    }
}

/// Runs containers as host processes, each under its own `bosun shim`.
pub struct ProcessRuntime {
    pods_dir: PathBuf,
    /// The executable and leading arguments that make up the shim command
    /// (`[bosun, shim]`); `run SPEC` / `exec JSON` are appended.
    shim_cmd: Vec<PathBuf>,
    pub log_max_bytes: u64,
    pub log_max_files: usize,
    /// Where containers' cgroups go, or why there are none (limits then not enforced).
    cgroups: std::result::Result<crate::cgroup::Layout, String>,
    /// Host paths isolated containers never see (bosun's data dir and credentials).
    hidden: Vec<PathBuf>,
    /// Where a removed pod's logs are kept (`logstore::archive`); None drops them.
    log_archive: Option<PathBuf>,
}

impl ProcessRuntime {
    pub fn new(pods_dir: PathBuf, shim_exe: PathBuf) -> Self {
        Self {
            shim_cmd: vec![shim_exe, "shim".into()],
            log_max_bytes: 10 << 20,
            log_max_files: 5,
            cgroups: Err("cgroups not set up".into()),
            hidden: vec![pods_dir.clone()],
            pods_dir,
            log_archive: None,
        }
    }

    /// Keeps the logs of removed pods in `dir` (for their retention) instead of deleting them.
    pub fn with_log_archive(mut self, dir: PathBuf) -> Self {
        self.log_archive = Some(dir);
        self
    }

    /// Hides `paths` (besides the pods' directory) from isolated containers.
    pub fn with_hidden_paths(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.hidden.extend(paths);
        self
    }

    /// Places containers in cgroups of `layout` (limits enforced, usage measured).
    pub fn with_cgroups(mut self, layout: Result<crate::cgroup::Layout>) -> Self {
        self.cgroups = layout.map_err(|e| format!("{e:#}"));
        self
    }

    fn container_dir(&self, key: &ContainerKey) -> PathBuf {
        self.pods_dir
            .join(&key.pod_uid)
            .join("containers")
            .join(&key.container)
            .join(key.attempt.to_string())
    }

    fn state_path(&self, key: &ContainerKey) -> PathBuf {
        self.container_dir(key).join("state.json")
    }

    fn read_state(&self, key: &ContainerKey) -> Result<Option<ShimState>> {
        match ShimState::read(&self.state_path(key)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("state of {key:?}")),
        }
    }

    /// What `bosun shim exec` needs to run `argv` in a running container's namespaces.
    async fn exec_request(
        &self,
        key: &ContainerKey,
        argv: &[String],
        tty: bool,
    ) -> Result<ExecSpec> {
        let spec: ShimSpec = serde_json::from_slice(
            &tokio::fs::read(self.container_dir(key).join("spec.json")).await?,
        )?;
        let st = self.read_state(key)?;
        Ok(ExecSpec {
            argv: argv.to_vec(),
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone(),
            netns: spec.netns.clone(),
            mount_ns_pid: st
                .filter(|s| s.mount_namespace && s.exit_code.is_none())
                .and_then(|s| s.pid),
            isolation: spec.isolation.clone(),
            tty,
        })
    }

    fn shim_command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.shim_cmd[0]);
        c.args(&self.shim_cmd[1..]);
        c
    }
}

fn exited_from(state: &ShimState, fallback_finish: &str) -> RuntimeState {
    let exit_code = state.exit_code.unwrap_or(255);
    let (reason, message) = if let Some(err) = &state.error {
        if state.started_at.is_none() {
            ("StartError".to_string(), Some(err.clone()))
        } else {
            ("ContainerStatusUnknown".to_string(), Some(err.clone()))
        }
    } else if state.oom_killed {
        ("OOMKilled".to_string(), None)
    } else if exit_code == 0 {
        ("Completed".to_string(), None)
    } else {
        ("Error".to_string(), None)
    };
    RuntimeState::Exited {
        exit_code,
        signal: state.signal,
        started_at: state.started_at.clone(),
        finished_at: state
            .finished_at
            .clone()
            .unwrap_or_else(|| fallback_finish.to_string()),
        reason,
        message,
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn create(&self, key: &ContainerKey, launch: &ContainerLaunch) -> Result<()> {
        if launch.argv.is_empty() {
            bail!("container {} has no command", key.container);
        }
        let dir = self.container_dir(key);
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("create {}", dir.display()))?;
        let r = &launch.resources;
        let limited = r.cpu_limit.is_some() || r.memory_limit.is_some();
        let mut warnings = Vec::new();
        let cgroups = match &self.cgroups {
            Ok(layout) => {
                match layout.create(&key.pod_uid, &key.container, r, launch.cpus.as_ref()) {
                    Ok(p) => Some(p),
                    Err(e) if limited => {
                        warnings.push(format!(
                        "cannot create the container's cgroup ({e:#}): CPU and memory limits are not enforced"
                    ));
                        None
                    }
                    Err(_) => None,
                }
            }
            Err(why) if limited => {
                warnings.push(format!(
                    "no usable cgroups on this node ({why}): CPU and memory limits are not enforced"
                ));
                None
            }
            Err(_) => None,
        };
        let isolation = match &launch.isolation {
            Some(iso) if nix::unistd::geteuid().is_root() => {
                let mut iso = iso.clone();
                iso.hidden.extend(self.hidden.iter().cloned());
                Some(iso)
            }
            Some(iso) => {
                if iso.uid != nix::unistd::geteuid().as_raw() {
                    bail!(
                        "cannot run container {} as user {}: bosun runs without root privileges",
                        key.container,
                        iso.uid
                    );
                }
                warnings.push(
                    "not isolated (own PID and mount namespaces, capabilities): bosun runs without root privileges".into(),
                );
                None
            }
            None => None,
        };
        let spec = ShimSpec {
            isolation,
            cgroups,
            warnings,
            argv: launch.argv.clone(),
            env: launch.env.clone(),
            working_dir: launch.working_dir.clone(),
            netns: launch.netns.clone(),
            mounts: launch.mounts.clone(),
            log_path: self.log_path(key),
            log_max_bytes: self.log_max_bytes,
            log_max_files: self.log_max_files,
            state_path: self.state_path(key),
        };
        write_atomic(&dir.join("spec.json"), &serde_json::to_vec_pretty(&spec)?)?;
        Ok(())
    }

    async fn start(&self, key: &ContainerKey) -> Result<RuntimeState> {
        match self.status(key).await? {
            RuntimeState::Created => {}
            RuntimeState::NotFound => bail!("container {key:?} was not created"),
            other => return Ok(other),
        }
        if self.state_path(key).exists() {
            bail!("container {key:?} was already started");
        }
        let dir = self.container_dir(key);
        let shim_log = std::fs::File::create(dir.join("shim.log"))?;
        let mut child = self
            .shim_command()
            .arg("run")
            .arg(dir.join("spec.json"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(shim_log)
            .spawn()
            .with_context(|| format!("spawn shim {}", self.shim_cmd[0].display()))?;
        // Reap the shim when it ends; it is not killed when this handle goes away.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.read_state(key)?
                && (st.pid.is_some() || st.exit_code.is_some())
            {
                return self.status(key).await;
            }
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
                bail!("shim for {key:?} did not start the container: {log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn reports_exits(&self) -> bool {
        true
    }

    /// The shim records the exit in its state file and then exits itself, so the end of
    /// the shim process (a pidfd turning readable) is the moment to look. This works for a
    /// shim started by an earlier agent as well, and a shim that dies without recording an
    /// exit wakes the waiter the same way (`status` then reports the container lost).
    async fn wait_exit(&self, key: &ContainerKey) {
        loop {
            let st = match self.read_state(key) {
                Ok(Some(st)) => st,
                _ => return,
            };
            if st.exit_code.is_some() {
                return;
            }
            match process_exit(st.shim_pid, st.shim_start_ticks).await {
                Ok(()) => {
                    // The shim is gone: its exit is recorded, or the status check finds it lost.
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no pidfd for the shim; polling its state");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn signal(&self, key: &ContainerKey, force: bool) -> Result<()> {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let Some(st) = self.read_state(key)? else {
            return Ok(());
        };
        if st.exit_code.is_some() {
            return Ok(());
        }
        if same_process(st.shim_pid, st.shim_start_ticks) {
            let sig = if force {
                Signal::SIGUSR1
            } else {
                Signal::SIGTERM
            };
            kill(Pid::from_raw(st.shim_pid as i32), sig)?;
        } else if let (Some(pid), Some(ticks)) = (st.pid, st.pid_start_ticks) {
            // Shim gone, container orphaned: signal it directly.
            if same_process(pid, ticks) {
                if force {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                } else {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
            }
        }
        Ok(())
    }

    async fn status(&self, key: &ContainerKey) -> Result<RuntimeState> {
        let dir = self.container_dir(key);
        if !dir.join("spec.json").exists() {
            return Ok(RuntimeState::NotFound);
        }
        let Some(mut st) = self.read_state(key)? else {
            return Ok(RuntimeState::Created);
        };
        if st.exit_code.is_some() {
            return Ok(exited_from(&st, ""));
        }
        if same_process(st.shim_pid, st.shim_start_ticks) {
            return Ok(match st.pid {
                Some(pid) => RuntimeState::Running {
                    pid: Some(pid),
                    started_at: st.started_at.clone(),
                },
                None => RuntimeState::Created,
            });
        }
        // The shim died before recording an exit (killed): the container's fate is unknown.
        // Kill what is left of it so it cannot run unsupervised, and record the loss.
        if let (Some(pid), Some(ticks)) = (st.pid, st.pid_start_ticks)
            && same_process(pid, ticks)
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Re-read: the shim may have finished between the two reads.
        if let Some(again) = self.read_state(key)?
            && again.exit_code.is_some()
        {
            return Ok(exited_from(&again, ""));
        }
        st.exit_code = Some(137);
        st.error = Some(format!(
            "the container's supervisor (shim pid {}) is gone; its process was killed",
            st.shim_pid
        ));
        st.finished_at = Some(now_rfc3339());
        st.write(&self.state_path(key))?;
        Ok(exited_from(&st, ""))
    }

    async fn exec(
        &self,
        key: &ContainerKey,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let req = self.exec_request(key, argv, false).await?;
        let child = self
            .shim_command()
            .arg("exec")
            .arg(serde_json::to_string(&req)?)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => {
                let out = out?;
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                text.truncate(10 * 1024);
                use std::os::unix::process::ExitStatusExt;
                let code = out
                    .status
                    .code()
                    .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
                Ok(ExecOutput {
                    exit_code: code,
                    output: text,
                })
            }
            Err(_) => bail!("command timed out after {timeout:?}"),
        }
    }

    async fn exec_stream(
        &self,
        key: &ContainerKey,
        argv: &[String],
        io: crate::streamio::StreamIo,
    ) -> Result<i32> {
        let mut req = self.exec_request(key, argv, io.tty).await?;
        // As container runtimes do for a terminal: full-screen programs need a TERM.
        if io.tty && !req.env.iter().any(|(k, _)| k == "TERM") {
            req.env.push(("TERM".into(), "xterm".into()));
        }
        let mut cmd = self.shim_command();
        cmd.arg("exec").arg(serde_json::to_string(&req)?);
        crate::streamio::run_child(cmd, io).await
    }

    async fn adopt(&self) -> Result<Vec<ContainerKey>> {
        let mut out = Vec::new();
        let Ok(pods) = std::fs::read_dir(&self.pods_dir) else {
            return Ok(out);
        };
        for pod in pods.flatten() {
            let uid = pod.file_name().to_string_lossy().into_owned();
            let Ok(ctrs) = std::fs::read_dir(pod.path().join("containers")) else {
                continue;
            };
            for c in ctrs.flatten() {
                let name = c.file_name().to_string_lossy().into_owned();
                let Ok(attempts) = std::fs::read_dir(c.path()) else {
                    continue;
                };
                for a in attempts.flatten() {
                    if let Ok(attempt) = a.file_name().to_string_lossy().parse::<u32>() {
                        out.push(ContainerKey {
                            pod_uid: uid.clone(),
                            container: name.clone(),
                            attempt,
                        });
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn remove(&self, key: &ContainerKey) -> Result<()> {
        if let RuntimeState::Running { .. } = self.status(key).await? {
            bail!("container {key:?} is still running");
        }
        let dir = self.container_dir(key);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
        }
    }

    async fn remove_pod(&self, pod_uid: &str) -> Result<()> {
        for key in self.adopt().await? {
            if key.pod_uid == pod_uid {
                self.signal(&key, true).await?;
                for _ in 0..50 {
                    if !matches!(self.status(&key).await?, RuntimeState::Running { .. }) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if let Ok(layout) = &self.cgroups {
            layout.remove_pod(pod_uid);
        }
        let dir = self.pods_dir.join(pod_uid);
        if let Some(archive) = &self.log_archive
            && let Err(e) = crate::logstore::archive(&dir, archive, pod_uid)
        {
            tracing::warn!(uid = %pod_uid, error = %e, "keeping the logs of a removed pod");
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
        }
    }

    fn log_path(&self, key: &ContainerKey) -> PathBuf {
        log_path(&self.pods_dir, key)
    }

    async fn set_cpus(&self, key: &ContainerKey, cpus: &crate::cpus::CpuSet) -> Result<()> {
        match &self.cgroups {
            Ok(layout) => layout.set_cpus(&key.pod_uid, &key.container, cpus),
            Err(_) => Ok(()),
        }
    }
}

/// Returns when the process `pid` (started at `ticks`) has ended; at once when it is
/// already gone or the pid now belongs to another process.
async fn process_exit(pid: u32, ticks: u64) -> std::io::Result<()> {
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(());
    };
    let fd = match pidfd_open(p, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // Opened after the pid was read: make sure it still names the shim, not a newcomer.
    if !same_process(pid, ticks) {
        return Ok(());
    }
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, which is open (just returned by
    // pidfd_open), is closed only when the AsyncFd drops it, and always reports the same
    // descriptor: what `register_with_interest` requires.
    #[allow(unsafe_code)]
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// `<pods>/<uid>/logs/<container>/<attempt>.log`, as the kubelet lays out /var/log/pods.
pub fn log_path(pods_dir: &Path, key: &ContainerKey) -> PathBuf {
    pods_dir
        .join(&key.pod_uid)
        .join("logs")
        .join(&key.container)
        .join(format!("{}.log", key.attempt))
}
