//! What `kubectl rollout undo [--to-revision=N]` computes for a Deployment: the pod template
//! (without `pod-template-hash`) and annotations of that revision's ReplicaSet, as one JSON
//! patch. Pure: the CLI and the console read the objects and send the patch themselves.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

/// Annotations a rollback must not copy from the ReplicaSet (as kubectl).
const SKIPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// A Deployment's or ReplicaSet's `deployment.kubernetes.io/revision`.
pub fn revision(meta: &ObjectMeta) -> Option<i64> {
    meta.annotations
        .as_ref()?
        .get("deployment.kubernetes.io/revision")?
        .parse()
        .ok()
}

/// The label selector (`k=v,...`) to list a Deployment's ReplicaSets with.
pub fn selector(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Of `listed`, the ReplicaSets the Deployment controls, by revision.
pub fn owned_by_revision(d: &Deployment, listed: Vec<ReplicaSet>) -> BTreeMap<i64, ReplicaSet> {
    let uid = d.metadata.uid.clone().unwrap_or_default();
    listed
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .filter_map(|rs| Some((revision(&rs.metadata)?, rs)))
        .collect()
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum RollbackError {
    #[error("unable to find specified revision {0} in history")]
    NoSuchRevision(i64),
    #[error("no rollout history found for this deployment")]
    NoHistory,
    #[error("revision {0}: its ReplicaSet has no pod template")]
    NoTemplate(i64),
}

/// What a rollback does.
#[derive(Debug, PartialEq)]
pub enum Rollback {
    /// The current template already is that revision's.
    Skip { revision: i64 },
    /// Send this JSON patch (RFC 6902) to the Deployment.
    Patch { revision: i64, patch: Value },
}

/// The rollback of `d` to `to_revision` (0: the revision before the current one), given its
/// ReplicaSets by revision.
pub fn plan(
    d: &Deployment,
    owned: &BTreeMap<i64, ReplicaSet>,
    to_revision: i64,
) -> Result<Rollback, RollbackError> {
    let current = revision(&d.metadata).unwrap_or(0);
    let (&rev, rs) = if to_revision > 0 {
        owned
            .get_key_value(&to_revision)
            .ok_or(RollbackError::NoSuchRevision(to_revision))?
    } else {
        owned
            .range(..current)
            .next_back()
            .ok_or(RollbackError::NoHistory)?
    };
    let mut template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .ok_or(RollbackError::NoTemplate(rev))?;
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    if d.spec.as_ref().map(|s| &s.template) == Some(&template) {
        return Ok(Rollback::Skip { revision: rev });
    }
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| SKIPPED_ANNOTATIONS.contains(&k.as_str()))
        .collect();
    for (k, v) in rs.metadata.annotations.iter().flatten() {
        if !SKIPPED_ANNOTATIONS.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    Ok(Rollback::Patch {
        revision: rev,
        patch: json!([
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations},
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, rev: i64, image: &str, uid: &str) -> Value {
        json!({
            "metadata": {"name": format!("{kind}{rev}"), "uid": uid,
                "annotations": {"deployment.kubernetes.io/revision": rev.to_string(), "note": image},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                    "uid": "d1", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "h"}},
                    "spec": {"containers": [{"name": "c", "image": image}]}}},
        })
    }

    #[test]
    fn undo_goes_to_the_previous_revision_and_skips_when_already_there() {
        let mut d: Deployment = serde_json::from_value(obj("d", 3, "v3", "d1")).unwrap();
        d.spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels = Some([("app".to_string(), "web".to_string())].into());
        let listed: Vec<ReplicaSet> = [(1, "v1"), (2, "v2"), (3, "v3")]
            .iter()
            .map(|(r, i)| serde_json::from_value(obj("rs", *r, i, "x")).unwrap())
            .collect();
        let owned = owned_by_revision(&d, listed);
        assert_eq!(owned.len(), 3);
        let Rollback::Patch { revision, patch } = plan(&d, &owned, 0).unwrap() else {
            panic!("expected a patch");
        };
        assert_eq!(revision, 2);
        assert_eq!(patch[0]["value"]["spec"]["containers"][0]["image"], "v2");
        assert_eq!(
            patch[0]["value"]["metadata"]["labels"],
            json!({"app": "web"})
        );
        assert_eq!(patch[1]["value"]["note"], "v2");
        assert_eq!(patch[1]["value"]["deployment.kubernetes.io/revision"], "3");
        assert_eq!(plan(&d, &owned, 3).unwrap(), Rollback::Skip { revision: 3 });
        assert_eq!(plan(&d, &owned, 9), Err(RollbackError::NoSuchRevision(9)));
        assert_eq!(plan(&d, &BTreeMap::new(), 0), Err(RollbackError::NoHistory));
        assert_eq!(selector(&d), "app=web");
    }
}
