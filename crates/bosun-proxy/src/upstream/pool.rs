//! Kept-alive HTTP/1.1 connections to one endpoint.
//!
//! hyper-util's legacy client ran each connection as a task of its own and spawned one
//! more per HTTP/1 response to put the connection back in the pool once the body ended:
//! every proxied request crossed three tasks (and often both worker threads). Here the
//! request future and then its response body drive the connection themselves, so a
//! request is served start to end by the task of the downstream connection, and the
//! connection goes back to its endpoint's idle list when the body's last frame is read.
//! An idle connection is not polled; one the server closed meanwhile is noticed (and
//! replaced) when it is taken out again.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Body, CONNECT_TIMEOUT, error_chain};

/// Idle connections older than this are closed rather than reused (servers commonly close
/// theirs after 60-75 s; reusing one they are closing costs a failed attempt).
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// At most this many idle connections are kept per endpoint.
const MAX_IDLE: usize = 256;

/// Why a request could not be exchanged.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// The connection failed during the exchange (the request may have been sent).
    Http(String),
}

/// The connection state machine (reads, writes, keep-alive). In a `Mutex` only to be
/// `Sync`, as `Body` (a `BoxBody`) must be: it is only ever polled through `&mut`.
type Driver = Mutex<Pin<Box<Connection<TokioIo<TcpStream>, Body>>>>;

/// One connection: the handle requests are sent with, and the connection state machine,
/// polled by whoever is using the connection (None once it has ended).
struct Conn {
    tx: SendRequest<Body>,
    io: Option<Driver>,
    since: Instant,
}

impl Conn {
    /// Lets the connection read and write what it can; true while it is open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(io) = &mut self.io {
            let io = io.get_mut().unwrap_or_else(|e| e.into_inner());
            match io.as_mut().poll(cx) {
                Poll::Pending => return true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => tracing::debug!("upstream connection: {e}"),
            }
            self.io = None;
        }
        false
    }

    /// Waits until the connection takes a request (Err: it closed).
    async fn ready(&mut self) -> hyper::Result<()> {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            self.tx.poll_ready(cx)
        })
        .await
    }

    /// Sends `req`, driving the connection until the response head arrives.
    async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let mut fut = std::pin::pin!(self.tx.try_send_request(req));
        let io = &mut self.io;
        std::future::poll_fn(|cx| {
            if let Some(c) = io {
                let c = c.get_mut().unwrap_or_else(|e| e.into_inner());
                match c.as_mut().poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) => *io = None,
                    Poll::Ready(Err(e)) => {
                        tracing::debug!("upstream connection: {e}");
                        *io = None;
                    }
                }
            }
            fut.as_mut().poll(cx)
        })
        .await
    }
}

/// The idle HTTP/1.1 connections of one endpoint, most recently used last, kept per
/// thread ([`crate::workers::slot`]): a connection opened on a data-path thread is
/// registered with that thread's runtime, and reused there it wakes no other thread.
pub(super) struct H1Pool {
    addr: std::net::SocketAddr,
    idle: Box<[Mutex<Vec<Conn>>]>,
}

impl H1Pool {
    pub(super) fn new(addr: std::net::SocketAddr) -> Arc<H1Pool> {
        Arc::new(H1Pool {
            addr,
            idle: (0..crate::workers::slot_count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        })
    }

    /// Idle connections of every thread (tests).
    #[cfg(test)]
    pub(super) fn idle_len(&self) -> usize {
        self.idle
            .iter()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// The calling thread's idle list.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle[crate::workers::slot() % self.idle.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is young enough.
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if now.duration_since(c.since) < IDLE_TIMEOUT {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, mut c: Conn) {
        if c.io.is_none() || c.tx.is_closed() {
            return;
        }
        let now = Instant::now();
        c.since = now;
        let mut idle = self.lock();
        // The oldest are first: drop those past their time (closing their connections).
        let stale = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
            .count();
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| SendError::Connect("connect timeout".into()))?
            .map_err(|e| SendError::Connect(format!("tcp connect error: {e}")))?;
        s.set_nodelay(true)
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let (tx, io) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        Ok(Conn {
            tx,
            io: Some(Mutex::new(Box::pin(io))),
            since: Instant::now(),
        })
    }

    /// Sends `req` (origin-form target, `Host` set) on an idle connection, or a new one
    /// when none is left. A request that a closing idle connection did not take is sent on
    /// the next one. The connection returns to the pool when the response body has been
    /// read to its end; a body dropped before that closes it.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        while let Some(mut c) = self.checkout() {
            // The previous exchange's end may not have been processed yet; a connection
            // the server closed while it was idle fails here.
            if c.ready().await.is_err() {
                continue;
            }
            match c.send(req).await {
                Ok(resp) => return Ok(self.pooled(resp, c)),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Http(error_chain(&e.into_error()))),
                },
            }
        }
        let mut c = self.connect().await?;
        match c.send(req).await {
            Ok(resp) => Ok(self.pooled(resp, c)),
            Err(e) => Err(SendError::Http(error_chain(&e.into_error()))),
        }
    }

    fn pooled(self: &Arc<Self>, resp: Response<Incoming>, c: Conn) -> Response<Body> {
        resp.map(|body| {
            let mut b = PooledBody {
                body,
                conn: Some(c),
                pool: self.clone(),
            };
            // Empty bodies (HEAD, 204, 304, Content-Length: 0) are at their end already.
            if b.body.is_end_stream() {
                b.release();
            }
            http_body_util::BodyExt::boxed(b)
        })
    }
}

/// A response body that drives its connection while it is read and hands the connection
/// back when it has been read to the end.
struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<H1Pool>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.checkin(c);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(c) = &mut this.conn {
            c.drive(cx);
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            // The end (a chunked body's end is only known here).
            Poll::Ready(None) => this.release(),
            // A sized body is at its end with its last frame.
            Poll::Ready(Some(Ok(_))) => {
                if this.body.is_end_stream() {
                    this.release();
                }
            }
            // A broken body: its connection is not reused.
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Pending => {}
        }
        r.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::full;

    /// An HTTP/1.1 server counting its connections; `/chunked` answers without a length,
    /// `/close` with `Connection: close`, `/big` with 1 MiB.
    async fn server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let n = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let mut r = Response::new(match req.uri().path() {
                            "/chunked" => http_body_util::StreamBody::new(futures::stream::iter(
                                (0..3).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from("a")))),
                            ))
                            .map_err(|e| match e {})
                            .boxed(),
                            "/big" => full(vec![b'x'; 1 << 20]),
                            _ => full("ok"),
                        });
                        if req.uri().path() == "/close" {
                            r.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, conns)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path)
            .header(http::header::HOST, "test")
            .body(full(""))
            .unwrap()
    }

    async fn body(p: &Arc<H1Pool>, path: &str) -> Bytes {
        let resp = p.send(get(path)).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, conns) = server().await;
        let p = H1Pool::new(addr);
        for path in ["/", "/chunked", "/", "/chunked", "/"] {
            assert!(!body(&p, path).await.is_empty());
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(p.idle_len(), 1);

        // Two exchanges at once need two connections; both are kept afterwards.
        let (a, b) = (
            p.send(get("/")).await.unwrap(),
            p.send(get("/")).await.unwrap(),
        );
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        let _ = (a.into_body().collect().await, b.into_body().collect().await);
        assert_eq!(p.idle_len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamed_request_body_is_sent_whole() {
        // Answers with the number of request body bytes it read.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                        Ok::<_, Infallible>(Response::new(full(n.unwrap_or(0).to_string())))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let p = H1Pool::new(addr);
        for _ in 0..2 {
            // 64 chunks of 16 KiB without a length: chunked, written while the request
            // future drives the connection.
            let chunks =
                (0..64).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![7u8; 16 << 10]))));
            let body = http_body_util::StreamBody::new(futures::stream::iter(chunks))
                .map_err(|e| match e {})
                .boxed();
            let req = Request::post("/")
                .header(http::header::HOST, "test")
                .body(body)
                .unwrap();
            let resp = p.send(req).await.unwrap();
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], (64 * (16 << 10)).to_string().as_bytes());
        }
        assert_eq!(p.idle_len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (addr, conns) = server().await;
        let p = H1Pool::new(addr);
        let resp = p.send(get("/big")).await.unwrap();
        drop(resp);
        assert_eq!(p.idle_len(), 0);
        assert_eq!(&body(&p, "/").await[..], b"ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_the_server_closes_are_not_reused() {
        let (addr, conns) = server().await;
        let p = H1Pool::new(addr);
        for _ in 0..3 {
            assert_eq!(&body(&p, "/close").await[..], b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_the_server_closed_is_replaced() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection with keep-alive, then closes it while idle.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let n = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let p = H1Pool::new(addr);
        for i in 1..=3 {
            assert_eq!(&body(&p, "/").await[..], b"ok");
            assert_eq!(conns.load(Ordering::SeqCst), i);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
