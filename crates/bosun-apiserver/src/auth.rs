//! Who is asking, and may they: the admin bearer token, bootstrap tokens (`abcdef.0123456789abcdef`,
//! kept as `bootstrap.kubernetes.io/token` Secrets in kube-system, as Kubernetes does) and client
//! certificates signed by the cluster CA (nodes' `system:node:NAME` / `system:nodes`).
//!
//! ServiceAccount tokens (`sa_token.rs`) are the fourth kind of credential. Every request then
//! goes through impersonation, the authorizers (`system:masters`, the Node authorizer in
//! `node_authz.rs`, RBAC in `rbac.rs`) and the audit log (`audit.rs`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use serde_json::Value;

use crate::Inner;
use crate::attrs::Attrs;
use crate::audit_policy::Level;
use crate::error::ApiError;

pub const BOOTSTRAP_PREFIX: &str = "system:bootstrap:";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const NODES: &str = "system:nodes";
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
/// The user the admin bearer token stands for.
pub const ADMIN_USER: &str = "admin";
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

async fn bootstrap_user(inner: &Arc<Inner>, id: &str, secret: &str) -> Option<User> {
    let key = format!("/registry/core/secrets/kube-system/bootstrap-token-{id}");
    let kv = inner.store.get(&key).await.ok()??;
    let obj: Value = serde_json::from_slice(&kv.value).ok()?;
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

/// The user a bearer token stands for: the admin token, a ServiceAccount token, or a
/// bootstrap token.
pub(crate) async fn authenticate_token(inner: &Arc<Inner>, t: &str) -> Option<User> {
    if !inner.token.is_empty() && bosun_serve::same_secret(t.as_bytes(), inner.token.as_bytes()) {
        return Some(User {
            name: ADMIN_USER.into(),
            groups: vec![MASTERS.into()],
        });
    }
    if crate::sa_token::looks_like_jwt(t) {
        return match crate::sa_token::authenticate(inner, t).await {
            Ok(u) => Some(u),
            Err(why) => {
                tracing::info!(why, "service account token refused");
                None
            }
        };
    }
    let (id, secret) = parse_bootstrap_token(t)?;
    bootstrap_user(inner, id, secret).await
}

async fn authenticate(
    inner: &Arc<Inner>,
    bearer: Option<String>,
    cert: Option<Arc<Vec<u8>>>,
) -> Option<User> {
    let mut user = match bearer.as_deref() {
        Some(t) => authenticate_token(inner, t).await?,
        None => cert_user(&cert?)?,
    };
    if !user.in_group(AUTHENTICATED) {
        user.groups.push(AUTHENTICATED.into());
    }
    Some(user)
}

/// Whether `user` may do `a`: the reason it may, or the reason it may not (often empty,
/// as RBAC gives none). `system:masters` may do anything, as in Kubernetes; a node is asked
/// of the Node authorizer first; RBAC decides the rest.
pub(crate) async fn decide(
    inner: &Arc<Inner>,
    user: &User,
    a: &Attrs,
    query: &str,
) -> Result<String, String> {
    if user.in_group(MASTERS) {
        return Ok(String::new());
    }
    if let Some(node) = crate::node_authz::node_name(user) {
        match crate::node_authz::authorize(inner, node, a, query).await {
            crate::node_authz::Decision::Allow => return Ok("Node authorizer".into()),
            crate::node_authz::Decision::Deny(why) => return Err(why),
            crate::node_authz::Decision::NoOpinion => {}
        }
    }
    inner.rbac.wait_ready().await;
    inner.rbac.allows(user, a).ok_or_default()
}

trait OkOrDefault {
    fn ok_or_default(self) -> Result<String, String>;
}
impl OkOrDefault for Option<String> {
    fn ok_or_default(self) -> Result<String, String> {
        self.ok_or_else(String::new)
    }
}

fn forbidden(user: &User, a: &Attrs, reason: &str) -> ApiError {
    let mut details = serde_json::json!({"kind": a.resource});
    if !a.name.is_empty() {
        details["name"] = serde_json::json!(a.name);
    }
    if !a.api_group.is_empty() {
        details["group"] = serde_json::json!(a.api_group);
    }
    ApiError::new(
        403,
        "Forbidden",
        crate::rbac::forbidden_message(user, a, reason),
    )
    .with_details(details)
}

/// Kubernetes' impersonation (`Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid`,
/// `Impersonate-Extra-*`): each asks for the `impersonate` verb on users, serviceaccounts,
/// groups, uids or userextras. Returns the user to act as, None without the headers.
async fn impersonation(
    inner: &Arc<Inner>,
    requester: &User,
    headers: &http::HeaderMap,
) -> Result<Option<User>, ApiError> {
    let text = |v: &http::HeaderValue| v.to_str().unwrap_or_default().to_string();
    let name = headers.get("impersonate-user").map(text);
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .map(text)
        .collect();
    let uid = headers.get("impersonate-uid").map(text);
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix("impersonate-extra-")?;
            Some((key.to_string(), text(v)))
        })
        .collect();
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() && extras.is_empty() {
            return Ok(None);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, uid or extra without impersonating a user",
        ));
    };
    let mut checks = Vec::new();
    let mut sa_groups = Vec::new();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            checks.push(Attrs::resource(
                "impersonate",
                "",
                "serviceaccounts",
                "",
                ns,
                sa,
            ));
            sa_groups = crate::sa_token::service_account_user(ns, sa).groups;
        }
        None => checks.push(Attrs::resource("impersonate", "", "users", "", "", &name)),
    }
    for g in &groups {
        checks.push(Attrs::resource("impersonate", "", "groups", "", "", g));
    }
    if let Some(u) = &uid {
        checks.push(Attrs::resource(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            "",
            u,
        ));
    }
    for (k, v) in &extras {
        checks.push(Attrs::resource(
            "impersonate",
            "authentication.k8s.io",
            "userextras",
            k,
            "",
            v,
        ));
    }
    for a in &checks {
        if let Err(why) = decide(inner, requester, a, "").await {
            return Err(forbidden(requester, a, &why));
        }
    }
    let mut groups = if groups.is_empty() { sa_groups } else { groups };
    let anonymous = name == "system:anonymous";
    let implied = if anonymous {
        "system:unauthenticated"
    } else {
        AUTHENTICATED
    };
    if !groups.iter().any(|g| g == implied) {
        groups.push(implied.into());
    }
    Ok(Some(User { name, groups }))
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

/// What the middleware needs besides the API: the server's state.
pub(crate) type AuthState = Arc<Inner>;

fn streaming(a: &Attrs, query: &str) -> bool {
    a.verb == "watch"
        || query.split('&').any(|kv| kv == "follow=true")
        || matches!(a.subresource.as_str(), "exec" | "attach" | "portforward")
}

/// The audit level of a request (None without an audit log).
fn audit_level(inner: &Inner, user: Option<&User>, a: &Attrs, streaming: bool) -> Level {
    inner
        .audit
        .as_ref()
        .map_or(Level::None, |log| log.level(user, a, streaming))
}

/// Authentication, impersonation, authorization, the review APIs and the audit record of
/// every request that reaches the HTTPS listener.
pub(crate) async fn middleware(
    State(inner): State<AuthState>,
    req: Request,
    next: Next,
) -> Response {
    let received = jiff::Timestamp::now();
    let audit_id = uuid::Uuid::new_v4().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let uri = req.uri().to_string();
    let attrs = crate::attrs::from_request(req.method(), &path, &query);
    let (bearer, cert) = credentials(&req);
    let conn = req.extensions().get::<bosun_serve::ConnInfo>().cloned();
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let source_ip = conn.as_ref().map(|c| c.peer_addr().ip().to_string());
    let mut user = None;
    let mut impersonated = None;
    let mut decision: Option<(&'static str, String)> = None;
    let is_streaming = streaming(&attrs, &query);
    let level;
    let mut request_object = None;
    let response = 'resp: {
        if bearer.is_none() && cert.is_none() && public(req.method(), &path) {
            level = audit_level(&inner, None, &attrs, is_streaming);
            break 'resp next.run(req).await;
        }
        let Some(u) = authenticate(&inner, bearer, cert).await else {
            level = audit_level(&inner, None, &attrs, is_streaming);
            break 'resp ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
        };
        level = audit_level(&inner, Some(&u), &attrs, is_streaming);
        // A client that proved who it is keeps its connection when the caps make room.
        if let Some(conn) = &conn {
            conn.mark_authenticated();
        }
        let requester = user.insert(u).clone();
        let acting = match impersonation(&inner, &requester, req.headers()).await {
            Ok(Some(as_user)) => impersonated.insert(as_user).clone(),
            Ok(None) => requester,
            Err(e) => break 'resp e.into_response(),
        };
        match decide(&inner, &acting, &attrs, &query).await {
            Ok(reason) => decision = Some(("allow", reason)),
            Err(reason) => {
                let resp = forbidden(&acting, &attrs, &reason).into_response();
                decision = Some(("forbid", reason));
                break 'resp resp;
            }
        }
        let (mut parts, mut body) = req.into_parts();
        for h in ["impersonate-user", "impersonate-group", "impersonate-uid"] {
            parts.headers.remove(h);
        }
        if level >= Level::Request
            && matches!(
                parts.method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            )
            && !is_streaming
        {
            let Ok(bytes) = axum::body::to_bytes(body, inner.max_body_bytes).await else {
                break 'resp ApiError::too_large(inner.max_body_bytes).into_response();
            };
            // Recorded as JSON whatever it came as (JSON, YAML or protobuf), as Kubernetes does.
            let ct = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| {
                    s.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            request_object = crate::request::parse_doc(&ct, &bytes).ok();
            body = Body::from(bytes);
        }
        let review = (parts.method == Method::POST)
            .then(|| crate::reviews::which(&path))
            .flatten();
        let stamp = parts.method == Method::POST && path == CSR_PATH;
        if review.is_none() && !stamp {
            break 'resp next.run(Request::from_parts(parts, body)).await;
        }
        let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
            break 'resp ApiError::too_large(1 << 20).into_response();
        };
        if let Some(review) = review {
            let ct = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| {
                    s.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            break 'resp crate::reviews::handle(&inner, &acting, review, &bytes, &ct).await;
        }
        let Some(stamped) = stamp_requester(&bytes, &acting) else {
            break 'resp ApiError::bad_request(
                "a CertificateSigningRequest must be sent as JSON with a spec",
            )
            .into_response();
        };
        parts.headers.remove(http::header::CONTENT_LENGTH);
        next.run(Request::from_parts(parts, Body::from(stamped)))
            .await
    };
    let mut response = response;
    if let Ok(v) = http::HeaderValue::from_str(&audit_id) {
        response.headers_mut().insert("audit-id", v);
    }
    let mut response_object = None;
    if level >= Level::RequestResponse && !is_streaming {
        let json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if json {
            let (parts, body) = response.into_parts();
            // The answer is already whole in memory; this only copies it.
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            response_object = serde_json::from_slice(&bytes).ok();
            response = Response::from_parts(parts, Body::from(bytes));
        }
    }
    if let Some(log) = inner.audit.as_ref().filter(|_| level > Level::None) {
        let ev = crate::audit::event(&crate::audit::Entry {
            audit_id: &audit_id,
            attrs: &attrs,
            uri: &uri,
            user: user.as_ref(),
            impersonated: impersonated.as_ref(),
            source_ip,
            user_agent: user_agent.as_deref(),
            code: response.status().as_u16(),
            received,
            decision: decision.as_ref().map(|(d, r)| (*d, r.as_str())),
            streaming: is_streaming,
            level,
            request_object,
            response_object,
        });
        log.record(ev).await;
    }
    response
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
