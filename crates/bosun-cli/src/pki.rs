//! The cluster's credentials: a CA, serving certificates signed by it, a bearer token,
//! and the kubeconfig that hands them to kubectl. Made once per data dir, reused after.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub token: String,
    /// What the API server presents to node agents: not the admin token, so that joined
    /// nodes can check it without holding admin rights.
    pub kubelet_token: String,
    /// The administrator's client certificate (CN `admin`, O `system:masters`) that the
    /// kubeconfig carries; None where only the token was copied (a node's pki dir).
    pub admin: Option<Serving>,
}

/// The administrator's user name and group in the admin client certificate.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// How long an admin certificate is valid, and how close to its end it is replaced.
const ADMIN_CERT_DAYS: i64 = 365;
const ADMIN_RENEW_DAYS: i64 = 30;

/// Whether the PEM certificate is still valid for more than `days` days.
fn valid_for_days(cert_pem: &str, days: i64) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let left =
        cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    left > days * 86_400
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A serving certificate and its key, PEM encoded.
pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// Loads the CA and token under `data_dir/pki`, creating them on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Pki> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        chmod(&dir, 0o700)?;
        let ca_crt = dir.join("ca.crt");
        let ca_key = dir.join("ca.key");
        let token_file = dir.join("token");
        if !ca_crt.exists() || !ca_key.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "bosun-ca");
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_after = rcgen::date_time_ymd(2099, 1, 1);
            let cert = params.self_signed(&key)?;
            write_private(&ca_key, key.serialize_pem().as_bytes())?;
            std::fs::write(&ca_crt, cert.pem())?;
        }
        if !token_file.exists() {
            write_private(&token_file, random_token().as_bytes())?;
        }
        let kubelet_file = dir.join("kubelet-token");
        if !kubelet_file.exists() {
            write_private(&kubelet_file, random_token().as_bytes())?;
        }
        // Also for files written by older versions.
        chmod(&ca_key, 0o600)?;
        chmod(&token_file, 0o600)?;
        let mut pki = Pki {
            ca_pem: std::fs::read_to_string(&ca_crt)?,
            token: std::fs::read_to_string(&token_file)?.trim().to_string(),
            kubelet_token: std::fs::read_to_string(&kubelet_file)?.trim().to_string(),
            dir,
            admin: None,
        };
        pki.admin = Some(pki.ensure_admin_cert()?);
        Ok(pki)
    }

    /// The admin client certificate in `pki/admin.{crt,key}`, issued by the CA when missing
    /// or within a month of its end.
    fn ensure_admin_cert(&self) -> Result<Serving> {
        let (crt, key) = (self.dir.join("admin.crt"), self.dir.join("admin.key"));
        if let (Ok(cert_pem), Ok(key_pem)) =
            (std::fs::read_to_string(&crt), std::fs::read_to_string(&key))
            && valid_for_days(&cert_pem, ADMIN_RENEW_DAYS)
        {
            return Ok(Serving { cert_pem, key_pem });
        }
        let issued = self.client_cert(ADMIN_USER, &[ADMIN_GROUP], ADMIN_CERT_DAYS)?;
        write_private(&key, issued.key_pem.as_bytes())?;
        write_private(&crt, issued.cert_pem.as_bytes())?;
        Ok(issued)
    }

    /// A client certificate from the CA: CN is the user, each O a group (how Kubernetes
    /// reads x509 identities).
    pub fn client_cert(&self, user: &str, groups: &[&str], days: i64) -> Result<Serving> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem()?)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Serving {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads credentials copied from a server (for `bosun agent --join`).
    pub fn load_existing(dir: &Path) -> Result<Pki> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .with_context(|| format!("reading {}", dir.join(f).display()))
        };
        let token = read("token")?.trim().to_string();
        let admin = match (read("admin.crt"), read("admin.key")) {
            (Ok(cert_pem), Ok(key_pem)) => Some(Serving { cert_pem, key_pem }),
            _ => None,
        };
        Ok(Pki {
            admin,
            ca_pem: read("ca.crt")?,
            kubelet_token: read("kubelet-token")
                .map(|t| t.trim().to_string())
                .unwrap_or_else(|_| token.clone()),
            token,
            dir: dir.to_path_buf(),
        })
    }

    /// A serving certificate for `names` and `ips`, signed by the CA. Made fresh at each
    /// start so a changed address is always covered.
    pub fn serving_cert(
        &self,
        common_name: &str,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<Serving> {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(self.dir.join("ca.key"))?)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Serving {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA's private key (PEM), for the certificate signer.
    pub fn ca_key_pem(&self) -> Result<String> {
        std::fs::read_to_string(self.dir.join("ca.key")).context("reading the CA key")
    }

    /// Writes a kubeconfig for `server` that trusts the CA and authenticates with the admin
    /// client certificate (the token where there is none).
    pub fn write_kubeconfig(&self, path: &Path, server: &str) -> Result<()> {
        write_private(path, self.kubeconfig(server).as_bytes())
    }

    /// The kubeconfig text for `server`.
    pub fn kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let ca = b64(&self.ca_pem);
        let user = match &self.admin {
            Some(a) => format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&a.cert_pem),
                b64(&a.key_pem)
            ),
            None => format!("    token: {}\n", self.token),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bosun\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n{user}contexts:\n- name: bosun\n  context:\n    cluster: bosun\n    user: admin\n    namespace: default\ncurrent-context: bosun\n"
        )
    }
}

impl Serving {
    /// A throwaway self-signed certificate, for configurations that never serve.
    pub fn self_signed(name: &str) -> Result<Serving> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_string()])?.self_signed(&key)?;
        Ok(Serving {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Like [`Self::server_config`], also asking clients for a certificate signed by
    /// `client_ca` (nodes' `system:node:NAME`); clients without one may still use a token.
    pub fn server_config_with_client_ca(
        &self,
        client_ca: &str,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut client_ca.as_bytes()) {
            roots.add(c?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let certs =
            rustls_pemfile::certs(&mut self.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())?
            .context("no private key in PEM")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A rustls server config offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs =
            rustls_pemfile::certs(&mut self.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())?
            .context("no private key in PEM")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
