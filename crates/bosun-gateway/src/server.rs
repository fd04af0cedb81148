//! Listeners: accept loop, optional TLS, HTTP/1.1 + HTTP/2 (ALPN on TLS, prior knowledge
//! on plain TCP) with upgrades, and connection draining on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::ListenerLabels;
use crate::proxy::{ConnInfo, Handler};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After the listener closes, how long HTTP/1.1 keep-alive connections get to send their
/// next request (answered with `Connection: close`) before idle ones are closed. Closing
/// an idle connection races with a request the client may be sending on it at that very
/// moment; a client that keeps sending gets a clean close instead.
pub const KEEPALIVE_GRACE: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown`, then stops accepting and waits up to `drain` for
/// open connections to finish their requests (idle keep-alive connections are closed,
/// HTTP/2 clients get GOAWAY).
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
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
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
        let conn = ConnInfo {
            peer,
            scheme,
            listener_port: local.port(),
        };
        let watcher = graceful.watcher();
        let closing = shutdown.clone();
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let labels = labels.clone();
        // Served start to end on a data-path thread (see `bosun_proxy::workers`).
        bosun_proxy::workers::spawn_connection(stream, move |stream| async move {
            let open = handler
                .metrics
                .open_connections
                .get_or_create(&labels)
                .clone();
            open.inc();
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_conn(s, conn, handler, &builder, watcher, closing).await,
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
                None => serve_conn(stream, conn, handler, &builder, watcher, closing).await,
            }
            open.dec();
        });
    }
    drop(listener);
    tracing::info!(%local, open = graceful.count(), "gateway listener draining");
    let deadline = tokio::time::Instant::now() + drain;
    let grace = tokio::time::Instant::now() + KEEPALIVE_GRACE.min(drain);
    while graceful.count() > 0 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep_until(deadline) => tracing::warn!(%local, "drain timeout; closing remaining connections"),
    }
    Ok(())
}

async fn serve_conn<I>(
    io: I,
    conn: ConnInfo,
    handler: Arc<Handler>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    closing: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let closing = closing.clone();
        async move {
            let h1 = req.version() < http::Version::HTTP_2;
            let mut resp = handler.handle(req, conn).await;
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
    let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(c.into_owned()).await {
        tracing::debug!(peer = %conn.peer, "connection: {e}");
    }
}
