//! A joined node's own credentials: its `system:node:NAME` client certificate (obtained with
//! a bootstrap token through a CertificateSigningRequest, renewed before it expires), its
//! serving certificate for the logs endpoint, and a `kube::Client` that always presents the
//! current client certificate. Kept under `DATA_DIR/pki`: ca.crt, node.crt, node.key, server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::join::JoinToken;
use crate::pki::Serving;

pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// What a joined node runs with.
pub struct NodeCreds {
    pub server: String,
    pub client: kube::Client,
    pub serving: Serving,
    /// The token the API server presents to this node's logs endpoint.
    pub kubelet_token: String,
    identity: Arc<Identity>,
    dir: PathBuf,
}

/// The client certificate the TLS connector presents; swapped on renewal.
#[derive(Debug)]
struct Identity {
    current: RwLock<(Arc<CertifiedKey>, String)>,
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("no private key in PEM")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// Seconds from now until the certificate expires (negative when past) and its lifetime.
fn validity(cert_pem: &str) -> Result<(i64, i64)> {
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .context("no certificate in PEM")??;
    let (_, c) = x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    let nb = c.validity().not_before.timestamp();
    let na = c.validity().not_after.timestamp();
    Ok((na - jiff::Timestamp::now().as_second(), na - nb))
}

/// Renew once 70% of the lifetime has passed, as the kubelet does (somewhere in 70-90%).
pub fn renew_in(left: i64, lifetime: i64) -> Duration {
    let at = left - lifetime * 3 / 10;
    Duration::from_secs(at.max(0) as u64)
}

/// The HTTPS service of one server: TLS verified by the cluster CA, the node's client
/// certificate or a bearer token, a short connect timeout so a dead server is noticed.
fn http_service(
    ca_pem: &str,
    server: &str,
    identity: Option<Arc<Identity>>,
    bearer: Option<String>,
) -> Result<crate::failover::Server> {
    use kube::client::ConfigExt;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let tls = match identity {
        Some(id) => builder.with_client_cert_resolver(id),
        None => builder.with_no_client_auth(),
    };
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(Duration::from_secs(3)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    let mut cfg = kube::Config::new(server.parse().context("bad server URL")?);
    if let Some(t) = bearer {
        cfg.auth_info.token = Some(t.into());
    }
    let svc = tower::ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(cfg.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(tower::util::BoxCloneSyncService::new(svc))
}

fn tls_client(
    ca_pem: &str,
    server: &str,
    identity: Option<Arc<Identity>>,
    bearer: Option<String>,
) -> Result<kube::Client> {
    let svc = http_service(ca_pem, server, identity, bearer)?;
    Ok(kube::Client::new(svc, "default"))
}

/// A client of every server in `servers`, starting with the first (see [`crate::failover`]).
fn failover_client(
    ca_pem: &str,
    servers: &[String],
    identity: Arc<Identity>,
) -> Result<kube::Client> {
    failover_with(ca_pem, servers, Some(identity), None)
}

/// Like [`failover_client`], authenticated by a bearer token (`bosun agent --pki-dir`).
pub fn failover_bearer_client(
    ca_pem: &str,
    servers: &[String],
    token: &str,
) -> Result<kube::Client> {
    failover_with(ca_pem, servers, None, Some(token.to_string()))
}

fn failover_with(
    ca_pem: &str,
    servers: &[String],
    identity: Option<Arc<Identity>>,
    bearer: Option<String>,
) -> Result<kube::Client> {
    let services = servers
        .iter()
        .map(|s| {
            let svc = http_service(ca_pem, s, identity.clone(), bearer.clone())?;
            Ok((s.clone(), svc))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(kube::Client::new(
        crate::failover::Failover::new(services),
        "default",
    ))
}

/// Submits a CSR and waits for the signed certificate; returns (cert PEM, key PEM).
async fn request_cert(
    client: &kube::Client,
    node: &str,
    signer: &str,
    sans: &[SanType],
) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params.subject_alt_names = sans.to_vec();
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let usages = if signer == SERVING_SIGNER {
        vec!["digital signature".to_string(), "server auth".into()]
    } else {
        vec!["digital signature".to_string(), "client auth".into()]
    };
    let name = format!("node-csr-{node}-{}", rand::random::<u32>());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(csr_pem.into_bytes()),
            signer_name: signer.into(),
            usages: Some(usages),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    if let Err(e) = api.create(&PostParams::default(), &csr).await {
        if let kube::Error::Api(s) = &e
            && (s.code == 401 || s.code == 403)
        {
            bail!(
                "the server refused the join token ({}: {}): it is wrong, expired or deleted; \
                 make a new one on the server with `bosun token create`",
                s.code,
                s.message
            );
        }
        return Err(e).context("submitting the certificate signing request");
    }
    let cond = |o: Option<&CertificateSigningRequest>| {
        o.and_then(|c| c.status.as_ref()).is_some_and(|s| {
            s.certificate.is_some()
                || s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Denied" || c.type_ == "Failed")
        })
    };
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(api, &name, cond),
    )
    .await
    .context("no certificate issued within 60 s (is the server's signer running?)")??;
    let status = done.and_then(|c| c.status).unwrap_or_default();
    match status.certificate {
        Some(cert) => Ok((String::from_utf8(cert.0)?, key.serialize_pem())),
        None => {
            let why = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| format!("{}: {}", c.type_, c.message.unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("; ");
            bail!("certificate request {name} was not granted: {why}")
        }
    }
}

fn read(dir: &Path, f: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(f)).ok()
}

/// The node's credentials: from a previous join in `data_dir/pki` while its certificate is
/// good, else by joining one of `servers` with `token`.
pub async fn obtain(
    servers: &[String],
    token: Option<&str>,
    ca_cert_hash: Option<&str>,
    data_dir: &Path,
    node: &str,
    node_ip: std::net::IpAddr,
) -> Result<NodeCreds> {
    let dir = data_dir.join("pki");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let saved = match (
        read(&dir, "ca.crt"),
        read(&dir, "node.crt"),
        read(&dir, "node.key"),
        read(&dir, "server"),
    ) {
        (Some(ca), Some(crt), Some(key), Some(server))
            if validity(&crt).is_ok_and(|(left, _)| left > 60)
                && (servers.is_empty() || servers.iter().any(|s| s == server.trim())) =>
        {
            Some((ca, crt, key, server.trim().to_string()))
        }
        _ => None,
    };
    let (ca_pem, crt, key, server) = match saved {
        Some(s) => s,
        None => {
            let Some(token) = token else {
                bail!(
                    "this node has not joined yet: pass --token (from the server's node-token file)"
                );
            };
            let tok = JoinToken::parse(token)?;
            let pin = match (ca_cert_hash, &tok.ca_hash) {
                (Some(h), _) => h.to_string(),
                (None, Some(h)) => h.clone(),
                (None, None) => bail!(
                    "the token carries no CA hash: pass --ca-cert-hash sha256:... \
                     (printed by `bosun token create`)"
                ),
            };
            if servers.is_empty() {
                bail!("pass --server https://HOST:6443 (several times for several servers)");
            }
            let mut errors = Vec::new();
            let mut found = None;
            for s in servers {
                match crate::join::discover_ca(s, &pin).await {
                    Ok(ca) => {
                        found = Some((s.clone(), ca));
                        break;
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            let Some((server, ca)) = found else {
                bail!("no server could be used: {}", errors.join("; "));
            };
            let boot = tls_client(&ca, &server, None, Some(tok.bearer()))?;
            let (crt, key) = request_cert(&boot, node, CLIENT_SIGNER, &[]).await?;
            crate::pki::write_private(&dir.join("ca.crt"), ca.as_bytes())?;
            crate::pki::write_private(&dir.join("node.key"), key.as_bytes())?;
            crate::pki::write_private(&dir.join("node.crt"), crt.as_bytes())?;
            crate::pki::write_private(&dir.join("server"), server.as_bytes())?;
            (ca, crt, key, server)
        }
    };
    let identity = Arc::new(Identity {
        current: RwLock::new((certified_key(&crt, &key)?, crt.clone())),
    });
    // The server that answered first, then the others: the node fails over between them.
    let mut order = vec![server.clone()];
    order.extend(servers.iter().filter(|s| **s != server).cloned());
    let client = failover_client(&ca_pem, &order, identity.clone())?;
    let sans = [
        SanType::DnsName(node.try_into()?),
        SanType::IpAddress(node_ip),
        SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
    ];
    let (serving_crt, serving_key) = request_cert(&client, node, SERVING_SIGNER, &sans)
        .await
        .context("getting the node's serving certificate")?;
    let secret = Api::<Secret>::namespaced(client.clone(), "kube-system")
        .get(crate::join::KUBELET_ACCESS_SECRET)
        .await
        .context("reading the kubelet access token")?;
    let kubelet_token = secret
        .data
        .and_then(|d| d.get("token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("the kubelet access Secret has no token")?;
    Ok(NodeCreds {
        server,
        client,
        serving: Serving {
            cert_pem: serving_crt,
            key_pem: serving_key,
        },
        kubelet_token,
        identity,
        dir,
    })
}

impl NodeCreds {
    /// Renews the client certificate before it expires, for as long as the node runs.
    pub async fn renew_loop(self: Arc<Self>, node: String, shutdown: CancellationToken) {
        loop {
            let pem = match self.identity.current.read() {
                Ok(c) => c.1.clone(),
                Err(_) => return,
            };
            let wait = match validity(&pem) {
                Ok((left, lifetime)) => renew_in(left, lifetime),
                Err(_) => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match request_cert(&self.client, &node, CLIENT_SIGNER, &[]).await {
                Ok((crt, key)) => {
                    let saved =
                        crate::pki::write_private(&self.dir.join("node.key"), key.as_bytes())
                            .and_then(|_| {
                                crate::pki::write_private(
                                    &self.dir.join("node.crt"),
                                    crt.as_bytes(),
                                )
                            });
                    match (saved, certified_key(&crt, &key)) {
                        (Ok(()), Ok(ck)) => {
                            if let Ok(mut cur) = self.identity.current.write() {
                                *cur = (ck, crt);
                            }
                            tracing::info!("node client certificate renewed");
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::warn!(error = %format!("{e:#}"), "storing the renewed certificate")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; retrying in a minute");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent() {
        // A year-long certificate with the whole year left: renew after 70% of it.
        let year = 365 * 86400;
        assert_eq!(
            renew_in(year, year),
            Duration::from_secs((year * 7 / 10) as u64)
        );
        // Past the renewal point: now.
        assert_eq!(renew_in(year / 10, year), Duration::ZERO);
    }
}
