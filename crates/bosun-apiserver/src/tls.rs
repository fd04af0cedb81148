//! HTTPS serving (HTTP/2 and HTTP/1.1) with authentication, authorization and audit
//! (`auth.rs`), through
//! `bosun_serve` (timeouts and connection caps).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ApiServer;

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
    let auth_state: crate::gate::AuthState = server.inner().clone();
    let app = server.router().layer(axum::middleware::from_fn_with_state(
        auth_state,
        crate::gate::middleware,
    ));
    let limits = server.inner().limits.clone();
    bosun_serve::serve_tls(listener, tls, app, limits, shutdown).await
}
