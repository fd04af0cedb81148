//! Resource usage of pods for `GET /stats/summary` (the kubelet's Summary API subset that
//! metrics consumers read): CPU and memory per container, summed per pod and node, measured
//! from /proc over each container's process group.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};

use crate::osutil::same_process;
use crate::shim_spec::ShimState;

/// Usage of one process group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time used, in nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(4096)
}

/// Sums the usage of every process whose process group is in `groups`, keyed by group.
pub fn usage_by_group(groups: &[u32]) -> HashMap<u32, Usage> {
    let mut out: HashMap<u32, Usage> = HashMap::new();
    if groups.is_empty() {
        return out;
    }
    let tick_ns = 1_000_000_000 / clock_ticks();
    let page = page_size();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // Fields from 3 (state) on; pgrp is field 5, utime 14, stime 15, rss 24.
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let get = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let pgrp = get(5) as u32;
        if groups.contains(&pgrp) {
            let u = out.entry(pgrp).or_default();
            u.cpu_ns += (get(14) + get(15)) * tick_ns;
            u.rss_bytes += get(24) * page;
        }
    }
    out
}

/// CPU time the machine spent busy (all but idle and iowait), in nanoseconds.
pub fn machine_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Some(busy * (1_000_000_000 / clock_ticks()))
}

/// Memory in use on the machine (MemTotal - MemAvailable), in bytes.
pub fn machine_memory_used() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

/// Remembers the previous CPU reading per container to turn totals into a rate.
#[derive(Default)]
pub struct RateCache {
    /// id -> (time of the reading, CPU total then, rate computed at that reading)
    last: Mutex<HashMap<String, (Instant, u64, u64)>>,
}

/// Readings closer together than this return the previous rate (a rate over a few
/// milliseconds says little), so frequent callers do not disturb the window.
const MIN_RATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl RateCache {
    /// Nano-cores used since the previous reading of `id` (0 on the first).
    fn rate(&self, id: &str, now: Instant, cpu_ns: u64) -> u64 {
        let mut m = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let r = match m.get(id) {
            Some((t, _, rate)) if now.duration_since(*t) < MIN_RATE_INTERVAL => return *rate,
            Some((t, prev, _)) if cpu_ns >= *prev => {
                let dt = now.duration_since(*t).as_nanos() as u64;
                if dt == 0 {
                    0
                } else {
                    ((cpu_ns - prev) as u128 * 1_000_000_000 / dt as u128) as u64
                }
            }
            _ => 0,
        };
        m.insert(id.to_string(), (now, cpu_ns, r));
        r
    }
}

struct Running {
    container: String,
    pgrp: u32,
}

/// Builds the Summary for every pod with running containers under `pods_dir`.
pub fn summary(pods_dir: &Path, node_name: &str, cache: &RateCache) -> Value {
    let now = Instant::now();
    let ts = format!("{}", jiff::Timestamp::now());
    let mut pods: Vec<(Value, Vec<Running>)> = Vec::new();
    for e in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
        let Ok(meta) = std::fs::read(e.path().join("pod.json")) else {
            continue;
        };
        let Ok(meta) = serde_json::from_slice::<Value>(&meta) else {
            continue;
        };
        let mut running = Vec::new();
        for c in std::fs::read_dir(e.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = c.file_name().to_string_lossy().into_owned();
            let latest = std::fs::read_dir(c.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|a| a.file_name().to_string_lossy().parse::<u32>().ok())
                .max();
            let Some(latest) = latest else { continue };
            let dir = c.path().join(latest.to_string());
            if let Some(r) = crate::docker::read_record(&dir.join("docker.json")) {
                if let (Some(pid), Some(ticks)) = (r.pid, r.pid_start_ticks)
                    && same_process(pid, ticks)
                {
                    running.push(Running {
                        container: name,
                        pgrp: pid,
                    });
                }
                continue;
            }
            let Ok(st) = ShimState::read(&dir.join("state.json")) else {
                continue;
            };
            if let (None, Some(pid), Some(ticks)) = (st.exit_code, st.pid, st.pid_start_ticks)
                && same_process(pid, ticks)
            {
                running.push(Running {
                    container: name,
                    pgrp: pid,
                });
            }
        }
        if !running.is_empty() {
            pods.push((meta, running));
        }
    }
    let groups: Vec<u32> = pods
        .iter()
        .flat_map(|(_, r)| r.iter().map(|c| c.pgrp))
        .collect();
    let usage = usage_by_group(&groups);
    let mut pod_values = Vec::new();
    let (mut node_cpu, mut node_mem, mut node_rate) = (0u64, 0u64, 0u64);
    for (meta, running) in pods {
        let uid = meta["uid"].as_str().unwrap_or_default().to_string();
        let (mut pod_cpu, mut pod_mem, mut pod_rate) = (0u64, 0u64, 0u64);
        let mut containers = Vec::new();
        for r in running {
            // A container with a cgroup of its own (Docker, or a process container with
            // cgroups) is measured by it: every process it started, page cache excluded.
            let u = match crate::cgroup::usage_of_pid(r.pgrp) {
                Some(cg) => Usage {
                    cpu_ns: cg.cpu_ns,
                    rss_bytes: cg.working_set,
                },
                None => usage.get(&r.pgrp).copied().unwrap_or_default(),
            };
            let rate = cache.rate(&format!("{uid}/{}", r.container), now, u.cpu_ns);
            pod_cpu += u.cpu_ns;
            pod_mem += u.rss_bytes;
            pod_rate += rate;
            containers.push(json!({
                "name": r.container,
                "cpu": {"time": ts, "usageNanoCores": rate, "usageCoreNanoSeconds": u.cpu_ns},
                "memory": {"time": ts, "workingSetBytes": u.rss_bytes, "usageBytes": u.rss_bytes, "rssBytes": u.rss_bytes},
            }));
        }
        node_cpu += pod_cpu;
        node_mem += pod_mem;
        node_rate += pod_rate;
        pod_values.push(json!({
            "podRef": {"name": meta["name"], "namespace": meta["namespace"], "uid": uid},
            "cpu": {"time": ts, "usageNanoCores": pod_rate, "usageCoreNanoSeconds": pod_cpu},
            "memory": {"time": ts, "workingSetBytes": pod_mem, "usageBytes": pod_mem},
            "containers": containers,
        }));
    }
    // The node's figures are the machine's (as the kubelet reports them), falling back to
    // the sum over pods where /proc does not tell.
    if let Some(busy) = machine_cpu_ns() {
        node_cpu = busy;
        node_rate = cache.rate("", now, busy);
    }
    if let Some(used) = machine_memory_used() {
        node_mem = used;
    }
    json!({
        "node": {
            "nodeName": node_name,
            "cpu": {"time": ts, "usageNanoCores": node_rate, "usageCoreNanoSeconds": node_cpu},
            "memory": {"time": ts, "workingSetBytes": node_mem, "usageBytes": node_mem},
        },
        "pods": pod_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_own_process_group() {
        let me = nix::unistd::getpgrp().as_raw() as u32;
        // Burn some CPU so the reading is not zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert_ne!(x, 1);
        let u = usage_by_group(&[me]);
        let u = u[&me];
        assert!(u.cpu_ns > 0);
        assert!(u.rss_bytes > 1024 * 1024);
        assert!(machine_cpu_ns().unwrap() >= u.cpu_ns);
        assert!(machine_memory_used().unwrap() > u.rss_bytes);
        let c = RateCache::default();
        let t = Instant::now();
        assert_eq!(c.rate("a", t, 1_000), 0);
        assert_eq!(
            c.rate(
                "a",
                t + std::time::Duration::from_secs(2),
                1_000_000_000 + 1_000
            ),
            500_000_000,
            "one CPU second over two seconds is half a core"
        );
    }
}
