//! `--store`: which store the control plane keeps its state in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Args, Clone, Debug)]
pub struct StoreOpts {
    /// Where the control plane keeps its state: `redb` (DATA_DIR/store.redb, one
    /// server) or `etcd://HOST:PORT,HOST:PORT,...` (an etcd v3 cluster, every member;
    /// several servers may share it)
    #[arg(long, default_value = "redb", env = "BOSUN_STORE")]
    pub store: String,
    /// CA certificate (PEM) that signed the etcd members' certificates; turns on TLS
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd clusters that require one
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Memory the embedded store may use to cache its file (e.g. 64Mi, 1Gi), however
    /// large the file grows; also bounds its repair after a crash
    #[arg(long, default_value = "64Mi", value_parser = crate::size::parse_bytes)]
    pub store_cache_size: usize,
}

/// What `--store` names.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreKind {
    Redb,
    Etcd(Vec<String>),
}

impl StoreOpts {
    pub fn kind(&self) -> Result<StoreKind> {
        parse(&self.store)
    }
}

pub fn parse(s: &str) -> Result<StoreKind> {
    if s == "redb" {
        return Ok(StoreKind::Redb);
    }
    let Some(list) = s.strip_prefix("etcd://") else {
        bail!("--store {s:?}: expected `redb` or `etcd://HOST:PORT[,HOST:PORT...]`");
    };
    let endpoints: Vec<String> = list
        .split(',')
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .collect();
    for e in &endpoints {
        let ok = e
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            bail!("--store {s:?}: endpoint {e:?} is not HOST:PORT");
        }
    }
    Ok(StoreKind::Etcd(endpoints))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Opens the store `opts` names. An etcd cluster that does not answer within ten
/// seconds is an error, so a wrong address or a cluster that is down shows at once.
pub async fn open(opts: &StoreOpts, data_dir: &Path) -> Result<Arc<dyn bosun_store::Store>> {
    match opts.kind()? {
        StoreKind::Redb => {
            if opts.etcd_ca.is_some() || opts.etcd_cert.is_some() {
                bail!("--etcd-ca/--etcd-cert/--etcd-key need --store etcd://...");
            }
            let path = data_dir.join("store.redb");
            let options = bosun_store::RedbOptions {
                cache_size: Some(opts.store_cache_size),
                ..Default::default()
            };
            // During an in-place upgrade the old process holds the file until it has
            // drained: wait for it (up to 5 s) rather than fail.
            let mut tries = 0;
            loop {
                match bosun_store::RedbStore::open(&path, options.clone()) {
                    Ok(s) => {
                        // The store holds every Secret: root only.
                        crate::pki::chmod(&path, 0o600)?;
                        return Ok(s);
                    }
                    Err(e) if tries < 20 => {
                        tracing::debug!("opening the store: {e}; retrying");
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(e).context("opening the store"),
                }
            }
        }
        StoreKind::Etcd(endpoints) => {
            let tls = match &opts.etcd_ca {
                Some(ca) => Some(bosun_store::EtcdTls {
                    ca_pem: read(ca, "--etcd-ca")?,
                    client_cert_pem: opts
                        .etcd_cert
                        .as_deref()
                        .map(|p| read(p, "--etcd-cert"))
                        .transpose()?,
                    client_key_pem: opts
                        .etcd_key
                        .as_deref()
                        .map(|p| read(p, "--etcd-key"))
                        .transpose()?,
                }),
                None if opts.etcd_cert.is_some() => {
                    bail!("--etcd-cert needs --etcd-ca (client certificates are sent over TLS)")
                }
                None => None,
            };
            let store = bosun_store::EtcdStore::connect(bosun_store::EtcdOptions {
                endpoints,
                tls,
                ..Default::default()
            })
            .await
            .context("opening the etcd store")?;
            Ok(store)
        }
    }
}

/// Name of the Lease in kube-system that elects the server running the singleton
/// loops (controllers and scheduler) when several servers share an etcd store.
pub const LEADER_LEASE: &str = "bosun-controller-manager";

/// Runs the controllers and the scheduler on whichever server holds the leader lease.
pub async fn elected_singletons(
    client: kube::Client,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "bosun".into());
    let identity = format!("{host}_{:016x}", rand::random::<u64>());
    let cfg = bosun_controllers::leader::ElectionConfig::new(LEADER_LEASE, &identity);
    bosun_controllers::leader::run_elected(client.clone(), cfg, shutdown, move |term| {
        let c = client.clone();
        async move {
            tokio::try_join!(
                bosun_controllers::run(c.clone(), term.clone()),
                bosun_scheduler::run(c, term),
            )?;
            Ok(())
        }
    })
    .await
}

#[derive(Args, Debug)]
pub struct StoreCmd {
    #[command(subcommand)]
    cmd: StoreVerb,
}

#[derive(Subcommand, Debug)]
enum StoreVerb {
    /// Copy every object of an embedded store (stopped) into an empty etcd cluster, oldest
    /// change first; then start the servers with `--store etcd://...`
    Migrate(MigrateOpts),
}

#[derive(Args, Debug)]
pub struct MigrateOpts {
    /// The embedded store file, DATA_DIR/store.redb (bosun must not be running on it)
    #[arg(long)]
    from: PathBuf,
    /// The etcd cluster: `etcd://HOST:PORT[,HOST:PORT...]`
    #[arg(long)]
    to: String,
    /// CA certificate (PEM) that signed the etcd members' certificates; turns on TLS
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd clusters that require one
    #[arg(long, requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

pub async fn run(cmd: StoreCmd) -> Result<ExitCode> {
    match cmd.cmd {
        StoreVerb::Migrate(o) => migrate(o).await,
    }
}

async fn migrate(o: MigrateOpts) -> Result<ExitCode> {
    if !matches!(parse(&o.to)?, StoreKind::Etcd(_)) {
        bail!("--to {:?}: expected etcd://HOST:PORT[,HOST:PORT...]", o.to);
    }
    if !o.from.is_file() {
        bail!("--from {}: no such store file", o.from.display());
    }
    let src = bosun_store::RedbStore::open(&o.from, bosun_store::RedbOptions::default())
        .with_context(|| {
            format!(
                "opening {} (is bosun still running on it?)",
                o.from.display()
            )
        })?;
    let dst_opts = StoreOpts {
        store: o.to.clone(),
        etcd_ca: o.etcd_ca,
        etcd_cert: o.etcd_cert,
        etcd_key: o.etcd_key,
        store_cache_size: bosun_store::DEFAULT_CACHE_SIZE,
    };
    let dst = open(&dst_opts, Path::new(".")).await?;
    let n = copy_all(src.as_ref(), dst.as_ref()).await?;
    println!("copied {n} keys from {} to {}", o.from.display(), o.to);
    Ok(ExitCode::SUCCESS)
}

/// Copies every key of `src` into `dst`, which must hold no bosun data, in the order
/// the source changed them (so the destination's revisions keep that order).
pub async fn copy_all(src: &dyn bosun_store::Store, dst: &dyn bosun_store::Store) -> Result<usize> {
    let existing = dst
        .list(
            "/registry/",
            bosun_store::ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await?;
    if let Some(kv) = existing.kvs.first() {
        bail!(
            "the destination already holds bosun data ({} ...); migrate into an empty store",
            kv.key
        );
    }
    let mut all = src.list("", bosun_store::ListOptions::default()).await?.kvs;
    all.sort_by_key(|kv| kv.mod_revision);
    for kv in &all {
        // Store leases are process-bound; what hangs on one is recreated by its owner.
        if kv.lease.is_some() {
            continue;
        }
        dst.create(&kv.key, kv.value.clone(), None)
            .await
            .with_context(|| format!("copying {}", kv.key))?;
    }
    Ok(all.iter().filter(|kv| kv.lease.is_none()).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(parse("redb").unwrap(), StoreKind::Redb);
        assert_eq!(
            parse("etcd://127.0.0.1:2379,10.0.0.2:2379/").unwrap(),
            StoreKind::Etcd(vec!["127.0.0.1:2379".into(), "10.0.0.2:2379".into()])
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://:2379",
            "mysql://x",
            "etcd://h:99999",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("--store"), "{bad}: {e}");
        }
    }
}
