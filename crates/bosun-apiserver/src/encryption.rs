//! Encryption at rest: a transformer between the API server and any [`Store`] backend,
//! configured as Kubernetes' `EncryptionConfiguration` (apiserver.config.k8s.io/v1).
//!
//! For each listed resource the first provider encrypts every write and all providers
//! decrypt. `aesgcm` values are stored as `k8s:enc:aesgcm:v1:KEYNAME:`, a 12-byte nonce,
//! then the AES-GCM ciphertext with the store key as associated data (so a value cannot
//! be moved to another key), as Kubernetes stores them. `identity` stores plaintext; with it
//! in the list, objects written before encryption was turned on still read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bosun_api::Registry;
use bosun_store::{
    KeyValue, LeaseId, ListOptions, ListResult, Result, Revision, Store, StoreError, WatchItem,
    WatchStream,
};
use bytes::Bytes;
use futures::StreamExt;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The configuration file's name in the data dir.
pub const CONFIG_FILE: &str = "encryption-config.yaml";

const API_VERSION: &str = "apiserver.config.k8s.io/v1";
const KIND: &str = "EncryptionConfiguration";
const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
const ENC_PREFIX: &str = "k8s:enc:";

// ---------------------------------------------------------------- the file

/// The `EncryptionConfiguration` file, as written and read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionConfiguration {
    pub api_version: String,
    pub kind: String,
    pub resources: Vec<ResourceConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    pub resources: Vec<String>,
    pub providers: Vec<ProviderConfig>,
}

/// One provider; exactly one field is set.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aesgcm: Option<KeysConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<BTreeMap<String, serde_json::Value>>,
    /// Providers bosun does not implement (aescbc, secretbox, kms): refused by name.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    pub keys: Vec<KeyConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    /// Base64 of a 16- or 32-byte AES key.
    pub secret: String,
}

fn fresh_secret() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(BASE64.encode(key))
}

impl EncryptionConfiguration {
    /// Secrets encrypted with one new AES-256-GCM key; plaintext still readable.
    pub fn generate() -> anyhow::Result<Self> {
        Ok(EncryptionConfiguration {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            resources: vec![ResourceConfig {
                resources: vec!["secrets".into()],
                providers: vec![
                    ProviderConfig {
                        aesgcm: Some(KeysConfig {
                            keys: vec![KeyConfig {
                                name: "key1".into(),
                                secret: fresh_secret()?,
                            }],
                        }),
                        ..Default::default()
                    },
                    ProviderConfig {
                        identity: Some(BTreeMap::new()),
                        ..Default::default()
                    },
                ],
            }],
        })
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let c: Self = serde_saphyr::from_str(text).context("parsing EncryptionConfiguration")?;
        Compiled::build(&c)?;
        Ok(c)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Writes the file readable by its owner only, replacing it atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_saphyr::to_string(self).context("serializing the configuration")?;
        let tmp = path.with_extension("yaml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The aesgcm provider that encrypts Secrets (the first provider of their entry).
    fn secrets_aesgcm(&mut self) -> anyhow::Result<&mut KeysConfig> {
        let entry = self
            .resources
            .iter_mut()
            .find(|r| r.resources.iter().any(|x| x == "secrets"))
            .context("no resources entry lists secrets")?;
        entry
            .providers
            .first_mut()
            .and_then(|p| p.aesgcm.as_mut())
            .context("the first provider for secrets is not aesgcm")
    }

    /// Adds a new key first in the list (it encrypts from now on); returns its name.
    pub fn add_key(&mut self) -> anyhow::Result<String> {
        let keys = self.secrets_aesgcm()?;
        let mut n = keys.keys.len() + 1;
        while keys.keys.iter().any(|k| k.name == format!("key{n}")) {
            n += 1;
        }
        let name = format!("key{n}");
        keys.keys.insert(
            0,
            KeyConfig {
                name: name.clone(),
                secret: fresh_secret()?,
            },
        );
        Ok(name)
    }

    /// Adds a new key last in the list: it decrypts but does not encrypt yet (the first
    /// step of a rotation on several servers, so every server can read what any writes
    /// once it encrypts). Returns its name.
    pub fn add_key_last(&mut self) -> anyhow::Result<String> {
        let name = self.add_key()?;
        let keys = self.secrets_aesgcm()?;
        let k = keys.keys.remove(0);
        keys.keys.push(k);
        Ok(name)
    }

    /// Moves the key `name` first: it encrypts from now on.
    pub fn promote(&mut self, name: &str) -> anyhow::Result<()> {
        let keys = self.secrets_aesgcm()?;
        let i = keys
            .keys
            .iter()
            .position(|k| k.name == name)
            .with_context(|| format!("no key {name} in the configuration"))?;
        let k = keys.keys.remove(i);
        keys.keys.insert(0, k);
        Ok(())
    }

    /// Keeps only the first (encrypting) key; returns the names dropped.
    pub fn drop_old_keys(&mut self) -> anyhow::Result<Vec<String>> {
        let keys = self.secrets_aesgcm()?;
        Ok(keys.keys.drain(1..).map(|k| k.name).collect())
    }

    #[cfg(test)]
    fn keys_mut_for_test(&mut self) -> &mut KeysConfig {
        self.secrets_aesgcm().expect("aesgcm first")
    }

    /// The name of the key that encrypts Secrets.
    pub fn write_key(&mut self) -> anyhow::Result<String> {
        let keys = self.secrets_aesgcm()?;
        keys.keys
            .first()
            .map(|k| k.name.clone())
            .context("the aesgcm provider has no keys")
    }
}

// ---------------------------------------------------------------- compiled

enum Provider {
    AesGcm(Vec<(String, LessSafeKey)>),
    Identity,
}

struct Rule {
    /// Store key prefixes of the resources this rule covers.
    prefixes: Vec<String>,
    providers: Vec<Provider>,
    /// Which provider and key each entry names, for status answers.
    names: Vec<String>,
}

/// A configuration ready to transform values.
struct Compiled {
    rules: Vec<Rule>,
}

fn key_prefixes(resource: &str, field: &str) -> anyhow::Result<Vec<String>> {
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    let prefixes: Vec<String> = Registry::builtin()
        .kinds
        .iter()
        .filter(|k| k.plural == plural && k.group == group)
        .map(|k| k.key_prefix())
        .collect();
    if prefixes.is_empty() {
        bail!("{field}: unknown resource {resource:?}");
    }
    Ok(prefixes)
}

impl Compiled {
    fn build(c: &EncryptionConfiguration) -> anyhow::Result<Compiled> {
        if c.api_version != API_VERSION || c.kind != KIND {
            bail!(
                "apiVersion/kind must be {API_VERSION}/{KIND}, not {}/{}",
                c.api_version,
                c.kind
            );
        }
        let mut rules = Vec::new();
        for (i, r) in c.resources.iter().enumerate() {
            let mut prefixes = Vec::new();
            for (j, res) in r.resources.iter().enumerate() {
                prefixes.extend(key_prefixes(
                    res,
                    &format!("resources[{i}].resources[{j}]"),
                )?);
            }
            if r.providers.is_empty() {
                bail!("resources[{i}].providers: Required value");
            }
            let mut providers = Vec::new();
            let mut names = Vec::new();
            for (j, p) in r.providers.iter().enumerate() {
                let field = format!("resources[{i}].providers[{j}]");
                if let Some(other) = p.other.keys().next() {
                    bail!("{field}: unsupported provider {other:?} (supported: aesgcm, identity)");
                }
                match (&p.aesgcm, &p.identity) {
                    (Some(a), None) => {
                        if a.keys.is_empty() {
                            bail!("{field}.aesgcm.keys: Required value");
                        }
                        let mut keys = Vec::new();
                        for (k, key) in a.keys.iter().enumerate() {
                            let kf = format!("{field}.aesgcm.keys[{k}]");
                            if key.name.is_empty() || key.name.contains(':') {
                                bail!("{kf}.name: must be non-empty and without ':'");
                            }
                            if keys.iter().any(|(n, _)| n == &key.name) {
                                bail!("{kf}.name: duplicate key name {:?}", key.name);
                            }
                            let raw = BASE64
                                .decode(key.secret.trim())
                                .with_context(|| format!("{kf}.secret: not base64"))?;
                            let alg = match raw.len() {
                                16 => &AES_128_GCM,
                                32 => &AES_256_GCM,
                                n => bail!("{kf}.secret: key is {n} bytes; must be 16 or 32"),
                            };
                            let unbound = UnboundKey::new(alg, &raw)
                                .map_err(|_| anyhow::anyhow!("{kf}.secret: invalid key"))?;
                            names.push(format!("aesgcm:{}", key.name));
                            keys.push((key.name.clone(), LessSafeKey::new(unbound)));
                        }
                        providers.push(Provider::AesGcm(keys));
                    }
                    (None, Some(_)) => {
                        names.push("identity".into());
                        providers.push(Provider::Identity);
                    }
                    _ => bail!("{field}: exactly one of aesgcm or identity must be set"),
                }
            }
            rules.push(Rule {
                prefixes,
                providers,
                names,
            });
        }
        Ok(Compiled { rules })
    }

    fn rule(&self, key: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.prefixes.iter().any(|p| key.starts_with(p.as_str())))
    }

    fn encrypt(&self, key: &str, value: Bytes) -> Result<Bytes> {
        let Some(rule) = self.rule(key) else {
            return Ok(value);
        };
        match rule.providers.first() {
            Some(Provider::AesGcm(keys)) => {
                let (name, k) = keys
                    .first()
                    .ok_or_else(|| StoreError::Backend("aesgcm provider without keys".into()))?;
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new().fill(&mut nonce).map_err(|_| {
                    StoreError::Backend("the system random generator failed".into())
                })?;
                let mut buf = value.to_vec();
                k.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(key.as_bytes()),
                    &mut buf,
                )
                .map_err(|_| StoreError::Backend(format!("encrypting {key} failed")))?;
                let mut out =
                    Vec::with_capacity(AESGCM_PREFIX.len() + name.len() + 1 + 12 + buf.len());
                out.extend_from_slice(AESGCM_PREFIX.as_bytes());
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&buf);
                Ok(Bytes::from(out))
            }
            _ => Ok(value),
        }
    }

    fn decrypt(&self, key: &str, value: Bytes) -> Result<Bytes> {
        let fail = |msg: String| StoreError::Backend(format!("reading {key}: {msg}"));
        if !value.starts_with(ENC_PREFIX.as_bytes()) {
            // Plaintext: written before encryption, or by an identity provider.
            return match self.rule(key) {
                Some(r) if !r.providers.iter().any(|p| matches!(p, Provider::Identity)) => Err(
                    fail("stored unencrypted and no identity provider is configured".into()),
                ),
                _ => Ok(value),
            };
        }
        let Some(rest) = value.strip_prefix(AESGCM_PREFIX.as_bytes()) else {
            return Err(fail("encrypted by a provider bosun does not know".into()));
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| fail("malformed encrypted value".into()))?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let body = &rest[colon + 1..];
        let k = self
            .rule(key)
            .into_iter()
            .flat_map(|r| r.providers.iter())
            .filter_map(|p| match p {
                Provider::AesGcm(keys) => Some(keys),
                Provider::Identity => None,
            })
            .flatten()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| k)
            .ok_or_else(|| {
                fail(format!(
                    "encrypted with key {name:?}, which is not configured"
                ))
            })?;
        if body.len() < NONCE_LEN {
            return Err(fail("malformed encrypted value".into()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&body[..NONCE_LEN]);
        let mut buf = body[NONCE_LEN..].to_vec();
        let plain = k
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut buf,
            )
            .map_err(|_| fail(format!("decryption with key {name:?} failed")))?;
        Ok(Bytes::copy_from_slice(plain))
    }

    /// Whether a stored value is not in the form a write would give it now.
    fn stale(&self, key: &str, raw: &[u8]) -> bool {
        let Some(rule) = self.rule(key) else {
            return false;
        };
        match rule.providers.first() {
            Some(Provider::AesGcm(keys)) => keys.first().is_none_or(|(name, _)| {
                !raw.starts_with(format!("{AESGCM_PREFIX}{name}:").as_bytes())
            }),
            _ => raw.starts_with(ENC_PREFIX.as_bytes()),
        }
    }
}

// ---------------------------------------------------------------- the store

/// A [`Store`] that encrypts and decrypts the values of the configured resources on
/// their way to and from the backend below it.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    path: Option<PathBuf>,
    /// Shared with watch streams, so keys loaded by a reload decrypt their events too.
    compiled: Arc<RwLock<Arc<Compiled>>>,
}

fn current(lock: &RwLock<Arc<Compiled>>) -> Arc<Compiled> {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

impl EncryptedStore {
    /// Reads the configuration at `path` (written with a fresh key when missing);
    /// without a path nothing is encrypted.
    pub fn open(inner: Arc<dyn Store>, path: Option<PathBuf>) -> anyhow::Result<Self> {
        let compiled = match &path {
            None => Compiled { rules: Vec::new() },
            Some(p) => {
                if !p.exists() {
                    EncryptionConfiguration::generate()?.save(p)?;
                }
                Compiled::build(&EncryptionConfiguration::load(p)?)?
            }
        };
        Ok(EncryptedStore {
            inner,
            path,
            compiled: Arc::new(RwLock::new(Arc::new(compiled))),
        })
    }

    /// A store that encrypts every key under `prefix` with the providers of `config`, for
    /// running backend-independent checks through the encrypting path.
    #[cfg(test)]
    pub(crate) fn encrypting_prefix(
        inner: Arc<dyn Store>,
        config: &EncryptionConfiguration,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let mut compiled = Compiled::build(config)?;
        for r in &mut compiled.rules {
            r.prefixes = vec![prefix.to_string()];
        }
        Ok(EncryptedStore {
            inner,
            path: None,
            compiled: Arc::new(RwLock::new(Arc::new(compiled))),
        })
    }

    fn current(&self) -> Arc<Compiled> {
        current(&self.compiled)
    }

    /// Re-reads the configuration file; a bad file leaves the current keys in place.
    pub fn reload(&self) -> anyhow::Result<()> {
        let Some(p) = &self.path else {
            bail!("encryption at rest is not configured");
        };
        let compiled = Arc::new(Compiled::build(&EncryptionConfiguration::load(p)?)?);
        match self.compiled.write() {
            Ok(mut g) => *g = compiled,
            Err(p) => *p.into_inner() = compiled,
        }
        Ok(())
    }

    /// Per resource entry, its providers and keys in order (the first one writes).
    pub fn status(&self) -> serde_json::Value {
        let c = self.current();
        serde_json::json!({
            "configured": self.path.is_some(),
            "resources": c.rules.iter().map(|r| serde_json::json!({
                "keyPrefixes": r.prefixes,
                "providers": r.names,
            })).collect::<Vec<_>>(),
        })
    }

    /// Whether the stored value of `key` was written with another provider or key than
    /// the one that writes now (a write of the same object must then still happen).
    pub async fn stale(&self, key: &str) -> Result<bool> {
        let c = self.current();
        if c.rule(key).is_none() {
            return Ok(false);
        }
        Ok(self
            .inner
            .get(key)
            .await?
            .is_some_and(|kv| c.stale(key, &kv.value)))
    }

    fn open_kv(c: &Compiled, mut kv: KeyValue) -> Result<KeyValue> {
        kv.value = c.decrypt(&kv.key, kv.value)?;
        Ok(kv)
    }
}

#[async_trait]
impl Store for EncryptedStore {
    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let kv = self.inner.get(key).await?;
        let c = self.current();
        kv.map(|kv| Self::open_kv(&c, kv)).transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let mut r = self.inner.list(prefix, opts).await?;
        let c = self.current();
        r.kvs = r
            .kvs
            .into_iter()
            .map(|kv| Self::open_kv(&c, kv))
            .collect::<Result<_>>()?;
        Ok(r)
    }

    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<KeyValue> {
        let stored = self.current().encrypt(key, value.clone())?;
        let mut kv = self.inner.create(key, stored, lease).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue> {
        let stored = self.current().encrypt(key, value.clone())?;
        let mut kv = self.inner.update(key, stored, expected, lease).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let kv = self.inner.delete(key, expected).await?;
        Self::open_kv(&self.current(), kv)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let stream = self.inner.watch(prefix, after).await?;
        // Without a file nothing can be configured later: events pass through untouched.
        if self.path.is_none() && self.current().rules.is_empty() {
            return Ok(stream);
        }
        let lock = self.compiled.clone();
        Ok(Box::pin(stream.map(move |item| match item {
            Ok(WatchItem::Event(mut ev)) => {
                let c = current(&lock);
                let rev = ev.kv.mod_revision;
                ev.kv = match Self::open_kv(&c, ev.kv) {
                    Ok(kv) => kv,
                    // History written with a key since dropped cannot be replayed: as
                    // for compacted history, the client lists again (410) and gets the
                    // current, re-encrypted values.
                    Err(e) => {
                        tracing::warn!(error = %e, "watch replay cannot be decrypted");
                        return Err(StoreError::Compacted {
                            requested: rev,
                            compacted: rev,
                        });
                    }
                };
                // The previous value only tells ADDED from MODIFIED; unreadable, it is left out.
                ev.prev = ev.prev.and_then(|p| Self::open_kv(&c, p).ok());
                Ok(WatchItem::Event(ev))
            }
            other => other,
        })))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.inner.compacted_revision().await
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId> {
        self.inner.grant_lease(ttl_seconds).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.revoke_lease(lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_store::{RedbOptions, RedbStore};

    const KEY: &str = "/registry/core/secrets/default/s";

    async fn store(dir: &Path) -> (Arc<dyn Store>, EncryptedStore, PathBuf) {
        let raw: Arc<dyn Store> =
            RedbStore::open(&dir.join("store.redb"), RedbOptions::default()).unwrap();
        let path = dir.join(CONFIG_FILE);
        let enc = EncryptedStore::open(raw.clone(), Some(path.clone())).unwrap();
        (raw, enc, path)
    }

    #[tokio::test]
    async fn encrypts_secrets_only_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, enc, path) = store(dir.path()).await;
        let value = Bytes::from_static(b"{\"data\":{\"x\":\"c2VjcmV0\"}}");
        enc.create(KEY, value.clone(), None).await.unwrap();
        enc.create("/registry/core/configmaps/default/c", value.clone(), None)
            .await
            .unwrap();
        let stored = raw.get(KEY).await.unwrap().unwrap().value;
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!stored.windows(8).any(|w| w == b"c2VjcmV0"));
        assert_eq!(enc.get(KEY).await.unwrap().unwrap().value, value);
        let cm = raw
            .get("/registry/core/configmaps/default/c")
            .await
            .unwrap();
        assert_eq!(cm.unwrap().value, value);
        assert!(!enc.stale(KEY).await.unwrap());

        // A new first key: old values still read, and are stale until written again.
        let mut cfg = EncryptionConfiguration::load(&path).unwrap();
        assert_eq!(cfg.add_key().unwrap(), "key2");
        cfg.save(&path).unwrap();
        enc.reload().unwrap();
        assert!(enc.stale(KEY).await.unwrap());
        assert_eq!(enc.get(KEY).await.unwrap().unwrap().value, value);
        enc.update(KEY, value.clone(), None, None).await.unwrap();
        assert!(!enc.stale(KEY).await.unwrap());
        let stored = raw.get(KEY).await.unwrap().unwrap().value;
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key2:"));

        // Without the key a value was written with, reading fails loudly.
        let mut cfg = EncryptionConfiguration::load(&path).unwrap();
        cfg.keys_mut_for_test().keys.retain(|k| k.name == "key1");
        cfg.save(&path).unwrap();
        enc.reload().unwrap();
        let err = enc.get(KEY).await.unwrap_err().to_string();
        assert!(err.contains("key2"), "{err}");
        // A watch replaying that history answers as for compacted history.
        // (The first write, with key1, still reads; the one with key2 does not.)
        let mut w = enc.watch("/registry/core/secrets/", 0).await.unwrap();
        let first = w.next().await.unwrap().unwrap();
        assert!(matches!(first, WatchItem::Event(ev) if ev.kv.value == value));
        let second = w.next().await.unwrap();
        assert!(
            matches!(second, Err(StoreError::Compacted { .. })),
            "{second:?}"
        );
    }

    #[tokio::test]
    async fn value_is_bound_to_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, enc, _) = store(dir.path()).await;
        enc.create(KEY, Bytes::from_static(b"{}"), None)
            .await
            .unwrap();
        // A ciphertext copied under another name does not decrypt there.
        let stored = raw.get(KEY).await.unwrap().unwrap().value;
        let other = "/registry/core/secrets/default/other";
        raw.create(other, stored, None).await.unwrap();
        assert!(enc.get(other).await.is_err());
        // Plaintext (written before encryption) reads while identity is listed.
        let plain = "/registry/core/secrets/default/plain";
        raw.create(plain, Bytes::from_static(b"{\"a\":1}"), None)
            .await
            .unwrap();
        assert_eq!(
            enc.get(plain).await.unwrap().unwrap().value,
            Bytes::from_static(b"{\"a\":1}")
        );
        assert!(enc.stale(plain).await.unwrap());
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let good = serde_saphyr::to_string(&EncryptionConfiguration::generate().unwrap()).unwrap();
        let err = |text: &str| format!("{:#}", EncryptionConfiguration::parse(text).unwrap_err());
        assert!(err(&good.replace("aesgcm", "aescbc")).contains("aescbc"));
        assert!(err(&good.replace("secrets", "sekrets")).contains("resources[0].resources[0]"));
        let short = good.replace(
            good.split("secret: ")
                .nth(1)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
            "c2hvcnQ=",
        );
        assert!(err(&short).contains("must be 16 or 32"));
    }
}
