//! Request handling: route lookup, rate limit, redirect, header and URL rewriting,
//! weighted backend choice, mirroring, timeouts, WebSocket upgrades, metrics and access
//! logs. Backends are reached through the [`Backends`] trait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bosun_proxy::upstream::{self, Body, Policy, Target, UpstreamProtocol, Upstreams, full};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::metrics::{GatewayMetrics, RouteHandles, RouteLabels};
use crate::routes::{BackendTarget, RequestView, RouteTable, RuleAction, request_host};

/// Largest request body buffered to copy it to mirrors; larger ones are not mirrored.
const MAX_MIRROR_BODY: usize = 1024 * 1024;
const WS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where requests to a backend Service go.
pub trait Backends: Send + Sync + 'static {
    /// Sends `req` to an endpoint of `target`, answering errors as responses
    /// (503 no endpoints, 502 upstream failure, 504 timeout). `backend_timeout` bounds
    /// one attempt, `request_timeout` all of them.
    fn call(
        &self,
        target: &BackendTarget,
        req: Request<Body>,
        backend_timeout: Option<Duration>,
        request_timeout: Option<Duration>,
    ) -> BoxFuture<'static, Response<Body>>;

    /// One endpoint address for a connection-level exchange (WebSocket).
    fn endpoint(&self, target: &BackendTarget) -> Result<SocketAddr, (StatusCode, String)>;

    /// Before [`Backends::endpoint`]: waits while a Service whose workload may be at zero
    /// has no ready endpoint, as [`Backends::call`] does for plain requests. The error is
    /// the answer to send (503 naming the Service past its activation timeout).
    /// The guard, when there is one, marks the connection as open (activity) while held.
    fn activate(
        &self,
        _target: &BackendTarget,
    ) -> BoxFuture<'static, Result<Option<upstream::activation::OpenGuard>, Response<Body>>> {
        Box::pin(async { Ok(None) })
    }

    /// Records the span of a relayed connection (a WebSocket after its upgrade).
    #[allow(clippy::too_many_arguments)]
    fn trace_connection(
        &self,
        _ids: upstream::trace::SpanIds,
        _protocol: &'static str,
        _service: String,
        _upstream: SocketAddr,
        _started: std::time::SystemTime,
        _duration: Duration,
        _bytes: (u64, u64),
    ) {
    }
}

fn to_target(t: &BackendTarget) -> Target {
    Target::new(&t.namespace, &t.service, t.port)
}

impl Backends for Upstreams {
    fn call(
        &self,
        target: &BackendTarget,
        req: Request<Body>,
        backend_timeout: Option<Duration>,
        request_timeout: Option<Duration>,
    ) -> BoxFuture<'static, Response<Body>> {
        let this = self.clone();
        let t = to_target(target);
        let svc = self.service(&target.namespace, &target.service);
        let mut policy: Policy = svc.as_ref().map(|s| s.policy.clone()).unwrap_or_default();
        // Clients may speak HTTP/2 to the gateway while the Service speaks HTTP/1.1; only a
        // Service port that says so (appProtocol h2c/grpc, or its name) gets HTTP/2.
        if policy.protocol == UpstreamProtocol::SameAsDownstream {
            let h2c = svc
                .iter()
                .flat_map(|s| &s.ports)
                .any(|p| p.port == target.port && p.speaks_h2c());
            policy.protocol = if h2c {
                UpstreamProtocol::Http2
            } else {
                UpstreamProtocol::Http1
            };
        }
        if backend_timeout.is_some() {
            policy.per_try_timeout = backend_timeout;
        }
        if request_timeout.is_some() {
            policy.timeout = request_timeout;
        }
        Box::pin(async move { this.http_call(&t, req, Some(&policy)).await })
    }

    fn trace_connection(
        &self,
        ids: upstream::trace::SpanIds,
        protocol: &'static str,
        service: String,
        upstream: SocketAddr,
        started: std::time::SystemTime,
        duration: Duration,
        bytes: (u64, u64),
    ) {
        Upstreams::trace_connection(
            self,
            Some(ids),
            protocol,
            service,
            Some(upstream),
            started,
            duration,
            bytes,
        );
    }

    fn endpoint(&self, target: &BackendTarget) -> Result<SocketAddr, (StatusCode, String)> {
        match self.pick(&to_target(target), None, None) {
            Ok(p) => {
                let addr = p.endpoint.addr;
                p.success();
                Ok(addr)
            }
            Err(e) => Err((e.status(), e.to_string())),
        }
    }

    fn activate(
        &self,
        target: &BackendTarget,
    ) -> BoxFuture<'static, Result<Option<upstream::activation::OpenGuard>, Response<Body>>> {
        let this = self.clone();
        let t = to_target(target);
        Box::pin(async move {
            this.activate_target(&t)
                .await
                .map_err(|e| e.into_response())
        })
    }
}

/// Access log format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLog {
    #[default]
    Off,
    /// One JSON object per request on standard output.
    Json,
}

/// How a request reached the gateway.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// "http" or "https".
    pub scheme: &'static str,
    pub listener_port: u16,
    /// The peer's address as `X-Forwarded-For` carries it, formatted once per connection.
    peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, scheme: &'static str, listener_port: u16) -> ConnInfo {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            scheme,
            listener_port,
            peer_ip,
        }
    }
}

const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: header::HeaderName = header::HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");

/// The shared request handler.
pub struct Handler {
    pub table: watch::Receiver<Arc<RouteTable>>,
    pub backends: Arc<dyn Backends>,
    pub metrics: GatewayMetrics,
    pub access_log: AccessLog,
}

pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    upstream::error_response(status, msg)
}

fn is_upgrade(req: &Request<hyper::body::Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// What routing decided, for metrics and the access log.
#[derive(Default)]
struct Outcome {
    action: Option<Arc<RuleAction>>,
    /// Index of the chosen backend in `action.backends`.
    backend: Option<usize>,
    trace: Option<upstream::trace::SpanIds>,
}

impl Outcome {
    fn service(&self) -> String {
        match (&self.action, self.backend) {
            (Some(a), Some(i)) => a.service_label(i),
            _ => String::new(),
        }
    }
}

impl Handler {
    pub async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        conn: &ConnInfo,
    ) -> Response<Body> {
        let started = Instant::now();
        // What only the access log needs is copied only when it is on.
        let log = (self.access_log == AccessLog::Json).then(|| {
            (
                req.method().clone(),
                req.uri().path().to_string(),
                req.headers().get(header::HOST).cloned(),
                req.headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            )
        });
        let mut out = Outcome::default();
        let resp = self.route(req, conn, &mut out).await;
        let status = resp.status();
        let elapsed = started.elapsed();
        let handles = self.handles(out.action.as_deref());
        handles.count(&self.metrics, out.backend, status.as_u16(), || {
            out.service()
        });
        if let Some((method, path, host_header, ua)) = log {
            let line = serde_json::json!({
                "time": jiff::Timestamp::now().to_string(),
                "remote": conn.peer.to_string(),
                "scheme": conn.scheme,
                "method": method.as_str(),
                "host": host_header.as_ref().and_then(|h| h.to_str().ok()),
                "path": path,
                "status": status.as_u16(),
                "route": &*handles.route,
                "service": out.service(),
                "duration_seconds": elapsed.as_secs_f64(),
                "trace_id": out.trace.map(|t| t.trace_id_hex()),
                "user_agent": ua,
            });
            println!("{line}");
        }
        handles.duration.observe(elapsed.as_secs_f64());
        let bytes = handles.response_bytes.clone();
        resp.map(|b| {
            b.map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    bytes.inc_by(d.len() as u64);
                }
                f
            })
            .boxed()
        })
    }

    /// The metric series of `action` (of unmatched requests when None).
    fn handles<'a>(&'a self, action: Option<&'a RuleAction>) -> &'a RouteHandles {
        match action {
            Some(a) => a
                .handles
                .get_or_init(|| RouteHandles::new(a.route.to_string(), &self.metrics)),
            None => self
                .metrics
                .unmatched
                .get_or_init(|| RouteHandles::new(String::new(), &self.metrics)),
        }
    }

    async fn route(
        &self,
        mut req: Request<hyper::body::Incoming>,
        conn: &ConnInfo,
        out: &mut Outcome,
    ) -> Response<Body> {
        let Some(host) = request_host(req.uri(), req.headers()) else {
            return text(StatusCode::BAD_REQUEST, "missing or invalid Host header");
        };
        let table = self.table.borrow().clone();
        // The Uri's parts are shared bytes: this copies no string.
        let uri = req.uri().clone();
        let (path, query) = (uri.path(), uri.query());
        let found = {
            let view = RequestView::new(req.method(), path, query, req.headers());
            table.lookup(&host, &view)
        };
        let Some(entry) = found else {
            return text(StatusCode::NOT_FOUND, &format!("no route for {host}{path}"));
        };
        let (action, matched) = (entry.action.clone(), &entry.matcher.path);
        out.action = Some(action.clone());
        let handles = self.handles(Some(&action));
        let route_labels = || RouteLabels {
            route: handles.route.to_string(),
        };

        if let Some(rl) = &action.rate_limit
            && let Err(wait) = rl.try_acquire()
        {
            self.metrics
                .rate_limited
                .get_or_create(&route_labels())
                .inc();
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::ratelimit::retry_after_secs(wait)),
            );
            return r;
        }

        if let Some(redirect) = &action.redirect {
            let loc =
                redirect.location(conn.scheme, &host, conn.listener_port, path, query, matched);
            let mut r = Response::new(full(""));
            *r.status_mut() = redirect.status;
            match HeaderValue::from_str(&loc) {
                Ok(v) => {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                Err(_) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "redirect target is not a valid header",
                    );
                }
            }
            if let Some(m) = &action.response_headers {
                m.apply(r.headers_mut());
            }
            return r;
        }

        let Some(bi) = action.pick_backend_index(rand::random::<f64>()) else {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route has no backends with weight",
            );
        };
        out.backend = Some(bi);
        let backend = &action.backends[bi];
        let Some(target) = &backend.target else {
            return text(
                action.unresolved_status,
                &format!("backend {} is not available", backend.name),
            );
        };

        // Rewrite the request for the backend.
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        parts.uri = match action.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
            Some(m) => {
                let new_path = m.apply(path, matched);
                let pq = match query {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path,
                };
                match pq.parse() {
                    Ok(u) => u,
                    Err(_) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "request target is invalid after rewrite",
                        );
                    }
                }
            }
            // The client's target, origin-form.
            None => match uri.path_and_query() {
                Some(pq) => http::Uri::from(pq.clone()),
                None => http::Uri::from_static("/"),
            },
        };
        let authority = action
            .rewrite
            .as_ref()
            .and_then(|r| r.hostname.clone())
            .map(|h| HeaderValue::from_str(&h))
            .or_else(|| parts.headers.get(header::HOST).cloned().map(Ok))
            .unwrap_or_else(|| HeaderValue::from_str(&host));
        let Ok(authority) = authority else {
            return text(StatusCode::BAD_REQUEST, "invalid Host");
        };
        let orig_host = parts
            .headers
            .get(header::HOST)
            .cloned()
            .unwrap_or_else(|| authority.clone());
        parts.headers.insert(header::HOST, authority);
        parts.headers.insert(X_FORWARDED_HOST, orig_host);
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));
        let xff = match parts
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.peer.ip())).ok(),
            None => Some(conn.peer_ip.clone()),
        };
        if let Some(v) = xff {
            parts.headers.insert(X_FORWARDED_FOR, v);
        }
        // Start a trace here when the client did not, so the access log can name it; the
        // upstream call records this hop's span under these ids, with the route.
        let ids = upstream::trace::SpanIds::begin(
            parts
                .headers
                .get(upstream::trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        );
        // The upstream call sets the header from these ids; the mirrors and the WebSocket
        // handshake take it from here.
        if upgrade || !action.mirrors.is_empty() {
            parts
                .headers
                .insert(upstream::trace::TRACEPARENT, ids.header_value());
        }
        parts.extensions.insert(ids);
        parts
            .extensions
            .insert(upstream::trace::RouteName(handles.route.clone()));
        out.trace = Some(ids);
        if let Some(m) = &action.request_headers {
            m.apply(&mut parts.headers);
        }
        if let Some(m) = &backend.request_headers {
            m.apply(&mut parts.headers);
        }
        parts.extensions.insert(upstream::ClientAddr(conn.peer));

        let req_bytes = handles.request_bytes.clone();
        let counted = body.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                req_bytes.inc_by(d.len() as u64);
            }
            f
        });

        let mut resp = if let Some(on_client) = client_upgrade {
            self.websocket(target, parts, upstream::boxed(counted), on_client)
                .await
        } else {
            let body: Body = if action.mirrors.is_empty() {
                upstream::boxed(counted)
            } else {
                let mirrors: Vec<_> = action
                    .mirrors
                    .iter()
                    .filter(|m| rand::random::<f64>() < m.fraction)
                    .cloned()
                    .collect();
                let limited = http_body_util::Limited::new(counted, MAX_MIRROR_BODY);
                match limited.collect().await {
                    Ok(c) => {
                        let bytes = c.to_bytes();
                        for m in mirrors {
                            self.metrics.mirrored.get_or_create(&route_labels()).inc();
                            let mut b = Request::builder()
                                .method(parts.method.clone())
                                .uri(parts.uri.clone());
                            if let Some(h) = b.headers_mut() {
                                *h = parts.headers.clone();
                            }
                            if let Ok(mreq) = b.body(full(bytes.clone())) {
                                // Fire and forget: the mirror's answer and failures are ignored.
                                let call = self.backends.call(
                                    &m.target,
                                    mreq,
                                    action.backend_timeout,
                                    action.request_timeout,
                                );
                                tokio::spawn(async move {
                                    let resp = call.await;
                                    let _ = resp.into_body().collect().await;
                                });
                            }
                        }
                        full(bytes)
                    }
                    Err(e) => {
                        let too_big = e
                            .downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some();
                        return if too_big {
                            text(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "request body too large to mirror",
                            )
                        } else {
                            text(
                                StatusCode::BAD_REQUEST,
                                &format!("reading request body: {e}"),
                            )
                        };
                    }
                }
            };
            let req = Request::from_parts(parts, body);
            let call =
                self.backends
                    .call(target, req, action.backend_timeout, action.request_timeout);
            match action.request_timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => text(StatusCode::GATEWAY_TIMEOUT, "request timed out"),
                },
                None => call.await,
            }
        };
        if let Some(m) = &action.response_headers {
            m.apply(resp.headers_mut());
        }
        if let Some(m) = &backend.response_headers {
            m.apply(resp.headers_mut());
        }
        resp
    }

    /// Relays an HTTP/1.1 upgrade (WebSocket): forwards the handshake to one endpoint and,
    /// on 101, splices the two connections.
    async fn websocket(
        &self,
        target: &BackendTarget,
        parts: http::request::Parts,
        body: Body,
        on_client: hyper::upgrade::OnUpgrade,
    ) -> Response<Body> {
        // Scaled to zero: the handshake waits for the first ready endpoint.
        let open = match self.backends.activate(target).await {
            Ok(g) => g,
            Err(resp) => return resp,
        };
        let span = parts.extensions.get::<upstream::trace::SpanIds>().cloned();
        let protocol = upstream::upgrade_protocol(&parts.headers);
        let addr = match self.backends.endpoint(target) {
            Ok(a) => a,
            Err((status, msg)) => return text(status, &msg),
        };
        let stream =
            match tokio::time::timeout(WS_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return text(StatusCode::BAD_GATEWAY, &format!("connect to {addr}: {e}"));
                }
                Err(_) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("connect to {addr} timed out"),
                    );
                }
            };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("upstream {addr}: {e}")),
            };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "upgraded upstream connection: {e}");
            }
        });
        let req = Request::from_parts(parts, body);
        let mut resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("upstream {addr}: {e}")),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(upstream::boxed);
        }
        let on_server = hyper::upgrade::on(&mut resp);
        let backends = self.backends.clone();
        let service = format!("{}/{}", target.namespace, target.service);
        tokio::spawn(async move {
            // A scale-to-zero Service is in use while the connection is open.
            let _open = open;
            match tokio::try_join!(on_client, on_server) {
                Ok((c, s)) => {
                    let mut c = TokioIo::new(c);
                    let mut s = TokioIo::new(s);
                    let (wall, began) = (std::time::SystemTime::now(), std::time::Instant::now());
                    let bytes = match tokio::io::copy_bidirectional(&mut c, &mut s).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::debug!(%addr, "upgraded connection ended: {e}");
                            (0, 0)
                        }
                    };
                    // One span per connection, a child of the handshake's.
                    if let Some(ids) = span {
                        backends.trace_connection(
                            ids.child(),
                            protocol,
                            service,
                            addr,
                            wall,
                            began.elapsed(),
                            bytes,
                        );
                    }
                }
                Err(e) => tracing::debug!(%addr, "upgrade failed: {e}"),
            }
        });
        let (parts, _) = resp.into_parts();
        Response::from_parts(parts, full(Bytes::new()))
    }
}
