//! OpenAPI v3 documents for the served kinds, generated from the k8s-openapi types plus
//! Kubernetes' patch extensions (`x-kubernetes-patch-merge-key`, ...).
//!
//! kubectl reads these documents to decide whether the server validates fields itself
//! (`fieldValidation` on the PATCH operation) and to compute strategic merge patches (the
//! merge keys in `components.schemas`), so they mirror upstream's documents closely. The
//! same [`Schemas`] drive the server's strategic merge patch and strict decoding.

pub mod merge_keys;
mod v2;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use crate::{KindInfo, Registry};

const REF_PREFIX: &str = "#/components/schemas/";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Kubernetes' canonical schema name of a kind: `io.k8s.api.apps.v1.Deployment`.
pub fn schema_name(kind: &KindInfo) -> String {
    format!("{}.{}", package(kind.group, kind.version), kind.kind)
}

/// Go package path of an API group, as upstream names definitions: the core group is
/// `io.k8s.api.core.v1`, `coordination.k8s.io/v1` is `io.k8s.api.coordination.v1`.
fn package(group: &str, version: &str) -> String {
    let first = group.split('.').next().filter(|s| !s.is_empty());
    format!("io.k8s.api.{}.{}", first.unwrap_or("core"), version)
}

/// The URL path of a group-version's document: `api/v1`, `apis/apps/v1`.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// All component schemas of the served kinds, with Kubernetes' extensions applied.
#[derive(Clone, Debug)]
pub struct Schemas {
    map: BTreeMap<String, Value>,
}

/// The schemas of [`Registry::builtin`] as [`Schemas::generate`] makes them from the types,
/// gzipped JSON. Generating them takes the JSON-schema code of every k8s-openapi type (about
/// 2 MB of the binary) and their construction at every start; the test
/// `embedded_schemas_are_generated_from_the_types` checks this file against the types;
/// `BOSUN_SCHEMAS_REGENERATE=1 cargo test -p bosun-api --lib embedded_schemas` rewrites it.
static BUILTIN_SCHEMAS: &[u8] = include_bytes!("openapi/builtin-schemas.json.gz");

impl Schemas {
    /// The schemas of [`Registry::builtin`], read once.
    pub fn builtin() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| {
            // Checked by the test above on every build of this crate's tests.
            Schemas::from_gzip_json(BUILTIN_SCHEMAS).expect("the embedded schemas decode")
        })
    }

    fn from_gzip_json(gz: &[u8]) -> Result<Schemas, String> {
        use std::io::Read as _;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut json)
            .map_err(|e| e.to_string())?;
        let map = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
        Ok(Schemas { map })
    }

    /// The schemas that describe `kind`: the built-in set when it has the kind, else a
    /// set generated for it alone.
    pub fn for_kind(kind: &KindInfo) -> Cow<'static, Schemas> {
        let builtin = Schemas::builtin();
        if builtin.map.contains_key(&schema_name(kind)) {
            Cow::Borrowed(builtin)
        } else {
            Cow::Owned(Schemas::generate(std::iter::once(kind)))
        }
    }

    /// Generates the schemas of `kinds` and everything they reference, plus the meta
    /// types the API paths use (Status, DeleteOptions, ListMeta, Patch, Scale).
    pub fn generate<'a>(kinds: impl IntoIterator<Item = &'a KindInfo>) -> Schemas {
        let mut generator = SchemaSettings::openapi3()
            .with(|s| s.meta_schema = None)
            .into_generator();
        let mut tops = Vec::new();
        let mut group_versions = BTreeSet::new();
        for kind in kinds {
            let mut schema = (kind.schema)(&mut generator);
            for t in generator.transforms_mut() {
                t.transform(&mut schema);
            }
            group_versions.insert((kind.group, kind.version));
            tops.push((kind, schema.to_value()));
        }
        generator.subschema_for::<meta::Status>();
        generator.subschema_for::<meta::DeleteOptions>();
        generator.subschema_for::<meta::ListMeta>();
        generator.subschema_for::<meta::Patch>();
        generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
        let mut map: BTreeMap<String, Value> =
            generator.take_definitions(true).into_iter().collect();

        for (kind, mut schema) in tops {
            set_gvk(&mut schema, kind.group, kind.version, kind.kind);
            map.insert(schema_name(kind), schema);
            let list_name = format!("{}.{}", package(kind.group, kind.version), kind.list_kind);
            map.insert(list_name, list_schema(kind));
        }
        if let Some(s) = map.get_mut(STATUS) {
            set_gvk(s, "", "v1", "Status");
        }
        if let Some(s) = map.get_mut(SCALE) {
            set_gvk(s, "autoscaling", "v1", "Scale");
        }
        if let Some(s) = map.get_mut(DELETE_OPTIONS) {
            let gvks: Vec<Value> = group_versions
                .iter()
                .map(|(g, v)| json!({"group": g, "version": v, "kind": "DeleteOptions"}))
                .collect();
            s["x-kubernetes-group-version-kind"] = Value::Array(gvks);
        }
        // Upstream publishes both as strings; kubectl and clients treat them so.
        if let Some(Value::Object(s)) =
            map.get_mut("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
        {
            s.insert("type".into(), "string".into());
            s.insert("format".into(), "int-or-string".into());
            s.insert("x-kubernetes-int-or-string".into(), true.into());
        }
        if let Some(Value::Object(s)) = map.get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity")
        {
            s.insert("type".into(), "string".into());
        }
        for meta in merge_keys::FIELDS {
            let Some(prop) = map
                .get_mut(meta.schema)
                .and_then(|s| s.get_mut("properties"))
                .and_then(|p| p.get_mut(meta.field))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            if let Some(s) = meta.strategy {
                prop.insert("x-kubernetes-patch-strategy".into(), s.into());
            }
            if let Some(k) = meta.merge_key {
                prop.insert("x-kubernetes-patch-merge-key".into(), k.into());
            }
            if let Some(t) = meta.list_type {
                prop.insert("x-kubernetes-list-type".into(), t.into());
            }
            if !meta.map_keys.is_empty() {
                prop.insert("x-kubernetes-list-map-keys".into(), json!(meta.map_keys));
            }
        }
        Schemas { map }
    }

    /// One schema by canonical name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    /// The schema of a kind (`None` when the set does not have it).
    pub fn of_kind(&self, kind: &KindInfo) -> Option<&Value> {
        self.map.get(&schema_name(kind))
    }

    /// Follows `$ref` and single-element `allOf` wrappers to the schema that describes
    /// the value. Unknown references resolve to the wrapper itself.
    pub fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut cur = schema;
        // Bounded: references never chain deeper than a few levels.
        for _ in 0..16 {
            if let Some(r) = cur.get("$ref").and_then(Value::as_str) {
                match r.strip_prefix(REF_PREFIX).and_then(|n| self.map.get(n)) {
                    Some(next) => cur = next,
                    None => return cur,
                }
            } else if let Some([one]) = cur
                .get("allOf")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                cur = one;
            } else {
                return cur;
            }
        }
        cur
    }

    /// The raw (unresolved) schema of property `field` of a resolved object schema,
    /// or of its map values (`additionalProperties`).
    pub fn field<'a>(&'a self, object: &'a Value, field: &str) -> Option<&'a Value> {
        if let Some(p) = object.get("properties").and_then(|p| p.get(field)) {
            return Some(p);
        }
        object.get("additionalProperties").filter(|a| a.is_object())
    }

    /// The names of all schemas `seeds` reference, transitively, seeds included.
    fn closure(&self, seeds: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = seeds.into_iter().collect();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(s) = self.map.get(&name) {
                collect_refs(s, &mut todo);
            }
        }
        seen
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(n) = v.as_str().and_then(|r| r.strip_prefix(REF_PREFIX)) {
                        out.push(n.to_string());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn set_gvk(schema: &mut Value, group: &str, version: &str, kind: &str) {
    if let Value::Object(m) = schema {
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": group, "version": version, "kind": kind}]),
        );
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("{REF_PREFIX}{name}") })
}

fn list_schema(kind: &KindInfo) -> Value {
    json!({
        "description": format!("{} is a list of {} objects.", kind.list_kind, kind.kind),
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"},
            "items": {
                "description": format!("List of {}.", kind.plural),
                "type": "array",
                "items": {"allOf": [schema_ref(&schema_name(kind))], "default": {}},
            },
            "kind": {"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"},
            "metadata": {"allOf": [schema_ref(LIST_META)], "default": {}, "description": "Standard list metadata."},
        },
        "required": ["items"],
        "x-kubernetes-group-version-kind": [{"group": kind.group, "version": kind.version, "kind": kind.list_kind}],
    })
}

/// The documents served under `/openapi/v3`, built once at start-up.
pub struct OpenApi {
    index: Value,
    documents: BTreeMap<String, Document>,
    v2: Vec<u8>,
}

/// Only the serialized form is kept: the documents are served as bytes, and their parsed
/// trees took several times as much memory for the life of the server.
struct Document {
    bytes: Vec<u8>,
    hash: String,
}

impl OpenApi {
    pub fn build(registry: &Registry) -> OpenApi {
        let owned;
        let schemas = if std::ptr::eq(registry, Registry::builtin()) {
            Schemas::builtin()
        } else {
            owned = Schemas::generate(registry.kinds.iter());
            &owned
        };
        let mut documents = BTreeMap::new();
        let mut index = Map::new();
        for (group, version) in registry.group_versions() {
            let kinds: Vec<&KindInfo> = registry
                .kinds
                .iter()
                .filter(|k| k.group == group && k.version == version)
                .collect();
            let value = document(schemas, group, version, &kinds);
            let bytes = serde_json::to_vec(&value).expect("a JSON value always serializes");
            let hash = hex::encode_upper(Sha512::digest(&bytes));
            let path = group_version_path(group, version);
            index.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
            documents.insert(path, Document { bytes, hash });
        }
        OpenApi {
            index: json!({ "paths": index }),
            documents,
            v2: v2::document(registry),
        }
    }

    /// The documents of custom kinds (CRD versions): their `openAPIV3Schema` with the
    /// standard `apiVersion`, `kind` and `metadata` properties, and the same paths and
    /// PATCH `fieldValidation` parameter as built-in kinds, so kubectl validates them on
    /// the server and `kubectl explain` describes them.
    pub fn custom(kinds: &[&KindInfo]) -> OpenApi {
        let builtin = Schemas::builtin();
        let mut map = BTreeMap::new();
        let seeds = [STATUS, DELETE_OPTIONS, PATCH, SCALE, LIST_META, OBJECT_META];
        for n in builtin.closure(seeds.iter().map(|s| s.to_string())) {
            if let Some(s) = builtin.get(&n) {
                map.insert(n, s.clone());
            }
        }
        let mut group_versions: Vec<(&str, &str)> = Vec::new();
        for kind in kinds {
            let mut schema = kind
                .custom
                .as_ref()
                .and_then(|c| c.schema.clone())
                .unwrap_or_else(
                    || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                );
            if let Some(m) = schema.as_object_mut() {
                let props = m.entry("properties").or_insert_with(|| json!({}));
                if let Some(p) = props.as_object_mut() {
                    p.insert("apiVersion".into(), json!({"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"}));
                    p.insert("kind".into(), json!({"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"}));
                    p.insert("metadata".into(), json!({"allOf": [schema_ref(OBJECT_META)], "description": "Standard object's metadata."}));
                }
            }
            set_gvk(&mut schema, kind.group, kind.version, kind.kind);
            map.insert(schema_name(kind), schema);
            let list_name = format!("{}.{}", package(kind.group, kind.version), kind.list_kind);
            map.insert(list_name, list_schema(kind));
            if !group_versions.contains(&(kind.group, kind.version)) {
                group_versions.push((kind.group, kind.version));
            }
        }
        let schemas = Schemas { map };
        let mut documents = BTreeMap::new();
        let mut index = Map::new();
        for (group, version) in group_versions {
            let gv_kinds: Vec<&KindInfo> = kinds
                .iter()
                .copied()
                .filter(|k| k.group == group && k.version == version)
                .collect();
            let value = document(&schemas, group, version, &gv_kinds);
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            let hash = hex::encode_upper(Sha512::digest(&bytes));
            let path = group_version_path(group, version);
            index.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
            documents.insert(path, Document { bytes, hash });
        }
        OpenApi {
            index: json!({ "paths": index }),
            documents,
            v2: v2::custom_document(kinds),
        }
    }

    /// Body of `GET /openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=..."}, ...}}`.
    pub fn index(&self) -> &Value {
        &self.index
    }

    /// Body of `GET /openapi/v3/{path}` for `path` = `api/v1`, `apis/apps/v1`, ...,
    /// parsed from [`OpenApi::document_bytes`].
    pub fn document(&self, path: &str) -> Option<Value> {
        let bytes = self.document_bytes(path)?;
        Some(serde_json::from_slice(bytes).expect("the document was serialized from a Value"))
    }

    /// The serialized document, exactly the bytes its hash was computed over.
    pub fn document_bytes(&self, path: &str) -> Option<&[u8]> {
        self.documents
            .get(path.trim_matches('/'))
            .map(|d| d.bytes.as_slice())
    }

    /// Body of `GET /openapi/v2` (and `/swagger-2.0.0.pb-v1`): paths with the PATCH
    /// operations only, which is what kubectl 1.27 and 1.28 read to send
    /// `fieldValidation=Strict` (newer kubectl reads the v3 documents). Serve it with
    /// `Content-Type: application/com.github.proto-openapi.spec.v2.v1.0+protobuf`:
    /// kubectl asks with the `...spec.v2@v1.0+protobuf` spelling but cannot parse a
    /// response type containing '@'.
    pub fn v2_protobuf(&self) -> &[u8] {
        &self.v2
    }

    /// Content hash of a document (the `?hash=` kubectl caches by): upper-case hex
    /// SHA-512 of its JSON, as upstream computes it.
    pub fn hash(&self, path: &str) -> Option<&str> {
        self.documents
            .get(path.trim_matches('/'))
            .map(|d| d.hash.as_str())
    }
}

fn document(schemas: &Schemas, group: &str, version: &str, kinds: &[&KindInfo]) -> Value {
    let mut paths = Map::new();
    let mut seeds = vec![
        STATUS.to_string(),
        DELETE_OPTIONS.to_string(),
        PATCH.to_string(),
    ];
    for kind in kinds {
        seeds.push(schema_name(kind));
        seeds.push(format!("{}.{}", package(group, version), kind.list_kind));
        if kind.has_subresource("scale") {
            seeds.push(SCALE.to_string());
        }
        kind_paths(kind, &mut paths);
    }
    let components: Map<String, Value> = schemas
        .closure(seeds)
        .into_iter()
        .filter_map(|n| schemas.get(&n).map(|s| (n, s.clone())))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}
            }
        },
        "security": [{"BearerToken": []}],
    })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": schema})
}

fn string_query(name: &str, description: &str) -> Value {
    query(
        name,
        description,
        json!({"type": "string", "uniqueItems": true}),
    )
}

fn write_params(with_force: bool) -> Vec<Value> {
    let mut out = vec![
        string_query(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
        ),
        string_query(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        string_query(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
    ];
    if with_force {
        out.push(query(
            "force",
            "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people.",
            json!({"type": "boolean", "uniqueItems": true}),
        ));
    }
    out
}

fn list_params() -> Vec<Value> {
    let boolean = json!({"type": "boolean", "uniqueItems": true});
    let integer = json!({"type": "integer", "uniqueItems": true});
    vec![
        query(
            "allowWatchBookmarks",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
            boolean.clone(),
        ),
        string_query(
            "continue",
            "The continue option should be set when retrieving more results from the server.",
        ),
        string_query(
            "fieldSelector",
            "A selector to restrict the list of returned objects by their fields.",
        ),
        string_query(
            "labelSelector",
            "A selector to restrict the list of returned objects by their labels.",
        ),
        query(
            "limit",
            "limit is a maximum number of responses to return for a list call.",
            integer.clone(),
        ),
        string_query(
            "resourceVersion",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
        ),
        string_query(
            "resourceVersionMatch",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
        ),
        query(
            "sendInitialEvents",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
            boolean.clone(),
        ),
        query(
            "timeoutSeconds",
            "Timeout for the list/watch call.",
            integer,
        ),
        query(
            "watch",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
            boolean,
        ),
    ]
}

fn delete_params() -> Vec<Value> {
    vec![
        string_query(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ),
        query(
            "gracePeriodSeconds",
            "The duration in seconds before the object should be deleted.",
            json!({"type": "integer", "uniqueItems": true}),
        ),
        query(
            "orphanDependents",
            "Deprecated: please use the PropagationPolicy.",
            json!({"type": "boolean", "uniqueItems": true}),
        ),
        string_query(
            "propagationPolicy",
            "Whether and how garbage collection will be performed: 'Orphan', 'Background' or 'Foreground'.",
        ),
    ]
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn responses(codes: &[&str], schema: &str) -> Value {
    let content = json!({
        "application/json": {"schema": schema_ref(schema)},
        "application/yaml": {"schema": schema_ref(schema)},
    });
    let mut out = Map::new();
    for code in codes {
        let description = match *code {
            "201" => "Created",
            "202" => "Accepted",
            _ => "OK",
        };
        out.insert(
            code.to_string(),
            json!({"description": description, "content": content}),
        );
    }
    out.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(out)
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"*/*": {"schema": schema_ref(schema)}}})
}

fn patch_body() -> Value {
    let s = json!({"schema": schema_ref(PATCH)});
    json!({"required": true, "content": {
        "application/apply-patch+yaml": s,
        "application/json-patch+json": s,
        "application/merge-patch+json": s,
        "application/strategic-merge-patch+json": s,
    }})
}

/// `CoreV1`, `AppsV1`, `CoordinationV1`: the group-version part of operation ids.
fn op_group(group: &str, version: &str) -> String {
    let g = group
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("core");
    format!("{}{}", capitalize(g), capitalize(version))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

struct Op<'a> {
    verb: &'static str,
    action: &'static str,
    /// Operation id suffix after the verb: `AppsV1NamespacedDeploymentStatus`.
    id: String,
    gvk: (&'a str, &'a str, &'a str),
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
    description: String,
}

impl Op<'_> {
    fn to_value(&self, tag: &str) -> Value {
        let mut m = Map::new();
        m.insert("tags".into(), json!([tag]));
        m.insert("description".into(), self.description.clone().into());
        m.insert(
            "operationId".into(),
            format!("{}{}", self.action_id(), self.id).into(),
        );
        if !self.params.is_empty() {
            m.insert("parameters".into(), Value::Array(self.params.clone()));
        }
        if let Some(b) = &self.body {
            m.insert("requestBody".into(), b.clone());
        }
        m.insert("responses".into(), self.responses.clone());
        m.insert("x-kubernetes-action".into(), self.action.into());
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!({"group": self.gvk.0, "version": self.gvk.1, "kind": self.gvk.2}),
        );
        Value::Object(m)
    }

    fn action_id(&self) -> &'static str {
        match self.action {
            "get" => "read",
            "post" => "create",
            "put" => "replace",
            "deletecollection" => "deleteCollection",
            other => other,
        }
    }
}

fn kind_paths(kind: &KindInfo, paths: &mut Map<String, Value>) {
    let gv = group_version_path(kind.group, kind.version);
    let tag = format!(
        "{}_{}",
        kind.group
            .split('.')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("core"),
        kind.version
    );
    let prefix = if kind.namespaced {
        format!("/{gv}/namespaces/{{namespace}}/{}", kind.plural)
    } else {
        format!("/{gv}/{}", kind.plural)
    };
    let scope = if kind.namespaced { "Namespaced" } else { "" };
    let id = format!("{}{scope}{}", op_group(kind.group, kind.version), kind.kind);
    let name = schema_name(kind);
    let list = format!("{}.{}", package(kind.group, kind.version), kind.list_kind);
    let gvk = (kind.group, kind.version, kind.kind);
    let mut common = vec![string_query(
        "pretty",
        "If 'true', then the output is pretty printed.",
    )];
    if kind.namespaced {
        common.insert(
            0,
            path_param(
                "namespace",
                "object name and auth scope, such as for teams and projects",
            ),
        );
    }

    let mut deletecollection = delete_params();
    deletecollection.extend(list_params());
    let collection = [
        Op {
            verb: "get",
            action: "list",
            id: id.clone(),
            gvk,
            params: list_params(),
            body: None,
            responses: responses(&["200"], &list),
            description: format!("list or watch objects of kind {}", kind.kind),
        },
        Op {
            verb: "post",
            action: "post",
            id: id.clone(),
            gvk,
            params: write_params(false),
            body: Some(body(&name)),
            responses: responses(&["200", "201", "202"], &name),
            description: format!("create a {}", kind.kind),
        },
        Op {
            verb: "delete",
            action: "deletecollection",
            id: id.clone(),
            gvk,
            params: deletecollection,
            body: Some(body(DELETE_OPTIONS)),
            responses: responses(&["200"], STATUS),
            description: format!("delete collection of {}", kind.kind),
        },
    ];
    paths.insert(prefix.clone(), path_item(&collection, &common, &tag));

    let mut named = common.clone();
    named.insert(0, path_param("name", &format!("name of the {}", kind.kind)));
    let object = [
        Op {
            verb: "get",
            action: "get",
            id: id.clone(),
            gvk,
            params: vec![],
            body: None,
            responses: responses(&["200"], &name),
            description: format!("read the specified {}", kind.kind),
        },
        Op {
            verb: "put",
            action: "put",
            id: id.clone(),
            gvk,
            params: write_params(false),
            body: Some(body(&name)),
            responses: responses(&["200", "201"], &name),
            description: format!("replace the specified {}", kind.kind),
        },
        Op {
            verb: "patch",
            action: "patch",
            id: id.clone(),
            gvk,
            params: write_params(true),
            body: Some(patch_body()),
            responses: responses(&["200", "201"], &name),
            description: format!("partially update the specified {}", kind.kind),
        },
        Op {
            verb: "delete",
            action: "delete",
            id: id.clone(),
            gvk,
            params: delete_params(),
            body: Some(body(DELETE_OPTIONS)),
            responses: responses(&["200", "202"], STATUS),
            description: format!("delete a {}", kind.kind),
        },
    ];
    paths.insert(
        format!("{prefix}/{{name}}"),
        path_item(&object, &named, &tag),
    );

    for sub in ["status", "scale"] {
        if !kind.has_subresource(sub) {
            continue;
        }
        let (schema, gvk) = if sub == "scale" {
            (SCALE.to_string(), ("autoscaling", "v1", "Scale"))
        } else {
            (name.clone(), gvk)
        };
        let sub_id = format!("{id}{}", capitalize(sub));
        let ops = [
            Op {
                verb: "get",
                action: "get",
                id: sub_id.clone(),
                gvk,
                params: vec![],
                body: None,
                responses: responses(&["200"], &schema),
                description: format!("read {sub} of the specified {}", kind.kind),
            },
            Op {
                verb: "put",
                action: "put",
                id: sub_id.clone(),
                gvk,
                params: write_params(false),
                body: Some(body(&schema)),
                responses: responses(&["200", "201"], &schema),
                description: format!("replace {sub} of the specified {}", kind.kind),
            },
            Op {
                verb: "patch",
                action: "patch",
                id: sub_id.clone(),
                gvk,
                params: write_params(true),
                body: Some(patch_body()),
                responses: responses(&["200", "201"], &schema),
                description: format!("partially update {sub} of the specified {}", kind.kind),
            },
        ];
        paths.insert(
            format!("{prefix}/{{name}}/{sub}"),
            path_item(&ops, &named, &tag),
        );
    }

    if kind.namespaced {
        let all = [Op {
            verb: "get",
            action: "list",
            id: format!(
                "{}{}ForAllNamespaces",
                op_group(kind.group, kind.version),
                kind.kind
            ),
            gvk,
            params: list_params(),
            body: None,
            responses: responses(&["200"], &list),
            description: format!("list or watch objects of kind {}", kind.kind),
        }];
        let pretty = vec![string_query(
            "pretty",
            "If 'true', then the output is pretty printed.",
        )];
        paths.insert(
            format!("/{gv}/{}", kind.plural),
            path_item(&all, &pretty, &tag),
        );
    }
}

fn path_item(ops: &[Op], params: &[Value], tag: &str) -> Value {
    let mut m = Map::new();
    for op in ops {
        m.insert(op.verb.into(), op.to_value(tag));
    }
    m.insert("parameters".into(), Value::Array(params.to_vec()));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded built-in schemas are what the types generate; after a change of the
    /// types (a k8s-openapi upgrade, a new kind, a new merge key) rerun this test with
    /// `BOSUN_SCHEMAS_REGENERATE=1`, which rewrites the file, and commit it.
    #[test]
    fn embedded_schemas_are_generated_from_the_types() {
        use std::io::Write as _;
        let generated = Schemas::generate(Registry::builtin().kinds.iter());
        assert!(generated.map.len() > 400, "{}", generated.map.len());
        let json = serde_json::to_vec(&generated.map).unwrap();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/openapi/builtin-schemas.json.gz"
        );
        let regenerate = std::env::var_os("BOSUN_SCHEMAS_REGENERATE").is_some();
        if regenerate {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&json).unwrap();
            std::fs::write(path, gz.finish().unwrap()).unwrap();
        }
        let file = std::fs::read(path).unwrap();
        let embedded = Schemas::from_gzip_json(&file).unwrap();
        assert!(
            serde_json::to_vec(&embedded.map).unwrap() == json,
            "{path} is stale; regenerate with BOSUN_SCHEMAS_REGENERATE=1 cargo test -p bosun-api --lib embedded_schemas"
        );
        if !regenerate {
            assert!(file == BUILTIN_SCHEMAS, "the compiled-in file is {path}");
            // What the server uses is the embedded set.
            assert_eq!(serde_json::to_vec(&Schemas::builtin().map).unwrap(), json);
        }
    }

    fn apps() -> (OpenApi, Value) {
        let api = OpenApi::build(Registry::builtin());
        let doc = api.document("apis/apps/v1").unwrap();
        (api, doc)
    }

    /// Walks a document the way kubectl's strategic-merge lookup does: property, then
    /// `allOf[0]` / `$ref`, items for arrays.
    fn walk<'a>(doc: &'a Value, start: &str, path: &[&str]) -> &'a Value {
        let schemas = &doc["components"]["schemas"];
        let resolve = |mut s: &'a Value| -> &'a Value {
            loop {
                if let Some(a) = s.get("allOf") {
                    s = &a[0];
                } else if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                    s = &schemas[r.strip_prefix(REF_PREFIX).unwrap()];
                } else {
                    return s;
                }
            }
        };
        let mut cur = &schemas[start];
        let mut prop = cur;
        for p in path {
            if *p == "[]" {
                cur = resolve(&prop["items"]);
                continue;
            }
            prop = &cur["properties"][*p];
            assert!(!prop.is_null(), "no property {p} in {cur}");
            cur = resolve(prop);
        }
        prop
    }

    #[test]
    fn deployment_containers_carry_merge_keys() {
        let (_, doc) = apps();
        let d = "io.k8s.api.apps.v1.Deployment";
        let containers = walk(&doc, d, &["spec", "template", "spec", "containers"]);
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        let env = walk(
            &doc,
            d,
            &["spec", "template", "spec", "containers", "[]", "env"],
        );
        assert_eq!(env["x-kubernetes-patch-merge-key"], "name");
        let ports = walk(
            &doc,
            d,
            &["spec", "template", "spec", "containers", "[]", "ports"],
        );
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        let volumes = walk(&doc, d, &["spec", "template", "spec", "volumes"]);
        assert_eq!(volumes["x-kubernetes-patch-strategy"], "merge,retainKeys");
        let finalizers = walk(&doc, d, &["metadata", "finalizers"]);
        assert_eq!(finalizers["x-kubernetes-patch-strategy"], "merge");
        assert!(finalizers.get("x-kubernetes-patch-merge-key").is_none());
        let strategy = walk(&doc, d, &["spec", "strategy"]);
        assert_eq!(strategy["x-kubernetes-patch-strategy"], "retainKeys");
        let tolerations = walk(&doc, d, &["spec", "template", "spec", "tolerations"]);
        assert!(tolerations.get("x-kubernetes-patch-merge-key").is_none());
    }

    #[test]
    fn refs_point_into_components_and_resolve() {
        let (_, doc) = apps();
        let text = doc.to_string();
        assert!(!text.contains("#/$defs"), "refs must use components");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            assert!(
                doc["components"]["schemas"].get(&r).is_some(),
                "dangling ref {r}"
            );
        }
        // kubectl reads allOf[0] before following the ref: a ref with siblings must be wrapped.
        let meta = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["properties"]["metadata"];
        assert!(meta.get("$ref").is_none());
        assert_eq!(
            meta["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
    }

    #[test]
    fn kinds_have_gvk_arrays_and_int_or_string_is_marked() {
        let (_, doc) = apps();
        let s = &doc["components"]["schemas"];
        assert_eq!(
            s["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert_eq!(
            s["io.k8s.api.apps.v1.ReplicaSetList"]["x-kubernetes-group-version-kind"][0]["kind"],
            "ReplicaSetList"
        );
        let ios = &s["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
        assert_eq!(ios["format"], "int-or-string");
        assert_eq!(ios["type"], "string");
        assert_eq!(ios["x-kubernetes-int-or-string"], true);
        assert!(s.get("io.k8s.api.autoscaling.v1.Scale").is_some());
        // Only what the group-version needs: no Lease in apps/v1.
        assert!(s.get("io.k8s.api.coordination.v1.Lease").is_none());
    }

    #[test]
    fn patch_operation_lists_field_validation_and_patch_types() {
        let (_, doc) = apps();
        let item = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        let patch = &item["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert_eq!(patch["x-kubernetes-action"], "patch");
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for want in ["dryRun", "fieldManager", "fieldValidation", "force"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let content = patch["requestBody"]["content"].as_object().unwrap();
        for ct in [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ] {
            assert!(content.contains_key(ct), "{ct}");
        }
        // Every PATCH with Deployment's GVK lists fieldValidation (kubectl checks the first it finds).
        for (path, item) in doc["paths"].as_object().unwrap() {
            if item["patch"]["x-kubernetes-group-version-kind"]["kind"] == "Deployment" {
                assert!(
                    item["patch"]["parameters"]
                        .to_string()
                        .contains("fieldValidation"),
                    "{path}"
                );
            }
        }
        assert_eq!(
            doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"]
                ["x-kubernetes-group-version-kind"]["kind"],
            "Scale"
        );
        assert!(doc["paths"]["/apis/apps/v1/deployments"]["get"].is_object());
    }

    #[test]
    fn index_lists_every_group_version_with_its_hash() {
        let api = OpenApi::build(Registry::builtin());
        let paths = api.index()["paths"].as_object().unwrap();
        for p in ["api/v1", "apis/apps/v1", "apis/coordination.k8s.io/v1"] {
            let hash = api.hash(p).unwrap();
            assert_eq!(hash.len(), 128);
            assert!(
                hash.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            );
            assert_eq!(
                paths[p]["serverRelativeURL"],
                format!("/openapi/v3/{p}?hash={hash}")
            );
            let bytes = api.document_bytes(p).unwrap();
            assert_eq!(hex::encode_upper(Sha512::digest(bytes)), hash);
            let parsed: Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(parsed, api.document(p).unwrap());
        }
        assert!(api.document("apis/nope/v1").is_none());
        let core = api.document("api/v1").unwrap();
        let svc_ports =
            &core["components"]["schemas"]["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(svc_ports["x-kubernetes-patch-merge-key"], "port");
        assert!(
            core["paths"]["/api/v1/nodes/{name}"]["patch"].is_object(),
            "cluster-scoped paths have no namespace"
        );
        assert!(
            core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/status"]["patch"].is_object()
        );
    }

    #[test]
    fn every_merge_key_entry_names_a_real_field() {
        let schemas = Schemas::builtin();
        for m in merge_keys::FIELDS {
            let s = schemas
                .get(m.schema)
                .unwrap_or_else(|| panic!("no schema {}", m.schema));
            assert!(
                s["properties"].get(m.field).is_some(),
                "{}.{} missing",
                m.schema,
                m.field
            );
        }
    }
}
