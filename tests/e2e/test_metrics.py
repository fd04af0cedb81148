"""bosun's built-in metrics against Debian's Prometheus.

One `bosun up` scrapes, every 2 s, its gateway and node proxy, the node agent's
/metrics/cadvisor and /metrics/node, and a pod annotated prometheus.io/scrape. A real
Prometheus (Debian's package) on a random port with its own data dir scrapes the very same
targets at the same interval. After about a minute both answer the same PromQL queries
(counter rates, sum by, histogram_quantile, a cAdvisor metric of the running pod, the
gateway's request rate) at the same instant, and the answers must agree: the same series
(label sets), and values within the tolerance stated beside each query (the two scrape at
different moments within the interval, so rates over a 30 s window differ by a sample's
worth; CPU use is measured, not synthetic, hence the wider bound).

The Prometheus HTTP API is also driven the way Grafana's Prometheus data source drives it
("Save & test" and the query editor).
"""

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import Bosun, free_port, wait_for

INTERVAL = "2s"

# Counters that grow with time (20/s), a histogram (per second: 12 under 0.1 s, 6 in
# (0.1, 0.5], 2 in (0.5, 1]), a plain answer on / for gateway traffic, and a little CPU
# burnt all the time (about a fifth of a core) for the cAdvisor CPU series.
DEMO = r'''
import http.server, threading, time
START = time.time()
def burn():
    while True:
        t = time.time()
        while time.time() - t < 0.02:
            pass
        time.sleep(0.08)
threading.Thread(target=burn, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/metrics":
            el = time.time() - START
            lines = ["# TYPE demo_requests_total counter",
                     'demo_requests_total{code="200"} %d' % int(el * 20),
                     'demo_requests_total{code="500"} %d' % int(el * 2),
                     "# TYPE demo_latency_seconds histogram"]
            for le, per in (("0.1", 12), ("0.5", 18), ("1", 20), ("+Inf", 20)):
                lines.append('demo_latency_seconds_bucket{le="%s"} %d' % (le, int(el * per)))
            lines.append("demo_latency_seconds_count %d" % int(el * 20))
            lines.append("demo_latency_seconds_sum %f" % (el * 20 * 0.15))
            lines.append("demo_temperature_celsius 21.5")
            b = ("\n".join(lines) + "\n").encode()
        else:
            b = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''


class MetricsBosun(Bosun):
    def __init__(self):
        super().__init__("metrics")
        self.console_port = free_port()
        self.gateway_admin_port = free_port()
        self.proxy_metrics_port = free_port()

    def args(self):
        args = [a for a in super().args()]
        # The fixture's own --console-listen (when it sets one) is replaced by ours.
        if "--console-listen" in args:
            i = args.index("--console-listen")
            del args[i:i + 2]
        return args + [
            "--console-listen", f"127.0.0.1:{self.console_port}",
            "--metrics-scrape-interval", INTERVAL,
            "--gateway-admin-port", str(self.gateway_admin_port),
            "--proxy-metrics-listen", f"127.0.0.1:{self.proxy_metrics_port}",
        ]


@pytest.fixture(scope="module")
def cluster(request):
    b = MetricsBosun()
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(cluster, port):
    try:
        return api(cluster, "/api/v1/status/buildinfo", port=port)[0] == 200
    except (OSError, ValueError):  # not listening yet, or "Service Unavailable" while starting
        return False


def api(cluster, path, params=None, method="GET", port=None, headers=None):
    """Calls the Prometheus API; returns (HTTP status, parsed JSON)."""
    port = port or cluster.console_port
    body = None
    url = f"http://127.0.0.1:{port}{path}"
    h = dict(headers or {})
    if params is not None:
        enc = urllib.parse.urlencode(params, doseq=True)
        if method == "GET":
            url += "?" + enc
        else:
            body = enc.encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with NO_PROXY.open(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def query(cluster, q, t, port=None):
    status, body = api(cluster, "/api/v1/query", {"query": q, "time": f"{t:.3f}"}, port=port)
    assert status == 200 and body["status"] == "success", (q, status, body)
    return body["data"]


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def start_demo(cluster):
    apply(cluster, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "demo", "labels": {"app": "demo"}, "annotations": {
            "prometheus.io/scrape": "true", "prometheus.io/port": "8080",
            "prometheus.io/path": "/metrics"}},
        "spec": {
            "runtimeClassName": "process",
            "containers": [{
                "name": "app",
                "command": ["python3", "-c", DEMO],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }],
        },
    }, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "demo"},
        "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }, {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "demo"},
        "spec": {"rules": [{"host": "demo.local", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "demo", "port": {"number": 80}}}}]}}]},
    })
    wait_for(lambda: cluster.kubectl("get", "pod", "demo", "-o",
                                     "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                                     check=False).stdout == "True",
             timeout=90, what="demo pod ready")
    return cluster.kubectl("get", "pod", "demo", "-o", "jsonpath={.status.podIP}").stdout.strip()


class Traffic(threading.Thread):
    """About 20 requests a second through the gateway until stopped."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.ok = 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/", headers={"Host": "demo.local"})
                r = conn.getresponse()
                r.read()
                self.ok += r.status == 200
            except (OSError, http.client.HTTPException):
                conn = None
            time.sleep(0.05)


def prometheus_config(cluster, pod_ip, path):
    pki = os.path.join(cluster.data_dir, "pki")
    node = cluster.node_name
    cfg = {
        "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL},
        "scrape_configs": [
            {"job_name": "bosun-gateway",
             "static_configs": [{"targets": [f"127.0.0.1:{cluster.gateway_admin_port}"]}]},
            {"job_name": "bosun-apiserver", "scheme": "https",
             "authorization": {"credentials_file": os.path.join(pki, "token")},
             "tls_config": {"ca_file": os.path.join(pki, "ca.crt")},
             "static_configs": [{"targets": [f"127.0.0.1:{cluster.api_port}"]}]},
            {"job_name": "bosun-proxy",
             "static_configs": [{"targets": [f"127.0.0.1:{cluster.proxy_metrics_port}"]}]},
            # bosun's object-state series, as an outside Prometheus scrapes them.
            {"job_name": "kube-state-metrics", "metrics_path": "/metrics/kube-state",
             "static_configs": [{"targets": [f"127.0.0.1:{cluster.console_port}"]}]},
            {"job_name": "kubernetes-pods",
             "static_configs": [{"targets": [f"{pod_ip}:8080"],
                                 "labels": {"namespace": "default", "pod": "demo", "node": node}}]},
        ] + [
            {"job_name": job, "scheme": "https", "metrics_path": f"/metrics/{job}",
             "authorization": {"credentials_file": os.path.join(pki, "kubelet-token")},
             "tls_config": {"ca_file": os.path.join(pki, "ca.crt")},
             "static_configs": [{"targets": [f"127.0.0.1:{cluster.kubelet_port}"],
                                 "labels": {"instance": node, "node": node}}]}
            for job in ("cadvisor", "node")
        ],
    }
    # JSON is YAML.
    with open(path, "w") as f:
        json.dump(cfg, f)


@pytest.fixture(scope="module")
def prometheus(cluster):
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    pod_ip = start_demo(cluster)
    work = tempfile.mkdtemp(prefix="bosun-e2e-prom-")
    cfg = os.path.join(work, "prometheus.yml")
    prometheus_config(cluster, pod_ip, cfg)
    port = free_port()
    log = open(os.path.join(work, "prometheus.log"), "wb")
    proc = subprocess.Popen([
        exe, f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(work, 'data')}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
    ], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(cluster, port), timeout=60, what="prometheus answering")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def by_labels(data):
    out = {}
    for r in data["result"]:
        out[tuple(sorted(r["metric"].items()))] = float(r["value"][1])
    return out


# (query, relative tolerance, absolute tolerance)
COMPARED = [
    ('rate(demo_requests_total{code="200"}[30s])', 0.05, 0.0),
    ("sum by (code) (rate(demo_requests_total[30s]))", 0.05, 0.0),
    ("sum without (instance) (increase(demo_requests_total[40s]))", 0.05, 0.0),
    ("histogram_quantile(0.75, sum by (le) (rate(demo_latency_seconds_bucket[30s])))", 0.05, 0.0),
    ("demo_latency_seconds_sum / demo_latency_seconds_count", 0.02, 0.0),
    ('demo_requests_total{code="500"} offset 10s > 0', 0.1, 2.0),
    ("sum by (job) (up)", 0.0, 0.0),
    ('container_memory_working_set_bytes{namespace="default",pod="demo",container="app"}', 0.15, 0.0),
    ('sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{pod="demo"}[30s]))', 0.35, 0.05),
    ('sum(rate(bosun_gateway_requests_total{route="ingress/default/demo"}[30s]))', 0.15, 1.0),
    ('histogram_quantile(0.5, sum by (le) (rate(bosun_gateway_request_duration_seconds_bucket{route="ingress/default/demo"}[30s]))) >= 0', 1.0, 0.05),
    ("count(node_cpu_seconds_total{mode=\"idle\"})", 0.0, 0.0),
    ('count by (verb) (apiserver_request_duration_seconds_count{resource="nodes",verb=~"GET|LIST"})', 0.0, 0.0),
    ("node_memory_MemTotal_bytes", 0.0, 0.0),
    ('count_values("celsius", demo_temperature_celsius)', 0.0, 0.0),
    ('count_values("phase_on", kube_pod_status_phase{pod="demo"})', 0.0, 0.0),
    ('kube_pod_container_status_restarts_total{pod="demo"}', 0.0, 0.0),
    ('kube_node_status_condition{condition="Ready",status="true"}', 0.0, 0.0),
]


def test_same_answers_as_prometheus(cluster, prometheus):
    traffic = Traffic(cluster.http_port)
    traffic.start()
    try:
        # About a minute of samples on both sides.
        time.sleep(65)
        t = time.time() - 3
        failures = []
        for q, rel, absolute in COMPARED:
            ours = query(cluster, q, t)
            theirs = query(cluster, q, t, port=prometheus)
            assert ours["resultType"] == theirs["resultType"] == "vector", (q, ours, theirs)
            a, b = by_labels(ours), by_labels(theirs)
            if not b:
                failures.append(f"{q}: Prometheus has no result (test setup?)")
                continue
            if set(a) != set(b):
                failures.append(f"{q}: series differ:\n  bosun      {sorted(a)}\n  prometheus {sorted(b)}")
                continue
            for k in b:
                print(f"{q} {dict(k).get('pod') or dict(k).get('job') or ''}: bosun {a[k]:.6g} prometheus {b[k]:.6g}")
                if abs(a[k] - b[k]) > max(rel * abs(b[k]), absolute):
                    failures.append(f"{q} {dict(k)}: bosun {a[k]} vs prometheus {b[k]}")
        assert not failures, "\n".join(failures)
        assert traffic.ok > 100, "gateway traffic flowed"
        # A range query over the last half minute (both had samples for its whole window):
        # the same steps, the same values.
        q = 'rate(demo_requests_total{code="200"}[20s])'
        p = {"query": q, "start": f"{t - 30:.3f}", "end": f"{t:.3f}", "step": "5"}
        s1, ours = api(cluster, "/api/v1/query_range", p)
        s2, theirs = api(cluster, "/api/v1/query_range", p, port=prometheus)
        assert s1 == s2 == 200
        ov, tv = ours["data"]["result"][0]["values"], theirs["data"]["result"][0]["values"]
        assert [x[0] for x in ov] == [x[0] for x in tv]
        for (_, x), (_, y) in zip(ov, tv):
            assert abs(float(x) - float(y)) <= 0.05 * float(y), (ov, tv)
    finally:
        traffic.stop.set()
        traffic.join(timeout=10)


GRAFANA_HEADERS = {
    "User-Agent": "Grafana/11.3.0",
    "Accept": "application/json, text/plain, */*",
    "X-Grafana-Org-Id": "1",
}


def test_grafana_data_source_requests(cluster):
    """What Grafana's Prometheus data source sends: 'Save & test' (buildinfo, then an
    instant query of 1+1 as a form POST), then the query editor's metric and label
    look-ups and a panel's range query."""
    h = GRAFANA_HEADERS
    wait_for(lambda: api(cluster, "/api/v1/query", {"query": "up"}, headers=h)[1]["data"]["result"],
             timeout=30, what="a first scrape")
    status, body = api(cluster, "/api/v1/status/buildinfo", headers=h)
    assert status == 200 and body["status"] == "success"
    assert body["data"]["version"].startswith("2.")
    now = time.time()
    status, body = api(cluster, "/api/v1/query", {"query": "1+1", "time": f"{now:.3f}"},
                       method="POST", headers=h)
    assert status == 200, body
    assert body["data"]["resultType"] == "scalar"
    assert body["data"]["result"][1] == "2"
    assert abs(body["data"]["result"][0] - now) < 1
    # The query editor's look-ups.
    window = {"start": f"{now - 3600:.0f}", "end": f"{now:.0f}"}
    status, body = api(cluster, "/api/v1/label/__name__/values", window, headers=h)
    assert status == 200 and "up" in body["data"]
    assert "container_cpu_usage_seconds_total" in body["data"]
    assert "node_cpu_seconds_total" in body["data"]
    status, body = api(cluster, "/api/v1/labels", window, method="POST", headers=h)
    assert status == 200 and {"job", "instance", "__name__"} <= set(body["data"])
    status, body = api(cluster, "/api/v1/series", {**window, "match[]": ["up", 'node_load1{job="node"}']},
                       method="POST", headers=h)
    assert status == 200
    assert {s["__name__"] for s in body["data"]} == {"up", "node_load1"}
    assert all(s["job"] == "node" for s in body["data"] if s["__name__"] == "node_load1")
    status, body = api(cluster, "/api/v1/label/job/values", {**window, "match[]": "up"}, headers=h)
    assert status == 200
    assert {"cadvisor", "node", "bosun-gateway", "bosun-proxy", "bosun-apiserver"} <= set(body["data"])
    # The API server counts requests under Kubernetes' names, the in-process client's too.
    status, body = api(cluster, "/api/v1/query", {
        "query": 'sum by (verb) (apiserver_request_total{resource="pods",code="200"})'}, headers=h)
    assert status == 200
    verbs = {r["metric"]["verb"] for r in body["data"]["result"]}
    assert {"LIST", "WATCH"} <= verbs, body
    status, body = api(cluster, "/api/v1/metadata", headers=h)
    assert status == 200 and body["status"] == "success"
    # A panel: a range query, as a form POST.
    status, body = api(cluster, "/api/v1/query_range", {
        "query": "sum by (job) (up)", "start": f"{now - 60:.0f}", "end": f"{now:.0f}", "step": "15"},
        method="POST", headers=h)
    assert status == 200 and body["data"]["resultType"] == "matrix"
    jobs = {r["metric"]["job"] for r in body["data"]["result"]}
    assert "cadvisor" in jobs
    # Targets, as Prometheus' own UI and Grafana's link show them.
    status, body = api(cluster, "/api/v1/targets", headers=h)
    assert status == 200
    health = {t["scrapePool"]: t["health"] for t in body["data"]["activeTargets"]}
    assert health.get("cadvisor") == "up" and health.get("node") == "up", body
    # Mistakes come back as Prometheus-style errors.
    status, body = api(cluster, "/api/v1/query", {"query": "sum(("}, headers=h)
    assert status == 400 and body["status"] == "error" and body["errorType"] == "bad_data"
    status, body = api(cluster, "/api/v1/query_range", {"query": "up", "start": "10", "end": "5", "step": "1"})
    assert status == 400 and "end" in body["error"]
    status, body = api(cluster, "/api/v1/query", {"query": "up", "time": "yesterday"})
    assert status == 400 and "time" in body["error"]
