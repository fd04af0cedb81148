//! Actions: scaling a Deployment and rolling it back, with the user's own client. A
//! refused action shows the API's status (e.g. 403 Forbidden) on the Deployment's page.

use std::collections::BTreeMap;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Deserialize;

use crate::html::{self, enc};
use crate::pages::{self, revision_of};
use crate::session::Session;
use crate::{AppState, NsName, UiError, UiResult, require};

#[derive(Deserialize)]
pub struct ScaleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    replicas: String,
}

#[derive(Deserialize)]
pub struct UndoForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    to_revision: Option<String>,
}

fn page_path(ns: &str, name: &str) -> String {
    format!("/ns/{}/deployments/{}", enc(ns), enc(name))
}

/// After an action: back to the Deployment's page with a message, or the page with the
/// error and the API's status code.
async fn finish(
    app: &AppState,
    s: &Session,
    ns: &str,
    name: &str,
    result: UiResult<String>,
) -> Response {
    let path = page_path(ns, name);
    match result {
        Ok(msg) => Redirect::to(&format!("{path}?done={}", enc(&msg))).into_response(),
        Err(e) => {
            let page = pages::render(app, s, &path, "")
                .await
                .unwrap_or_else(|_| pages::Page::new("Error", String::new()));
            (e.code, html::document(s, &page, &path, "", None, Some(&e))).into_response()
        }
    }
}

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "csrf: the form's token does not match this session; reload the page and try again",
    )
        .into_response()
}

pub async fn scale(
    State(app): State<AppState>,
    axum::extract::Path((ns, name)): NsName,
    headers: HeaderMap,
    Form(f): Form<ScaleForm>,
) -> Response {
    let s = match require(&app, &headers, &page_path(&ns, &name)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.csrf_ok(&f.csrf, &headers) {
        return csrf_refused();
    }
    let result = async {
        let n: i32 = f
            .replicas
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                UiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "replicas: {:?} is not a whole number of 0 or more",
                        f.replicas
                    ),
                )
            })?;
        Api::<Deployment>::namespaced(s.client.clone(), &ns)
            .patch_scale(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": n}})),
            )
            .await?;
        Ok(format!("deployment.apps/{name} scaled to {n}"))
    }
    .await;
    finish(&app, &s, &ns, &name, result).await
}

pub async fn undo(
    State(app): State<AppState>,
    axum::extract::Path((ns, name)): NsName,
    headers: HeaderMap,
    Form(f): Form<UndoForm>,
) -> Response {
    let s = match require(&app, &headers, &page_path(&ns, &name)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.csrf_ok(&f.csrf, &headers) {
        return csrf_refused();
    }
    let result = async {
        let to: i64 = match f.to_revision.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some(r) => r.parse().ok().filter(|r| *r >= 0).ok_or_else(|| {
                UiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("to_revision: {r:?} is not a revision number"),
                )
            })?,
        };
        rollback(&s.client, &ns, &name, to).await
    }
    .await;
    finish(&app, &s, &ns, &name, result).await
}

/// Annotations a rollback must not copy from the ReplicaSet (as kubectl).
const SKIPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// What `kubectl rollout undo [--to-revision=N]` does: the Deployment gets the pod
/// template (without `pod-template-hash`) and annotations of that revision's ReplicaSet
/// (0: the one before the current), in one JSON patch.
pub async fn rollback(
    client: &kube::Client,
    ns: &str,
    name: &str,
    to_revision: i64,
) -> UiResult<String> {
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    let d = api.get(name).await?;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let selector = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let mut rss: BTreeMap<i64, ReplicaSet> = BTreeMap::new();
    for rs in list.items {
        let owned = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true));
        if owned && let Some(rev) = revision_of(&rs.metadata) {
            rss.insert(rev, rs);
        }
    }
    let current = revision_of(&d.metadata).unwrap_or(0);
    let (rev, rs) = if to_revision > 0 {
        rss.get_key_value(&to_revision).ok_or_else(|| {
            UiError::new(
                StatusCode::BAD_REQUEST,
                format!("to_revision: unable to find specified revision {to_revision} in history"),
            )
        })?
    } else {
        rss.range(..current).next_back().ok_or_else(|| {
            UiError::new(
                StatusCode::BAD_REQUEST,
                "no rollout history found for this deployment",
            )
        })?
    };
    let mut template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .ok_or_else(|| {
            UiError::new(
                StatusCode::CONFLICT,
                format!("revision {rev}: its ReplicaSet has no pod template"),
            )
        })?;
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    if d.spec.as_ref().map(|s| &s.template) == Some(&template) {
        return Ok(format!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {rev})"
        ));
    }
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| SKIPPED_ANNOTATIONS.contains(&k.as_str()))
        .collect();
    for (k, v) in rs.metadata.annotations.iter().flatten() {
        if !SKIPPED_ANNOTATIONS.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]))
    .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(format!(
        "deployment.apps/{name} rolled back to revision {rev}"
    ))
}
