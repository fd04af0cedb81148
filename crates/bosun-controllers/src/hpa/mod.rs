//! The HorizontalPodAutoscaler controller (`autoscaling/v2`), after Kubernetes'
//! `pkg/controller/podautoscaler`: every sync period it reads the target's `/scale`, the
//! pods its selector matches and their metrics through the API (`metrics.k8s.io` for CPU
//! and memory, `custom.metrics.k8s.io` for the node proxies' per-pod and per-Service
//! request figures, `external.metrics.k8s.io` for series of the built-in metrics), computes the replica count of each metric (`logic.rs`), stabilizes and
//! rate-limits it, writes `/scale` and the status with Kubernetes' conditions and Events.

pub mod logic;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, MetricSpec, MetricTarget,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder, WARNING};
use logic::{
    Behavior, Cond, History, PodInfo, Policy, PolicyKind, Proposal, Rules, Sample, Select,
};

/// Kubernetes' `--horizontal-pod-autoscaler-sync-period`.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);

/// The group, version and kinds of `custom.metrics.k8s.io` the controller reads.
pub const CUSTOM_METRICS: &str = "/apis/custom.metrics.k8s.io/v1beta2";
/// Where `External` metrics are read (bosun's built-in metrics, by name and selector).
pub const EXTERNAL_METRICS: &str = "/apis/external.metrics.k8s.io/v1beta1";

struct Ctx {
    client: Client,
    recorder: Recorder,
    sync_period: Duration,
    /// Per HPA (namespace/name, uid): recommendations and scale events, and when it was
    /// last synced for which generation.
    state: Mutex<HashMap<(String, String), Entry>>,
}

#[derive(Default)]
struct Entry {
    /// The HPA this entry belongs to: a new HPA of the same name starts afresh.
    uid: Option<String>,
    history: History,
    last_sync: Option<(Instant, Option<i64>)>,
}

/// Entries not synced for this long belong to deleted HPAs and are dropped.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The `/scale` of the target, as far as the HPA needs it.
struct Scale {
    spec_replicas: i32,
    status_replicas: i32,
    selector: String,
}

/// The built-in kinds with a `/scale` subresource, known without asking the server.
fn builtin_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match (group, kind) {
        ("apps", "Deployment") => "deployments",
        ("apps", "ReplicaSet") => "replicasets",
        ("apps", "StatefulSet") => "statefulsets",
        ("", "ReplicationController") => "replicationcontrollers",
        _ => return None,
    };
    Some(ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    })
}

/// The resource of the HPA's target: any kind the server serves, built-in or custom (an
/// Argo `Rollout`), found through discovery as Kubernetes' HPA does with its RESTMapper.
/// The target is then read and written only through its `/scale` subresource, so a kind
/// without one fails with the server's NotFound.
async fn target_resource(
    client: &Client,
    hpa: &HorizontalPodAutoscaler,
) -> anyhow::Result<(ApiResource, String)> {
    let r = hpa
        .spec
        .as_ref()
        .map(|s| s.scale_target_ref.clone())
        .unwrap_or_default();
    let av = r.api_version.clone().unwrap_or_else(|| "apps/v1".into());
    if let Some(ar) = builtin_resource(&av, &r.kind) {
        return Ok((ar, r.name));
    }
    let (group, version) = av.split_once('/').unwrap_or(("", av.as_str()));
    let gvk = kube::core::GroupVersionKind::gvk(group, version, &r.kind);
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((ar, _)) => Ok((ar, r.name)),
        Err(e) => Err(anyhow::anyhow!(
            "the server could not find the requested resource {}.{av}: {e}",
            r.kind
        )),
    }
}

async fn get_scale(
    client: &Client,
    ns: &str,
    hpa: &HorizontalPodAutoscaler,
) -> anyhow::Result<Scale> {
    let (ar, name) = target_resource(client, hpa).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let s = api.get_scale(&name).await?;
    let status = s.status.unwrap_or_default();
    Ok(Scale {
        spec_replicas: s.spec.and_then(|s| s.replicas).unwrap_or(0),
        status_replicas: status.replicas,
        selector: status.selector.unwrap_or_default(),
    })
}

async fn set_scale(
    client: &Client,
    ns: &str,
    hpa: &HorizontalPodAutoscaler,
    replicas: i32,
) -> anyhow::Result<()> {
    let (ar, name) = target_resource(client, hpa).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch_scale(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

/// A quantity in milli-units.
fn milli(q: &str) -> Option<i64> {
    bosun_api::validation::parse_quantity(q).map(|v| (v * 1000.0).round() as i64)
}

/// Renders milli-units as a Kubernetes quantity (`250m`, `3`).
pub fn quantity(m: i64) -> String {
    if m % 1000 == 0 {
        format!("{}", m / 1000)
    } else {
        format!("{m}m")
    }
}

fn seconds(ts: &str) -> Option<i64> {
    ts.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

fn pod_info(p: &Pod, resource: Option<&str>) -> PodInfo {
    let status = p.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| logic::ReadyCondition {
            is_true: c.status == "True",
            is_false: c.status == "False",
            last_transition: c
                .last_transition_time
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
        });
    let request_milli = resource.and_then(|res| {
        let spec = p.spec.as_ref()?;
        let mut total = 0;
        for c in &spec.containers {
            let q = c.resources.as_ref()?.requests.as_ref()?.get(res)?;
            total += milli(&q.0)?;
        }
        Some(total)
    });
    PodInfo {
        name: p.name_any(),
        phase: status.phase.clone().unwrap_or_default(),
        deleting: p.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: status.start_time.as_ref().map(|t| t.0.as_second()),
        request_milli,
    }
}

async fn get_json(client: &Client, path: &str) -> anyhow::Result<Value> {
    let req = http::Request::get(path).body(Vec::new())?;
    Ok(client.request::<Value>(req).await?)
}

fn enc(s: &str) -> String {
    url_escape(s)
}

fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Per-pod resource usage (milli-units, summed over containers) from `metrics.k8s.io`.
async fn resource_samples(
    client: &Client,
    ns: &str,
    selector: &str,
    resource: &str,
) -> anyhow::Result<BTreeMap<String, Sample>> {
    let v = get_json(
        client,
        &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={}", enc(selector)),
    )
    .await
    .map_err(|e| anyhow::anyhow!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e:#}"))?;
    let mut out = BTreeMap::new();
    for item in v["items"].as_array().into_iter().flatten() {
        let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        let mut total = 0;
        let mut ok = true;
        for c in item["containers"].as_array().into_iter().flatten() {
            match c
                .pointer(&format!("/usage/{resource}"))
                .and_then(Value::as_str)
                .and_then(milli)
            {
                Some(m) => total += m,
                None => ok = false,
            }
        }
        if !ok {
            continue;
        }
        let window = item["window"]
            .as_str()
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse::<f64>().ok())
            .unwrap_or(10.0) as i64;
        let timestamp = item["timestamp"]
            .as_str()
            .and_then(seconds)
            .unwrap_or_else(|| jiff::Timestamp::now().as_second());
        out.insert(
            name.to_string(),
            Sample {
                milli: total,
                timestamp,
                window_secs: window,
            },
        );
    }
    if out.is_empty() {
        anyhow::bail!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        );
    }
    Ok(out)
}

fn metric_selector_query(
    sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> String {
    let q = crate::util::LabelMatcher::new(sel)
        .query()
        .unwrap_or_default();
    if q.is_empty() {
        String::new()
    } else {
        format!("&metricLabelSelector={}", enc(&q))
    }
}

/// Per-pod values of a custom metric.
async fn pods_samples(
    client: &Client,
    ns: &str,
    selector: &str,
    metric: &str,
    metric_selector: &str,
) -> anyhow::Result<BTreeMap<String, Sample>> {
    let v = get_json(
        client,
        &format!(
            "{CUSTOM_METRICS}/namespaces/{ns}/pods/*/{}?labelSelector={}{metric_selector}",
            enc(metric),
            enc(selector)
        ),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "unable to get metric {metric}: unable to fetch metrics from custom metrics API: {e:#}"
        )
    })?;
    let mut out = BTreeMap::new();
    for item in v["items"].as_array().into_iter().flatten() {
        let Some(name) = item
            .pointer("/describedObject/name")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(m) = item["value"].as_str().and_then(milli) else {
            continue;
        };
        let timestamp = item["timestamp"]
            .as_str()
            .and_then(seconds)
            .unwrap_or_else(|| jiff::Timestamp::now().as_second());
        let window = item["windowSeconds"].as_i64().unwrap_or(10);
        out.insert(
            name.to_string(),
            Sample {
                milli: m,
                timestamp,
                window_secs: window,
            },
        );
    }
    if out.is_empty() {
        anyhow::bail!("unable to get metric {metric}: no metrics returned from custom metrics API");
    }
    Ok(out)
}

/// The value of a custom metric of one object (e.g. a Service).
async fn object_value(
    client: &Client,
    ns: &str,
    obj: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    metric: &str,
    metric_selector: &str,
) -> anyhow::Result<i64> {
    let av = obj.api_version.clone().unwrap_or_else(|| "v1".into());
    let group = av.split_once('/').map(|(g, _)| g).unwrap_or("");
    let plural = format!("{}s", obj.kind.to_lowercase());
    let resource = if group.is_empty() {
        plural
    } else {
        format!("{plural}.{group}")
    };
    let q = metric_selector
        .strip_prefix('&')
        .map(|s| format!("?{s}"))
        .unwrap_or_default();
    let v = get_json(
        client,
        &format!(
            "{CUSTOM_METRICS}/namespaces/{ns}/{resource}/{}/{}{q}",
            enc(&obj.name),
            enc(metric)
        ),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "unable to get metric {metric}: {}/{}: {e:#}",
            obj.kind,
            obj.name
        )
    })?;
    v["items"]
        .as_array()
        .and_then(|i| i.first())
        .and_then(|i| i["value"].as_str())
        .and_then(milli)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unable to get metric {metric}: no metrics returned from custom metrics API"
            )
        })
}

/// The sum of the series of an external metric that match its selector
/// (`GetExternalMetric`), in milli-units.
async fn external_value(
    client: &Client,
    ns: &str,
    metric: &str,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> anyhow::Result<i64> {
    let q = crate::util::LabelMatcher::new(selector)
        .query()
        .unwrap_or_default();
    let mut path = format!("{EXTERNAL_METRICS}/namespaces/{ns}/{}", enc(metric));
    if !q.is_empty() {
        path.push_str(&format!("?labelSelector={}", enc(&q)));
    }
    let what = format!("unable to get external metric {ns}/{metric}/{q}");
    let v = get_json(client, &path).await.map_err(|e| {
        anyhow::anyhow!("{what}: unable to fetch metrics from external metrics API: {e:#}")
    })?;
    let values: Vec<i64> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["value"].as_str().and_then(milli))
        .collect();
    if values.is_empty() {
        anyhow::bail!("{what}: no metrics returned from external metrics API");
    }
    Ok(values.iter().sum())
}

/// One metric's outcome: the proposal and its status entry, or the failure condition.
enum Computed {
    Ok {
        proposal: Proposal,
        status: Value,
        name: String,
    },
    Err {
        reason: &'static str,
        message: String,
        event: String,
    },
}

fn target_value(t: &MetricTarget) -> Option<i64> {
    t.value.as_ref().and_then(|q| milli(&q.0))
}

fn target_average(t: &MetricTarget) -> Option<i64> {
    t.average_value.as_ref().and_then(|q| milli(&q.0))
}

#[allow(clippy::too_many_arguments)]
async fn compute_metric(
    client: &Client,
    ns: &str,
    m: &MetricSpec,
    current: i32,
    scale: &Scale,
    pods: &[Pod],
    now: i64,
) -> Computed {
    match m.type_.as_str() {
        "Resource" => {
            let Some(r) = &m.resource else {
                return Computed::Err { reason: "InvalidMetricSourceType", message: "the HPA was unable to compute the replica count: resource metric source is missing".into(), event: String::new() };
            };
            let res = r.name.as_str();
            let infos: Vec<PodInfo> = pods.iter().map(|p| pod_info(p, Some(res))).collect();
            let outcome = async {
                let samples = resource_samples(client, ns, &scale.selector, res).await?;
                if let Some(u) = r.target.average_utilization {
                    let p = logic::resource_utilization(current, &infos, &samples, res, u, now).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let status = json!({"type": "Resource", "resource": {"name": res, "current": {"averageUtilization": p.utilization, "averageValue": quantity(p.milli)}}});
                    Ok::<_, anyhow::Error>((p, status, format!("{res} resource utilization (percentage of request)")))
                } else if let Some(avg) = target_average(&r.target) {
                    let p = logic::plain_average(current, &infos, &samples, avg, res == "cpu", now).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let status = json!({"type": "Resource", "resource": {"name": res, "current": {"averageValue": quantity(p.milli)}}});
                    Ok((p, status, format!("{res} resource")))
                } else {
                    anyhow::bail!("invalid resource metric source: neither a utilization target nor a value target was set")
                }
            }
            .await;
            match outcome {
                Ok((proposal, status, name)) => Computed::Ok {
                    proposal,
                    status,
                    name,
                },
                Err(e) => {
                    let what = if r.target.average_utilization.is_some() {
                        format!("failed to get {res} utilization")
                    } else {
                        format!("failed to get {res} usage")
                    };
                    Computed::Err {
                        reason: "FailedGetResourceMetric",
                        message: format!(
                            "the HPA was unable to compute the replica count: {what}: {e:#}"
                        ),
                        event: format!("failed to get {res} resource metric value: {what}: {e:#}"),
                    }
                }
            }
        }
        "Pods" => {
            let Some(src) = &m.pods else {
                return Computed::Err { reason: "InvalidMetricSourceType", message: "the HPA was unable to compute the replica count: pods metric source is missing".into(), event: String::new() };
            };
            let name = &src.metric.name;
            let infos: Vec<PodInfo> = pods.iter().map(|p| pod_info(p, None)).collect();
            let outcome = async {
                let target = target_average(&src.target)
                    .ok_or_else(|| anyhow::anyhow!("pods metrics need an averageValue target"))?;
                let samples = pods_samples(
                    client,
                    ns,
                    &scale.selector,
                    name,
                    &metric_selector_query(src.metric.selector.as_ref()),
                )
                .await?;
                let p = logic::plain_average(current, &infos, &samples, target, false, now)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok::<_, anyhow::Error>(p)
            }
            .await;
            match outcome {
                Ok(p) => {
                    let mut metric = json!({"name": name});
                    if let Some(s) = &src.metric.selector {
                        metric["selector"] = serde_json::to_value(s).unwrap_or(Value::Null);
                    }
                    let status = json!({"type": "Pods", "pods": {"metric": metric, "current": {"averageValue": quantity(p.milli)}}});
                    Computed::Ok {
                        proposal: p,
                        status,
                        name: format!("pods metric {name}"),
                    }
                }
                Err(e) => Computed::Err {
                    reason: "FailedGetPodsMetric",
                    message: format!("the HPA was unable to compute the replica count: {e:#}"),
                    event: format!("failed to get pods metric value: {e:#}"),
                },
            }
        }
        "Object" => {
            let Some(src) = &m.object else {
                return Computed::Err { reason: "InvalidMetricSourceType", message: "the HPA was unable to compute the replica count: object metric source is missing".into(), event: String::new() };
            };
            let name = &src.metric.name;
            let outcome = async {
                let usage = object_value(client, ns, &src.described_object, name, &metric_selector_query(src.metric.selector.as_ref())).await?;
                if let Some(v) = target_value(&src.target) {
                    let ready = pods.iter().filter(|p| crate::util::pod_phase(p) == "Running" && crate::util::pod_is_ready(p)).count() as i32;
                    Ok::<_, anyhow::Error>((logic::object_value(current, usage, v, ready), "value"))
                } else if let Some(avg) = target_average(&src.target) {
                    Ok((logic::object_average(current, usage, avg), "averageValue"))
                } else {
                    anyhow::bail!("invalid object metric source: neither a value target nor an average value target was set")
                }
            }
            .await;
            match outcome {
                Ok((p, field)) => {
                    let d = &src.described_object;
                    let status = json!({"type": "Object", "object": {
                        "describedObject": serde_json::to_value(d).unwrap_or(Value::Null),
                        "metric": {"name": name},
                        "current": {field: quantity(p.milli)},
                    }});
                    Computed::Ok {
                        proposal: p,
                        status,
                        name: format!("{} metric {name}", d.kind),
                    }
                }
                Err(e) => Computed::Err {
                    reason: "FailedGetObjectMetric",
                    message: format!("the HPA was unable to compute the replica count: {e:#}"),
                    event: format!("failed to get object metric value: {e:#}"),
                },
            }
        }
        "External" => {
            let Some(src) = &m.external else {
                return Computed::Err { reason: "InvalidMetricSourceType", message: "the HPA was unable to compute the replica count: external metric source is missing".into(), event: String::new() };
            };
            let name = &src.metric.name;
            let outcome = async {
                let usage =
                    external_value(client, ns, name, src.metric.selector.as_ref()).await?;
                if let Some(v) = target_value(&src.target) {
                    let ready = pods
                        .iter()
                        .filter(|p| {
                            crate::util::pod_phase(p) == "Running" && crate::util::pod_is_ready(p)
                        })
                        .count() as i32;
                    Ok::<_, anyhow::Error>((logic::object_value(current, usage, v, ready), "value"))
                } else if let Some(avg) = target_average(&src.target) {
                    Ok((logic::object_average(current, usage, avg), "averageValue"))
                } else {
                    anyhow::bail!("invalid external metric source: neither a value target nor an average value target was set")
                }
            }
            .await;
            match outcome {
                Ok((p, field)) => {
                    let mut metric = json!({"name": name});
                    if let Some(s) = &src.metric.selector {
                        metric["selector"] = serde_json::to_value(s).unwrap_or(Value::Null);
                    }
                    let status = json!({"type": "External", "external": {
                        "metric": metric,
                        "current": {field: quantity(p.milli)},
                    }});
                    Computed::Ok {
                        proposal: p,
                        status,
                        name: format!("external metric {name}"),
                    }
                }
                Err(e) => Computed::Err {
                    reason: "FailedGetExternalMetric",
                    message: format!("the HPA was unable to compute the replica count: {e:#}"),
                    event: format!("failed to get external metric value: {e:#}"),
                },
            }
        }
        other => Computed::Err {
            reason: "InvalidMetricSourceType",
            message: format!(
                "the HPA was unable to compute the replica count: unsupported metric source type \"{other}\""
            ),
            event: format!("unsupported metric source type \"{other}\""),
        },
    }
}

fn rules(r: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(r) = r else { return default };
    Rules {
        stabilization: r
            .stabilization_window_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(default.stabilization),
        select: match r.select_policy.as_deref() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            Some(_) => Select::Max,
            None => default.select,
        },
        policies: match &r.policies {
            Some(ps) => ps
                .iter()
                .map(|p| Policy {
                    kind: if p.type_ == "Percent" {
                        PolicyKind::Percent
                    } else {
                        PolicyKind::Pods
                    },
                    value: p.value,
                    period: Duration::from_secs(p.period_seconds.max(0) as u64),
                })
                .collect(),
            None => default.policies,
        },
    }
}

/// `spec.behavior` with Kubernetes' defaults, or None (the legacy normalization).
pub fn behavior(hpa: &HorizontalPodAutoscaler) -> Option<Behavior> {
    let b = hpa.spec.as_ref()?.behavior.as_ref()?;
    Some(Behavior {
        up: rules(b.scale_up.as_ref(), Rules::default_up()),
        down: rules(b.scale_down.as_ref(), Rules::default_down()),
    })
}

/// Sets a condition in `conds`, keeping its transition time when the status stays.
fn set_condition(conds: &mut Vec<Value>, type_: &str, c: &Cond) {
    let status = if c.status { "True" } else { "False" };
    let now = now_rfc3339();
    if let Some(old) = conds.iter_mut().find(|x| x["type"] == type_) {
        if old["status"] != status {
            old["lastTransitionTime"] = json!(now);
        }
        old["status"] = json!(status);
        old["reason"] = json!(c.reason);
        old["message"] = json!(c.message);
    } else {
        conds.push(json!({"type": type_, "status": status, "lastTransitionTime": now, "reason": c.reason, "message": c.message}));
    }
}

/// Now, to the second, as Kubernetes' `Time` is written (so unchanged statuses compare equal).
fn now_rfc3339() -> String {
    format!("{:.0}", jiff::Timestamp::now())
}

fn cond(status: bool, reason: &'static str, message: String) -> Cond {
    Cond {
        status,
        reason,
        message,
    }
}

async fn reconcile(
    hpa: Arc<HorizontalPodAutoscaler>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    let ns = hpa.namespace().unwrap_or_default();
    let key = (ns.clone(), hpa.name_any());
    let generation = hpa.metadata.generation;
    // Like Kubernetes' rate-limited queue: one pass per sync period unless the spec changed
    // (our own status writes come back as watch events).
    {
        let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        state.retain(|_, e| e.last_sync.is_none_or(|(at, _)| at + FORGET_AFTER > now));
        let uid = hpa.metadata.uid.clone();
        if state.get(&key).is_some_and(|e| e.uid != uid) {
            state.remove(&key);
        }
        state.entry(key.clone()).or_default().uid = uid;
        if let Some((at, g)) = state.get(&key).and_then(|e| e.last_sync) {
            let due = at + ctx.sync_period;
            let now = Instant::now();
            if g == generation && now + Duration::from_millis(50) < due {
                return Ok(Action::requeue(due - now));
            }
        }
    }
    let res = sync(&hpa, &ctx, &ns, &key).await;
    {
        let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        state.entry(key).or_default().last_sync = Some((Instant::now(), generation));
    }
    res?;
    Ok(Action::requeue(ctx.sync_period))
}

async fn sync(
    hpa: &HorizontalPodAutoscaler,
    ctx: &Ctx,
    ns: &str,
    key: &(String, String),
) -> Result<(), ReconcileError> {
    let spec = hpa.spec.clone().unwrap_or_default();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let reference = format!(
        "{}/{}",
        spec.scale_target_ref.kind, spec.scale_target_ref.name
    );
    let mut conds: Vec<Value> = hpa
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| {
            c.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    let old_status = hpa.status.clone().unwrap_or_default();
    let last_scale = old_status
        .last_scale_time
        .as_ref()
        .map(|t| format!("{:.0}", t.0));

    let scale = match get_scale(&ctx.client, ns, hpa).await {
        Ok(s) => s,
        Err(e) => {
            let msg =
                format!("the HPA controller was unable to get the target's current scale: {e:#}");
            ctx.recorder
                .record(hpa, WARNING, "FailedGetScale", &format!("{e:#}"))
                .await;
            set_condition(
                &mut conds,
                "AbleToScale",
                &cond(false, "FailedGetScale", msg),
            );
            write_status(
                ctx,
                hpa,
                ns,
                old_status.current_replicas.unwrap_or(0),
                old_status.desired_replicas,
                None,
                conds,
                last_scale,
            )
            .await?;
            return Ok(());
        }
    };
    set_condition(
        &mut conds,
        "AbleToScale",
        &cond(
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        ),
    );
    let current = scale.spec_replicas;
    let behavior = behavior(hpa);
    let mut metric_statuses: Option<Vec<Value>> = None;
    let mut rescale_reason = String::new();
    let desired: i32;

    if current == 0 && min != 0 {
        set_condition(
            &mut conds,
            "ScalingActive",
            &cond(
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            ),
        );
        desired = 0;
    } else if let Some((bound, reason)) = logic::out_of_bounds(current, min, max) {
        desired = bound;
        rescale_reason = reason.to_string();
    } else {
        let (outcome, statuses) =
            compute_all(ctx, hpa, ns, &spec, current, &scale, &mut conds).await?;
        let Some((proposed, name)) = outcome else {
            // Every metric failed (or some did and the rest would scale down): keep the
            // count, report the statuses we have.
            write_status(
                ctx,
                hpa,
                ns,
                scale.status_replicas,
                old_status.desired_replicas,
                Some(statuses),
                conds,
                last_scale,
            )
            .await?;
            return Ok(());
        };
        metric_statuses = Some(statuses);
        if proposed > current {
            rescale_reason = format!("{name} above target");
        } else if proposed < current {
            rescale_reason = "All metrics below target".into();
        }
        let now = Instant::now();
        let normalized = {
            let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
            let h = &mut state.entry(key.clone()).or_default().history;
            match &behavior {
                None => h.normalize(
                    current,
                    proposed,
                    min,
                    max,
                    logic::DOWNSCALE_STABILIZATION,
                    now,
                ),
                Some(b) => h.normalize_with(b, current, proposed, min, max, now),
            }
        };
        set_condition(&mut conds, "AbleToScale", &normalized.able_to_scale);
        set_condition(&mut conds, "ScalingLimited", &normalized.scaling_limited);
        desired = normalized.replicas;
    }

    let mut last_scale = last_scale;
    let desired = if desired != current {
        match set_scale(&ctx.client, ns, hpa, desired).await {
            Ok(()) => {
                set_condition(
                    &mut conds,
                    "AbleToScale",
                    &cond(
                        true,
                        "SucceededRescale",
                        format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    ),
                );
                ctx.recorder
                    .record(
                        hpa,
                        NORMAL,
                        "SuccessfulRescale",
                        &format!("New size: {desired}; reason: {rescale_reason}"),
                    )
                    .await;
                tracing::info!(hpa = %format!("{ns}/{}", hpa.name_any()), target = %reference, from = current, to = desired, reason = %rescale_reason, "rescaled");
                let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
                state.entry(key.clone()).or_default().history.record_scale(
                    behavior.as_ref(),
                    current,
                    desired,
                    Instant::now(),
                );
                last_scale = Some(now_rfc3339());
                desired
            }
            Err(e) => {
                ctx.recorder
                    .record(
                        hpa,
                        WARNING,
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {rescale_reason}; error: {e:#}"),
                    )
                    .await;
                set_condition(
                    &mut conds,
                    "AbleToScale",
                    &cond(
                        false,
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e:#}"),
                    ),
                );
                write_status(
                    ctx,
                    hpa,
                    ns,
                    scale.status_replicas,
                    current,
                    metric_statuses,
                    conds,
                    last_scale,
                )
                .await?;
                return Err(ReconcileError(e));
            }
        }
    } else {
        current
    };
    write_status(
        ctx,
        hpa,
        ns,
        scale.status_replicas,
        desired,
        metric_statuses,
        conds,
        last_scale,
    )
    .await
}

/// Computes every metric: (replicas, metric name) or None when the count must not change
/// (all metrics invalid, or some invalid and the rest would scale down), and the statuses
/// (an empty one in the place of each failed metric, as Kubernetes writes them).
async fn compute_all(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    ns: &str,
    spec: &k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerSpec,
    current: i32,
    scale: &Scale,
    conds: &mut Vec<Value>,
) -> Result<(Option<(i32, String)>, Vec<Value>), ReconcileError> {
    let metrics = spec.metrics.clone().unwrap_or_default();
    if scale.selector.is_empty() {
        let msg = "the HPA target's scale is missing a selector".to_string();
        ctx.recorder
            .record(hpa, WARNING, "SelectorRequired", &msg)
            .await;
        set_condition(conds, "ScalingActive", &cond(false, "InvalidSelector", msg));
        return Ok((None, Vec::new()));
    }
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&scale.selector))
        .await?
        .items;
    let now = jiff::Timestamp::now().as_second();
    let mut best: Option<(i32, String)> = None;
    let mut statuses = Vec::new();
    let mut invalid = 0;
    let mut first_error: Option<(&'static str, String, String)> = None;
    for m in &metrics {
        match compute_metric(&ctx.client, ns, m, current, scale, &pods, now).await {
            Computed::Ok {
                proposal,
                status,
                name,
            } => {
                statuses.push(status);
                if best.as_ref().is_none_or(|(r, _)| proposal.replicas > *r) {
                    best = Some((proposal.replicas, name));
                }
            }
            Computed::Err {
                reason,
                message,
                event,
            } => {
                invalid += 1;
                statuses.push(json!({"type": ""}));
                if !event.is_empty() {
                    ctx.recorder.record(hpa, WARNING, reason, &event).await;
                }
                if first_error.is_none() {
                    first_error = Some((reason, message, event));
                }
            }
        }
    }
    let replicas = best.as_ref().map(|b| b.0).unwrap_or(current);
    if invalid >= metrics.len() || (invalid > 0 && replicas < current) {
        if let Some((reason, message, event)) = first_error {
            set_condition(conds, "ScalingActive", &cond(false, reason, message));
            ctx.recorder
                .record(
                    hpa,
                    WARNING,
                    "FailedComputeMetricsReplicas",
                    &format!(
                        "invalid metrics ({invalid} invalid out of {}), first error is: {event}",
                        metrics.len()
                    ),
                )
                .await;
        } else {
            set_condition(
                conds,
                "ScalingActive",
                &cond(
                    false,
                    "InvalidMetricSourceType",
                    "the HPA was unable to compute the replica count: no metrics".into(),
                ),
            );
        }
        return Ok((None, statuses));
    }
    let (replicas, name) = best.unwrap_or((current, String::new()));
    set_condition(
        conds,
        "ScalingActive",
        &cond(
            true,
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {name}"),
        ),
    );
    Ok((Some((replicas, name)), statuses))
}

#[allow(clippy::too_many_arguments)]
async fn write_status(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    ns: &str,
    current_replicas: i32,
    desired_replicas: i32,
    metrics: Option<Vec<Value>>,
    conds: Vec<Value>,
    last_scale: Option<String>,
) -> Result<(), ReconcileError> {
    let mut status = json!({
        "observedGeneration": hpa.metadata.generation,
        "currentReplicas": current_replicas,
        "desiredReplicas": desired_replicas,
        "conditions": conds,
    });
    if let Some(t) = last_scale {
        status["lastScaleTime"] = json!(t);
    }
    match metrics {
        Some(m) if !m.is_empty() => status["currentMetrics"] = json!(m),
        _ => status["currentMetrics"] = Value::Null,
    }
    let old = hpa
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    if same_status(&old, &status) {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    api.patch_status(
        &hpa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// True when writing `new` would change nothing `old` says.
fn same_status(old: &Value, new: &Value) -> bool {
    let obj = new.as_object().into_iter().flatten();
    for (k, v) in obj {
        let o = old.get(k).unwrap_or(&Value::Null);
        if k == "currentMetrics" {
            let empty = |x: &Value| x.is_null() || x.as_array().is_some_and(|a| a.is_empty());
            if !(o == v || (empty(o) && empty(v))) {
                return false;
            }
        } else if o != v {
            return false;
        }
    }
    true
}

/// Runs the controller until `shutdown`, one pass per HPA every `sync_period`.
pub async fn run(
    client: Client,
    hpas: Informer<HorizontalPodAutoscaler>,
    sync_period: Duration,
    shutdown: CancellationToken,
) {
    let controller = Controller::for_shared_stream(hpas.subscribe(), hpas.store());
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
        client,
        sync_period,
        state: Mutex::new(HashMap::new()),
    });
    drive(
        "horizontalpodautoscaler",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}
