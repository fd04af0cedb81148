//! Counters and histograms for per-request metrics that the data-path threads update
//! without sharing a cache line: each thread adds to its own share ([`workers::slot`]),
//! and a scrape sums the shares. They encode exactly as prometheus-client's `Counter`
//! and `Histogram` do.
//!
//! With prometheus-client's own types every request of every thread wrote the same
//! atomic (counters) or took the same mutex (histograms), so the cache line moved between
//! the cores on nearly every request; a request touches several of them. Together with
//! [`Series`], which finds a request's per-status counter without a lock or a reference
//! count, these keep the per-request metric updates on the thread's own memory.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::workers;

/// Values of one cache line, aligned to it (128 bytes: adjacent-line prefetching pairs
/// lines on x86), so that two threads' shares never share one.
#[repr(align(128))]
struct Line([AtomicU64; 16]);

impl Line {
    fn new() -> Line {
        Line(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// `width` values per thread share, each share on lines of its own.
struct Shares {
    lines: Box<[Line]>,
    /// Lines per share.
    per: usize,
}

impl Shares {
    fn new(width: usize) -> Shares {
        let per = width.div_ceil(16).max(1);
        Shares {
            lines: (0..per * workers::slot_count())
                .map(|_| Line::new())
                .collect(),
            per,
        }
    }

    /// Value `i` of the calling thread's share.
    fn mine(&self, i: usize) -> &AtomicU64 {
        let line = workers::slot() * self.per + i / 16;
        &self.lines[line].0[i % 16]
    }

    /// Value `i` summed over the shares.
    fn sum(&self, i: usize) -> u64 {
        (0..self.lines.len() / self.per)
            .map(|s| self.lines[s * self.per + i / 16].0[i % 16].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// A monotonic counter (`Counter<u64>` of prometheus-client, sharded). Clones share it.
#[derive(Clone)]
pub struct Counter(Arc<Shares>);

impl Default for Counter {
    fn default() -> Self {
        Counter(Arc::new(Shares::new(1)))
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Counter").field(&self.get()).finish()
    }
}

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, v: u64) {
        self.0.mine(0).fetch_add(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.sum(0)
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram with fixed buckets (prometheus-client's classic `Histogram`, sharded).
/// Clones share it.
#[derive(Clone)]
pub struct Histogram {
    /// Upper bounds, ascending, the last one +Inf.
    bounds: Arc<[f64]>,
    /// Per share: one count per bound, then the observation count, then the sum's bits.
    shares: Arc<Shares>,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sum, count, _) = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &count)
            .field("sum", &sum)
            .finish()
    }
}

impl Histogram {
    /// Buckets with these upper bounds (non-finite ones ignored) and +Inf.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Histogram {
        let bounds: Arc<[f64]> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let shares = Arc::new(Shares::new(bounds.len() + 2));
        Histogram { bounds, shares }
    }

    pub fn observe(&self, v: f64) {
        let n = self.bounds.len();
        // As prometheus-client: the first bucket whose bound is at least `v`; NaN in +Inf.
        let bucket = if v.is_nan() {
            n - 1
        } else {
            self.bounds.iter().position(|b| *b >= v).unwrap_or(n - 1)
        };
        self.shares.mine(bucket).fetch_add(1, Ordering::Relaxed);
        self.shares.mine(n).fetch_add(1, Ordering::Relaxed);
        // Only this thread writes its share (other threads than the data path's share
        // slot 0, hence the loop), so the exchange hardly ever repeats.
        let sum = self.shares.mine(n + 1);
        let mut cur = sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match sum.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Sum, count and the per-bucket counts (not cumulative) with their bounds.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let n = self.bounds.len();
        let shares = self.shares.lines.len() / self.shares.per;
        let sum = (0..shares)
            .map(|s| {
                let line = s * self.shares.per + (n + 1) / 16;
                f64::from_bits(self.shares.lines[line].0[(n + 1) % 16].load(Ordering::Relaxed))
            })
            .sum();
        let buckets = (0..n)
            .map(|i| (self.bounds[i], self.shares.sum(i)))
            .collect();
        (sum, self.shares.sum(n), buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// How many keys a [`Series`] holds without a lookup in the family.
const SERIES: usize = 8;

/// The counters of one subject by a small key (a status, a backend and a status), as
/// resolved from their family on first use: found again with atomic loads only, no lock
/// and no reference count. Past [`SERIES`] keys, `make` is called every time.
pub struct Series<K> {
    slots: [OnceLock<(K, Counter)>; SERIES],
}

impl<K> Default for Series<K> {
    fn default() -> Self {
        Series {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for Series<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().filter_map(|s| s.get().map(|(k, _)| k)))
            .finish()
    }
}

impl<K: PartialEq + Copy> Series<K> {
    /// Adds one to the counter of `key`, resolving it with `make` on its first use.
    pub fn inc(&self, key: K, make: impl FnOnce() -> Counter) {
        let mut make = Some(make);
        let mut made: Option<Counter> = None;
        let mut resolve = || -> Counter {
            made.get_or_insert_with(|| make.take().map(|f| f()).unwrap_or_default())
                .clone()
        };
        for slot in &self.slots {
            // A free slot is claimed; a racing thread may claim it first, for its own key.
            let (k, c) = match slot.get() {
                Some(entry) => entry,
                None => {
                    let c = resolve();
                    slot.get_or_init(|| (key, c))
                }
            };
            if *k == key {
                c.inc();
                return;
            }
        }
        resolve().inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    use super::*;

    /// What a registry holding `m` as `m` encodes.
    fn text(m: impl prometheus_client::registry::Metric) -> String {
        let mut r = Registry::default();
        r.register("m", "help", m);
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn a_counter_encodes_as_prometheus_clients() {
        let own = prometheus_client::metrics::counter::Counter::<u64>::default();
        let sharded = Counter::default();
        own.inc();
        own.inc_by(41);
        sharded.inc();
        sharded.inc_by(41);
        let (own, sharded) = (text(own), text(sharded));
        assert!(sharded.contains("m_total 42"), "{sharded}");
        assert_eq!(own, sharded);
    }

    #[test]
    fn a_histogram_encodes_as_prometheus_clients() {
        let bounds = [0.001, 0.01, 0.1, 1.0];
        let values = [0.0005, 0.001, 0.05, 0.5, 0.5, 7.0, f64::NAN];
        let own = prometheus_client::metrics::histogram::Histogram::new(bounds);
        let sharded = Histogram::new(bounds);
        for v in values {
            own.observe(v);
            sharded.observe(v);
        }
        let (own, sharded) = (text(own), text(sharded));
        assert!(sharded.contains("m_count 7"), "{sharded}");
        assert!(sharded.contains("m_bucket{le=\"0.1\"} 3"), "{sharded}");
        assert_eq!(own, sharded);
    }

    #[test]
    fn shares_of_every_thread_are_summed() {
        let c = Counter::default();
        let h = Histogram::new([1.0]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.inc();
                        h.observe(0.5);
                    }
                });
            }
        });
        // Data-path threads too: each writes its own share.
        let (tx, rx) = std::sync::mpsc::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (l, c2, h2) = (
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                c.clone(),
                h.clone(),
            );
            let addr = l.local_addr().unwrap();
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (stream, _) = l.accept().await.unwrap();
            workers::spawn_connection(stream, move |_stream| async move {
                c2.inc_by(5);
                h2.observe(2.0);
                tx.send(workers::slot()).unwrap();
            });
        });
        let slot = rx.recv().unwrap();
        assert_eq!(c.get(), 4005);
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4001);
        assert_eq!(sum, 2002.0);
        assert_eq!(buckets, vec![(1.0, 4000), (f64::INFINITY, 1)]);
        if workers::slot_count() > 1 {
            assert_ne!(slot, 0, "served on a data-path thread");
        }
    }

    #[test]
    fn series_finds_each_key_once_resolved() {
        let family = Family::<[(&'static str, u16); 1], Counter>::default();
        let series = Series::<u16>::default();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = |code: u16| {
            made.fetch_add(1, Ordering::Relaxed);
            family.get_or_create(&[("code", code)]).clone()
        };
        for code in [200u16, 200, 404, 200, 503, 404] {
            series.inc(code, || make(code));
        }
        assert_eq!(made.load(Ordering::Relaxed), 3, "each key resolved once");
        assert_eq!(family.get_or_create(&[("code", 200)]).get(), 3);
        assert_eq!(family.get_or_create(&[("code", 404)]).get(), 2);
        // Past its capacity every new key is still counted, through the family.
        for code in 0..(SERIES as u16 + 4) {
            series.inc(code, || make(code));
        }
        assert_eq!(family.get_or_create(&[("code", 11)]).get(), 1);
        assert_eq!(family.get_or_create(&[("code", 0)]).get(), 1);
    }
}
