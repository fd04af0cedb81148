//! The scheduler's view of nodes and the pods on them, kept up to date from the informers'
//! events (not rebuilt per decision), plus pods this scheduler has bound but the informer
//! has not shown bound yet ("assumed", as kube-scheduler's cache calls them).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::plugins::{NodeInfo, Nominated};

fn node_of(p: &Pod) -> Option<&str> {
    let finished = matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if finished {
        return None;
    }
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

#[derive(Default)]
pub struct Cache {
    /// Sorted by name, so that decisions are reproducible.
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Every pod counted on a node (bound or assumed): uid -> (node, pod).
    pods: HashMap<String, (String, Arc<Pod>)>,
    assumed: HashMap<String, Instant>,
    /// Assumptions in the order they were made, for [`Cache::expire`] to look at the oldest
    /// only (entries whose pod was confirmed or forgotten meanwhile are skipped).
    assumed_order: VecDeque<(Instant, String)>,
    /// Pending pods nominated to a node by preemption, by node, and uid -> node.
    nominated: Nominated,
    nominated_on: HashMap<String, String>,
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Pending pods nominated to nodes, whose room others must leave free.
    pub fn nominated(&self) -> &Nominated {
        &self.nominated
    }

    /// Records that `pod` waits for room on `node` (`status.nominatedNodeName`), or, with
    /// `None`, that it no longer does.
    pub fn nominate(&mut self, pod: &Arc<Pod>, node: Option<&str>) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        self.unnominate(uid);
        if let Some(node) = node.filter(|n| !n.is_empty()) {
            self.nominated
                .entry(node.to_string())
                .or_default()
                .push(pod.clone());
            self.nominated_on.insert(uid.to_string(), node.to_string());
        }
    }

    /// Drops the nomination of the pod with `uid`, if any.
    pub fn unnominate(&mut self, uid: &str) {
        if let Some(node) = self.nominated_on.remove(uid)
            && let Some(list) = self.nominated.get_mut(&node)
        {
            list.retain(|p| p.metadata.uid.as_deref() != Some(uid));
            if list.is_empty() {
                self.nominated.remove(&node);
            }
        }
    }

    fn reindex(&mut self) {
        self.index = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name().to_string(), i))
            .collect();
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(i) = self.index.get(&name) {
            self.nodes[*i].set_node(node);
            return;
        }
        let pods = self
            .pods
            .values()
            .filter(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
            .collect();
        self.nodes.push(NodeInfo::new(node, pods));
        self.nodes.sort_by(|a, b| a.name().cmp(b.name()));
        self.reindex();
    }

    pub fn remove_node(&mut self, name: &str) {
        if self.index.contains_key(name) {
            self.nodes.retain(|n| n.name() != name);
            self.reindex();
        }
    }

    fn unlink(&mut self, uid: &str) {
        if let Some((node, _)) = self.pods.remove(uid)
            && let Some(i) = self.index.get(&node)
        {
            self.nodes[*i].remove_pod(uid);
        }
    }

    fn link(&mut self, node: &str, pod: Arc<Pod>) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(i) = self.index.get(node) {
            self.nodes[*i].add_pod(pod.clone());
        }
        self.pods.insert(uid, (node.to_string(), pod));
    }

    /// The latest version of a pod from the informer. Returns whether it counts on a node.
    pub fn update_pod(&mut self, pod: Arc<Pod>) -> bool {
        let Some(uid) = pod.metadata.uid.clone() else {
            return false;
        };
        let node = node_of(&pod).map(str::to_string);
        if self.assumed.contains_key(&uid) {
            if node.is_none() && pod.metadata.deletion_timestamp.is_none() {
                // The informer has not seen our binding yet: keep the assumption.
                return true;
            }
            self.assumed.remove(&uid);
        }
        self.unlink(&uid);
        match node {
            Some(n) => {
                self.link(&n, pod);
                true
            }
            None => false,
        }
    }

    /// A pod is gone.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        self.assumed.remove(uid);
        self.unnominate(uid);
        let had = self.pods.contains_key(uid);
        self.unlink(uid);
        had
    }

    /// Counts `pod` on `node` before the binding is seen. The pod is kept as the informer
    /// gave it (no copy): which node it counts on is the cache's to know.
    pub fn assume(&mut self, pod: Arc<Pod>, node: &str) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.unnominate(&uid);
        self.unlink(&uid);
        self.link(node, pod);
        let now = Instant::now();
        self.assumed.insert(uid.clone(), now);
        self.assumed_order.push_back((now, uid));
    }

    /// Drops an assumption whose binding failed.
    pub fn forget(&mut self, uid: &str) {
        if self.assumed.remove(uid).is_some() {
            self.unlink(uid);
        }
    }

    /// Whether the pod is counted on a node already (bound or assumed).
    pub fn placed(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Drops pods that `exists` no longer knows (assumed ones excepted) and nodes that
    /// `node_exists` does not: deletions an informer subscriber missed while it fell behind
    /// (it then gets the whole cache again, without what was deleted meanwhile).
    pub fn sweep(&mut self, exists: impl Fn(&Pod) -> bool, node_exists: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, (_, p))| !self.assumed.contains_key(*uid) && !exists(p))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.unlink(&uid);
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.name().to_string())
            .filter(|n| !node_exists(n))
            .collect();
        for n in nodes {
            self.remove_node(&n);
        }
    }

    /// Drops assumptions older than `ttl` (a binding that never showed up). Looks at the
    /// oldest assumptions only, so it costs nothing per decision while none is due.
    pub fn expire(&mut self, ttl: Duration) {
        let now = Instant::now();
        while let Some((at, _)) = self.assumed_order.front() {
            if now.duration_since(*at) <= ttl {
                break;
            }
            let Some((at, uid)) = self.assumed_order.pop_front() else {
                break;
            };
            // Only the entry of the current assumption counts (the pod may have been
            // confirmed, forgotten or assumed again since).
            if self.assumed.get(&uid) == Some(&at) {
                self.forget(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
    }

    fn pod(uid: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": uid, "namespace": "d", "uid": uid},
            "spec": {"nodeName": node, "containers": []}}),
        )
        .unwrap()
    }

    #[test]
    fn nodes_added_later_see_their_pods_and_sweep_drops_missed_deletions() {
        let mut c = Cache::default();
        c.set_node(node("b"));
        // A pod bound to a node the cache does not know yet, and one assumed on "b".
        assert!(c.update_pod(Arc::new(pod("p1", Some("a")))));
        c.assume(Arc::new(pod("p2", None)), "b");
        c.set_node(node("a"));
        let names: Vec<&str> = c.nodes().iter().map(|n| n.name()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.node("a").unwrap().pods.len(), 1);
        assert_eq!(c.node("b").unwrap().pods.len(), 1);
        // The informer no longer has p1 (nor p2, not bound yet) nor node b.
        c.sweep(|_| false, |n| n == "a");
        assert!(!c.placed("p1"));
        assert!(c.placed("p2"), "assumed pods survive a sweep");
        assert!(c.node("a").unwrap().pods.is_empty());
        assert!(c.node("b").is_none());
    }
}
