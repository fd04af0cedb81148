//! The gate every request to the HTTPS listener passes: authentication (`auth.rs`),
//! impersonation, authorization, the review APIs (`reviews.rs`) and the audit record.

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
use crate::auth::{authenticate, decide};
use crate::error::ApiError;
use crate::user::{AUTHENTICATED, User};

const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// Paths Kubernetes serves to anyone (`system:public-info-viewer`, and `cluster-info` for
/// joining nodes, which pin the CA it carries by hash).
fn public(method: &Method, path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || (method == Method::GET && path == CLUSTER_INFO_PATH)
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
            let ct = crate::ctx::media_type(&parts.headers);
            request_object = crate::ctx::parse_doc(&ct, &bytes).ok();
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
            let ct = crate::ctx::media_type(&parts.headers);
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
    use crate::user::BOOTSTRAPPERS;
    use serde_json::json;

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
