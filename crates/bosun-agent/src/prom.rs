//! Prometheus text exposition of this node's usage under the names existing dashboards
//! query: `/metrics/cadvisor` (the kubelet's cAdvisor endpoint: `container_*` series with
//! `namespace`, `pod`, `container` labels, from the same readings as `/stats/summary`) and
//! `/metrics/node` (node-exporter's `node_*` series from /proc).

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }
}

/// cAdvisor-named series of every running container on the node.
pub fn cadvisor(pods_dir: &Path, node_name: &str) -> String {
    // A cache of its own: these readings must not move the rate window of /stats/summary.
    let summary = crate::stats::summary(pods_dir, node_name, &crate::stats::RateCache::default());
    cadvisor_from_summary(&summary)
}

fn cadvisor_from_summary(summary: &Value) -> String {
    struct C<'a> {
        ns: &'a str,
        pod: &'a str,
        container: &'a str,
        id: String,
        c: &'a Value,
    }
    let mut containers = Vec::new();
    for p in summary["pods"].as_array().into_iter().flatten() {
        let ns = p
            .pointer("/podRef/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let pod = p
            .pointer("/podRef/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let uid = p
            .pointer("/podRef/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        for c in p["containers"].as_array().into_iter().flatten() {
            let container = c["name"].as_str().unwrap_or("");
            containers.push(C {
                ns,
                pod,
                container,
                id: format!("/bosun/{uid}/{container}"),
                c,
            });
        }
    }
    let mut out = String::new();
    let families: [(&str, &str, &str, &str, f64); 4] = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed in seconds.",
            "/cpu/usageCoreNanoSeconds",
            1e-9,
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set in bytes.",
            "/memory/workingSetBytes",
            1.0,
        ),
        (
            "container_memory_usage_bytes",
            "gauge",
            "Current memory usage in bytes, including all memory regardless of when it was accessed.",
            "/memory/usageBytes",
            1.0,
        ),
        (
            "container_memory_rss",
            "gauge",
            "Size of RSS in bytes.",
            "/memory/rssBytes",
            1.0,
        ),
    ];
    for (name, kind, help, ptr, scale) in families {
        let mut f = Family::new(&mut out, name, kind, help);
        for c in &containers {
            let v = c.c.pointer(ptr).and_then(Value::as_u64).unwrap_or(0) as f64 * scale;
            f.sample(
                name,
                &[
                    ("container", c.container),
                    ("id", &c.id),
                    ("image", ""),
                    ("name", c.container),
                    ("namespace", c.ns),
                    ("pod", c.pod),
                ],
                v,
            );
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Family::new(
        &mut out,
        "machine_cpu_cores",
        "gauge",
        "Number of logical CPU cores.",
    )
    .sample("machine_cpu_cores", &[], cores as f64);
    if let Some(total) = meminfo().iter().find(|(k, _)| k == "MemTotal") {
        Family::new(
            &mut out,
            "machine_memory_bytes",
            "gauge",
            "Amount of memory installed on the machine.",
        )
        .sample("machine_memory_bytes", &[], total.1 as f64);
    }
    out
}

/// /proc/meminfo as (field, bytes), field names as node-exporter spells them.
fn meminfo() -> Vec<(String, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            let bytes = if parts.next() == Some("kB") {
                n * 1024
            } else {
                n
            };
            let k = k.replace('(', "_").replace(')', "");
            Some((k, bytes))
        })
        .collect()
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as f64)
        .unwrap_or(100.0)
}

/// node-exporter-named series of the machine.
pub fn node() -> String {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let netdev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let mut out = node_from(&stat, &meminfo(), &loadavg, &netdev, clock_ticks());
    if let Ok(fs) = nix::sys::statvfs::statvfs("/") {
        let frsize = fs.fragment_size() as f64;
        let labels = [
            ("device", "rootfs"),
            ("fstype", "rootfs"),
            ("mountpoint", "/"),
        ];
        for (name, help, v) in [
            (
                "node_filesystem_size_bytes",
                "Filesystem size in bytes.",
                fs.blocks() as f64 * frsize,
            ),
            (
                "node_filesystem_avail_bytes",
                "Filesystem space available to non-root users in bytes.",
                fs.blocks_available() as f64 * frsize,
            ),
            (
                "node_filesystem_free_bytes",
                "Filesystem free space in bytes.",
                fs.blocks_free() as f64 * frsize,
            ),
        ] {
            Family::new(&mut out, name, "gauge", help).sample(name, &labels, v);
        }
    }
    out
}

fn node_from(stat: &str, mem: &[(String, u64)], loadavg: &str, netdev: &str, ticks: f64) -> String {
    let mut out = String::new();
    {
        let name = "node_cpu_seconds_total";
        let mut f = Family::new(
            &mut out,
            name,
            "counter",
            "Seconds the CPUs spent in each mode.",
        );
        const MODES: [&str; 8] = [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ];
        for l in stat.lines() {
            let mut parts = l.split_whitespace();
            let Some(cpu) = parts.next().and_then(|c| c.strip_prefix("cpu")) else {
                continue;
            };
            if cpu.is_empty() {
                continue;
            }
            for (mode, v) in MODES.iter().zip(parts) {
                let v: f64 = v.parse().unwrap_or(0.0);
                f.sample(name, &[("cpu", cpu), ("mode", mode)], v / ticks);
            }
        }
    }
    if let Some(btime) = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        Family::new(
            &mut out,
            "node_boot_time_seconds",
            "gauge",
            "Node boot time, in unixtime.",
        )
        .sample("node_boot_time_seconds", &[], btime);
    }
    for (k, v) in mem {
        let name = format!("node_memory_{k}_bytes");
        Family::new(
            &mut out,
            &name,
            "gauge",
            &format!("Memory information field {k}_bytes."),
        )
        .sample(&name, &[], *v as f64);
    }
    let load: Vec<f64> = loadavg
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    for (name, v) in ["node_load1", "node_load5", "node_load15"].iter().zip(load) {
        Family::new(&mut out, name, "gauge", "Load average.").sample(name, &[], v);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Family::new(
        &mut out,
        "node_time_seconds",
        "gauge",
        "System time in seconds since epoch (1970).",
    )
    .sample("node_time_seconds", &[], now);
    // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes
    // packets errs drop ...
    let devs: Vec<(&str, Vec<f64>)> = netdev
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (dev, rest) = l.split_once(':')?;
            let v: Vec<f64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() >= 16).then(|| (dev.trim(), v))
        })
        .collect();
    for (name, i, help) in [
        (
            "node_network_receive_bytes_total",
            0,
            "Network device statistic receive_bytes.",
        ),
        (
            "node_network_receive_packets_total",
            1,
            "Network device statistic receive_packets.",
        ),
        (
            "node_network_receive_errs_total",
            2,
            "Network device statistic receive_errs.",
        ),
        (
            "node_network_transmit_bytes_total",
            8,
            "Network device statistic transmit_bytes.",
        ),
        (
            "node_network_transmit_packets_total",
            9,
            "Network device statistic transmit_packets.",
        ),
        (
            "node_network_transmit_errs_total",
            10,
            "Network device statistic transmit_errs.",
        ),
    ] {
        let mut f = Family::new(&mut out, name, "counter", help);
        for (dev, v) in &devs {
            f.sample(name, &[("device", dev)], v[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadvisor_names_and_labels() {
        let s = serde_json::json!({"pods": [{
            "podRef": {"name": "web-1", "namespace": "shop", "uid": "u1"},
            "containers": [{"name": "app",
                "cpu": {"usageCoreNanoSeconds": 1_500_000_000u64},
                "memory": {"workingSetBytes": 4096, "usageBytes": 8192, "rssBytes": 2048}}]
        }]});
        let text = cadvisor_from_summary(&s);
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",id=\"/bosun/u1/app\",image=\"\",name=\"app\",namespace=\"shop\",pod=\"web-1\"} 1.5\n"
        ), "{text}");
        assert!(text.contains("container_memory_working_set_bytes{container=\"app\""));
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter"));
    }

    #[test]
    fn node_exporter_names() {
        let stat =
            "cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 200 1 50 1000 2 0 3 0 0 0\nbtime 1700000000\n";
        let mem = parse_meminfo(
            "MemTotal:       16000 kB\nMemAvailable:    8000 kB\nActive(anon):     10 kB\n",
        );
        let netdev = "Inter-|   Receive |  Transmit\n face |bytes packets\n  eth0: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n";
        let text = node_from(stat, &mem, "0.5 0.25 0.1 1/100 42\n", netdev, 100.0);
        assert!(
            text.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 10\n"));
        assert!(!text.contains("cpu=\"\""));
        assert!(text.contains("node_memory_MemAvailable_bytes 8192000\n"));
        assert!(text.contains("node_memory_Active_anon_bytes 10240\n"));
        assert!(text.contains("node_load1 0.5\n"));
        assert!(text.contains("node_network_transmit_bytes_total{device=\"eth0\"} 300\n"));
        assert!(text.contains("node_boot_time_seconds 1700000000\n"));
    }
}
