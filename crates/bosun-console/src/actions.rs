//! Actions: scaling a Deployment and rolling it back, with the user's own client. A
//! refused action shows the API's status (e.g. 403 Forbidden) on the Deployment's page.

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Deserialize;

use crate::html::{self, enc};
use crate::pages;
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

/// What `kubectl rollout undo [--to-revision=N]` does (`bosun_api::rollback`): the Deployment
/// gets the pod template and annotations of that revision's ReplicaSet (0: the one before the
/// current), in one JSON patch.
pub async fn rollback(
    client: &kube::Client,
    ns: &str,
    name: &str,
    to_revision: i64,
) -> UiResult<String> {
    use bosun_api::rollback::{self, Rollback, RollbackError};
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    let d = api.get(name).await?;
    let list = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&rollback::selector(&d)))
        .await?;
    let owned = rollback::owned_by_revision(&d, list.items);
    let plan = rollback::plan(&d, &owned, to_revision).map_err(|e| {
        let code = match e {
            RollbackError::NoTemplate(_) => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        UiError::new(code, e.to_string())
    })?;
    match plan {
        Rollback::Skip { revision } => Ok(format!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {revision})"
        )),
        Rollback::Patch { revision, patch } => {
            let patch: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await?;
            Ok(format!(
                "deployment.apps/{name} rolled back to revision {revision}"
            ))
        }
    }
}
