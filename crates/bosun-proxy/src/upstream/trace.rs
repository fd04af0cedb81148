//! W3C Trace Context (`traceparent`): keep the trace, start a new span per hop.

use rand::Rng;

pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` value to send upstream, given the one received (if any).
/// A valid incoming header keeps its trace id and flags and gets a new parent (span) id;
/// a missing or malformed one starts a new sampled trace.
pub fn next_traceparent(incoming: Option<&str>) -> String {
    let mut rng = rand::rng();
    let span: u64 = loop {
        let s = rng.random();
        if s != 0 {
            break s;
        }
    };
    if let Some((trace, flags)) = incoming.and_then(parse) {
        return format!("00-{trace}-{span:016x}-{flags}");
    }
    let trace: u128 = loop {
        let t = rng.random();
        if t != 0 {
            break t;
        }
    };
    format!("00-{trace:032x}-{span:016x}-01")
}

/// (trace-id, flags) of a valid version-00 header (future versions: the first four fields).
fn parse(v: &str) -> Option<(&str, &str)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let extra = parts.next();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || (version == "00" && extra.is_some()) {
        return None;
    }
    if !hex(trace, 32) || trace.bytes().all(|b| b == b'0') {
        return None;
    }
    if !hex(parent, 16) || parent.bytes().all(|b| b == b'0') || !hex(flags, 2) {
        return None;
    }
    Some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagates_trace_with_new_span() {
        let inc = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = next_traceparent(Some(inc));
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert!(parse(&out).is_some());
    }

    #[test]
    fn generates_when_absent_or_invalid() {
        for inc in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ] {
            let out = next_traceparent(inc);
            assert_eq!(out.len(), 55, "{out}");
            assert!(parse(&out).is_some(), "{out}");
            if let Some(i) = inc {
                assert_ne!(
                    &out[3..35],
                    &i.get(3..35).unwrap_or("").to_ascii_lowercase()
                );
            }
        }
        assert_ne!(next_traceparent(None)[3..35], next_traceparent(None)[3..35]);
    }
}
