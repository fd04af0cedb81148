//! The bosun gateway: serves Ingress (`networking.k8s.io/v1`, class `bosun` or none) and
//! Gateway API HTTPRoute rules on a plain-HTTP and a TLS listener.
//!
//! * [`compile`] turns the objects into a [`routes::RouteTable`] (matching and precedence)
//!   and a [`tls::CertStore`] (SNI certificates from `kubernetes.io/tls` Secrets), and
//!   computes status conditions; [`controller`] watches the objects, swaps the results in
//!   atomically and writes status and Events.
//! * [`proxy::Handler`] handles a request (rate limit, redirect, rewrites, weighted
//!   backends, mirroring, timeouts, WebSocket) and sends it through [`proxy::Backends`],
//!   implemented by the shared upstream library (`bosun_proxy::upstream`: endpoint cache,
//!   P2C peak-EWMA balancing, retries, outlier ejection).
//! * [`server::serve`] runs a listener: HTTP/1.1 and HTTP/2 (ALPN on TLS, prior knowledge
//!   on plain TCP), upgrades, connection draining on shutdown.
//!
//! Behaviour worth knowing:
//! * Ingresses with `ingressClassName: bosun`, the `kubernetes.io/ingress.class: bosun`
//!   annotation, or no class are served. Problems (missing Service, bad TLS Secret,
//!   invalid path) become Warning Events on the Ingress, whose schema has no conditions.
//! * HTTPRoutes attach to Gateways of a GatewayClass with `controllerName:
//!   bosun.dev/gateway-controller` (listener hostnames, sectionName/port and
//!   `allowedRoutes.namespaces.from` Same/All are honoured). An HTTPRoute without
//!   `parentRefs` attaches to the node's gateway directly; its status names the parent
//!   `bosun`. Status conditions `Accepted` / `ResolvedRefs` are written through the
//!   `/status` subresource, plus a Warning Event per problem.
//! * An invalid rule (bad regex, unsupported filter, ...) rejects its whole route
//!   (`Accepted=False`, `UnsupportedValue`); an unresolved backend only answers 500 for
//!   its share of requests (Ingress: 503).
//! * `bosun.dev/rate-limit: "100/s"` (or `"600/m burst=50"`) on an Ingress or HTTPRoute
//!   limits the whole route with a token bucket in this gateway process; excess requests
//!   get 429 with `Retry-After`.
//! * Metrics are served on a separate admin listener ([`GatewayConfig::admin_listen`],
//!   `bosun up --gateway-admin-port`, bound to 127.0.0.1) at `/metrics` (Prometheus text
//!   format), with `/healthz` beside it: `bosun_gateway_requests_total{route,service,code}`,
//!   `bosun_gateway_request_duration_seconds`, `bosun_gateway_{request,response}_bytes_total`,
//!   `bosun_gateway_rate_limited_total`, connection counts, and the upstream library's
//!   `bosun_gateway_upstream_*` series.
//! * JSON access logs (one object per request on stdout) with [`AccessLog::Json`]
//!   (`BOSUN_GATEWAY_ACCESS_LOG=json` for `bosun up`).

pub mod compile;
pub mod controller;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bosun_proxy::upstream::{Body, Upstreams, full};
use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use proxy::AccessLog;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Plain HTTP listener (HTTP/1.1 and h2c with prior knowledge).
    pub http_listen: SocketAddr,
    /// TLS listener (certificates by SNI; ALPN h2 and http/1.1).
    pub https_listen: SocketAddr,
    /// Admin listener for `/metrics` and `/healthz`; none when unset.
    pub admin_listen: Option<SocketAddr>,
    pub access_log: AccessLog,
    /// How long open connections may finish their requests after shutdown begins.
    pub drain_timeout: Duration,
    /// Address published in Ingress and Gateway status (the node's IP).
    pub address: Option<String>,
    /// This node's name: when set, the activity of Services that may be scaled to zero is
    /// reported in the Lease `kube-node-lease/bosun-gateway-NODE`.
    pub node_name: Option<String>,
}

impl GatewayConfig {
    pub fn new(http_listen: SocketAddr, https_listen: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            http_listen,
            https_listen,
            admin_listen: None,
            access_log: AccessLog::Off,
            drain_timeout: Duration::from_secs(10),
            address: None,
            node_name: None,
        }
    }
}

/// Runs the gateway until `shutdown`; returns after the listeners have drained.
pub async fn run(
    client: kube::Client,
    cfg: GatewayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Shares its port with Service VIP listeners of the node proxy (SO_REUSEPORT; the more
    // specific VIP address wins its connections).
    let http = bosun_proxy::listen::tcp(cfg.http_listen)
        .with_context(|| format!("gateway: binding HTTP listener {}", cfg.http_listen))?;
    let https = bosun_proxy::listen::tcp(cfg.https_listen)
        .with_context(|| format!("gateway: binding HTTPS listener {}", cfg.https_listen))?;
    let admin = match cfg.admin_listen {
        Some(a) => Some(
            bosun_proxy::listen::tcp(a)
                .with_context(|| format!("gateway: binding admin listener {a}"))?,
        ),
        None => None,
    };

    let mut registry = Registry::default();
    let metrics = metrics::GatewayMetrics::new(&mut registry);
    let (upstreams, upstream_watch) = Upstreams::new(
        client.clone(),
        registry.sub_registry_with_prefix("bosun_gateway"),
    );
    let registry = Arc::new(registry);
    let synced = upstreams.clone();
    // Dropped (and so stopped) when `run` returns.
    let _report = cfg.node_name.as_ref().map(|n| {
        let lease = bosun_proxy::upstream::activation::lease_name("gateway", n);
        AbortOnDrop(tokio::spawn(
            upstreams.clone().report_activity(client.clone(), lease),
        ))
    });

    let (table_tx, table_rx) = watch::channel(Arc::new(routes::RouteTable::default()));
    let table_rx_ready = table_rx.clone();
    let (certs_tx, certs_rx) = watch::channel(Arc::new(tls::CertStore::default()));
    let tls_cfg = tls::server_config(certs_rx)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_cfg));
    let handler = Arc::new(proxy::Handler {
        table: table_rx,
        backends: Arc::new(upstreams),
        metrics: metrics.clone(),
        access_log: cfg.access_log,
    });

    // Stops the listeners: on shutdown, or when a background part fails (without
    // cancelling the caller's token, which other components share).
    let stop = shutdown.child_token();
    let ctrl_stop = shutdown.child_token();
    let ctrl = controller::run(
        client,
        controller::Outputs {
            table: table_tx,
            certs: certs_tx,
        },
        metrics,
        cfg.address.clone(),
        ctrl_stop.clone(),
    );
    let http_srv = server::serve(http, None, handler.clone(), stop.clone(), cfg.drain_timeout);
    let https_srv = server::serve(
        https,
        Some(acceptor),
        handler,
        stop.clone(),
        cfg.drain_timeout,
    );
    let admin_srv = async {
        match admin {
            Some(l) => serve_admin(l, registry, stop.clone()).await,
            None => Ok(()),
        }
    };
    let background = async {
        tokio::select! {
            r = upstream_watch => r.context("gateway upstream watchers"),
            r = ctrl => r.context("gateway controller"),
        }
    };
    // Connections wait in the listen queue until routes and endpoints are loaded, rather
    // than getting "no route" or "no endpoints" answers.
    let mut first_table = table_rx_ready;
    let ready = async {
        let loaded = async {
            synced.wait_synced().await;
            let _ = first_table.changed().await;
        };
        tokio::select! {
            _ = loaded => {}
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                tracing::warn!("gateway: routes not loaded after 30s; serving anyway")
            }
        }
        bosun_proxy::listen::serving("gateway");
    };
    let servers = async {
        ready.await;
        tokio::try_join!(http_srv, https_srv, admin_srv)
    };
    tokio::pin!(servers, background);
    tokio::select! {
        r = &mut servers => {
            ctrl_stop.cancel();
            r.map(|_| ())
        }
        r = &mut background => {
            // Serving stale routes forever is worse than failing loudly: drain and stop.
            stop.cancel();
            let drained = servers.await;
            if shutdown.is_cancelled() {
                return drained.map(|_| ());
            }
            r.and_then(|()| anyhow::bail!("gateway background tasks ended"))
        }
    }
}

/// Serves `/metrics` and `/healthz` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(admin_response(req.uri().path(), &registry)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin_response(path: &str, registry: &Registry) -> Response<Body> {
    match path {
        "/metrics" => {
            let mut s = String::new();
            if let Err(e) = prometheus_client::encoding::text::encode(&mut s, registry) {
                return proxy::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding metrics: {e}"),
                );
            }
            let mut r = Response::new(full(s));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => Response::new(full("ok\n")),
        _ => proxy::text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
