//! Who is asking, and may they: the admin bearer token, bootstrap tokens (`abcdef.0123456789abcdef`,
//! kept as `bootstrap.kubernetes.io/token` Secrets in kube-system, as Kubernetes does) and client
//! certificates signed by the cluster CA (nodes' `system:node:NAME` / `system:nodes`).
//!
//! ServiceAccount tokens (`sa_token.rs`) are the fourth kind of credential. The authorizers
//! are `system:masters`, the Node authorizer in `node_authz.rs` and RBAC in `rbac.rs`.
//! `gate.rs` puts every request through them (with impersonation and the audit log);
//! the review APIs (`reviews.rs`) ask them too.

use std::sync::Arc;

use serde_json::Value;

use crate::Inner;
use crate::attrs::Attrs;
use crate::user::{ADMIN_USER, AUTHENTICATED, BOOTSTRAP_PREFIX, BOOTSTRAPPERS, MASTERS, User};

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

pub(crate) async fn authenticate(
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
}
