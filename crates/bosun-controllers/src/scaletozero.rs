//! Scale to zero: a Deployment annotated `bosun.dev/scale-to-zero-after: 60s` goes to zero
//! replicas after that long without requests to any Service that selects its pods, and comes
//! back (to the count it had) when a request arrives. A Deployment that is the target of a
//! HorizontalPodAutoscaler with `minReplicas: 0` and stands at zero is woken the same way.
//!
//! * Services: every Service whose selector matches the pod template of such a Deployment
//!   gets `bosun.dev/scale-to-zero-target: NAME`. The node proxies and gateways track
//!   requests only for these Services, and hold their requests while they have no endpoint
//!   (`bosun_proxy::upstream::activation`).
//! * Activity: each node proxy and gateway writes, into a Lease of its own in
//!   `kube-node-lease` (label `bosun.dev/activity`), the time of the last request and the
//!   numbers of waiting and open (in-flight) requests per marked Service. The controller
//!   combines them: the latest request on any node, the waiting and open requests of all
//!   nodes. A Deployment with an open request (a long download, a long poll, a WebSocket)
//!   is in use and stays up; its idle window starts when the last one ends. Each writer
//!   renews its Lease (`renewTime`, `leaseDurationSeconds`); the waiting and open requests
//!   of an expired Lease (its node or proxy died) no longer count, so they can neither keep
//!   a Deployment up nor wake it. Expired Leases are deleted [`GC_AFTER`] past their expiry, at once when their
//!   node is gone; the Lease of a node that lives drops deleted Services itself.
//! * Scaling down writes `spec.replicas: 0` together with `bosun.dev/scale-to-zero-restore`
//!   (the count before) and `bosun.dev/scale-to-zero-changed` (when), in one patch.
//!   Waking writes the remembered count back (at least 1), in one patch, as soon as a
//!   waiting request is reported (or a request newer than the scale-down).
//!
//! The loop is level-triggered: every pass recomputes all decisions from the caches, and a
//! pass runs on any change of Deployments, Services, HPAs or activity Leases, and at the
//! next idle deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::wake::Wake;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder};

/// On a Deployment (user-set): idle time before scaling to zero, e.g. `60s`, `5m`, `1h30m`.
pub const AFTER_ANNOTATION: &str = "bosun.dev/scale-to-zero-after";
/// On a Deployment (written here): replicas before it was scaled to zero.
pub const RESTORE_ANNOTATION: &str = "bosun.dev/scale-to-zero-restore";
/// On a Deployment (written here): RFC 3339 time of the last scale-down or wake.
pub const CHANGED_ANNOTATION: &str = "bosun.dev/scale-to-zero-changed";
/// On a Service (written here): the Deployments (comma-separated) it may wake. Same value as
/// `bosun_proxy::upstream::activation::TARGET_ANNOTATION`.
pub const TARGET_ANNOTATION: &str = "bosun.dev/scale-to-zero-target";
/// Label and annotation of the activity Leases (see `bosun_proxy::upstream::activation`).
pub const ACTIVITY_LABEL: &str = "bosun.dev/activity";
pub const ACTIVITY_ANNOTATION: &str = "bosun.dev/service-activity";
/// Namespace of the activity Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

const MANAGER: &str = "scale-to-zero-controller";

/// How long an expired activity Lease is kept (its `last` times still count) before it is
/// deleted, when its node still exists.
pub const GC_AFTER: Duration = Duration::from_secs(600);

/// A Go-style duration: `500ms`, `60s`, `5m`, `1h30m` (a bare number means seconds).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{v:?}: missing unit (ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{v:?} is not a duration such as 60s or 5m"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("{v:?}: unknown unit {unit:?} (ms, s, m, h)")),
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

/// Activity of one Service, all nodes combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Unix milliseconds of the latest request seen by any node (0: none).
    pub last_ms: i64,
    /// Requests waiting for an endpoint, summed over nodes.
    pub waiting: u64,
    /// Requests and connections in flight, summed over nodes.
    pub open: u64,
}

fn is_activity(l: &Lease) -> bool {
    l.labels().get(ACTIVITY_LABEL).map(String::as_str) == Some("true")
}

/// Unix ms at which an activity Lease expires: `renewTime + leaseDurationSeconds`. A Lease
/// without them (never renewed) counts as expired since its creation.
pub fn expires_ms(l: &Lease) -> i64 {
    let spec = l.spec.as_ref();
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| ms_of(t.0));
    let duration = spec.and_then(|s| s.lease_duration_seconds);
    match (renewed, duration) {
        (Some(r), Some(d)) => r.saturating_add(i64::from(d.max(0)) * 1000),
        _ => l
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| ms_of(t.0))
            .unwrap_or(0),
    }
}

/// The node an activity Lease reports for (`bosun-proxy-NODE`, `bosun-gateway-NODE`).
pub fn lease_node(name: &str) -> Option<&str> {
    name.strip_prefix("bosun-proxy-")
        .or_else(|| name.strip_prefix("bosun-gateway-"))
        .filter(|n| !n.is_empty())
}

/// Combines the activity Leases at `now_ms`: `NAMESPACE/SERVICE` -> activity. The waiting
/// and open requests of an expired Lease are left out (nobody holds them any more); its
/// request times still count.
pub fn combine<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    now_ms: i64,
) -> HashMap<String, Activity> {
    let mut out: HashMap<String, Activity> = HashMap::new();
    for l in leases {
        if !is_activity(l) {
            continue;
        }
        let live = expires_ms(l) > now_ms;
        let Some(raw) = l.annotations().get(ACTIVITY_ANNOTATION) else {
            continue;
        };
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(raw) else {
            continue;
        };
        for (svc, v) in m {
            let e = out.entry(svc).or_default();
            let last = v.get("last").and_then(Value::as_i64).unwrap_or(0);
            e.last_ms = e.last_ms.max(last);
            if live {
                e.waiting += v.get("waiting").and_then(Value::as_u64).unwrap_or(0);
                e.open += v.get("open").and_then(Value::as_u64).unwrap_or(0);
            }
        }
    }
    out
}

/// What the controller knows about one Deployment it may scale.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub replicas: i32,
    /// `bosun.dev/scale-to-zero-after`, when set.
    pub window: Option<Duration>,
    /// Target of an HPA with `minReplicas: 0`.
    pub hpa_zero: bool,
    pub restore: Option<i32>,
    /// Last scale-down or wake by this controller, else the creation time (Unix ms).
    pub changed_ms: i64,
    /// At least one Service selects its pods, and every such Service is marked already (so
    /// proxies hold requests instead of failing them).
    pub services_ready: bool,
    /// Activity of its Services combined.
    pub activity: Activity,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Scale to zero, remembering `from`.
    ScaleToZero { from: i32 },
    /// Scale from zero to `to`.
    Wake { to: i32 },
    /// Nothing now; look again at this Unix ms (if any).
    Wait(Option<i64>),
}

pub fn decide(v: &View, now_ms: i64) -> Action {
    let a = v.activity;
    if v.replicas == 0 {
        let requested = a.waiting > 0 || (v.restore.is_some() && a.last_ms > v.changed_ms);
        if requested && (v.window.is_some() || v.hpa_zero) {
            return Action::Wake {
                to: v.restore.unwrap_or(1).max(1),
            };
        }
        return Action::Wait(None);
    }
    let Some(window) = v.window else {
        return Action::Wait(None);
    };
    if !v.services_ready {
        return Action::Wait(None);
    }
    if a.waiting > 0 || a.open > 0 {
        // In use: the Lease update that ends it (or its expiry) brings the next pass.
        return Action::Wait(None);
    }
    let base = a.last_ms.max(v.changed_ms);
    let deadline = base.saturating_add(window.as_millis() as i64);
    if now_ms >= deadline {
        Action::ScaleToZero { from: v.replicas }
    } else {
        Action::Wait(Some(deadline.max(now_ms + 100)))
    }
}

fn selects(svc: &Service, dep: &Deployment) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if sel.is_empty() || svc.namespace() != dep.namespace() {
        return false;
    }
    let labels = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let Some(labels) = labels else { return false };
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn ms_of(ts: jiff::Timestamp) -> i64 {
    ts.as_millisecond()
}

/// Runs the controller until `stop`.
pub async fn run(
    client: Client,
    deployments: Informer<Deployment>,
    services: Informer<Service>,
    leases: Informer<Lease>,
    nodes: Informer<Node>,
    stop: CancellationToken,
) {
    let hpas = Informer::<HorizontalPodAutoscaler>::start(Api::all(client.clone()), stop.clone());
    hpas.ready().await;
    let mut wake = Wake::new()
        .on(deployments.subscribe())
        .on(services.subscribe())
        .on(leases.subscribe())
        .on(hpas.subscribe())
        .on(nodes.subscribe());
    let recorder = Recorder::new(client.clone(), MANAGER);
    let mut next: Option<i64> = None;
    loop {
        let sleep = async {
            match next {
                Some(at) => {
                    let wait = (at - ms_of(crate::util::now())).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            r = wake.changed() => if r.is_none() { break },
            _ = sleep => {}
        }
        next = pass(
            &client,
            &recorder,
            &deployments.store().state(),
            &services.store().state(),
            &leases.store().state(),
            &hpas.store().state(),
        )
        .await;
        let gc = collect_leases(&client, &leases.store().state(), &nodes.store().state()).await;
        next = match (next, gc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One pass over everything; returns when to look again.
async fn pass(
    client: &Client,
    recorder: &Recorder,
    deployments: &[Arc<Deployment>],
    services: &[Arc<Service>],
    leases: &[Arc<Lease>],
    hpas: &[Arc<HorizontalPodAutoscaler>],
) -> Option<i64> {
    let now = ms_of(crate::util::now());
    let activity = combine(leases.iter().map(|l| l.as_ref()), now);
    // A Lease that holds waiting requests stops counting when it expires: look again then.
    let mut next: Option<i64> = leases
        .iter()
        .filter(|l| is_activity(l))
        .map(|l| expires_ms(l))
        .filter(|&at| at > now)
        .min()
        .map(|at| at + 1);
    let hpa_zero = |d: &Deployment| {
        hpas.iter().any(|h| {
            h.namespace() == d.namespace()
                && h.spec.as_ref().is_some_and(|s| {
                    s.min_replicas == Some(0)
                        && s.scale_target_ref.kind == "Deployment"
                        && s.scale_target_ref.name == d.name_any()
                })
        })
    };
    // Deployments that may be at zero, with their window.
    let mut marked: Vec<(&Deployment, Option<Duration>, bool)> = Vec::new();
    for d in deployments {
        if d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let window = match d.annotations().get(AFTER_ANNOTATION) {
            None => None,
            Some(v) => match parse_duration(v) {
                Ok(w) if !w.is_zero() => Some(w),
                Ok(_) | Err(_) => {
                    recorder
                        .record(
                            d.as_ref(),
                            crate::events::WARNING,
                            "InvalidScaleToZero",
                            &format!(
                                "annotation {AFTER_ANNOTATION}: {v:?} is not a duration above 0 such as 60s or 5m"
                            ),
                        )
                        .await;
                    None
                }
            },
        };
        let hz = hpa_zero(d);
        if window.is_some() || hz {
            marked.push((d.as_ref(), window, hz));
        }
    }
    // Mark the Services.
    let mut svc_ready: HashMap<(String, String), bool> = HashMap::new();
    let mut svc_of: HashMap<(String, String), Vec<String>> = HashMap::new();
    for s in services {
        let targets: Vec<String> = marked
            .iter()
            .filter(|(d, _, _)| selects(s, d))
            .map(|(d, _, _)| d.name_any())
            .collect();
        let want = (!targets.is_empty()).then(|| targets.join(","));
        let have = s.annotations().get(TARGET_ANNOTATION).cloned();
        let ns = s.namespace().unwrap_or_default();
        let ok = want == have;
        if !ok {
            let api: Api<Service> = Api::namespaced(client.clone(), &ns);
            let patch = json!({"metadata": {"annotations": {TARGET_ANNOTATION: want}}});
            if let Err(e) = api
                .patch(
                    &s.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!(service = %format!("{ns}/{}", s.name_any()), "marking service: {e}");
            }
        }
        for t in targets {
            let key = (ns.clone(), t);
            let e = svc_ready.entry(key.clone()).or_insert(true);
            *e &= ok;
            svc_of
                .entry(key)
                .or_default()
                .push(format!("{ns}/{}", s.name_any()));
        }
    }
    for (d, window, hz) in marked {
        let ns = d.namespace().unwrap_or_default();
        let key = (ns.clone(), d.name_any());
        let svcs = svc_of.get(&key).cloned().unwrap_or_default();
        let mut act = Activity::default();
        for s in &svcs {
            if let Some(a) = activity.get(s) {
                act.last_ms = act.last_ms.max(a.last_ms);
                act.waiting += a.waiting;
                act.open += a.open;
            }
        }
        let ann = d.annotations();
        let changed_ms = ann
            .get(CHANGED_ANNOTATION)
            .and_then(|v| v.parse::<jiff::Timestamp>().ok())
            .or_else(|| d.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .map(ms_of)
            .unwrap_or(now);
        let view = View {
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            window,
            hpa_zero: hz,
            restore: ann.get(RESTORE_ANNOTATION).and_then(|v| v.parse().ok()),
            changed_ms,
            services_ready: svc_ready.get(&key).copied().unwrap_or(false),
            activity: act,
        };
        let (replicas, restore, reason, msg) = match decide(&view, now) {
            Action::Wait(at) => {
                if let Some(at) = at {
                    next = Some(next.map_or(at, |n: i64| n.min(at)));
                }
                continue;
            }
            Action::ScaleToZero { from } => (
                0,
                Some(from.to_string()),
                "ScaledToZero",
                format!(
                    "Scaled down from {from} to 0: no requests to {} for {}",
                    svcs.join(", "),
                    window
                        .map(|w| format!("{}s", w.as_secs_f64()))
                        .unwrap_or_default()
                ),
            ),
            Action::Wake { to } => (
                to,
                None,
                "ScaledFromZero",
                format!(
                    "Scaled up from 0 to {to}: {} requests waiting for {}",
                    act.waiting,
                    svcs.join(", ")
                ),
            ),
        };
        let stamp = crate::util::now().to_string();
        let patch = json!({
            "metadata": {
                "resourceVersion": d.resource_version(),
                "annotations": {RESTORE_ANNOTATION: restore, CHANGED_ANNOTATION: stamp},
            },
            "spec": {"replicas": replicas},
        });
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        match api
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                tracing::info!(deployment = %format!("{ns}/{}", d.name_any()), "{msg}");
                recorder.record(&updated, NORMAL, reason, &msg).await;
            }
            // A newer version arrives through the watch and triggers the next pass.
            Err(e) if crate::util::is_conflict(&e) => {}
            Err(e) => {
                tracing::warn!(deployment = %format!("{ns}/{}", d.name_any()), "{reason}: {e}");
                next = Some(now + 1000);
            }
        }
    }
    next
}

/// What becomes of one activity Lease at `now_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseFate {
    /// Look again at this Unix ms.
    KeepUntil(i64),
    Delete,
}

/// Expired Leases of nodes that are gone go at once; others [`GC_AFTER`] past expiry.
pub fn lease_fate(l: &Lease, node_exists: bool, now_ms: i64) -> LeaseFate {
    let expires = expires_ms(l);
    if expires > now_ms {
        return LeaseFate::KeepUntil(expires);
    }
    let collect_at = expires.saturating_add(GC_AFTER.as_millis() as i64);
    if !node_exists || now_ms >= collect_at {
        LeaseFate::Delete
    } else {
        LeaseFate::KeepUntil(collect_at)
    }
}

/// Deletes the activity Leases whose writers are gone; returns when to look again.
async fn collect_leases(
    client: &Client,
    leases: &[Arc<Lease>],
    nodes: &[Arc<Node>],
) -> Option<i64> {
    let now = ms_of(crate::util::now());
    let mut next: Option<i64> = None;
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    for l in leases.iter().filter(|l| is_activity(l)) {
        let name = l.name_any();
        let node_exists =
            lease_node(&name).is_some_and(|n| nodes.iter().any(|x| x.name_any() == n));
        match lease_fate(l, node_exists, now) {
            LeaseFate::KeepUntil(at) => {
                let at = at + 1;
                next = Some(next.map_or(at, |n: i64| n.min(at)));
            }
            LeaseFate::Delete => {
                let dp = kube::api::DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        resource_version: l.resource_version(),
                        uid: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => {
                        tracing::info!(lease = %name, "deleted expired service activity lease")
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(lease = %name, "deleting expired activity lease: {e}");
                        next = Some(now + 5000);
                    }
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View {
            replicas: 3,
            window: Some(Duration::from_secs(60)),
            hpa_zero: false,
            restore: None,
            changed_ms: 1_000,
            services_ready: true,
            activity: Activity::default(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn idle_deployment_goes_to_zero_after_its_window() {
        let mut v = view();
        v.activity.last_ms = 10_000;
        assert_eq!(decide(&v, 60_000), Action::Wait(Some(70_000)));
        assert_eq!(decide(&v, 70_000), Action::ScaleToZero { from: 3 });
        // Without requests, the window counts from the last change (or creation).
        v.activity.last_ms = 0;
        assert_eq!(decide(&v, 61_000), Action::ScaleToZero { from: 3 });
    }

    #[test]
    fn waiting_requests_or_unmarked_services_keep_it_up() {
        let mut v = view();
        v.activity.waiting = 1;
        assert!(matches!(decide(&v, 1_000_000), Action::Wait(_)));
        let mut v = view();
        v.services_ready = false;
        assert_eq!(decide(&v, 1_000_000), Action::Wait(None));
        let mut v = view();
        v.window = None;
        v.hpa_zero = true;
        assert_eq!(decide(&v, 1_000_000), Action::Wait(None));
    }

    #[test]
    fn open_requests_keep_it_up_and_the_window_starts_at_their_end() {
        let mut v = view();
        v.activity.last_ms = 10_000;
        v.activity.open = 1;
        assert_eq!(decide(&v, 1_000_000), Action::Wait(None));
        // The last one ended at 900 s (its end is the latest activity).
        v.activity.open = 0;
        v.activity.last_ms = 900_000;
        assert_eq!(decide(&v, 920_000), Action::Wait(Some(960_000)));
        assert_eq!(decide(&v, 960_000), Action::ScaleToZero { from: 3 });
    }

    #[test]
    fn wakes_to_the_remembered_count() {
        let mut v = view();
        v.replicas = 0;
        v.restore = Some(3);
        v.changed_ms = 50_000;
        assert_eq!(decide(&v, 60_000), Action::Wait(None));
        v.activity.waiting = 2;
        assert_eq!(decide(&v, 60_000), Action::Wake { to: 3 });
        // A request newer than the scale-down wakes it too (its report may have raced).
        v.activity.waiting = 0;
        v.activity.last_ms = 50_001;
        assert_eq!(decide(&v, 60_000), Action::Wake { to: 3 });
        // Scaled to zero by hand: a waiting request brings back one.
        let mut v = view();
        v.replicas = 0;
        v.activity.waiting = 1;
        assert_eq!(decide(&v, 60_000), Action::Wake { to: 1 });
    }

    #[test]
    fn hpa_with_min_zero_is_woken() {
        let mut v = view();
        v.window = None;
        v.hpa_zero = true;
        v.replicas = 0;
        v.activity.waiting = 5;
        assert_eq!(decide(&v, 60_000), Action::Wake { to: 1 });
    }

    #[test]
    fn activity_of_all_nodes_is_combined() {
        let lease = |name: &str, ann: &str| -> Lease {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {ACTIVITY_LABEL: "true"},
                             "annotations": {ACTIVITY_ANNOTATION: ann}},
                "spec": {"renewTime": "2026-01-01T00:00:00.000000Z", "leaseDurationSeconds": 30},
            }))
            .unwrap()
        };
        let t0 = ms_of("2026-01-01T00:00:00Z".parse().unwrap());
        let a = lease(
            "bosun-proxy-n1",
            r#"{"default/web": {"last": 100, "waiting": 1, "open": 2}}"#,
        );
        let b = lease(
            "bosun-gateway-n2",
            r#"{"default/web": {"last": 300, "waiting": 2}, "x/y": {"last": 5}}"#,
        );
        let heartbeat: Lease = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        let m = combine([&a, &b, &heartbeat], t0 + 29_000);
        assert_eq!(
            m["default/web"],
            Activity {
                last_ms: 300,
                waiting: 3,
                open: 2,
            }
        );
        assert_eq!(m["x/y"].last_ms, 5);
        // Past renewTime + 30s nobody holds those requests any more; the times still count.
        let m = combine([&a, &b], t0 + 30_000);
        assert_eq!(
            m["default/web"],
            Activity {
                last_ms: 300,
                waiting: 0,
                open: 0,
            }
        );
    }

    #[test]
    fn expired_leases_are_collected() {
        let lease = |renew: Option<&str>| -> Lease {
            serde_json::from_value(json!({
                "metadata": {"name": "bosun-proxy-n1", "labels": {ACTIVITY_LABEL: "true"},
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"renewTime": renew, "leaseDurationSeconds": 30},
            }))
            .unwrap()
        };
        let t0 = ms_of("2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(lease_node("bosun-proxy-n1"), Some("n1"));
        assert_eq!(lease_node("bosun-gateway-node-a"), Some("node-a"));
        assert_eq!(lease_node("n1"), None);
        let l = lease(Some("2026-01-01T00:00:00.000000Z"));
        assert_eq!(
            lease_fate(&l, true, t0 + 1_000),
            LeaseFate::KeepUntil(t0 + 30_000)
        );
        assert_eq!(
            lease_fate(&l, false, t0 + 1_000),
            LeaseFate::KeepUntil(t0 + 30_000)
        );
        let gc = t0 + 30_000 + GC_AFTER.as_millis() as i64;
        assert_eq!(lease_fate(&l, true, t0 + 31_000), LeaseFate::KeepUntil(gc));
        assert_eq!(lease_fate(&l, false, t0 + 31_000), LeaseFate::Delete);
        assert_eq!(lease_fate(&l, true, gc), LeaseFate::Delete);
        // Never renewed (written before Leases expired): expired since its creation.
        assert_eq!(expires_ms(&lease(None)), t0);
    }
}
