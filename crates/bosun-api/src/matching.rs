//! Kubernetes' matching rules on the API types: label selectors, taints and tolerations, node
//! selector terms. Shared by the controllers and the scheduler.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Selector, SelectorExt};

/// A label selector that can be matched against labels. An invalid selector matches nothing,
/// as upstream treats a selector it cannot parse.
#[derive(Clone, Debug)]
pub struct LabelMatcher {
    selector: Option<Selector>,
    empty: bool,
}

impl LabelMatcher {
    pub fn new(sel: Option<&LabelSelector>) -> Self {
        let empty = sel.is_none_or(|s| {
            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
        });
        let selector = sel.and_then(|s| Selector::try_from(s.clone()).ok());
        LabelMatcher { selector, empty }
    }

    /// True when the selector selects everything (no requirements). Workload controllers refuse
    /// to act on such selectors, as upstream does, because they would adopt every pod.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let empty = BTreeMap::new();
        match &self.selector {
            Some(s) => s.matches(labels.unwrap_or(&empty)),
            None => false,
        }
    }

    /// The selector in the `labelSelector` query syntax.
    pub fn query(&self) -> Option<String> {
        self.selector.as_ref().map(|s| s.to_string())
    }
}

/// Whether a toleration tolerates a taint (Kubernetes' `ToleratesTaint`); shared by the
/// DaemonSet controller and the scheduler.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// Whether the node satisfies the volume's required node affinity (no affinity: any node).
pub fn node_affinity_matches(v: &PersistentVolume, node: &Node) -> bool {
    let Some(req) = v
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or("");
    // Terms are ORed.
    req.node_selector_terms
        .iter()
        .any(|t| node_term_matches(t, labels, name))
}

/// A node selector term against a node's labels and name: expressions on labels and on fields
/// (only `metadata.name`, with In or NotIn, exists), ANDed. A term with neither matches
/// nothing, as upstream.
pub fn node_term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|e| requirement_holds(e, labels.get(&e.key).map(String::as_str)))
        && fields.iter().all(|f| {
            f.key == "metadata.name"
                && matches!(f.operator.as_str(), "In" | "NotIn")
                && requirement_holds(f, Some(name))
        })
}

/// One requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`) against the value
/// of its key, if the node has one.
pub fn requirement_holds(e: &NodeSelectorRequirement, val: Option<&str>) -> bool {
    let values = e.values.as_deref().unwrap_or(&[]);
    match e.operator.as_str() {
        "In" => val.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => val.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => val.is_some(),
        "DoesNotExist" => val.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(x)) = (
                val.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|x| x.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if e.operator == "Gt" { v > x } else { v < x }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matching() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        };
        let m = LabelMatcher::new(Some(&sel));
        assert!(!m.is_empty());
        let mut labels = BTreeMap::new();
        assert!(!m.matches(Some(&labels)));
        labels.insert("app".to_string(), "web".to_string());
        labels.insert("x".to_string(), "y".to_string());
        assert!(m.matches(Some(&labels)));
        assert!(LabelMatcher::new(None).is_empty());
        assert_eq!(m.query().as_deref(), Some("app=web"));
    }
}
