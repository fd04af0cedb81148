//! Listeners: accept loop, optional TLS, HTTP/1.1 + HTTP/2 (ALPN on TLS, prior knowledge
//! on plain TCP) with upgrades, and connection draining on shutdown. Each connection is
//! served by [`bosun_proxy::http_conn`], as the node proxy serves its own.

use std::sync::Arc;
use std::time::Duration;

use bosun_proxy::http_conn::{self, Drain, Prefixed, Sniffed};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::ListenerLabels;
use crate::proxy::{ConnInfo, Handler};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown`, then stops accepting and waits up to `drain` for
/// open connections to finish their requests (idle keep-alive connections are closed after
/// [`http_conn::KEEPALIVE_GRACE`], HTTP/2 clients get GOAWAY).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
    drain: Duration,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let scheme: &'static str = if tls.is_some() { "https" } else { "http" };
    let labels = ListenerLabels { listener: scheme };
    let signals = Drain {
        graceful: shutdown.clone(),
        hard: CancellationToken::new(),
    };
    let conns = TaskTracker::new();
    tracing::info!(%local, scheme, "gateway listening");
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%local, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        handler.metrics.connections.get_or_create(&labels).inc();
        let conn = ConnInfo::new(peer, scheme, local.port());
        let handler = handler.clone();
        let tls = tls.clone();
        let signals = signals.clone();
        let open = handler
            .metrics
            .open_connections
            .get_or_create(&labels)
            .clone();
        // Open until the connection ends: draining waits for it.
        let tracked = conns.token();
        // Served start to end on a data-path thread (see `bosun_proxy::workers`).
        bosun_proxy::workers::spawn_connection(stream, move |stream| async move {
            let _tracked = tracked;
            open.inc();
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => match s.get_ref().1.alpn_protocol() {
                            Some(p) => {
                                let h2 = p == b"h2";
                                let io = Prefixed::new(Bytes::new(), s);
                                serve_conn(io, h2, conn, handler, &signals).await
                            }
                            // No ALPN: the first bytes tell.
                            None => serve_sniffed(s, conn, handler, &signals).await,
                        },
                        Ok(Err(e)) => {
                            handler.metrics.tls_handshake_errors.inc();
                            tracing::debug!(%peer, "TLS handshake: {e}");
                        }
                        Err(_) => {
                            handler.metrics.tls_handshake_errors.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
                None => serve_sniffed(stream, conn, handler, &signals).await,
            }
            open.dec();
        });
    }
    drop(listener);
    conns.close();
    tracing::info!(%local, open = conns.len(), "gateway listener draining");
    tokio::select! {
        _ = conns.wait() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!(%local, "drain timeout; closing remaining connections"),
    }
    signals.hard.cancel();
    Ok(())
}

/// Serves a connection whose protocol its first bytes tell: the HTTP/2 preface, else
/// HTTP/1.1 (hyper answers bytes that are not HTTP with 400). A client silent past
/// [`http_conn::HEADER_READ_TIMEOUT`] (as long as a request's header block may take) is
/// closed.
async fn serve_sniffed<I>(mut io: I, conn: ConnInfo, handler: Arc<Handler>, signals: &Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + http_conn::HEADER_READ_TIMEOUT;
    let Some((kind, prefix)) = http_conn::sniff_stream(&mut io, deadline).await else {
        return;
    };
    if kind == Sniffed::Opaque && prefix.is_empty() {
        tracing::debug!(peer = %conn.peer, "no request before the deadline");
        return;
    }
    let io = Prefixed::new(prefix, io);
    serve_conn(io, kind == Sniffed::Http2, conn, handler, signals).await
}

async fn serve_conn<I>(io: I, h2: bool, conn: ConnInfo, handler: Arc<Handler>, signals: &Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Cloned per request: this connection's own handle stays in its thread's cache, where
    // the listener's is shared by every thread.
    let state = Arc::new((handler, conn));
    let handle = move |req| {
        let state = state.clone();
        async move { state.0.handle(req, &state.1).await }
    };
    http_conn::serve(io, h2, handle, signals).await
}
