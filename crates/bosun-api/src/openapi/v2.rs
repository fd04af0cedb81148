//! A minimal OpenAPI v2 document in gnostic's protobuf encoding
//! (`application/com.github.proto-openapi.spec.v2.v1.0+protobuf`), for kubectl 1.27
//! and 1.28: they read only v2 to learn that the server validates fields itself
//! (a PATCH operation with `x-kubernetes-group-version-kind` listing a
//! `fieldValidation` query parameter). The document carries paths and no
//! definitions, so those clients compute strategic merge patches from their built-in
//! types, which agree with [`super::merge_keys`].
//!
//! Field numbers are from gnostic's `openapiv2/OpenAPIv2.proto`.

use crate::{KindInfo, Registry};

/// Protobuf wire encoding of the few message shapes the document needs.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(mut self, field: u32, data: &[u8]) -> Self {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }

    fn string(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }

    fn message(self, field: u32, m: Msg) -> Self {
        self.bytes(field, &m.0)
    }

    fn boolean(mut self, field: u32, b: bool) -> Self {
        self.varint(u64::from(field) << 3);
        self.varint(u64::from(b));
        self
    }
}

fn query_param(name: &str, ty: &str) -> Msg {
    // QueryParameterSubSchema: in = 2, name = 4, type = 6, unique_items = 20.
    let query = Msg::default()
        .string(2, "query")
        .string(4, name)
        .string(6, ty)
        .boolean(20, true);
    // ParametersItem.parameter(1) -> Parameter.non_body_parameter(2)
    //   -> NonBodyParameter.query_parameter_sub_schema(3)
    let non_body = Msg::default().message(3, query);
    let parameter = Msg::default().message(2, non_body);
    Msg::default().message(1, parameter)
}

fn patch_operation(kind: &KindInfo, gvk: (&str, &str, &str), id: &str) -> Msg {
    let (group, version, k) = gvk;
    // YAML, as upstream's extension values are encoded.
    let yaml = format!("group: \"{group}\"\nkind: {k}\nversion: {version}\n");
    let extension = Msg::default()
        .string(1, "x-kubernetes-group-version-kind")
        .message(2, Msg::default().string(2, &yaml));
    let ok = Msg::default().string(1, "OK");
    let response = Msg::default()
        .string(1, "200")
        .message(2, Msg::default().message(1, ok));
    let mut op = Msg::default()
        .string(1, &format!("{}_{}", tag_group(kind.group), kind.version))
        .string(3, &format!("partially update the specified {k}"))
        .string(5, id);
    for consumes in [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ] {
        op = op.string(7, consumes);
    }
    for (name, ty) in [
        ("dryRun", "string"),
        ("fieldManager", "string"),
        ("fieldValidation", "string"),
        ("force", "boolean"),
    ] {
        op = op.message(8, query_param(name, ty));
    }
    op.message(9, Msg::default().message(1, response))
        .message(13, extension)
}

fn tag_group(group: &str) -> &str {
    group
        .split('.')
        .next()
        .filter(|g| !g.is_empty())
        .unwrap_or("core")
}

/// The PATCH paths of `kinds` (and of their status and scale subresources).
fn paths_of<'a>(kinds: impl IntoIterator<Item = &'a KindInfo>) -> Msg {
    let mut paths = Msg::default();
    for kind in kinds {
        let gv = super::group_version_path(kind.group, kind.version);
        let base = if kind.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", kind.plural)
        } else {
            format!("/{gv}/{}/{{name}}", kind.plural)
        };
        let scope = if kind.namespaced { "Namespaced" } else { "" };
        let id = format!(
            "patch{}{scope}{}",
            super::op_group(kind.group, kind.version),
            kind.kind
        );
        let gvk = (kind.group, kind.version, kind.kind);
        let mut items = vec![(base.clone(), patch_operation(kind, gvk, &id))];
        if kind.has_subresource("status") {
            items.push((
                format!("{base}/status"),
                patch_operation(kind, gvk, &format!("{id}Status")),
            ));
        }
        if kind.has_subresource("scale") {
            items.push((
                format!("{base}/scale"),
                patch_operation(kind, ("autoscaling", "v1", "Scale"), &format!("{id}Scale")),
            ));
        }
        for (path, op) in items {
            // PathItem.patch = 8; Paths.path = 2 (NamedPathItem: name = 1, value = 2).
            let item = Msg::default().message(8, op);
            let named = Msg::default().string(1, &path).message(2, item);
            paths = paths.message(2, named);
        }
    }
    paths
}

/// Encodes the document for `registry`.
pub(super) fn document(registry: &Registry) -> Vec<u8> {
    let info = Msg::default().string(1, "Kubernetes").string(2, "v1.33.0");
    Msg::default()
        .string(1, "2.0")
        .message(2, info)
        .message(8, paths_of(&registry.kinds))
        .message(9, Msg::default())
        .0
}

/// The document of custom kinds (served versions of CRDs): their PATCH paths, as for
/// built-in kinds, and a definition per kind converted from its `openAPIV3Schema` the way
/// Kubernetes publishes CRDs in v2, so kubectl 1.27 explains them and validates them
/// against their schema. A protobuf message concatenated to another merges into it, so
/// the server sends the built-in document followed by this one.
pub(super) fn custom_document(kinds: &[&KindInfo]) -> Vec<u8> {
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut definitions = Msg::default();
    for kind in kinds {
        let schema = kind
            .custom
            .as_ref()
            .and_then(|c| c.schema.clone())
            .unwrap_or_else(|| serde_json::json!({"type": "object"}));
        let mut def = schema_msg(&schema, &mut |m, props| {
            // apiVersion, kind and metadata as Kubernetes adds them (metadata without its
            // $ref: this document does not carry ObjectMeta).
            let api_version = Msg::default()
                .string(4, "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values.")
                .message(22, Msg::default().string(1, "string"));
            let k = Msg::default()
                .string(4, "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase.")
                .message(22, Msg::default().string(1, "string"));
            let meta = Msg::default()
                .string(4, "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata")
                .message(22, Msg::default().string(1, "object"));
            let mut p = Msg::default();
            for (name, s) in [("apiVersion", api_version), ("kind", k), ("metadata", meta)] {
                if !props.contains(&name.to_string()) {
                    p = p.message(1, Msg::default().string(1, name).message(2, s));
                }
            }
            m.0.extend_from_slice(&Msg::default().message(25, p).0);
        });
        let yaml = format!(
            "- group: \"{}\"\n  kind: {}\n  version: {}\n",
            kind.group, kind.kind, kind.version
        );
        let extension = Msg::default()
            .string(1, "x-kubernetes-group-version-kind")
            .message(2, Msg::default().string(2, &yaml));
        def = def.message(31, extension);
        let name = super::schema_name(kind);
        definitions = definitions.message(1, Msg::default().string(1, &name).message(2, def));
    }
    Msg::default()
        .message(8, paths_of(kinds.iter().copied()))
        .message(9, definitions)
        .0
}

/// A structural schema as gnostic's `Schema` (description 4, required 19,
/// additionalProperties 21, type 22, items 23, properties 25), keeping what kube-openapi's
/// v2 model parser accepts: types it knows, arrays with exactly one item schema, no
/// `$ref`s. Like Kubernetes' v2 conversion it drops `nullable`, `anyOf`/`oneOf`/`not`, and
/// the type of `x-kubernetes-int-or-string` and `x-kubernetes-preserve-unknown-fields`
/// values. `top` adds properties at the root (it gets the names already present).
fn schema_msg(s: &serde_json::Value, top: &mut dyn FnMut(&mut Msg, &[String])) -> Msg {
    use serde_json::Value;
    let mut m = Msg::default();
    if let Some(d) = s.get("description").and_then(Value::as_str) {
        m = m.string(4, d);
    }
    if let Some(f) = s.get("format").and_then(Value::as_str) {
        m = m.string(2, f);
    }
    for r in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            m = m.string(19, r);
        }
    }
    let flag = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
    let open = flag("x-kubernetes-int-or-string") || flag("x-kubernetes-preserve-unknown-fields");
    let ty = s.get("type").and_then(Value::as_str).unwrap_or_default();
    let props = s.get("properties").and_then(Value::as_object);
    let items = s.get("items").filter(|i| i.is_object());
    let ty = match ty {
        "array" if items.is_none() => "",
        "object" | "array" | "string" | "integer" | "number" | "boolean" => ty,
        _ => "",
    };
    // An open object (additionalProperties) is the only typed schema written without its type.
    if !(ty.is_empty() || open && ty != "object") {
        m = m.message(22, Msg::default().string(1, ty));
    }
    if ty == "array"
        && !open
        && let Some(i) = items
    {
        m = m.message(23, Msg::default().message(1, schema_msg(i, &mut |_, _| {})));
    }
    let mut names = Vec::new();
    if let Some(props) = props.filter(|_| ty == "object" || ty.is_empty()) {
        let mut p = Msg::default();
        for (name, sub) in props {
            names.push(name.clone());
            let named = Msg::default()
                .string(1, name)
                .message(2, schema_msg(sub, &mut |_, _| {}));
            p = p.message(1, named);
        }
        m = m.message(25, p);
    } else if ty == "object"
        && let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object())
    {
        let item = Msg::default().message(1, schema_msg(ap, &mut |_, _| {}));
        m = m.message(21, item);
    }
    // Properties messages merge, so the extra root properties may follow.
    top(&mut m, &names);
    m
}
