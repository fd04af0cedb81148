//! Node registration, status (capacity, conditions, addresses, info) and the heartbeat Lease
//! in `kube-node-lease`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Namespace, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

pub const KUBELET_VERSION: &str = "v1.33.0-bosun";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Optional replacements of what the machine reports.
#[derive(Debug, Clone, Default)]
pub struct CapacityOverrides {
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub ephemeral_storage: Option<String>,
    pub pods: Option<u32>,
    /// Kept back for the system and bosun itself (`--system-reserved`): allocatable is
    /// capacity minus this, per resource (cpu, memory, ephemeral-storage).
    pub reserved: BTreeMap<String, String>,
}

/// Capacity minus what is reserved, never below zero.
pub fn allocatable(
    cap: &BTreeMap<String, Quantity>,
    reserved: &BTreeMap<String, String>,
) -> BTreeMap<String, Quantity> {
    let mut out = cap.clone();
    for (res, r) in reserved {
        let (Some(c), Some(r)) = (
            cap.get(res).and_then(|q| crate::env::parse_quantity(&q.0)),
            crate::env::parse_quantity(r),
        ) else {
            continue;
        };
        let left = (c - r).max(0.0);
        let q = if res == "cpu" {
            format!("{}m", (left * 1000.0).round() as u64)
        } else {
            format!("{}Ki", (left / 1024.0).floor() as u64)
        };
        out.insert(res.clone(), Quantity(q));
    }
    out
}

/// The machine's resources.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub storage_bytes: u64,
    pub storage_available_bytes: u64,
    pub pid_max: u64,
    pub processes: u64,
}

fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

impl Machine {
    pub fn probe(data_dir: &Path) -> Self {
        let (storage_bytes, storage_available_bytes) = nix::sys::statvfs::statvfs(data_dir)
            .map(|s| {
                let f = s.fragment_size();
                (s.blocks() * f, s.blocks_available() * f)
            })
            .unwrap_or((0, 0));
        let processes = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_bytes: meminfo("MemTotal:").unwrap_or(0),
            memory_available_bytes: meminfo("MemAvailable:").unwrap_or(0),
            storage_bytes,
            storage_available_bytes,
            pid_max: std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(32768),
            processes,
        }
    }
}

/// Static facts for building the Node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub ip: std::net::IpAddr,
    pub pod_cidr: ipnet::Ipv4Net,
    pub kubelet_port: u16,
    pub overrides: CapacityOverrides,
    pub data_dir: std::path::PathBuf,
}

pub fn capacity(m: &Machine, o: &CapacityOverrides) -> BTreeMap<String, Quantity> {
    let mut c = BTreeMap::new();
    c.insert(
        "cpu".into(),
        Quantity(o.cpu.clone().unwrap_or_else(|| m.cpus.to_string())),
    );
    c.insert(
        "memory".into(),
        Quantity(
            o.memory
                .clone()
                .unwrap_or_else(|| format!("{}Ki", m.memory_bytes / 1024)),
        ),
    );
    c.insert(
        "ephemeral-storage".into(),
        Quantity(
            o.ephemeral_storage
                .clone()
                .unwrap_or_else(|| format!("{}Ki", m.storage_bytes / 1024)),
        ),
    );
    c.insert("pods".into(), Quantity(o.pods.unwrap_or(110).to_string()));
    c
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
    .into()
}

fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The node's status now; transition times are kept from `prev` where nothing changed.
pub fn node_status(f: &NodeFacts, m: &Machine, prev: Option<&NodeStatus>) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let prev_conds = prev.and_then(|p| p.conditions.clone()).unwrap_or_default();
    let cond = |ty: &str, on: bool, reason: &str, message: &str| {
        let status = if on { "True" } else { "False" };
        let since = prev_conds
            .iter()
            .find(|c| c.type_ == ty && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: ty.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(since),
        }
    };
    let mem_pressure = m.memory_bytes > 0 && m.memory_available_bytes < 100 * 1024 * 1024;
    let disk_pressure = m.storage_bytes > 0 && m.storage_available_bytes * 10 < m.storage_bytes;
    let pid_pressure = m.processes * 10 > m.pid_max * 9;
    let uts = nix::sys::utsname::uname().ok();
    let hostname = uts
        .as_ref()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_else(|| f.name.clone());
    let cap = capacity(m, &f.overrides);
    NodeStatus {
        allocatable: Some(allocatable(&cap, &f.overrides.reserved)),
        capacity: Some(cap),
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                mem_pressure,
                if mem_pressure {
                    "KubeletHasInsufficientMemory"
                } else {
                    "KubeletHasSufficientMemory"
                },
                if mem_pressure {
                    "node has less than 100Mi memory available"
                } else {
                    "kubelet has sufficient memory available"
                },
            ),
            cond(
                "DiskPressure",
                disk_pressure,
                if disk_pressure {
                    "KubeletHasDiskPressure"
                } else {
                    "KubeletHasNoDiskPressure"
                },
                if disk_pressure {
                    "less than 10% of the agent's disk is free"
                } else {
                    "kubelet has no disk pressure"
                },
            ),
            cond(
                "PIDPressure",
                pid_pressure,
                if pid_pressure {
                    "KubeletHasInsufficientPID"
                } else {
                    "KubeletHasSufficientPID"
                },
                if pid_pressure {
                    "more than 90% of pid_max in use"
                } else {
                    "kubelet has sufficient PID available"
                },
            ),
            cond(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: f.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: hostname,
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(f.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            container_runtime_version: "process://bosun".into(),
            kernel_version: uts
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kube_proxy_version: KUBELET_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: machine_id(),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: machine_id(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Creates the Node if needed and writes its status; returns the Node's UID.
pub async fn register(client: &kube::Client, f: &NodeFacts) -> Result<String> {
    let api: Api<Node> = Api::all(client.clone());
    let existing = match api.get(&f.name).await {
        Ok(n) => Some(n),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(e).context("get node"),
    };
    let node = match existing {
        Some(n) => {
            let has_cidr = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .is_some_and(|c| !c.is_empty());
            if !has_cidr {
                let cidr = f.pod_cidr.to_string();
                let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
                api.patch(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .context("set node podCIDR")?
            } else {
                n
            }
        }
        None => {
            let mut labels = BTreeMap::new();
            labels.insert("kubernetes.io/hostname".to_string(), f.name.clone());
            labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
            labels.insert("kubernetes.io/arch".to_string(), arch());
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(f.name.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                spec: Some(NodeSpec {
                    pod_cidr: Some(f.pod_cidr.to_string()),
                    pod_cidrs: Some(vec![f.pod_cidr.to_string()]),
                    ..Default::default()
                }),
                status: None,
            };
            match api.create(&PostParams::default(), &node).await {
                Ok(n) => n,
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(&f.name).await?,
                Err(e) => return Err(e).context("create node"),
            }
        }
    };
    update_status(client, f, node.status.as_ref()).await?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Writes the node status (heartbeat).
pub async fn update_status(
    client: &kube::Client,
    f: &NodeFacts,
    prev: Option<&NodeStatus>,
) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let status = node_status(f, &Machine::probe(&f.data_dir), prev);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("update node status")?;
    Ok(())
}

/// Creates or renews the node's Lease.
pub async fn renew_lease(client: &kube::Client, f: &NodeFacts, node_uid: &str) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = MicroTime(jiff::Timestamp::now());
    match api.get(&f.name).await {
        Ok(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(f.name.clone());
            spec.lease_duration_seconds = Some(40);
            spec.renew_time = Some(now);
            api.replace(&f.name, &PostParams::default(), &lease)
                .await
                .context("renew lease")?;
        }
        Err(e) if not_found(&e) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(f.name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: (!node_uid.is_empty()).then(|| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: f.name.clone(),
                            uid: node_uid.into(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(f.name.clone()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(now.clone()),
                    acquire_time: Some(now),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // The lease namespace does not exist yet.
                    let ns: Api<Namespace> = Api::all(client.clone());
                    let _ = ns
                        .create(
                            &PostParams::default(),
                            &Namespace {
                                metadata: ObjectMeta {
                                    name: Some(LEASE_NAMESPACE.into()),
                                    ..Default::default()
                                },
                                ..Default::default()
                            },
                        )
                        .await;
                    api.create(&PostParams::default(), &lease)
                        .await
                        .context("create lease")?;
                }
                Err(e) => return Err(e).context("create lease"),
            }
        }
        Err(e) => return Err(e).context("get lease"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_is_capacity_minus_reserve() {
        let cap: BTreeMap<String, Quantity> = [
            ("cpu".to_string(), Quantity("4".into())),
            ("memory".to_string(), Quantity("8Gi".into())),
            ("pods".to_string(), Quantity("110".into())),
        ]
        .into();
        let reserved = [
            ("cpu".to_string(), "500m".to_string()),
            ("memory".to_string(), "1Gi".to_string()),
        ]
        .into();
        let a = allocatable(&cap, &reserved);
        assert_eq!(a["cpu"].0, "3500m");
        assert_eq!(a["memory"].0, format!("{}Ki", 7 * 1024 * 1024));
        assert_eq!(a["pods"].0, "110");
        let too_much = [("cpu".to_string(), "9".to_string())].into();
        assert_eq!(allocatable(&cap, &too_much)["cpu"].0, "0m");
    }

    #[test]
    fn status_reports_machine() {
        let dir = tempfile::tempdir().unwrap();
        let f = NodeFacts {
            name: "n1".into(),
            ip: "10.0.0.5".parse().unwrap(),
            pod_cidr: "10.88.0.0/24".parse().unwrap(),
            kubelet_port: 10250,
            overrides: CapacityOverrides {
                pods: Some(20),
                ..Default::default()
            },
            data_dir: dir.path().into(),
        };
        let m = Machine::probe(dir.path());
        assert!(m.cpus >= 1 && m.memory_bytes > 0 && m.storage_bytes > 0);
        let s = node_status(&f, &m, None);
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["pods"].0, "20");
        assert_eq!(cap["cpu"].0, m.cpus.to_string());
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.operating_system, "linux");
        assert_eq!(info.container_runtime_version, "process://bosun");
        assert!(!info.kernel_version.is_empty());
        let conds = s.conditions.clone().unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(s.addresses.as_ref().unwrap()[0].address, "10.0.0.5");
        assert_eq!(
            s.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
            10250
        );
        // Transition times survive a heartbeat.
        let s2 = node_status(
            &f,
            &m,
            Some(&NodeStatus {
                conditions: Some(conds.clone()),
                ..Default::default()
            }),
        );
        let r2 = s2
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(r2.last_transition_time, ready.last_transition_time);
    }
}
