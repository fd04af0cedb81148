//! Isolation of process pods: what Docker gives a container, for a command that runs from
//! the host's file system.
//!
//! The shim puts each isolated container in a new PID namespace whose PID 1 is
//! `bosun shim init` (a tiny init, as `docker --init`/tini: it forwards signals to the
//! workload, which a PID 1 without handlers would ignore, and reaps orphans). The init
//! gets its own mount, UTS and IPC namespaces, builds the container's view of the file
//! system, sets the hostname, and starts `bosun shim enter`, which drops to the
//! container's user, groups and capabilities and execs the command. Doing this in separate
//! single-threaded stages keeps every step a safe system call (no `pre_exec`).
//!
//! The view of an unprivileged container: the host's mounts read-only, bosun's data dir,
//! the credentials and the host's secrets hidden under empty read-only mounts, a private
//! tmpfs on /tmp and /dev/shm, a minimal /dev, a /proc of its own PID namespace (with
//! Docker's masked paths), its volumes at their mountPaths (nosuid, nodev). A privileged
//! container keeps the host's view (writable) and every capability.

use std::collections::HashSet;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use caps::{CapSet, Capability, CapsHashSet};
use k8s_openapi::api::core::v1::Pod;
use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::osutil::write_atomic;
use crate::security::Isolation;
use crate::shim_spec::{BindMount, ExecSpec, ShimSpec};

/// Host paths no unprivileged container sees, besides bosun's own directories: the
/// credentials of the host's users and of the container engines beside bosun. Only the
/// credentials in root's home: tools installed there (e.g. pyenv) stay usable.
pub const HOST_SECRETS: &[&str] = &[
    "/root/.ssh",
    "/root/.kube",
    "/root/.docker",
    "/root/.gnupg",
    "/root/.aws",
    "/root/.config/gcloud",
    "/root/.bash_history",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssh",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/etc/kubernetes",
];

/// The hostname of a pod, as Kubernetes sets it: spec.hostname, else the pod's name
/// (at most 63 characters).
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}

/// The pod's /etc/hosts, as the kubelet writes it: localhost, and the pod's own hostname
/// (with its FQDN under spec.subdomain) at its IP, so resolving its own name (as many
/// servers do at start) never waits for DNS. Only for pods with their own network.
pub fn hosts_file(pod: &Pod, pod_ip: &str, cluster_domain: &str) -> String {
    let host = pod_hostname(pod);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    match pod
        .spec
        .as_ref()
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(sub) => out.push_str(&format!(
            "{pod_ip}\t{host}.{sub}.{ns}.svc.{cluster_domain}\t{host}\n"
        )),
        None => out.push_str(&format!("{pod_ip}\t{host}\n")),
    }
    out
}

/// Writes the pod's hosts file in its directory and returns its mount at /etc/hosts.
pub fn prepare_hosts_file(
    pod: &Pod,
    pod_ip: &str,
    cluster_domain: &str,
    pod_dir: &Path,
) -> std::io::Result<BindMount> {
    let path = pod_dir.join("etc-hosts");
    std::fs::create_dir_all(pod_dir)?;
    let text = hosts_file(pod, pod_ip, cluster_domain);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        write_atomic(&path, text.as_bytes())?;
    }
    Ok(BindMount {
        source: path,
        target: "/etc/hosts".into(),
        read_only: false,
    })
}

/// What `bosun shim enter` does: become the container's user and exec its command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct EnterSpec {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: Option<PathBuf>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// None: keep every capability (privileged).
    capabilities: Option<Vec<String>>,
    no_new_privs: bool,
    /// Join the namespaces of this (host) pid first: exec into a running container.
    join: Option<u32>,
    /// Take stdin (a terminal) as controlling terminal in a session of its own: done here,
    /// inside the container's PID namespace, so the shell's process group is one it sees
    /// (a session made outside has a leader it cannot name, and job control fails).
    #[serde(default)]
    take_terminal: bool,
}

impl EnterSpec {
    fn new(iso: &Isolation, argv: &[String], env: &[(String, String)], wd: Option<&Path>) -> Self {
        EnterSpec {
            argv: argv.to_vec(),
            env: env.to_vec(),
            working_dir: wd.map(Path::to_path_buf),
            uid: iso.uid,
            gid: iso.gid,
            groups: iso.groups.clone(),
            capabilities: (!iso.privileged).then(|| iso.capabilities.clone()),
            no_new_privs: iso.no_new_privs,
            join: None,
            take_terminal: false,
        }
    }
}

fn self_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// The command the shim starts instead of the container's: `bosun shim init`, as PID 1 of
/// a new PID namespace. Called by the single-threaded shim right before it spawns; the
/// shim drops the returned guard right after, to create threads again.
pub fn init_command(
    iso: &Isolation,
    spec_path: &Path,
) -> Result<(Command, ChildPidNamespace), String> {
    let mut guard = ChildPidNamespace(None);
    if iso.pid_namespace {
        let own = std::fs::File::open("/proc/self/ns/pid")
            .map_err(|e| format!("cannot open the PID namespace: {e}"))?;
        // Affects the children of the shim only: the init becomes PID 1 of the namespace.
        nix::sched::unshare(CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("cannot create a PID namespace: {e}"))?;
        guard.0 = Some(own);
    }
    let mut c = Command::new(self_exe());
    c.arg("shim").arg("init").arg(spec_path);
    Ok((c, guard))
}

/// While alive, the shim's children are born in the container's PID namespace, and the
/// shim can start no thread (the kernel refuses threads whose PID namespace differs);
/// dropping it returns the shim to its own.
pub struct ChildPidNamespace(Option<std::fs::File>);

impl Drop for ChildPidNamespace {
    fn drop(&mut self) {
        if let Some(f) = self.0.take()
            && let Err(e) = nix::sched::setns(f, CloneFlags::CLONE_NEWPID)
        {
            eprintln!("bosun shim: cannot return to its PID namespace: {e}");
        }
    }
}

/// `bosun shim init SPEC.json`: sets up the container's namespaces and view of the file
/// system, starts the workload and stays its PID 1: forwards signals to it, reaps
/// orphans, and exits with its status (128+N when a signal N ended it).
pub fn init_main(spec_path: &Path) -> i32 {
    let spec: ShimSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bosun shim init: cannot read {}: {e}", spec_path.display());
            return 126;
        }
    };
    let Some(iso) = spec.isolation.clone() else {
        eprintln!("bosun shim init: the spec asks for no isolation");
        return 126;
    };
    // Taken synchronously below; the workload gets an empty mask again (std resets it).
    let mut sigs = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        sigs.add(s);
    }
    if let Err(e) = sigs.thread_block() {
        eprintln!("bosun shim init: cannot block signals: {e}");
        return 126;
    }
    if let Err(e) = setup(&spec, &iso) {
        eprintln!("bosun shim init: {e}");
        return 126;
    }
    let enter = EnterSpec::new(&iso, &spec.argv, &spec.env, spec.working_dir.as_deref());
    let json = match serde_json::to_string(&enter) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bosun shim init: {e}");
            return 126;
        }
    };
    // /proc/self/exe reaches the binary even where its path is hidden in this view.
    let child = match Command::new("/proc/self/exe")
        .arg("shim")
        .arg("enter")
        .arg(json)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bosun shim init: cannot start the container: {e}");
            return 126;
        }
    };
    let main = Pid::from_raw(child.id() as i32);
    loop {
        match sigs.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, code)) if p == main => return code,
                    Ok(WaitStatus::Signaled(p, sig, _)) if p == main => return 128 + sig as i32,
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            Ok(sig) => {
                let _ = kill(main, sig);
            }
            Err(_) => {}
        }
    }
}

/// The container's namespaces and view, made by the init inside its PID namespace.
fn setup(spec: &ShimSpec, iso: &Isolation) -> Result<(), String> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS;
    if iso.ipc_namespace {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    nix::sched::unshare(flags).map_err(|e| format!("unshare namespaces: {e}"))?;
    if !iso.hostname.is_empty() {
        nix::unistd::sethostname(&iso.hostname).map_err(|e| format!("sethostname: {e}"))?;
    }
    // Nothing mounted here may reach the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    let host_mounts = mount_points();
    let targets: Vec<&Path> = spec.mounts.iter().map(|m| m.target.as_path()).collect();
    let tmp_is_volume = targets.contains(&Path::new("/tmp"));
    // Held open: the private /tmp may cover where they are (bosun's data dir in /tmp).
    let sources = spec
        .mounts
        .iter()
        .map(|m| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(&m.source)
                .map_err(|e| format!("volume source {}: {e}", m.source.display()))
        })
        .collect::<Result<Vec<std::fs::File>, String>>()?;
    if !iso.privileged && !tmp_is_volume {
        tmpfs("/tmp", "mode=1777", MsFlags::empty())?;
    }
    bind_volumes(&spec.mounts, &sources, !iso.privileged)?;
    drop(sources);
    if !iso.privileged {
        // The host's file system read-only: every mount of the host, except where a
        // volume or the private /tmp now stands.
        let shadowed = |p: &Path| {
            p.starts_with("/proc")
                || (!tmp_is_volume && p.starts_with("/tmp"))
                || targets.iter().any(|t| p.starts_with(t))
        };
        for (point, flags) in &host_mounts {
            if shadowed(point) {
                continue;
            }
            let r = mount(
                None::<&str>,
                point,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | *flags,
                None::<&str>,
            );
            // A mount point below another mount cannot always be reached by its path (it
            // is covered); only the root must succeed.
            if let Err(e) = r
                && point == Path::new("/")
            {
                return Err(format!("read-only remount of /: {e}"));
            }
        }
        let mut hidden: Vec<PathBuf> = iso.hidden.clone();
        hidden.extend(HOST_SECRETS.iter().map(PathBuf::from));
        for h in &hidden {
            if targets.iter().any(|t| h.starts_with(t)) {
                continue;
            }
            hide(h)?;
        }
    }
    if iso.pid_namespace {
        proc_mount(!iso.privileged)?;
    }
    if !iso.privileged {
        minimal_dev()?;
        if iso.read_only_root && !tmp_is_volume {
            mount(
                None::<&str>,
                "/tmp",
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(|e| format!("read-only /tmp: {e}"))?;
        }
    }
    // The shim's working directory may be inside bosun's data dir: leave it.
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Mount points of this mount namespace with the flags a remount must keep.
fn mount_points() -> Vec<(PathBuf, MsFlags)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<(PathBuf, MsFlags)> = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = unescape(f.get(4)?);
            let mut flags = MsFlags::empty();
            for o in f.get(5)?.split(',') {
                flags |= match o {
                    "nosuid" => MsFlags::MS_NOSUID,
                    "nodev" => MsFlags::MS_NODEV,
                    "noexec" => MsFlags::MS_NOEXEC,
                    "noatime" => MsFlags::MS_NOATIME,
                    "nodiratime" => MsFlags::MS_NODIRATIME,
                    "relatime" => MsFlags::MS_RELATIME,
                    _ => MsFlags::empty(),
                };
            }
            Some((PathBuf::from(point), flags))
        })
        .collect();
    out.sort_by(|a, b| (a.0.components().count(), &a.0).cmp(&(b.0.components().count(), &b.0)));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tmpfs(target: &str, data: &str, extra: MsFlags) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        Some(data),
    )
    .map_err(|e| format!("tmpfs at {target}: {e}"))
}

/// Covers `path` with an empty read-only mount (a tmpfs for a directory, /dev/null for a
/// file), so nothing below it can be read.
fn hide(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let r = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=755"),
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.map_err(|e| format!("hide {}: {e}", path.display()))
}

/// Creates a missing mount point for a bind mount: a directory for a directory source, an
/// empty file (and its parents) for a file.
pub(crate) fn ensure_mount_point(target: &Path, dir: bool) -> Result<(), String> {
    if target.exists() {
        return Ok(());
    }
    if dir {
        std::fs::create_dir_all(target)
    } else {
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("mount point {}: {e}", p.display()))?;
        }
        std::fs::File::create(target).map(|_| ())
    }
    .map_err(|e| format!("mount point {}: {e}", target.display()))
}

/// Bind-mounts the volumes at their mountPaths, parents first; missing mount points are
/// created on the host file system (an empty directory or file) before it turns
/// read-only. `restrict`: no setuid binaries nor device files through a volume.
fn bind_volumes(
    mounts: &[BindMount],
    sources: &[std::fs::File],
    restrict: bool,
) -> Result<(), String> {
    let mut mounts: Vec<(&BindMount, &std::fs::File)> = mounts.iter().zip(sources).collect();
    mounts.sort_by_key(|(m, _)| m.target.components().count());
    for (m, src) in &mounts {
        let src_is_dir = src
            .metadata()
            .map_err(|e| format!("volume source {}: {e}", m.source.display()))?
            .is_dir();
        ensure_mount_point(&m.target, src_is_dir)?;
        let from = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(*src));
        mount(
            Some(from.as_str()),
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("bind {} at {}: {e}", m.source.display(), m.target.display()))?;
    }
    for (m, _) in mounts.iter().rev() {
        let mut flags = MsFlags::empty();
        if m.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if restrict {
            flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        }
        if flags.is_empty() {
            continue;
        }
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .map_err(|e| format!("remount of {}: {e}", m.target.display()))?;
    }
    Ok(())
}

/// A /proc of the container's PID namespace; unprivileged: with the paths Docker masks
/// (kernel memory, keys, timers) covered and the kernel's knobs read-only.
fn proc_mount(mask: bool) -> Result<(), String> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    if !mask {
        return Ok(());
    }
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/acpi",
        "/proc/scsi",
        "/proc/latency_stats",
    ] {
        hide(Path::new(p))?;
    }
    for p in [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ] {
        if !Path::new(p).exists() {
            continue;
        }
        mount(Some(p), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .and_then(|()| {
                mount(
                    None::<&str>,
                    p,
                    None::<&str>,
                    MsFlags::MS_BIND
                        | MsFlags::MS_REMOUNT
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
            })
            .map_err(|e| format!("read-only {p}: {e}"))?;
    }
    Ok(())
}

/// A /dev with only the harmless devices (no disks, no kernel memory), /dev/shm and the
/// usual links; read-only, so no device node can be added.
fn minimal_dev() -> Result<(), String> {
    const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
    // Open the host's nodes before covering /dev; bind them from the open files.
    let held: Vec<(&str, std::fs::File)> = DEVICES
        .iter()
        .filter_map(|d| {
            std::fs::File::open(format!("/dev/{d}"))
                .ok()
                .map(|f| (*d, f))
        })
        .collect();
    tmpfs("/dev", "mode=755,size=64k", MsFlags::MS_NOEXEC)?;
    for (d, f) in &held {
        let target = format!("/dev/{d}");
        std::fs::File::create(&target).map_err(|e| format!("{target}: {e}"))?;
        let src = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f));
        mount(
            Some(src.as_str()),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind {target}: {e}"))?;
    }
    drop(held);
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, link).map_err(|e| format!("{link}: {e}"))?;
    }
    for d in ["/dev/shm", "/dev/pts", "/dev/mqueue"] {
        std::fs::create_dir(d).map_err(|e| format!("{d}: {e}"))?;
    }
    tmpfs("/dev/shm", "mode=1777", MsFlags::MS_NOEXEC)?;
    mount(
        None::<&str>,
        "/dev",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(|e| format!("read-only /dev: {e}"))?;
    Ok(())
}

/// `bosun shim enter JSON`: (joins a running container's namespaces,) takes the
/// container's groups, user and capabilities, and execs its command.
pub fn enter_main(json: &str) -> i32 {
    let spec: EnterSpec = match serde_json::from_str(json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bosun shim enter: bad request: {e}");
            return 126;
        }
    };
    if let Some(pid) = spec.join
        && let Err(e) = join_namespaces(pid)
    {
        eprintln!("bosun shim enter: {e}");
        return 126;
    }
    if spec.take_terminal {
        let ctty = nix::unistd::setsid()
            .map_err(std::io::Error::from)
            .and_then(|_| rustix::process::ioctl_tiocsctty(std::io::stdin()).map_err(Into::into));
        if let Err(e) = ctty {
            eprintln!("bosun shim enter: cannot take the terminal: {e}");
            return 126;
        }
    }
    if let Err(e) = drop_privileges(&spec) {
        eprintln!("bosun shim enter: {e}");
        return 126;
    }
    let Some((prog, rest)) = spec.argv.split_first() else {
        eprintln!("bosun shim enter: no command");
        return 126;
    };
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(wd) = &spec.working_dir {
        if !wd.is_dir() {
            eprintln!(
                "workingDir {} does not exist or is not a directory",
                wd.display()
            );
            return 126;
        }
        cmd.current_dir(wd);
    }
    // The init blocks the signals it forwards and this shim runs with transparent huge pages
    // off; exec keeps both. The command starts clean, as every container process does.
    crate::signals::reset_in_child(&mut cmd);
    let err = cmd.exec();
    eprintln!("failed to start {prog:?}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

fn join_namespaces(pid: u32) -> Result<(), String> {
    // Open all first: the mount namespace changes what /proc is.
    let mut files = Vec::new();
    for (ns, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{pid}/ns/{ns}");
        let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        files.push((ns, f, flag));
    }
    for (ns, f, flag) in files {
        nix::sched::setns(f, flag).map_err(|e| format!("join {ns} namespace of {pid}: {e}"))?;
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

fn drop_privileges(spec: &EnterSpec) -> Result<(), String> {
    if let Some(keep) = &spec.capabilities {
        let keep: HashSet<Capability> = keep.iter().filter_map(|c| c.parse().ok()).collect();
        // The bounding set caps what the command can ever hold: a root command gets
        // exactly these after exec, a non-root one none (as in Docker).
        for c in caps::all() {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)
                    .map_err(|e| format!("drop capability {c}: {e}"))?;
            }
        }
        let inheritable: CapsHashSet = caps::read(None, CapSet::Inheritable)
            .map_err(|e| format!("read capabilities: {e}"))?
            .intersection(&keep)
            .copied()
            .collect();
        caps::set(None, CapSet::Inheritable, &inheritable)
            .map_err(|e| format!("set capabilities: {e}"))?;
    }
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups {:?}: {e}", spec.groups))?;
    nix::unistd::setgid(Gid::from_raw(spec.gid))
        .map_err(|e| format!("setgid {}: {e}", spec.gid))?;
    nix::unistd::setuid(Uid::from_raw(spec.uid))
        .map_err(|e| format!("setuid {}: {e}", spec.uid))?;
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    Ok(())
}

/// `bosun shim exec` into an isolated container: joins its PID namespace (for the child)
/// and runs the command through `bosun shim enter`, which joins the other namespaces and
/// takes the container's user and capabilities. Returns the command's exit code.
pub fn exec_in(spec: &ExecSpec, iso: &Isolation, pid: u32) -> i32 {
    if iso.pid_namespace {
        let path = format!("/proc/{pid}/ns/pid");
        let joined = std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::sched::setns(f, CloneFlags::CLONE_NEWPID).map_err(|e| e.to_string())
            });
        if let Err(e) = joined {
            eprintln!("bosun shim exec: cannot join PID namespace of {pid}: {e}");
            return 126;
        }
    }
    let mut enter = EnterSpec::new(iso, &spec.argv, &spec.env, spec.working_dir.as_deref());
    enter.join = Some(pid);
    enter.take_terminal = spec.tty;
    let json = match serde_json::to_string(&enter) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bosun shim exec: {e}");
            return 126;
        }
    };
    match Command::new(self_exe())
        .arg("shim")
        .arg("enter")
        .arg(json)
        .status()
    {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
        }
        Err(e) => {
            eprintln!("bosun shim exec: {e}");
            126
        }
    }
}

/// Gives a volume directory (and what is in it) to the pod's fsGroup, as the kubelet
/// does: group-owned, the set-group-ID bit on directories so new files inherit the group,
/// group read (and write, unless `read_only`) on everything.
pub fn give_to_fs_group(dir: &Path, gid: u32, read_only: bool) -> std::io::Result<()> {
    let add = if read_only { 0o440 } else { 0o660 };
    let walk = |p: &Path, is_dir: bool| -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, None, Some(gid))?;
        let mode = std::fs::metadata(p)?.permissions().mode() & 0o7777;
        let want = if is_dir {
            mode | add | 0o2000 | 0o110
        } else {
            mode | add
        };
        if want != mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(want))?;
        }
        Ok(())
    };
    fn visit(p: &Path, f: &dyn Fn(&Path, bool) -> std::io::Result<()>) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        f(p, meta.is_dir())?;
        if meta.is_dir() {
            for e in std::fs::read_dir(p)? {
                visit(&e?.path(), f)?;
            }
        }
        Ok(())
    }
    visit(dir, &walk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{DEFAULT_CAPABILITIES, NON_ROOT_MESSAGE, Security, canonical};
    use k8s_openapi::api::core::v1::Container;
    use std::collections::BTreeSet;

    fn pod(json: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(json).unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    #[test]
    fn container_fields_win_over_the_pod() {
        let (p, c) = pod(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                        "supplementalGroups": [3000, 2000], "runAsNonRoot": true},
                     "containers": [{"name": "a", "securityContext": {"runAsUser": 65534}}]}
        }));
        let s = Security::of(&p, &c);
        assert_eq!(s.run_as_user, Some(65534));
        assert_eq!(s.run_as_group, Some(1000));
        assert_eq!(s.groups(), vec![2000, 3000]);
        assert!(s.run_as_non_root);
        assert!(s.no_new_privs());
        let iso = Isolation::for_process(&s, pod_hostname(&p));
        assert_eq!(
            (iso.uid, iso.gid, iso.hostname.as_str()),
            (65534, 1000, "web")
        );
    }

    #[test]
    fn capabilities_follow_docker_and_containerd() {
        let mut s = Security::default();
        let default: BTreeSet<String> =
            DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        assert_eq!(s.capabilities(), default);
        s.cap_add = vec![canonical("net_admin")];
        s.cap_drop = vec![canonical("NET_RAW"), canonical("CAP_KILL")];
        let c = s.capabilities();
        assert!(
            c.contains("CAP_NET_ADMIN") && !c.contains("CAP_NET_RAW") && !c.contains("CAP_KILL")
        );
        s.cap_drop = vec!["ALL".into()];
        assert_eq!(
            s.capabilities(),
            BTreeSet::from(["CAP_NET_ADMIN".to_string()])
        );
        s.privileged = true;
        assert!(s.capabilities().contains("CAP_SYS_ADMIN"));
        assert!(!s.no_new_privs());
    }

    #[test]
    fn run_as_non_root() {
        let mut s = Security {
            run_as_non_root: true,
            ..Default::default()
        };
        assert_eq!(s.check_non_root(None), Err(NON_ROOT_MESSAGE.to_string()));
        assert_eq!(s.check_non_root(Some(0)), Err(NON_ROOT_MESSAGE.to_string()));
        assert!(s.check_non_root(Some(1000)).is_ok());
        s.run_as_user = Some(0);
        assert!(s.check_non_root(Some(1000)).is_err());
        s.run_as_user = Some(10);
        assert!(s.check_non_root(None).is_ok());
    }

    #[test]
    fn hostname_is_spec_hostname_or_pod_name() {
        let (p, _) = pod(serde_json::json!({"metadata": {"name": "web-1"},
            "spec": {"hostname": "db", "subdomain": "s", "containers": [{"name": "a"}]}}));
        assert_eq!(pod_hostname(&p), "db");
        let (p, _) = pod(serde_json::json!({"metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(pod_hostname(&p), "web-1");
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let (p, _) = pod(
            serde_json::json!({"metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"hostname": "db", "subdomain": "s", "containers": [{"name": "a"}]}}),
        );
        let h = hosts_file(&p, "10.0.0.7", "cluster.local");
        assert!(h.contains("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(
            h.ends_with("10.0.0.7\tdb.s.shop.svc.cluster.local\tdb\n"),
            "{h}"
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
