//! The scrape loop: finds targets (bosun's own endpoints, every node agent's
//! `/metrics/cadvisor` and `/metrics/node`, and pods annotated `prometheus.io/scrape:
//! "true"`), fetches them every interval and appends their samples to the store, with
//! `up` and `scrape_duration_seconds` per target and staleness markers for series that
//! vanish (as Prometheus does).
//!
//! Nodes and pods are followed through watch-backed caches (`kube::runtime::reflector`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store as Cache;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::store::{Labels, STALE_NAN, Store, labels_from};
use crate::textparse;

/// How bosun reaches node agents: the token they accept and the CA that signed them.
#[derive(Clone)]
pub struct AgentAccess {
    pub token: String,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Builds a TLS client configuration that trusts the PEM certificates in `ca_pem`.
pub fn client_tls(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        anyhow::bail!("the CA PEM holds no certificate");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One endpoint to scrape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: &'static str,
    pub ip: IpAddr,
    pub port: u16,
    pub path: String,
    /// Labels added to every sample (job, instance, ...).
    pub labels: Vec<(String, String)>,
    /// Bearer token sent with the request (https targets are checked against the cluster
    /// CA).
    pub token: Option<String>,
}

impl Target {
    pub fn url(&self) -> String {
        let host = match self.ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("{}://{host}:{}{}", self.scheme, self.port, self.path)
    }

    fn label(&self, name: &str) -> &str {
        crate::store::label(&self.labels, name)
    }
}

/// A static target from a URL like `http://127.0.0.1:9091/metrics`.
pub fn static_target(job: &str, url: &str) -> Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// targets"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let addr: std::net::SocketAddr = hostport
        .parse()
        .with_context(|| format!("{url}: host must be IP:PORT"))?;
    Ok(Target {
        scheme: "http",
        ip: addr.ip(),
        port: addr.port(),
        path: path.to_string(),
        labels: vec![
            ("job".into(), job.into()),
            ("instance".into(), hostport.into()),
        ],
        token: None,
    })
}

/// The API server's `/metrics` at `addr` (HTTPS, called with `token`).
pub fn apiserver_target(addr: std::net::SocketAddr, token: &str) -> Target {
    Target {
        scheme: "https",
        ip: addr.ip(),
        port: addr.port(),
        path: "/metrics".into(),
        labels: vec![
            ("job".into(), "bosun-apiserver".into()),
            ("instance".into(), addr.to_string()),
        ],
        token: Some(token.to_string()),
    }
}

/// Health of one target, for `/api/v1/targets`.
#[derive(Clone, Debug)]
pub struct TargetHealth {
    pub target: Target,
    pub up: bool,
    pub last_error: String,
    pub last_scrape: i64,
    pub duration: f64,
}

pub struct Scraper {
    pub store: Arc<Store>,
    pub interval: Duration,
    pub statics: Vec<Target>,
    pub agent: Option<AgentAccess>,
    pub health: Mutex<HashMap<String, TargetHealth>>,
    /// Series each target wrote last time, for staleness markers.
    last_series: Mutex<HashMap<Target, HashSet<Labels>>>,
}

impl Scraper {
    pub fn new(
        store: Arc<Store>,
        interval: Duration,
        statics: Vec<Target>,
        agent: Option<AgentAccess>,
    ) -> Scraper {
        Scraper {
            store,
            interval,
            statics,
            agent,
            health: Mutex::default(),
            last_series: Mutex::default(),
        }
    }

    /// Scrapes every interval until `shutdown`; follows nodes and pods through `client`.
    pub async fn run(self: Arc<Self>, client: Option<kube::Client>, shutdown: CancellationToken) {
        let stop = shutdown.child_token();
        let _stop_watches = stop.clone().drop_guard();
        let caches = client.map(|c| {
            let nodes = cache(kube::Api::<Node>::all(c.clone()), stop.clone());
            let pods = cache(kube::Api::<Pod>::all(c), stop.clone());
            (nodes, pods)
        });
        self.run_with(caches, shutdown).await;
    }

    /// Scrapes every interval until `shutdown`, with targets from caches someone else
    /// keeps current.
    pub async fn run_with(
        self: Arc<Self>,
        caches: Option<(Cache<Node>, Cache<Pod>)>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut targets = self.statics.clone();
            if let Some((nodes, pods)) = &caches {
                targets.extend(node_targets(&nodes.state(), self.agent.as_ref()));
                targets.extend(pod_targets(&pods.state()));
            }
            self.scrape_all(targets).await;
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = store.maintain(now_ms(), false) {
                    tracing::warn!("metrics store: {e:#}");
                }
            })
            .await;
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.maintain(now_ms(), true)).await;
    }

    /// Scrapes `targets` once, concurrently, and writes staleness markers for targets
    /// that went away.
    pub async fn scrape_all(&self, targets: Vec<Target>) {
        let results = futures::future::join_all(targets.iter().map(|t| self.scrape_one(t))).await;
        let now = now_ms();
        let current: HashSet<&Target> = targets.iter().collect();
        let gone: Vec<(Target, HashSet<Labels>)> = {
            let mut last = self.last_series.lock().unwrap_or_else(|e| e.into_inner());
            let gone_keys: Vec<Target> = last
                .keys()
                .filter(|k| !current.contains(k))
                .cloned()
                .collect();
            gone_keys
                .into_iter()
                .filter_map(|k| last.remove(&k).map(|v| (k, v)))
                .collect()
        };
        for (_, series) in gone {
            self.store.append(
                now,
                series.into_iter().map(|l| (l, f64::from_bits(STALE_NAN))),
            );
        }
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.retain(|k, _| targets.iter().any(|t| &t.url() == k));
        for (t, h) in targets.into_iter().zip(results) {
            health.insert(t.url(), h);
        }
    }

    async fn scrape_one(&self, t: &Target) -> TargetHealth {
        let start = now_ms();
        let began = std::time::Instant::now();
        let timeout = self.interval.min(Duration::from_secs(10));
        let res = tokio::time::timeout(timeout, fetch(t, self.agent.as_ref()))
            .await
            .unwrap_or_else(|_| Err(anyhow!("timed out after {timeout:?}")));
        let duration = began.elapsed().as_secs_f64();
        let base = |name: &str| {
            let mut l = t.labels.clone();
            l.push(("__name__".into(), name.into()));
            labels_from(l)
        };
        let (up, err, mut samples) = match res {
            Ok(body) => {
                let (parsed, _) = textparse::parse(&body);
                let n = parsed.len();
                let mut out: Vec<(Labels, f64)> = Vec::with_capacity(n + 3);
                for s in parsed {
                    out.push((target_labels(t, s.name, s.labels), s.value));
                }
                out.push((base("scrape_samples_scraped"), n as f64));
                (true, String::new(), out)
            }
            Err(e) => (false, format!("{e:#}"), Vec::new()),
        };
        samples.push((base("up"), if up { 1.0 } else { 0.0 }));
        samples.push((base("scrape_duration_seconds"), duration));
        let now_set: HashSet<Labels> = samples.iter().map(|(l, _)| l.clone()).collect();
        let vanished: Vec<Labels> = {
            let mut last = self.last_series.lock().unwrap_or_else(|e| e.into_inner());
            let prev = last.insert(t.clone(), now_set);
            match (prev, last.get(t)) {
                (Some(prev), Some(cur)) => prev.difference(cur).cloned().collect(),
                _ => Vec::new(),
            }
        };
        samples.extend(vanished.into_iter().map(|l| (l, f64::from_bits(STALE_NAN))));
        self.store.append(start, samples);
        TargetHealth {
            target: t.clone(),
            up,
            last_error: err,
            last_scrape: start,
            duration,
        }
    }

    pub fn targets_json(&self) -> Value {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let mut active: Vec<Value> = health
            .values()
            .map(|h| {
                let labels: serde_json::Map<String, Value> = h
                    .target
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                json!({
                    "discoveredLabels": labels,
                    "labels": labels,
                    "scrapePool": h.target.label("job"),
                    "scrapeUrl": h.target.url(),
                    "globalUrl": h.target.url(),
                    "lastError": h.last_error,
                    "lastScrape": jiff::Timestamp::from_millisecond(h.last_scrape).map(|t| t.to_string()).unwrap_or_default(),
                    "lastScrapeDuration": h.duration,
                    "health": if h.up { "up" } else { "down" },
                    "scrapeInterval": format!("{}s", self.interval.as_secs()),
                    "scrapeTimeout": format!("{}s", self.interval.min(Duration::from_secs(10)).as_secs()),
                })
            })
            .collect();
        active.sort_by(|a, b| a["scrapeUrl"].as_str().cmp(&b["scrapeUrl"].as_str()));
        json!({"activeTargets": active, "droppedTargets": []})
    }
}

/// The target's labels win; a scraped label of the same name is kept as `exported_NAME`
/// (Prometheus' `honor_labels: false`).
fn target_labels(t: &Target, name: String, scraped: Vec<(String, String)>) -> Labels {
    let mut out: Vec<(String, String)> = Vec::with_capacity(scraped.len() + t.labels.len() + 1);
    for (k, v) in scraped {
        if t.labels.iter().any(|(tk, _)| *tk == k) {
            out.push((format!("exported_{k}"), v));
        } else {
            out.push((k, v));
        }
    }
    out.extend(t.labels.iter().cloned());
    out.push(("__name__".into(), name));
    labels_from(out)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A watch-backed cache of `api`'s objects, kept current until `stop`.
pub fn cache<K>(api: kube::Api<K>, stop: CancellationToken) -> Cache<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    bosun_watch::Informer::start(api, stop).store()
}

/// `/metrics/cadvisor` and `/metrics/node` of every node agent.
pub fn node_targets(nodes: &[Arc<Node>], access: Option<&AgentAccess>) -> Vec<Target> {
    let Some(access) = access else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in nodes {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let Some(status) = &n.status else { continue };
        let ip = status
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .and_then(|a| a.address.parse::<IpAddr>().ok());
        let port = status
            .daemon_endpoints
            .as_ref()
            .and_then(|d| d.kubelet_endpoint.as_ref())
            .map(|e| e.port)
            .filter(|p| *p > 0 && *p < 65536);
        let (Some(ip), Some(port)) = (ip, port) else {
            continue;
        };
        for (job, path) in [("cadvisor", "/metrics/cadvisor"), ("node", "/metrics/node")] {
            out.push(Target {
                scheme: "https",
                ip,
                port: port as u16,
                path: path.into(),
                labels: vec![
                    ("job".into(), job.into()),
                    ("instance".into(), name.clone()),
                    ("node".into(), name.clone()),
                ],
                token: Some(access.token.clone()),
            });
        }
    }
    out
}

/// Running pods annotated `prometheus.io/scrape: "true"`, on `prometheus.io/port` (default:
/// the first declared container port) and `prometheus.io/path` (default `/metrics`).
pub fn pod_targets(pods: &[Arc<Pod>]) -> Vec<Target> {
    let mut out = Vec::new();
    for p in pods {
        let ann = p.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
        if get("prometheus.io/scrape") != Some("true") {
            continue;
        }
        let Some(status) = &p.status else { continue };
        if status.phase.as_deref() != Some("Running") {
            continue;
        }
        let Some(ip) = status
            .pod_ip
            .as_deref()
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let port = get("prometheus.io/port")
            .and_then(|s| s.parse::<u16>().ok())
            .or_else(|| {
                p.spec.as_ref().and_then(|s| {
                    s.containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .next()
                        .and_then(|cp| u16::try_from(cp.container_port).ok())
                })
            });
        let Some(port) = port else { continue };
        let mut path = get("prometheus.io/path").unwrap_or("/metrics").to_string();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let scheme = if get("prometheus.io/scheme") == Some("https") {
            continue;
        } else {
            "http"
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let mut labels = vec![
            ("job".into(), "kubernetes-pods".into()),
            ("instance".into(), format!("{ip}:{port}")),
            ("namespace".into(), ns),
            ("pod".into(), name),
        ];
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            labels.push(("node".into(), node));
        }
        out.push(Target {
            scheme,
            ip,
            port,
            path,
            labels,
            token: None,
        });
    }
    out
}

/// GETs a target's exposition text.
async fn fetch(t: &Target, agent: Option<&AgentAccess>) -> Result<String> {
    let tcp = tokio::net::TcpStream::connect((t.ip, t.port)).await?;
    let mut req = http::Request::get(t.path.as_str())
        .header(http::header::HOST, format!("{}:{}", t.ip, t.port))
        .header(
            http::header::ACCEPT,
            "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1",
        )
        .header("X-Prometheus-Scrape-Timeout-Seconds", "10");
    if let Some(token) = &t.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = if t.scheme == "https" {
        let a = agent.ok_or_else(|| anyhow!("no cluster CA to check {} against", t.url()))?;
        let name = rustls::pki_types::ServerName::IpAddress(t.ip.into());
        let tls = tokio_rustls::TlsConnector::from(a.tls.clone())
            .connect(name, tcp)
            .await?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    Ok(resp)
}

async fn send<IO>(io: IO, req: http::request::Builder) -> Result<String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = resp.status();
    // Bounded: a target may not make the scraper hold more than 32 MiB.
    let body = http_body_util::Limited::new(resp.into_body(), 32 << 20)
        .collect()
        .await
        .map_err(|e| anyhow!("reading body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "server returned HTTP status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        );
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicting_labels_are_exported() {
        let t = static_target("app", "http://10.0.0.1:8080/metrics").unwrap();
        let l = target_labels(
            &t,
            "x".into(),
            vec![("job".into(), "inner".into()), ("a".into(), "1".into())],
        );
        assert_eq!(crate::store::label(&l, "job"), "app");
        assert_eq!(crate::store::label(&l, "exported_job"), "inner");
        assert_eq!(crate::store::label(&l, "instance"), "10.0.0.1:8080");
        assert_eq!(crate::store::label(&l, "__name__"), "x");
    }

    #[test]
    fn annotated_pods_become_targets() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "stats"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": "10.42.0.7"}
        }))
        .unwrap();
        let mut plain = pod.clone();
        plain.metadata.annotations = None;
        let mut pending = pod.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let t = pod_targets(&[Arc::new(pod), Arc::new(plain), Arc::new(pending)]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].url(), "http://10.42.0.7:9100/stats");
        assert_eq!(t[0].label("namespace"), "shop");
        assert_eq!(t[0].label("pod"), "web");
    }
}
