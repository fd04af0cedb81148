//! The CPU manager: Kubernetes' `static` policy. A container of a Guaranteed pod whose CPU
//! request is a whole number of cores gets that many CPUs of its own; every other container
//! runs on the shared pool, which is every CPU of the node less those handed out. The
//! reserved CPUs (by default the first one) always stay in the shared pool, so the node's
//! own processes and the other pods are never left without a CPU.
//!
//! An assignment is written to the pod's directory (`<pods>/<uid>/cpus.json`) before the
//! container starts, so a restarted agent keeps every pod on the CPUs it already runs on,
//! and removing the pod's directory (the pod is gone) frees them. The shared pool changes
//! as pods come and go: pod workers re-apply it to their running containers on each sync,
//! and bosun keeps its own threads on it too, so that exclusive CPUs serve only their
//! container.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// A set of CPU ids, written as the kernel writes them: `0-3,6`.
#[derive(Debug, Clone, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct CpuSet(pub BTreeSet<u32>);

impl CpuSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPUs this process may run on.
    pub fn of_this_process() -> Result<Self> {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .context("read this process's CPU affinity")?;
        Ok(CpuSet(
            (0..nix::sched::CpuSet::count() as u32)
                .filter(|c| set.is_set(*c as usize).unwrap_or(false))
                .collect(),
        ))
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end = iter.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for CpuSet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut set = BTreeSet::new();
        for part in s.trim().split(',').filter(|p| !p.trim().is_empty()) {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u32, u32) = (
                a.trim().parse().with_context(|| {
                    format!("CPU list {s:?}: {part:?} is not a CPU id or range")
                })?,
                b.trim().parse().with_context(|| {
                    format!("CPU list {s:?}: {part:?} is not a CPU id or range")
                })?,
            );
            if a > b || b - a > 4096 {
                bail!("CPU list {s:?}: {part:?} is not a valid range");
            }
            set.extend(a..=b);
        }
        Ok(CpuSet(set))
    }
}

/// How CPUs are handed to containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Every container may run on every CPU (CFS quotas and weights only).
    None,
    /// Exclusive CPUs for Guaranteed containers with whole-core requests.
    #[default]
    Static,
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Policy::None),
            "static" => Ok(Policy::Static),
            _ => Err(format!("unknown CPU manager policy {s:?} (none, static)")),
        }
    }
}

/// What one container asks of the CPU manager.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// The pod is Guaranteed (requests == limits for CPU and memory in every container).
    pub guaranteed: bool,
    /// The container's CPU request in cores.
    pub cpu_request: Option<f64>,
}

impl Demand {
    /// Whole CPUs the container should own, if any.
    fn exclusive(&self) -> Option<usize> {
        let req = self.cpu_request?;
        (self.guaranteed && req >= 1.0 && req.fract() == 0.0).then_some(req as usize)
    }
}

/// The decision for one container.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// The CPUs are the container's own.
    Exclusive(CpuSet),
    /// The shared pool as it is now (it changes as exclusive CPUs come and go).
    Shared(CpuSet),
    /// Exclusive CPUs were due but too few are free: the shared pool, and why.
    SharedShort { pool: CpuSet, why: String },
}

impl Placement {
    pub fn cpus(&self) -> &CpuSet {
        match self {
            Placement::Exclusive(c) | Placement::Shared(c) => c,
            Placement::SharedShort { pool, .. } => pool,
        }
    }
}

const STATE_FILE: &str = "cpus.json";

/// Per-node CPU assignments.
pub struct CpuManager {
    policy: Policy,
    all: CpuSet,
    reserved: CpuSet,
    pods_dir: PathBuf,
    /// pod uid -> container -> its exclusive CPUs.
    assigned: Mutex<BTreeMap<String, BTreeMap<String, CpuSet>>>,
    /// Whether this process follows the shared pool (the agent; not unit tests).
    confine: bool,
}

impl CpuManager {
    /// A manager over `all` CPUs, loading the assignments of the pods under `pods_dir`.
    /// `reserved` defaults to the lowest CPU.
    pub fn new(policy: Policy, all: CpuSet, reserved: Option<CpuSet>, pods_dir: &Path) -> Self {
        let reserved =
            reserved.unwrap_or_else(|| CpuSet(all.0.iter().next().copied().into_iter().collect()));
        let mut assigned = BTreeMap::new();
        if policy == Policy::Static {
            for e in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
                let path = e.path().join(STATE_FILE);
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                match serde_json::from_str::<BTreeMap<String, String>>(&text) {
                    Ok(m) => {
                        let m: BTreeMap<String, CpuSet> = m
                            .into_iter()
                            .filter_map(|(c, s)| s.parse().ok().map(|s| (c, s)))
                            .collect();
                        assigned.insert(e.file_name().to_string_lossy().into_owned(), m);
                    }
                    Err(err) => {
                        tracing::warn!(path = %path.display(), error = %err, "ignoring unreadable CPU assignment")
                    }
                }
            }
        }
        Self {
            policy,
            all,
            reserved,
            pods_dir: pods_dir.to_path_buf(),
            assigned: Mutex::new(assigned),
            confine: false,
        }
    }

    /// Keeps this process on the shared pool from now on.
    pub fn confining(mut self) -> Self {
        self.confine = true;
        self.confine_self(&self.shared_pool());
        self
    }

    /// Keeps this process's threads (bosun itself) on the shared pool.
    fn confine_self(&self, pool: &CpuSet) {
        if !self.confine || self.policy == Policy::None || pool.is_empty() {
            return;
        }
        if let Err(e) = set_process_affinity(pool) {
            tracing::warn!(error = %format!("{e:#}"), "cannot keep bosun on the shared CPUs");
        }
    }

    /// A manager that pins nothing (tests, or `--cpu-manager-policy none`).
    pub fn none() -> Self {
        Self::new(
            Policy::None,
            CpuSet::default(),
            None,
            Path::new("/nonexistent"),
        )
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, CpuSet>>> {
        self.assigned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pool_of(&self, assigned: &BTreeMap<String, BTreeMap<String, CpuSet>>) -> CpuSet {
        let taken: BTreeSet<u32> = assigned
            .values()
            .flat_map(|m| m.values())
            .flat_map(|s| s.0.iter().copied())
            .collect();
        CpuSet(self.all.0.difference(&taken).copied().collect())
    }

    /// The shared pool now.
    pub fn shared_pool(&self) -> CpuSet {
        self.pool_of(&self.lock())
    }

    /// Where a container runs: its own CPUs (assigned now if due and free, kept if it
    /// already has them) or the shared pool. None when the policy pins nothing.
    pub fn place(&self, pod_uid: &str, container: &str, demand: Demand) -> Option<Placement> {
        if self.policy == Policy::None || self.all.is_empty() {
            return None;
        }
        let mut assigned = self.lock();
        if let Some(own) = assigned.get(pod_uid).and_then(|m| m.get(container)) {
            return Some(Placement::Exclusive(own.clone()));
        }
        let pool = self.pool_of(&assigned);
        let Some(n) = demand.exclusive() else {
            return Some(Placement::Shared(pool));
        };
        let free: Vec<u32> = pool
            .0
            .iter()
            .copied()
            .filter(|c| !self.reserved.0.contains(c))
            .collect();
        if free.len() < n {
            let why = format!(
                "{n} exclusive CPU(s) requested but {} free (node CPUs {}, reserved {}): runs on the shared pool",
                free.len(),
                self.all,
                self.reserved
            );
            return Some(Placement::SharedShort { pool, why });
        }
        // The highest-numbered free CPUs: the low ones (interrupts, reserved) stay shared.
        let own = CpuSet(free.iter().rev().take(n).copied().collect());
        let entry = assigned.entry(pod_uid.to_string()).or_default();
        entry.insert(container.to_string(), own.clone());
        if let Err(e) = self.persist(pod_uid, entry) {
            // Not recorded: not handed out either, so a restart cannot give them twice.
            tracing::warn!(pod = pod_uid, error = %format!("{e:#}"), "cannot record CPU assignment");
            entry.remove(container);
            return Some(Placement::SharedShort {
                pool,
                why: format!("cannot record the CPU assignment ({e:#}): runs on the shared pool"),
            });
        }
        self.confine_self(&self.pool_of(&assigned));
        Some(Placement::Exclusive(own))
    }

    fn persist(&self, pod_uid: &str, m: &BTreeMap<String, CpuSet>) -> Result<()> {
        let dir = self.pods_dir.join(pod_uid);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let text: BTreeMap<&String, String> = m.iter().map(|(k, v)| (k, v.to_string())).collect();
        Ok(crate::osutil::write_atomic(
            &dir.join(STATE_FILE),
            &serde_json::to_vec(&text)?,
        )?)
    }

    /// Frees a pod's CPUs (its containers are gone).
    pub fn release(&self, pod_uid: &str) {
        let mut assigned = self.lock();
        if assigned.remove(pod_uid).is_some() {
            let _ = std::fs::remove_file(self.pods_dir.join(pod_uid).join(STATE_FILE));
            self.confine_self(&self.pool_of(&assigned));
        }
    }
}

/// Sets the CPU affinity of every thread of this process (threads made later inherit it
/// from the thread that makes them).
fn set_process_affinity(cpus: &CpuSet) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for c in &cpus.0 {
        set.set(*c as usize)
            .with_context(|| format!("CPU {c} is beyond what this system supports"))?;
    }
    let tasks = std::fs::read_dir("/proc/self/task").context("list this process's threads")?;
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // A thread may end between the listing and the call.
        match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("set the CPUs of thread {tid}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    fn demand(guaranteed: bool, cpu: f64) -> Demand {
        Demand {
            guaranteed,
            cpu_request: Some(cpu),
        }
    }

    const G1: Demand = Demand {
        guaranteed: true,
        cpu_request: Some(1.0),
    };

    #[test]
    fn cpu_lists_parse_and_print_like_the_kernel() {
        assert_eq!(set("0-3,6").to_string(), "0-3,6");
        assert_eq!(set("5,1,2,3").to_string(), "1-3,5");
        assert_eq!(set("").to_string(), "");
        assert!("3-1".parse::<CpuSet>().is_err());
        assert!("a".parse::<CpuSet>().is_err());
    }

    #[test]
    fn guaranteed_whole_cores_get_their_own_cpus_and_the_pool_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let m = CpuManager::new(Policy::Static, set("0-3"), None, dir.path());
        assert_eq!(m.shared_pool(), set("0-3"));
        let p = m.place("a", "c", G1).unwrap();
        assert_eq!(p, Placement::Exclusive(set("3")));
        // Asking again keeps the same CPUs.
        assert_eq!(m.place("a", "c", G1).unwrap(), p);
        assert_eq!(m.shared_pool(), set("0-2"));
        // Fractional, or not Guaranteed: shared.
        assert_eq!(
            m.place("b", "c", demand(true, 1.5)).unwrap(),
            Placement::Shared(set("0-2"))
        );
        assert_eq!(
            m.place("b", "c", demand(false, 2.0)).unwrap(),
            Placement::Shared(set("0-2"))
        );
        // Two more: CPUs 1-2; the reserved CPU 0 is never handed out.
        assert_eq!(
            m.place("d", "c", demand(true, 2.0)).unwrap(),
            Placement::Exclusive(set("1-2"))
        );
        assert!(matches!(
            m.place("e", "c", G1).unwrap(),
            Placement::SharedShort { pool, .. } if pool == set("0")
        ));
        m.release("a");
        assert_eq!(m.shared_pool(), set("0,3"));
    }

    #[test]
    fn assignments_survive_a_restart_and_go_with_the_pod_directory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = CpuManager::new(Policy::Static, set("0-1"), None, dir.path());
            assert_eq!(
                m.place("a", "c", G1).unwrap(),
                Placement::Exclusive(set("1"))
            );
        }
        let m = CpuManager::new(Policy::Static, set("0-1"), None, dir.path());
        assert_eq!(m.shared_pool(), set("0"));
        assert_eq!(
            m.place("a", "c", G1).unwrap(),
            Placement::Exclusive(set("1"))
        );
        m.release("a");
        let m = CpuManager::new(Policy::Static, set("0-1"), None, dir.path());
        assert_eq!(m.shared_pool(), set("0-1"));
    }

    #[test]
    fn policy_none_pins_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let m = CpuManager::new(Policy::None, set("0-3"), None, dir.path());
        assert_eq!(m.place("a", "c", G1), None);
    }
}
