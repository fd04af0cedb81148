//! Live updates over server-sent events: `/live?path=PAGE` sends the page's `<main>` again
//! whenever it changes (re-rendered every few seconds with the user's client; nothing is
//! sent while it stays the same), and `/ns/NS/pods/POD/logs` follows a container's log
//! through the API (`follow=true`) line by line.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{AsyncBufReadExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use serde::Deserialize;

use crate::session::Session;
use crate::{AppState, UiError, pages, require};

/// How often a live page is rendered again.
const REFRESH: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
pub struct LiveQuery {
    path: String,
}

pub async fn fragments(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Response {
    let s = match require(&app, &headers, "/") {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !q.path.starts_with('/') {
        return (StatusCode::BAD_REQUEST, "path: must be a console page path").into_response();
    }
    let (path, query) = match q.path.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (q.path.clone(), String::new()),
    };
    Sse::new(fragment_stream(app, s, path, query))
        .keep_alive(KeepAlive::default())
        .into_response()
}

struct Fragments {
    app: AppState,
    session: Arc<Session>,
    path: String,
    query: String,
    last: Option<String>,
    done: bool,
}

fn fragment_stream(
    app: AppState,
    session: Arc<Session>,
    path: String,
    query: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let st = Fragments {
        app,
        session,
        path,
        query,
        last: None,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            // The page was rendered just now; the first update comes one period later.
            tokio::time::sleep(REFRESH).await;
            match pages::render(&st.app, &st.session, &st.path, &st.query).await {
                Ok(p) => {
                    if st.last.as_deref() != Some(&p.body) {
                        st.last = Some(p.body.clone());
                        return Some((Ok(Event::default().event("main").data(p.body)), st));
                    }
                }
                Err(e) if e.code == StatusCode::UNAUTHORIZED => {
                    st.done = true;
                    return Some((Ok(Event::default().event("signin").data("/login")), st));
                }
                Err(e) => {
                    let msg = format!("{} {}", e.code.as_u16(), e.message);
                    if st.last.as_deref() != Some(&msg) {
                        st.last = Some(msg.clone());
                        return Some((Ok(Event::default().event("problem").data(msg)), st));
                    }
                }
            }
        }
    })
}

#[derive(Deserialize)]
pub struct LogQuery {
    container: Option<String>,
}

pub async fn logs(
    State(app): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> Response {
    let s = match require(&app, &headers, &format!("/ns/{ns}/pods/{name}")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let params = LogParams {
        follow: true,
        tail_lines: Some(200),
        container: q.container.filter(|c| !c.is_empty()),
        ..Default::default()
    };
    let api = Api::<Pod>::namespaced(s.client.clone(), &ns);
    let stream: futures::stream::BoxStream<'static, Result<Event, Infallible>> = match api
        .log_stream(&name, &params)
        .await
    {
        Ok(r) => r
            .lines()
            .map(|l| {
                Ok(match l {
                    Ok(line) => Event::default().data(line.replace('\r', "")),
                    Err(e) => Event::default()
                        .event("problem")
                        .data(format!("reading the log: {e}")),
                })
            })
            .chain(futures::stream::once(async {
                Ok(Event::default().event("end").data("log ended"))
            }))
            .boxed(),
        Err(e) => {
            let e = UiError::from(e);
            let msg = format!("{} {}", e.code.as_u16(), e.message);
            futures::stream::once(async move { Ok(Event::default().event("problem").data(msg)) })
                .boxed()
        }
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
