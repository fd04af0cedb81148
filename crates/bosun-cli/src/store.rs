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

/// Opens the store for a server: an etcd cluster that does not answer yet (down, no
/// quorum, not started) is waited for, saying so every attempt, so a server started before
/// its etcd, or during an outage, comes up by itself once etcd answers. None on shutdown.
pub async fn open_waiting(
    opts: &StoreOpts,
    data_dir: &Path,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<Arc<dyn bosun_store::Store>>> {
    if opts.kind()? == StoreKind::Redb {
        return open(opts, data_dir).await.map(Some);
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            r = open(opts, data_dir) => match r {
                Ok(s) => {
                    if attempt > 1 {
                        eprintln!("bosun: etcd answers again; starting");
                    }
                    return Ok(Some(s));
                }
                Err(e) => e,
            },
        };
        // Configuration mistakes (bad flags, unreadable certificates) do not heal by waiting.
        if !format!("{err:#}").contains("did not answer")
            && !format!("{err:#}").contains("connecting to")
        {
            return Err(err);
        }
        eprintln!(
            "bosun: {err:#}; the API server starts once etcd answers (attempt {attempt}, retrying in 2 s)"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

/// Name of the Lease in kube-system that elects the server running the singleton
/// loops (controllers and scheduler) when several servers share an etcd store.
pub const LEADER_LEASE: &str = "bosun-controller-manager";

/// What the elected server runs besides the controllers and the scheduler.
pub struct Singletons {
    pub controllers: bosun_controllers::ControllerConfig,
    pub cluster_cidr: ipnet::Ipv4Net,
    pub signer: Arc<crate::csrsign::Signer>,
}

/// Runs the controllers, the scheduler, the pod CIDR allocator and the node certificate
/// signer on whichever server holds the leader lease.
pub async fn elected_singletons(
    client: kube::Client,
    loops: Singletons,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "bosun".into());
    let identity = format!("{host}_{:016x}", rand::random::<u64>());
    let cfg = bosun_controllers::leader::ElectionConfig::new(LEADER_LEASE, &identity);
    let loops = Arc::new(loops);
    bosun_controllers::leader::run_elected(client.clone(), cfg, shutdown, move |term| {
        let (c, l) = (client.clone(), loops.clone());
        async move {
            tokio::try_join!(
                bosun_controllers::run_with(c.clone(), l.controllers.clone(), term.clone()),
                bosun_scheduler::run(c.clone(), term.clone()),
                bosun_controllers::nodeipam::run(c.clone(), l.cluster_cidr, term.clone()),
                l.signer.clone().run(c, term),
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

#[derive(Args, Debug)]
pub struct BackupOpts {
    /// File to write (JSON lines: a header, then one key and value per line)
    #[arg(long)]
    out: PathBuf,
    /// Data dir of the server (its store.redb, for `--store redb`)
    #[arg(long, default_value = "bosun-data", env = "BOSUN_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Args, Debug)]
pub struct RestoreOpts {
    /// A file written by `bosun backup`
    #[arg(long)]
    from: PathBuf,
    /// Data dir of the server (its store.redb, for `--store redb`)
    #[arg(long, default_value = "bosun-data", env = "BOSUN_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    store: StoreOpts,
}

const BACKUP_FORMAT: u64 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupHeader {
    bosun_backup: u64,
    revision: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BackupEntry {
    key: String,
    /// Base64 of the stored value.
    value: String,
}

/// Writes every key of the store, read at one revision, oldest change first. Works on
/// a running etcd-backed cluster; an embedded store must be stopped first.
pub async fn backup(o: BackupOpts) -> Result<ExitCode> {
    use base64::Engine;
    use std::io::Write;
    if matches!(o.store.kind()?, StoreKind::Redb) && !o.data_dir.join("store.redb").is_file() {
        bail!("no store at {}", o.data_dir.join("store.redb").display());
    }
    let store = open(&o.store, &o.data_dir)
        .await
        .context("(an embedded store can only be backed up while bosun is stopped)")?;
    let list = store.list("", bosun_store::ListOptions::default()).await?;
    let mut kvs = list.kvs;
    kvs.retain(|kv| kv.lease.is_none());
    kvs.sort_by_key(|kv| kv.mod_revision);
    let tmp = o.out.with_extension("partial");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let header = BackupHeader {
        bosun_backup: BACKUP_FORMAT,
        revision: list.revision,
    };
    writeln!(f, "{}", serde_json::to_string(&header)?)?;
    for kv in &kvs {
        let e = BackupEntry {
            key: kv.key.clone(),
            value: base64::engine::general_purpose::STANDARD.encode(&kv.value),
        };
        writeln!(f, "{}", serde_json::to_string(&e)?)?;
    }
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &o.out)?;
    println!(
        "backed up {} keys at revision {} to {}",
        kvs.len(),
        list.revision,
        o.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a backup into an empty store (a new data dir, or an etcd cluster without
/// bosun data), in the order the keys were backed up.
pub async fn restore(o: RestoreOpts) -> Result<ExitCode> {
    use base64::Engine;
    use std::io::BufRead;
    let f =
        std::fs::File::open(&o.from).with_context(|| format!("opening {}", o.from.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let header: BackupHeader = serde_json::from_str(&first)
        .with_context(|| format!("{}: not a bosun backup", o.from.display()))?;
    if header.bosun_backup != BACKUP_FORMAT {
        bail!(
            "{}: backup format {} is not supported (this bosun reads {BACKUP_FORMAT})",
            o.from.display(),
            header.bosun_backup
        );
    }
    // Read it all before writing anything: a damaged file restores nothing.
    let mut entries = Vec::new();
    for (i, line) in lines.enumerate() {
        let e: BackupEntry = serde_json::from_str(&line?)
            .with_context(|| format!("{}: line {} is damaged", o.from.display(), i + 2))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(&e.value)
            .with_context(|| format!("{}: line {} is damaged", o.from.display(), i + 2))?;
        entries.push((e.key, value));
    }
    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("creating {}", o.data_dir.display()))?;
    let store = open(&o.store, &o.data_dir).await?;
    ensure_empty(store.as_ref()).await?;
    for (key, value) in &entries {
        store
            .create(key, value.clone().into(), None)
            .await
            .with_context(|| format!("restoring {key}"))?;
    }
    println!(
        "restored {} keys (backed up at revision {})",
        entries.len(),
        header.revision
    );
    Ok(ExitCode::SUCCESS)
}

async fn ensure_empty(dst: &dyn bosun_store::Store) -> Result<()> {
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
            "the destination already holds bosun data ({} ...); use an empty store",
            kv.key
        );
    }
    Ok(())
}

/// Copies every key of `src` into `dst`, which must hold no bosun data, in the order
/// the source changed them (so the destination's revisions keep that order).
pub async fn copy_all(src: &dyn bosun_store::Store, dst: &dyn bosun_store::Store) -> Result<usize> {
    ensure_empty(dst).await?;
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
