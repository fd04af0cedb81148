//! `pods/NAME/log`: proxied to the node agent that runs the pod.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::ctx::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::objects::meta::decode_kv;

/// TLS client settings trusting only the cluster CA.
pub(crate) fn client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert?)?;
        n += 1;
    }
    if n == 0 {
        anyhow::bail!("the CA PEM holds no certificate");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn containers(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Init and ephemeral containers: valid by name, never the default.
fn init_containers(pod: &Value) -> Vec<String> {
    let ephemeral: Vec<String> = pod
        .pointer("/spec/ephemeralContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(String::from)
        .collect();
    let mut out = init_only(pod);
    out.extend(ephemeral);
    out
}

fn init_only(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn logs(ctx: Ctx) -> ApiResult<Response> {
    let kind = ctx.kind();
    let ns = ctx.target.namespace.clone().unwrap_or_default();
    let name = ctx.name().to_string();
    let kv = ctx
        .inner
        .store
        .get(&kind.key(Some(&ns), &name))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(kind, &name))?;
    let pod = decode_kv(&kv)?;
    let container = choose_container(&pod, &name, ctx.q("container"))?;
    let (ip, port) = node_endpoint(&ctx, &pod, &name).await?;
    let mut query = Vec::new();
    for key in [
        "follow",
        "tailLines",
        "previous",
        "timestamps",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ] {
        if let Some(v) = ctx.q(key) {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            query.push(format!("{key}={enc}"));
        }
    }
    let path = format!(
        "/containerLogs/{ns}/{name}/{container}{}{}",
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    proxy(&ctx, &ip, port, &path).await
}

/// The container a request names, or the pod's default one (Kubernetes' rules and messages).
pub(crate) fn choose_container(
    pod: &Value,
    name: &str,
    requested: Option<&str>,
) -> ApiResult<String> {
    let names = containers(pod);
    let inits = init_containers(pod);
    Ok(match requested {
        Some(c) => {
            if !names.iter().any(|n| n == c) && !inits.iter().any(|n| n == c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.to_string()
        }
        None => {
            let default = pod
                .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
                .and_then(Value::as_str)
                .filter(|d| names.iter().any(|n| n == d));
            match (default, names.as_slice()) {
                (Some(d), _) => d.to_string(),
                (None, [one]) => one.clone(),
                (None, []) => {
                    return Err(ApiError::bad_request(format!(
                        "pod {name} has no containers"
                    )));
                }
                (None, many) => {
                    let mut msg = format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        many.join(" ")
                    );
                    if !inits.is_empty() {
                        msg.push_str(&format!(
                            " or one of the init containers: [{}]",
                            inits.join(" ")
                        ));
                    }
                    return Err(ApiError::bad_request(msg));
                }
            }
        }
    })
}

/// The agent endpoint (InternalIP, kubelet port) of the node that runs `pod`.
pub(crate) async fn node_endpoint(ctx: &Ctx, pod: &Value, name: &str) -> ApiResult<(String, u16)> {
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_string();
    let node_kind = ctx
        .inner
        .registry
        .by_resource("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("no nodes kind"))?;
    let node_kv = ctx
        .inner
        .store
        .get(&node_kind.key(None, &node_name))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(node_kind, &node_name))?;
    let node = decode_kv(&node_kv)?;
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|x| x.get("address").and_then(Value::as_str))
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no InternalIP address")))?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0 && *p < 65536)
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no kubelet endpoint")))?;

    Ok((ip, port as u16))
}

/// A TLS connection to an agent, verified against the cluster CA.
pub(crate) async fn dial(
    ctx: &Ctx,
    ip: &str,
    port: u16,
) -> ApiResult<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = ctx.inner.log_tls.clone().ok_or_else(|| {
        ApiError::internal("the API server has no cluster CA to reach node agents")
    })?;
    let addr: std::net::IpAddr = ip
        .parse()
        .map_err(|_| ApiError::internal(format!("bad node address {ip:?}")))?;
    let tcp = tokio::net::TcpStream::connect((addr, port))
        .await
        .map_err(|e| agent_unavailable(ip, port, e))?;
    let server_name = rustls::pki_types::ServerName::IpAddress(addr.into());
    tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| agent_unavailable(ip, port, e))
}

pub(crate) fn agent_unavailable(ip: &str, port: u16, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        502,
        "ServiceUnavailable",
        format!("node agent {ip}:{port}: {e}"),
    )
}

async fn proxy(ctx: &Ctx, ip: &str, port: u16, path: &str) -> ApiResult<Response> {
    let unavailable = |e: String| agent_unavailable(ip, port, e);
    let stream = dial(ctx, ip, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header(header::HOST, format!("{ip}:{port}"))
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", ctx.inner.kubelet_token),
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
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
            404 => (404, "NotFound"),
            _ => (502, "InternalError"),
        };
        return Err(ApiError::new(code, reason, text));
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    *out.status_mut() = StatusCode::OK;
    Ok(out)
}
