//! core/v1 Events written the way client-go's `EventCorrelator` writes them, for every
//! component that reports (controllers, scheduler, node agents, gateway):
//!
//! - **repeats** of the same (object, type, reason, message) are folded into one Event whose
//!   `count` and `lastTimestamp` grow (a failing probe patches one Event, it does not write
//!   one per period);
//! - **similar events** (same object, type and reason, other messages) past 10 distinct
//!   messages within 10 minutes become one Event whose message starts with
//!   `(combined from similar events): `, counted like a repeat;
//! - a **flood** about one object is cut by a token bucket per object (25 at once, then one
//!   per 5 minutes); what is cut is dropped and logged at debug level.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Mutex;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// Entries kept per table; beyond this the least recently used is forgotten (a forgotten
/// repeat simply starts a new Event).
const CACHE_LIMIT: usize = 4096;
/// client-go's aggregation: this many distinct messages within `AGGREGATE_WINDOW` ...
const AGGREGATE_AFTER: usize = 10;
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
const COMBINED_PREFIX: &str = "(combined from similar events): ";
/// client-go's spam filter: a burst of 25 per object, refilled at one per 5 minutes.
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);

/// The object an event is about, as the tables key it.
#[derive(Clone, Hash, PartialEq, Eq, Debug)]
struct Subject {
    uid: String,
    kind: String,
    namespace: String,
    name: String,
}

impl Subject {
    fn of(r: &ObjectReference) -> Self {
        Subject {
            uid: r.uid.clone().unwrap_or_default(),
            kind: r.kind.clone().unwrap_or_default(),
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone().unwrap_or_default(),
        }
    }
}

/// Similar events share this; `message: None` is the combined Event of a group.
#[derive(Clone, Hash, PartialEq, Eq, Debug)]
struct Key {
    subject: Subject,
    type_: String,
    reason: String,
    message: Option<String>,
}

/// An Event already written, to be patched on a repeat.
struct Written {
    namespace: String,
    name: String,
    count: i32,
    used: u64,
}

struct Group {
    messages: HashSet<String>,
    last: Instant,
    used: u64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    used: u64,
}

/// What to do with one event.
#[derive(Debug, PartialEq)]
enum Decision {
    Create {
        message: String,
    },
    Patch {
        namespace: String,
        name: String,
        count: i32,
        message: String,
    },
    Drop,
}

/// The bookkeeping of correlation, apart from the API calls so it can be tested alone.
#[derive(Default)]
struct Correlator {
    written: HashMap<Key, Written>,
    groups: HashMap<(Subject, String, String), Group>,
    buckets: HashMap<Subject, Bucket>,
    clock: u64,
}

/// Makes room in a full table: forgets the least recently used eighth at once, so that the
/// pass over the table is paid once per `CACHE_LIMIT / 8` new entries, not on every one
/// (a scheduler writes an Event per pod it binds, each about a new pod).
fn evict<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>, used: impl Fn(&V) -> u64) {
    if m.len() < CACHE_LIMIT {
        return;
    }
    let mut ages: Vec<u64> = m.values().map(&used).collect();
    let n = (ages.len() / 8).max(1);
    let (_, cut, _) = ages.select_nth_unstable(n - 1);
    let cut = *cut;
    m.retain(|_, v| used(v) > cut);
}

impl Correlator {
    /// Decides for one event; returns the key to remember the written Event under.
    fn observe(
        &mut self,
        subject: Subject,
        type_: &str,
        reason: &str,
        message: &str,
        now: Instant,
    ) -> (Decision, Key) {
        self.clock += 1;
        let used = self.clock;
        // Spam filter first, as client-go does.
        let b = match self.buckets.get_mut(&subject) {
            Some(b) => b,
            None => {
                evict(&mut self.buckets, |b| b.used);
                self.buckets.entry(subject.clone()).or_insert(Bucket {
                    tokens: SPAM_BURST,
                    at: now,
                    used,
                })
            }
        };
        let refill = now.saturating_duration_since(b.at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        b.tokens = (b.tokens + refill).min(SPAM_BURST);
        b.at = now;
        b.used = used;
        let key = |message: Option<String>| Key {
            subject: subject.clone(),
            type_: type_.to_string(),
            reason: reason.to_string(),
            message,
        };
        if b.tokens < 1.0 {
            return (Decision::Drop, key(Some(message.to_string())));
        }
        b.tokens -= 1.0;

        // Aggregation of similar events.
        let gk = (subject.clone(), type_.to_string(), reason.to_string());
        if !self.groups.contains_key(&gk) {
            evict(&mut self.groups, |g| g.used);
        }
        let g = self.groups.entry(gk).or_insert_with(|| Group {
            messages: HashSet::new(),
            last: now,
            used,
        });
        if now.saturating_duration_since(g.last) > AGGREGATE_WINDOW {
            g.messages.clear();
        }
        g.last = now;
        g.used = used;
        let (k, message) = if g.messages.contains(message) || g.messages.len() < AGGREGATE_AFTER {
            g.messages.insert(message.to_string());
            (key(Some(message.to_string())), message.to_string())
        } else {
            (key(None), format!("{COMBINED_PREFIX}{message}"))
        };

        // Repeats.
        match self.written.get_mut(&k) {
            Some(w) => {
                w.used = used;
                (
                    Decision::Patch {
                        namespace: w.namespace.clone(),
                        name: w.name.clone(),
                        count: w.count + 1,
                        message,
                    },
                    k,
                )
            }
            None => (Decision::Create { message }, k),
        }
    }

    fn created(&mut self, key: Key, namespace: String, name: String) {
        if !self.written.contains_key(&key) {
            evict(&mut self.written, |w| w.used);
        }
        self.clock += 1;
        self.written.insert(
            key,
            Written {
                namespace,
                name,
                count: 1,
                used: self.clock,
            },
        );
    }

    fn patched(&mut self, key: &Key, count: i32) {
        if let Some(w) = self.written.get_mut(key) {
            w.count = count;
        }
    }

    fn forget(&mut self, key: &Key) {
        self.written.remove(key);
    }
}

/// Writes Events on behalf of one component (`deployment-controller`, `default-scheduler`,
/// `bosun-agent` ...).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    instance: String,
    state: Arc<Mutex<Correlator>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "bosun".to_string());
        Recorder {
            client,
            component: component.to_string(),
            host: None,
            instance: format!("{component}-{host}"),
            state: Arc::new(Mutex::new(Correlator::default())),
        }
    }

    /// A recorder that reports from one node (`source.host`, `reportingInstance`), as a
    /// kubelet does.
    pub fn on_node(client: Client, component: &str, node: &str) -> Self {
        Recorder {
            host: Some(node.to_string()),
            instance: node.to_string(),
            ..Recorder::new(client, component)
        }
    }

    /// Records an event about `obj`. Failures are logged, never returned: an event is a
    /// courtesy to the user and must not fail a reconcile.
    pub async fn record<K>(&self, obj: &K, type_: &str, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let reference = object_reference(obj);
        if let Err(e) = self.record_ref(reference, type_, reason, message).await {
            tracing::debug!(error = %e, reason, "writing event failed");
        }
    }

    pub async fn record_ref(
        &self,
        involved: ObjectReference,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let now = Time(jiff::Timestamp::now());
        // One event at a time per recorder, so a repeat never races its first write.
        let mut state = self.state.lock().await;
        let (decision, key) = state.observe(
            Subject::of(&involved),
            type_,
            reason,
            message,
            Instant::now(),
        );
        let message = match decision {
            Decision::Drop => {
                tracing::debug!(reason, "event dropped: too many about one object");
                return Ok(());
            }
            Decision::Patch {
                namespace,
                name,
                count,
                message,
            } => {
                let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
                let patch =
                    serde_json::json!({"count": count, "lastTimestamp": now, "message": message});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        state.patched(&key, count);
                        return Ok(());
                    }
                    // Deleted meanwhile (Events expire): write it anew.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        state.forget(&key);
                        message
                    }
                    Err(e) => return Err(e),
                }
            }
            Decision::Create { message } => message,
        };
        let namespace = involved
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let name = format!(
            "{}.{:x}",
            involved.name.clone().unwrap_or_default(),
            now.0.as_nanosecond()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(type_.to_string()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &ev).await?;
        state.created(key, namespace, name);
        Ok(())
    }
}

pub fn object_reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(obj.name_any()),
        namespace: obj.namespace(),
        uid: obj.uid(),
        resource_version: obj.resource_version(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Subject {
        Subject {
            uid: format!("uid-{name}"),
            kind: "Pod".into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// Runs one observation and acts as if the API call succeeded.
    fn step(c: &mut Correlator, s: &Subject, reason: &str, msg: &str, now: Instant) -> Decision {
        let (d, k) = c.observe(s.clone(), WARNING, reason, msg, now);
        match &d {
            Decision::Create { .. } => c.created(k, "default".into(), format!("ev{}", c.clock)),
            Decision::Patch { count, .. } => c.patched(&k, *count),
            Decision::Drop => {}
        }
        d
    }

    #[test]
    fn repeats_patch_one_event_with_a_growing_count() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let p = pod("web");
        let first = step(&mut c, &p, "Unhealthy", "Readiness probe failed", now);
        assert!(matches!(first, Decision::Create { .. }));
        for n in 2..=5 {
            match step(&mut c, &p, "Unhealthy", "Readiness probe failed", now) {
                Decision::Patch { count, name, .. } => {
                    assert_eq!(count, n);
                    assert_eq!(name, "ev1");
                }
                d => panic!("repeat {n}: {d:?}"),
            }
        }
        // Another object, or another reason, is an Event of its own.
        assert!(matches!(
            step(
                &mut c,
                &pod("api"),
                "Unhealthy",
                "Readiness probe failed",
                now
            ),
            Decision::Create { .. }
        ));
        assert!(matches!(
            step(&mut c, &p, "BackOff", "Readiness probe failed", now),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn similar_events_are_combined_after_ten_messages() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let p = pod("web");
        for i in 0..AGGREGATE_AFTER {
            let d = step(
                &mut c,
                &p,
                "Unhealthy",
                &format!("probe failed: try {i}"),
                now,
            );
            assert!(matches!(d, Decision::Create { .. }), "{i}: {d:?}");
        }
        match step(&mut c, &p, "Unhealthy", "probe failed: try 10", now) {
            Decision::Create { message } => {
                assert_eq!(
                    message,
                    "(combined from similar events): probe failed: try 10"
                )
            }
            d => panic!("{d:?}"),
        }
        match step(&mut c, &p, "Unhealthy", "probe failed: try 11", now) {
            Decision::Patch { count, message, .. } => {
                assert_eq!(count, 2);
                assert!(message.ends_with("try 11"), "{message}");
            }
            d => panic!("{d:?}"),
        }
        // A message seen before the group filled still counts as a plain repeat.
        assert!(matches!(
            step(&mut c, &p, "Unhealthy", "probe failed: try 3", now),
            Decision::Patch { count: 2, .. }
        ));
        // After the window the group starts over.
        let later = now + AGGREGATE_WINDOW + Duration::from_secs(1);
        assert!(matches!(
            step(&mut c, &p, "Unhealthy", "probe failed: try 12", later),
            Decision::Create { message } if !message.starts_with("(combined")
        ));
    }

    #[test]
    fn a_flood_about_one_object_is_cut_and_refills_slowly() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let p = pod("web");
        let mut dropped = 0;
        for _ in 0..40 {
            if step(&mut c, &p, "Unhealthy", "probe failed", now) == Decision::Drop {
                dropped += 1;
            }
        }
        assert_eq!(dropped, 40 - SPAM_BURST as usize);
        // Other objects are not affected.
        assert!(matches!(
            step(&mut c, &pod("api"), "Unhealthy", "probe failed", now),
            Decision::Create { .. }
        ));
        // One more token after one refill period.
        let later = now + SPAM_REFILL;
        assert!(matches!(
            step(&mut c, &p, "Unhealthy", "probe failed", later),
            Decision::Patch { .. }
        ));
        assert_eq!(
            step(&mut c, &p, "Unhealthy", "probe failed", later),
            Decision::Drop
        );
    }
}
