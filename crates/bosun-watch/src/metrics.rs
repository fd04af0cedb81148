//! Metrics of the reconcile runtime under controller-runtime's names, one registry per
//! process: `controller_runtime_reconcile_total{controller,result}`,
//! `controller_runtime_reconcile_errors_total{controller}`,
//! `controller_runtime_reconcile_time_seconds{controller}`,
//! `controller_runtime_active_workers{controller}` and
//! `controller_runtime_max_concurrent_reconciles{controller}`. `encode` writes them in
//! the OpenMetrics text format (the API server appends them to its `/metrics`).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: &'static str,
    /// `success` or `error`.
    pub result: &'static str,
}

pub struct ControllerMetrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<ControllerLabel, Counter>,
    pub time: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    pub active: Family<ControllerLabel, Gauge>,
    pub max_concurrent: Family<ControllerLabel, Gauge>,
}

fn histogram() -> Histogram {
    // controller-runtime's buckets for reconcile_time_seconds.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8,
        0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0,
        15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0,
    ])
}

pub static METRICS: LazyLock<ControllerMetrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let m = ControllerMetrics {
        reconciles: Family::default(),
        errors: Family::default(),
        time: Family::new_with_constructor(histogram as fn() -> Histogram),
        active: Family::default(),
        max_concurrent: Family::default(),
        registry: Registry::default(),
    };
    let r = registry.sub_registry_with_prefix("controller_runtime");
    r.register(
        "reconcile",
        "Total number of reconciliations per controller",
        m.reconciles.clone(),
    );
    r.register(
        "reconcile_errors",
        "Total number of reconciliation errors per controller",
        m.errors.clone(),
    );
    r.register(
        "reconcile_time_seconds",
        "Length of time per reconciliation per controller",
        m.time.clone(),
    );
    r.register(
        "active_workers",
        "Number of currently used workers per controller",
        m.active.clone(),
    );
    r.register(
        "max_concurrent_reconciles",
        "Maximum number of concurrent reconciles per controller",
        m.max_concurrent.clone(),
    );
    ControllerMetrics { registry, ..m }
});

/// Appends the controllers' metrics to `out` (OpenMetrics text, without `# EOF`).
pub fn encode(out: &mut String) {
    let mut s = String::new();
    if prometheus_client::encoding::text::encode_registry(&mut s, &METRICS.registry).is_ok() {
        out.push_str(&s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_under_controller_runtime_names() {
        METRICS
            .reconciles
            .get_or_create(&ResultLabels {
                controller: "test",
                result: "success",
            })
            .inc();
        METRICS
            .time
            .get_or_create(&ControllerLabel { controller: "test" })
            .observe(0.01);
        let mut out = String::new();
        encode(&mut out);
        assert!(
            out.contains(
                r#"controller_runtime_reconcile_total{controller="test",result="success"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains("controller_runtime_reconcile_time_seconds_bucket"),
            "{out}"
        );
        assert!(!out.contains("# EOF"));
    }
}
