//! Request spans of the node proxy and the gateway: one recorder per process (both
//! components and the agent's `/traces` share it), its OTLP export, and `bosun traces`.

use std::borrow::Cow;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use bosun_proxy::upstream::trace::{Span, Tracer};
use clap::Args;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use serde_json::Value;

use crate::{ClientOpts, client};

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Spans queued for the exporter; more are dropped from the export (not from `/traces`).
const EXPORT_QUEUE: usize = 8192;
/// Most spans per OTLP request, and the longest a span waits for its batch.
const BATCH: usize = 512;
const BATCH_WAIT: Duration = Duration::from_secs(1);

/// This process's span recorder, made on first use (with the OTLP exporter when an
/// endpoint is given). Must be called inside the Tokio runtime.
pub fn tracer(node: &str, capacity: usize, otlp_endpoint: Option<&str>) -> Tracer {
    TRACER
        .get_or_init(|| match otlp_endpoint.filter(|e| !e.is_empty()) {
            None => Tracer::new(node, capacity),
            Some(endpoint) => {
                let (t, rx) = Tracer::with_export(node, capacity, EXPORT_QUEUE);
                match exporter(endpoint, node) {
                    Ok(exp) => {
                        tracing::info!(%endpoint, "exporting request spans over OTLP (gRPC)");
                        tokio::spawn(export_loop(exp, rx));
                    }
                    Err(e) => tracing::warn!(%endpoint, error = %format!("{e:#}"), "OTLP exporter not started"),
                }
                t
            }
        })
        .clone()
}

/// `/traces` of the agent's endpoint reads the same recorder.
pub struct Source(pub Tracer);

impl bosun_agent::server::TraceSource for Source {
    fn query(&self, params: &std::collections::HashMap<String, String>) -> Value {
        self.0.query_json(params)
    }
}

pub fn source(t: &Tracer) -> Arc<dyn bosun_agent::server::TraceSource> {
    Arc::new(Source(t.clone()))
}

fn exporter(endpoint: &str, node: &str) -> Result<opentelemetry_otlp::SpanExporter> {
    let mut exp = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .context("building the OTLP span exporter")?;
    exp.set_resource(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("bosun")
            .with_attributes([KeyValue::new("k8s.node.name", node.to_string())])
            .build(),
    );
    Ok(exp)
}

async fn export_loop(
    exp: opentelemetry_otlp::SpanExporter,
    mut rx: tokio::sync::mpsc::Receiver<Span>,
) {
    let mut warned = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![span_data(&first)];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(span_data(&s)),
                _ => break,
            }
        }
        match exp.export(batch).await {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "OTLP export failed (spans dropped until it works again)");
            }
            Err(_) => {}
        }
    }
}

/// One recorded span in OpenTelemetry's terms (semantic-convention attribute names).
pub fn span_data(s: &Span) -> SpanData {
    let start = UNIX_EPOCH + Duration::from_nanos(s.start_unix_nanos);
    let (namespace, service) = s.service.split_once('/').unwrap_or(("", &s.service));
    let mut attributes = vec![
        KeyValue::new("bosun.component", s.component),
        KeyValue::new("http.request.method", s.method.to_string()),
        KeyValue::new("url.path", s.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(s.status)),
        KeyValue::new("k8s.namespace.name", namespace.to_string()),
        KeyValue::new("bosun.service", service.to_string()),
        KeyValue::new("bosun.attempts", i64::from(s.attempts)),
    ];
    if let Some(r) = &s.route {
        attributes.push(KeyValue::new("http.route", r.to_string()));
    }
    if let Some(u) = s.upstream {
        attributes.push(KeyValue::new("server.address", u.ip().to_string()));
        attributes.push(KeyValue::new("server.port", i64::from(u.port())));
    }
    if let Some(p) = &s.pod {
        attributes.push(KeyValue::new("k8s.pod.name", p.clone()));
    }
    if s.protocol != "http" {
        attributes.push(KeyValue::new("network.protocol.name", s.protocol));
    }
    if let Some((rx, tx)) = s.bytes {
        attributes.push(KeyValue::new("bosun.bytes_in", rx as i64));
        attributes.push(KeyValue::new("bosun.bytes_out", tx as i64));
    }
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.ids.trace_id.to_be_bytes()),
            SpanId::from_bytes(s.ids.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: s
            .ids
            .parent
            .map(|p| SpanId::from_bytes(p.to_be_bytes()))
            .unwrap_or(SpanId::INVALID),
        parent_span_is_remote: s.ids.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(s.name()),
        start_time: start,
        end_time: start + s.duration,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if s.status >= 500 {
            Status::error(format!("HTTP {}", s.status))
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder("bosun").build(),
    }
}

// ---- bosun traces ----------------------------------------------------------------------

#[derive(Args)]
pub struct TracesOpts {
    /// Show one trace (its 32-hex-digit id)
    pub trace_id: Option<String>,
    /// Only spans of this Service (NAMESPACE/NAME)
    #[arg(long)]
    pub service: Option<String>,
    /// Most spans to read
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Print the spans as JSON
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    #[command(flatten)]
    pub conn: ClientOpts,
}

pub async fn run(opts: TracesOpts) -> Result<ExitCode> {
    let conn = client::connect(&opts.conn).await?;
    let mut q = vec![format!("limit={}", opts.limit)];
    if let Some(t) = &opts.trace_id {
        q.push(format!("traceId={t}"));
    }
    if let Some(s) = &opts.service {
        q.push(format!("service={}", s.replace('/', "%2F")));
    }
    let req = http::Request::get(format!("/bosun/v1/traces?{}", q.join("&"))).body(Vec::new())?;
    let body: Value = conn.client.request(req).await.context("reading traces")?;
    for w in body["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    let spans: Vec<Value> = body["spans"].as_array().cloned().unwrap_or_default();
    if opts.output.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&spans)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&spans));
    Ok(ExitCode::SUCCESS)
}

/// Traces as trees: each trace's root spans first, children indented under their parent,
/// with the hop's Service, route, upstream pod, status and duration.
pub fn render(spans: &[Value]) -> String {
    use std::collections::{BTreeMap, HashSet};
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut traces: BTreeMap<(u64, String), Vec<&Value>> = BTreeMap::new();
    let mut by_trace: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for sp in spans {
        by_trace.entry(s(sp, "traceId")).or_default().push(sp);
    }
    for (id, mut list) in by_trace {
        list.sort_by_key(|v| v["startTimeUnixNano"].as_u64().unwrap_or(0));
        let start = list
            .first()
            .and_then(|v| v["startTimeUnixNano"].as_u64())
            .unwrap_or(0);
        traces.insert((u64::MAX - start, id), list);
    }
    let mut out = String::new();
    for ((_, id), list) in traces {
        out.push_str(&format!("trace {id}\n"));
        let ids: HashSet<String> = list.iter().map(|v| s(v, "spanId")).collect();
        fn walk(
            out: &mut String,
            list: &[&Value],
            parent: Option<&str>,
            ids: &HashSet<String>,
            depth: usize,
        ) {
            for v in list {
                let p = v["parentSpanId"].as_str();
                let is_child = match parent {
                    None => p.is_none_or(|p| !ids.contains(p)),
                    Some(want) => p == Some(want),
                };
                if !is_child {
                    continue;
                }
                let ms = v["durationNanos"].as_u64().unwrap_or(0) as f64 / 1e6;
                let route = v["route"]
                    .as_str()
                    .map(|r| format!(" route={r}"))
                    .unwrap_or_default();
                let pod = v["pod"].as_str().or(v["upstream"].as_str()).unwrap_or("-");
                out.push_str(&format!(
                    "{}{} {} {}{} -> {} {} {:.1}ms span={}\n",
                    "  ".repeat(depth + 1),
                    v["component"].as_str().unwrap_or(""),
                    v["method"].as_str().unwrap_or(""),
                    v["service"].as_str().unwrap_or(""),
                    route,
                    pod,
                    v["status"],
                    ms,
                    v["spanId"].as_str().unwrap_or(""),
                ));
                if let Some(id) = v["spanId"].as_str() {
                    walk(out, list, Some(id), ids, depth + 1);
                }
            }
        }
        walk(&mut out, &list, None, &ids, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_proxy::upstream::trace::SpanIds;

    #[test]
    fn converts_ids_times_and_attributes() {
        let s = Span {
            ids: SpanIds {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                span_id: 7,
                parent: Some(9),
                flags: 1,
            },
            component: "gateway",
            method: http::Method::GET,
            path: "/a".into(),
            service: "dev/web".into(),
            route: Some("HTTPRoute dev/r".into()),
            upstream: Some("10.0.0.5:8080".parse().unwrap()),
            pod: Some("web-1".into()),
            status: 503,
            attempts: 2,
            start_unix_nanos: 1_000_000_000,
            duration: Duration::from_millis(5),
            protocol: "http",
            bytes: None,
        };
        let d = span_data(&s);
        assert_eq!(
            d.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(d.parent_span_id.to_string(), "0000000000000009");
        assert_eq!(
            d.end_time.duration_since(d.start_time).unwrap(),
            Duration::from_millis(5)
        );
        assert!(matches!(d.status, Status::Error { .. }));
        let has = |k: &str| d.attributes.iter().any(|kv| kv.key.as_str() == k);
        assert!(has("http.route") && has("k8s.pod.name") && has("server.port"));
    }

    #[test]
    fn renders_trees() {
        let v = serde_json::json!([
            {"traceId": "t1", "spanId": "a", "parentSpanId": null, "component": "gateway",
             "method": "GET", "service": "d/a", "status": 200, "durationNanos": 3_000_000,
             "startTimeUnixNano": 1},
            {"traceId": "t1", "spanId": "b", "parentSpanId": "x", "component": "proxy",
             "method": "GET", "service": "d/b", "status": 200, "durationNanos": 1_000_000,
             "startTimeUnixNano": 2, "pod": "b-1"}
        ]);
        let out = render(v.as_array().unwrap());
        assert!(out.starts_with("trace t1\n  gateway GET d/a"), "{out}");
        assert!(out.contains("proxy GET d/b -> b-1 200 1.0ms"), "{out}");
    }
}
