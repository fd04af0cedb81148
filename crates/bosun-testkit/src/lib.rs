//! Starts real `bosun up` processes for tests and benchmarks. Each cluster gets its own
//! data dir, API and agent ports, bridge name and pod range, so many can run at once.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// A running `bosun up` process; stopped and cleaned up on drop.
pub struct Cluster {
    pub data_dir: tempfile::TempDir,
    pub api_port: u16,
    pub kubelet_port: u16,
    pub bridge: String,
    pub pod_cidr: String,
    pub node_name: String,
    pub service_cidr: String,
    pub service_interface: String,
    pub http_port: u16,
    pub https_port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

/// The bosun binary: `$BOSUN_BIN`, else next to the running executable (target/{debug,release}).
pub fn bosun_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BOSUN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable without a directory")?;
    // Test binaries live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps without a parent")?;
    }
    let bin = dir.join("bosun");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build -p bosun-cli` or set BOSUN_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A loopback port free now and handed out once by this process. Taken from a band below
/// the one `bosun up` picks its internal ports from (itself below the kernel's ephemeral
/// range): a `bind(0)` port is free only until an outgoing connection takes it, and two
/// `bind(0)` calls in a row may return the same port (API server and agent then collide).
fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .saturating_sub(12_000);
    let start = low.saturating_sub(12_000).max(1024);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        let port = if start < low {
            rand::random_range(start..low)
        } else {
            0
        };
        if handed_out.contains(&port) {
            continue;
        }
        let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let port = listener.local_addr()?.port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port below the ephemeral range")
}

impl Cluster {
    /// Starts a cluster and waits until its node is Ready.
    pub async fn start(name: &str) -> Result<Cluster> {
        Self::start_with(name, &[]).await
    }

    /// Starts a cluster with extra `bosun up` flags (e.g. `--store etcd://...`).
    pub async fn start_with(name: &str, extra: &[String]) -> Result<Cluster> {
        let tag: u16 = rand::random_range(0..10_000);
        let mut c = Cluster {
            data_dir: tempfile::Builder::new()
                .prefix(&format!("bosun-{name}-"))
                .tempdir()?,
            api_port: free_port()?,
            kubelet_port: free_port()?,
            bridge: format!("bk{tag}{}", std::process::id() % 1000),
            pod_cidr: format!("10.{}.{}.0/24", 200 + tag % 50, tag % 250),
            node_name: format!("node-{name}"),
            service_cidr: format!("10.{}.{}.0/24", 150 + tag % 50, tag % 250),
            service_interface: format!("bs{tag}{}", std::process::id() % 1000),
            http_port: free_port()?,
            https_port: free_port()?,
            extra: extra.to_vec(),
            child: None,
        };
        c.bridge.truncate(15);
        c.service_interface.truncate(15);
        c.spawn()?;
        c.wait_ready(Duration::from_secs(60)).await?;
        Ok(c)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.path().join("bosun.log"))?;
        let child = Command::new(bosun_bin()?)
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--listen", &format!("127.0.0.1:{}", self.api_port)])
            .args(["--kubelet-port", &self.kubelet_port.to_string()])
            .args(["--pod-cidr", &self.pod_cidr])
            .args(["--bridge", &self.bridge])
            .args(["--node-name", &self.node_name])
            .args(["--service-cidr", &self.service_cidr])
            .args(["--service-interface", &self.service_interface])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--https-port", &self.https_port.to_string()])
            .args(&self.extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting bosun up")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.path().join("kubeconfig")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub async fn client(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(self.kubeconfig())?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(cfg)?)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("bosun exited with {status}:\n{}", self.log_tail());
            }
            if self.kubeconfig().exists()
                && let Ok(client) = self.client().await
                && let Ok(node) = Api::<Node>::all(client).get(&self.node_name).await
                && node_ready(&node)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("bosun did not become ready:\n{}", self.log_tail())
    }

    /// Kills bosun with SIGKILL (pods keep running under their shims).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9` and start again on the same data dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready(Duration::from_secs(60)).await
    }

    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.data_dir.path().join("bosun.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
        // Pods outlive bosun on purpose; `bosun reset` stops them and removes their networks.
        if let Ok(bin) = bosun_bin() {
            let _ = Command::new(bin)
                .arg("reset")
                .arg("--data-dir")
                .arg(self.data_dir.path())
                .args(["--bridge", &self.bridge, "--node-name", &self.node_name])
                .args(["--pod-cidr", &self.pod_cidr])
                .args(["--service-interface", &self.service_interface])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// Whether every test must run in full (`BOSUN_REQUIRE_ALL=1`, set by `scripts/test.sh`
/// under CI): a test that would skip for lack of a component fails instead.
pub fn require_all() -> bool {
    std::env::var("BOSUN_REQUIRE_ALL").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reports that a test, or a part of it, does not run because this machine lacks what it
/// needs. Rust's test harness has no "skipped", so this says it on stderr, past the
/// harness's output capture, in a line no one can miss; with `BOSUN_REQUIRE_ALL=1` it
/// panics instead, so CI cannot pass on a test that did not run. Call it before returning
/// early from a test.
#[track_caller]
pub fn skip(reason: &str) {
    if require_all() {
        panic!("SKIPPED but required (BOSUN_REQUIRE_ALL=1): {reason}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "!!!!! SKIPPED ({}): {reason} !!!!!",
        std::panic::Location::caller()
    );
}
