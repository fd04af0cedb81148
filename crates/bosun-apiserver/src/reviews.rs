//! The review APIs, answered by the authenticator and authorizers themselves:
//! SelfSubjectReview (`kubectl auth whoami`), TokenReview, SelfSubjectAccessReview and
//! SubjectAccessReview / LocalSubjectAccessReview (`kubectl auth can-i`),
//! SelfSubjectRulesReview (`kubectl auth can-i --list`).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Inner;
use crate::attrs::Attrs;
use crate::error::ApiError;
use crate::user::User;

/// Which review a path names, with the namespace of a LocalSubjectAccessReview.
pub enum Review {
    SelfSubject,
    Token,
    SelfAccess,
    Access,
    LocalAccess(String),
    SelfRules,
}

pub fn which(path: &str) -> Option<Review> {
    let p = path.trim_end_matches('/');
    if let Some(rest) = p.strip_prefix("/apis/authentication.k8s.io/") {
        return match rest.split_once('/')?.1 {
            "selfsubjectreviews" => Some(Review::SelfSubject),
            "tokenreviews" => Some(Review::Token),
            _ => None,
        };
    }
    let rest = p.strip_prefix("/apis/authorization.k8s.io/v1/")?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["selfsubjectaccessreviews"] => Some(Review::SelfAccess),
        ["subjectaccessreviews"] => Some(Review::Access),
        ["selfsubjectrulesreviews"] => Some(Review::SelfRules),
        ["namespaces", ns, "localsubjectaccessreviews"] => {
            Some(Review::LocalAccess(ns.to_string()))
        }
        _ => None,
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn user_info(u: &User) -> Value {
    json!({"username": u.name, "groups": u.groups})
}

/// The attributes a review's spec asks about, or a 400 naming the field.
fn spec_attrs(spec: &Value) -> Result<Attrs, ApiError> {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attrs::resource(
            s(r, "/verb"),
            s(r, "/group"),
            s(r, "/resource"),
            s(r, "/subresource"),
            s(r, "/namespace"),
            s(r, "/name"),
        ));
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attrs {
            verb: s(n, "/verb").into(),
            path: s(n, "/path").into(),
            ..Attrs::default()
        });
    }
    Err(invalid(
        "spec.resourceAttributes",
        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

fn invalid(field: &str, msg: &str) -> ApiError {
    ApiError::new(422, "Invalid", format!("{field}: Invalid value: {msg}")).with_details(
        json!({"causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}]}),
    )
}

fn answer(mut body: Value, api_version: &str, kind: &str, status: Value) -> Response {
    body["apiVersion"] = json!(api_version);
    body["kind"] = json!(kind);
    if body.get("metadata").is_none_or(|m| !m.is_object()) {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body["status"] = status;
    crate::ctx::json_response(http::StatusCode::CREATED, &body)
}

async fn access_status(inner: &Arc<Inner>, user: &User, a: &Attrs) -> Value {
    match crate::auth::decide(inner, user, a, "").await {
        Ok(reason) => json!({"allowed": true, "reason": reason}),
        Err(reason) => {
            let mut st = json!({"allowed": false});
            if !reason.is_empty() {
                st["reason"] = json!(reason);
            }
            st
        }
    }
}

/// Answers a review request sent by `user` (after the request itself was authorized).
pub async fn handle(
    inner: &Arc<Inner>,
    user: &User,
    review: Review,
    body: &[u8],
    content_type: &str,
) -> Response {
    let body = match crate::ctx::parse_doc(content_type, body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let api_version = body
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("authorization.k8s.io/v1")
        .to_string();
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    match review {
        Review::SelfSubject => {
            let status = json!({"userInfo": user_info(user)});
            answer(body, &api_version, "SelfSubjectReview", status)
        }
        Review::Token => {
            let token = s(&spec, "/token");
            let status = match crate::auth::authenticate_token(inner, token).await {
                Some(u) => json!({"authenticated": true, "user": user_info(&u),
                    "audiences": [inner.sa_keys.issuer]}),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            answer(body, &api_version, "TokenReview", status)
        }
        Review::SelfAccess => match spec_attrs(&spec) {
            Ok(a) => {
                let status = access_status(inner, user, &a).await;
                answer(body, &api_version, "SelfSubjectAccessReview", status)
            }
            Err(e) => e.into_response(),
        },
        Review::Access | Review::LocalAccess(_) => {
            let mut a = match spec_attrs(&spec) {
                Ok(a) => a,
                Err(e) => return e.into_response(),
            };
            let kind = if let Review::LocalAccess(ns) = &review {
                if a.resource_request && !a.namespace.is_empty() && a.namespace != *ns {
                    return invalid(
                        "spec.resourceAttributes.namespace",
                        "must match metadata.namespace",
                    )
                    .into_response();
                }
                a.namespace = ns.clone();
                "LocalSubjectAccessReview"
            } else {
                "SubjectAccessReview"
            };
            let name = s(&spec, "/user").to_string();
            let groups: Vec<String> = spec
                .get("groups")
                .and_then(Value::as_array)
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            if name.is_empty() && groups.is_empty() {
                return invalid(
                    "spec.user",
                    "at least one of user or group must be specified",
                )
                .into_response();
            }
            let subject = User { name, groups };
            let status = access_status(inner, &subject, &a).await;
            answer(body, &api_version, kind, status)
        }
        Review::SelfRules => {
            let ns = s(&spec, "/namespace");
            let rules = inner.rbac.rules_for(user, ns);
            let (res, non): (Vec<_>, Vec<_>) =
                rules.iter().partition(|r| r.non_resource_urls.is_empty());
            let res: Vec<Value> = res
                .iter()
                .map(|r| {
                    let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups,
                        "resources": r.resources});
                    if !r.resource_names.is_empty() {
                        v["resourceNames"] = json!(r.resource_names);
                    }
                    v
                })
                .collect();
            let non: Vec<Value> = non
                .iter()
                .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
                .collect();
            let mut res = res;
            if user.groups.iter().any(|g| g == crate::user::MASTERS) && res.is_empty() {
                res.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
            }
            let status =
                json!({"resourceRules": res, "nonResourceRules": non, "incomplete": false});
            answer(body, &api_version, "SelfSubjectRulesReview", status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_paths() {
        assert!(matches!(
            which("/apis/authentication.k8s.io/v1/selfsubjectreviews"),
            Some(Review::SelfSubject)
        ));
        assert!(matches!(
            which("/apis/authorization.k8s.io/v1/namespaces/dev/localsubjectaccessreviews"),
            Some(Review::LocalAccess(ns)) if ns == "dev"
        ));
        assert!(which("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/x").is_none());
        assert!(which("/api/v1/pods").is_none());
    }

    #[test]
    fn spec_needs_attributes() {
        assert!(spec_attrs(&json!({})).is_err());
        let a = spec_attrs(
            &json!({"resourceAttributes": {"verb": "get", "resource": "secrets",
            "namespace": "prod"}}),
        )
        .unwrap();
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("get", "prod"));
        assert!(a.resource_request);
    }
}
