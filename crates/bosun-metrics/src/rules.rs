//! Rule files in Prometheus' syntax (`groups:` of `rules:`, each an `alert:` or a `record:`
//! with `expr`, `for`, `keep_firing_for`, `labels`, `annotations`), checked as `promtool
//! check rules` does: every error names the file, the group and the rule. Also the
//! built-in alerting rules (`builtin`) with their documented, overridable parameters, and
//! the small Go-template subset alert labels and annotations use (`{{ $labels.pod }}`,
//! `{{ $value | humanize }}`, `{{ printf "%.2f" $value }}`).

use std::collections::BTreeMap;
use std::time::Duration;

use promql_parser::parser::Expr;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    groups: Vec<GroupSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    rules: Vec<RuleSpec>,
}

/// `expr` may be written as a bare number (`expr: 1`).
#[derive(Deserialize)]
#[serde(untagged)]
enum ExprText {
    Text(String),
    Int(i64),
    Float(f64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: ExprText,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Alert {
        for_: Duration,
        keep_firing_for: Duration,
        annotations: Vec<(String, Template)>,
    },
    Record,
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// The alert's or the recorded series' name.
    pub name: String,
    pub query: String,
    pub expr: Expr,
    pub labels: Vec<(String, Template)>,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub file: String,
    /// None: the scrape interval.
    pub interval: Option<Duration>,
    /// Most alerts (or series) one rule may produce; 0 = no limit.
    pub limit: u64,
    pub rules: Vec<Rule>,
}

fn duration(s: &str) -> Result<Duration, String> {
    // `for: 0s` is allowed (Prometheus' own durations are), the PromQL parser refuses it.
    let digits = s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !digits.is_empty()
        && digits.chars().all(|c| c == '0')
        && matches!(
            &s.trim()[digits.len()..],
            "ms" | "s" | "m" | "h" | "d" | "w" | "y"
        )
    {
        return Ok(Duration::ZERO);
    }
    promql_parser::util::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 1h: {e}"))
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Parses and checks a rule file's text; `file` names it in errors.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Group>, String> {
    let spec: FileSpec =
        serde_saphyr::from_str(text).map_err(|e| format!("{file}: not a rule file: {e}"))?;
    let mut out: Vec<Group> = Vec::new();
    for g in spec.groups {
        let gname = g.name.clone();
        let at = |msg: String| format!("{file}: group {gname:?}: {msg}");
        if g.name.is_empty() {
            return Err(format!("{file}: a group has no name"));
        }
        if out.iter().any(|o| o.name == g.name) {
            return Err(at("group name repeated in the file".into()));
        }
        let interval = match &g.interval {
            Some(s) => {
                let d = duration(s).map_err(|e| at(format!("interval: {e}")))?;
                if d.is_zero() {
                    return Err(at("interval: must be more than 0".into()));
                }
                Some(d)
            }
            None => None,
        };
        if g.rules.is_empty() {
            return Err(at("no rules".into()));
        }
        let mut rules = Vec::new();
        for (i, r) in g.rules.into_iter().enumerate() {
            let mut rule = parse_rule(r).map_err(|(name, e)| {
                let what = match name {
                    Some(n) => format!("rule {} ({n})", i + 1),
                    None => format!("rule {}", i + 1),
                };
                at(format!("{what}: {e}"))
            })?;
            for (k, v) in &g.labels {
                if !rule.labels.iter().any(|(rk, _)| rk == k) {
                    let t = Template::parse(v).map_err(|e| at(format!("labels.{k}: {e}")))?;
                    rule.labels.push((k.clone(), t));
                }
            }
            rules.push(rule);
        }
        out.push(Group {
            name: g.name,
            file: file.to_string(),
            interval,
            limit: g.limit.unwrap_or(0),
            rules,
        });
    }
    Ok(out)
}

/// Checks one rule; the error carries the rule's name when it has one.
fn parse_rule(r: RuleSpec) -> Result<Rule, (Option<String>, String)> {
    let (name, is_alert) = match (&r.alert, &r.record) {
        (Some(a), None) => (a.clone(), true),
        (None, Some(rec)) => (rec.clone(), false),
        (Some(a), Some(_)) => {
            return Err((
                Some(format!("alert {a:?}")),
                "has both alert and record; one rule is one or the other".into(),
            ));
        }
        (None, None) => return Err((None, "needs alert: NAME or record: NAME".into())),
    };
    let label = if is_alert {
        format!("alert {name:?}")
    } else {
        format!("record {name:?}")
    };
    let fail = |e: String| (Some(label.clone()), e);
    if is_alert {
        if !is_label_name(&name.replace(':', "_")) || name.is_empty() {
            return Err(fail(
                "alert: the name must be a valid label value [a-zA-Z_][a-zA-Z0-9_]*".into(),
            ));
        }
    } else if !is_metric_name(&name) {
        return Err(fail("record: not a valid metric name".into()));
    }
    let query = match r.expr {
        ExprText::Text(s) => s,
        ExprText::Int(i) => i.to_string(),
        ExprText::Float(f) => f.to_string(),
    };
    if query.trim().is_empty() {
        return Err(fail("expr: empty".into()));
    }
    let expr = crate::eval::parse(&query).map_err(|e| fail(format!("expr: {e}")))?;
    let mut labels = Vec::new();
    for (k, v) in &r.labels {
        if !is_label_name(k) || k.starts_with("__") {
            return Err(fail(format!("labels: {k:?} is not a valid label name")));
        }
        if is_alert && k == "alertname" {
            return Err(fail("labels: alertname is set from the rule's name".into()));
        }
        let t = Template::parse(v).map_err(|e| fail(format!("labels.{k}: {e}")))?;
        labels.push((k.clone(), t));
    }
    let kind = if is_alert {
        let for_ = match &r.for_ {
            Some(s) => duration(s).map_err(|e| fail(format!("for: {e}")))?,
            None => Duration::ZERO,
        };
        let keep_firing_for = match &r.keep_firing_for {
            Some(s) => duration(s).map_err(|e| fail(format!("keep_firing_for: {e}")))?,
            None => Duration::ZERO,
        };
        let mut annotations = Vec::new();
        for (k, v) in &r.annotations {
            let t = Template::parse(v).map_err(|e| fail(format!("annotations.{k}: {e}")))?;
            annotations.push((k.clone(), t));
        }
        Kind::Alert {
            for_,
            keep_firing_for,
            annotations,
        }
    } else {
        if r.for_.is_some() || r.keep_firing_for.is_some() {
            return Err(fail("for: only alerting rules have it".into()));
        }
        if !r.annotations.is_empty() {
            return Err(fail("annotations: only alerting rules have them".into()));
        }
        Kind::Record
    };
    Ok(Rule {
        name,
        query,
        expr,
        labels,
        kind,
    })
}

/// The built-in rules' parameters: (name, default, what it is).
pub const PARAMS: &[(&str, &str, &str)] = &[
    (
        "crashloop_window",
        "5m",
        "a container counts as crash looping when it was in CrashLoopBackOff at some point of this window",
    ),
    (
        "crashloop_for",
        "5m",
        "KubePodCrashLooping fires after crash looping this long",
    ),
    (
        "deployment_stuck_for",
        "5m",
        "KubeDeploymentRolloutStuck fires after Progressing=False (progress deadline exceeded) this long",
    ),
    (
        "deployment_unavailable_for",
        "10m",
        "KubeDeploymentReplicasUnavailable fires after replicas were unavailable this long",
    ),
    (
        "node_notready_for",
        "5m",
        "KubeNodeNotReady fires after a node was not Ready this long",
    ),
    ("rate_window", "5m", "window of the Service request rates"),
    (
        "service_error_ratio",
        "0.05",
        "ServiceHighErrorRate: share of 5xx answers above which it fires",
    ),
    (
        "service_p99_seconds",
        "1",
        "ServiceHighLatency: p99 latency in seconds above which it fires",
    ),
    (
        "service_for",
        "5m",
        "ServiceHighErrorRate and ServiceHighLatency fire after this long",
    ),
];

const BUILTIN: &str = r#"
groups:
- name: bosun-builtin
  rules:
  - alert: KubePodCrashLooping
    expr: max_over_time(kube_pod_container_status_waiting_reason{job="kube-state-metrics",reason="CrashLoopBackOff"}[${crashloop_window}]) >= 1
    for: ${crashloop_for}
    labels:
      severity: warning
    annotations:
      summary: Pod is crash looping.
      description: 'Pod {{ $labels.namespace }}/{{ $labels.pod }} ({{ $labels.container }}) is in waiting state (reason: "CrashLoopBackOff").'
  - alert: KubeDeploymentRolloutStuck
    expr: kube_deployment_status_condition{job="kube-state-metrics",condition="Progressing",status="false"} != 0
    for: ${deployment_stuck_for}
    labels:
      severity: warning
    annotations:
      summary: Deployment rollout is not progressing.
      description: 'Rollout of deployment {{ $labels.namespace }}/{{ $labels.deployment }} is not progressing (reason: {{ $labels.reason }}).'
  - alert: KubeDeploymentReplicasUnavailable
    expr: kube_deployment_status_replicas_unavailable{job="kube-state-metrics"} > 0
    for: ${deployment_unavailable_for}
    labels:
      severity: warning
    annotations:
      summary: Deployment has unavailable replicas.
      description: 'Deployment {{ $labels.namespace }}/{{ $labels.deployment }} has {{ $value }} unavailable replicas.'
  - alert: KubeNodeNotReady
    expr: kube_node_status_condition{job="kube-state-metrics",condition="Ready",status="true"} == 0
    for: ${node_notready_for}
    labels:
      severity: warning
    annotations:
      summary: Node is not ready.
      description: '{{ $labels.node }} has been unready for more than ${node_notready_for}.'
  - alert: ServiceHighErrorRate
    expr: |
      sum by (namespace, service) (rate({__name__=~"bosun_(proxy|gateway)_upstream_requests_total",status=~"5.."}[${rate_window}]))
        / sum by (namespace, service) (rate({__name__=~"bosun_(proxy|gateway)_upstream_requests_total"}[${rate_window}]))
        > ${service_error_ratio}
    for: ${service_for}
    labels:
      severity: warning
    annotations:
      summary: Service answers with many errors.
      description: '{{ $value | humanizePercentage }} of the requests to Service {{ $labels.namespace }}/{{ $labels.service }} failed with 5xx over ${rate_window} (threshold ${service_error_ratio}).'
  - alert: ServiceHighLatency
    expr: |
      histogram_quantile(0.99, sum by (namespace, service, le) (rate({__name__=~"bosun_(proxy|gateway)_upstream_request_duration_seconds_bucket"}[${rate_window}])))
        > ${service_p99_seconds}
    for: ${service_for}
    labels:
      severity: warning
    annotations:
      summary: Service is slow.
      description: 'p99 latency of Service {{ $labels.namespace }}/{{ $labels.service }} is {{ $value | humanizeDuration }} (threshold ${service_p99_seconds}s).'
"#;

/// The built-in rules with `overrides` (`name=value`) applied to their parameters.
pub fn builtin(overrides: &[(String, String)]) -> Result<Vec<Group>, String> {
    let mut values: BTreeMap<&str, String> =
        PARAMS.iter().map(|(k, v, _)| (*k, v.to_string())).collect();
    for (k, v) in overrides {
        let Some(slot) = values.get_mut(k.as_str()) else {
            let names: Vec<&str> = PARAMS.iter().map(|p| p.0).collect();
            return Err(format!(
                "--alert-param {k}: no such parameter (known: {})",
                names.join(", ")
            ));
        };
        let is_duration = PARAMS
            .iter()
            .any(|(n, d, _)| *n == k && d.ends_with(['s', 'm', 'h']));
        if is_duration {
            duration(v).map_err(|e| format!("--alert-param {k}: {e}"))?;
        } else if !v.parse::<f64>().is_ok_and(|f| f.is_finite() && f >= 0.0) {
            return Err(format!("--alert-param {k}: {v:?} is not a number >= 0"));
        }
        *slot = v.trim().to_string();
    }
    let mut text = BUILTIN.to_string();
    for (k, v) in &values {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    parse_file("<built-in>", &text)
}

/// A label or annotation template: text with `{{ ... }}` actions.
#[derive(Clone, Debug)]
pub struct Template(Vec<Piece>);

#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Action { arg: Arg, funcs: Vec<Func> },
}

#[derive(Clone, Debug)]
enum Arg {
    Value,
    Label(String),
    Str(String),
}

#[derive(Clone, Debug)]
enum Func {
    Humanize,
    Humanize1024,
    HumanizePercentage,
    HumanizeDuration,
    ToUpper,
    ToLower,
    Printf(String),
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            let mut inner_start = open + 2;
            if rest[inner_start..].starts_with('-') {
                text = text.trim_end();
                inner_start += 1;
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(text.to_string()));
            }
            let close = rest[inner_start..]
                .find("}}")
                .ok_or_else(|| format!("template {s:?}: unclosed {{{{"))?
                + inner_start;
            let mut inner = &rest[inner_start..close];
            let mut after = close + 2;
            if let Some(i) = inner.strip_suffix('-') {
                inner = i;
                let skipped = rest[after..].len() - rest[after..].trim_start().len();
                after += skipped;
            }
            pieces.push(parse_action(inner.trim()).map_err(|e| format!("template {s:?}: {e}"))?);
            rest = &rest[after..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    /// The template with `labels` and `value` filled in.
    pub fn expand(&self, labels: &[(String, String)], value: f64) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Action { arg, funcs } => {
                    let mut v = match arg {
                        Arg::Value => Val::Num(value),
                        Arg::Label(l) => Val::Str(crate::store::label(labels, l).to_string()),
                        Arg::Str(s) => Val::Str(s.clone()),
                    };
                    for f in funcs {
                        v = f.apply(v);
                    }
                    out.push_str(&v.text());
                }
            }
        }
        out
    }
}

enum Val {
    Num(f64),
    Str(String),
}

impl Val {
    fn num(&self) -> f64 {
        match self {
            Val::Num(n) => *n,
            Val::Str(s) => s.trim().parse().unwrap_or(f64::NAN),
        }
    }

    fn text(&self) -> String {
        match self {
            Val::Num(n) => go_float(*n),
            Val::Str(s) => s.clone(),
        }
    }
}

/// A float as Go's `%v` prints it (what `{{ $value }}` gives in Prometheus).
fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v != 0.0 && (v.abs() >= 1e21 || v.abs() < 1e-4) {
        let s = format!("{v:e}");
        // Go writes e+21 / e-05.
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        format!("{v}")
    }
}

impl Func {
    fn apply(&self, v: Val) -> Val {
        match self {
            Func::Humanize => Val::Str(humanize(
                v.num(),
                1000.0,
                &["k", "M", "G", "T", "P", "E", "Z", "Y"],
                &["m", "u", "n", "p", "f", "a", "z", "y"],
            )),
            Func::Humanize1024 => Val::Str(humanize(
                v.num().max(0.0),
                1024.0,
                &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"],
                &[],
            )),
            Func::HumanizePercentage => Val::Str(format!("{}%", sig4(v.num() * 100.0))),
            Func::HumanizeDuration => Val::Str(humanize_duration(v.num())),
            Func::ToUpper => Val::Str(v.text().to_uppercase()),
            Func::ToLower => Val::Str(v.text().to_lowercase()),
            Func::Printf(fmt) => Val::Str(printf(fmt, &v)),
        }
    }
}

/// Go's `%.4g`.
fn sig4(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_float(v);
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..4).contains(&exp) {
        let s = format!("{:.3e}", v);
        return match s.split_once('e') {
            Some((m, e)) => {
                let m = m.trim_end_matches('0').trim_end_matches('.');
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        };
    }
    let decimals = (3 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn humanize(v: f64, base: f64, big: &[&str], small: &[&str]) -> String {
    if v == 0.0 || !v.is_finite() {
        return sig4(v);
    }
    let mut x = v;
    if x.abs() >= 1.0 {
        let mut prefix = "";
        for p in big {
            if x.abs() < base {
                break;
            }
            prefix = p;
            x /= base;
        }
        return format!("{}{prefix}", sig4(x));
    }
    let mut prefix = "";
    for p in small {
        if x.abs() >= 1.0 {
            break;
        }
        prefix = p;
        x *= base;
    }
    format!("{}{prefix}", sig4(x))
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_float(v);
    }
    if v.abs() < 1.0 {
        return humanize(v, 1000.0, &[], &["m", "u", "n", "p", "f", "a", "z", "y"]) + "s";
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let secs = v.abs();
    let days = (secs / 86400.0) as u64;
    let hours = (secs / 3600.0) as u64 % 24;
    let mins = (secs / 60.0) as u64 % 60;
    let s = secs % 60.0;
    let mut out = sign.to_string();
    if days > 0 {
        out.push_str(&format!("{days}d "));
    }
    if hours > 0 {
        out.push_str(&format!("{hours}h "));
    }
    if mins > 0 {
        out.push_str(&format!("{mins}m "));
    }
    out.push_str(&format!("{}s", sig4(s)));
    out
}

/// `printf` with one argument: `%v %s %d %f %.Nf %e %g %%`.
fn printf(fmt: &str, v: &Val) -> String {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut prec: Option<usize> = None;
        if it.peek() == Some(&'.') {
            it.next();
            let mut n = String::new();
            while let Some(d) = it.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                it.next();
            }
            prec = n.parse().ok();
        }
        match it.next() {
            Some('%') => out.push('%'),
            Some('v') | Some('s') => out.push_str(&v.text()),
            Some('d') => out.push_str(&format!("{}", v.num() as i64)),
            Some('f') => out.push_str(&format!("{:.*}", prec.unwrap_or(6), v.num())),
            Some('e') => out.push_str(&format!("{:.*e}", prec.unwrap_or(6), v.num())),
            Some('g') => out.push_str(&go_float(v.num())),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn parse_action(s: &str) -> Result<Piece, String> {
    let mut stages = split_pipes(s);
    if stages.is_empty() || stages[0].trim().is_empty() {
        return Err("empty {{ }}".into());
    }
    let first = stages.remove(0);
    let words = words(&first)?;
    let mut funcs = Vec::new();
    // `printf "fmt" ARG` or `humanize ARG` written as a call.
    let arg = if words.len() >= 2 && !words[0].starts_with(['$', '.', '"']) {
        let arg = parse_arg(words.last().map(String::as_str).unwrap_or(""))?;
        funcs.push(parse_func(&words[..words.len() - 1])?);
        arg
    } else if words.len() == 1 {
        parse_arg(&words[0])?
    } else {
        return Err(format!("cannot read {s:?}"));
    };
    for st in stages {
        funcs.push(parse_func(&words_of(&st)?)?);
    }
    Ok(Piece::Action { arg, funcs })
}

fn words_of(s: &str) -> Result<Vec<String>, String> {
    words(s)
}

fn split_pipes(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '|' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut it = s.trim().chars().peekable();
    while let Some(&c) = it.peek() {
        if c.is_whitespace() {
            it.next();
        } else if c == '"' {
            it.next();
            let mut w = String::from("\"");
            let mut closed = false;
            while let Some(c) = it.next() {
                match c {
                    '\\' => match it.next() {
                        Some('n') => w.push('\n'),
                        Some(x) => w.push(x),
                        None => {}
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => w.push(c),
                }
            }
            if !closed {
                return Err("unterminated string".into());
            }
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                it.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn parse_arg(w: &str) -> Result<Arg, String> {
    if w == "$value" || w == ".Value" {
        return Ok(Arg::Value);
    }
    if let Some(l) = w
        .strip_prefix("$labels.")
        .or_else(|| w.strip_prefix(".Labels."))
    {
        if is_label_name(l) {
            return Ok(Arg::Label(l.to_string()));
        }
        return Err(format!("{l:?} is not a label name"));
    }
    if let Some(s) = w.strip_prefix('"') {
        return Ok(Arg::Str(s.to_string()));
    }
    Err(format!(
        "unknown {w:?} (supported: $value, $labels.NAME, \"text\")"
    ))
}

fn parse_func(words: &[String]) -> Result<Func, String> {
    let name = words.first().map(String::as_str).unwrap_or("");
    let arity = |n: usize| -> Result<(), String> {
        if words.len() == n {
            Ok(())
        } else {
            Err(format!("{name}: wrong number of arguments"))
        }
    };
    Ok(match name {
        "humanize" => {
            arity(1)?;
            Func::Humanize
        }
        "humanize1024" => {
            arity(1)?;
            Func::Humanize1024
        }
        "humanizePercentage" => {
            arity(1)?;
            Func::HumanizePercentage
        }
        "humanizeDuration" => {
            arity(1)?;
            Func::HumanizeDuration
        }
        "toUpper" => {
            arity(1)?;
            Func::ToUpper
        }
        "toLower" => {
            arity(1)?;
            Func::ToLower
        }
        "printf" => {
            arity(2)?;
            match words[1].strip_prefix('"') {
                Some(f) => Func::Printf(f.to_string()),
                None => return Err("printf: the format must be a \"string\"".into()),
            }
        }
        other => {
            return Err(format!(
                "unknown function {other:?} (supported: humanize, humanize1024, humanizePercentage, humanizeDuration, printf, toUpper, toLower)"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<(String, String)> {
        vec![
            ("namespace".into(), "shop".into()),
            ("pod".into(), "web-1".into()),
        ]
    }

    #[test]
    fn templates() {
        let t = |s: &str, v: f64| Template::parse(s).unwrap().expand(&labels(), v);
        assert_eq!(
            t("Pod {{ $labels.namespace }}/{{$labels.pod}} is down", 1.0),
            "Pod shop/web-1 is down"
        );
        assert_eq!(t("{{ $value }}", 3.0), "3");
        assert_eq!(t("{{ $value }}", 0.25), "0.25");
        assert_eq!(t("{{ $value | humanize }}", 1234567.0), "1.235M");
        assert_eq!(t("{{ humanize $value }}", 0.0123), "12.3m");
        assert_eq!(t("{{ $value | humanizePercentage }}", 0.1234), "12.34%");
        assert_eq!(t("{{ $value | humanizeDuration }}", 3725.0), "1h 2m 5s");
        assert_eq!(t("{{ $value | humanize1024 }}", 2048.0), "2ki");
        assert_eq!(t(r#"{{ printf "%.2f" $value }}"#, 1.0 / 3.0), "0.33");
        assert_eq!(t(r#"{{ $value | printf "%.1f" }} s"#, 2.26), "2.3 s");
        assert_eq!(t("{{ $labels.missing }}x", 0.0), "x");
        assert_eq!(t("a {{- $labels.pod -}} b", 0.0), "aweb-1b");
        assert!(Template::parse("{{ $labels.pod ").is_err());
        assert!(Template::parse("{{ .Foo }}").is_err());
        assert!(Template::parse("{{ $value | nosuch }}").is_err());
    }

    #[test]
    fn rule_files_are_checked() {
        let ok = r#"
groups:
- name: g
  interval: 10s
  rules:
  - alert: High
    expr: up == 0
    for: 1m
    labels: {severity: page}
    annotations: {summary: "{{ $labels.job }} down"}
  - record: job:up:sum
    expr: sum by (job) (up)
"#;
        let g = parse_file("r.yaml", ok).unwrap();
        assert_eq!(g[0].rules.len(), 2);
        assert_eq!(g[0].interval, Some(Duration::from_secs(10)));
        let bad = |text: &str| parse_file("r.yaml", text).unwrap_err();
        let e = bad("groups:\n- name: g\n  rules:\n  - alert: Broken\n    expr: sum(rate(x[5m])\n");
        assert!(
            e.contains("r.yaml: group \"g\": rule 1 (alert \"Broken\"): expr:"),
            "{e}"
        );
        let e = bad("groups:\n- name: g\n  rules:\n  - alert: Slow\n    expr: up\n    for: soon\n");
        assert!(e.contains("alert \"Slow\"") && e.contains("for:"), "{e}");
        let e = bad(
            "groups:\n- name: g\n  rules:\n  - alert: T\n    expr: up\n    annotations: {a: \"{{ $nope }}\"}\n",
        );
        assert!(
            e.contains("alert \"T\"") && e.contains("annotations.a"),
            "{e}"
        );
        let e = bad("groups:\n- name: g\n  rules:\n  - record: a-b\n    expr: up\n");
        assert!(e.contains("record \"a-b\""), "{e}");
        let e =
            bad("groups:\n- name: g\n  rules:\n  - alert: X\n    expr: up\n    severity: page\n");
        assert!(e.contains("r.yaml") && e.contains("severity"), "{e}");
    }

    #[test]
    fn builtin_rules_and_parameters() {
        let g = builtin(&[]).unwrap();
        let names: Vec<&str> = g[0].rules.iter().map(|r| r.name.as_str()).collect();
        for n in [
            "KubePodCrashLooping",
            "KubeDeploymentRolloutStuck",
            "KubeDeploymentReplicasUnavailable",
            "KubeNodeNotReady",
            "ServiceHighErrorRate",
            "ServiceHighLatency",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let g = builtin(&[("crashloop_for".into(), "0s".into())]).unwrap();
        match &g[0].rules[0].kind {
            Kind::Alert { for_, .. } => assert_eq!(*for_, Duration::ZERO),
            Kind::Record => panic!("alert expected"),
        }
        assert!(builtin(&[("nope".into(), "1".into())]).is_err());
        assert!(builtin(&[("service_error_ratio".into(), "lots".into())]).is_err());
        assert!(builtin(&[("crashloop_for".into(), "soon".into())]).is_err());
    }
}
