//! HTTPS serving with bearer-token auth, and pod logs proxied to a node agent over TLS.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bosun_apiserver::{ApiServer, ApiServerConfig};
use bytes::Bytes;
use common::{MemStore, TestApi, pod};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn pki() -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pki {
        ca_pem: cert.pem(),
        ca_der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A rustls server config for 127.0.0.1 signed by the CA.
fn server_tls(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

fn client_tls(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

fn kube_client(port: u16, pki: &Pki, token: Option<&str>) -> kube::Client {
    let mut cfg = kube::Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
    cfg.root_cert = Some(vec![pki.ca_der.to_vec()]);
    if let Some(t) = token {
        cfg.auth_info.token = Some(t.to_string().into());
    }
    kube::Client::try_from(cfg).unwrap()
}

#[tokio::test]
async fn https_with_bearer_token() {
    let pki = pki();
    let store = Arc::new(MemStore::new(Duration::from_millis(200)));
    let server = ApiServer::new(ApiServerConfig::new(store, "s3cret", pki.ca_pem.clone()))
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let task = {
        let server = server.clone();
        let tls = server_tls(&pki, &[]);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { server.serve_tls(listener, tls, shutdown).await })
    };

    let good = kube_client(port, &pki, Some("s3cret"));
    let cms: Api<ConfigMap> = Api::default_namespaced(good.clone());
    assert!(
        cms.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    for token in [None, Some("wrong")] {
        let bad: Api<ConfigMap> = Api::default_namespaced(kube_client(port, &pki, token));
        match bad.list(&ListParams::default()).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 401);
                assert_eq!(s.reason, "Unauthorized");
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    // /version is public, as in Kubernetes.
    let v = kube_client(port, &pki, None)
        .apiserver_version()
        .await
        .unwrap();
    assert_eq!(v.minor, "33");

    // HTTP/2 is negotiated by ALPN.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(&pki, &[b"h2"]))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get(format!("https://127.0.0.1:{port}/api/v1/namespaces"))
                .header("authorization", "Bearer s3cret")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "listener closed"
    );
}

/// A node agent's log endpoint: checks the token, echoes the request, then streams lines.
async fn fake_agent(pki: &Pki) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(pki, &[b"http/1.1"]));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        if auth != "Bearer tok" {
                            return Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(401)
                                    .body(Body::from("denied"))
                                    .unwrap(),
                            );
                        }
                        let uri = req.uri().to_string();
                        let lines = futures::stream::iter(0..3).then(move |i| {
                            let uri = uri.clone();
                            async move {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                Ok::<_, std::convert::Infallible>(Bytes::from(if i == 0 {
                                    format!("{uri}\n")
                                } else {
                                    format!("line {i}\n")
                                }))
                            }
                        });
                        Ok(http::Response::new(Body::from_stream(lines)))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

use futures::StreamExt;

#[tokio::test]
async fn pod_logs_are_proxied_to_the_agent() {
    let pki = pki();
    let agent_port = fake_agent(&pki).await;
    let store = Arc::new(MemStore::new(Duration::from_millis(200)));
    let mut cfg = ApiServerConfig::new(store.clone(), "tok", pki.ca_pem.clone());
    cfg.max_body_bytes = 1 << 20;
    let server = ApiServer::new(cfg).await.unwrap();
    let api = TestApi {
        router: server.router(),
        server,
        store,
        dir: None,
    };

    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": agent_port}}}});
    let r = api.post("/api/v1/nodes", &node).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut p = pod("web");
    p["spec"]["nodeName"] = json!("n1");
    api.post("/api/v1/namespaces/default/pods", &p).await;

    let resp = api
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/namespaces/default/pods/web/log?follow=true&tailLines=10")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(
        text,
        "/containerLogs/default/web/main?follow=true&tailLines=10\nline 1\nline 2\n"
    );

    // Two containers and no name: Kubernetes' 400.
    let mut two = pod("two");
    two["spec"]["nodeName"] = json!("n1");
    two["spec"]["containers"] = json!([{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]);
    api.post("/api/v1/namespaces/default/pods", &two).await;
    let r = api.get("/api/v1/namespaces/default/pods/two/log").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        "a container name must be specified for pod two, choose one of: [a b]"
    );
    let r = api
        .get("/api/v1/namespaces/default/pods/two/log?container=b")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.starts_with("/containerLogs/default/two/b"));
    let r = api
        .get("/api/v1/namespaces/default/pods/two/log?container=zz")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Unbound pods have no logs yet.
    api.post("/api/v1/namespaces/default/pods", &pod("pending"))
        .await;
    let r = api.get("/api/v1/namespaces/default/pods/pending/log").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.get("/api/v1/namespaces/default/pods/none/log")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
