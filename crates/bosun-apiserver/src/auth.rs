//! Who is asking, and may they: the admin bearer token, bootstrap tokens (`abcdef.0123456789abcdef`,
//! kept as `bootstrap.kubernetes.io/token` Secrets in kube-system, as Kubernetes does) and client
//! certificates signed by the cluster CA (nodes' `system:node:NAME` / `system:nodes`).
//!
//! There is no RBAC yet; the rules are the fixed ones a cluster needs for nodes to join:
//! bootstrap tokens may only ask for a certificate, nodes may do everything but read or write
//! kube-system Secrets and sign certificates.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use serde_json::Value;
use tower::ServiceExt;

use crate::error::ApiError;

pub const BOOTSTRAP_PREFIX: &str = "system:bootstrap:";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const NODES: &str = "system:nodes";
pub const MASTERS: &str = "system:masters";
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
/// The Secret holding the token the API server presents to node agents; nodes read it (and
/// no other kube-system Secret) so that they can check who calls their logs endpoint.
pub const KUBELET_ACCESS_PATH: &str = "/api/v1/namespaces/kube-system/secrets/bosun-kubelet-access";
const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// The requester, as Kubernetes' `user.Info`.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

#[derive(Clone)]
pub(crate) struct AuthState {
    pub admin_token: Arc<String>,
    /// The API without authentication, to read bootstrap-token Secrets through the same path
    /// every other read takes.
    pub api: Router,
}

/// Paths Kubernetes serves to anyone (`system:public-info-viewer`, and `cluster-info` for
/// joining nodes, which pin the CA it carries by hash).
fn public(method: &Method, path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || (method == Method::GET && path == CLUSTER_INFO_PATH)
}

/// Splits a bootstrap token into id and secret when it has Kubernetes' shape
/// (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn parse_bootstrap_token(t: &str) -> Option<(&str, &str)> {
    let (id, secret) = t.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn b64(v: &Value, field: &str) -> Option<String> {
    use base64::Engine;
    let s = v.pointer(&format!("/data/{field}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(bytes).ok()
}

/// Why a bootstrap token Secret does not authenticate `secret`, or the user it stands for.
pub fn check_bootstrap_secret(
    obj: &Value,
    id: &str,
    secret: &str,
    now: jiff::Timestamp,
) -> Result<User, &'static str> {
    if obj.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
        return Err("not a bootstrap token");
    }
    let stored = b64(obj, "token-secret").ok_or("no token-secret")?;
    if !bosun_serve::same_secret(stored.as_bytes(), secret.as_bytes()) {
        return Err("wrong secret");
    }
    if b64(obj, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("not for authentication");
    }
    if let Some(exp) = b64(obj, "expiration") {
        let at: jiff::Timestamp = exp.parse().map_err(|_| "bad expiration")?;
        if at <= now {
            return Err("expired");
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    if let Some(extra) = b64(obj, "auth-extra-groups") {
        groups.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(String::from),
        );
    }
    Ok(User {
        name: format!("{BOOTSTRAP_PREFIX}{id}"),
        groups,
    })
}

async fn bootstrap_user(st: &AuthState, id: &str, secret: &str) -> Option<User> {
    let req = Request::get(format!(
        "/api/v1/namespaces/kube-system/secrets/bootstrap-token-{id}"
    ))
    .body(Body::empty())
    .ok()?;
    let resp = st.api.clone().oneshot(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.ok()?;
    let obj: Value = serde_json::from_slice(&bytes).ok()?;
    match check_bootstrap_secret(&obj, id, secret, jiff::Timestamp::now()) {
        Ok(u) => Some(u),
        Err(why) => {
            tracing::info!(token_id = id, why, "bootstrap token refused");
            None
        }
    }
}

/// The subject of a client certificate: CN is the user, each O a group.
pub fn cert_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some(User { name, groups })
}

/// The bearer token and client certificate of a request, taken out before any await (a
/// request body is not Sync).
fn credentials(req: &Request) -> (Option<String>, Option<Arc<Vec<u8>>>) {
    let bearer = bosun_serve::bearer_token(req.headers()).map(str::to_string);
    let cert = req
        .extensions()
        .get::<bosun_serve::ConnInfo>()
        .and_then(|c| c.peer_certificate().cloned());
    (bearer, cert)
}

async fn authenticate(
    st: &AuthState,
    bearer: Option<String>,
    cert: Option<Arc<Vec<u8>>>,
) -> Option<User> {
    if let Some(t) = bearer.as_deref() {
        if !st.admin_token.is_empty()
            && bosun_serve::same_secret(t.as_bytes(), st.admin_token.as_bytes())
        {
            return Some(User {
                name: "admin".into(),
                groups: vec![MASTERS.into()],
            });
        }
        let (id, secret) = parse_bootstrap_token(t)?;
        return bootstrap_user(st, id, secret).await;
    }
    cert_user(&cert?)
}

/// Whether `user` may send this request (None), or why not.
pub fn authorize(user: &User, method: &Method, path: &str) -> Option<String> {
    if user.in_group(MASTERS) {
        return None;
    }
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::DELETE => "delete",
        _ => "update",
    };
    let deny = |what: &str| {
        Some(format!(
            "User \"{}\" cannot {verb} {what}",
            user.name.replace('"', "")
        ))
    };
    let csr_rest = path.strip_prefix(CSR_PATH);
    if user.in_group(BOOTSTRAPPERS) {
        // Ask for a node certificate and wait for it; nothing else.
        return match (verb, csr_rest) {
            ("create", Some("")) => None,
            ("get", Some(rest)) if !rest.trim_start_matches('/').contains('/') => None,
            _ => deny(&format!(
                "{path}: a bootstrap token may only request a certificate"
            )),
        };
    }
    if user.in_group(NODES) && user.name.starts_with("system:node:") {
        if verb == "get" && path == KUBELET_ACCESS_PATH {
            return None;
        }
        if path.contains("/namespaces/kube-system/secrets")
            || path == "/api/v1/secrets"
            || path == "/api/v1/watch/secrets"
        {
            return deny("secrets in namespace kube-system");
        }
        if let Some(rest) = csr_rest
            && (rest.ends_with("/approval") || rest.ends_with("/status"))
        {
            return deny("certificatesigningrequests/approval or /status");
        }
        return None;
    }
    deny(path)
}

/// Kubernetes records who asked for a certificate in the CSR's spec, whatever the body says;
/// the signer trusts these fields to decide.
fn stamp_requester(body: &[u8], user: &User) -> Option<Vec<u8>> {
    let mut obj: Value = serde_json::from_slice(body).ok()?;
    let spec = obj.get_mut("spec")?.as_object_mut()?;
    spec.insert("username".into(), Value::String(user.name.clone()));
    spec.insert("groups".into(), serde_json::json!(user.groups));
    spec.remove("uid");
    spec.remove("extra");
    serde_json::to_vec(&obj).ok()
}

pub(crate) async fn middleware(State(st): State<AuthState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if public(req.method(), &path) {
        return next.run(req).await;
    }
    let (bearer, cert) = credentials(&req);
    let conn = req.extensions().get::<bosun_serve::ConnInfo>().cloned();
    let Some(user) = authenticate(&st, bearer, cert).await else {
        return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
    };
    // A client that proved who it is keeps its connection when the caps make room.
    if let Some(conn) = conn {
        conn.mark_authenticated();
    }
    if let Some(msg) = authorize(&user, req.method(), &path) {
        return ApiError::new(403, "Forbidden", msg).into_response();
    }
    if req.method() == Method::POST && path == CSR_PATH {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
            return ApiError::too_large(1 << 20).into_response();
        };
        let Some(stamped) = stamp_requester(&bytes, &user) else {
            return ApiError::bad_request(
                "a CertificateSigningRequest must be sent as JSON with a spec",
            )
            .into_response();
        };
        let mut parts = parts;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        return next
            .run(Request::from_parts(parts, Body::from(stamped)))
            .await;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn secret(fields: &[(&str, &str)]) -> Value {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let data: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(enc(v))))
            .collect();
        json!({"type": "bootstrap.kubernetes.io/token", "data": data})
    }

    #[test]
    fn bootstrap_token_shape() {
        assert_eq!(
            parse_bootstrap_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(parse_bootstrap_token("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse_bootstrap_token("abcdef.0123"), None);
        assert_eq!(parse_bootstrap_token("no-dot"), None);
    }

    #[test]
    fn bootstrap_secret_checks() {
        let now: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let good = secret(&[
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
            ("expiration", "2030-01-02T00:00:00Z"),
            (
                "auth-extra-groups",
                "system:bootstrappers:bosun:nodes,system:masters",
            ),
        ]);
        let u = check_bootstrap_secret(&good, "abcdef", "0123456789abcdef", now).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        // An extra group outside system:bootstrappers: is ignored, never granted.
        assert_eq!(
            u.groups,
            vec![BOOTSTRAPPERS, "system:bootstrappers:bosun:nodes"]
        );
        assert_eq!(
            check_bootstrap_secret(&good, "abcdef", "0123456789abcdee", now),
            Err("wrong secret")
        );
        let later: jiff::Timestamp = "2030-01-03T00:00:00Z".parse().unwrap();
        assert_eq!(
            check_bootstrap_secret(&good, "abcdef", "0123456789abcdef", later),
            Err("expired")
        );
        let no_usage = secret(&[("token-secret", "0123456789abcdef")]);
        assert!(check_bootstrap_secret(&no_usage, "abcdef", "0123456789abcdef", now).is_err());
    }

    #[test]
    fn rules() {
        let boot = User {
            name: "system:bootstrap:abcdef".into(),
            groups: vec![BOOTSTRAPPERS.into()],
        };
        assert_eq!(authorize(&boot, &Method::POST, CSR_PATH), None);
        assert_eq!(
            authorize(&boot, &Method::GET, &format!("{CSR_PATH}/node-csr-1")),
            None
        );
        assert!(authorize(&boot, &Method::PUT, &format!("{CSR_PATH}/x/approval")).is_some());
        assert!(authorize(&boot, &Method::GET, "/api/v1/pods").is_some());
        let node = User {
            name: "system:node:n1".into(),
            groups: vec![NODES.into()],
        };
        assert_eq!(authorize(&node, &Method::GET, "/api/v1/pods"), None);
        assert!(
            authorize(
                &node,
                &Method::GET,
                "/api/v1/namespaces/kube-system/secrets/bootstrap-token-abcdef"
            )
            .is_some()
        );
        assert!(authorize(&node, &Method::PUT, &format!("{CSR_PATH}/x/status")).is_some());
        let stranger = User {
            name: "someone".into(),
            groups: vec![],
        };
        assert!(authorize(&stranger, &Method::GET, "/api/v1/pods").is_some());
    }

    #[test]
    fn requester_is_stamped() {
        let u = User {
            name: "system:bootstrap:abcdef".into(),
            groups: vec![BOOTSTRAPPERS.into()],
        };
        let body =
            json!({"spec": {"username": "admin", "groups": ["system:masters"], "request": "x"}});
        let out: Value = serde_json::from_slice(
            &stamp_requester(&serde_json::to_vec(&body).unwrap(), &u).unwrap(),
        )
        .unwrap();
        assert_eq!(out["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(out["spec"]["groups"], json!([BOOTSTRAPPERS]));
        assert_eq!(out["spec"]["request"], "x");
    }
}
