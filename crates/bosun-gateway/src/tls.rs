//! TLS termination: certificates from `kubernetes.io/tls` Secrets, chosen per SNI name.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// Certificates by host name, as of one route-table build.
#[derive(Clone, Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`, longest first after [`CertStore::seal`].
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    /// For any name (a Gateway listener without hostname).
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Registers a certificate for `host` (`shop.local` or `*.shop.local`). The first
    /// registration of a host wins, so the caller's iteration order decides conflicts.
    pub fn add(&mut self, host: &str, key: Arc<CertifiedKey>) {
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty() || host == "*" {
            self.default.get_or_insert(key);
        } else if let Some(suffix) = host.strip_prefix('*') {
            if !self.wildcard.iter().any(|(s, _)| s == suffix) {
                self.wildcard.push((suffix.to_string(), key));
            }
        } else {
            self.exact.entry(host).or_insert(key);
        }
    }

    pub fn seal(&mut self) {
        self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    /// The certificate for an SNI name: exact name, then wildcard, then the default.
    /// Without SNI (clients connecting by IP) the default is used, or the only
    /// certificate when there is exactly one.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            if self.default.is_some() {
                return self.default.clone();
            }
            return match (self.exact.len(), self.wildcard.len()) {
                (1, 0) => self.exact.values().next().cloned(),
                (0, 1) => Some(self.wildcard[0].1.clone()),
                _ => None,
            };
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| {
                name.strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
            .map(|(_, k)| k.clone())
            .or_else(|| self.default.clone())
    }
}

/// Loads the certificate chain and key of a `kubernetes.io/tls` Secret and checks that
/// they belong together.
pub fn certified_key_from_secret(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    if let Some(t) = secret.type_.as_deref()
        && t != "kubernetes.io/tls"
    {
        return Err(format!("Secret type is {t:?}, want \"kubernetes.io/tls\""));
    }
    let data = secret.data.as_ref();
    let get = |k: &str| -> Result<&[u8], String> {
        data.and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("Secret has no {k:?}"))
    };
    certified_key_from_pem(get("tls.crt")?, get("tls.key")?)
}

pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("tls.key is not valid PEM: {e}"))?
        .ok_or("tls.key holds no private key")?;
    let provider = provider();
    let ck = CertifiedKey::from_der(certs, key, &provider)
        .map_err(|e| format!("tls.crt and tls.key do not form a usable pair: {e}"))?;
    Ok(Arc::new(ck))
}

pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// SNI resolver reading the latest [`CertStore`] on every handshake.
#[derive(Debug)]
pub struct SniResolver {
    certs: watch::Receiver<Arc<CertStore>>,
}

impl SniResolver {
    pub fn new(certs: watch::Receiver<Arc<CertStore>>) -> Self {
        SniResolver { certs }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.certs.borrow().clone();
        let found = store.lookup(hello.server_name());
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate for TLS handshake");
        }
        found
    }
}

/// A rustls server config advertising h2 and http/1.1 with SNI-based certificates.
pub fn server_config(
    certs: watch::Receiver<Arc<CertStore>>,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn loads_pairs_and_rejects_mismatches() {
        let (c1, k1) = cert(&["a.local"]);
        let (_, k2) = cert(&["b.local"]);
        assert!(certified_key_from_pem(c1.as_bytes(), k1.as_bytes()).is_ok());
        let e = certified_key_from_pem(c1.as_bytes(), k2.as_bytes()).unwrap_err();
        assert!(e.contains("do not form"), "{e}");
        assert!(certified_key_from_pem(b"junk", k1.as_bytes()).is_err());
        assert!(certified_key_from_pem(c1.as_bytes(), b"").is_err());
    }

    #[test]
    fn sni_lookup() {
        let (c, k) = cert(&["a.local"]);
        let key = certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap();
        let (c2, k2) = cert(&["*.w.local"]);
        let wkey = certified_key_from_pem(c2.as_bytes(), k2.as_bytes()).unwrap();
        let mut s = CertStore::default();
        s.add("a.local", key.clone());
        s.add("*.w.local", wkey.clone());
        s.seal();
        assert!(Arc::ptr_eq(&s.lookup(Some("A.local")).unwrap(), &key));
        assert!(Arc::ptr_eq(&s.lookup(Some("x.w.local")).unwrap(), &wkey));
        assert!(s.lookup(Some("x.y.w.local")).is_none());
        assert!(s.lookup(Some("other")).is_none());
        assert!(s.lookup(None).is_none());
        s.add("*", key.clone());
        assert!(Arc::ptr_eq(&s.lookup(Some("other")).unwrap(), &key));
        assert!(Arc::ptr_eq(&s.lookup(Some("x.w.local")).unwrap(), &wkey));
        assert!(Arc::ptr_eq(&s.lookup(None).unwrap(), &key));
    }
}
