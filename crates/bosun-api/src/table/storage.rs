//! Table columns of the workload and storage kinds kubectl prints as Kubernetes does:
//! StatefulSet, ControllerRevision, PersistentVolume, PersistentVolumeClaim, StorageClass.

use serde_json::{Value, json};

use super::{Column, RowFn, age, arr, containers_images, i, name, or_none, s};

pub(super) fn printer(group: &str, kind: &str) -> Option<(Vec<Column>, RowFn)> {
    Some(match (group, kind) {
        ("apps", "StatefulSet") => (
            vec![
                ("Name", "name", 0),
                ("Ready", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            statefulset_row,
        ),
        ("apps", "ControllerRevision") => (
            vec![
                ("Name", "name", 0),
                ("Controller", "string", 0),
                ("Revision", "integer", 0),
                ("Age", "string", 0),
            ],
            revision_row,
        ),
        ("", "PersistentVolume") => (
            vec![
                ("Name", "name", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("Reclaim Policy", "string", 0),
                ("Status", "string", 0),
                ("Claim", "string", 0),
                ("StorageClass", "string", 0),
                ("VolumeAttributesClass", "string", 0),
                ("Reason", "string", 0),
                ("Age", "string", 0),
                ("VolumeMode", "string", 1),
            ],
            volume_row,
        ),
        ("", "PersistentVolumeClaim") => (
            vec![
                ("Name", "name", 0),
                ("Status", "string", 0),
                ("Volume", "string", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("StorageClass", "string", 0),
                ("VolumeAttributesClass", "string", 0),
                ("Age", "string", 0),
                ("VolumeMode", "string", 1),
            ],
            claim_row,
        ),
        ("storage.k8s.io", "StorageClass") => (
            vec![
                ("Name", "name", 0),
                ("Provisioner", "string", 0),
                ("ReclaimPolicy", "string", 0),
                ("VolumeBindingMode", "string", 0),
                ("AllowVolumeExpansion", "string", 0),
                ("Age", "string", 0),
            ],
            class_row,
        ),
        _ => return None,
    })
}

fn statefulset_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let desired = o
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let (cs, imgs) = containers_images(o, "/spec/template/spec/containers");
    vec![
        name(o),
        json!(format!("{}/{}", i(o, "/status/readyReplicas"), desired)),
        age(o, now),
        json!(cs),
        json!(imgs),
    ]
}

fn revision_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let controller = arr(o, "/metadata/ownerReferences")
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|r| {
            let group = s(r, "/apiVersion").split('/').next().unwrap_or("");
            let kind = s(r, "/kind").to_lowercase();
            let kind = if s(r, "/apiVersion").contains('/') {
                format!("{kind}.{group}")
            } else {
                kind
            };
            format!("{kind}/{}", s(r, "/name"))
        })
        .unwrap_or_else(|| "<none>".into());
    vec![
        name(o),
        json!(controller),
        json!(i(o, "/revision")),
        age(o, now),
    ]
}

/// `RWO,ROX,RWX,RWOP`, as `kubectl get pv,pvc` abbreviates access modes.
fn access_modes(o: &Value, ptr: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for (long, short) in [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ] {
        if arr(o, ptr).iter().any(|m| m.as_str() == Some(long)) {
            out.push(short);
        }
    }
    out.join(",")
}

fn volume_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let claim = match (
        s(o, "/spec/claimRef/namespace"),
        s(o, "/spec/claimRef/name"),
    ) {
        (_, "") => String::new(),
        (ns, n) => format!("{ns}/{n}"),
    };
    vec![
        name(o),
        json!(s(o, "/spec/capacity/storage")),
        json!(access_modes(o, "/spec/accessModes")),
        json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
        json!(s(o, "/status/phase")),
        json!(claim),
        json!(s(o, "/spec/storageClassName")),
        json!(or_none(s(o, "/spec/volumeAttributesClassName"))),
        json!(s(o, "/status/reason")),
        age(o, now),
        json!(s(o, "/spec/volumeMode")),
    ]
}

fn claim_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let phase = if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else {
        s(o, "/status/phase")
    };
    vec![
        name(o),
        json!(phase),
        json!(s(o, "/spec/volumeName")),
        json!(s(o, "/status/capacity/storage")),
        json!(access_modes(o, "/status/accessModes")),
        json!(s(o, "/spec/storageClassName")),
        json!(or_none(s(o, "/spec/volumeAttributesClassName"))),
        age(o, now),
        json!(s(o, "/spec/volumeMode")),
    ]
}

fn class_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let default = o
        .pointer("/metadata/annotations")
        .and_then(|a| {
            a.get("storageclass.kubernetes.io/is-default-class")
                .or_else(|| a.get("storageclass.beta.kubernetes.io/is-default-class"))
        })
        .and_then(Value::as_str)
        == Some("true");
    let n = s(o, "/metadata/name");
    let shown = if default {
        format!("{n} (default)")
    } else {
        n.to_string()
    };
    let reclaim = match s(o, "/reclaimPolicy") {
        "" => "Delete",
        r => r,
    };
    let mode = match s(o, "/volumeBindingMode") {
        "" => "Immediate",
        m => m,
    };
    vec![
        json!(shown),
        json!(s(o, "/provisioner")),
        json!(reclaim),
        json!(mode),
        json!(
            o.pointer("/allowVolumeExpansion")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        ),
        age(o, now),
    ]
}
