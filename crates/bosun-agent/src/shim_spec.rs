//! The files the agent and `bosun shim` exchange: the spec the runtime writes before
//! starting a shim, the state the shim rewrites at each step, and the request of
//! `bosun shim exec`. Plain data, so the runtime and the shim both depend on it and not
//! on each other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Placement;
use crate::osutil::write_atomic;
use crate::security::Isolation;

/// What the shim runs; written by the runtime next to the state file.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ShimSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// Network namespace to join (a bind-mounted netns file); none = host network.
    pub netns: Option<PathBuf>,
    /// Bind mounts made in the container's private mount namespace.
    pub mounts: Vec<BindMount>,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: usize,
    pub state_path: PathBuf,
    /// Cgroups the container's process is placed in (limits); none = the shim's own.
    #[serde(default)]
    pub cgroups: Option<Placement>,
    /// Said by the runtime at creation, reported with the state (e.g. limits not enforced).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Own PID, mount, UTS and IPC namespaces, user and capabilities (`isolation.rs`).
    #[serde(default)]
    pub isolation: Option<Isolation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// What the shim reports; rewritten atomically at each step.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ShimState {
    pub shim_pid: u32,
    /// Start time of the shim (clock ticks since boot, /proc/PID/stat field 22): tells a live
    /// shim from an unrelated process that reused its pid.
    pub shim_start_ticks: u64,
    pub pid: Option<u32>,
    pub pid_start_ticks: Option<u64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the command could not be started at all.
    pub error: Option<String>,
    /// Whether the container got its own mount namespace (volumes at their mountPaths).
    pub mount_namespace: bool,
    pub warnings: Vec<String>,
    /// The kernel's OOM killer ended the container (its cgroup's oom_kill count rose).
    #[serde(default)]
    pub oom_killed: bool,
}

impl ShimState {
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let data = std::fs::read(path)?;
        serde_json::from_slice(&data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(
            path,
            &serde_json::to_vec_pretty(self).expect("serializable"),
        )
    }
}

/// Request of `bosun shim exec`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    /// A process whose mount namespace to join (the container's main process).
    pub mount_ns_pid: Option<u32>,
    /// The container's isolation: the command joins all its namespaces and takes its user.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// stdin is a terminal: the command gets it as its controlling terminal.
    #[serde(default)]
    pub tty: bool,
}
