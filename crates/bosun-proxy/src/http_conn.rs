//! One downstream connection as both proxies serve it: the protocol told from its first
//! bytes ([`sniff_stream`]), those bytes replayed ([`Prefixed`]), and HTTP/1.1 (with
//! upgrades) or HTTP/2 served on hyper's own connection types with the drain both share
//! ([`serve`]).
//!
//! The node proxy and the gateway used to differ here: the gateway went through
//! hyper-util's protocol-detecting builder and a graceful-shutdown watcher polled beside
//! every connection; serving a known protocol directly and selecting on the drain tokens
//! costs less per request and keeps one drain behaviour for both.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::upstream::Body;

/// How long a client has to send a request's whole header block.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// After a listener closes, how long HTTP/1.1 keep-alive connections get to send their next
/// request (answered with `Connection: close`) before idle ones are closed. Closing an idle
/// connection races with a request the client may be sending on it at that very moment; a
/// client that keeps sending gets a clean close instead.
pub const KEEPALIVE_GRACE: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// What a connection's first bytes say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface (h2c, gRPC without TLS).
    Http2,
    /// Anything else, or nothing before the deadline.
    Opaque,
    NeedMore,
}

fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    starts(buf, H2_PREFACE, Sniffed::Http2)
        .or_else(|| METHODS.iter().find_map(|m| starts(buf, m, Sniffed::Http1)))
        .unwrap_or(Sniffed::Opaque)
}

/// Whether `buf` begins `pattern`: `whole` once all of it arrived, [`Sniffed::NeedMore`]
/// while `buf` is a prefix of it, `None` when they differ.
fn starts(buf: &[u8], pattern: &[u8], whole: Sniffed) -> Option<Sniffed> {
    let n = buf.len().min(pattern.len());
    (buf[..n] == pattern[..n]).then_some(if n == pattern.len() {
        whole
    } else {
        Sniffed::NeedMore
    })
}

/// Reads `io` until its first bytes tell the protocol, or `deadline` passes (then
/// [`Sniffed::Opaque`]: a silent client may speak a server-first protocol). `None` when the
/// client closed or failed first. The bytes read are returned to be replayed.
pub async fn sniff_stream<I: AsyncRead + Unpin>(
    io: &mut I,
    deadline: tokio::time::Instant,
) -> Option<(Sniffed, Bytes)> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let s = sniff(&buf);
        if s != Sniffed::NeedMore {
            return Some((s, Bytes::from(buf)));
        }
        let mut chunk = [0u8; 64];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Some((Sniffed::Opaque, Bytes::from(buf))),
        }
    }
}

/// A stream whose first bytes (read while sniffing) are replayed before the rest.
pub struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Bytes, inner: I) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The drain signals of a listener's connections.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// The listener closed: HTTP/1.1 answers carry `Connection: close`, idle keep-alive
    /// connections close after [`KEEPALIVE_GRACE`], HTTP/2 clients get GOAWAY; requests in
    /// flight finish.
    pub graceful: CancellationToken,
    /// The drain deadline passed: whatever is still open is dropped.
    pub hard: CancellationToken,
}

/// Serves one connection whose protocol is known (`h2`: HTTP/2, else HTTP/1.1 with
/// upgrades), answering each request with `handle`, until the client closes or `drain`
/// ends it.
pub async fn serve<I, F, Fut>(io: I, h2: bool, handle: F, drain: &Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // One handle per connection, cloned per request: the listener's token is shared by
    // every connection on every thread, this one is not.
    let closing = std::sync::Arc::new(drain.graceful.clone());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let h1 = req.version() < http::Version::HTTP_2;
        let answer = handle(req);
        let closing = closing.clone();
        async move {
            let mut resp = answer.await;
            if h1 && closing.is_cancelled() {
                // Draining: this connection ends after this response, cleanly.
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(io);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => log_end(r),
            _ = drain.graceful.cancelled() => {
                // GOAWAY; streams in flight finish.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => log_end(r),
                    _ = drain.hard.cancelled() => {}
                }
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => log_end(r),
            _ = drain.graceful.cancelled() => {
                // A client that keeps sending gets its next answer with `Connection: close`
                // (see above); closing an idle connection could race with its next request,
                // so that only happens after a grace period. In-flight requests finish.
                let grace = tokio::time::sleep(KEEPALIVE_GRACE);
                tokio::select! {
                    r = conn.as_mut() => return log_end(r),
                    _ = grace => {}
                    _ = drain.hard.cancelled() => return,
                }
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => log_end(r),
                    _ = drain.hard.cancelled() => {}
                }
            }
        }
    }
}

fn log_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r
        && !e.is_incomplete_message()
    {
        tracing::debug!("http connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b""), Sniffed::NeedMore);
        assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"POST "), Sniffed::Http1);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n"), Sniffed::NeedMore);
        assert_eq!(sniff(H2_PREFACE), Sniffed::Http2);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniffed::Opaque);
        assert_eq!(sniff(b"hello\n"), Sniffed::Opaque);
        assert_eq!(sniff(b"GETX"), Sniffed::Opaque);
    }
}
