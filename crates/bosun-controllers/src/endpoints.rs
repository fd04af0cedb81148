//! Endpoints and EndpointSlice controller: for every Service with a selector, publishes the
//! pods it selects as `Endpoints` (v1) and `EndpointSlice`s (discovery.k8s.io/v1).
//!
//! A pod that starts terminating (deletionTimestamp set) turns `ready: false,
//! terminating: true` in its slice and leaves the v1 `Endpoints` on the very next reconcile,
//! which the pod watch triggers at once, so proxies stop sending it new traffic while the
//! agent is still running its grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::util::{controller_ref, fnv32a, is_conflict, is_not_found, pod_is_ready, pod_phase};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
const RESYNC: Duration = Duration::from_secs(300);

/// The service's selector, when the controller manages its endpoints. Services without one
/// (or ExternalName services) have endpoints maintained by their users.
fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Resolves a service port's targetPort against a pod (`FindPort`): numbers as they are,
/// names through the pod's container ports of the same protocol.
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

/// One pod as an endpoint, with what the slices and v1 endpoints need.
struct PodEndpoint<'a> {
    pod: &'a Pod,
    ip: String,
    serving: bool,
    terminating: bool,
    ports: Vec<SlicePort>,
}

impl PodEndpoint<'_> {
    fn ready(&self, publish_not_ready: bool) -> bool {
        publish_not_ready || (self.serving && !self.terminating)
    }

    fn hostname(&self, svc_name: &str) -> Option<String> {
        let spec = self.pod.spec.as_ref()?;
        (spec.subdomain.as_deref() == Some(svc_name))
            .then(|| spec.hostname.clone())
            .flatten()
    }

    fn target_ref(&self) -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            name: self.pod.metadata.name.clone(),
            namespace: self.pod.metadata.namespace.clone(),
            uid: self.pod.metadata.uid.clone(),
            ..Default::default()
        }
    }
}

fn pod_endpoints<'a>(svc: &Service, pods: &'a [Arc<Pod>]) -> Vec<PodEndpoint<'a>> {
    let Some(selector) = managed_selector(svc) else {
        return Vec::new();
    };
    let svc_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut out: Vec<PodEndpoint<'a>> = pods
        .iter()
        .filter(|p| p.metadata.namespace == svc.metadata.namespace && selects(selector, p))
        .filter(|p| !matches!(pod_phase(p), "Succeeded" | "Failed"))
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()?
                .pod_ip
                .clone()
                .filter(|ip| !ip.is_empty())?;
            // The slices are IPv4; a pod with only an IPv6 address has nothing to publish here.
            ip.parse::<std::net::Ipv4Addr>().ok()?;
            let ports = svc_ports
                .iter()
                .filter_map(|sp| {
                    Some(SlicePort {
                        name: Some(sp.name.clone().unwrap_or_default()),
                        port: Some(resolve_target_port(sp, p)?),
                        protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: sp.app_protocol.clone(),
                    })
                })
                .collect();
            Some(PodEndpoint {
                pod: p.as_ref(),
                ip,
                serving: pod_is_ready(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (ip_key(&a.ip), a.pod.metadata.name.as_deref())
            .cmp(&(ip_key(&b.ip), b.pod.metadata.name.as_deref()))
    });
    out
}

fn ip_key(ip: &str) -> u32 {
    ip.parse::<std::net::Ipv4Addr>().map_or(0, u32::from)
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn common_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

fn port_key(ports: &[SlicePort]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.protocol.as_deref().unwrap_or(""),
                p.port.unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The v1 Endpoints for `svc`: subsets grouped by resolved ports, terminating pods left out
/// (unless the service publishes not-ready addresses).
pub fn desired_endpoints(svc: &Service, pods: &[Arc<Pod>]) -> Endpoints {
    let name = svc.name_any();
    let publish = publish_not_ready(svc);
    let mut groups: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for ep in pod_endpoints(svc, pods) {
        if ep.terminating && !publish {
            continue;
        }
        let subset = groups
            .entry(port_key(&ep.ports))
            .or_insert_with(|| EndpointSubset {
                ports: (!ep.ports.is_empty()).then(|| {
                    ep.ports
                        .iter()
                        .map(|p| EndpointPort {
                            name: p.name.clone().filter(|n| !n.is_empty()),
                            port: p.port.unwrap_or(0),
                            protocol: p.protocol.clone(),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect()
                }),
                ..Default::default()
            });
        let addr = EndpointAddress {
            ip: ep.ip.clone(),
            hostname: ep.hostname(&name),
            node_name: ep.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ep.target_ref()),
        };
        let list = if ep.ready(publish) {
            subset.addresses.get_or_insert_with(Vec::new)
        } else {
            subset.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(addr);
    }
    Endpoints {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(common_labels(svc)),
            owner_references: Some(vec![controller_ref("v1", "Service", &svc.metadata)]),
            ..Default::default()
        },
        subsets: (!groups.is_empty()).then(|| groups.into_values().collect()),
    }
}

/// The EndpointSlices for `svc`: one per distinct set of resolved ports, named after the
/// service and a hash of those ports so every reconcile arrives at the same names. A service
/// without endpoints still gets one empty slice, as upstream publishes.
pub fn desired_slices(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSlice> {
    let name = svc.name_any();
    let publish = publish_not_ready(svc);
    let mut groups: BTreeMap<String, (Vec<SlicePort>, Vec<Endpoint>)> = BTreeMap::new();
    for ep in pod_endpoints(svc, pods) {
        let entry = groups
            .entry(port_key(&ep.ports))
            .or_insert_with(|| (ep.ports.clone(), Vec::new()));
        entry.1.push(Endpoint {
            addresses: vec![ep.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(ep.ready(publish)),
                serving: Some(ep.serving || publish),
                terminating: Some(ep.terminating),
            }),
            hostname: ep.hostname(&name),
            node_name: ep.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ep.target_ref()),
            ..Default::default()
        });
    }
    if groups.is_empty() {
        groups.insert(String::new(), (Vec::new(), Vec::new()));
    }
    let mut labels = common_labels(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    groups
        .into_iter()
        .map(|(key, (ports, endpoints))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{:08x}", fnv32a(key.as_bytes()))),
                namespace: svc.metadata.namespace.clone(),
                labels: Some(labels.clone()),
                owner_references: Some(vec![controller_ref("v1", "Service", &svc.metadata)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
        })
        .collect()
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    /// The slices as the informer last saw them: what a reconcile compares against and
    /// writes over, so a pod change costs one write rather than a read, a write and a list.
    slices: Store<EndpointSlice>,
}

fn same_meta(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.labels.clone().unwrap_or_default() == b.labels.clone().unwrap_or_default()
        && a.owner_references == b.owner_references
}

/// Creates `want` or replaces the stored object when it differs; `differs` compares content.
async fn upsert<K>(api: &Api<K>, mut want: K, differs: impl Fn(&K, &K) -> bool) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = want.name_any();
    match api.get_opt(&name).await? {
        // A concurrent create fails with a conflict; the retry compares against it.
        None => {
            api.create(&PostParams::default(), &want).await?;
            Ok(())
        }
        Some(have) => {
            if have.meta().deletion_timestamp.is_some() {
                // Being deleted (e.g. the service is going away); leave it to the collector.
                return Ok(());
            }
            if !differs(&have, &want) && same_meta(have.meta(), want.meta()) {
                return Ok(());
            }
            let meta = want.meta_mut();
            meta.resource_version = have.meta().resource_version.clone();
            meta.uid = have.meta().uid.clone();
            meta.annotations = have.meta().annotations.clone();
            api.replace(&name, &PostParams::default(), &want).await?;
            Ok(())
        }
    }
}

fn slice_differs(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.endpoints != b.endpoints || a.ports != b.ports || a.address_type != b.address_type
}

/// Writes a slice against the cached copy `have` (from the informer). A cache behind the API
/// (a write of ours or someone else's not seen yet) shows as a conflict, and the write is
/// then made against a fresh read; a cache behind that says "no change" is caught up by
/// the slice's own watch event, which reconciles the Service again.
async fn upsert_slice(
    api: &Api<EndpointSlice>,
    want: EndpointSlice,
    have: Option<&EndpointSlice>,
) -> Result<()> {
    let name = want.name_any();
    let res = match have {
        None => api.create(&PostParams::default(), &want).await.map(|_| ()),
        Some(have) => {
            if have.metadata.deletion_timestamp.is_some()
                || (!slice_differs(have, &want) && same_meta(&have.metadata, &want.metadata))
            {
                return Ok(());
            }
            let mut put = want.clone();
            put.metadata.resource_version = have.metadata.resource_version.clone();
            put.metadata.uid = have.metadata.uid.clone();
            put.metadata.annotations = have.metadata.annotations.clone();
            api.replace(&name, &PostParams::default(), &put)
                .await
                .map(|_| ())
        }
    };
    match res {
        Ok(()) => Ok(()),
        // Created meanwhile, changed meanwhile, or deleted meanwhile: read and write again.
        Err(e) if is_conflict(&e) || is_not_found(&e) => upsert(api, want, slice_differs).await,
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|s| {
            let l = s.labels();
            l.get(SERVICE_NAME_LABEL) == Some(&name)
                && l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        })
        .collect();
    if managed_selector(&svc).is_none() {
        // Without a selector the slices are not ours to keep; v1 Endpoints are left to users.
        for s in &owned {
            delete_ignoring_missing(&slices_api, &s.name_any()).await?;
        }
        return Ok(Action::requeue(RESYNC));
    }
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();

    // Slices first: they carry the terminating state proxies act on.
    let want = desired_slices(&svc, &pods);
    let keep: BTreeSet<String> = want.iter().map(|s| s.name_any()).collect();
    for s in want {
        let have = owned
            .iter()
            .find(|o| o.metadata.name == s.metadata.name)
            .map(Arc::as_ref);
        upsert_slice(&slices_api, s, have).await?;
    }
    for s in &owned {
        if !keep.contains(&s.name_any()) {
            delete_ignoring_missing(&slices_api, &s.name_any()).await?;
        }
    }

    let endpoints_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    upsert(&endpoints_api, desired_endpoints(&svc, &pods), |a, b| {
        a.subsets.clone().unwrap_or_default() != b.subsets.clone().unwrap_or_default()
    })
    .await?;
    Ok(Action::requeue(RESYNC))
}

async fn delete_ignoring_missing(api: &Api<EndpointSlice>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn run(
    client: Client,
    services: Informer<Service>,
    pods: Informer<Pod>,
    slices: Informer<EndpointSlice>,
    shutdown: CancellationToken,
) {
    let svc_store = services.store();
    let by_selector = svc_store.clone();
    let slice_store = slices.store();
    let ctx = Arc::new(Ctx {
        client,
        pods: pods.store(),
        slices: slices.store(),
    });
    let controller = Controller::for_shared_stream(services.subscribe(), svc_store)
        .owns_shared_stream(slices.subscribe())
        .watches_shared_stream(pods.subscribe(), move |p: Arc<Pod>| {
            let ns = p.namespace();
            let pod_name = p.name_any();
            // Services selecting the pod now, and those still listing it (its labels changed
            // or it went away).
            let mut refs: std::collections::HashSet<ObjectRef<Service>> = by_selector
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns)
                .filter(|s| managed_selector(s).is_some_and(|sel| selects(sel, &p)))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect();
            for s in slice_store.state() {
                if s.namespace() != ns {
                    continue;
                }
                let lists_pod = s.endpoints.iter().any(|e| {
                    e.target_ref
                        .as_ref()
                        .is_some_and(|r| r.name.as_deref() == Some(pod_name.as_str()))
                });
                if let (true, Some(svc)) = (lists_pod, s.labels().get(SERVICE_NAME_LABEL)) {
                    refs.insert(ObjectRef::new(svc).within(ns.as_deref().unwrap_or_default()));
                }
            }
            refs.into_iter().collect::<Vec<_>>()
        });
    drive(
        "endpoints",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                             "labels": labels},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [
                    {"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap(),
        )
    }

    fn web() -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
                         "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "metrics", "port": 9090, "targetPort": 9091}]}
        }))
    }

    #[test]
    fn target_ports_resolve_numbers_and_named_container_ports() {
        let p = pod("a", "10.0.0.5", true, json!({"app": "web"}));
        let port = |v: serde_json::Value| -> ServicePort { serde_json::from_value(v).unwrap() };
        assert_eq!(
            resolve_target_port(&port(json!({"port": 80})), &p),
            Some(80)
        );
        assert_eq!(
            resolve_target_port(&port(json!({"port": 80, "targetPort": 81})), &p),
            Some(81)
        );
        assert_eq!(
            resolve_target_port(&port(json!({"port": 80, "targetPort": "http"})), &p),
            Some(8080)
        );
        // Named ports match only the same protocol.
        assert_eq!(
            resolve_target_port(&port(json!({"port": 53, "targetPort": "dns"})), &p),
            None
        );
        assert_eq!(
            resolve_target_port(
                &port(json!({"port": 53, "targetPort": "dns", "protocol": "UDP"})),
                &p
            ),
            Some(5353)
        );
    }

    #[test]
    fn slices_carry_ready_serving_terminating() {
        let mut term = (*pod("c", "10.0.0.3", true, json!({"app": "web"}))).clone();
        term.metadata.deletion_timestamp = Some(crate::util::time(crate::util::now()));
        let pods = vec![
            pod("b", "10.0.0.2", false, json!({"app": "web"})),
            pod("a", "10.0.0.1", true, json!({"app": "web"})),
            Arc::new(term),
            pod("other", "10.0.0.9", true, json!({"app": "db"})),
        ];
        let slices = desired_slices(&web(), &pods);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s.address_type, "IPv4");
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["team"], "a");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "svc-uid")
        );
        let ports: Vec<_> = s
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port.unwrap()))
            .collect();
        assert_eq!(ports, [("http".into(), 8080), ("metrics".into(), 9091)]);
        let conds: Vec<_> = s
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (
                    e.addresses[0].as_str(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            conds,
            [
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", false, false, false),
                ("10.0.0.3", false, true, true),
            ]
        );
        let e = &s.endpoints[0];
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        assert_eq!(e.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));

        // v1 Endpoints: ready and not-ready addresses; the terminating pod is gone.
        let ep = desired_endpoints(&web(), &pods);
        let subsets = ep.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        let ips = |v: &Option<Vec<EndpointAddress>>| -> Vec<String> {
            v.iter().flatten().map(|a| a.ip.clone()).collect()
        };
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);
    }

    #[test]
    fn pods_with_different_resolved_ports_get_separate_slices() {
        let a = pod("a", "10.0.0.1", true, json!({"app": "web"}));
        let mut b = (*pod("b", "10.0.0.2", true, json!({"app": "web"}))).clone();
        b.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 8081;
        let slices = desired_slices(&web(), &[a.clone(), Arc::new(b.clone())]);
        assert_eq!(slices.len(), 2);
        let names: BTreeSet<_> = slices.iter().map(|s| s.name_any()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.iter().all(|n| n.starts_with("web-")));
        // Stable names across reconciles.
        let again = desired_slices(&web(), &[Arc::new(b), a]);
        let names2: BTreeSet<_> = again.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, names2);
    }

    #[test]
    fn headless_and_empty_services() {
        let headless = svc(json!({
            "metadata": {"name": "db", "namespace": "default", "uid": "u"},
            "spec": {"selector": {"app": "db"}, "clusterIP": "None",
                     "ports": [{"port": 5432}]}
        }));
        let mut p = (*pod("db-0", "10.0.0.7", true, json!({"app": "db"}))).clone();
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = Some("db-0".into());
        spec.subdomain = Some("db".into());
        let slices = desired_slices(&headless, &[Arc::new(p)]);
        assert_eq!(slices.len(), 1);
        assert!(
            slices[0]
                .metadata
                .labels
                .as_ref()
                .unwrap()
                .contains_key(HEADLESS_LABEL)
        );
        assert_eq!(slices[0].endpoints[0].hostname.as_deref(), Some("db-0"));
        let ports = slices[0].ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some(""), Some(5432))
        );

        // No pods: one empty slice and empty Endpoints.
        let empty = desired_slices(&web(), &[]);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.is_empty());
        assert!(desired_endpoints(&web(), &[]).subsets.is_none());

        // No selector: nothing managed.
        let manual = svc(json!({"metadata": {"name": "m", "namespace": "default"},
                                "spec": {"ports": [{"port": 1}]}}));
        assert!(managed_selector(&manual).is_none());
    }
}
