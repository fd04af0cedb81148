//! Control groups for process-runtime containers: `bosun/<pod uid>/<container>` under the
//! agent's own cgroup, with CPU and memory limits, and usage readings for any process
//! (process or Docker containers) from the cgroups it is in.
//!
//! cgroup v2 (one unified hierarchy) is used when mounted at /sys/fs/cgroup; otherwise the
//! v1 `cpu`, `cpuacct`, `memory` (and, when mounted, `cpuset`) hierarchies under
//! /sys/fs/cgroup/<controller>. The `cpuset` controller pins containers to the CPUs the CPU
//! manager (`cpus`) gives them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cpus::CpuSet;
use crate::resources::Resources;

const ROOT: &str = "/sys/fs/cgroup";
/// CFS period used for CPU limits (the kernel's and the kubelet's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Where this node's container cgroups live.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Unified hierarchy; `base` = the agent's cgroup + "/bosun".
    V2 { base: PathBuf },
    /// One `bosun` directory per controller hierarchy (cpu, cpuacct, memory, cpuset; one
    /// entry when controllers share a hierarchy).
    V1 { bases: Vec<(String, PathBuf)> },
}

/// Directories a container's process joins, and where the shim returns afterwards.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub dirs: Vec<PathBuf>,
    /// The cgroups the shim came from (same order), so only the container is limited.
    pub restore: Vec<PathBuf>,
}

/// The cgroup path of this process for a v1 controller or ("" key) the v2 hierarchy.
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    pid_path(&text, controller)
}

fn pid_path(text: &str, controller: &str) -> Option<String> {
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controller.is_empty() {
            if ctrls.is_empty() {
                return Some(path.to_string());
            }
        } else if ctrls.split(',').any(|c| c == controller) {
            return Some(path.to_string());
        }
    }
    None
}

fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

fn join_root(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

impl Layout {
    /// Finds this node's layout, or says why limits cannot be enforced.
    pub fn detect() -> Result<Self> {
        if is_v2() {
            let own = own_path("").context("no cgroup v2 entry in /proc/self/cgroup")?;
            let top = v2_top(Path::new(ROOT), &own)?;
            let base = top.join("bosun");
            std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
            // Controllers must be enabled along the path down to the containers.
            enable_controllers(&top)?;
            enable_controllers(&base)?;
            return Ok(Layout::V2 { base });
        }
        let mut bases: Vec<(String, PathBuf)> = Vec::new();
        let mut mounts: Vec<PathBuf> = Vec::new();
        for ctrl in ["cpu", "cpuacct", "memory", "cpuset"] {
            let mount = Path::new(ROOT).join(ctrl);
            if !mount.exists() {
                if ctrl == "cpuset" {
                    // Pinning is then not possible; limits still are.
                    continue;
                }
                bail!(
                    "cgroup v1 controller {ctrl} is not mounted at {}",
                    mount.display()
                );
            }
            // cpu and cpuacct often share one hierarchy (cpu,cpuacct with symlinks).
            let real = std::fs::canonicalize(&mount).unwrap_or(mount.clone());
            if mounts.contains(&real) {
                continue;
            }
            mounts.push(real.clone());
            let own = own_path(ctrl).with_context(|| format!("no {ctrl} cgroup of the agent"))?;
            let base = join_root(&real, &own).join("bosun");
            std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
            if ctrl == "cpuset" {
                init_cpuset(&base)?;
            }
            bases.push((ctrl.to_string(), base));
        }
        Ok(Layout::V1 { bases })
    }

    pub fn version(&self) -> u8 {
        match self {
            Layout::V2 { .. } => 2,
            Layout::V1 { .. } => 1,
        }
    }

    /// Creates (fresh) the cgroup of a container and writes its limits and, when given, the
    /// CPUs it may run on.
    pub fn create(
        &self,
        pod_uid: &str,
        container: &str,
        r: &Resources,
        cpus: Option<&CpuSet>,
    ) -> Result<Placement> {
        let mut p = Placement::default();
        for base in self.bases() {
            let pod = base.join(pod_uid);
            std::fs::create_dir_all(&pod).with_context(|| format!("create {}", pod.display()))?;
            if let Layout::V2 { .. } = self {
                enable_controllers(&pod)?;
            }
            let cpuset = has_cpuset(&base);
            if cpuset {
                init_cpuset(&pod)?;
            }
            let dir = pod.join(container);
            // A previous attempt's empty cgroup goes, so counters (oom_kill) start at 0.
            let _ = std::fs::remove_dir(&dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            if cpuset {
                init_cpuset(&dir)?;
            }
            self.write_limits(&dir, r)?;
            if let Some(cpus) = cpus {
                write_cpus(&dir, cpus)?;
            }
            p.restore.push(base.parent().unwrap_or(&base).to_path_buf());
            p.dirs.push(dir);
        }
        Ok(p)
    }

    fn write_limits(&self, dir: &Path, r: &Resources) -> Result<()> {
        let w = |file: &str, v: String| -> Result<()> {
            let path = dir.join(file);
            if !path.exists() {
                return Ok(());
            }
            std::fs::write(&path, &v).with_context(|| format!("write {v} to {}", path.display()))
        };
        match self {
            Layout::V2 { .. } => {
                if let Some(cpu) = r.cpu_limit {
                    w("cpu.max", format!("{} {CPU_PERIOD_US}", quota_us(cpu)))?;
                }
                // cpu.weight 1..10000; the kubelet's mapping of shares to weight. No
                // request is the least weight, as the kubelet sets it.
                let shares = shares(r.cpu_request.unwrap_or(0.0));
                w(
                    "cpu.weight",
                    (1 + ((shares - 2) * 9999) / 262142).to_string(),
                )?;
                if let Some(mem) = r.memory_limit {
                    w("memory.max", mem.to_string())?;
                    w("memory.swap.max", "0".into())?;
                }
            }
            Layout::V1 { .. } => {
                if let Some(cpu) = r.cpu_limit {
                    w("cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                    w("cpu.cfs_quota_us", quota_us(cpu).to_string())?;
                }
                w(
                    "cpu.shares",
                    shares(r.cpu_request.unwrap_or(0.0)).to_string(),
                )?;
                if let Some(mem) = r.memory_limit {
                    w("memory.limit_in_bytes", mem.to_string())?;
                    // memsw = memory: no swap beyond the limit (absent without swap accounting).
                    w("memory.memsw.limit_in_bytes", mem.to_string())?;
                    w("memory.swappiness", "0".into())?;
                }
            }
        }
        Ok(())
    }

    /// Moves a running container to other CPUs (the shared pool changed).
    pub fn set_cpus(&self, pod_uid: &str, container: &str, cpus: &CpuSet) -> Result<()> {
        for base in self.bases() {
            let dir = base.join(pod_uid).join(container);
            if has_cpuset(&base) && dir.exists() {
                write_cpus(&dir, cpus)?;
            }
        }
        Ok(())
    }

    fn bases(&self) -> Vec<PathBuf> {
        match self {
            Layout::V2 { base } => vec![base.clone()],
            Layout::V1 { bases } => bases.iter().map(|(_, b)| b.clone()).collect(),
        }
    }

    /// Removes a pod's cgroups (they must be empty: the containers are gone).
    pub fn remove_pod(&self, pod_uid: &str) {
        for base in self.bases() {
            let pod = base.join(pod_uid);
            for e in std::fs::read_dir(&pod).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&pod);
        }
    }
}

fn quota_us(cpu: f64) -> u64 {
    // The kernel's minimum quota is 1 ms.
    ((cpu * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// cpu.shares for a CPU request in cores (the kubelet's: at least 2).
pub fn shares(cpu: f64) -> u64 {
    ((cpu * 1024.0).round() as u64).clamp(2, 262144)
}

/// The leaf the agent's own processes move to under cgroup v2, so that its cgroup can hand
/// controllers down to the containers' (the kernel refuses that to a cgroup with processes).
const V2_AGENT_LEAF: &str = "bosun-agent";

/// The v2 cgroup under which `bosun/` goes: the agent's own, emptied of processes into a
/// leaf beside it (or, after a restart, the parent of that leaf).
fn v2_top(root: &Path, own: &str) -> Result<PathBuf> {
    let dir = join_root(root, own);
    if dir.file_name().is_some_and(|n| n == V2_AGENT_LEAF)
        && let Some(parent) = dir.parent()
    {
        return Ok(parent.to_path_buf());
    }
    if dir == root {
        return Ok(dir);
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        let leaf = dir.join(V2_AGENT_LEAF);
        std::fs::create_dir_all(&leaf).with_context(|| format!("create {}", leaf.display()))?;
        // Every process of the group (the agent and whatever its unit runs beside it).
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
        }
    }
    Ok(dir)
}

fn enable_controllers(dir: &Path) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for c in ["cpu", "memory", "cpuset"] {
        if current.split_whitespace().any(|x| x == c) {
            continue;
        }
        if c == "cpuset" && !available.split_whitespace().any(|x| x == c) {
            // Optional: without it containers are not pinned, limits still hold.
            continue;
        }
        std::fs::write(&file, format!("+{c}"))
            .with_context(|| format!("enable {c} in {}", file.display()))?;
    }
    Ok(())
}

/// Whether `base` is in a hierarchy with the cpuset controller.
fn has_cpuset(base: &Path) -> bool {
    base.join("cpuset.cpus").exists()
}

/// cgroup v1 cpusets start empty (no process can join): inherit the parent's CPUs and
/// memory nodes. v2 cpusets inherit by themselves (the files may be empty).
fn init_cpuset(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    if is_v2() {
        return Ok(());
    }
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = dir.join(file);
        if std::fs::read_to_string(&path)
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            let v = std::fs::read_to_string(parent.join(file))
                .with_context(|| format!("read {}", parent.join(file).display()))?;
            std::fs::write(&path, v.trim())
                .with_context(|| format!("write {} to {}", v.trim(), path.display()))?;
        }
    }
    Ok(())
}

fn write_cpus(dir: &Path, cpus: &CpuSet) -> Result<()> {
    let path = dir.join("cpuset.cpus");
    if !path.exists() || cpus.is_empty() {
        return Ok(());
    }
    std::fs::write(&path, cpus.to_string())
        .with_context(|| format!("write {cpus} to {}", path.display()))
}

/// Moves the calling process into `dirs` (its children inherit them).
pub fn join(dirs: &[PathBuf]) -> std::io::Result<()> {
    let me = std::process::id().to_string();
    for d in dirs {
        std::fs::write(d.join("cgroup.procs"), &me)?;
    }
    Ok(())
}

/// The OOM kill counter of a container's cgroups (v2 memory.events, v1 memory.oom_control).
pub fn oom_kills(dirs: &[PathBuf]) -> u64 {
    let mut n = 0;
    for d in dirs {
        for file in ["memory.events", "memory.oom_control"] {
            if let Ok(text) = std::fs::read_to_string(d.join(file)) {
                n += text
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    n
}

/// CPU and memory of the cgroup a process is in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupUsage {
    pub cpu_ns: u64,
    /// Usage minus inactive file cache (what the OOM killer and kubelet look at).
    pub working_set: u64,
    pub usage: u64,
    pub rss: u64,
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Usage of the cgroups `pid` is in, when they differ from this process's own (so a
/// process without a cgroup of its own is not charged the agent's whole group).
pub fn usage_of_pid(pid: u32) -> Option<CgroupUsage> {
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let ours = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    if is_v2() {
        let path = pid_path(&theirs, "")?;
        if Some(&path) == pid_path(&ours, "").as_ref() {
            return None;
        }
        let dir = join_root(Path::new(ROOT), &path);
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let mem = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
        let inactive = stat_value(&mem, "inactive_file").unwrap_or(0);
        return Some(CgroupUsage {
            cpu_ns: stat_value(&cpu, "usage_usec")? * 1000,
            working_set: usage.saturating_sub(inactive),
            usage,
            rss: stat_value(&mem, "anon").unwrap_or(0),
        });
    }
    let mem_path = pid_path(&theirs, "memory")?;
    if Some(&mem_path) == pid_path(&ours, "memory").as_ref() {
        return None;
    }
    let cpu_path = pid_path(&theirs, "cpuacct")?;
    let mem_dir = join_root(&Path::new(ROOT).join("memory"), &mem_path);
    let cpu_dir = join_root(&Path::new(ROOT).join("cpuacct"), &cpu_path);
    let mem = std::fs::read_to_string(mem_dir.join("memory.stat")).unwrap_or_default();
    let usage = read_u64(&mem_dir.join("memory.usage_in_bytes")).unwrap_or(0);
    let inactive = stat_value(&mem, "total_inactive_file").unwrap_or(0);
    Some(CgroupUsage {
        cpu_ns: read_u64(&cpu_dir.join("cpuacct.usage"))?,
        working_set: usage.saturating_sub(inactive),
        usage,
        rss: stat_value(&mem, "total_rss").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_cgroup() {
        let text = "4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/unified\n";
        assert_eq!(pid_path(text, "memory").as_deref(), Some("/a/b"));
        assert_eq!(pid_path(text, "cpuacct").as_deref(), Some("/c"));
        assert_eq!(pid_path(text, "").as_deref(), Some("/unified"));
        assert_eq!(pid_path(text, "pids"), None);
    }

    #[test]
    fn cpu_figures() {
        assert_eq!(quota_us(0.5), 50_000);
        assert_eq!(quota_us(0.001), 1000);
        assert_eq!(shares(0.1), 102);
        assert_eq!(shares(0.0), 2);
    }
}
