//! Endpoint selection: P2C over peak-EWMA (tower's `PeakEwma`), round robin, ring hash;
//! and outlier ejection state per endpoint.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tower::Service;
use tower::load::completion::TrackCompletion;
use tower::load::peak_ewma::{Cost, Handle};
use tower::load::{Load, PeakEwma};

use super::policy::{LbAlgorithm, OutlierConfig};

/// RTT assumed for an endpoint that has not answered yet. Optimistic (linkerd uses 30 ms)
/// so that new endpoints, e.g. pods of a rollout, are probed at once; their first answer
/// replaces the guess.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How fast old latency observations fade. Shorter than linkerd's 10 s: with light,
/// sequential traffic an endpoint that had one slow answer (a GC pause, a new
/// connection) would otherwise be shunned for many seconds.
const DECAY: Duration = Duration::from_secs(1);
/// Points per endpoint on the hash ring; more points, smoother spread.
const RING_POINTS: usize = 160;

/// A no-op service whose only job is to let tower's `PeakEwma` hand out its RTT
/// `Handle`; the caller holds the handle while a request is in flight and drops it when the
/// response arrives, which records the latency and counts the request as pending meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Unit;

impl Service<()> for Unit {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        ready(Ok(()))
    }
}

/// Completion policy that returns the handle to the caller instead of dropping it.
#[derive(Clone, Copy, Debug)]
pub struct HandOut;

impl TrackCompletion<Handle, ()> for HandOut {
    type Output = Handle;
    fn track_completion(&self, handle: Handle, _: ()) -> Handle {
        handle
    }
}

/// Latency/in-flight tracker of one endpoint.
#[derive(Debug)]
pub struct LoadTracker(Mutex<PeakEwma<Unit, HandOut>>);

impl Default for LoadTracker {
    fn default() -> Self {
        Self::new(DEFAULT_RTT, DECAY)
    }
}

impl LoadTracker {
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        LoadTracker(Mutex::new(PeakEwma::new(
            Unit,
            default_rtt,
            decay.as_nanos() as f64,
            HandOut,
        )))
    }

    /// Starts a request: the returned handle counts as pending until dropped, and its
    /// lifetime is recorded as one RTT sample.
    pub fn start(&self) -> Handle {
        let fut = {
            let mut ewma = self.0.lock().unwrap_or_else(|e| e.into_inner());
            ewma.call(())
        };
        // `Unit` answers at once, so this never waits.
        match futures::executor::block_on(fut) {
            Ok(h) => h,
            Err(never) => match never {},
        }
    }

    pub fn cost(&self) -> Cost {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).load()
    }
}

/// Outlier-detection state of one endpoint.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_errors: u32,
    ejected_until: Option<Instant>,
    /// Number of ejections in a row; ejection time doubles with each.
    times_ejected: u32,
}

impl OutlierState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Records a success; after a quiet period the ejection multiplier resets.
    pub fn success(&mut self, now: Instant, cfg: &OutlierConfig) {
        self.consecutive_errors = 0;
        if let Some(until) = self.ejected_until
            && now >= until + cfg.max_ejection
        {
            self.times_ejected = 0;
            self.ejected_until = None;
        }
    }

    /// Records a failure; returns the ejection duration when this failure ejects the
    /// endpoint. `may_eject` says whether the max-ejection-percent budget allows it.
    pub fn failure(
        &mut self,
        now: Instant,
        cfg: &OutlierConfig,
        may_eject: bool,
    ) -> Option<Duration> {
        if cfg.consecutive_errors == 0 || self.is_ejected(now) {
            return None;
        }
        self.consecutive_errors += 1;
        if self.consecutive_errors < cfg.consecutive_errors || !may_eject {
            return None;
        }
        let factor = 1u32 << self.times_ejected.min(16);
        let d = cfg
            .base_ejection
            .checked_mul(factor)
            .unwrap_or(cfg.max_ejection)
            .min(cfg.max_ejection);
        self.ejected_until = Some(now + d);
        self.times_ejected += 1;
        self.consecutive_errors = 0;
        Some(d)
    }
}

/// How many of `total` endpoints may be ejected at once: `percent` of them, at least one,
/// never all.
pub fn max_ejected(total: usize, percent: u8) -> usize {
    if total <= 1 {
        return 0;
    }
    let by_percent = total * usize::from(percent) / 100;
    by_percent.max(1).min(total - 1)
}

/// A balancer's view of one endpoint.
pub trait Candidate {
    fn addr(&self) -> SocketAddr;
    fn load(&self) -> Cost;
}

/// Stable 64-bit FNV-1a: ring positions must not depend on a per-process random seed.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so that nearby inputs spread over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Hash ring over endpoint addresses (ketama-style virtual nodes).
#[derive(Debug, Default, Clone)]
pub struct Ring {
    points: Vec<(u64, SocketAddr)>,
}

impl Ring {
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Ring {
        let mut points = Vec::new();
        for a in addrs {
            let base = a.to_string();
            for i in 0..RING_POINTS {
                points.push((fnv1a(format!("{base}#{i}").as_bytes()), a));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Endpoints in ring order starting at the key's position (first = owner), each once.
    pub fn walk(&self, key: &[u8]) -> impl Iterator<Item = SocketAddr> + '_ {
        let h = fnv1a(key);
        let start = self.points.partition_point(|(p, _)| *p < h);
        let n = self.points.len();
        let mut seen = Vec::new();
        (0..n).filter_map(move |i| {
            let a = self.points[(start + i) % n].1;
            if seen.contains(&a) {
                None
            } else {
                seen.push(a);
                Some(a)
            }
        })
    }
}

/// Picks endpoints for one Service port. Cheap to share; holds only the round-robin cursor
/// and the hash ring (rebuilt when the endpoint set changes).
#[derive(Debug, Default)]
pub struct Balancer {
    rr: AtomicUsize,
    ring: Ring,
}

impl Balancer {
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Balancer {
        Balancer {
            rr: AtomicUsize::new(0),
            ring: Ring::new(addrs),
        }
    }

    /// Index into `candidates` of the chosen endpoint, or None when empty. `hash_key` is
    /// used by [`LbAlgorithm::ConsistentHash`] (a missing key falls back to P2C).
    pub fn pick<C: Candidate>(
        &self,
        algo: LbAlgorithm,
        candidates: &[C],
        hash_key: Option<&[u8]>,
    ) -> Option<usize> {
        match candidates.len() {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        match (algo, hash_key) {
            (LbAlgorithm::RoundRobin, _) => {
                Some(self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len())
            }
            (LbAlgorithm::ConsistentHash, Some(key)) => {
                // The owner of the key on the full ring, or the next one among candidates
                // (an ejected or already-tried owner only moves its own keys).
                for a in self.ring.walk(key) {
                    if let Some(i) = candidates.iter().position(|c| c.addr() == a) {
                        return Some(i);
                    }
                }
                // Candidates not on the ring (should not happen): first one, stable.
                Some(0)
            }
            _ => Some(p2c(candidates)),
        }
    }
}

fn p2c<C: Candidate>(candidates: &[C]) -> usize {
    let n = candidates.len();
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let (la, lb) = (candidates[a].load(), candidates[b].load());
    if lb < la { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    struct Ep {
        addr: SocketAddr,
        load: Arc<LoadTracker>,
    }
    impl Candidate for Ep {
        fn addr(&self) -> SocketAddr {
            self.addr
        }
        fn load(&self) -> Cost {
            self.load.cost()
        }
    }

    fn eps(n: u16) -> Vec<Ep> {
        (0..n)
            .map(|i| Ep {
                addr: SocketAddr::from(([10, 0, 0, 1 + i as u8], 8080)),
                load: Arc::new(LoadTracker::default()),
            })
            .collect()
    }

    #[test]
    fn round_robin_is_even() {
        let e = eps(3);
        let b = Balancer::new(e.iter().map(|e| e.addr));
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b.pick(LbAlgorithm::RoundRobin, &e, None).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_spreads_over_equal_endpoints() {
        let e = eps(4);
        let b = Balancer::new(e.iter().map(|e| e.addr));
        let mut counts = [0; 4];
        for _ in 0..4000 {
            let i = b.pick(LbAlgorithm::P2cEwma, &e, None).unwrap();
            counts[i] += 1;
            // Each request takes 1ms on every endpoint.
            let h = e[i].load.start();
            tokio::time::advance(Duration::from_millis(1)).await;
            drop(h);
        }
        for c in counts {
            assert!((600..=1400).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_ewma_prefers_fast_endpoint() {
        let e = eps(2);
        let b = Balancer::new(e.iter().map(|e| e.addr));
        let mut counts = [0; 2];
        for _ in 0..2000 {
            let i = b.pick(LbAlgorithm::P2cEwma, &e, None).unwrap();
            counts[i] += 1;
            let h = e[i].load.start();
            // Endpoint 1 is 20x slower.
            let ms = if i == 0 { 1 } else { 20 };
            tokio::time::advance(Duration::from_millis(ms)).await;
            drop(h);
        }
        assert!(
            counts[0] > counts[1] * 5,
            "fast endpoint should dominate: {counts:?}"
        );
        assert!(counts[1] > 0, "slow endpoint still probed: {counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_counts_in_flight_requests() {
        let e = eps(2);
        let b = Balancer::new(e.iter().map(|e| e.addr));
        // 5 requests hang on endpoint 0: new requests must go to endpoint 1.
        let _held: Vec<_> = (0..5).map(|_| e[0].load.start()).collect();
        for _ in 0..50 {
            assert_eq!(b.pick(LbAlgorithm::P2cEwma, &e, None), Some(1));
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_few_keys() {
        let e = eps(5);
        let b = Balancer::new(e.iter().map(|e| e.addr));
        let mut owner = HashMap::new();
        let mut counts = [0; 5];
        for k in 0..5000 {
            let key = format!("user-{k}");
            let i = b
                .pick(LbAlgorithm::ConsistentHash, &e, Some(key.as_bytes()))
                .unwrap();
            // Same key, same endpoint.
            assert_eq!(
                b.pick(LbAlgorithm::ConsistentHash, &e, Some(key.as_bytes())),
                Some(i)
            );
            counts[i] += 1;
            owner.insert(key, e[i].addr);
        }
        for c in counts {
            assert!((500..=1600).contains(&c), "uneven ring {counts:?}");
        }
        // Remove endpoint 2: only its keys move.
        let removed = e[2].addr;
        let rest: Vec<Ep> = e.into_iter().filter(|x| x.addr != removed).collect();
        let b2 = Balancer::new(rest.iter().map(|e| e.addr));
        for (key, old) in &owner {
            let i = b2
                .pick(LbAlgorithm::ConsistentHash, &rest, Some(key.as_bytes()))
                .unwrap();
            if *old != removed {
                assert_eq!(rest[i].addr, *old, "key {key} moved needlessly");
            }
        }
    }

    #[test]
    fn ejection_budget() {
        assert_eq!(max_ejected(1, 100), 0);
        assert_eq!(max_ejected(2, 10), 1);
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(3, 100), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn outlier_ejects_after_consecutive_errors_with_backoff() {
        let cfg = OutlierConfig {
            consecutive_errors: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: 50,
        };
        let mut s = OutlierState::default();
        let now = Instant::now();
        assert_eq!(s.failure(now, &cfg, true), None);
        assert_eq!(s.failure(now, &cfg, true), None);
        // A success resets the count.
        s.success(now, &cfg);
        assert_eq!(s.failure(now, &cfg, true), None);
        assert_eq!(s.failure(now, &cfg, true), None);
        assert_eq!(s.failure(now, &cfg, true), Some(Duration::from_secs(10)));
        assert!(s.is_ejected(now + Duration::from_secs(9)));
        assert!(!s.is_ejected(now + Duration::from_secs(10)));
        // Second ejection doubles, third is capped.
        let t = now + Duration::from_secs(11);
        for _ in 0..2 {
            assert_eq!(s.failure(t, &cfg, true), None);
        }
        assert_eq!(s.failure(t, &cfg, true), Some(Duration::from_secs(20)));
        let t = t + Duration::from_secs(21);
        for _ in 0..2 {
            s.failure(t, &cfg, true);
        }
        assert_eq!(s.failure(t, &cfg, true), Some(Duration::from_secs(25)));
        // Denied by the ejection budget: stays in.
        let t = t + Duration::from_secs(26);
        let mut s2 = OutlierState::default();
        for _ in 0..5 {
            assert_eq!(s2.failure(t, &cfg, false), None);
        }
        assert!(!s2.is_ejected(t));
    }
}
