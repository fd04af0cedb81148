//! The Prometheus HTTP API (`/api/v1/...`) over the store, as Grafana's Prometheus data
//! source and `promtool`/curl users call it: GET with query parameters or POST with a
//! form body, answers as `{"status":"success","data":...}` or
//! `{"status":"error","errorType":...,"error":...}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use crate::alerts::Manager;
use crate::eval::{self, DEFAULT_LOOKBACK};
use crate::kube_state::Caches;
use crate::scrape::Scraper;
use crate::store::{Labels, SeriesData, Store};

/// Prometheus' limit on points per series in a range query.
const MAX_POINTS: i64 = 11_000;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub scraper: Option<Arc<Scraper>>,
    pub rules: Option<Arc<Manager>>,
    pub kube_state: Option<Caches>,
}

/// Where the kube-state-metrics-style series are served.
pub const KUBE_STATE_PATH: &str = "/metrics/kube-state";

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/query_exemplars", get(empty_list).post(empty_list))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/rules", get(rules))
        .route(KUBE_STATE_PATH, get(kube_state))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/status/config", get(config))
        .route("/api/v1/status/flags", get(flags))
        .route("/api/v1/status/runtimeinfo", get(runtimeinfo))
        .route("/api/v1/status/tsdb", get(tsdb))
        .route(
            "/-/healthy",
            get(|| async { "bosun metrics is Healthy.\n" }),
        )
        .route("/-/ready", get(|| async { "bosun metrics is Ready.\n" }))
        .with_state(state)
}

struct ApiError {
    status: StatusCode,
    kind: &'static str,
    msg: String,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        kind: "bad_data",
        msg: msg.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"status": "error", "errorType": self.kind, "error": self.msg}).to_string(),
        )
            .into_response()
    }
}

fn success(data: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": "success", "data": data}).to_string(),
    )
        .into_response()
}

/// Parameters from the URL and, for a form POST, the body; repeated keys kept in order.
struct Params(HashMap<String, Vec<String>>);

impl Params {
    fn from(query: Option<String>, headers: &HeaderMap, body: &Bytes) -> Params {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        let mut add = |s: &[u8]| {
            for (k, v) in form_urlencoded::parse(s) {
                m.entry(k.into_owned()).or_default().push(v.into_owned());
            }
        };
        if let Some(q) = &query {
            add(q.as_bytes());
        }
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            add(body);
        }
        Params(m)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn all(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time as Unix seconds (fractions allowed) or RFC 3339.
fn parse_time(s: &str, name: &str) -> Result<i64, ApiError> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Ok((f * 1000.0).round() as i64);
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    Err(bad(format!(
        "invalid parameter \"{name}\": cannot parse \"{s}\" to a valid timestamp"
    )))
}

/// A duration as seconds (fractions allowed) or a PromQL duration like `1m30s`.
fn parse_duration(s: &str, name: &str) -> Result<i64, ApiError> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
        && f >= 0.0
    {
        return Ok((f * 1000.0).round() as i64);
    }
    promql_parser::util::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| {
            bad(format!(
                "invalid parameter \"{name}\": cannot parse \"{s}\" to a valid duration"
            ))
        })
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn ts(t: i64) -> Value {
    json!(t as f64 / 1000.0)
}

fn metric(l: &Labels) -> Value {
    Value::Object(
        l.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

fn lookback(p: &Params) -> Result<Duration, ApiError> {
    match p.get("lookback_delta") {
        Some(s) => Ok(Duration::from_millis(
            parse_duration(s, "lookback_delta")? as u64
        )),
        None => Ok(DEFAULT_LOOKBACK),
    }
}

fn parse_expr(p: &Params) -> Result<promql_parser::parser::Expr, ApiError> {
    let q = p
        .get("query")
        .ok_or_else(|| bad("invalid parameter \"query\": query is missing"))?;
    eval::parse(q).map_err(|e| bad(format!("invalid parameter \"query\": {e}")))
}

fn exec(e: eval::EvalError) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        kind: "execution",
        msg: e.0,
    }
}

async fn query(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::from(q, &headers, &body);
    let expr = parse_expr(&p)?;
    let t = match p.get("time") {
        Some(s) => parse_time(s, "time")?,
        None => now_ms(),
    };
    let lb = lookback(&p)?;
    let store = st.store.clone();
    let v = tokio::task::spawn_blocking(move || eval::instant(&store, &expr, t, lb))
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(exec)?;
    let data = match v {
        eval::Value::Scalar(v) => json!({"resultType": "scalar", "result": [ts(t), fmt_value(v)]}),
        eval::Value::String(s) => json!({"resultType": "string", "result": [ts(t), s]}),
        eval::Value::Vector(v) => json!({
            "resultType": "vector",
            "result": v.iter().map(|s| json!({"metric": metric(&s.labels), "value": [ts(t), fmt_value(s.value)]})).collect::<Vec<_>>(),
        }),
        eval::Value::Matrix(m) => json!({"resultType": "matrix", "result": matrix(&m)}),
    };
    Ok(success(data))
}

fn matrix(m: &[SeriesData]) -> Vec<Value> {
    m.iter()
        .map(|s| {
            json!({
                "metric": metric(&s.labels),
                "values": s.samples.iter().map(|(t, v)| json!([ts(*t), fmt_value(*v)])).collect::<Vec<_>>(),
            })
        })
        .collect()
}

async fn query_range(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::from(q, &headers, &body);
    let expr = parse_expr(&p)?;
    let start = parse_time(
        p.get("start")
            .ok_or_else(|| bad("invalid parameter \"start\": missing"))?,
        "start",
    )?;
    let end = parse_time(
        p.get("end")
            .ok_or_else(|| bad("invalid parameter \"end\": missing"))?,
        "end",
    )?;
    let step = parse_duration(
        p.get("step")
            .ok_or_else(|| bad("invalid parameter \"step\": missing"))?,
        "step",
    )?;
    if end < start {
        return Err(bad(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    if step <= 0 {
        return Err(bad(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > MAX_POINTS {
        return Err(bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let lb = lookback(&p)?;
    let store = st.store.clone();
    let m = tokio::task::spawn_blocking(move || eval::range(&store, &expr, start, end, step, lb))
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(exec)?;
    Ok(success(
        json!({"resultType": "matrix", "result": matrix(&m)}),
    ))
}

/// `match[]` selectors and the `start`/`end` window (default: all time) of a metadata call.
fn selection(p: &Params) -> Result<(Vec<Vec<promql_parser::label::Matcher>>, i64, i64), ApiError> {
    let mut sets = Vec::new();
    for m in p.all("match[]") {
        let parsed = crate::parse_selector(m)
            .map_err(|e| bad(format!("invalid parameter \"match[]\": {e}")))?;
        sets.extend(parsed);
    }
    let start = match p.get("start") {
        Some(s) => parse_time(s, "start")?,
        None => i64::MIN / 2,
    };
    let end = match p.get("end") {
        Some(s) => parse_time(s, "end")?,
        None => i64::MAX / 2,
    };
    Ok((sets, start, end))
}

async fn series(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::from(q, &headers, &body);
    if p.all("match[]").is_empty() {
        return Err(bad("no match[] parameter provided"));
    }
    let (sets, start, end) = selection(&p)?;
    let store = st.store.clone();
    let found = tokio::task::spawn_blocking(move || store.series(&sets, start, end))
        .await
        .map_err(|e| bad(e.to_string()))?;
    Ok(success(Value::Array(found.iter().map(metric).collect())))
}

async fn labels(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::from(q, &headers, &body);
    let (sets, start, end) = selection(&p)?;
    let store = st.store.clone();
    let found = tokio::task::spawn_blocking(move || store.series(&sets, start, end))
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<&str> = found
        .iter()
        .flat_map(|l| l.iter().map(|(n, _)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    Ok(success(json!(names)))
}

async fn label_values(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::from(q, &HeaderMap::new(), &Bytes::new());
    let (sets, start, end) = selection(&p)?;
    let store = st.store.clone();
    let found = tokio::task::spawn_blocking(move || store.series(&sets, start, end))
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut values: Vec<&str> = found
        .iter()
        .map(|l| crate::store::label(l, &name))
        .filter(|v| !v.is_empty())
        .collect();
    values.sort_unstable();
    values.dedup();
    Ok(success(json!(values)))
}

async fn metadata() -> Response {
    success(json!({}))
}

async fn empty_list() -> Response {
    success(json!([]))
}

async fn targets(State(st): State<ApiState>) -> Response {
    match &st.scraper {
        Some(s) => success(s.targets_json()),
        None => success(json!({"activeTargets": [], "droppedTargets": []})),
    }
}

async fn rules(State(st): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let p = Params::from(q, &HeaderMap::new(), &Bytes::new());
    let kind = match p.get("type") {
        Some("alert") => "alert",
        Some("record") => "record",
        _ => "",
    };
    match &st.rules {
        Some(r) => {
            let mut data = r.rules_json(kind);
            // rule_name[] / rule_group[] filters, as Prometheus has them.
            let (names, groups) = (p.all("rule_name[]"), p.all("rule_group[]"));
            if let Some(gs) = data["groups"].as_array_mut() {
                if !groups.is_empty() {
                    gs.retain(|g| groups.iter().any(|n| g["name"] == n.as_str()));
                }
                if !names.is_empty() {
                    for g in gs.iter_mut() {
                        if let Some(rs) = g["rules"].as_array_mut() {
                            rs.retain(|r| names.iter().any(|n| r["name"] == n.as_str()));
                        }
                    }
                    gs.retain(|g| g["rules"].as_array().is_some_and(|r| !r.is_empty()));
                }
            }
            success(data)
        }
        None => success(json!({"groups": []})),
    }
}

async fn alerts(State(st): State<ApiState>) -> Response {
    match &st.rules {
        Some(r) => success(r.alerts_json()),
        None => success(json!({"alerts": []})),
    }
}

async fn kube_state(State(st): State<ApiState>) -> Response {
    match &st.kube_state {
        Some(c) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            c.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no cluster to describe\n").into_response(),
    }
}

/// The Prometheus version whose API this one follows: Grafana picks its features by it.
pub const COMPAT_VERSION: &str = "2.45.0";

async fn buildinfo() -> Response {
    success(json!({
        "version": COMPAT_VERSION,
        "revision": format!("bosun-{}", env!("CARGO_PKG_VERSION")),
        "branch": "bosun",
        "buildUser": "bosun",
        "buildDate": "",
        "goVersion": "none (bosun, Rust)",
    }))
}

async fn config() -> Response {
    success(json!({"yaml": "# bosun scrapes its own targets; see /api/v1/targets\n"}))
}

async fn flags(State(st): State<ApiState>) -> Response {
    let interval = st
        .scraper
        .as_ref()
        .map(|s| format!("{}s", s.interval.as_secs()))
        .unwrap_or_default();
    success(json!({"scrape.interval": interval, "query.lookback-delta": "5m"}))
}

async fn runtimeinfo(State(st): State<ApiState>) -> Response {
    success(json!({
        "startTime": "",
        "CWD": "",
        "reloadConfigSuccess": true,
        "lastConfigTime": "",
        "storageRetention": "",
        "headSeries": st.store.head_series(),
        "headBytes": st.store.head_bytes(),
        "diskBytes": st.store.disk_bytes(),
    }))
}

async fn tsdb(State(st): State<ApiState>) -> Response {
    success(json!({
        "headStats": {"numSeries": st.store.head_series(), "chunkCount": 0},
        "seriesCountByMetricName": [],
        "labelValueCountByLabelName": [],
        "memoryInBytesByLabelName": [],
        "seriesCountByLabelValuePair": [],
    }))
}
