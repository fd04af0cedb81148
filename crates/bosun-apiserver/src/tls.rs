//! HTTPS serving (HTTP/2 and HTTP/1.1) with bearer-token authentication, through
//! `bosun_serve` (timeouts and connection caps).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bosun_serve::{ConnInfo, bearer_token, same_secret};
use tokio_util::sync::CancellationToken;

use crate::ApiServer;
use crate::error::ApiError;

/// Paths Kubernetes serves to anyone (`system:public-info-viewer`).
fn public_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
}

async fn auth(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    if public_path(req.uri().path()) {
        return next.run(req).await;
    }
    match bearer_token(req.headers()) {
        Some(t) if !token.is_empty() && same_secret(t.as_bytes(), token.as_bytes()) => {
            if let Some(conn) = req.extensions().get::<ConnInfo>() {
                conn.mark_authenticated();
            }
            next.run(req).await
        }
        _ => ApiError::new(401, "Unauthorized", "Unauthorized").into_response(),
    }
}

pub(crate) async fn serve(
    server: ApiServer,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let token = Arc::new(server.inner().token.clone());
    let app = server
        .router()
        .layer(axum::middleware::from_fn_with_state(token, auth));
    let limits = server.inner().limits.clone();
    bosun_serve::serve_tls(listener, tls, app, limits, shutdown).await
}
