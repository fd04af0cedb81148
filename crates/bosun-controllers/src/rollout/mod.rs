//! Progressive delivery: Argo Rollouts' `Rollout`, `AnalysisTemplate` and `AnalysisRun`
//! (argoproj.io/v1alpha1), a documented subset (see docs/rollouts.md).
//!
//! * [`install_crds`] creates (or updates) the three CustomResourceDefinitions when the
//!   controllers start, so `kubectl get rollouts` shows printer columns like Argo's.
//! * One level-triggered loop ([`run`]) passes over every Rollout on any change of
//!   Rollouts, their ReplicaSets, Services or AnalysisRuns, and at the next time a pause
//!   ends or a measurement is due. [`logic::decide`] (pure) says what the ReplicaSets
//!   (`rollouts-pod-template-hash`), Service selectors, the traffic split on the stable
//!   Service (`rollouts.bosun.dev/traffic-split`, applied per request by the node proxy and
//!   the gateway), AnalysisRuns and status should be; this module applies it.
//! * AnalysisRuns are measured here too: the `prometheus` provider queries bosun's own
//!   Prometheus API (`--console-listen`) unless `address` is set.

pub mod expr;
pub mod logic;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::wake::Wake;
use http_body_util::BodyExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::deployment::logic::compute_hash;
use crate::events::Recorder;
use crate::util::{controller_of, controller_ref, is_not_found, now};
use logic::{HASH_LABEL, Measurement, Metric, MetricResult, RsView, RunView};

const MANAGER: &str = "rollouts-controller";
pub const GROUP: &str = "argoproj.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "argoproj.io/v1alpha1";

pub fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "Rollout"),
        "rollouts",
    )
}
pub fn run_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "AnalysisRun"),
        "analysisruns",
    )
}
pub fn template_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "AnalysisTemplate"),
        "analysistemplates",
    )
}

/// `status.selector`, the label selector of the `/scale` subresource (what an HPA counts
/// pods and reads metrics by), as Argo Rollouts writes it: every pod of the Rollout for a
/// canary (stable and canary share the load), the active ReplicaSet's pods for blue-green
/// (the preview gets no production traffic).
pub fn status_selector(selector: &LabelSelector, active_hash: Option<&str>) -> String {
    let mut labels: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(h) = active_hash {
        labels.retain(|l| !l.starts_with(&format!("{HASH_LABEL}=")));
        labels.push(format!("{HASH_LABEL}={h}"));
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        labels.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    labels.join(",")
}

fn crd(
    kind: &str,
    plural: &str,
    short: &[&str],
    spec_schema: Value,
    columns: Value,
    scale: bool,
) -> Value {
    let mut subresources = json!({"status": {}});
    if scale {
        subresources["scale"] = json!({
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        });
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{GROUP}"),
            "labels": {"app.kubernetes.io/managed-by": "bosun"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
                "shortNames": short,
                "categories": ["all", "argoproj"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": subresources,
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": spec_schema,
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
            }],
        },
    })
}

fn open() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn duration_schema() -> Value {
    json!({"x-kubernetes-int-or-string": true})
}

fn metric_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name", "provider"],
        "properties": {
            "name": {"type": "string"},
            "interval": {"type": "string"},
            "initialDelay": {"type": "string"},
            "count": {"x-kubernetes-int-or-string": true},
            "failureLimit": {"x-kubernetes-int-or-string": true},
            "inconclusiveLimit": {"x-kubernetes-int-or-string": true},
            "consecutiveErrorLimit": {"x-kubernetes-int-or-string": true},
            "successCondition": {"type": "string"},
            "failureCondition": {"type": "string"},
            "provider": {
                "type": "object",
                "required": ["prometheus"],
                "properties": {"prometheus": {
                    "type": "object",
                    "required": ["query"],
                    "properties": {
                        "address": {"type": "string"},
                        "query": {"type": "string"},
                    },
                }},
            },
        },
    })
}

/// The three CustomResourceDefinitions (the served subset of Argo Rollouts' schemas).
pub fn crds() -> Vec<Value> {
    let templates = json!({"type": "array", "items": {
        "type": "object", "required": ["templateName"],
        "properties": {"templateName": {"type": "string"}, "clusterScope": {"type": "boolean"}},
    }});
    let args = json!({"type": "array", "items": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
    }});
    let step = json!({
        "type": "object",
        "properties": {
            "setWeight": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 100},
            "setCanaryScale": {"type": "object", "properties": {
                "replicas": {"type": "integer", "format": "int32", "minimum": 0},
                "weight": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 100},
                "matchTrafficWeight": {"type": "boolean"},
            }},
            "pause": {"type": "object", "properties": {"duration": duration_schema()}},
            "analysis": {"type": "object", "properties": {"templates": templates, "args": args}},
            "setHeaderRoute": {"type": "object", "properties": {
                "name": {"type": "string"},
                "match": {"type": "array", "items": {"type": "object", "properties": {
                    "headerName": {"type": "string"},
                    "headerValue": {"type": "object", "properties": {
                        "exact": {"type": "string"}, "prefix": {"type": "string"},
                    }},
                }}},
            }},
        },
    });
    let rollout_spec = json!({
        "type": "object",
        "required": ["selector", "template", "strategy"],
        "properties": {
            "replicas": {"type": "integer", "format": "int32", "minimum": 0},
            "selector": open(),
            "template": open(),
            "paused": {"type": "boolean"},
            "revisionHistoryLimit": {"type": "integer", "format": "int32"},
            "minReadySeconds": {"type": "integer", "format": "int32"},
            "strategy": {"type": "object", "properties": {
                "canary": {"type": "object", "properties": {
                    "stableService": {"type": "string"},
                    "canaryService": {"type": "string"},
                    "steps": {"type": "array", "items": step},
                    "analysis": {"type": "object", "properties": {
                        "templates": templates, "args": args,
                        "startingStep": {"type": "integer", "format": "int32", "minimum": 0},
                    }},
                    "scaleDownDelaySeconds": {"type": "integer", "format": "int32", "minimum": 0},
                    "abortScaleDownDelaySeconds": {"type": "integer", "format": "int32", "minimum": 0},
                    "trafficRouting": open(),
                }},
                "blueGreen": {"type": "object", "required": ["activeService"], "properties": {
                    "activeService": {"type": "string"},
                    "previewService": {"type": "string"},
                    "autoPromotionEnabled": {"type": "boolean"},
                    "autoPromotionSeconds": {"type": "integer", "format": "int32", "minimum": 0},
                    "scaleDownDelaySeconds": {"type": "integer", "format": "int32", "minimum": 0},
                }},
            }},
        },
    });
    let rollout_cols = json!([
        {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas",
         "description": "Number of desired pods"},
        {"name": "Current", "type": "integer", "jsonPath": ".status.replicas",
         "description": "Total number of non-terminated pods"},
        {"name": "Up-to-date", "type": "integer", "jsonPath": ".status.updatedReplicas",
         "description": "Total number of non-terminated pods of the current template"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.availableReplicas",
         "description": "Total number of available pods"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.currentStepIndex"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.canary.weights.canary.weight",
         "description": "Percent of requests sent to the canary"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]);
    let template_spec = json!({
        "type": "object", "required": ["metrics"],
        "properties": {
            "metrics": {"type": "array", "items": metric_schema()},
            "args": args,
        },
    });
    let run_spec = json!({
        "type": "object", "required": ["metrics"],
        "properties": {
            "metrics": {"type": "array", "items": metric_schema()},
            "args": args,
            "terminate": {"type": "boolean"},
        },
    });
    vec![
        crd(
            "Rollout",
            "rollouts",
            &["ro"],
            rollout_spec,
            rollout_cols,
            true,
        ),
        crd(
            "AnalysisTemplate",
            "analysistemplates",
            &["at"],
            template_spec,
            json!([{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]),
            false,
        ),
        crd(
            "AnalysisRun",
            "analysisruns",
            &["ar"],
            run_spec,
            json!([
                {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ]),
            false,
        ),
    ]
}

/// Creates the CRDs, or brings an older definition up to date.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for def in crds() {
        let want: CustomResourceDefinition = serde_json::from_value(def)?;
        let name = want.name_any();
        match api.get_opt(&name).await? {
            None => {
                api.create(&PostParams::default(), &want).await?;
            }
            Some(have) if have.spec != want.spec => {
                let mut next = want.clone();
                next.metadata.resource_version = have.metadata.resource_version.clone();
                api.replace(&name, &PostParams::default(), &next).await?;
            }
            Some(_) => {}
        }
    }
    // Served once Established.
    for _ in 0..100 {
        let mut all = true;
        for def in crds() {
            let name = def["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let est = api.get_opt(&name).await?.is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            all &= est;
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("Rollout CRDs not established")
}

/// Runs the Rollout and AnalysisRun controller until `stop`. `metrics_url` is bosun's
/// Prometheus API (the default `address` of the prometheus provider).
pub async fn run(
    client: Client,
    replica_sets: Informer<ReplicaSet>,
    services: Informer<Service>,
    metrics_url: Option<String>,
    stop: CancellationToken,
) {
    let rollouts = Informer::<DynamicObject>::start_with(
        Api::all_with(client.clone(), &rollout_resource()),
        rollout_resource(),
        stop.clone(),
    );
    let runs = Informer::<DynamicObject>::start_with(
        Api::all_with(client.clone(), &run_resource()),
        run_resource(),
        stop.clone(),
    );
    let templates = Informer::<DynamicObject>::start_with(
        Api::all_with(client.clone(), &template_resource()),
        template_resource(),
        stop.clone(),
    );
    tokio::select! {
        _ = async { tokio::join!(rollouts.ready(), runs.ready(), templates.ready()) } => {}
        _ = stop.cancelled() => return,
    }
    let mut wake = Wake::new()
        .on(rollouts.subscribe())
        .on(runs.subscribe())
        .on(replica_sets.subscribe())
        .on(services.subscribe());
    let c = Ctl {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), MANAGER),
        http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
        metrics_url,
    };
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = wake.changed() => if r.is_none() { break },
            _ = tokio::time::sleep(wait) => {}
        }
        let mut next = Duration::from_secs(10);
        let all_runs = runs.store().state();
        for ro in rollouts.store().state() {
            match c
                .reconcile(
                    &ro,
                    &replica_sets.store().state(),
                    &services.store().state(),
                    &all_runs,
                    &templates.store().state(),
                )
                .await
            {
                Ok(Some(d)) => next = next.min(d),
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(rollout = %ro.name_any(), error = %e, "rollout sync failed");
                    next = next.min(Duration::from_secs(1));
                }
            }
        }
        for r in all_runs {
            match c.measure(&r).await {
                Ok(Some(d)) => next = next.min(d),
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(run = %r.name_any(), error = %e, "analysis run failed");
                    next = next.min(Duration::from_secs(1));
                }
            }
        }
        wait = next.max(Duration::from_millis(100));
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

struct Ctl {
    client: Client,
    recorder: Recorder,
    http: HttpClient,
    metrics_url: Option<String>,
}

fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|o| o.uid == uid)
}

fn to_std(d: jiff::SignedDuration) -> Duration {
    Duration::from_millis(d.as_millis().max(0) as u64)
}

impl Ctl {
    async fn reconcile(
        &self,
        ro: &Arc<DynamicObject>,
        all_rs: &[Arc<ReplicaSet>],
        all_svc: &[Arc<Service>],
        all_runs: &[Arc<DynamicObject>],
        templates: &[Arc<DynamicObject>],
    ) -> anyhow::Result<Option<Duration>> {
        if ro.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let ns = ro.namespace().unwrap_or_else(|| "default".into());
        let name = ro.name_any();
        let uid = ro.uid().unwrap_or_default();
        let spec_v = ro.data.get("spec").cloned().unwrap_or(Value::Null);
        let spec: logic::RolloutSpec = serde_json::from_value(spec_v.clone()).unwrap_or_default();
        let status: logic::RolloutStatus = ro
            .data
            .get("status")
            .cloned()
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        let template: PodTemplateSpec =
            serde_json::from_value(spec_v.get("template").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        let selector: LabelSelector =
            serde_json::from_value(spec_v.get("selector").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        let hash = compute_hash(&template, None);
        let mut rs_by_hash: BTreeMap<String, (Arc<ReplicaSet>, RsView)> = BTreeMap::new();
        for rs in all_rs {
            if rs.namespace().as_deref() != Some(&ns) || !owned_by(&rs.metadata, &uid) {
                continue;
            }
            let Some(h) = rs.labels().get(HASH_LABEL).cloned() else {
                continue;
            };
            let st = rs.status.clone().unwrap_or_default();
            let view = RsView {
                replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                ready: st.ready_replicas.unwrap_or(0),
                available: st.available_replicas.unwrap_or(0),
                scale_down_deadline: rs
                    .annotations()
                    .get(logic::SCALE_DOWN_DEADLINE)
                    .and_then(|t| t.parse().ok()),
            };
            rs_by_hash.insert(h, (rs.clone(), view));
        }
        let rs_views: BTreeMap<String, RsView> = rs_by_hash
            .iter()
            .map(|(h, (_, v))| (h.clone(), v.clone()))
            .collect();
        let runs: BTreeMap<String, RunView> = all_runs
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(&ns) && owned_by(&r.metadata, &uid))
            .map(|r| {
                let st = r.data.get("status");
                (
                    r.name_any(),
                    RunView {
                        phase: st
                            .and_then(|s| s.get("phase"))
                            .and_then(Value::as_str)
                            .unwrap_or("Pending")
                            .into(),
                        message: st
                            .and_then(|s| s.get("message"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                    },
                )
            })
            .collect();
        let mut d = logic::decide(&logic::View {
            name: &name,
            generation: ro.metadata.generation.unwrap_or(0),
            spec: &spec,
            status: &status,
            hash: &hash,
            rs: &rs_views,
            runs: &runs,
            now: now(),
        });
        d.status.selector = Some(status_selector(
            &selector,
            d.status
                .blue_green
                .as_ref()
                .and_then(|b| b.active_selector.as_deref()),
        ));
        // Traffic first: the split and selectors move before any pod goes away.
        let svc_api: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        for (svc, h) in &d.selectors {
            let Some(s) = all_svc
                .iter()
                .find(|s| s.namespace().as_deref() == Some(&ns) && s.name_any() == *svc)
            else {
                continue;
            };
            let have = s
                .spec
                .as_ref()
                .and_then(|sp| sp.selector.as_ref())
                .and_then(|m| m.get(HASH_LABEL));
            let have_split = s.annotations().get(bosun_split_annotation()).cloned();
            let want_split = d.split.get(svc).cloned().flatten().map(|v| v.to_string());
            let mut patch = json!({});
            if have != Some(h) {
                patch["spec"] = json!({"selector": {HASH_LABEL: h}});
            }
            if d.split.contains_key(svc) && have_split != want_split {
                patch["metadata"] = json!({"annotations": {bosun_split_annotation(): want_split}});
            }
            if patch != json!({}) {
                svc_api
                    .patch(svc, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        // ReplicaSets.
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        if !rs_by_hash.contains_key(&hash) {
            let mut t = template.clone();
            let meta = t.metadata.get_or_insert_with(Default::default);
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let labels = meta.labels.clone();
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels,
                    owner_references: Some(vec![controller_ref(
                        API_VERSION,
                        "Rollout",
                        &ro.metadata,
                    )]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(d.scale.get(&hash).copied().unwrap_or(0)),
                    selector: {
                        let mut sel = selector.clone();
                        sel.match_labels
                            .get_or_insert_with(Default::default)
                            .insert(HASH_LABEL.into(), hash.clone());
                        sel
                    },
                    template: Some(t),
                    min_ready_seconds: spec_v
                        .get("minReadySeconds")
                        .and_then(Value::as_i64)
                        .map(|n| n as i32),
                }),
                status: None,
            };
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(_) => {}
                Err(e)
                    if crate::util::is_conflict(&e)
                        || crate::util::kube_status_code(&e) == Some(409) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for (h, (rs, view)) in &rs_by_hash {
            let mut patch = json!({});
            if let Some(n) = d.scale.get(h)
                && *n != view.replicas
            {
                patch["spec"] = json!({"replicas": n});
            }
            if let Some(t) = d.deadlines.get(h) {
                patch["metadata"] =
                    json!({"annotations": {logic::SCALE_DOWN_DEADLINE: t.to_string()}});
            } else if d.clear_deadlines.contains(h) {
                // Back in use (a retry, or a rollback to it): no deadline.
                patch["metadata"] = json!({"annotations": {logic::SCALE_DOWN_DEADLINE: null}});
            }
            if patch != json!({}) {
                rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
        }
        // AnalysisRuns.
        let run_api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &ns, &run_resource());
        for want in &d.runs {
            if runs.contains_key(&want.name) {
                continue;
            }
            let mut metrics = Vec::new();
            let mut args: Vec<logic::Arg> = Vec::new();
            let mut missing = None;
            for t in &want.templates {
                let Some(tpl) = templates
                    .iter()
                    .find(|x| x.namespace().as_deref() == Some(&ns) && x.name_any() == *t)
                else {
                    missing = Some(t.clone());
                    break;
                };
                let ts = tpl.data.get("spec").cloned().unwrap_or(Value::Null);
                metrics.extend(
                    ts.get("metrics")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
                for a in ts
                    .get("args")
                    .cloned()
                    .and_then(|a| serde_json::from_value::<Vec<logic::Arg>>(a).ok())
                    .unwrap_or_default()
                {
                    if !args.iter().any(|x| x.name == a.name) {
                        args.push(a);
                    }
                }
            }
            for a in &want.args {
                args.retain(|x| x.name != a.name);
                args.push(a.clone());
            }
            let mut obj = DynamicObject::new(&want.name, &run_resource()).within(&ns);
            obj.metadata.owner_references =
                Some(vec![controller_ref(API_VERSION, "Rollout", &ro.metadata)]);
            obj.metadata.labels = Some(BTreeMap::from([(HASH_LABEL.to_string(), hash.clone())]));
            obj.data = json!({"spec": {"metrics": metrics, "args": args}});
            if let Some(t) = missing {
                // Created failed, so the Rollout aborts with a reason a person can act on.
                obj.data["spec"]["metrics"] = json!([]);
                obj.data["status"] = json!({"phase": "Error", "message": format!("AnalysisTemplate {t:?} not found")});
            }
            match run_api.create(&PostParams::default(), &obj).await {
                Ok(created) => {
                    if obj.data.get("status").is_some() {
                        let mut c = created.clone();
                        c.data["status"] = obj.data["status"].clone();
                        let _ = run_api
                            .replace_status(&want.name, &PostParams::default(), &c)
                            .await;
                    }
                }
                Err(e) if crate::util::kube_status_code(&e) == Some(409) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for t in &d.terminate {
            let phase = runs.get(t).map(|r| r.phase.as_str()).unwrap_or("");
            if !logic::is_terminal(phase) {
                run_api
                    .patch(
                        t,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"spec": {"terminate": true}})),
                    )
                    .await?;
            }
        }
        // Status and Events.
        let new_status = serde_json::to_value(&d.status)?;
        if ro.data.get("status") != Some(&new_status) {
            let mut obj = (**ro).clone();
            obj.data["status"] = new_status;
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &rollout_resource());
            match api
                .replace_status(&name, &PostParams::default(), &obj)
                .await
            {
                Ok(_) => {}
                // Someone (kubectl promote) wrote first: decide again on the new object.
                Err(e) if crate::util::is_conflict(&e) => {
                    return Ok(Some(Duration::from_millis(100)));
                }
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(API_VERSION.into()),
                kind: Some("Rollout".into()),
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: Some(uid.clone()),
                ..Default::default()
            };
            for (type_, reason, msg) in &d.events {
                if let Err(e) = self
                    .recorder
                    .record_ref(reference.clone(), type_, reason, msg)
                    .await
                {
                    tracing::debug!(error = %e, "event");
                }
            }
        }
        Ok(d.requeue.map(to_std))
    }

    /// Takes the AnalysisRun's due measurements; returns when the next one is due.
    async fn measure(&self, run: &Arc<DynamicObject>) -> anyhow::Result<Option<Duration>> {
        let status = run.data.get("status").cloned().unwrap_or(json!({}));
        let phase = status.get("phase").and_then(Value::as_str).unwrap_or("");
        if logic::is_terminal(phase) || run.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let ns = run.namespace().unwrap_or_else(|| "default".into());
        let spec = run.data.get("spec").cloned().unwrap_or(Value::Null);
        let metrics: Vec<Metric> =
            serde_json::from_value(spec.get("metrics").cloned().unwrap_or(json!([])))
                .unwrap_or_default();
        let args: Vec<logic::Arg> =
            serde_json::from_value(spec.get("args").cloned().unwrap_or(json!([])))
                .unwrap_or_default();
        let mut results: Vec<MetricResult> =
            serde_json::from_value(status.get("metricResults").cloned().unwrap_or(json!([])))
                .unwrap_or_default();
        let now_t = now();
        let started: Timestamp = status
            .get("startedAt")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(now_t);
        let mut next: Option<Duration> = None;
        let mut changed = status.get("startedAt").is_none();
        if spec.get("terminate").and_then(Value::as_bool) == Some(true) {
            let mut new_status = status.clone();
            new_status["phase"] = json!("Successful");
            new_status["message"] = json!("Run Terminated");
            return self.write_run(run, &ns, new_status).await.map(|_| None);
        }
        for m in &metrics {
            let i = results.iter().position(|r| r.name == m.name);
            let Some(due) = logic::next_due(m, i.map(|i| &results[i]), started) else {
                continue;
            };
            if due > now_t {
                let w = to_std(due.duration_since(now_t));
                next = Some(next.map_or(w, |n| n.min(w)));
                continue;
            }
            let begun = now();
            let (mphase, value, message) = match self.query(m, &args).await {
                Ok(v) => match logic::assess(m, &v) {
                    Ok(p) => (p.to_string(), Some(value_text(&v)), None),
                    Err(e) => ("Error".to_string(), Some(value_text(&v)), Some(e)),
                },
                Err(e) => ("Error".to_string(), None, Some(e)),
            };
            let meas = Measurement {
                phase: mphase,
                value,
                message,
                started_at: begun.to_string(),
                finished_at: now().to_string(),
            };
            let r = match i {
                Some(i) => &mut results[i],
                None => {
                    results.push(MetricResult {
                        name: m.name.clone(),
                        phase: "Running".into(),
                        ..Default::default()
                    });
                    results.last_mut().expect("just pushed")
                }
            };
            logic::record(m, r, meas);
            changed = true;
            if let Some(d) = logic::next_due(m, Some(r), started) {
                let w = to_std(d.duration_since(now()));
                next = Some(next.map_or(w, |n| n.min(w)));
            }
        }
        if !changed {
            return Ok(next);
        }
        let (p, msg) = logic::run_phase(&results, metrics.len());
        let mut new_status = status.clone();
        new_status["phase"] = json!(p);
        new_status["message"] = if msg.is_empty() {
            Value::Null
        } else {
            json!(msg)
        };
        new_status["metricResults"] = serde_json::to_value(&results)?;
        new_status["startedAt"] = json!(started.to_string());
        self.write_run(run, &ns, new_status).await?;
        Ok(next)
    }

    async fn write_run(&self, run: &DynamicObject, ns: &str, status: Value) -> anyhow::Result<()> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &run_resource());
        let mut obj = run.clone();
        obj.data["status"] = status;
        match api
            .replace_status(&run.name_any(), &PostParams::default(), &obj)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if crate::util::is_conflict(&e) || is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the metric's Prometheus query (an instant query at now).
    async fn query(&self, m: &Metric, args: &[logic::Arg]) -> Result<expr::Value, String> {
        let prom = m
            .provider
            .get("prometheus")
            .ok_or("only the prometheus provider is served")?;
        let q = prom
            .get("query")
            .and_then(Value::as_str)
            .ok_or("provider.prometheus.query is required")?;
        let q = logic::substitute(q, args)?;
        let base = match prom.get("address").and_then(Value::as_str) {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => self.metrics_url.clone().ok_or(
                "no provider.prometheus.address and bosun's metrics are off (--console-listen)",
            )?,
        };
        let url = format!(
            "{}/api/v1/query?{}",
            base.trim_end_matches('/'),
            form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &q)
                .finish()
        );
        let uri: http::Uri = url.parse().map_err(|e| format!("address {base:?}: {e}"))?;
        let fut = self.http.get(uri);
        let resp = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "query timed out".to_string())?
            .map_err(|e| format!("query: {e}"))?;
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("query body: {e}"))?
            .to_bytes();
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| format!("query answer ({code}): {e}"))?;
        if v.get("status").and_then(Value::as_str) != Some("success") {
            return Err(format!(
                "query failed: {}",
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
            ));
        }
        prom_result(&v["data"])
    }
}

fn bosun_split_annotation() -> &'static str {
    "rollouts.bosun.dev/traffic-split"
}

fn value_text(v: &expr::Value) -> String {
    match v {
        expr::Value::Num(n) => n.to_string(),
        expr::Value::Bool(b) => b.to_string(),
        expr::Value::List(l) => format!(
            "[{}]",
            l.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// A Prometheus API `data` as Argo's `result`: a scalar is a number, a vector a list.
pub fn prom_result(data: &Value) -> Result<expr::Value, String> {
    let num = |v: &Value| -> Result<f64, String> {
        let s = v
            .get(1)
            .and_then(Value::as_str)
            .ok_or("sample without a value")?;
        match s {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            _ => s.parse().map_err(|_| format!("bad sample value {s:?}")),
        }
    };
    match data.get("resultType").and_then(Value::as_str) {
        Some("scalar") => Ok(expr::Value::Num(num(&data["result"])?)),
        Some("vector") => Ok(expr::Value::List(
            data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| num(&s["value"]))
                .collect::<Result<_, _>>()?,
        )),
        other => Err(format!("unsupported result type {other:?}")),
    }
}
