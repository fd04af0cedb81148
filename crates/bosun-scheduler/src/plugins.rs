//! Filter and score plugins, the two seams of a scheduling decision (as in kube-scheduler's
//! framework): filters rule nodes out with a reason, scores rank the survivors. Plugins that
//! need the whole cluster (pod affinity, topology spread) compute it once per pod in
//! `pre_filter`/`pre_score` and read it back per node.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeSelectorTerm, Pod, Taint, Toleration};

use bosun_api::matching::node_term_matches;

use crate::affinity::InterPodAffinity;
use crate::resources::{Resources, allocatable, nonzero_requests, pod_requests};
use crate::spread::{DefaultSpread, PodTopologySpread};

/// Per-pod state a plugin computes over the whole cluster before looking at single nodes.
pub type CycleState = Option<Box<dyn Any + Send + Sync>>;

/// A node with the pods bound to it (including ones this scheduler just bound), and sums
/// kept up to date as pods come and go so that a decision does not re-add every pod.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub pods: Vec<Arc<Pod>>,
    pub requested: Resources,
    nonzero: Resources,
    pub allocatable: Resources,
    /// Pods carrying pod (anti-)affinity terms: the only ones symmetric checks must visit.
    pub affinity_pods: Vec<Arc<Pod>>,
    /// Active pods per controller uid, for default spreading (read for every node of every
    /// decision: a fast hasher rather than SipHash; the keys are uids the server made).
    owners: HashMap<String, u32, foldhash::fast::RandomState>,
    /// The `topology.kubernetes.io/zone` label, read once per Node update.
    zone: Option<Arc<str>>,
    /// The node's Ready condition is True (read once per Node update, not per decision).
    ready: bool,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>, pods: Vec<Arc<Pod>>) -> Self {
        let mut n = NodeInfo {
            allocatable: allocatable(&node),
            ready: node_ready(&node),
            zone: zone_of(&node),
            node,
            ..Default::default()
        };
        for p in pods {
            n.add_pod(p);
        }
        n
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = allocatable(&node);
        self.ready = node_ready(&node);
        self.zone = zone_of(&node);
        self.node = node;
    }

    /// The node's zone (`topology.kubernetes.io/zone`), if labelled.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        self.requested.add(&pod_requests(&pod));
        self.nonzero.add(&nonzero_requests(&pod));
        if has_pod_affinity(&pod) {
            self.affinity_pods.push(pod.clone());
        }
        if let Some(o) = owner_uid(&pod) {
            *self.owners.entry(o.to_string()).or_default() += 1;
        }
        self.pods.push(pod);
    }

    /// Removes the pod with `uid`; returns it when it was here.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<Pod>> {
        let i = self
            .pods
            .iter()
            .position(|p| p.metadata.uid.as_deref() == Some(uid))?;
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod_requests(&pod));
        self.nonzero.sub(&nonzero_requests(&pod));
        self.affinity_pods
            .retain(|p| p.metadata.uid.as_deref() != Some(uid));
        if let Some(o) = owner_uid(&pod)
            && let Some(c) = self.owners.get_mut(o)
        {
            *c -= 1;
            if *c == 0 {
                self.owners.remove(o);
            }
        }
        Some(pod)
    }

    /// How many of this node's pods the controller with `uid` owns.
    pub fn owned_by(&self, uid: &str) -> u32 {
        self.owners.get(uid).copied().unwrap_or(0)
    }
}

fn zone_of(node: &Node) -> Option<Arc<str>> {
    let labels = node.metadata.labels.as_ref()?;
    labels
        .get(crate::spread::ZONE_KEY)
        .map(|z| Arc::from(z.as_str()))
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn has_pod_affinity(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

pub fn owner_uid(p: &Pod) -> Option<&str> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Why a filter ruled a node out. `unresolvable` marks reasons that no preemption can fix
/// (a label or taint the pod does not accept), as `UnschedulableAndUnresolvable` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reasons: Vec<String>,
    pub unresolvable: bool,
}

impl Reject {
    pub fn resolvable(reason: impl Into<String>) -> Self {
        Reject {
            reasons: vec![reason.into()],
            unresolvable: false,
        }
    }
    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Reject {
            reasons: vec![reason.into()],
            unresolvable: true,
        }
    }
}

/// Rules a node out for a pod; the reasons are shown in "0/N nodes are available".
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    /// Computes, once per pod, what `filter` needs from the whole cluster.
    fn pre_filter(&self, _pod: &Pod, _nodes: &[NodeInfo]) -> CycleState {
        None
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, state: &CycleState) -> Result<(), Reject>;
    /// Updates `state` (from [`Filter::pre_filter`]) as if `other` had been added to `node`
    /// (upstream's `PreFilterExtensions.AddPod`): preemption gives victims back one by one.
    fn add_pod(&self, _pod: &Pod, _state: &mut CycleState, _other: &Pod, _node: &NodeInfo) {}
    /// Updates `state` as if `other` had left `node` (`PreFilterExtensions.RemovePod`), so
    /// that cluster-wide checks (pod anti-affinity, topology spread) see a victim gone.
    fn remove_pod(&self, _pod: &Pod, _state: &mut CycleState, _other: &Pod, _node: &NodeInfo) {}
    /// A copy of `state` for [`Filter::add_pod`] to change, when one node is filtered with
    /// the pods nominated to it counted (upstream clones the cycle state there). `None`, the
    /// default, when the state does not depend on other pods: the original serves as it is.
    /// A filter that implements `add_pod` implements this too.
    fn fork_state(&self, _pod: &Pod, _state: &CycleState) -> Option<CycleState> {
        None
    }
}

/// Ranks a feasible node; `normalize` maps the raw scores of all feasible nodes to 0..=100.
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    fn weight(&self) -> i64 {
        1
    }
    fn pre_score(&self, _pod: &Pod, _nodes: &[NodeInfo], _feasible: &[&NodeInfo]) -> CycleState {
        None
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, state: &CycleState) -> i64;
    /// The raw scores of `feasible`, the nodes `pre_score` was given, in their order. The
    /// default asks [`Score::score`] node by node; a plugin that learnt each node's part in
    /// `pre_score` answers from that instead of looking it up again.
    fn score_all(&self, pod: &Pod, feasible: &[&NodeInfo], state: &CycleState) -> Vec<i64> {
        feasible.iter().map(|n| self.score(pod, n, state)).collect()
    }
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Scales scores to 0..=100 by the largest (`DefaultNormalizeScore`); `reverse` makes the
/// smallest raw score the best.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max == 0 {
            if reverse { 100 } else { 0 }
        } else if reverse {
            100 - *s * 100 / max
        } else {
            *s * 100 / max
        };
    }
}

/// The node is Ready and accepts new pods.
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &CycleState) -> Result<(), Reject> {
        if node.node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            // Pods tolerating the unschedulable taint may still go there (DaemonSet pods).
            let taint = Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
                return Err(Reject::unresolvable("node(s) were unschedulable"));
            }
        }
        if node.ready {
            Ok(())
        } else {
            Err(Reject::unresolvable("node(s) were not ready"))
        }
    }
}

pub use bosun_api::matching::tolerates;

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

fn taints(node: &NodeInfo) -> &[Taint] {
    node.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

/// NoSchedule and NoExecute taints must be tolerated; PreferNoSchedule ones count against a
/// node in scoring.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &CycleState) -> Result<(), Reject> {
        let tolerations = tolerations(pod);
        for taint in taints(node) {
            if !matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") {
                continue;
            }
            if !tolerations.iter().any(|t| tolerates(t, taint)) {
                return Err(Reject::unresolvable(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }
}

impl Score for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn weight(&self) -> i64 {
        3
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, _: &CycleState) -> i64 {
        let tolerations = tolerations(pod);
        taints(node)
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|taint| {
                !tolerations.iter().any(|t| {
                    t.effect.as_deref().is_none_or(str::is_empty) || t.effect.as_deref() == Some("PreferNoSchedule")
                } && tolerates(t, taint))
            })
            .count() as i64
    }
    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

/// `spec.nodeSelector` and node affinity (required terms filter, preferred terms score).
pub struct NodeAffinity;

/// A node selector term against the node (see `bosun_api::matching::node_term_matches`).
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    node_term_matches(term, node.labels(), node.name())
}

/// Whether the node passes the pod's nodeSelector and required node affinity.
pub fn node_matches(pod: &Pod, node: &NodeInfo) -> bool {
    let labels = node.labels();
    let spec = pod.spec.as_ref();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    // Terms are ORed; expressions within a term ANDed.
    selector_ok
        && spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|req| {
                req.node_selector_terms
                    .iter()
                    .any(|t| term_matches(t, node))
            })
}

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, _: &CycleState) -> Result<(), Reject> {
        if node_matches(pod, node) {
            Ok(())
        } else {
            Err(Reject::unresolvable(
                "node(s) didn't match Pod's node affinity/selector",
            ))
        }
    }
}

impl Score for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, _: &CycleState) -> i64 {
        pod.spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|t| t.weight != 0 && term_matches(&t.preference, node))
            .map(|t| i64::from(t.weight))
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

/// The pod's requests fit into allocatable minus what the node's pods already request.
pub struct ResourcesFit;

impl Filter for ResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    /// The pod's requests, parsed once per decision rather than once per node.
    fn pre_filter(&self, pod: &Pod, _nodes: &[NodeInfo]) -> CycleState {
        Some(Box::new(pod_requests(pod)))
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, state: &CycleState) -> Result<(), Reject> {
        let want = state
            .as_ref()
            .and_then(|s| s.downcast_ref::<Resources>())
            .copied()
            .unwrap_or_else(|| pod_requests(pod));
        let have = node.allocatable;
        let used = node.requested;
        let mut reasons = Vec::new();
        if used.pods + 1 > have.pods {
            reasons.push("Too many pods".to_string());
        }
        if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > have.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            reasons.push("Insufficient memory".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Reject {
                reasons,
                unresolvable: false,
            })
        }
    }
}

pub fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|h| *h > 0)?;
            let ip = p
                .host_ip
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            Some((ip, p.protocol.clone().unwrap_or_else(|| "TCP".into()), hp))
        })
        .collect()
}

/// Requested host ports are free on the node (0.0.0.0 conflicts with every address).
pub struct HostPorts;

impl Filter for HostPorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn pre_filter(&self, pod: &Pod, _nodes: &[NodeInfo]) -> CycleState {
        Some(Box::new(host_ports(pod)))
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo, state: &CycleState) -> Result<(), Reject> {
        let computed;
        let wanted = match state
            .as_ref()
            .and_then(|s| s.downcast_ref::<Vec<(String, String, i32)>>())
        {
            Some(w) => w,
            None => {
                computed = host_ports(pod);
                &computed
            }
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let used: Vec<_> = node.pods.iter().flat_map(|p| host_ports(p)).collect();
        let conflict = wanted.iter().any(|(ip, proto, port)| {
            used.iter().any(|(uip, uproto, uport)| {
                port == uport
                    && proto == uproto
                    && (ip == uip || ip == "0.0.0.0" || uip == "0.0.0.0")
            })
        });
        if conflict {
            Err(Reject::resolvable(
                "node(s) didn't have free ports for the requested pod ports",
            ))
        } else {
            Ok(())
        }
    }
}

/// The scoring requests from `pre_score`, or computed when there is no state.
fn requests_of(pod: &Pod, state: &CycleState) -> Resources {
    state
        .as_ref()
        .and_then(|s| s.downcast_ref::<Resources>())
        .copied()
        .unwrap_or_else(|| nonzero_requests(pod))
}

fn fraction(cap: i64, req: i64) -> f64 {
    if cap <= 0 {
        1.0
    } else {
        (req as f64 / cap as f64).min(1.0)
    }
}

/// Prefers nodes with the most room left after placing the pod (`LeastAllocated`).
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn pre_score(&self, pod: &Pod, _nodes: &[NodeInfo], _feasible: &[&NodeInfo]) -> CycleState {
        Some(Box::new(nonzero_requests(pod)))
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, state: &CycleState) -> i64 {
        let have = node.allocatable;
        let mut used = node.nonzero;
        used.add(&requests_of(pod, state));
        let part = |cap: i64, req: i64| {
            if cap <= 0 || req > cap {
                0
            } else {
                (cap - req) * 100 / cap
            }
        };
        (part(have.milli_cpu, used.milli_cpu) + part(have.memory, used.memory)) / 2
    }
}

/// Prefers nodes whose CPU and memory would be used in equal shares
/// (`NodeResourcesBalancedAllocation`).
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn pre_score(&self, pod: &Pod, _nodes: &[NodeInfo], _feasible: &[&NodeInfo]) -> CycleState {
        Some(Box::new(nonzero_requests(pod)))
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, state: &CycleState) -> i64 {
        let have = node.allocatable;
        let mut used = node.nonzero;
        used.add(&requests_of(pod, state));
        let cpu = fraction(have.milli_cpu, used.milli_cpu);
        let mem = fraction(have.memory, used.memory);
        // Standard deviation of two fractions is half their distance.
        ((1.0 - (cpu - mem).abs() / 2.0) * 100.0) as i64
    }
}

pub fn default_filters() -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(NodeReady),
        Box::new(TaintToleration),
        Box::new(NodeAffinity),
        Box::new(HostPorts),
        Box::new(ResourcesFit),
        Box::new(PodTopologySpread),
        Box::new(InterPodAffinity),
    ]
}

pub fn default_scores() -> Vec<Box<dyn Score>> {
    vec![
        Box::new(TaintToleration),
        Box::new(NodeAffinity),
        Box::new(LeastAllocated),
        Box::new(BalancedAllocation),
        Box::new(InterPodAffinity),
        Box::new(PodTopologySpread),
        Box::new(DefaultSpread),
    ]
}

/// Why a pod fits nowhere: the filter reasons counted over nodes, and the nodes where
/// removing pods could help (the rest failed for unresolvable reasons).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
    pub resolvable: Vec<String>,
}

impl Diagnosis {
    /// "0/N nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {k: v}."
    pub fn message(&self) -> String {
        let mut msg = format!("0/{} nodes are available", self.nodes);
        if !self.reasons.is_empty() {
            msg.push_str(": ");
            msg.push_str(&histogram(&self.reasons));
        }
        msg.push('.');
        msg
    }
}

/// "2 Insufficient cpu, 1 node(s) ..." sorted as strings, count included, as upstream does.
pub fn histogram(reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

/// Outcome of scheduling one pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    Node(String),
    Unschedulable(Diagnosis),
}

/// How many feasible nodes are enough before scoring (`percentageOfNodesToScore`'s adaptive
/// default: 50% minus 1% per 125 nodes, at least 5% and at least 100 nodes).
pub fn nodes_to_find(total: usize) -> usize {
    if total <= 100 {
        return total;
    }
    let pct = (50 - (total / 125) as i64).max(5) as usize;
    (total * pct / 100).max(100)
}

/// Pods nominated to a node (preemptors waiting for their victims to leave), by node name.
pub type Nominated = HashMap<String, Vec<Arc<Pod>>>;

/// The pods nominated to `node` whose room `pod` must leave free: those of at least its
/// priority, itself excepted (upstream's `addNominatedPods`).
pub fn nominated_for<'a>(
    pod: &'a Pod,
    node: &str,
    nominated: &'a Nominated,
) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
    let prio = crate::preempt::priority(pod);
    nominated.get(node).into_iter().flatten().filter(move |p| {
        crate::preempt::priority(p) >= prio
            && (p.metadata.uid.is_none() || p.metadata.uid != pod.metadata.uid)
    })
}

/// Runs the filters on one node; where pods are nominated to it, they must pass both with
/// those pods counted and without them, as upstream does (the nominated pods may still
/// land elsewhere). Counted means on the node and in the cluster-wide states too (pod
/// affinity and anti-affinity, topology spread), through [`Filter::add_pod`] on a copy.
fn filter_node(
    pod: &Pod,
    node: &NodeInfo,
    filters: &[Box<dyn Filter>],
    states: &[CycleState],
    nominated: &Nominated,
) -> Option<Reject> {
    let mut with = nominated_for(pod, node.name(), nominated).peekable();
    if with.peek().is_some() {
        let mut n = node.clone();
        let mut forked: Vec<Option<CycleState>> = filters
            .iter()
            .zip(states)
            .map(|(f, s)| f.fork_state(pod, s))
            .collect();
        for p in with {
            n.add_pod(p.clone());
            for (f, s) in filters.iter().zip(forked.iter_mut()) {
                if let Some(s) = s {
                    f.add_pod(pod, s, p, node);
                }
            }
        }
        if let Some(rej) = filters
            .iter()
            .zip(states)
            .zip(&forked)
            .find_map(|((f, s), fork)| f.filter(pod, &n, fork.as_ref().unwrap_or(s)).err())
        {
            return Some(rej);
        }
    }
    // The first failing filter explains a node, as upstream reports it.
    filters
        .iter()
        .zip(states)
        .find_map(|(f, s)| f.filter(pod, node, s).err())
}

/// Runs filters over the nodes (starting at `start`, stopping once enough are feasible),
/// then scores the feasible ones; ties go to the node whose name sorts first.
pub fn place_from(
    pod: &Pod,
    nodes: &[NodeInfo],
    filters: &[Box<dyn Filter>],
    scores: &[Box<dyn Score>],
    start: usize,
    nominated: &Nominated,
) -> (Placement, usize) {
    let states: Vec<CycleState> = filters.iter().map(|f| f.pre_filter(pod, nodes)).collect();
    let mut diagnosis = Diagnosis {
        nodes: nodes.len(),
        ..Default::default()
    };
    let want = nodes_to_find(nodes.len());
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut processed = 0;
    for i in 0..nodes.len() {
        processed += 1;
        let n = &nodes[(start + i) % nodes.len()];
        match filter_node(pod, n, filters, &states, nominated) {
            Some(rej) => {
                for r in rej.reasons {
                    *diagnosis.reasons.entry(r).or_default() += 1;
                }
                if !rej.unresolvable {
                    diagnosis.resolvable.push(n.name().to_string());
                }
            }
            None => {
                feasible.push(n);
                if feasible.len() >= want {
                    break;
                }
            }
        }
    }
    if feasible.is_empty() {
        return (Placement::Unschedulable(diagnosis), processed);
    }
    if feasible.len() == 1 {
        return (Placement::Node(feasible[0].name().to_string()), processed);
    }
    let mut totals = vec![0i64; feasible.len()];
    for s in scores {
        let state = s.pre_score(pod, nodes, &feasible);
        let mut raw = s.score_all(pod, &feasible, &state);
        s.normalize(&mut raw);
        for (t, r) in totals.iter_mut().zip(raw) {
            *t += s.weight() * r;
        }
    }
    let best = feasible
        .iter()
        .zip(totals)
        .map(|(n, t)| (t, n.name()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name.to_string())
        .unwrap_or_default();
    (Placement::Node(best), processed)
}

/// [`place_from`] over every node from the first.
pub fn place(
    pod: &Pod,
    nodes: &[NodeInfo],
    filters: &[Box<dyn Filter>],
    scores: &[Box<dyn Score>],
) -> Placement {
    place_from(pod, nodes, filters, scores, 0, &Nominated::new()).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, NodeCondition, NodeSpec, NodeStatus, PodSpec,
        ResourceRequirements, Taint, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn a_nodes_zone_follows_its_label() {
        let mut n = node("a", "1", "1Gi");
        let mut info = NodeInfo::new(Arc::new(n.clone()), vec![]);
        assert_eq!(info.zone(), None);
        n.metadata
            .labels
            .get_or_insert_default()
            .insert(crate::spread::ZONE_KEY.into(), "z1".into());
        info.set_node(Arc::new(n.clone()));
        assert_eq!(info.zone(), Some("z1"));
        assert_eq!(
            NodeInfo::new(Arc::new(n.clone()), vec![]).zone(),
            Some("z1")
        );
        n.metadata.labels = None;
        info.set_node(Arc::new(n));
        assert_eq!(info.zone(), None);
    }

    fn node(name: &str, cpu: &str, mem: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("kubernetes.io/hostname".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(mem.into())),
                        ("pods".to_string(), Quantity("110".into())),
                    ]
                    .into(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(cpu: &str, mem: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(
                            [
                                ("cpu".to_string(), Quantity(cpu.into())),
                                ("memory".to_string(), Quantity(mem.into())),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn info(n: Node, pods: Vec<Pod>) -> NodeInfo {
        NodeInfo::new(Arc::new(n), pods.into_iter().map(Arc::new).collect())
    }

    fn run(p: &Pod, nodes: &[NodeInfo]) -> Placement {
        place(p, nodes, &default_filters(), &default_scores())
    }

    fn why(p: &Pod, nodes: &[NodeInfo]) -> String {
        match run(p, nodes) {
            Placement::Unschedulable(d) => d.message(),
            other => panic!("scheduled: {other:?}"),
        }
    }

    #[test]
    fn insufficient_cpu_message() {
        let nodes = [info(node("n1", "1", "1Gi"), vec![pod("800m", "100Mi")])];
        assert_eq!(
            why(&pod("500m", "10Mi"), &nodes),
            "0/1 nodes are available: 1 Insufficient cpu."
        );
        assert_eq!(
            run(&pod("200m", "10Mi"), &nodes),
            Placement::Node("n1".into())
        );
    }

    #[test]
    fn reasons_are_counted_per_node() {
        let mut tainted = node("n2", "4", "4Gi");
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]);
        let mut unready = node("n3", "4", "4Gi");
        unready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let nodes = [
            info(node("n1", "1", "64Mi"), vec![]),
            info(tainted, vec![]),
            info(unready, vec![]),
        ];
        assert_eq!(
            why(&pod("2", "128Mi"), &nodes),
            "0/3 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were not ready."
        );
    }

    #[test]
    fn tolerations_allow_tainted_nodes() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let eq = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("db".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        };
        assert!(tolerates(&eq, &taint));
        let wrong = Toleration {
            value: Some("web".into()),
            ..eq.clone()
        };
        assert!(!tolerates(&wrong, &taint));
        let exists_all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists_all, &taint));
        let other_effect = Toleration {
            effect: Some("NoExecute".into()),
            ..eq
        };
        assert!(!tolerates(&other_effect, &taint));
    }

    #[test]
    fn node_selector_and_unschedulable() {
        let mut p = pod("100m", "10Mi");
        p.spec.as_mut().unwrap().node_selector =
            Some([("kubernetes.io/hostname".to_string(), "n2".to_string())].into());
        let mut cordoned = node("n3", "4", "4Gi");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let nodes = [
            info(node("n1", "4", "4Gi"), vec![]),
            info(node("n2", "4", "4Gi"), vec![]),
            info(cordoned, vec![]),
        ];
        assert_eq!(run(&p, &nodes), Placement::Node("n2".into()));
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        assert_eq!(
            why(&p, &nodes),
            "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn host_port_conflicts() {
        let with_port = |ip: Option<&str>, port: i32| {
            let mut p = pod("10m", "1Mi");
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(port),
                host_ip: ip.map(Into::into),
                ..Default::default()
            }]);
            p
        };
        let n = info(
            node("n1", "4", "4Gi"),
            vec![with_port(Some("10.0.0.1"), 8080)],
        );
        assert!(HostPorts.filter(&with_port(None, 8080), &n, &None).is_err());
        assert!(
            HostPorts
                .filter(&with_port(Some("10.0.0.2"), 8080), &n, &None)
                .is_ok()
        );
        assert!(HostPorts.filter(&with_port(None, 8081), &n, &None).is_ok());
    }

    #[test]
    fn least_allocated_prefers_emptier_node() {
        let busy = info(node("a", "2", "2Gi"), vec![pod("1500m", "1Gi")]);
        let idle = info(node("b", "2", "2Gi"), vec![]);
        let p = pod("100m", "100Mi");
        assert!(LeastAllocated.score(&p, &idle, &None) > LeastAllocated.score(&p, &busy, &None));
        assert_eq!(
            run(&p, &[busy.clone(), idle.clone()]),
            Placement::Node("b".into())
        );
    }

    #[test]
    fn spreads_pods_of_one_owner() {
        let owned = |name: &str| {
            let mut p = pod("10m", "1Mi");
            p.metadata.name = Some(name.into());
            p.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]);
            p
        };
        // Node a is emptier in resources but already runs a replica: spreading wins.
        let a = info(node("a", "8", "8Gi"), vec![owned("x")]);
        let b = info(node("b", "2", "2Gi"), vec![pod("100m", "100Mi")]);
        let f = [&a, &b];
        let st = DefaultSpread.pre_score(&owned("y"), &[], &f);
        let mut s = vec![
            DefaultSpread.score(&owned("y"), &a, &st),
            DefaultSpread.score(&owned("y"), &b, &st),
        ];
        DefaultSpread.normalize(&mut s);
        assert!(s[1] > s[0], "{s:?}");
        assert_eq!(run(&owned("y"), &[a, b]), Placement::Node("b".into()));
    }

    #[test]
    fn ties_break_by_name() {
        let nodes = [
            info(node("b", "4", "4Gi"), vec![]),
            info(node("a", "4", "4Gi"), vec![]),
        ];
        assert_eq!(run(&pod("1", "1Gi"), &nodes), Placement::Node("a".into()));
    }
}
