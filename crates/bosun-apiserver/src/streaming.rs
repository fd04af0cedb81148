//! `pods/NAME/exec`, `attach` and `portforward`: checked here, then proxied to the agent of
//! the pod's node as an upgrade. The API server answers the client's upgrade with the
//! agent's answer (101 and its headers: the chosen WebSocket subprotocol or
//! `X-Stream-Protocol-Version`) and then copies bytes both ways; the protocols themselves
//! (WebSocket channels, SPDY) are spoken by the agent (`bosun-agent/src/streaming.rs`), as
//! the kubelet does.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{Method, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::Inner;
use crate::ctx::{Ctx, Target};
use crate::error::{ApiError, ApiResult};
use crate::logs::{agent_unavailable, choose_container, dial, node_endpoint};
use crate::objects::meta::decode_kv;

/// Request headers the agent needs to negotiate the protocol.
const FORWARDED: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
    "origin",
];

pub(crate) async fn proxy(
    inner: Arc<Inner>,
    target: Target,
    mut req: Request,
) -> ApiResult<Response> {
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed(req.method()));
    }
    let sub = target.sub.clone().unwrap_or_default();
    let ns = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let ctx = Ctx {
        query: crate::ctx::parse_query(req.uri()),
        headers: req.headers().clone(),
        inner,
        target,
    };
    let kind = ctx.kind();
    let kv = ctx
        .inner
        .store
        .get(&kind.key(Some(&ns), &name))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(kind, &name))?;
    let pod = decode_kv(&kv)?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let path = match sub.as_str() {
        "exec" | "attach" => {
            if matches!(phase, "Succeeded" | "Failed") {
                return Err(ApiError::bad_request(format!(
                    "cannot {sub} into a container in a completed pod; current phase is {phase}"
                )));
            }
            let container = choose_container(&pod, &name, ctx.q("container"))?;
            if sub == "exec" && !raw_query.split('&').any(|p| p.starts_with("command=")) {
                return Err(ApiError::bad_request("you must specify at least 1 command"));
            }
            format!("/{sub}/{ns}/{name}/{container}?{raw_query}")
        }
        _ => format!("/portForward/{ns}/{name}?{raw_query}"),
    };
    let (ip, port) = node_endpoint(&ctx, &pod, &name).await?;
    let stream = dial(&ctx, &ip, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| agent_unavailable(&ip, port, e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(&path)
        .header(header::HOST, format!("{ip}:{port}"))
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", ctx.inner.kubelet_token),
        );
    for name in FORWARDED {
        for v in req.headers().get_all(*name) {
            out = out.header(*name, v);
        }
    }
    let out = out
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let resp = sender
        .send_request(out)
        .await
        .map_err(|e| agent_unavailable(&ip, port, e))?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt;
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        let (code, reason) = match status.as_u16() {
            400 => (400, "BadRequest"),
            403 => (403, "Forbidden"),
            404 => (404, "NotFound"),
            _ => (500, "InternalError"),
        };
        return Err(ApiError::new(code, reason, text));
    }
    let mut answer = Response::new(Body::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
            answer.headers_mut().append(k, v.clone());
        }
    }
    let agent_upgrade = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (agent, client) = match tokio::join!(agent_upgrade, client_upgrade) {
            (Ok(a), Ok(c)) => (a, c),
            (a, c) => {
                tracing::debug!(
                    agent = a.is_ok(),
                    client = c.is_ok(),
                    "stream upgrade failed"
                );
                return;
            }
        };
        let mut agent = TokioIo::new(agent);
        let mut client = TokioIo::new(client);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    });
    Ok(answer)
}
