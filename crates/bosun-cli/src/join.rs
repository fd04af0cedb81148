//! Joining machines without copying secrets, as kubeadm and k3s do.
//!
//! The server keeps bootstrap tokens (`abcdef.0123456789abcdef`) as Secrets in kube-system
//! and publishes its CA in the public `kube-public/cluster-info` ConfigMap. A join token
//! (`K10<sha256 of the CA's SubjectPublicKeyInfo>::<id>.<secret>`) carries both the bootstrap
//! token and the CA pin: the agent fetches cluster-info without trusting anyone, checks the
//! CA against the pin, then talks TLS verified by that CA, authenticates with the bootstrap
//! token and asks for a `system:node:NAME` client certificate through a
//! CertificateSigningRequest, which the server's signer (`csrsign.rs`) approves and signs.
//! From then on the node uses its certificate; it never holds the CA key or admin token.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

/// The file in the server's data dir holding the join token for `bosun agent --token`.
pub const TOKEN_FILE: &str = "node-token";
pub const KUBELET_ACCESS_SECRET: &str = "bosun-kubelet-access";
const TOKEN_PREFIX: &str = "K10";

/// A bootstrap token and, when known, the CA pin (`sha256:HEX`).
#[derive(Debug, Clone, PartialEq)]
pub struct JoinToken {
    pub ca_hash: Option<String>,
    pub id: String,
    pub secret: String,
}

const TOKEN_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_chars(n: usize) -> String {
    (0..n)
        .map(|_| TOKEN_CHARS[rand::random_range(0..TOKEN_CHARS.len())] as char)
        .collect()
}

impl JoinToken {
    pub fn generate(ca_hash: Option<String>) -> Self {
        JoinToken {
            ca_hash,
            id: random_chars(6),
            secret: random_chars(16),
        }
    }

    /// Accepts `K10<hex>::<id>.<secret>` or a bare `<id>.<secret>`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let (hash, token) = match s
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|r| r.split_once("::"))
        {
            Some((hex, t)) => {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("the token's CA hash is not 64 hex digits");
                }
                (Some(format!("sha256:{}", hex.to_ascii_lowercase())), t)
            }
            None => (None, s),
        };
        let Some((id, secret)) = bosun_apiserver::auth::parse_bootstrap_token(token) else {
            bail!(
                "the token is neither K10<ca-hash>::<id>.<secret> nor <id>.<secret> \
                 (id: 6 and secret: 16 characters of a-z0-9)"
            );
        };
        Ok(JoinToken {
            ca_hash: hash,
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// The bootstrap token alone, as sent in `Authorization: Bearer`.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self
            .ca_hash
            .as_deref()
            .and_then(|h| h.strip_prefix("sha256:"))
        {
            Some(hex) => write!(f, "{TOKEN_PREFIX}{hex}::{}", self.bearer()),
            None => f.write_str(&self.bearer()),
        }
    }
}

/// `sha256:HEX` of the first certificate's SubjectPublicKeyInfo, as kubeadm's
/// `--discovery-token-ca-cert-hash`.
pub fn ca_hash(ca_pem: &str) -> Result<String> {
    let der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .next()
        .context("the CA PEM holds no certificate")??;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("CA: {e}"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Ok(format!("sha256:{}", hex(digest.as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Stores a bootstrap token as Kubernetes does: Secret `kube-system/bootstrap-token-ID`.
pub async fn create_bootstrap_token(
    client: &kube::Client,
    tok: &JoinToken,
    ttl: Option<Duration>,
    description: &str,
) -> Result<()> {
    let expiration = ttl
        .map(|d| jiff::Timestamp::now() + jiff::SignedDuration::try_from(d).unwrap_or_default())
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string());
    let mut fields = vec![
        ("token-id", tok.id.as_str()),
        ("token-secret", tok.secret.as_str()),
        ("usage-bootstrap-authentication", "true"),
        ("usage-bootstrap-signing", "true"),
        (
            "auth-extra-groups",
            "system:bootstrappers:bosun:default-node-token",
        ),
        ("description", description),
    ];
    if let Some(e) = &expiration {
        fields.push(("expiration", e));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{}", tok.id)),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        data: Some(data(&fields)),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).context("storing the bootstrap token"),
    }
}

/// Makes sure `DATA_DIR/node-token` exists and its token is valid on the server; returns it.
pub async fn ensure_node_token(
    client: &kube::Client,
    data_dir: &Path,
    ca_pem: &str,
) -> Result<JoinToken> {
    let path = data_dir.join(TOKEN_FILE);
    let hash = ca_hash(ca_pem)?;
    let tok = match std::fs::read_to_string(&path) {
        Ok(s) => JoinToken::parse(&s).with_context(|| format!("reading {}", path.display()))?,
        Err(_) => JoinToken::generate(Some(hash.clone())),
    };
    let tok = JoinToken {
        ca_hash: Some(hash),
        ..tok
    };
    create_bootstrap_token(
        client,
        &tok,
        None,
        "the default node join token (node-token)",
    )
    .await?;
    crate::pki::write_private(&path, format!("{tok}\n").as_bytes())?;
    Ok(tok)
}

/// Publishes the CA and the server's address in `kube-public/cluster-info`, readable by
/// anyone: a joining node checks it against the pin in its token.
pub async fn publish_cluster_info(client: &kube::Client, ca_pem: &str, server: &str) -> Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts: []\nusers: []\n"
    );
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("cluster-info".into()),
            namespace: Some("kube-public".into()),
            ..Default::default()
        },
        data: Some([("kubeconfig".to_string(), kubeconfig)].into()),
        ..Default::default()
    };
    put(
        &Api::namespaced(client.clone(), "kube-public"),
        "cluster-info",
        cm,
    )
    .await
}

/// The token the API server presents to node agents, where joined nodes can read it.
pub async fn publish_kubelet_access(client: &kube::Client, token: &str) -> Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(KUBELET_ACCESS_SECRET.into()),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        data: Some(data(&[("token", token)])),
        ..Default::default()
    };
    put(
        &Api::namespaced(client.clone(), "kube-system"),
        KUBELET_ACCESS_SECRET,
        secret,
    )
    .await
}

/// Creates or replaces an object.
async fn put<K>(api: &Api<K>, name: &str, mut obj: K) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        None => {
            api.create(&PostParams::default(), &obj).await?;
        }
        Some(cur) => {
            obj.meta_mut().resource_version = cur.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &obj).await?;
        }
    }
    Ok(())
}

/// Reads the CA from a server's cluster-info without trusting the server, and keeps it only
/// if it matches `pin`.
pub async fn discover_ca(server: &str, pin: &str) -> Result<String> {
    let mut cfg = kube::Config::new(server.parse().context("bad --server URL")?);
    // Anyone may pose as the server here: what it sends is checked against the pin below.
    cfg.accept_invalid_certs = true;
    cfg.connect_timeout = Some(Duration::from_secs(5));
    cfg.read_timeout = Some(Duration::from_secs(10));
    let client = kube::Client::try_from(cfg)?;
    let cm = Api::<ConfigMap>::namespaced(client, "kube-public")
        .get("cluster-info")
        .await
        .with_context(|| format!("reading cluster-info from {server}"))?;
    let kubeconfig = cm
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .context("cluster-info has no kubeconfig")?;
    let ca_b64 = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .map(str::trim)
        .context("cluster-info names no CA")?;
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(ca_b64)
            .context("cluster-info: CA is not base64")?,
    )?;
    let got = ca_hash(&ca_pem)?;
    if got != pin {
        bail!(
            "the CA of {server} ({got}) does not match the token's CA hash ({pin}): \
             refusing to join (wrong server, or someone in between)"
        );
    }
    Ok(ca_pem)
}

/// What every server publishes for joining nodes: cluster-info, the kubelet access token,
/// a valid node-token file.
pub async fn publish_joins(
    client: &kube::Client,
    pki: &crate::pki::Pki,
    data_dir: &Path,
    url: &str,
) -> Result<()> {
    publish_cluster_info(client, &pki.ca_pem, url).await?;
    publish_kubelet_access(client, &pki.kubelet_token).await?;
    ensure_node_token(client, data_dir, &pki.ca_pem).await?;
    Ok(())
}

/// The certificate signer of nodes' CSRs, with the cluster CA.
pub fn signer(pki: &crate::pki::Pki) -> Result<std::sync::Arc<crate::csrsign::Signer>> {
    Ok(std::sync::Arc::new(crate::csrsign::Signer {
        ca_pem: pki.ca_pem.clone(),
        ca_key_pem: pki.ca_key_pem()?,
    }))
}

/// Server side of joining: publishes cluster-info and the kubelet access token, keeps the
/// node-token file valid, and starts the certificate signer.
pub async fn serve_joins(
    client: &kube::Client,
    pki: &crate::pki::Pki,
    data_dir: &Path,
    url: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    tasks: &mut crate::up::Tasks,
) -> Result<()> {
    publish_joins(client, pki, data_dir, url).await?;
    let signer = signer(pki)?;
    let (c, sd) = (client.clone(), shutdown.clone());
    tasks.spawn(async move { ("certificate signer", signer.run(c, sd).await) });
    Ok(())
}

#[derive(clap::Args, Clone)]
pub struct TokenOpts {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub conn: crate::ClientOpts,
}

#[derive(clap::Subcommand, Clone)]
pub enum TokenCommand {
    /// Create a join token and print it with the command that joins a machine
    Create {
        /// How long the token is valid, e.g. 30m, 24h, 7d; 0 = forever
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// What the token is for
        #[arg(long, default_value = "created by bosun token create")]
        description: String,
    },
}

/// `30s`, `15m`, `24h`, `7d`; `0` means no expiry (Duration::ZERO).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

pub async fn token(opts: TokenOpts) -> Result<std::process::ExitCode> {
    let conn = crate::client::connect(&opts.conn).await?;
    let TokenCommand::Create { ttl, description } = opts.command;
    let cm = Api::<ConfigMap>::namespaced(conn.client.clone(), "kube-public")
        .get("cluster-info")
        .await
        .context("reading kube-public/cluster-info (is this a bosun server?)")?;
    let kubeconfig = cm
        .data
        .and_then(|d| d.get("kubeconfig").cloned())
        .unwrap_or_default();
    let field = |name: &str| {
        kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let ca = base64::engine::general_purpose::STANDARD
        .decode(field("certificate-authority-data:").unwrap_or_default())
        .context("cluster-info: CA is not base64")?;
    let hash = ca_hash(&String::from_utf8_lossy(&ca))?;
    let tok = JoinToken::generate(Some(hash));
    create_bootstrap_token(
        &conn.client,
        &tok,
        (!ttl.is_zero()).then_some(ttl),
        &description,
    )
    .await?;
    println!("{tok}");
    eprintln!(
        "Join a machine with:\n  bosun agent --server {} --token {tok} --node-ip ITS_IP",
        field("server:").unwrap_or_else(|| "https://SERVER:6443".into())
    );
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = JoinToken::generate(Some(format!("sha256:{}", "ab".repeat(32))));
        let s = t.to_string();
        assert!(s.starts_with("K10abab"), "{s}");
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        let bare = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(bare.ca_hash, None);
        assert_eq!(bare.bearer(), "abcdef.0123456789abcdef");
        assert!(JoinToken::parse("K10zz::abcdef.0123456789abcdef").is_err());
        assert!(JoinToken::parse("abcdef.short").is_err());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("0"), Ok(Duration::ZERO));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn ca_hash_is_of_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::load_or_create(dir.path()).unwrap();
        let h = ca_hash(&pki.ca_pem).unwrap();
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
        // Matches `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum`.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -in {} -noout -pubkey | openssl pkey -pubin -outform der | sha256sum",
                dir.path().join("pki/ca.crt").display()
            ))
            .output();
        if let Ok(o) = out
            && o.status.success()
        {
            let want = String::from_utf8_lossy(&o.stdout);
            assert_eq!(&h[7..], want.split_whitespace().next().unwrap());
        }
    }
}
