//! Scale to zero, the data-plane half: activity of Services whose workload may be scaled to
//! zero, the report of that activity to the API, and holding requests while such a Service
//! has no ready endpoints.
//!
//! The scale-to-zero controller (`bosun-controllers/src/scaletozero.rs`) marks every Service
//! that selects the pods of a Deployment it may scale to zero with
//! [`TARGET_ANNOTATION`] (value: the Deployment's name). For marked Services only:
//! * each request or connection stores the time in one atomic ([`Activity::touch`]; no lock,
//!   no allocation) and counts as open until its response body ends or its connection
//!   closes ([`Activity::open`]), so a long download, long poll or WebSocket keeps its
//!   Deployment up as long as it lasts, not only its arrival;
//! * a reporter task ([`super::Upstreams::report_activity`]) writes the latest request time
//!   and the numbers of held and open requests of every marked Service into a Lease of its own in
//!   `kube-node-lease` (annotation [`ACTIVITY_ANNOTATION`]), at most once a second and at once
//!   when a request starts waiting, and renews it every [`RENEW_INTERVAL`] (`renewTime`,
//!   `leaseDurationSeconds`); the controller combines the Leases of every node, ignores the
//!   waiting requests of an expired Lease and deletes the Leases of nodes that are gone;
//! * a request that finds no ready endpoint waits (bounded by [`ActivationConfig::queue`]
//!   per Service, for at most [`ActivationConfig::timeout`]) until an EndpointSlice change
//!   brings one, then goes on as any other request. Past the timeout it gets a 503 that names
//!   the Service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Written by the controller on a Service: the Deployment that serves it and may be at zero.
pub const TARGET_ANNOTATION: &str = "bosun.dev/scale-to-zero-target";
/// On a Service (user-set): how long a request waits for the first ready endpoint (30s).
pub const TIMEOUT_ANNOTATION: &str = "bosun.dev/activation-timeout";
/// On a Service (user-set): how many requests may wait at once on one node (1000).
pub const QUEUE_ANNOTATION: &str = "bosun.dev/activation-queue";
/// On an activity Lease: `{"NAMESPACE/SERVICE": {"last": UNIX_MS, "waiting": N, "open": N}}`.
pub const ACTIVITY_ANNOTATION: &str = "bosun.dev/service-activity";
/// Label of activity Leases (so the controller can tell them from node heartbeats).
pub const ACTIVITY_LABEL: &str = "bosun.dev/activity";
/// Namespace of the activity Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `spec.leaseDurationSeconds` of an activity Lease: past `renewTime` plus this, the Lease
/// is expired and the controller ignores its waiting requests (its writer is gone).
pub const LEASE_DURATION: Duration = Duration::from_secs(30);
/// How often a live writer renews its Lease when the activity did not change.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// The activity Lease of one component of one node: `bosun-proxy-NODE` or
/// `bosun-gateway-NODE`. The Node authorizer lets a node write exactly these.
pub fn lease_name(component: &str, node: &str) -> String {
    format!("bosun-{component}-{node}")
}

/// How a marked Service holds requests while it has no endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationConfig {
    /// The Deployment that is woken (for messages; the controller does the waking).
    pub deployment: String,
    pub timeout: Duration,
    pub queue: u32,
}

impl ActivationConfig {
    /// From a Service's annotations; `None` when the Service is not marked. A bad timeout or
    /// queue size is logged by the caller and replaced by the default.
    pub fn from_annotations(
        ann: &BTreeMap<String, String>,
    ) -> Option<(ActivationConfig, Option<String>)> {
        let deployment = ann.get(TARGET_ANNOTATION)?.trim().to_string();
        if deployment.is_empty() {
            return None;
        }
        let mut err = None;
        let timeout = match ann.get(TIMEOUT_ANNOTATION) {
            None => DEFAULT_TIMEOUT,
            Some(v) => match super::policy::parse_duration(v.trim()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    err = Some(format!("annotation {TIMEOUT_ANNOTATION}: must be above 0"));
                    DEFAULT_TIMEOUT
                }
                Err(e) => {
                    err = Some(format!("annotation {TIMEOUT_ANNOTATION}: {e}"));
                    DEFAULT_TIMEOUT
                }
            },
        };
        let queue = match ann.get(QUEUE_ANNOTATION) {
            None => DEFAULT_QUEUE,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    err = Some(format!(
                        "annotation {QUEUE_ANNOTATION}: {v:?} is not a positive integer"
                    ));
                    DEFAULT_QUEUE
                }
            },
        };
        Some((
            ActivationConfig {
                deployment,
                timeout,
                queue,
            },
            err,
        ))
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_QUEUE: u32 = 1000;

/// Request activity of one marked Service on this node. Kept across Service updates.
#[derive(Debug, Default)]
pub struct Activity {
    /// Unix time of the latest request, in milliseconds (0: none seen).
    last_ms: AtomicU64,
    /// Requests waiting for an endpoint right now.
    waiting: AtomicU32,
    /// Requests and connections in flight right now (waiting ones included).
    open: AtomicU32,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Activity {
    #[inline]
    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn open_count(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a request or connection as open until the last clone of the guard is dropped;
    /// its end is then recorded as the latest activity (the idle window starts there).
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenGuard {
            _place: Arc::new(OpenPlace(self.clone())),
        }
    }

    /// Takes a place in the queue, or `None` when `max` requests already wait.
    pub(crate) fn enter(self: &Arc<Self>, max: u32) -> Option<WaitGuard> {
        let prev = self.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = WaitGuard(self.clone());
        if prev >= max {
            return None; // the guard gives the place back
        }
        Some(guard)
    }
}

/// A place in a Service's activation queue; given back on drop.
pub(crate) struct WaitGuard(Arc<Activity>);

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open request or connection of a marked Service (see [`Activity::open`]). Cloneable so
/// that it can ride in a request's extensions into the task that splices an upgraded
/// connection; the place is given back when the last clone goes.
#[derive(Clone)]
pub struct OpenGuard {
    _place: Arc<OpenPlace>,
}

impl std::fmt::Debug for OpenGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenGuard")
    }
}

struct OpenPlace(Arc<Activity>);

impl Drop for OpenPlace {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Shared by every [`super::ServiceInfo`] version of one Service; equal whatever it holds,
/// so that a Service whose spec did not change compares equal.
#[derive(Clone, Debug, Default)]
pub struct ActivityCell(pub Arc<Activity>);

impl PartialEq for ActivityCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// One Service's entry in an activity report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Report {
    pub last_ms: u64,
    pub waiting: u32,
    /// Requests and connections in flight (while any is, the Deployment is in use).
    pub open: u32,
}

/// The annotation value for a set of reports.
pub fn encode(reports: &BTreeMap<String, Report>) -> String {
    let m: serde_json::Map<String, Value> = reports
        .iter()
        .map(|(k, r)| {
            (
                k.clone(),
                json!({"last": r.last_ms, "waiting": r.waiting, "open": r.open}),
            )
        })
        .collect();
    Value::Object(m).to_string()
}

/// Reads an activity annotation (`NAMESPACE/SERVICE` -> report); bad entries are skipped.
pub fn decode(s: &str) -> BTreeMap<String, Report> {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(s) else {
        return BTreeMap::new();
    };
    m.into_iter()
        .filter_map(|(k, v)| {
            Some((
                k,
                Report {
                    last_ms: v.get("last")?.as_u64()?,
                    waiting: count(&v, "waiting"),
                    open: count(&v, "open"),
                },
            ))
        })
        .collect()
}

fn count(v: &Value, key: &str) -> u32 {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|w| w.min(u32::MAX as u64) as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_annotations() {
        let mut a = BTreeMap::new();
        assert!(ActivationConfig::from_annotations(&a).is_none());
        a.insert(TARGET_ANNOTATION.to_string(), "web".to_string());
        let (c, e) = ActivationConfig::from_annotations(&a).unwrap();
        assert_eq!(c.deployment, "web");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.queue, DEFAULT_QUEUE);
        assert!(e.is_none());
        a.insert(TIMEOUT_ANNOTATION.to_string(), "3s".to_string());
        a.insert(QUEUE_ANNOTATION.to_string(), "0".to_string());
        let (c, e) = ActivationConfig::from_annotations(&a).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.queue, DEFAULT_QUEUE);
        assert!(e.unwrap().contains(QUEUE_ANNOTATION));
    }

    #[test]
    fn queue_is_bounded_and_places_are_given_back() {
        let a = Arc::new(Activity::default());
        let g1 = a.enter(2).unwrap();
        let g2 = a.enter(2).unwrap();
        assert!(a.enter(2).is_none());
        assert_eq!(a.waiting(), 2);
        drop(g1);
        let _g3 = a.enter(2).unwrap();
        drop(g2);
        assert_eq!(a.waiting(), 1);
    }

    #[test]
    fn reports_round_trip() {
        let mut m = BTreeMap::new();
        m.insert(
            "default/web".to_string(),
            Report {
                last_ms: 1_700_000_000_123,
                waiting: 3,
                open: 4,
            },
        );
        assert_eq!(decode(&encode(&m)), m);
        assert!(decode("not json").is_empty());
        assert_eq!(decode(r#"{"a/b": {"last": 5}, "c/d": {}}"#).len(), 1);
    }

    #[test]
    fn open_requests_are_counted_until_their_last_guard_goes() {
        let a = Arc::new(Activity::default());
        let g = a.open();
        let in_task = g.clone();
        let _other = a.open();
        assert_eq!(a.open_count(), 2);
        drop(g);
        assert_eq!(a.open_count(), 2);
        a.last_ms.store(0, Ordering::Relaxed);
        drop(in_task);
        assert_eq!(a.open_count(), 1);
        // The end of a request is activity: the idle window starts there.
        assert!(a.last_ms() > 0);
    }
}
