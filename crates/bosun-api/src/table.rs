//! `meta.k8s.io/v1` Table output for `kubectl get`: the columns Kubernetes prints per kind.
//!
//! Every row carries a cell for every column; kubectl shows the `priority: 1` columns
//! only with `-o wide`.

use serde_json::{Map, Value, json};

use crate::KindInfo;

mod batch;

/// A `Table` for `objects` of `kind` (rows carry the object, or its metadata only when
/// `include_object` is "Metadata").
pub fn table(kind: &KindInfo, objects: &[Value], include_object: &str) -> Value {
    table_at(kind, objects, include_object, jiff::Timestamp::now())
}

/// [`table`] with ages computed against `now`.
pub fn table_at(
    kind: &KindInfo,
    objects: &[Value],
    include_object: &str,
    now: jiff::Timestamp,
) -> Value {
    if let Some(custom) = &kind.custom {
        let defs = crate::crd::columns::definitions(&custom.columns);
        let cells = |o: &Value| crate::crd::columns::cells(&custom.columns, o, now);
        return assemble(defs, objects, include_object, cells);
    }
    let (columns, row_fn) = printer(kind);
    let column_defs: Vec<Value> = columns
        .iter()
        .map(|(name, ty, priority)| {
            json!({
                "name": name,
                "type": if *ty == "name" { "string" } else { ty },
                "format": if *ty == "name" { "name" } else { "" },
                "description": describe(name),
                "priority": priority,
            })
        })
        .collect();
    assemble(column_defs, objects, include_object, |o| row_fn(o, now))
}

fn assemble(
    column_defs: Vec<Value>,
    objects: &[Value],
    include_object: &str,
    cells: impl Fn(&Value) -> Vec<Value>,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(o)});
            match include_object {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": column_defs,
        "rows": rows,
    })
}

mod storage;

pub(crate) type Column = (&'static str, &'static str, u32);
pub(crate) type RowFn = fn(&Value, jiff::Timestamp) -> Vec<Value>;

fn describe(name: &str) -> &'static str {
    match name {
        "Name" => "Name must be unique within a namespace.",
        "Age" => {
            "CreationTimestamp is a timestamp representing the server time when this object was created."
        }
        _ => "",
    }
}

fn printer(kind: &KindInfo) -> (Vec<Column>, RowFn) {
    if matches!(kind.group, "batch" | "apps")
        && let Some(p) = batch::printer(kind.kind)
    {
        return p;
    }
    match (kind.group, kind.kind) {
        ("", "Pod") => (
            vec![
                ("Name", "name", 0),
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                ("Age", "string", 0),
                ("IP", "string", 1),
                ("Node", "string", 1),
                ("Nominated Node", "string", 1),
                ("Readiness Gates", "string", 1),
            ],
            pod_row,
        ),
        ("apps", "Deployment") => (
            vec![
                ("Name", "name", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            deployment_row,
        ),
        ("apps", "ReplicaSet") => (
            vec![
                ("Name", "name", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            replicaset_row,
        ),
        ("", "Service") => (
            vec![
                ("Name", "name", 0),
                ("Type", "string", 0),
                ("Cluster-IP", "string", 0),
                ("External-IP", "string", 0),
                ("Port(s)", "string", 0),
                ("Age", "string", 0),
                ("Selector", "string", 1),
            ],
            service_row,
        ),
        ("", "Node") => (
            vec![
                ("Name", "name", 0),
                ("Status", "string", 0),
                ("Roles", "string", 0),
                ("Age", "string", 0),
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ],
            node_row,
        ),
        ("", "Namespace") => (
            vec![
                ("Name", "name", 0),
                ("Status", "string", 0),
                ("Age", "string", 0),
            ],
            namespace_row,
        ),
        ("", "ConfigMap") => (
            vec![
                ("Name", "name", 0),
                ("Data", "string", 0),
                ("Age", "string", 0),
            ],
            configmap_row,
        ),
        ("", "Secret") => (
            vec![
                ("Name", "name", 0),
                ("Type", "string", 0),
                ("Data", "string", 0),
                ("Age", "string", 0),
            ],
            secret_row,
        ),
        ("", "Event") => (
            vec![
                ("Last Seen", "string", 0),
                ("Type", "string", 0),
                ("Reason", "string", 0),
                ("Object", "string", 0),
                ("Subobject", "string", 1),
                ("Source", "string", 1),
                ("Message", "string", 0),
                ("First Seen", "string", 1),
                ("Count", "integer", 1),
                ("Name", "string", 1),
            ],
            event_row,
        ),
        ("coordination.k8s.io", "Lease") => (
            vec![
                ("Name", "name", 0),
                ("Holder", "string", 0),
                ("Age", "string", 0),
            ],
            lease_row,
        ),
        ("", "Endpoints") => (
            vec![
                ("Name", "name", 0),
                ("Endpoints", "string", 0),
                ("Age", "string", 0),
            ],
            endpoints_row,
        ),
        (g, k) => storage::printer(g, k)
            .or_else(|| crate::table_kinds::printer(kind))
            .unwrap_or_else(|| (vec![("Name", "name", 0), ("Age", "string", 0)], generic_row)),
    }
}

// ---------------------------------------------------------------- helpers

pub(crate) fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

pub(crate) fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

pub(crate) fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub(crate) fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.to_string()
    }
}

pub(crate) fn name(o: &Value) -> Value {
    json!(s(o, "/metadata/name"))
}

fn parse_ts(t: &str) -> Option<jiff::Timestamp> {
    if t.is_empty() {
        return None;
    }
    t.parse::<jiff::Timestamp>().ok()
}

/// Age of a timestamp as kubectl prints it; `<unknown>` when absent.
fn since(t: &str, now: jiff::Timestamp) -> String {
    match parse_ts(t) {
        Some(ts) => human_duration(now.as_second() - ts.as_second()),
        None => "<unknown>".into(),
    }
}

pub(crate) fn age(o: &Value, now: jiff::Timestamp) -> Value {
    json!(since(s(o, "/metadata/creationTimestamp"), now))
}

/// Kubernetes' `duration.HumanDuration`: `45s`, `3m20s`, `15m`, `5h10m`, `3d4h`, `400d`, `2y30d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let sec = seconds % 60;
        return if sec == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{sec}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, h)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{}d", hours / 24 / 365, dy)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `app=web,tier in (a,b)` for a `metav1.LabelSelector`, keys sorted as Kubernetes does.
pub(crate) fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<(String, String)> = Vec::new();
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            parts.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())));
        }
    }
    for e in arr(sel, "/matchExpressions") {
        let key = s(e, "/key");
        let mut vals: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
        vals.sort();
        let text = match s(e, "/operator") {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        };
        parts.push((key.to_string(), text));
    }
    if parts.is_empty() {
        return "<none>".into();
    }
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    parts.into_iter().map(|p| p.1).collect::<Vec<_>>().join(",")
}

fn containers_images(o: &Value, ptr: &str) -> (String, String) {
    let cs = arr(o, ptr);
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

// ---------------------------------------------------------------- rows

fn generic_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![name(o), age(o, now)]
}

/// The STATUS column of `kubectl get pods`, computed as kubectl's printer does.
pub fn pod_status(pod: &Value) -> String {
    pod_summary(pod).status
}

struct PodSummary {
    status: String,
    ready: i64,
    total: i64,
    restarts: i64,
    last_restart: Option<jiff::Timestamp>,
}

fn later(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> Option<jiff::Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn pod_summary(pod: &Value) -> PodSummary {
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    for c in arr(pod, "/status/conditions") {
        if s(c, "/type") == "PodScheduled" && s(c, "/reason") == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let init_specs = arr(pod, "/spec/initContainers");
    let sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| s(c, "/name") == name && s(c, "/restartPolicy") == "Always")
    };
    let mut total = arr(pod, "/spec/containers").len() as i64
        + init_specs
            .iter()
            .filter(|c| s(c, "/restartPolicy") == "Always")
            .count() as i64;
    if total == 0 {
        total = arr(pod, "/spec/containers").len() as i64;
    }
    let mut ready = 0i64;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart = None;
    let mut sidecar_last_restart = None;
    let mut initializing = false;
    let init_statuses = arr(pod, "/status/initContainerStatuses");
    for (idx, c) in init_statuses.iter().enumerate() {
        restarts += i(c, "/restartCount");
        let finished = parse_ts(s(c, "/lastState/terminated/finishedAt"));
        last_restart = later(last_restart, finished);
        let is_sidecar = sidecar(s(c, "/name"));
        if is_sidecar {
            sidecar_restarts += i(c, "/restartCount");
            sidecar_last_restart = later(sidecar_last_restart, finished);
        }
        let terminated = c.pointer("/state/terminated");
        let waiting_reason = s(c, "/state/waiting/reason");
        if terminated.is_some() && i(c, "/state/terminated/exitCode") == 0 {
            continue;
        }
        if is_sidecar && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = s(t, "/reason");
            reason = if r.is_empty() {
                if i(t, "/signal") != 0 {
                    format!("Init:Signal:{}", i(t, "/signal"))
                } else {
                    format!("Init:ExitCode:{}", i(t, "/exitCode"))
                }
            } else {
                format!("Init:{r}")
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{idx}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    let initialized = arr(pod, "/status/conditions")
        .iter()
        .any(|c| s(c, "/type") == "Initialized" && s(c, "/status") == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            restarts += i(c, "/restartCount");
            last_restart = later(
                last_restart,
                parse_ts(s(c, "/lastState/terminated/finishedAt")),
            );
            let waiting = s(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = s(t, "/reason");
                reason = if !r.is_empty() {
                    r.to_string()
                } else if i(t, "/signal") != 0 {
                    format!("Signal:{}", i(t, "/signal"))
                } else {
                    format!("ExitCode:{}", i(t, "/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = arr(pod, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    let phase = s(pod, "/status/phase");
    let deleting = !s(pod, "/metadata/deletionTimestamp").is_empty();
    if deleting && s(pod, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    if reason.is_empty() {
        reason = "Pending".into();
    }
    PodSummary {
        status: reason,
        ready,
        total,
        restarts,
        last_restart,
    }
}

fn pod_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let p = pod_summary(o);
    let restarts = match p.last_restart {
        Some(t) if p.restarts != 0 => format!(
            "{} ({} ago)",
            p.restarts,
            human_duration(now.as_second() - t.as_second())
        ),
        _ => p.restarts.to_string(),
    };
    let gates = arr(o, "/spec/readinessGates");
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(o, "/status/conditions");
        let true_count = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        name(o),
        json!(format!("{}/{}", p.ready, p.total)),
        json!(p.status),
        json!(restarts),
        age(o, now),
        json!(or_none(s(o, "/status/podIP"))),
        json!(or_none(s(o, "/spec/nodeName"))),
        json!(or_none(s(o, "/status/nominatedNodeName"))),
        json!(gates_cell),
    ]
}

fn deployment_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let desired = o
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let (cs, imgs) = containers_images(o, "/spec/template/spec/containers");
    vec![
        name(o),
        json!(format!("{}/{}", i(o, "/status/readyReplicas"), desired)),
        json!(i(o, "/status/updatedReplicas")),
        json!(i(o, "/status/availableReplicas")),
        age(o, now),
        json!(cs),
        json!(imgs),
        json!(selector_string(o.pointer("/spec/selector"))),
    ]
}

fn replicaset_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let desired = o
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let (cs, imgs) = containers_images(o, "/spec/template/spec/containers");
    vec![
        name(o),
        json!(desired),
        json!(i(o, "/status/replicas")),
        json!(i(o, "/status/readyReplicas")),
        age(o, now),
        json!(cs),
        json!(imgs),
        json!(selector_string(o.pointer("/spec/selector"))),
    ]
}

fn service_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let ty = match s(o, "/spec/type") {
        "" => "ClusterIP",
        t => t,
    };
    let mut external: Vec<String> = arr(o, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    let external = match ty {
        "ExternalName" => s(o, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            for ing in arr(o, "/status/loadBalancer/ingress") {
                let ip = s(ing, "/ip");
                let host = s(ing, "/hostname");
                if !ip.is_empty() {
                    external.push(ip.into());
                } else if !host.is_empty() {
                    external.push(host.into());
                }
            }
            if external.is_empty() {
                "<pending>".into()
            } else {
                external.join(",")
            }
        }
        _ => {
            if external.is_empty() {
                "<none>".into()
            } else {
                external.join(",")
            }
        }
    };
    let ports: Vec<String> = arr(o, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = match s(p, "/protocol") {
                "" => "TCP",
                x => x,
            };
            let np = i(p, "/nodePort");
            if np > 0 {
                format!("{}:{}/{}", i(p, "/port"), np, proto)
            } else {
                format!("{}/{}", i(p, "/port"), proto)
            }
        })
        .collect();
    let selector = match o.pointer("/spec/selector").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => {
            let mut kv: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            kv.sort();
            kv.join(",")
        }
        _ => "<none>".into(),
    };
    vec![
        name(o),
        json!(ty),
        json!(or_none(s(o, "/spec/clusterIP"))),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        age(o, now),
        json!(selector),
    ]
}

fn node_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    let conds = arr(o, "/status/conditions");
    match conds.iter().find(|c| s(c, "/type") == "Ready") {
        Some(c) if s(c, "/status") == "True" => status.push("Ready".into()),
        Some(c) if s(c, "/status") == "False" => status.push("NotReady".into()),
        _ => status.push("Unknown".into()),
    }
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = o.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.into());
                }
            } else if k == "kubernetes.io/role"
                && let Some(r) = v.as_str()
                && !r.is_empty()
            {
                roles.push(r.into());
            }
        }
    }
    roles.sort();
    roles.dedup();
    let addr = |ty: &str| {
        arr(o, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == ty)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name(o),
        json!(status.join(",")),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        age(o, now),
        json!(s(o, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(or_none(s(o, "/status/nodeInfo/osImage")).replace("<none>", "<unknown>")),
        json!(or_none(s(o, "/status/nodeInfo/kernelVersion")).replace("<none>", "<unknown>")),
        json!(
            or_none(s(o, "/status/nodeInfo/containerRuntimeVersion"))
                .replace("<none>", "<unknown>")
        ),
    ]
}

fn namespace_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![name(o), json!(s(o, "/status/phase")), age(o, now)]
}

fn map_len(o: &Value, ptr: &str) -> usize {
    o.pointer(ptr)
        .and_then(Value::as_object)
        .map(Map::len)
        .unwrap_or(0)
}

fn configmap_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let n = map_len(o, "/data") + map_len(o, "/binaryData");
    vec![name(o), json!(n), age(o, now)]
}

fn secret_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let n = map_len(o, "/data") + map_len(o, "/stringData");
    let ty = match s(o, "/type") {
        "" => "Opaque",
        t => t,
    };
    vec![name(o), json!(ty), json!(n), age(o, now)]
}

fn event_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut first = since(s(o, "/firstTimestamp"), now);
    if s(o, "/firstTimestamp").is_empty() {
        first = since(s(o, "/eventTime"), now);
    }
    let mut last = since(s(o, "/lastTimestamp"), now);
    if s(o, "/lastTimestamp").is_empty() {
        last = first.clone();
    }
    let mut count = i(o, "/count");
    if o.get("series").is_some_and(|x| !x.is_null()) {
        last = since(s(o, "/series/lastObservedTime"), now);
        count = i(o, "/series/count");
    } else if count == 0 {
        count = 1;
    }
    let kind = s(o, "/involvedObject/kind").to_ascii_lowercase();
    let obj_name = s(o, "/involvedObject/name");
    let target = if obj_name.is_empty() {
        kind
    } else {
        format!("{kind}/{obj_name}")
    };
    let component = match s(o, "/source/component") {
        "" => s(o, "/reportingComponent"),
        c => c,
    };
    let host = match s(o, "/source/host") {
        "" => s(o, "/reportingInstance"),
        h => h,
    };
    let source = match (component.is_empty(), host.is_empty()) {
        (true, _) => String::new(),
        (false, true) => component.to_string(),
        (false, false) => format!("{component}, {host}"),
    };
    vec![
        json!(last),
        json!(s(o, "/type")),
        json!(s(o, "/reason")),
        json!(target),
        json!(s(o, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(o, "/message").trim()),
        json!(first),
        json!(count),
        name(o),
    ]
}

fn lease_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![name(o), json!(s(o, "/spec/holderIdentity")), age(o, now)]
}

fn endpoints_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut list: Vec<String> = Vec::new();
    for subset in arr(o, "/subsets") {
        let addrs = arr(subset, "/addresses");
        let ports = arr(subset, "/ports");
        for a in addrs {
            let ip = s(a, "/ip");
            if ports.is_empty() {
                list.push(ip.to_string());
            }
            for p in ports {
                list.push(format!("{ip}:{}", i(p, "/port")));
            }
        }
    }
    let cell = match list.len() {
        0 => "<none>".to_string(),
        n if n > 3 => format!("{} + {} more...", list[..3].join(","), n - 3),
        _ => list.join(","),
    };
    vec![name(o), json!(cell), age(o, now)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    fn kind(plural: &str) -> &'static KindInfo {
        let r = Registry::builtin();
        r.kinds.iter().find(|k| k.plural == plural).unwrap()
    }

    fn now() -> jiff::Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 600), "3h10m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(human_duration(400 * 86400), "400d");
        assert_eq!(human_duration(-1), "0s");
    }

    fn pod(status: Value) -> Value {
        json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T11:55:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": status,
        })
    }

    #[test]
    fn pod_statuses() {
        assert_eq!(pod_status(&pod(json!({"phase": "Pending"}))), "Pending");
        assert_eq!(pod_status(&pod(json!({}))), "Pending");
        let creating = pod(json!({"phase": "Pending", "containerStatuses": [
            {"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}},
            {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(pod_status(&creating), "ContainerCreating");
        let crash = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
            {"name": "b", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T11:59:00Z"}}}]}));
        assert_eq!(pod_status(&crash), "CrashLoopBackOff");
        let k = kind("pods");
        let t = table_at(k, &[crash], "None", now());
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[3], "4 (60s ago)");
        assert_eq!(cells[4], "5m");
        assert_eq!(cells[6], "n1");
        assert_eq!(cells[5], "<none>");
        let done = pod(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "b", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}));
        assert_eq!(pod_status(&done), "Completed");
        let err = pod(json!({"phase": "Failed", "containerStatuses": [
            {"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}));
        assert_eq!(pod_status(&err), "Error");
        let mut term = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]}));
        assert_eq!(pod_status(&term), "Running");
        term["metadata"]["deletionTimestamp"] = json!("2026-01-01T12:00:30Z");
        assert_eq!(pod_status(&term), "Terminating");
        let init = json!({"spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "restartCount": 0, "state": {"running": {}}}]}});
        assert_eq!(pod_status(&init), "Init:0/1");
    }

    #[test]
    fn deployment_table_wide_cells() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T10:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "main", "image": "nginx"}, {"name": "side", "image": "envoy"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let t = table_at(kind("deployments"), &[d], "Metadata", now());
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "2/3",
                3,
                2,
                "120m",
                "main,side",
                "nginx,envoy",
                "app=web"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web");
    }

    #[test]
    fn service_node_event_rows() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.0.0.5",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}], "selector": {"b": "2", "a": "1"}}});
        let t = table_at(kind("services"), &[svc], "None", now());
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "s",
                "NodePort",
                "10.0.0.5",
                "<none>",
                "80:30080/TCP,53/UDP",
                "<unknown>",
                "a=1,b=2"
            ])
        );
        assert!(t["rows"][0].get("object").is_none());

        let node = json!({"metadata": {"name": "n", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"},
                       "addresses": [{"type": "InternalIP", "address": "10.1.0.2"}]}});
        let t = table_at(kind("nodes"), &[node], "None", now());
        let c = &t["rows"][0]["cells"];
        assert_eq!(c[1], "Ready,SchedulingDisabled");
        assert_eq!(c[2], "control-plane");
        assert_eq!(c[4], "v1.33.0");
        assert_eq!(c[5], "10.1.0.2");

        let ev = json!({"metadata": {"name": "e1"}, "type": "Normal", "reason": "Scheduled", "message": "ok ",
            "involvedObject": {"kind": "Pod", "name": "p"}, "firstTimestamp": "2026-01-01T11:59:00Z",
            "lastTimestamp": "2026-01-01T11:59:30Z", "count": 2, "source": {"component": "scheduler"}});
        let t = table_at(kind("events"), &[ev], "None", now());
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "30s",
                "Normal",
                "Scheduled",
                "pod/p",
                "",
                "scheduler",
                "ok",
                "60s",
                2,
                "e1"
            ])
        );

        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        assert_eq!(
            table_at(kind("configmaps"), &[cm], "None", now())["rows"][0]["cells"][1],
            2
        );
        let ep = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}], "ports": [{"port": 80}, {"port": 81}]}]});
        assert_eq!(
            table_at(kind("endpoints"), &[ep], "None", now())["rows"][0]["cells"][1],
            "1.1.1.1:80,1.1.1.1:81,2.2.2.2:80 + 1 more..."
        );
    }
}
