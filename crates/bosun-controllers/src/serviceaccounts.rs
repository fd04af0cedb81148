//! Kubernetes' ServiceAccount controller and root CA publisher: every namespace gets a
//! `default` ServiceAccount and a `kube-root-ca.crt` ConfigMap holding the cluster CA (what
//! projected ServiceAccount volumes mount as `ca.crt`). The CA comes from the public
//! `kube-public/cluster-info` ConfigMap the server publishes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::util::is_not_found;

pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

struct Ctx {
    client: Client,
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The CA of `cluster-info`'s kubeconfig (`certificate-authority-data`), as PEM.
pub fn ca_from_cluster_info(cm: &ConfigMap) -> Option<String> {
    let kc = cm.data.as_ref()?.get("kubeconfig")?;
    let b64 = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))?
        .trim();
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(pem).ok()
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if sas.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(e) if is_already_exists(&e) || is_not_found(&e) => {}
            Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 403) => {
                // The namespace is terminating.
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let public: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), "kube-public");
    let Some(ca) = public
        .get_opt("cluster-info")
        .await?
        .as_ref()
        .and_then(ca_from_cluster_info)
    else {
        // Published by the server shortly after start.
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let want = [("ca.crt".to_string(), ca)].into_iter().collect();
    match cms.get_opt(ROOT_CA_CONFIGMAP).await? {
        Some(cm) if cm.data.as_ref() == Some(&want) => {}
        Some(mut cm) => {
            cm.data = Some(want);
            match cms
                .replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                .await
            {
                Ok(_) => {}
                Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.into()),
                    annotations: Some(
                        [(
                            "kubernetes.io/description".to_string(),
                            "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            match cms.create(&PostParams::default(), &cm).await {
                Ok(_) => {}
                Err(e) if is_already_exists(&e) || is_not_found(&e) => {}
                Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 403) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Deleted ones come back on the next pass, as Kubernetes' controllers bring them back.
    Ok(Action::requeue(Duration::from_secs(30)))
}

pub(crate) async fn run(
    client: Client,
    namespaces: Informer<Namespace>,
    shutdown: CancellationToken,
) {
    let controller = Controller::for_shared_stream(namespaces.subscribe(), namespaces.store());
    let ctx = Arc::new(Ctx { client });
    drive(
        "serviceaccount",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_read_from_cluster_info() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        let cm = ConfigMap {
            data: Some(
                [(
                    "kubeconfig".to_string(),
                    format!("clusters:\n- cluster:\n    server: https://x\n    certificate-authority-data: {b64}\n"),
                )]
                .into(),
            ),
            ..Default::default()
        };
        assert_eq!(ca_from_cluster_info(&cm).as_deref(), Some(pem));
    }
}
