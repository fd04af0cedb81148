//! HTTPS serving shared by the API server and the node agent, hardened against clients
//! that hold connections without using them:
//!
//! - the TLS handshake, the first request's headers (and, for HTTP/1.1, every later
//!   request's headers, idle keep-alive included) must arrive within a timeout;
//! - a connection with no request in flight for `idle_timeout` is closed gracefully;
//! - connections are capped overall and per client IP. At a cap, the oldest connection
//!   that has not yet presented a valid token makes room; connections of authenticated
//!   clients are never pushed out, so unauthenticated ones cannot lock clients out.
//!
//! Handlers find a [`ConnInfo`] in each request's extensions and call
//! [`ConnInfo::mark_authenticated`] once a request proved its token.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long in-flight requests may run on after shutdown before connections are cut.
const DRAIN: Duration = Duration::from_secs(5);
/// How long an idle connection may take to close after being asked to.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// File descriptors kept for everything but client connections.
const FD_RESERVE: u64 = 256;

/// Timeouts and caps of one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections at once, from all clients.
    pub max_connections: usize,
    /// Connections at once from one client IP address.
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    /// For a request's headers; also how long a new connection may wait for its first
    /// request, and an HTTP/1.1 connection between requests.
    pub header_timeout: Duration,
    /// Closes a connection with no request in flight for this long (HTTP/2).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_ip: 512,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

struct ConnState {
    authenticated: AtomicBool,
    /// Whether a request has been received on the connection.
    served: AtomicBool,
    /// Requests in flight (until their response body is done or dropped).
    busy: watch::Sender<usize>,
}

/// The connection a request came on; in every request's extensions.
#[derive(Clone)]
pub struct ConnInfo(Arc<ConnState>, Option<Arc<Vec<u8>>>, SocketAddr);

impl ConnInfo {
    /// The client certificate the connection presented (DER, verified by the TLS
    /// configuration against its client CA), if any.
    pub fn peer_certificate(&self) -> Option<&Arc<Vec<u8>>> {
        self.1.as_ref()
    }

    /// The client's address (for audit records).
    pub fn peer_addr(&self) -> SocketAddr {
        self.2
    }

    /// The client proved its identity: this connection is no longer pushed out to
    /// make room for new ones.
    pub fn mark_authenticated(&self) {
        self.0.authenticated.store(true, Ordering::Relaxed);
    }
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is matched in any
/// case, as HTTP auth schemes are (and as Kubernetes does).
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares in time independent of where the first difference is.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Raises the soft open-file limit to the hard one, as servers that hold many sockets
/// do; returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

struct Entry {
    ip: IpAddr,
    state: Arc<ConnState>,
    evict: CancellationToken,
}

/// Open connections, oldest first.
#[derive(Default)]
struct Registry {
    next: u64,
    conns: BTreeMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Registry {
    fn remove(&mut self, id: u64) {
        if let Some(e) = self.conns.remove(&id)
            && let Some(n) = self.per_ip.get_mut(&e.ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
    }

    /// Closes the oldest unauthenticated connection (of `ip`, when given).
    fn evict_oldest(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .iter()
            .find(|(_, e)| {
                !e.state.authenticated.load(Ordering::Relaxed) && ip.is_none_or(|ip| e.ip == ip)
            })
            .map(|(id, e)| {
                e.evict.cancel();
                *id
            });
        match victim {
            Some(id) => {
                self.remove(id);
                true
            }
            None => false,
        }
    }

    fn admit(&mut self, ip: IpAddr, max: usize, per_ip: usize) -> Option<(u64, Entry)> {
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= per_ip && !self.evict_oldest(Some(ip)) {
            return None;
        }
        if self.conns.len() >= max && !self.evict_oldest(None) {
            return None;
        }
        let (busy, _) = watch::channel(0);
        let state = Arc::new(ConnState {
            authenticated: AtomicBool::new(false),
            served: AtomicBool::new(false),
            busy,
        });
        let evict = CancellationToken::new();
        self.next += 1;
        let id = self.next;
        self.conns.insert(
            id,
            Entry {
                ip,
                state: state.clone(),
                evict: evict.clone(),
            },
        );
        *self.per_ip.entry(ip).or_default() += 1;
        Some((id, Entry { ip, state, evict }))
    }
}

fn lock(r: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frees a connection's place when its task ends.
struct Slot {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry).remove(self.id);
    }
}

/// Counts a request as in flight until its response body is finished or dropped.
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: &Arc<ConnState>) -> Busy {
        state.served.store(true, Ordering::Relaxed);
        state.busy.send_modify(|n| *n += 1);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.send_modify(|n| *n = n.saturating_sub(1));
    }
}

struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` over TLS (HTTP/2 and HTTP/1.1) on `listener` with `limits` until
/// `shutdown`, then lets requests in flight finish for a few seconds.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = if tls.alpn_protocols.is_empty() {
        let mut c = (*tls).clone();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(c)
    } else {
        tls
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Never more connections than file descriptors to hold them.
    let fds = raise_nofile_limit().unwrap_or(1024);
    let max = limits
        .max_connections
        .min(fds.saturating_sub(FD_RESERVE).max(64) as usize);
    let limits = Arc::new(limits);
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admitted = lock(&registry).admit(peer.ip(), max, limits.max_connections_per_ip);
        let Some((id, entry)) = admitted else {
            tracing::debug!(%peer, "connection refused: connection limit reached");
            continue;
        };
        let slot = Slot {
            registry: registry.clone(),
            id,
        };
        conns.spawn(serve_conn(
            tcp,
            peer,
            acceptor.clone(),
            app.clone(),
            limits.clone(),
            entry,
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN + CLOSE_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    Ok(())
}

/// Resolves once no request has been in flight for `limit`.
async fn idle(busy: &mut watch::Receiver<usize>, limit: Duration) {
    loop {
        if *busy.borrow_and_update() == 0 {
            tokio::select! {
                _ = tokio::time::sleep(limit) => return,
                r = busy.changed() => if r.is_err() { return },
            }
        } else if busy.changed().await.is_err() {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    limits: Arc<Limits>,
    entry: Entry,
    shutdown: CancellationToken,
    _slot: Slot,
) {
    let _ = tcp.set_nodelay(true);
    let Entry { state, evict, .. } = entry;
    let stream = tokio::select! {
        _ = evict.cancelled() => return,
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let peer_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::new(c.to_vec()));
    let info = ConnInfo(state.clone(), peer_cert, peer);
    let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let info = info.clone();
        async move {
            let busy = Busy::new(&info.0);
            req.extensions_mut().insert(info);
            let resp = app.oneshot(req.map(Body::new)).await?;
            Ok::<_, Infallible>(resp.map(|b| {
                Body::new(Tracked {
                    inner: b,
                    _busy: busy,
                })
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(stream),
        hyper_util::service::TowerToHyperService::new(svc),
    );
    tokio::pin!(conn);
    let mut busy = state.busy.subscribe();
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let limit = if state.served.load(Ordering::Relaxed) {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
        let deadline = closing.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = evict.cancelled() => {
                tracing::debug!(%peer, "connection closed to make room for another");
                return;
            }
            _ = tokio::time::sleep_until(deadline), if closing.is_some() => return,
            _ = shutdown.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + DRAIN);
            }
            _ = idle(&mut busy, limit), if closing.is_none() => {
                tracing::debug!(%peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_in_any_case() {
        let mut h = http::HeaderMap::new();
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", "BeArEr abc"] {
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            assert_eq!(bearer_token(&h), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearerabc", "Bearer  "] {
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            assert_eq!(bearer_token(&h), None, "{v}");
        }
    }

    #[test]
    fn caps_push_out_the_oldest_unauthenticated() {
        let mut r = Registry::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let (id1, e1) = r.admit(a, 3, 2).unwrap();
        e1.state.authenticated.store(true, Ordering::Relaxed);
        let (_, e2) = r.admit(a, 3, 2).unwrap();
        // Per IP: the unauthenticated one goes, the authenticated one stays.
        let (_, e3) = r.admit(a, 3, 2).unwrap();
        assert!(e2.evict.is_cancelled());
        assert!(!e1.evict.is_cancelled());
        // Overall: the oldest unauthenticated of any IP goes.
        let (_, _e4) = r.admit(b, 3, 2).unwrap();
        assert_eq!(r.conns.len(), 3);
        let (_, _e5) = r.admit(b, 3, 2).unwrap();
        assert!(e3.evict.is_cancelled());
        // When every connection is authenticated, a new one is refused.
        for e in r.conns.values() {
            e.state.authenticated.store(true, Ordering::Relaxed);
        }
        assert!(r.admit(b, 3, 2).is_none());
        r.remove(id1);
        assert!(r.admit(b, 3, 2).is_none(), "b is at its own cap");
        assert!(r.admit(a, 3, 2).is_some());
    }
}
