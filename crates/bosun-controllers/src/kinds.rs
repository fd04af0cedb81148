//! The kinds the generic controllers (garbage collector, namespace) act on, found through API
//! discovery so new kinds are covered without code changes.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::Client;
use kube::discovery::{ApiResource, Discovery, Scope, verbs};

#[derive(Clone, Debug)]
pub struct Kind {
    pub ar: ApiResource,
    pub namespaced: bool,
    pub watchable: bool,
}

impl Kind {
    /// Whether objects of this kind can own, or be owned by, other objects in practice.
    /// Events never take part and are too numerous to cache.
    pub fn in_ownership_graph(&self) -> bool {
        self.watchable && self.ar.kind != "Event" && self.ar.plural != "namespaces"
    }
}

fn builtin() -> Vec<Kind> {
    let k = |ar: ApiResource| Kind {
        ar,
        namespaced: true,
        watchable: true,
    };
    vec![
        k(ApiResource::erase::<Pod>(&())),
        k(ApiResource::erase::<ReplicaSet>(&())),
        k(ApiResource::erase::<Deployment>(&())),
        k(ApiResource::erase::<Service>(&())),
        k(ApiResource::erase::<ConfigMap>(&())),
        k(ApiResource::erase::<Secret>(&())),
    ]
}

/// Every listable, deletable kind the server serves (preferred versions only, no subresources);
/// the built-in workload kinds when discovery is unavailable.
pub async fn discover(client: &Client) -> Vec<Kind> {
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "API discovery failed; using the built-in kinds");
            return builtin();
        }
    };
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if ar.plural.contains('/')
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
                // Served views over other kinds (metrics) are not stored objects.
                || ar.group == "metrics.k8s.io"
            {
                continue;
            }
            out.push(Kind {
                namespaced: caps.scope == Scope::Namespaced,
                watchable: caps.supports_operation(verbs::WATCH),
                ar,
            });
        }
    }
    if out.is_empty() { builtin() } else { out }
}
