//! Pod networking. `BridgeNetwork` gives each pod a network namespace (named like
//! `ip netns add` does, under /run/netns) with a veth pair to a node bridge and an IP from the
//! node's pod CIDR; `HostNetwork` is the fallback without privileges (pod IP = node IP).
//! Links are configured with iproute2's `ip`, the stable interface to the kernel's netlink.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use ipnet::Ipv4Net;

#[derive(Debug, Clone, PartialEq)]
pub struct PodNet {
    pub ip: IpAddr,
    /// Network namespace file; None = host network.
    pub netns: Option<PathBuf>,
}

#[async_trait]
pub trait PodNetwork: Send + Sync + 'static {
    /// Prepares node-level networking (bridge); idempotent.
    async fn init(&self) -> Result<()>;
    /// Creates (or returns the existing) network of a pod; idempotent.
    async fn setup(&self, pod_uid: &str) -> Result<PodNet>;
    /// The network of a pod if it has one, without creating anything.
    async fn get(&self, pod_uid: &str) -> Result<Option<PodNet>>;
    /// Removes a pod's network and frees its IP; idempotent.
    async fn teardown(&self, pod_uid: &str) -> Result<()>;
    /// Pods that have a network here (to clean up those whose pod is gone).
    async fn list(&self) -> Result<Vec<String>>;
    /// Whether pods get their own namespace (false = host network).
    fn isolated(&self) -> bool;
}

/// The gateway of a pod CIDR: its first host, the bridge's address.
pub fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

pub struct BridgeNetwork {
    bridge: String,
    cidr: Ipv4Net,
    state_dir: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

/// Adds (or removes) the iptables rule that accepts traffic between this bridge's pods.
/// With br_netfilter loaded, frames crossing the bridge pass the host's FORWARD chain, and a
/// DROP policy there (Docker sets one) would cut pods off from each other. Without iptables
/// nothing filters, so its absence is only logged.
async fn bridge_forwarding(bridge: &str, add: bool) {
    let rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"];
    let run = |op: &'static str| async move {
        tokio::process::Command::new("iptables")
            .arg("-w")
            .arg(op)
            .args(rule)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
    };
    let present = matches!(run("-C").await, Ok(s) if s.success());
    let result = match (add, present) {
        (true, false) => run("-I").await,
        (false, true) => run("-D").await,
        _ => return,
    };
    match result {
        Ok(s) if s.success() => {}
        Ok(s) => {
            tracing::warn!(bridge, status = %s, "iptables FORWARD rule for the pod bridge failed")
        }
        Err(e) => tracing::debug!(bridge, error = %e, "iptables not available"),
    }
}

/// Runs `ip ARGS` (iproute2) and returns its output; its stderr becomes the error.
pub(crate) async fn ip(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("run ip (iproute2)")?;
    ip_output(out, || args.join(" "))
}

/// `ip`'s stdout when it succeeded; otherwise its stderr as the error, after `ip WHAT: `.
fn ip_output(out: std::process::Output, what: impl FnOnce() -> String) -> Result<String> {
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            what(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs several `ip` commands (arguments without whitespace) in one process, `ip -batch -`,
/// inside network namespace `netns` when given (`-n`): one fork and exec instead of one per
/// command, which is most of a pod's network set-up time on a busy node. Stops at the first
/// failing command; its stderr becomes the error.
pub(crate) async fn ip_batch(netns: Option<&str>, cmds: &[Vec<&str>]) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run ip (iproute2)")?;
    let script = batch_script(cmds);
    let mut stdin = child.stdin.take().context("ip stdin")?;
    stdin.write_all(script.as_bytes()).await?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .context("run ip (iproute2)")?;
    ip_output(out, || {
        format!(
            "{}-batch",
            netns.map(|n| format!("-n {n} ")).unwrap_or_default()
        )
    })
}

/// The text `ip -batch` reads: one command per line.
fn batch_script(cmds: &[Vec<&str>]) -> String {
    cmds.iter().map(|c| c.join(" ") + "\n").collect()
}

/// 12 hex digits of the pod UID: unique enough per node, short enough for interface names.
fn short_uid(uid: &str) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

/// A pod's network set-up as two `ip` batches: on the node (the namespace, the veth pair with
/// its host end on the bridge) and inside the pod's namespace (eth0, its address, lo, the
/// default route). A neighbour entry left by the address's previous pod goes first (see
/// `setup`); `neigh flush` succeeds when there is none.
fn build_commands<'a>(
    ns: &'a str,
    host: &'a str,
    peer: &'a str,
    bridge: &'a str,
    cidr: &'a str,
    gw: &'a str,
) -> (Vec<Vec<&'a str>>, Vec<Vec<&'a str>>) {
    let addr = cidr.split('/').next().unwrap_or(cidr);
    let host_cmds = vec![
        // `nud all`: without it a flush skips entries added by hand (PERMANENT).
        vec!["neigh", "flush", "to", addr, "dev", bridge, "nud", "all"],
        vec!["netns", "add", ns],
        vec![
            "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns,
        ],
        vec!["link", "set", host, "master", bridge, "up"],
    ];
    let pod_cmds = vec![
        vec!["link", "set", peer, "name", "eth0"],
        vec!["addr", "add", cidr, "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["link", "set", "lo", "up"],
        vec!["route", "add", "default", "via", gw],
    ];
    (host_cmds, pod_cmds)
}

impl BridgeNetwork {
    pub fn new(bridge: &str, pod_cidr: Ipv4Net, data_dir: &Path) -> Result<Self> {
        if bridge.is_empty() || bridge.len() > 15 {
            bail!("bridge name {bridge:?} must have 1 to 15 characters");
        }
        if !(8..=30).contains(&pod_cidr.prefix_len()) {
            bail!("pod CIDR {pod_cidr}: prefix must be between /8 and /30");
        }
        Ok(Self {
            bridge: bridge.to_string(),
            cidr: pod_cidr.trunc(),
            state_dir: data_dir.join("network").join(bridge),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn name(&self) -> &str {
        &self.bridge
    }

    pub fn netns_name(&self, pod_uid: &str) -> String {
        format!("{}-{}", self.bridge, short_uid(pod_uid))
    }

    fn host_veth(pod_uid: &str) -> String {
        format!("vb{}", short_uid(pod_uid))
    }

    fn ips_dir(&self) -> PathBuf {
        self.state_dir.join("ips")
    }

    /// The IP recorded for a pod, if any.
    fn recorded_ip(&self, pod_uid: &str) -> Option<Ipv4Addr> {
        let dir = std::fs::read_dir(self.ips_dir()).ok()?;
        for e in dir.flatten() {
            if std::fs::read_to_string(e.path()).ok()?.trim() == pod_uid {
                return e.file_name().to_string_lossy().parse().ok();
            }
        }
        None
    }

    /// Allocates an IP, persisted as a file named by the IP holding the pod UID; creating it
    /// with O_EXCL makes the allocation atomic.
    fn allocate(&self, pod_uid: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.recorded_ip(pod_uid) {
            return Ok(ip);
        }
        std::fs::create_dir_all(self.ips_dir())?;
        // The network address, the gateway (first host) and the broadcast address are not
        // handed out.
        for ip in self.cidr.hosts().skip(1) {
            let path = self.ips_dir().join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(pod_uid.as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("allocate pod IP"),
            }
        }
        bail!("no free IP left in pod CIDR {}", self.cidr)
    }

    fn release(&self, pod_uid: &str) {
        if let Some(ip) = self.recorded_ip(pod_uid) {
            let _ = std::fs::remove_file(self.ips_dir().join(ip.to_string()));
        }
    }

    async fn netns_has_ip(&self, ns: &str, ip: Ipv4Addr) -> bool {
        match ip_out(&["-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"]).await {
            Some(out) => out.contains(&format!(" {ip}/")),
            None => false,
        }
    }

    async fn build(&self, pod_uid: &str, addr: Ipv4Addr) -> Result<()> {
        let ns = self.netns_name(pod_uid);
        let host = Self::host_veth(pod_uid);
        let peer = format!("pb{}", short_uid(pod_uid));
        let cidr = format!("{addr}/{}", self.cidr.prefix_len());
        let gw = gateway(self.cidr).to_string();
        let (host_cmds, pod_cmds) = build_commands(&ns, &host, &peer, &self.bridge, &cidr, &gw);
        ip_batch(None, &host_cmds).await?;
        ip_batch(Some(&ns), &pod_cmds).await?;
        Ok(())
    }

    async fn remove_links(&self, pod_uid: &str) {
        let ns = self.netns_name(pod_uid);
        // Deleting the namespace destroys eth0 and with it the host end of the pair.
        let _ = ip(&["netns", "del", &ns]).await;
        let _ = ip(&["link", "del", &Self::host_veth(pod_uid)]).await;
    }

    /// Removes every pod namespace of this bridge, the bridge and the IP records.
    pub async fn cleanup(&self) -> Result<()> {
        let _g = self.lock.lock().await;
        for uid in self.list_locked() {
            self.remove_links(&uid).await;
        }
        let prefix = format!("{}-", self.bridge);
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let _ = ip(&["netns", "del", &name]).await;
                }
            }
        }
        if ip_out(&["link", "show", "dev", &self.bridge])
            .await
            .is_some()
        {
            ip(&["link", "del", &self.bridge]).await?;
        }
        bridge_forwarding(&self.bridge, false).await;
        let _ = std::fs::remove_dir_all(&self.state_dir);
        Ok(())
    }

    fn list_locked(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.ips_dir()) {
            for e in dir.flatten() {
                if let Ok(uid) = std::fs::read_to_string(e.path()) {
                    out.push(uid.trim().to_string());
                }
            }
        }
        out
    }
}

async fn ip_out(args: &[&str]) -> Option<String> {
    ip(args).await.ok()
}

#[async_trait]
impl PodNetwork for BridgeNetwork {
    async fn init(&self) -> Result<()> {
        let _g = self.lock.lock().await;
        if ip_out(&["link", "show", "dev", &self.bridge])
            .await
            .is_none()
        {
            ip(&["link", "add", "name", &self.bridge, "type", "bridge"]).await?;
        }
        let gw = format!("{}/{}", gateway(self.cidr), self.cidr.prefix_len());
        let addrs = ip(&["-4", "-o", "addr", "show", "dev", &self.bridge]).await?;
        if !addrs.contains(&format!(" {gw} ")) {
            ip(&["addr", "add", &gw, "dev", &self.bridge]).await?;
        }
        ip(&["link", "set", &self.bridge, "up"]).await?;
        bridge_forwarding(&self.bridge, true).await;
        // Pods reach beyond the node through the host's routing.
        tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .await
            .context("enable ip_forward")?;
        Ok(())
    }

    async fn setup(&self, pod_uid: &str) -> Result<PodNet> {
        let _g = self.lock.lock().await;
        let addr = self.allocate(pod_uid)?;
        let ns = self.netns_name(pod_uid);
        let path = PathBuf::from("/run/netns").join(&ns);
        if path.exists() && self.netns_has_ip(&ns, addr).await {
            return Ok(PodNet {
                ip: IpAddr::V4(addr),
                netns: Some(path),
            });
        }
        // Half-built leftovers (e.g. the agent died mid-setup) are rebuilt from scratch; a
        // fresh pod has none, and looking costs no process.
        if path.exists()
            || Path::new("/sys/class/net")
                .join(Self::host_veth(pod_uid))
                .exists()
        {
            self.remove_links(pod_uid).await;
        }
        // The address may have just belonged to a pod that stopped: the node's neighbour
        // entry would still send its packets to that pod's MAC (and stay fresh for as long
        // as traffic flows), so probes and proxied requests to the new pod would vanish. The
        // first command of the build flushes it.
        if let Err(e) = self.build(pod_uid, addr).await {
            self.remove_links(pod_uid).await;
            self.release(pod_uid);
            return Err(e.context(format!("set up network of pod {pod_uid}")));
        }
        Ok(PodNet {
            ip: IpAddr::V4(addr),
            netns: Some(path),
        })
    }

    async fn get(&self, pod_uid: &str) -> Result<Option<PodNet>> {
        let Some(addr) = self.recorded_ip(pod_uid) else {
            return Ok(None);
        };
        let path = PathBuf::from("/run/netns").join(self.netns_name(pod_uid));
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(PodNet {
            ip: IpAddr::V4(addr),
            netns: Some(path),
        }))
    }

    async fn teardown(&self, pod_uid: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        self.remove_links(pod_uid).await;
        self.release(pod_uid);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>> {
        let _g = self.lock.lock().await;
        Ok(self.list_locked())
    }

    fn isolated(&self) -> bool {
        true
    }
}

/// Pods share the node's network: pod IP = node IP.
pub struct HostNetwork {
    pub node_ip: IpAddr,
}

#[async_trait]
impl PodNetwork for HostNetwork {
    async fn init(&self) -> Result<()> {
        Ok(())
    }
    async fn setup(&self, _pod_uid: &str) -> Result<PodNet> {
        Ok(PodNet {
            ip: self.node_ip,
            netns: None,
        })
    }
    async fn get(&self, _pod_uid: &str) -> Result<Option<PodNet>> {
        Ok(Some(PodNet {
            ip: self.node_ip,
            netns: None,
        }))
    }
    async fn teardown(&self, _pod_uid: &str) -> Result<()> {
        Ok(())
    }
    async fn list(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    fn isolated(&self) -> bool {
        false
    }
}

/// Whether this process may create network namespaces and links (root or CAP_NET_ADMIN +
/// CAP_SYS_ADMIN), judged from the effective capability set.
pub fn can_manage_network() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(hex) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
    else {
        return false;
    };
    let caps = u64::from_str_radix(hex, 16).unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    caps & CAP_NET_ADMIN != 0 && caps & CAP_SYS_ADMIN != 0 && which_ip()
}

fn which_ip() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("ip").is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_leave_out_network_gateway_and_broadcast() {
        let c: Ipv4Net = "10.88.0.7/24".parse().unwrap();
        let dir = std::env::temp_dir().join(format!("bosun-cidr-{}", std::process::id()));
        let n = BridgeNetwork::new("bt-cidr", c, &dir).unwrap();
        assert_eq!(n.cidr.network(), Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(gateway(n.cidr), Ipv4Addr::new(10, 88, 0, 1));
        let hosts: Vec<_> = n.cidr.hosts().skip(1).collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(10, 88, 0, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(10, 88, 0, 254)));
        assert!(BridgeNetwork::new("bt-cidr", "10.88.0.0/31".parse().unwrap(), &dir).is_err());
    }

    #[test]
    fn pod_network_is_built_by_two_ip_processes() {
        let (host, pod) = build_commands(
            "bt-abc",
            "vbabc",
            "pbabc",
            "bt",
            "10.88.0.5/24",
            "10.88.0.1",
        );
        assert_eq!(
            batch_script(&host),
            "neigh flush to 10.88.0.5 dev bt nud all\n\
             netns add bt-abc\n\
             link add vbabc type veth peer name pbabc netns bt-abc\n\
             link set vbabc master bt up\n"
        );
        assert_eq!(
            batch_script(&pod),
            "link set pbabc name eth0\n\
             addr add 10.88.0.5/24 dev eth0\n\
             link set eth0 up\n\
             link set lo up\n\
             route add default via 10.88.0.1\n"
        );
    }

    #[tokio::test]
    async fn a_failing_batch_command_is_an_error() {
        if !can_manage_network() {
            return;
        }
        let out = ip_batch(None, &[vec!["link", "show", "lo"]]).await.unwrap();
        assert!(out.contains("lo:"), "{out}");
        let err = ip_batch(
            None,
            &[
                vec!["link", "show", "lo"],
                vec!["link", "show", "bt-none-such0"],
            ],
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("bt-none-such0"), "{err:#}");
    }

    #[test]
    fn allocation_is_persistent_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let n = BridgeNetwork::new("btalloc", "10.99.0.0/29".parse().unwrap(), dir.path()).unwrap();
        let a = n.allocate("uid-a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(n.allocate("uid-a").unwrap(), a, "same pod, same IP");
        let ips: Vec<_> = (0..4)
            .map(|i| n.allocate(&format!("u{i}")).unwrap())
            .collect();
        assert_eq!(*ips.last().unwrap(), Ipv4Addr::new(10, 99, 0, 6));
        assert!(n.allocate("one-too-many").is_err());
        n.release("u0");
        let again =
            BridgeNetwork::new("btalloc", "10.99.0.0/29".parse().unwrap(), dir.path()).unwrap();
        assert_eq!(again.allocate("new").unwrap(), ips[0]);
        assert_eq!(again.recorded_ip("uid-a"), Some(a));
    }
}
