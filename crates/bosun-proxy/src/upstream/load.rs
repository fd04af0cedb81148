//! Request load per pod and per Service, as this process's proxies (node proxy and gateway)
//! see it: requests per second and p99 latency over the last [`WINDOW_SECS`] seconds, and
//! requests in flight now. The HorizontalPodAutoscaler reads these through the agent's
//! `/stats/load` and the API server's `custom.metrics.k8s.io`.
//!
//! One table per process ([`table`]): both proxies of a node record into it. Each entry is
//! a ring of one-second slots holding a count and a latency histogram, so memory per pod is
//! fixed; entries idle for [`FORGET_SECS`] are dropped when the table is read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Seconds the rates and latencies are measured over.
pub const WINDOW_SECS: u64 = 10;
const SLOTS: usize = WINDOW_SECS as usize + 1;
/// Latency buckets: 100 µs doubling up to ~52 s, then overflow.
const BUCKETS: usize = 21;
/// Entries without requests for this long (and none in flight) are forgotten.
const FORGET_SECS: u64 = 300;

/// What a figure belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Pod(String),
    Service(String),
}

#[derive(Clone, Copy, Default)]
struct Slot {
    second: u64,
    count: u64,
    buckets: [u32; BUCKETS],
}

#[derive(Default)]
struct Entry {
    in_flight: AtomicI64,
    slots: Mutex<[Slot; SLOTS]>,
    last_second: AtomicI64,
}

/// The load table of one process.
#[derive(Default)]
pub struct LoadTable {
    entries: Mutex<HashMap<(String, Subject), Arc<Entry>>>,
}

static TABLE: LazyLock<LoadTable> = LazyLock::new(LoadTable::default);

/// The process's table.
pub fn table() -> &'static LoadTable {
    &TABLE
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bucket(seconds: f64) -> usize {
    let mut bound = 0.0001;
    for i in 0..BUCKETS - 1 {
        if seconds <= bound {
            return i;
        }
        bound *= 2.0;
    }
    BUCKETS - 1
}

fn bucket_upper(i: usize) -> f64 {
    0.0001 * 2f64.powi(i as i32)
}

/// One request in progress; dropping it records the request and its latency.
pub struct InFlight {
    entry: Arc<Entry>,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.entry.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.entry
            .record(now_second(), self.started.elapsed().as_secs_f64());
    }
}

impl Entry {
    fn record(&self, second: u64, latency: f64) {
        self.last_second.store(second as i64, Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut slots[(second % SLOTS as u64) as usize];
        if s.second != second {
            *s = Slot {
                second,
                ..Slot::default()
            };
        }
        s.count += 1;
        s.buckets[bucket(latency)] += 1;
    }

    /// (requests per second, p99 seconds) over the complete seconds of the window.
    fn figures(&self, now: u64) -> (f64, f64) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        let mut buckets = [0u64; BUCKETS];
        for s in slots.iter() {
            if s.second < now && s.second + WINDOW_SECS >= now {
                count += s.count;
                for (b, n) in buckets.iter_mut().zip(s.buckets) {
                    *b += u64::from(n);
                }
            }
        }
        let rate = count as f64 / WINDOW_SECS as f64;
        let mut p99 = 0.0;
        if count > 0 {
            let want = (count as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (i, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= want {
                    p99 = bucket_upper(i);
                    break;
                }
            }
        }
        (rate, p99)
    }
}

/// One subject's entry, kept by the state that records into it on every request (a
/// Service's, an endpoint's), so a request costs neither a key allocation nor the table's lock.
/// Entries held by a handle are not forgotten while the handle lives.
#[derive(Clone)]
pub struct Handle(Arc<Entry>);

impl Handle {
    /// As [`LoadTable::start`].
    pub fn start(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            entry: self.0.clone(),
            started: Instant::now(),
        }
    }
}

impl LoadTable {
    /// The entry of `subject`, to record into without looking it up again.
    pub fn handle(&self, namespace: &str, subject: Subject) -> Handle {
        Handle(self.entry(namespace, subject))
    }

    fn entry(&self, namespace: &str, subject: Subject) -> Arc<Entry> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((namespace.to_string(), subject))
            .or_default()
            .clone()
    }

    /// Starts a request to `subject`; the figures count it when the guard is dropped.
    pub fn start(&self, namespace: &str, subject: Subject) -> InFlight {
        let entry = self.entry(namespace, subject);
        entry.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            entry,
            started: Instant::now(),
        }
    }

    /// Every subject's figures: `{"items": [{"namespace", "kind": "Pod"|"Service", "name",
    /// "requestsPerSecond", "requestsInFlight", "latencyP99Seconds", "windowSeconds",
    /// "timestamp"}]}`.
    pub fn snapshot(&self) -> Value {
        let now = now_second();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| {
            // Held by a handle (or a request in flight): still recorded into.
            Arc::strong_count(e) > 1
                || e.in_flight.load(Ordering::Relaxed) > 0
                || (e.last_second.load(Ordering::Relaxed) as u64) + FORGET_SECS > now
        });
        let mut items: Vec<Value> = map
            .iter()
            .map(|((ns, subject), e)| {
                let (rate, p99) = e.figures(now);
                let (kind, name) = match subject {
                    Subject::Pod(n) => ("Pod", n),
                    Subject::Service(n) => ("Service", n),
                };
                json!({
                    "namespace": ns, "kind": kind, "name": name,
                    "requestsPerSecond": rate,
                    "requestsInFlight": e.in_flight.load(Ordering::Relaxed),
                    "latencyP99Seconds": p99,
                    "windowSeconds": WINDOW_SECS,
                })
            })
            .collect();
        items.sort_by_key(|a| a.to_string());
        json!({"timestamp": now, "items": items})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_flight_and_p99() {
        let t = LoadTable::default();
        let e = t.entry("ns", Subject::Pod("a".into()));
        let now = 1_000_000;
        for i in 0..100 {
            // 99 fast requests and one slow one per second over 2 s.
            e.record(now - 1 - i % 2, if i == 0 { 0.5 } else { 0.001 });
        }
        let (rate, p99) = e.figures(now);
        assert!((rate - 10.0).abs() < 1e-9, "{rate}");
        assert!(p99 > 0.001 && p99 < 0.003, "{p99}");
        // Requests of the current (incomplete) second and older than the window are left out.
        e.record(now, 0.001);
        e.record(now - 20, 0.001);
        assert!((e.figures(now).0 - 10.0).abs() < 1e-9);
        let g = t.start("ns", Subject::Service("web".into()));
        let snap = t.snapshot();
        let web = snap["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "web")
            .unwrap()
            .clone();
        assert_eq!(web["requestsInFlight"], 1);
        drop(g);
        let snap = t.snapshot();
        let web = snap["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "web")
            .unwrap()
            .clone();
        assert_eq!(web["requestsInFlight"], 0);
    }
}
