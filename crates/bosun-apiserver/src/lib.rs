//! Kubernetes REST API over the store: discovery, CRUD, patch, watch, subresources, tables, OpenAPI.
//!
//! Objects are stored as JSON under `KindInfo::key`; `metadata.resourceVersion` is never
//! stored but filled in from the key's `mod_revision` on every read, so it always equals
//! the store revision of the object's last write.

mod attrs;
pub mod audit;
pub mod audit_policy;
pub mod auth;
mod crds;
mod ctx;
mod custom_metrics;
mod discovery;
pub mod encryption;
mod error;
mod eviction;
mod external_metrics;
mod field_labels;
mod gate;
mod logs;
mod metrics;
mod node_authz;
mod objects;
mod podlogs;
mod priority;
mod prom;
pub use prom::MetricsSource;
mod quota;
pub mod rbac;
mod rbac_policy;
mod request;
mod reviews;
mod sa_admission;
pub mod sa_token;
mod selector;
mod services;
#[cfg(test)]
mod store_conformance;
mod store_metrics;
mod streaming;
mod tls;
pub mod user;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use bosun_api::Registry;
use bosun_api::openapi::OpenApi;
use bosun_store::Store;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use selector::{FieldSelector, LabelSelector};

/// Namespaces that always exist.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Default Service ClusterIP range, as Kubernetes'.
pub const DEFAULT_SERVICE_CIDR: ipnet::Ipv4Net =
    ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 96, 0, 0), 12);

/// Default node port range, as Kubernetes'.
pub const DEFAULT_NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

/// Default request body limit: 3 MiB, as Kubernetes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub struct ApiServerConfig {
    pub store: Arc<dyn Store>,
    /// Bearer token every API request must carry (TLS serving only).
    pub token: String,
    /// PEM of the cluster CA; node agents' serving certificates are verified against it
    /// when pod logs are proxied.
    pub ca_pem: String,
    /// Request bodies above this size are refused with 413.
    pub max_body_bytes: usize,
    /// Range Service ClusterIPs are allocated from (the first host is left out: in
    /// Kubernetes it belongs to the API server's own Service).
    pub service_cidr: ipnet::Ipv4Net,
    /// Range node ports are allocated from, inclusive.
    pub node_port_range: (u16, u16),
    /// Bearer token presented to node agents (logs, stats); the admin token when unset, so
    /// joined nodes need not hold the admin token.
    pub kubelet_token: Option<String>,
    /// EncryptionConfiguration file for encryption at rest (created with a fresh key
    /// when missing); `None` stores everything as plaintext.
    pub encryption_config: Option<PathBuf>,
    /// Timeouts and connection caps of the HTTPS listener.
    pub limits: bosun_serve::Limits,
    /// The key ServiceAccount tokens are signed with (created, mode 0600, when missing);
    /// `None` uses a key that lives as long as the process.
    pub service_account_key: Option<PathBuf>,
    /// The `iss` of ServiceAccount tokens, and the audience the API accepts.
    pub service_account_issuer: String,
    /// Where to write the audit log; `None` writes none.
    pub audit: Option<audit::AuditConfig>,
    /// Base URL (`http://HOST:PORT`) of the Prometheus API `external.metrics.k8s.io` reads
    /// (bosun's built-in metrics); `None` answers those requests with 503.
    pub external_metrics: Option<String>,
    /// The embedded store's file, for `apiserver_storage_size_bytes`.
    pub storage_file: Option<PathBuf>,
    /// Other in-process components' metrics, served on `/metrics` after the API server's.
    pub extra_metrics: Vec<prom::MetricsSource>,
}

impl ApiServerConfig {
    pub fn new(store: Arc<dyn Store>, token: impl Into<String>, ca_pem: impl Into<String>) -> Self {
        ApiServerConfig {
            store,
            token: token.into(),
            ca_pem: ca_pem.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            service_cidr: DEFAULT_SERVICE_CIDR,
            node_port_range: DEFAULT_NODE_PORT_RANGE,
            kubelet_token: None,
            encryption_config: None,
            limits: bosun_serve::Limits::default(),
            service_account_key: None,
            service_account_issuer: sa_token::DEFAULT_ISSUER.to_string(),
            audit: None,
            external_metrics: None,
            storage_file: None,
            extra_metrics: Vec::new(),
        }
    }
}

pub(crate) struct Inner {
    /// The backend behind the encryption transformer: every value passes through it.
    pub store: Arc<dyn Store>,
    pub encryption: Arc<encryption::EncryptedStore>,
    pub limits: bosun_serve::Limits,
    pub registry: &'static Registry,
    pub token: String,
    pub kubelet_token: String,
    pub max_body_bytes: usize,
    pub openapi: OpenApi,
    pub log_tls: Option<Arc<rustls::ClientConfig>>,
    pub service_range: services::IpRange,
    pub node_port_range: (u16, u16),
    pub rbac: rbac::Rbac,
    pub sa_keys: sa_token::Keys,
    pub audit: Option<audit::AuditLog>,
    /// Stops the RBAC watch when the server goes away.
    _rbac_watch: tokio_util::sync::DropGuard,
    /// Kinds served for CustomResourceDefinitions.
    pub crds: crds::State,
    /// Request counts and latencies for `/metrics`.
    pub prom: Arc<prom::ApiMetrics>,
    /// ResourceQuota usage reserved by creates not yet written.
    pub quota_pending: quota::Pending,
    /// See [`ApiServerConfig::external_metrics`].
    pub external_metrics: Option<String>,
    /// Watch lines encoded once for every watch that sees the change the same way.
    pub watch_lines: Arc<objects::watch::SharedLines>,
}

/// The API server. Cheap to clone.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl ApiServer {
    /// Builds the server and creates the system namespaces if they are missing.
    pub async fn new(cfg: ApiServerConfig) -> anyhow::Result<ApiServer> {
        let registry = Registry::builtin();
        let log_tls = if cfg.ca_pem.trim().is_empty() {
            None
        } else {
            Some(logs::client_config(&cfg.ca_pem)?)
        };
        let (lo, hi) = cfg.node_port_range;
        if lo == 0 || lo > hi {
            anyhow::bail!("invalid node port range {lo}-{hi}");
        }
        let prom = prom::ApiMetrics::new(cfg.storage_file, cfg.extra_metrics);
        let metered: Arc<dyn Store> = Arc::new(store_metrics::MeteredStore {
            inner: cfg.store,
            metrics: prom.store.clone(),
        });
        let encryption = Arc::new(encryption::EncryptedStore::open(
            metered,
            cfg.encryption_config,
        )?);
        let sa_keys = match &cfg.service_account_key {
            Some(p) => sa_token::Keys::load_or_create(p, &cfg.service_account_issuer)?,
            None => sa_token::Keys::ephemeral(&cfg.service_account_issuer)?,
        };
        let audit = cfg.audit.map(audit::AuditLog::start).transpose()?;
        let rbac = rbac::Rbac::new();
        let rbac_stop = CancellationToken::new();
        tokio::spawn(
            rbac.clone()
                .run(encryption.clone() as Arc<dyn Store>, rbac_stop.clone()),
        );
        let inner = Arc::new(Inner {
            rbac,
            sa_keys,
            audit,
            _rbac_watch: rbac_stop.drop_guard(),
            service_range: services::IpRange::new(cfg.service_cidr)?,
            node_port_range: cfg.node_port_range,
            store: encryption.clone(),
            encryption,
            limits: cfg.limits,
            registry,
            kubelet_token: cfg.kubelet_token.unwrap_or_else(|| cfg.token.clone()),
            token: cfg.token,
            max_body_bytes: cfg.max_body_bytes,
            openapi: OpenApi::build(registry),
            log_tls,
            crds: crds::State::new(),
            prom,
            quota_pending: quota::Pending::default(),
            external_metrics: cfg.external_metrics,
            watch_lines: Arc::default(),
        });
        let server = ApiServer { inner };
        server.ensure_namespaces().await?;
        server.ensure_rbac_defaults().await?;
        crds::refresh(&server.inner)
            .await
            .map_err(|e| anyhow::anyhow!("loading custom resource definitions: {e}"))?;
        crds::spawn_watch(&server.inner);
        server.ensure_priority_classes().await?;
        Ok(server)
    }

    /// Creates the built-in PriorityClasses that are missing.
    async fn ensure_priority_classes(&self) -> anyhow::Result<()> {
        let kind = self
            .inner
            .registry
            .by_resource("scheduling.k8s.io", "v1", "priorityclasses")
            .ok_or_else(|| anyhow::anyhow!("the registry has no priorityclasses"))?;
        for (name, body) in priority::builtin_classes() {
            match objects::create::create_object(&self.inner, kind, None, body, false).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => anyhow::bail!("creating PriorityClass {name}: {}", e.message),
            }
        }
        Ok(())
    }

    async fn ensure_namespaces(&self) -> anyhow::Result<()> {
        let kind = self
            .inner
            .registry
            .by_resource("", "v1", "namespaces")
            .ok_or_else(|| anyhow::anyhow!("registry has no namespaces"))?;
        for ns in SYSTEM_NAMESPACES {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match objects::create::create_object(&self.inner, kind, None, body, false).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => anyhow::bail!("creating namespace {ns}: {e}"),
            }
        }
        Ok(())
    }

    /// Creates the default ClusterRoles and ClusterRoleBindings that are missing.
    async fn ensure_rbac_defaults(&self) -> anyhow::Result<()> {
        let reg = self.inner.registry;
        let group = "rbac.authorization.k8s.io";
        let sets = [
            ("clusterroles", rbac_policy::cluster_roles()),
            ("clusterrolebindings", rbac_policy::cluster_role_bindings()),
        ];
        for (plural, objs) in sets {
            let kind = reg
                .by_resource(group, "v1", plural)
                .ok_or_else(|| anyhow::anyhow!("registry has no {plural}"))?;
            for obj in objs {
                match objects::create::create_object(&self.inner, kind, None, obj, false).await {
                    Ok(_) => {}
                    Err(e) if e.reason == "AlreadyExists" => {}
                    Err(e) => anyhow::bail!("creating the default {plural}: {e}"),
                }
            }
        }
        Ok(())
    }

    /// The whole API, without authentication.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/version", get(discovery::version))
            .route("/healthz", get(discovery::health))
            .route("/livez", get(discovery::health))
            .route("/readyz", get(discovery::health))
            .route("/openapi/v2", get(discovery::openapi_v2))
            .route("/swagger-2.0.0.pb-v1", get(discovery::openapi_v2))
            .route("/openapi/v3", get(discovery::openapi_index))
            .route("/openapi/v3/{*path}", get(discovery::openapi_doc))
            .route("/apis/metrics.k8s.io", get(metrics::group))
            .route("/apis/metrics.k8s.io/v1beta1", get(metrics::resources))
            .route("/apis/metrics.k8s.io/v1beta1/pods", get(metrics::all_pods))
            .route("/apis/metrics.k8s.io/v1beta1/nodes", get(metrics::nodes))
            .route(
                "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
                get(metrics::one_node),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods",
                get(metrics::ns_pods),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}",
                get(metrics::one_pod),
            )
            .route("/apis/custom.metrics.k8s.io", get(custom_metrics::group))
            .route(
                "/apis/custom.metrics.k8s.io/v1beta2",
                get(custom_metrics::resources),
            )
            .route(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/{resource}/{name}/{metric}",
                get(custom_metrics::object_metric),
            )
            .route(
                "/apis/external.metrics.k8s.io",
                get(external_metrics::group),
            )
            .route(
                "/apis/external.metrics.k8s.io/v1beta1",
                get(external_metrics::resources),
            )
            .route(
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}",
                get(external_metrics::metric),
            )
            .route(
                "/apis/logs.bosun.dev/v1/namespaces/{ns}/podlogs",
                get(podlogs::search_ns),
            )
            .route("/apis/logs.bosun.dev/v1/podlogs", get(podlogs::search_all))
            .route("/bosun/v1/traces", get(podlogs::traces))
            .route("/bosun/v1/encryption", get(encryption_status))
            .route("/bosun/v1/encryption/reload", post(encryption_reload))
            .route("/metrics", get(prom::metrics))
            .fallback(request::dispatch)
            .layer(axum::middleware::from_fn_with_state(
                self.inner.clone(),
                prom::track,
            ))
            .with_state(self.inner.clone())
    }

    /// Serves the API over HTTPS (HTTP/2 and HTTP/1.1) with bearer-token
    /// authentication until `shutdown` fires.
    pub async fn serve_tls(
        &self,
        listener: std::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        tls::serve(self.clone(), listener, tls, shutdown).await
    }

    /// The encryption-at-rest layer (to reload its configuration).
    pub fn encryption(&self) -> Arc<encryption::EncryptedStore> {
        self.inner.encryption.clone()
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

/// The providers and keys in use, by name (never the keys themselves).
async fn encryption_status(
    axum::extract::State(inner): axum::extract::State<Arc<Inner>>,
) -> axum::response::Response {
    crate::ctx::json_response(http::StatusCode::OK, &inner.encryption.status())
}

/// Re-reads the EncryptionConfiguration file (after `bosun secrets rotate-key` changed it).
async fn encryption_reload(
    axum::extract::State(inner): axum::extract::State<Arc<Inner>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match inner.encryption.reload() {
        Ok(()) => crate::ctx::json_response(http::StatusCode::OK, &inner.encryption.status()),
        Err(e) => ApiError::bad_request(format!("reloading the encryption configuration: {e:#}"))
            .into_response(),
    }
}
