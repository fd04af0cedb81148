//! The gateway against real HTTP backends on loopback: objects are compiled into a route
//! table, the upstream library holds Services/EndpointSlices pointing at the backends,
//! and requests go through real listeners (plain and TLS).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bosun_gateway::compile::{DesiredStatus, RateLimiters, Report, Snapshot, compile};
use bosun_gateway::metrics::GatewayMetrics;
use bosun_gateway::proxy::{AccessLog, Handler};
use bosun_proxy::upstream::{Body, Upstreams, full};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A backend that answers with a JSON description of the request it got.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Value>>>,
}

async fn backend(name: &'static str) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                return;
            };
            let (h, s) = (h.clone(), s.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    let (h, s) = (h.clone(), s.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        if req.headers().contains_key(http::header::UPGRADE) {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let mut io = TokioIo::new(up);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let r = Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(full(""))
                                .unwrap();
                            return Ok::<_, Infallible>(r);
                        }
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        let headers: HashMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let v = json!({
                            "backend": name,
                            "method": parts.method.as_str(),
                            "uri": parts.uri.to_string(),
                            "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                        });
                        s.lock().unwrap().push(v.clone());
                        let mut r = Response::new(full(v.to_string()));
                        r.headers_mut().insert("x-backend", name.parse().unwrap());
                        Ok(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend { addr, hits, seen }
}

fn service(name: &str, port: u16) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}
    }))
    .unwrap()
}

fn slice(name: &str, port: u16) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
    }))
    .unwrap()
}

struct Gw {
    http: SocketAddr,
    https: SocketAddr,
    reports: Vec<Report>,
    registry: Arc<prometheus_client::registry::Registry>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// Starts a gateway for `objects` with `backends` registered as Services (by name).
async fn start(objects: Vec<Value>, backends: &[(&str, Option<SocketAddr>)]) -> Gw {
    let mut snap = Snapshot::default();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GatewayMetrics::new(&mut registry);
    let ups = Upstreams::detached(registry.sub_registry_with_prefix("bosun_gateway"));
    for (name, addr) in backends {
        // A Service without an address has no endpoints.
        let port = addr.map(|a| a.port()).unwrap_or(1);
        let svc = service(name, port);
        ups.apply_service(&svc);
        if addr.is_some() {
            ups.apply_endpoint_slice(&slice(name, port));
        }
        snap.services.push(Arc::new(svc));
    }
    for o in objects {
        match o["kind"].as_str().unwrap() {
            "Ingress" => snap
                .ingresses
                .push(Arc::new(serde_json::from_value(o).unwrap())),
            "HTTPRoute" => snap
                .routes
                .push(Arc::new(serde_json::from_value(o).unwrap())),
            "Gateway" => snap
                .gateways
                .push(Arc::new(serde_json::from_value(o).unwrap())),
            "GatewayClass" => snap
                .classes
                .push(Arc::new(serde_json::from_value(o).unwrap())),
            "Secret" => snap
                .secrets
                .push(Arc::new(serde_json::from_value::<Secret>(o).unwrap())),
            k => panic!("unexpected kind {k}"),
        }
    }
    let compiled = compile(&snap, &mut RateLimiters::default());
    let (_ttx, trx) = watch::channel(Arc::new(compiled.table));
    let (_ctx, crx) = watch::channel(Arc::new(compiled.certs));
    // Keep the senders alive for the gateway's lifetime.
    std::mem::forget(_ttx);
    std::mem::forget(_ctx);
    let handler = Arc::new(Handler {
        table: trx,
        backends: Arc::new(ups),
        metrics,
        access_log: AccessLog::Off,
    });
    let shutdown = CancellationToken::new();
    let hl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, https) = (hl.local_addr().unwrap(), sl.local_addr().unwrap());
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(bosun_gateway::tls::server_config(crx).unwrap()));
    let h1 = bosun_gateway::server::serve(
        hl,
        None,
        handler.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
    );
    let h2 = bosun_gateway::server::serve(
        sl,
        Some(acceptor),
        handler,
        shutdown.clone(),
        Duration::from_secs(5),
    );
    let done = tokio::spawn(async move {
        let _ = tokio::join!(h1, h2);
    });
    Gw {
        http,
        https,
        reports: compiled.reports,
        registry: Arc::new(registry),
        shutdown,
        done,
    }
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, http::HeaderMap, String) {
    send(
        addr,
        Request::get(path)
            .header("host", host)
            .body(full(""))
            .unwrap(),
    )
    .await
}

async fn send(addr: SocketAddr, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = s.send_request(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn ingress(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn route(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn route_conditions(reports: &[Report], name: &str) -> Vec<(String, String, String)> {
    let r = reports.iter().find(|r| r.key.name == name).expect("report");
    let DesiredStatus::HTTPRoute(s) = &r.status else {
        panic!("not a route")
    };
    s.parents[0]
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

#[tokio::test]
async fn ingress_host_and_path_routing() {
    let api = backend("api").await;
    let web = backend("web").await;
    let gw = start(
        vec![ingress(
            "shop",
            json!({"rules": [{"host": "shop.local", "http": {"paths": [
                {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}},
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                {"path": "/gone", "pathType": "Exact", "backend": {"service": {"name": "missing", "port": {"number": 80}}}}
            ]}}]}),
        )],
        &[("api", Some(api.addr)), ("web", Some(web.addr))],
    )
    .await;
    let (s, h, b) = get(gw.http, "shop.local", "/api/users?x=1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(h["x-backend"], "api");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["uri"], "/api/users?x=1");
    assert_eq!(v["headers"]["host"], "shop.local");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        v["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-")
    );
    // Element-wise prefix: /apix is not under /api.
    assert_eq!(
        get(gw.http, "shop.local", "/apix").await.1["x-backend"],
        "web"
    );
    assert_eq!(
        get(gw.http, "SHOP.local:8080", "/").await.1["x-backend"],
        "web"
    );
    assert_eq!(
        get(gw.http, "other.local", "/").await.0,
        StatusCode::NOT_FOUND
    );
    // A path to a missing Service answers 503 while the rest serves; the problem is reported.
    assert_eq!(
        get(gw.http, "shop.local", "/gone").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let rep = gw.reports.iter().find(|r| r.key.name == "shop").unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| p.reason == "BackendNotFound" && p.message.contains("default/missing"))
    );

    // No Host header at all: 400.
    let mut c = TcpStream::connect(gw.http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));
    // Garbage is rejected by the HTTP parser with 400 too, and the gateway keeps serving.
    let mut c = TcpStream::connect(gw.http).await.unwrap();
    c.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));
    assert_eq!(get(gw.http, "shop.local", "/api").await.0, StatusCode::OK);
    gw.shutdown.cancel();
    gw.done.await.unwrap();
}

#[tokio::test]
async fn httproute_weights_filters_and_errors() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let mirror = backend("mirror").await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap(); // closed port
    let gw = start(
        vec![
            route(
                "split",
                json!({"hostnames": ["app.local"], "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": "stable", "port": 80, "weight": 90}, {"name": "canary", "port": 80, "weight": 10}]
                }]}),
            ),
            route(
                "filters",
                json!({"hostnames": ["app.local"], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                     "filters": [
                        {"type": "URLRewrite", "urlRewrite": {"hostname": "internal.local",
                            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                            "set": [{"name": "x-env", "value": "prod"}], "add": [{"name": "x-add", "value": "1"}], "remove": ["x-secret"]}},
                        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-served-by", "value": "bosun"}]}},
                        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "mirror", "port": 80}}}
                     ],
                     "backendRefs": [{"name": "stable", "port": 80}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/old"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301,
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]},
                    {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}, "method": "DELETE"}],
                     "backendRefs": [{"name": "canary", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/hdr"}, "headers": [{"name": "x-canary", "value": "yes"}]},
                                 {"path": {"type": "PathPrefix", "value": "/hdr"}, "queryParams": [{"name": "canary", "value": "1"}]}],
                     "backendRefs": [{"name": "canary", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                     "timeouts": {"request": "400ms"},
                     "backendRefs": [{"name": "stable", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/empty"}}], "backendRefs": [{"name": "empty", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/dead"}}], "backendRefs": [{"name": "dead", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}], "backendRefs": [{"name": "nope", "port": 80}]}
                ]}),
            ),
            route(
                "badregex",
                json!({"hostnames": ["app.local"], "rules": [{
                    "matches": [{"path": {"type": "RegularExpression", "value": "/bad/(["}}],
                    "backendRefs": [{"name": "canary", "port": 80}]
                }]}),
            ),
        ],
        &[
            ("stable", Some(stable.addr)),
            ("canary", Some(canary.addr)),
            ("mirror", Some(mirror.addr)),
            ("empty", None),
            ("dead", Some(dead)),
        ],
    )
    .await;

    // 90/10 split.
    let mut canaries = 0;
    for _ in 0..400 {
        let (s, h, _) = get(gw.http, "app.local", "/shop").await;
        assert_eq!(s, StatusCode::OK);
        if h["x-backend"] == "canary" {
            canaries += 1;
        }
    }
    assert!((16..=72).contains(&canaries), "canary got {canaries}/400");

    // Rewrite, header modifiers, mirror.
    let req = Request::get("/v1/users?q=1")
        .header("host", "app.local")
        .header("x-secret", "s")
        .header("x-env", "dev")
        .body(full(""))
        .unwrap();
    let (s, h, b) = send(gw.http, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(h["x-served-by"], "bosun");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["uri"], "/v2/users?q=1");
    assert_eq!(v["headers"]["host"], "internal.local");
    assert_eq!(v["headers"]["x-forwarded-host"], "app.local");
    assert_eq!(v["headers"]["x-env"], "prod");
    assert_eq!(v["headers"]["x-add"], "1");
    assert!(v["headers"].get("x-secret").is_none());
    for _ in 0..50 {
        if mirror.hits.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mirror.hits.load(Ordering::SeqCst), 1);
    assert_eq!(mirror.seen.lock().unwrap()[0]["uri"], "/v2/users?q=1");

    // Redirect.
    let (s, h, _) = get(gw.http, "app.local", "/old?x=1").await;
    assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(h["location"], "https://app.local/new?x=1");

    // Regex + method; header or query match.
    let req = Request::delete("/items/42")
        .header("host", "app.local")
        .body(full(""))
        .unwrap();
    assert_eq!(send(gw.http, req).await.1["x-backend"], "canary");
    let req = Request::get("/hdr")
        .header("host", "app.local")
        .header("x-canary", "yes")
        .body(full(""))
        .unwrap();
    assert_eq!(send(gw.http, req).await.1["x-backend"], "canary");
    assert_eq!(
        get(gw.http, "app.local", "/hdr?canary=1").await.1["x-backend"],
        "canary"
    );

    // Errors: timeout 504, no endpoints 503, connection refused 502, missing Service 500.
    assert_eq!(
        get(gw.http, "app.local", "/slow").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        get(gw.http, "app.local", "/empty").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(gw.http, "app.local", "/dead").await.0,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        get(gw.http, "app.local", "/missing").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // The invalid regex route is not accepted, the others are.
    let bad = route_conditions(&gw.reports, "badregex");
    assert!(
        bad.contains(&("Accepted".into(), "False".into(), "UnsupportedValue".into())),
        "{bad:?}"
    );
    let ok = route_conditions(&gw.reports, "split");
    assert!(ok.contains(&("Accepted".into(), "True".into(), "Accepted".into())));
    assert!(ok.contains(&("ResolvedRefs".into(), "True".into(), "ResolvedRefs".into())));
    let f = route_conditions(&gw.reports, "filters");
    assert!(
        f.contains(&(
            "ResolvedRefs".into(),
            "False".into(),
            "BackendNotFound".into()
        )),
        "{f:?}"
    );
    gw.shutdown.cancel();
    gw.done.await.unwrap();
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let b = backend("b").await;
    let mut r = route(
        "limited",
        json!({"hostnames": ["rl.local"], "rules": [{"backendRefs": [{"name": "b", "port": 80}]}]}),
    );
    r["metadata"]["annotations"] = json!({"bosun.dev/rate-limit": "1/m burst=3"});
    let gw = start(vec![r], &[("b", Some(b.addr))]).await;
    for _ in 0..3 {
        assert_eq!(get(gw.http, "rl.local", "/").await.0, StatusCode::OK);
    }
    let (s, h, _) = get(gw.http, "rl.local", "/").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(b.hits.load(Ordering::SeqCst), 3);
    gw.shutdown.cancel();
    gw.done.await.unwrap();
}

#[tokio::test]
async fn h2c_prior_knowledge_and_websocket() {
    let b = backend("b").await;
    let gw = start(
        vec![route(
            "r",
            json!({"rules": [{"backendRefs": [{"name": "b", "port": 80}]}]}),
        )],
        &[("b", Some(b.addr))],
    )
    .await;
    // HTTP/2 without TLS (prior knowledge) to an HTTP/1.1 backend.
    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut s, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://h2.local/x").body(full("")).unwrap();
    let r = s.send_request(req).await.unwrap();
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["headers"]["host"], "h2.local");

    // WebSocket-style upgrade: 101, then bytes flow both ways.
    let mut c = TcpStream::connect(gw.http).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before 101");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    c.write_all(b"ping over the tunnel").await.unwrap();
    let mut echo = vec![0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping over the tunnel");
    gw.shutdown.cancel();
    gw.done.await.unwrap();
}

fn tls_secret(name: &str, host: &str) -> (Value, String) {
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let b64 = |s: &str| base64_encode(s.as_bytes());
    let cert = ck.cert.pem();
    (
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": name, "namespace": "default"},
               "data": {"tls.crt": b64(&cert), "tls.key": b64(&ck.signing_key.serialize_pem())}}),
        cert,
    )
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<(Version, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = conn.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(c);
        s.send_request(
            Request::get(format!("https://{sni}/"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        s.send_request(
            Request::get("/")
                .header("host", sni)
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap()
    };
    let v = resp.version();
    let b: Bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((v, String::from_utf8_lossy(&b).into_owned()))
}

#[tokio::test]
async fn tls_termination_with_sni_and_bad_secret() {
    let a = backend("a").await;
    let b = backend("b").await;
    let (sa, ca) = tls_secret("a-tls", "a.local");
    let (sb, cb) = tls_secret("b-tls", "b.local");
    let mut bad = tls_secret("bad-tls", "c.local").0;
    bad["data"]["tls.key"] = json!(base64_encode(b"not a key"));
    let gw = start(
        vec![
            sa,
            sb,
            bad,
            ingress(
                "tls",
                json!({"tls": [{"hosts": ["a.local"], "secretName": "a-tls"},
                               {"hosts": ["b.local"], "secretName": "b-tls"},
                               {"hosts": ["c.local"], "secretName": "bad-tls"}],
                       "rules": [
                    {"host": "a.local", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}},
                    {"host": "b.local", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "b", "port": {"number": 80}}}}]}},
                    {"host": "c.local", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "b", "port": {"number": 80}}}}]}}
                ]}),
            ),
        ],
        &[("a", Some(a.addr)), ("b", Some(b.addr))],
    )
    .await;
    let (v, body) = tls_get(gw.https, "a.local", &ca, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(v, Version::HTTP_2);
    assert!(body.contains("\"backend\":\"a\""), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    let (v, body) = tls_get(gw.https, "b.local", &cb, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(v, Version::HTTP_11);
    assert!(body.contains("\"backend\":\"b\""), "{body}");
    // SNI a.local presents a.local's certificate: b's CA does not verify it.
    assert!(tls_get(gw.https, "a.local", &cb, &[]).await.is_err());
    // The broken Secret: no certificate for c.local, a reported problem, others serve.
    assert!(tls_get(gw.https, "c.local", &ca, &[]).await.is_err());
    let rep = gw.reports.iter().find(|r| r.key.name == "tls").unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| p.reason == "InvalidCertificate" && p.message.contains("bad-tls")),
        "{:?}",
        rep.problems
    );
    assert!(tls_get(gw.https, "a.local", &ca, &[]).await.is_ok());
    gw.shutdown.cancel();
    gw.done.await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let b = backend("b").await;
    let gw = start(
        vec![route(
            "r",
            json!({"rules": [{"backendRefs": [{"name": "b", "port": 80}]}]}),
        )],
        &[("b", Some(b.addr))],
    )
    .await;
    let addr = gw.http;
    let slow = tokio::spawn(async move { get(addr, "x.local", "/slow").await });
    // Wait until the request reached the backend, then shut down.
    for _ in 0..100 {
        if b.hits.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.shutdown.cancel();
    let (s, _, _) = slow.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    gw.done.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still accepting after drain"
    );
}

#[tokio::test]
async fn metrics_on_the_admin_listener() {
    let b = backend("b").await;
    let gw = start(
        vec![
            route("r", json!({"hostnames": ["m.local"], "rules": [{"backendRefs": [{"name": "b", "port": 80}]}]})),
            // Half to b, half to a Service that does not exist (500).
            route("w", json!({"hostnames": ["w.local"], "rules": [{"backendRefs": [
                {"name": "b", "port": 80, "weight": 1}, {"name": "gone", "port": 80, "weight": 1}]}]})),
        ],
        &[("b", Some(b.addr))],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(gw.http, "m.local", "/").await.0, StatusCode::OK);
    }
    let mut codes = HashMap::<u16, usize>::new();
    for _ in 0..40 {
        *codes
            .entry(get(gw.http, "w.local", "/").await.0.as_u16())
            .or_default() += 1;
    }
    assert_eq!(codes.len(), 2, "{codes:?}");
    assert_eq!(
        get(gw.http, "nothing.local", "/").await.0,
        StatusCode::NOT_FOUND
    );
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let stop = CancellationToken::new();
    let srv = tokio::spawn(bosun_gateway::serve_admin(
        admin,
        gw.registry.clone(),
        stop.clone(),
    ));
    let (s, _, text) = get(admin_addr, "admin", "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        text.contains(r#"bosun_gateway_requests_total{route="httproute/default/r",service="default/b",code="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"bosun_gateway_requests_total{route="",service="",code="404"} 1"#),
        "{text}"
    );
    // Each (backend, status) of a rule is its own series, named on first use.
    let w: Vec<(&str, u64)> = text
        .lines()
        .filter(|l| l.starts_with(r#"bosun_gateway_requests_total{route="httproute/default/w""#))
        .map(|l| {
            let (labels, n) = l.rsplit_once(' ').unwrap();
            (labels, n.parse().unwrap())
        })
        .collect();
    assert_eq!(w.len(), 2, "{text}");
    assert_eq!(w.iter().map(|(_, n)| n).sum::<u64>(), 40, "{text}");
    let ok = format!(
        r#"bosun_gateway_requests_total{{route="httproute/default/w",service="default/b",code="200"}} {}"#,
        codes[&200]
    );
    assert!(text.contains(&ok), "{ok}\n{text}");
    assert!(
        w.iter()
            .any(|(l, n)| l.contains(r#"code="500""#) && *n == codes[&500] as u64),
        "{text}"
    );
    assert!(
        text.contains(
            r#"bosun_gateway_request_duration_seconds_count{route="httproute/default/r"} 3"#
        ),
        "{text}"
    );
    let bytes_line = text
        .lines()
        .find(|l| {
            l.starts_with(r#"bosun_gateway_response_bytes_total{route="httproute/default/r"}"#)
        })
        .expect("response bytes");
    let n: u64 = bytes_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n > 0);
    // The upstream library's metrics share the registry under the same prefix.
    assert!(
        text.contains("bosun_gateway_upstream_requests_total"),
        "{text}"
    );
    assert_eq!(get(admin_addr, "admin", "/healthz").await.0, StatusCode::OK);
    stop.cancel();
    srv.await.unwrap().unwrap();
    gw.shutdown.cancel();
    gw.done.await.unwrap();
}
