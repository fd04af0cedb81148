//! Spreading pods over topology domains.
//!
//! [`PodTopologySpread`] follows `spec.topologySpreadConstraints`: `DoNotSchedule`
//! constraints filter (skew = matching pods in the node's domain + the pod itself - the
//! fewest in any domain, which counts as 0 while fewer than `minDomains` domains exist),
//! `ScheduleAnyway` ones score. Only nodes that pass the pod's node affinity (the default
//! `nodeAffinityPolicy: Honor`) and carry every constraint's key are counted; taints are
//! ignored unless `nodeTaintsPolicy: Honor`.
//!
//! [`DefaultSpread`] is Kubernetes' system default for pods without constraints: pods of one
//! controller (ReplicaSet, StatefulSet ...) spread over nodes (`kubernetes.io/hostname`,
//! maxSkew 3) and zones (`topology.kubernetes.io/zone`, maxSkew 5), as soft constraints.

use std::collections::HashMap;

use bosun_api::matching::LabelMatcher;
use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

use crate::plugins::{
    CycleState, Filter, NodeInfo, Reject, Score, TaintToleration, node_matches, owner_uid,
};

pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";

#[derive(Clone)]
struct Constraint {
    key: String,
    max_skew: i64,
    min_domains: usize,
    selector: LabelMatcher,
    honor_affinity: bool,
    honor_taints: bool,
}

fn constraints(pod: &Pod, hard: bool) -> Vec<Constraint> {
    let want = if hard {
        "DoNotSchedule"
    } else {
        "ScheduleAnyway"
    };
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.when_unsatisfiable == want)
        .map(|c| constraint(c, pod))
        .collect()
}

fn constraint(c: &TopologySpreadConstraint, pod: &Pod) -> Constraint {
    let mut sel = c.label_selector.clone();
    // matchLabelKeys: the pod's own values join the selector.
    let labels = pod.metadata.labels.as_ref();
    let more: Vec<LabelSelectorRequirement> = c
        .match_label_keys
        .iter()
        .flatten()
        .filter_map(|k| {
            Some(LabelSelectorRequirement {
                key: k.clone(),
                operator: "In".into(),
                values: Some(vec![labels?.get(k)?.clone()]),
            })
        })
        .collect();
    if let Some(s) = sel.as_mut()
        && !more.is_empty()
    {
        s.match_expressions
            .get_or_insert_with(Vec::new)
            .extend(more);
    }
    Constraint {
        key: c.topology_key.clone(),
        max_skew: i64::from(c.max_skew.max(1)),
        min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
        selector: LabelMatcher::new(sel.as_ref()),
        honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
        honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
    }
}

fn counts_pod(c: &Constraint, ns: &str, p: &Pod) -> bool {
    p.metadata.namespace.as_deref().unwrap_or("") == ns
        && p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
        && c.selector.matches(p.metadata.labels.as_ref())
}

/// Whether a node takes part in counting for these constraints.
fn eligible(pod: &Pod, cs: &[Constraint], n: &NodeInfo) -> bool {
    let labels = n.labels();
    cs.iter().all(|c| labels.contains_key(&c.key))
        && (!cs.iter().any(|c| c.honor_affinity) || node_matches(pod, n))
        && (!cs.iter().any(|c| c.honor_taints) || TaintToleration.filter(pod, n, &None).is_ok())
}

/// Matching pods per domain value, for each constraint (every eligible domain present).
fn domain_counts(pod: &Pod, cs: &[Constraint], nodes: &[NodeInfo]) -> Vec<HashMap<String, i64>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let mut out: Vec<HashMap<String, i64>> = cs.iter().map(|_| HashMap::new()).collect();
    for n in nodes.iter().filter(|n| eligible(pod, cs, n)) {
        for (c, counts) in cs.iter().zip(out.iter_mut()) {
            let Some(v) = n.labels().get(&c.key) else {
                continue;
            };
            let here = n.pods.iter().filter(|p| counts_pod(c, ns, p)).count() as i64;
            *counts.entry(v.clone()).or_default() += here;
        }
    }
    out
}

#[derive(Clone)]
struct FilterState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    self_match: Vec<i64>,
}

/// `topologySpreadConstraints`.
pub struct PodTopologySpread;

impl Filter for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_filter(&self, pod: &Pod, nodes: &[NodeInfo]) -> CycleState {
        let cs = constraints(pod, true);
        if cs.is_empty() {
            return None;
        }
        let counts = domain_counts(pod, &cs, nodes);
        let self_match = cs
            .iter()
            .map(|c| i64::from(c.selector.matches(pod.metadata.labels.as_ref())))
            .collect();
        Some(Box::new(FilterState {
            constraints: cs,
            counts,
            self_match,
        }))
    }

    fn filter(&self, _pod: &Pod, node: &NodeInfo, state: &CycleState) -> Result<(), Reject> {
        let Some(st) = state.as_ref().and_then(|s| s.downcast_ref::<FilterState>()) else {
            return Ok(());
        };
        let labels = node.labels();
        for ((c, counts), me) in st.constraints.iter().zip(&st.counts).zip(&st.self_match) {
            let Some(v) = labels.get(&c.key) else {
                return Err(Reject::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let min = if counts.len() < c.min_domains {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            };
            let here = counts.get(v).copied().unwrap_or(0);
            if here + me - min > c.max_skew {
                return Err(Reject::resolvable(
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }

    fn add_pod(&self, pod: &Pod, state: &mut CycleState, other: &Pod, node: &NodeInfo) {
        adjust(pod, state, other, node, 1);
    }

    fn remove_pod(&self, pod: &Pod, state: &mut CycleState, other: &Pod, node: &NodeInfo) {
        adjust(pod, state, other, node, -1);
    }

    fn fork_state(&self, _pod: &Pod, state: &CycleState) -> Option<CycleState> {
        // Without hard constraints (no state) other pods do not matter.
        let st = state.as_ref()?.downcast_ref::<FilterState>()?;
        Some(Some(Box::new(st.clone())))
    }
}

/// Counts `other` in its node's domains (`delta` 1) or takes it away (-1).
fn adjust(pod: &Pod, state: &mut CycleState, other: &Pod, node: &NodeInfo, delta: i64) {
    let Some(st) = state.as_mut().and_then(|s| s.downcast_mut::<FilterState>()) else {
        return;
    };
    if !eligible(pod, &st.constraints, node) {
        return;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    for (c, counts) in st.constraints.iter().zip(st.counts.iter_mut()) {
        if let Some(v) = node.labels().get(&c.key)
            && counts_pod(c, ns, other)
        {
            let n = counts.entry(v.clone()).or_default();
            *n = (*n + delta).max(0);
        }
    }
}

/// Soft constraints scored as upstream: matching pods in the node's domain, weighted by the
/// log of the number of domains, plus `maxSkew - 1`; fewer is better.
struct ScoreState {
    keys: Vec<(String, f64, i64)>,
    counts: Vec<HashMap<String, i64>>,
}

fn spread_score(st: &ScoreState, node: &NodeInfo) -> i64 {
    let labels = node.labels();
    let mut total = 0.0;
    for ((key, weight, skew), counts) in st.keys.iter().zip(&st.counts) {
        let Some(v) = labels.get(key) else {
            // Nodes without the key are scored last.
            return i64::MAX;
        };
        let c = counts.get(v).copied().unwrap_or(0);
        total += count_score(c, *weight, *skew);
    }
    (total * 1000.0).round() as i64
}

/// Fewer matching pods is better: `100 * (max + min - s) / max`, nodes missing a key get 0.
fn normalize_spread(scores: &mut [i64]) {
    let valid = scores.iter().copied().filter(|s| *s != i64::MAX);
    let max = valid.clone().max().unwrap_or(0);
    let min = valid.min().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if *s == i64::MAX {
            0
        } else if max == 0 {
            100
        } else {
            100 * (max + min - *s) / max
        };
    }
}

fn score_state(keys: Vec<(String, i64)>, counts: Vec<HashMap<String, i64>>) -> ScoreState {
    ScoreState {
        keys: keys
            .into_iter()
            .zip(&counts)
            .map(|((k, skew), c)| (k, ((c.len() + 2) as f64).ln(), skew))
            .collect(),
        counts,
    }
}

impl Score for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn pre_score(&self, pod: &Pod, nodes: &[NodeInfo], _feasible: &[&NodeInfo]) -> CycleState {
        let cs = constraints(pod, false);
        if cs.is_empty() {
            return None;
        }
        let counts = domain_counts(pod, &cs, nodes);
        let keys = cs.iter().map(|c| (c.key.clone(), c.max_skew)).collect();
        Some(Box::new(score_state(keys, counts)))
    }
    fn score(&self, _pod: &Pod, node: &NodeInfo, state: &CycleState) -> i64 {
        match state.as_ref().and_then(|s| s.downcast_ref::<ScoreState>()) {
            Some(st) => spread_score(st, node),
            None => 0,
        }
    }
    fn normalize(&self, scores: &mut [i64]) {
        if scores.iter().any(|s| *s != 0) {
            normalize_spread(scores);
        }
    }
}

/// Kubernetes' default spreading of a controller's pods over nodes and zones.
///
/// Scored as upstream (`count * log(domains + 2) + maxSkew - 1` per key, fewer is better),
/// with one difference: the zone key counts only when every feasible node carries it.
/// Upstream scores a node without a zone label on the hostname key alone, which makes it
/// the best node for every replica until it holds several more than the others; in a
/// cluster where only some machines were given a zone (bosun's server node has none unless
/// asked) that put a Deployment's replicas on one node.
struct DefaultState {
    owner: String,
    node_weight: f64,
    /// Per feasible node, in order: the owner's pods there and the index of its zone.
    per_node: Vec<(u32, usize)>,
    /// Matching pods per zone and the zone key's weight, when every feasible node has a zone.
    zones: Option<Zones>,
}

struct Zones {
    /// Zone names, in the order of their indices.
    names: Vec<String>,
    counts: Vec<i64>,
    weight: f64,
}

impl DefaultState {
    fn score(&self, owned: u32, zone: Option<usize>) -> i64 {
        let mut total = count_score(i64::from(owned), self.node_weight, DEFAULT_NODE_SKEW);
        if let Some(z) = &self.zones {
            let c = zone.and_then(|i| z.counts.get(i)).copied().unwrap_or(0);
            total += count_score(c, z.weight, DEFAULT_ZONE_SKEW);
        }
        (total * 1000.0).round() as i64
    }
}

/// `maxSkew` of the system default constraints (hostname 3, zone 5).
const DEFAULT_NODE_SKEW: i64 = 3;
const DEFAULT_ZONE_SKEW: i64 = 5;

fn count_score(count: i64, weight: f64, max_skew: i64) -> f64 {
    count as f64 * weight + (max_skew - 1) as f64
}

pub struct DefaultSpread;

impl Score for DefaultSpread {
    fn name(&self) -> &'static str {
        "DefaultPodTopologySpread"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn pre_score(&self, pod: &Pod, _nodes: &[NodeInfo], feasible: &[&NodeInfo]) -> CycleState {
        let has_own = pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .is_some_and(|c| !c.is_empty());
        let owner = owner_uid(pod)?;
        if has_own {
            return None;
        }
        // Counted over the nodes the pod may go to, as upstream's default constraints do,
        // in one pass that keeps each node's part for `score_all`.
        let mut index: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
        let mut names: Vec<&str> = Vec::new();
        let mut counts: Vec<i64> = Vec::new();
        let mut all_zoned = true;
        let per_node = feasible
            .iter()
            .map(|n| {
                let owned = n.owned_by(owner);
                let zone = match n.zone() {
                    Some(z) => *index.entry(z).or_insert_with(|| {
                        names.push(z);
                        counts.push(0);
                        names.len() - 1
                    }),
                    None => {
                        all_zoned = false;
                        usize::MAX
                    }
                };
                if let Some(c) = counts.get_mut(zone) {
                    *c += i64::from(owned);
                }
                (owned, zone)
            })
            .collect();
        let zones = all_zoned.then(|| Zones {
            weight: ((names.len() + 2) as f64).ln(),
            names: names.iter().map(|z| z.to_string()).collect(),
            counts,
        });
        Some(Box::new(DefaultState {
            owner: owner.to_string(),
            node_weight: ((feasible.len() + 2) as f64).ln(),
            per_node,
            zones,
        }))
    }
    fn score(&self, _pod: &Pod, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(st) = state
            .as_ref()
            .and_then(|s| s.downcast_ref::<DefaultState>())
        else {
            return 0;
        };
        let zone = st.zones.as_ref().and_then(|z| {
            let name = node.zone()?;
            z.names.iter().position(|n| n == name)
        });
        st.score(node.owned_by(&st.owner), zone)
    }
    fn score_all(&self, pod: &Pod, feasible: &[&NodeInfo], state: &CycleState) -> Vec<i64> {
        match state
            .as_ref()
            .and_then(|s| s.downcast_ref::<DefaultState>())
        {
            Some(st) if st.per_node.len() == feasible.len() => st
                .per_node
                .iter()
                .map(|&(owned, zone)| st.score(owned, Some(zone)))
                .collect(),
            _ => feasible.iter().map(|n| self.score(pod, n, state)).collect(),
        }
    }
    fn normalize(&self, scores: &mut [i64]) {
        if scores.iter().any(|s| *s != 0) {
            normalize_spread(scores);
        }
    }
}
