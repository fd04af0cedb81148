//! Errors as Kubernetes `Status` objects.

use axum::response::{IntoResponse, Response};
use bosun_api::{FieldError, KindInfo};
use bosun_store::StoreError;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

/// An API error; renders as a `Status` with the matching HTTP code.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `deployments.apps` or `pods`: how Kubernetes names a resource in messages.
pub fn qualified_resource(kind: &KindInfo) -> String {
    if kind.group.is_empty() {
        kind.plural.to_string()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    }
}

/// `Deployment.apps` or `Pod`: how Kubernetes names a kind in "is invalid" messages.
pub fn qualified_kind(kind: &KindInfo) -> String {
    if kind.group.is_empty() {
        kind.kind.to_string()
    } else {
        format!("{}.{}", kind.kind, kind.group)
    }
}

fn resource_details(kind: &KindInfo, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": kind.plural});
    if !kind.group.is_empty() {
        d["group"] = json!(kind.group);
    }
    d
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(kind: &KindInfo, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified_resource(kind), name),
        )
        .with_details(resource_details(kind, name))
    }

    /// 404 for a URL that names no served resource.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn method_not_allowed(method: &http::Method) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    pub fn already_exists(kind: &KindInfo, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified_resource(kind), name),
        )
        .with_details(resource_details(kind, name))
    }

    pub fn conflict(kind: &KindInfo, name: &str) -> ApiError {
        ApiError::conflict_msg(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `Operation cannot be fulfilled on RESOURCE "NAME": MSG`.
    pub fn conflict_msg(kind: &KindInfo, name: &str, msg: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                qualified_resource(kind),
                name,
                msg
            ),
        )
        .with_details(resource_details(kind, name))
    }

    pub fn invalid(kind: &KindInfo, name: &str, errors: &[FieldError]) -> ApiError {
        let parts: Vec<String> = errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                }
            })
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        let mut details = json!({"name": name, "kind": kind.kind, "causes": causes});
        if !kind.group.is_empty() {
            details["group"] = json!(kind.group);
        }
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"{}\" is invalid: {}",
                qualified_kind(kind),
                name,
                joined
            ),
        )
        .with_details(details)
    }

    pub fn forbidden(kind: &KindInfo, name: &str, msg: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{}\" is forbidden: {}",
                qualified_resource(kind),
                name,
                msg
            ),
        )
        .with_details(resource_details(kind, name))
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is too large (limit {limit} bytes)"),
        )
    }

    pub fn unsupported_media_type(ct: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {ct:?})"
            ),
        )
    }

    /// Maps a store failure that the caller did not handle itself.
    pub fn store(e: StoreError) -> ApiError {
        match e {
            StoreError::Compacted { .. } => {
                ApiError::gone(format!("too old resource version: {e}"))
            }
            StoreError::FutureRevision(r) => {
                ApiError::new(504, "Timeout", format!("Too large resource version: {r}"))
            }
            other => ApiError::internal(other.to_string()),
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut resp = (code, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
