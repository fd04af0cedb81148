//! The scheduling queue: pending pods by priority (then first come, first served), and
//! unschedulable pods parked until the cluster changes, with per-pod exponential back-off
//! (1 s doubling to 10 s, kube-scheduler's defaults).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An unschedulable pod is retried after this long even when nothing seems to change.
pub const MAX_PARKED: Duration = Duration::from_secs(60);

#[derive(PartialEq, Eq)]
struct Item {
    priority: i32,
    seq: u64,
    key: String,
}

impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

struct Parked {
    priority: i32,
    failed_at: Instant,
    /// Set when a cluster change may have made room: retried from then on.
    ready_at: Option<Instant>,
}

#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Item>,
    /// Keys in the heap, with the sequence of their live entry (older entries are stale).
    active: HashMap<String, u64>,
    parked: HashMap<String, Parked>,
    attempts: HashMap<String, u32>,
    seq: u64,
}

fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(8);
    (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

impl Queue {
    /// A pod that wants scheduling. Parked pods stay parked: they wait for a cluster change.
    pub fn add(&mut self, key: &str, priority: i32) {
        if self.parked.contains_key(key) || self.active.contains_key(key) {
            return;
        }
        self.push(key, priority);
    }

    fn push(&mut self, key: &str, priority: i32) {
        self.seq += 1;
        self.active.insert(key.to_string(), self.seq);
        self.heap.push(Item {
            priority,
            seq: self.seq,
            key: key.to_string(),
        });
    }

    /// The most important pending pod.
    pub fn pop(&mut self) -> Option<String> {
        while let Some(it) = self.heap.pop() {
            if self.active.get(&it.key) == Some(&it.seq) {
                self.active.remove(&it.key);
                return Some(it.key);
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// The pod fits nowhere now: park it until the cluster changes.
    pub fn unschedulable(&mut self, key: &str, priority: i32) {
        *self.attempts.entry(key.to_string()).or_default() += 1;
        self.active.remove(key);
        self.parked.insert(
            key.to_string(),
            Parked {
                priority,
                failed_at: Instant::now(),
                ready_at: None,
            },
        );
    }

    /// A binding failed: retry after the back-off.
    pub fn retry(&mut self, key: &str, priority: i32) {
        self.unschedulable(key, priority);
        self.cluster_changed();
    }

    /// The pod is bound, gone or no longer ours.
    pub fn done(&mut self, key: &str) {
        self.active.remove(key);
        self.parked.remove(key);
        self.attempts.remove(key);
    }

    /// A node or a pod changed: every parked pod may fit now, once its back-off is over.
    pub fn cluster_changed(&mut self) {
        for (key, p) in self.parked.iter_mut() {
            if p.ready_at.is_none() {
                let n = self.attempts.get(key).copied().unwrap_or(1);
                p.ready_at = Some(p.failed_at + backoff(n));
            }
        }
        self.flush();
    }

    /// Moves parked pods whose time has come to the active queue.
    pub fn flush(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, i32)> = self
            .parked
            .iter()
            .filter(|(_, p)| {
                p.ready_at.is_some_and(|r| r <= now) || now - p.failed_at >= MAX_PARKED
            })
            .map(|(k, p)| (k.clone(), p.priority))
            .collect();
        for (k, prio) in due {
            self.parked.remove(&k);
            self.push(&k, prio);
        }
    }

    /// When the next parked pod becomes due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.parked
            .values()
            .map(|p| p.ready_at.unwrap_or(p.failed_at + MAX_PARKED))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut q = Queue::default();
        q.add("a", 0);
        q.add("b", 100);
        q.add("c", 0);
        q.add("b", 100);
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.pop().as_deref(), Some("c"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn parked_until_cluster_change_and_backoff() {
        let mut q = Queue::default();
        q.add("a", 0);
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.unschedulable("a", 0);
        // Re-adding a parked pod (its own status update) does not retry it.
        q.add("a", 0);
        assert_eq!(q.pop(), None);
        q.cluster_changed();
        // Back-off of the first attempt is 1 s.
        assert_eq!(q.pop(), None);
        assert!(q.next_due().is_some());
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(9), MAX_BACKOFF);
        q.done("a");
        assert!(q.next_due().is_none());
    }
}
