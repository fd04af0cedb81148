//! Custom resources: the kinds established CRDs add to the static registry, kept
//! current by a watch on the CRDs (and right after this server writes one), the CRD
//! status the API server owns, and the deletion of a CRD's objects with the CRD.
//!
//! Lookups try the static registry first; the dynamic set is consulted only on a
//! miss, so built-in kinds pay nothing for it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bosun_api::KindInfo;
use bosun_api::crd::{self, CLEANUP_FINALIZER};
use bosun_api::openapi::OpenApi;
use bosun_store::ListOptions;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::Inner;
use crate::error::{ApiError, ApiResult};
use crate::objects::meta::{decode_kv, meta_mut, meta_str, now_rfc3339};
use crate::objects::update::{Mode, update_loop};

/// The served custom kinds and their OpenAPI documents.
pub(crate) struct Dynamic {
    pub kinds: Vec<&'static KindInfo>,
    pub openapi: OpenApi,
}

pub(crate) struct State {
    current: RwLock<Arc<Dynamic>>,
    /// Serializes rebuilds so an older list never replaces a newer one.
    rebuild: tokio::sync::Mutex<()>,
}

impl State {
    pub fn new() -> State {
        State {
            current: RwLock::new(Arc::new(Dynamic {
                kinds: Vec::new(),
                openapi: OpenApi::custom(&[]),
            })),
            rebuild: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self) -> Arc<Dynamic> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, d: Dynamic) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(d);
    }
}

/// A kind by URL form: built-in first, then custom.
pub(crate) fn by_resource(
    inner: &Inner,
    group: &str,
    version: &str,
    plural: &str,
) -> Option<&'static KindInfo> {
    inner
        .registry
        .by_resource(group, version, plural)
        .or_else(|| {
            inner
                .crds
                .get()
                .kinds
                .iter()
                .copied()
                .find(|k| k.group == group && k.version == version && k.plural == plural)
        })
        .or_else(|| bosun_api::conversion::by_resource(group, version, plural))
}

/// All served kinds, built-in first.
pub(crate) fn all_kinds(inner: &Inner) -> Vec<&'static KindInfo> {
    let mut out: Vec<&'static KindInfo> = inner.registry.kinds.iter().collect();
    out.extend(bosun_api::conversion::served_kinds());
    out.extend(inner.crds.get().kinds.iter().copied());
    out
}

/// Served (group, version) pairs: built-in ones, then each CRD group's versions.
pub(crate) fn group_versions(inner: &Inner) -> Vec<(&'static str, &'static str)> {
    let mut out = inner.registry.group_versions();
    // After the stored version of the same group, which stays the preferred one.
    for k in bosun_api::conversion::served_kinds() {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    for k in &inner.crds.get().kinds {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

/// Conversion `None`: an object stored under another version of the CRD is served
/// with the requested `apiVersion`.
/// Whether [`convert`] changes objects of `kind` (served in another version than stored, or
/// custom resources, whose `apiVersion` is the served one).
pub(crate) fn converts(kind: &KindInfo) -> bool {
    bosun_api::conversion::is_converted(kind) || kind.custom.is_some()
}

pub(crate) fn convert(kind: &KindInfo, obj: &mut Value) {
    // Built-in kinds served in a second version (autoscaling/v1 HorizontalPodAutoscaler).
    bosun_api::conversion::from_storage(kind, obj);
    if kind.custom.is_some()
        && let Some(m) = obj.as_object_mut()
    {
        m.insert("apiVersion".into(), json!(kind.api_version));
    }
}

pub(crate) fn is_crd(kind: &KindInfo) -> bool {
    kind.group == "apiextensions.k8s.io" && kind.kind == "CustomResourceDefinition"
}

fn crd_kind(inner: &Inner) -> ApiResult<&'static KindInfo> {
    inner
        .registry
        .by_resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("registry has no customresourcedefinitions"))
}

/// Re-reads every CRD: serves the established ones, writes the status and finalizer
/// the API server keeps on them, and empties and releases the ones being deleted.
pub(crate) async fn refresh(inner: &Arc<Inner>) -> ApiResult<()> {
    let _guard = inner.crds.rebuild.lock().await;
    let crd_kind = crd_kind(inner)?;
    let page = inner
        .store
        .list(&crd_kind.key_prefix(), ListOptions::default())
        .await
        .map_err(ApiError::store)?;
    let mut kinds: Vec<&'static KindInfo> = Vec::new();
    for kv in &page.kvs {
        let crd = decode_kv(kv)?;
        let name = meta_str(&crd, "name").unwrap_or_default().to_string();
        if meta_str(&crd, "deletionTimestamp").is_some() {
            cleanup(inner, crd_kind, &crd, &name).await?;
            continue;
        }
        let with_finalizer = crd
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x == CLEANUP_FINALIZER));
        let status = crd::wanted_status(&crd, &now_rfc3339());
        if status.is_some() || !with_finalizer {
            update_loop(inner, crd_kind, None, &name, Mode::Internal, false, |cur| {
                let mut next = cur.clone();
                if let Some(s) = crd::wanted_status(cur, &now_rfc3339()) {
                    next["status"] = s;
                }
                let fins = meta_mut(&mut next)
                    .entry("finalizers")
                    .or_insert_with(|| json!([]));
                if let Some(a) = fins.as_array_mut()
                    && !a.iter().any(|x| x == CLEANUP_FINALIZER)
                {
                    a.push(json!(CLEANUP_FINALIZER));
                }
                Ok(next)
            })
            .await?;
        }
        kinds.extend(crd::kinds_of(&crd));
    }
    let openapi = OpenApi::custom(&kinds);
    inner.crds.set(Dynamic { kinds, openapi });
    Ok(())
}

/// Deletes every object of a CRD being deleted, then drops its finalizer.
async fn cleanup(
    inner: &Arc<Inner>,
    crd_kind: &'static KindInfo,
    crd: &Value,
    name: &str,
) -> ApiResult<()> {
    let group = crd.pointer("/spec/group").and_then(Value::as_str);
    let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str);
    if let (Some(group), Some(plural)) = (group, plural) {
        let prefix = format!("/registry/{group}/{plural}/");
        let page = inner
            .store
            .list(&prefix, ListOptions::default())
            .await
            .map_err(ApiError::store)?;
        for kv in page.kvs {
            // Gone already is fine: someone else deleted it.
            let _ = inner.store.delete(&kv.key, None).await;
        }
    }
    let has = crd
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == CLEANUP_FINALIZER));
    if has {
        let res = update_loop(inner, crd_kind, None, name, Mode::Internal, false, |cur| {
            let mut next = cur.clone();
            if let Some(a) = meta_mut(&mut next)
                .get_mut("finalizers")
                .and_then(Value::as_array_mut)
            {
                a.retain(|x| x != CLEANUP_FINALIZER);
            }
            Ok(next)
        })
        .await;
        match res {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Follows the CRDs in the store for the life of the server (other API servers
/// sharing an etcd store write them too).
pub(crate) fn spawn_watch(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let Ok(prefix) = crd_kind(&inner).map(|k| k.key_prefix()) else {
                return;
            };
            let rev = inner.store.current_revision().await.unwrap_or(0);
            let _ = refresh(&inner).await;
            let stream = inner.store.watch(&prefix, rev).await;
            drop(inner);
            if let Ok(mut stream) = stream {
                while let Some(item) = stream.next().await {
                    let Some(inner) = weak.upgrade() else { return };
                    if item.is_err() {
                        break;
                    }
                    let _ = refresh(&inner).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// JSON pointers of (spec replicas, status replicas, label selector) of a kind's
/// scale subresource.
pub(crate) fn scale_pointers(kind: &KindInfo) -> (String, String, String) {
    let to_ptr = |p: &str| p.trim_start_matches('.').replace('.', "/");
    match kind.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(s) => (
            format!("/{}", to_ptr(&s.spec_replicas)),
            format!("/{}", to_ptr(&s.status_replicas)),
            s.label_selector
                .as_deref()
                .map(|p| format!("/{}", to_ptr(p)))
                .unwrap_or_else(|| "/-none-".into()),
        ),
        None => (
            "/spec/replicas".into(),
            "/status/replicas".into(),
            "/spec/selector".into(),
        ),
    }
}

/// Sets the value at a JSON pointer, creating the objects on the way.
pub(crate) fn set_pointer(obj: &mut Value, ptr: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(m) = cur.as_object_mut() else { return };
        if i + 1 == parts.len() {
            m.insert((*p).to_string(), v);
            return;
        }
        cur = m.entry((*p).to_string()).or_insert_with(|| json!({}));
    }
}
