//! The server's certificate signer: approves node certificate requests that come from a
//! bootstrap token or from the node itself (renewal), and signs approved requests for the
//! kubelet signers with the cluster CA. It runs where the CA key is, in `bosun server`/`up`.
//! Other requests wait for `kubectl certificate approve` and are then signed too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bosun_watch::Informer;
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_util::sync::CancellationToken;

use crate::nodecert::{CLIENT_SIGNER, SERVING_SIGNER};

/// Lifetime of node certificates unless the request asks for less (`expirationSeconds`).
pub const NODE_CERT_TTL: Duration = Duration::from_secs(365 * 86400);

pub struct Signer {
    pub ca_pem: String,
    pub ca_key_pem: String,
}

/// The node a request's subject names, if it is exactly `CN=system:node:NAME, O=system:nodes`.
pub fn node_subject(csr_pem: &str) -> Option<String> {
    let der = pem_der(csr_pem)?;
    use x509_parser::prelude::FromDer;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der).ok()?;
    let subject = &req.certification_request_info.subject;
    let cns: Vec<_> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let orgs: Vec<_> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    match (cns.as_slice(), orgs.as_slice()) {
        ([cn], ["system:nodes"]) => cn.strip_prefix("system:node:").map(String::from),
        _ => None,
    }
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Why a request is not approved automatically, or None when it is.
pub fn auto_approval(csr: &CertificateSigningRequest) -> Option<&'static str> {
    let spec = &csr.spec;
    let pem = String::from_utf8_lossy(&spec.request.0);
    let Some(node) = node_subject(&pem) else {
        return Some("the subject is not CN=system:node:NAME, O=system:nodes");
    };
    let user = spec.username.as_deref().unwrap_or_default();
    let groups = spec.groups.clone().unwrap_or_default();
    let bootstrap = user.starts_with(bosun_apiserver::auth::BOOTSTRAP_PREFIX)
        && groups
            .iter()
            .any(|g| g == bosun_apiserver::auth::BOOTSTRAPPERS);
    let itself = user == format!("system:node:{node}");
    let allowed: &[&str] = match spec.signer_name.as_str() {
        // A new node (bootstrap token) or a node renewing its own.
        CLIENT_SIGNER if bootstrap || itself => {
            &["digital signature", "key encipherment", "client auth"]
        }
        // Only a node, for itself.
        SERVING_SIGNER if itself => &["digital signature", "key encipherment", "server auth"],
        CLIENT_SIGNER | SERVING_SIGNER => {
            return Some("not requested by a bootstrap token or the node itself");
        }
        _ => return Some("not a kubelet signer"),
    };
    let usages = spec.usages.clone().unwrap_or_default();
    if usages.is_empty() || usages.iter().any(|u| !allowed.contains(&u.as_str())) {
        return Some("usages outside what the signer grants");
    }
    None
}

fn has_cond(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}

fn condition(ty: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
    let now = Time(jiff::Timestamp::now());
    CertificateSigningRequestCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

impl Signer {
    /// Signs an approved request with the CA; only what the signer allows is kept.
    pub fn sign(&self, csr: &CertificateSigningRequest) -> Result<String> {
        let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
        let mut req = CertificateSigningRequestParams::from_pem(&pem)
            .context("the request is not a valid PEM CERTIFICATE REQUEST")?;
        let serving = csr.spec.signer_name == SERVING_SIGNER;
        let p = &mut req.params;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![if serving {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if !serving {
            p.subject_alt_names.clear();
        } else {
            p.subject_alt_names
                .retain(|s| matches!(s, SanType::DnsName(_) | SanType::IpAddress(_)));
        }
        let ttl = csr
            .spec
            .expiration_seconds
            .map(|s| Duration::from_secs(s.max(600) as u64))
            .unwrap_or(NODE_CERT_TTL)
            .min(NODE_CERT_TTL);
        let now = time_now();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::try_from(ttl).unwrap_or(time::Duration::DAY);
        let key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, key)?;
        Ok(req.signed_by(&issuer)?.pem())
    }

    async fn handle(&self, api: &Api<CertificateSigningRequest>, csr: CertificateSigningRequest) {
        let name = csr.metadata.name.clone().unwrap_or_default();
        let signed = csr.status.as_ref().is_some_and(|s| s.certificate.is_some());
        if signed || has_cond(&csr, "Denied") || has_cond(&csr, "Failed") {
            return;
        }
        let mut csr = csr;
        let mut conditions = csr
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if !has_cond(&csr, "Approved") {
            match auto_approval(&csr) {
                Some(why) => {
                    tracing::debug!(csr = %name, why, "waiting for manual approval");
                    return;
                }
                None => conditions.push(condition(
                    "Approved",
                    "AutoApproved",
                    "node certificate approved by the bosun signer",
                )),
            }
        }
        let mut certificate = None;
        if matches!(
            csr.spec.signer_name.as_str(),
            CLIENT_SIGNER | SERVING_SIGNER
        ) {
            match self.sign(&csr) {
                Ok(pem) => certificate = Some(k8s_openapi::ByteString(pem.into_bytes())),
                Err(e) => conditions.push(condition("Failed", "SigningError", &format!("{e:#}"))),
            }
        }
        let status = csr.status.get_or_insert_with(Default::default);
        status.conditions = Some(conditions);
        status.certificate = certificate;
        match api
            .replace_status(&name, &PostParams::default(), &csr)
            .await
        {
            Ok(_) => tracing::info!(csr = %name, "certificate issued"),
            Err(e) => tracing::warn!(csr = %name, error = %e, "writing the certificate"),
        }
    }

    /// Follows CertificateSigningRequests until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        client: kube::Client,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let api: Api<CertificateSigningRequest> = Api::all(client);
        let stop = shutdown.child_token();
        let _stop_watch = stop.clone().drop_guard();
        let requests = Informer::start(api.clone(), stop);
        // Every request once listed, then each change; a deleted one needs nothing.
        let mut touched = std::pin::pin!(requests.subscribe());
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                n = touched.next() => n,
            };
            let Some(t) = next else { return Ok(()) };
            if let Some(csr) = requests.current(&t) {
                self.handle(&api, CertificateSigningRequest::clone(&csr))
                    .await;
            }
        }
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
