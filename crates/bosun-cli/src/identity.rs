//! One cluster identity for every server on an etcd store, as k3s keeps its "bootstrap data".
//!
//! The first server on an empty etcd makes the identity as a single server does (the CA and
//! its key, the admin and kubelet tokens, whatever key files `DATA_DIR/pki` holds, and the
//! key that encrypts Secrets at rest), then seals a copy into the store under
//! [`IDENTITY_KEY`] with AES-256-GCM, keyed from a random secret written to
//! `DATA_DIR/server-token` (`K10<CA hash>::server:<secret>`). Another server starts with
//! `--join-token "$(cat server-token)"`: it reads the sealed copy from etcd, checks the CA
//! against the hash in the token, opens it with the secret and writes the files into its own
//! data dir. Whoever reads etcd without the token sees only ciphertext, so the key that
//! protects Secrets never lies in the store beside them in the clear.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// The store key of the sealed identity (outside `/registry/`, which holds API objects).
pub const IDENTITY_KEY: &str = "/bosun/cluster-identity";
/// The file holding the token other servers join with.
pub const SERVER_TOKEN_FILE: &str = "server-token";
const FORMAT: u32 = 1;
const INFO: &[u8] = b"bosun cluster identity v1";

/// What is stored: the CA hash in the clear (to refuse a token of another cluster with a
/// clear message), the files sealed.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sealed {
    format: u32,
    ca_hash: String,
    nonce: String,
    sealed: String,
}

/// A server join token: the CA pin and the secret that opens the sealed identity.
#[derive(Debug, PartialEq)]
pub struct ServerToken {
    pub ca_hash: String,
    secret: String,
}

impl ServerToken {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "--join-token: expected K10<CA hash>::server:<secret>, the contents of a \
                 server's DATA_DIR/{SERVER_TOKEN_FILE}"
            )
        };
        let (hex, rest) = s
            .trim()
            .strip_prefix("K10")
            .and_then(|r| r.split_once("::"))
            .ok_or_else(bad)?;
        let secret = rest.strip_prefix("server:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || secret.len() < 32 {
            return Err(bad());
        }
        Ok(ServerToken {
            ca_hash: format!("sha256:{}", hex.to_ascii_lowercase()),
            secret: secret.to_string(),
        })
    }

    fn generate(ca_hash: &str) -> Self {
        let bytes: [u8; 32] = rand::random();
        ServerToken {
            ca_hash: ca_hash.to_string(),
            secret: URL_SAFE_NO_PAD.encode(bytes),
        }
    }

    /// The AES key: HKDF-SHA256 of the secret, salted with the CA hash.
    fn key(&self) -> Result<LessSafeKey> {
        struct Len;
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, self.ca_hash.as_bytes());
        let prk = salt.extract(self.secret.as_bytes());
        let okm = prk
            .expand(&[INFO], Len)
            .map_err(|_| anyhow::anyhow!("deriving the identity key"))?;
        let mut key = [0u8; 32];
        okm.fill(&mut key)
            .map_err(|_| anyhow::anyhow!("deriving the identity key"))?;
        let unbound = UnboundKey::new(&AES_256_GCM, &key)
            .map_err(|_| anyhow::anyhow!("building the identity key"))?;
        Ok(LessSafeKey::new(unbound))
    }
}

impl std::fmt::Display for ServerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = self.ca_hash.trim_start_matches("sha256:");
        write!(f, "K10{hex}::server:{}", self.secret)
    }
}

fn seal(token: &ServerToken, files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>> {
    let plain: BTreeMap<&String, String> =
        files.iter().map(|(k, v)| (k, STANDARD.encode(v))).collect();
    let mut buf = serde_json::to_vec(&plain)?;
    let nonce_bytes: [u8; 12] = rand::random();
    token
        .key()?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(token.ca_hash.as_bytes()),
            &mut buf,
        )
        .map_err(|_| anyhow::anyhow!("sealing the cluster identity"))?;
    Ok(serde_json::to_vec(&Sealed {
        format: FORMAT,
        ca_hash: token.ca_hash.clone(),
        nonce: STANDARD.encode(nonce_bytes),
        sealed: STANDARD.encode(&buf),
    })?)
}

fn open(token: &ServerToken, stored: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let s: Sealed =
        serde_json::from_slice(stored).context("the stored cluster identity is damaged")?;
    if s.format != FORMAT {
        bail!(
            "the stored cluster identity has format {} (this bosun reads {FORMAT})",
            s.format
        );
    }
    if s.ca_hash != token.ca_hash {
        bail!(
            "--join-token names the CA {} but this etcd holds the cluster of CA {}: \
             a token of another cluster",
            token.ca_hash,
            s.ca_hash
        );
    }
    let nonce: [u8; 12] = STANDARD
        .decode(&s.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .context("the stored cluster identity is damaged (nonce)")?;
    let mut buf = STANDARD
        .decode(&s.sealed)
        .context("the stored cluster identity is damaged")?;
    let plain = token
        .key()?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(s.ca_hash.as_bytes()),
            &mut buf,
        )
        .map_err(|_| {
            anyhow::anyhow!("--join-token does not open the cluster identity: the token is wrong")
        })?;
    let files: BTreeMap<String, String> = serde_json::from_slice(plain)?;
    files
        .into_iter()
        .map(|(k, v)| Ok((k, STANDARD.decode(v)?)))
        .collect()
}

/// Whether a file of the data dir belongs to the identity every server shares: all of
/// `pki/` (the CA, tokens and any signing keys kept there), the encryption configuration,
/// and key files at the top (service-account keys, wherever they are kept).
fn shared(rel: &str) -> bool {
    if rel.ends_with(".tmp") || rel.ends_with(".partial") {
        return false;
    }
    if let Some(f) = rel.strip_prefix("pki/") {
        return !f.contains('/');
    }
    !rel.contains('/')
        && (rel == bosun_apiserver::encryption::CONFIG_FILE
            || rel.ends_with(".key")
            || rel.ends_with(".pub"))
}

fn collect(data_dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (dir, prefix) in [(data_dir.to_path_buf(), ""), (data_dir.join("pki"), "pki/")] {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            if !e.file_type()?.is_file() {
                continue;
            }
            let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
            if shared(&rel) {
                out.insert(rel, std::fs::read(e.path())?);
            }
        }
    }
    Ok(out)
}

fn local_ca_hash(data_dir: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join("pki/ca.crt")) {
        Ok(pem) => Ok(Some(crate::join::ca_hash(&pem)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading pki/ca.crt"),
    }
}

/// Before a server on etcd loads its credentials: joins the cluster the store holds, or
/// founds it. Returns the server token (written to DATA_DIR/server-token).
pub async fn ensure(
    store: &dyn bosun_store::Store,
    data_dir: &Path,
    join_token: Option<&str>,
) -> Result<ServerToken> {
    let token_path: PathBuf = data_dir.join(SERVER_TOKEN_FILE);
    let given = join_token.map(ServerToken::parse).transpose()?;
    let stored = store
        .get(IDENTITY_KEY)
        .await
        .context("reading the cluster identity from the store")?;
    let local = local_ca_hash(data_dir)?;
    match stored {
        Some(kv) => {
            let s: Sealed = serde_json::from_slice(&kv.value)
                .context("the stored cluster identity is damaged")?;
            if let Some(local) = &local {
                if *local != s.ca_hash {
                    bail!(
                        "{} holds the credentials of another cluster (CA {local}) than this \
                         etcd (CA {}): start with an empty data dir and --join-token",
                        data_dir.display(),
                        s.ca_hash
                    );
                }
                // A restart: the files are here already.
                let tok = match (&given, std::fs::read_to_string(&token_path)) {
                    (Some(t), _) => ServerToken::parse(&t.to_string())?,
                    (None, Ok(t)) => ServerToken::parse(&t)?,
                    (None, Err(_)) => {
                        bail!("{} is missing: pass --join-token", token_path.display())
                    }
                };
                open(&tok, &kv.value)?;
                crate::pki::write_private(&token_path, format!("{tok}\n").as_bytes())?;
                return Ok(tok);
            }
            let Some(tok) = given else {
                bail!(
                    "this etcd already holds a bosun cluster (CA {}): join it with \
                     --join-token \"$(cat DATA_DIR/{SERVER_TOKEN_FILE})\" from one of its servers",
                    s.ca_hash
                );
            };
            let files = open(&tok, &kv.value)?;
            std::fs::create_dir_all(data_dir.join("pki"))?;
            crate::pki::chmod(&data_dir.join("pki"), 0o700)?;
            for (rel, bytes) in &files {
                if !shared(rel) {
                    bail!("the stored cluster identity names an unexpected file {rel:?}");
                }
                crate::pki::write_private(&data_dir.join(rel), bytes)?;
            }
            crate::pki::write_private(&token_path, format!("{tok}\n").as_bytes())?;
            println!(
                "bosun: joined the cluster of CA {} ({} credential files from the store)",
                tok.ca_hash,
                files.len()
            );
            Ok(tok)
        }
        None => {
            if given.is_some() && local.is_none() {
                bail!(
                    "--join-token: this etcd holds no bosun cluster to join (is --store the \
                     same as the first server's?)"
                );
            }
            let pki = crate::pki::Pki::load_or_create(data_dir)?;
            let enc = data_dir.join(bosun_apiserver::encryption::CONFIG_FILE);
            if !enc.exists() {
                bosun_apiserver::encryption::EncryptionConfiguration::generate()?.save(&enc)?;
            }
            let hash = crate::join::ca_hash(&pki.ca_pem)?;
            let tok = match std::fs::read_to_string(&token_path) {
                Ok(t) => ServerToken::parse(&t)?,
                Err(_) => ServerToken::generate(&hash),
            };
            if tok.ca_hash != hash {
                bail!("{} belongs to another CA", token_path.display());
            }
            crate::pki::write_private(&token_path, format!("{tok}\n").as_bytes())?;
            let sealed = seal(&tok, &collect(data_dir)?)?;
            match store.create(IDENTITY_KEY, sealed.into(), None).await {
                Ok(_) => Ok(tok),
                Err(bosun_store::StoreError::AlreadyExists(_)) => bail!(
                    "another server founded a cluster on this etcd at the same moment: stop \
                     this one, empty {} and start it with --join-token from that server",
                    data_dir.display()
                ),
                Err(e) => Err(e).context("storing the cluster identity"),
            }
        }
    }
}

/// How often a server on etcd compares its encryption configuration with the sealed copy.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the encryption configuration one for every server on the etcd store: when this
/// server's file changed (`bosun secrets rotate-key` ran here), the new one is sealed into
/// the store; when another server sealed a new one, it is written here and `reload` loads
/// it. The file is compared with the copy agreed on last, so each side sees which one moved.
/// Only the encryption configuration moves this way: the rest of the identity (the CA and
/// tokens) never changes after the first server made it.
pub async fn follow(
    store: std::sync::Arc<dyn bosun_store::Store>,
    data_dir: PathBuf,
    token: ServerToken,
    reload: impl Fn() -> Result<()>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let rel = bosun_apiserver::encryption::CONFIG_FILE;
    let path = data_dir.join(rel);
    let mut agreed: Option<Vec<u8>> = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        if let Err(e) = follow_once(store.as_ref(), &path, rel, &token, &reload, &mut agreed).await
        {
            tracing::warn!(error = %format!("{e:#}"), "keeping the encryption configuration in step with the other servers");
        }
    }
}

async fn follow_once(
    store: &dyn bosun_store::Store,
    path: &Path,
    rel: &str,
    token: &ServerToken,
    reload: &impl Fn() -> Result<()>,
    agreed: &mut Option<Vec<u8>>,
) -> Result<()> {
    let Some(kv) = store.get(IDENTITY_KEY).await? else {
        return Ok(());
    };
    let mut files = open(token, &kv.value)?;
    let stored = files.get(rel).cloned();
    let local = std::fs::read(path).ok();
    if local == stored {
        *agreed = local;
        return Ok(());
    }
    if stored != *agreed {
        // Another server published a new configuration (if this one changed too, the
        // published one wins: it is what the others already use).
        let Some(bytes) = stored else { return Ok(()) };
        crate::pki::write_private(path, &bytes)?;
        reload()?;
        tracing::info!("loaded the encryption configuration another server published");
        *agreed = Some(bytes);
        return Ok(());
    }
    // Changed here: publish it, conditionally on the copy read above.
    let Some(bytes) = local else { return Ok(()) };
    files.insert(rel.to_string(), bytes.clone());
    let sealed = seal(token, &files)?;
    match store
        .update(IDENTITY_KEY, sealed.into(), Some(kv.mod_revision), None)
        .await
    {
        Ok(_) => {
            tracing::info!("published this server's encryption configuration to the other servers");
            *agreed = Some(bytes);
            Ok(())
        }
        // Someone else wrote meanwhile: the next round sees whose change it was.
        Err(bosun_store::StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e).context("storing the cluster identity"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ServerToken {
        ServerToken::generate(&format!("sha256:{}", "ab".repeat(32)))
    }

    #[test]
    fn token_round_trip() {
        let t = token();
        let s = t.to_string();
        assert!(s.starts_with("K10abab") && s.contains("::server:"), "{s}");
        assert_eq!(ServerToken::parse(&s).unwrap(), t);
        assert!(ServerToken::parse("K10ab::server:x").is_err());
        assert!(ServerToken::parse(&s.replace("server:", "node:")).is_err());
    }

    #[test]
    fn sealed_files_open_only_with_the_token() {
        let t = token();
        let files = BTreeMap::from([("pki/ca.key".to_string(), b"secret key".to_vec())]);
        let sealed = seal(&t, &files).unwrap();
        assert!(
            !String::from_utf8_lossy(&sealed).contains("secret key"),
            "stored in the clear"
        );
        assert_eq!(open(&t, &sealed).unwrap(), files);
        let wrong = ServerToken {
            secret: token().secret,
            ..ServerToken::parse(&t.to_string()).unwrap()
        };
        let e = open(&wrong, &sealed).unwrap_err().to_string();
        assert!(e.contains("token is wrong"), "{e}");
        let other = ServerToken::generate(&format!("sha256:{}", "cd".repeat(32)));
        let e = open(&other, &sealed).unwrap_err().to_string();
        assert!(e.contains("another cluster"), "{e}");
    }

    #[test]
    fn shares_keys_not_state() {
        assert!(shared("pki/ca.key"));
        assert!(shared("pki/token"));
        assert!(shared("encryption-config.yaml"));
        assert!(shared("sa.key"));
        assert!(!shared("store.redb"));
        assert!(!shared("kubeconfig"));
        assert!(!shared("pki/ca.tmp"));
        assert!(!shared("agent/pods/x.key"));
    }
}
