//! A real etcd cluster for tests and benchmarks: N members of the system's `etcd`
//! (Debian's `etcd-server`) on free loopback ports, each with its own data directory
//! in a temporary directory, stopped by PID when dropped.
//!
//! Members are started with a 1 s watch progress interval, so quiet watches get
//! progress notices (bookmarks) quickly, as bosun's docs recommend for production.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EtcdOptions, EtcdTls};

/// Certificates of a TLS cluster (PEM), also written to files in the cluster's dir.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    tls: Option<ClusterTls>,
    token: String,
}

/// The etcd binary: `$BOSUN_ETCD`, else `etcd` on the PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BOSUN_ETCD") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl EtcdCluster {
    /// Starts `n` members without TLS and waits until the cluster has a leader.
    pub async fn start(n: usize) -> Result<EtcdCluster, String> {
        Self::start_with(n, false).await
    }

    /// Starts `n` members that serve clients over TLS and require client certificates
    /// signed by a CA made for the cluster.
    pub async fn start_tls(n: usize) -> Result<EtcdCluster, String> {
        Self::start_with(n, true).await
    }

    async fn start_with(n: usize, tls: bool) -> Result<EtcdCluster, String> {
        if etcd_binary().is_none() {
            return Err("etcd is not installed (Debian package etcd-server)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("bosun-etcd-")
            .tempdir()
            .map_err(err)?;
        let tls = if tls {
            Some(make_tls(dir.path())?)
        } else {
            None
        };
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port().map_err(err)?,
                peer_port: free_port().map_err(err)?,
                child: None,
            });
        }
        let token = format!("bosun-test-{}", std::process::id());
        let mut cluster = EtcdCluster {
            dir,
            members,
            tls,
            token,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let bin = etcd_binary().ok_or("etcd is not installed")?;
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let scheme = self.scheme();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .map_err(err)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(err)?)
            .stderr(log);
        if let Some(t) = &self.tls {
            // Members use the client certificate's pair as their serving certificate:
            // it carries the loopback names and both key usages.
            cmd.arg("--cert-file")
                .arg(&t.client_cert_file)
                .arg("--key-file")
                .arg(&t.client_key_file)
                .arg("--trusted-ca-file")
                .arg(&t.ca_file)
                .arg("--client-cert-auth");
        }
        let child = cmd.spawn().map_err(|e| format!("starting etcd: {e}"))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until every running member answers and one of them leads.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = true;
            for i in 0..self.members.len() {
                if self.members[i].child.is_some() && self.status(i).await.is_none() {
                    all = false;
                }
            }
            if all && self.leader().await.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd cluster not ready within {within:?}; logs in {}",
                    self.dir.path().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn connect_options(&self) -> etcd_client::ConnectOptions {
        let mut o = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2));
        if let Some(t) = &self.tls {
            o = o.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem))
                    .identity(etcd_client::Identity::from_pem(
                        &t.client_cert_pem,
                        &t.client_key_pem,
                    )),
            );
        }
        o
    }

    /// (member id, leader id) as member `i` sees them, if it answers.
    async fn status(&self, i: usize) -> Option<(u64, u64)> {
        let ep = self.endpoint(i);
        let mut c = etcd_client::Client::connect([ep], Some(self.connect_options()))
            .await
            .ok()?;
        let s = tokio::time::timeout(Duration::from_secs(3), c.status())
            .await
            .ok()?
            .ok()?;
        let id = s.header().map(|h| h.member_id())?;
        Some((id, s.leader()))
    }

    /// The index of the member that leads, as the running members agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                ids.push(None);
                continue;
            }
            let s = self.status(i).await;
            ids.push(s.map(|(id, _)| id));
            if let Some((_, l)) = s
                && l != 0
            {
                leader = Some(l);
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Store options for this cluster: every endpoint, its TLS, no periodic compaction.
    pub fn store_options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.endpoints(),
            tls: self.tls.as_ref().map(|t| EtcdTls {
                ca_pem: t.ca_pem.clone().into_bytes(),
                client_cert_pem: Some(t.client_cert_pem.clone().into_bytes()),
                client_key_pem: Some(t.client_key_pem.clone().into_bytes()),
            }),
            compaction_interval: Duration::ZERO,
            ..EtcdOptions::default()
        }
    }

    /// `kill -9` of member `i` (by its PID), waiting until it is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A CA, and one certificate for 127.0.0.1/localhost usable as both server and client.
fn make_tls(dir: &Path) -> Result<ClusterTls, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bosun test etcd CA");
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, "bosun");
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    let t = ClusterTls {
        ca_pem: ca.pem(),
        client_cert_pem: cert.pem(),
        client_key_pem: key.serialize_pem(),
        ca_file: dir.join("ca.crt"),
        client_cert_file: dir.join("client.crt"),
        client_key_file: dir.join("client.key"),
    };
    std::fs::write(&t.ca_file, &t.ca_pem).map_err(err)?;
    std::fs::write(&t.client_cert_file, &t.client_cert_pem).map_err(err)?;
    std::fs::write(&t.client_key_file, &t.client_key_pem).map_err(err)?;
    Ok(t)
}
