//! What the pod workers need from the cluster, behind a trait so the pod lifecycle can be
//! tested without an API server. `KubeApi` is the real one over a `kube::Client`.

use anyhow::Result;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, PodStatus, Secret,
    Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

#[async_trait]
pub trait ClusterApi: Send + Sync + 'static {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>>;
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>>;
    /// A claim a pod mounts, and the volume bound to it.
    async fn persistent_volume_claim(
        &self,
        _ns: &str,
        _name: &str,
    ) -> Result<Option<PersistentVolumeClaim>> {
        Ok(None)
    }
    async fn persistent_volume(&self, _name: &str) -> Result<Option<PersistentVolume>> {
        Ok(None)
    }
    /// The Services of a namespace (for the service environment variables).
    async fn services(&self, _ns: &str) -> Result<Vec<Service>> {
        Ok(Vec::new())
    }
    /// Whether an EndpointSlice still lists the pod as a ready endpoint (traffic may still
    /// be sent to it).
    async fn in_ready_endpoints(&self, _pod: &Pod) -> Result<bool> {
        Ok(false)
    }
    /// A token for the pod's ServiceAccount `sa`, bound to the pod (the TokenRequest API);
    /// `audience` None means the API server's own.
    async fn service_account_token(
        &self,
        _pod: &Pod,
        _sa: &str,
        _audience: Option<&str>,
        _expiration_seconds: i64,
    ) -> Result<String> {
        anyhow::bail!("this cluster offers no TokenRequest API")
    }
    /// Writes the pod's status (the `status` subresource).
    async fn update_pod_status(&self, pod: &Pod, status: &PodStatus) -> Result<()>;
    /// Confirms a graceful deletion: deletes the pod object for good (grace period 0), only
    /// if it is still the same pod (UID precondition).
    async fn finalize_pod_deletion(&self, pod: &Pod) -> Result<()>;
    /// Records an Event about a pod; failures are logged, never fatal.
    async fn event(&self, pod: &Pod, warning: bool, reason: &str, message: &str);
}

pub struct KubeApi {
    pub client: kube::Client,
    pub node_name: String,
    /// Pod Events, correlated (repeats counted, floods cut) as a kubelet's are.
    pub events: bosun_events::Recorder,
}

fn ns_of(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[async_trait]
impl ClusterApi for KubeApi {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        match api.get(name).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        match api.get(name).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn persistent_volume_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>> {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        Ok(api.get_opt(name).await?)
    }

    async fn services(&self, ns: &str) -> Result<Vec<Service>> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        Ok(api.list(&Default::default()).await?.items)
    }

    async fn in_ready_endpoints(&self, pod: &Pod) -> Result<bool> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns_of(pod));
        let uid = pod.metadata.uid.as_deref();
        Ok(api.list(&Default::default()).await?.items.iter().any(|s| {
            s.endpoints.iter().any(|e| {
                e.target_ref.as_ref().and_then(|r| r.uid.as_deref()) == uid
                    && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
            })
        }))
    }

    async fn service_account_token(
        &self,
        pod: &Pod,
        sa: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<String> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &ns_of(pod));
        let req = TokenRequest {
            metadata: ObjectMeta {
                name: Some(sa.to_string()),
                ..Default::default()
            },
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            status: None,
        };
        let answer: TokenRequest = api
            .create_subresource("token", sa, &PostParams::default(), &req)
            .await?;
        answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the TokenRequest answer holds no token"))
    }

    async fn update_pod_status(&self, pod: &Pod, status: &PodStatus) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns_of(pod));
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn finalize_pod_deletion(&self, pod: &Pod) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns_of(pod));
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn event(&self, pod: &Pod, warning: bool, reason: &str, message: &str) {
        let ns = ns_of(pod);
        // What the agent tells the API about a pod (Started, Killing, BackOff, Failed,
        // Unhealthy ...) is what an operator reads in the log too.
        let pod_name = pod.metadata.name.as_deref().unwrap_or("");
        if warning {
            tracing::warn!(pod = %format!("{ns}/{pod_name}"), reason, "{message}");
        } else {
            tracing::info!(pod = %format!("{ns}/{pod_name}"), reason, "{message}");
        }
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: Some(ns),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        };
        let type_ = if warning {
            bosun_events::WARNING
        } else {
            bosun_events::NORMAL
        };
        // Written beside the pod's work, not before it: "Created" and "Started" sit between a
        // pod's start and its first probe, which a request held at scale from zero waits for.
        let (events, reason, message) =
            (self.events.clone(), reason.to_string(), message.to_string());
        tokio::spawn(async move {
            if let Err(e) = events.record_ref(involved, type_, &reason, &message).await {
                tracing::debug!(error = %e, reason, "cannot record event");
            }
        });
    }
}
