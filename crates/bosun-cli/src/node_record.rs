//! What a node created on the host, recorded in its data dir at start-up so that
//! `bosun reset --data-dir DIR` removes exactly that node's network, whatever flags it is
//! given, and never another instance's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

const FILE: &str = "node-network.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node_name: String,
    /// The pod bridge; pod network namespaces are named `BRIDGE-UID`.
    pub bridge: String,
    /// The dummy interface carrying the Service cluster IPs.
    pub service_interface: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: ipnet::Ipv4Net,
    /// iptables rules added (filter table), each as the arguments after `-I`/`-D`.
    #[serde(default)]
    pub iptables: Vec<Vec<String>>,
}

impl NodeRecord {
    pub fn new(
        node_name: &str,
        bridge: &str,
        service_interface: &str,
        pod_cidr: ipnet::Ipv4Net,
    ) -> NodeRecord {
        NodeRecord {
            node_name: node_name.to_string(),
            bridge: bridge.to_string(),
            service_interface: service_interface.to_string(),
            pod_cidr,
            // The rule the agent adds so pods on the bridge reach each other (network.rs).
            iptables: vec![
                ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
                    .map(String::from)
                    .to_vec(),
            ],
        }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Writes the record (atomically: a reset never reads half of it).
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!(".{FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The record of `data_dir`, or None when that node never started (or predates it).
    pub fn load(data_dir: &Path) -> Result<Option<NodeRecord>> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Deletes the recorded iptables rules that are still present; iptables missing is fine
/// (then nothing was added either).
pub async fn remove_iptables_rules(rules: &[Vec<String>]) {
    for rule in rules {
        let run = |op: &'static str| {
            tokio::process::Command::new("iptables")
                .arg("-w")
                .arg(op)
                .args(rule)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        };
        // A rule may have been added more than once; -C tells when none is left.
        for _ in 0..16 {
            match run("-C").await {
                Ok(s) if s.success() => {
                    if !matches!(run("-D").await, Ok(s) if s.success()) {
                        eprintln!("bosun: could not delete iptables rule {}", rule.join(" "));
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("bosun-node-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(NodeRecord::load(&dir).unwrap(), None);
        let r = NodeRecord::new("n1", "br7", "svc7", "10.9.0.0/24".parse().unwrap());
        r.save(&dir).unwrap();
        assert_eq!(NodeRecord::load(&dir).unwrap(), Some(r));
        let text = std::fs::read_to_string(NodeRecord::path(&dir)).unwrap();
        assert!(text.contains("\"podCIDR\": \"10.9.0.0/24\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
