//! Node agent: pod lifecycle over runtimes (process), pod network, probes, logs, node status.
//!
//! Map: `agent` is the entry (`run`): it registers the Node, renews its Lease, serves the
//! HTTPS endpoint (`server`: logs, stats) and runs one `pod::PodWorker` per pod bound to the
//! node. A worker converges its pod level-triggered: network (`network::PodNetwork`: bridge +
//! netns, or host), volumes (`volumes`), environment (`env`), containers through a
//! `runtime::Runtime`, probes (`probe`), and writes the pod status when it changes. The
//! process runtime runs each container under `bosun shim` (`shim`), a supervisor in its own
//! session that outlives the agent, writes CRI logs (`cri_log`) and the exit state.
//! Containers with an image run on the Docker engine (`docker::DockerRuntime`: a sandbox
//! container holds the pod's network namespace, Docker logs are copied into the same CRI
//! files). CPU and memory limits: Docker's HostConfig, or for process containers the
//! cgroups of `cgroup` (v2 or v1) that the shim places the process in; `stats` reads
//! usage from those cgroups for `/stats/summary` (and so `kubectl top`). `cpus` is the CPU
//! manager: Guaranteed containers asking for whole cores get CPUs of their own (a cpuset),
//! the others share the rest.
//!
//! All state lives on disk, so a restarted agent adopts what runs:
//! ```text
//! <data_dir>/pods/<pod uid>/pod.json                       namespace, name, uid
//! <data_dir>/pods/<pod uid>/containers/<name>/<attempt>/   spec.json, state.json, shim.log
//! <data_dir>/pods/<pod uid>/logs/<name>/<attempt>.log[.N]  CRI log, rotated
//! <data_dir>/pods/<pod uid>/volumes/<volume>/              configMap, secret, emptyDir
//! <data_dir>/pods/<pod uid>/cpus.json                      exclusive CPUs of its containers
//! <data_dir>/network/<bridge>/ips/<ip>                     IP allocation (holds the pod uid)
//! /run/netns/<bridge>-<uid prefix>                         pod network namespace
//! ```
//! `attempt` is the container's restart count; the latest attempt is current, the one
//! before it is `previous` for logs and `lastState`.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cpus;
pub mod cri_log;
pub mod dns;
pub mod docker;
pub mod env;
pub mod ephemeral;
#[cfg(test)]
mod fake_runtime;
pub mod isolation;
pub mod local_path;
pub mod logstore;
pub mod network;
pub mod node;
pub mod osutil;
pub mod pod;
pub mod probe;
pub mod prom;
pub mod resources;
pub mod routes;
pub mod runtime;
pub mod security;
pub mod server;
pub mod shim;
pub mod shim_spec;
pub mod signals;
pub mod spdy;
pub mod stats;
pub mod streaming;
pub mod streamio;
pub mod volumes;

pub use agent::{AgentConfig, NetworkMode, cleanup_node, run};
pub use node::CapacityOverrides;
pub use shim::shim_main;
