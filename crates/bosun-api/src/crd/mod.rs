//! CustomResourceDefinitions (apiextensions.k8s.io/v1): what an established CRD makes
//! the API server serve, one [`KindInfo`] per served version, carrying the version's
//! schema, printer columns and subresources in [`Custom`].
//!
//! The built-in kinds are static; a custom kind is built when its CRD changes and kept
//! for the life of the process (interned by CRD uid, generation and version, so status
//! writes and restarts of the watch do not build it again).

pub mod columns;
pub mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

use crate::{FieldError, KindInfo};

/// Finalizer the API server holds on a CRD until its objects are deleted.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One printer column of a version.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// Paths of the scale subresource.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What a custom kind adds to [`KindInfo`].
#[derive(Debug)]
pub struct Custom {
    /// `plural.group`, the CRD's name.
    pub crd: String,
    /// The version's `openAPIV3Schema` (None: everything is kept as sent).
    pub schema: Option<Value>,
    pub columns: Vec<PrinterColumn>,
    pub scale: Option<ScalePaths>,
    pub storage: bool,
}

impl Custom {
    /// Prunes unknown fields and applies schema defaults; returns the pruned paths.
    pub fn prune_and_default(&self, obj: &mut Value) -> Vec<String> {
        let Some(s) = &self.schema else {
            return Vec::new();
        };
        let pruned = schema::prune(s, obj);
        schema::default(s, obj);
        pruned
    }

    /// Fields the schema would prune from `obj`.
    pub fn unknown_fields(&self, obj: &Value) -> Vec<String> {
        let mut copy = obj.clone();
        self.schema
            .as_ref()
            .map(|s| schema::prune(s, &mut copy))
            .unwrap_or_default()
    }

    pub fn validate(&self, obj: &Value) -> Vec<FieldError> {
        self.schema
            .as_ref()
            .map(|s| schema::validate(s, obj))
            .unwrap_or_default()
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(v: Option<&Value>) -> &'static [&'static str] {
    let items: Vec<&'static str> = v
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(leak)
        .collect();
    Box::leak(items.into_boxed_slice())
}

fn open_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let _ = generator;
    schemars::json_schema!({"type": "object"})
}

/// Custom objects are kept as JSON: the schema, not a Rust type, decides their shape.
fn identity(v: &Value) -> Result<Value, String> {
    Ok(v.clone())
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// The kinds an established CRD serves, one per served version, in spec order.
/// Interned: the same CRD generation yields the same `&'static KindInfo`s.
pub fn kinds_of(crd: &Value) -> Vec<&'static KindInfo> {
    type Key = (String, i64, String);
    static CACHE: OnceLock<Mutex<HashMap<Key, &'static KindInfo>>> = OnceLock::new();
    let uid = s(crd, "/metadata/uid").to_string();
    let generation = crd
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut out = Vec::new();
    let Some(versions) = crd.pointer("/spec/versions").and_then(Value::as_array) else {
        return out;
    };
    let cache = CACHE.get_or_init(Default::default);
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let key = (uid.clone(), generation, s(v, "/name").to_string());
        let mut map = match cache.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let kind = *map.entry(key).or_insert_with(|| build(crd, v));
        out.push(kind);
    }
    out
}

fn build(crd: &Value, v: &Value) -> &'static KindInfo {
    let spec = crd.get("spec").unwrap_or(&Value::Null);
    let group = leak(s(spec, "/group"));
    let version = leak(s(v, "/name"));
    let kind = s(spec, "/names/kind");
    let list_kind = match s(spec, "/names/listKind") {
        "" => format!("{kind}List"),
        lk => lk.to_string(),
    };
    let singular = match s(spec, "/names/singular") {
        "" => kind.to_ascii_lowercase(),
        x => x.to_string(),
    };
    let mut subs: Vec<&'static str> = Vec::new();
    if v.pointer("/subresources/status").is_some() {
        subs.push("status");
    }
    let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
        spec_replicas: s(sc, "/specReplicasPath").to_string(),
        status_replicas: s(sc, "/statusReplicasPath").to_string(),
        label_selector: sc
            .get("labelSelectorPath")
            .and_then(Value::as_str)
            .map(String::from),
    });
    if scale.is_some() {
        subs.push("scale");
    }
    let columns = columns::of_version(v);
    Box::leak(Box::new(KindInfo {
        group,
        version,
        api_version: leak(&format!("{group}/{version}")),
        kind: leak(kind),
        list_kind: leak(&list_kind),
        plural: leak(s(spec, "/names/plural")),
        singular,
        short_names: leak_list(spec.pointer("/names/shortNames")),
        categories: leak_list(spec.pointer("/names/categories")),
        namespaced: s(spec, "/scope") != "Cluster",
        subresources: Box::leak(subs.into_boxed_slice()),
        schema: open_schema,
        roundtrip: identity,
        custom: Some(Arc::new(Custom {
            crd: s(crd, "/metadata/name").to_string(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            columns,
            scale,
            storage: v.get("storage").and_then(Value::as_bool).unwrap_or(false),
        })),
    }))
}

/// Defaults of a CRD itself (`SetDefaults_CustomResourceDefinition*`).
pub fn default_crd(obj: &mut Map<String, Value>) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !kind.is_empty() {
            if !names.contains_key("listKind") {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
            if !names.contains_key("singular") {
                names.insert("singular".into(), json!(kind.to_ascii_lowercase()));
            }
        }
    }
    if !spec.contains_key("conversion") {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
    for v in spec
        .get_mut("versions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(cols) = v
            .get_mut("additionalPrinterColumns")
            .and_then(Value::as_array_mut)
        {
            for c in cols.iter_mut().filter_map(Value::as_object_mut) {
                c.entry("priority").or_insert(json!(0));
            }
        }
    }
}

/// Validation of a CRD (the rules users hit; `ValidateCustomResourceDefinition`).
pub fn validate_crd(obj: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut e = |field: &str, reason: &'static str, message: String| {
        out.push(FieldError {
            field: field.to_string(),
            reason,
            message,
        })
    };
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let group = s(spec, "/group");
    let plural = s(spec, "/names/plural");
    let kind = s(spec, "/names/kind");
    if group.is_empty() {
        e("spec.group", "FieldValueRequired", "Required value".into());
    } else if !group.contains('.') {
        e(
            "spec.group",
            "FieldValueInvalid",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        );
    }
    if plural.is_empty() {
        e(
            "spec.names.plural",
            "FieldValueRequired",
            "Required value".into(),
        );
    } else if !crate::validation::dns1123_label(plural).is_empty() {
        e(
            "spec.names.plural",
            "FieldValueInvalid",
            format!(
                "Invalid value: {plural:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
            ),
        );
    }
    if kind.is_empty() {
        e(
            "spec.names.kind",
            "FieldValueRequired",
            "Required value".into(),
        );
    }
    let name = s(obj, "/metadata/name");
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        e(
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        );
    }
    match s(spec, "/scope") {
        "Namespaced" | "Cluster" => {}
        "" => e("spec.scope", "FieldValueRequired", "Required value".into()),
        other => e(
            "spec.scope",
            "FieldValueNotSupported",
            format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
        ),
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if versions.is_empty() {
        e(
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: \"null\": must have exactly one version marked as storage version"
                .into(),
        );
    } else {
        let storage = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .count();
        if storage != 1 {
            e(
                "spec.versions",
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: must have exactly one version marked as storage version",
                    json!(versions.iter().map(|v| s(v, "/name")).collect::<Vec<_>>())
                ),
            );
        }
        for (i, v) in versions.iter().enumerate() {
            let p = format!("spec.versions[{i}]");
            let vn = s(v, "/name");
            if vn.is_empty() {
                e(
                    &format!("{p}.name"),
                    "FieldValueRequired",
                    "Required value".into(),
                );
            }
            match v.pointer("/schema/openAPIV3Schema") {
                None => e(
                    &format!("{p}.schema.openAPIV3Schema"),
                    "FieldValueRequired",
                    "Required value: schemas are required".into(),
                ),
                Some(sc) if sc.get("type").and_then(Value::as_str) != Some("object") => e(
                    &format!("{p}.schema.openAPIV3Schema.type"),
                    "FieldValueInvalid",
                    "Invalid value: \"\": must be object at the root".into(),
                ),
                Some(_) => {}
            }
            for (j, c) in v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let ty = s(c, "/type");
                if !matches!(ty, "integer" | "number" | "string" | "boolean" | "date") {
                    e(
                        &format!("{p}.additionalPrinterColumns[{j}].type"),
                        "FieldValueNotSupported",
                        format!(
                            "Unsupported value: {ty:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""
                        ),
                    );
                }
                if s(c, "/jsonPath").is_empty() {
                    e(
                        &format!("{p}.additionalPrinterColumns[{j}].jsonPath"),
                        "FieldValueRequired",
                        "Required value".into(),
                    );
                }
            }
        }
    }
    out
}

/// The status the API server keeps on a CRD: accepted names, `NamesAccepted` and
/// `Established` conditions, stored versions. `None` when `crd` already has it.
pub fn wanted_status(crd: &Value, now: &str) -> Option<Value> {
    let spec = crd.get("spec").unwrap_or(&Value::Null);
    let mut names = spec.get("names").cloned().unwrap_or_else(|| json!({}));
    if let Some(m) = names.as_object_mut() {
        let kind = m
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        m.entry("listKind").or_insert(json!(format!("{kind}List")));
        m.entry("singular")
            .or_insert(json!(kind.to_ascii_lowercase()));
    }
    let cur = crd.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut stored: Vec<Value> = cur
        .get("storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for v in spec
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if v.get("storage").and_then(Value::as_bool) == Some(true)
            && let Some(n) = v.get("name")
            && !stored.contains(n)
        {
            stored.push(n.clone());
        }
    }
    let cond = |ty: &str, reason: &str, message: &str| {
        let prev = cur
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(ty));
        let time = prev
            .filter(|c| c.get("status").and_then(Value::as_str) == Some("True"))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        json!({"type": ty, "status": "True", "lastTransitionTime": time, "reason": reason, "message": message})
    };
    let want = json!({
        "acceptedNames": names,
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
    (want != cur).then_some(want)
}
