//! Pod affinity and anti-affinity (`InterPodAffinity`): required terms filter, preferred
//! terms score, and existing pods' terms apply to the incoming pod symmetrically.
//!
//! A term selects pods by labels in some namespaces and names a topology key; the domain of
//! a node is its value of that label. `namespaceSelector` is matched against the label every
//! namespace carries, `kubernetes.io/metadata.name`.

use std::collections::{BTreeMap, HashMap, HashSet};

use bosun_api::matching::LabelMatcher;
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::plugins::{CycleState, Filter, NodeInfo, Reject, Score};

/// Weight an existing pod's required affinity term adds to a node in scoring
/// (`hardPodAffinityWeight`).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Merges `matchLabelKeys`/`mismatchLabelKeys` (values taken from the owning pod) into the
/// selector, as upstream does at admission.
fn selector_of(term: &PodAffinityTerm, owner: &Pod) -> LabelMatcher {
    let Some(sel) = term.label_selector.as_ref() else {
        // No selector selects nothing.
        return LabelMatcher::new(None);
    };
    let labels = owner.metadata.labels.as_ref();
    let mut sel: LabelSelector = sel.clone();
    let extra = |keys: &Option<Vec<String>>, op: &str| -> Vec<LabelSelectorRequirement> {
        keys.iter()
            .flatten()
            .filter_map(|k| {
                let v = labels?.get(k)?;
                Some(LabelSelectorRequirement {
                    key: k.clone(),
                    operator: op.into(),
                    values: Some(vec![v.clone()]),
                })
            })
            .collect()
    };
    let mut more = extra(&term.match_label_keys, "In");
    more.extend(extra(&term.mismatch_label_keys, "NotIn"));
    if !more.is_empty() {
        sel.match_expressions
            .get_or_insert_with(Vec::new)
            .extend(more);
    }
    LabelMatcher::new(Some(&sel))
}

/// One term, ready to match pods.
#[derive(Clone)]
pub struct Term {
    selector: LabelMatcher,
    namespaces: HashSet<String>,
    ns_selector: Option<LabelMatcher>,
    pub key: String,
    pub weight: i64,
}

impl Term {
    pub fn new(t: &PodAffinityTerm, owner: &Pod, weight: i64) -> Term {
        let own_ns = owner.metadata.namespace.clone().unwrap_or_default();
        let mut namespaces: HashSet<String> = t.namespaces.iter().flatten().cloned().collect();
        let ns_selector = t
            .namespace_selector
            .as_ref()
            .map(|s| LabelMatcher::new(Some(s)));
        if namespaces.is_empty() && ns_selector.is_none() {
            namespaces.insert(own_ns);
        }
        Term {
            selector: selector_of(t, owner),
            namespaces,
            ns_selector,
            key: t.topology_key.clone(),
            weight,
        }
    }

    pub fn matches(&self, pod: &Pod) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let ns_ok = self.namespaces.contains(ns)
            || self.ns_selector.as_ref().is_some_and(|m| {
                let labels: BTreeMap<String, String> =
                    [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into();
                m.matches(Some(&labels))
            });
        ns_ok && self.selector.matches(pod.metadata.labels.as_ref())
    }
}

/// The pod's terms of one kind: required (weight 0) or preferred (with weights).
#[derive(Clone)]
pub struct Terms {
    pub required_affinity: Vec<Term>,
    pub required_anti: Vec<Term>,
    pub preferred_affinity: Vec<Term>,
    pub preferred_anti: Vec<Term>,
}

impl Terms {
    pub fn of(pod: &Pod) -> Terms {
        let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let aff = a.and_then(|a| a.pod_affinity.as_ref());
        let anti = a.and_then(|a| a.pod_anti_affinity.as_ref());
        let req = |ts: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            ts.into_iter()
                .flatten()
                .map(|t| Term::new(t, pod, 0))
                .collect()
        };
        Terms {
            required_affinity: req(aff.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti: req(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: aff
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                .map(|w| Term::new(&w.pod_affinity_term, pod, i64::from(w.weight)))
                .collect(),
            preferred_anti: anti
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                .map(|w| Term::new(&w.pod_affinity_term, pod, i64::from(w.weight)))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
    }
}

fn active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn domain<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a String> {
    node.labels().get(key)
}

type Domains = HashMap<String, u32>;

fn bump(map: &mut Domains, v: &str, delta: i32) {
    let c = map.entry(v.to_string()).or_default();
    *c = c.saturating_add_signed(delta);
    if *c == 0 {
        map.remove(v);
    }
}

#[derive(Clone)]
struct FilterState {
    /// The incoming pod's required terms.
    terms: Terms,
    /// (key, value) domains an existing pod's required anti-affinity keeps this pod out of,
    /// with how many such pods there are.
    existing_anti: HashMap<(String, String), u32>,
    /// Per required affinity term: matching pods per domain.
    affinity: Vec<Domains>,
    /// Per required anti-affinity term: matching pods per domain.
    anti: Vec<Domains>,
    /// The pod matches its own affinity terms: the first pod of a group may go anywhere the
    /// topology keys exist while no pod anywhere matches them.
    self_match: bool,
}

impl FilterState {
    /// Counts `other` on `node` (`delta` 1) or takes it away (-1).
    fn apply(&mut self, pod: &Pod, other: &Pod, node: &NodeInfo, delta: i32) {
        if !active(other) {
            return;
        }
        if other.metadata.uid.is_some() && other.metadata.uid == pod.metadata.uid {
            return;
        }
        if other
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .is_some_and(|a| a.pod_anti_affinity.is_some())
        {
            for t in Terms::of(other).required_anti {
                if let Some(v) = domain(node, &t.key)
                    && t.matches(pod)
                {
                    let c = self
                        .existing_anti
                        .entry((t.key.clone(), v.clone()))
                        .or_default();
                    *c = c.saturating_add_signed(delta);
                    if *c == 0 {
                        self.existing_anti.remove(&(t.key, v.clone()));
                    }
                }
            }
        }
        for (t, map) in self
            .terms
            .required_affinity
            .iter()
            .zip(self.affinity.iter_mut())
        {
            if let Some(v) = domain(node, &t.key)
                && t.matches(other)
            {
                bump(map, v, delta);
            }
        }
        for (t, map) in self.terms.required_anti.iter().zip(self.anti.iter_mut()) {
            if let Some(v) = domain(node, &t.key)
                && t.matches(other)
            {
                bump(map, v, delta);
            }
        }
    }
}

/// Filter and score for pod affinity and anti-affinity.
pub struct InterPodAffinity;

impl Filter for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, pod: &Pod, nodes: &[NodeInfo]) -> CycleState {
        let terms = Terms::of(pod);
        let mut existing_anti: HashMap<(String, String), u32> = HashMap::new();
        for n in nodes {
            for e in n.affinity_pods.iter().filter(|p| active(p)) {
                for t in Terms::of(e).required_anti {
                    if let Some(v) = domain(n, &t.key)
                        && t.matches(pod)
                    {
                        *existing_anti.entry((t.key.clone(), v.clone())).or_default() += 1;
                    }
                }
            }
        }
        if existing_anti.is_empty()
            && terms.required_affinity.is_empty()
            && terms.required_anti.is_empty()
        {
            return None;
        }
        let mut affinity: Vec<Domains> = terms
            .required_affinity
            .iter()
            .map(|_| Domains::new())
            .collect();
        let mut anti: Vec<Domains> = terms.required_anti.iter().map(|_| Domains::new()).collect();
        if !terms.required_affinity.is_empty() || !terms.required_anti.is_empty() {
            for n in nodes {
                for p in n.pods.iter().filter(|p| active(p)) {
                    for (t, map) in terms.required_affinity.iter().zip(affinity.iter_mut()) {
                        if let Some(v) = domain(n, &t.key)
                            && t.matches(p)
                        {
                            bump(map, v, 1);
                        }
                    }
                    for (t, map) in terms.required_anti.iter().zip(anti.iter_mut()) {
                        if let Some(v) = domain(n, &t.key)
                            && t.matches(p)
                        {
                            bump(map, v, 1);
                        }
                    }
                }
            }
        }
        let self_match = terms.required_affinity.iter().all(|t| t.matches(pod));
        Some(Box::new(FilterState {
            terms,
            existing_anti,
            affinity,
            anti,
            self_match,
        }))
    }

    fn filter(&self, _pod: &Pod, node: &NodeInfo, state: &CycleState) -> Result<(), Reject> {
        let Some(st) = state.as_ref().and_then(|s| s.downcast_ref::<FilterState>()) else {
            return Ok(());
        };
        let labels = node.labels();
        let keys = st.terms.required_affinity.iter().map(|t| &t.key);
        let first_of_group =
            !st.affinity.is_empty() && st.affinity.iter().all(HashMap::is_empty) && st.self_match;
        let affinity_ok = if first_of_group {
            keys.clone().all(|k| labels.contains_key(k))
        } else {
            keys.zip(&st.affinity)
                .all(|(k, map)| labels.get(k).is_some_and(|v| map.contains_key(v)))
        };
        if !affinity_ok {
            return Err(Reject::unresolvable(
                "node(s) didn't match pod affinity rules",
            ));
        }
        if st
            .terms
            .required_anti
            .iter()
            .zip(&st.anti)
            .any(|(t, map)| labels.get(&t.key).is_some_and(|v| map.contains_key(v)))
        {
            return Err(Reject::resolvable(
                "node(s) didn't match pod anti-affinity rules",
            ));
        }
        // Upstream's order: the pod's affinity, its anti-affinity, then existing pods'.
        if st
            .existing_anti
            .keys()
            .any(|(k, v)| labels.get(k) == Some(v))
        {
            return Err(Reject::resolvable(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        Ok(())
    }

    fn add_pod(&self, pod: &Pod, state: &mut CycleState, other: &Pod, node: &NodeInfo) {
        if let Some(st) = state.as_mut().and_then(|s| s.downcast_mut::<FilterState>()) {
            st.apply(pod, other, node, 1);
        }
    }

    fn remove_pod(&self, pod: &Pod, state: &mut CycleState, other: &Pod, node: &NodeInfo) {
        if let Some(st) = state.as_mut().and_then(|s| s.downcast_mut::<FilterState>()) {
            st.apply(pod, other, node, -1);
        }
    }

    fn fork_state(&self, pod: &Pod, state: &CycleState) -> Option<CycleState> {
        let st = match state.as_ref().and_then(|s| s.downcast_ref::<FilterState>()) {
            Some(st) => st.clone(),
            // Nothing constrained the pod so far; a pod added may (its anti-affinity).
            None => {
                let terms = Terms::of(pod);
                FilterState {
                    affinity: vec![Domains::new(); terms.required_affinity.len()],
                    anti: vec![Domains::new(); terms.required_anti.len()],
                    self_match: terms.required_affinity.iter().all(|t| t.matches(pod)),
                    existing_anti: HashMap::new(),
                    terms,
                }
            }
        };
        Some(Some(Box::new(st)))
    }
}

/// Score per (topology key, value) domain.
struct ScoreState(HashMap<(String, String), i64>);

impl Score for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }

    fn pre_score(&self, pod: &Pod, nodes: &[NodeInfo], _feasible: &[&NodeInfo]) -> CycleState {
        let terms = Terms::of(pod);
        let mut scores: HashMap<(String, String), i64> = HashMap::new();
        let mut add = |n: &NodeInfo, key: &str, w: i64| {
            if let Some(v) = domain(n, key) {
                *scores.entry((key.to_string(), v.clone())).or_default() += w;
            }
        };
        let incoming = !terms.preferred_affinity.is_empty() || !terms.preferred_anti.is_empty();
        for n in nodes {
            if incoming {
                for p in n.pods.iter().filter(|p| active(p)) {
                    for t in terms.preferred_affinity.iter().filter(|t| t.matches(p)) {
                        add(n, &t.key, t.weight);
                    }
                    for t in terms.preferred_anti.iter().filter(|t| t.matches(p)) {
                        add(n, &t.key, -t.weight);
                    }
                }
            }
            // Existing pods' terms that select the incoming pod count too.
            for e in n.affinity_pods.iter().filter(|p| active(p)) {
                let et = Terms::of(e);
                if et.is_empty() {
                    continue;
                }
                for t in et.required_affinity.iter().filter(|t| t.matches(pod)) {
                    add(n, &t.key, HARD_POD_AFFINITY_WEIGHT);
                }
                for t in et.preferred_affinity.iter().filter(|t| t.matches(pod)) {
                    add(n, &t.key, t.weight);
                }
                for t in et.preferred_anti.iter().filter(|t| t.matches(pod)) {
                    add(n, &t.key, -t.weight);
                }
            }
        }
        if scores.is_empty() {
            None
        } else {
            Some(Box::new(ScoreState(scores)))
        }
    }

    fn score(&self, _pod: &Pod, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(st) = state.as_ref().and_then(|s| s.downcast_ref::<ScoreState>()) else {
            return 0;
        };
        let labels = node.labels();
        st.0.iter()
            .filter(|((k, v), _)| labels.get(k) == Some(v))
            .map(|(_, s)| *s)
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        let min = scores.iter().copied().min().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max > min {
                100 * (*s - min) / (max - min)
            } else {
                0
            };
        }
    }
}
