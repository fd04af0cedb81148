//! The HorizontalPodAutoscaler's decisions, as Kubernetes' `replica_calculator.go` and
//! `horizontal.go` make them, without I/O: replica counts from metric samples (tolerance,
//! unready and missing pods), stabilization windows, `behavior` rate policies and the
//! min/max bounds with the condition each one sets.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Ratios within this distance of 1.0 do not change the replica count
/// (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// CPU samples of a pod this young count only when taken after it became Ready
/// (`--horizontal-pod-autoscaler-cpu-initialization-period`).
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// A pod not Ready since its start for longer than this is treated as having been ready once
/// (`--horizontal-pod-autoscaler-initial-readiness-delay`).
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);
/// Scale-down stabilization without `behavior` (`--horizontal-pod-autoscaler-downscale-stabilization`).
pub const DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);

/// What the calculator needs of one pod matched by the target's selector.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    pub name: String,
    /// Pending, Running, Succeeded, Failed.
    pub phase: String,
    pub deleting: bool,
    /// Ready condition: (status is True, status is False, lastTransitionTime in seconds).
    pub ready: Option<ReadyCondition>,
    /// `status.startTime` (Unix seconds).
    pub start_time: Option<i64>,
    /// Sum of the containers' requests of the resource, in milli-units, or None when a
    /// container has none.
    pub request_milli: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ReadyCondition {
    pub is_true: bool,
    pub is_false: bool,
    pub last_transition: i64,
}

/// One pod's metric value (milli-units) with when and over how long it was measured.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub milli: i64,
    /// Unix seconds.
    pub timestamp: i64,
    pub window_secs: i64,
}

/// Pods sorted into Kubernetes' groups (`groupPods`).
#[derive(Debug, Default, PartialEq)]
pub struct Groups {
    pub ready: usize,
    pub unready: BTreeSet<String>,
    pub missing: BTreeSet<String>,
    pub ignored: BTreeSet<String>,
}

/// Sorts pods: deleted or failed pods are ignored; pending pods are unready; pods without a
/// sample are missing; for CPU, pods still initialising (or never ready) are unready.
pub fn group_pods(
    pods: &[PodInfo],
    samples: &std::collections::BTreeMap<String, Sample>,
    cpu: bool,
    now: i64,
) -> Groups {
    let mut g = Groups::default();
    for pod in pods {
        if pod.deleting || pod.phase == "Failed" {
            g.ignored.insert(pod.name.clone());
            continue;
        }
        if pod.phase == "Pending" {
            g.unready.insert(pod.name.clone());
            continue;
        }
        let Some(sample) = samples.get(&pod.name) else {
            g.missing.insert(pod.name.clone());
            continue;
        };
        if cpu {
            let unready = match (pod.ready, pod.start_time) {
                (Some(cond), Some(start)) => {
                    if start + CPU_INITIALIZATION_PERIOD.as_secs() as i64 > now {
                        cond.is_false
                            || sample.timestamp < cond.last_transition + sample.window_secs
                    } else {
                        cond.is_false
                            && start + INITIAL_READINESS_DELAY.as_secs() as i64
                                > cond.last_transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(pod.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// (utilization ratio, utilization %, raw average in milli-units) of `samples` against the
/// pods' requests (`GetResourceUtilizationRatio`).
fn utilization_ratio(
    samples: &std::collections::BTreeMap<String, i64>,
    requests: &std::collections::BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let mut total = 0i64;
    let mut requested = 0i64;
    let mut n = 0i64;
    for (pod, v) in samples {
        if let Some(r) = requests.get(pod) {
            total += v;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 || n == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (total * 100 / requested) as i32;
    Ok((utilization as f64 / target as f64, utilization, total / n))
}

/// The outcome of one metric: the replicas it asks for and what to report as current.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Average utilization in percent (Utilization targets).
    pub utilization: Option<i32>,
    /// Average (or total, for Object Value targets) in milli-units.
    pub milli: i64,
}

fn ceil_i32(x: f64) -> i32 {
    x.ceil() as i32
}

fn drop_pods(samples: &mut std::collections::BTreeMap<String, i64>, names: &BTreeSet<String>) {
    for n in names {
        samples.remove(n);
    }
}

/// Replicas for a Resource metric with a Utilization target (`GetResourceReplicas`).
pub fn resource_utilization(
    current: i32,
    pods: &[PodInfo],
    samples: &std::collections::BTreeMap<String, Sample>,
    resource: &str,
    target: i32,
    now: i64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, samples, resource == "cpu", now);
    let mut metrics: std::collections::BTreeMap<String, i64> =
        samples.iter().map(|(k, s)| (k.clone(), s.milli)).collect();
    metrics.retain(|k, _| pods.iter().any(|p| &p.name == k));
    drop_pods(&mut metrics, &g.ignored);
    drop_pods(&mut metrics, &g.unready);
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = std::collections::BTreeMap::new();
    for p in pods {
        match p.request_milli {
            Some(r) => {
                requests.insert(p.name.clone(), r);
            }
            None => return Err(format!("missing request for {resource} in pod {}", p.name)),
        }
    }
    let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target)?;
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    let keep = Proposal {
        replicas: current,
        utilization: Some(utilization),
        milli: raw,
    };
    if !scale_up_with_unready && g.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(keep);
        }
        return Ok(Proposal {
            replicas: ceil_i32(ratio * g.ready as f64),
            ..keep
        });
    }
    if !g.missing.is_empty() {
        for m in &g.missing {
            let fill = if ratio < 1.0 {
                requests[m] * i64::from(target.max(100)) / 100
            } else {
                0
            };
            metrics.insert(m.clone(), fill);
        }
    }
    if scale_up_with_unready {
        for u in &g.unready {
            metrics.insert(u.clone(), 0);
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(keep);
    }
    let replicas = ceil_i32(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(keep);
    }
    Ok(Proposal { replicas, ..keep })
}

/// Replicas for a per-pod average target: Resource AverageValue and Pods metrics
/// (`calcPlainMetricReplicas`). `cpu` applies the CPU readiness rules.
pub fn plain_average(
    current: i32,
    pods: &[PodInfo],
    samples: &std::collections::BTreeMap<String, Sample>,
    target_milli: i64,
    cpu: bool,
    now: i64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, samples, cpu, now);
    let mut metrics: std::collections::BTreeMap<String, i64> =
        samples.iter().map(|(k, s)| (k.clone(), s.milli)).collect();
    metrics.retain(|k, _| pods.iter().any(|p| &p.name == k));
    drop_pods(&mut metrics, &g.ignored);
    drop_pods(&mut metrics, &g.unready);
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ratio_of = |m: &std::collections::BTreeMap<String, i64>| {
        let avg = m.values().sum::<i64>() / m.len() as i64;
        (avg as f64 / target_milli as f64, avg)
    };
    let (ratio, avg) = ratio_of(&metrics);
    let keep = Proposal {
        replicas: current,
        utilization: None,
        milli: avg,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(keep);
        }
        return Ok(Proposal {
            replicas: ceil_i32(ratio * g.ready as f64),
            ..keep
        });
    }
    for m in &g.missing {
        metrics.insert(m.clone(), if ratio < 1.0 { target_milli } else { 0 });
    }
    if scale_up_with_unready {
        for u in &g.unready {
            metrics.insert(u.clone(), 0);
        }
    }
    let (new_ratio, _) = ratio_of(&metrics);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(keep);
    }
    let replicas = ceil_i32(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(keep);
    }
    Ok(Proposal { replicas, ..keep })
}

/// Replicas for an Object metric with a Value target (`GetObjectMetricReplicas`):
/// proportional to the ready pods, or `ceil(ratio)` from zero replicas.
pub fn object_value(
    current: i32,
    usage_milli: i64,
    target_milli: i64,
    ready_pods: i32,
) -> Proposal {
    let ratio = usage_milli as f64 / target_milli as f64;
    let replicas = if current != 0 {
        if (1.0 - ratio).abs() <= TOLERANCE {
            current
        } else {
            ceil_i32(ratio * ready_pods as f64)
        }
    } else {
        ceil_i32(ratio)
    };
    Proposal {
        replicas,
        utilization: None,
        milli: usage_milli,
    }
}

/// Replicas for an Object metric with an AverageValue target (`GetObjectPerPodMetricReplicas`).
pub fn object_average(current: i32, usage_milli: i64, target_milli: i64) -> Proposal {
    let mut replicas = current;
    let ratio = usage_milli as f64 / (target_milli as f64 * current as f64);
    if current == 0 || (1.0 - ratio).abs() > TOLERANCE {
        replicas = ceil_i32(usage_milli as f64 / target_milli as f64);
    }
    let avg = if current > 0 {
        (usage_milli as f64 / current as f64).ceil() as i64
    } else {
        usage_milli
    };
    Proposal {
        replicas,
        utilization: None,
        milli: avg,
    }
}

// ---------------------------------------------------------------------------------------
// Normalization: stabilization, rate limits, bounds.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period: Duration,
}

/// One direction of `spec.behavior` with Kubernetes' defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub stabilization: Duration,
    pub select: Select,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    pub up: Rules,
    pub down: Rules,
}

impl Rules {
    /// Defaults of `scaleUp`: no window, max of 4 pods or 100% per 15 s.
    pub fn default_up() -> Rules {
        Rules {
            stabilization: Duration::ZERO,
            select: Select::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
            ],
        }
    }

    /// Defaults of `scaleDown`: a 300 s window, 100% per 15 s.
    pub fn default_down() -> Rules {
        Rules {
            stabilization: DOWNSCALE_STABILIZATION,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
        }
    }

    fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug)]
struct Recommendation {
    replicas: i32,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct ScaleEvent {
    change: i32,
    at: Instant,
    outdated: bool,
}

/// What the controller remembers of one HPA between passes (Kubernetes keeps the same in
/// memory: a restart forgets it, which only shortens windows once).
#[derive(Clone, Debug, Default)]
pub struct History {
    recommendations: Vec<Recommendation>,
    ups: Vec<ScaleEvent>,
    downs: Vec<ScaleEvent>,
}

/// A condition to set: (status true?, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn cond(status: bool, reason: &'static str, message: &str) -> Cond {
    Cond {
        status,
        reason,
        message: message.to_string(),
    }
}

/// The normalized count with the AbleToScale and ScalingLimited conditions it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    pub replicas: i32,
    pub able_to_scale: Cond,
    pub scaling_limited: Cond,
}

const READY_FOR_NEW_SCALE: &str = "recommended size matches current size";
const SCALE_DOWN_STABILIZED: &str = "recent recommendations were higher than current one, applying the highest recent recommendation";
const SCALE_UP_STABILIZED: &str =
    "recent recommendations were lower than current one, applying the lowest recent recommendation";
const WITHIN_RANGE: &str = "the desired count is within the acceptable range";
const TOO_MANY: &str = "the desired replica count is more than the maximum replica count";
const TOO_FEW: &str = "the desired replica count is less than the minimum replica count";
const UP_LIMIT: &str = "the desired replica count is increasing faster than the maximum scale rate";
const DOWN_LIMIT: &str =
    "the desired replica count is decreasing faster than the maximum scale rate";

impl History {
    /// Without `behavior`: the highest recommendation of the downscale window, then the
    /// bounds and the legacy scale-up limit (`max(2 * current, 4)`).
    pub fn normalize(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        window: Duration,
        now: Instant,
    ) -> Normalized {
        let mut highest = desired;
        let mut old = None;
        for (i, r) in self.recommendations.iter().enumerate() {
            if r.at + window < now {
                old = Some(i);
            } else if r.replicas > highest {
                highest = r.replicas;
            }
        }
        let rec = Recommendation {
            replicas: desired,
            at: now,
        };
        match old {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
        let able_to_scale = if highest != desired {
            cond(true, "ScaleDownStabilized", SCALE_DOWN_STABILIZED)
        } else {
            cond(true, "ReadyForNewScale", READY_FOR_NEW_SCALE)
        };
        let up_limit = (2 * current).max(4);
        let (max_allowed, reason, message) = if max > up_limit {
            (up_limit, "ScaleUpLimit", UP_LIMIT)
        } else {
            (max, "TooManyReplicas", TOO_MANY)
        };
        let (replicas, reason, message) = if highest < min {
            (min, "TooFewReplicas", TOO_FEW)
        } else if highest > max_allowed {
            (max_allowed, reason, message)
        } else {
            (highest, "DesiredWithinRange", WITHIN_RANGE)
        };
        Normalized {
            replicas,
            able_to_scale,
            scaling_limited: cond(replicas != highest, reason, message),
        }
    }

    /// With `behavior`: stabilize between the lowest recommendation of the scale-up window
    /// and the highest of the scale-down window, then apply the rate policies and bounds.
    pub fn normalize_with(
        &mut self,
        b: &Behavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Instant,
    ) -> Normalized {
        let mut up = desired;
        let mut down = desired;
        let mut old = None;
        for (i, r) in self.recommendations.iter().enumerate() {
            let in_up = r.at + b.up.stabilization > now;
            let in_down = r.at + b.down.stabilization > now;
            if in_up {
                up = up.min(r.replicas);
            }
            if in_down {
                down = down.max(r.replicas);
            }
            if !in_up && !in_down {
                old = Some(i);
            }
        }
        let stabilized = current.max(up).min(down);
        let rec = Recommendation {
            replicas: desired,
            at: now,
        };
        match old {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
        let able_to_scale = if stabilized != desired {
            if desired >= current {
                cond(true, "ScaleUpStabilized", SCALE_UP_STABILIZED)
            } else {
                cond(true, "ScaleDownStabilized", SCALE_DOWN_STABILIZED)
            }
        } else {
            cond(true, "ReadyForNewScale", READY_FOR_NEW_SCALE)
        };
        let (replicas, reason, message) = self.rate_limit(b, current, stabilized, min, max, now);
        Normalized {
            replicas,
            able_to_scale,
            scaling_limited: cond(replicas != stabilized, reason, message),
        }
    }

    fn changed_within(events: &[ScaleEvent], period: Duration, now: Instant) -> i32 {
        events
            .iter()
            .filter(|e| !e.outdated && e.at + period > now)
            .map(|e| e.change)
            .sum()
    }

    fn rate_limit(
        &self,
        b: &Behavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Instant,
    ) -> (i32, &'static str, &'static str) {
        let period_start = |p: &Policy| {
            current - Self::changed_within(&self.ups, p.period, now)
                + Self::changed_within(&self.downs, p.period, now)
        };
        if desired > current {
            let limit = match b.up.select {
                Select::Disabled => current,
                select => {
                    let proposals = b.up.policies.iter().map(|p| {
                        let start = period_start(p);
                        match p.kind {
                            PolicyKind::Pods => start + p.value,
                            PolicyKind::Percent => {
                                (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32
                            }
                        }
                    });
                    if select == Select::Min {
                        proposals.min().unwrap_or(i32::MAX)
                    } else {
                        proposals.max().unwrap_or(i32::MIN)
                    }
                }
            }
            .max(current);
            let (allowed, reason, message) = if max > limit {
                (limit, "ScaleUpLimit", UP_LIMIT)
            } else {
                (max, "TooManyReplicas", TOO_MANY)
            };
            if desired > allowed {
                return (allowed, reason, message);
            }
        } else if desired < current {
            let limit = match b.down.select {
                Select::Disabled => current,
                select => {
                    let proposals = b.down.policies.iter().map(|p| {
                        let start = period_start(p);
                        match p.kind {
                            PolicyKind::Pods => start - p.value,
                            PolicyKind::Percent => {
                                (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32
                            }
                        }
                    });
                    // Min selects the smallest change, that is the highest count.
                    if select == Select::Min {
                        proposals.max().unwrap_or(i32::MIN)
                    } else {
                        proposals.min().unwrap_or(i32::MAX)
                    }
                }
            }
            .min(current);
            let (allowed, reason, message) = if min < limit {
                (limit, "ScaleDownLimit", DOWN_LIMIT)
            } else {
                (min, "TooFewReplicas", TOO_FEW)
            };
            if desired < allowed {
                return (allowed, reason, message);
            }
        }
        (desired, "DesiredWithinRange", WITHIN_RANGE)
    }

    /// Remembers a rescale for the rate policies (`storeScaleEvent`).
    pub fn record_scale(&mut self, b: Option<&Behavior>, prev: i32, new: i32, now: Instant) {
        let Some(b) = b else { return };
        let (events, rules, change) = if new > prev {
            (&mut self.ups, &b.up, new - prev)
        } else {
            (&mut self.downs, &b.down, prev - new)
        };
        let longest = rules.longest_period();
        let mut slot = None;
        for (i, e) in events.iter_mut().enumerate() {
            if e.at + longest < now {
                e.outdated = true;
                slot = Some(i);
            }
        }
        let ev = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match slot {
            Some(i) => events[i] = ev,
            None => events.push(ev),
        }
    }
}

/// The first bound applied before any metric is read (`reconcileAutoscaler`): a target
/// outside [min, max] goes to the nearest bound with this reason.
pub fn out_of_bounds(current: i32, min: i32, max: i32) -> Option<(i32, &'static str)> {
    if current > max {
        Some((max, "Current number of replicas above Spec.MaxReplicas"))
    } else if current < min {
        Some((min, "Current number of replicas below Spec.MinReplicas"))
    } else {
        None
    }
}
