//! Upstream library shared by the node proxy and the gateway: where a Service's traffic may
//! go, which endpoint takes the next request, and how a request is sent there.
//!
//! * **Endpoint cache** fed by watchers on Services and EndpointSlices
//!   (`discovery.k8s.io/v1`). Only endpoints that are ready and not terminating are used;
//!   a terminating endpoint is dropped at once. Idle keep-alive connections to a removed
//!   endpoint close when its last in-flight request finishes (each endpoint owns its
//!   connection pool, which is dropped with it).
//! * **Balancing** per Service port: P2C over peak-EWMA latency (tower's
//!   [`tower::load::PeakEwma`], the default), round robin, or a consistent-hash ring on a
//!   header or the client IP. See [`balance`].
//! * **Calls** ([`Upstreams::http_call`]): HTTP/1.1 or HTTP/2 (h2c prior knowledge) to the
//!   endpoint, retries of idempotent failures under a retry budget (20% of requests plus
//!   10/s, tower's [`TpsBudget`]), overall and per-try timeouts, outlier ejection, W3C
//!   `traceparent` (a new span id per hop), and Prometheus metrics.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) {
//! use bosun_proxy::upstream::{Target, Upstreams, full};
//! let mut registry = prometheus_client::registry::Registry::default();
//! let (upstreams, run) = Upstreams::new(client, &mut registry);
//! tokio::spawn(run);
//! let target = Target::new("default", "web", 80);
//! let req = http::Request::get("/").body(full("")).unwrap();
//! let resp = upstreams.http_call(&target, req, None).await; // 503 when no endpoints
//! # }
//! ```
//!
//! Errors never surface as Rust errors from `http_call`: no endpoints -> 503, connect
//! failure -> 502, timeout -> 504 (see [`UpstreamError::status`]).

pub mod activation;
pub mod balance;
pub mod load;
pub mod metrics;
pub mod policy;
mod pool;
pub mod split;
pub mod trace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bosun_watch::{Informer, Notice};
use bytes::Bytes;
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use balance::{Balancer, Candidate, LoadTracker, OutlierState, max_ejected};
pub use metrics::Metrics;
use metrics::{DirLabels, StatusLabels, SvcLabels};
pub use policy::{HashKey, LbAlgorithm, OutlierConfig, Policy, UpstreamProtocol};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of requests and responses passing through the upstream layer.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any body (e.g. `hyper::body::Incoming`).
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

/// Request extension carrying the downstream client's address (for `source-ip` hashing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Largest request body buffered so the request can be retried; bigger or unsized
/// (streaming) bodies are sent once.
const MAX_REPLAY_BODY: u64 = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A Service port: by number (the Service's `port`) or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// Where a request goes: a Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    pub port: PortRef,
}

impl Target {
    pub fn new(namespace: &str, service: &str, port: u16) -> Target {
        Target {
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: PortRef::Number(port),
        }
    }
    pub fn named(namespace: &str, service: &str, port_name: &str) -> Target {
        Target {
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: PortRef::Name(port_name.to_string()),
        }
    }
}

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// One port of a Service as seen by the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePortInfo {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
}

/// What a Service port says it speaks, by `appProtocol` or else by its name (the mesh
/// convention: `tcp`, `http`, `grpc-api`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    /// Opaque TCP: never sniffed.
    Tcp,
    /// HTTP of some version.
    Http,
    /// HTTP/2 without TLS (gRPC included).
    H2c,
    /// Nothing said.
    Unknown,
}

/// `appProtocol` `tcp`, `http`, or `kubernetes.io/h2c`/`h2c`/`http2`/`grpc` decide; any
/// other (or none) leaves it to the name: `tcp`/`https`/`tls` (alone or with a `-suffix`)
/// is TCP, `grpc`/`h2c`/`http2`
/// (alone or with a `-suffix`) is h2c, and any other name starting with `http`, `grpc` or
/// `h2c` is HTTP.
pub fn declared_protocol(port_name: &str, app_protocol: Option<&str>) -> Declared {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("tcp") => return Declared::Tcp,
        Some("http") => return Declared::Http,
        Some("kubernetes.io/h2c" | "h2c" | "http2" | "grpc") => return Declared::H2c,
        _ => {}
    }
    let n = port_name.to_ascii_lowercase();
    let named = |p: &str| n == p || n.starts_with(&format!("{p}-"));
    // TLS passes through untouched (the `kubernetes` Service's port is `https`).
    if named("tcp") || named("https") || named("tls") {
        Declared::Tcp
    } else if ["grpc", "h2c", "http2"].into_iter().any(named) {
        Declared::H2c
    } else if ["http", "grpc", "h2c"].iter().any(|p| n.starts_with(p)) {
        Declared::Http
    } else {
        Declared::Unknown
    }
}

impl ServicePortInfo {
    /// Whether the port says it speaks HTTP/2 without TLS (gRPC included).
    pub fn speaks_h2c(&self) -> bool {
        declared_protocol(&self.name, self.app_protocol.as_deref()) == Declared::H2c
    }
}

/// A Service as seen by the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.type` (ClusterIP, NodePort, LoadBalancer, ExternalName).
    pub type_: String,
    /// Virtual IPs (empty for headless Services).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    /// Policy from annotations (defaults where they are invalid).
    pub policy: Policy,
    /// Why the annotations were rejected, if they were.
    pub policy_error: Option<String>,
    /// Set when the Service's workload may be scaled to zero: requests then wait for an
    /// endpoint instead of failing at once (see [`activation`]).
    pub activation: Option<activation::ActivationConfig>,
    /// Request activity (touched only for Services with `activation`).
    pub activity: activation::ActivityCell,
    /// Part of the traffic goes to a canary Service (see [`split`]).
    pub split: Option<split::Split>,
}

impl ServiceInfo {
    pub fn from_service(svc: &Service) -> Option<ServiceInfo> {
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone()?;
        let spec = svc.spec.as_ref()?;
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        cluster_ips.sort();
        cluster_ips.dedup();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePortInfo {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    protocol: match p.protocol.as_deref() {
                        Some("UDP") => Protocol::Udp,
                        Some("SCTP") => Protocol::Sctp,
                        _ => Protocol::Tcp,
                    },
                    node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        let empty = BTreeMap::new();
        let ann = svc.metadata.annotations.as_ref().unwrap_or(&empty);
        let (policy, mut policy_error) = match Policy::from_annotations(ann) {
            Ok(p) => (p, None),
            Err(e) => (Policy::default(), Some(e)),
        };
        let activation = activation::ActivationConfig::from_annotations(ann).map(|(c, e)| {
            if policy_error.is_none() {
                policy_error = e;
            }
            c
        });
        let split = match split::Split::from_annotations(ann) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                policy_error.get_or_insert(e);
                None
            }
            None => None,
        };
        Some(ServiceInfo {
            namespace,
            name,
            type_: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
            cluster_ips,
            ports,
            policy,
            policy_error,
            activation,
            activity: Default::default(),
            split,
        })
    }
}

/// A chosen endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `targetRef.name` of the endpoint (normally the pod).
    pub pod: Option<String>,
}

/// Why a call could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("service {0} not found")]
    UnknownService(String),
    #[error("service {0} has no ready endpoints")]
    NoEndpoints(String),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("upstream {0}: {1}")]
    Upstream(SocketAddr, String),
    #[error("upstream timed out")]
    Timeout,
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A Service whose workload is scaled to zero could not be woken in time (or its queue
    /// of waiting requests is full).
    #[error("service {service}: {reason}")]
    Activation { service: String, reason: String },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::UnknownService(_)
            | UpstreamError::NoEndpoints(_)
            | UpstreamError::Activation { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Connect(..) | UpstreamError::Upstream(..) => StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A plain-text error response.
    pub fn into_response(self) -> Response<Body> {
        error_response(self.status(), &self.to_string())
    }
}

pub fn error_response(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

// ---------------------------------------------------------------------------------------
// Per-endpoint state

/// Connects every pooled connection of an endpoint's client to that endpoint, whatever the
/// request URI says, so requests keep their original Host / `:authority`.
#[derive(Clone)]
struct EndpointConnector {
    addr: SocketAddr,
}

impl tower::Service<Uri> for EndpointConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout")
                })??;
            s.set_nodelay(true)?;
            Ok(TokioIo::new(s))
        })
    }
}

type HttpClient = Client<EndpointConnector, Body>;

struct EndpointState {
    ep: Endpoint,
    /// The pod's entry in the load table, from the first request on.
    pod_load: std::sync::OnceLock<load::Handle>,
    load: LoadTracker,
    outlier: Mutex<OutlierState>,
    h1: Arc<pool::H1Pool>,
    /// HTTP/2 multiplexes requests on one connection: hyper-util's pool suits it.
    h2: HttpClient,
}

impl EndpointState {
    fn new(ep: Endpoint) -> EndpointState {
        let conn = EndpointConnector { addr: ep.addr };
        let h1 = pool::H1Pool::new(ep.addr);
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        EndpointState {
            ep,
            pod_load: std::sync::OnceLock::new(),
            load: LoadTracker::default(),
            outlier: Mutex::new(OutlierState::default()),
            h1,
            h2,
        }
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.outlier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_ejected(now)
    }
}

impl Candidate for Arc<EndpointState> {
    fn addr(&self) -> SocketAddr {
        self.ep.addr
    }
    fn load(&self) -> tower::load::peak_ewma::Cost {
        self.load.cost()
    }
}

/// The ready endpoints of one Service port.
struct PortSet {
    endpoints: Vec<Arc<EndpointState>>,
    balancer: Balancer,
}

type SvcKey = (String, String);

/// A [`SvcKey`] borrowed as two `&str`, so that the per-request lookups allocate nothing
/// (`HashMap<SvcKey, _>::get` wants a `&Q` that `SvcKey` borrows as).
trait SvcKeyRef {
    fn parts(&self) -> (&str, &str);
}

impl SvcKeyRef for SvcKey {
    fn parts(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl SvcKeyRef for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn SvcKeyRef + 'a> for SvcKey {
    fn borrow(&self) -> &(dyn SvcKeyRef + 'a) {
        self
    }
}

// Hashes as the tuple `(String, String)` does (each field in order), as `Borrow` requires.
impl std::hash::Hash for dyn SvcKeyRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let (a, b) = self.parts();
        a.hash(h);
        b.hash(h);
    }
}

impl PartialEq for dyn SvcKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn SvcKeyRef + '_ {}

fn lookup<'m, V>(map: &'m HashMap<SvcKey, V>, ns: &str, name: &str) -> Option<&'m V> {
    map.get(&(ns, name) as &dyn SvcKeyRef)
}

/// What every request to one Service touches, resolved once per Service rather than per
/// request: its metric series (no label set to build and hash), retry budget and load entry.
struct SvcHandles {
    labels: SvcLabels,
    metrics: Metrics,
    budget: TpsBudget,
    duration: crate::sharded::Histogram,
    rx: crate::sharded::Counter,
    tx: crate::sharded::Counter,
    /// `upstream_requests` by status: the few statuses a Service answers with.
    requests: crate::sharded::Series<u16>,
    load: load::Handle,
}

impl SvcHandles {
    fn new(namespace: &str, service: &str, metrics: &Metrics) -> SvcHandles {
        let labels = SvcLabels {
            namespace: namespace.to_string(),
            service: service.to_string(),
        };
        let dir = |direction| DirLabels {
            namespace: namespace.to_string(),
            service: service.to_string(),
            direction,
        };
        // One statement each: `get_or_create` hands out a read guard of the family, and
        // the next one may need its write lock.
        let duration = metrics.duration.get_or_create(&labels).clone();
        let rx = metrics.bytes.get_or_create(&dir("rx")).clone();
        let tx = metrics.bytes.get_or_create(&dir("tx")).clone();
        SvcHandles {
            budget: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
            duration,
            rx,
            tx,
            requests: Default::default(),
            load: load::table().handle(namespace, load::Subject::Service(service.to_string())),
            metrics: metrics.clone(),
            labels,
        }
    }

    fn count_request(&self, status: u16) {
        self.requests.inc(status, || {
            self.metrics
                .requests
                .get_or_create(&StatusLabels {
                    namespace: self.labels.namespace.clone(),
                    service: self.labels.service.clone(),
                    status,
                })
                .clone()
        });
    }
}

/// A target's Service, endpoint set and handles, looked up together.
struct Resolved {
    info: Arc<ServiceInfo>,
    set: Arc<PortSet>,
    handles: Arc<SvcHandles>,
}

#[derive(Clone, Debug)]
struct SliceData {
    service: String,
    /// (port name, target port number)
    ports: Vec<(String, u16)>,
    /// Ready, non-terminating addresses.
    addrs: Vec<(IpAddr, Option<String>)>,
}

#[derive(Default)]
struct State {
    services: HashMap<SvcKey, Arc<ServiceInfo>>,
    slices: HashMap<SvcKey, SliceData>,
    sets: HashMap<SvcKey, HashMap<String, Arc<PortSet>>>,
    handles: HashMap<SvcKey, Arc<SvcHandles>>,
}

struct Inner {
    state: RwLock<State>,
    metrics: Metrics,
    changed: watch::Sender<u64>,
    /// True once the watchers listed Services and EndpointSlices (always, when detached).
    synced: watch::Sender<bool>,
    /// Bumped after every EndpointSlice change (wakes requests held for activation).
    endpoints_changed: watch::Sender<u64>,
    /// Asks the activity reporter to write now (a request started waiting).
    report_now: tokio::sync::Notify,
    /// Where spans of forwarded requests go, and the component name they carry.
    tracer: std::sync::OnceLock<(trace::Tracer, &'static str)>,
}

/// What one call learned for its span.
#[derive(Default)]
struct Hop {
    /// A tracer is attached: fill in the rest.
    enabled: bool,
    ids: Option<trace::SpanIds>,
    endpoint: Option<Endpoint>,
    attempts: u32,
}

/// The endpoint cache and HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

/// Result of [`Upstreams::pick`]: an endpoint plus the bookkeeping of one use of it.
/// Report the outcome with [`Picked::success`] / [`Picked::failure`]; dropping it without
/// a report only records the latency.
pub struct Picked {
    pub endpoint: Endpoint,
    state: Arc<EndpointState>,
    set: Arc<PortSet>,
    handle: Option<tower::load::peak_ewma::Handle>,
    outlier: OutlierConfig,
    handles: Arc<SvcHandles>,
    /// Counts the request in the pod's load figures until the outcome is reported.
    _load: Option<load::InFlight>,
}

impl Picked {
    /// The request/connection succeeded (clears the consecutive-error count).
    pub fn success(mut self) {
        self.handle.take();
        self.state
            .outlier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .success(Instant::now(), &self.outlier);
    }

    /// The endpoint failed (5xx, reset, connect error); may eject it.
    pub fn failure(mut self) {
        self.handle.take();
        let now = Instant::now();
        let ejected_now = self
            .set
            .endpoints
            .iter()
            .filter(|e| !Arc::ptr_eq(e, &self.state) && e.is_ejected(now))
            .count();
        let may =
            ejected_now < max_ejected(self.set.endpoints.len(), self.outlier.max_ejection_percent);
        let ejected = self
            .state
            .outlier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failure(now, &self.outlier, may);
        if let Some(d) = ejected {
            let h = &self.handles;
            tracing::info!(
                namespace = %h.labels.namespace, service = %h.labels.service,
                endpoint = %self.endpoint.addr, seconds = d.as_secs_f64(),
                "endpoint ejected after consecutive errors"
            );
            h.metrics.ejections.get_or_create(&h.labels).inc();
        }
    }

    /// Marks the end of the measured latency (e.g. when a TCP connection is established)
    /// without reporting an outcome yet.
    pub fn finish_latency(&mut self) {
        self.handle.take();
    }
}

impl Upstreams {
    /// An endpoint cache fed by watchers on `client`. The returned future runs the watchers
    /// until dropped (spawn it); metrics are registered in `registry`.
    pub fn new(
        client: kube::Client,
        registry: &mut Registry,
    ) -> (
        Upstreams,
        impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let u = Upstreams::detached(registry);
        u.inner.synced.send_replace(false);
        let run = u.clone().run_watchers(client);
        (u, run)
    }

    /// An endpoint cache without watchers; fill it with [`Upstreams::apply_service`] and
    /// [`Upstreams::apply_endpoint_slice`] (tests, static configurations).
    pub fn detached(registry: &mut Registry) -> Upstreams {
        Upstreams {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                metrics: Metrics::new(registry),
                changed: watch::channel(0).0,
                synced: watch::channel(true).0,
                endpoints_changed: watch::channel(0).0,
                report_now: tokio::sync::Notify::new(),
                tracer: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Records the span of a relayed connection (sampled `ids` only, when a tracer is
    /// attached).
    #[allow(clippy::too_many_arguments)]
    pub fn trace_connection(
        &self,
        ids: Option<trace::SpanIds>,
        protocol: &'static str,
        service: String,
        upstream: Option<std::net::SocketAddr>,
        started: std::time::SystemTime,
        duration: Duration,
        bytes: (u64, u64),
    ) {
        if let (Some((tracer, component)), Some(ids)) = (self.inner.tracer.get(), ids)
            && ids.sampled()
        {
            tracer.record(trace::Span::connection(
                ids, component, protocol, service, upstream, started, duration, bytes,
            ));
        }
    }

    /// Records a span of every sampled HTTP request forwarded from now on in `tracer`,
    /// named after `component` (`gateway`, `proxy`). Set once; later calls are ignored.
    pub fn set_tracer(&self, tracer: trace::Tracer, component: &'static str) {
        let _ = self.inner.tracer.set((tracer, component));
    }

    /// Notified (value = change counter) whenever the set of Services changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Waits until the cache holds the API's Services and EndpointSlices, so that serving
    /// starts with every endpoint known (not with "no endpoints" answers).
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// All known Services.
    pub fn services(&self) -> Vec<Arc<ServiceInfo>> {
        let st = self.read();
        let mut v: Vec<_> = st.services.values().cloned().collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<ServiceInfo>> {
        lookup(&self.read().services, namespace, name).cloned()
    }

    /// Ready endpoints of a target (ejected ones included).
    pub fn endpoints(&self, target: &Target) -> Vec<Endpoint> {
        self.port_set(target)
            .map(|(_, set)| set.endpoints.iter().map(|e| e.ep.clone()).collect())
            .unwrap_or_default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn endpoints_bump(&self) {
        self.inner.endpoints_changed.send_modify(|v| *v += 1);
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|v| *v += 1);
    }

    // ---- cache updates ----------------------------------------------------------------

    pub fn apply_service(&self, svc: &Service) {
        let Some(info) = ServiceInfo::from_service(svc) else {
            return;
        };
        if let Some(e) = &info.policy_error {
            tracing::warn!(namespace = %info.namespace, service = %info.name, "{e}; using defaults");
        }
        let key = (info.namespace.clone(), info.name.clone());
        let mut info = info;
        let mut st = self.write();
        if let Some(old) = st.services.get(&key) {
            if **old == info {
                return;
            }
            info.activity = old.activity.clone();
        }
        st.services.insert(key, Arc::new(info));
        drop(st);
        self.bump();
    }

    pub fn delete_service(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let mut st = self.write();
        let removed = st.services.remove(&key).is_some();
        st.handles.remove(&key);
        drop(st);
        if removed {
            self.bump();
        }
    }

    pub fn apply_endpoint_slice(&self, slice: &EndpointSlice) {
        let ns = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(name) = slice.metadata.name.clone() else {
            return;
        };
        let Some(data) = slice_data(slice) else {
            // Not owned by a Service: drop whatever we had under that name.
            self.delete_endpoint_slice(&ns, &name);
            return;
        };
        let mut st = self.write();
        let old_service = st
            .slices
            .insert((ns.clone(), name), data.clone())
            .map(|d| d.service);
        rebuild(&mut st, &ns, &data.service);
        if let Some(old) = old_service
            && old != data.service
        {
            rebuild(&mut st, &ns, &old);
        }
        drop(st);
        self.endpoints_bump();
    }

    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) {
        let mut st = self.write();
        if let Some(d) = st.slices.remove(&(namespace, name) as &dyn SvcKeyRef) {
            rebuild(&mut st, namespace, &d.service);
        }
        drop(st);
        self.endpoints_bump();
    }

    fn replace_services(&self, all: Vec<Service>) {
        let mut st = self.write();
        let infos: HashMap<SvcKey, Arc<ServiceInfo>> = all
            .iter()
            .filter_map(ServiceInfo::from_service)
            .map(|mut i| {
                let key = (i.namespace.clone(), i.name.clone());
                if let Some(old) = st.services.get(&key) {
                    i.activity = old.activity.clone();
                }
                (key, Arc::new(i))
            })
            .collect();
        st.handles.retain(|k, _| infos.contains_key(k));
        st.services = infos;
        drop(st);
        self.bump();
    }

    fn replace_slices(&self, all: Vec<EndpointSlice>) {
        let mut st = self.write();
        let mut affected: HashSet<SvcKey> = st
            .slices
            .iter()
            .map(|((ns, _), d)| (ns.clone(), d.service.clone()))
            .collect();
        st.slices.clear();
        for s in &all {
            let ns = s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            if let (Some(name), Some(d)) = (s.metadata.name.clone(), slice_data(s)) {
                affected.insert((ns.clone(), d.service.clone()));
                st.slices.insert((ns, name), d);
            }
        }
        for (ns, svc) in affected {
            rebuild(&mut st, &ns, &svc);
        }
        drop(st);
        self.endpoints_bump();
    }

    async fn run_watchers(self, client: kube::Client) -> anyhow::Result<()> {
        // The informers watch until this future is dropped.
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop_watches = stop.clone().drop_guard();
        let svcs = Informer::<Service>::start(kube::Api::all(client.clone()), stop.clone());
        let slices = Informer::<EndpointSlice>::start(kube::Api::all(client), stop);
        enum Ev {
            Svc(Notice<Service>),
            Slice(Notice<EndpointSlice>),
        }
        let mut events = futures::stream::select(
            svcs.notices().map(Ev::Svc).boxed(),
            slices.notices().map(Ev::Slice).boxed(),
        );
        let (mut svcs_listed, mut slices_listed) = (false, false);
        // A touched object is applied as the cache has it now (by name: gone means deleted);
        // a complete list replaces everything, dropping what was deleted unseen. Between
        // watch errors (retried with backoff) the last known state keeps serving.
        while let Some(ev) = events.next().await {
            match ev {
                Ev::Svc(Notice::Touched(s)) => {
                    match svcs.store().get(&ObjectRef::from_obj(s.as_ref())) {
                        Some(now) => self.apply_service(&now),
                        None => self.delete_service(
                            s.metadata.namespace.as_deref().unwrap_or("default"),
                            s.metadata.name.as_deref().unwrap_or_default(),
                        ),
                    }
                }
                Ev::Svc(Notice::Synced) => {
                    let all = svcs.store().state();
                    self.replace_services(all.iter().map(|s| Service::clone(s)).collect());
                    svcs_listed = true;
                }
                Ev::Slice(Notice::Touched(s)) => {
                    match slices.store().get(&ObjectRef::from_obj(s.as_ref())) {
                        Some(now) => self.apply_endpoint_slice(&now),
                        None => self.delete_endpoint_slice(
                            s.metadata.namespace.as_deref().unwrap_or("default"),
                            s.metadata.name.as_deref().unwrap_or_default(),
                        ),
                    }
                }
                Ev::Slice(Notice::Synced) => {
                    let all = slices.store().state();
                    self.replace_slices(all.iter().map(|s| EndpointSlice::clone(s)).collect());
                    slices_listed = true;
                }
            }
            if svcs_listed && slices_listed && !*self.inner.synced.borrow() {
                self.inner.synced.send_replace(true);
            }
        }
        Ok(())
    }

    // ---- picking ------------------------------------------------------------------------

    fn port_set(&self, target: &Target) -> Option<(Arc<ServiceInfo>, Arc<PortSet>)> {
        Some(port_set_in(&self.read(), target))
    }

    /// `target`'s Service, endpoints and handles (created on its first request).
    fn resolve(&self, target: &Target) -> Resolved {
        let (info, set, handles) = {
            let st = self.read();
            let (info, set) = port_set_in(&st, target);
            let handles = lookup(&st.handles, &target.namespace, &target.service).cloned();
            (info, set, handles)
        };
        let handles = handles.unwrap_or_else(|| self.handles(target));
        Resolved { info, set, handles }
    }

    /// Like [`Upstreams::resolve`], after sending a share of the traffic to a canary
    /// Service (see [`split`]): the split decision and the lookups share one read lock.
    fn resolve_split(&self, target: &Target, headers: &HeaderMap) -> (Option<Target>, Resolved) {
        let (canary, info, set, handles) = {
            let st = self.read();
            let canary = split_in(&st, target, Some(headers));
            let t = canary.as_ref().unwrap_or(target);
            let (info, set) = port_set_in(&st, t);
            let handles = lookup(&st.handles, &t.namespace, &t.service).cloned();
            (canary, info, set, handles)
        };
        let t = canary.as_ref().unwrap_or(target);
        let handles = handles.unwrap_or_else(|| self.handles(t));
        (canary, Resolved { info, set, handles })
    }

    fn handles(&self, target: &Target) -> Arc<SvcHandles> {
        let mut st = self.write();
        if let Some(h) = lookup(&st.handles, &target.namespace, &target.service) {
            return h.clone();
        }
        let h = Arc::new(SvcHandles::new(
            &target.namespace,
            &target.service,
            &self.inner.metrics,
        ));
        st.handles.insert(
            (target.namespace.clone(), target.service.clone()),
            h.clone(),
        );
        h
    }

    /// Chooses an endpoint of `target` with the Service's policy (or `policy`), hashing
    /// `hash_key` for consistent hashing. Ejected endpoints are skipped while others remain.
    pub fn pick(
        &self,
        target: &Target,
        policy: Option<&Policy>,
        hash_key: Option<&[u8]>,
    ) -> Result<Picked, UpstreamError> {
        self.pick_excluding(target, policy, hash_key, &[])
    }

    /// Like [`Upstreams::pick`], avoiding `tried` endpoints when others are available.
    pub fn pick_excluding(
        &self,
        target: &Target,
        policy: Option<&Policy>,
        hash_key: Option<&[u8]>,
        tried: &[SocketAddr],
    ) -> Result<Picked, UpstreamError> {
        let r = self.resolve(target);
        let policy = policy.unwrap_or(&r.info.policy);
        pick_in(target, r.set, r.handles, policy, hash_key, tried)
    }

    // ---- traffic split ---------------------------------------------------------------------

    /// Where a request (with `headers`) or an L4 connection (without) to `target` goes when
    /// its Service splits traffic toward a canary (see [`split`]): `Some` canary target.
    pub fn split_target(&self, target: &Target, headers: Option<&HeaderMap>) -> Option<Target> {
        split_in(&self.read(), target, headers)
    }

    // ---- scale to zero -------------------------------------------------------------------

    /// For a Service whose workload may be scaled to zero: records the request and, when the
    /// Service has no ready endpoint, waits for one (see [`activation`]). Returns at once
    /// for other Services. The node proxy calls this for TCP connections; `http_call` does
    /// it itself. Hold the guard while the connection is open: it counts as activity.
    pub async fn activate_target(
        &self,
        target: &Target,
    ) -> Result<Option<activation::OpenGuard>, UpstreamError> {
        match self.port_set(target) {
            Some((info, set)) if info.activation.is_some() => self
                .activate(target, &info, set.endpoints.is_empty())
                .await
                .map(Some),
            _ => Ok(None),
        }
    }

    async fn activate(
        &self,
        target: &Target,
        info: &ServiceInfo,
        no_endpoints: bool,
    ) -> Result<activation::OpenGuard, UpstreamError> {
        let activity = &info.activity.0;
        let open = activity.open();
        activity.touch();
        let Some(cfg) = &info.activation else {
            return Ok(open);
        };
        if !no_endpoints {
            return Ok(open);
        }
        let Some(place) = activity.enter(cfg.queue) else {
            return Err(UpstreamError::Activation {
                service: svc_name(target),
                reason: format!(
                    "{} requests already wait for deployment {} to start \
                     (annotation {})",
                    cfg.queue,
                    cfg.deployment,
                    activation::QUEUE_ANNOTATION
                ),
            });
        };
        // Subscribe before looking, so an endpoint that arrives in between is not missed.
        let mut changes = self.inner.endpoints_changed.subscribe();
        self.inner.report_now.notify_one();
        let ready = async {
            loop {
                if self
                    .port_set(target)
                    .is_some_and(|(_, s)| !s.endpoints.is_empty())
                {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let started = Instant::now();
        let res = tokio::time::timeout(cfg.timeout, ready).await;
        // The wait counts as activity until its end (the idle window starts afterwards).
        activity.touch();
        // Report the end of the wait promptly too: a stale "waiting" could wake the
        // Deployment again after it is scaled down.
        drop(place);
        self.inner.report_now.notify_one();
        match res {
            Ok(()) => {
                tracing::debug!(
                    service = %svc_name(target),
                    waited_ms = started.elapsed().as_millis() as u64,
                    "endpoint ready; forwarding held request"
                );
                Ok(open)
            }
            Err(_) => Err(UpstreamError::Activation {
                service: svc_name(target),
                reason: format!(
                    "deployment {} is scaled to zero and no endpoint became ready within {}s \
                     (annotation {})",
                    cfg.deployment,
                    cfg.timeout.as_secs_f64(),
                    activation::TIMEOUT_ANNOTATION
                ),
            }),
        }
    }

    /// Request activity of every Service that may be scaled to zero (`NAMESPACE/NAME`).
    pub fn activity(&self) -> BTreeMap<String, activation::Report> {
        self.read()
            .services
            .values()
            .filter(|i| i.activation.is_some())
            .map(|i| {
                (
                    format!("{}/{}", i.namespace, i.name),
                    activation::Report {
                        last_ms: i.activity.0.last_ms(),
                        waiting: i.activity.0.waiting(),
                        open: i.activity.0.open_count(),
                    },
                )
            })
            .collect()
    }

    /// Writes [`Upstreams::activity`] into the Lease `kube-node-lease/LEASE` whenever it
    /// changed, checking once a second and at once when a request starts waiting, and
    /// renews it every [`activation::RENEW_INTERVAL`] (its `leaseDurationSeconds` is
    /// [`activation::LEASE_DURATION`]). Runs until dropped.
    pub async fn report_activity(self, client: kube::Client, lease: String) {
        use k8s_openapi::api::coordination::v1::Lease;
        let api: kube::Api<Lease> = kube::Api::namespaced(client, activation::LEASE_NAMESPACE);
        let mut written: Option<BTreeMap<String, activation::Report>> = None;
        let mut written_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.report_now.notified() => {}
            }
            let now = self.activity();
            // Unchanged activity is still renewed, so the Lease does not expire while this
            // node lives.
            let renew = written_at.is_none_or(|t| t.elapsed() >= activation::RENEW_INTERVAL);
            if written.as_ref() == Some(&now) && !renew {
                continue;
            }
            match write_activity(&api, &lease, &now).await {
                Ok(()) => {
                    written = Some(now);
                    written_at = Some(Instant::now());
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::warn!(%lease, "writing service activity: {e}");
                    }
                }
            }
        }
    }

    // ---- HTTP ---------------------------------------------------------------------------

    /// Sends `req` to an endpoint of `target` with `policy` (the Service's annotations when
    /// None) and returns the response, or an error response (400/502/503/504). Put a
    /// [`ClientAddr`] in the request extensions for `source-ip` hashing.
    pub async fn http_call<B>(
        &self,
        target: &Target,
        req: Request<B>,
        policy: Option<&Policy>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (canary, resolved) = self.resolve_split(target, req.headers());
        let target = canary.as_ref().unwrap_or(target);
        let h = resolved.handles.clone();
        let tracing = self.inner.tracer.get();
        let mut hop = Hop {
            enabled: tracing.is_some(),
            ..Hop::default()
        };
        let span_start = tracing.map(|_| {
            (
                std::time::SystemTime::now(),
                req.method().clone(),
                req.uri().path().to_string(),
                req.extensions()
                    .get::<trace::RouteName>()
                    .map(|r| r.0.clone()),
            )
        });
        let service_load = h.load.start();
        let Resolved { info, set, .. } = resolved;
        let mut open: Option<activation::OpenGuard> = None;
        // Only Services whose workload may be at zero pay for this (one atomic store).
        let (held, set) = match &info.activation {
            Some(_) => {
                let held = self
                    .activate(target, &info, set.endpoints.is_empty())
                    .await
                    .map(Some);
                // Endpoints may have arrived while the request was held.
                (held, None)
            }
            None => (Ok(None), Some(set)),
        };
        let resp = match held {
            Err(e) => e.into_response(),
            Ok(held) => {
                // Open until the response body ends (below) or, for an upgrade, until the
                // spliced connection closes (`upgrade_call`).
                let mut req = req;
                if let Some(g) = held {
                    req.extensions_mut().insert(g.clone());
                    open = Some(g);
                }
                let policy = policy.unwrap_or(&info.policy);
                let call = self.call_inner(target, req, policy, &h, set, &mut hop);
                match policy.timeout {
                    Some(t) => match tokio::time::timeout(t, call).await {
                        Ok(r) => r,
                        Err(_) => UpstreamError::Timeout.into_response(),
                    },
                    None => call.await,
                }
            }
        };
        drop(service_load);
        h.duration.observe(started.elapsed().as_secs_f64());
        if let (Some((tracer, component)), Some((wall, method, path, route)), Some(ids)) =
            (tracing, span_start, hop.ids)
            && ids.sampled()
        {
            tracer.record(trace::Span {
                ids,
                component,
                method,
                path,
                service: format!("{}/{}", h.labels.namespace, h.labels.service),
                route,
                upstream: hop.endpoint.as_ref().map(|e| e.addr),
                pod: hop.endpoint.and_then(|e| e.pod),
                status: resp.status().as_u16(),
                attempts: hop.attempts,
                start_unix_nanos: wall
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                duration: started.elapsed(),
                protocol: "http",
                bytes: None,
            });
        }
        h.count_request(resp.status().as_u16());
        let tx = h.tx.clone();
        resp.map(|b| {
            b.map_frame(move |f| {
                let _open = &open;
                if let Some(d) = f.data_ref() {
                    tx.inc_by(d.len() as u64);
                }
                f
            })
            .boxed()
        })
    }

    async fn call_inner<B>(
        &self,
        target: &Target,
        req: Request<B>,
        policy: &Policy,
        h: &Arc<SvcHandles>,
        // The endpoints looked up with the Service (None: look them up again).
        mut set: Option<Arc<PortSet>>,
        hop: &mut Hop,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let (m, labels) = (&h.metrics, &h.labels);
        let (mut parts, body) = req.into_parts();
        let client_addr = parts.extensions.get::<ClientAddr>().map(|c| c.0);
        // Only the consistent-hash balancer reads a key: no client address is formatted
        // per request for the others.
        let hash_key: Option<Vec<u8>> = match &policy.hash_key {
            _ if policy.balancer != LbAlgorithm::ConsistentHash => None,
            HashKey::Header(h) => parts
                .headers
                .get(h)
                .map(|v| v.as_bytes().to_vec())
                .or_else(|| client_addr.map(|a| a.ip().to_string().into_bytes())),
            HashKey::SourceIp => client_addr.map(|a| a.ip().to_string().into_bytes()),
        };
        // The span of this hop: chosen by the caller (the gateway), or a child of the
        // incoming trace (a new one without it).
        let ids = parts
            .extensions
            .remove::<trace::SpanIds>()
            .unwrap_or_else(|| {
                trace::SpanIds::begin(
                    parts
                        .headers
                        .get(trace::TRACEPARENT)
                        .and_then(|v| v.to_str().ok()),
                )
            });
        parts.headers.insert(trace::TRACEPARENT, ids.header_value());
        hop.ids = Some(ids);
        let downstream_version = parts.version;
        if is_upgrade(&parts) {
            return self
                .upgrade_call(
                    target,
                    parts,
                    boxed(body),
                    hop,
                    policy,
                    hash_key.as_deref(),
                    labels,
                )
                .await;
        }
        strip_hop_by_hop(&mut parts.headers);
        let rx = &h.rx;
        // Small sized bodies are buffered so that the request can be replayed.
        let replayable = body.is_end_stream()
            || body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_REPLAY_BODY);
        let mut stream_body: Option<Body> = None;
        let buffered: Option<Bytes> = if replayable {
            match body.collect().await {
                Ok(c) => {
                    let b = c.to_bytes();
                    rx.inc_by(b.len() as u64);
                    Some(b)
                }
                Err(e) => {
                    return UpstreamError::BadRequest(format!(
                        "reading request body: {}",
                        e.into()
                    ))
                    .into_response();
                }
            }
        } else {
            let rx = rx.clone();
            stream_body = Some(
                body.map_err(Into::into)
                    .map_frame(move |f| {
                        if let Some(d) = f.data_ref() {
                            rx.inc_by(d.len() as u64);
                        }
                        f
                    })
                    .boxed(),
            );
            None
        };
        let idempotent = policy.retry_non_idempotent
            || matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let budget = &h.budget;
        budget.deposit();
        let use_h2 = match policy.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::SameAsDownstream => downstream_version == Version::HTTP_2,
        };
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0u32;
        loop {
            // A retry looks the endpoints up again: the one that failed may be gone.
            let set = match set.take() {
                Some(s) => s,
                None => port_set_in(&self.read(), target).1,
            };
            let picked = match pick_in(target, set, h.clone(), policy, hash_key.as_deref(), &tried)
            {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let addr = picked.endpoint.addr;
            tried.push(addr);
            if hop.enabled {
                hop.endpoint = Some(picked.endpoint.clone());
                hop.attempts = attempt + 1;
            }
            let body = match (&buffered, stream_body.take()) {
                (Some(b), _) => full(b.clone()),
                (None, Some(s)) => s,
                // A streamed body was consumed by an earlier attempt; we never retry those.
                (None, None) => {
                    return UpstreamError::Upstream(addr, "request body already sent".into())
                        .into_response();
                }
            };
            let fut = if use_h2 {
                let req = match build_h2_request(&parts, body, addr) {
                    Ok(r) => r,
                    Err(e) => return e.into_response(),
                };
                let call = picked.state.h2.request(req);
                futures::future::Either::Left(async move {
                    match call.await {
                        Ok(r) => Ok(r.map(boxed)),
                        Err(e) if e.is_connect() => Err(pool::SendError::Connect(error_chain(&e))),
                        Err(e) => Err(pool::SendError::Http(error_chain(&e))),
                    }
                })
            } else {
                futures::future::Either::Right(picked.state.h1.send(h1_request(&parts, body, addr)))
            };
            let res = match policy.per_try_timeout {
                Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| ()),
                None => Ok(fut.await),
            };
            let can_retry = |idem: bool| attempt < policy.retries && buffered.is_some() && idem;
            let (err, retry_ok) = match res {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    // While a retry is possible, a small response is read whole before it
                    // is passed on: an endpoint that dies mid-body (a pod stopping while a
                    // request raced its removal from the endpoints) then costs a retry
                    // instead of a client getting a truncated answer.
                    let whole = can_retry(idempotent)
                        && parts.method != Method::HEAD
                        && http_body::Body::size_hint(resp.body())
                            .exact()
                            .is_some_and(|n| n > 0 && n <= MAX_REPLAY_BODY);
                    let resp = if whole {
                        let (mut rparts, rbody) = resp.into_parts();
                        match rbody.collect().await {
                            Ok(c) => {
                                strip_hop_by_hop(&mut rparts.headers);
                                Response::from_parts(rparts, full(c.to_bytes()))
                            }
                            Err(e) => {
                                picked.failure();
                                let err = UpstreamError::Upstream(
                                    addr,
                                    format!("response cut short: {}", error_chain(&*e)),
                                );
                                if !budget.withdraw() {
                                    m.retries_exhausted_budget.get_or_create(labels).inc();
                                    return err.into_response();
                                }
                                tracing::debug!(%addr, "retrying after: {err}");
                                m.retries.get_or_create(labels).inc();
                                attempt += 1;
                                continue;
                            }
                        }
                    } else {
                        finish_response(resp)
                    };
                    if status.is_server_error() {
                        picked.failure();
                    } else {
                        picked.success();
                    }
                    let retryable_status = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if !(retryable_status && can_retry(idempotent)) {
                        return resp;
                    }
                    if !budget.withdraw() {
                        m.retries_exhausted_budget.get_or_create(labels).inc();
                        return resp;
                    }
                    m.retries.get_or_create(labels).inc();
                    attempt += 1;
                    continue;
                }
                Ok(Err(pool::SendError::Connect(e))) => {
                    m.connect_errors.get_or_create(labels).inc();
                    picked.failure();
                    // Nothing was sent: safe to retry whatever the method.
                    (UpstreamError::Connect(addr, e), can_retry(true))
                }
                Ok(Err(pool::SendError::Http(e))) => {
                    picked.failure();
                    (UpstreamError::Upstream(addr, e), can_retry(idempotent))
                }
                Err(_) => {
                    picked.failure();
                    (UpstreamError::Timeout, can_retry(idempotent))
                }
            };
            if !retry_ok {
                return err.into_response();
            }
            if !budget.withdraw() {
                m.retries_exhausted_budget.get_or_create(labels).inc();
                return err.into_response();
            }
            tracing::debug!(%addr, "retrying after: {err}");
            m.retries.get_or_create(labels).inc();
            attempt += 1;
        }
    }
}

/// The span protocol of an `Upgrade` request: `websocket`, else `upgrade`.
pub fn upgrade_protocol(h: &http::HeaderMap) -> &'static str {
    let ws = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if ws { "websocket" } else { "upgrade" }
}

impl Upstreams {
    /// HTTP/1.1 `Upgrade` (WebSocket and the like): relayed on a dedicated connection to
    /// one endpoint; after `101 Switching Protocols` both sides are spliced. Not retried.
    #[allow(clippy::too_many_arguments)]
    async fn upgrade_call(
        &self,
        target: &Target,
        mut parts: http::request::Parts,
        body: Body,
        hop: &mut Hop,
        policy: &Policy,
        hash_key: Option<&[u8]>,
        labels: &SvcLabels,
    ) -> Response<Body> {
        let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let open = parts.extensions.remove::<activation::OpenGuard>();
        let protocol = upgrade_protocol(&parts.headers);
        let picked = match self.pick(target, Some(policy), hash_key) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let addr = picked.endpoint.addr;
        hop.endpoint = Some(picked.endpoint.clone());
        hop.attempts = 1;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.inner
                    .metrics
                    .connect_errors
                    .get_or_create(labels)
                    .inc();
                picked.failure();
                return UpstreamError::Connect(addr, e.to_string()).into_response();
            }
            Err(_) => {
                self.inner
                    .metrics
                    .connect_errors
                    .get_or_create(labels)
                    .inc();
                picked.failure();
                return UpstreamError::Connect(addr, "timeout".into()).into_response();
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => {
                    picked.failure();
                    return UpstreamError::Upstream(addr, e.to_string()).into_response();
                }
            };
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        // Keep Connection/Upgrade (they are the point); drop other hop-by-hop headers.
        let conn_hdr = parts.headers.get(header::CONNECTION).cloned();
        let upgrade_hdr = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let (Some(c), Some(u)) = (conn_hdr, upgrade_hdr) {
            parts.headers.insert(header::CONNECTION, c);
            parts.headers.insert(header::UPGRADE, u);
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: Uri = match pq.parse() {
            Ok(u) => u,
            Err(e) => return UpstreamError::BadRequest(e.to_string()).into_response(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = parts.headers;
        let mut resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                picked.failure();
                return UpstreamError::Upstream(addr, e.to_string()).into_response();
            }
        };
        picked.success();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return finish_response(resp);
        }
        let upstream = hyper::upgrade::on(&mut resp);
        if let Some(downstream) = downstream {
            let ids = hop.ids.as_ref().map(trace::SpanIds::child);
            let (me, service) = (
                self.clone(),
                format!("{}/{}", labels.namespace, labels.service),
            );
            tokio::spawn(async move {
                // A scale-to-zero Service is in use while the connection is open.
                let _open = open;
                if let (Ok(d), Ok(u)) = (downstream.await, upstream.await) {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    let (wall, began) = (std::time::SystemTime::now(), Instant::now());
                    let bytes = tokio::io::copy_bidirectional(&mut d, &mut u)
                        .await
                        .unwrap_or((0, 0));
                    me.trace_connection(
                        ids,
                        protocol,
                        service,
                        Some(addr),
                        wall,
                        began.elapsed(),
                        bytes,
                    );
                }
            });
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, boxed(body))
    }
}

async fn write_activity(
    api: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    lease: &str,
    reports: &BTreeMap<String, activation::Report>,
) -> Result<(), kube::Error> {
    use kube::api::{Patch, PatchParams, PostParams};
    let body = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease,
            "namespace": activation::LEASE_NAMESPACE,
            "labels": {activation::ACTIVITY_LABEL: "true"},
            "annotations": {activation::ACTIVITY_ANNOTATION: activation::encode(reports)},
        },
        "spec": {
            "holderIdentity": lease,
            "leaseDurationSeconds": activation::LEASE_DURATION.as_secs(),
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            ),
        },
    });
    match api
        .patch(lease, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let obj = serde_json::from_value(body.clone()).map_err(kube::Error::SerdeError)?;
            match api.create(&PostParams::default(), &obj).await {
                Err(kube::Error::Api(s)) if s.code == 409 => api
                    .patch(lease, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map(drop),
                r => r.map(drop),
            }
        }
        r => r.map(drop),
    }
}

fn is_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn svc_name(t: &Target) -> String {
    format!("{}/{}", t.namespace, t.service)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn finish_response<B>(resp: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, boxed(body))
}

/// The request for an HTTP/1.1 connection to `addr`: the client's origin-form target and
/// headers, `Host` kept (taken from an absolute target or `addr` when the client sent none).
fn h1_request(parts: &http::request::Parts, body: Body, addr: SocketAddr) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    let mut headers = parts.headers.clone();
    if !headers.contains_key(header::HOST) {
        let host = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()),
            None => HeaderValue::from_str(&addr.to_string()),
        };
        if let Ok(v) = host {
            headers.insert(header::HOST, v);
        }
    }
    *req.headers_mut() = headers;
    req
}

fn build_h2_request(
    parts: &http::request::Parts,
    body: Body,
    addr: SocketAddr,
) -> Result<Request<Body>, UpstreamError> {
    // Keep the client's authority (Host / :authority); the connector ignores it.
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| addr.to_string());
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("http://{authority}{pq}")
        .parse()
        .map_err(|e| UpstreamError::BadRequest(format!("request target: {e}")))?;
    let mut b = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(Version::HTTP_2);
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
        // HTTP/2 carries the authority in :authority.
        h.remove(header::HOST);
    }
    b.body(body)
        .map_err(|e| UpstreamError::BadRequest(e.to_string()))
}

/// Removes connection-specific headers (RFC 9110 7.6.1); `te: trailers` survives for gRPC.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TRAILER,
    ] {
        h.remove(n);
    }
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
        });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn slice_data(slice: &EndpointSlice) -> Option<SliceData> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?
        .clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") != "SCTP")
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let addrs = slice
        .endpoints
        .iter()
        .filter(|e| {
            let c = e.conditions.as_ref();
            // Unknown readiness counts as ready (API convention); terminating never does.
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .filter_map(|e| {
            let ip: IpAddr = e.addresses.first()?.parse().ok()?;
            Some((ip, e.target_ref.as_ref().and_then(|r| r.name.clone())))
        })
        .collect();
    Some(SliceData {
        service,
        ports,
        addrs,
    })
}

fn port_set_in(st: &State, target: &Target) -> (Arc<ServiceInfo>, Arc<PortSet>) {
    let info = lookup(&st.services, &target.namespace, &target.service);
    let sets = lookup(&st.sets, &target.namespace, &target.service);
    let port_name: Option<&str> = match (&target.port, info) {
        (PortRef::Name(n), _) => Some(n),
        (PortRef::Number(n), Some(i)) => i
            .ports
            .iter()
            .find(|p| p.port == *n)
            .map(|p| p.name.as_str()),
        // Service object not seen (yet): a single-port slice set is unambiguous.
        (PortRef::Number(_), None) => match sets {
            Some(s) if s.len() == 1 => s.keys().next().map(String::as_str),
            _ => None,
        },
    };
    let set = port_name
        .and_then(|n| sets.and_then(|s| s.get(n)).cloned())
        .unwrap_or_else(|| {
            Arc::new(PortSet {
                endpoints: Vec::new(),
                balancer: Balancer::default(),
            })
        });
    let info = info.cloned().unwrap_or_else(|| {
        Arc::new(ServiceInfo {
            namespace: target.namespace.clone(),
            name: target.service.clone(),
            type_: "ClusterIP".into(),
            cluster_ips: Vec::new(),
            ports: Vec::new(),
            policy: Policy::default(),
            policy_error: None,
            activation: None,
            activity: Default::default(),
            split: None,
        })
    });
    (info, set)
}

fn split_in(st: &State, target: &Target, headers: Option<&HeaderMap>) -> Option<Target> {
    let info = lookup(&st.services, &target.namespace, &target.service)?;
    let split = info.split.as_ref()?;
    let roll = rand::random_range(0..100u32);
    split.to_canary(headers, roll).then(|| Target {
        namespace: target.namespace.clone(),
        service: split.canary_service.clone(),
        port: target.port.clone(),
    })
}

/// Chooses an endpoint of `set`, skipping ejected endpoints while others remain and `tried`
/// ones while untried remain.
fn pick_in(
    target: &Target,
    set: Arc<PortSet>,
    handles: Arc<SvcHandles>,
    policy: &Policy,
    hash_key: Option<&[u8]>,
    tried: &[SocketAddr],
) -> Result<Picked, UpstreamError> {
    let now = Instant::now();
    let usable = |e: &Arc<EndpointState>| !e.is_ejected(now) && !tried.contains(&e.ep.addr);
    // Usually every endpoint is usable: balance over the set itself, without a copy.
    let filtered: Vec<Arc<EndpointState>>;
    let candidates: &[Arc<EndpointState>] = if set.endpoints.iter().all(usable) {
        &set.endpoints
    } else {
        let healthy: Vec<Arc<EndpointState>> = set
            .endpoints
            .iter()
            .filter(|e| !e.is_ejected(now))
            .cloned()
            .collect();
        let fresh: Vec<Arc<EndpointState>> = healthy
            .iter()
            .filter(|e| !tried.contains(&e.ep.addr))
            .cloned()
            .collect();
        filtered = if !fresh.is_empty() {
            fresh
        } else if !healthy.is_empty() {
            healthy
        } else {
            set.endpoints.clone()
        };
        &filtered
    };
    let i = set
        .balancer
        .pick(policy.balancer, candidates, hash_key)
        .ok_or_else(|| UpstreamError::NoEndpoints(svc_name(target)))?;
    let state = candidates[i].clone();
    let handle = Some(state.load.start());
    let pod_load = state.ep.pod.as_ref().map(|pod| {
        state
            .pod_load
            .get_or_init(|| {
                load::table().handle(&target.namespace, load::Subject::Pod(pod.clone()))
            })
            .start()
    });
    Ok(Picked {
        endpoint: state.ep.clone(),
        state,
        set,
        handle,
        outlier: policy.outlier.clone(),
        handles,
        _load: pod_load,
    })
}

/// Recomputes the endpoint sets of one Service from its slices, keeping the state
/// (latency, ejection, connection pools) of endpoints that stay.
fn rebuild(st: &mut State, ns: &str, svc: &str) {
    let key = (ns.to_string(), svc.to_string());
    let mut by_port: BTreeMap<String, Vec<(SocketAddr, Option<String>)>> = BTreeMap::new();
    for ((sns, _), d) in &st.slices {
        if sns != ns || d.service != svc {
            continue;
        }
        for (pname, pnum) in &d.ports {
            let v = by_port.entry(pname.clone()).or_default();
            for (ip, pod) in &d.addrs {
                v.push((SocketAddr::new(*ip, *pnum), pod.clone()));
            }
        }
    }
    let old = st.sets.remove(&key).unwrap_or_default();
    let mut new = HashMap::new();
    for (pname, mut addrs) in by_port {
        addrs.sort();
        addrs.dedup_by(|a, b| a.0 == b.0);
        let prev = old.get(&pname);
        let endpoints: Vec<Arc<EndpointState>> = addrs
            .into_iter()
            .map(|(addr, pod)| {
                prev.and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|e| e.ep.addr == addr && e.ep.pod == pod)
                })
                .cloned()
                .unwrap_or_else(|| Arc::new(EndpointState::new(Endpoint { addr, pod })))
            })
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        let balancer = Balancer::new(endpoints.iter().map(|e| e.ep.addr));
        new.insert(
            pname,
            Arc::new(PortSet {
                endpoints,
                balancer,
            }),
        );
    }
    if !new.is_empty() {
        st.sets.insert(key, new);
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    fn port(name: &str, app: Option<&str>) -> ServicePortInfo {
        ServicePortInfo {
            name: name.into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port: None,
            app_protocol: app.map(String::from),
        }
    }

    #[test]
    fn h2c_ports_by_app_protocol_or_name() {
        assert!(port("", Some("kubernetes.io/h2c")).speaks_h2c());
        assert!(port("web", Some("grpc")).speaks_h2c());
        assert!(!port("grpc", Some("http")).speaks_h2c());
        assert!(port("grpc", None).speaks_h2c());
        assert!(port("grpc-api", None).speaks_h2c());
        assert!(!port("grpcx", None).speaks_h2c());
        assert!(!port("http", None).speaks_h2c());
    }
}
