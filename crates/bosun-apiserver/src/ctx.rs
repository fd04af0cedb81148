//! What resource handlers get from a request (`Ctx`, the URL's `Target`) and the body
//! and response helpers they share. A leaf below `request`, which dispatches to the
//! handlers: they depend on this, not on the dispatcher.

use std::collections::HashMap;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bosun_api::KindInfo;
use http::{HeaderMap, header};
use serde_json::Value;

use crate::Inner;
use crate::error::{ApiError, ApiResult};

/// What a resource URL names.
pub(crate) struct Target {
    pub kind: &'static KindInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// Legacy `/watch/` path prefix.
    pub watch_path: bool,
}

/// Everything a resource handler needs from the request.
pub(crate) struct Ctx {
    pub inner: Arc<Inner>,
    pub target: Target,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

impl Ctx {
    pub fn kind(&self) -> &'static KindInfo {
        self.target.kind
    }

    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.q(key), Some("true" | "1"))
    }

    pub fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }

    /// The name from the URL (present for object requests).
    pub fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or_default()
    }

    pub fn wants_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| {
                a.split(',').next().is_some_and(|first| {
                    first.contains("as=Table") && first.contains("g=meta.k8s.io")
                })
            })
    }

    pub fn content_type(&self) -> String {
        media_type(&self.headers)
    }
}

/// The request's media type, lower case and without parameters (`; charset=...`).
pub(crate) fn media_type(headers: &http::HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

pub(crate) fn parse_query(uri: &http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Decodes a JSON or YAML document into an object.
pub(crate) fn parse_doc(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let yaml = match content_type {
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => true,
        "" | "application/json" | "text/json" => false,
        "application/vnd.kubernetes.protobuf" => {
            return bosun_proto::decode(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}")));
        }
        // Patch bodies are JSON; their handlers pass the patch type here.
        ct if ct.ends_with("patch+json") => false,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let v: Value = if yaml {
        serde_saphyr::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    Ok(v)
}

pub(crate) fn json_response(code: http::StatusCode, v: &Value) -> Response {
    json_bytes_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// A response of JSON already written.
pub(crate) fn json_bytes_response(code: http::StatusCode, body: Vec<u8>) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
