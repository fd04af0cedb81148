//! PromQL evaluation over the store, on the AST of the `promql-parser` crate, following
//! Prometheus' semantics: instant selectors look back 5 minutes and skip series whose last
//! sample is a staleness marker; range selectors take the samples in `(t - range, t]`;
//! `rate`/`increase` extrapolate as Prometheus' `extrapolatedRate`; `histogram_quantile`
//! interpolates linearly inside the bucket as Prometheus' `bucketQuantile`; binary
//! operators match vectors on all labels but the name (or `on`/`ignoring`, with
//! `group_left`/`group_right`).
//!
//! A range query evaluates the expression at every step; each selector is read from the
//! store once for the whole range and sliced per step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::Matcher;
use promql_parser::parser::{
    self, AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset,
    VectorMatchCardinality, VectorSelector,
};

use crate::store::{Labels, SeriesData, Store, is_stale, label, labels_from};

pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(300);

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<SeriesData>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

#[derive(Debug)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type R<T> = Result<T, EvalError>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(EvalError(msg.into()))
}

fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

/// The matcher sets of a selector (several when it uses `or` between matchers).
pub fn selector_sets(vs: &VectorSelector) -> Vec<Vec<Matcher>> {
    let name = vs
        .name
        .as_ref()
        .map(|n| Matcher::new(promql_parser::label::MatchOp::Equal, "__name__", n));
    let mut sets = if vs.matchers.or_matchers.is_empty() {
        vec![vs.matchers.matchers.clone()]
    } else {
        vs.matchers.or_matchers.clone()
    };
    for s in &mut sets {
        s.extend(name.clone());
    }
    sets
}

pub struct Evaluator<'a> {
    store: &'a Store,
    start: i64,
    end: i64,
    lookback: i64,
    cache: HashMap<String, Arc<Vec<SeriesData>>>,
    memo: HashMap<(usize, usize), (Labels, Labels)>,
    /// Per fetched selector (by address; `cache` keeps it alive), where each series'
    /// window began at the previous step.
    cursors: HashMap<usize, Vec<usize>>,
}

impl<'a> Evaluator<'a> {
    /// An evaluator for steps between `start` and `end` (ms; equal for an instant query).
    pub fn new(store: &'a Store, start: i64, end: i64, lookback: Duration) -> Self {
        Evaluator {
            store,
            start,
            end,
            lookback: lookback.as_millis() as i64,
            cache: HashMap::new(),
            memo: HashMap::new(),
            cursors: HashMap::new(),
        }
    }

    /// Series of a selector with samples in `[start - before, end]`, adjusted by its
    /// offset and `@`, read once per query.
    fn fetch(&mut self, vs: &VectorSelector, before: i64) -> Arc<Vec<SeriesData>> {
        let key = format!("{vs}\u{0}{before}");
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let off = offset_ms(&vs.offset);
        let (lo, hi) = match &vs.at {
            Some(at) => {
                let t = self.at_time(at);
                (t - off - before, t - off)
            }
            None => (self.start - off - before, self.end - off),
        };
        let mut out: Vec<SeriesData> = Vec::new();
        for set in selector_sets(vs) {
            for s in self.store.select(&set, lo, hi) {
                if !out.iter().any(|o| o.labels == s.labels) {
                    out.push(s);
                }
            }
        }
        let v = Arc::new(out);
        self.cache.insert(key, v.clone());
        v
    }

    fn at_time(&self, at: &AtModifier) -> i64 {
        match at {
            AtModifier::Start => self.start,
            AtModifier::End => self.end,
            AtModifier::At(t) => ms(*t),
        }
    }

    /// The time a selector reads at for evaluation time `t`.
    fn sel_time(&self, vs: &VectorSelector, t: i64) -> i64 {
        let base = vs.at.as_ref().map(|a| self.at_time(a)).unwrap_or(t);
        base - offset_ms(&vs.offset)
    }

    fn instant_selector(&mut self, vs: &VectorSelector, t: i64) -> Vec<Sample> {
        let data = self.fetch(vs, self.lookback);
        let at = self.sel_time(vs, t);
        let mut out = Vec::new();
        for s in data.iter() {
            let i = s.samples.partition_point(|(ts, _)| *ts <= at);
            if i == 0 {
                continue;
            }
            let (ts, v) = s.samples[i - 1];
            if ts <= at - self.lookback || is_stale(v) {
                continue;
            }
            out.push(Sample {
                labels: s.labels.clone(),
                value: v,
            });
        }
        out
    }

    fn range_selector(&mut self, vs: &VectorSelector, range: i64, t: i64) -> Vec<SeriesData> {
        let data = self.fetch(vs, range);
        let at = self.sel_time(vs, t);
        // Steps move forward: each series' window starts where the previous step's did, so
        // finding it touches a few neighbouring samples instead of a binary search over all.
        let cursors = self
            .cursors
            .entry(Arc::as_ptr(&data) as usize)
            .or_insert_with(|| vec![0; data.len()]);
        let mut out = Vec::new();
        for (s, cur) in data.iter().zip(cursors.iter_mut()) {
            let p = &s.samples;
            let mut lo = *cur;
            if lo > p.len() || (lo > 0 && p[lo - 1].0 > at - range) {
                lo = p.partition_point(|(ts, _)| *ts <= at - range);
            } else {
                while lo < p.len() && p[lo].0 <= at - range {
                    lo += 1;
                }
            }
            *cur = lo;
            let mut hi = lo;
            while hi < p.len() && p[hi].0 <= at {
                hi += 1;
            }
            let samples: Vec<(i64, f64)> = s.samples[lo..hi]
                .iter()
                .filter(|(_, v)| !is_stale(*v))
                .copied()
                .collect();
            if !samples.is_empty() {
                out.push(SeriesData {
                    labels: s.labels.clone(),
                    samples,
                });
            }
        }
        out
    }

    /// Evaluates `expr` at time `t` (ms).
    pub fn eval(&mut self, expr: &Expr, t: i64) -> R<Value> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: drop_name(&s.labels),
                            value: -s.value,
                        })
                        .collect(),
                )),
                other => err(format!("unary minus on {}", other.type_name())),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant_selector(vs, t))),
            Expr::MatrixSelector(m) => {
                let range = m.range.as_millis() as i64;
                Ok(Value::Matrix(self.range_selector(&m.vs, range, t)))
            }
            Expr::Subquery(sq) => {
                let range = sq.range.as_millis() as i64;
                let step = sq
                    .step
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(60_000)
                    .max(1);
                let base =
                    sq.at.as_ref().map(|a| self.at_time(a)).unwrap_or(t) - offset_ms(&sq.offset);
                let mut series: Vec<SeriesData> = Vec::new();
                let first = (base - range).div_euclid(step) * step + step;
                let mut ts = first;
                while ts <= base {
                    if let Value::Vector(v) = self.eval(&sq.expr, ts)? {
                        for s in v {
                            match series.iter_mut().find(|x| x.labels == s.labels) {
                                Some(x) => x.samples.push((ts, s.value)),
                                None => series.push(SeriesData {
                                    labels: s.labels,
                                    samples: vec![(ts, s.value)],
                                }),
                            }
                        }
                    } else {
                        return err("subquery is only allowed on instant vector");
                    }
                    ts += step;
                }
                Ok(Value::Matrix(series))
            }
            Expr::Call(c) => self.call(c, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Extension(_) => err("extensions are not supported"),
        }
    }

    /// `f(labels)`, computed once per label set and transformation `id` in this query (a
    /// range query meets the same series at every step).
    fn memo(&mut self, l: &Labels, id: usize, f: impl FnOnce(&Labels) -> Labels) -> Labels {
        let k = (Arc::as_ptr(l) as *const u8 as usize, id);
        if let Some((_, r)) = self.memo.get(&k) {
            return r.clone();
        }
        let r = f(l);
        // The source is kept so that its address is not reused while the memo lives.
        self.memo.insert(k, (l.clone(), r.clone()));
        r
    }

    fn drop_names(&mut self, func: &str, mut v: Vec<Sample>) -> Vec<Sample> {
        if func != "last_over_time" {
            for s in &mut v {
                s.labels = self.memo(&s.labels, 0, drop_name);
            }
        }
        v
    }

    fn vector(&mut self, e: &Expr, t: i64) -> R<Vec<Sample>> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            other => err(format!(
                "expected instant vector, got {}",
                other.type_name()
            )),
        }
    }

    fn scalar(&mut self, e: &Expr, t: i64) -> R<f64> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            other => err(format!("expected scalar, got {}", other.type_name())),
        }
    }

    fn string(&mut self, e: &Expr, t: i64) -> R<String> {
        match self.eval(e, t)? {
            Value::String(v) => Ok(v),
            other => err(format!("expected string, got {}", other.type_name())),
        }
    }

    fn call(&mut self, c: &Call, t: i64) -> R<Value> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> R<&Expr> {
            args.get(i)
                .map(|b| b.as_ref())
                .ok_or_else(|| EvalError(format!("{name}: missing argument {}", i + 1)))
        };
        match name {
            "rate" | "increase" | "delta" | "irate" | "idelta" | "avg_over_time"
            | "sum_over_time" | "min_over_time" | "max_over_time" | "count_over_time"
            | "last_over_time" | "changes" | "resets" | "deriv" | "stddev_over_time"
            | "present_over_time" => {
                let Expr::MatrixSelector(m) = unparen(arg(0)?) else {
                    // A subquery also yields a matrix.
                    let window = match unparen(arg(0)?) {
                        Expr::Subquery(sq) => {
                            let range = sq.range.as_millis() as i64;
                            let at = sq.at.as_ref().map(|a| self.at_time(a)).unwrap_or(t)
                                - offset_ms(&sq.offset);
                            Some((at - range, at, range))
                        }
                        _ => None,
                    };
                    let Value::Matrix(series) = self.eval(arg(0)?, t)? else {
                        return err(format!("{name}: expected range vector"));
                    };
                    let v = over_time(name, &series, window, t);
                    return Ok(Value::Vector(self.drop_names(name, v)));
                };
                let range = m.range.as_millis() as i64;
                let series = self.range_selector(&m.vs, range, t);
                let at = self.sel_time(&m.vs, t);
                let v = over_time(name, &series, Some((at - range, at, range)), t);
                Ok(Value::Vector(self.drop_names(name, v)))
            }
            "quantile_over_time" => {
                let q = self.scalar(arg(0)?, t)?;
                let Value::Matrix(series) = self.eval(arg(1)?, t)? else {
                    return err("quantile_over_time: expected range vector");
                };
                Ok(Value::Vector(
                    series
                        .iter()
                        .map(|s| Sample {
                            labels: drop_name(&s.labels),
                            value: quantile(q, s.samples.iter().map(|x| x.1).collect()),
                        })
                        .collect(),
                ))
            }
            "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" => {
                let v = self.vector(arg(0)?, t)?;
                let f: fn(f64) -> f64 = match name {
                    "abs" => f64::abs,
                    "ceil" => f64::ceil,
                    "floor" => f64::floor,
                    "exp" => f64::exp,
                    "ln" => f64::ln,
                    "log2" => f64::log2,
                    "log10" => f64::log10,
                    "sqrt" => f64::sqrt,
                    _ => |x: f64| {
                        if x == 0.0 || x.is_nan() {
                            x
                        } else {
                            x.signum()
                        }
                    },
                };
                Ok(map_values(v, f))
            }
            "round" => {
                let v = self.vector(arg(0)?, t)?;
                let to = match args.get(1) {
                    Some(e) => self.scalar(e, t)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                Ok(map_values(v, move |x| (x * inv + 0.5).floor() / inv))
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let v = self.vector(arg(0)?, t)?;
                let a = self.scalar(arg(1)?, t)?;
                let (lo, hi) = match name {
                    "clamp" => (a, self.scalar(arg(2)?, t)?),
                    "clamp_min" => (a, f64::INFINITY),
                    _ => (f64::NEG_INFINITY, a),
                };
                if lo > hi {
                    return Ok(Value::Vector(vec![]));
                }
                Ok(map_values(v, move |x| x.max(lo).min(hi)))
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "timestamp" => {
                // The time of the sample each element came from.
                let e = unparen(arg(0)?);
                let v = self.vector(e, t)?;
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: drop_name(&s.labels),
                            value: t as f64 / 1000.0,
                        })
                        .collect(),
                ))
            }
            "vector" => {
                let v = self.scalar(arg(0)?, t)?;
                Ok(Value::Vector(vec![Sample {
                    labels: Labels::from(vec![]),
                    value: v,
                }]))
            }
            "scalar" => {
                let v = self.vector(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 {
                    v[0].value
                } else {
                    f64::NAN
                }))
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?, t)?;
                let v = self.vector(arg(1)?, t)?;
                Ok(Value::Vector(histogram_quantile(q, v)))
            }
            "label_replace" => {
                let v = self.vector(arg(0)?, t)?;
                let dst = self.string(arg(1)?, t)?;
                let repl = self.string(arg(2)?, t)?;
                let src = self.string(arg(3)?, t)?;
                let re = self.string(arg(4)?, t)?;
                let re = regex::Regex::new(&format!("^(?s:{re})$"))
                    .map_err(|e| EvalError(format!("invalid regular expression: {e}")))?;
                let mut out = Vec::with_capacity(v.len());
                for s in v {
                    let val = label(&s.labels, &src).to_string();
                    let labels = match re.captures(&val) {
                        Some(caps) => {
                            let mut res = String::new();
                            caps.expand(&go_template(&repl), &mut res);
                            set_label(&s.labels, &dst, &res)
                        }
                        None => s.labels,
                    };
                    out.push(Sample {
                        labels,
                        value: s.value,
                    });
                }
                Ok(Value::Vector(out))
            }
            "label_join" => {
                let v = self.vector(arg(0)?, t)?;
                let dst = self.string(arg(1)?, t)?;
                let sep = self.string(arg(2)?, t)?;
                let mut srcs = Vec::new();
                for e in &args[3..] {
                    srcs.push(self.string(e, t)?);
                }
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| {
                            let joined: Vec<&str> =
                                srcs.iter().map(|n| label(&s.labels, n)).collect();
                            Sample {
                                labels: set_label(&s.labels, &dst, &joined.join(&sep)),
                                value: s.value,
                            }
                        })
                        .collect(),
                ))
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector(arg(0)?, t)?;
                v.sort_by(|a, b| a.value.total_cmp(&b.value));
                if name == "sort_desc" {
                    v.reverse();
                }
                Ok(Value::Vector(v))
            }
            "absent" => {
                let v = self.vector(arg(0)?, t)?;
                if !v.is_empty() {
                    return Ok(Value::Vector(vec![]));
                }
                let mut labels = Vec::new();
                if let Expr::VectorSelector(vs) = unparen(arg(0)?) {
                    for m in &vs.matchers.matchers {
                        if let promql_parser::label::MatchOp::Equal = m.op
                            && m.name != "__name__"
                        {
                            labels.push((m.name.clone(), m.value.clone()));
                        }
                    }
                }
                Ok(Value::Vector(vec![Sample {
                    labels: labels_from(labels),
                    value: 1.0,
                }]))
            }
            other => err(format!("function {other}() is not supported")),
        }
    }

    fn aggregate(&mut self, a: &AggregateExpr, t: i64) -> R<Value> {
        let op = a.op.to_string();
        let param = match &a.param {
            Some(p) if op != "count_values" => Some(self.scalar(p, t)?),
            _ => None,
        };
        // count_values("label", v): per group, one series per distinct value, named by it.
        let count_label = match &a.param {
            Some(p) if op == "count_values" => {
                let name = self.string(p, t)?;
                if !is_label_name(&name) {
                    return err(format!("invalid label name {name:?}"));
                }
                Some(name)
            }
            _ => None,
        };
        let v = self.vector(&a.expr, t)?;
        let id = a as *const AggregateExpr as usize;
        let key = |l: &Labels| -> Labels {
            match &a.modifier {
                Some(LabelModifier::Include(names)) => labels_from(
                    l.iter()
                        .filter(|(n, _)| names.labels.contains(n))
                        .cloned()
                        .collect(),
                ),
                Some(LabelModifier::Exclude(names)) => labels_from(
                    l.iter()
                        .filter(|(n, _)| n != "__name__" && !names.labels.contains(n))
                        .cloned()
                        .collect(),
                ),
                None => Labels::from(vec![]),
            }
        };
        let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        for s in v {
            let k = self.memo(&s.labels, id, key);
            match index.get(&k) {
                Some(i) => groups[*i].1.push(s),
                None => {
                    index.insert(k.clone(), groups.len());
                    groups.push((k, vec![s]));
                }
            }
        }
        let mut out = Vec::new();
        if let Some(name) = count_label {
            for (k, members) in groups {
                let mut counts: Vec<(String, f64)> = Vec::new();
                for s in members {
                    let v = format_value(s.value);
                    match counts.iter_mut().find(|(x, _)| *x == v) {
                        Some((_, n)) => *n += 1.0,
                        None => counts.push((v, 1.0)),
                    }
                }
                for (v, n) in counts {
                    let mut l: Vec<(String, String)> =
                        k.iter().filter(|(n, _)| *n != name).cloned().collect();
                    l.push((name.clone(), v));
                    out.push(Sample {
                        labels: labels_from(l),
                        value: n,
                    });
                }
            }
            return Ok(Value::Vector(out));
        }
        for (k, members) in groups {
            let vals: Vec<f64> = members.iter().map(|s| s.value).collect();
            let n = vals.len() as f64;
            let value = match op.as_str() {
                "sum" => vals.iter().sum(),
                "avg" => vals.iter().sum::<f64>() / n,
                "count" => n,
                "group" => 1.0,
                "min" => vals
                    .iter()
                    .copied()
                    .fold(f64::NAN, |m, x| if m.is_nan() || x < m { x } else { m }),
                "max" => vals
                    .iter()
                    .copied()
                    .fold(f64::NAN, |m, x| if m.is_nan() || x > m { x } else { m }),
                "stddev" | "stdvar" => {
                    let mean = vals.iter().sum::<f64>() / n;
                    let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                    if op == "stddev" { var.sqrt() } else { var }
                }
                "quantile" => quantile(param.unwrap_or(f64::NAN), vals),
                "topk" | "bottomk" => {
                    let k = param.unwrap_or(0.0).max(0.0) as usize;
                    let mut m = members;
                    m.sort_by(|a, b| b.value.total_cmp(&a.value));
                    if op == "bottomk" {
                        m.reverse();
                    }
                    out.extend(m.into_iter().take(k));
                    continue;
                }
                other => return err(format!("aggregation {other} is not supported")),
            };
            out.push(Sample { labels: k, value });
        }
        Ok(Value::Vector(out))
    }

    fn binary(&mut self, b: &BinaryExpr, t: i64) -> R<Value> {
        let op = b.op.to_string();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let comparison = b.op.is_comparison_operator();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let v = apply(&op, l, r)?;
                Ok(Value::Scalar(match (comparison, v) {
                    (true, Some(_)) => 1.0,
                    (true, None) => 0.0,
                    (false, v) => v.unwrap_or(f64::NAN),
                }))
            }
            (Value::Vector(v), Value::Scalar(s)) => {
                vector_scalar(&op, comparison, return_bool, v, s, false)
            }
            (Value::Scalar(s), Value::Vector(v)) => {
                vector_scalar(&op, comparison, return_bool, v, s, true)
            }
            (Value::Vector(l), Value::Vector(r)) => {
                self.vector_binary(b, &op, comparison, return_bool, l, r)
            }
            (l, r) => err(format!(
                "binary expression between {} and {} is not supported",
                l.type_name(),
                r.type_name()
            )),
        }
    }

    fn vector_binary(
        &mut self,
        b: &BinaryExpr,
        op: &str,
        comparison: bool,
        return_bool: bool,
        lhs: Vec<Sample>,
        rhs: Vec<Sample>,
    ) -> R<Value> {
        let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
        let card = b
            .modifier
            .as_ref()
            .map(|m| m.card.clone())
            .unwrap_or(VectorMatchCardinality::OneToOne);
        let sig = |l: &Labels| -> Labels {
            match &matching {
                Some(LabelModifier::Include(on)) => labels_from(
                    l.iter()
                        .filter(|(n, _)| on.labels.contains(n))
                        .cloned()
                        .collect(),
                ),
                Some(LabelModifier::Exclude(ign)) => labels_from(
                    l.iter()
                        .filter(|(n, _)| n != "__name__" && !ign.labels.contains(n))
                        .cloned()
                        .collect(),
                ),
                None => drop_name(l),
            }
        };
        match op {
            "and" | "unless" => {
                let rs: std::collections::HashSet<Labels> =
                    rhs.iter().map(|s| sig(&s.labels)).collect();
                let keep = op == "and";
                return Ok(Value::Vector(
                    lhs.into_iter()
                        .filter(|s| rs.contains(&sig(&s.labels)) == keep)
                        .collect(),
                ));
            }
            "or" => {
                let ls: std::collections::HashSet<Labels> =
                    lhs.iter().map(|s| sig(&s.labels)).collect();
                let mut out = lhs;
                out.extend(rhs.into_iter().filter(|s| !ls.contains(&sig(&s.labels))));
                return Ok(Value::Vector(out));
            }
            _ => {}
        }
        // The "one" side is indexed by signature; group_right swaps the roles.
        let (many, one, swapped, include) = match &card {
            VectorMatchCardinality::OneToMany(inc) => (rhs, lhs, true, inc.labels.clone()),
            VectorMatchCardinality::ManyToOne(inc) => (lhs, rhs, false, inc.labels.clone()),
            _ => (lhs, rhs, false, Vec::new()),
        };
        let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
        let mut index: HashMap<Labels, &Sample> = HashMap::new();
        for s in &one {
            if index.insert(sig(&s.labels), s).is_some() {
                return err(format!(
                    "found duplicate series for the match group {:?} on the {} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side",
                    sig(&s.labels),
                    if swapped { "left" } else { "right" }
                ));
            }
        }
        let mut seen: HashMap<Labels, ()> = HashMap::new();
        let mut out = Vec::new();
        for s in &many {
            let k = sig(&s.labels);
            let Some(o) = index.get(&k) else { continue };
            let (l, r) = if swapped {
                (o.value, s.value)
            } else {
                (s.value, o.value)
            };
            let res = apply(op, l, r)?;
            let mut labels: Labels = if one_to_one {
                match &matching {
                    Some(LabelModifier::Include(_)) => k.clone(),
                    Some(LabelModifier::Exclude(ign)) => s
                        .labels
                        .iter()
                        .filter(|(n, _)| !ign.labels.contains(n))
                        .cloned()
                        .collect(),
                    None => s.labels.clone(),
                }
            } else {
                let mut v: Vec<(String, String)> = s.labels.to_vec();
                for name in &include {
                    v.retain(|(n, _)| n != name);
                    let val = label(&o.labels, name);
                    if !val.is_empty() {
                        v.push((name.clone(), val.to_string()));
                    }
                }
                labels_from(v)
            };
            if !comparison || return_bool {
                labels = drop_name(&labels);
            }
            let value = match (comparison, return_bool, res) {
                (true, true, r) => f64::from(u8::from(r.is_some())),
                (true, false, Some(_)) => s.value,
                (true, false, None) => continue,
                (false, _, r) => r.unwrap_or(f64::NAN),
            };
            if one_to_one && seen.insert(labels.clone(), ()).is_some() {
                return err(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                );
            }
            out.push(Sample { labels, value });
        }
        Ok(Value::Vector(out))
    }
}

fn vector_scalar(
    op: &str,
    comparison: bool,
    return_bool: bool,
    v: Vec<Sample>,
    s: f64,
    scalar_left: bool,
) -> R<Value> {
    let mut out = Vec::new();
    for e in v {
        let (l, r) = if scalar_left {
            (s, e.value)
        } else {
            (e.value, s)
        };
        let res = apply(op, l, r)?;
        let labels = if comparison && !return_bool {
            e.labels
        } else {
            drop_name(&e.labels)
        };
        match (comparison, return_bool, res) {
            (true, true, r) => out.push(Sample {
                labels,
                value: f64::from(u8::from(r.is_some())),
            }),
            // A filter keeps the vector's own value.
            (true, false, Some(_)) => out.push(Sample {
                labels,
                value: e.value,
            }),
            (true, false, None) => {}
            (false, _, r) => out.push(Sample {
                labels,
                value: r.unwrap_or(f64::NAN),
            }),
        }
    }
    Ok(Value::Vector(out))
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

/// Applies an arithmetic or comparison operator; a comparison gives None when false.
fn apply(op: &str, l: f64, r: f64) -> R<Option<f64>> {
    Ok(match op {
        "+" => Some(l + r),
        "-" => Some(l - r),
        "*" => Some(l * r),
        "/" => Some(l / r),
        "%" => Some(l % r),
        "^" => Some(l.powf(r)),
        "atan2" => Some(l.atan2(r)),
        "==" => (l == r).then_some(l),
        "!=" => (l != r).then_some(l),
        ">" => (l > r).then_some(l),
        "<" => (l < r).then_some(l),
        ">=" => (l >= r).then_some(l),
        "<=" => (l <= r).then_some(l),
        other => return err(format!("operator {other} is not supported here")),
    })
}

fn drop_name(l: &Labels) -> Labels {
    if l.iter().any(|(n, _)| n == "__name__") {
        l.iter().filter(|(n, _)| n != "__name__").cloned().collect()
    } else {
        l.clone()
    }
}

fn set_label(l: &Labels, name: &str, value: &str) -> Labels {
    let mut v: Vec<(String, String)> = l.iter().filter(|(n, _)| n != name).cloned().collect();
    v.push((name.to_string(), value.to_string()));
    labels_from(v)
}

/// Go's `$1`/`${1}` templates are Rust regex's too, but a bare `$1x` means group "1x" in
/// both; nothing to translate beyond that.
fn go_template(s: &str) -> String {
    s.to_string()
}

fn map_values(v: Vec<Sample>, f: impl Fn(f64) -> f64) -> Value {
    Value::Vector(
        v.into_iter()
            .map(|s| Sample {
                labels: drop_name(&s.labels),
                value: f(s.value),
            })
            .collect(),
    )
}

/// Functions over a range: `window` is (range start, range end, range) of a selector
/// (None for a subquery's matrix).
fn over_time(
    name: &str,
    series: &[SeriesData],
    window: Option<(i64, i64, i64)>,
    _t: i64,
) -> Vec<Sample> {
    let mut out = Vec::new();
    for s in series {
        let p = &s.samples;
        let vals = || p.iter().map(|x| x.1);
        let value = match name {
            "rate" | "increase" | "delta" => {
                let Some((start, end, range)) = window else {
                    continue;
                };
                let Some(v) =
                    extrapolated_rate(p, start, end, range, name != "delta", name == "rate")
                else {
                    continue;
                };
                v
            }
            "irate" | "idelta" => {
                if p.len() < 2 {
                    continue;
                }
                let (t1, v1) = p[p.len() - 2];
                let (t2, v2) = p[p.len() - 1];
                let mut d = v2 - v1;
                if name == "irate" {
                    if v2 < v1 {
                        d = v2;
                    }
                    let dt = (t2 - t1) as f64 / 1000.0;
                    if dt == 0.0 {
                        continue;
                    }
                    d / dt
                } else {
                    d
                }
            }
            "avg_over_time" => vals().sum::<f64>() / p.len() as f64,
            "sum_over_time" => vals().sum(),
            "min_over_time" => vals().fold(f64::INFINITY, f64::min),
            "max_over_time" => vals().fold(f64::NEG_INFINITY, f64::max),
            "count_over_time" => p.len() as f64,
            "present_over_time" => 1.0,
            "last_over_time" => p[p.len() - 1].1,
            "stddev_over_time" => {
                let n = p.len() as f64;
                let mean = vals().sum::<f64>() / n;
                (vals().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
            }
            "changes" => p.windows(2).filter(|w| w[0].1 != w[1].1).count() as f64,
            "resets" => p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64,
            "deriv" => {
                if p.len() < 2 {
                    continue;
                }
                // Least-squares slope, per second.
                let n = p.len() as f64;
                let t0 = p[0].0;
                let xs: Vec<f64> = p.iter().map(|x| (x.0 - t0) as f64 / 1000.0).collect();
                let (sx, sy) = (xs.iter().sum::<f64>(), vals().sum::<f64>());
                let sxy: f64 = xs.iter().zip(vals()).map(|(x, y)| x * y).sum();
                let sxx: f64 = xs.iter().map(|x| x * x).sum();
                (n * sxy - sx * sy) / (n * sxx - sx * sx)
            }
            _ => continue,
        };
        // The caller drops the name (through its memo), but for last_over_time.
        out.push(Sample {
            labels: s.labels.clone(),
            value,
        });
    }
    out
}

/// Prometheus' `extrapolatedRate`: the increase over the samples, extrapolated to the
/// window's edges (at most half an interval beyond a sample, and not below zero for a
/// counter), per second for `rate`.
pub fn extrapolated_rate(
    p: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (first, last) = (p[0], p[p.len() - 1]);
    let mut result = last.1 - first.1;
    if is_counter {
        let mut prev = 0.0;
        for &(_, v) in p {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg = sampled / (p.len() - 1) as f64;
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg / 2.0
    };
    let mut factor = interval / sampled;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn quantile(q: f64, mut vals: Vec<f64>) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(f64::total_cmp);
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lo = rank.floor().max(0.0) as usize;
    let hi = (lo + 1).min(vals.len() - 1);
    let w = rank - rank.floor();
    vals[lo] * (1.0 - w) + vals[hi] * w
}

/// Prometheus' `histogram_quantile` over classic `_bucket` series with `le` labels.
pub fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for s in v {
        let Ok(le) = parse_le(label(&s.labels, "le")) else {
            continue;
        };
        let key: Labels = s
            .labels
            .iter()
            .filter(|(n, _)| n != "le" && n != "__name__")
            .cloned()
            .collect();
        match index.get(&key) {
            Some(i) => groups[*i].1.push((le, s.value)),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![(le, s.value)]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(labels, buckets)| Sample {
            labels,
            value: bucket_quantile(q, buckets),
        })
        .collect()
}

fn parse_le(s: &str) -> Result<f64, ()> {
    match s {
        "+Inf" | "Inf" | "inf" => Ok(f64::INFINITY),
        "" => Err(()),
        s => s.parse().map_err(|_| ()),
    }
}

fn bucket_quantile(q: f64, mut b: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    if b.last().is_none_or(|l| l.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce equal bounds, then force monotonic counts.
    let mut c: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for (le, n) in b {
        match c.last_mut() {
            Some(l) if l.0 == le => l.1 += n,
            _ => c.push((le, n)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for x in c.iter_mut() {
        if x.1 < max {
            x.1 = max;
        } else {
            max = x.1;
        }
    }
    if c.len() < 2 {
        return f64::NAN;
    }
    let total = c[c.len() - 1].1;
    if total == 0.0 || total.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * total;
    let i = c[..c.len() - 1].partition_point(|x| x.1 < rank);
    if i == c.len() - 1 {
        return c[c.len() - 2].0;
    }
    if i == 0 && c[0].0 <= 0.0 {
        return c[0].0;
    }
    let (mut start, end, mut count) = (0.0, c[i].0, c[i].1);
    if i > 0 {
        start = c[i - 1].0;
        count -= c[i - 1].1;
        rank -= c[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// Parses a query.
/// A value as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes it (count_values' labels).
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

pub fn parse(q: &str) -> R<Expr> {
    parser::parse(q).map_err(EvalError)
}

/// Evaluates an instant query at `t` (ms).
pub fn instant(store: &Store, expr: &Expr, t: i64, lookback: Duration) -> R<Value> {
    let mut ev = Evaluator::new(store, t, t, lookback);
    ev.eval(expr, t)
}

/// Evaluates a range query: one series per label set, a point per step where it had one.
pub fn range(
    store: &Store,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    lookback: Duration,
) -> R<Vec<SeriesData>> {
    let mut ev = Evaluator::new(store, start, end, lookback);
    let mut out: Vec<SeriesData> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut by_addr: HashMap<usize, usize> = HashMap::new();
    let mut t = start;
    while t <= end {
        let v = match ev.eval(expr, t)? {
            Value::Scalar(v) => vec![Sample {
                labels: Labels::from(vec![]),
                value: v,
            }],
            Value::Vector(v) => v,
            other => {
                return err(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    match other {
                        Value::Matrix(_) => "range vector",
                        _ => "string",
                    }
                ));
            }
        };
        for s in v {
            // Most steps return the very same label sets (shared, from the store or the
            // memo): found by address before by content.
            let addr = Arc::as_ptr(&s.labels) as *const u8 as usize;
            if let Some(i) = by_addr.get(&addr)
                && out[*i].labels == s.labels
            {
                out[*i].samples.push((t, s.value));
                continue;
            }
            match index.get(&s.labels) {
                Some(i) => {
                    by_addr.insert(addr, *i);
                    out[*i].samples.push((t, s.value))
                }
                None => {
                    by_addr.insert(addr, out.len());
                    index.insert(s.labels.clone(), out.len());
                    out.push(SeriesData {
                        labels: s.labels,
                        samples: vec![(t, s.value)],
                    });
                }
            }
        }
        t += step;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Retention, STALE_NAN};

    fn l(pairs: &[(&str, &str)]) -> Labels {
        labels_from(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    /// 10 minutes of 15 s scrapes ending at T: a counter growing 1/s per pod (2/s for
    /// pod b), a gauge, and a latency histogram.
    const T: i64 = 1_700_000_000_000;

    fn store() -> Store {
        let s = Store::in_memory(Retention::default());
        let mut t = T - 600_000;
        while t <= T {
            let secs = (t - (T - 600_000)) as f64 / 1000.0;
            let mut v = vec![
                (
                    l(&[("__name__", "req_total"), ("pod", "a"), ("ns", "x")]),
                    secs,
                ),
                (
                    l(&[("__name__", "req_total"), ("pod", "b"), ("ns", "x")]),
                    2.0 * secs,
                ),
                (
                    l(&[("__name__", "req_total"), ("pod", "c"), ("ns", "y")]),
                    3.0 * secs,
                ),
                (l(&[("__name__", "mem"), ("pod", "a")]), 100.0),
                (l(&[("__name__", "mem"), ("pod", "b")]), 300.0),
                (
                    l(&[("__name__", "limit"), ("pod", "a"), ("team", "t1")]),
                    1000.0,
                ),
                (
                    l(&[("__name__", "limit"), ("pod", "b"), ("team", "t2")]),
                    600.0,
                ),
            ];
            // Histogram: per second, 60% under 0.1 s, 30% in (0.1, 0.5], 10% in (0.5, 1].
            for (le, frac) in [("0.1", 0.6), ("0.5", 0.9), ("1", 1.0), ("+Inf", 1.0)] {
                v.push((
                    l(&[("__name__", "lat_bucket"), ("le", le), ("svc", "s")]),
                    10.0 * secs * frac,
                ));
            }
            s.append(t, v);
            t += 15_000;
        }
        s
    }

    fn q(s: &Store, query: &str) -> Vec<(String, f64)> {
        let e = parse(query).unwrap();
        match instant(s, &e, T, DEFAULT_LOOKBACK).unwrap() {
            Value::Vector(v) => {
                let mut out: Vec<(String, f64)> = v
                    .into_iter()
                    .map(|s| {
                        let k: Vec<String> =
                            s.labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
                        (k.join(","), s.value)
                    })
                    .collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                out
            }
            Value::Scalar(v) => vec![(String::new(), v)],
            other => panic!("unexpected {other:?}"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn count_values_groups_by_value() {
        let s = store();
        assert_eq!(
            q(&s, r#"count_values("v", mem)"#),
            vec![("v=100".to_string(), 1.0), ("v=300".to_string(), 1.0)]
        );
        assert_eq!(
            q(&s, r#"count_values by (team) ("lim", limit > 0)"#),
            vec![
                ("lim=1000,team=t1".to_string(), 1.0),
                ("lim=600,team=t2".to_string(), 1.0)
            ]
        );
        assert_eq!(
            q(&s, r#"count_values("n", req_total * 0 + 1)"#),
            vec![("n=1".to_string(), 3.0)]
        );
    }

    #[test]
    fn selectors_and_matchers() {
        let s = store();
        assert_eq!(q(&s, "req_total").len(), 3);
        assert_eq!(q(&s, r#"req_total{ns="x"}"#).len(), 2);
        assert_eq!(q(&s, r#"req_total{pod=~"a|c"}"#).len(), 2);
        assert_eq!(q(&s, r#"req_total{pod!="a",ns!~"y"}"#).len(), 1);
        assert_eq!(q(&s, r#"{__name__=~"mem|limit"}"#).len(), 4);
        // The last sample is used: 600 s into the counter.
        assert_eq!(q(&s, r#"req_total{pod="a"}"#)[0].1, 600.0);
        // Offset reads 5 minutes earlier.
        assert_eq!(q(&s, r#"req_total{pod="a"} offset 5m"#)[0].1, 300.0);
        // Nothing before the data: beyond the lookback.
        assert!(q(&s, r#"req_total offset 20m"#).is_empty());
    }

    #[test]
    fn rate_irate_increase() {
        let s = store();
        let r = q(&s, r#"rate(req_total{ns="x"}[1m])"#);
        assert_eq!(r.len(), 2);
        assert!(close(r[0].1, 1.0), "{r:?}");
        assert!(close(r[1].1, 2.0), "{r:?}");
        assert!(!r[0].0.contains("__name__"), "rate drops the metric name");
        let r = q(&s, r#"irate(req_total{pod="c"}[1m])"#);
        assert!(close(r[0].1, 3.0));
        // increase over 5m of 1/s: 300 after extrapolation.
        let r = q(&s, r#"increase(req_total{pod="a"}[5m])"#);
        assert!(close(r[0].1, 300.0), "{r:?}");
    }

    #[test]
    fn counter_reset_is_followed() {
        let s = Store::in_memory(Retention::default());
        let c = l(&[("__name__", "c_total")]);
        for (i, v) in [10.0, 20.0, 30.0, 5.0, 15.0].into_iter().enumerate() {
            s.append(T - 60_000 + i as i64 * 15_000, [(c.clone(), v)]);
        }
        // Increases 10+10+5(after reset from 30 to 5)+10 = 35 over 60 s sampled; the
        // window is 60 s back from T: extrapolated by Prometheus' rule.
        let e = parse("increase(c_total[1m])").unwrap();
        let Value::Vector(v) = instant(&s, &e, T, DEFAULT_LOOKBACK).unwrap() else {
            panic!()
        };
        let expected = extrapolated_rate(
            &[
                (T - 45_000, 20.0),
                (T - 30_000, 30.0),
                (T - 15_000, 5.0),
                (T, 15.0),
            ],
            T - 60_000,
            T,
            60_000,
            true,
            false,
        )
        .unwrap();
        assert!(close(v[0].value, expected));
        // 10 (20->30) + 5 (reset) + 10 = 25 sampled over 45 s, extrapolated to 60 s.
        assert!(close(expected, 25.0 * 60.0 / 45.0), "{expected}");
    }

    #[test]
    fn aggregations() {
        let s = store();
        let r = q(&s, "sum by (ns) (rate(req_total[1m]))");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "ns=x");
        assert!(close(r[0].1, 3.0));
        assert!(close(r[1].1, 3.0));
        let r = q(&s, "sum without (pod) (rate(req_total[1m]))");
        assert_eq!(r[0].0, "ns=x");
        assert!(close(r[0].1, 3.0));
        assert_eq!(q(&s, "count(req_total)")[0].1, 3.0);
        assert_eq!(q(&s, "max(mem)")[0].1, 300.0);
        assert_eq!(q(&s, "min(mem)")[0].1, 100.0);
        assert_eq!(q(&s, "avg(mem)")[0].1, 200.0);
        assert_eq!(q(&s, "sum(mem)")[0].1, 400.0);
        let r = q(&s, "topk(1, mem)");
        assert_eq!(r.len(), 1);
        assert!(r[0].0.contains("pod=b"));
    }

    #[test]
    fn histogram_quantiles() {
        let s = store();
        let r = q(&s, "histogram_quantile(0.5, rate(lat_bucket[1m]))");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "svc=s");
        // Rank 0.5 of 10/s falls in the first bucket (6/s up to 0.1): 0.1 * 5/6.
        assert!(close(r[0].1, 0.1 * 5.0 / 6.0), "{r:?}");
        // Rank 0.75 in (0.1, 0.5]: 0.1 + 0.4 * (7.5-6)/3.
        let r = q(
            &s,
            "histogram_quantile(0.75, sum by (le) (rate(lat_bucket[1m])))",
        );
        assert!(close(r[0].1, 0.1 + 0.4 * 1.5 / 3.0), "{r:?}");
        // In the +Inf bucket the answer is the highest finite bound.
        let r = q(&s, "histogram_quantile(1, rate(lat_bucket[1m]))");
        assert!(close(r[0].1, 1.0), "{r:?}");
    }

    #[test]
    fn arithmetic_and_comparison() {
        let s = store();
        assert_eq!(q(&s, "1 + 1")[0].1, 2.0);
        assert_eq!(q(&s, "2 ^ 3 * 2")[0].1, 16.0);
        let r = q(&s, "mem * 2");
        assert_eq!(r[0], ("pod=a".into(), 200.0));
        let r = q(&s, "mem / on(pod) limit");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], ("pod=a".into(), 0.1));
        assert_eq!(r[1], ("pod=b".into(), 0.5));
        // Default matching is on all labels: mem and limit differ by `team`.
        assert!(q(&s, "mem / limit").is_empty());
        assert_eq!(q(&s, "mem / ignoring(team) limit").len(), 2);
        let r = q(&s, "mem / on(pod) group_left(team) limit");
        assert_eq!(r[1], ("pod=b,team=t2".into(), 0.5));
        // Comparison filters and keeps the name; `bool` gives 0/1.
        let r = q(&s, "mem > 150");
        assert_eq!(r, vec![("__name__=mem,pod=b".into(), 300.0)]);
        let r = q(&s, "mem > bool 150");
        assert_eq!(r, vec![("pod=a".into(), 0.0), ("pod=b".into(), 1.0)]);
        let r = q(&s, "150 < mem");
        assert_eq!(r.len(), 1);
        // One-to-one `on` keeps only the matching labels (as Prometheus' resultMetric).
        let r = q(&s, "mem >= on(pod) (limit / 2)");
        assert_eq!(r, vec![("pod=b".into(), 300.0)]);
        let r = q(&s, "limit - ignoring(team) mem");
        assert_eq!(r, vec![("pod=a".into(), 900.0), ("pod=b".into(), 300.0)]);
        assert_eq!(q(&s, "-mem")[0].1, -100.0);
        assert_eq!(q(&s, "mem and on(pod) limit > 800").len(), 1);
        assert_eq!(q(&s, "mem unless on(pod) limit > 800").len(), 1);
        assert_eq!(q(&s, r#"mem or req_total{pod="a"}"#).len(), 3);
    }

    #[test]
    fn staleness_ends_a_series() {
        let s = Store::in_memory(Retention::default());
        let g = l(&[("__name__", "g")]);
        s.append(T - 30_000, [(g.clone(), 1.0)]);
        assert_eq!(q(&s, "g").len(), 1);
        s.append(T - 15_000, [(g.clone(), f64::from_bits(STALE_NAN))]);
        assert!(q(&s, "g").is_empty());
    }

    #[test]
    fn range_queries_step_through() {
        let s = store();
        let e = parse(r#"rate(req_total{pod="b"}[1m])"#).unwrap();
        let r = range(&s, &e, T - 300_000, T, 60_000, DEFAULT_LOOKBACK).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].samples.len(), 6);
        assert!(r[0].samples.iter().all(|(_, v)| close(*v, 2.0)));
        let e = parse("req_total[1m]").unwrap();
        assert!(range(&s, &e, T - 60_000, T, 15_000, DEFAULT_LOOKBACK).is_err());
        let e = parse("time()").unwrap();
        let r = range(&s, &e, T - 60_000, T, 30_000, DEFAULT_LOOKBACK).unwrap();
        assert_eq!(r[0].samples[2], (T, T as f64 / 1000.0));
    }

    #[test]
    fn functions() {
        let s = store();
        let r = q(&s, "max_over_time(mem[5m])");
        assert_eq!(r[0].1, 100.0);
        let r = q(&s, r#"label_replace(mem, "p", "x-$1", "pod", "(.*)")"#);
        assert!(r[0].0.contains("p=x-a"));
        assert_eq!(q(&s, "absent(nothing)")[0].1, 1.0);
        assert!(q(&s, "absent(mem)").is_empty());
        assert_eq!(q(&s, "clamp_max(mem, 150)")[1].1, 150.0);
        let r = q(&s, r#"rate(req_total{pod="a"}[5m:1m])"#);
        assert_eq!(r.len(), 1);
        assert!(close(r[0].1, 1.0), "{r:?}");
        assert!(parse("nosuchfn(mem)").is_err());
    }
}
