//! The compiled route table: host buckets of request matches in precedence order, each
//! pointing at a rule's action (filters, weighted backends, timeouts, rate limit).
//!
//! Precedence inside one host follows the Gateway API: Exact path, then
//! RegularExpression (longer pattern first; implementation-specific upstream), then the
//! longest PathPrefix; then a method match; then more header matches; then more query
//! matches; ties go to the older route, then `namespace/name`, then rule and match order.
//! Ingress paths use the same order (Exact before Prefix, longest prefix first); an
//! Ingress `defaultBackend` ranks below everything.
//!
//! Hosts: a request's host picks the exact bucket first, then the longest matching
//! wildcard, then the routes without hostnames; the first bucket with a matching rule wins.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;

use crate::ratelimit::TokenBucket;

/// Which object a rule came from; the `route` label of metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId {
    /// `Ingress` or `HTTPRoute`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = if self.kind == "Ingress" {
            "ingress"
        } else {
            "httproute"
        };
        write!(f, "{k}/{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix, stored without a trailing slash ("" is the root).
    Prefix(String),
    /// Anchored: must match the whole path.
    Regex(Regex),
}

impl PathMatch {
    pub fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.trim_end_matches('/').to_string())
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                p.is_empty()
                    || (path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// Compiles a user regex so that it must match the whole value, as RE2 full-match
/// does in other Gateway API implementations.
pub fn full_regex(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| format!("invalid regular expression {re:?}: {e}"))
}

#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// One request match (all conditions must hold).
#[derive(Clone, Debug)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

impl RequestMatch {
    pub fn path_only(path: PathMatch) -> RequestMatch {
        RequestMatch {
            path,
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.path.matches(req.path) {
            return false;
        }
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        for (name, want) in &self.headers {
            // Repeated headers are matched on their comma-joined value, as HTTP folds them.
            let vals: Vec<&str> = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if vals.is_empty() || !want.matches(&vals.join(",")) {
                return false;
            }
        }
        for (name, want) in &self.query {
            // The first occurrence counts (Gateway API leaves repeats to the implementation).
            match req.query.iter().find(|(k, _)| k == name) {
                Some((_, v)) if want.matches(v) => {}
                _ => return false,
            }
        }
        true
    }
}

/// What the matcher needs to see of a request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Vec<(String, String)>,
}

impl<'a> RequestView<'a> {
    pub fn new(
        method: &'a Method,
        path: &'a str,
        query: Option<&str>,
        headers: &'a HeaderMap,
    ) -> Self {
        RequestView {
            method,
            path,
            headers,
            query: query.map(parse_query).unwrap_or_default(),
        }
    }
}

/// Decodes `a=1&b=x%20y` into pairs (`+` is a space, invalid escapes are kept).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sets, adds and removes headers (Gateway API HTTPHeaderFilter).
#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path the rule's PathPrefix matched.
    ReplacePrefixMatch(String),
}

impl PathModifier {
    /// The new path for `path`, which `matched` (the rule's match) accepted.
    pub fn apply(&self, path: &str, matched: &PathMatch) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplacePrefixMatch(repl) => {
                let prefix_len = match matched {
                    PathMatch::Prefix(p) => p.len(),
                    // Validation only allows this with PathPrefix; for an exact match the
                    // whole path is the prefix.
                    PathMatch::Exact(p) => p.len(),
                    PathMatch::Regex(_) => 0,
                };
                let rest = &path[prefix_len.min(path.len())..];
                let repl = repl.trim_end_matches('/');
                let out = format!("{repl}{rest}");
                if out.is_empty() {
                    "/".to_string()
                } else if out.starts_with('/') {
                    out
                } else {
                    format!("/{out}")
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

impl Redirect {
    /// The `Location` for a request. `scheme`/`host`/`port` describe how the request
    /// arrived (`port` is the listener port).
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        listener_port: u16,
        path: &str,
        query: Option<&str>,
        matched: &PathMatch,
    ) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let new_host = self.hostname.as_deref().unwrap_or(host);
        // Gateway API: an explicit port wins; a new scheme implies its well-known port;
        // otherwise the listener's port.
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => p,
            (None, Some(s)) => well_known_port(s),
            (None, None) => listener_port,
        };
        let port_part = if port == well_known_port(new_scheme) {
            String::new()
        } else {
            format!(":{port}")
        };
        let new_path = match &self.path {
            Some(m) => m.apply(path, matched),
            None => path.to_string(),
        };
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        format!("{new_scheme}://{new_host}{port_part}{new_path}{q}")
    }
}

fn well_known_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// A Service port a rule sends to, resolved against the Service object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendTarget {
    pub namespace: String,
    pub service: String,
    /// The Service port number.
    pub port: u16,
    /// The Service port's name: EndpointSlice ports carry it ("" when unnamed).
    pub port_name: String,
}

impl fmt::Display for BackendTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

#[derive(Clone, Debug)]
pub struct WeightedBackend {
    /// None when the reference did not resolve (missing Service or port).
    pub target: Option<BackendTarget>,
    /// The name as written, for metrics and errors.
    pub name: String,
    pub weight: u32,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
}

#[derive(Clone, Debug)]
pub struct Mirror {
    pub target: BackendTarget,
    /// Fraction of requests mirrored, 0.0 ..= 1.0.
    pub fraction: f64,
}

/// Everything a matched rule does with a request.
#[derive(Debug)]
pub struct RuleAction {
    pub route: RouteId,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    pub backends: Vec<WeightedBackend>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub rate_limit: Option<Arc<TokenBucket>>,
    /// Answer for requests that land on an unresolved backend (the Gateway API
    /// requires 500; Ingress controllers answer 503).
    pub unresolved_status: StatusCode,
    /// The rule's metric series, from its first request on.
    pub handles: std::sync::OnceLock<crate::metrics::RouteHandles>,
}

impl RuleAction {
    pub fn new(route: RouteId) -> RuleAction {
        RuleAction {
            route,
            request_headers: None,
            response_headers: None,
            redirect: None,
            rewrite: None,
            mirrors: Vec::new(),
            backends: Vec::new(),
            request_timeout: None,
            backend_timeout: None,
            rate_limit: None,
            unresolved_status: StatusCode::INTERNAL_SERVER_ERROR,
            handles: std::sync::OnceLock::new(),
        }
    }

    /// Picks a backend by weight with `r` uniform in [0, 1). None when all weights are 0
    /// (or there are no backends): the Gateway API answers 500 then.
    pub fn pick_backend(&self, r: f64) -> Option<&WeightedBackend> {
        self.pick_backend_index(r).map(|i| &self.backends[i])
    }

    /// Like [`RuleAction::pick_backend`], the index into `backends`.
    pub fn pick_backend_index(&self, r: f64) -> Option<usize> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = (r * total as f64) as u64;
        for (i, b) in self.backends.iter().enumerate() {
            if point < u64::from(b.weight) {
                return Some(i);
            }
            point -= u64::from(b.weight);
        }
        self.backends.iter().rposition(|b| b.weight > 0)
    }

    /// The `service` label of backend `i`: `NS/NAME` when resolved, the name as written
    /// otherwise.
    pub fn service_label(&self, i: usize) -> String {
        match self.backends.get(i) {
            Some(WeightedBackend {
                target: Some(t), ..
            }) => format!("{}/{}", t.namespace, t.service),
            Some(b) => b.name.clone(),
            None => String::new(),
        }
    }
}

/// Orders entries inside a host bucket (smaller sorts first = higher precedence).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    /// 0 Exact, 1 RegularExpression, 2 PathPrefix, 3 Ingress default backend.
    pub path_kind: u8,
    /// Negated length of the exact path, regex or prefix: longer first.
    pub neg_path_len: i64,
    /// 0 with a method match, 1 without.
    pub no_method: u8,
    pub neg_headers: i64,
    pub neg_query: i64,
    /// Route creation time (unix seconds; older first).
    pub created: i64,
    pub route: RouteId,
    pub rule: usize,
    pub matchn: usize,
}

impl Precedence {
    pub fn new(m: &RequestMatch, created: i64, route: RouteId, rule: usize, matchn: usize) -> Self {
        let (path_kind, len) = match &m.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Regex(r) => (1, r.as_str().len()),
            PathMatch::Prefix(p) => (2, p.len()),
        };
        Precedence {
            path_kind,
            neg_path_len: -(len as i64),
            no_method: u8::from(m.method.is_none()),
            neg_headers: -(m.headers.len() as i64),
            neg_query: -(m.query.len() as i64),
            created,
            route,
            rule,
            matchn,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub matcher: RequestMatch,
    pub precedence: Precedence,
    pub action: Arc<RuleAction>,
}

/// The entries of one hostname, in precedence order once sealed.
#[derive(Clone, Debug, Default)]
pub struct HostBucket {
    pub entries: Vec<Entry>,
}

impl HostBucket {
    fn find(&self, req: &RequestView<'_>) -> Option<&Entry> {
        self.entries.iter().find(|e| e.matcher.matches(req))
    }
}

/// The whole routing state, immutable once built; swapped atomically on change.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostBucket>,
    /// `(suffix starting with '.', single_label, bucket)`, longest suffix first.
    wildcard: Vec<(String, bool, HostBucket)>,
    any: HostBucket,
}

/// A host pattern: `shop.local`, `*.shop.local` or any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`; `single_label` is Ingress semantics
    /// (the wildcard covers one DNS label), otherwise one or more labels (Gateway API).
    Wildcard {
        suffix: String,
        single_label: bool,
    },
    Any,
}

impl HostPattern {
    pub fn parse(h: &str, single_label: bool) -> HostPattern {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || h == "*" {
            HostPattern::Any
        } else if let Some(s) = h.strip_prefix('*') {
            HostPattern::Wildcard {
                suffix: s.to_string(),
                single_label,
            }
        } else {
            HostPattern::Exact(h)
        }
    }
}

impl RouteTable {
    pub fn add(&mut self, host: &HostPattern, entry: Entry) {
        match host {
            HostPattern::Exact(h) => self.exact.entry(h.clone()).or_default().entries.push(entry),
            HostPattern::Wildcard {
                suffix,
                single_label,
            } => {
                match self
                    .wildcard
                    .iter_mut()
                    .find(|(s, l, _)| s == suffix && l == single_label)
                {
                    Some((_, _, b)) => b.entries.push(entry),
                    None => self.wildcard.push((
                        suffix.clone(),
                        *single_label,
                        HostBucket {
                            entries: vec![entry],
                        },
                    )),
                }
            }
            HostPattern::Any => self.any.entries.push(entry),
        }
    }

    /// Sorts every bucket into precedence order; call once after adding.
    pub fn seal(&mut self) {
        let sort = |b: &mut HostBucket| b.entries.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        self.exact.values_mut().for_each(sort);
        self.wildcard.iter_mut().for_each(|(_, _, b)| sort(b));
        sort(&mut self.any);
        self.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of request matches over all hosts.
    pub fn len(&self) -> usize {
        self.exact.values().map(|b| b.entries.len()).sum::<usize>()
            + self
                .wildcard
                .iter()
                .map(|(_, _, b)| b.entries.len())
                .sum::<usize>()
            + self.any.entries.len()
    }

    /// Finds the rule for a request to `host` (lowercase, without port).
    pub fn lookup(&self, host: &str, req: &RequestView<'_>) -> Option<&Entry> {
        if let Some(b) = self.exact.get(host)
            && let Some(e) = b.find(req)
        {
            return Some(e);
        }
        for (suffix, single, b) in &self.wildcard {
            if let Some(label) = host.strip_suffix(suffix.as_str())
                && !label.is_empty()
                && (!*single || !label.contains('.'))
                && let Some(e) = b.find(req)
            {
                return Some(e);
            }
        }
        self.any.find(req)
    }
}

/// The host of a request without port, lowercased: from the URI authority (HTTP/2,
/// absolute-form) or the Host header.
pub fn request_host(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    let raw = match uri.authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = headers.get(http::header::HOST)?.to_str().ok()?;
            let auth: http::uri::Authority = h.parse().ok()?;
            auth.host().to_string()
        }
    };
    let h = raw.trim_end_matches('.').to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(name: &str) -> RouteId {
        RouteId {
            kind: "HTTPRoute",
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn entry(name: &str, m: RequestMatch, created: i64) -> Entry {
        Entry {
            precedence: Precedence::new(&m, created, rid(name), 0, 0),
            matcher: m,
            action: Arc::new(RuleAction::new(rid(name))),
        }
    }

    fn get(
        t: &RouteTable,
        host: &str,
        method: Method,
        pq: &str,
        hdrs: &[(&str, &str)],
    ) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in hdrs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (p, q) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let view = RequestView::new(&method, p, q, &h);
        t.lookup(host, &view).map(|e| e.action.route.name.clone())
    }

    #[test]
    fn prefix_is_element_wise() {
        let p = PathMatch::prefix("/api/");
        assert!(p.matches("/api"));
        assert!(p.matches("/api/"));
        assert!(p.matches("/api/v1"));
        assert!(!p.matches("/apiv1"));
        assert!(PathMatch::prefix("/").matches("/anything"));
        assert!(!PathMatch::Exact("/a".into()).matches("/a/"));
    }

    #[test]
    fn gateway_api_precedence() {
        let mut t = RouteTable::default();
        let any = HostPattern::Any;
        t.add(
            &any,
            entry("root", RequestMatch::path_only(PathMatch::prefix("/")), 1),
        );
        t.add(
            &any,
            entry(
                "short",
                RequestMatch::path_only(PathMatch::prefix("/api")),
                1,
            ),
        );
        t.add(
            &any,
            entry(
                "long",
                RequestMatch::path_only(PathMatch::prefix("/api/v1")),
                1,
            ),
        );
        t.add(
            &any,
            entry(
                "exact",
                RequestMatch::path_only(PathMatch::Exact("/api/v1/x".into())),
                9,
            ),
        );
        let mut m = RequestMatch::path_only(PathMatch::prefix("/api"));
        m.method = Some(Method::POST);
        t.add(&any, entry("post", m, 5));
        let mut m = RequestMatch::path_only(PathMatch::prefix("/api"));
        m.headers = vec![(
            HeaderName::from_static("x-a"),
            ValueMatch::Exact("1".into()),
        )];
        t.add(&any, entry("hdr1", m, 5));
        let mut m = RequestMatch::path_only(PathMatch::prefix("/api"));
        m.headers = vec![
            (
                HeaderName::from_static("x-a"),
                ValueMatch::Exact("1".into()),
            ),
            (
                HeaderName::from_static("x-b"),
                ValueMatch::Regex(full_regex("[0-9]+").unwrap()),
            ),
        ];
        t.add(&any, entry("hdr2", m, 5));
        let mut m = RequestMatch::path_only(PathMatch::prefix("/api"));
        m.query = vec![("v".into(), ValueMatch::Exact("2".into()))];
        t.add(&any, entry("query", m, 5));
        t.seal();

        assert_eq!(
            get(&t, "h", Method::GET, "/api/v1/x", &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(
            get(&t, "h", Method::GET, "/api/v1/y", &[]).as_deref(),
            Some("long")
        );
        assert_eq!(
            get(&t, "h", Method::GET, "/api/v2", &[]).as_deref(),
            Some("short")
        );
        assert_eq!(
            get(&t, "h", Method::GET, "/apix", &[]).as_deref(),
            Some("root")
        );
        // Method beats headers; more headers beat fewer; headers beat query params.
        assert_eq!(
            get(&t, "h", Method::POST, "/api", &[("x-a", "1"), ("x-b", "7")]).as_deref(),
            Some("post")
        );
        assert_eq!(
            get(&t, "h", Method::GET, "/api", &[("x-a", "1"), ("x-b", "7")]).as_deref(),
            Some("hdr2")
        );
        assert_eq!(
            get(&t, "h", Method::GET, "/api", &[("x-a", "1"), ("x-b", "z")]).as_deref(),
            Some("hdr1")
        );
        assert_eq!(
            get(&t, "h", Method::GET, "/api?v=2", &[("x-a", "1")]).as_deref(),
            Some("hdr1")
        );
        assert_eq!(
            get(&t, "h", Method::GET, "/api?w=1&v=2", &[]).as_deref(),
            Some("query")
        );
        // The longest prefix beats a method match on a shorter prefix.
        assert_eq!(
            get(&t, "h", Method::POST, "/api/v1/z", &[]).as_deref(),
            Some("long")
        );
    }

    #[test]
    fn ties_go_to_the_oldest_then_name() {
        let mut t = RouteTable::default();
        let any = HostPattern::Any;
        t.add(
            &any,
            entry("b-new", RequestMatch::path_only(PathMatch::prefix("/")), 20),
        );
        t.add(
            &any,
            entry("c-old", RequestMatch::path_only(PathMatch::prefix("/")), 10),
        );
        t.add(
            &any,
            entry("a-old", RequestMatch::path_only(PathMatch::prefix("/")), 10),
        );
        t.seal();
        assert_eq!(
            get(&t, "h", Method::GET, "/", &[]).as_deref(),
            Some("a-old")
        );
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let mut t = RouteTable::default();
        t.add(
            &HostPattern::parse("shop.local", false),
            entry(
                "exact",
                RequestMatch::path_only(PathMatch::prefix("/api")),
                1,
            ),
        );
        t.add(
            &HostPattern::parse("*.local", false),
            entry("wild", RequestMatch::path_only(PathMatch::prefix("/")), 1),
        );
        t.add(
            &HostPattern::parse("*.b.local", true),
            entry("wild1", RequestMatch::path_only(PathMatch::prefix("/")), 1),
        );
        t.add(
            &HostPattern::Any,
            entry("any", RequestMatch::path_only(PathMatch::prefix("/")), 1),
        );
        t.seal();
        assert_eq!(
            get(&t, "shop.local", Method::GET, "/api/x", &[]).as_deref(),
            Some("exact")
        );
        // No rule of the exact host matches: fall through to the wildcard.
        assert_eq!(
            get(&t, "shop.local", Method::GET, "/other", &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(
            get(&t, "a.b.c.local", Method::GET, "/", &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(
            get(&t, "x.b.local", Method::GET, "/", &[]).as_deref(),
            Some("wild1")
        );
        assert_eq!(
            get(&t, "local", Method::GET, "/", &[]).as_deref(),
            Some("any")
        );
        assert_eq!(
            get(&t, "other", Method::GET, "/", &[]).as_deref(),
            Some("any")
        );
    }

    #[test]
    fn ingress_single_label_wildcard() {
        let mut t = RouteTable::default();
        t.add(
            &HostPattern::parse("*.foo.com", true),
            entry("w", RequestMatch::path_only(PathMatch::prefix("/")), 1),
        );
        t.seal();
        assert_eq!(
            get(&t, "a.foo.com", Method::GET, "/", &[]).as_deref(),
            Some("w")
        );
        assert_eq!(get(&t, "a.b.foo.com", Method::GET, "/", &[]), None);
        assert_eq!(get(&t, "foo.com", Method::GET, "/", &[]), None);
    }

    #[test]
    fn regex_matches_whole_path() {
        let p = PathMatch::Regex(full_regex("/api/v[0-9]+").unwrap());
        assert!(p.matches("/api/v12"));
        assert!(!p.matches("/api/v12/x"));
        assert!(full_regex("([").is_err());
    }

    #[test]
    fn weighted_pick() {
        let mut a = RuleAction::new(rid("r"));
        for (n, w) in [("a", 90), ("b", 10), ("z", 0)] {
            a.backends.push(WeightedBackend {
                target: None,
                name: n.into(),
                weight: w,
                request_headers: None,
                response_headers: None,
            });
        }
        assert_eq!(a.pick_backend(0.0).unwrap().name, "a");
        assert_eq!(a.pick_backend(0.899).unwrap().name, "a");
        assert_eq!(a.pick_backend(0.9).unwrap().name, "b");
        assert_eq!(a.pick_backend(0.99999).unwrap().name, "b");
        // Statistically: 20k draws from the thread RNG land near 90/10.
        let n = 20_000;
        let b = (0..n)
            .filter(|_| a.pick_backend(rand::random::<f64>()).unwrap().name == "b")
            .count();
        let share = b as f64 / n as f64;
        assert!((0.08..0.12).contains(&share), "canary share {share}");
        a.backends.iter_mut().for_each(|b| b.weight = 0);
        assert!(a.pick_backend(0.5).is_none());
    }

    #[test]
    fn prefix_rewrites() {
        let m = PathMatch::prefix("/api");
        let r = |s: &str| PathModifier::ReplacePrefixMatch(s.into());
        assert_eq!(r("/").apply("/api/users", &m), "/users");
        assert_eq!(r("/").apply("/api", &m), "/");
        assert_eq!(r("/v2").apply("/api/users", &m), "/v2/users");
        assert_eq!(r("/v2/").apply("/api/", &m), "/v2/");
        assert_eq!(r("/v2").apply("/api", &m), "/v2");
        let m = PathMatch::prefix("/api/");
        assert_eq!(r("/x").apply("/api/a/b", &m), "/x/a/b");
        assert_eq!(
            PathModifier::ReplaceFullPath("/f".into()).apply("/api/a", &m),
            "/f"
        );
    }

    #[test]
    fn redirect_locations() {
        let m = PathMatch::prefix("/");
        let mut r = Redirect {
            scheme: Some("https".into()),
            hostname: None,
            path: None,
            port: None,
            status: StatusCode::MOVED_PERMANENTLY,
        };
        assert_eq!(
            r.location("http", "shop.local", 8080, "/a", Some("x=1"), &m),
            "https://shop.local/a?x=1"
        );
        r.port = Some(8443);
        assert_eq!(
            r.location("http", "shop.local", 8080, "/a", None, &m),
            "https://shop.local:8443/a"
        );
        let r = Redirect {
            scheme: None,
            hostname: Some("new.local".into()),
            path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
            port: None,
            status: StatusCode::FOUND,
        };
        let m = PathMatch::prefix("/v1");
        assert_eq!(
            r.location("http", "shop.local", 8080, "/v1/x", None, &m),
            "http://new.local:8080/v2/x"
        );
        assert_eq!(
            r.location("http", "shop.local", 80, "/v1/x", None, &m),
            "http://new.local/v2/x"
        );
    }

    #[test]
    fn header_modifier_and_query_parsing() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-del", HeaderValue::from_static("1"));
        let m = HeaderModifier {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("new"),
            )],
            add: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("more"),
            )],
            remove: vec![HeaderName::from_static("x-del")],
        };
        m.apply(&mut h);
        let vals: Vec<_> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(vals, ["new", "more"]);
        assert!(h.get("x-del").is_none());
        assert_eq!(
            parse_query("a=1&b=x%20y+z&c&bad=%zz"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("bad".into(), "%zz".into())
            ]
        );
    }
}
