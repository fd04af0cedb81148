//! HTTPS serving (HTTP/2 and HTTP/1.1) with authentication (`auth.rs`).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ApiServer;

/// How long in-flight requests may run on after shutdown before connections are cut.
const DRAIN: Duration = Duration::from_secs(5);

pub(crate) async fn serve(
    server: ApiServer,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "API server listening");
    }
    let tls = if tls.alpn_protocols.is_empty() {
        let mut c = (*tls).clone();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(c)
    } else {
        tls
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let auth_state = crate::auth::AuthState {
        admin_token: Arc::new(server.inner().token.clone()),
        api: server.router(),
    };
    let app = server.router().layer(axum::middleware::from_fn_with_state(
        auth_state,
        crate::auth::middleware,
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        conns.spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            // A client certificate, when presented, was verified against the cluster CA by
            // the TLS config; the auth middleware reads who it names.
            let client_cert = crate::auth::PeerCert(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Arc::new(c.to_vec())),
            );
            let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
                app,
                move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(client_cert.clone());
                    req
                },
            ));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {}
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    Ok(())
}
