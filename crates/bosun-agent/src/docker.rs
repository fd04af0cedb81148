//! The Docker runtime: containers with an image run as Docker containers through the
//! Docker Engine API.
//!
//! A pod is one sandbox container (`bosun_POD_<uid>`, a tiny `pause` image the agent builds
//! locally) holding the pod's network namespace, and one Docker container per container
//! attempt (`bosun_<container>_<uid>_<attempt>`) that joins it (`NetworkMode:
//! container:<sandbox>`). The pod network is the agent's own (`network::BridgeNetwork`):
//! the pod's eth0, made in its named namespace, is moved into the sandbox's namespace and
//! that namespace takes the name, so probes, exec and the host side see one pod network
//! whatever runtime its containers use.
//!
//! Containers carry labels (owner = the agent's data dir, pod uid/name/namespace,
//! container, attempt), which is how a restarted agent finds them again and tells its own
//! from others on a shared engine. Docker's logs are copied into the CRI log files the
//! agent serves; `<pod>/containers/<name>/<attempt>/docker.json` records the container's id
//! and main pid (for stats) and whether its log is complete (for `logs -f`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::network::PodNet;
use crate::runtime::{
    ContainerKey, ContainerLaunch, ExecOutput, ImagePullError, Runtime, RuntimeState,
};

/// The longest an image pull may take before it counts as failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

pub const LABEL_OWNER: &str = "io.bosun.owner";
pub const LABEL_POD_UID: &str = "io.bosun.pod.uid";
pub const LABEL_POD_NAME: &str = "io.bosun.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.bosun.pod.namespace";
pub const LABEL_CONTAINER: &str = "io.bosun.container";
pub const LABEL_ATTEMPT: &str = "io.bosun.attempt";
pub const LABEL_PORTS: &str = "io.bosun.ports";
/// The image of the pod sandbox, built locally by the agent (no registry needed).
pub const PAUSE_IMAGE: &str = "bosun-pause:1";

/// What the runtime keeps of a container attempt next to the pod's other files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DockerRecord {
    pub id: String,
    pub pid: Option<u32>,
    pub pid_start_ticks: Option<u64>,
    /// The log copier saw the end of the container's output.
    pub log_complete: bool,
}

pub fn record_path(pods_dir: &Path, key: &ContainerKey) -> PathBuf {
    pods_dir
        .join(&key.pod_uid)
        .join("containers")
        .join(&key.container)
        .join(key.attempt.to_string())
        .join("docker.json")
}

pub fn read_record(path: &Path) -> Option<DockerRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_record(path: &Path, r: &DockerRecord) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    crate::osutil::write_atomic(path, &serde_json::to_vec(r)?)?;
    Ok(())
}

pub struct DockerRuntime {
    docker: Docker,
    pods_dir: PathBuf,
    owner: String,
    log_max_bytes: u64,
    log_max_files: usize,
    /// Containers (by name) whose log is being copied or was copied to the end.
    copiers: Arc<Mutex<HashSet<String>>>,
}

pub(crate) fn container_name(key: &ContainerKey) -> String {
    format!("bosun_{}_{}_{}", key.container, key.pod_uid, key.attempt)
}

fn sandbox_name(pod_uid: &str) -> String {
    format!("bosun_POD_{pod_uid}")
}

fn is_status(e: &DockerError, code: u16) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn not_found(e: &DockerError) -> bool {
    is_status(e, 404)
}

/// A static x86-64 Linux program that only sleeps (pause(2) in a loop): the sandbox's
/// process. ELF header, one PT_LOAD program header, then `mov eax,34; syscall; jmp -9`.
#[cfg(target_arch = "x86_64")]
fn pause_binary() -> Option<Vec<u8>> {
    let code: [u8; 9] = [0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    let base: u64 = 0x40_0000;
    let size = (64 + 56 + code.len()) as u64;
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(base + 120).to_le_bytes()); // entry
    b.extend_from_slice(&64u64.to_le_bytes()); // phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    b.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    b.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    b.extend_from_slice(&1u16.to_le_bytes()); // phnum
    b.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // R+X
    b.extend_from_slice(&0u64.to_le_bytes()); // offset
    b.extend_from_slice(&base.to_le_bytes()); // vaddr
    b.extend_from_slice(&base.to_le_bytes()); // paddr
    b.extend_from_slice(&size.to_le_bytes()); // filesz
    b.extend_from_slice(&size.to_le_bytes()); // memsz
    b.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    b.extend_from_slice(&code);
    Some(b)
}

#[cfg(not(target_arch = "x86_64"))]
fn pause_binary() -> Option<Vec<u8>> {
    None
}

/// A one-file tar archive (ustar), enough for a root file system of one program.
fn tar_one(name: &str, data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |v: u64, len: usize| format!("{v:0w$o}\0", w = len - 1).into_bytes();
    h[100..108].copy_from_slice(&octal(mode as u64, 8));
    h[108..116].copy_from_slice(&octal(0, 8));
    h[116..124].copy_from_slice(&octal(0, 8));
    h[124..136].copy_from_slice(&octal(data.len() as u64, 12));
    h[136..148].copy_from_slice(&octal(0, 12));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn parse_time(s: Option<&str>) -> Option<String> {
    let s = s?;
    // Docker's zero time means "never".
    if s.starts_with("0001-") {
        return None;
    }
    Some(s.to_string())
}

impl DockerRuntime {
    /// Connects to the local engine (DOCKER_HOST or /var/run/docker.sock), agrees on an API
    /// version and makes sure the sandbox image exists.
    /// Rotates each container's log at `max_bytes`, keeping `max_files` files.
    pub fn with_log_limits(mut self, max_bytes: u64, max_files: usize) -> Self {
        self.log_max_bytes = max_bytes;
        self.log_max_files = max_files;
        self
    }

    pub async fn connect(pods_dir: PathBuf, owner: String) -> Result<Self> {
        let docker = Docker::connect_with_local_defaults().context("connect to Docker")?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| anyhow!("Docker engine did not answer within 5s"))?
            .context("Docker engine not reachable")?;
        docker.ping().await.context("ping Docker engine")?;
        let rt = Self {
            docker,
            pods_dir,
            owner,
            log_max_bytes: 10 << 20,
            log_max_files: 5,
            copiers: Arc::default(),
        };
        rt.ensure_pause_image().await?;
        Ok(rt)
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn ensure_pause_image(&self) -> Result<()> {
        if self.docker.inspect_image(PAUSE_IMAGE).await.is_ok() {
            return Ok(());
        }
        let bin = pause_binary().context(
            "no sandbox (pause) program for this CPU architecture; image pods unavailable",
        )?;
        let tar = tar_one("pause", &bin, 0o755);
        let (repo, tag) = PAUSE_IMAGE
            .split_once(':')
            .unwrap_or((PAUSE_IMAGE, "latest"));
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.into()),
            tag: Some(tag.into()),
            changes: vec![r#"ENTRYPOINT ["/pause"]"#.into()],
            ..Default::default()
        };
        let mut s =
            self.docker
                .create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
        while let Some(r) = s.next().await {
            r.context("import the sandbox image")?;
        }
        Ok(())
    }

    fn labels(&self, uid: &str, name: &str, ns: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_OWNER.to_string(), self.owner.clone()),
            (LABEL_POD_UID.to_string(), uid.to_string()),
            (LABEL_POD_NAME.to_string(), name.to_string()),
            (LABEL_POD_NAMESPACE.to_string(), ns.to_string()),
        ])
    }

    /// Containers of this agent, optionally of one pod.
    async fn list(&self, pod_uid: Option<&str>) -> Result<Vec<bollard::models::ContainerSummary>> {
        let mut label = vec![format!("{LABEL_OWNER}={}", self.owner)];
        if let Some(uid) = pod_uid {
            label.push(format!("{LABEL_POD_UID}={uid}"));
        }
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), label)])),
            ..Default::default()
        };
        Ok(self.docker.list_containers(Some(opts)).await?)
    }

    /// Makes the image present per the pull policy.
    /// Docker's `User` for the container's runAsUser/runAsGroup (None: the image's), after
    /// the runAsNonRoot check against the user the image would run as.
    async fn user_for(
        &self,
        image: &str,
        sec: &crate::security::Security,
    ) -> Result<Option<String>> {
        let image_user =
            if sec.run_as_user.is_none() && (sec.run_as_non_root || sec.run_as_group.is_some()) {
                let cfg = self
                    .docker
                    .inspect_image(image)
                    .await
                    .context("inspect image")?
                    .config
                    .and_then(|c| c.user)
                    .unwrap_or_default();
                Some(cfg.split(':').next().unwrap_or("").to_string())
            } else {
                None
            };
        if sec.run_as_non_root {
            let uid = match image_user.as_deref() {
                None => None,
                Some("" | "root") => Some(0),
                Some(u) => match u.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        return Err(crate::runtime::ContainerConfigError(format!(
                            "container has runAsNonRoot and image has non-numeric user ({u}), cannot verify user is non-root"
                        ))
                        .into());
                    }
                },
            };
            sec.check_non_root(uid)
                .map_err(crate::runtime::ContainerConfigError)?;
        }
        Ok(match (sec.run_as_user, sec.run_as_group) {
            (None, None) => None,
            (Some(u), None) => Some(u.to_string()),
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (None, Some(g)) => {
                let u = image_user.filter(|u| !u.is_empty());
                Some(format!("{}:{g}", u.as_deref().unwrap_or("0")))
            }
        })
    }

    async fn ensure_image(&self, image: &str, policy: &str) -> Result<()> {
        let present = match self.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if not_found(&e) => false,
            Err(e) => return Err(e).context("inspect image"),
        };
        match policy {
            "Never" if present => return Ok(()),
            "Never" => {
                return Err(ImagePullError {
                    reason: "ErrImageNeverPull",
                    message: format!(
                        "Container image \"{image}\" is not present with pull policy of Never"
                    ),
                }
                .into());
            }
            "IfNotPresent" if present => return Ok(()),
            _ => {}
        }
        let (repo, tag) = split_image(image);
        let opts = CreateImageOptions {
            from_image: Some(repo),
            tag: Some(tag),
            ..Default::default()
        };
        let mut s = self.docker.create_image(Some(opts), None, None);
        let pull = async {
            while let Some(r) = s.next().await {
                if let Err(e) = r {
                    return Some(e.to_string());
                }
            }
            None
        };
        // A registry that never answers must not hold the pod's worker for ever.
        let failure = tokio::time::timeout(PULL_TIMEOUT, pull)
            .await
            .unwrap_or_else(|_| Some(format!("no answer within {}s", PULL_TIMEOUT.as_secs())));
        match failure {
            None => Ok(()),
            Some(e) => Err(ImagePullError {
                reason: "ErrImagePull",
                message: format!(
                    "failed to pull image \"{image}\" (pull policy {policy}): {e}{}",
                    if present {
                        ""
                    } else {
                        "; the image is not present on the node either (build it locally or make its registry reachable)"
                    }
                ),
            }
            .into()),
        }
    }

    async fn sandbox_running(&self, pod_uid: &str) -> Result<Option<(String, u32)>> {
        match self
            .docker
            .inspect_container(&sandbox_name(pod_uid), None)
            .await
        {
            Ok(c) => {
                let st = c.state.unwrap_or_default();
                let pid = st.pid.unwrap_or(0);
                if st.running == Some(true) && pid > 0 {
                    Ok(Some((c.id.unwrap_or_default(), pid as u32)))
                } else {
                    Ok(None)
                }
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Follows a container's Docker log into its CRI log file, from where an earlier copy
    /// stopped, until the container's output ends.
    fn spawn_log_copier(&self, key: &ContainerKey, name: String) {
        {
            let mut c = self.copiers.lock().unwrap_or_else(|e| e.into_inner());
            if !c.insert(name.clone()) {
                return;
            }
        }
        let docker = self.docker.clone();
        let path = self.log_path(key);
        let record = record_path(&self.pods_dir, key);
        let (max_bytes, max_files) = (self.log_max_bytes, self.log_max_files);
        let copiers = self.copiers.clone();
        tokio::spawn(async move {
            let res = copy_logs(&docker, &name, &path, max_bytes, max_files).await;
            match res {
                Ok(()) => {
                    if let Some(mut r) = read_record(&record) {
                        r.log_complete = true;
                        let _ = write_record(&record, &r);
                    }
                }
                Err(e) => {
                    tracing::debug!(container = %name, error = %format!("{e:#}"), "log copy interrupted");
                    // Another status check starts it again.
                    copiers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                }
            }
        });
    }

    /// The network namespace file of the pod now names the sandbox's namespace, with the
    /// pod's eth0 (address and default route) moved into it.
    async fn adopt_network(&self, netns: &Path, pid: u32) -> Result<()> {
        let target = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if same_file(netns, &target) {
            return Ok(());
        }
        let name = netns
            .file_name()
            .and_then(|n| n.to_str())
            .context("pod netns path has no name")?
            .to_string();
        let addrs = ip(&["-n", &name, "-4", "-o", "addr", "show", "dev", "eth0"]).await?;
        let cidr = addrs
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .context("pod eth0 has no IPv4 address")?
            .to_string();
        let routes = ip(&["-n", &name, "-4", "route", "show", "default"]).await?;
        let gw = routes
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .map(str::to_string);
        let pid_s = pid.to_string();
        ip(&["-n", &name, "link", "set", "eth0", "netns", &pid_s]).await?;
        // One `ip` process per namespace rather than per command (see `ip_batch`).
        ip_batch(
            None,
            &[
                vec!["netns", "del", &name],
                vec!["netns", "attach", &name, &pid_s],
            ],
        )
        .await?;
        let mut in_pod = vec![
            vec!["addr", "add", cidr.as_str(), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ];
        if let Some(gw) = &gw {
            in_pod.push(vec!["route", "add", "default", "via", gw.as_str()]);
        }
        ip_batch(Some(&name), &in_pod).await?;
        Ok(())
    }

    fn record(&self, key: &ContainerKey) -> Option<DockerRecord> {
        read_record(&record_path(&self.pods_dir, key))
    }

    fn note_running(&self, key: &ContainerKey, pid: u32) {
        let path = record_path(&self.pods_dir, key);
        let mut r = read_record(&path).unwrap_or_default();
        if r.pid != Some(pid) {
            r.pid = Some(pid);
            r.pid_start_ticks = crate::osutil::proc_start_ticks(pid);
            let _ = write_record(&path, &r);
        }
    }

    /// Removes every container of this agent (used by `bosun reset`).
    pub async fn remove_all(&self) -> Result<()> {
        for c in self.list(None).await? {
            if let Some(id) = c.id {
                self.force_remove(&id).await?;
            }
        }
        Ok(())
    }

    async fn force_remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove container {id}")),
        }
    }
}

/// `repo[:tag]` with the registry port kept in the repo; digests stay whole.
fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

use crate::network::{ip, ip_batch};

/// Timestamp of the last record of a CRI log file.
fn last_logged(path: &Path) -> Option<jiff::Timestamp> {
    let data = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&data[data.len().saturating_sub(64 * 1024)..]).into_owned();
    let line = text.lines().rev().find(|l| !l.is_empty())?;
    line.split(' ').next()?.parse().ok()
}

async fn copy_logs(
    docker: &Docker,
    name: &str,
    path: &Path,
    max_bytes: u64,
    max_files: usize,
) -> Result<()> {
    let last = last_logged(path);
    let opts = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        timestamps: true,
        since: last.map(|t| t.as_second() as i32).unwrap_or(0),
        ..Default::default()
    };
    let mut w = crate::cri_log::LogWriter::open(path, max_bytes, max_files)?;
    let mut s = docker.logs(name, Some(opts));
    while let Some(item) = s.next().await {
        let (stream, msg) = match item? {
            bollard::container::LogOutput::StdOut { message } => ("stdout", message),
            bollard::container::LogOutput::StdErr { message } => ("stderr", message),
            bollard::container::LogOutput::Console { message } => ("stdout", message),
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        let Some(sp) = msg.iter().position(|&b| b == b' ') else {
            continue;
        };
        let Ok(ts) = std::str::from_utf8(&msg[..sp])
            .unwrap_or("")
            .parse::<jiff::Timestamp>()
        else {
            continue;
        };
        // `since` has whole seconds: skip what the previous copy already wrote.
        if last.is_some_and(|l| ts <= l) {
            continue;
        }
        let body = &msg[sp + 1..];
        let (line, partial) = match body.strip_suffix(b"\n") {
            Some(l) => (l, false),
            None => (body, true),
        };
        w.write_line_at(ts, stream, line, partial)?;
    }
    Ok(())
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn prepare_pod(
        &self,
        pod_uid: &str,
        pod_name: &str,
        pod_namespace: &str,
        net: &PodNet,
    ) -> Result<()> {
        let Some(netns) = &net.netns else {
            return Ok(()); // host network: containers use NetworkMode host
        };
        let (id, pid) = match self.sandbox_running(pod_uid).await? {
            Some(s) => s,
            None => {
                // A stopped sandbox (engine restart) is replaced.
                self.force_remove(&sandbox_name(pod_uid)).await?;
                let mut labels = self.labels(pod_uid, pod_name, pod_namespace);
                labels.insert(LABEL_CONTAINER.into(), "POD".into());
                let body = ContainerCreateBody {
                    image: Some(PAUSE_IMAGE.into()),
                    hostname: Some(pod_name.chars().take(63).collect()),
                    labels: Some(labels),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let opts = CreateContainerOptions {
                    name: Some(sandbox_name(pod_uid)),
                    ..Default::default()
                };
                let id = self
                    .docker
                    .create_container(Some(opts), body)
                    .await
                    .context("create pod sandbox")?
                    .id;
                self.docker
                    .start_container(&id, None)
                    .await
                    .context("start pod sandbox")?;
                self.sandbox_running(pod_uid)
                    .await?
                    .context("pod sandbox exited right after start")?
            }
        };
        if let Err(e) = self.adopt_network(netns, pid).await {
            // Start over next time from a fresh sandbox.
            let _ = self.force_remove(&id).await;
            return Err(e.context("move the pod network into its sandbox"));
        }
        Ok(())
    }

    async fn create(&self, key: &ContainerKey, launch: &ContainerLaunch) -> Result<()> {
        let img = launch
            .image
            .as_ref()
            .with_context(|| format!("container {} has no image", key.container))?;
        let name = container_name(key);
        match self.docker.inspect_container(&name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e).context("inspect container"),
        }
        self.ensure_image(&img.image, &img.pull_policy).await?;
        let sec = &launch.security;
        let user = self.user_for(&img.image, sec).await?;
        let network_mode = match &launch.netns {
            None => "host".to_string(),
            Some(_) => {
                let (id, _) = self
                    .sandbox_running(&key.pod_uid)
                    .await?
                    .context("the pod's sandbox container is not running")?;
                format!("container:{id}")
            }
        };
        let mut labels = self.labels(&key.pod_uid, &launch.pod_name, &launch.pod_namespace);
        labels.insert(LABEL_CONTAINER.into(), key.container.clone());
        labels.insert(LABEL_ATTEMPT.into(), key.attempt.to_string());
        // Informational, like containerPort: the pod IP serves every port (Docker refuses
        // exposed ports on a container that joins another's network).
        if !img.ports.is_empty() {
            labels.insert(LABEL_PORTS.into(), img.ports.join(","));
        }
        let mounts = launch
            .mounts
            .iter()
            .map(|m| Mount {
                source: Some(m.source.to_string_lossy().into_owned()),
                target: Some(m.target.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let r = &launch.resources;
        let memory = r.memory_limit.map(|m| m as i64);
        let host_config = HostConfig {
            network_mode: Some(network_mode),
            mounts: Some(mounts),
            nano_cpus: r.cpu_limit.map(|c| (c * 1e9).round() as i64),
            // As the kubelet: no CPU request is the least weight, not Docker's default.
            cpu_shares: Some(crate::cgroup::shares(r.cpu_request.unwrap_or(0.0)) as i64),
            memory,
            // No swap beyond the memory limit, as the kubelet sets it.
            memory_swap: memory,
            cpuset_cpus: launch.cpus.as_ref().map(|c| c.to_string()),
            privileged: Some(sec.privileged),
            cap_add: (!sec.cap_add.is_empty()).then(|| sec.cap_add.clone()),
            cap_drop: (!sec.cap_drop.is_empty()).then(|| sec.cap_drop.clone()),
            group_add: (!sec.groups().is_empty())
                .then(|| sec.groups().iter().map(u32::to_string).collect()),
            readonly_rootfs: Some(sec.read_only_root_filesystem),
            security_opt: sec
                .no_new_privs()
                .then(|| vec!["no-new-privileges".to_string()]),
            pid_mode: match &img.pid_of {
                Some(target) => Some(format!("container:{target}")),
                None => sec.host_pid.then(|| "host".to_string()),
            },
            ipc_mode: sec.host_ipc.then(|| "host".to_string()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            open_stdin: Some(img.stdin),
            attach_stdin: Some(img.stdin),
            tty: Some(img.tty),
            user,
            image: Some(img.image.clone()),
            entrypoint: img.command.clone(),
            cmd: img.args.clone(),
            env: Some(launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: launch
                .working_dir
                .as_ref()
                .map(|w| w.to_string_lossy().into_owned()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let resp = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| anyhow!("create container: {e}"))?;
        write_record(
            &record_path(&self.pods_dir, key),
            &DockerRecord {
                id: resp.id,
                ..Default::default()
            },
        )?;
        Ok(())
    }

    async fn start(&self, key: &ContainerKey) -> Result<RuntimeState> {
        match self.status(key).await? {
            RuntimeState::Created => {}
            RuntimeState::NotFound => bail!("container {key:?} was not created"),
            other => return Ok(other),
        }
        if let Err(e) = self
            .docker
            .start_container(&container_name(key), None)
            .await
        {
            // A start failure (bad command, missing binary) leaves the container exited
            // with Docker's error: reported as StartError by `status`.
            tracing::debug!(error = %e, "docker start");
        }
        self.status(key).await
    }

    async fn signal(&self, key: &ContainerKey, force: bool) -> Result<()> {
        let opts = KillContainerOptions {
            signal: if force { "SIGKILL" } else { "SIGTERM" }.into(),
        };
        match self
            .docker
            .kill_container(&container_name(key), Some(opts))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn stop(&self, key: &ContainerKey, grace: Duration) -> Result<RuntimeState> {
        match self.status(key).await? {
            RuntimeState::Running { .. } => {}
            other => return Ok(other),
        }
        let opts = StopContainerOptions {
            t: Some(grace.as_secs_f64().ceil() as i32),
            ..Default::default()
        };
        match self
            .docker
            .stop_container(&container_name(key), Some(opts))
            .await
        {
            Ok(()) => {}
            Err(e) if not_found(&e) || is_status(&e, 304) => {}
            Err(e) => return Err(e).context("docker stop"),
        }
        for _ in 0..100 {
            match self.status(key).await? {
                RuntimeState::Running { .. } | RuntimeState::Created => {}
                other => return Ok(other),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("container {key:?} did not stop")
    }

    async fn status(&self, key: &ContainerKey) -> Result<RuntimeState> {
        let name = container_name(key);
        let c = match self.docker.inspect_container(&name, None).await {
            Ok(c) => c,
            Err(e) if not_found(&e) => return Ok(RuntimeState::NotFound),
            Err(e) => return Err(e).context("inspect container"),
        };
        let st = c.state.unwrap_or_default();
        let started_at = parse_time(st.started_at.as_deref());
        let ran = started_at.is_some();
        let state = match st.status {
            Some(ContainerStateStatusEnum::CREATED) => RuntimeState::Created,
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::PAUSED)
            | Some(ContainerStateStatusEnum::RESTARTING) => {
                let pid = st.pid.filter(|p| *p > 0).map(|p| p as u32);
                if let Some(pid) = pid {
                    self.note_running(key, pid);
                }
                RuntimeState::Running { pid, started_at }
            }
            _ => {
                let exit_code = st.exit_code.unwrap_or(255) as i32;
                let error = st.error.filter(|e| !e.is_empty());
                let (reason, message) = if st.oom_killed == Some(true) {
                    ("OOMKilled".to_string(), None)
                } else if let Some(err) = error {
                    if started_at.is_none() {
                        ("StartError".to_string(), Some(err))
                    } else {
                        ("Error".to_string(), Some(err))
                    }
                } else if exit_code == 0 {
                    ("Completed".to_string(), None)
                } else {
                    ("Error".to_string(), None)
                };
                let finished_at = parse_time(st.finished_at.as_deref())
                    .unwrap_or_else(crate::osutil::now_rfc3339);
                RuntimeState::Exited {
                    exit_code,
                    signal: (exit_code > 128 && exit_code < 160).then_some(exit_code - 128),
                    started_at: started_at.clone(),
                    finished_at,
                    reason,
                    message,
                }
            }
        };
        // Whatever state it is in, a container that ran has a log to copy.
        if ran && self.record(key).is_none_or(|r| !r.log_complete) {
            self.spawn_log_copier(key, name);
        }
        Ok(state)
    }

    async fn exec(
        &self,
        key: &ContainerKey,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let name = container_name(key);
        let work = async {
            let ex = self
                .docker
                .create_exec(
                    &name,
                    CreateExecOptions {
                        cmd: Some(argv.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .context("docker exec")?;
            let mut text = String::new();
            if let StartExecResults::Attached { mut output, .. } =
                self.docker.start_exec(&ex.id, None).await?
            {
                while let Some(chunk) = output.next().await {
                    if text.len() < 10 * 1024 {
                        text.push_str(&chunk?.to_string());
                    }
                }
            }
            text.truncate(10 * 1024);
            let info = self.docker.inspect_exec(&ex.id).await?;
            Ok::<_, anyhow::Error>(ExecOutput {
                exit_code: info.exit_code.unwrap_or(126) as i32,
                output: text,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => bail!("command timed out after {timeout:?}"),
        }
    }

    async fn exec_stream(
        &self,
        key: &ContainerKey,
        argv: &[String],
        io: crate::streamio::StreamIo,
    ) -> Result<i32> {
        let ex = self
            .docker
            .create_exec(
                &container_name(key),
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdin: Some(io.stdin.is_some()),
                    attach_stdout: Some(io.stdout.is_some()),
                    attach_stderr: Some(io.stderr.is_some()),
                    tty: Some(io.tty),
                    ..Default::default()
                },
            )
            .await
            .context("docker exec")?;
        let opts = bollard::exec::StartExecOptions {
            detach: false,
            tty: io.tty,
            output_capacity: None,
        };
        let StartExecResults::Attached { output, input } =
            self.docker.start_exec(&ex.id, Some(opts)).await?
        else {
            bail!("docker exec did not attach");
        };
        let resize = io.resize.map(|mut rx| {
            let docker = self.docker.clone();
            let id = ex.id.clone();
            tokio::spawn(async move {
                while let Some((w, h)) = rx.recv().await {
                    let o = bollard::query_parameters::ResizeExecOptions {
                        h: h.into(),
                        w: w.into(),
                    };
                    let _ = docker.resize_exec(&id, o).await;
                }
            })
        });
        crate::streamio::pump_docker(output, input, io.stdin, io.stdout, io.stderr).await;
        if let Some(t) = resize {
            t.abort();
        }
        // The exit code is recorded a moment after the output ends.
        for _ in 0..50 {
            let info = self.docker.inspect_exec(&ex.id).await?;
            if info.running != Some(true) {
                return Ok(info.exit_code.unwrap_or(126) as i32);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("docker exec did not report an exit code")
    }

    async fn attach(&self, key: &ContainerKey, io: crate::streamio::StreamIo) -> Result<()> {
        let name = container_name(key);
        let opts = bollard::query_parameters::AttachContainerOptions {
            stream: true,
            logs: false,
            stdin: io.stdin.is_some(),
            stdout: io.stdout.is_some(),
            stderr: io.stderr.is_some(),
            detach_keys: None,
        };
        let res = self
            .docker
            .attach_container(&name, Some(opts))
            .await
            .context("docker attach")?;
        let resize = io.resize.map(|mut rx| {
            let docker = self.docker.clone();
            let name = name.clone();
            tokio::spawn(async move {
                while let Some((w, h)) = rx.recv().await {
                    let o = bollard::query_parameters::ResizeContainerTTYOptions {
                        h: h.into(),
                        w: w.into(),
                    };
                    let _ = docker.resize_container_tty(&name, o).await;
                }
            })
        });
        crate::streamio::pump_docker(res.output, res.input, io.stdin, io.stdout, io.stderr).await;
        if let Some(t) = resize {
            t.abort();
        }
        Ok(())
    }

    async fn adopt(&self) -> Result<Vec<ContainerKey>> {
        let mut out = Vec::new();
        for c in self.list(None).await? {
            let labels = c.labels.unwrap_or_default();
            let (Some(uid), Some(name), Some(attempt)) = (
                labels.get(LABEL_POD_UID),
                labels.get(LABEL_CONTAINER),
                labels.get(LABEL_ATTEMPT).and_then(|a| a.parse().ok()),
            ) else {
                continue; // the sandbox
            };
            out.push(ContainerKey {
                pod_uid: uid.clone(),
                container: name.clone(),
                attempt,
            });
        }
        out.sort();
        Ok(out)
    }

    async fn remove(&self, key: &ContainerKey) -> Result<()> {
        if let RuntimeState::Running { .. } = self.status(key).await? {
            bail!("container {key:?} is still running");
        }
        self.force_remove(&container_name(key)).await?;
        self.copiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&container_name(key));
        if let Some(dir) = record_path(&self.pods_dir, key).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    async fn remove_pod(&self, pod_uid: &str) -> Result<()> {
        for c in self.list(Some(pod_uid)).await? {
            if let Some(id) = c.id {
                self.force_remove(&id).await?;
            }
            for n in c.names.unwrap_or_default() {
                self.copiers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(n.trim_start_matches('/'));
            }
        }
        Ok(())
    }

    fn log_path(&self, key: &ContainerKey) -> PathBuf {
        crate::runtime::log_path(&self.pods_dir, key)
    }

    async fn set_cpus(&self, key: &ContainerKey, cpus: &crate::cpus::CpuSet) -> Result<()> {
        let body = bollard::models::ContainerUpdateBody {
            cpuset_cpus: Some(cpus.to_string()),
            ..Default::default()
        };
        self.docker
            .update_container(&container_name(key), body)
            .await
            .with_context(|| format!("move container {} to CPUs {cpus}", key.container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(split_image("app:v2"), ("app".into(), "v2".into()));
        assert_eq!(split_image("app"), ("app".into(), "latest".into()));
        assert_eq!(
            split_image("reg:5000/team/app:1"),
            ("reg:5000/team/app".into(), "1".into())
        );
        assert_eq!(
            split_image("reg:5000/app"),
            ("reg:5000/app".into(), "latest".into())
        );
    }

    #[test]
    fn tar_header_is_valid() {
        let t = tar_one("pause", b"abc", 0o755);
        assert_eq!(t.len(), 512 + 512 + 1024);
        let h = &t[..512];
        let stored = std::str::from_utf8(&h[148..154]).unwrap();
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u32 = copy.iter().map(|&b| b as u32).sum();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&t[512..515], b"abc");
    }
}
