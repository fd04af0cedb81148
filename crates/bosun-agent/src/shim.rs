//! The per-container supervisor (`bosun shim`).
//!
//! `bosun shim run SPEC.json` detaches into its own session (so it outlives the agent, even a
//! `kill -9` of it), joins the pod's network namespace, gives the container a private mount
//! namespace with its volumes bind-mounted at their mountPaths, starts the command, writes its
//! output as CRI log records and, when it exits, its exit code and finish time to the state file.
//! SIGTERM/SIGINT are forwarded to the container's main process; SIGUSR1 kills the whole
//! container (its process group) with SIGKILL.
//!
//! `bosun shim exec JSON` runs a command inside a running container's namespaces (exec probes
//! and preStop hooks).

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::unistd::Pid;

use crate::cri_log::LogWriter;
use crate::osutil::{now_rfc3339, proc_start_ticks};
use crate::shim_spec::{BindMount, ExecSpec, ShimSpec, ShimState};

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
}

/// Entry of `bosun shim ...`; `args` are the words after `shim`.
///
/// Must be called before the process starts any thread (in particular before a Tokio
/// runtime): namespaces are joined and signals blocked for the calling thread only.
pub fn shim_main(args: Vec<String>) -> ! {
    if thread_count() > 1 {
        eprintln!("bosun shim: must start single-threaded (dispatch before starting a runtime)");
        std::process::exit(2);
    }
    let code = match args.first().map(String::as_str) {
        Some("run") if args.len() == 2 => run(Path::new(&args[1])),
        Some("exec") if args.len() == 2 => exec(&args[1]),
        Some("init") if args.len() == 2 => crate::isolation::init_main(Path::new(&args[1])),
        Some("enter") if args.len() == 2 => crate::isolation::enter_main(&args[1]),
        _ => {
            eprintln!("usage: bosun shim run SPEC.json | bosun shim exec JSON");
            2
        }
    };
    std::process::exit(code)
}

fn run(spec_path: &Path) -> i32 {
    let spec: ShimSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bosun shim: cannot read {}: {e}", spec_path.display());
            return 2;
        }
    };
    // Own session: no controlling terminal, not in the agent's process group, so signals
    // aimed at the agent (Ctrl-C, kill of its group) do not reach the containers.
    let _ = nix::unistd::setsid();
    let me = std::process::id();
    let mut state = ShimState {
        shim_pid: me,
        shim_start_ticks: proc_start_ticks(me).unwrap_or(0),
        ..Default::default()
    };
    // Signals are taken synchronously by a dedicated thread (sigwait); blocking them must
    // happen before any thread exists so that every thread inherits the mask. The child
    // starts with an empty mask and default dispositions (`signals::reset_in_child`).
    let mut sigs = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        sigs.add(s);
    }
    if let Err(e) = sigs.thread_block() {
        eprintln!("bosun shim: cannot block signals: {e}");
    }
    let fail = |mut state: ShimState, msg: String| -> i32 {
        state.error = Some(msg);
        state.exit_code = Some(128);
        state.finished_at = Some(now_rfc3339());
        let _ = state.write(&spec.state_path);
        1
    };
    if let Err(e) = state.write(&spec.state_path) {
        eprintln!("bosun shim: cannot write state: {e}");
        return 1;
    }
    if let Some(ns) = &spec.netns
        && let Err(e) = join_netns(ns)
    {
        return fail(
            state,
            format!("cannot join network namespace {}: {e}", ns.display()),
        );
    }
    // Only volumes need a mount namespace; without any the container shares the host's.
    // An isolated container's mounts are made by its init, in its own namespaces.
    let own_mounts: &[BindMount] = if spec.isolation.is_some() {
        &[]
    } else {
        &spec.mounts
    };
    match private_mounts(own_mounts) {
        _ if spec.isolation.is_some() => state.mount_namespace = true,
        _ if spec.mounts.is_empty() => {}
        Ok(()) => state.mount_namespace = true,
        // Without the privilege for a mount namespace the container runs in the host's, and
        // its volumes are reachable only under the pod directory: said in the state so the
        // agent can report it.
        Err(MountError::Unsupported(e)) => {
            state.warnings.push(format!(
                "no private mount namespace ({e}); volumes are not mounted at their mountPaths"
            ));
        }
        Err(MountError::Failed(e)) => {
            return fail(state, format!("cannot mount volumes: {e}"));
        }
    }
    let mut log = match LogWriter::open(&spec.log_path, spec.log_max_bytes, spec.log_max_files) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                state,
                format!("cannot open log {}: {e}", spec.log_path.display()),
            );
        }
    };
    let Some((prog, rest)) = spec.argv.split_first() else {
        return fail(state, "no command given".into());
    };
    state.warnings.extend(spec.warnings.iter().cloned());
    // The shim enters the container's cgroups only to spawn it (the child inherits them)
    // and leaves right after, so the limits and the OOM killer apply to the container alone.
    let mut oom_before = 0;
    if let Some(cg) = &spec.cgroups {
        match crate::cgroup::join(&cg.dirs) {
            Ok(()) => oom_before = crate::cgroup::oom_kills(&cg.dirs),
            Err(e) => state.warnings.push(format!(
                "cannot enter cgroup {:?} ({e}): CPU and memory limits are not enforced",
                cg.dirs
            )),
        }
    }
    let mut child_pid_ns = None;
    let mut cmd = match &spec.isolation {
        Some(iso) => match crate::isolation::init_command(iso, spec_path) {
            Ok((c, ns)) => {
                child_pid_ns = Some(ns);
                c
            }
            Err(e) => return fail(state, e),
        },
        None => {
            let mut c = Command::new(prog);
            c.args(rest);
            c
        }
    };
    cmd.env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The container is a process group: SIGKILL reaches everything it started.
        .process_group(0);
    crate::signals::reset_in_child(&mut cmd);
    // An isolated container's workingDir is checked in its own view, by `shim enter`.
    if let Some(wd) = spec
        .working_dir
        .as_ref()
        .filter(|_| spec.isolation.is_none())
    {
        if !wd.is_dir() {
            let msg = format!(
                "workingDir {} does not exist or is not a directory",
                wd.display()
            );
            let _ = log.write_line("stderr", msg.as_bytes(), false);
            return fail(state, msg);
        }
        cmd.current_dir(wd);
    }
    let spawned = cmd.spawn();
    drop(child_pid_ns);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("failed to start {prog:?}: {e}");
            let _ = log.write_line("stderr", msg.as_bytes(), false);
            return fail(state, msg);
        }
    };
    if let Some(cg) = &spec.cgroups {
        let _ = crate::cgroup::join(&cg.restore);
    }
    let pid = child.id();
    state.pid = Some(pid);
    state.pid_start_ticks = proc_start_ticks(pid);
    state.started_at = Some(now_rfc3339());
    let _ = state.write(&spec.state_path);

    let pipes: Vec<(&'static str, OwnedFd)> = [
        ("stdout", child.stdout.take().map(OwnedFd::from)),
        ("stderr", child.stderr.take().map(OwnedFd::from)),
    ]
    .into_iter()
    .filter_map(|(name, fd)| Some((name, fd?)))
    .collect();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut log = log;
        crate::cri_log::pump(pipes, &mut log);
        let _ = done_tx.send(());
    });
    std::thread::spawn(move || {
        loop {
            match sigs.wait() {
                Ok(Signal::SIGUSR1) => {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                Ok(_) => {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    let status = child.wait();
    // The container ends with its main process: whatever it left behind goes too.
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    // Drain the pipes; a process that escaped the group may hold them, so do not wait forever.
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(st) => {
            if let Some(sig) = st.signal() {
                state.signal = Some(sig);
                state.exit_code = Some(128 + sig);
            } else {
                state.exit_code = st.code();
            }
        }
        Err(e) => {
            state.error = Some(format!("wait failed: {e}"));
            state.exit_code = Some(255);
        }
    }
    if let Some(cg) = &spec.cgroups {
        state.oom_killed = crate::cgroup::oom_kills(&cg.dirs) > oom_before;
    }
    state.finished_at = Some(now_rfc3339());
    if let Err(e) = state.write(&spec.state_path) {
        eprintln!("bosun shim: cannot write final state: {e}");
        return 1;
    }
    0
}

fn join_netns(path: &Path) -> nix::Result<()> {
    let f = std::fs::File::open(path)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
}

/// Gives this process (and so the container) its own mount namespace, detached from the
/// host's propagation, and bind-mounts the volumes. Missing mount points are created on the
/// host file system (an empty directory or file), the only trace a container leaves there.
enum MountError {
    Unsupported(String),
    Failed(String),
}

impl From<String> for MountError {
    fn from(s: String) -> Self {
        MountError::Failed(s)
    }
}

fn private_mounts(mounts: &[BindMount]) -> Result<(), MountError> {
    use nix::mount::{MsFlags, mount};
    if mounts.is_empty() {
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| MountError::Unsupported(format!("unshare(CLONE_NEWNS): {e}")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| MountError::Unsupported(format!("make / private: {e}")))?;
    // Parents before children, and every bind before any read-only remount, so mount
    // points of nested volumes can still be created inside their parent volume.
    let mut mounts: Vec<&BindMount> = mounts.iter().collect();
    mounts.sort_by_key(|m| m.target.components().count());
    for m in &mounts {
        let src_is_dir = std::fs::metadata(&m.source)
            .map_err(|e| format!("volume source {}: {e}", m.source.display()))?
            .is_dir();
        crate::isolation::ensure_mount_point(&m.target, src_is_dir)?;
        mount(
            Some(&m.source),
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("bind {} at {}: {e}", m.source.display(), m.target.display()))?;
    }
    for m in mounts.iter().rev() {
        if m.read_only {
            mount(
                None::<&str>,
                &m.target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("read-only remount of {}: {e}", m.target.display()))?;
        }
    }
    Ok(())
}

fn exec(json: &str) -> i32 {
    let spec: ExecSpec = match serde_json::from_str(json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bosun shim exec: bad request: {e}");
            return 2;
        }
    };
    // An isolated container's command takes the terminal inside its PID namespace
    // (`shim enter`).
    if spec.tty && spec.isolation.is_none() {
        // A session of its own with the terminal as controlling terminal, so that the
        // terminal's signals (^C) and job control reach the command.
        let ctty = nix::unistd::setsid()
            .map_err(std::io::Error::from)
            .and_then(|_| rustix::process::ioctl_tiocsctty(std::io::stdin()).map_err(Into::into));
        if let Err(e) = ctty {
            eprintln!("bosun shim exec: cannot take the terminal: {e}");
            return 126;
        }
    }
    if let Some(iso) = &spec.isolation {
        let Some(pid) = spec.mount_ns_pid else {
            eprintln!("bosun shim exec: the container is not running");
            return 126;
        };
        return crate::isolation::exec_in(&spec, iso, pid);
    }
    // Open the netns file before switching mount namespaces: its path is the host's.
    let netns = match &spec.netns {
        Some(ns) => match std::fs::File::open(ns) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("bosun shim exec: {}: {e}", ns.display());
                return 126;
            }
        },
        None => None,
    };
    if let Some(pid) = spec.mount_ns_pid {
        let path = format!("/proc/{pid}/ns/mnt");
        match std::fs::File::open(&path) {
            Ok(f) => {
                if let Err(e) = nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNS) {
                    eprintln!("bosun shim exec: cannot join mount namespace of {pid}: {e}");
                    return 126;
                }
            }
            Err(e) => {
                eprintln!("bosun shim exec: {path}: {e}");
                return 126;
            }
        }
    }
    if let Some(f) = netns
        && let Err(e) = nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
    {
        eprintln!("bosun shim exec: cannot join network namespace: {e}");
        return 126;
    }
    let Some((prog, rest)) = spec.argv.split_first() else {
        eprintln!("bosun shim exec: no command");
        return 2;
    };
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    crate::signals::reset_in_child(&mut cmd);
    if let Some(wd) = &spec.working_dir {
        cmd.current_dir(wd);
    }
    let err = cmd.exec();
    eprintln!("bosun shim exec: {prog:?}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
