//! Where bosun's keys live in etcd: Kubernetes' own layout.
//!
//! bosun names every object `/registry/GROUP/RESOURCE/[NAMESPACE/]NAME` (`core` for the
//! core group), which is how Kubernetes stores custom resources. Kubernetes stores its
//! built-in resources without the group and with a few historical names
//! (`/registry/pods/...`, `/registry/services/specs/...`, `/registry/minions/...`). In
//! etcd bosun uses that layout, so the keys read as an operator who knows Kubernetes
//! expects (`etcdctl get --prefix /registry/deployments/`). The mapping swaps one
//! leading segment for another and keeps the rest, so it is one-to-one and keeps the
//! order of the keys inside one resource (what lists and paging rely on).
//!
//! Keys outside the table (Gateway API kinds, which Kubernetes serves as custom
//! resources, allocation ranges, anything else) are stored as they are.

/// (bosun's segment after `/registry/`, Kubernetes' segment after `/registry/`).
const LAYOUT: &[(&str, &str)] = &[
    ("core/pods/", "pods/"),
    ("core/services/", "services/specs/"),
    ("core/endpoints/", "services/endpoints/"),
    ("core/nodes/", "minions/"),
    ("core/namespaces/", "namespaces/"),
    ("core/configmaps/", "configmaps/"),
    ("core/secrets/", "secrets/"),
    ("core/events/", "events/"),
    ("core/serviceaccounts/", "serviceaccounts/"),
    ("core/persistentvolumes/", "persistentvolumes/"),
    ("core/persistentvolumeclaims/", "persistentvolumeclaims/"),
    ("core/replicationcontrollers/", "controllers/"),
    ("core/resourcequotas/", "resourcequotas/"),
    ("core/limitranges/", "limitranges/"),
    ("core/podtemplates/", "podtemplates/"),
    ("apps/deployments/", "deployments/"),
    ("apps/replicasets/", "replicasets/"),
    ("apps/statefulsets/", "statefulsets/"),
    ("apps/daemonsets/", "daemonsets/"),
    ("apps/controllerrevisions/", "controllerrevisions/"),
    ("batch/jobs/", "jobs/"),
    ("batch/cronjobs/", "cronjobs/"),
    (
        "autoscaling/horizontalpodautoscalers/",
        "horizontalpodautoscalers/",
    ),
    ("policy/poddisruptionbudgets/", "poddisruptionbudgets/"),
    ("coordination.k8s.io/leases/", "leases/"),
    ("discovery.k8s.io/endpointslices/", "endpointslices/"),
    ("networking.k8s.io/ingresses/", "ingress/"),
    ("networking.k8s.io/ingressclasses/", "ingressclasses/"),
    ("networking.k8s.io/networkpolicies/", "networkpolicies/"),
    ("rbac.authorization.k8s.io/roles/", "roles/"),
    ("rbac.authorization.k8s.io/rolebindings/", "rolebindings/"),
    ("rbac.authorization.k8s.io/clusterroles/", "clusterroles/"),
    (
        "rbac.authorization.k8s.io/clusterrolebindings/",
        "clusterrolebindings/",
    ),
    (
        "certificates.k8s.io/certificatesigningrequests/",
        "certificatesigningrequests/",
    ),
    ("scheduling.k8s.io/priorityclasses/", "priorityclasses/"),
    ("storage.k8s.io/storageclasses/", "storageclasses/"),
    ("node.k8s.io/runtimeclasses/", "runtimeclasses/"),
];

const ROOT: &str = "/registry/";

/// The etcd key of a bosun key.
pub(crate) fn to_etcd(key: &str) -> String {
    if let Some(rest) = key.strip_prefix(ROOT) {
        for (ours, theirs) in LAYOUT {
            if let Some(tail) = rest.strip_prefix(ours) {
                return format!("{ROOT}{theirs}{tail}");
            }
        }
    }
    key.to_string()
}

/// The bosun key of an etcd key.
pub(crate) fn from_etcd(key: &str) -> String {
    if let Some(rest) = key.strip_prefix(ROOT) {
        for (ours, theirs) in LAYOUT {
            if let Some(tail) = rest.strip_prefix(theirs) {
                return format!("{ROOT}{ours}{tail}");
            }
        }
    }
    key.to_string()
}

/// Which etcd keys hold the bosun keys under a prefix.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// The etcd prefix to read or watch.
    pub(crate) etcd_prefix: String,
    /// When set, only keys whose bosun form starts with this belong (the etcd prefix
    /// then also covers other keys); results come in etcd's key order.
    pub(crate) filter: Option<String>,
}

/// Maps a bosun prefix to the etcd range that holds its keys.
pub(crate) fn span(prefix: &str) -> Span {
    let plain = |p: &str| Span {
        etcd_prefix: p.to_string(),
        filter: None,
    };
    // The root or shorter ("", "/", "/registry/"): every key under it maps back under it.
    let rest = match prefix.strip_prefix(ROOT) {
        Some(rest) if !rest.is_empty() => rest,
        _ => return plain(prefix),
    };
    // Inside one mapped resource: the whole prefix maps.
    if LAYOUT.iter().any(|(ours, _)| rest.starts_with(ours)) {
        return plain(&to_etcd(prefix));
    }
    // A prefix that reaches into mapped resources on either side needs the whole root,
    // filtered; any other maps to itself.
    let overlaps = |seg: &str| seg.starts_with(rest) || rest.starts_with(seg);
    if LAYOUT
        .iter()
        .any(|(ours, theirs)| overlaps(ours) || overlaps(theirs))
    {
        Span {
            etcd_prefix: ROOT.to_string(),
            filter: Some(prefix.to_string()),
        }
    } else {
        plain(prefix)
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end`);
/// empty means "to the end of the key space".
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_layout_round_trips() {
        let cases = [
            (
                "/registry/core/pods/default/web",
                "/registry/pods/default/web",
            ),
            (
                "/registry/core/services/ns/api",
                "/registry/services/specs/ns/api",
            ),
            (
                "/registry/core/endpoints/ns/api",
                "/registry/services/endpoints/ns/api",
            ),
            ("/registry/core/nodes/n1", "/registry/minions/n1"),
            (
                "/registry/apps/deployments/ns/d",
                "/registry/deployments/ns/d",
            ),
            (
                "/registry/networking.k8s.io/ingresses/ns/i",
                "/registry/ingress/ns/i",
            ),
            (
                "/registry/coordination.k8s.io/leases/kube-system/x",
                "/registry/leases/kube-system/x",
            ),
            // Custom-resource style and other keys stay as they are.
            (
                "/registry/gateway.networking.k8s.io/httproutes/ns/r",
                "/registry/gateway.networking.k8s.io/httproutes/ns/r",
            ),
            (
                "/registry/ranges/serviceips/10.0.0.1",
                "/registry/ranges/serviceips/10.0.0.1",
            ),
            ("/conformance/a", "/conformance/a"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(to_etcd(ours), theirs);
            assert_eq!(from_etcd(theirs), ours);
        }
    }

    #[test]
    fn no_stored_segment_is_taken_by_two_keys() {
        // A key stored as it is must never look like a mapped one: no Kubernetes
        // segment may be a group name bosun uses (or start like one).
        for (_, theirs) in LAYOUT {
            for (ours, _) in LAYOUT {
                let group = ours.split('/').next().unwrap_or_default();
                assert_ne!(theirs.split('/').next(), Some(group), "{theirs} vs {ours}");
            }
            assert!(!theirs.starts_with("ranges/") && !theirs.contains('.'));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (_, theirs) in LAYOUT {
            assert!(seen.insert(*theirs), "{theirs} used twice");
        }
    }

    #[test]
    fn spans() {
        assert_eq!(
            span("/registry/core/pods/ns/"),
            Span {
                etcd_prefix: "/registry/pods/ns/".into(),
                filter: None
            }
        );
        assert_eq!(span("/registry/").filter, None);
        assert_eq!(span("").etcd_prefix, "");
        assert_eq!(
            span("/registry/gateway.networking.k8s.io/httproutes/"),
            Span {
                etcd_prefix: "/registry/gateway.networking.k8s.io/httproutes/".into(),
                filter: None
            }
        );
        // Across resources: the whole root, filtered.
        let s = span("/registry/core/");
        assert_eq!(s.etcd_prefix, "/registry/");
        assert_eq!(s.filter.as_deref(), Some("/registry/core/"));
        // A prefix that looks like a stored Kubernetes segment holds mapped keys.
        assert!(span("/registry/pods/").filter.is_some());
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
