//! Pod routing across nodes, as flannel's backends, learned by watching Nodes:
//! - `host-gw`: for every other Node with a pod CIDR, a route to that CIDR via the node's
//!   InternalIP (the nodes share an L2 network);
//! - `vxlan`: a kernel VXLAN device (VNI 1, UDP 8472) whose MAC each node publishes in its
//!   `bosun.dev/vtep-mac` annotation; the route to a node's pod CIDR goes via that node's
//!   VTEP address (the CIDR's network address) on the device, with a permanent ARP entry and
//!   a forwarding entry sending its MAC to the node's InternalIP.
//!
//! The routes carry their own protocol number so that they can be told apart, and each
//! node records the routes it made in its data dir (`pod-routes.json`): only those are
//! removed when a node goes away, at the next start or by `bosun reset`, never the routes
//! of another bosun on the same machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use bosun_watch::Informer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use crate::network::ip;

/// `proto` of bosun's pod routes (an unassigned number in /etc/iproute2/rt_protos).
pub const ROUTE_PROTO: &str = "98";
pub const VXLAN_DEVICE: &str = "bosun-vxlan";
pub const VTEP_MAC_ANNOTATION: &str = "bosun.dev/vtep-mac";

/// How pods reach pods on other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Plain routes via the other nodes' addresses (one L2 network).
    HostGw,
    /// VXLAN encapsulation (UDP 8472), for nodes that only reach each other through routers.
    Vxlan,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            _ => Err(format!("{s:?}: the backend is host-gw or vxlan")),
        }
    }
}

/// One remote node's pod CIDR and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub node_ip: String,
    /// VTEP MAC (vxlan only).
    pub mac: Option<String>,
}

/// The network address of a CIDR (`10.42.1.0/24` -> `10.42.1.0`): a node's VTEP address.
fn network_addr(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// The routes this node wants: other nodes' pod CIDR -> their InternalIP.
pub fn wanted(nodes: &[Node], me: &str) -> BTreeMap<String, String> {
    peers(nodes, me)
        .into_iter()
        .map(|(c, p)| (c, p.node_ip))
        .collect()
}

/// Other nodes' pod CIDRs with their addresses and VTEP MACs.
pub fn peers(nodes: &[Node], me: &str) -> BTreeMap<String, Peer> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) else {
            continue;
        };
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone());
        let mac = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(VTEP_MAC_ANNOTATION))
            .cloned();
        if let Some(ip) = ip
            && !cidr.is_empty()
        {
            out.insert(cidr, Peer { node_ip: ip, mac });
        }
    }
    out
}

/// What this node made, so that it removes nothing else.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Made {
    /// Pod CIDR -> gateway of each route this node added.
    pub routes: BTreeMap<String, String>,
    /// Whether this node created the VXLAN device.
    pub vxlan: bool,
}

impl Made {
    fn path(dir: &Path) -> PathBuf {
        dir.join("pod-routes.json")
    }

    pub fn load(dir: &Path) -> Made {
        std::fs::read(Self::path(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, dir: &Path) {
        let write = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                let tmp = Self::path(dir).with_extension("json.tmp");
                std::fs::write(&tmp, b)?;
                std::fs::rename(tmp, Self::path(dir))
            });
        if let Err(e) = write {
            tracing::warn!(error = %e, "recording this node's pod routes");
        }
    }

    /// Of the kernel's bosun routes, those this node made.
    fn ours(&self, kernel: BTreeMap<String, String>) -> BTreeMap<String, String> {
        kernel
            .into_iter()
            .filter(|(cidr, _)| self.routes.contains_key(cidr))
            .collect()
    }
}

/// bosun's routes now in the kernel (any instance's): CIDR -> gateway.
async fn current() -> BTreeMap<String, String> {
    let out = ip(&["-4", "route", "show", "proto", ROUTE_PROTO])
        .await
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let dst = w.next()?.to_string();
            let via = l.split_whitespace().skip_while(|x| *x != "via").nth(1)?;
            Some((dst, via.to_string()))
        })
        .collect()
}

/// Creates the VXLAN device (idempotent) with the node's VTEP address; returns its MAC.
pub async fn vxlan_up(node_ip: &str, pod_cidr: ipnet::Ipv4Net, dir: &Path) -> Result<String> {
    if ip(&["link", "show", "dev", VXLAN_DEVICE]).await.is_err() {
        let mut made = Made::load(dir);
        made.vxlan = true;
        made.save(dir);
        ip(&[
            "link",
            "add",
            VXLAN_DEVICE,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            node_ip,
            "dstport",
            "8472",
            "nolearning",
        ])
        .await?;
    }
    let vtep = format!("{}/32", pod_cidr.network());
    let addrs = ip(&["-4", "-o", "addr", "show", "dev", VXLAN_DEVICE]).await?;
    if !addrs.contains(&format!(" {vtep} ")) {
        ip(&["addr", "add", &vtep, "dev", VXLAN_DEVICE]).await?;
    }
    ip(&["link", "set", VXLAN_DEVICE, "up"]).await?;
    let show = ip(&["-o", "link", "show", "dev", VXLAN_DEVICE]).await?;
    show.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("{VXLAN_DEVICE} has no MAC address"))
}

async fn converge_vxlan(want: &BTreeMap<String, Peer>, dir: &Path) {
    let mut made = Made::load(dir);
    let have = made.ours(current().await);
    for (cidr, peer) in want {
        let Some(mac) = &peer.mac else {
            continue;
        };
        let vtep = network_addr(cidr);
        if have.get(cidr).map(String::as_str) == Some(vtep) {
            continue;
        }
        let steps = [
            ip(&[
                "neigh",
                "replace",
                vtep,
                "lladdr",
                mac,
                "dev",
                VXLAN_DEVICE,
                "nud",
                "permanent",
            ])
            .await,
            tokio::process::Command::new("bridge")
                .args([
                    "fdb",
                    "replace",
                    mac,
                    "dev",
                    VXLAN_DEVICE,
                    "dst",
                    &peer.node_ip,
                    "self",
                    "permanent",
                ])
                .status()
                .await
                .map_err(anyhow::Error::from)
                .and_then(|s| {
                    if s.success() {
                        Ok(String::new())
                    } else {
                        Err(anyhow::anyhow!("bridge fdb replace: {s}"))
                    }
                }),
            ip(&[
                "route",
                "replace",
                cidr,
                "via",
                vtep,
                "dev",
                VXLAN_DEVICE,
                "onlink",
                "proto",
                ROUTE_PROTO,
            ])
            .await,
        ];
        // Recorded even when a step failed: the route may exist and must be removable.
        made.routes.insert(cidr.clone(), vtep.to_string());
        match steps.into_iter().find_map(Result::err) {
            None => tracing::info!(%cidr, node = %peer.node_ip, "pod route (vxlan)"),
            Some(e) => tracing::warn!(%cidr, error = %format!("{e:#}"), "adding a vxlan pod route"),
        }
    }
    remove_stale(&mut made, &have, |c| want.contains_key(c)).await;
    made.save(dir);
}

/// Removes this node's routes that are no longer wanted (or that vanished from the kernel
/// from the record).
async fn remove_stale(
    made: &mut Made,
    have: &BTreeMap<String, String>,
    wanted: impl Fn(&str) -> bool,
) {
    let stale: Vec<String> = made.routes.keys().filter(|c| !wanted(c)).cloned().collect();
    for cidr in stale {
        if have.contains_key(&cidr) {
            let _ = ip(&["route", "del", &cidr, "proto", ROUTE_PROTO]).await;
        }
        made.routes.remove(&cidr);
    }
}

async fn converge(want: &BTreeMap<String, String>, dir: &Path) {
    let mut made = Made::load(dir);
    let have = made.ours(current().await);
    for (cidr, gw) in want {
        if have.get(cidr) == Some(gw) {
            continue;
        }
        made.routes.insert(cidr.clone(), gw.clone());
        match ip(&["route", "replace", cidr, "via", gw, "proto", ROUTE_PROTO]).await {
            Ok(_) => tracing::info!(%cidr, via = %gw, "pod route"),
            Err(e) => {
                tracing::warn!(%cidr, via = %gw, error = %format!("{e:#}"), "adding a pod route")
            }
        }
    }
    remove_stale(&mut made, &have, |c| want.contains_key(c)).await;
    made.save(dir);
}

/// Removes the pod routes and VXLAN device this node (data dir `dir`) made (`bosun reset`).
pub async fn cleanup(dir: &Path) {
    let mut made = Made::load(dir);
    let have = made.ours(current().await);
    remove_stale(&mut made, &have, |_| false).await;
    if made.vxlan && ip(&["link", "show", "dev", VXLAN_DEVICE]).await.is_ok() {
        let _ = ip(&["link", "del", VXLAN_DEVICE]).await;
    }
    made.vxlan = false;
    made.save(dir);
}

/// Where this node is, for the routes.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub node_name: String,
    pub node_ip: String,
    pub pod_cidr: ipnet::Ipv4Net,
    pub backend: Backend,
    /// The node's data dir, where the routes it made are recorded.
    pub data_dir: PathBuf,
}

/// Keeps the routes to other nodes' pods until `shutdown`.
pub async fn run(
    client: kube::Client,
    cfg: RouteConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let node_name = cfg.node_name.clone();
    if cfg.backend == Backend::Vxlan {
        let mac = vxlan_up(&cfg.node_ip, cfg.pod_cidr, &cfg.data_dir).await?;
        let patch = serde_json::json!({"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}});
        Api::<Node>::all(client.clone())
            .patch(
                &node_name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
    }
    let stop = shutdown.child_token();
    let _stop_watch = stop.clone().drop_guard();
    let informer = Informer::start(Api::<Node>::all(client), stop);
    let store = informer.store();
    // Any change may move a route; the whole set is recomputed from the cache and applied
    // only when it differs.
    let mut notices = std::pin::pin!(informer.notices());
    let mut last: Option<BTreeMap<String, Peer>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = notices.next() => if n.is_none() { return Ok(()) },
        }
        let nodes: Vec<Node> = store.state().iter().map(|n| (**n).clone()).collect();
        let want = peers(&nodes, &node_name);
        if last.as_ref() != Some(&want) {
            match cfg.backend {
                Backend::HostGw => converge(&wanted(&nodes, &node_name), &cfg.data_dir).await,
                Backend::Vxlan => converge_vxlan(&want, &cfg.data_dir).await,
            }
            last = Some(want);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": ip.map(|ip| vec![serde_json::json!({"type": "InternalIP", "address": ip})]).unwrap_or_default()},
        }))
        .unwrap()
    }

    #[test]
    fn routes_to_other_nodes_only() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), Some("192.168.1.1")),
            node("b", Some("10.42.1.0/24"), Some("192.168.1.2")),
            node("c", None, Some("192.168.1.3")),
            node("d", Some("10.42.3.0/24"), None),
        ];
        let w = wanted(&nodes, "a");
        assert_eq!(w.len(), 1);
        assert_eq!(w["10.42.1.0/24"], "192.168.1.2");
    }

    #[test]
    fn only_recorded_routes_are_ours() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Made::load(dir.path()), Made::default());
        let mut made = Made::default();
        made.routes
            .insert("10.42.1.0/24".into(), "192.168.1.2".into());
        made.save(dir.path());
        let made = Made::load(dir.path());
        // Another instance's route (same proto number) is not ours.
        let kernel: BTreeMap<String, String> = [
            ("10.42.1.0/24".to_string(), "192.168.1.2".to_string()),
            ("10.99.1.0/24".to_string(), "192.168.7.2".to_string()),
        ]
        .into();
        let ours = made.ours(kernel);
        assert_eq!(ours.len(), 1);
        assert!(ours.contains_key("10.42.1.0/24"));
    }
}
