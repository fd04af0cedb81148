//! Per-Service traffic policy, read from `bosun.dev/*` annotations.

use std::collections::BTreeMap;
use std::time::Duration;

/// Annotation keys understood on a Service.
pub mod annotations {
    pub const LOAD_BALANCER: &str = "bosun.dev/load-balancer";
    pub const HASH_KEY: &str = "bosun.dev/hash-key";
    pub const RETRIES: &str = "bosun.dev/retries";
    pub const TIMEOUT: &str = "bosun.dev/timeout";
    pub const PER_TRY_TIMEOUT: &str = "bosun.dev/per-try-timeout";
    pub const OUTLIER_CONSECUTIVE_ERRORS: &str = "bosun.dev/outlier-consecutive-errors";
    pub const OUTLIER_BASE_EJECTION: &str = "bosun.dev/outlier-base-ejection";
    pub const OUTLIER_MAX_EJECTION_PERCENT: &str = "bosun.dev/outlier-max-ejection-percent";
    pub const RETRY_NON_IDEMPOTENT: &str = "bosun.dev/retry-non-idempotent";
}

/// How an endpoint is chosen for a request or connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LbAlgorithm {
    /// Power of two random choices over peak-EWMA latency x in-flight requests.
    #[default]
    P2cEwma,
    RoundRobin,
    /// Ring hash on [`HashKey`]; requests with the same key reach the same endpoint
    /// while the endpoint set is unchanged, and only ~1/n of keys move when it changes.
    ConsistentHash,
}

/// What a consistent-hash balancer hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// Value of this request header (lower-case name); falls back to the source IP when absent.
    Header(http::HeaderName),
    /// The client's IP address (from [`super::ClientAddr`] or the L4 peer).
    SourceIp,
}

/// Outlier ejection settings (modelled on Envoy's outlier detection).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// Consecutive 5xx responses or connect failures that eject an endpoint; 0 disables.
    pub consecutive_errors: u32,
    /// First ejection lasts this long; the k-th consecutive ejection lasts base * 2^k.
    pub base_ejection: Duration,
    /// Upper bound on one ejection.
    pub max_ejection: Duration,
    /// At most this share of a Service port's endpoints is ejected at once (at least one may
    /// be, and never the last endpoint).
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_errors: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Which HTTP version is spoken to the endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// The downstream request's version (HTTP/2 stays HTTP/2, e.g. gRPC).
    #[default]
    SameAsDownstream,
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// Traffic policy for one Service (or gateway route).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub balancer: LbAlgorithm,
    pub hash_key: HashKey,
    /// Extra attempts after the first; each one also needs the retry budget.
    pub retries: u32,
    /// Deadline for the response headers, all attempts included.
    pub timeout: Option<Duration>,
    /// Deadline for one attempt.
    pub per_try_timeout: Option<Duration>,
    pub outlier: OutlierConfig,
    /// Retry 502/503/504 and reset connections also for methods other than GET/HEAD/OPTIONS.
    pub retry_non_idempotent: bool,
    pub protocol: UpstreamProtocol,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            balancer: LbAlgorithm::P2cEwma,
            hash_key: HashKey::SourceIp,
            retries: 2,
            timeout: Some(Duration::from_secs(15)),
            per_try_timeout: None,
            outlier: OutlierConfig::default(),
            retry_non_idempotent: false,
            protocol: UpstreamProtocol::SameAsDownstream,
        }
    }
}

impl Policy {
    /// Reads a policy from Service annotations. Unknown `bosun.dev/` keys are ignored; a
    /// known key with a bad value is an error naming the annotation.
    pub fn from_annotations(ann: &BTreeMap<String, String>) -> Result<Policy, String> {
        use annotations::*;
        let mut p = Policy::default();
        let get = |k: &str| ann.get(k).map(|v| v.trim());
        if let Some(v) = get(LOAD_BALANCER) {
            p.balancer = match v {
                "p2c-ewma" | "p2c" | "ewma" => LbAlgorithm::P2cEwma,
                "round-robin" | "rr" => LbAlgorithm::RoundRobin,
                "consistent-hash" | "ring-hash" => LbAlgorithm::ConsistentHash,
                other => {
                    return Err(format!(
                        "annotation {LOAD_BALANCER}: {other:?} is not one of p2c-ewma, round-robin, consistent-hash"
                    ));
                }
            };
        }
        if let Some(v) = get(HASH_KEY) {
            p.hash_key = parse_hash_key(v).map_err(|e| format!("annotation {HASH_KEY}: {e}"))?;
        }
        if let Some(v) = get(RETRIES) {
            p.retries =
                v.parse::<u32>().ok().filter(|n| *n <= 10).ok_or_else(|| {
                    format!("annotation {RETRIES}: {v:?} is not an integer 0..=10")
                })?;
        }
        if let Some(v) = get(TIMEOUT) {
            p.timeout =
                parse_optional_duration(v).map_err(|e| format!("annotation {TIMEOUT}: {e}"))?;
        }
        if let Some(v) = get(PER_TRY_TIMEOUT) {
            p.per_try_timeout = parse_optional_duration(v)
                .map_err(|e| format!("annotation {PER_TRY_TIMEOUT}: {e}"))?;
        }
        if let Some(v) = get(OUTLIER_CONSECUTIVE_ERRORS) {
            p.outlier.consecutive_errors = v.parse::<u32>().map_err(|_| {
                format!(
                    "annotation {OUTLIER_CONSECUTIVE_ERRORS}: {v:?} is not a non-negative integer"
                )
            })?;
        }
        if let Some(v) = get(OUTLIER_BASE_EJECTION) {
            p.outlier.base_ejection = parse_duration(v)
                .map_err(|e| format!("annotation {OUTLIER_BASE_EJECTION}: {e}"))?;
            p.outlier.max_ejection = p.outlier.max_ejection.max(p.outlier.base_ejection);
        }
        if let Some(v) = get(OUTLIER_MAX_EJECTION_PERCENT) {
            p.outlier.max_ejection_percent =
                v.parse::<u8>().ok().filter(|n| *n <= 100).ok_or_else(|| {
                    format!(
                        "annotation {OUTLIER_MAX_EJECTION_PERCENT}: {v:?} is not an integer 0..=100"
                    )
                })?;
        }
        if let Some(v) = get(RETRY_NON_IDEMPOTENT) {
            p.retry_non_idempotent = match v {
                "true" => true,
                "false" => false,
                other => {
                    return Err(format!(
                        "annotation {RETRY_NON_IDEMPOTENT}: {other:?} is not true or false"
                    ));
                }
            };
        }
        Ok(p)
    }
}

fn parse_hash_key(v: &str) -> Result<HashKey, String> {
    if v == "source-ip" {
        return Ok(HashKey::SourceIp);
    }
    if let Some(h) = v.strip_prefix("header:") {
        return http::HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("{h:?} is not a valid header name"));
    }
    Err(format!("{v:?} is not header:NAME or source-ip"))
}

fn parse_optional_duration(v: &str) -> Result<Option<Duration>, String> {
    let d = parse_duration(v)?;
    Ok(if d.is_zero() { None } else { Some(d) })
}

/// Parses Go-style durations such as `5s`, `250ms`, `1m30s`, `1.5s`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let err = || format!("{v:?} is not a duration like 5s, 250ms or 1m30s");
    if v.is_empty() {
        return Err(err());
    }
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    if !total.is_finite() || total > 86_400.0 * 365.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn annotations_parse_and_reject() {
        let mut a = BTreeMap::new();
        a.insert(annotations::LOAD_BALANCER.into(), "consistent-hash".into());
        a.insert(annotations::HASH_KEY.into(), "header:X-User".into());
        a.insert(annotations::RETRIES.into(), "3".into());
        a.insert(annotations::TIMEOUT.into(), "2s".into());
        a.insert(annotations::OUTLIER_CONSECUTIVE_ERRORS.into(), "7".into());
        let p = Policy::from_annotations(&a).unwrap();
        assert_eq!(p.balancer, LbAlgorithm::ConsistentHash);
        assert_eq!(
            p.hash_key,
            HashKey::Header(http::HeaderName::from_static("x-user"))
        );
        assert_eq!(p.retries, 3);
        assert_eq!(p.timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.outlier.consecutive_errors, 7);

        a.insert(annotations::LOAD_BALANCER.into(), "random".into());
        let e = Policy::from_annotations(&a).unwrap_err();
        assert!(e.contains("bosun.dev/load-balancer"), "{e}");
        a.remove(annotations::LOAD_BALANCER);
        a.insert(annotations::RETRIES.into(), "-1".into());
        assert!(
            Policy::from_annotations(&a)
                .unwrap_err()
                .contains("retries")
        );
    }
}
