//! `watch=true`: a chunked stream of JSON lines, one `WatchEvent` each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bosun_api::KindInfo;
use bosun_store::{EventKind, StoreError, WatchEvent, WatchItem};
use bytes::Bytes;
use futures::{StreamExt, stream};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::ctx::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::objects::meta::{decode_kv, meta_str, parse_rv, splice_watch_line};
use crate::objects::read::{ListQuery, list_objects, list_prefix};

/// Watches without `timeoutSeconds` end after this long, as Kubernetes' do (clients re-watch).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Encoded watch lines of recent changes, shared by the watches that take every change under
/// their prefix as it is (no selector, no name, no Table): such watches all send the same
/// line for a change, so it is decoded and encoded once rather than once per watch (the
/// scheduler's, every controller's and every client's pod watch see each binding).
pub(crate) struct SharedLines {
    slots: Mutex<Vec<Option<SharedLine>>>,
}

struct SharedLine {
    kind: &'static KindInfo,
    revision: i64,
    key: Arc<str>,
    line: Bytes,
}

/// Changes remembered; a watch further behind than this encodes its lines itself.
const SHARED_SLOTS: usize = 4096;

impl Default for SharedLines {
    fn default() -> Self {
        SharedLines {
            slots: Mutex::new((0..SHARED_SLOTS).map(|_| None).collect()),
        }
    }
}

impl SharedLines {
    fn slot(ev: &WatchEvent) -> usize {
        // Revisions are unique per write; keys tell apart the deletions of one revocation.
        (ev.kv.mod_revision as usize) % SHARED_SLOTS
    }

    fn get(&self, kind: &'static KindInfo, ev: &WatchEvent) -> Option<Bytes> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[Self::slot(ev)]
            .as_ref()
            .filter(|s| {
                s.revision == ev.kv.mod_revision
                    && std::ptr::eq(s.kind, kind)
                    && *s.key == *ev.kv.key
            })
            .map(|s| s.line.clone())
    }

    fn put(&self, kind: &'static KindInfo, ev: &WatchEvent, line: Bytes) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[Self::slot(ev)] = Some(SharedLine {
            kind,
            revision: ev.kv.mod_revision,
            key: Arc::from(ev.kv.key.as_str()),
            line,
        });
    }
}

struct Filter {
    kind: &'static KindInfo,
    q: ListQuery,
    name: Option<String>,
    table: Option<String>,
    bookmarks: bool,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(n) = &self.name
            && meta_str(obj, "name") != Some(n.as_str())
        {
            return false;
        }
        self.q.matches(obj)
    }

    fn line(&self, ty: &str, obj: Value) -> Bytes {
        let obj = match &self.table {
            Some(include) => {
                bosun_api::table::table(self.kind, std::slice::from_ref(&obj), include)
            }
            None => obj,
        };
        let mut s = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
        s.push(b'\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rev: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.kind.kind, "apiVersion": self.kind.api_version, "metadata": meta});
        let mut s =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        s.push(b'\n');
        Bytes::from(s)
    }

    /// Whether every change under the prefix is sent as it is, the same for every such watch.
    fn takes_all(&self) -> bool {
        self.name.is_none()
            && self.table.is_none()
            && self.q.labels.is_empty()
            && self.q.fields.is_empty()
    }

    /// [`Filter::event`], through `shared` for watches that take every change.
    fn shared_event(&self, shared: &SharedLines, ev: &WatchEvent) -> Option<Bytes> {
        if !self.takes_all() {
            return self.event(ev);
        }
        if let Some(line) = shared.get(self.kind, ev) {
            return Some(line);
        }
        let line = self.event(ev)?;
        shared.put(self.kind, ev, line.clone());
        Some(line)
    }

    /// The watch event for one store change, as the selectors see it: an object that
    /// starts matching is ADDED, one that stops matching is DELETED.
    fn event(&self, ev: &WatchEvent) -> Option<Bytes> {
        if self.takes_all() && !crate::crds::converts(self.kind) {
            let ty = match (ev.kind, ev.prev.is_some()) {
                (EventKind::Delete, _) => "DELETED",
                (EventKind::Put, true) => "MODIFIED",
                (EventKind::Put, false) => "ADDED",
            };
            if let Some(line) = splice_watch_line(ty, &ev.kv.value, ev.kv.mod_revision) {
                return Some(line);
            }
        }
        let mut obj = decode_kv(&ev.kv).ok()?;
        crate::crds::convert(self.kind, &mut obj);
        match ev.kind {
            EventKind::Delete => self.matches(&obj).then(|| self.line("DELETED", obj)),
            EventKind::Put if self.takes_all() => {
                // Everything matches: no need to decode the previous value.
                let ty = if ev.prev.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                Some(self.line(ty, obj))
            }
            EventKind::Put => {
                let now = self.matches(&obj);
                let before = ev
                    .prev
                    .as_ref()
                    .and_then(|p| decode_kv(p).ok())
                    .is_some_and(|p| self.matches(&p));
                match (before, now) {
                    (true, true) => Some(self.line("MODIFIED", obj)),
                    (false, true) => Some(self.line("ADDED", obj)),
                    (true, false) => Some(self.line("DELETED", obj)),
                    (false, false) => None,
                }
            }
        }
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let mut s =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.status()})).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::gone(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        other => ApiError::store(other),
    }
}

pub(crate) async fn watch(ctx: Ctx) -> ApiResult<Response> {
    let kind = ctx.kind();
    let q = ListQuery::from_ctx(&ctx)?;
    let timeout = match ctx.q("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let rv = q.resource_version.clone();
    let send_initial = match ctx.q("sendInitialEvents") {
        Some("true") => true,
        Some("false") => false,
        _ => matches!(rv.as_deref(), None | Some("0")),
    };
    let explicit_initial = ctx.q("sendInitialEvents") == Some("true");
    let filter = Filter {
        kind,
        name: ctx.target.name.clone(),
        table: ctx
            .wants_table()
            .then(|| ctx.q("includeObject").unwrap_or("Metadata").to_string()),
        bookmarks: ctx.flag("allowWatchBookmarks"),
        q,
    };
    let ns = ctx.target.namespace.clone();
    let store = ctx.inner.store.clone();
    let shared = ctx.inner.watch_lines.clone();
    let prefix = list_prefix(kind, ns.as_deref());

    let mut initial: Vec<Bytes> = Vec::new();
    let start = if send_initial {
        let list_q = ListQuery {
            labels: filter.q.labels.clone(),
            fields: filter.q.fields.clone(),
            limit: None,
            cont: None,
            resource_version: None,
            rv_match: None,
        };
        let out = list_objects(&ctx.inner, kind, ns.as_deref(), &list_q).await?;
        for obj in out.items {
            if filter.matches(&obj) {
                initial.push(filter.line("ADDED", obj));
            }
        }
        if explicit_initial && filter.bookmarks {
            initial.push(filter.bookmark(out.revision, true));
        }
        out.revision
    } else {
        match rv.as_deref() {
            Some(s) => parse_rv(s)?,
            None => store.current_revision().await.map_err(ApiError::store)?,
        }
    };

    let events: stream::BoxStream<'static, Bytes> = match store.watch(&prefix, start).await {
        Err(e) => stream::iter(vec![error_line(&store_error(e))]).boxed(),
        Ok(ws) => {
            ws.filter_map(move |item| {
                let out = match item {
                    Ok(WatchItem::Event(ev)) => filter.shared_event(&shared, &ev),
                    Ok(WatchItem::Progress(rev)) => {
                        filter.bookmarks.then(|| filter.bookmark(rev, false))
                    }
                    Err(e) => Some(error_line(&store_error(e))),
                };
                futures::future::ready(out)
            })
            .scan(false, |ended, line| {
                // Stop after an ERROR event: the watch cannot go on.
                if *ended {
                    return futures::future::ready(None);
                }
                if line.starts_with(b"{\"type\":\"ERROR\"") {
                    *ended = true;
                }
                futures::future::ready(Some(line))
            })
            .boxed()
        }
    };
    let deadline = tokio::time::sleep(timeout);
    let body = stream::iter(initial)
        .chain(events)
        .take_until(deadline)
        .map(Ok::<Bytes, std::convert::Infallible>);
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
