//! Validation of objects on create and update, with Kubernetes' field paths, reasons
//! and messages (apimachinery's `validation` and `pkg/apis/*/validation`), so clients
//! see the same `Status` causes a real cluster returns.
//!
//! Objects arrive defaulted ([`crate::defaults`]) and already decoded once as their
//! typed kind, so field types are right; this checks values and cross-field rules.

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::{FieldError, KindInfo};

mod autoscaling;
mod batch;
pub use batch::parse_schedule;

/// Problems with a new object (names, required fields, value ranges ...).
pub fn validate_create(kind: &KindInfo, obj: &Value) -> Vec<FieldError> {
    let mut v = Validator::default();
    v.object(kind, obj);
    v.errors
}

/// Problems with a write through `pods/NAME/ephemeralcontainers`, which may only add
/// ephemeral containers (Kubernetes' `ValidatePodEphemeralContainersUpdate`): existing ones
/// stay as they are, names are unique among all the pod's containers, and the fields an
/// ephemeral container may not have (ports, probes, lifecycle, resources) are absent.
pub fn validate_ephemeral_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let mut v = Validator::default();
    let list = |o: &Value, f: &str| {
        o.pointer(&format!("/spec/{f}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let new_list = list(obj, "ephemeralContainers");
    let name_of = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    for (i, was) in list(old, "ephemeralContainers").iter().enumerate() {
        let name = name_of(was);
        match new_list.iter().find(|c| name_of(c) == name) {
            None => v.forbidden(
                "spec.ephemeralContainers".into(),
                &format!("existing ephemeral containers {name:?} may not be removed"),
            ),
            Some(now) if now != was => v.forbidden(
                format!("spec.ephemeralContainers[{i}]"),
                &format!("existing ephemeral containers {name:?} may not be changed"),
            ),
            Some(_) => {}
        }
    }
    let mut names: HashSet<String> = list(obj, "containers")
        .iter()
        .chain(list(obj, "initContainers").iter())
        .map(name_of)
        .collect();
    let targets: HashSet<String> = list(obj, "containers")
        .iter()
        .chain(list(obj, "initContainers").iter())
        .map(name_of)
        .collect();
    for (i, c) in new_list.iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        let name = name_of(c);
        if name.is_empty() {
            v.required(format!("{path}.name"), "");
        } else if !names.insert(name.clone()) {
            v.duplicate(format!("{path}.name"), &Value::String(name));
        }
        if c.get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            v.required(format!("{path}.image"), "");
        }
        for f in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "resizePolicy",
            "restartPolicy",
        ] {
            if c.get(f).is_some_and(|x| !x.is_null()) {
                v.forbidden(
                    format!("{path}.{f}"),
                    "cannot be set for an Ephemeral Container",
                );
            }
        }
        let res = c.get("resources").and_then(Value::as_object);
        if res.is_some_and(|r| {
            r.values()
                .any(|x| x.as_object().is_some_and(|m| !m.is_empty()))
        }) {
            v.forbidden(
                format!("{path}.resources"),
                "cannot be set for an Ephemeral Container",
            );
        }
        if let Some(t) = c.get("targetContainerName").and_then(Value::as_str)
            && !targets.contains(t)
        {
            v.not_found(
                format!("{path}.targetContainerName"),
                &Value::String(t.into()),
            );
        }
    }
    v.errors
}

/// Problems with an update from `old` to `obj`, immutable fields included.
pub fn validate_update(kind: &KindInfo, obj: &Value, old: &Value) -> Vec<FieldError> {
    let mut v = Validator::default();
    v.object(kind, obj);
    v.update(kind, obj, old);
    v.errors
}

// ---------------------------------------------------------------------------------
// Name syntax (apimachinery/pkg/util/validation), with upstream's exact messages.

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const ENV_VAR_FMT: &str = "[-._a-zA-Z][-._a-zA-Z0-9]*";
const ENV_VAR_MSG: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const PERCENT_MSG: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";
const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

fn full(fmt: &str) -> Regex {
    Regex::new(&format!("^(?:{fmt})$")).expect("a constant pattern")
}

static DNS1123_LABEL: LazyLock<Regex> = LazyLock::new(|| full(DNS1123_LABEL_FMT));
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| full(DNS1123_SUBDOMAIN_FMT));
static DNS1035_LABEL: LazyLock<Regex> = LazyLock::new(|| full(DNS1035_LABEL_FMT));
static QUALIFIED_NAME: LazyLock<Regex> = LazyLock::new(|| full(QUALIFIED_NAME_FMT));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| full(LABEL_VALUE_FMT));
static ENV_VAR: LazyLock<Regex> = LazyLock::new(|| full(ENV_VAR_FMT));
static CONFIG_KEY: LazyLock<Regex> = LazyLock::new(|| full(CONFIG_KEY_FMT));
static PERCENT: LazyLock<Regex> = LazyLock::new(|| full("[0-9]+%"));
static QUANTITY: LazyLock<Regex> =
    LazyLock::new(|| full(r"([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)"));

/// Problems with a DNS-1123 label (Namespace names, container names ...).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !DNS1123_LABEL.is_match(s) {
        out.push(DNS1123_LABEL_MSG.to_string());
    }
    out
}

/// Problems with a DNS-1123 subdomain (most object names).
/// Kubernetes' `ValidatePathSegmentName`, the only rule for RBAC names
/// (`system:aggregate-to-admin`).
pub fn path_segment_name(s: &str) -> Vec<String> {
    if s == "." || s == ".." {
        return vec![format!("may not be '{s}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|c| s.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !DNS1123_SUBDOMAIN.is_match(s) {
        out.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    out
}

/// Problems with a DNS-1035 label (Service names).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !DNS1035_LABEL.is_match(s) {
        out.push(DNS1035_LABEL_MSG.to_string());
    }
    out
}

/// Problems with a qualified name: label and annotation keys, `prefix/name`.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".to_string());
            } else {
                out.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".to_string());
    }
    if !name.is_empty() && !QUALIFIED_NAME.is_match(name) {
        out.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    out
}

/// Problems with a label value.
pub fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !LABEL_VALUE.is_match(s) {
        out.push(LABEL_VALUE_MSG.to_string());
    }
    out
}

/// Problems with an IANA service name (named ports).
fn iana_svc_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 15 {
        out.push("must be no more than 15 characters".to_string());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen".into());
    }
    out
}

/// Value of a quantity in base units, or `None` when it is not a quantity.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let caps = QUANTITY.captures(s.trim())?;
    let number: f64 = caps.get(1)?.as_str().parse().ok()?;
    let suffix = caps.get(2).map_or("", |m| m.as_str());
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let e = exp.strip_prefix(['e', 'E'])?;
            10f64.powi(e.parse().ok()?)
        }
    };
    Some(number * factor)
}

/// Go's `%#v`-like rendering of a value in `Invalid value: X` messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        Value::Object(m) if m.values().all(Value::is_string) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            let body: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{k:?}:{}", show(v)))
                .collect();
            format!("map[string]string{{{}}}", body.join(", "))
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Error collection.

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

fn str_of<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get(field).and_then(Value::as_str)
}

fn list<'a>(obj: &'a Value, field: &str) -> &'a [Value] {
    obj.get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn map_of<'a>(obj: &'a Value, field: &str) -> Option<&'a Map<String, Value>> {
    obj.get(field).and_then(Value::as_object)
}

fn present(obj: &Value, field: &str) -> bool {
    obj.get(field).is_some_and(|v| !v.is_null())
}

impl Validator {
    fn push(&mut self, field: String, reason: &'static str, message: String) {
        self.errors.push(FieldError {
            field,
            reason,
            message,
        });
    }

    fn required(&mut self, field: String, detail: &str) {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.push(field, "FieldValueRequired", message);
    }

    fn invalid(&mut self, field: String, value: &Value, detail: &str) {
        self.push(
            field,
            "FieldValueInvalid",
            format!("Invalid value: {}: {detail}", show(value)),
        );
    }

    fn invalid_all(&mut self, field: &str, value: &str, details: Vec<String>) {
        for d in details {
            self.invalid(field.to_string(), &Value::String(value.into()), &d);
        }
    }

    fn not_supported(&mut self, field: String, value: &Value, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.push(
            field,
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                list.join(", ")
            ),
        );
    }

    fn duplicate(&mut self, field: String, value: &Value) {
        self.push(
            field,
            "FieldValueDuplicate",
            format!("Duplicate value: {}", show(value)),
        );
    }

    fn forbidden(&mut self, field: String, detail: &str) {
        self.push(field, "FieldValueForbidden", format!("Forbidden: {detail}"));
    }

    fn not_found(&mut self, field: String, value: &Value) {
        self.push(
            field,
            "FieldValueNotFound",
            format!("Not found: {}", show(value)),
        );
    }

    fn one_of(&mut self, obj: &Value, field: &str, path: &str, supported: &[&str]) {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null())
            && !v.as_str().is_some_and(|s| supported.contains(&s))
        {
            self.not_supported(child(path, field), v, supported);
        }
    }

    fn non_negative(&mut self, obj: &Value, field: &str, path: &str) {
        if let Some(n) = obj.get(field).and_then(Value::as_i64)
            && n < 0
        {
            self.invalid(
                child(path, field),
                &n.into(),
                "must be greater than or equal to 0",
            );
        }
    }

    fn port_number(&mut self, obj: &Value, field: &str, path: &str, required: bool) {
        match obj.get(field).and_then(Value::as_i64) {
            Some(p) if !(1..=65535).contains(&p) => {
                self.invalid(child(path, field), &p.into(), PORT_RANGE_MSG)
            }
            None if required => self.required(child(path, field), ""),
            _ => {}
        }
    }

    /// An int-or-string port: a number in range or an IANA service name.
    fn port_ref(&mut self, value: &Value, path: String) {
        match value {
            Value::Number(n) => {
                let p = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&p) {
                    self.invalid(path, value, PORT_RANGE_MSG);
                }
            }
            Value::String(s) => {
                for d in iana_svc_name(s) {
                    self.invalid(path.clone(), value, &d);
                }
            }
            _ => {}
        }
    }

    // -----------------------------------------------------------------------------
    // Objects.

    fn object(&mut self, kind: &KindInfo, obj: &Value) {
        let name_check: fn(&str) -> Vec<String> = match (kind.group, kind.kind) {
            ("", "Namespace") => dns1123_label,
            ("", "Service") => dns1035_label,
            ("rbac.authorization.k8s.io", _) => path_segment_name,
            _ => dns1123_subdomain,
        };
        self.meta(
            kind,
            obj.get("metadata").unwrap_or(&Value::Null),
            name_check,
        );
        if let Some(custom) = &kind.custom {
            self.errors.extend(custom.validate(obj));
            return;
        }
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        match (kind.group, kind.kind) {
            ("", "Pod") => self.pod_spec(spec, "spec", &["Always", "OnFailure", "Never"]),
            ("", "Service") => self.service(spec),
            ("", "ConfigMap") => self.config_data(obj, false),
            ("", "Secret") => self.config_data(obj, true),
            ("", "Node") => self.node(obj),
            ("", "Endpoints") => self.endpoints(obj),
            ("apps", "Deployment") => self.workload(spec, kind.kind, true),
            ("apps", "ReplicaSet") => self.workload(spec, kind.kind, false),
            ("apps", "DaemonSet") => self.daemon_set(spec),
            ("batch", "Job") => self.job(spec, "spec", true),
            ("batch", "CronJob") => self.cron_job(spec),
            ("autoscaling", "HorizontalPodAutoscaler") => self.hpa(spec),
            ("coordination.k8s.io", "Lease") => self.lease(spec),
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                self.errors.extend(crate::crd::validate_crd(obj))
            }
            _ => {}
        }
    }

    fn meta(&mut self, kind: &KindInfo, meta: &Value, name_check: fn(&str) -> Vec<String>) {
        let name = str_of(meta, "name").unwrap_or("");
        let generate = str_of(meta, "generateName").unwrap_or("");
        if name.is_empty() && generate.is_empty() {
            self.required("metadata.name".into(), "name or generateName is required");
        }
        if !name.is_empty() {
            self.invalid_all("metadata.name", name, name_check(name));
        }
        if !generate.is_empty() {
            // A prefix may end in '-': check it with the dash masked, as upstream does.
            let masked = match generate.strip_suffix('-') {
                Some(p) if !p.is_empty() => format!("{p}a"),
                _ => generate.to_string(),
            };
            self.invalid_all("metadata.generateName", generate, name_check(&masked));
        }
        let namespace = str_of(meta, "namespace").unwrap_or("");
        if kind.namespaced {
            if namespace.is_empty() {
                self.required("metadata.namespace".into(), "");
            } else {
                self.invalid_all("metadata.namespace", namespace, dns1123_label(namespace));
            }
        } else if !namespace.is_empty() {
            self.forbidden("metadata.namespace".into(), "not allowed on this type");
        }
        if let Some(labels) = map_of(meta, "labels") {
            self.labels(labels, "metadata.labels");
        }
        if let Some(annotations) = map_of(meta, "annotations") {
            let mut size = 0;
            for (k, v) in annotations {
                self.invalid_all(
                    "metadata.annotations",
                    k,
                    qualified_name(&k.to_ascii_lowercase()),
                );
                size += k.len() + v.as_str().map_or(0, str::len);
            }
            if size > 256 * 1024 {
                self.push(
                    "metadata.annotations".into(),
                    "FieldValueTooLong",
                    format!("Too long: may not be more than {} bytes", 256 * 1024),
                );
            }
        }
        for (i, f) in list(meta, "finalizers").iter().enumerate() {
            let path = index("metadata.finalizers", i);
            let Some(s) = f.as_str() else { continue };
            self.invalid_all(&path, s, qualified_name(s));
            let standard = ["kubernetes", "orphan", "foregroundDeletion"];
            if !s.contains('/') && !standard.contains(&s) {
                self.invalid(
                    path,
                    f,
                    "name is neither a standard finalizer name nor is it fully qualified",
                );
            }
        }
        for (i, o) in list(meta, "ownerReferences").iter().enumerate() {
            let path = index("metadata.ownerReferences", i);
            for f in ["apiVersion", "kind", "name", "uid"] {
                if str_of(o, f).unwrap_or("").is_empty() {
                    let detail = match f {
                        "apiVersion" => "version must not be empty",
                        "kind" => "kind must not be empty",
                        "name" => "name must not be empty",
                        _ => "uid must not be empty",
                    };
                    self.invalid(child(&path, f), o.get(f).unwrap_or(&"".into()), detail);
                }
            }
        }
        let controllers = list(meta, "ownerReferences")
            .iter()
            .filter(|o| o["controller"] == true)
            .count();
        if controllers > 1 {
            self.invalid(
                "metadata.ownerReferences".into(),
                &Value::Null,
                "Only one reference can have Controller set to true",
            );
        }
    }

    fn labels(&mut self, labels: &Map<String, Value>, path: &str) {
        for (k, v) in labels {
            self.invalid_all(path, k, qualified_name(k));
            match v.as_str() {
                Some(s) => self.invalid_all(path, s, label_value(s)),
                None => self.invalid(path.to_string(), v, "label values must be strings"),
            }
        }
    }

    fn selector(&mut self, sel: &Value, path: &str) {
        if let Some(m) = map_of(sel, "matchLabels") {
            self.labels(m, &child(path, "matchLabels"));
        }
        for (i, e) in list(sel, "matchExpressions").iter().enumerate() {
            let p = index(&child(path, "matchExpressions"), i);
            let values = list(e, "values");
            match str_of(e, "operator") {
                Some("In" | "NotIn") if values.is_empty() => self.required(
                    child(&p, "values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                ),
                Some("Exists" | "DoesNotExist") if !values.is_empty() => self.forbidden(
                    child(&p, "values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ),
                Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
                _ => self.not_supported(
                    child(&p, "operator"),
                    e.get("operator").unwrap_or(&Value::Null),
                    &["In", "NotIn", "Exists", "DoesNotExist"],
                ),
            }
            let k = str_of(e, "key").unwrap_or("");
            self.invalid_all(&child(&p, "key"), k, qualified_name(k));
            for (j, v) in values.iter().enumerate() {
                if let Some(s) = v.as_str() {
                    self.invalid_all(&index(&child(&p, "values"), j), s, label_value(s));
                }
            }
        }
    }

    fn workload(&mut self, spec: &Value, kind: &str, deployment: bool) {
        self.non_negative(spec, "replicas", "spec");
        self.non_negative(spec, "minReadySeconds", "spec");
        self.non_negative(spec, "revisionHistoryLimit", "spec");
        let selector = spec.get("selector").filter(|s| !s.is_null());
        let template = spec.get("template").unwrap_or(&Value::Null);
        let labels = template
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        match selector {
            None => self.required("spec.selector".into(), ""),
            Some(sel) => {
                self.selector(sel, "spec.selector");
                let empty = map_of(sel, "matchLabels").is_none_or(Map::is_empty)
                    && list(sel, "matchExpressions").is_empty();
                if empty {
                    self.invalid(
                        "spec.selector".into(),
                        sel,
                        &format!(
                            "empty selector is invalid for {}",
                            kind.to_ascii_lowercase()
                        ),
                    );
                } else if !selector_matches(sel, labels) {
                    self.invalid(
                        "spec.template.metadata.labels".into(),
                        &labels.map_or(Value::Null, |l| Value::Object(l.clone())),
                        "`selector` does not match template `labels`",
                    );
                }
            }
        }
        if template.is_null() {
            self.required("spec.template".into(), "");
        } else {
            if let Some(l) = labels {
                self.labels(l, "spec.template.metadata.labels");
            }
            self.pod_spec(
                template.get("spec").unwrap_or(&Value::Null),
                "spec.template.spec",
                &["Always"],
            );
        }
        if deployment {
            self.deployment_strategy(spec);
            if let (Some(deadline), min) = (
                spec.get("progressDeadlineSeconds").and_then(Value::as_i64),
                spec.get("minReadySeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            ) && deadline <= min
            {
                self.invalid(
                    "spec.progressDeadlineSeconds".into(),
                    &deadline.into(),
                    "must be greater than minReadySeconds",
                );
            }
        }
    }

    fn deployment_strategy(&mut self, spec: &Value) {
        let strategy = spec.get("strategy").unwrap_or(&Value::Null);
        let path = "spec.strategy";
        let rolling = strategy.get("rollingUpdate").filter(|r| !r.is_null());
        match str_of(strategy, "type") {
            Some("Recreate") => {
                if rolling.is_some() {
                    self.forbidden(
                        child(path, "rollingUpdate"),
                        "may not be specified when strategy `type` is 'Recreate'",
                    );
                }
            }
            Some("RollingUpdate") | None => {
                let Some(r) = rolling else { return };
                let rp = child(path, "rollingUpdate");
                let surge = self.int_or_percent(r.get("maxSurge"), &child(&rp, "maxSurge"));
                let unavailable =
                    self.int_or_percent(r.get("maxUnavailable"), &child(&rp, "maxUnavailable"));
                if surge == Some(0) && unavailable == Some(0) {
                    self.invalid(
                        child(&rp, "maxUnavailable"),
                        r.get("maxUnavailable").unwrap_or(&Value::Null),
                        "may not be 0 when `maxSurge` is 0",
                    );
                }
            }
            Some(_) => self.not_supported(
                child(path, "type"),
                &strategy["type"],
                &["Recreate", "RollingUpdate"],
            ),
        }
    }

    /// Checks an int-or-percent value; returns it as a number when valid.
    fn int_or_percent(&mut self, v: Option<&Value>, path: &str) -> Option<i64> {
        match v? {
            Value::Number(n) => {
                let n = n.as_i64()?;
                if n < 0 {
                    self.invalid(path.into(), &n.into(), "must be greater than or equal to 0");
                }
                Some(n)
            }
            s @ Value::String(text) => {
                if !PERCENT.is_match(text) {
                    self.invalid(path.into(), s, PERCENT_MSG);
                    return None;
                }
                let n: i64 = text.trim_end_matches('%').parse().ok()?;
                if n > 100 {
                    self.invalid(path.into(), s, "must not be greater than 100%");
                }
                Some(n)
            }
            _ => None,
        }
    }

    fn pod_spec(&mut self, spec: &Value, path: &str, restart_policies: &[&str]) {
        let volumes = self.volumes(spec, path);
        self.errors
            .extend(crate::pod_security::validate(spec, path));
        let process = str_of(spec, "runtimeClassName") == Some("process");
        let containers = list(spec, "containers");
        if containers.is_empty() {
            self.required(child(path, "containers"), "");
        }
        let mut names = HashSet::new();
        for field in ["initContainers", "containers", "ephemeralContainers"] {
            for (i, c) in list(spec, field).iter().enumerate() {
                let cp = index(&child(path, field), i);
                self.container(c, &cp, &volumes, process, field == "containers");
                if let Some(n) = str_of(c, "name")
                    && !names.insert(n.to_string())
                {
                    self.duplicate(child(&cp, "name"), &n.into());
                }
            }
        }
        match spec.get("restartPolicy").and_then(Value::as_str) {
            Some(p) if !restart_policies.contains(&p) => {
                self.not_supported(child(path, "restartPolicy"), &p.into(), restart_policies)
            }
            None if restart_policies == ["Always"] => {
                self.not_supported(child(path, "restartPolicy"), &"".into(), restart_policies)
            }
            _ => {}
        }
        self.one_of(
            spec,
            "dnsPolicy",
            path,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        );
        self.non_negative(spec, "terminationGracePeriodSeconds", path);
        if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
            && d <= 0
        {
            self.invalid(
                child(path, "activeDeadlineSeconds"),
                &d.into(),
                "must be between 1 and 2147483647, inclusive",
            );
        }
        if let Some(ns) = map_of(spec, "nodeSelector") {
            self.labels(ns, &child(path, "nodeSelector"));
        }
        for f in ["hostname", "subdomain"] {
            if let Some(h) = str_of(spec, f).filter(|h| !h.is_empty()) {
                self.invalid_all(&child(path, f), h, dns1123_label(h));
            }
        }
        for f in [
            "runtimeClassName",
            "serviceAccountName",
            "priorityClassName",
        ] {
            if let Some(h) = str_of(spec, f).filter(|h| !h.is_empty()) {
                self.invalid_all(&child(path, f), h, dns1123_subdomain(h));
            }
        }
        for (i, t) in list(spec, "tolerations").iter().enumerate() {
            let tp = index(&child(path, "tolerations"), i);
            self.one_of(t, "operator", &tp, &["Equal", "Exists"]);
            self.one_of(
                t,
                "effect",
                &tp,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            );
            if let Some(k) = str_of(t, "key").filter(|k| !k.is_empty()) {
                self.invalid_all(&child(&tp, "key"), k, qualified_name(k));
            } else if str_of(t, "operator") != Some("Exists") {
                self.invalid(
                    child(&tp, "operator"),
                    t.get("operator").unwrap_or(&"".into()),
                    "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
                );
            }
            if str_of(t, "operator") == Some("Exists")
                && !str_of(t, "value").unwrap_or("").is_empty()
            {
                self.invalid(
                    child(&tp, "operator"),
                    &t["value"],
                    "value must be empty when `operator` is 'Exists'",
                );
            }
        }
    }

    /// Validates the pod's volumes and returns their names.
    fn volumes(&mut self, spec: &Value, path: &str) -> HashSet<String> {
        let mut names = HashSet::new();
        for (i, v) in list(spec, "volumes").iter().enumerate() {
            let vp = index(&child(path, "volumes"), i);
            match str_of(v, "name").filter(|n| !n.is_empty()) {
                None => self.required(child(&vp, "name"), ""),
                Some(n) => {
                    self.invalid_all(&child(&vp, "name"), n, dns1123_label(n));
                    if !names.insert(n.to_string()) {
                        self.duplicate(child(&vp, "name"), &n.into());
                    }
                }
            }
            let sources: Vec<&str> = crate::defaults::VOLUME_SOURCES
                .iter()
                .copied()
                .filter(|s| present(v, s))
                .collect();
            match sources.as_slice() {
                [] => self.required(vp.clone(), "must specify a volume type"),
                [_] => {}
                [_, second, ..] => self.forbidden(
                    child(&vp, second),
                    "may not specify more than 1 volume type",
                ),
            }
            let required = [
                ("configMap", "name"),
                ("secret", "secretName"),
                ("hostPath", "path"),
                ("persistentVolumeClaim", "claimName"),
            ];
            for (source, field) in required {
                if let Some(s) = v.get(source).filter(|s| s.is_object())
                    && str_of(s, field).unwrap_or("").is_empty()
                {
                    self.required(child(&child(&vp, source), field), "");
                }
            }
            for source in ["configMap", "secret", "downwardAPI", "projected"] {
                if let Some(mode) = v.get(source).and_then(|s| s.get("defaultMode"))
                    && !mode.as_i64().is_some_and(|m| (0..=0o777).contains(&m))
                {
                    self.invalid(
                        child(&child(&vp, source), "defaultMode"),
                        mode,
                        "must be a number between 0 and 0777 (octal), both inclusive",
                    );
                }
            }
        }
        names
    }

    fn container(
        &mut self,
        c: &Value,
        path: &str,
        volumes: &HashSet<String>,
        process: bool,
        regular: bool,
    ) {
        match str_of(c, "name").filter(|n| !n.is_empty()) {
            None => self.required(child(path, "name"), ""),
            Some(n) => self.invalid_all(&child(path, "name"), n, dns1123_label(n)),
        }
        // Process containers run their command on the host and carry no image.
        if !process && str_of(c, "image").unwrap_or("").trim().is_empty() {
            self.required(child(path, "image"), "");
        }
        if process && list(c, "command").is_empty() {
            self.required(
                child(path, "command"),
                "containers of runtime class \"process\" must have a command",
            );
        }
        self.one_of(
            c,
            "imagePullPolicy",
            path,
            &["Always", "IfNotPresent", "Never"],
        );
        self.one_of(
            c,
            "terminationMessagePolicy",
            path,
            &["File", "FallbackToLogsOnError"],
        );
        let mut port_names = HashSet::new();
        for (i, p) in list(c, "ports").iter().enumerate() {
            let pp = index(&child(path, "ports"), i);
            self.port_number(p, "containerPort", &pp, true);
            if let Some(h) = p.get("hostPort").and_then(Value::as_i64)
                && !(0..=65535).contains(&h)
            {
                self.invalid(child(&pp, "hostPort"), &h.into(), PORT_RANGE_MSG);
            }
            self.one_of(p, "protocol", &pp, &["SCTP", "TCP", "UDP"]);
            if let Some(n) = str_of(p, "name").filter(|n| !n.is_empty()) {
                self.invalid_all(&child(&pp, "name"), n, iana_svc_name(n));
                if !port_names.insert(n.to_string()) {
                    self.duplicate(child(&pp, "name"), &n.into());
                }
            }
        }
        for (i, e) in list(c, "env").iter().enumerate() {
            let ep = index(&child(path, "env"), i);
            match str_of(e, "name").filter(|n| !n.is_empty()) {
                None => self.required(child(&ep, "name"), ""),
                Some(n) if !ENV_VAR.is_match(n) => {
                    self.invalid(child(&ep, "name"), &n.into(), ENV_VAR_MSG)
                }
                _ => {}
            }
            if let Some(from) = e.get("valueFrom").filter(|v| !v.is_null()) {
                let fp = child(&ep, "valueFrom");
                if !str_of(e, "value").unwrap_or("").is_empty() {
                    self.invalid(
                        fp.clone(),
                        &"".into(),
                        "may not be specified when `value` is not empty",
                    );
                }
                let sources = [
                    "fieldRef",
                    "resourceFieldRef",
                    "configMapKeyRef",
                    "secretKeyRef",
                ]
                .iter()
                .filter(|s| present(from, s))
                .count();
                match sources {
                    0 => self.invalid(fp, &"".into(), "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"),
                    1 => {}
                    _ => self.invalid(fp, &"".into(), "may not have more than one field specified at a time"),
                }
            }
        }
        let mut mount_paths = HashSet::new();
        for (i, m) in list(c, "volumeMounts").iter().enumerate() {
            let mp = index(&child(path, "volumeMounts"), i);
            match str_of(m, "name").filter(|n| !n.is_empty()) {
                None => self.required(child(&mp, "name"), ""),
                Some(n) if !volumes.contains(n) => self.not_found(child(&mp, "name"), &n.into()),
                _ => {}
            }
            match str_of(m, "mountPath").filter(|p| !p.is_empty()) {
                None => self.required(child(&mp, "mountPath"), ""),
                Some(p) => {
                    if !mount_paths.insert(p.to_string()) {
                        self.invalid(child(&mp, "mountPath"), &p.into(), "must be unique");
                    }
                }
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(p) = c.get(probe).filter(|p| !p.is_null()) else {
                continue;
            };
            if !regular && probe != "readinessProbe" {
                // Init containers reject all probes except on restartable sidecars.
                if str_of(c, "restartPolicy") != Some("Always") {
                    self.forbidden(
                        child(path, probe),
                        "may not be set for init containers without restartPolicy=Always",
                    );
                    continue;
                }
            }
            self.probe(p, &child(path, probe), probe != "readinessProbe");
        }
        self.resources(
            c.get("resources").unwrap_or(&Value::Null),
            &child(path, "resources"),
        );
    }

    fn probe(&mut self, p: &Value, path: &str, success_must_be_one: bool) {
        let handlers: Vec<&str> = ["exec", "httpGet", "tcpSocket", "grpc"]
            .into_iter()
            .filter(|h| present(p, h))
            .collect();
        match handlers.as_slice() {
            [] => self.required(path.into(), "must specify a handler type"),
            [_] => {}
            [_, second, ..] => self.forbidden(
                child(path, second),
                "may not specify more than 1 handler type",
            ),
        }
        if let Some(h) = p.get("httpGet").filter(|h| h.is_object()) {
            match h.get("port") {
                Some(port) => self.port_ref(port, child(&child(path, "httpGet"), "port")),
                None => self.required(child(&child(path, "httpGet"), "port"), ""),
            }
            self.one_of(h, "scheme", &child(path, "httpGet"), &["HTTP", "HTTPS"]);
        }
        if let Some(port) = p.get("tcpSocket").and_then(|t| t.get("port")) {
            self.port_ref(port, child(&child(path, "tcpSocket"), "port"));
        }
        if let Some(e) = p.get("exec").filter(|e| e.is_object())
            && list(e, "command").is_empty()
        {
            self.required(child(&child(path, "exec"), "command"), "");
        }
        for f in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            self.non_negative(p, f, path);
        }
        if success_must_be_one
            && let Some(s) = p.get("successThreshold").and_then(Value::as_i64)
            && s != 1
        {
            self.invalid(child(path, "successThreshold"), &s.into(), "must be 1");
        }
    }

    fn resources(&mut self, r: &Value, path: &str) {
        let mut parsed: [BTreeMap<String, (String, f64)>; 2] = Default::default();
        for (slot, field) in ["limits", "requests"].iter().enumerate() {
            let Some(m) = map_of(r, field) else { continue };
            for (name, q) in m {
                let qp = key(&child(path, field), name);
                let text = match q {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        self.invalid(qp, other, QUANTITY_MSG);
                        continue;
                    }
                };
                match parse_quantity(&text) {
                    None => self.invalid(qp, &text.as_str().into(), QUANTITY_MSG),
                    Some(v) if v < 0.0 => self.invalid(
                        qp,
                        &text.as_str().into(),
                        "must be greater than or equal to 0",
                    ),
                    Some(v) => {
                        parsed[slot].insert(name.clone(), (text, v));
                    }
                }
            }
        }
        let [limits, requests] = &parsed;
        for (name, (text, value)) in requests {
            if let Some((limit_text, limit)) = limits.get(name)
                && value > limit
            {
                self.invalid(
                    key(&child(path, "requests"), name),
                    &text.as_str().into(),
                    &format!("must be less than or equal to {name} limit of {limit_text}"),
                );
            }
        }
    }

    fn service(&mut self, spec: &Value) {
        let ty = str_of(spec, "type").unwrap_or("ClusterIP");
        self.one_of(
            spec,
            "type",
            "spec",
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        );
        self.one_of(spec, "sessionAffinity", "spec", &["ClientIP", "None"]);
        let headless = str_of(spec, "clusterIP") == Some("None");
        let ports = list(spec, "ports");
        if ports.is_empty() && ty != "ExternalName" && !headless {
            self.required("spec.ports".into(), "");
        }
        if ty == "ExternalName" {
            match str_of(spec, "externalName").filter(|n| !n.is_empty()) {
                None => self.required("spec.externalName".into(), ""),
                Some(n) => {
                    let n = n.trim_end_matches('.');
                    self.invalid_all("spec.externalName", n, dns1123_subdomain(n));
                }
            }
        }
        let mut names = HashSet::new();
        let mut seen = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let pp = index("spec.ports", i);
            match str_of(p, "name").filter(|n| !n.is_empty()) {
                None if ports.len() > 1 => self.required(child(&pp, "name"), ""),
                None => {}
                Some(n) => {
                    self.invalid_all(&child(&pp, "name"), n, dns1123_label(n));
                    if !names.insert(n.to_string()) {
                        self.duplicate(child(&pp, "name"), &n.into());
                    }
                }
            }
            self.port_number(p, "port", &pp, true);
            self.one_of(p, "protocol", &pp, &["SCTP", "TCP", "UDP"]);
            if let Some(t) = p.get("targetPort").filter(|t| !t.is_null()) {
                self.port_ref(t, child(&pp, "targetPort"));
            }
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                if np != 0 && ty != "NodePort" && ty != "LoadBalancer" {
                    self.forbidden(
                        child(&pp, "nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    );
                } else if !(0..=65535).contains(&np) {
                    self.invalid(child(&pp, "nodePort"), &np.into(), PORT_RANGE_MSG);
                }
            }
            let id = (
                p.get("port").and_then(Value::as_i64),
                str_of(p, "protocol").unwrap_or("TCP").to_string(),
            );
            if !seen.insert(id) {
                self.duplicate(pp, p);
            }
        }
        if let Some(sel) = map_of(spec, "selector") {
            self.labels(sel, "spec.selector");
        }
    }

    fn config_data(&mut self, obj: &Value, secret: bool) {
        let mut size = 0usize;
        let mut keys = HashSet::new();
        for field in ["data", "binaryData", "stringData"] {
            let Some(m) = map_of(obj, field) else {
                continue;
            };
            for (k, v) in m {
                let kp = key(field, k);
                if k.len() > 253 {
                    self.invalid(
                        kp.clone(),
                        &k.as_str().into(),
                        "must be no more than 253 characters",
                    );
                }
                if !CONFIG_KEY.is_match(k) {
                    self.invalid(kp.clone(), &k.as_str().into(), CONFIG_KEY_MSG);
                }
                if field != "stringData" && !keys.insert(k.clone()) {
                    self.invalid(
                        kp,
                        &k.as_str().into(),
                        "duplicate of key present in binaryData",
                    );
                }
                size += v.as_str().map_or(0, str::len);
            }
        }
        // Sizes of the encoded values: close enough for a 1 MiB limit.
        if size > 1024 * 1024 {
            let field = if secret { "data" } else { "" };
            self.push(
                field.into(),
                "FieldValueTooLong",
                format!("Too long: may not be more than {} bytes", 1024 * 1024),
            );
        }
        if secret {
            let ty = str_of(obj, "type").unwrap_or("Opaque");
            let data = map_of(obj, "data");
            let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
            match ty {
                "kubernetes.io/tls" => {
                    for k in ["tls.crt", "tls.key"] {
                        if !has(k) {
                            self.required(key("data", k), "");
                        }
                    }
                }
                "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
                    self.required(key("data", ".dockerconfigjson"), "")
                }
                "kubernetes.io/basic-auth" if !has("username") && !has("password") => self
                    .required(
                        "data[username]".into(),
                        "either username or password is required for basic authentication credentials",
                    ),
                "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => {
                    self.required(key("data", "ssh-privatekey"), "")
                }
                _ => {}
            }
        }
    }

    fn node(&mut self, obj: &Value) {
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        for (i, t) in list(spec, "taints").iter().enumerate() {
            let tp = index("spec.taints", i);
            match str_of(t, "key").filter(|k| !k.is_empty()) {
                None => self.required(child(&tp, "key"), ""),
                Some(k) => self.invalid_all(&child(&tp, "key"), k, qualified_name(k)),
            }
            if let Some(v) = str_of(t, "value") {
                self.invalid_all(&child(&tp, "value"), v, label_value(v));
            }
            match t.get("effect") {
                None | Some(Value::Null) => self.required(child(&tp, "effect"), ""),
                Some(_) => self.one_of(
                    t,
                    "effect",
                    &tp,
                    &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                ),
            }
        }
    }

    fn endpoints(&mut self, obj: &Value) {
        for (i, s) in list(obj, "subsets").iter().enumerate() {
            let sp = index("subsets", i);
            for field in ["addresses", "notReadyAddresses"] {
                for (j, a) in list(s, field).iter().enumerate() {
                    let ap = index(&child(&sp, field), j);
                    let ip = str_of(a, "ip").unwrap_or("");
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        self.invalid(child(&ap, "ip"), &ip.into(), "must be a valid IP address");
                    }
                }
            }
            for (j, p) in list(s, "ports").iter().enumerate() {
                let pp = index(&child(&sp, "ports"), j);
                self.port_number(p, "port", &pp, true);
                self.one_of(p, "protocol", &pp, &["SCTP", "TCP", "UDP"]);
            }
        }
    }

    fn lease(&mut self, spec: &Value) {
        if let Some(d) = spec.get("leaseDurationSeconds").and_then(Value::as_i64)
            && d <= 0
        {
            self.invalid(
                "spec.leaseDurationSeconds".into(),
                &d.into(),
                "must be greater than 0",
            );
        }
        self.non_negative(spec, "leaseTransitions", "spec");
    }

    // -----------------------------------------------------------------------------
    // Updates.

    fn update(&mut self, kind: &KindInfo, obj: &Value, old: &Value) {
        let (meta, old_meta) = (&obj["metadata"], &old["metadata"]);
        for f in ["name", "namespace", "uid"] {
            let (new, was) = (&meta[f], &old_meta[f]);
            if !was.is_null() && !new.is_null() && new != was {
                self.invalid(format!("metadata.{f}"), new, "field is immutable");
            }
        }
        match (kind.group, kind.kind) {
            ("", "Pod") => self.pod_update(&obj["spec"], &old["spec"]),
            ("apps", "Deployment" | "ReplicaSet") => {
                let (sel, was) = (&obj["spec"]["selector"], &old["spec"]["selector"]);
                if !was.is_null() && !semantic_eq(sel, was) {
                    self.invalid("spec.selector".into(), sel, "field is immutable");
                }
            }
            ("", "Service") => {
                let (ip, was) = (&obj["spec"]["clusterIP"], &old["spec"]["clusterIP"]);
                let set = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
                if set(ip) && set(was) && ip != was {
                    self.invalid("spec.clusterIP".into(), ip, "field is immutable");
                }
            }
            ("", "ConfigMap" | "Secret") => {
                if old["immutable"] == true {
                    if obj["immutable"] != true {
                        self.forbidden(
                            "immutable".into(),
                            "field is immutable when `immutable` is set",
                        );
                    }
                    for f in ["data", "binaryData"] {
                        let empty = |v: &Value| v.as_object().is_none_or(Map::is_empty);
                        if obj[f] != old[f] && !(empty(&obj[f]) && empty(&old[f])) {
                            self.forbidden(f.into(), "field is immutable when `immutable` is set");
                        }
                    }
                }
                if kind.kind == "Secret" {
                    let ty = |v: &Value| str_of(v, "type").unwrap_or("Opaque").to_string();
                    if ty(obj) != ty(old) {
                        self.invalid("type".into(), &obj["type"], "field is immutable");
                    }
                }
            }
            _ => {}
        }
    }

    fn pod_update(&mut self, spec: &Value, old: &Value) {
        // Mask what may change, then any remaining difference is forbidden.
        let mut new = spec.clone();
        let mut was = old.clone();
        for field in ["containers", "initContainers"] {
            let (a, b) = (list(&new, field).len(), list(&was, field).len());
            if a == b {
                for i in 0..a {
                    new[field][i]["image"] = Value::Null;
                    was[field][i]["image"] = Value::Null;
                }
            }
        }
        let old_deadline = was["activeDeadlineSeconds"].as_i64();
        let new_deadline = new["activeDeadlineSeconds"].as_i64();
        let deadline_ok = match (old_deadline, new_deadline) {
            (None, _) => true,
            (Some(o), Some(n)) => n <= o,
            (Some(_), None) => false,
        };
        if deadline_ok {
            new["activeDeadlineSeconds"] = Value::Null;
            was["activeDeadlineSeconds"] = Value::Null;
        }
        let old_tol = list(&was, "tolerations").to_vec();
        if old_tol
            .iter()
            .all(|t| list(&new, "tolerations").contains(t))
        {
            new["tolerations"] = Value::Null;
            was["tolerations"] = Value::Null;
        }
        let gates_removed = list(&new, "schedulingGates")
            .iter()
            .all(|g| list(&was, "schedulingGates").contains(g));
        if gates_removed {
            new["schedulingGates"] = Value::Null;
            was["schedulingGates"] = Value::Null;
        }
        if was["terminationGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|t| t < 0)
        {
            new["terminationGracePeriodSeconds"] = Value::Null;
            was["terminationGracePeriodSeconds"] = Value::Null;
        }
        // The scheduler's binding sets nodeName once.
        if was["nodeName"].as_str().unwrap_or("").is_empty() {
            new["nodeName"] = Value::Null;
            was["nodeName"] = Value::Null;
        }
        if !semantic_eq(&new, &was) {
            self.forbidden(
                "spec".into(),
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            );
        }
    }
}

/// Equality as apimachinery's `Semantic.DeepEqual` sees it: absent, null, empty
/// lists and empty maps are all the same.
fn semantic_eq(a: &Value, b: &Value) -> bool {
    fn normalize(v: &Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(m) => {
                let m: Map<String, Value> = m
                    .iter()
                    .filter_map(|(k, v)| normalize(v).map(|v| (k.clone(), v)))
                    .collect();
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(Value::Array(
                a.iter()
                    .map(|v| normalize(v).unwrap_or(Value::Null))
                    .collect(),
            )),
            other => Some(other.clone()),
        }
    }
    normalize(a) == normalize(b)
}

/// Whether a `LabelSelector` selects an object with `labels`.
pub fn selector_matches(selector: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let match_labels = map_of(selector, "matchLabels")
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    match_labels
        && list(selector, "matchExpressions").iter().all(|e| {
            let k = str_of(e, "key").unwrap_or("");
            let values: Vec<&str> = list(e, "values").iter().filter_map(Value::as_str).collect();
            match str_of(e, "operator") {
                Some("In") => get(k).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => get(k).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => get(k).is_some(),
                Some("DoesNotExist") => get(k).is_none(),
                _ => false,
            }
        })
}
