//! Shared test scaffolding: an API server over the in-memory store, driven with real
//! HTTP requests through the router.
#![allow(dead_code)]

pub mod memstore;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_store::{RedbOptions, RedbStore, Store};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub use memstore::MemStore;

pub struct TestApi {
    pub server: ApiServer,
    pub router: Router,
    pub store: Arc<dyn Store>,
    /// Holds the store's directory for the test's lifetime.
    pub dir: Option<tempfile::TempDir>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestApi {
    /// An API server over the embedded redb store in a fresh directory (or over the
    /// in-memory store with `BOSUN_TEST_STORE=memory`).
    pub async fn new() -> TestApi {
        if std::env::var("BOSUN_TEST_STORE").as_deref() == Ok("memory") {
            return TestApi::with_store(Arc::new(MemStore::new(Duration::from_millis(200))), None)
                .await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RedbOptions {
            progress_interval: Duration::from_millis(200),
            ..RedbOptions::default()
        };
        let store = RedbStore::open(&dir.path().join("store.redb"), opts).expect("open redb");
        TestApi::with_store(store, Some(dir)).await
    }

    pub async fn with_store(store: Arc<dyn Store>, dir: Option<tempfile::TempDir>) -> TestApi {
        let mut cfg = ApiServerConfig::new(store.clone(), "secret-token", "");
        cfg.max_body_bytes = 64 * 1024;
        let server = ApiServer::new(cfg).await.expect("api server");
        TestApi {
            router: server.router(),
            server,
            store,
            dir,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(&self, method: Method, uri: &str, ct: &str, body: impl Into<Body>) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if !ct.is_empty() {
            b = b.header("content-type", ct);
        }
        self.send(b.body(body.into()).unwrap()).await
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.call(Method::GET, uri, "", Body::empty()).await
    }

    pub async fn get_accept(&self, uri: &str, accept: &str) -> Resp {
        self.send(
            Request::get(uri)
                .header("accept", accept)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn post(&self, uri: &str, v: &Value) -> Resp {
        self.call(Method::POST, uri, "application/json", v.to_string())
            .await
    }

    pub async fn put(&self, uri: &str, v: &Value) -> Resp {
        self.call(Method::PUT, uri, "application/json", v.to_string())
            .await
    }

    pub async fn patch(&self, uri: &str, ct: &str, v: &Value) -> Resp {
        self.call(Method::PATCH, uri, ct, v.to_string()).await
    }

    pub async fn delete(&self, uri: &str, v: Option<&Value>) -> Resp {
        let body = v.map(|v| v.to_string()).unwrap_or_default();
        self.call(
            Method::DELETE,
            uri,
            if v.is_some() { "application/json" } else { "" },
            body,
        )
        .await
    }

    /// Starts a watch and returns a reader of its events.
    pub async fn watch(&self, uri: &str) -> WatchReader {
        let resp = self
            .router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "watch {uri}");
        WatchReader {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

pub struct WatchReader {
    body: Body,
    buf: Vec<u8>,
}

impl WatchReader {
    /// The next event, or None when the stream ended or nothing came within 5 s.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event json"));
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .ok()??;
            if let Ok(data) = frame.expect("frame").into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_event(&mut self) -> Option<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

pub fn deployment(name: &str, replicas: i64) -> Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}
            }
        }
    })
}

pub fn configmap(name: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    })
}

pub fn pod(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    })
}
