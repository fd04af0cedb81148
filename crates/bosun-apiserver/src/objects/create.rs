//! POST: names, system metadata, defaults, namespace checks, admission, validation,
//! then the store write.

use std::sync::Arc;

use axum::response::Response;
use bosun_api::{KindInfo, defaults, validation};
use bosun_store::StoreError;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::common::{
    check_type, field_validation, has_generation, is_namespace, is_pod, is_service, json_raw,
    normalize, respond, served, to_storage,
};
use super::meta::{decode_kv, encode, meta_mut, meta_str, now_rfc3339, random_suffix, set_rv};
use crate::Inner;
use crate::ctx::{Ctx, parse_doc};
use crate::error::{ApiError, ApiResult};
use crate::services;

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
