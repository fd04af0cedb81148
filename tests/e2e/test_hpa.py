"""HorizontalPodAutoscaler: a CPU-bound process Deployment scales up under a bounded load
generated here and back down to minReplicas after the scale-down stabilization window;
`kubectl autoscale`, `kubectl get hpa`, conditions, Events and validation."""

import json
import threading
import time
import urllib.request

import pytest

from conftest import Bosun, wait_for

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# GET /?ms=N spins the CPU for N milliseconds, then answers with the pod name.
BURN_SERVER = r'''
import http.server, os, time, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        end = time.process_time() + int(q.get("ms", ["0"])[0]) / 1000.0
        while time.process_time() < end:
            pass
        b = (os.environ.get("HOSTNAME", "?") + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''

SYNC = "2s"


class HpaBosun(Bosun):
    def args(self):
        return super().args() + ["--horizontal-pod-autoscaler-sync-period", SYNC]


@pytest.fixture(scope="module")
def cluster(request):
    b = HpaBosun("hpa")
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


def manifests():
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "burn"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "burn"}},
            "template": {
                "metadata": {"labels": {"app": "burn"}},
                "spec": {
                    "runtimeClassName": "process",
                    "containers": [{
                        "name": "burn",
                        "command": ["python3", "-c", BURN_SERVER],
                        "ports": [{"containerPort": 8080}],
                        "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                           "periodSeconds": 1},
                    }],
                },
            },
        },
    }
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "burn"},
        "spec": {"selector": {"app": "burn"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deploy, svc]})


def get_json(cluster, *args):
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def replicas(cluster):
    return get_json(cluster, "deployment", "burn")["spec"]["replicas"]


def condition(hpa, type_):
    for c in hpa.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


class Load:
    """Requests to the Service VIP from a few threads until stopped or `limit` seconds pass,
    recording which pods answered and when each answered first."""

    def __init__(self, url, threads=2, burn_ms=60, pause=0.03, limit=150):
        self.url, self.burn_ms, self.pause, self.limit = url, burn_ms, pause, limit
        self.stop_flag = threading.Event()
        self.first_seen = {}
        self.ok = self.failed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def start(self):
        self.started = time.time()
        for t in self.threads:
            t.start()
        return self

    def run(self):
        while not self.stop_flag.is_set() and time.time() - self.started < self.limit:
            try:
                with OPENER.open(f"{self.url}/?ms={self.burn_ms}", timeout=10) as r:
                    pod = r.read().decode().strip()
                with self.lock:
                    self.ok += 1
                    self.first_seen.setdefault(pod, time.time())
            except Exception:
                with self.lock:
                    self.failed += 1
                time.sleep(0.2)
            time.sleep(self.pause)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)


def test_validation_names_the_field(cluster):
    bad = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "bad"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                    "minReplicas": 3, "maxReplicas": 2}}
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0
    assert "spec.maxReplicas" in r.stderr and "must be greater than or equal to `minReplicas`" in r.stderr, r.stderr
    # Scaling to zero needs an Object or External metric (HPAScaleToZero).
    bad["spec"].update(minReplicas=0, maxReplicas=2)
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.metrics" in r.stderr, r.stderr
    # Defaults: minReplicas 1 and CPU at 80%.
    del bad["spec"]["minReplicas"]
    cluster.kubectl("create", "-f", "-", input=json.dumps(bad))
    hpa = get_json(cluster, "hpa", "bad")
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    # The target does not exist: AbleToScale=False FailedGetScale.
    wait_for(lambda: condition(get_json(cluster, "hpa", "bad"), "AbleToScale").get("reason") == "FailedGetScale",
             timeout=30, what="FailedGetScale")
    cluster.kubectl("delete", "hpa", "bad")


def test_cpu_scale_up_and_down(cluster):
    cluster.kubectl("apply", "-f", "-", input=manifests())
    cluster.kubectl("rollout", "status", "deployment/burn", "--timeout=90s")
    # `kubectl autoscale` creates the HPA; a short scale-down window is patched in.
    cluster.kubectl("autoscale", "deployment", "burn", "--cpu-percent=50", "--min=1", "--max=3")
    cluster.kubectl("patch", "hpa", "burn", "--type=merge", "-p",
                    json.dumps({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 8}}}}))
    hpa = get_json(cluster, "hpa", "burn")
    assert hpa["spec"]["behavior"]["scaleUp"]["policies"][0] == {"type": "Pods", "value": 4, "periodSeconds": 15}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 8

    # Idle: metrics are read and nothing changes.
    def idle_metrics():
        h = get_json(cluster, "hpa", "burn")
        cur = h.get("status", {}).get("currentMetrics") or []
        return condition(h, "ScalingActive").get("status") == "True" and cur and \
            cur[0]["resource"]["current"].get("averageUtilization") is not None
    wait_for(idle_metrics, timeout=60, what="ScalingActive with a current utilization")
    out = cluster.kubectl("get", "hpa", "burn").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"], out
    assert "Deployment/burn" in out and "cpu: " in out and "%/50%" in out, out
    assert replicas(cluster) == 1

    vip = get_json(cluster, "service", "burn")["spec"]["clusterIP"]
    load = Load(f"http://{vip}:80").start()
    try:
        wait_for(lambda: replicas(cluster) >= 2, timeout=90, interval=0.5, what="scale up")
        t_scaled = time.time()
        # The new pods serve: more than one pod answers.
        wait_for(lambda: len(load.first_seen) >= 2, timeout=60, interval=0.5, what="a second pod serving")
        print(f"load start -> scaled: {t_scaled - load.started:.1f}s; "
              f"load start -> second pod serving: {sorted(load.first_seen.values())[1] - load.started:.1f}s")
    finally:
        load.stop()
    assert load.ok > 0
    hpa = get_json(cluster, "hpa", "burn")
    assert hpa["status"]["desiredReplicas"] >= 2
    assert hpa["status"].get("lastScaleTime")
    assert condition(hpa, "AbleToScale")["status"] == "True"
    events = cluster.kubectl("get", "events", "--field-selector", "involvedObject.name=burn,reason=SuccessfulRescale",
                             "-o", "json").stdout
    msgs = [e["message"] for e in json.loads(events)["items"] if e["involvedObject"]["kind"] == "HorizontalPodAutoscaler"]
    assert any(m.startswith("New size: ") and "reason: cpu resource utilization (percentage of request) above target" in m
               for m in msgs), msgs

    # Load gone: back to minReplicas after the 8 s window.
    wait_for(lambda: replicas(cluster) == 1, timeout=120, interval=1, what="scale down to 1")
    events = json.loads(cluster.kubectl("get", "events", "--field-selector",
                                        "involvedObject.name=burn,reason=SuccessfulRescale", "-o", "json").stdout)
    assert any("reason: All metrics below target" in e["message"] for e in events["items"])
    hpa = get_json(cluster, "hpa", "burn")
    assert hpa["status"]["currentReplicas"] >= 1


def test_target_at_zero_disables_scaling_then_resumes(cluster):
    cluster.kubectl("scale", "deployment", "burn", "--replicas=0")
    wait_for(lambda: condition(get_json(cluster, "hpa", "burn"), "ScalingActive").get("reason") == "ScalingDisabled",
             timeout=30, what="ScalingDisabled")
    time.sleep(3)
    assert replicas(cluster) == 0, "the HPA must not fight a target scaled to zero"
    # Someone (the proxy waking it, a person) brings it back: the HPA resumes.
    cluster.kubectl("scale", "deployment", "burn", "--replicas=1")
    wait_for(lambda: condition(get_json(cluster, "hpa", "burn"), "ScalingActive").get("reason") == "ValidMetricFound",
             timeout=60, what="ScalingActive again")


def echo_manifests(name, replicas):
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "containers": [{
                        "name": "web",
                        "command": ["python3", "-c", BURN_SERVER],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                           "periodSeconds": 1},
                    }],
                },
            },
        },
    }
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deploy, svc]})


def test_pods_metric_from_the_node_proxy(cluster):
    cluster.kubectl("apply", "-f", "-", input=echo_manifests("echo", 1))
    cluster.kubectl("rollout", "status", "deployment/echo", "--timeout=90s")
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "echo"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "echo"},
                    "minReplicas": 1, "maxReplicas": 3,
                    "metrics": [{"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
                                                          "target": {"type": "AverageValue", "averageValue": "4"}}}],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hpa))
    vip = get_json(cluster, "service", "echo")["spec"]["clusterIP"]
    # About 15 requests per second, no CPU to speak of.
    load = Load(f"http://{vip}:80", threads=1, burn_ms=0, pause=0.06, limit=60).start()
    try:
        def rps():
            raw = cluster.kubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/"
                                  "pods/*/requests_per_second?labelSelector=app%3Decho").stdout
            items = json.loads(raw)["items"]
            return items and sum(float(i["value"].rstrip("m")) / (1000 if i["value"].endswith("m") else 1)
                                 for i in items) > 4 and items
        items = wait_for(rps, timeout=30, interval=1, what="per-pod requests per second")
        assert items[0]["describedObject"]["kind"] == "Pod"
        wait_for(lambda: get_json(cluster, "deployment", "echo")["spec"]["replicas"] >= 2,
                 timeout=60, interval=0.5, what="scale up on requests per second")
        out = cluster.kubectl("get", "hpa", "echo").stdout
        assert "/4" in out, out
        svc = json.loads(cluster.kubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/"
                                         "services/echo/requests_per_second").stdout)
        assert svc["items"][0]["describedObject"]["kind"] == "Service"
    finally:
        load.stop()
    assert load.ok > 0
    wait_for(lambda: get_json(cluster, "deployment", "echo")["spec"]["replicas"] == 1,
             timeout=60, interval=1, what="scale down once requests stop")


def test_object_metric_scales_to_zero_and_back(cluster):
    cluster.kubectl("apply", "-f", "-", input=echo_manifests("idle", 1))
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "idle"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "idle"},
                    "minReplicas": 0, "maxReplicas": 2,
                    "metrics": [{"type": "Object", "object": {
                        "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "idle"},
                        "metric": {"name": "requests_per_second"},
                        "target": {"type": "Value", "value": "2"}}}],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 3}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hpa))
    # No requests to the Service: zero replicas (HPAScaleToZero).
    wait_for(lambda: get_json(cluster, "deployment", "idle")["spec"]["replicas"] == 0,
             timeout=60, interval=0.5, what="scale to zero")
    h = get_json(cluster, "hpa", "idle")
    assert condition(h, "ScalingActive")["status"] == "True", h["status"]
    # Requests arrive (answered 503 while nothing runs): the Service's rate brings it back.
    vip = get_json(cluster, "service", "idle")["spec"]["clusterIP"]
    load = Load(f"http://{vip}:80", threads=1, burn_ms=0, pause=0.1, limit=60).start()
    try:
        wait_for(lambda: get_json(cluster, "deployment", "idle")["spec"]["replicas"] >= 1,
                 timeout=45, interval=0.5, what="scale up from zero")
    finally:
        load.stop()
