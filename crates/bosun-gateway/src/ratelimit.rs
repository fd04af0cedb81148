//! Local (per gateway process) token-bucket rate limiting, configured per route with the
//! `bosun.dev/rate-limit` annotation.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Annotation on an Ingress or HTTPRoute: `"100/s"`, `"600/m"`, `"10/h"`, optionally with
/// a burst: `"100/s burst=200"`. The burst defaults to the rate (one unit's worth).
pub const RATE_LIMIT_ANNOTATION: &str = "bosun.dev/rate-limit";

/// A parsed rate: `rate` tokens per `per`, at most `burst` stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub rate: u64,
    pub per: Duration,
    pub burst: u64,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = |why: &str| {
            format!(
                "invalid {RATE_LIMIT_ANNOTATION} {s:?}: {why} (want e.g. \"100/s\" or \"100/s burst=200\")"
            )
        };
        let mut parts = s.split_whitespace();
        let main = parts.next().ok_or_else(|| bad("empty"))?;
        let (n, unit) = main.split_once('/').ok_or_else(|| bad("missing '/'"))?;
        let rate: u64 = n.parse().map_err(|_| bad("rate is not a whole number"))?;
        if rate == 0 {
            return Err(bad("rate must be positive"));
        }
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad("unit must be s, m or h")),
        };
        let mut burst = rate;
        for p in parts {
            let v = p
                .strip_prefix("burst=")
                .ok_or_else(|| bad("unknown option"))?;
            burst = v.parse().map_err(|_| bad("burst is not a whole number"))?;
            if burst == 0 {
                return Err(bad("burst must be positive"));
            }
        }
        Ok(Rate { rate, per, burst })
    }

    fn tokens_per_sec(&self) -> f64 {
        self.rate as f64 / self.per.as_secs_f64()
    }
}

/// A token bucket. `std::sync::Mutex` is fine here: the critical section is a few
/// arithmetic operations and never awaits.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Rate,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate) -> TokenBucket {
        TokenBucket::new_at(rate, Instant::now())
    }

    pub fn new_at(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            state: Mutex::new(BucketState {
                tokens: rate.burst as f64,
                last: now,
            }),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now())
    }

    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Duration> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let per_sec = self.rate.tokens_per_sec();
        let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
        st.tokens = (st.tokens + elapsed * per_sec).min(self.rate.burst as f64);
        st.last = now.max(st.last);
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - st.tokens) / per_sec))
        }
    }
}

/// Value of a `Retry-After` header (whole seconds, at least 1) for a wait.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        let r = Rate::parse("100/s").unwrap();
        assert_eq!((r.rate, r.per, r.burst), (100, Duration::from_secs(1), 100));
        let r = Rate::parse("600/m burst=20").unwrap();
        assert_eq!((r.rate, r.per, r.burst), (600, Duration::from_secs(60), 20));
        for bad in [
            "",
            "100",
            "0/s",
            "10/d",
            "x/s",
            "10/s burst=0",
            "10/s foo=1",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::new_at(Rate::parse("2/s burst=3").unwrap(), t0);
        for _ in 0..3 {
            assert!(b.try_acquire_at(t0).is_ok());
        }
        let wait = b.try_acquire_at(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Half a second later exactly one token has come back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.try_acquire_at(t1).is_ok());
        assert!(b.try_acquire_at(t1).is_err());
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.try_acquire_at(t2).is_ok());
        }
        assert!(b.try_acquire_at(t2).is_err());
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }
}
