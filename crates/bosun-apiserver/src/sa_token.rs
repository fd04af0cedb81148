//! Bound ServiceAccount tokens: the TokenRequest API (`serviceaccounts/NAME/token`, what
//! `kubectl create token` and the agent's projected volumes ask for) and their validation.
//!
//! Tokens are ES256 JWTs with Kubernetes' claims (`iss`, `aud`, `exp`, `sub`, and the
//! `kubernetes.io` claim naming the namespace, ServiceAccount and bound pod), signed by a
//! cluster key kept in a 0600 file. A token authenticates while it has not expired, names
//! the API's audience, and its ServiceAccount (and bound pod, when bound) still exist with
//! the same UIDs.

use std::path::Path;
use std::sync::Arc;

use axum::response::Response;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Inner;
use crate::ctx::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::user::User;

/// Kubernetes' default issuer and API audience.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Kubernetes refuses shorter tokens.
const MIN_EXPIRATION: i64 = 600;
const DEFAULT_EXPIRATION: i64 = 3600;
const MAX_EXPIRATION: i64 = 48 * 3600;

/// The signing key and what validation needs.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    pub issuer: String,
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Keys {
    fn from_pkcs8(der: &[u8], issuer: &str) -> anyhow::Result<Keys> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| anyhow::anyhow!("service account key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = {
            use base64::Engine;
            let d = ring::digest::digest(&ring::digest::SHA256, &public);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
        };
        Ok(Keys {
            encoding: EncodingKey::from_ec_der(der),
            decoding: DecodingKey::from_ec_der(&public),
            kid,
            issuer: issuer.to_string(),
        })
    }

    fn generate_pkcs8() -> anyhow::Result<Vec<u8>> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| anyhow::anyhow!("generating the service account key: {e}"))?;
        Ok(doc.as_ref().to_vec())
    }

    /// A key that lives as long as the process (in-process servers, tests).
    pub fn ephemeral(issuer: &str) -> anyhow::Result<Keys> {
        Keys::from_pkcs8(&Keys::generate_pkcs8()?, issuer)
    }

    /// Loads the key from `path`, creating it (mode 0600) when missing.
    pub fn load_or_create(path: &Path, issuer: &str) -> anyhow::Result<Keys> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if !path.exists() {
            let der = Keys::generate_pkcs8()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(pem_encode("PRIVATE KEY", &der).as_bytes())?;
            f.sync_all()?;
        }
        let pem = std::fs::read(path)?;
        let der = rustls_pemfile::private_key(&mut pem.as_slice())?
            .ok_or_else(|| anyhow::anyhow!("{} holds no private key", path.display()))?;
        Keys::from_pkcs8(der.secret_der(), issuer)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct K8sClaim {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub k8s: K8sClaim,
}

impl Keys {
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Checks signature, issuer, audience and expiry.
    pub fn verify(&self, token: &str, audience: &str) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[audience]);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

/// Whether a bearer token is a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(t: &str) -> bool {
    t.starts_with("eyJ") && t.split('.').count() == 3
}

async fn get_obj(inner: &Arc<Inner>, key: &str) -> Option<Value> {
    let kv = inner.store.get(key).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

fn uid_of(v: &Value) -> String {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The ServiceAccount user a token stands for, or why it does not authenticate.
pub(crate) async fn authenticate(inner: &Arc<Inner>, token: &str) -> Result<User, String> {
    let keys = &inner.sa_keys;
    let c = keys.verify(token, &keys.issuer)?;
    let k = &c.k8s;
    let sa = get_obj(
        inner,
        &format!(
            "/registry/core/serviceaccounts/{}/{}",
            k.namespace, k.serviceaccount.name
        ),
    )
    .await
    .ok_or("its ServiceAccount no longer exists")?;
    if uid_of(&sa) != k.serviceaccount.uid {
        return Err("its ServiceAccount was recreated".into());
    }
    if let Some(p) = &k.pod {
        let pod = get_obj(
            inner,
            &format!("/registry/core/pods/{}/{}", k.namespace, p.name),
        )
        .await
        .ok_or("its pod no longer exists")?;
        if uid_of(&pod) != p.uid {
            return Err("its pod was recreated".into());
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err("its pod is being deleted".into());
        }
    }
    Ok(service_account_user(&k.namespace, &k.serviceaccount.name))
}

/// The user and groups of a ServiceAccount, as Kubernetes names them.
pub fn service_account_user(ns: &str, name: &str) -> User {
    User {
        name: format!("system:serviceaccount:{ns}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
    }
}

/// `POST .../serviceaccounts/NAME/token`: a TokenRequest answered with its status filled in.
pub(crate) async fn token_request(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let ns = ctx.target.namespace.clone().unwrap_or_default();
    let name = ctx.name().to_string();
    let mut req = crate::ctx::parse_doc(&ctx.content_type(), &body)?;
    let kind = ctx.kind();
    let invalid = |field: &str, msg: String| {
        ApiError::new(
            422,
            "Invalid",
            format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {field}: {msg}"),
        )
        .with_details(
            json!({"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest",
            "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}]}),
        )
    };
    if !req.is_object() {
        return Err(ApiError::bad_request(
            "the body of a token request must be a TokenRequest object",
        ));
    }
    if req
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "TokenRequest")
    {
        return Err(ApiError::bad_request(
            "the body of a token request must be a TokenRequest",
        ));
    }
    let sa = get_obj(&ctx.inner, &kind.key(Some(&ns), &name))
        .await
        .ok_or_else(|| ApiError::not_found(kind, &name))?;
    let spec = req.get("spec").cloned().unwrap_or(json!({}));
    let exp_secs = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid("spec.expirationSeconds", "must be an integer".into()))?,
    };
    if exp_secs < MIN_EXPIRATION {
        return Err(invalid(
            "spec.expirationSeconds",
            format!("may not specify a duration less than {MIN_EXPIRATION} seconds"),
        ));
    }
    if exp_secs > 1 << 32 {
        return Err(invalid(
            "spec.expirationSeconds",
            "may not specify a duration larger than 2^32 seconds".into(),
        ));
    }
    let exp_secs = exp_secs.min(MAX_EXPIRATION);
    let keys = &ctx.inner.sa_keys;
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![keys.issuer.clone()]);
    let mut pod_ref = None;
    let mut node_ref = None;
    if let Some(b) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        let bkind = b.get("kind").and_then(Value::as_str).unwrap_or_default();
        let bname = b.get("name").and_then(Value::as_str).unwrap_or_default();
        if bkind != "Pod" {
            return Err(invalid(
                "spec.boundObjectRef.kind",
                format!("Unsupported value: \"{bkind}\": supported values: \"Pod\""),
            ));
        }
        let pod = get_obj(&ctx.inner, &format!("/registry/core/pods/{ns}/{bname}"))
            .await
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("pods \"{bname}\" not found")))?;
        let uid = uid_of(&pod);
        if let Some(want) = b
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        if let Some(n) = pod.pointer("/spec/nodeName").and_then(Value::as_str) {
            let node_uid = get_obj(&ctx.inner, &format!("/registry/core/nodes/{n}"))
                .await
                .map(|v| uid_of(&v))
                .unwrap_or_default();
            node_ref = Some(Ref {
                name: n.to_string(),
                uid: node_uid,
            });
        }
        pod_ref = Some(Ref {
            name: bname.to_string(),
            uid,
        });
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: keys.issuer.clone(),
        sub: format!("system:serviceaccount:{ns}:{name}"),
        aud: audiences.clone(),
        exp: now + exp_secs,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        k8s: K8sClaim {
            namespace: ns.clone(),
            serviceaccount: Ref {
                name: name.clone(),
                uid: uid_of(&sa),
            },
            pod: pod_ref,
            node: node_ref,
        },
    };
    let token = keys
        .sign(&claims)
        .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(exp_secs);
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"] = json!({"name": name, "namespace": ns,
        "creationTimestamp": crate::objects::meta::ts_rfc3339(now)});
    req["spec"] = spec;
    req["status"] = json!({"token": token,
        "expirationTimestamp": crate::objects::meta::ts_rfc3339(now + exp_secs)});
    Ok(crate::ctx::json_response(http::StatusCode::CREATED, &req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(keys: &Keys, exp: i64, aud: &str) -> Claims {
        let now = jiff::Timestamp::now().as_second();
        Claims {
            iss: keys.issuer.clone(),
            sub: "system:serviceaccount:dev:default".into(),
            aud: vec![aud.into()],
            exp: now + exp,
            iat: now,
            nbf: now,
            jti: "x".into(),
            k8s: K8sClaim {
                namespace: "dev".into(),
                serviceaccount: Ref {
                    name: "default".into(),
                    uid: "u".into(),
                },
                pod: None,
                node: None,
            },
        }
    }

    #[test]
    fn sign_and_verify() {
        let keys = Keys::ephemeral(DEFAULT_ISSUER).unwrap();
        let t = keys.sign(&claims(&keys, 600, DEFAULT_ISSUER)).unwrap();
        assert!(looks_like_jwt(&t));
        let c = keys.verify(&t, DEFAULT_ISSUER).unwrap();
        assert_eq!(c.k8s.serviceaccount.name, "default");
        // Another audience, an expired token, another key: all refused.
        let other = keys.sign(&claims(&keys, 600, "vault")).unwrap();
        assert!(keys.verify(&other, DEFAULT_ISSUER).is_err());
        let old = keys.sign(&claims(&keys, -10, DEFAULT_ISSUER)).unwrap();
        assert!(keys.verify(&old, DEFAULT_ISSUER).is_err());
        let stranger = Keys::ephemeral(DEFAULT_ISSUER).unwrap();
        assert!(stranger.verify(&t, DEFAULT_ISSUER).is_err());
    }

    #[test]
    fn key_file_is_private_and_reloads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sa.key");
        let a = Keys::load_or_create(&p, DEFAULT_ISSUER).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Keys::load_or_create(&p, DEFAULT_ISSUER).unwrap();
        let t = a.sign(&claims(&a, 600, DEFAULT_ISSUER)).unwrap();
        assert!(b.verify(&t, DEFAULT_ISSUER).is_ok());
    }
}
