//! Loopback test servers and a node proxy fed with hand-made Services and EndpointSlices.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bosun_proxy::upstream::{Body, Upstreams, full};
use bosun_proxy::{ProxyConfig, serve};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Ok,
    Slow(Duration),
    Status(u16),
    /// Accepts, reads the request and closes the connection without answering.
    Reset,
    /// Answers the headers of a 100-byte response, 3 bytes of it, and closes: a process
    /// killed mid-response.
    CutShort,
}

/// An HTTP/1.1 + HTTP/2 test server answering `NAME version=... traceparent=...`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    pub async fn start(name: &str, behaviour: Behaviour) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (n, h, s) = (name.to_string(), hits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (n, h) = (n.clone(), h.clone());
                if let Behaviour::Reset | Behaviour::CutShort = behaviour {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf).await;
                        h.fetch_add(1, Ordering::SeqCst);
                        if let Behaviour::CutShort = behaviour {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                                .await;
                            let _ = stream.flush().await;
                        }
                        drop(stream);
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                        let (n, h) = (n.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            if req.headers().contains_key("upgrade") {
                                // Echo protocol after 101, prefixed by the backend name.
                                let on = hyper::upgrade::on(&mut req);
                                let name = n.clone();
                                tokio::spawn(async move {
                                    if let Ok(up) = on.await {
                                        let mut io = TokioIo::new(up);
                                        let _ = io.write_all(format!("{name}:").as_bytes()).await;
                                        let (mut r, mut w) = tokio::io::split(io);
                                        let _ = tokio::io::copy(&mut r, &mut w).await;
                                    }
                                });
                                let resp: Response<Body> = Response::builder()
                                    .status(101)
                                    .header("connection", "upgrade")
                                    .header("upgrade", "echo")
                                    .body(full(""))
                                    .unwrap();
                                return Ok::<_, Infallible>(resp);
                            }
                            let version = format!("{:?}", req.version());
                            let tp = req
                                .headers()
                                .get("traceparent")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string();
                            let grpc = req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = match behaviour {
                                Behaviour::Slow(d) => {
                                    tokio::time::sleep(d).await;
                                    200
                                }
                                Behaviour::Status(s) => s,
                                _ => 200,
                            };
                            let text = format!(
                                "{n} version={version} traceparent={tp} body={}\n",
                                body.len()
                            );
                            let resp: Response<Body> = if grpc {
                                // gRPC-style: echo the message, status in trailers.
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                trailers.insert("x-served-by", n.parse().unwrap());
                                let frames = vec![
                                    Ok::<_, Infallible>(hyper::body::Frame::data(body)),
                                    Ok(hyper::body::Frame::trailers(trailers)),
                                ];
                                let b =
                                    http_body_util::StreamBody::new(futures::stream::iter(frames));
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(b.map_err(|e: Infallible| match e {}).boxed())
                                    .unwrap()
                            } else {
                                Response::builder().status(status).body(full(text)).unwrap()
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            hits,
            stop,
        }
    }
}

/// A TCP echo server (not HTTP).
pub async fn echo_server(banner: Option<&'static [u8]>) -> (SocketAddr, CancellationToken) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = tokio::select! {
                _ = s.cancelled() => return,
                r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            tokio::spawn(async move {
                if let Some(b) = banner {
                    let _ = c.write_all(b).await;
                }
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, stop)
}

pub fn service(name: &str, vip: IpAddr, port: u16, ann: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            annotations: Some(
                ann.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(vip.to_string()),
            ports: Some(vec![ServicePort {
                name: Some("web".into()),
                port: port.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One slice per endpoint so that each test backend can keep its own port.
pub fn slice(
    svc: &str,
    name: &str,
    addr: SocketAddr,
    ready: bool,
    terminating: bool,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                svc.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![addr.ip().to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(terminating),
            }),
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Pod".into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("web".into()),
            port: Some(addr.port().into()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// A node proxy on a random 127.x.y.z VIP (loopback addresses are local without an
/// interface) with a detached endpoint cache.
pub struct Proxy {
    pub ups: Upstreams,
    pub vip: IpAddr,
    pub port: u16,
    pub registry: Arc<Registry>,
    pub metrics_addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn random_vip() -> IpAddr {
    let r: u32 = rand::random();
    IpAddr::V4(Ipv4Addr::new(
        127,
        100 + (r % 100) as u8,
        (r >> 8) as u8,
        1 + ((r >> 16) % 250) as u8,
    ))
}

pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Proxy {
    pub async fn start() -> Proxy {
        let mut registry = Registry::default();
        let ups = Upstreams::detached(registry.sub_registry_with_prefix("bosun_proxy"));
        let registry = Arc::new(registry);
        let vip = random_vip();
        let port = free_port(vip);
        let metrics_addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        );
        let mut cfg = ProxyConfig::new("unused0", IpAddr::V4(Ipv4Addr::LOCALHOST));
        cfg.manage_vips = false;
        cfg.node_port_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        cfg.metrics_listen = Some(metrics_addr);
        cfg.sniff_timeout = Duration::from_millis(200);
        cfg.drain_timeout = Duration::from_secs(2);
        let stop = CancellationToken::new();
        let (u, r, s) = (ups.clone(), registry.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(u, cfg, r, s).await {
                panic!("proxy: {e:#}");
            }
        });
        Proxy {
            ups,
            vip,
            port,
            registry,
            metrics_addr,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }

    /// Declares Service `name` on this proxy's VIP and waits until it listens.
    pub async fn add_service(&self, name: &str, ann: &[(&str, &str)], backends: &[&Backend]) {
        self.ups
            .apply_service(&service(name, self.vip, self.port, ann));
        for b in backends {
            self.ups
                .apply_endpoint_slice(&slice(name, &b.name, b.addr, true, false));
        }
        wait_listening(self.addr()).await;
    }

    pub async fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }
}

pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} never started listening");
}

pub fn h1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn get(
    c: &Client<HttpConnector, Body>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Value of a counter line like `NAME{labels} 3` summed over label sets.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
