//! `bosun secrets rotate-key`: rotates the key that encrypts Secrets at rest while
//! bosun runs, the way Kubernetes documents it: a new key goes first in the
//! EncryptionConfiguration, the server reloads it, every Secret is read and written
//! back through the API (so it is encrypted with the new key), then old keys may go.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bosun_apiserver::encryption::{CONFIG_FILE, EncryptionConfiguration};
use clap::{Args, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

#[derive(Args)]
pub struct SecretsOpts {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Add a new encryption key, make it the one that encrypts, and re-encrypt every
    /// Secret with it (bosun must be running)
    RotateKey(RotateOpts),
}

#[derive(Args)]
struct RotateOpts {
    /// bosun's data directory (holds encryption-config.yaml and the kubeconfig)
    #[arg(long, default_value = "bosun-data", env = "BOSUN_DATA_DIR")]
    data_dir: PathBuf,
    /// After every Secret is re-encrypted, remove the old keys from the configuration
    #[arg(long)]
    drop_old: bool,
}

pub async fn run(opts: SecretsOpts) -> Result<ExitCode> {
    match opts.command {
        SecretsCommand::RotateKey(o) => rotate(o).await,
    }
}

async fn client(data_dir: &std::path::Path, server: Option<&str>) -> Result<kube::Client> {
    let path = data_dir.join("kubeconfig");
    let kc = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    if let Some(url) = server {
        cfg.cluster_url = url.parse().with_context(|| format!("server URL {url}"))?;
    }
    Ok(kube::Client::try_from(cfg)?)
}

async fn call(client: &kube::Client, method: http::Method, path: &str) -> Result<Value> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(Vec::new())?;
    Ok(client.request::<Value>(req).await?)
}

/// The provider that writes for the first resource entry, as the server reports it.
fn writer(status: &Value) -> Option<&str> {
    status.pointer("/resources/0/providers/0")?.as_str()
}

/// The providers of the first resource entry, as the server reports them.
fn providers(status: &Value) -> Vec<&str> {
    status
        .pointer("/resources/0/providers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every API server of the cluster (from their `kube-system/apiserver-*` Leases), as
/// clients with this kubeconfig's credentials; just the kubeconfig's server when none
/// has a Lease.
async fn servers(
    data_dir: &std::path::Path,
    local: &kube::Client,
) -> Result<Vec<(String, kube::Client)>> {
    let leases: Api<Lease> = Api::namespaced(local.clone(), "kube-system");
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for l in leases.list(&ListParams::default()).await?.items {
        if !l
            .metadata
            .name
            .as_deref()
            .unwrap_or("")
            .starts_with("apiserver-")
        {
            continue;
        }
        if let Some(addr) = bosun_controllers::apiserver_endpoints::live_address(&l, now) {
            let url = format!("https://{addr}");
            out.push((url.clone(), client(data_dir, Some(&url)).await?));
        }
    }
    if out.is_empty() {
        out.push(("this server".into(), local.clone()));
    }
    Ok(out)
}

/// Waits until every server reports a configuration `ok` accepts (servers on etcd take
/// a new configuration from the one where it was changed within a few seconds).
async fn wait_all(
    servers: &[(String, kube::Client)],
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for (name, c) in servers {
        loop {
            let status = call(c, http::Method::GET, "/bosun/v1/encryption")
                .await
                .with_context(|| format!("asking {name} for its encryption status"))?;
            if ok(&status) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("{name} did not load the new configuration ({what}) within 60 s: {status}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

async fn reload(client: &kube::Client) -> Result<Value> {
    call(client, http::Method::POST, "/bosun/v1/encryption/reload")
        .await
        .context("reloading the encryption configuration")
}

async fn rotate(o: RotateOpts) -> Result<ExitCode> {
    let path = o.data_dir.join(CONFIG_FILE);
    let client = client(&o.data_dir, None).await?;
    // Before touching the file: the server must be up and use this configuration.
    let status = call(&client, http::Method::GET, "/bosun/v1/encryption")
        .await
        .context("asking bosun for its encryption status (is bosun running?)")?;
    if status.get("configured") != Some(&Value::Bool(true)) {
        bail!("this bosun server has no encryption configuration");
    }
    let servers = servers(&o.data_dir, &client).await?;

    // Two steps, as Kubernetes documents for several servers: first every server learns
    // the new key (so it can read what any server writes with it), then it encrypts.
    let mut cfg = EncryptionConfiguration::load(&path)?;
    let name = cfg.add_key_last()?;
    cfg.save(&path)?;
    reload(&client).await?;
    let want = format!("aesgcm:{name}");
    wait_all(&servers, "the new key", |s| {
        providers(s).contains(&want.as_str())
    })
    .await?;
    let mut cfg = EncryptionConfiguration::load(&path)?;
    cfg.promote(&name)?;
    cfg.save(&path)?;
    let status = reload(&client).await?;
    if writer(&status) != Some(want.as_str()) {
        bail!(
            "after the reload the server encrypts with {:?}, not {want}",
            writer(&status)
        );
    }
    wait_all(&servers, "the new key first", |s| {
        writer(s) == Some(want.as_str())
    })
    .await?;
    println!(
        "new key {name} encrypts from now on ({} server{})",
        servers.len(),
        if servers.len() == 1 { "" } else { "s" }
    );

    let rewritten = reencrypt_all(&client).await?;
    println!("re-encrypted {rewritten} Secrets with {name}");

    if o.drop_old {
        let mut cfg = EncryptionConfiguration::load(&path)?;
        if cfg.write_key()? != name {
            bail!("{} changed meanwhile; old keys kept", path.display());
        }
        let dropped = cfg.drop_old_keys()?;
        cfg.save(&path)?;
        reload(&client).await?;
        let aes = |s: &Value| {
            providers(s)
                .iter()
                .filter(|p| p.starts_with("aesgcm:"))
                .count()
                == 1
        };
        wait_all(&servers, "without the old keys", aes).await?;
        if dropped.is_empty() {
            println!("no old keys to drop");
        } else {
            println!("dropped old keys: {}", dropped.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and writes back every Secret; the server writes even an unchanged Secret
/// when it is stored under an old key.
async fn reencrypt_all(client: &kube::Client) -> Result<usize> {
    let all: Api<Secret> = Api::all(client.clone());
    let list = all.list(&ListParams::default()).await?;
    let mut n = 0;
    for s in list.items {
        let (Some(ns), Some(name)) = (s.metadata.namespace.clone(), s.metadata.name.clone()) else {
            continue;
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let mut current = s;
        for attempt in 0.. {
            match api.replace(&name, &PostParams::default(), &current).await {
                Ok(_) => {
                    n += 1;
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => break,
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 10 => {
                    // Written by someone else meanwhile (and so already re-encrypted
                    // unless that write lost a race too): read again and retry.
                    match api.get_opt(&name).await? {
                        Some(s) => current = s,
                        None => break,
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("re-encrypting {ns}/{name}")),
            }
        }
    }
    Ok(n)
}
