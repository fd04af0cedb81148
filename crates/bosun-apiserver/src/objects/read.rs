//! GET of one object and of lists (selectors, paging with continue tokens, lists at a
//! resource version).

use std::sync::Arc;

use axum::response::Response;
use base64::Engine;
use bosun_api::KindInfo;
use bosun_store::{KeyValue, ListOptions, StoreError};
use http::StatusCode;
use serde_json::{Value, json};

use super::common::{key_of, object_or_table, table_response};
use super::meta::{decode_kv, parse_rv, splice_object};
use crate::Inner;
use crate::ctx::{Ctx, json_bytes_response, json_response};
use crate::error::{ApiError, ApiResult};
use crate::selector::{FieldSelector, LabelSelector};

pub(crate) async fn get(ctx: Ctx) -> ApiResult<Response> {
    let obj = get_object(&ctx).await?;
    Ok(object_or_table(&ctx, &obj))
}

pub(crate) async fn get_object(ctx: &Ctx) -> ApiResult<Value> {
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

pub(crate) fn list_prefix(kind: &KindInfo, ns: Option<&str>) -> String {
    match (kind.namespaced, ns) {
        (true, Some(ns)) => format!("{}{}/", kind.key_prefix(), ns),
        _ => kind.key_prefix(),
    }
}

/// The stored objects of a list in key order, page by page from the store at one revision,
/// each offered to `take`, which says whether it went into the list (it matched the
/// selectors); stops at `q.limit` taken. Returns the list's revision and its continue token.
async fn walk_list(
    inner: &Arc<Inner>,
    kind: &KindInfo,
    ns: Option<&str>,
    q: &ListQuery,
    mut take: impl FnMut(&KeyValue) -> ApiResult<bool>,
) -> ApiResult<(i64, Option<String>)> {
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
    let mut taken = 0;
    let mut more_after: Option<String> = None;
    loop {
        let want = q.limit.map(|l| (l - taken).max(1)).unwrap_or(0);
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
            if take(kv)? {
                taken += 1;
            }
            if q.limit.is_some_and(|l| taken >= l) {
                if i + 1 < n || page.more {
                    more_after = Some(kv.key.clone());
                }
                break;
            }
        }
        if more_after.is_some() || q.limit.is_some_and(|l| taken >= l) || !page.more {
            break;
        }
        match last_key {
            Some(k) => start_after = Some(k),
            None => break,
        }
    }
    let revision = revision.unwrap_or(0);
    Ok((revision, more_after.map(|k| encode_continue(revision, &k))))
}

pub(crate) async fn list_objects(
    inner: &Arc<Inner>,
    kind: &KindInfo,
    ns: Option<&str>,
    q: &ListQuery,
) -> ApiResult<ListOut> {
    let mut items = Vec::new();
    let (revision, cont) = walk_list(inner, kind, ns, q, |kv| {
        let mut obj = decode_kv(kv)?;
        crate::crds::convert(kind, &mut obj);
        let keep = q.matches(&obj);
        if keep {
            items.push(obj);
        }
        Ok(keep)
    })
    .await?;
    Ok(ListOut {
        items,
        revision,
        cont,
    })
}

/// A list's `metadata`: its revision and, when more follows, the continue token.
fn list_meta(revision: i64, cont: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    meta
}

/// A list's envelope without its items: kind, apiVersion and [`list_meta`].
fn list_head(kind: &KindInfo, revision: i64, cont: Option<&str>) -> Value {
    json!({
        "kind": kind.list_kind,
        "apiVersion": kind.api_version,
        "metadata": list_meta(revision, cont),
    })
}

/// A list of `kind` holding `items` (moved in: `json!` would serialize them into a second
/// deep copy).
pub(crate) fn list_value(
    kind: &KindInfo,
    revision: i64,
    cont: Option<&str>,
    items: Vec<Value>,
) -> Value {
    let mut list = list_head(kind, revision, cont);
    list["items"] = Value::Array(items);
    list
}

pub(crate) async fn list(ctx: Ctx) -> ApiResult<Response> {
    let kind = ctx.kind();
    let q = ListQuery::from_ctx(&ctx)?;
    if !ctx.wants_table()
        && q.labels.is_empty()
        && q.fields.is_empty()
        && !crate::crds::converts(kind)
    {
        return list_spliced(&ctx, kind, &q).await;
    }
    let out = list_objects(&ctx.inner, kind, ctx.target.namespace.as_deref(), &q).await?;
    if ctx.wants_table() {
        let include = ctx.q("includeObject").unwrap_or("Metadata");
        let mut t = bosun_api::table::table(kind, &out.items, include);
        t["metadata"] = list_meta(out.revision, out.cont.as_deref());
        return Ok(table_response(&t));
    }
    let list = list_value(kind, out.revision, out.cont.as_deref(), out.items);
    Ok(json_response(StatusCode::OK, &list))
}

/// A list that takes every object unchanged (no selector, Table or version conversion),
/// written from the stored bytes with [`splice_object`] rather than decoded into values
/// and encoded again: the same bytes [`list`] writes the other way (tested), for a
/// fraction of the work. An informer's first list of 10,000 pods is one of these.
async fn list_spliced(ctx: &Ctx, kind: &KindInfo, q: &ListQuery) -> ApiResult<Response> {
    let mut items: Vec<u8> = Vec::new();
    let (revision, cont) = walk_list(&ctx.inner, kind, ctx.target.namespace.as_deref(), q, |kv| {
        items.push(if items.is_empty() { b'[' } else { b',' });
        if splice_object(&mut items, &kv.value, kv.mod_revision).is_none() {
            serde_json::to_writer(&mut items, &decode_kv(kv)?)
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        Ok(true)
    })
    .await?;
    if items.is_empty() {
        items.push(b'[');
    }
    let head = list_head(kind, revision, cont.as_deref());
    let mut body = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
    // `{…}` becomes `{…,"items":[…]}`.
    body.pop();
    body.reserve(items.len() + 12);
    body.extend_from_slice(b",\"items\":");
    body.extend_from_slice(&items);
    body.extend_from_slice(b"]}");
    Ok(json_bytes_response(StatusCode::OK, body))
}
