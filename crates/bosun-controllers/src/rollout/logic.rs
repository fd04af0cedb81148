//! Pure decisions of the Rollout controller: what the ReplicaSets, Services, traffic split,
//! AnalysisRuns and status of one Rollout should be now, and how an AnalysisRun's metrics
//! stand. No I/O: `mod.rs` reads the caches into a [`View`] and applies the [`Decision`].

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const HASH_LABEL: &str = "rollouts-pod-template-hash";
pub const SCALE_DOWN_DEADLINE: &str = "argo-rollouts.argoproj.io/scale-down-deadline";
/// Argo's defaults for `scaleDownDelaySeconds` and `abortScaleDownDelaySeconds`.
pub const DEFAULT_SCALE_DOWN_DELAY: i64 = 30;

// ---- spec -----------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub replicas: Option<i32>,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub strategy: Strategy,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    pub canary: Option<Canary>,
    pub blue_green: Option<BlueGreen>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    pub stable_service: Option<String>,
    pub canary_service: Option<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
    pub analysis: Option<BackgroundAnalysis>,
    pub scale_down_delay_seconds: Option<i64>,
    pub abort_scale_down_delay_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<HeaderRouteStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<SetCanaryScale>,
}

/// Argo's `setCanaryScale`: the canary's pod count apart from its traffic weight, as a count
/// or a percentage of `spec.replicas`, until a later one with `matchTrafficWeight: true`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SetCanaryScale {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub match_traffic_weight: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Pause {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct AnalysisRef {
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub template_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Arg {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundAnalysis {
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
    #[serde(default)]
    pub args: Vec<Arg>,
    pub starting_step: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct HeaderRouteStep {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Vec<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreen {
    pub active_service: Option<String>,
    pub preview_service: Option<String>,
    pub auto_promotion_enabled: Option<bool>,
    pub auto_promotion_seconds: Option<i64>,
    pub scale_down_delay_seconds: Option<i64>,
}

/// Parses `30s`, `5m`, `1h30m`, `250ms` or a plain number of seconds (Argo's durations).
pub fn parse_duration(v: &Value) -> Result<SignedDuration, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .map(SignedDuration::from_secs)
            .ok_or_else(|| format!("invalid duration {n}")),
        Value::String(s) => parse_duration_str(s),
        other => Err(format!("invalid duration {other}")),
    }
}

pub fn parse_duration_str(s: &str) -> Result<SignedDuration, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(SignedDuration::from_secs(n as i64));
    }
    let mut total = SignedDuration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit"))?;
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            u => return Err(format!("invalid duration {s:?}: unit {u:?}")),
        };
        total += SignedDuration::from_millis((n * ms) as i64);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// What is wrong with a spec, naming the field.
pub fn validate(spec: &RolloutSpec) -> Result<(), String> {
    match (&spec.strategy.canary, &spec.strategy.blue_green) {
        (Some(_), Some(_)) => {
            return Err("spec.strategy: only one of canary and blueGreen may be set".into());
        }
        (None, None) => return Err("spec.strategy: one of canary or blueGreen is required".into()),
        (Some(c), None) => {
            if c.stable_service.is_some() != c.canary_service.is_some() {
                return Err(
                    "spec.strategy.canary: stableService and canaryService go together".into(),
                );
            }
            if c.stable_service.is_some() && c.stable_service == c.canary_service {
                return Err(
                    "spec.strategy.canary.canaryService: must differ from stableService".into(),
                );
            }
            for (i, s) in c.steps.iter().enumerate() {
                let set = [
                    s.set_weight.is_some(),
                    s.pause.is_some(),
                    s.analysis.is_some(),
                    s.set_header_route.is_some(),
                    s.set_canary_scale.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if set != 1 {
                    return Err(format!(
                        "spec.strategy.canary.steps[{i}]: exactly one of setWeight, pause, analysis, setHeaderRoute, setCanaryScale is required"
                    ));
                }
                if let Some(cs) = &s.set_canary_scale {
                    let f = format!("spec.strategy.canary.steps[{i}].setCanaryScale");
                    let n = [
                        cs.replicas.is_some(),
                        cs.weight.is_some(),
                        cs.match_traffic_weight,
                    ]
                    .iter()
                    .filter(|b| **b)
                    .count();
                    if n != 1 {
                        return Err(format!(
                            "{f}: exactly one of replicas, weight, matchTrafficWeight: true is required"
                        ));
                    }
                    if let Some(w) = cs.weight
                        && !(0..=100).contains(&w)
                    {
                        return Err(format!("{f}.weight: {w} is not in 0..100"));
                    }
                    if let Some(r) = cs.replicas
                        && r < 0
                    {
                        return Err(format!("{f}.replicas: {r} must not be negative"));
                    }
                }
                if let Some(w) = s.set_weight
                    && !(0..=100).contains(&w)
                {
                    return Err(format!(
                        "spec.strategy.canary.steps[{i}].setWeight: {w} is not in 0..100"
                    ));
                }
                if let Some(d) = s.pause.as_ref().and_then(|p| p.duration.as_ref()) {
                    parse_duration(d).map_err(|e| {
                        format!("spec.strategy.canary.steps[{i}].pause.duration: {e}")
                    })?;
                }
                if let Some(h) = &s.set_header_route {
                    for (j, m) in h.matches.iter().enumerate() {
                        let ok = m.get("headerName").and_then(Value::as_str).is_some()
                            && m.pointer("/headerValue/exact")
                                .or_else(|| m.pointer("/headerValue/prefix"))
                                .and_then(Value::as_str)
                                .is_some();
                        if !ok {
                            return Err(format!(
                                "spec.strategy.canary.steps[{i}].setHeaderRoute.match[{j}]: headerName and headerValue.exact or .prefix are required"
                            ));
                        }
                    }
                }
            }
        }
        (None, Some(b)) => {
            if b.active_service.is_none() {
                return Err("spec.strategy.blueGreen.activeService: Required value".into());
            }
            if b.active_service == b.preview_service {
                return Err(
                    "spec.strategy.blueGreen.previewService: must differ from activeService".into(),
                );
            }
        }
    }
    if spec.replicas.is_some_and(|r| r < 0) {
        return Err("spec.replicas: must be greater than or equal to 0".into());
    }
    Ok(())
}

// ---- status ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_pod_hash: Option<String>,
    #[serde(default, rename = "stableRS", skip_serializing_if = "Option::is_none")]
    pub stable_rs: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_conditions: Vec<PauseCondition>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub controller_pause: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub abort: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub promote_full: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStatus>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseCondition {
    pub reason: String,
    pub start_time: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_analysis_run_status: Option<RunStatusRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_background_analysis_run_status: Option<RunStatusRef>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Weights {
    pub canary: WeightDestination,
    pub stable: WeightDestination,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WeightDestination {
    pub weight: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct RunStatusRef {
    pub name: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_selector: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_transition_time: String,
    #[serde(default)]
    pub last_update_time: String,
}

// ---- the decision -----------------------------------------------------------------------

/// One ReplicaSet of the Rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RsView {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub scale_down_deadline: Option<Timestamp>,
}

/// An AnalysisRun's phase and message as the controller last wrote them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunView {
    pub phase: String,
    pub message: String,
}

pub struct View<'a> {
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a RolloutSpec,
    pub status: &'a RolloutStatus,
    /// Hash of the current template.
    pub hash: &'a str,
    pub rs: &'a BTreeMap<String, RsView>,
    /// AnalysisRuns of this Rollout by name.
    pub runs: &'a BTreeMap<String, RunView>,
    pub now: Timestamp,
}

/// An AnalysisRun that should exist.
#[derive(Clone, Debug, PartialEq)]
pub struct WantRun {
    pub name: String,
    pub templates: Vec<String>,
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub status: RolloutStatus,
    /// Desired `spec.replicas` per ReplicaSet hash (the current hash's is created if absent).
    pub scale: BTreeMap<String, i32>,
    /// ReplicaSets to mark with a scale-down deadline.
    pub deadlines: BTreeMap<String, Timestamp>,
    /// ReplicaSets in use again (a rollback to the stable one, a retry) losing theirs.
    pub clear_deadlines: Vec<String>,
    /// Service -> the hash its selector must carry.
    pub selectors: BTreeMap<String, String>,
    /// Service -> its traffic split (None: none).
    pub split: BTreeMap<String, Option<Value>>,
    pub runs: Vec<WantRun>,
    /// AnalysisRuns to stop (terminated: they end Successful).
    pub terminate: Vec<String>,
    /// (type, reason, message)
    pub events: Vec<(&'static str, &'static str, String)>,
    /// Look again after this long (at the latest).
    pub requeue: Option<SignedDuration>,
}

/// Asks for the AnalysisRun `name` of these templates and args, and returns what is known of
/// it (Pending until it exists) with the reference the Rollout's status shows.
fn want_run(
    d: &mut Decision,
    v: &View,
    name: &str,
    templates: &[TemplateRef],
    args: &[Arg],
) -> (RunView, RunStatusRef) {
    d.runs.push(WantRun {
        name: name.to_string(),
        templates: templates.iter().map(|t| t.template_name.clone()).collect(),
        args: args.to_vec(),
    });
    let r = v.runs.get(name).cloned().unwrap_or(RunView {
        phase: "Pending".into(),
        message: String::new(),
    });
    let status = RunStatusRef {
        name: name.to_string(),
        status: r.phase.clone(),
        message: (!r.message.is_empty()).then(|| r.message.clone()),
    };
    (r, status)
}

pub fn weight_at(steps: &[Step], idx: usize) -> i32 {
    if idx >= steps.len() {
        return 100;
    }
    steps[..idx]
        .iter()
        .rev()
        .find_map(|s| s.set_weight)
        .unwrap_or(0)
}

/// The header routes in force at `idx`: each `setHeaderRoute` before it, by name (one
/// without `match` removes its name).
pub fn header_routes_at(steps: &[Step], idx: usize) -> Vec<HeaderRouteStep> {
    let mut routes: Vec<HeaderRouteStep> = Vec::new();
    for s in steps.iter().take(idx) {
        if let Some(h) = &s.set_header_route {
            routes.retain(|r| r.name != h.name);
            if !h.matches.is_empty() {
                routes.push(h.clone());
            }
        }
    }
    routes
}

/// Canary pods for a weight: Argo's `ceil(replicas * weight / 100)`, at least one while a
/// canary is being tried (header routes reach it at weight 0).
pub fn canary_replicas(replicas: i32, weight: i32) -> i32 {
    ((replicas as i64 * weight as i64 + 99) / 100).max(1) as i32
}

/// Canary pods once the steps before `idx` are done: those of the last `setCanaryScale`
/// among them (Argo's `GetCurrentSetCanaryScale`), else those of the traffic weight, at most
/// `replicas` (at least one). An explicit count is taken as it is, 0 included.
pub fn canary_scale_at(steps: &[Step], idx: usize, replicas: i32) -> i32 {
    let scale = steps
        .iter()
        .take(idx)
        .filter_map(|s| s.set_canary_scale.as_ref())
        .next_back()
        .filter(|cs| !cs.match_traffic_weight);
    match scale {
        Some(SetCanaryScale {
            replicas: Some(n), ..
        }) => *n,
        Some(SetCanaryScale {
            weight: Some(w), ..
        }) => canary_replicas(replicas, *w).min(replicas.max(1)),
        _ => canary_replicas(replicas, weight_at(steps, idx)).min(replicas.max(1)),
    }
}

fn set_condition(
    status: &mut RolloutStatus,
    now: &str,
    type_: &str,
    st: bool,
    reason: &str,
    msg: &str,
) {
    let st = if st { "True" } else { "False" };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != st {
                c.last_transition_time = now.to_string();
            }
            if c.status != st || c.reason != reason || c.message != msg {
                c.last_update_time = now.to_string();
            }
            c.status = st.into();
            c.reason = reason.into();
            c.message = msg.into();
        }
        None => status.conditions.push(Condition {
            type_: type_.into(),
            status: st.into(),
            reason: reason.into(),
            message: msg.into(),
            last_transition_time: now.to_string(),
            last_update_time: now.to_string(),
        }),
    }
}

fn run_failed(r: &RunView) -> bool {
    matches!(r.phase.as_str(), "Failed" | "Error" | "Inconclusive")
}

/// Old ReplicaSets (neither stable nor current) go to zero after `delay` seconds.
fn scale_down_old(v: &View, d: &mut Decision, keep: &[&str], delay: i64) {
    for (h, rs) in v.rs {
        if keep.contains(&h.as_str()) || rs.replicas == 0 {
            continue;
        }
        scale_down_after(v, d, h, rs, delay);
    }
}

fn scale_down_after(v: &View, d: &mut Decision, h: &str, rs: &RsView, delay: i64) {
    match rs.scale_down_deadline {
        _ if delay <= 0 => {
            d.scale.insert(h.to_string(), 0);
        }
        Some(t) if t <= v.now => {
            d.scale.insert(h.to_string(), 0);
        }
        Some(t) => {
            d.scale.insert(h.to_string(), rs.replicas);
            requeue(d, t.duration_since(v.now));
        }
        None => {
            let t = v.now + SignedDuration::from_secs(delay);
            d.deadlines.insert(h.to_string(), t);
            d.scale.insert(h.to_string(), rs.replicas);
            requeue(d, SignedDuration::from_secs(delay));
        }
    }
}

fn requeue(d: &mut Decision, after: SignedDuration) {
    let after = after.max(SignedDuration::from_millis(100));
    d.requeue = Some(d.requeue.map_or(after, |r| r.min(after)));
}

/// Decides everything about one Rollout.
pub fn decide(v: &View) -> Decision {
    let now_s = v.now.to_string();
    let mut d = Decision::default();
    let mut status = v.status.clone();
    let st = &mut status;
    let replicas = v.spec.replicas.unwrap_or(1);
    st.observed_generation = Some(v.generation.to_string());
    if let Err(msg) = validate(v.spec) {
        st.phase = Some("Degraded".into());
        st.message = Some(format!("InvalidSpec: {msg}"));
        set_condition(st, &now_s, "InvalidSpec", true, "InvalidSpec", &msg);
        d.status = status;
        return d;
    }
    st.conditions.retain(|c| c.type_ != "InvalidSpec");
    // A new template restarts the steps.
    if st.current_pod_hash.as_deref() != Some(v.hash) {
        st.current_pod_hash = Some(v.hash.to_string());
        st.current_step_index = Some(0);
        st.pause_conditions.clear();
        st.controller_pause = false;
        st.abort = false;
        st.aborted_at = None;
        st.promote_full = false;
        if let Some(c) = st.canary.as_mut() {
            c.current_step_analysis_run_status = None;
            c.current_background_analysis_run_status = None;
        }
    }
    // The first template is stable at once (Argo skips the steps for the first version).
    let stable = st.stable_rs.clone().unwrap_or_else(|| v.hash.to_string());
    st.stable_rs = Some(stable.clone());
    // `kubectl argo rollouts retry`: abort cleared after an abort starts the steps over.
    if !st.abort && st.aborted_at.is_some() {
        st.aborted_at = None;
        st.current_step_index = Some(0);
        st.pause_conditions.clear();
        st.controller_pause = false;
    }
    let get = |h: &str| v.rs.get(h).cloned().unwrap_or_default();
    let canary = v.spec.strategy.canary.clone();
    let bg = v.spec.strategy.blue_green.clone();
    let steps = canary.as_ref().map(|c| c.steps.clone()).unwrap_or_default();
    let nsteps = steps.len() as i32;
    let mut idx = st.current_step_index.unwrap_or(0).clamp(0, nsteps);
    let mut promoted_now = false;

    if v.hash == stable {
        // Steady state: everything on the stable ReplicaSet.
        d.scale.insert(stable.clone(), replicas);
        let delay = canary
            .as_ref()
            .and_then(|c| c.scale_down_delay_seconds)
            .or(bg.as_ref().and_then(|b| b.scale_down_delay_seconds))
            .unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
        scale_down_old(v, &mut d, &[stable.as_str()], delay);
        idx = nsteps;
        st.pause_conditions.clear();
        st.controller_pause = false;
        st.abort = false;
        st.promote_full = false;
    } else if st.abort {
        if st.aborted_at.is_none() {
            st.aborted_at = Some(now_s.clone());
            let why = st
                .message
                .clone()
                .filter(|m| m.starts_with("RolloutAborted"))
                .unwrap_or_else(|| "RolloutAborted: Rollout aborted update to revision".into());
            d.events.push(("Warning", "RolloutAborted", why));
        }
        d.scale.insert(stable.clone(), replicas);
        let delay = canary
            .as_ref()
            .and_then(|c| c.abort_scale_down_delay_seconds)
            .or(bg.as_ref().and_then(|b| b.scale_down_delay_seconds))
            .unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
        let cur = get(v.hash);
        if cur.replicas > 0 {
            scale_down_after(v, &mut d, v.hash, &cur, delay);
        } else {
            d.scale.insert(v.hash.to_string(), 0);
        }
        scale_down_old(v, &mut d, &[stable.as_str(), v.hash], 0);
        st.pause_conditions.clear();
        st.controller_pause = false;
    } else if let Some(c) = &canary {
        if st.promote_full {
            idx = nsteps;
        }
        // Background analysis.
        if let Some(a) = c.analysis.as_ref().filter(|a| !a.templates.is_empty())
            && idx >= a.starting_step.unwrap_or(0)
        {
            let name = format!("{}-{}-bg", v.name, v.hash);
            let (r, run_status) = want_run(&mut d, v, &name, &a.templates, &a.args);
            st.canary
                .get_or_insert_with(Default::default)
                .current_background_analysis_run_status = Some(run_status);
            if run_failed(&r) {
                abort(st, &mut d.events, &now_s, &name, &r);
            }
        }
        // Walk the steps that are done.
        while !st.abort && idx < nsteps {
            let step = &steps[idx as usize];
            let want = canary_scale_at(&steps, idx as usize + 1, replicas);
            if step.set_weight.is_some() || step.set_canary_scale.is_some() {
                // An explicit canary count may exceed `replicas`; a weight's never does.
                let want = if step.set_canary_scale.is_some() {
                    want
                } else {
                    want.min(replicas)
                };
                let cur = get(v.hash);
                if cur.available >= want && cur.replicas >= want {
                    idx += 1;
                    continue;
                }
                break;
            }
            if step.set_header_route.is_some() {
                idx += 1;
                continue;
            }
            if let Some(p) = &step.pause {
                if v.spec.paused {
                    break;
                }
                let pc = st
                    .pause_conditions
                    .iter()
                    .find(|p| p.reason == "CanaryPauseStep")
                    .cloned();
                match (pc, &p.duration) {
                    (Some(pc), Some(dur)) => {
                        let dur = parse_duration(dur).unwrap_or(SignedDuration::ZERO);
                        let start: Timestamp = pc.start_time.parse().unwrap_or(v.now);
                        if start + dur <= v.now {
                            st.pause_conditions
                                .retain(|p| p.reason != "CanaryPauseStep");
                            st.controller_pause = false;
                            idx += 1;
                            continue;
                        }
                        requeue(&mut d, (start + dur).duration_since(v.now));
                        break;
                    }
                    (Some(_), None) => break,
                    (None, _) if st.controller_pause => {
                        // Promoted: the pause condition was cleared.
                        st.controller_pause = false;
                        idx += 1;
                        continue;
                    }
                    (None, dur) => {
                        st.pause_conditions.push(PauseCondition {
                            reason: "CanaryPauseStep".into(),
                            start_time: now_s.clone(),
                        });
                        st.controller_pause = true;
                        if let Some(dur) = dur {
                            requeue(&mut d, parse_duration(dur).unwrap_or(SignedDuration::ZERO));
                        }
                        break;
                    }
                }
            }
            if let Some(a) = &step.analysis {
                let name = format!("{}-{}-{}", v.name, v.hash, idx);
                let (r, run_status) = want_run(&mut d, v, &name, &a.templates, &a.args);
                st.canary
                    .get_or_insert_with(Default::default)
                    .current_step_analysis_run_status = Some(run_status);
                if r.phase == "Successful" {
                    d.terminate.push(name);
                    idx += 1;
                    continue;
                }
                if run_failed(&r) {
                    abort(st, &mut d.events, &now_s, &name, &r);
                }
                break;
            }
            break;
        }
        if st.abort {
            // Decided in this pass: take the traffic back now.
            d.scale.insert(stable.clone(), replicas);
            let cur = get(v.hash);
            let delay = c
                .abort_scale_down_delay_seconds
                .unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
            scale_down_after(v, &mut d, v.hash, &cur, delay);
            st.aborted_at = Some(now_s.clone());
        } else if idx >= nsteps {
            let cur = get(v.hash);
            if cur.available >= replicas {
                promoted_now = true;
            } else {
                d.scale.insert(v.hash.to_string(), replicas);
                d.scale.insert(stable.clone(), replicas);
            }
        } else {
            // A setWeight or setCanaryScale step being reached scales for itself first;
            // the traffic follows once those pods are available.
            let s = &steps[idx as usize];
            let upto = if s.set_weight.is_some() || s.set_canary_scale.is_some() {
                idx as usize + 1
            } else {
                idx as usize
            };
            d.scale
                .insert(v.hash.to_string(), canary_scale_at(&steps, upto, replicas));
            d.scale.insert(stable.clone(), replicas);
        }
        if !promoted_now {
            scale_down_old(
                v,
                &mut d,
                &[stable.as_str(), v.hash],
                c.scale_down_delay_seconds
                    .unwrap_or(DEFAULT_SCALE_DOWN_DELAY),
            );
        }
    } else if let Some(b) = &bg {
        d.scale.insert(stable.clone(), replicas);
        d.scale.insert(v.hash.to_string(), replicas);
        let cur = get(v.hash);
        if st.promote_full {
            promoted_now = cur.available >= replicas;
        } else if cur.available >= replicas && !v.spec.paused {
            let pc = st
                .pause_conditions
                .iter()
                .find(|p| p.reason == "BlueGreenPause")
                .cloned();
            let auto = b.auto_promotion_enabled.unwrap_or(true);
            let secs = b.auto_promotion_seconds.unwrap_or(0);
            match pc {
                None if st.controller_pause => promoted_now = true,
                None if auto && secs <= 0 => promoted_now = true,
                None => {
                    st.pause_conditions.push(PauseCondition {
                        reason: "BlueGreenPause".into(),
                        start_time: now_s.clone(),
                    });
                    st.controller_pause = true;
                    if auto {
                        requeue(&mut d, SignedDuration::from_secs(secs));
                    }
                }
                Some(pc) if auto => {
                    let start: Timestamp = pc.start_time.parse().unwrap_or(v.now);
                    let at = start + SignedDuration::from_secs(secs);
                    if at <= v.now {
                        promoted_now = true;
                    } else {
                        requeue(&mut d, at.duration_since(v.now));
                    }
                }
                Some(_) => {}
            }
        }
        if !promoted_now {
            scale_down_old(
                v,
                &mut d,
                &[stable.as_str(), v.hash],
                b.scale_down_delay_seconds
                    .unwrap_or(DEFAULT_SCALE_DOWN_DELAY),
            );
        }
    }

    if promoted_now {
        st.stable_rs = Some(v.hash.to_string());
        st.pause_conditions.clear();
        st.controller_pause = false;
        st.promote_full = false;
        idx = nsteps;
        d.events.push((
            "Normal",
            "RolloutCompleted",
            format!(
                "Rollout completed update to revision with pod template hash {}",
                v.hash
            ),
        ));
        for r in v.runs.keys() {
            d.terminate.push(r.clone());
        }
        d.scale.insert(v.hash.to_string(), replicas);
        let delay = canary
            .as_ref()
            .and_then(|c| c.scale_down_delay_seconds)
            .or(bg.as_ref().and_then(|b| b.scale_down_delay_seconds))
            .unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
        if stable != v.hash {
            let old = get(&stable);
            d.scale.remove(&stable);
            if old.replicas > 0 {
                scale_down_after(
                    v,
                    &mut d,
                    &stable,
                    &RsView {
                        scale_down_deadline: None,
                        ..old
                    },
                    delay,
                );
            }
        }
        scale_down_old(v, &mut d, &[v.hash, stable.as_str()], delay);
    }
    let stable = st.stable_rs.clone().unwrap_or_default();
    st.current_step_index = canary.as_ref().map(|_| idx);

    // Services and traffic.
    let in_progress = v.hash != stable && !st.abort;
    if let Some(c) = &canary
        && let (Some(s), Some(cs)) = (&c.stable_service, &c.canary_service)
    {
        d.selectors.insert(s.clone(), stable.clone());
        d.selectors.insert(cs.clone(), v.hash.to_string());
        let (weight, routes) = if in_progress {
            (
                weight_at(&steps, idx as usize),
                header_routes_at(&steps, idx as usize),
            )
        } else {
            (0, Vec::new())
        };
        let split = (weight > 0 || !routes.is_empty()).then(|| {
            serde_json::json!({
                "canaryService": cs,
                "weight": weight,
                "headerRoutes": routes,
            })
        });
        d.split.insert(s.clone(), split);
        st.canary.get_or_insert_with(Default::default).weights = Some(Weights {
            canary: WeightDestination {
                weight,
                pod_template_hash: Some(v.hash.to_string()),
                service_name: Some(cs.clone()),
            },
            stable: WeightDestination {
                weight: 100 - weight,
                pod_template_hash: Some(stable.clone()),
                service_name: Some(s.clone()),
            },
        });
    }
    if let Some(b) = &bg {
        if let Some(a) = &b.active_service {
            d.selectors.insert(a.clone(), stable.clone());
        }
        if let Some(p) = &b.preview_service {
            d.selectors.insert(p.clone(), v.hash.to_string());
        }
        st.blue_green = Some(BlueGreenStatus {
            active_selector: Some(stable.clone()),
            preview_selector: b.preview_service.as_ref().map(|_| v.hash.to_string()),
        });
    }

    // A ReplicaSet in use again keeps its pods.
    for (h, rs) in v.rs {
        let in_use = *h == stable || (*h == v.hash && in_progress);
        if in_use && rs.scale_down_deadline.is_some() && !d.deadlines.contains_key(h) {
            d.clear_deadlines.push(h.clone());
        }
    }
    // Counts, phase, conditions.
    let cur = get(v.hash);
    st.replicas = v.rs.values().map(|r| r.replicas).sum();
    st.updated_replicas = cur.replicas;
    st.ready_replicas = v.rs.values().map(|r| r.ready).sum();
    st.available_replicas = v.rs.values().map(|r| r.available).sum();
    let stable_rs = get(&stable);
    let healthy = !in_progress && !st.abort && stable_rs.available >= replicas;
    let paused = !st.pause_conditions.is_empty() || v.spec.paused;
    let (phase, msg) = if st.abort {
        (
            "Degraded",
            st.message
                .clone()
                .filter(|m| m.starts_with("RolloutAborted"))
                .unwrap_or_else(|| "RolloutAborted: Rollout aborted update to revision".into()),
        )
    } else if paused {
        (
            "Paused",
            st.pause_conditions
                .first()
                .map(|p| p.reason.clone())
                .unwrap_or_else(|| "Paused".into()),
        )
    } else if healthy {
        ("Healthy", String::new())
    } else if in_progress {
        (
            "Progressing",
            canary
                .as_ref()
                .map_or("more replicas need to be updated".into(), |_| {
                    format!("more replicas need to be updated (step {idx}/{nsteps})")
                }),
        )
    } else {
        (
            "Progressing",
            "updated replicas are still becoming available".into(),
        )
    };
    st.phase = Some(phase.into());
    st.message = (!msg.is_empty()).then_some(msg.clone());
    if st.abort {
        set_condition(st, &now_s, "Progressing", false, "RolloutAborted", &msg);
    } else if healthy {
        set_condition(
            st,
            &now_s,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            "Rollout has completed",
        );
    } else {
        set_condition(
            st,
            &now_s,
            "Progressing",
            true,
            "ReplicaSetUpdated",
            "Rollout is progressing",
        );
    }
    set_condition(
        st,
        &now_s,
        "Available",
        stable_rs.available >= replicas,
        if stable_rs.available >= replicas {
            "AvailableReason"
        } else {
            "NotAvailable"
        },
        "",
    );
    set_condition(
        st,
        &now_s,
        "Paused",
        paused,
        if paused {
            "RolloutPaused"
        } else {
            "RolloutResumed"
        },
        "",
    );
    set_condition(
        st,
        &now_s,
        "Healthy",
        healthy,
        if healthy {
            "RolloutHealthy"
        } else {
            "RolloutHealthyIncomplete"
        },
        "",
    );
    if in_progress && !paused {
        requeue(&mut d, SignedDuration::from_secs(2));
    }
    d.status = status;
    d
}

fn abort(
    st: &mut RolloutStatus,
    events: &mut Vec<(&'static str, &'static str, String)>,
    now: &str,
    run: &str,
    r: &RunView,
) {
    st.abort = true;
    st.aborted_at = Some(now.to_string());
    st.pause_conditions.clear();
    st.controller_pause = false;
    let msg = format!(
        "RolloutAborted: Rollout aborted update to revision {}: Metric assessed {} in AnalysisRun {run}: {}",
        st.current_pod_hash.clone().unwrap_or_default(),
        r.phase,
        r.message
    );
    st.message = Some(msg.clone());
    events.push(("Warning", "RolloutAborted", msg));
}

// ---- analysis ---------------------------------------------------------------------------

/// One metric of an AnalysisTemplate/AnalysisRun (the subset served).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    #[serde(default)]
    pub provider: Value,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    pub phase: String,
    #[serde(default)]
    pub measurements: Vec<Measurement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub count: i32,
    #[serde(default)]
    pub successful: i32,
    #[serde(default)]
    pub failed: i32,
    #[serde(default)]
    pub inconclusive: i32,
    #[serde(default)]
    pub error: i32,
    #[serde(default)]
    pub consecutive_error: i32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// Argo keeps this many measurements per metric.
pub const MAX_MEASUREMENTS: usize = 10;

fn int_of(v: &Option<Value>, default: i64) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => s.parse().unwrap_or(default),
        _ => default,
    }
}

/// `count` as Argo reads it: unset means once without an interval, forever with one.
pub fn count_of(m: &Metric) -> Option<i64> {
    match (int_of(&m.count, 0), &m.interval) {
        (0, Some(_)) => None,
        (0, None) => Some(1),
        (n, _) => Some(n),
    }
}

/// When the next measurement of `m` is due (None: no more).
pub fn next_due(m: &Metric, r: Option<&MetricResult>, run_started: Timestamp) -> Option<Timestamp> {
    let r = match r {
        None => {
            let delay = m
                .initial_delay
                .as_deref()
                .and_then(|d| parse_duration_str(d).ok())
                .unwrap_or(SignedDuration::ZERO);
            return Some(run_started + delay);
        }
        Some(r) => r,
    };
    if is_terminal(&r.phase) {
        return None;
    }
    if count_of(m).is_some_and(|c| r.count as i64 >= c) {
        return None;
    }
    let last: Timestamp = r.measurements.last()?.finished_at.parse().ok()?;
    let interval = m
        .interval
        .as_deref()
        .and_then(|d| parse_duration_str(d).ok())
        .unwrap_or(SignedDuration::ZERO);
    Some(last + interval)
}

pub fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Successful" | "Failed" | "Error" | "Inconclusive")
}

/// Measures: the phase of one measurement from the query's result (Argo's rules).
pub fn assess(m: &Metric, result: &super::expr::Value) -> Result<&'static str, String> {
    let ok = m
        .success_condition
        .as_deref()
        .map(|c| super::expr::eval(c, result))
        .transpose()?;
    let bad = m
        .failure_condition
        .as_deref()
        .map(|c| super::expr::eval(c, result))
        .transpose()?;
    Ok(match (ok, bad) {
        (_, Some(true)) => "Failed",
        (Some(true), _) => "Successful",
        (Some(false), Some(false)) => "Inconclusive",
        (Some(false), None) => "Failed",
        (None, Some(false)) => "Successful",
        (None, None) => "Successful",
    })
}

/// Adds a measurement to `r` and updates its counters and phase.
pub fn record(m: &Metric, r: &mut MetricResult, meas: Measurement) {
    r.count += 1;
    match meas.phase.as_str() {
        "Successful" => {
            r.successful += 1;
            r.consecutive_error = 0;
        }
        "Failed" => {
            r.failed += 1;
            r.consecutive_error = 0;
        }
        "Inconclusive" => {
            r.inconclusive += 1;
            r.consecutive_error = 0;
        }
        _ => {
            r.error += 1;
            r.consecutive_error += 1;
        }
    }
    r.message = meas.message.clone();
    r.measurements.push(meas);
    if r.measurements.len() > MAX_MEASUREMENTS {
        let cut = r.measurements.len() - MAX_MEASUREMENTS;
        r.measurements.drain(..cut);
    }
    r.phase = metric_phase(m, r).to_string();
}

pub fn metric_phase(m: &Metric, r: &MetricResult) -> &'static str {
    if r.failed as i64 > int_of(&m.failure_limit, 0) {
        "Failed"
    } else if r.inconclusive as i64 > int_of(&m.inconclusive_limit, 0) {
        "Inconclusive"
    } else if r.consecutive_error as i64 > int_of(&m.consecutive_error_limit, 4) {
        "Error"
    } else if count_of(m).is_some_and(|c| r.count as i64 >= c) {
        "Successful"
    } else {
        "Running"
    }
}

/// The run's phase from its metrics' (a failed metric fails the run at once).
pub fn run_phase(results: &[MetricResult], metrics: usize) -> (String, String) {
    for p in ["Failed", "Error", "Inconclusive"] {
        if let Some(r) = results.iter().find(|r| r.phase == p) {
            let msg = format!(
                "Metric \"{}\" assessed {p} due to failed ({}) > failureLimit, error ({}), inconclusive ({}): {}",
                r.name,
                r.failed,
                r.error,
                r.inconclusive,
                r.message.clone().unwrap_or_default()
            );
            return (p.into(), msg);
        }
    }
    if results.len() == metrics && results.iter().all(|r| r.phase == "Successful") {
        return ("Successful".into(), String::new());
    }
    ("Running".into(), String::new())
}

/// `{{args.NAME}}` in a query, replaced by the run's arguments.
pub fn substitute(text: &str, args: &[Arg]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find("}}")
            .ok_or_else(|| format!("unterminated {{{{ in {text:?}"))?;
        let key = rest[i + 2..i + end].trim();
        let name = key
            .strip_prefix("args.")
            .ok_or_else(|| format!("unknown variable {key:?}"))?;
        let v = args
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.clone())
            .ok_or_else(|| format!("argument {name:?} has no value"))?;
        out.push_str(&v);
        rest = &rest[i + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
