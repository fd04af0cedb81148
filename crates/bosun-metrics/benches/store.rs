//! Memory, CPU and query latency of the metrics store for 100 pods scraped every 15 s.
//!
//! Each simulated pod has 25 series, as bosun scrapes them: 4 cAdvisor series (CPU
//! counter, working set, usage, RSS) and an annotated app's 21 (a request counter by 3
//! codes, a 14-bucket latency histogram with _sum and _count, 2 gauges); plus 100 node
//! series. The store ingests a whole day of samples at their simulated times (writing
//! hourly blocks to a temporary directory, as in `bosun up`), reporting after the first
//! hour and after the day: resident memory of the process, CPU time spent ingesting, head
//! and disk bytes; then the latency of 1-hour range queries (15 s step) over the newest
//! hour (in memory) and over an hour written to disk.
//!
//! Run: `cargo bench -p bosun-metrics --bench store` (BENCH_HOURS=N to change the span).

use std::time::{Duration, Instant};

use bosun_metrics::eval;
use bosun_metrics::store::{Labels, Retention, Store, labels_from};

const PODS: usize = 100;
const STEP_MS: i64 = 15_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    labels_from(
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

struct S {
    labels: Labels,
    kind: Kind,
}

enum Kind {
    Counter(f64),
    Gauge(f64),
}

fn series() -> Vec<S> {
    let mut out = Vec::new();
    for p in 0..PODS {
        let pod = format!("web-{p:03}");
        let ns = format!("team-{}", p % 5);
        let base = |name: &str| {
            vec![
                ("__name__", name.to_string()),
                ("namespace", ns.clone()),
                ("pod", pod.clone()),
            ]
        };
        let mk = |v: Vec<(&str, String)>| {
            labels_from(v.into_iter().map(|(a, b)| (a.to_string(), b)).collect())
        };
        let mut c = base("container_cpu_usage_seconds_total");
        c.push(("container", "app".into()));
        out.push(S {
            labels: mk(c),
            kind: Kind::Counter(0.05 + p as f64 * 0.001),
        });
        for name in [
            "container_memory_working_set_bytes",
            "container_memory_usage_bytes",
            "container_memory_rss",
        ] {
            let mut c = base(name);
            c.push(("container", "app".into()));
            out.push(S {
                labels: mk(c),
                kind: Kind::Gauge(50e6 + p as f64 * 1e5),
            });
        }
        for (code, r) in [("200", 20.0), ("404", 1.0), ("500", 0.2)] {
            let mut c = base("http_requests_total");
            c.push(("code", code.into()));
            out.push(S {
                labels: mk(c),
                kind: Kind::Counter(r),
            });
        }
        let bounds = [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
            "60", "+Inf",
        ];
        for (i, le) in bounds.iter().enumerate() {
            let mut c = base("http_request_duration_seconds_bucket");
            c.push(("le", le.to_string()));
            let frac = ((i + 1) as f64 / 6.0).min(1.0);
            out.push(S {
                labels: mk(c),
                kind: Kind::Counter(21.2 * frac),
            });
        }
        out.push(S {
            labels: mk(base("http_request_duration_seconds_sum")),
            kind: Kind::Counter(2.1),
        });
        out.push(S {
            labels: mk(base("http_request_duration_seconds_count")),
            kind: Kind::Counter(21.2),
        });
        out.push(S {
            labels: mk(base("process_open_fds")),
            kind: Kind::Gauge(40.0),
        });
        out.push(S {
            labels: mk(base("process_resident_memory_bytes")),
            kind: Kind::Gauge(4e7),
        });
    }
    for cpu in 0..12 {
        for mode in [
            "user", "system", "idle", "iowait", "irq", "softirq", "nice", "steal",
        ] {
            let c = cpu.to_string();
            out.push(S {
                labels: l(&[
                    ("__name__", "node_cpu_seconds_total"),
                    ("cpu", &c),
                    ("mode", mode),
                ]),
                kind: Kind::Counter(0.1),
            });
        }
    }
    for i in 0..4 {
        out.push(S {
            labels: l(&[("__name__", "node_memory_bytes"), ("field", &i.to_string())]),
            kind: Kind::Gauge(1e9),
        });
    }
    out
}

fn ingest(store: &Store, series: &[S], from: i64, to: i64, values: &mut [f64], rng: &mut u64) {
    let mut t = from;
    while t < to {
        let batch: Vec<(Labels, f64)> = series
            .iter()
            .zip(values.iter_mut())
            .map(|(s, v)| {
                // xorshift noise: counters grow by a jittered integer, gauges wander.
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                let noise = (*rng % 1000) as f64 / 1000.0;
                match s.kind {
                    Kind::Counter(r) => *v += (r * 15.0 * (0.5 + noise)).round(),
                    Kind::Gauge(g) => *v = (g * (0.9 + 0.2 * noise)).round(),
                }
                (s.labels.clone(), *v)
            })
            .collect();
        store.append(t, batch);
        store.maintain(t, false).expect("maintain");
        t += STEP_MS;
    }
}

/// Best wall time of 5 runs, and the mean CPU time of a run (the one that does not
/// depend on what else the machine runs).
fn time_query(store: &Store, q: &str, start: i64, end: i64) -> (Duration, f64, usize) {
    let expr = eval::parse(q).expect("query parses");
    let mut best = Duration::MAX;
    let mut points = 0;
    let cpu0 = cpu_seconds();
    for _ in 0..5 {
        let t0 = Instant::now();
        let r = eval::range(store, &expr, start, end, STEP_MS, eval::DEFAULT_LOOKBACK)
            .expect("query runs");
        best = best.min(t0.elapsed());
        points = r.iter().map(|s| s.samples.len()).sum();
    }
    (best, (cpu_seconds() - cpu0) / 5.0, points)
}

fn main() {
    let hours: i64 = std::env::var("BENCH_HOURS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        Retention {
            age: Duration::from_secs(15 * 24 * 3600),
            max_bytes: 1 << 34,
            block_duration: Duration::from_secs(3600),
        },
    )
    .expect("store");
    let series = series();
    let mut values = vec![0.0; series.len()];
    let mut rng = 0x9e3779b97f4a7c15u64;
    let start = 1_700_000_000_000i64;
    let rss0 = rss_kib();
    let cpu0 = cpu_seconds();
    println!(
        "{} series ({} pods x 25 + {} node), one sample each per 15 s",
        series.len(),
        PODS,
        series.len() - PODS * 25
    );
    println!("| span | samples | ingest CPU | RSS growth | head (in memory) | blocks on disk |");
    println!("|---|---|---|---|---|---|");
    let report = |h: i64, cpu: f64| {
        let samples = series.len() as i64 * h * 240;
        println!(
            "| {h} h | {:.2} M | {:.2} s | {:.1} MiB | {:.1} MiB ({} series) | {:.1} MiB ({} files) |",
            samples as f64 / 1e6,
            cpu,
            (rss_kib().saturating_sub(rss0)) as f64 / 1024.0,
            store.head_bytes() as f64 / (1 << 20) as f64,
            store.head_series(),
            store.disk_bytes() as f64 / (1 << 20) as f64,
            store.block_count(),
        );
    };
    ingest(
        &store,
        &series,
        start,
        start + 3_600_000,
        &mut values,
        &mut rng,
    );
    report(1, cpu_seconds() - cpu0);
    if hours > 1 {
        ingest(
            &store,
            &series,
            start + 3_600_000,
            start + hours * 3_600_000,
            &mut values,
            &mut rng,
        );
        report(hours, cpu_seconds() - cpu0);
    }
    let end = start + hours * 3_600_000 - STEP_MS;
    println!();
    println!(
        "| 1-hour range query, 15 s step | where | CPU per query | best wall time of 5 | points |"
    );
    println!("|---|---|---|---|---|");
    let custom = std::env::var("BENCH_QUERY").ok();
    let defaults = [
        "sum by (pod) (rate(container_cpu_usage_seconds_total[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        r#"sum by (namespace) (rate(http_requests_total{code="500"}[5m])) / sum by (namespace) (rate(http_requests_total[5m]))"#,
    ];
    let queries: Vec<&str> = match &custom {
        Some(q) => vec![q.as_str()],
        None => defaults.to_vec(),
    };
    for q in queries {
        let (d, cpu, n) = time_query(&store, q, end - 3_600_000, end);
        println!(
            "| `{q}` | newest hour (memory) | {:.0} ms | {:.0} ms | {n} |",
            cpu * 1e3,
            d.as_secs_f64() * 1e3
        );
        if hours > 2 {
            let old_end = start + 2 * 3_600_000;
            let (d, cpu, n) = time_query(&store, q, old_end - 3_600_000, old_end);
            println!(
                "| `{q}` | an old hour (disk blocks) | {:.0} ms | {:.0} ms | {n} |",
                cpu * 1e3,
                d.as_secs_f64() * 1e3
            );
        }
    }
}
