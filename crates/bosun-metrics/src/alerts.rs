//! The rule evaluator: each group's rules are evaluated on the store every interval, with
//! Prometheus' semantics. A recording rule appends its result as new series; an alerting
//! rule keeps one alert per output label set that goes pending, then firing after `for`,
//! and resolves when the expression no longer returns it (after `keep_firing_for`).
//! Pending and firing alerts are written as the `ALERTS` series, served at
//! `/api/v1/alerts` and `/api/v1/rules`, and handed to the `Notifier`s (Kubernetes
//! Events on the object concerned, an Alertmanager-format webhook).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::eval::{self, DEFAULT_LOOKBACK};
use crate::rules::{Group, Kind, Rule};
use crate::store::{Labels, STALE_NAN, Store, labels_from};

/// How long a resolved alert is still reported (as Prometheus keeps it for re-sends).
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Firing,
    Inactive,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Inactive => "inactive",
        }
    }
}

/// One alert: a label set of an alerting rule's result.
#[derive(Clone, Debug)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Vec<(String, String)>,
    pub state: State,
    pub value: f64,
    /// When it went pending (ms).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// Last evaluation that returned it (ms).
    pub last_seen: i64,
}

/// What happened to alerts in one evaluation, for notifiers.
#[derive(Clone, Debug)]
pub struct Change {
    pub rule: String,
    /// Alerts that began firing or resolved in this evaluation.
    pub changed: Vec<Alert>,
    /// Every alert of the rule still firing (for the webhook's group).
    pub firing: Vec<Alert>,
}

#[derive(Default)]
struct RuleState {
    alerts: HashMap<Labels, Alert>,
    health: &'static str,
    last_error: String,
    last_eval: i64,
    eval_seconds: f64,
    /// Series a recording rule wrote last time (for staleness markers).
    recorded: Vec<Labels>,
}

struct GroupState {
    group: Group,
    interval: Duration,
    rules: Vec<RuleState>,
    last_eval: i64,
    eval_seconds: f64,
}

/// Receives each evaluation's changes.
pub trait Notifier: Send + Sync {
    fn notify(&self, change: &Change);
}

pub struct Manager {
    store: Arc<Store>,
    groups: Vec<Mutex<GroupState>>,
    notifiers: Vec<Arc<dyn Notifier>>,
    /// `ALERTS` series written last evaluation, per group and rule.
    alert_series: Mutex<HashMap<(usize, usize), Vec<Labels>>>,
}

impl Manager {
    /// `default_interval` applies to groups that set none.
    pub fn new(
        store: Arc<Store>,
        groups: Vec<Group>,
        default_interval: Duration,
        notifiers: Vec<Arc<dyn Notifier>>,
    ) -> Manager {
        let groups = groups
            .into_iter()
            .map(|g| {
                Mutex::new(GroupState {
                    interval: g.interval.unwrap_or(default_interval),
                    rules: g
                        .rules
                        .iter()
                        .map(|_| RuleState {
                            health: "unknown",
                            ..Default::default()
                        })
                        .collect(),
                    group: g,
                    last_eval: 0,
                    eval_seconds: 0.0,
                })
            })
            .collect();
        Manager {
            store,
            groups,
            notifiers,
            alert_series: Mutex::default(),
        }
    }

    /// Evaluates every group on its own interval until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.groups.len() {
            let (me, sd) = (self.clone(), shutdown.clone());
            let interval = lock(&self.groups[i]).interval;
            set.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let m = me.clone();
                    let changes =
                        tokio::task::spawn_blocking(move || m.eval_group(i, now_ms())).await;
                    for c in changes.into_iter().flatten() {
                        for n in &me.notifiers {
                            n.notify(&c);
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Evaluates group `gi` at `t` (ms); returns the changes to notify.
    pub fn eval_group(&self, gi: usize, t: i64) -> Vec<Change> {
        let began = std::time::Instant::now();
        let mut g = lock(&self.groups[gi]);
        let mut changes = Vec::new();
        let mut samples: Vec<(Labels, f64)> = Vec::new();
        let GroupState { group, rules, .. } = &mut *g;
        for (ri, (rule, st)) in group.rules.iter().zip(rules.iter_mut()).enumerate() {
            let rb = std::time::Instant::now();
            let result = eval::instant(&self.store, &rule.expr, t, DEFAULT_LOOKBACK)
                .map_err(|e| e.0)
                .and_then(|v| match v {
                    eval::Value::Vector(v) => Ok(v
                        .into_iter()
                        .map(|s| (s.labels, s.value))
                        .collect::<Vec<_>>()),
                    eval::Value::Scalar(x) => Ok(vec![(Labels::from(vec![]), x)]),
                    other => Err(format!(
                        "the expression gives a {}, not a vector",
                        other.type_name()
                    )),
                })
                .and_then(|v| {
                    if group.limit > 0 && v.len() as u64 > group.limit {
                        Err(format!(
                            "{} results exceed the group's limit of {}",
                            v.len(),
                            group.limit
                        ))
                    } else {
                        Ok(v)
                    }
                });
            st.last_eval = t;
            match result {
                Err(e) => {
                    st.health = "err";
                    st.last_error = e;
                }
                Ok(v) => {
                    st.health = "ok";
                    st.last_error.clear();
                    match &rule.kind {
                        Kind::Record => {
                            let out = record(rule, v);
                            let now: Vec<Labels> = out.iter().map(|(l, _)| l.clone()).collect();
                            for old in st.recorded.drain(..) {
                                if !now.contains(&old) {
                                    samples.push((old, f64::from_bits(STALE_NAN)));
                                }
                            }
                            st.recorded = now;
                            samples.extend(out);
                        }
                        Kind::Alert {
                            for_,
                            keep_firing_for,
                            annotations,
                        } => {
                            let c =
                                step_alerts(rule, st, v, t, *for_, *keep_firing_for, annotations);
                            self.alerts_series(gi, ri, st, &mut samples);
                            if !c.changed.is_empty() {
                                changes.push(c);
                            }
                        }
                    }
                }
            }
            st.eval_seconds = rb.elapsed().as_secs_f64();
        }
        g.last_eval = t;
        g.eval_seconds = began.elapsed().as_secs_f64();
        drop(g);
        if !samples.is_empty() {
            self.store.append(t, samples);
        }
        changes
    }

    /// Appends the rule's `ALERTS{alertstate}` samples (and staleness markers for the
    /// ones that ended) to `out`.
    fn alerts_series(&self, gi: usize, ri: usize, st: &RuleState, out: &mut Vec<(Labels, f64)>) {
        let mut now = Vec::new();
        for a in st.alerts.values() {
            if a.state == State::Inactive {
                continue;
            }
            let mut l: Vec<(String, String)> = a.labels.iter().cloned().collect();
            l.push(("__name__".into(), "ALERTS".into()));
            l.push(("alertstate".into(), a.state.as_str().into()));
            let l = labels_from(l);
            out.push((l.clone(), 1.0));
            now.push(l);
        }
        let mut last = self.alert_series.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.insert((gi, ri), now.clone()).unwrap_or_default();
        for p in prev {
            if !now.contains(&p) {
                out.push((p, f64::from_bits(STALE_NAN)));
            }
        }
    }

    /// Pending and firing alerts of every rule.
    pub fn active(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        for g in &self.groups {
            let g = lock(g);
            for st in &g.rules {
                out.extend(
                    st.alerts
                        .values()
                        .filter(|a| a.state != State::Inactive)
                        .cloned(),
                );
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// `/api/v1/alerts`' data.
    pub fn alerts_json(&self) -> Value {
        json!({"alerts": self.active().iter().map(alert_json).collect::<Vec<_>>()})
    }

    /// `/api/v1/rules`' data; `kind` is "alert", "record" or "" for both.
    pub fn rules_json(&self, kind: &str) -> Value {
        let mut groups = Vec::new();
        for g in &self.groups {
            let g = lock(g);
            let mut rules = Vec::new();
            for (rule, st) in g.group.rules.iter().zip(&g.rules) {
                let labels: serde_json::Map<String, Value> = rule
                    .labels
                    .iter()
                    .map(|(k, t)| (k.clone(), json!(t.expand(&[], 0.0))))
                    .collect();
                let common = |mut v: Value| {
                    v["health"] = json!(st.health);
                    v["lastError"] = json!(st.last_error);
                    v["evaluationTime"] = json!(st.eval_seconds);
                    v["lastEvaluation"] = json!(rfc3339(st.last_eval));
                    v
                };
                match &rule.kind {
                    Kind::Alert {
                        for_,
                        keep_firing_for,
                        annotations,
                    } if kind != "record" => {
                        let mut alerts: Vec<&Alert> = st
                            .alerts
                            .values()
                            .filter(|a| a.state != State::Inactive)
                            .collect();
                        alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
                        let state = if alerts.iter().any(|a| a.state == State::Firing) {
                            "firing"
                        } else if alerts.is_empty() {
                            "inactive"
                        } else {
                            "pending"
                        };
                        let ann: serde_json::Map<String, Value> = annotations
                            .iter()
                            .map(|(k, t)| (k.clone(), json!(t.expand(&[], 0.0))))
                            .collect();
                        rules.push(common(json!({
                            "type": "alerting",
                            "name": rule.name,
                            "query": rule.query,
                            "duration": for_.as_secs_f64(),
                            "keepFiringFor": keep_firing_for.as_secs_f64(),
                            "labels": labels,
                            "annotations": ann,
                            "state": state,
                            "alerts": alerts.into_iter().map(alert_json).collect::<Vec<_>>(),
                        })));
                    }
                    Kind::Record if kind != "alert" => {
                        rules.push(common(json!({
                            "type": "recording",
                            "name": rule.name,
                            "query": rule.query,
                            "labels": labels,
                        })));
                    }
                    _ => {}
                }
            }
            if !kind.is_empty() && rules.is_empty() {
                continue;
            }
            groups.push(json!({
                "name": g.group.name,
                "file": g.group.file,
                "interval": g.interval.as_secs_f64(),
                "limit": g.group.limit,
                "rules": rules,
                "evaluationTime": g.eval_seconds,
                "lastEvaluation": rfc3339(g.last_eval),
            }));
        }
        json!({"groups": groups})
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn rfc3339(t: i64) -> String {
    if t <= 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    jiff::Timestamp::from_millisecond(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn alert_json(a: &Alert) -> Value {
    let labels: serde_json::Map<String, Value> = a
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let ann: serde_json::Map<String, Value> = a
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "labels": labels,
        "annotations": ann,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "value": format!("{:e}", a.value),
    })
}

/// A recording rule's output: the result renamed, its labels added.
fn record(rule: &Rule, v: Vec<(Labels, f64)>) -> Vec<(Labels, f64)> {
    v.into_iter()
        .map(|(l, x)| {
            let mut out: Vec<(String, String)> = l
                .iter()
                .filter(|(k, _)| k != "__name__")
                .filter(|(k, _)| !rule.labels.iter().any(|(rk, _)| rk == k))
                .cloned()
                .collect();
            for (k, t) in &rule.labels {
                out.push((k.clone(), t.expand(&l, x)));
            }
            out.push(("__name__".into(), rule.name.clone()));
            (labels_from(out), x)
        })
        .collect()
}

/// One evaluation of an alerting rule: Prometheus' state machine.
#[allow(clippy::too_many_arguments)]
fn step_alerts(
    rule: &Rule,
    st: &mut RuleState,
    result: Vec<(Labels, f64)>,
    t: i64,
    for_: Duration,
    keep_firing_for: Duration,
    annotations: &[(String, crate::rules::Template)],
) -> Change {
    let mut seen = std::collections::HashSet::new();
    for (l, value) in result {
        let base: Vec<(String, String)> =
            l.iter().filter(|(k, _)| k != "__name__").cloned().collect();
        let mut labels: Vec<(String, String)> = base
            .iter()
            .filter(|(k, _)| k != "alertname" && !rule.labels.iter().any(|(rk, _)| rk == k))
            .cloned()
            .collect();
        for (k, tpl) in &rule.labels {
            let v = tpl.expand(&base, value);
            if !v.is_empty() {
                labels.push((k.clone(), v));
            }
        }
        labels.push(("alertname".into(), rule.name.clone()));
        let labels = labels_from(labels);
        let ann: Vec<(String, String)> = annotations
            .iter()
            .map(|(k, tpl)| (k.clone(), tpl.expand(&base, value)))
            .collect();
        seen.insert(labels.clone());
        match st.alerts.get_mut(&labels) {
            Some(a) if a.state != State::Inactive => {
                a.value = value;
                a.annotations = ann;
                a.last_seen = t;
            }
            _ => {
                st.alerts.insert(
                    labels.clone(),
                    Alert {
                        labels,
                        annotations: ann,
                        state: State::Pending,
                        value,
                        active_at: t,
                        fired_at: None,
                        resolved_at: None,
                        last_seen: t,
                    },
                );
            }
        }
    }
    let mut changed = Vec::new();
    let keep = keep_firing_for.as_millis() as i64;
    st.alerts.retain(|l, a| {
        if seen.contains(l) {
            return true;
        }
        match a.state {
            State::Pending => false,
            State::Firing if keep > 0 && t - a.last_seen < keep => true,
            State::Firing => {
                a.state = State::Inactive;
                a.resolved_at = Some(t);
                changed.push(a.clone());
                true
            }
            State::Inactive => a.resolved_at.is_some_and(|r| t - r < RESOLVED_RETENTION_MS),
        }
    });
    let hold = for_.as_millis() as i64;
    for a in st.alerts.values_mut() {
        if a.state == State::Pending && t - a.active_at >= hold {
            a.state = State::Firing;
            a.fired_at = Some(t);
            changed.push(a.clone());
        }
    }
    let firing = st
        .alerts
        .values()
        .filter(|a| a.state == State::Firing)
        .cloned()
        .collect();
    Change {
        rule: rule.name.clone(),
        changed,
        firing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Retention;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        labels_from(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn pending_firing_resolved_and_recording() {
        let store = Arc::new(Store::in_memory(Retention::default()));
        let rules = r#"
groups:
- name: g
  rules:
  - alert: Down
    expr: up == 0
    for: 30s
    labels: {severity: page, where: "{{ $labels.job }}"}
    annotations: {summary: "{{ $labels.job }} is down ({{ $value }})"}
  - record: job:up:sum
    expr: sum by (job) (up)
"#;
        let groups = crate::rules::parse_file("t.yaml", rules).unwrap();
        let m = Manager::new(store.clone(), groups, Duration::from_secs(10), vec![]);
        let t0 = 1_700_000_000_000;
        let up =
            |t: i64, v: f64| store.append(t, vec![(l(&[("__name__", "up"), ("job", "api")]), v)]);
        up(t0, 0.0);
        assert!(m.eval_group(0, t0).is_empty());
        assert_eq!(m.active()[0].state, State::Pending);
        up(t0 + 20_000, 0.0);
        assert!(m.eval_group(0, t0 + 20_000).is_empty());
        up(t0 + 30_000, 0.0);
        let c = m.eval_group(0, t0 + 30_000);
        assert_eq!(c.len(), 1);
        let a = &c[0].changed[0];
        assert_eq!(a.state, State::Firing);
        assert_eq!(crate::store::label(&a.labels, "alertname"), "Down");
        assert_eq!(crate::store::label(&a.labels, "where"), "api");
        assert_eq!(a.annotations[0].1, "api is down (0)");
        // ALERTS and the recorded series are in the store.
        let q = |s: &str, t: i64| match eval::instant(
            &store,
            &eval::parse(s).unwrap(),
            t,
            DEFAULT_LOOKBACK,
        )
        .unwrap()
        {
            eval::Value::Vector(v) => v,
            _ => vec![],
        };
        assert_eq!(
            q(
                r#"ALERTS{alertname="Down",alertstate="firing"}"#,
                t0 + 30_000
            )
            .len(),
            1
        );
        assert_eq!(q(r#"job:up:sum{job="api"}"#, t0 + 30_000)[0].value, 0.0);
        let rules = m.rules_json("");
        assert_eq!(rules["groups"][0]["rules"][0]["state"], "firing");
        assert_eq!(rules["groups"][0]["rules"][1]["type"], "recording");
        // Back up: resolved, and ALERTS ends at once.
        up(t0 + 40_000, 1.0);
        let c = m.eval_group(0, t0 + 40_000);
        assert_eq!(c[0].changed[0].state, State::Inactive);
        assert!(m.active().is_empty());
        assert!(q("ALERTS", t0 + 40_000).is_empty());
    }

    #[test]
    fn pending_alert_that_vanishes_is_dropped_silently() {
        let store = Arc::new(Store::in_memory(Retention::default()));
        let groups = crate::rules::parse_file(
            "t.yaml",
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: x > 1\n    for: 1m\n",
        )
        .unwrap();
        let m = Manager::new(store.clone(), groups, Duration::from_secs(10), vec![]);
        let t0 = 1_700_000_000_000;
        store.append(t0, vec![(l(&[("__name__", "x")]), 2.0)]);
        m.eval_group(0, t0);
        store.append(
            t0 + 10_000,
            vec![(l(&[("__name__", "x")]), f64::from_bits(STALE_NAN))],
        );
        assert!(m.eval_group(0, t0 + 10_000).is_empty());
        assert!(m.active().is_empty());
    }
}
