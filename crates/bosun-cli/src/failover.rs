//! One `kube::Client` over several API servers, for agents given `--server` more than once.
//!
//! Requests go to the server that answered last. A request that cannot connect (the server
//! is down: refused, unreachable, or no answer within the connect timeout) was never
//! received, so it is sent to the next server at once; any other transport failure is
//! returned (the request may have been applied) and the next request starts at the next
//! server. Watches ride on this: when a server dies its watch streams end, the watchers
//! re-watch from their last resourceVersion, and that request lands on a live server, which
//! reads the same etcd revisions, so no event is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use kube::client::Body;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

pub type Server = BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>;

#[derive(Clone)]
pub struct Failover {
    servers: Arc<[(String, Server)]>,
    current: Arc<AtomicUsize>,
}

impl Failover {
    /// `servers`: each server's URL and its HTTP service (base URI and auth applied).
    pub fn new(servers: Vec<(String, Server)>) -> Self {
        Failover {
            servers: servers.into(),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Whether the request never reached the server.
pub fn is_connect_error(e: &BoxError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn rebuild(parts: &http::request::Parts, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

impl Service<Request<Body>> for Failover {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt waits for its own server's readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.servers.len();
            let start = this.current.load(Ordering::Relaxed) % n.max(1);
            let (parts, body) = req.into_parts();
            // A body that cannot be copied (a stream) gets one attempt.
            let spare = body.try_clone();
            let mut body = Some(body);
            let mut errors: Vec<String> = Vec::new();
            for i in 0..n {
                let idx = (start + i) % n;
                let b = match body.take() {
                    Some(b) => b,
                    None => match spare.as_ref().and_then(Body::try_clone) {
                        Some(b) => b,
                        None => break,
                    },
                };
                let (url, svc) = &this.servers[idx];
                match svc.clone().oneshot(rebuild(&parts, b)).await {
                    Ok(resp) => {
                        if idx != start
                            && this
                                .current
                                .compare_exchange(start, idx, Ordering::Relaxed, Ordering::Relaxed)
                                .is_ok()
                        {
                            tracing::warn!(server = %url, "API server failover: now using {url}");
                        }
                        return Ok(resp);
                    }
                    Err(e) if is_connect_error(&e) => {
                        tracing::debug!(server = %url, error = %e, "API server unreachable");
                        errors.push(format!("{url}: {e}"));
                    }
                    Err(e) => {
                        let next = (idx + 1) % n;
                        if n > 1
                            && this
                                .current
                                .compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed)
                                .is_ok()
                        {
                            let to = &this.servers[next].0;
                            tracing::warn!(server = %url, error = %e, "API server failover: {url} failed; next requests go to {to}");
                        }
                        return Err(e);
                    }
                }
            }
            Err(format!("no API server answered: {}", errors.join("; ")).into())
        })
    }
}
