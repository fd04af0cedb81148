//! CRUD over the store: create, get, list, update, patch, delete, and the
//! status/scale/binding/finalize subresources.

use std::sync::Arc;

use axum::response::Response;
use base64::Engine;
use bosun_api::{KindInfo, conversion, defaults, patch, strict, validation};
use bosun_store::{KeyValue, ListOptions, StoreError};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

use crate::Inner;
use crate::error::{ApiError, ApiResult};
use crate::request::{Ctx, json_response, parse_doc};
use crate::selector::{FieldSelector, LabelSelector, label_selector_string};
use crate::services;

/// Retries of a read-modify-write that lost a race without a client precondition.
const MAX_RETRIES: usize = 32;

pub(crate) fn now_rfc3339() -> String {
    ts_rfc3339(jiff::Timestamp::now().as_second())
}

pub(crate) fn ts_rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The stored object with `metadata.resourceVersion` filled in from the store.
pub(crate) fn decode_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    set_rv(&mut v, kv.mod_revision);
    Ok(v)
}

pub(crate) fn set_rv(obj: &mut Value, rev: i64) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rev.to_string()));
}

fn encode(obj: &Value) -> Bytes {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    Bytes::from(serde_json::to_vec(&o).unwrap_or_default())
}

pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let m = obj
        .as_object_mut()
        .expect("object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("metadata object")
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn rv_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion")
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn is_namespace(kind: &KindInfo) -> bool {
    kind.group.is_empty() && kind.kind == "Namespace"
}

fn is_service(kind: &KindInfo) -> bool {
    kind.group.is_empty() && kind.kind == "Service"
}

fn is_pod(kind: &KindInfo) -> bool {
    kind.group.is_empty() && kind.kind == "Pod"
}

/// Kinds whose `metadata.generation` tracks spec changes.
fn has_generation(kind: &KindInfo) -> bool {
    kind.custom.is_some()
        || kind.has_subresource("status") && !matches!(kind.kind, "Namespace" | "Node")
}

/// Whether an object pending deletion can now be removed from the store.
fn ready_to_remove(kind: &KindInfo, obj: &Value) -> bool {
    if meta_str(obj, "deletionTimestamp").is_none() || !finalizers(obj).is_empty() {
        return false;
    }
    if obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0
    {
        return false;
    }
    if is_namespace(kind) {
        return obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
    }
    true
}

pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Checks (or fills in) `apiVersion` and `kind` against the URL's kind.
fn check_type(kind: &KindInfo, obj: &mut Value) -> ApiResult<()> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av != kind.api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                kind.api_version
            )));
        }
        Some(_) => {}
        None => {
            map.insert("apiVersion".into(), json!(kind.api_version));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != kind.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )));
        }
        Some(_) => {}
        None => {
            map.insert("kind".into(), json!(kind.kind));
        }
    }
    Ok(())
}

/// `fieldValidation`: Strict rejects unknown fields, Warn (the default) reports
/// them in `Warning` headers, Ignore drops them silently.
fn field_validation(
    ctx: &Ctx,
    kind: &KindInfo,
    obj: &Value,
    raw: Option<&[u8]>,
) -> ApiResult<Vec<String>> {
    let mode = ctx.q("fieldValidation").unwrap_or("Warn");
    if !matches!(mode, "Strict" | "Warn" | "Ignore") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {mode}"
        )));
    }
    if mode == "Ignore" {
        return Ok(Vec::new());
    }
    let mut msgs: Vec<String> = raw
        .map(strict::duplicate_fields)
        .unwrap_or_default()
        .iter()
        .map(|f| format!("duplicate field \"{f}\""))
        .collect();
    msgs.extend(
        strict::unknown_fields(kind, obj)
            .iter()
            .map(|f| format!("unknown field \"{f}\"")),
    );
    if msgs.is_empty() {
        return Ok(Vec::new());
    }
    if mode == "Strict" {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        )));
    }
    Ok(msgs)
}

/// The body for duplicate-field detection, when it is JSON.
fn json_raw<'a>(ctx: &Ctx, body: &'a [u8]) -> Option<&'a [u8]> {
    matches!(ctx.content_type().as_str(), "" | "application/json").then_some(body)
}

/// Decodes into the kind's type and back: rejects wrong field types and drops unknown fields.
fn normalize(kind: &KindInfo, obj: &Value) -> ApiResult<Value> {
    let mut out = (kind.roundtrip)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            kind.kind, kind.version, kind.kind
        ))
    })?;
    keep_given(&mut out, obj);
    Ok(out)
}

/// Drops what the typed roundtrip invented: required fields the client left out come
/// back as empty defaults, and validation must see them missing (`Required value`).
fn keep_given(out: &mut Value, input: &Value) {
    match (out, input) {
        (Value::Object(o), Value::Object(i)) => {
            o.retain(|k, _| i.get(k).is_some_and(|v| !v.is_null()));
            for (k, v) in o.iter_mut() {
                if let Some(iv) = i.get(k) {
                    keep_given(v, iv);
                }
            }
        }
        (Value::Array(o), Value::Array(i)) if o.len() == i.len() => {
            for (ov, iv) in o.iter_mut().zip(i) {
                keep_given(ov, iv);
            }
        }
        _ => {}
    }
}

/// A served version's object in the stored version (a no-op for most kinds).
fn to_storage(kind: &KindInfo, obj: Value) -> ApiResult<Value> {
    if !conversion::is_converted(kind) {
        return Ok(obj);
    }
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    conversion::to_storage(kind, obj).map_err(|(field, message)| {
        ApiError::invalid(
            kind,
            &name,
            &[bosun_api::FieldError {
                field,
                reason: "FieldValueInvalid",
                message,
            }],
        )
    })
}

/// A stored object in the version `kind` serves.
fn served(kind: &KindInfo, mut obj: Value) -> Value {
    conversion::from_storage(kind, &mut obj);
    obj
}

fn respond(code: StatusCode, obj: &Value, warnings: &[String]) -> Response {
    let mut r = json_response(code, obj);
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

fn object_or_table(ctx: &Ctx, obj: &Value) -> Response {
    if ctx.wants_table() {
        let include = ctx.q("includeObject").unwrap_or("Metadata");
        let mut t = bosun_api::table::table(ctx.kind(), std::slice::from_ref(obj), include);
        if let Some(rv) = rv_of(obj) {
            t["metadata"] = json!({"resourceVersion": rv});
        }
        return table_response(&t);
    }
    json_response(StatusCode::OK, obj)
}

fn table_response(t: &Value) -> Response {
    let mut r = json_response(StatusCode::OK, t);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
    );
    r
}

fn key_of(ctx: &Ctx) -> String {
    ctx.kind().key(ctx.target.namespace.as_deref(), ctx.name())
}

// ---------------------------------------------------------------- create

/// Creates an object (after `apiVersion`/`kind` have been checked): names, system
/// metadata, defaults, namespace checks, validation, then the store write.
pub(crate) async fn create_object(
    inner: &Arc<Inner>,
    kind: &'static KindInfo,
    namespace: Option<&str>,
    mut obj: Value,
    dry_run: bool,
) -> ApiResult<Value> {
    check_type(kind, &mut obj)?;
    let mut obj = to_storage(kind, normalize(kind, &obj)?)?;
    let ns = if kind.namespaced {
        let body_ns = meta_str(&obj, "namespace").map(String::from);
        let ns = match (namespace, body_ns) {
            (Some(u), Some(b)) if u != b => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (Some(u), _) => u.to_string(),
            (None, Some(b)) => b,
            (None, None) => "default".to_string(),
        };
        meta_mut(&mut obj).insert("namespace".into(), json!(ns));
        Some(ns)
    } else {
        meta_mut(&mut obj).remove("namespace");
        None
    };
    let generate = meta_str(&obj, "name").is_none();
    let generate_name = meta_str(&obj, "generateName").map(String::from);
    if generate && generate_name.is_none() {
        return Err(ApiError::invalid(
            kind,
            "",
            &[bosun_api::FieldError {
                field: "metadata.name".into(),
                reason: "FieldValueRequired",
                message: "Required value: name or generateName is required".into(),
            }],
        ));
    }
    {
        let m = meta_mut(&mut obj);
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(f);
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if has_generation(kind) {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
    }
    if is_namespace(kind) {
        obj["status"] = json!({"phase": "Active"});
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
    }
    // Before defaulting, which would fill in a priority admission must compute.
    crate::priority::admit(inner, kind, &mut obj).await?;
    defaults::apply_defaults(kind, &mut obj);

    let mut quota_ns = None;
    // Held until the create is over: its quota reservation ends with it.
    let _reservation = match &ns {
        Some(ns) => {
            check_namespace_open(inner, kind, ns, meta_str(&obj, "name").unwrap_or_default())
                .await?;
            if is_pod(kind) {
                crate::sa_admission::admit(inner, ns, &mut obj).await?;
            }
            let admitted = crate::quota::admit(inner, kind, ns, &mut obj, dry_run).await?;
            if admitted.touches() {
                quota_ns = Some(ns.clone());
            }
            Some(admitted)
        }
        None => None,
    };

    for _ in 0..8 {
        if generate {
            let name = format!(
                "{}{}",
                generate_name.as_deref().unwrap_or_default(),
                random_suffix()
            );
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let errs = validation::validate_create(kind, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(kind, &name, &errs));
        }
        if dry_run {
            return Ok(served(kind, obj));
        }
        let key = kind.key(ns.as_deref(), &name);
        if is_service(kind)
            && inner
                .store
                .get(&key)
                .await
                .map_err(ApiError::store)?
                .is_some()
        {
            // Checked first so a duplicate does not briefly hold addresses.
            if generate {
                continue;
            }
            return Err(ApiError::already_exists(kind, &name));
        }
        let reserved = if is_service(kind) {
            services::allocate(inner, &mut obj).await?
        } else {
            Vec::new()
        };
        let created = inner.store.create(&key, encode(&obj), None).await;
        if created.is_err() && !reserved.is_empty() {
            services::release(inner, &obj).await;
        }
        match created {
            Ok(kv) => {
                set_rv(&mut obj, kv.mod_revision);
                if let Some(ns) = &quota_ns {
                    crate::quota::touch(inner, ns);
                }
                return Ok(served(kind, obj));
            }
            Err(StoreError::AlreadyExists(_)) if generate => continue,
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ApiError::already_exists(kind, &name));
            }
            Err(e) => return Err(ApiError::store(e)),
        }
    }
    Err(ApiError::new(
        500,
        "AlreadyExists",
        "could not generate a unique name; try again",
    ))
}

async fn check_namespace_open(
    inner: &Arc<Inner>,
    kind: &KindInfo,
    ns: &str,
    name: &str,
) -> ApiResult<()> {
    let ns_kind = inner
        .registry
        .by_resource("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces kind"))?;
    let kv = inner
        .store
        .get(&ns_kind.key(None, ns))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(ns_kind, ns))?;
    let nsobj = decode_kv(&kv)?;
    if meta_str(&nsobj, "deletionTimestamp").is_some() {
        let msg = format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        );
        let mut e = ApiError::forbidden(kind, name, &msg);
        if let Some(d) = e.details.as_mut() {
            d["causes"] = json!([{"reason": "NamespaceTerminating", "message": msg, "field": "metadata.namespace"}]);
        }
        return Err(e);
    }
    Ok(())
}

pub(crate) async fn create(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let mut obj = parse_doc(&ctx.content_type(), &body)?;
    check_type(kind, &mut obj)?;
    let warnings = field_validation(&ctx, kind, &obj, json_raw(&ctx, &body))?;
    let created = create_object(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        obj,
        ctx.dry_run(),
    )
    .await?;
    Ok(respond(StatusCode::CREATED, &created, &warnings))
}

// ---------------------------------------------------------------- read

pub(crate) async fn get(ctx: Ctx) -> ApiResult<Response> {
    let obj = get_object(&ctx).await?;
    Ok(object_or_table(&ctx, &obj))
}

async fn get_object(ctx: &Ctx) -> ApiResult<Value> {
    let kv = ctx
        .inner
        .store
        .get(&key_of(ctx))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(ctx.kind(), ctx.name()))?;
    let mut obj = decode_kv(&kv)?;
    crate::crds::convert(ctx.kind(), &mut obj);
    Ok(obj)
}

/// Options of a list (or the initial state of a watch).
pub(crate) struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub cont: Option<String>,
    pub resource_version: Option<String>,
    pub rv_match: Option<String>,
}

impl ListQuery {
    pub fn from_ctx(ctx: &Ctx) -> ApiResult<ListQuery> {
        let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        if let Some(k) = fields
            .keys()
            .find(|k| !crate::field_labels::supported(ctx.kind(), k))
        {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {k}"
            )));
        }
        let limit = match ctx.q("limit") {
            None => None,
            Some(l) => match l.parse::<i64>() {
                Ok(n) if n > 0 => Some(n as usize),
                Ok(_) => None,
                Err(_) => return Err(ApiError::bad_request(format!("invalid limit {l:?}"))),
            },
        };
        Ok(ListQuery {
            labels,
            fields,
            limit,
            cont: ctx.q("continue").map(String::from),
            resource_version: ctx.q("resourceVersion").map(String::from),
            rv_match: ctx.q("resourceVersionMatch").map(String::from),
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

pub(crate) struct ListOut {
    pub items: Vec<Value>,
    pub revision: i64,
    pub cont: Option<String>,
}

fn encode_continue(rev: i64, key: &str) -> String {
    let t = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key});
    base64::engine::general_purpose::STANDARD.encode(t.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if !start.starts_with(prefix) {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

pub(crate) fn parse_rv(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version {s:?}")))
}

pub(crate) fn list_prefix(kind: &KindInfo, ns: Option<&str>) -> String {
    match (kind.namespaced, ns) {
        (true, Some(ns)) => format!("{}{}/", kind.key_prefix(), ns),
        _ => kind.key_prefix(),
    }
}

pub(crate) async fn list_objects(
    inner: &Arc<Inner>,
    kind: &KindInfo,
    ns: Option<&str>,
    q: &ListQuery,
) -> ApiResult<ListOut> {
    let prefix = list_prefix(kind, ns);
    let (mut revision, mut start_after) = match &q.cont {
        Some(token) => {
            let (rev, start) = decode_continue(token, &prefix)?;
            (Some(rev), Some(start))
        }
        None => {
            let rev = match q.resource_version.as_deref() {
                None | Some("0") => None,
                Some(s) => {
                    let r = parse_rv(s)?;
                    if q.rv_match.as_deref() == Some("Exact") {
                        Some(r)
                    } else {
                        let cur = inner
                            .store
                            .current_revision()
                            .await
                            .map_err(ApiError::store)?;
                        if r > cur {
                            return Err(ApiError::new(
                                504,
                                "Timeout",
                                format!("Too large resource version: {r}, current: {cur}"),
                            ));
                        }
                        None
                    }
                }
            };
            (rev, None)
        }
    };
    let mut items = Vec::new();
    let mut more_after: Option<String> = None;
    loop {
        let want = q.limit.map(|l| (l - items.len()).max(1)).unwrap_or(0);
        let page = inner
            .store
            .list(
                &prefix,
                ListOptions {
                    revision,
                    limit: if want > 0 { Some(want.max(64)) } else { None },
                    start_after: start_after.clone(),
                },
            )
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } if q.cont.is_some() => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                StoreError::Compacted { requested, compacted } => ApiError::gone(format!(
                    "too old resource version: {requested} ({compacted})"
                )),
                other => ApiError::store(other),
            })?;
        revision = Some(page.revision);
        let n = page.kvs.len();
        let mut last_key = None;
        for (i, kv) in page.kvs.iter().enumerate() {
            last_key = Some(kv.key.clone());
            let mut obj = decode_kv(kv)?;
            crate::crds::convert(kind, &mut obj);
            if q.matches(&obj) {
                items.push(obj);
            }
            if q.limit.is_some_and(|l| items.len() >= l) {
                if i + 1 < n || page.more {
                    more_after = Some(kv.key.clone());
                }
                break;
            }
        }
        if more_after.is_some() || q.limit.is_some_and(|l| items.len() >= l) || !page.more {
            break;
        }
        match last_key {
            Some(k) => start_after = Some(k),
            None => break,
        }
    }
    let revision = revision.unwrap_or(0);
    Ok(ListOut {
        items,
        revision,
        cont: more_after.map(|k| encode_continue(revision, &k)),
    })
}

pub(crate) async fn list(ctx: Ctx) -> ApiResult<Response> {
    let kind = ctx.kind();
    let q = ListQuery::from_ctx(&ctx)?;
    let out = list_objects(&ctx.inner, kind, ctx.target.namespace.as_deref(), &q).await?;
    let mut meta = json!({"resourceVersion": out.revision.to_string()});
    if let Some(c) = &out.cont {
        meta["continue"] = json!(c);
    }
    if ctx.wants_table() {
        let include = ctx.q("includeObject").unwrap_or("Metadata");
        let mut t = bosun_api::table::table(kind, &out.items, include);
        t["metadata"] = meta;
        return Ok(table_response(&t));
    }
    let list = json!({
        "kind": kind.list_kind,
        "apiVersion": kind.api_version,
        "metadata": meta,
        "items": out.items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

// ---------------------------------------------------------------- update

/// Which part of the stored object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The main resource: everything but `status` (for kinds with a status subresource).
    Main,
    /// `/status`: only `status`.
    Status,
    /// `namespaces/NAME/finalize`: only `spec.finalizers`.
    Finalize,
    /// Server-internal changes (binding): taken as given, without update validation.
    Internal,
    /// `pods/NAME/ephemeralcontainers`: only `spec.ephemeralContainers`, by additions.
    Ephemeral,
}

fn mode_for(ctx: &Ctx) -> Mode {
    match ctx.target.sub.as_deref() {
        // A CSR's approval is a condition in its status (`kubectl certificate approve`).
        Some("status") | Some("approval") => Mode::Status,
        Some("finalize") => Mode::Finalize,
        Some("ephemeralcontainers") => Mode::Ephemeral,
        _ => Mode::Main,
    }
}

/// Builds the object to store from the stored `cur` and the client's `new`.
fn merge_for_update(kind: &KindInfo, mode: Mode, cur: &Value, new: Value) -> Value {
    let rv = rv_of(&new).map(String::from);
    let uid = meta_str(&new, "uid").map(String::from);
    let mut out = match mode {
        Mode::Main | Mode::Internal => {
            let mut n = new;
            if mode == Mode::Main && kind.has_subresource("status") {
                match cur.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if mode == Mode::Main && is_namespace(kind) {
                n["spec"] = cur.get("spec").cloned().unwrap_or_else(|| json!({}));
            }
            if mode == Mode::Main && is_service(kind) {
                services::carry_over(cur, &mut n);
            }
            n
        }
        Mode::Status => {
            let mut n = cur.clone();
            match new.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        }
        Mode::Ephemeral => {
            let mut n = cur.clone();
            match new.pointer("/spec/ephemeralContainers") {
                Some(list) if !list.is_null() => n["spec"]["ephemeralContainers"] = list.clone(),
                _ => {
                    if let Some(spec) = n.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.remove("ephemeralContainers");
                    }
                }
            }
            n
        }
        Mode::Finalize => {
            let mut n = cur.clone();
            let fins = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            n["spec"]["finalizers"] = fins;
            n
        }
    };
    // System-managed metadata always comes from the stored object.
    {
        let cur_meta = cur.get("metadata").and_then(Value::as_object);
        let m = meta_mut(&mut out);
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match cur_meta.and_then(|c| c.get(f)) {
                Some(v) => {
                    m.insert(f.into(), v.clone());
                }
                None => {
                    m.remove(f);
                }
            }
        }
        match rv {
            Some(rv) => m.insert("resourceVersion".into(), json!(rv)),
            None => m.remove("resourceVersion"),
        };
        if let Some(uid) = uid {
            // Kept for the precondition check, restored after it.
            m.insert("x-bosun-uid".into(), json!(uid));
        }
    }
    if has_generation(kind) && out.get("spec") != cur.get("spec") {
        let g = cur
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(&mut out).insert("generation".into(), json!(g + 1));
    }
    out
}

/// The object as far as a write would change it: without its resourceVersion, and
/// without the times of its managedFields entries (a write that changes nothing else
/// must not happen only to move a timestamp, as in Kubernetes).
fn comparable(v: &Value) -> Value {
    let mut o = v.clone();
    let m = meta_mut(&mut o);
    m.remove("resourceVersion");
    if let Some(entries) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
        for e in entries.iter_mut().filter_map(Value::as_object_mut) {
            e.remove("time");
        }
    }
    o
}

pub(crate) struct Updated {
    pub obj: Value,
}

/// Read-modify-write of one object: `mutate` gets the stored object (with its
/// resourceVersion) and returns the client's version of it. A resourceVersion in
/// that version is a precondition (409 on mismatch); without one, lost races retry.
pub(crate) async fn update_loop<F>(
    inner: &Arc<Inner>,
    kind: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
    mode: Mode,
    dry_run: bool,
    mut mutate: F,
) -> ApiResult<Updated>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let key = kind.key(ns, name);
    for _ in 0..MAX_RETRIES {
        let cur_kv = inner
            .store
            .get(&key)
            .await
            .map_err(ApiError::store)?
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let cur = decode_kv(&cur_kv)?;
        let wanted = if conversion::is_converted(kind) {
            to_storage(kind, mutate(&served(kind, cur.clone()))?)?
        } else {
            mutate(&cur)?
        };
        let mut new = merge_for_update(kind, mode, &cur, wanted);
        if let Some(rv) = rv_of(&new)
            && rv != cur_kv.mod_revision.to_string()
        {
            return Err(ApiError::conflict(kind, name));
        }
        if let Some(uid) = meta_mut(&mut new).remove("x-bosun-uid") {
            let cur_uid = meta_str(&cur, "uid").unwrap_or_default();
            if uid.as_str() != Some(cur_uid) {
                return Err(ApiError::conflict_msg(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {}, UID in object meta: {cur_uid}",
                        uid.as_str().unwrap_or_default()
                    ),
                ));
            }
        }
        if mode != Mode::Internal && mode != Mode::Finalize {
            defaults::apply_defaults(kind, &mut new);
            let errs = if mode == Mode::Ephemeral {
                validation::validate_ephemeral_update(&new, &cur)
            } else {
                validation::validate_update(kind, &new, &cur)
            };
            if !errs.is_empty() {
                return Err(ApiError::invalid(kind, name, &errs));
            }
        }
        set_rv(&mut new, cur_kv.mod_revision);
        if comparable(&new) == comparable(&cur)
            && !ready_to_remove(kind, &cur)
            // A value under an old key (or plaintext) is written again: that is how
            // read + update re-encrypts with the current key, as in Kubernetes.
            && !inner.encryption.stale(&key).await.map_err(ApiError::store)?
        {
            return Ok(Updated {
                obj: served(kind, cur),
            });
        }
        if dry_run {
            return Ok(Updated {
                obj: served(kind, new),
            });
        }
        match inner
            .store
            .update(&key, encode(&new), Some(cur_kv.mod_revision), cur_kv.lease)
            .await
        {
            Ok(kv) => {
                set_rv(&mut new, kv.mod_revision);
                if is_service(kind) {
                    services::release_dropped(inner, &cur, &new).await;
                }
                if ready_to_remove(kind, &new) {
                    match inner.store.delete(&key, Some(kv.mod_revision)).await {
                        Ok(_) => {
                            if is_service(kind) {
                                services::release(inner, &new).await;
                            }
                            return Ok(Updated {
                                obj: served(kind, new),
                            });
                        }
                        // Someone wrote in between; that write decides.
                        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                        Err(e) => return Err(ApiError::store(e)),
                    }
                }
                return Ok(Updated {
                    obj: served(kind, new),
                });
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind, name)),
            Err(e) => return Err(ApiError::store(e)),
        }
    }
    Err(ApiError::conflict(kind, name))
}

/// Checks that a body names the object of the URL.
fn check_identity(ctx: &Ctx, obj: &mut Value) -> ApiResult<()> {
    let kind = ctx.kind();
    match meta_str(obj, "name") {
        Some(n) if n != ctx.name() => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                ctx.name()
            )));
        }
        Some(_) => {}
        None => {
            meta_mut(obj).insert("name".into(), json!(ctx.name()));
        }
    }
    if kind.namespaced
        && let (Some(b), Some(u)) = (meta_str(obj, "namespace"), ctx.target.namespace.as_deref())
        && b != u
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

pub(crate) async fn update(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let mut obj = parse_doc(&ctx.content_type(), &body)?;
    check_type(kind, &mut obj)?;
    check_identity(&ctx, &mut obj)?;
    let warnings = field_validation(&ctx, kind, &obj, json_raw(&ctx, &body))?;
    let obj = normalize(kind, &obj)?;
    let mode = mode_for(&ctx);
    let up = update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        ctx.name(),
        mode,
        ctx.dry_run(),
        |_cur| Ok(obj.clone()),
    )
    .await?;
    Ok(respond(StatusCode::OK, &up.obj, &warnings))
}

// ---------------------------------------------------------------- patch

#[derive(Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

fn patch_type(ct: &str) -> ApiResult<PatchType> {
    match ct {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn apply_patch(kind: &KindInfo, pt: PatchType, cur: &Value, p: &Value) -> ApiResult<Value> {
    let out = match pt {
        PatchType::Json => patch::json_patch(cur, p),
        PatchType::Merge => {
            if !p.is_object() {
                return Err(ApiError::bad_request("merge patch must be a JSON object"));
            }
            Ok(patch::json_merge_patch(cur, p))
        }
        PatchType::Strategic => {
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge_patch(kind, cur, p)
        }
        PatchType::Apply => unreachable!("apply is handled separately"),
    };
    out.map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(crate) async fn patch(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let ct = ctx.content_type();
    let pt = patch_type(&ct)?;
    if pt == PatchType::Apply {
        return apply(ctx, body).await;
    }
    let p: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mode = mode_for(&ctx);
    let mut warnings = Vec::new();
    let up = update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        ctx.name(),
        mode,
        ctx.dry_run(),
        |cur| {
            let mut patched = apply_patch(kind, pt, cur, &p)?;
            if patched.get("apiVersion") != cur.get("apiVersion")
                || patched.get("kind") != cur.get("kind")
            {
                return Err(ApiError::bad_request(
                    "a patch may not change apiVersion or kind",
                ));
            }
            check_identity(&ctx, &mut patched)?;
            let raw = (pt != PatchType::Json).then_some(&body[..]);
            warnings = field_validation(&ctx, kind, &patched, raw)?;
            normalize(kind, &patched)
        },
    )
    .await?;
    Ok(respond(StatusCode::OK, &up.obj, &warnings))
}

/// The set of fields an applied configuration sets, in `FieldsV1` form. Maps are
/// followed; lists and scalars are owned as a whole.
fn field_set(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, sub) in m {
                out.insert(format!("f:{k}"), field_set(sub));
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// Removes from `obj` the fields owned in `old` but not in `new` (fields a manager
/// applied before and has dropped from its configuration).
fn remove_dropped(obj: &mut Value, old: &Value, new: &Value) {
    let (Some(old), Some(target)) = (old.as_object(), obj.as_object_mut()) else {
        return;
    };
    for (k, old_sub) in old {
        let Some(field) = k.strip_prefix("f:") else {
            continue;
        };
        match new.get(k) {
            None => {
                target.remove(field);
            }
            Some(new_sub) => {
                if let Some(child) = target.get_mut(field) {
                    remove_dropped(child, old_sub, new_sub);
                }
            }
        }
    }
}

fn set_managed(obj: &mut Value, manager: &str, api_version: &str, fields: Value, op: &str) {
    let entry = json!({
        "manager": manager,
        "operation": op,
        "apiVersion": api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    let m = meta_mut(obj);
    let mf = m.entry("managedFields").or_insert_with(|| json!([]));
    if !mf.is_array() {
        *mf = json!([]);
    }
    let arr = mf.as_array_mut().expect("array");
    arr.retain(|e| {
        !(e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some(op))
    });
    arr.push(entry);
}

/// Server-side apply: creates the object when absent; otherwise removes the fields
/// this manager applied before but no longer sets, and merges the configuration
/// with the kind's strategic merge rules.
async fn apply(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let manager = ctx
        .q("fieldManager")
        .ok_or_else(|| {
            ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager to be set",
            )
        })?
        .to_string();
    let mut config = parse_doc("application/apply-patch+yaml", &body)?;
    check_type(kind, &mut config)?;
    if meta_str(&config, "name").is_none() {
        return Err(ApiError::bad_request("metadata.name is required for apply"));
    }
    check_identity(&ctx, &mut config)?;
    let warnings = field_validation(&ctx, kind, &config, None)?;
    let config = normalize(kind, &config)?;
    let mut applied = config.clone();
    if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in ["name", "namespace", "resourceVersion", "managedFields"] {
            m.remove(f);
        }
    }
    if kind.group.is_empty()
        && kind.kind == "Secret"
        && let Some(m) = applied.as_object_mut()
    {
        // stringData is stored as data: the manager owns the data keys it sets that way,
        // so dropping one from a later configuration removes it.
        defaults::merge_string_data(m);
    }
    let fields = field_set(&applied);
    let ns = ctx.target.namespace.as_deref();
    let exists = ctx
        .inner
        .store
        .get(&key_of(&ctx))
        .await
        .map_err(ApiError::store)?
        .is_some();
    if !exists {
        let mut obj = config.clone();
        set_managed(
            &mut obj,
            &manager,
            kind.api_version,
            fields.clone(),
            "Apply",
        );
        match create_object(&ctx.inner, kind, ns, obj, ctx.dry_run()).await {
            Ok(created) => return Ok(respond(StatusCode::CREATED, &created, &warnings)),
            // Lost a race with another creator: fall through to the update path.
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    let mode = mode_for(&ctx);
    let up = update_loop(
        &ctx.inner,
        kind,
        ns,
        ctx.name(),
        mode,
        ctx.dry_run(),
        |cur| {
            let mut base = cur.clone();
            let previous = cur
                .pointer("/metadata/managedFields")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter().find(|e| {
                        e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                            && e.get("operation").and_then(Value::as_str) == Some("Apply")
                    })
                })
                .and_then(|e| e.get("fieldsV1"))
                .cloned();
            if let Some(prev) = previous {
                remove_dropped(&mut base, &prev, &fields);
            }
            let mut merged = patch::strategic_merge_patch(kind, &base, &applied)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            set_managed(
                &mut merged,
                &manager,
                kind.api_version,
                fields.clone(),
                "Apply",
            );
            // Apply has no optimistic lock unless the configuration carries one.
            match rv_of(&config) {
                Some(rv) => {
                    meta_mut(&mut merged).insert("resourceVersion".into(), json!(rv));
                }
                None => {
                    meta_mut(&mut merged).remove("resourceVersion");
                }
            }
            normalize(kind, &merged)
        },
    )
    .await?;
    Ok(respond(StatusCode::OK, &up.obj, &warnings))
}

// ---------------------------------------------------------------- scale

fn to_scale(kind: &KindInfo, obj: &Value) -> Value {
    let mut meta = Map::new();
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{f}")) {
            meta.insert(f.into(), v.clone());
        }
    }
    let paths = crate::crds::scale_pointers(kind);
    let replicas = obj
        .pointer(&paths.0)
        .and_then(Value::as_i64)
        .unwrap_or(if kind.custom.is_some() { 0 } else { 1 });
    let status_replicas = obj.pointer(&paths.1).and_then(Value::as_i64).unwrap_or(0);
    let selector = match obj.pointer(&paths.2) {
        Some(Value::String(s)) => s.clone(),
        Some(sel) => label_selector_string(sel),
        None => String::new(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": replicas},
        "status": {"replicas": status_replicas, "selector": selector},
    })
}

pub(crate) async fn get_scale(ctx: Ctx) -> ApiResult<Response> {
    let obj = get_object(&ctx).await?;
    Ok(json_response(StatusCode::OK, &to_scale(ctx.kind(), &obj)))
}

fn replicas_from_scale(scale: &Value) -> ApiResult<i64> {
    scale
        .pointer("/spec/replicas")
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| ApiError::bad_request("spec.replicas must be an integer"))
        })
        .unwrap_or(Ok(0))
}

fn check_replicas(ctx: &Ctx, replicas: i64) -> ApiResult<()> {
    if replicas < 0 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "Scale.autoscaling \"{}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0",
                ctx.name()
            ),
        )
        .with_details(json!({"name": ctx.name(), "group": "autoscaling", "kind": "Scale", "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: {replicas}: must be greater than or equal to 0"), "field": "spec.replicas"}]})));
    }
    Ok(())
}

async fn scale_write<F>(ctx: &Ctx, mut new_scale: F) -> ApiResult<Response>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let kind = ctx.kind();
    let up = update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        ctx.name(),
        Mode::Main,
        ctx.dry_run(),
        |cur| {
            let scale = new_scale(&to_scale(kind, cur))?;
            let replicas = replicas_from_scale(&scale)?;
            check_replicas(ctx, replicas)?;
            let mut obj = cur.clone();
            crate::crds::set_pointer(
                &mut obj,
                &crate::crds::scale_pointers(kind).0,
                json!(replicas),
            );
            match scale
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                Some(rv) if !rv.is_empty() => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv));
                }
                _ => {
                    meta_mut(&mut obj).remove("resourceVersion");
                }
            }
            Ok(obj)
        },
    )
    .await?;
    Ok(json_response(StatusCode::OK, &to_scale(kind, &up.obj)))
}

pub(crate) async fn update_scale(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let scale = parse_doc(&ctx.content_type(), &body)?;
    if let Some(k) = scale.get("kind").and_then(Value::as_str)
        && k != "Scale"
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind (Scale)"
        )));
    }
    scale_write(&ctx, |_| Ok(scale.clone())).await
}

pub(crate) async fn patch_scale(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let pt = patch_type(&ctx.content_type())?;
    let p: Value = match pt {
        PatchType::Apply => parse_doc("application/apply-patch+yaml", &body)?,
        _ => serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
    };
    scale_write(&ctx, |cur| match pt {
        PatchType::Json => {
            patch::json_patch(cur, &p).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        // A Scale has no lists, so strategic merge and apply reduce to a merge patch.
        _ => Ok(patch::json_merge_patch(cur, &p)),
    })
    .await
}

// ---------------------------------------------------------------- binding

pub(crate) async fn bind(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let binding = parse_doc(&ctx.content_type(), &body)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                format!(
                    "Binding \"{}\" is invalid: target.name: Required value",
                    ctx.name()
                ),
            )
        })?
        .to_string();
    let name = ctx.name().to_string();
    update_loop(
        &ctx.inner,
        kind,
        ctx.target.namespace.as_deref(),
        &name,
        Mode::Internal,
        ctx.dry_run(),
        |cur| {
            if meta_str(cur, "deletionTimestamp").is_some() {
                return Err(ApiError::conflict_msg(
                    kind,
                    &name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            if let Some(existing) = cur.pointer("/spec/nodeName").and_then(Value::as_str)
                && !existing.is_empty()
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{existing}\""
                    ),
                )
                .with_details(json!({"name": name, "kind": "pods/binding"})));
            }
            let mut obj = cur.clone();
            obj["spec"]["nodeName"] = json!(node);
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
            let conds = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds
                .into_iter()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"))
                .collect();
            conds.push(cond);
            obj["status"]["conditions"] = json!(conds);
            meta_mut(&mut obj).remove("resourceVersion");
            Ok(obj)
        },
    )
    .await?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok(json_response(StatusCode::CREATED, &status))
}

// ---------------------------------------------------------------- delete

#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOpts {
    propagation: Option<String>,
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<String>,
    dry_run: bool,
}

fn delete_opts(ctx: &Ctx, body: &[u8]) -> ApiResult<DeleteOpts> {
    let v = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_doc(&ctx.content_type(), body)?)
    };
    delete_opts_from(ctx, v)
}

/// DeleteOptions from a decoded body (or an Eviction's `deleteOptions`) and the query.
pub(crate) fn delete_opts_from(ctx: &Ctx, v: Option<Value>) -> ApiResult<DeleteOpts> {
    let mut o = DeleteOpts {
        dry_run: ctx.dry_run(),
        ..Default::default()
    };
    if let Some(v) = v {
        if let Some(k) = v.get("kind").and_then(Value::as_str)
            && k != "DeleteOptions"
        {
            return Err(ApiError::bad_request(format!(
                "expected DeleteOptions in the request body, got {k}"
            )));
        }
        o.propagation = v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from);
        if o.propagation.is_none() {
            o.propagation = match v.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            };
        }
        o.grace = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
            o.dry_run |= d.iter().any(|x| x == "All");
        }
    }
    if o.propagation.is_none() {
        o.propagation = ctx.q("propagationPolicy").map(String::from);
    }
    if o.propagation.is_none() && ctx.q("orphanDependents") == Some("true") {
        o.propagation = Some("Orphan".into());
    }
    if o.grace.is_none()
        && let Some(g) = ctx.q("gracePeriodSeconds")
    {
        o.grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = &o.propagation
        && !matches!(p.as_str(), "Background" | "Foreground" | "Orphan")
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "DeleteOptions.meta.k8s.io is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            ),
        ));
    }
    if o.grace.is_some_and(|g| g < 0) {
        o.grace = Some(0);
    }
    Ok(o)
}

pub(crate) struct Deleted {
    pub obj: Value,
    /// Gone from the store (as opposed to marked for deletion).
    pub removed: bool,
}

pub(crate) async fn delete_object(
    inner: &Arc<Inner>,
    kind: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<Deleted> {
    let key = kind.key(ns, name);
    for _ in 0..MAX_RETRIES {
        let cur_kv = inner
            .store
            .get(&key)
            .await
            .map_err(ApiError::store)?
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let cur = decode_kv(&cur_kv)?;
        if let Some(uid) = &opts.uid {
            let cur_uid = meta_str(&cur, "uid").unwrap_or_default();
            if uid != cur_uid {
                return Err(ApiError::conflict_msg(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {cur_uid}"
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.rv {
            let cur_rv = cur_kv.mod_revision.to_string();
            if *rv != cur_rv {
                return Err(ApiError::conflict_msg(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {cur_rv}"
                    ),
                ));
            }
        }
        let mut new = cur.clone();
        let mut fins = finalizers(&cur);
        match opts.propagation.as_deref() {
            Some("Foreground") if !fins.iter().any(|f| f == "foregroundDeletion") => {
                fins.retain(|f| f != "orphan");
                fins.push("foregroundDeletion".into());
            }
            Some("Orphan") if !fins.iter().any(|f| f == "orphan") => {
                fins.retain(|f| f != "foregroundDeletion");
                fins.push("orphan".into());
            }
            _ => {}
        }
        if !fins.is_empty() {
            meta_mut(&mut new).insert("finalizers".into(), json!(fins));
        }
        let mut grace = 0i64;
        if is_pod(kind) {
            let bound = cur
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let terminal = matches!(
                cur.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            grace = opts.grace.unwrap_or_else(|| {
                cur.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            if !bound || terminal {
                grace = 0;
            }
            if let Some(existing) = cur
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
            {
                // A second delete can only shorten the grace period.
                grace = grace.min(existing);
            }
        }
        let ns_pending = is_namespace(kind)
            && cur
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        let pending = grace > 0 || !fins.is_empty() || ns_pending;
        if pending {
            let already = meta_str(&cur, "deletionTimestamp").is_some();
            let cur_grace = cur
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if !already || cur_grace != Some(grace) {
                let now = jiff::Timestamp::now().as_second();
                let m = meta_mut(&mut new);
                m.insert("deletionTimestamp".into(), json!(ts_rfc3339(now + grace)));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                if !already && let Some(g) = m.get("generation").and_then(Value::as_i64) {
                    m.insert("generation".into(), json!(g + 1));
                }
            }
            if is_namespace(kind) {
                new["status"]["phase"] = json!("Terminating");
            }
            if new == cur {
                return Ok(Deleted {
                    obj: cur,
                    removed: false,
                });
            }
            if opts.dry_run {
                return Ok(Deleted {
                    obj: new,
                    removed: false,
                });
            }
            match inner
                .store
                .update(&key, encode(&new), Some(cur_kv.mod_revision), cur_kv.lease)
                .await
            {
                Ok(kv) => {
                    set_rv(&mut new, kv.mod_revision);
                    return Ok(Deleted {
                        obj: new,
                        removed: false,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind, name)),
                Err(e) => return Err(ApiError::store(e)),
            }
        }
        if opts.dry_run {
            return Ok(Deleted {
                obj: cur,
                removed: true,
            });
        }
        match inner.store.delete(&key, Some(cur_kv.mod_revision)).await {
            Ok(kv) => {
                let mut obj = cur;
                if is_service(kind) {
                    services::release(inner, &obj).await;
                }
                set_rv(&mut obj, kv.mod_revision);
                return Ok(Deleted { obj, removed: true });
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind, name)),
            Err(e) => return Err(ApiError::store(e)),
        }
    }
    Err(ApiError::conflict(kind, name))
}

/// What DELETE answers: the object while it is pending deletion (and always for
/// pods and services, as Kubernetes), else a success `Status`.
fn delete_response(kind: &KindInfo, d: &Deleted) -> Response {
    let returns_object = is_pod(kind) || (kind.group.is_empty() && kind.kind == "Service");
    if !d.removed || returns_object {
        return json_response(StatusCode::OK, &served(kind, d.obj.clone()));
    }
    let mut details = json!({
        "name": meta_str(&d.obj, "name").unwrap_or_default(),
        "kind": kind.plural,
        "uid": meta_str(&d.obj, "uid").unwrap_or_default(),
    });
    if !kind.group.is_empty() {
        details["group"] = json!(kind.group);
    }
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    });
    json_response(StatusCode::OK, &status)
}

pub(crate) async fn delete(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let opts = delete_opts(&ctx, &body)?;
    if is_namespace(ctx.kind()) && matches!(ctx.name(), "default" | "kube-system" | "kube-public") {
        return Err(ApiError::forbidden(
            ctx.kind(),
            ctx.name(),
            "this namespace may not be deleted",
        ));
    }
    let d = delete_object(
        &ctx.inner,
        ctx.kind(),
        ctx.target.namespace.as_deref(),
        ctx.name(),
        &opts,
    )
    .await?;
    Ok(delete_response(ctx.kind(), &d))
}

pub(crate) async fn delete_collection(ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let kind = ctx.kind();
    let opts = delete_opts(&ctx, &body)?;
    let q = ListQuery::from_ctx(&ctx)?;
    let out = list_objects(&ctx.inner, kind, ctx.target.namespace.as_deref(), &q).await?;
    let mut items = Vec::new();
    for obj in out.items {
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let ns = meta_str(&obj, "namespace").map(String::from);
        match delete_object(&ctx.inner, kind, ns.as_deref(), &name, &opts).await {
            Ok(d) => items.push(d.obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let rev = ctx
        .inner
        .store
        .current_revision()
        .await
        .map_err(ApiError::store)?;
    let list = json!({
        "kind": kind.list_kind,
        "apiVersion": kind.api_version,
        "metadata": {"resourceVersion": rev.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}
