use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::logic::*;

const NOW: i64 = 1_000_000;

/// A running pod, Ready for a long time, requesting `req` milli-CPU.
fn pod(name: &str, req: i64) -> PodInfo {
    PodInfo {
        name: name.into(),
        phase: "Running".into(),
        deleting: false,
        ready: Some(ReadyCondition {
            is_true: true,
            is_false: false,
            last_transition: NOW - 3600,
        }),
        start_time: Some(NOW - 3600),
        request_milli: Some(req),
    }
}

fn samples(v: &[(&str, i64)]) -> BTreeMap<String, Sample> {
    v.iter()
        .map(|(n, m)| {
            (
                n.to_string(),
                Sample {
                    milli: *m,
                    timestamp: NOW,
                    window_secs: 10,
                },
            )
        })
        .collect()
}

#[test]
fn proportional_scale_up_and_down() {
    let pods = vec![pod("a", 1000), pod("b", 1000)];
    // 90% against 50%: ceil(2 * 1.8) = 4.
    let p = resource_utilization(
        2,
        &pods,
        &samples(&[("a", 900), ("b", 900)]),
        "cpu",
        50,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 4);
    assert_eq!(p.utilization, Some(90));
    assert_eq!(p.milli, 900);
    // 10% against 50%: ceil(2 * 0.2) = 1.
    let p = resource_utilization(
        2,
        &pods,
        &samples(&[("a", 100), ("b", 100)]),
        "cpu",
        50,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 1);
}

#[test]
fn within_tolerance_keeps_current() {
    let pods = vec![pod("a", 1000), pod("b", 1000)];
    // 54% / 50% = 1.08: inside the 0.1 tolerance.
    let p = resource_utilization(
        2,
        &pods,
        &samples(&[("a", 540), ("b", 540)]),
        "cpu",
        50,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 2);
    // 56% / 50% = 1.12: outside.
    let p = resource_utilization(
        2,
        &pods,
        &samples(&[("a", 560), ("b", 560)]),
        "cpu",
        50,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 3);
}

#[test]
fn missing_pods_dampen_scale_down_and_up() {
    let pods = vec![pod("a", 1000), pod("b", 1000), pod("c", 1000)];
    // Scale down: the missing pod is assumed at 100% of its request; with a, b at 10% the
    // ratio is (100+100+1000)/3000*100 = 40% / 50% = 0.8 -> ceil(3 * 0.8) = 3: no change
    // below current, kept.
    let p = resource_utilization(
        3,
        &pods,
        &samples(&[("a", 100), ("b", 100)]),
        "cpu",
        50,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 3);
    // Scale up: the missing pod counts as 0: (900+900+0)/3000 = 60% -> ceil(3 * 1.2) = 4.
    let p = resource_utilization(
        3,
        &pods,
        &samples(&[("a", 900), ("b", 900)]),
        "cpu",
        50,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 4);
}

#[test]
fn unready_pods_count_as_zero_when_scaling_up() {
    let mut young = pod("c", 1000);
    young.start_time = Some(NOW - 20);
    young.ready = Some(ReadyCondition {
        is_true: false,
        is_false: true,
        last_transition: NOW - 20,
    });
    let pods = vec![pod("a", 1000), pod("b", 1000), young];
    // a, b at 90%, c unready (its 100% sample is dropped): (900+900+0)/3000 = 60% -> 4.
    let s = samples(&[("a", 900), ("b", 900), ("c", 1000)]);
    let p = resource_utilization(3, &pods, &s, "cpu", 50, NOW).unwrap();
    assert_eq!(p.replicas, 4);
    assert_eq!(p.utilization, Some(90));
    // For memory the readiness rule does not apply: all three count.
    let p = resource_utilization(3, &pods, &s, "memory", 50, NOW).unwrap();
    assert_eq!(p.replicas, 6);
}

#[test]
fn pending_deleted_and_failed_pods() {
    let mut pending = pod("p", 1000);
    pending.phase = "Pending".into();
    let mut gone = pod("d", 1000);
    gone.deleting = true;
    let mut failed = pod("f", 1000);
    failed.phase = "Failed".into();
    let pods = vec![pod("a", 1000), pending, gone, failed];
    let s = samples(&[("a", 1000), ("d", 1000), ("f", 1000)]);
    let g = group_pods(&pods, &s, true, NOW);
    assert_eq!(g.ready, 1);
    assert!(g.unready.contains("p"));
    assert!(g.ignored.contains("d") && g.ignored.contains("f"));
    // 100% / 50%, with the pending pod as 0: (1000 + 0) / 2000 = 50% -> ratio 1: keep.
    let p = resource_utilization(2, &pods, &s, "cpu", 50, NOW).unwrap();
    assert_eq!(p.replicas, 2);
}

#[test]
fn errors_without_pods_metrics_or_requests() {
    assert!(resource_utilization(1, &[], &samples(&[]), "cpu", 50, NOW).is_err());
    let pods = vec![pod("a", 1000)];
    let e = resource_utilization(1, &pods, &samples(&[]), "cpu", 50, NOW).unwrap_err();
    assert!(e.contains("did not receive metrics"), "{e}");
    let mut no_req = pod("a", 0);
    no_req.request_milli = None;
    let e = resource_utilization(1, &[no_req], &samples(&[("a", 5)]), "cpu", 50, NOW).unwrap_err();
    assert!(e.contains("missing request for cpu"), "{e}");
}

#[test]
fn pods_metric_average_value() {
    let pods = vec![pod("a", 0), pod("b", 0)];
    // 30 rps each against 10 per pod: ceil(2 * 3) = 6.
    let p = plain_average(
        2,
        &pods,
        &samples(&[("a", 30_000), ("b", 30_000)]),
        10_000,
        false,
        NOW,
    )
    .unwrap();
    assert_eq!((p.replicas, p.milli), (6, 30_000));
    // 10.5 against 10: tolerance.
    let p = plain_average(
        2,
        &pods,
        &samples(&[("a", 10_500), ("b", 10_500)]),
        10_000,
        false,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 2);
    // Zero load -> zero replicas (HPAScaleToZero then lets minReplicas 0 through).
    let p = plain_average(
        2,
        &pods,
        &samples(&[("a", 0), ("b", 0)]),
        10_000,
        false,
        NOW,
    )
    .unwrap();
    assert_eq!(p.replicas, 0);
}

#[test]
fn object_metrics() {
    // 50 rps on a Service against a value of 10, 2 ready pods: ceil(5 * 2) = 10.
    assert_eq!(object_value(2, 50_000, 10_000, 2).replicas, 10);
    // From zero replicas: ceil(ratio).
    assert_eq!(object_value(0, 25_000, 10_000, 0).replicas, 3);
    assert_eq!(object_value(3, 0, 10_000, 3).replicas, 0);
    // AverageValue: ceil(usage / target).
    let p = object_average(2, 50_000, 10_000);
    assert_eq!((p.replicas, p.milli), (5, 25_000));
    assert_eq!(object_average(5, 51_000, 10_000).replicas, 5);
}

#[test]
fn legacy_downscale_stabilization() {
    let mut h = History::default();
    let t0 = Instant::now();
    let w = Duration::from_secs(300);
    let n = h.normalize(1, 4, 1, 10, w, t0);
    assert_eq!(n.replicas, 4);
    assert_eq!(n.able_to_scale.reason, "ReadyForNewScale");
    // A lower recommendation within the window keeps the highest one.
    let n = h.normalize(4, 1, 1, 10, w, t0 + Duration::from_secs(60));
    assert_eq!(n.replicas, 4);
    assert_eq!(n.able_to_scale.reason, "ScaleDownStabilized");
    // After the window the low recommendation wins.
    let n = h.normalize(4, 1, 1, 10, w, t0 + Duration::from_secs(400));
    assert_eq!(n.replicas, 1);
}

#[test]
fn legacy_bounds_and_scale_up_limit() {
    let t = Instant::now();
    let w = Duration::ZERO;
    let n = History::default().normalize(1, 20, 1, 50, w, t);
    assert_eq!(n.replicas, 4);
    assert_eq!(n.scaling_limited.reason, "ScaleUpLimit");
    assert!(n.scaling_limited.status);
    let n = History::default().normalize(4, 20, 1, 5, w, t);
    assert_eq!(n.replicas, 5);
    assert_eq!(n.scaling_limited.reason, "TooManyReplicas");
    let n = History::default().normalize(4, 0, 2, 5, w, t);
    assert_eq!(n.replicas, 2);
    assert_eq!(n.scaling_limited.reason, "TooFewReplicas");
    let n = History::default().normalize(4, 3, 2, 5, w, t);
    assert_eq!(n.replicas, 3);
    assert_eq!(n.scaling_limited.reason, "DesiredWithinRange");
    assert!(!n.scaling_limited.status);
}

fn behavior() -> Behavior {
    Behavior {
        up: Rules::default_up(),
        down: Rules::default_down(),
    }
}

#[test]
fn behavior_default_policies() {
    let t = Instant::now();
    let b = behavior();
    // Up: max(current + 4, current * 2) per 15 s.
    let n = History::default().normalize_with(&b, 2, 20, 1, 100, t);
    assert_eq!(n.replicas, 6);
    assert_eq!(n.scaling_limited.reason, "ScaleUpLimit");
    let n = History::default().normalize_with(&b, 10, 50, 1, 100, t);
    assert_eq!(n.replicas, 20);
    let n = History::default().normalize_with(&b, 10, 50, 1, 15, t);
    assert_eq!(n.replicas, 15);
    assert_eq!(n.scaling_limited.reason, "TooManyReplicas");
}

#[test]
fn behavior_policies_count_recent_scale_events() {
    let t0 = Instant::now();
    let mut b = behavior();
    b.up.policies = vec![Policy {
        kind: PolicyKind::Pods,
        value: 2,
        period: Duration::from_secs(60),
    }];
    let mut h = History::default();
    let n = h.normalize_with(&b, 1, 10, 1, 10, t0);
    assert_eq!(n.replicas, 3);
    h.record_scale(Some(&b), 1, 3, t0);
    // 20 s later the period still holds the +2: no more room.
    let n = h.normalize_with(&b, 3, 10, 1, 10, t0 + Duration::from_secs(20));
    assert_eq!(n.replicas, 3);
    assert_eq!(n.scaling_limited.reason, "ScaleUpLimit");
    // After the period: +2 again.
    let n = h.normalize_with(&b, 3, 10, 1, 10, t0 + Duration::from_secs(61));
    assert_eq!(n.replicas, 5);
}

#[test]
fn behavior_select_min_max_disabled() {
    let t = Instant::now();
    let mut b = behavior();
    b.down.stabilization = Duration::ZERO;
    b.down.policies = vec![
        Policy {
            kind: PolicyKind::Pods,
            value: 1,
            period: Duration::from_secs(60),
        },
        Policy {
            kind: PolicyKind::Percent,
            value: 50,
            period: Duration::from_secs(60),
        },
    ];
    // Max (the biggest change): 10 -> 5 (50%) rather than 9.
    let n = History::default().normalize_with(&b, 10, 1, 1, 20, t);
    assert_eq!(n.replicas, 5);
    assert_eq!(n.scaling_limited.reason, "ScaleDownLimit");
    // Min (the smallest change): 9.
    b.down.select = Select::Min;
    assert_eq!(
        History::default()
            .normalize_with(&b, 10, 1, 1, 20, t)
            .replicas,
        9
    );
    // Disabled: no scale-down at all.
    b.down.select = Select::Disabled;
    assert_eq!(
        History::default()
            .normalize_with(&b, 10, 1, 1, 20, t)
            .replicas,
        10
    );
    // Scale-up disabled too.
    b.up.select = Select::Disabled;
    assert_eq!(
        History::default()
            .normalize_with(&b, 10, 15, 1, 20, t)
            .replicas,
        10
    );
}

#[test]
fn behavior_stabilization_windows() {
    let t0 = Instant::now();
    let mut b = behavior();
    b.down.stabilization = Duration::from_secs(30);
    b.up.stabilization = Duration::from_secs(10);
    let mut h = History::default();
    assert_eq!(h.normalize_with(&b, 2, 2, 1, 10, t0).replicas, 2);
    // Up window: the lowest recent recommendation (2) holds the count.
    let n = h.normalize_with(&b, 2, 5, 1, 10, t0 + Duration::from_secs(5));
    assert_eq!(n.replicas, 2);
    assert_eq!(n.able_to_scale.reason, "ScaleUpStabilized");
    // Past the up window the 5 goes through.
    let n = h.normalize_with(&b, 2, 5, 1, 10, t0 + Duration::from_secs(16));
    assert_eq!(n.replicas, 5);
    // Down window: the highest recent recommendation (5) holds.
    let n = h.normalize_with(&b, 5, 1, 1, 10, t0 + Duration::from_secs(20));
    assert_eq!(n.replicas, 5);
    assert_eq!(n.able_to_scale.reason, "ScaleDownStabilized");
    // 30 s after the last 5 the 1 goes through.
    let n = h.normalize_with(&b, 5, 1, 1, 10, t0 + Duration::from_secs(47));
    assert_eq!(n.replicas, 1);
}

#[test]
fn bounds_before_metrics() {
    assert_eq!(out_of_bounds(12, 1, 10).map(|x| x.0), Some(10));
    assert_eq!(out_of_bounds(0, 2, 10).map(|x| x.0), Some(2));
    assert_eq!(out_of_bounds(3, 1, 10), None);
}
