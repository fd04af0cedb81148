//! The kinds bosun serves and what the API server needs to know about each.

use std::sync::OnceLock;

use k8s_openapi::api::{
    apps, autoscaling, batch, certificates, coordination, core, discovery, networking, node,
    policy, rbac, scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Static facts about one kind plus type-erased hooks into its k8s-openapi type.
pub struct KindInfo {
    /// API group, "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// "v1" or "apps/v1".
    pub api_version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    /// URL segment: "deployments".
    pub plural: &'static str,
    pub singular: String,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    /// Subresources served under `.../NAME/SUB`: "status", "scale", "log", "binding", "finalize".
    pub subresources: &'static [&'static str],
    /// The kind's JSON schema from its k8s-openapi type (without Kubernetes' patch
    /// extensions; `openapi` adds those). Built-in kinds take theirs from the embedded set
    /// (`Schemas::builtin`); only this crate's tests, which check that set, generate them.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Decodes into the typed object and encodes it back. An error means the value
    /// does not fit the type (wrong field type, bad quantity ...).
    pub roundtrip: fn(&Value) -> Result<Value, String>,
    /// Schema, columns and subresource paths of a kind served for a CRD.
    pub custom: Option<std::sync::Arc<crate::crd::Custom>>,
}

impl KindInfo {
    /// Store key prefix for this kind: `/registry/apps/deployments/`.
    pub fn key_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/core/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// Store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{}/{}", self.key_prefix(), ns, name),
            _ => format!("{}{}", self.key_prefix(), name),
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

fn roundtrip<K: Serialize + DeserializeOwned>(v: &Value) -> Result<Value, String> {
    let typed: K = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Builds a [`KindInfo`] from a k8s-openapi type.
pub fn kind_of<K>(
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> KindInfo
where
    K: k8s_openapi::Resource
        + k8s_openapi::ListableResource
        + Serialize
        + DeserializeOwned
        + schemars::JsonSchema,
    K::Scope: Scope,
{
    KindInfo {
        group: K::GROUP,
        version: K::VERSION,
        api_version: K::API_VERSION,
        kind: K::KIND,
        list_kind: K::LIST_KIND,
        plural: K::URL_PATH_SEGMENT,
        singular: K::KIND.to_ascii_lowercase(),
        short_names,
        categories,
        namespaced: <K::Scope as Scope>::NAMESPACED,
        subresources,
        #[cfg(test)]
        schema: K::json_schema,
        #[cfg(not(test))]
        schema: embedded_only,
        roundtrip: roundtrip::<K>,
        custom: None,
    }
}

/// Where built-in kinds' schemas are not generated (everywhere but this crate's tests, which
/// check the embedded set against the types), they are always found in the embedded set:
/// their schema code is then not referenced, and not linked, and this open schema is never
/// asked for.
#[cfg(not(test))]
fn embedded_only(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object"})
}

/// Maps k8s-openapi's scope marker types to a bool.
pub trait Scope {
    const NAMESPACED: bool;
}
impl Scope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// All kinds bosun serves.
pub struct Registry {
    pub kinds: Vec<KindInfo>,
}

impl Registry {
    /// The built-in kinds, built once.
    pub fn builtin() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| Registry {
            kinds: vec![
                kind_of::<core::v1::Namespace>(&["ns"], &[], &["status", "finalize"]),
                kind_of::<core::v1::Pod>(
                    &["po"],
                    &["all"],
                    &[
                        "status",
                        "log",
                        "binding",
                        "eviction",
                        "exec",
                        "attach",
                        "portforward",
                        "ephemeralcontainers",
                    ],
                ),
                kind_of::<core::v1::ConfigMap>(&["cm"], &[], &[]),
                kind_of::<core::v1::Secret>(&[], &[], &[]),
                kind_of::<core::v1::Service>(&["svc"], &["all"], &["status"]),
                kind_of::<core::v1::Event>(&["ev"], &[], &[]),
                kind_of::<core::v1::Node>(&["no"], &[], &["status"]),
                kind_of::<core::v1::Endpoints>(&["ep"], &[], &[]),
                kind_of::<apps::v1::Deployment>(&["deploy"], &["all"], &["status", "scale"]),
                kind_of::<apps::v1::ReplicaSet>(&["rs"], &["all"], &["status", "scale"]),
                kind_of::<coordination::v1::Lease>(&[], &[], &[]),
                kind_of::<discovery::v1::EndpointSlice>(&[], &[], &[]),
                kind_of::<networking::v1::Ingress>(&["ing"], &[], &["status"]),
                kind_of::<networking::v1::IngressClass>(&[], &[], &[]),
                kind_of::<crate::gateway::GatewayClass>(&["gc"], &[], &["status"]),
                kind_of::<crate::gateway::Gateway>(&["gtw"], &[], &["status"]),
                kind_of::<crate::gateway::HTTPRoute>(&[], &[], &["status"]),
                kind_of::<policy::v1::PodDisruptionBudget>(&["pdb"], &[], &["status"]),
                kind_of::<certificates::v1::CertificateSigningRequest>(
                    &["csr"],
                    &[],
                    &["status", "approval"],
                ),
                kind_of::<core::v1::ServiceAccount>(&["sa"], &[], &["token"]),
                kind_of::<core::v1::PersistentVolume>(&["pv"], &[], &["status"]),
                kind_of::<core::v1::PersistentVolumeClaim>(&["pvc"], &[], &["status"]),
                kind_of::<core::v1::ResourceQuota>(&["quota"], &[], &["status"]),
                kind_of::<core::v1::LimitRange>(&["limits"], &[], &[]),
                kind_of::<apps::v1::StatefulSet>(&["sts"], &["all"], &["status", "scale"]),
                kind_of::<apps::v1::DaemonSet>(&["ds"], &["all"], &["status"]),
                kind_of::<apps::v1::ControllerRevision>(&[], &[], &[]),
                kind_of::<batch::v1::Job>(&[], &["all"], &["status"]),
                kind_of::<batch::v1::CronJob>(&["cj"], &["all"], &["status"]),
                kind_of::<autoscaling::v2::HorizontalPodAutoscaler>(
                    &["hpa"],
                    &["all"],
                    &["status"],
                ),
                kind_of::<networking::v1::NetworkPolicy>(&["netpol"], &[], &[]),
                kind_of::<rbac::v1::Role>(&[], &[], &[]),
                kind_of::<rbac::v1::ClusterRole>(&[], &[], &[]),
                kind_of::<rbac::v1::RoleBinding>(&[], &[], &[]),
                kind_of::<rbac::v1::ClusterRoleBinding>(&[], &[], &[]),
                kind_of::<scheduling::v1::PriorityClass>(&["pc"], &[], &[]),
                kind_of::<node::v1::RuntimeClass>(&[], &[], &[]),
                kind_of::<storage::v1::StorageClass>(&["sc"], &[], &[]),
                kind_of::<apiextensions::v1::CustomResourceDefinition>(
                    &["crd", "crds"],
                    &[],
                    &["status"],
                ),
            ],
        })
    }

    /// Finds a kind by group, version and plural (the URL form).
    pub fn by_resource(&self, group: &str, version: &str, plural: &str) -> Option<&KindInfo> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }

    /// Finds a kind by apiVersion and kind (the body form).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&KindInfo> {
        self.kinds
            .iter()
            .find(|k| k.api_version == api_version && k.kind == kind)
    }

    /// The (group, version) pairs served, core first, each once.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for k in &self.kinds {
            if !out.contains(&(k.group, k.version)) {
                out.push((k.group, k.version));
            }
        }
        out.sort_by_key(|(g, _)| !g.is_empty());
        out
    }
}
