//! W3C Trace Context (`traceparent`): keep the trace, start a new span per hop.

use std::sync::{Arc, Mutex};

use rand::Rng;

pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` value to send upstream, given the one received (if any).
/// A valid incoming header keeps its trace id and flags and gets a new parent (span) id;
/// a missing or malformed one starts a new sampled trace.
pub fn next_traceparent(incoming: Option<&str>) -> String {
    SpanIds::begin(incoming).header()
}

/// The ids of one hop's span: the trace it belongs to, its own id (the parent id sent
/// upstream) and the parent it was called from (None for a trace started here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub flags: u8,
}

impl SpanIds {
    /// A child of the incoming `traceparent`, or the root of a new sampled trace.
    pub fn begin(incoming: Option<&str>) -> SpanIds {
        let mut rng = rand::rng();
        let span_id: u64 = loop {
            let s = rng.random();
            if s != 0 {
                break s;
            }
        };
        if let Some((trace, parent, flags)) = incoming.and_then(parse_ids) {
            return SpanIds {
                trace_id: trace,
                span_id,
                parent: Some(parent),
                flags,
            };
        }
        let trace_id: u128 = loop {
            let t = rng.random();
            if t != 0 {
                break t;
            }
        };
        SpanIds {
            trace_id,
            span_id,
            parent: None,
            flags: 1,
        }
    }

    /// The `traceparent` header naming this span as the parent.
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// [`SpanIds::header`] as a header value, written without the formatting machinery
    /// (it is set on every forwarded request).
    pub fn header_value(&self) -> http::HeaderValue {
        fn hex(out: &mut [u8], mut v: u128) {
            for b in out.iter_mut().rev() {
                *b = b"0123456789abcdef"[(v & 0xf) as usize];
                v >>= 4;
            }
        }
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex(&mut buf[3..35], self.trace_id);
        hex(&mut buf[36..52], u128::from(self.span_id));
        hex(&mut buf[53..55], u128::from(self.flags));
        http::HeaderValue::from_bytes(&buf).unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The W3C `sampled` flag: only sampled spans are recorded.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// (trace id, parent id, flags) of a valid header.
fn parse_ids(v: &str) -> Option<(u128, u64, u8)> {
    let (trace, flags) = parse(v)?;
    let parent = v.trim().split('-').nth(2)?;
    Some((
        u128::from_str_radix(trace, 16).ok()?,
        u64::from_str_radix(parent, 16).ok()?,
        u8::from_str_radix(flags, 16).ok()?,
    ))
}

/// Request extension naming the route a request matched (set by the gateway).
#[derive(Clone, Debug)]
pub struct RouteName(pub Arc<str>);

/// One forwarded request, as the gateway or the node proxy saw it.
#[derive(Clone, Debug)]
pub struct Span {
    pub ids: SpanIds,
    /// `gateway` or `proxy`.
    pub component: &'static str,
    pub method: http::Method,
    pub path: String,
    /// `namespace/name` of the Service.
    pub service: String,
    pub route: Option<Arc<str>>,
    /// The endpoint that answered last (after retries) and its pod.
    pub upstream: Option<std::net::SocketAddr>,
    pub pod: Option<String>,
    pub status: u16,
    pub attempts: u32,
    /// Start, as Unix time in nanoseconds, and time to the response headers (a
    /// connection span: the whole connection).
    pub start_unix_nanos: u64,
    pub duration: std::time::Duration,
    /// `http` for a request; `websocket` (or another upgrade) or `tcp` for a relayed
    /// connection, which has one span from its start to its close.
    pub protocol: &'static str,
    /// A connection's bytes (from the client, to the client).
    pub bytes: Option<(u64, u64)>,
}

impl Span {
    pub fn to_json(&self, node: &str) -> serde_json::Value {
        serde_json::json!({
            "traceId": format!("{:032x}", self.ids.trace_id),
            "spanId": format!("{:016x}", self.ids.span_id),
            "parentSpanId": self.ids.parent.map(|p| format!("{p:016x}")),
            "name": self.name(),
            "component": self.component,
            "node": node,
            "method": self.method.as_str(),
            "path": self.path,
            "service": self.service,
            "route": self.route.as_deref(),
            "upstream": self.upstream.map(|a| a.to_string()),
            "pod": self.pod,
            "status": self.status,
            "attempts": self.attempts,
            "startTimeUnixNano": self.start_unix_nanos,
            "durationNanos": self.duration.as_nanos() as u64,
            "protocol": self.protocol,
            "bytesIn": self.bytes.map(|b| b.0),
            "bytesOut": self.bytes.map(|b| b.1),
        })
    }

    /// `component METHOD service`, e.g. `proxy GET default/web`; connections:
    /// `proxy TCP default/db`, `gateway WebSocket default/chat`.
    pub fn name(&self) -> String {
        match self.protocol {
            "http" => format!("{} {} {}", self.component, self.method, self.service),
            "tcp" => format!("{} TCP {}", self.component, self.service),
            "websocket" => format!("{} WebSocket {}", self.component, self.service),
            other => format!("{} {other} {}", self.component, self.service),
        }
    }

    /// The span of one relayed connection (WebSocket after its upgrade, or TCP): from
    /// `started` for `duration`, with the bytes each way.
    #[allow(clippy::too_many_arguments)]
    pub fn connection(
        ids: SpanIds,
        component: &'static str,
        protocol: &'static str,
        service: String,
        upstream: Option<std::net::SocketAddr>,
        started: std::time::SystemTime,
        duration: std::time::Duration,
        bytes: (u64, u64),
    ) -> Span {
        Span {
            ids,
            component,
            method: if protocol == "tcp" {
                http::Method::CONNECT
            } else {
                http::Method::GET
            },
            path: String::new(),
            service,
            route: None,
            upstream,
            pod: None,
            status: if protocol == "tcp" { 0 } else { 101 },
            attempts: 1,
            start_unix_nanos: started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            duration,
            protocol,
            bytes: Some(bytes),
        }
    }
}

impl SpanIds {
    /// A new span of the same trace, child of this one.
    pub fn child(&self) -> SpanIds {
        let mut c = SpanIds::begin(None);
        c.trace_id = self.trace_id;
        c.parent = Some(self.span_id);
        c.flags = self.flags;
        c
    }
}

/// Keeps the most recent spans of this process (gateway and node proxy share one) in a
/// bounded ring, and hands each to an exporter when one is attached. Recording is a lock,
/// a push and a non-blocking channel send; nothing waits on the exporter (a full channel
/// drops the span from the export, not from the ring). Cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<TracerInner>,
}

struct TracerInner {
    ring: Mutex<std::collections::VecDeque<Span>>,
    capacity: usize,
    node: String,
    export: Option<tokio::sync::mpsc::Sender<Span>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("node", &self.inner.node)
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

/// The parameters of a query string (`a=1&b=x%2Fy`), percent-decoded.
pub fn query_params(query: Option<&str>) -> std::collections::HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (b[i], hex) {
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                (b'+', _) => out.push(b' '),
                (c, _) => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Spans the ring keeps by default.
pub const DEFAULT_CAPACITY: usize = 4096;

impl Tracer {
    pub fn new(node: &str, capacity: usize) -> Tracer {
        Tracer {
            inner: Arc::new(TracerInner {
                ring: Mutex::new(std::collections::VecDeque::with_capacity(
                    capacity.min(1024),
                )),
                capacity: capacity.max(1),
                node: node.to_string(),
                export: None,
            }),
        }
    }

    /// Like `new`, also sending every span to the returned receiver (an exporter), which
    /// holds up to `queue` spans.
    pub fn with_export(
        node: &str,
        capacity: usize,
        queue: usize,
    ) -> (Tracer, tokio::sync::mpsc::Receiver<Span>) {
        let (tx, rx) = tokio::sync::mpsc::channel(queue.max(1));
        let mut t = Tracer::new(node, capacity);
        if let Some(inner) = Arc::get_mut(&mut t.inner) {
            inner.export = Some(tx);
        }
        (t, rx)
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn record(&self, span: Span) {
        if let Some(tx) = &self.inner.export {
            let _ = tx.try_send(span.clone());
        }
        let mut ring = self.inner.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= self.inner.capacity {
            ring.pop_front();
        }
        ring.push_back(span);
    }

    /// Recent spans, newest first: of one trace (hex id) and/or one Service
    /// (`namespace/name`), at most `limit`.
    pub fn recent(&self, trace_id: Option<&str>, service: Option<&str>, limit: usize) -> Vec<Span> {
        let want = trace_id.and_then(|t| u128::from_str_radix(t, 16).ok());
        if trace_id.is_some() && want.is_none() {
            return Vec::new();
        }
        let ring = self.inner.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .rev()
            .filter(|s| want.is_none_or(|t| s.ids.trace_id == t))
            .filter(|s| service.is_none_or(|svc| s.service == svc))
            .take(limit)
            .cloned()
            .collect()
    }

    /// `recent` as the JSON document `/traces` serves.
    pub fn query_json(
        &self,
        params: &std::collections::HashMap<String, String>,
    ) -> serde_json::Value {
        let limit = params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(1000);
        let spans: Vec<serde_json::Value> = self
            .recent(
                params
                    .get("traceId")
                    .map(String::as_str)
                    .filter(|s| !s.is_empty()),
                params
                    .get("service")
                    .map(String::as_str)
                    .filter(|s| !s.is_empty()),
                limit,
            )
            .iter()
            .map(|s| s.to_json(&self.inner.node))
            .collect();
        serde_json::json!({ "spans": spans })
    }
}

/// (trace-id, flags) of a valid version-00 header (future versions: the first four fields).
fn parse(v: &str) -> Option<(&str, &str)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let extra = parts.next();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || (version == "00" && extra.is_some()) {
        return None;
    }
    if !hex(trace, 32) || trace.bytes().all(|b| b == b'0') {
        return None;
    }
    if !hex(parent, 16) || parent.bytes().all(|b| b == b'0') || !hex(flags, 2) {
        return None;
    }
    Some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagates_trace_with_new_span() {
        let inc = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = next_traceparent(Some(inc));
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert!(parse(&out).is_some());
    }

    #[test]
    fn generates_when_absent_or_invalid() {
        for inc in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ] {
            let out = next_traceparent(inc);
            assert_eq!(out.len(), 55, "{out}");
            assert!(parse(&out).is_some(), "{out}");
            if let Some(i) = inc {
                assert_ne!(
                    &out[3..35],
                    &i.get(3..35).unwrap_or("").to_ascii_lowercase()
                );
            }
        }
        assert_ne!(next_traceparent(None)[3..35], next_traceparent(None)[3..35]);
    }

    #[test]
    fn span_ids_keep_the_trace_and_name_the_parent() {
        let inc = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ids = SpanIds::begin(Some(inc));
        assert_eq!(ids.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ids.parent, Some(0x00f067aa0ba902b7));
        assert!(ids.sampled());
        assert_eq!(&ids.header()[..36], &inc[..36]);
        assert_eq!(ids.header_value(), ids.header().as_str());
        let root = SpanIds::begin(None);
        assert_eq!(root.parent, None);
        assert!(root.sampled());
        let unsampled = SpanIds::begin(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.sampled());
    }

    #[test]
    fn ring_is_bounded_and_filters() {
        let t = Tracer::new("n1", 3);
        for i in 0..5u64 {
            t.record(Span {
                ids: SpanIds {
                    trace_id: u128::from(i % 2 + 1),
                    span_id: i + 1,
                    parent: None,
                    flags: 1,
                },
                component: "proxy",
                method: http::Method::GET,
                path: "/".into(),
                service: format!("default/s{}", i % 2),
                route: None,
                upstream: None,
                pod: None,
                status: 200,
                attempts: 1,
                start_unix_nanos: i,
                duration: std::time::Duration::from_millis(1),
                protocol: "http",
                bytes: None,
            });
        }
        let all = t.recent(None, None, 10);
        assert_eq!(
            all.iter().map(|s| s.ids.span_id).collect::<Vec<_>>(),
            [5, 4, 3]
        );
        assert_eq!(t.recent(Some(&format!("{:032x}", 1)), None, 10).len(), 2);
        assert_eq!(t.recent(None, Some("default/s1"), 10).len(), 1);
        assert!(t.recent(Some("zz"), None, 10).is_empty());
    }
}
