//! The resource model bosun serves: the kinds (as k8s-openapi types), their OpenAPI
//! documents, the patch formats kubectl sends, defaulting and validation.
//!
//! Pure functions over `serde_json::Value` and typed objects; no I/O, so the API server,
//! the CLI and tests share one definition of every rule.

pub mod conversion;
pub mod crd;
pub mod defaults;
pub mod gateway;
pub mod matching;
pub mod openapi;
pub mod patch;
pub mod pod_security;
pub mod registry;
pub mod rollback;
pub mod strict;
pub mod table;
mod table_kinds;
pub mod validation;

pub use registry::{KindInfo, Registry};

/// One problem with one field, as Kubernetes reports it in a `Status`'s `details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, Kubernetes style: `spec.template.spec.containers[0].name`.
    pub field: String,
    /// Kubernetes cause type: `FieldValueRequired`, `FieldValueInvalid`,
    /// `FieldValueNotSupported`, `FieldValueDuplicate`, `FieldValueForbidden`,
    /// `FieldValueTooLong`, `FieldValueTypeInvalid`.
    pub reason: &'static str,
    /// Human text, e.g. `Required value` or `Invalid value: "Foo": a lowercase RFC 1123 ...`.
    pub message: String,
}
