//! Sign-in and sessions. A session is a random id in an HttpOnly, SameSite=Strict cookie
//! that maps to a Kubernetes client carrying the user's own credentials, and a CSRF token
//! every action form must echo.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use rand::RngCore;

use crate::{ConsoleConfig, UiError};

pub const COOKIE: &str = "bosun_console";
pub const CLEAR_COOKIE: &str = "bosun_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0";
/// A session ends this long after sign-in.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept; the oldest go first.
const MAX_SESSIONS: usize = 1000;

pub struct Session {
    pub id: String,
    pub csrf: String,
    /// Who the API server says the user is (SelfSubjectReview).
    pub user: String,
    pub client: kube::Client,
    created: Instant,
}

impl Session {
    /// The form's CSRF token matches and the request comes from this console's own pages
    /// (an `Origin` header, when sent, names the host the request was sent to).
    pub fn csrf_ok(&self, token: &str, headers: &HeaderMap) -> bool {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
            if origin_host != host {
                return false;
            }
        }
        constant_time_eq(token.as_bytes(), self.csrf.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    pub fn create(&self, client: kube::Client, user: String) -> Arc<Session> {
        let s = Arc::new(Session {
            id: random_hex(),
            csrf: random_hex(),
            user,
            client,
            created: Instant::now(),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, v| v.created.elapsed() < LIFETIME);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, v)| v.created)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(id) {
            Some(s) if s.created.elapsed() < LIFETIME => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        self.get(&cookie_value(headers)?)
    }
}

/// The session id from the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

pub fn cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// What a user signs in with.
pub enum Credentials {
    Token(String),
    /// The credentials of a kubeconfig's current user (token or client certificate).
    Kubeconfig(Box<AuthInfo>),
}

/// The current user's credentials of a kubeconfig. Only inline credentials are taken:
/// files, exec plugins and auth providers would run or read things on the console's host.
pub fn credentials_from_kubeconfig(text: &str) -> Result<Credentials, String> {
    let kc = Kubeconfig::from_yaml(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
    let ctx_name = kc
        .current_context
        .clone()
        .ok_or("current-context is not set")?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| format!("contexts: no context named {ctx_name:?}"))?;
    let user = ctx
        .user
        .ok_or_else(|| format!("contexts[{ctx_name}].user is not set"))?;
    let ai = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.clone())
        .ok_or_else(|| format!("users: no user named {user:?}"))?;
    for (set, field) in [
        (ai.exec.is_some(), "exec"),
        (ai.auth_provider.is_some(), "auth-provider"),
        (ai.token_file.is_some(), "tokenFile"),
        (ai.client_certificate.is_some(), "client-certificate"),
        (ai.client_key.is_some(), "client-key"),
        (ai.username.is_some(), "username"),
        (ai.impersonate.is_some(), "as"),
    ] {
        if set {
            return Err(format!(
                "users[{user}].user.{field}: the console takes only inline credentials (token, client-certificate-data and client-key-data)"
            ));
        }
    }
    if ai.token.is_none() && ai.client_certificate_data.is_none() {
        return Err(format!(
            "users[{user}].user: neither token nor client-certificate-data is set"
        ));
    }
    let only = AuthInfo {
        token: ai.token,
        client_certificate_data: ai.client_certificate_data,
        client_key_data: ai.client_key_data,
        ..Default::default()
    };
    Ok(Credentials::Kubeconfig(Box::new(only)))
}

/// A client for the console's API server with the user's credentials.
pub async fn client_for(cfg: &ConsoleConfig, creds: Credentials) -> Result<kube::Client, UiError> {
    let auth = match creds {
        Credentials::Token(t) => {
            serde_json::from_value::<AuthInfo>(serde_json::json!({"token": t}))
                .map_err(|e| UiError::new(StatusCode::BAD_REQUEST, format!("token: {e}")))?
        }
        Credentials::Kubeconfig(ai) => *ai,
    };
    let kc = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "bosun".into(),
            cluster: Some(Cluster {
                server: Some(cfg.api_url.clone()),
                certificate_authority_data: Some(
                    base64::engine::general_purpose::STANDARD.encode(&cfg.ca_pem),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "user".into(),
            auth_info: Some(auth),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "console".into(),
            context: Some(Context {
                cluster: "bosun".into(),
                user: Some("user".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("console".into()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| UiError::new(StatusCode::BAD_REQUEST, format!("credentials: {e}")))?;
    kube::Client::try_from(config).map_err(|e| {
        UiError::new(
            StatusCode::BAD_REQUEST,
            format!("credentials: building a client: {e}"),
        )
    })
}

/// Checks the credentials with the API server (a SelfSubjectReview, `kubectl auth whoami`)
/// and returns a client and the user's name.
pub async fn sign_in(
    cfg: &ConsoleConfig,
    creds: Credentials,
) -> Result<(kube::Client, String), UiError> {
    let client = client_for(cfg, creds).await?;
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
    }))
    .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let review: serde_json::Value = client.request(req).await.map_err(|e| {
        let mut e = UiError::from(e);
        if e.code == StatusCode::UNAUTHORIZED {
            e.message = format!("the API server refused these credentials: {}", e.message);
        }
        e
    })?;
    let user = review
        .pointer("/status/userInfo/username")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .to_string();
    Ok((client, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_http_only_and_strict() {
        let c = cookie("abc");
        assert!(c.starts_with("bosun_console=abc;"));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; bosun_console=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("xyz"));
    }

    #[test]
    fn kubeconfig_credentials_inline_only() {
        let kc = |user: &str| {
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nclusters:\n- name: k\n  cluster: {{server: 'https://10.0.0.1'}}\nusers:\n- name: u\n  user: {user}\n"
            )
        };
        assert!(matches!(
            credentials_from_kubeconfig(&kc("{token: abc}")),
            Ok(Credentials::Kubeconfig(_))
        ));
        let e = credentials_from_kubeconfig(&kc(
            "{exec: {command: /bin/sh, apiVersion: client.authentication.k8s.io/v1}}",
        ))
        .err()
        .unwrap();
        assert!(e.contains("users[u].user.exec"), "{e}");
        let e = credentials_from_kubeconfig(&kc("{tokenFile: /etc/shadow}"))
            .err()
            .unwrap();
        assert!(e.contains("tokenFile"), "{e}");
        let e = credentials_from_kubeconfig("current-context: x\n")
            .err()
            .unwrap();
        assert!(e.contains("no context named"), "{e}");
    }

    #[test]
    fn csrf_needs_the_token_and_a_matching_origin() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let client = {
            let cfg = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
            kube::Client::try_from(cfg).unwrap()
        };
        let sessions = Sessions::default();
        let s = sessions.create(client, "alice".into());
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9090".parse().unwrap());
        assert!(s.csrf_ok(&s.csrf, &h));
        assert!(!s.csrf_ok("nope", &h));
        assert!(!s.csrf_ok("", &h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!s.csrf_ok(&s.csrf, &h));
        h.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert!(s.csrf_ok(&s.csrf, &h));
        assert!(sessions.get(&s.id).is_some());
        sessions.remove(&s.id);
        assert!(sessions.get(&s.id).is_none());
    }
}
