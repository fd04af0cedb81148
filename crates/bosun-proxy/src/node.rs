//! The node proxy: listens on every Service VIP port and NodePort and balances traffic over
//! the Service's ready endpoints, per request for HTTP/1.1 and HTTP/2 (h2c, gRPC), per
//! connection for anything else.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http_conn::{self, Drain, Prefixed, Sniffed, sniff_stream};
use crate::upstream::metrics::{DirLabels, SvcLabels};
use crate::upstream::{
    ClientAddr, Declared, HashKey, LbAlgorithm, PortRef, Protocol, ServiceInfo, Target, Upstreams,
};
use crate::vip;

/// Node proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Dummy interface that carries the Service VIPs (created if missing).
    pub service_interface: String,
    /// This node's address (reported in logs; NodePorts listen on `node_port_addresses`).
    pub node_ip: IpAddr,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Addresses NodePorts listen on (default: all, `0.0.0.0`).
    pub node_port_addresses: Vec<IpAddr>,
    /// Put VIPs on `service_interface`. Off only where VIPs are already local (tests on
    /// 127.0.0.0/8).
    pub manage_vips: bool,
    /// How long to wait for a client's first bytes before treating a connection as
    /// opaque TCP (server-first protocols send nothing until the server speaks).
    pub sniff_timeout: Duration,
    /// How long open connections may finish after their listener closes.
    pub drain_timeout: Duration,
    /// This node's name: when set, the activity of Services that may be scaled to zero is
    /// reported in the Lease `kube-node-lease/bosun-proxy-NODE`.
    pub node_name: Option<String>,
    /// Records a span per forwarded HTTP request (served at `/traces` on the metrics
    /// listener); none when unset.
    pub tracer: Option<crate::upstream::trace::Tracer>,
}

impl ProxyConfig {
    pub fn new(service_interface: &str, node_ip: IpAddr) -> ProxyConfig {
        ProxyConfig {
            service_interface: service_interface.to_string(),
            node_ip,
            metrics_listen: None,
            node_port_addresses: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            manage_vips: true,
            sniff_timeout: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(10),
            node_name: None,
            tracer: None,
        }
    }
}

/// Runs the node proxy until `shutdown`: watches Services and EndpointSlices through
/// `client`, keeps the VIPs on `cfg.service_interface`, and serves every VIP port and
/// NodePort.
pub async fn run(
    client: kube::Client,
    cfg: ProxyConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut registry = Registry::default();
    let (upstreams, watchers) = Upstreams::new(
        client.clone(),
        registry.sub_registry_with_prefix("bosun_proxy"),
    );
    if let Some(t) = &cfg.tracer {
        upstreams.set_tracer(t.clone(), "proxy");
    }
    let watch_task = tokio::spawn(watchers);
    let report_task = cfg.node_name.as_ref().map(|n| {
        let lease = crate::upstream::activation::lease_name("proxy", n);
        tokio::spawn(upstreams.clone().report_activity(client, lease))
    });
    let res = serve(upstreams, cfg, Arc::new(registry), shutdown).await;
    watch_task.abort();
    if let Some(t) = report_task {
        t.abort();
    }
    res
}

/// How a listener treats new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Sniff the first bytes.
    Auto,
    /// Declared HTTP (`appProtocol` http/h2c/grpc or port name http*/grpc*): still sniffed
    /// to tell HTTP/1 from HTTP/2, but without waiting for a server-first protocol.
    Http,
    /// Declared opaque TCP (`appProtocol: tcp`): never sniffed.
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ListenSpec {
    addr: SocketAddr,
    target: Target,
    mode: Mode,
}

struct Listener {
    spec: ListenSpec,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Serves Services from an existing endpoint cache (`run` without the watchers; tests
/// feed a detached [`Upstreams`]). `registry` is served on `cfg.metrics_listen`.
pub async fn serve(
    upstreams: Upstreams,
    cfg: ProxyConfig,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    let cfg = Arc::new(cfg);
    if cfg.manage_vips {
        vip::ensure_interface(&cfg.service_interface)
            .await
            .with_context(|| format!("service interface {}", cfg.service_interface))?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let l = crate::listen::tcp(addr).with_context(|| format!("metrics listener {addr}"))?;
        tokio::spawn(serve_metrics(
            l,
            registry,
            cfg.tracer.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(node_ip = %cfg.node_ip, interface = %cfg.service_interface, "node proxy started");
    let conns = TaskTracker::new();
    // Cancelled when the drain deadline passes: cuts what is still open.
    let hard = CancellationToken::new();
    let mut listeners: HashMap<SocketAddr, Listener> = HashMap::new();
    let mut changes = upstreams.subscribe();
    // The first pass must see every Service: it removes the VIPs of the others (which
    // would cut a process that is handing over to this one off its traffic).
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = upstreams.wait_synced() => {}
    }
    let mut first_pass = true;
    loop {
        let services = upstreams.services();
        let mut failed = false;
        if cfg.manage_vips {
            let vips: BTreeSet<IpAddr> = services
                .iter()
                .flat_map(|s| s.cluster_ips.iter().copied())
                .collect();
            if let Err(e) = vip::reconcile(&cfg.service_interface, &vips).await {
                tracing::warn!("service VIPs: {e:#}");
                failed = true;
            }
        }
        let want = desired_listeners(&services, &cfg);
        // Stop listeners that went away or changed, before binding their replacements.
        let stale: Vec<SocketAddr> = listeners
            .iter()
            .filter(|(a, l)| want.get(*a) != Some(&l.spec))
            .map(|(a, _)| *a)
            .collect();
        for a in stale {
            if let Some(l) = listeners.remove(&a) {
                l.cancel.cancel();
                let _ = l.task.await;
                crate::listen::forget(crate::listen::Key {
                    proto: crate::listen::Proto::Tcp,
                    addr: a,
                });
                tracing::debug!(addr = %a, "listener closed");
            }
        }
        for (addr, spec) in want {
            if listeners.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(tcp) => {
                    let cancel = shutdown.child_token();
                    let task = tokio::spawn(accept_loop(
                        tcp,
                        spec.clone(),
                        upstreams.clone(),
                        cfg.clone(),
                        Drain {
                            graceful: cancel.clone(),
                            hard: hard.clone(),
                        },
                        conns.clone(),
                    ));
                    listeners.insert(addr, Listener { spec, cancel, task });
                }
                Err(e) => {
                    tracing::warn!(%addr, service = %format!("{}/{}", spec.target.namespace, spec.target.service), "listen: {e}");
                    failed = true;
                }
            }
        }
        if first_pass {
            first_pass = false;
            crate::listen::serving("node proxy");
        }
        // Failed binds/VIP changes are retried on a timer as well as on the next change.
        let retry = async {
            if failed {
                tokio::time::sleep(Duration::from_secs(2)).await
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
            _ = retry => {}
        }
    }
    for (_, l) in listeners.drain() {
        l.cancel.cancel();
        let _ = l.task.await;
    }
    conns.close();
    if tokio::time::timeout(cfg.drain_timeout, conns.wait())
        .await
        .is_err()
    {
        tracing::info!("node proxy: drain timeout, closing remaining connections");
        hard.cancel();
        conns.wait().await;
    }
    Ok(())
}

fn desired_listeners(
    services: &[Arc<ServiceInfo>],
    cfg: &ProxyConfig,
) -> HashMap<SocketAddr, ListenSpec> {
    let mut want = HashMap::new();
    for s in services {
        if s.type_ == "ExternalName" {
            continue;
        }
        for p in &s.ports {
            if p.protocol != Protocol::Tcp {
                continue;
            }
            let target = Target {
                namespace: s.namespace.clone(),
                service: s.name.clone(),
                port: PortRef::Number(p.port),
            };
            let mode = mode_for(&p.name, p.app_protocol.as_deref());
            let mut add = |addr: SocketAddr| {
                want.entry(addr).or_insert_with(|| ListenSpec {
                    addr,
                    target: target.clone(),
                    mode,
                });
            };
            for ip in &s.cluster_ips {
                add(SocketAddr::new(*ip, p.port));
            }
            if let Some(np) = p.node_port
                && np != 0
            {
                for ip in &cfg.node_port_addresses {
                    add(SocketAddr::new(*ip, np));
                }
            }
            if s.type_ == "LoadBalancer" {
                // As k3s's ServiceLB: the Service's own port on every node's addresses.
                for ip in &cfg.node_port_addresses {
                    add(SocketAddr::new(*ip, p.port));
                }
            }
        }
    }
    want
}

fn mode_for(port_name: &str, app_protocol: Option<&str>) -> Mode {
    match crate::upstream::declared_protocol(port_name, app_protocol) {
        Declared::Tcp => Mode::Tcp,
        Declared::Http | Declared::H2c => Mode::Http,
        Declared::Unknown => Mode::Auto,
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    // SO_REUSEPORT: a VIP port may also be the gateway's port on 0.0.0.0 (see `listen`).
    crate::listen::tcp(addr)
}

async fn accept_loop(
    l: TcpListener,
    spec: ListenSpec,
    upstreams: Upstreams,
    cfg: Arc<ProxyConfig>,
    tokens: Drain,
    conns: TaskTracker,
) {
    let spec = Arc::new(spec);
    loop {
        let (stream, peer) = tokio::select! {
            _ = tokens.graceful.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(addr = %spec.addr, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (spec, upstreams, cfg, tokens) =
            (spec.clone(), upstreams.clone(), cfg.clone(), tokens.clone());
        // Open until the connection ends: draining waits for it.
        let tracked = conns.token();
        crate::workers::spawn_connection(stream, move |stream| async move {
            let _tracked = tracked;
            handle_connection(stream, peer, spec, upstreams, cfg, tokens).await;
        });
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    spec: Arc<ListenSpec>,
    upstreams: Upstreams,
    cfg: Arc<ProxyConfig>,
    tokens: Drain,
) {
    let (kind, prefix) = if spec.mode == Mode::Tcp {
        (Sniffed::Opaque, Bytes::new())
    } else {
        let deadline = tokio::time::Instant::now()
            + if spec.mode == Mode::Http {
                Duration::from_secs(10)
            } else {
                cfg.sniff_timeout
            };
        // None: the client closed before sending anything useful. Opaque after silence:
        // a server-first protocol, relayed as TCP.
        match sniff_stream(&mut stream, deadline).await {
            Some(x) => x,
            None => return,
        }
    };
    let io = Prefixed::new(prefix, stream);
    match kind {
        Sniffed::Http1 | Sniffed::Http2 => {
            // Cloned per request: this connection's own handle stays in its thread's cache,
            // where the listener's are shared by every thread.
            let state = Arc::new((upstreams, spec));
            let handle = move |mut req: Request<Incoming>| {
                let state = state.clone();
                req.extensions_mut().insert(ClientAddr(peer));
                async move { state.0.http_call(&state.1.target, req, None).await }
            };
            http_conn::serve(io, kind == Sniffed::Http2, handle, &tokens).await
        }
        _ => relay_tcp(io, peer, &spec, &upstreams, &tokens.hard).await,
    }
}

async fn relay_tcp(
    mut io: Prefixed<TcpStream>,
    peer: SocketAddr,
    spec: &ListenSpec,
    upstreams: &Upstreams,
    hard: &CancellationToken,
) {
    let canary = upstreams.split_target(&spec.target, None);
    let target = canary.as_ref().unwrap_or(&spec.target);
    let labels = SvcLabels {
        namespace: target.namespace.clone(),
        service: target.service.clone(),
    };
    let m = upstreams.metrics();
    let info = upstreams.service(&target.namespace, &target.service);
    // Scaled to zero: hold the connection until an endpoint is ready (or give up). Open
    // connections count as activity until they close.
    let mut _open = None;
    if info.as_ref().is_some_and(|i| i.activation.is_some()) {
        match upstreams.activate_target(target).await {
            Ok(g) => _open = g,
            Err(e) => {
                tracing::info!(%peer, "tcp: {e}");
                return;
            }
        }
    }
    let policy = info.as_ref().map(|i| i.policy.clone()).unwrap_or_default();
    let key = peer.ip().to_string();
    let hash_key = (policy.balancer == LbAlgorithm::ConsistentHash
        && matches!(policy.hash_key, HashKey::SourceIp | HashKey::Header(_)))
    .then_some(key.as_bytes());
    let mut tried = Vec::new();
    let mut upstream = None;
    for _ in 0..=policy.retries {
        let mut picked = match upstreams.pick_excluding(target, Some(&policy), hash_key, &tried) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%peer, "tcp: {e}");
                return;
            }
        };
        let addr = picked.endpoint.addr;
        tried.push(addr);
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                picked.finish_latency();
                picked.success();
                upstream = Some(s);
                break;
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, "tcp connect: {e}");
                m.connect_errors.get_or_create(&labels).inc();
                picked.failure();
            }
            Err(_) => {
                m.connect_errors.get_or_create(&labels).inc();
                picked.failure();
            }
        }
    }
    let Some(mut up) = upstream else { return };
    let _ = up.set_nodelay(true);
    m.tcp_connections.get_or_create(&labels).inc();
    let (wall, began) = (std::time::SystemTime::now(), std::time::Instant::now());
    let upstream_addr = up.peer_addr().ok();
    // Open connections outlive their listener until the proxy's drain deadline.
    let res = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut io, &mut up) => r.ok(),
        _ = hard.cancelled() => None,
    };
    // One span per connection (a new trace: TCP carries no traceparent).
    upstreams.trace_connection(
        Some(crate::upstream::trace::SpanIds::begin(None)),
        "tcp",
        format!("{}/{}", labels.namespace, labels.service),
        upstream_addr,
        wall,
        began.elapsed(),
        res.unwrap_or((0, 0)),
    );
    if let Some((rx, tx)) = res {
        m.bytes
            .get_or_create(&DirLabels {
                namespace: labels.namespace.clone(),
                service: labels.service.clone(),
                direction: "rx",
            })
            .inc_by(rx);
        m.bytes
            .get_or_create(&DirLabels {
                namespace: labels.namespace,
                service: labels.service,
                direction: "tx",
            })
            .inc_by(tx);
    }
    let _ = up.shutdown().await;
}

async fn serve_metrics(
    l: TcpListener,
    registry: Arc<Registry>,
    tracer: Option<crate::upstream::trace::Tracer>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let registry = registry.clone();
        let tracer = tracer.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let registry = registry.clone();
                let tracer = tracer.clone();
                async move {
                    let resp = if req.uri().path() == "/traces" {
                        let params = crate::upstream::trace::query_params(req.uri().query());
                        let body = match &tracer {
                            Some(t) => t.query_json(&params),
                            None => serde_json::json!({"spans": []}),
                        };
                        let mut r = Response::new(crate::upstream::full(body.to_string()));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        r
                    } else if req.uri().path() == "/metrics" {
                        let mut out = String::new();
                        match prometheus_client::encoding::text::encode(&mut out, &registry) {
                            Ok(()) => {
                                let mut r = Response::new(crate::upstream::full(out));
                                r.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static(
                                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                    ),
                                );
                                r
                            }
                            Err(e) => crate::upstream::error_response(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                &e.to_string(),
                            ),
                        }
                    } else {
                        crate::upstream::error_response(StatusCode::NOT_FOUND, "not found")
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_for("http", None), Mode::Http);
        assert_eq!(mode_for("grpc-api", None), Mode::Http);
        assert_eq!(mode_for("db", Some("tcp")), Mode::Tcp);
        assert_eq!(mode_for("tcp-redis", None), Mode::Tcp);
        // TLS is relayed, never parsed as HTTP (the `kubernetes` Service's port).
        assert_eq!(mode_for("https", None), Mode::Tcp);
        assert_eq!(mode_for("tls-db", None), Mode::Tcp);
        assert_eq!(mode_for("httpx", None), Mode::Http);
        assert_eq!(mode_for("", None), Mode::Auto);
        assert_eq!(mode_for("", Some("kubernetes.io/h2c")), Mode::Http);
    }
}
