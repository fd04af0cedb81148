//! The pages. Each reads through the Kubernetes API with the user's client, so a page shows
//! exactly what RBAC lets that user see; charts come from the metrics store via PromQL.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use axum::http::StatusCode;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::chart::{Series, Unit, line_chart};
use crate::html::{age, enc, esc, human_duration, link, progress, table};
use crate::session::Session;
use crate::{Console, UiError, UiResult};

pub struct Page {
    pub title: String,
    pub body: String,
    /// The page re-renders itself over `/live`.
    pub live: bool,
}

impl Page {
    pub fn new(title: impl Into<String>, body: String) -> Page {
        Page {
            title: title.into(),
            body,
            live: true,
        }
    }
}

pub fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The outcome of an action, carried in `?done=` by its redirect.
pub fn flash(query: &str) -> Option<String> {
    query_param(query, "done")
}

/// Renders the page at `path` for the session's user.
pub async fn render(app: &Console, s: &Session, path: &str, query: &str) -> UiResult<Page> {
    let segs: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let c = &s.client;
    match segs.as_slice() {
        [] => overview(c).await,
        ["ns", ns] => namespace(c, ns).await,
        ["ns", ns, "deployments", name] => deployment(c, s, ns, name).await,
        ["ns", ns, "pods", name] => pod(c, ns, name).await,
        ["ns", ns, "services", name] => service(app, c, ns, name, query).await,
        ["ns", ns, "httproutes", name] => route(app, c, ns, name, query).await,
        ["nodes"] => nodes(app, c, query).await,
        ["traces"] => traces(c).await,
        ["traces", id] => trace(c, id).await,
        ["alerts"] => alerts(app).await,
        _ => Err(UiError::not_found(format!("no page at {path}"))),
    }
}

fn name_of(m: &kube::api::ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or("")
}

fn ns_of(m: &kube::api::ObjectMeta) -> &str {
    m.namespace.as_deref().unwrap_or("")
}

fn err_box(e: &UiError) -> String {
    format!(
        r#"<p class="error"><b>{}</b> {}</p>"#,
        e.code.as_u16(),
        esc(&e.message)
    )
}

async fn overview(c: &kube::Client) -> UiResult<Page> {
    let nss = Api::<Namespace>::all(c.clone())
        .list(&ListParams::default())
        .await;
    let nss = match nss {
        Ok(l) => l.items,
        Err(e) => {
            let e = UiError::from(e);
            if e.code == StatusCode::UNAUTHORIZED {
                return Err(e);
            }
            let body = format!(
                r#"<h1>Namespaces</h1>{}<p>Open a namespace you may read: {}</p>"#,
                err_box(&e),
                link("/ns/default", "default")
            );
            return Ok(Page::new("Namespaces", body));
        }
    };
    let lp = ListParams::default();
    let (da, pa, sa) = (
        Api::<Deployment>::all(c.clone()),
        Api::<Pod>::all(c.clone()),
        Api::<Service>::all(c.clone()),
    );
    let (deps, pods, svcs) = futures::join!(da.list(&lp), pa.list(&lp), sa.list(&lp));
    let count = |items: Option<Vec<&kube::api::ObjectMeta>>, ns: &str| -> String {
        match items {
            Some(v) => v.iter().filter(|m| ns_of(m) == ns).count().to_string(),
            None => "–".into(),
        }
    };
    let deps = deps.ok();
    let pods = pods.ok();
    let svcs = svcs.ok();
    let rows: Vec<Vec<String>> = nss
        .iter()
        .map(|n| {
            let name = name_of(&n.metadata);
            let running = pods.as_ref().map(|l| {
                l.items
                    .iter()
                    .filter(|p| {
                        ns_of(&p.metadata) == name
                            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count()
            });
            vec![
                link(&format!("/ns/{}", enc(name)), name),
                esc(n
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("")),
                count(
                    deps.as_ref()
                        .map(|l| l.items.iter().map(|d| &d.metadata).collect()),
                    name,
                ),
                format!(
                    "{} / {}",
                    running.map(|r| r.to_string()).unwrap_or("–".into()),
                    count(
                        pods.as_ref()
                            .map(|l| l.items.iter().map(|d| &d.metadata).collect()),
                        name
                    )
                ),
                count(
                    svcs.as_ref()
                        .map(|l| l.items.iter().map(|d| &d.metadata).collect()),
                    name,
                ),
                age(n.metadata.creation_timestamp.as_ref()),
            ]
        })
        .collect();
    let body = format!(
        "<h1>Namespaces</h1>{}",
        table(
            "namespaces",
            &[
                "Namespace",
                "Status",
                "Deployments",
                "Pods running / all",
                "Services",
                "Age"
            ],
            &rows
        )
    );
    Ok(Page::new("Namespaces", body))
}

/// What kubectl shows for a pod: ready containers, status (a waiting or terminated reason
/// over the phase), restarts, and the last termination's reason.
pub struct PodSummary {
    pub ready: String,
    pub status: String,
    pub restarts: i32,
    pub last: String,
}

pub fn pod_summary(p: &Pod) -> PodSummary {
    let st = p.status.as_ref();
    let cs = st
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let total = p.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
    let ready = cs.iter().filter(|c| c.ready).count();
    let mut status = st
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let mut last = String::new();
    for c in &cs {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(r) = &w.reason
        {
            status = r.clone();
        }
        if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            status = t.reason.clone().unwrap_or_else(|| "Terminated".into());
        }
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            last = format!(
                "{} (exit {})",
                t.reason.as_deref().unwrap_or("Terminated"),
                t.exit_code
            );
        }
    }
    if p.metadata.deletion_timestamp.is_some() {
        status = "Terminating".into();
    }
    PodSummary {
        ready: format!("{ready}/{total}"),
        status,
        restarts: cs.iter().map(|c| c.restart_count).sum(),
        last,
    }
}

fn pod_rows(ns: &str, pods: &[Pod]) -> Vec<Vec<String>> {
    pods.iter()
        .map(|p| {
            let name = name_of(&p.metadata);
            let s = pod_summary(p);
            vec![
                link(&format!("/ns/{}/pods/{}", enc(ns), enc(name)), name),
                esc(&s.ready),
                format!(
                    r#"<span class="st {}">{}</span>"#,
                    status_class(&s.status),
                    esc(&s.status)
                ),
                s.restarts.to_string(),
                esc(&s.last),
                esc(p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .unwrap_or("")),
                age(p.metadata.creation_timestamp.as_ref()),
            ]
        })
        .collect()
}

fn status_class(s: &str) -> &'static str {
    match s {
        "Running" | "Succeeded" | "Completed" | "True" | "Ready" => "ok",
        "Pending" | "ContainerCreating" | "Terminating" => "warn",
        _ => "bad",
    }
}

const POD_HEADERS: &[&str] = &[
    "Pod",
    "Ready",
    "Status",
    "Restarts",
    "Last exit",
    "Node",
    "Age",
];

fn deployment_rows(ns: &str, deps: &[Deployment]) -> Vec<Vec<String>> {
    deps.iter()
        .map(|d| {
            let name = name_of(&d.metadata);
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            let ready = st.ready_replicas.unwrap_or(0);
            vec![
                link(&format!("/ns/{}/deployments/{}", enc(ns), enc(name)), name),
                format!("{ready}/{want} {}", progress(ready, want)),
                st.updated_replicas.unwrap_or(0).to_string(),
                st.available_replicas.unwrap_or(0).to_string(),
                esc(&images(d.spec.as_ref().map(|s| &s.template))),
                age(d.metadata.creation_timestamp.as_ref()),
            ]
        })
        .collect()
}

fn images(t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> String {
    t.and_then(|t| t.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .map(|c| {
                    c.image.clone().unwrap_or_else(|| {
                        c.command.as_ref().map(|c| c.join(" ")).unwrap_or_default()
                    })
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

async fn namespace(c: &kube::Client, ns: &str) -> UiResult<Page> {
    let lp = ListParams::default();
    let (da, pa, sa, ea) = (
        Api::<Deployment>::namespaced(c.clone(), ns),
        Api::<Pod>::namespaced(c.clone(), ns),
        Api::<Service>::namespaced(c.clone(), ns),
        Api::<Event>::namespaced(c.clone(), ns),
    );
    let routes_path = format!(
        "/apis/gateway.networking.k8s.io/v1/namespaces/{}/httproutes",
        enc(ns)
    );
    let (deps, pods, svcs, routes, events) = futures::join!(
        da.list(&lp),
        pa.list(&lp),
        sa.list(&lp),
        raw_json(c, &routes_path),
        ea.list(&lp),
    );
    let mut body = format!("<h1>Namespace {}</h1>", esc(ns));
    body.push_str("<h2>Deployments</h2>");
    match deps {
        Ok(l) => body.push_str(&table(
            "deployments",
            &[
                "Deployment",
                "Ready",
                "Up-to-date",
                "Available",
                "Images",
                "Age",
            ],
            &deployment_rows(ns, &l.items),
        )),
        Err(e) => body.push_str(&err_box(&check_auth(e)?)),
    }
    body.push_str("<h2>Pods</h2>");
    match pods {
        Ok(l) => body.push_str(&table("pods", POD_HEADERS, &pod_rows(ns, &l.items))),
        Err(e) => body.push_str(&err_box(&check_auth(e)?)),
    }
    body.push_str("<h2>Services</h2>");
    match svcs {
        Ok(l) => {
            let rows: Vec<Vec<String>> = l
                .items
                .iter()
                .map(|s| {
                    let name = name_of(&s.metadata);
                    let spec = s.spec.clone().unwrap_or_default();
                    let ports = spec
                        .ports
                        .unwrap_or_default()
                        .iter()
                        .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
                        .collect::<Vec<_>>()
                        .join(", ");
                    vec![
                        link(&format!("/ns/{}/services/{}", enc(ns), enc(name)), name),
                        esc(spec.type_.as_deref().unwrap_or("ClusterIP")),
                        esc(spec.cluster_ip.as_deref().unwrap_or("")),
                        esc(&ports),
                    ]
                })
                .collect();
            body.push_str(&table(
                "services",
                &["Service", "Type", "Cluster IP", "Ports"],
                &rows,
            ));
        }
        Err(e) => body.push_str(&err_box(&check_auth(e)?)),
    }
    if let Ok(Some(r)) = routes {
        let rows: Vec<Vec<String>> = r["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let name = r["metadata"]["name"].as_str().unwrap_or("");
                let hosts = r["spec"]["hostnames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![
                    link(&format!("/ns/{}/httproutes/{}", enc(ns), enc(name)), name),
                    esc(&hosts),
                    esc(&route_backends(r).join(", ")),
                ]
            })
            .collect();
        body.push_str("<h2>HTTP routes</h2>");
        body.push_str(&table(
            "routes",
            &["HTTPRoute", "Hostnames", "Backends"],
            &rows,
        ));
    }
    body.push_str("<h2>Recent events</h2>");
    match events {
        Ok(l) => body.push_str(&events_table(l.items, 15)),
        Err(e) => body.push_str(&err_box(&check_auth(e)?)),
    }
    Ok(Page::new(format!("Namespace {ns}"), body))
}

fn route_backends(r: &Value) -> Vec<String> {
    let mut out: Vec<String> = r["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
        .filter_map(|b| {
            let name = b["name"].as_str()?;
            Some(match b["weight"].as_i64() {
                Some(w) => format!("{name} ({w})"),
                None => name.to_string(),
            })
        })
        .collect();
    out.dedup();
    out
}

/// A 401 ends the page (the session is gone); other errors are shown in place.
fn check_auth(e: kube::Error) -> UiResult<UiError> {
    let e = UiError::from(e);
    if e.code == StatusCode::UNAUTHORIZED {
        Err(e)
    } else {
        Ok(e)
    }
}

fn event_time(e: &Event) -> i64 {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.as_second()))
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
        })
        .unwrap_or(0)
}

fn events_table(mut events: Vec<Event>, max: usize) -> String {
    events.sort_by_key(|e| std::cmp::Reverse(event_time(e)));
    events.truncate(max);
    let now = jiff::Timestamp::now().as_second();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let ty = e.type_.as_deref().unwrap_or("Normal");
            vec![
                human_duration(now - event_time(e)),
                format!(
                    r#"<span class="st {}">{}</span>"#,
                    if ty == "Warning" { "bad" } else { "ok" },
                    esc(ty)
                ),
                esc(e.reason.as_deref().unwrap_or("")),
                esc(&format!(
                    "{}/{}",
                    e.involved_object
                        .kind
                        .as_deref()
                        .unwrap_or("")
                        .to_lowercase(),
                    e.involved_object.name.as_deref().unwrap_or("")
                )),
                esc(e.message.as_deref().unwrap_or("")),
                e.count.unwrap_or(1).to_string(),
            ]
        })
        .collect();
    table(
        "events",
        &["Last seen", "Type", "Reason", "Object", "Message", "Count"],
        &rows,
    )
}

async fn object_events(c: &kube::Client, ns: &str, kind: &str, name: &str) -> String {
    let fs = format!("involvedObject.kind={kind},involvedObject.name={name}");
    match Api::<Event>::namespaced(c.clone(), ns)
        .list(&ListParams::default().fields(&fs))
        .await
    {
        Ok(l) => {
            let items: Vec<Event> = l
                .items
                .into_iter()
                .filter(|e| {
                    e.involved_object.kind.as_deref() == Some(kind)
                        && e.involved_object.name.as_deref() == Some(name)
                })
                .collect();
            events_table(items, 20)
        }
        Err(e) => err_box(&UiError::from(e)),
    }
}

/// The rollout's state in kubectl's words (`kubectl rollout status`).
pub fn rollout_state(d: &Deployment) -> (bool, String) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let name = name_of(&d.metadata);
    if d.metadata.generation.unwrap_or(0) > st.observed_generation.unwrap_or(0) {
        return (
            false,
            "Waiting for the deployment spec update to be observed...".into(),
        );
    }
    if let Some(c) = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return (
            false,
            format!("deployment {name:?} exceeded its progress deadline"),
        );
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    if updated < want {
        (
            false,
            format!("{updated} out of {want} new replicas have been updated..."),
        )
    } else if total > updated {
        (
            false,
            format!(
                "{} old replicas are pending termination...",
                total - updated
            ),
        )
    } else if available < updated {
        (
            false,
            format!("{available} of {updated} updated replicas are available..."),
        )
    } else {
        (true, format!("deployment {name:?} successfully rolled out"))
    }
}

async fn deployment(c: &kube::Client, s: &Session, ns: &str, name: &str) -> UiResult<Page> {
    let d = Api::<Deployment>::namespaced(c.clone(), ns)
        .get(name)
        .await?;
    let spec = d.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let lp = ListParams::default().labels(&selector);
    let (ra, pa) = (
        Api::<ReplicaSet>::namespaced(c.clone(), ns),
        Api::<Pod>::namespaced(c.clone(), ns),
    );
    let (rss, pods, events) = futures::join!(
        ra.list(&lp),
        pa.list(&lp),
        object_events(c, ns, "Deployment", name),
    );
    let want = spec.replicas.unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let current = bosun_api::rollback::revision(&d.metadata).unwrap_or(0);
    let (done, msg) = rollout_state(&d);
    let base = format!("/ns/{}/deployments/{}", enc(ns), enc(name));
    let csrf = esc(&s.csrf);
    let mut body = format!(
        r#"<p class="crumbs">{} / deployment</p><h1>{}</h1>"#,
        link(&format!("/ns/{}", enc(ns)), ns),
        esc(name)
    );
    let _ = write!(
        body,
        r#"<section class="cards"><div><b id="replicas">{want}</b> desired</div><div><b id="updated">{}</b> up-to-date</div><div><b id="ready">{}</b> ready</div><div><b id="available">{}</b> available</div><div><b id="revision">{current}</b> revision</div></section>
<p id="rollout" class="st {}">{}</p>{}"#,
        st.updated_replicas.unwrap_or(0),
        st.ready_replicas.unwrap_or(0),
        st.available_replicas.unwrap_or(0),
        if done { "ok" } else { "warn" },
        esc(&msg),
        progress(
            st.updated_replicas
                .unwrap_or(0)
                .min(st.available_replicas.unwrap_or(0)),
            want
        ),
    );
    let _ = write!(
        body,
        r#"<div class="actions"><form method="post" action="{base}/scale" id="scale-form"><input type="hidden" name="csrf" value="{csrf}"><label>Replicas <input type="number" name="replicas" id="scale-replicas" min="0" max="1000" value="{want}"></label><button id="scale">Scale</button></form>
<form method="post" action="{base}/undo" id="undo-form"><input type="hidden" name="csrf" value="{csrf}"><button id="undo">Undo rollout</button> <span class="muted">(to the previous revision, as kubectl rollout undo)</span></form></div>"#
    );
    body.push_str("<h2>Revision history</h2>");
    match rss {
        Ok(l) => {
            let uid = d.metadata.uid.clone().unwrap_or_default();
            let mut owned: BTreeMap<i64, &ReplicaSet> = BTreeMap::new();
            for rs in &l.items {
                let mine = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid && o.controller == Some(true));
                if mine && let Some(r) = bosun_api::rollback::revision(&rs.metadata) {
                    owned.insert(r, rs);
                }
            }
            let rows: Vec<Vec<String>> = owned
                .iter()
                .rev()
                .map(|(rev, rs)| {
                    let st = rs.status.clone().unwrap_or_default();
                    let cause = rs
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("kubernetes.io/change-cause"))
                        .cloned()
                        .unwrap_or_default();
                    let action = if *rev == current {
                        r#"<span class="muted">current</span>"#.to_string()
                    } else {
                        format!(
                            r#"<form method="post" action="{base}/undo"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="to_revision" value="{rev}"><button class="small">Roll back to {rev}</button></form>"#
                        )
                    };
                    vec![
                        rev.to_string(),
                        esc(name_of(&rs.metadata)),
                        esc(&images(rs.spec.as_ref().and_then(|s| s.template.as_ref()))),
                        format!(
                            "{}/{}",
                            st.ready_replicas.unwrap_or(0),
                            rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
                        ),
                        esc(&cause),
                        age(rs.metadata.creation_timestamp.as_ref()),
                        action,
                    ]
                })
                .collect();
            body.push_str(&table(
                "history",
                &[
                    "Revision",
                    "ReplicaSet",
                    "Images",
                    "Ready",
                    "Change cause",
                    "Age",
                    "",
                ],
                &rows,
            ));
        }
        Err(e) => body.push_str(&err_box(&check_auth(e)?)),
    }
    body.push_str("<h2>Pods</h2>");
    match pods {
        Ok(l) => body.push_str(&table("pods", POD_HEADERS, &pod_rows(ns, &l.items))),
        Err(e) => body.push_str(&err_box(&check_auth(e)?)),
    }
    body.push_str("<h2>Events</h2>");
    body.push_str(&events);
    Ok(Page::new(format!("Deployment {ns}/{name}"), body))
}

async fn pod(c: &kube::Client, ns: &str, name: &str) -> UiResult<Page> {
    let p = Api::<Pod>::namespaced(c.clone(), ns).get(name).await?;
    let events = object_events(c, ns, "Pod", name).await;
    let s = pod_summary(&p);
    let st = p.status.clone().unwrap_or_default();
    let mut body = format!(
        r#"<p class="crumbs">{} / pod</p><h1>{}</h1><section class="cards"><div><b id="status" class="st {}">{}</b> status</div><div><b>{}</b> ready</div><div><b id="restarts">{}</b> restarts</div><div><b>{}</b> node</div><div><b>{}</b> pod IP</div></section>"#,
        link(&format!("/ns/{}", enc(ns)), ns),
        esc(name),
        status_class(&s.status),
        esc(&s.status),
        esc(&s.ready),
        s.restarts,
        esc(p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("-")),
        esc(st.pod_ip.as_deref().unwrap_or("-")),
    );
    let rows: Vec<Vec<String>> = st
        .container_statuses
        .iter()
        .flatten()
        .map(|c| {
            let state = c.state.clone().unwrap_or_default();
            let now = if let Some(w) = &state.waiting {
                format!(
                    "Waiting: {} {}",
                    w.reason.as_deref().unwrap_or(""),
                    w.message.as_deref().unwrap_or("")
                )
            } else if let Some(t) = &state.terminated {
                format!(
                    "Terminated: {} (exit {})",
                    t.reason.as_deref().unwrap_or(""),
                    t.exit_code
                )
            } else if let Some(r) = &state.running {
                format!("Running since {} ago", age(r.started_at.as_ref()))
            } else {
                "-".into()
            };
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    format!(
                        "{} (exit {}) {} ago",
                        t.reason.as_deref().unwrap_or("Terminated"),
                        t.exit_code,
                        age(t.finished_at.as_ref())
                    )
                })
                .unwrap_or_default();
            vec![
                esc(&c.name),
                esc(&c.image),
                if c.ready { "yes".into() } else { "no".into() },
                c.restart_count.to_string(),
                esc(now.trim()),
                esc(&last),
            ]
        })
        .collect();
    body.push_str("<h2>Containers</h2>");
    body.push_str(&table(
        "containers",
        &[
            "Container",
            "Image",
            "Ready",
            "Restarts",
            "State",
            "Last termination",
        ],
        &rows,
    ));
    body.push_str("<h2>Events</h2>");
    body.push_str(&events);
    // Logs stream outside <main>'s live refresh: the script appends lines as they come.
    let containers: Vec<String> = p
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    for cn in &containers {
        let _ = write!(
            body,
            r#"<h2>Logs: {}</h2><pre class="logs" data-logs="/ns/{}/pods/{}/logs?container={}" data-keep></pre>"#,
            esc(cn),
            enc(ns),
            enc(name),
            enc(cn)
        );
    }
    Ok(Page::new(format!("Pod {ns}/{name}"), body))
}

/// A JSON GET through the user's client; None when the API does not serve the path.
async fn raw_json(c: &kube::Client, path: &str) -> UiResult<Option<Value>> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match c.request::<Value>(req).await {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The time range of a chart page: `?range=` of 15m (default), 1h, 6h or 24h.
fn range_of(query: &str) -> (u64, &'static str) {
    match query_param(query, "range").as_deref() {
        Some("1h") => (3600, "1h"),
        Some("6h") => (6 * 3600, "6h"),
        Some("24h") => (86400, "24h"),
        _ => (900, "15m"),
    }
}

fn range_links(path: &str, current: &str) -> String {
    let mut s = String::from(r#"<p class="ranges">"#);
    for r in ["15m", "1h", "6h", "24h"] {
        if r == current {
            let _ = write!(s, "<b>{r}</b> ");
        } else {
            let _ = write!(s, r#"<a href="{}?range={r}">{r}</a> "#, esc(path));
        }
    }
    s.push_str("</p>");
    s
}

/// A PromQL label matcher value, quoted.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

struct Charts<'a> {
    app: &'a Console,
    start: f64,
    end: f64,
    step: f64,
}

impl<'a> Charts<'a> {
    fn new(app: &'a Console, query: &str) -> (Charts<'a>, &'static str) {
        let (secs, label) = range_of(query);
        let end = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        let start = end - secs as f64;
        let step = (secs as f64 / 120.0).max(1.0);
        (
            Charts {
                app,
                start,
                end,
                step,
            },
            label,
        )
    }

    async fn series(&self, exprs: &[(&str, String)]) -> Result<Vec<Series>, String> {
        let mut out = Vec::new();
        for (name, e) in exprs {
            let name = name.to_string();
            let legend = move |l: &Value| -> String {
                match l["node"].as_str() {
                    Some(n) if name.is_empty() => n.to_string(),
                    _ => name.clone(),
                }
            };
            let s = self
                .app
                .prom
                .range(e, self.start, self.end, self.step, &legend)
                .await
                .map_err(|e| format!("{e:#}"))?;
            out.extend(s);
        }
        Ok(out)
    }

    async fn chart(&self, title: &str, unit: Unit, exprs: &[(&str, String)]) -> String {
        match self.series(exprs).await {
            Ok(s) => line_chart(title, &s, self.start, self.end, unit),
            Err(e) => format!(
                r#"<figure class="chart"><figcaption>{}</figcaption><p class="error">{}</p></figure>"#,
                esc(title),
                esc(&e)
            ),
        }
    }
}

/// Request rate, error ratio and p50/p99 latency charts for one set of series.
async fn traffic_charts(
    ch: &Charts<'_>,
    requests: &str,
    errors: &str,
    buckets: &str,
    extra_rate: Option<(&str, String)>,
) -> String {
    let mut rate = vec![("requests", format!("sum(rate({requests}[1m]))"))];
    if let Some(x) = extra_rate {
        rate.push(x);
    }
    let errs = [(
        "5xx",
        format!("sum(rate({errors}[1m])) / sum(rate({requests}[1m]))"),
    )];
    let lat = [
        (
            "p50",
            format!("histogram_quantile(0.5, sum by (le) (rate({buckets}[1m])))"),
        ),
        (
            "p99",
            format!("histogram_quantile(0.99, sum by (le) (rate({buckets}[1m])))"),
        ),
    ];
    let (a, b, c) = futures::join!(
        ch.chart("Request rate", Unit::PerSecond, &rate),
        ch.chart("Error rate (5xx share)", Unit::Ratio, &errs),
        ch.chart("Latency", Unit::Seconds, &lat),
    );
    format!(r#"<section class="charts">{a}{b}{c}</section>"#)
}

async fn service(
    app: &Console,
    c: &kube::Client,
    ns: &str,
    name: &str,
    query: &str,
) -> UiResult<Page> {
    let svc = Api::<Service>::namespaced(c.clone(), ns).get(name).await?;
    let (ch, range) = Charts::new(app, query);
    let sel = format!("namespace={},service={}", q(ns), q(name));
    let spec = svc.spec.clone().unwrap_or_default();
    let path = format!("/ns/{}/services/{}", enc(ns), enc(name));
    let charts = traffic_charts(
        &ch,
        &format!("bosun_proxy_upstream_requests_total{{{sel}}}"),
        &format!("bosun_proxy_upstream_requests_total{{{sel},status=~\"5..\"}}"),
        &format!("bosun_proxy_upstream_request_duration_seconds_bucket{{{sel}}}"),
        Some((
            "via the gateway",
            format!(
                "sum(rate(bosun_gateway_requests_total{{service={}}}[1m]))",
                q(&format!("{ns}/{name}"))
            ),
        )),
    )
    .await;
    let body = format!(
        r#"<p class="crumbs">{} / service</p><h1>{}</h1><p>{} {} · ports {}</p>{}{}"#,
        link(&format!("/ns/{}", enc(ns)), ns),
        esc(name),
        esc(spec.type_.as_deref().unwrap_or("ClusterIP")),
        esc(spec.cluster_ip.as_deref().unwrap_or("")),
        esc(&spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| p.port.to_string())
            .collect::<Vec<_>>()
            .join(", ")),
        range_links(&path, range),
        charts
    );
    Ok(Page::new(format!("Service {ns}/{name}"), body))
}

async fn route(
    app: &Console,
    c: &kube::Client,
    ns: &str,
    name: &str,
    query: &str,
) -> UiResult<Page> {
    let r = raw_json(
        c,
        &format!(
            "/apis/gateway.networking.k8s.io/v1/namespaces/{}/httproutes/{}",
            enc(ns),
            enc(name)
        ),
    )
    .await?
    .ok_or_else(|| UiError::not_found(format!("httproute {ns}/{name} not found")))?;
    let (ch, range) = Charts::new(app, query);
    let sel = format!("route={}", q(&format!("httproute/{ns}/{name}")));
    let path = format!("/ns/{}/httproutes/{}", enc(ns), enc(name));
    let charts = traffic_charts(
        &ch,
        &format!("bosun_gateway_requests_total{{{sel}}}"),
        &format!("bosun_gateway_requests_total{{{sel},code=~\"5..\"}}"),
        &format!("bosun_gateway_request_duration_seconds_bucket{{{sel}}}"),
        None,
    )
    .await;
    let hosts = r["spec"]["hostnames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let body = format!(
        r#"<p class="crumbs">{} / httproute</p><h1>{}</h1><p>hosts {} · backends {}</p>{}{}"#,
        link(&format!("/ns/{}", enc(ns)), ns),
        esc(name),
        esc(&hosts),
        esc(&route_backends(&r).join(", ")),
        range_links(&path, range),
        charts
    );
    Ok(Page::new(format!("HTTPRoute {ns}/{name}"), body))
}

fn quantity(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> String {
    q.map(|q| q.0.clone()).unwrap_or_else(|| "-".into())
}

async fn nodes(app: &Console, c: &kube::Client, query: &str) -> UiResult<Page> {
    let list = Api::<Node>::all(c.clone())
        .list(&ListParams::default())
        .await?;
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|n| {
            let st = n.status.clone().unwrap_or_default();
            let ready = st
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| {
                    if c.status == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let cap = st.capacity.unwrap_or_default();
            vec![
                esc(name_of(&n.metadata)),
                format!(r#"<span class="st {}">{ready}</span>"#, status_class(ready)),
                esc(&quantity(cap.get("cpu"))),
                esc(&quantity(cap.get("memory"))),
                esc(st
                    .addresses
                    .iter()
                    .flatten()
                    .find(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.as_str())
                    .unwrap_or("")),
                esc(n
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_deref())
                    .unwrap_or("")),
                age(n.metadata.creation_timestamp.as_ref()),
            ]
        })
        .collect();
    let names: Vec<String> = list
        .items
        .iter()
        .map(|n| regex_escape(name_of(&n.metadata)))
        .collect();
    let (ch, range) = Charts::new(app, query);
    let sel = format!("node=~{}", q(&names.join("|")));
    let cpu_q = [(
        "",
        format!("sum by (node) (rate(node_cpu_seconds_total{{{sel},mode!=\"idle\"}}[1m]))"),
    )];
    let mem_q = [(
        "",
        format!(
            "sum by (node) (node_memory_MemTotal_bytes{{{sel}}} - node_memory_MemAvailable_bytes{{{sel}}})"
        ),
    )];
    let (cpu, mem) = futures::join!(
        ch.chart("CPU in use", Unit::Cores, &cpu_q),
        ch.chart("Memory in use", Unit::Bytes, &mem_q),
    );
    let body = format!(
        r#"<h1>Nodes</h1>{}{}<section class="charts">{cpu}{mem}</section>"#,
        table(
            "nodes",
            &[
                "Node", "Status", "CPU", "Memory", "Address", "Pod CIDR", "Age"
            ],
            &rows
        ),
        range_links("/nodes", range),
    );
    Ok(Page::new("Nodes", body))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

async fn fetch_spans(c: &kube::Client, query: &str) -> UiResult<(Vec<Value>, Vec<String>)> {
    let v = raw_json(c, &format!("/bosun/v1/traces?{query}"))
        .await?
        .unwrap_or_default();
    let spans = v["spans"].as_array().cloned().unwrap_or_default();
    let warnings = v["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(String::from))
        .collect();
    Ok((spans, warnings))
}

fn span_label(s: &Value) -> String {
    let target = s["route"].as_str().or(s["service"].as_str()).unwrap_or("");
    format!(
        "{} {} {} {}",
        s["component"].as_str().unwrap_or(""),
        s["method"].as_str().unwrap_or(""),
        s["path"].as_str().unwrap_or(""),
        target
    )
}

fn ms(nanos: u64) -> String {
    format!("{:.2} ms", nanos as f64 / 1e6)
}

async fn traces(c: &kube::Client) -> UiResult<Page> {
    let (spans, warnings) = fetch_spans(c, "limit=500").await?;
    let mut by_trace: HashMap<String, Vec<&Value>> = HashMap::new();
    for s in &spans {
        if let Some(t) = s["traceId"].as_str() {
            by_trace.entry(t.to_string()).or_default().push(s);
        }
    }
    let mut traces: Vec<(u64, String, Vec<&Value>)> = by_trace
        .into_iter()
        .map(|(id, v)| {
            let start = v
                .iter()
                .filter_map(|s| s["startTimeUnixNano"].as_u64())
                .min()
                .unwrap_or(0);
            (start, id, v)
        })
        .collect();
    traces.sort_by_key(|t| std::cmp::Reverse(t.0));
    traces.truncate(100);
    let rows: Vec<Vec<String>> = traces
        .iter()
        .map(|(start, id, spans)| {
            let ids: Vec<&str> = spans.iter().filter_map(|s| s["spanId"].as_str()).collect();
            let root = spans
                .iter()
                .find(|s| s["parentSpanId"].as_str().is_none_or(|p| !ids.contains(&p)))
                .copied()
                .unwrap_or(spans[0]);
            let end = spans
                .iter()
                .map(|s| {
                    s["startTimeUnixNano"].as_u64().unwrap_or(0)
                        + s["durationNanos"].as_u64().unwrap_or(0)
                })
                .max()
                .unwrap_or(*start);
            let mut services: Vec<&str> = spans
                .iter()
                .filter_map(|s| s["service"].as_str())
                .filter(|s| !s.is_empty())
                .collect();
            services.sort();
            services.dedup();
            vec![
                link(&format!("/traces/{}", enc(id)), &id[..id.len().min(16)]),
                clock_ns(*start),
                esc(&span_label(root)),
                esc(&services.join(", ")),
                spans.len().to_string(),
                esc(&ms(end.saturating_sub(*start))),
                esc(&root["status"].to_string()),
            ]
        })
        .collect();
    let mut body = String::from("<h1>Recent traces</h1>");
    for w in warnings {
        let _ = write!(body, r#"<p class="warn">{}</p>"#, esc(&w));
    }
    body.push_str(&table(
        "traces",
        &[
            "Trace",
            "Start (UTC)",
            "Root span",
            "Services",
            "Spans",
            "Duration",
            "Status",
        ],
        &rows,
    ));
    Ok(Page::new("Traces", body))
}

fn clock_ns(n: u64) -> String {
    let secs = n / 1_000_000_000;
    let s = secs % 86400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        (n / 1_000_000) % 1000
    )
}

/// A trace's spans as a tree, each with a bar placed on the trace's time line.
pub fn span_tree(spans: &[Value]) -> String {
    let mut spans: Vec<&Value> = spans.iter().collect();
    spans.sort_by_key(|s| s["startTimeUnixNano"].as_u64().unwrap_or(0));
    let t0 = spans
        .iter()
        .filter_map(|s| s["startTimeUnixNano"].as_u64())
        .min()
        .unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| {
            s["startTimeUnixNano"].as_u64().unwrap_or(0) + s["durationNanos"].as_u64().unwrap_or(0)
        })
        .max()
        .unwrap_or(t0)
        .max(t0 + 1);
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["spanId"].as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Value>> = HashMap::new();
    for s in &spans {
        let parent = s["parentSpanId"]
            .as_str()
            .filter(|p| ids.contains(p) && Some(*p) != s["spanId"].as_str());
        children.entry(parent).or_default().push(s);
    }
    let mut out = String::from(r#"<ul class="spans" id="spans">"#);
    fn walk(
        out: &mut String,
        children: &HashMap<Option<&str>, Vec<&Value>>,
        parent: Option<&str>,
        depth: usize,
        t0: u64,
        t1: u64,
    ) {
        if depth > 64 {
            return;
        }
        for s in children.get(&parent).into_iter().flatten() {
            let start = s["startTimeUnixNano"].as_u64().unwrap_or(t0);
            let dur = s["durationNanos"].as_u64().unwrap_or(0);
            let span = (t1 - t0) as f64;
            let left = (start.saturating_sub(t0)) as f64 / span * 100.0;
            let width = (dur as f64 / span * 100.0).max(0.5);
            let _ = write!(
                out,
                r#"<li style="--d:{depth}"><span class="sl">{}</span><span class="sn">{} · {} · status {}{}</span><span class="tl"><span style="left:{left:.2}%;width:{width:.2}%"></span></span><span class="sd">{}</span></li>"#,
                esc(&span_label(s)),
                esc(s["node"].as_str().unwrap_or("")),
                esc(s["pod"].as_str().or(s["upstream"].as_str()).unwrap_or("-")),
                esc(&s["status"].to_string()),
                match s["attempts"].as_u64() {
                    Some(a) if a > 1 => format!(" · {a} attempts"),
                    _ => String::new(),
                },
                esc(&ms(dur))
            );
            if let Some(id) = s["spanId"].as_str() {
                walk(out, children, Some(id), depth + 1, t0, t1);
            }
        }
    }
    walk(&mut out, &children, None, 0, t0, t1);
    out.push_str("</ul>");
    out
}

async fn trace(c: &kube::Client, id: &str) -> UiResult<Page> {
    let (spans, _) = fetch_spans(c, &format!("traceId={}", enc(id))).await?;
    if spans.is_empty() {
        return Err(UiError::not_found(format!(
            "trace {id}: no spans (they are kept in memory on each node for a while)"
        )));
    }
    let mut p = Page::new(
        format!("Trace {id}"),
        format!(
            r#"<p class="crumbs">{}</p><h1>Trace {}</h1>{}"#,
            link("/traces", "traces"),
            esc(id),
            span_tree(&spans)
        ),
    );
    p.live = false;
    Ok(p)
}

async fn alerts(app: &Console) -> UiResult<Page> {
    let mut body = String::from("<h1>Alerts</h1>");
    match app.prom.get_json("/api/v1/alerts").await {
        Ok(Some(v)) => body.push_str(&alerts_table(&v)),
        Ok(None) => body.push_str(r#"<p class="muted">The alerts API is not served.</p>"#),
        Err(e) => body.push_str(&err_box(&UiError::from(e))),
    }
    Ok(Page::new("Alerts", body))
}

/// The alerts of a Prometheus `/api/v1/alerts` answer.
pub fn alerts_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let labels = a["labels"].as_object();
            let name = labels
                .and_then(|l| l.get("alertname"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let other = labels
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "alertname")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", ");
            let state = a["state"].as_str().unwrap_or("");
            let summary = a["annotations"]["summary"]
                .as_str()
                .or(a["annotations"]["description"].as_str())
                .unwrap_or("");
            vec![
                esc(name),
                format!(
                    r#"<span class="st {}">{}</span>"#,
                    if state == "firing" { "bad" } else { "warn" },
                    esc(state)
                ),
                esc(&other),
                esc(summary),
                esc(a["activeAt"].as_str().unwrap_or("")),
                esc(a["value"].as_str().unwrap_or("")),
            ]
        })
        .collect();
    if rows.is_empty() {
        return r#"<p class="muted" id="no-alerts">No alerts are pending or firing.</p>"#.into();
    }
    table(
        "alerts",
        &[
            "Alert",
            "State",
            "Labels",
            "Summary",
            "Active since",
            "Value",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_summary_prefers_waiting_reasons() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 4, "image": "x", "imageID": "",
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"reason": "Error", "exitCode": 3}}}
            ]}
        }))
        .unwrap();
        let s = pod_summary(&p);
        assert_eq!(s.ready, "1/2");
        assert_eq!(s.status, "CrashLoopBackOff");
        assert_eq!(s.restarts, 4);
        assert_eq!(s.last, "Error (exit 3)");
    }

    #[test]
    fn rollout_state_follows_kubectl() {
        let d = |status: Value| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "generation": 2},
                "spec": {"replicas": 3, "selector": {}, "template": {}},
                "status": status
            }))
            .unwrap()
        };
        assert!(!rollout_state(&d(json!({"observedGeneration": 1}))).0);
        let (done, msg) = rollout_state(&d(
            json!({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3, "availableReplicas": 3}),
        ));
        assert!(!done);
        assert_eq!(msg, "1 out of 3 new replicas have been updated...");
        let (done, msg) = rollout_state(&d(
            json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}),
        ));
        assert!(done, "{msg}");
    }

    #[test]
    fn span_tree_nests_children_under_parents() {
        let spans = vec![
            json!({"traceId": "t", "spanId": "b", "parentSpanId": "a", "component": "proxy", "service": "default/api",
                   "method": "GET", "path": "/x", "status": 200, "startTimeUnixNano": 1_500_000u64, "durationNanos": 1_000_000u64}),
            json!({"traceId": "t", "spanId": "a", "component": "gateway", "route": "httproute/default/web",
                   "method": "GET", "path": "/x", "status": 200, "startTimeUnixNano": 1_000_000u64, "durationNanos": 3_000_000u64}),
        ];
        let h = span_tree(&spans);
        let gw = h.find("gateway GET /x httproute/default/web").unwrap();
        let px = h.find("proxy GET /x default/api").unwrap();
        assert!(gw < px, "the root comes first: {h}");
        assert!(h.contains("--d:0") && h.contains("--d:1"));
        assert!(h.contains("3.00 ms") && h.contains("1.00 ms"));
        assert!(h.contains("left:16.67%;width:33.33%"), "{h}");
    }

    #[test]
    fn alerts_render_or_say_none() {
        let v = json!({"status": "success", "data": {"alerts": [
            {"labels": {"alertname": "PodCrashLooping", "pod": "<p>"}, "state": "firing",
             "annotations": {"summary": "restarting"}, "activeAt": "2026-01-01T00:00:00Z", "value": "3"}
        ]}});
        let h = alerts_table(&v);
        assert!(
            h.contains("PodCrashLooping") && h.contains("pod=&lt;p&gt;") && h.contains("firing")
        );
        assert!(
            alerts_table(&json!({"status": "success", "data": {"alerts": []}}))
                .contains("No alerts")
        );
    }

    #[test]
    fn promql_strings_are_quoted() {
        assert_eq!(q(r#"a"b"#), r#""a\"b""#);
        assert_eq!(regex_escape("node.1"), r"node\.1");
        assert_eq!(
            query_param("range=1h&done=scaled", "done").as_deref(),
            Some("scaled")
        );
        assert_eq!(range_of("range=6h").1, "6h");
        assert_eq!(range_of("range=bogus").0, 900);
    }
}
