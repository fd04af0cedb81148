use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::expr::{Value, eval};
use super::logic::*;

fn spec(v: serde_json::Value) -> RolloutSpec {
    serde_json::from_value(v).unwrap()
}

fn canary_spec() -> RolloutSpec {
    spec(json!({
        "replicas": 4,
        "strategy": {"canary": {
            "stableService": "web", "canaryService": "web-canary",
            "abortScaleDownDelaySeconds": 0,
            "steps": [
                {"setHeaderRoute": {"name": "t", "match": [{"headerName": "x-canary", "headerValue": {"exact": "yes"}}]}},
                {"setWeight": 20},
                {"pause": {"duration": "10s"}},
                {"setWeight": 50},
                {"pause": {}},
            ],
            "analysis": {"templates": [{"templateName": "errors"}], "startingStep": 1},
        }},
    }))
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

struct World {
    spec: RolloutSpec,
    status: RolloutStatus,
    rs: BTreeMap<String, RsView>,
    runs: BTreeMap<String, RunView>,
}

impl World {
    fn new(spec: RolloutSpec) -> World {
        World {
            spec,
            status: RolloutStatus::default(),
            rs: BTreeMap::new(),
            runs: BTreeMap::new(),
        }
    }
    /// What the controller's loop does for one change: a pass, the ReplicaSets reach what was
    /// asked at once, and (woken by their change) another pass, until nothing moves.
    /// Returns what all those passes did together (the last pass's status and requeue).
    fn step(&mut self, hash: &str, now: Timestamp) -> Decision {
        let mut all: Option<Decision> = None;
        for _ in 0..10 {
            let before = self.rs.clone();
            let d = self.pass(hash, now);
            let settled = self.rs == before;
            all = Some(match all {
                None => d,
                Some(mut a) => {
                    a.status = d.status;
                    a.requeue = d.requeue;
                    a.scale.extend(d.scale);
                    a.deadlines.extend(d.deadlines);
                    a.clear_deadlines.extend(d.clear_deadlines);
                    a.selectors.extend(d.selectors);
                    a.split.extend(d.split);
                    for r in d.runs {
                        if !a.runs.iter().any(|x| x.name == r.name) {
                            a.runs.push(r);
                        }
                    }
                    a.terminate.extend(d.terminate);
                    a.events.extend(d.events);
                    a
                }
            });
            if settled {
                return all.unwrap_or_default();
            }
        }
        panic!("the ReplicaSets never settled");
    }

    /// One pass; the ReplicaSets reach what was asked at once.
    fn pass(&mut self, hash: &str, now: Timestamp) -> Decision {
        let d = decide(&View {
            name: "web",
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            hash,
            rs: &self.rs,
            runs: &self.runs,
            now,
        });
        for (h, n) in &d.scale {
            let r = self.rs.entry(h.clone()).or_default();
            r.replicas = *n;
            r.ready = *n;
            r.available = *n;
        }
        for (h, at) in &d.deadlines {
            self.rs.get_mut(h).unwrap().scale_down_deadline = Some(*at);
        }
        for h in &d.clear_deadlines {
            self.rs.get_mut(h).unwrap().scale_down_deadline = None;
        }
        self.status = d.status.clone();
        d
    }
}

fn weight(d: &Decision) -> i64 {
    d.split
        .get("web")
        .cloned()
        .flatten()
        .map_or(0, |v| v["weight"].as_i64().unwrap())
}

#[test]
fn first_version_is_stable_without_steps() {
    let mut w = World::new(canary_spec());
    let d = w.step("aaa", t(0));
    assert_eq!(d.scale["aaa"], 4);
    assert_eq!(w.status.stable_rs.as_deref(), Some("aaa"));
    assert_eq!(w.status.current_step_index, Some(5));
    assert_eq!(w.status.phase.as_deref(), Some("Healthy"));
    assert_eq!(d.selectors["web"], "aaa");
    assert_eq!(d.split["web"], None);
    assert!(d.runs.is_empty());
}

#[test]
fn canary_walks_steps_pauses_and_promotes() {
    let mut w = World::new(canary_spec());
    w.step("aaa", t(0));
    let d = w.step("bbb", t(1));
    // Header route set, weight 20 reached, now pausing 10s.
    assert_eq!(w.status.current_step_index, Some(2));
    assert_eq!(weight(&d), 20);
    assert_eq!(
        d.split["web"].as_ref().unwrap()["headerRoutes"][0]["name"],
        "t"
    );
    assert_eq!(d.scale["bbb"], 1);
    assert_eq!(d.scale["aaa"], 4);
    assert_eq!(d.selectors["web"], "aaa");
    assert_eq!(d.selectors["web-canary"], "bbb");
    assert_eq!(w.status.phase.as_deref(), Some("Paused"));
    assert_eq!(d.runs[0].name, "web-bbb-bg");
    assert_eq!(d.requeue, Some(SignedDuration::from_secs(10)));
    // Still paused at 5s.
    w.runs.insert(
        "web-bbb-bg".into(),
        RunView {
            phase: "Running".into(),
            message: String::new(),
        },
    );
    w.step("bbb", t(6));
    assert_eq!(w.status.current_step_index, Some(2));
    // After 10s: weight 50, then the manual pause.
    let d = w.step("bbb", t(12));
    assert_eq!(w.status.current_step_index, Some(4));
    assert_eq!(weight(&d), 50);
    assert_eq!(d.scale["bbb"], 2);
    assert!(w.status.controller_pause);
    // Nothing moves until promoted...
    w.step("bbb", t(100));
    assert_eq!(w.status.current_step_index, Some(4));
    // ...as `kubectl argo rollouts promote` does: clear the pause conditions.
    w.status.pause_conditions.clear();
    let d = w.step("bbb", t(101));
    assert_eq!(w.status.stable_rs.as_deref(), Some("bbb"));
    assert_eq!(d.selectors["web"], "bbb");
    assert_eq!(d.split["web"], None);
    assert_eq!(d.scale["bbb"], 4);
    assert!(d.terminate.contains(&"web-bbb-bg".to_string()));
    assert!(d.events.iter().any(|e| e.1 == "RolloutCompleted"));
    // The old stable goes after the scale-down delay.
    assert_eq!(w.rs["aaa"].replicas, 4);
    w.step("bbb", t(120));
    assert_eq!(w.rs["aaa"].replicas, 4);
    w.step("bbb", t(132));
    assert_eq!(w.rs["aaa"].replicas, 0);
    assert_eq!(w.status.phase.as_deref(), Some("Healthy"));
}

#[test]
fn failed_analysis_aborts_and_retry_restarts() {
    let mut w = World::new(canary_spec());
    w.step("aaa", t(0));
    w.step("bbb", t(1));
    w.runs.insert(
        "web-bbb-bg".into(),
        RunView {
            phase: "Failed".into(),
            message: "error rate".into(),
        },
    );
    let d = w.step("bbb", t(3));
    assert!(w.status.abort);
    assert_eq!(w.status.phase.as_deref(), Some("Degraded"));
    assert!(
        w.status
            .message
            .as_deref()
            .unwrap()
            .starts_with("RolloutAborted")
    );
    assert_eq!(weight(&d), 0);
    assert_eq!(d.split["web"], None);
    assert_eq!(d.scale["bbb"], 0);
    assert_eq!(d.scale["aaa"], 4);
    assert_eq!(
        d.events.iter().filter(|e| e.1 == "RolloutAborted").count(),
        1
    );
    let c = w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RolloutAborted")
    );
    // Level-triggered: another pass changes nothing and records no second event.
    let d2 = w.step("bbb", t(4));
    assert!(d2.events.is_empty());
    assert_eq!(w.status.phase.as_deref(), Some("Degraded"));
    // Retry: abort cleared -> steps start over.
    w.status.abort = false;
    w.runs.clear();
    let d = w.step("bbb", t(5));
    assert!(!w.status.abort);
    assert_eq!(weight(&d), 20);
}

#[test]
fn manual_abort_and_new_template_restarts() {
    let mut w = World::new(canary_spec());
    w.step("aaa", t(0));
    w.step("bbb", t(1));
    w.status.abort = true;
    let d = w.step("bbb", t(2));
    assert_eq!(d.events.len(), 1);
    assert_eq!(w.status.phase.as_deref(), Some("Degraded"));
    let d = w.step("ccc", t(3));
    assert!(!w.status.abort);
    assert_eq!(weight(&d), 20);
    assert_eq!(d.selectors["web-canary"], "ccc");
    // The aborted canary is down and stays down.
    assert_eq!(w.rs["bbb"].replicas, 0);
    assert_eq!(d.scale.get("bbb").copied().unwrap_or(0), 0);
}

#[test]
fn analysis_step_waits_and_fails() {
    let mut w = World::new(spec(json!({"replicas": 2, "strategy": {"canary": {
        "stableService": "s", "canaryService": "c",
        "steps": [{"setWeight": 10}, {"analysis": {"templates": [{"templateName": "x"}]}}, {"setWeight": 60}]}}})));
    w.step("a", t(0));
    let d = w.step("b", t(1));
    assert_eq!(w.status.current_step_index, Some(1));
    assert_eq!(d.runs[0].name, "web-b-1");
    w.runs.insert(
        "web-b-1".into(),
        RunView {
            phase: "Successful".into(),
            message: String::new(),
        },
    );
    w.step("b", t(2));
    assert_eq!(w.status.current_step_index, Some(3));
    assert_eq!(w.status.stable_rs.as_deref(), Some("b"));
}

#[test]
fn blue_green_preview_then_manual_promote() {
    let mut w = World::new(spec(json!({"replicas": 2, "strategy": {"blueGreen": {
        "activeService": "act", "previewService": "pre", "autoPromotionEnabled": false,
        "scaleDownDelaySeconds": 0}}})));
    w.step("a", t(0));
    let d = w.step("b", t(1));
    assert_eq!(d.selectors["act"], "a");
    assert_eq!(d.selectors["pre"], "b");
    assert_eq!(d.scale["b"], 2);
    assert_eq!(w.status.phase.as_deref(), Some("Paused"));
    w.step("b", t(50));
    assert_eq!(w.status.stable_rs.as_deref(), Some("a"));
    w.status.pause_conditions.clear();
    let d = w.step("b", t(51));
    assert_eq!(d.selectors["act"], "b");
    assert_eq!(w.status.stable_rs.as_deref(), Some("b"));
    assert_eq!(d.scale["a"], 0);
}

#[test]
fn blue_green_auto_promotion_seconds() {
    let mut w = World::new(spec(json!({"replicas": 1, "strategy": {"blueGreen": {
        "activeService": "act", "autoPromotionSeconds": 30}}})));
    w.step("a", t(0));
    w.step("b", t(1));
    w.step("b", t(20));
    assert_eq!(w.status.stable_rs.as_deref(), Some("a"));
    let d = w.step("b", t(32));
    assert_eq!(w.status.stable_rs.as_deref(), Some("b"));
    assert_eq!(d.selectors["act"], "b");
}

#[test]
fn invalid_specs_name_the_field() {
    let bad = [
        (json!({"strategy": {}}), "spec.strategy"),
        (
            json!({"strategy": {"canary": {"steps": [{"setWeight": 120}]}}}),
            "steps[0].setWeight",
        ),
        (json!({"strategy": {"canary": {"steps": [{}]}}}), "steps[0]"),
        (
            json!({"strategy": {"canary": {"steps": [{"pause": {"duration": "1x"}}]}}}),
            "pause.duration",
        ),
        (
            json!({"strategy": {"canary": {"stableService": "a"}}}),
            "stableService",
        ),
        (json!({"strategy": {"blueGreen": {}}}), "activeService"),
    ];
    for (s, field) in bad {
        let e = validate(&spec(s.clone())).unwrap_err();
        assert!(e.contains(field), "{s}: {e}");
        let mut w = World::new(spec(s));
        w.step("a", t(0));
        assert_eq!(w.status.phase.as_deref(), Some("Degraded"));
    }
}

/// `setCanaryScale` sizes the canary apart from its traffic weight: a count, then a share of
/// `spec.replicas`, then back to following the weight.
#[test]
fn set_canary_scale_sizes_the_canary_apart_from_its_weight() {
    let mut w = World::new(spec(json!({
        "replicas": 10,
        "strategy": {"canary": {
            "stableService": "web", "canaryService": "web-canary",
            "steps": [
                {"setCanaryScale": {"replicas": 3}},
                {"pause": {}},
                {"setWeight": 10},
                {"pause": {}},
                {"setCanaryScale": {"weight": 50}},
                {"pause": {}},
                {"setCanaryScale": {"matchTrafficWeight": true}},
                {"pause": {}},
            ],
        }},
    })));
    let promote = |w: &mut World| w.status.pause_conditions.clear();
    w.step("aaa", t(0));
    // Three canary pods, no traffic yet.
    let d = w.step("bbb", t(1));
    assert_eq!(w.status.current_step_index, Some(1));
    assert_eq!(d.scale["bbb"], 3);
    assert_eq!(d.scale["aaa"], 10);
    assert_eq!(weight(&d), 0);
    // 10% of the traffic, still three pods (the weight alone would ask for one).
    promote(&mut w);
    let d = w.step("bbb", t(2));
    assert_eq!(w.status.current_step_index, Some(3));
    assert_eq!(weight(&d), 10);
    assert_eq!(w.rs["bbb"].replicas, 3);
    // Half of spec.replicas, the traffic at 10%.
    promote(&mut w);
    let d = w.step("bbb", t(3));
    assert_eq!(w.status.current_step_index, Some(5));
    assert_eq!(d.scale["bbb"], 5);
    assert_eq!(weight(&d), 10);
    // Following the weight again: ceil(10 * 10%) = 1 pod.
    promote(&mut w);
    let d = w.step("bbb", t(4));
    assert_eq!(w.status.current_step_index, Some(7));
    assert_eq!(d.scale["bbb"], 1);
    assert_eq!(weight(&d), 10);
    // Promoted: the canary takes all.
    promote(&mut w);
    w.step("bbb", t(5));
    assert_eq!(w.status.stable_rs.as_deref(), Some("bbb"));
    assert_eq!(w.rs["bbb"].replicas, 10);
}

#[test]
fn set_canary_scale_is_validated() {
    let bad = |step: serde_json::Value| {
        validate(&spec(json!({"strategy": {"canary": {"steps": [step]}}}))).unwrap_err()
    };
    assert!(bad(json!({"setCanaryScale": {}})).contains("steps[0].setCanaryScale"));
    assert!(
        bad(json!({"setCanaryScale": {"replicas": 1, "weight": 5}}))
            .contains("exactly one of replicas")
    );
    assert!(bad(json!({"setCanaryScale": {"weight": 150}})).contains("setCanaryScale.weight"));
    assert!(
        bad(json!({"setCanaryScale": {"replicas": 1}, "setWeight": 5})).contains("exactly one")
    );
    let ok = spec(json!({"strategy": {"canary": {"steps": [
        {"setCanaryScale": {"replicas": 0}}, {"setCanaryScale": {"matchTrafficWeight": true}}]}}}));
    assert_eq!(validate(&ok), Ok(()));
}

#[test]
fn weights_and_routes() {
    let steps: Vec<Step> = serde_json::from_value(json!([
        {"setWeight": 10}, {"setHeaderRoute": {"name": "a", "match": [{"headerName": "h", "headerValue": {"exact": "1"}}]}},
        {"setWeight": 30}, {"setHeaderRoute": {"name": "a"}}, {"pause": {}}])).unwrap();
    assert_eq!(weight_at(&steps, 0), 0);
    assert_eq!(weight_at(&steps, 1), 10);
    assert_eq!(weight_at(&steps, 3), 30);
    assert_eq!(weight_at(&steps, 5), 100);
    assert_eq!(header_routes_at(&steps, 2).len(), 1);
    assert_eq!(header_routes_at(&steps, 4).len(), 0);
    assert_eq!(canary_replicas(4, 20), 1);
    assert_eq!(canary_replicas(4, 30), 2);
    assert_eq!(canary_replicas(10, 0), 1);
}

#[test]
fn durations() {
    assert_eq!(
        parse_duration_str("1m30s").unwrap(),
        SignedDuration::from_secs(90)
    );
    assert_eq!(
        parse_duration_str("250ms").unwrap(),
        SignedDuration::from_millis(250)
    );
    assert_eq!(
        parse_duration(&json!(5)).unwrap(),
        SignedDuration::from_secs(5)
    );
    assert!(parse_duration_str("5x").is_err());
    assert!(parse_duration_str("").is_err());
}

#[test]
fn conditions() {
    let r = Value::List(vec![0.97]);
    assert!(eval("result[0] >= 0.95", &r).unwrap());
    assert!(!eval("result[0] < 0.95", &r).unwrap());
    assert!(eval("len(result) == 1 && result[0] > 0.9 || false", &r).unwrap());
    assert!(eval("!(result[0] > 1)", &r).unwrap());
    assert!(eval("result >= 0.95", &r).unwrap());
    assert!(eval("default(result[3], 0) == 0", &r).unwrap());
    assert!(eval("isNaN(result)", &Value::Num(f64::NAN)).unwrap());
    assert!(
        eval(
            "result * 100 - 2 > 90 and not (result == 1)",
            &Value::Num(0.95)
        )
        .unwrap()
    );
    assert!(eval("result[1] > 0", &r).is_err());
    assert!(eval("result >", &r).is_err());
    assert!(eval("foo > 1", &r).is_err());
    assert!(eval("result[0]", &r).is_err());
    assert!(eval("1e-2 < 0.02", &r).unwrap());
}

#[test]
fn measurements_and_limits() {
    let m: Metric = serde_json::from_value(json!({
        "name": "errors", "interval": "5s", "count": 4, "failureLimit": 1,
        "successCondition": "result[0] <= 0.01", "failureCondition": "result[0] > 0.05",
        "provider": {"prometheus": {"query": "q"}}}))
    .unwrap();
    let mut r = MetricResult {
        name: "errors".into(),
        phase: "Running".into(),
        ..Default::default()
    };
    let meas = |p: &str, at: i64| Measurement {
        phase: p.into(),
        value: None,
        message: None,
        started_at: t(at).to_string(),
        finished_at: t(at).to_string(),
    };
    assert_eq!(next_due(&m, None, t(0)), Some(t(0)));
    assert_eq!(assess(&m, &Value::List(vec![0.0])).unwrap(), "Successful");
    assert_eq!(
        assess(&m, &Value::List(vec![0.03])).unwrap(),
        "Inconclusive"
    );
    assert_eq!(assess(&m, &Value::List(vec![0.2])).unwrap(), "Failed");
    assert!(assess(&m, &Value::List(vec![])).is_err());
    record(&m, &mut r, meas("Failed", 0));
    assert_eq!(r.phase, "Running");
    assert_eq!(next_due(&m, Some(&r), t(0)), Some(t(5)));
    record(&m, &mut r, meas("Failed", 5));
    assert_eq!(r.phase, "Failed");
    assert_eq!(next_due(&m, Some(&r), t(0)), None);
    let (p, msg) = run_phase(&[r.clone()], 1);
    assert_eq!(p, "Failed");
    assert!(msg.contains("errors"));
    let mut ok = MetricResult {
        name: "errors".into(),
        phase: "Running".into(),
        ..Default::default()
    };
    for i in 0..4 {
        record(&m, &mut ok, meas("Successful", i * 5));
    }
    assert_eq!(ok.phase, "Successful");
    assert_eq!(run_phase(&[ok], 1).0, "Successful");
    // Errors: more than consecutiveErrorLimit (4) in a row.
    let mut e = MetricResult {
        name: "errors".into(),
        phase: "Running".into(),
        ..Default::default()
    };
    for i in 0..5 {
        record(&m, &mut e, meas("Error", i));
    }
    assert_eq!(e.phase, "Error");
    // Without interval or count: once.
    let once: Metric = serde_json::from_value(json!({"name": "x", "provider": {}})).unwrap();
    assert_eq!(count_of(&once), Some(1));
}

#[test]
fn args_and_prometheus_answers() {
    let args = vec![Arg {
        name: "svc".into(),
        value: Some("web-canary".into()),
    }];
    assert_eq!(
        substitute("rate(x{service=\"{{args.svc}}\"}[1m])", &args).unwrap(),
        "rate(x{service=\"web-canary\"}[1m])"
    );
    assert!(substitute("{{args.nope}}", &args).is_err());
    assert!(substitute("{{ secrets.x }}", &args).is_err());
    let v = super::prom_result(&json!({"resultType": "vector", "result": [
        {"metric": {}, "value": [1.0, "0.05"]}]}))
    .unwrap();
    assert_eq!(v, Value::List(vec![0.05]));
    let s = super::prom_result(&json!({"resultType": "scalar", "result": [1.0, "NaN"]})).unwrap();
    assert!(matches!(s, Value::Num(n) if n.is_nan()));
    assert!(super::prom_result(&json!({"resultType": "matrix", "result": []})).is_err());
}

#[test]
fn crds_parse() {
    for c in super::crds() {
        let _: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_json::from_value(c).unwrap();
    }
}

#[test]
fn abort_scales_canary_down_after_the_delay_and_retry_keeps_it() {
    let mut sp = canary_spec();
    sp.strategy
        .canary
        .as_mut()
        .unwrap()
        .abort_scale_down_delay_seconds = Some(5);
    let mut w = World::new(sp);
    w.step("aaa", t(0));
    w.step("bbb", t(1));
    w.status.abort = true;
    let d = w.step("bbb", t(2));
    assert_eq!(weight(&d), 0);
    assert_eq!(w.rs["bbb"].replicas, 1);
    assert!(w.rs["bbb"].scale_down_deadline.is_some());
    w.step("bbb", t(4));
    assert_eq!(w.rs["bbb"].replicas, 1);
    assert!(
        w.rs["bbb"].scale_down_deadline.is_some(),
        "the deadline must survive passes"
    );
    w.step("bbb", t(8));
    assert_eq!(w.rs["bbb"].replicas, 0);
    // Retry: the canary comes back without a deadline.
    w.status.abort = false;
    w.step("bbb", t(9));
    assert_eq!(w.rs["bbb"].replicas, 1);
    assert_eq!(w.rs["bbb"].scale_down_deadline, None);
}

/// The `/scale` selector: every pod of a canary Rollout, the active pods of a blue/green one.
#[test]
fn scale_selector_is_a_label_selector_string() {
    let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(json!({"matchLabels": {"app": "web", "tier": "front"}})).unwrap();
    assert_eq!(super::status_selector(&sel, None), "app=web,tier=front");
    assert_eq!(
        super::status_selector(&sel, Some("abc")),
        "app=web,tier=front,rollouts-pod-template-hash=abc"
    );
}
