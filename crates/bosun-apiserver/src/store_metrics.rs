//! The store as the API server sees it, measured under kube-apiserver's names:
//! `etcd_request_duration_seconds{operation,type}` and `etcd_requests_total`
//! / `etcd_request_errors_total{operation,type}` for every call into the backend (redb or
//! etcd; `type` is the resource of the key, e.g. `pods` or `deployments.apps`), and
//! `apiserver_storage_size_bytes` (the embedded store's file, read at each scrape).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bosun_store::{
    KeyValue, LeaseId, ListOptions, ListResult, Result, Revision, Store, WatchStream,
};
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `operation` and `type` (a label name no struct field can carry).
type OpLabels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClusterLabel {
    storage_cluster_id: &'static str,
}

type Histograms = Family<OpLabels, Histogram, fn() -> Histogram>;

pub(crate) struct StoreMetrics {
    duration: Histograms,
    requests: Family<OpLabels, Counter>,
    errors: Family<OpLabels, Counter>,
    size: Family<ClusterLabel, Gauge>,
    file: Option<PathBuf>,
}

fn histogram() -> Histogram {
    // kube-apiserver's buckets for etcd_request_duration_seconds.
    Histogram::new([
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    ])
}

impl StoreMetrics {
    pub(crate) fn new(registry: &mut Registry, file: Option<PathBuf>) -> Arc<StoreMetrics> {
        let m = StoreMetrics {
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            requests: Family::default(),
            errors: Family::default(),
            size: Family::default(),
            file,
        };
        registry.register(
            "etcd_request_duration_seconds",
            "Store request latency by operation and resource",
            m.duration.clone(),
        );
        registry.register(
            "etcd_requests",
            "Store requests by operation and resource",
            m.requests.clone(),
        );
        registry.register(
            "etcd_request_errors",
            "Failed store requests by operation and resource",
            m.errors.clone(),
        );
        registry.register(
            "apiserver_storage_size_bytes",
            "Size of the storage database file in bytes",
            m.size.clone(),
        );
        Arc::new(m)
    }

    /// Refreshes the size gauge (called before each encoding).
    pub(crate) fn refresh(&self) {
        if let Some(f) = &self.file
            && let Ok(md) = std::fs::metadata(f)
        {
            self.size
                .get_or_create(&ClusterLabel {
                    storage_cluster_id: "redb",
                })
                .set(md.len() as i64);
        }
    }

    fn observe<T>(&self, operation: &'static str, key: &str, start: Instant, r: &Result<T>) {
        let l: OpLabels = vec![
            ("operation", operation.to_string()),
            ("type", resource_of(key)),
        ];
        self.duration
            .get_or_create(&l)
            .observe(start.elapsed().as_secs_f64());
        self.requests.get_or_create(&l).inc();
        if r.is_err() {
            self.errors.get_or_create(&l).inc();
        }
    }
}

/// `/registry/GROUP/RESOURCE/...` -> `RESOURCE` (core) or `RESOURCE.GROUP`; anything else
/// (leases, revisions) -> "".
fn resource_of(key: &str) -> String {
    let mut parts = key.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("registry"), Some(group), Some(res)) if !res.is_empty() => {
            if group == "core" || group.is_empty() {
                res.to_string()
            } else {
                format!("{res}.{group}")
            }
        }
        _ => String::new(),
    }
}

/// Times every call into `inner`.
pub(crate) struct MeteredStore {
    pub(crate) inner: Arc<dyn Store>,
    pub(crate) metrics: Arc<StoreMetrics>,
}

macro_rules! timed {
    ($self:ident, $op:literal, $key:expr, $call:expr) => {{
        let start = Instant::now();
        let r = $call.await;
        $self.metrics.observe($op, $key, start, &r);
        r
    }};
}

#[async_trait]
impl Store for MeteredStore {
    async fn current_revision(&self) -> Result<Revision> {
        timed!(self, "revision", "", self.inner.current_revision())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        timed!(self, "get", key, self.inner.get(key))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        timed!(self, "list", prefix, self.inner.list(prefix, opts))
    }

    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<KeyValue> {
        timed!(self, "create", key, self.inner.create(key, value, lease))
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue> {
        timed!(
            self,
            "update",
            key,
            self.inner.update(key, value, expected, lease)
        )
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        timed!(self, "delete", key, self.inner.delete(key, expected))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        timed!(self, "watch", prefix, self.inner.watch(prefix, after))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        timed!(self, "compact", "", self.inner.compact(revision))
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.inner.compacted_revision().await
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId> {
        timed!(self, "grant", "", self.inner.grant_lease(ttl_seconds))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        timed!(self, "keepalive", "", self.inner.keep_alive(lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        timed!(self, "revoke", "", self.inner.revoke_lease(lease))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_of_keys() {
        assert_eq!(resource_of("/registry/core/pods/default/a"), "pods");
        assert_eq!(
            resource_of("/registry/apps/deployments/"),
            "deployments.apps"
        );
        assert_eq!(resource_of("/bosun/leases"), "");
    }
}
