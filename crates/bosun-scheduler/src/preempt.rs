//! Preemption (`DefaultPreemption`): when a pod fits nowhere, find a node where removing
//! pods of lower priority makes it fit, removing as few and as unimportant pods as possible.
//!
//! On each node whose filters failed for a reason removal can fix, every lower-priority pod
//! is taken away; if the pod then fits, the removed pods are given back one by one, most
//! important first, those a PodDisruptionBudget protects before the others, as long as the
//! pod still fits. The victims are those that could not be given back. Among the nodes the
//! one chosen has the fewest PDB violations, then the lowest highest victim priority, then
//! the lowest sum of victim priorities, then the fewest victims.
//!
//! Every filter runs with the candidate victims removed, cluster-wide ones included: the
//! state of pod (anti-)affinity and topology spread is updated for each removed or given-back
//! pod (`Filter::remove_pod`/`add_pod`), so preemption also clears anti-affinity and spread
//! conflicts, not only resources and host ports. Pods already nominated to a node with at
//! least the preemptor's priority keep the room they were promised.

use std::collections::BTreeMap;
use std::sync::Arc;

use bosun_api::matching::LabelMatcher;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::plugins::{
    CycleState, Diagnosis, Filter, NodeInfo, Nominated, histogram, nominated_for,
};

pub fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn start_time(p: &Pod) -> Option<jiff::Timestamp> {
    p.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(p.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<Pod>>,
    pub pdb_violations: usize,
}

/// Budgets still allowing disruptions, consumed as victims are picked.
struct Budgets {
    pdbs: Vec<(String, LabelMatcher, i32)>,
}

impl Budgets {
    fn new(pdbs: &[Arc<PodDisruptionBudget>]) -> Self {
        Budgets {
            pdbs: pdbs
                .iter()
                .map(|p| {
                    (
                        p.metadata.namespace.clone().unwrap_or_default(),
                        LabelMatcher::new(p.spec.as_ref().and_then(|s| s.selector.as_ref())),
                        p.status.as_ref().map_or(0, |s| s.disruptions_allowed),
                    )
                })
                .collect(),
        }
    }

    /// Takes one disruption from every budget covering `p`; true when one had none left.
    fn take(&mut self, p: &Pod) -> bool {
        let ns = p.metadata.namespace.as_deref().unwrap_or("");
        let mut violates = false;
        for (pns, sel, allowed) in self.pdbs.iter_mut() {
            if pns == ns && sel.matches(p.metadata.labels.as_ref()) {
                *allowed -= 1;
                if *allowed < 0 {
                    violates = true;
                }
            }
        }
        violates
    }
}

fn fits(pod: &Pod, node: &NodeInfo, filters: &[Box<dyn Filter>], states: &[CycleState]) -> bool {
    filters
        .iter()
        .zip(states)
        .all(|(f, s)| f.filter(pod, node, s).is_ok())
}

fn victims_on(
    pod: &Pod,
    node: &NodeInfo,
    nodes: &[NodeInfo],
    filters: &[Box<dyn Filter>],
    pdbs: &[Arc<PodDisruptionBudget>],
    nominated: &Nominated,
) -> Option<Candidate> {
    let prio = priority(pod);
    let (mut lower, keep): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = node
        .pods
        .iter()
        .cloned()
        .partition(|p| priority(p) < prio && p.metadata.deletion_timestamp.is_none());
    if lower.is_empty() {
        return None;
    }
    // Every filter runs again with the lower-priority pods of this node gone, the
    // cluster-wide ones (pod anti-affinity, topology spread) included: their state is
    // computed for the whole cluster, then told about each removal, as upstream's
    // SelectVictimsOnNode does through `RemovePod`. Pods nominated here with at least this
    // pod's priority keep their room.
    // (A state that other pods may change is taken in its changeable form, `fork_state`.)
    let mut states: Vec<CycleState> = filters
        .iter()
        .map(|f| {
            let s = f.pre_filter(pod, nodes);
            f.fork_state(pod, &s).unwrap_or(s)
        })
        .collect();
    for p in &lower {
        for (f, s) in filters.iter().zip(states.iter_mut()) {
            f.remove_pod(pod, s, p, node);
        }
    }
    let mut info = NodeInfo::new(node.node.clone(), keep);
    for p in nominated_for(pod, node.name(), nominated) {
        info.add_pod(p.clone());
        for (f, s) in filters.iter().zip(states.iter_mut()) {
            f.add_pod(pod, s, p, node);
        }
    }
    if !fits(pod, &info, filters, &states) {
        return None;
    }
    // Most important first: higher priority, then started earlier.
    lower.sort_by(|a, b| {
        priority(b)
            .cmp(&priority(a))
            .then_with(|| start_time(a).cmp(&start_time(b)))
    });
    let mut budgets = Budgets::new(pdbs);
    let (violating, other): (Vec<_>, Vec<_>) = lower.into_iter().partition(|p| budgets.take(p));
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (group, violates) in [(violating, true), (other, false)] {
        for p in group {
            info.add_pod(p.clone());
            for (f, s) in filters.iter().zip(states.iter_mut()) {
                f.add_pod(pod, s, &p, node);
            }
            if !fits(pod, &info, filters, &states) {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    info.remove_pod(uid);
                }
                for (f, s) in filters.iter().zip(states.iter_mut()) {
                    f.remove_pod(pod, s, &p, node);
                }
                victims.push(p);
                if violates {
                    pdb_violations += 1;
                }
            }
        }
    }
    Some(Candidate {
        node: node.name().to_string(),
        victims,
        pdb_violations,
    })
}

/// Picks the node and victims for `pod`, or explains why there are none (the
/// "preemption: 0/N nodes are available: ..." message).
pub fn select(
    pod: &Pod,
    nodes: &[NodeInfo],
    diagnosis: &Diagnosis,
    filters: &[Box<dyn Filter>],
    pdbs: &[Arc<PodDisruptionBudget>],
    nominated: &Nominated,
) -> Result<Candidate, String> {
    let mut candidates = Vec::new();
    for name in &diagnosis.resolvable {
        let Some(node) = nodes.iter().find(|n| n.name() == name) else {
            continue;
        };
        if let Some(c) = victims_on(pod, node, nodes, filters, pdbs, nominated) {
            candidates.push(c);
        }
    }
    let key = |c: &Candidate| {
        (
            c.pdb_violations,
            c.victims
                .iter()
                .map(|p| priority(p))
                .max()
                .unwrap_or(i32::MIN),
            c.victims
                .iter()
                .map(|p| i64::from(priority(p)))
                .sum::<i64>(),
            c.victims.len(),
        )
    };
    if let Some(best) = candidates.into_iter().min_by_key(key) {
        return Ok(best);
    }
    let mut reasons = BTreeMap::new();
    let not_helpful = diagnosis.nodes - diagnosis.resolvable.len();
    if not_helpful > 0 {
        reasons.insert(
            "Preemption is not helpful for scheduling".to_string(),
            not_helpful,
        );
    }
    if !diagnosis.resolvable.is_empty() {
        reasons.insert(
            "No preemption victims found for incoming pod".to_string(),
            diagnosis.resolvable.len(),
        );
    }
    Err(format!(
        "preemption: 0/{} nodes are available: {}.",
        diagnosis.nodes,
        histogram(&reasons)
    ))
}
