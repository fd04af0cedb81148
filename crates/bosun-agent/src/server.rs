//! The agent's HTTPS endpoint (the kubelet's port): container logs for `kubectl logs`,
//! exec, attach and port-forward (`streaming.rs`; all proxied by the API server) and a
//! health check. Every route but `/healthz` requires
//! `Authorization: Bearer <token>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::cri_log::{LogOptions, stream_log};
use crate::osutil::same_process;
use crate::runtime::{ContainerKey, log_path};
use crate::shim_spec::ShimState;

#[derive(Clone)]
pub struct ServerState {
    pub pods_dir: PathBuf,
    pub token: Arc<String>,
    pub node_name: String,
    pub stats: Arc<crate::stats::RateCache>,
    /// Runtimes and pod networks for exec, attach and port-forward; None serves logs only.
    pub streaming: Option<Arc<crate::streaming::Streaming>>,
    pub load_stats: Option<LoadStats>,
    /// The logs of deleted pods (`logstore`).
    pub archive_dir: PathBuf,
    /// Recent request spans of this node's proxy and gateway, for `/traces`.
    pub traces: Option<Arc<dyn TraceSource>>,
}

/// Where `/traces` reads spans from (the node proxy's and gateway's recorder).
pub trait TraceSource: Send + Sync {
    /// The recent spans matching the query parameters, as JSON.
    fn query(&self, params: &std::collections::HashMap<String, String>) -> serde_json::Value;
}

/// Reports the node proxies' request load (`{"items": [...]}`).
pub type LoadStats = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl ServerState {
    pub fn new(pods_dir: PathBuf, token: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            pods_dir,
            token: Arc::new(token.into()),
            node_name: node_name.into(),
            stats: Arc::default(),
            streaming: None,
            load_stats: None,
            archive_dir: PathBuf::new(),
            traces: None,
        }
    }

    pub fn with_load_stats(mut self, f: Option<LoadStats>) -> Self {
        self.load_stats = f;
        self
    }

    pub fn with_log_archive(mut self, dir: PathBuf) -> Self {
        self.archive_dir = dir;
        self
    }

    pub fn with_traces(mut self, t: Arc<dyn TraceSource>) -> Self {
        self.traces = Some(t);
        self
    }

    pub fn with_streaming(mut self, s: crate::streaming::Streaming) -> Self {
        self.streaming = Some(Arc::new(s));
        self
    }
}

pub fn router(state: ServerState) -> Router {
    let authed = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics/cadvisor", get(metrics_cadvisor))
        .route("/metrics/node", get(metrics_node))
        .route("/stats/load", get(stats_load))
        .route("/logs", get(search_logs))
        .route("/traces", get(traces))
        .route(
            "/exec/{ns}/{pod}/{container}",
            get(crate::streaming::exec).post(crate::streaming::exec),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            get(crate::streaming::attach).post(crate::streaming::attach),
        )
        .route(
            "/portForward/{ns}/{pod}",
            get(crate::streaming::port_forward).post(crate::streaming::port_forward),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(authed)
        .with_state(state)
}

async fn auth(State(st): State<ServerState>, req: Request, next: Next) -> Response {
    let ok = bosun_serve::bearer_token(req.headers()).is_some_and(|t| {
        !st.token.is_empty() && bosun_serve::same_secret(t.as_bytes(), st.token.as_bytes())
    });
    if ok {
        if let Some(conn) = req.extensions().get::<bosun_serve::ConnInfo>() {
            conn.mark_authenticated();
        }
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response()
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<String>,
    tail_lines: Option<String>,
    previous: Option<String>,
    timestamps: Option<String>,
    since_seconds: Option<String>,
    since_time: Option<String>,
    limit_bytes: Option<String>,
}

fn flag(v: &Option<String>) -> Result<bool, String> {
    match v.as_deref() {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(format!("invalid boolean {other:?}")),
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &Option<String>) -> Result<Option<T>, String> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<T>()
            .map(Some)
            .map_err(|_| format!("invalid {name} {s:?}")),
    }
}

fn text(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

/// The pod directory of `ns/name`: the newest one when an old pod of the same name is still
/// being torn down.
pub(crate) fn find_pod(pods_dir: &Path, ns: &str, name: &str) -> Option<(String, PathBuf)> {
    let mut best: Option<(std::time::SystemTime, String, PathBuf)> = None;
    for e in std::fs::read_dir(pods_dir).ok()?.flatten() {
        let meta = e.path().join("pod.json");
        let Ok(data) = std::fs::read(&meta) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
            continue;
        };
        if v["namespace"] == ns && v["name"] == name {
            let mtime = std::fs::metadata(&meta)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if best.as_ref().is_none_or(|b| mtime > b.0) {
                let uid = e.file_name().to_string_lossy().into_owned();
                best = Some((mtime, uid, e.path()));
            }
        }
    }
    best.map(|(_, uid, p)| (uid, p))
}

pub(crate) fn attempts(pod_dir: &Path, container: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(pod_dir.join("logs").join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".log")
                .and_then(|n| n.parse().ok())
        })
        .collect();
    out.sort_unstable();
    out
}

/// Whether an attempt's process is done (exit recorded or supervisor gone).
pub(crate) fn finished(pods_dir: &Path, key: &ContainerKey) -> bool {
    // A Docker container's log is complete once its copier saw the end of the output.
    if let Some(r) = crate::docker::read_record(&crate::docker::record_path(pods_dir, key)) {
        return r.log_complete;
    }
    let path = pods_dir
        .join(&key.pod_uid)
        .join("containers")
        .join(&key.container)
        .join(key.attempt.to_string())
        .join("state.json");
    match ShimState::read(&path) {
        Ok(s) => s.exit_code.is_some() || !same_process(s.shim_pid, s.shim_start_ticks),
        Err(_) => !path.parent().is_some_and(|p| p.exists()),
    }
}

async fn container_logs(
    State(st): State<ServerState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let opts = (|| -> Result<(LogOptions, bool), String> {
        let o = LogOptions {
            follow: flag(&q.follow)?,
            timestamps: flag(&q.timestamps)?,
            tail_lines: number::<i64>("tailLines", &q.tail_lines)?.map(|n| n.max(0) as usize),
            since_seconds: number::<i64>("sinceSeconds", &q.since_seconds)?,
            since_time: match q.since_time.as_deref() {
                None | Some("") => None,
                Some(t) => Some(
                    t.parse::<jiff::Timestamp>()
                        .map_err(|_| format!("invalid sinceTime {t:?}"))?,
                ),
            },
            limit_bytes: number::<i64>("limitBytes", &q.limit_bytes)?.map(|n| n.max(0) as usize),
        };
        Ok((o, flag(&q.previous)?))
    })();
    let (opts, previous) = match opts {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some((uid, pod_dir)) = find_pod(&st.pods_dir, &ns, &pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" is not running on this node"),
        );
    };
    let list = attempts(&pod_dir, &container);
    let Some(&current) = list.last() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start or does not exist"
            ),
        );
    };
    let attempt = if previous {
        match current.checked_sub(1).filter(|p| list.contains(p)) {
            Some(p) => p,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                );
            }
        }
    } else {
        current
    };
    let key = ContainerKey {
        pod_uid: uid,
        container,
        attempt,
    };
    let path = log_path(&st.pods_dir, &key);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let pods_dir = st.pods_dir.clone();
    tokio::task::spawn_blocking(move || {
        let done = || {
            finished(&pods_dir, &key)
                || attempts(&pods_dir.join(&key.pod_uid), &key.container).last()
                    != Some(&key.attempt)
        };
        if let Err(e) = stream_log(&path, &opts, tx, done) {
            tracing::debug!(error = %e, "log stream ended");
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|chunk| Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

use tokio_stream::StreamExt as _;

/// Most lines one search returns.
pub const MAX_SEARCH_LIMIT: usize = 100_000;

/// The query of `GET /logs` (and of the API server's log search, which passes it on).
pub fn search_query(
    params: &std::collections::HashMap<String, String>,
) -> Result<crate::logstore::Query, String> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let boolean = |k: &str, default: bool| match get(k) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(format!("{k}: invalid boolean {v:?}")),
    };
    let selector = crate::logstore::Selector::parse(get("labelSelector").unwrap_or(""))
        .map_err(|e| format!("labelSelector: {e}"))?;
    let since = match (get("sinceSeconds"), get("sinceTime")) {
        (Some(s), _) => {
            let n: i64 = s
                .parse()
                .map_err(|_| format!("sinceSeconds: invalid number {s:?}"))?;
            Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(n.max(0)))
        }
        (None, Some(t)) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|_| format!("sinceTime: invalid RFC 3339 time {t:?}"))?,
        ),
        (None, None) => None,
    };
    let grep = get("grep")
        .map(|g| {
            regex::RegexBuilder::new(g)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("grep: {e}"))
        })
        .transpose()?;
    let limit = match get("limit") {
        None => 1000,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| format!("limit: invalid number {l:?}"))?
            .clamp(1, MAX_SEARCH_LIMIT),
    };
    Ok(crate::logstore::Query {
        namespace: get("namespace").map(String::from),
        pods: get("pods")
            .map(|p| {
                p.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        selector,
        container: get("container").map(String::from),
        since,
        grep,
        limit,
        tail: match get("tailLines") {
            None => None,
            Some(t) => Some(
                t.parse::<usize>()
                    .map_err(|_| format!("tailLines: invalid number {t:?}"))?,
            ),
        },
        include_deleted: boolean("includeDeleted", true)?,
    })
}

/// `GET /logs`: the node's log lines matching a query, as JSON lines (`logstore::Entry`);
/// with `follow=true`, new lines keep coming.
async fn search_logs(
    State(st): State<ServerState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let q = match search_query(&params) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let follow = matches!(params.get("follow").map(String::as_str), Some("true" | "1"));
    let (tx, rx) = tokio::sync::mpsc::channel::<crate::logstore::Entry>(256);
    let (pods, archive, node) = (
        st.pods_dir.clone(),
        st.archive_dir.clone(),
        st.node_name.clone(),
    );
    tokio::task::spawn_blocking(move || {
        if follow {
            crate::logstore::follow(&pods, &archive, &node, &q, tx);
        } else {
            for e in crate::logstore::search(&pods, &archive, &node, &q) {
                if tx.blocking_send(e).is_err() {
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|e| {
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::io::Error>(bytes::Bytes::from(line))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /traces`: recent request spans of this node's proxy and gateway.
async fn traces(
    State(st): State<ServerState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Response {
    match &st.traces {
        Some(t) => axum::Json(t.query(&params)).into_response(),
        None => axum::Json(serde_json::json!({"spans": []})).into_response(),
    }
}

async fn stats_summary(State(st): State<ServerState>) -> Response {
    let res = tokio::task::spawn_blocking(move || {
        crate::stats::summary(&st.pods_dir, &st.node_name, &st.stats)
    })
    .await;
    match res {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Prometheus text, as the kubelet serves its metrics.
fn exposition(res: Result<String, tokio::task::JoinError>) -> Response {
    match res {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn metrics_cadvisor(State(st): State<ServerState>) -> Response {
    exposition(
        tokio::task::spawn_blocking(move || crate::prom::cadvisor(&st.pods_dir, &st.node_name))
            .await,
    )
}

async fn metrics_node() -> Response {
    exposition(tokio::task::spawn_blocking(crate::prom::node).await)
}

async fn stats_load(State(st): State<ServerState>) -> Response {
    let v = match &st.load_stats {
        Some(f) => f(),
        None => serde_json::json!({"items": []}),
    };
    axum::Json(v).into_response()
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: ServerState,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    bosun_serve::serve_tls(
        listener,
        tls,
        router(state),
        bosun_serve::Limits::default(),
        shutdown,
    )
    .await
}
