//! A standalone API server for trying kubectl against: embedded store in a fresh
//! directory, a throwaway CA, HTTPS on 127.0.0.1. Prints the kubeconfig path.
//!
//! `cargo run -p bosun-apiserver --example dev_server -- [PORT]`

use std::sync::Arc;

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_store::{RedbOptions, RedbStore};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(0);
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(&dir.path().join("store.redb"), RedbOptions::default())?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (Python's client) takes a leaf whose subject equals its
    // issuer for self-signed and refuses it.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bosun dev CA");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "bosun-apiserver");
    let cert = leaf.signed_by(&key, &issuer)?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;

    let token = uuid::Uuid::new_v4().to_string();
    let server = ApiServer::new(ApiServerConfig::new(store, token.clone(), ca.pem())).await?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let addr = listener.local_addr()?;
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca.pem())?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dev\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\nusers:\n- name: dev\n  user:\n    token: {token}\ncontexts:\n- name: dev\n  context:\n    cluster: dev\n    user: dev\n    namespace: default\ncurrent-context: dev\n",
            ca_path.display()
        ),
    )?;
    println!("KUBECONFIG={}", kubeconfig.display());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    server.serve_tls(listener, Arc::new(tls), shutdown).await
}
