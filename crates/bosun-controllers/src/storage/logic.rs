//! Pure volume binding decisions, after Kubernetes' pkg/controller/volume/persistentvolume
//! (`findMatchingVolume`, `checkVolumeSatisfyClaim`) and the local-path provisioner.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LocalVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use bosun_api::matching::node_affinity_matches;

use crate::util::LabelMatcher;

pub const DEFAULT_CLASS: &str = "local-path";
pub const PROVISIONER: &str = "bosun.dev/local-path";
pub const IS_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// Held by a provisioned volume until the agent of its node removed the directory.
pub const LOCAL_PATH_CLEANUP: &str = "bosun.dev/local-path-cleanup";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// Where a node's agent keeps provisioned volumes (published on its Node).
pub const NODE_LOCAL_PATH_DIR: &str = "bosun.dev/local-path-dir";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The default StorageClass bosun creates at start-up.
pub fn default_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(DEFAULT_CLASS.into()),
            annotations: Some([(IS_DEFAULT_CLASS.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    }
}

pub fn is_default_class(sc: &StorageClass) -> bool {
    sc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(IS_DEFAULT_CLASS))
        .is_some_and(|v| v == "true")
}

/// The default class when several are marked: the newest, then by name, as upstream.
pub fn pick_default<'a>(
    classes: impl Iterator<Item = &'a StorageClass>,
) -> Option<&'a StorageClass> {
    classes.filter(|c| is_default_class(c)).max_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .then_with(|| b.metadata.name.cmp(&a.metadata.name))
    })
}

/// Bytes of a quantity (`1Gi`, `500M`, `1e3`); None when it does not parse.
pub fn parse_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    Some((n * mult).ceil() as u128)
}

fn storage_of(m: Option<&BTreeMap<String, Quantity>>) -> u128 {
    m.and_then(|m| m.get("storage"))
        .and_then(|q| parse_bytes(&q.0))
        .unwrap_or(0)
}

pub fn claim_request(c: &PersistentVolumeClaim) -> u128 {
    storage_of(
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

pub fn volume_capacity(v: &PersistentVolume) -> u128 {
    storage_of(v.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

pub fn claim_class(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec.as_ref()?.storage_class_name.as_deref()
}

pub fn volume_class(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn volume_mode_claim(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

fn volume_mode_pv(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

fn access_modes_claim(c: &PersistentVolumeClaim) -> &[String] {
    c.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or(&[])
}

fn access_modes_pv(v: &PersistentVolume) -> &[String] {
    v.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or(&[])
}

pub fn volume_phase(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub fn claim_ref_is(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    v.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.name == c.metadata.name
                && r.namespace == c.metadata.namespace
                && r.uid
                    .as_ref()
                    .is_none_or(|u| Some(u) == c.metadata.uid.as_ref())
        })
}

/// Whether a free volume satisfies the claim (`checkVolumeSatisfyClaim` plus the selector),
/// and, when `node` is given, can be used there.
pub fn satisfies(v: &PersistentVolume, c: &PersistentVolumeClaim, node: Option<&Node>) -> bool {
    if v.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let claimed_by_other =
        v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some() && !claim_ref_is(v, c);
    if claimed_by_other || volume_phase(v) != "Available" && !claim_ref_is(v, c) {
        return false;
    }
    if volume_class(v) != claim_class(c).unwrap_or("") {
        return false;
    }
    if volume_capacity(v) < claim_request(c) {
        return false;
    }
    if volume_mode_claim(c) != volume_mode_pv(v) {
        return false;
    }
    let pv_modes = access_modes_pv(v);
    if !access_modes_claim(c).iter().all(|m| pv_modes.contains(m)) {
        return false;
    }
    if let Some(sel) = c.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        let m = LabelMatcher::new(Some(sel));
        if !m.is_empty() && !m.matches(v.metadata.labels.as_ref()) {
            return false;
        }
    }
    node.is_none_or(|n| node_affinity_matches(v, n))
}

/// The smallest volume that satisfies the claim; one pre-bound to it wins.
pub fn find_match<'a>(
    c: &PersistentVolumeClaim,
    volumes: impl Iterator<Item = &'a PersistentVolume>,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let wanted_name = c.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    volumes
        .filter(|v| satisfies(v, c, node))
        .filter(|v| wanted_name.is_none_or(|n| v.metadata.name.as_deref() == Some(n)))
        .min_by_key(|v| (!claim_ref_is(v, c), volume_capacity(v)))
}

pub fn claim_ref(c: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: c.metadata.name.clone(),
        namespace: c.metadata.namespace.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Name of a provisioned volume: `pvc-<claim uid>`, as external provisioners name them.
pub fn provisioned_name(c: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", c.metadata.uid.as_deref().unwrap_or(""))
}

/// The volume the local-path provisioner makes for `c` on `node`, in `base_dir` there.
pub fn provision(
    c: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    base_dir: &str,
) -> PersistentVolume {
    let name = provisioned_name(c);
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let cname = c.metadata.name.clone().unwrap_or_default();
    let request = c
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or_else(|| Quantity("0".into()));
    let mut modes = access_modes_claim(c).to_vec();
    if modes.is_empty() {
        modes.push("ReadWriteOnce".into());
    }
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(
                [
                    (PROVISIONED_BY.to_string(), PROVISIONER.to_string()),
                    (BOUND_BY_CONTROLLER.to_string(), "yes".to_string()),
                ]
                .into(),
            ),
            finalizers: Some(vec![PV_PROTECTION.into(), LOCAL_PATH_CLEANUP.into()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(modes),
            capacity: Some([("storage".to_string(), request)].into()),
            claim_ref: Some(claim_ref(c)),
            local: Some(LocalVolumeSource {
                path: format!("{}/{name}_{ns}_{cname}", base_dir.trim_end_matches('/')),
                fs_type: None,
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![node.into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: Some(volume_mode_claim(c).into()),
            mount_options: class.mount_options.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn claim(class: Option<&str>, size: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: class.map(String::from),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity(size.into()))].into()),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn volume(name: &str, class: &str, size: &str, modes: &[&str]) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("tier".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some([("storage".to_string(), Quantity(size.into()))].into()),
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                storage_class_name: (!class.is_empty()).then(|| class.into()),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some("Available".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("500M"), Some(500_000_000));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("x"), None);
    }

    #[test]
    fn smallest_fitting_volume_of_the_same_class_wins() {
        let c = claim(Some(""), "1Gi");
        let vols = [
            volume("big", "", "10Gi", &["ReadWriteOnce"]),
            volume("small", "", "2Gi", &["ReadWriteOnce", "ReadOnlyMany"]),
            volume("tiny", "", "100Mi", &["ReadWriteOnce"]),
            volume("rox", "", "1Gi", &["ReadOnlyMany"]),
            volume("classy", "fast", "1Gi", &["ReadWriteOnce"]),
        ];
        let m = find_match(&c, vols.iter(), None).unwrap();
        assert_eq!(m.metadata.name.as_deref(), Some("small"));
        let mut sel = claim(Some(""), "1Gi");
        sel.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: Some([("tier".to_string(), "big".to_string())].into()),
            ..Default::default()
        });
        let m = find_match(&sel, vols.iter(), None).unwrap();
        assert_eq!(m.metadata.name.as_deref(), Some("big"));
        let fast = claim(Some("fast"), "1Gi");
        assert_eq!(
            find_match(&fast, vols.iter(), None)
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("classy")
        );
        // A volume claimed by another claim is not free.
        let mut taken = volume("taken", "", "1Gi", &["ReadWriteOnce"]);
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("other".into()),
            namespace: Some("default".into()),
            ..Default::default()
        });
        assert!(!satisfies(&taken, &c, None));
    }

    #[test]
    fn provisioned_volume_is_pinned_to_its_node() {
        let c = claim(Some(DEFAULT_CLASS), "1Gi");
        let v = provision(&c, &default_class(), "n1", "/data/local-path/");
        assert_eq!(v.metadata.name.as_deref(), Some("pvc-u1"));
        let spec = v.spec.as_ref().unwrap();
        assert_eq!(
            spec.local.as_ref().unwrap().path,
            "/data/local-path/pvc-u1_default_data"
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        let node = |name: &str| Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(HOSTNAME_LABEL.to_string(), name.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(node_affinity_matches(&v, &node("n1")));
        assert!(!node_affinity_matches(&v, &node("n2")));
        assert!(claim_ref_is(&v, &c));
    }
}
