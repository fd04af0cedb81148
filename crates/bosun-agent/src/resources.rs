//! Resource figures of a container, as the runtimes and cgroups apply them. A leaf.

/// Resource figures of one container, from its `resources` (Kubernetes quantities parsed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// limits.cpu in cores.
    pub cpu_limit: Option<f64>,
    /// requests.cpu in cores (defaults to the limit, as in Kubernetes).
    pub cpu_request: Option<f64>,
    /// limits.memory in bytes.
    pub memory_limit: Option<u64>,
}
