//! Table columns of the kinds beyond the workload core, as Kubernetes' printers
//! (`pkg/printers/internalversion/printers.go`) define them.

use serde_json::{Value, json};

use crate::KindInfo;
use crate::table::{Column, RowFn, age, arr, i, name, or_none, s, selector_string};

pub(crate) fn printer(kind: &KindInfo) -> Option<(Vec<Column>, RowFn)> {
    let named = |cols: &[Column]| {
        let mut v = vec![("Name", "name", 0)];
        v.extend_from_slice(cols);
        v
    };
    Some(match (kind.group, kind.kind) {
        ("networking.k8s.io", "Ingress") => (
            named(&[
                ("Class", "string", 0),
                ("Hosts", "string", 0),
                ("Address", "string", 0),
                ("Ports", "string", 0),
                ("Age", "string", 0),
            ]),
            ingress_row,
        ),
        ("networking.k8s.io", "IngressClass") => (
            named(&[
                ("Controller", "string", 0),
                ("Parameters", "string", 0),
                ("Age", "string", 0),
            ]),
            ingress_class_row,
        ),
        ("discovery.k8s.io", "EndpointSlice") => (
            named(&[
                ("AddressType", "string", 0),
                ("Ports", "string", 0),
                ("Endpoints", "string", 0),
                ("Age", "string", 0),
            ]),
            endpoint_slice_row,
        ),
        ("policy", "PodDisruptionBudget") => (
            named(&[
                ("Min Available", "string", 0),
                ("Max Unavailable", "string", 0),
                ("Allowed Disruptions", "integer", 0),
                ("Age", "string", 0),
            ]),
            pdb_row,
        ),
        ("certificates.k8s.io", "CertificateSigningRequest") => (
            named(&[
                ("Age", "string", 0),
                ("SignerName", "string", 0),
                ("Requestor", "string", 0),
                ("RequestedDuration", "string", 0),
                ("Condition", "string", 0),
            ]),
            csr_row,
        ),
        ("autoscaling", "HorizontalPodAutoscaler") => (
            named(&[
                ("Reference", "string", 0),
                ("Targets", "string", 0),
                ("MinPods", "string", 0),
                ("MaxPods", "integer", 0),
                ("Replicas", "integer", 0),
                ("Age", "string", 0),
            ]),
            hpa_row,
        ),
        ("", "ServiceAccount") => (
            named(&[("Secrets", "string", 0), ("Age", "string", 0)]),
            sa_row,
        ),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole")
        | ("", "LimitRange")
        | ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            (named(&[("Created At", "date", 0)]), created_row)
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => (
            named(&[
                ("Role", "string", 0),
                ("Age", "string", 0),
                ("Users", "string", 1),
                ("Groups", "string", 1),
                ("ServiceAccounts", "string", 1),
            ]),
            binding_row,
        ),
        ("scheduling.k8s.io", "PriorityClass") => (
            named(&[
                ("Value", "integer", 0),
                ("Global-Default", "boolean", 0),
                ("Age", "string", 0),
                ("PreemptionPolicy", "string", 0),
            ]),
            priority_class_row,
        ),
        ("node.k8s.io", "RuntimeClass") => (
            named(&[("Handler", "string", 0), ("Age", "string", 0)]),
            runtime_class_row,
        ),
        ("networking.k8s.io", "NetworkPolicy") => (
            named(&[("Pod-Selector", "string", 0), ("Age", "string", 0)]),
            netpol_row,
        ),
        ("", "ResourceQuota") => (
            named(&[
                ("Age", "string", 0),
                ("Request", "string", 0),
                ("Limit", "string", 0),
            ]),
            quota_row,
        ),
        ("gateway.networking.k8s.io", "GatewayClass") => (
            named(&[
                ("Controller", "string", 0),
                ("Accepted", "string", 0),
                ("Age", "string", 0),
                ("Description", "string", 1),
            ]),
            gateway_class_row,
        ),
        ("gateway.networking.k8s.io", "Gateway") => (
            named(&[
                ("Class", "string", 0),
                ("Address", "string", 0),
                ("Programmed", "string", 0),
                ("Age", "string", 0),
            ]),
            gateway_row,
        ),
        ("gateway.networking.k8s.io", "HTTPRoute") => (
            named(&[("Hostnames", "string", 0), ("Age", "string", 0)]),
            httproute_row,
        ),
        _ => return None,
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn condition(o: &Value, ty: &str) -> String {
    arr(o, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == ty)
        .map(|c| s(c, "/status").to_string())
        .unwrap_or_else(|| "Unknown".into())
}

fn ingress_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let class = s(o, "/spec/ingressClassName");
    let hosts: Vec<&str> = arr(o, "/spec/rules")
        .iter()
        .map(|r| s(r, "/host"))
        .collect();
    let hosts = if hosts.is_empty() || hosts.iter().all(|h| h.is_empty()) {
        "*".to_string()
    } else {
        hosts
            .iter()
            .map(|h| if h.is_empty() { "*" } else { h })
            .collect::<Vec<_>>()
            .join(",")
    };
    let addrs: Vec<&str> = arr(o, "/status/loadBalancer/ingress")
        .iter()
        .map(|i| {
            if s(i, "/ip").is_empty() {
                s(i, "/hostname")
            } else {
                s(i, "/ip")
            }
        })
        .collect();
    let ports = if arr(o, "/spec/tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(o),
        json!(or_none(class)),
        json!(hosts),
        json!(addrs.join(",")),
        json!(ports),
        age(o, now),
    ]
}

fn ingress_class_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let params = o.pointer("/spec/parameters").map(|p| {
        let group = s(p, "/apiGroup");
        let kind = if group.is_empty() {
            s(p, "/kind").to_string()
        } else {
            format!("{}.{group}", s(p, "/kind"))
        };
        format!("{kind}/{}", s(p, "/name"))
    });
    vec![
        name(o),
        json!(s(o, "/spec/controller")),
        json!(params.unwrap_or_else(|| "<none>".into())),
        age(o, now),
    ]
}

fn limited(items: Vec<String>) -> String {
    if items.is_empty() {
        return "<unset>".into();
    }
    let n = items.len();
    if n > 3 {
        format!("{} + {} more...", items[..3].join(","), n - 3)
    } else {
        items.join(",")
    }
}

fn endpoint_slice_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let ports: Vec<String> = arr(o, "/ports")
        .iter()
        .map(|p| text(p.get("port").unwrap_or(&Value::Null)))
        .collect();
    let addrs: Vec<String> = arr(o, "/endpoints")
        .iter()
        .flat_map(|e| arr(e, "/addresses").iter().map(text))
        .collect();
    vec![
        name(o),
        json!(s(o, "/addressType")),
        json!(limited(ports)),
        json!(limited(addrs)),
        age(o, now),
    ]
}

fn pdb_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let field = |p: &str| o.pointer(p).map(text).unwrap_or_else(|| "N/A".into());
    vec![
        name(o),
        json!(field("/spec/minAvailable")),
        json!(field("/spec/maxUnavailable")),
        json!(i(o, "/status/disruptionsAllowed")),
        age(o, now),
    ]
}

fn csr_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut conds: Vec<String> = arr(o, "/status/conditions")
        .iter()
        .map(|c| s(c, "/type").to_string())
        .collect();
    if conds.is_empty() {
        conds.push("Pending".into());
    }
    let duration = o
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(crate::table::human_duration)
        .unwrap_or_else(|| "<none>".into());
    vec![
        name(o),
        age(o, now),
        json!(s(o, "/spec/signerName")),
        json!(s(o, "/spec/username")),
        json!(duration),
        json!(conds.join(",")),
    ]
}

fn hpa_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    // A v1 object prints as its v2 form does, as in Kubernetes.
    let v2;
    let o = if o.get("apiVersion").and_then(Value::as_str) == Some("autoscaling/v1") {
        v2 = crate::conversion::hpa_v1_to_v2(o).unwrap_or_else(|_| o.clone());
        &v2
    } else {
        o
    };
    let reference = format!(
        "{}/{}",
        s(o, "/spec/scaleTargetRef/kind"),
        s(o, "/spec/scaleTargetRef/name")
    );
    let min = o
        .pointer("/spec/minReplicas")
        .map(text)
        .unwrap_or_else(|| "<unset>".into());
    vec![
        name(o),
        json!(reference),
        json!(hpa_targets(
            arr(o, "/spec/metrics"),
            arr(o, "/status/currentMetrics")
        )),
        json!(min),
        json!(i(o, "/spec/maxReplicas")),
        json!(i(o, "/status/currentReplicas")),
        age(o, now),
    ]
}

/// The TARGETS column as Kubernetes' printer writes it (`formatHPAMetrics`): "current/target"
/// per metric, `<unknown>` without a status, two metrics then "+ N more...".
pub(crate) fn hpa_targets(specs: &[Value], statuses: &[Value]) -> String {
    if specs.is_empty() {
        return "<none>".into();
    }
    let status = |n: usize, p: &str| {
        statuses
            .get(n)
            .and_then(|c| c.pointer(p))
            .filter(|v| !v.is_null())
            .map(text)
    };
    let unknown = || "<unknown>".to_string();
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(n, m)| {
            let avg_or_value = |src: &str| {
                if let Some(t) = m.pointer(&format!("/{src}/target/averageValue")) {
                    let cur =
                        status(n, &format!("/{src}/current/averageValue")).unwrap_or_else(unknown);
                    format!("{cur}/{} (avg)", text(t))
                } else {
                    let cur = status(n, &format!("/{src}/current/value")).unwrap_or_else(unknown);
                    format!(
                        "{cur}/{}",
                        text(
                            m.pointer(&format!("/{src}/target/value"))
                                .unwrap_or(&Value::Null)
                        )
                    )
                }
            };
            match m.get("type").and_then(Value::as_str).unwrap_or("") {
                "External" => avg_or_value("external"),
                "Object" => avg_or_value("object"),
                "Pods" => {
                    let cur = status(n, "/pods/current/averageValue").unwrap_or_else(unknown);
                    format!(
                        "{cur}/{}",
                        text(
                            m.pointer("/pods/target/averageValue")
                                .unwrap_or(&Value::Null)
                        )
                    )
                }
                t @ ("Resource" | "ContainerResource") => {
                    let src = if t == "Resource" {
                        "resource"
                    } else {
                        "containerResource"
                    };
                    let res = s(m, &format!("/{src}/name"));
                    if let Some(avg) = m.pointer(&format!("/{src}/target/averageValue")) {
                        let cur = status(n, &format!("/{src}/current/averageValue"))
                            .unwrap_or_else(unknown);
                        format!("{res}: {cur}/{}", text(avg))
                    } else {
                        let cur = status(n, &format!("/{src}/current/averageUtilization"))
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(unknown);
                        let target = m
                            .pointer(&format!("/{src}/target/averageUtilization"))
                            .map(|u| format!("{}%", text(u)))
                            .unwrap_or_else(|| "<auto>".into());
                        format!("{res}: {cur}/{target}")
                    }
                }
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    if list.len() > 2 {
        format!("{} + {} more...", list[..2].join(", "), list.len() - 2)
    } else {
        list.join(", ")
    }
}

fn sa_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![name(o), json!(arr(o, "/secrets").len() as i64), age(o, now)]
}

fn created_row(o: &Value, _now: jiff::Timestamp) -> Vec<Value> {
    vec![name(o), json!(s(o, "/metadata/creationTimestamp"))]
}

fn binding_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let role = format!("{}/{}", s(o, "/roleRef/kind"), s(o, "/roleRef/name"));
    let of = |kind: &str| -> String {
        arr(o, "/subjects")
            .iter()
            .filter(|x| s(x, "/kind") == kind)
            .map(|x| {
                if kind == "ServiceAccount" {
                    format!("{}/{}", s(x, "/namespace"), s(x, "/name"))
                } else {
                    s(x, "/name").to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        name(o),
        json!(role),
        age(o, now),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}

fn priority_class_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![
        name(o),
        json!(i(o, "/value")),
        json!(
            o.get("globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        ),
        age(o, now),
        json!(
            o.get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
        ),
    ]
}

fn runtime_class_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![name(o), json!(s(o, "/handler")), age(o, now)]
}

fn netpol_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let sel = selector_string(o.pointer("/spec/podSelector"));
    vec![
        name(o),
        json!(if sel == "<none>" {
            "<none>".to_string()
        } else {
            sel
        }),
        age(o, now),
    ]
}

fn quota_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let hard = o.pointer("/status/hard").and_then(Value::as_object);
    let used = o.pointer("/status/used").and_then(Value::as_object);
    let (mut req, mut lim) = (Vec::new(), Vec::new());
    for (k, h) in hard.into_iter().flatten() {
        let u = used
            .and_then(|u| u.get(k))
            .map(text)
            .unwrap_or_else(|| "0".into());
        let entry = format!("{k}: {u}/{}", text(h));
        if k.starts_with("limits.") {
            lim.push(entry);
        } else {
            req.push(entry);
        }
    }
    vec![
        name(o),
        age(o, now),
        json!(req.join(", ")),
        json!(lim.join(", ")),
    ]
}

fn gateway_class_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![
        name(o),
        json!(s(o, "/spec/controllerName")),
        json!(condition(o, "Accepted")),
        age(o, now),
        json!(s(o, "/spec/description")),
    ]
}

fn gateway_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let addr = arr(o, "/status/addresses")
        .first()
        .map(|a| s(a, "/value").to_string())
        .unwrap_or_default();
    vec![
        name(o),
        json!(s(o, "/spec/gatewayClassName")),
        json!(addr),
        json!(condition(o, "Programmed")),
        age(o, now),
    ]
}

fn httproute_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let hosts: Vec<&str> = arr(o, "/spec/hostnames")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    vec![name(o), json!(hosts.join(",")), age(o, now)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_targets_like_kubectl() {
        let specs = vec![
            json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}),
            json!({"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "10"}}}),
            json!({"type": "Object", "object": {"metric": {"name": "requests_per_second"}, "target": {"type": "Value", "value": "100"}}}),
        ];
        assert_eq!(hpa_targets(&specs[..1], &[]), "cpu: <unknown>/50%");
        let statuses = vec![
            json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12, "averageValue": "12m"}}}),
            json!({"type": "Pods", "pods": {"current": {"averageValue": "2500m"}}}),
            json!({"type": "Object", "object": {"current": {"value": "7"}}}),
        ];
        assert_eq!(
            hpa_targets(&specs[..2], &statuses),
            "cpu: 12%/50%, 2500m/10"
        );
        assert_eq!(hpa_targets(&specs[2..], &statuses[2..]), "7/100");
        assert_eq!(
            hpa_targets(&specs, &statuses),
            "cpu: 12%/50%, 2500m/10 + 1 more..."
        );
        assert_eq!(hpa_targets(&[], &[]), "<none>");
    }
}
