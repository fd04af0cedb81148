#!/usr/bin/env python3
"""bosun's metrics store against Debian's Prometheus, in one run, on the same targets.

A fake exporter (this script, one HTTP port) serves 100 "pods" at /pod/N/metrics, 25 series
each as bosun sees a pod (4 cAdvisor-style series and an app's request counter by 3 codes,
a 14-bucket latency histogram with _sum and _count, 2 gauges). `bosun metrics-only` (the
built-in store, scrape loop and Prometheus API alone) and `prometheus` both scrape all 100
every 15 s for BENCH_MINUTES (default 60). Every minute the resident memory (VmRSS) and CPU
time (utime+stime) of both processes are sampled from /proc. At the end, 1-hour range
queries (15 s step) are timed on both (best of 5, and the median), and a day is
extrapolated from the growth over the run's second half.

    BOSUN_BIN=target/debug/bosun BENCH_MINUTES=60 python3 scripts/bench_metrics_vs_prometheus.py

Use a release build of bosun for figures to publish.
"""

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

PODS = 100
INTERVAL = 15
MINUTES = float(os.environ.get("BENCH_MINUTES", "60"))
BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "+Inf"]
START = time.time()


def noise(*key):
    h = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


CACHE = {}
CACHE_LOCK = threading.Lock()


def page(pod):
    """The exposition of one pod in this interval, made once (both stores read the same)."""
    t = int((time.time() - START) // INTERVAL)
    with CACHE_LOCK:
        hit = CACHE.get((pod, t))
    if hit is None:
        hit = make_page(pod, t)
        with CACHE_LOCK:
            CACHE[(pod, t)] = hit
            CACHE.pop((pod, t - 2), None)
    return hit


def make_page(pod, t):
    """Counters grow with jitter, gauges wander."""
    name = f"app-{pod}"
    ns = f"ns{pod % 5}"
    base = f'namespace="{ns}",pod="{name}"'
    out = []
    cpu = sum(0.05 + 0.1 * noise("cpu", pod, i) for i in range(t + 1))
    out.append(f'container_cpu_usage_seconds_total{{{base},container="app"}} {cpu:.6f}')
    ws = 50e6 + 5e6 * noise("ws", pod, t)
    out.append(f'container_memory_working_set_bytes{{{base},container="app"}} {ws:.0f}')
    out.append(f'container_memory_usage_bytes{{{base},container="app"}} {ws * 1.2:.0f}')
    out.append(f'container_memory_rss{{{base},container="app"}} {ws * 0.8:.0f}')
    total = 0
    for code, share in (("200", 0.9), ("404", 0.07), ("500", 0.03)):
        n = int(sum(150 * share * (0.8 + 0.4 * noise("req", pod, code, i)) for i in range(0, t + 1, 1)))
        total += n
        out.append(f'http_requests_total{{code="{code}"}} {n}')
    acc = 0.0
    for i, le in enumerate(BUCKETS):
        acc = min(1.0, acc + (0.6 if i == 0 else 0.4 / len(BUCKETS)))
        frac = 1.0 if le == "+Inf" else acc
        out.append(f'http_request_duration_seconds_bucket{{le="{le}"}} {int(total * frac)}')
    out.append(f"http_request_duration_seconds_sum {total * 0.042:.3f}")
    out.append(f"http_request_duration_seconds_count {total}")
    out.append(f"app_queue_length {int(10 * noise('q', pod, t))}")
    out.append(f"app_temperature_celsius {20 + noise('temp', pod, t):.3f}")
    return ("\n".join(out) + "\n").encode()


class Exporter(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "pod" and parts[2] == "metrics":
            b = page(int(parts[1]))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
        else:
            b = b"not found\n"
            self.send_response(404)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def log_message(self, *a):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss / 1024.0, cpu


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total / 2**20


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def query_range(port, q, start, end):
    data = urllib.parse.urlencode({"query": q, "start": start, "end": end, "step": INTERVAL}).encode()
    t = time.perf_counter()
    with NO_PROXY.open(f"http://127.0.0.1:{port}/api/v1/query_range", data=data, timeout=120) as r:
        body = json.loads(r.read())
    dt = time.perf_counter() - t
    assert body["status"] == "success", body
    points = sum(len(s["values"]) for s in body["data"]["result"])
    return dt, points


QUERIES = [
    "sum by (pod) (rate(container_cpu_usage_seconds_total[5m]))",
    "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    'sum by (namespace) (rate(http_requests_total{code="500"}[5m])) / sum by (namespace) (rate(http_requests_total[5m]))',
]


def main():
    bosun = os.environ.get("BOSUN_BIN", "target/debug/bosun")
    prom = shutil.which("prometheus")
    if not prom:
        sys.exit("Debian's prometheus is needed (apt-get install prometheus)")
    work = tempfile.mkdtemp(prefix="bench-metrics-")
    # bosun scrapes all targets at once: a backlog for 100 connections.
    http.server.ThreadingHTTPServer.request_queue_size = 256
    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    eport = exporter.server_address[1]
    targets = [f"127.0.0.1:{eport}/pod/{i}/metrics" for i in range(PODS)]

    bport, pport = free_port(), free_port()
    bproc = subprocess.Popen(
        [bosun, "metrics-only", "--listen", f"127.0.0.1:{bport}", "--data-dir", os.path.join(work, "bosun"),
         "--scrape-interval", f"{INTERVAL}s"] + [a for i, t in enumerate(targets) for a in ("--target", f"pod{i}=http://{t}")],
        stdout=open(os.path.join(work, "bosun.log"), "wb"), stderr=subprocess.STDOUT)
    # One scrape config per target path (Prometheus' static_configs share one path).
    cfg = {"global": {"scrape_interval": f"{INTERVAL}s", "scrape_timeout": "10s"},
           "scrape_configs": [{"job_name": f"pod{i}", "metrics_path": f"/pod/{i}/metrics",
                               "static_configs": [{"targets": [f"127.0.0.1:{eport}"]}]}
                              for i in range(PODS)]}
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        json.dump(cfg, f)
    pproc = subprocess.Popen(
        [prom, f"--config.file={os.path.join(work, 'prometheus.yml')}",
         f"--storage.tsdb.path={os.path.join(work, 'prom')}", f"--web.listen-address=127.0.0.1:{pport}"],
        stdout=open(os.path.join(work, "prometheus.log"), "wb"), stderr=subprocess.STDOUT)
    samples = []  # (minute, bosun rss, bosun cpu, prom rss, prom cpu)
    try:
        t0 = time.time()
        print(f"# {PODS} targets x 25 series every {INTERVAL}s for {MINUTES:g} min; work dir {work}", flush=True)
        print("minute  bosun_rss_MiB  bosun_cpu_s  prom_rss_MiB  prom_cpu_s", flush=True)
        minute = 0
        while time.time() - t0 < MINUTES * 60:
            time.sleep(max(0.0, t0 + (minute + 1) * 60 - time.time()))
            minute += 1
            for p in (bproc, pproc):
                if p.poll() is not None:
                    sys.exit(f"a store exited early; see {work}")
            br, bc = proc_stats(bproc.pid)
            pr, pc = proc_stats(pproc.pid)
            samples.append((minute, br, bc, pr, pc))
            print(f"{minute:6d}  {br:13.1f}  {bc:11.2f}  {pr:12.1f}  {pc:10.2f}", flush=True)
        end = time.time() - 5
        start = end - min(3600, MINUTES * 60 - 30)
        print("\n# 1-hour range query (or the run's span), step 15 s: best / median of 5, points")
        results = {}
        for q in QUERIES:
            for name, port in (("bosun", bport), ("prometheus", pport)):
                times, points = [], 0
                for _ in range(5):
                    dt, points = query_range(port, q, start, end)
                    times.append(dt)
                results[(q, name)] = (min(times), statistics.median(times), points)
                print(f"{name:10s} {min(times) * 1000:8.1f} ms {statistics.median(times) * 1000:8.1f} ms {points:7d}  {q}")
        half = [s for s in samples if s[0] >= len(samples) // 2]
        if len(half) >= 2:
            (m0, br0, bc0, pr0, pc0), (m1, br1, bc1, pr1, pc1) = half[0], half[-1]
            mins = m1 - m0
            print("\n# growth over the second half, per hour, and a day extrapolated from it")
            for name, r0, r1, c0, c1 in (("bosun", br0, br1, bc0, bc1), ("prometheus", pr0, pr1, pc0, pc1)):
                rss_h = (r1 - r0) / mins * 60
                cpu_h = (c1 - c0) / mins * 60
                print(f"{name:10s} rss {r1:.1f} MiB (+{rss_h:.1f} MiB/h -> ~{r1 + rss_h * 23:.0f} MiB at 24 h), "
                      f"cpu {cpu_h:.1f} s/h -> {cpu_h * 24:.0f} s/day ({cpu_h / 36:.3f}% of a core)")
        print(f"\ndisk: bosun {du(os.path.join(work, 'bosun')):.1f} MiB, prometheus {du(os.path.join(work, 'prom')):.1f} MiB")
    finally:
        for p in (bproc, pproc):
            p.send_signal(signal.SIGTERM)
        for p in (bproc, pproc):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        exporter.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
