//! Small helpers shared by the reconcilers: selectors, owner references, pod state, time.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

// Selector and toleration rules live with the types (the scheduler uses them too); error
// answers with the reconcile runtime.
pub use bosun_api::matching::{LabelMatcher, tolerates};
pub use bosun_watch::errors::{is_conflict, is_not_found, kube_status_code};

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Owner reference making `owner` the controller of a dependent.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub fn time(ts: jiff::Timestamp) -> Time {
    Time(ts)
}

/// Resolves an int-or-percent against `total`; percentages round up or down as asked
/// (`GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let prod = pct * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            Ok(v as i32)
        }
    }
}

pub fn pod_is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The node the pod is bound to, if any.
pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Active pods count towards a ReplicaSet: not finished and not being deleted.
pub fn pod_is_active(pod: &Pod) -> bool {
    !matches!(pod_phase(pod), "Succeeded" | "Failed") && !pod_is_terminating(pod)
}

/// The time the pod's Ready condition became True, if it is Ready.
pub fn pod_ready_since(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Available = Ready for at least `min_ready_seconds` (`IsPodAvailable`).
pub fn pod_is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => {
            since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now
        }
    }
}

/// How long until a ready pod becomes available, when it is ready but not yet available.
pub fn pod_available_in(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Option<std::time::Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    let since = pod_ready_since(pod)??;
    let at = since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds));
    (at > now).then(|| at.duration_since(now).unsigned_abs())
}

/// FNV-1a, 32 bit: the hash upstream uses for pod-template-hash.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `rand.SafeEncodeString`: maps each byte onto an alphabet without vowels or confusable
/// characters, so generated names never spell words.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounding_matches_upstream() {
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled_value(&p, 10, true).unwrap(), 3);
        assert_eq!(scaled_value(&p, 10, false).unwrap(), 2);
        assert_eq!(scaled_value(&p, 4, true).unwrap(), 1);
        assert_eq!(scaled_value(&p, 0, true).unwrap(), 0);
        assert_eq!(scaled_value(&IntOrString::Int(7), 10, true).unwrap(), 7);
        assert!(scaled_value(&IntOrString::String("25".into()), 10, true).is_err());
        assert!(scaled_value(&IntOrString::String("x%".into()), 10, true).is_err());
    }

    #[test]
    fn fnv_and_encoding() {
        // Reference values of FNV-1a 32.
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
        let e = safe_encode("1234567890");
        assert_eq!(e.len(), 10);
        assert!(e.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
