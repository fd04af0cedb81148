//! Node agent: pod lifecycle over runtimes (process), pod network, probes, logs, node status.
//!
//! Layout: `agent` (entry: node registration, pod watch, one `pod::PodWorker` per pod),
//! `runtime` (the `Runtime` trait and the process runtime), `shim` (the per-container
//! supervisor process), `network` (`PodNetwork`: bridge + netns, or host), `probe`, `env`,
//! `volumes`, `cri_log` (log files), `server` (HTTPS logs endpoint), `node`, `api`.

pub mod agent;
pub mod api;
pub mod cri_log;
pub mod env;
pub mod network;
pub mod node;
pub mod pod;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod shim;
pub mod stats;
pub mod volumes;

pub use agent::{AgentConfig, NetworkMode, cleanup_node, run};
pub use node::CapacityOverrides;
pub use shim::shim_main;
