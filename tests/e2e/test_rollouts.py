"""Progressive delivery with Argo Rollouts' `Rollout` (argoproj.io/v1alpha1) on a real bosun:
a canary that returns 5% errors is aborted by its background analysis (bosun's own metrics)
and traffic returns fully to the stable version; a good version is promoted step by step,
with the weights observed in the actual traffic split through the node proxy and the
gateway; header routing of testers; blue/green preview then promote; kubectl columns,
conditions, Events and validation. Load is generated here, bounded in count and time."""

import http.client
import json
import threading
import time

import pytest

from conftest import Bosun, wait_for

# GET answers "VERSION POD"; with ERROR_EVERY=N every Nth request of a pod gets a 500.
APP = r'''
import http.server, os, threading
VERSION = os.environ.get("VERSION", "?")
EVERY = int(os.environ.get("ERROR_EVERY", "0"))
lock = threading.Lock()
n = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with lock:
            n[0] += 1
            k = n[0]
        bad = EVERY > 0 and self.path != "/healthz" and k % EVERY == 0
        b = (VERSION + " " + os.environ.get("HOSTNAME", "?") + "\n").encode()
        self.send_response(500 if bad else 200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''

# The canary's share of 5xx answers over the last 10 s, from the node proxy's metrics.
ERROR_QUERY = (
    'sum(rate(bosun_proxy_upstream_requests_total{namespace="default",service="{{args.service}}",'
    'status=~"5.."}[10s])) / sum(rate(bosun_proxy_upstream_requests_total{namespace="default",'
    'service="{{args.service}}"}[10s]))'
)


class RolloutBosun(Bosun):
    def args(self):
        return super().args() + ["--metrics-scrape-interval", "1s"]


@pytest.fixture(scope="module")
def cluster(request):
    b = RolloutBosun("rollouts")
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


def template(app, version, error_every=0):
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "runtimeClassName": "process",
            "containers": [{
                "name": "app",
                "command": ["python3", "-c", APP],
                "env": [{"name": "VERSION", "value": version},
                        {"name": "ERROR_EVERY", "value": str(error_every)}],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
            }],
        },
    }


def service(name, app):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def canary_manifests(version="v1", error_every=0):
    analysis = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "error-rate"},
        "spec": {
            "args": [{"name": "service"}],
            "metrics": [{
                "name": "error-rate", "interval": "2s", "failureLimit": 1,
                "successCondition": "default(result[0], 0) <= 0.01",
                "provider": {"prometheus": {"query": ERROR_QUERY}},
            }],
        },
    }
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("web", version, error_every),
            "strategy": {"canary": {
                "stableService": "web", "canaryService": "web-canary",
                "scaleDownDelaySeconds": 2, "abortScaleDownDelaySeconds": 2,
                "analysis": {"templates": [{"templateName": "error-rate"}], "startingStep": 2,
                             "args": [{"name": "service", "value": "web-canary"}]},
                "steps": [
                    {"setHeaderRoute": {"name": "testers", "match": [
                        {"headerName": "x-canary", "headerValue": {"exact": "yes"}}]}},
                    {"setWeight": 20},
                    {"pause": {}},
                    {"setWeight": 60},
                    {"pause": {"duration": "45s"}},
                ],
            }},
        },
    }
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
               "spec": {"rules": [{"host": "web.local", "http": {"paths": [{
                   "path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        service("web", "web"), service("web-canary", "web"), analysis, rollout, ingress]})


def get_json(cluster, *args):
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def status(cluster, name="web"):
    return get_json(cluster, "rollout", name).get("status", {})


def set_version(cluster, name, app, version, error_every=0):
    patch = {"spec": {"template": template(app, version, error_every)}}
    cluster.kubectl("patch", "rollout", name, "--type=merge", "-p", json.dumps(patch))


def get(host, port, headers=None, timeout=10):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", "/", headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode().split(" ")[0]
    finally:
        c.close()


def sample(host, port, n, headers=None):
    """n requests; the count of answers per version (status 200 only) and of failures."""
    seen = {}
    failed = 0
    for _ in range(n):
        try:
            code, version = get(host, port, headers)
        except OSError:
            code, version = 0, None
        if code == 200:
            seen[version] = seen.get(version, 0) + 1
        else:
            failed += 1
    return seen, failed


class Load:
    """Requests from a few threads until stopped or `limit` seconds pass; each answer is
    recorded as (time, status, version)."""

    def __init__(self, host, port, threads=3, limit=180, headers=None):
        self.host, self.port, self.limit, self.headers = host, port, limit, headers
        self.stop_flag = threading.Event()
        self.answers = []
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
                code, version = get(self.host, self.port, self.headers)
            except OSError:
                code, version = 0, None
            with self.lock:
                self.answers.append((time.time(), code, version))
            time.sleep(0.01)

    def between(self, t0, t1):
        with self.lock:
            return [a for a in self.answers if t0 <= a[0] < t1]

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)


def test_crds_columns_and_validation(cluster):
    names = cluster.kubectl("get", "crd", "-o", "name").stdout
    for crd in ("rollouts.argoproj.io", "analysistemplates.argoproj.io", "analysisruns.argoproj.io"):
        assert crd in names, names
    r = cluster.kubectl("api-resources", "--api-group=argoproj.io").stdout
    assert "rollouts" in r and "ro" in r, r
    bad = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "bad"},
           "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("x", "v1"),
                    "strategy": {"canary": {"steps": [{"setWeight": 150}]}}}}
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "setWeight" in r.stderr, r.stderr
    del bad["spec"]["strategy"]
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.strategy" in r.stderr, r.stderr
    # Valid to the schema but not to the controller: InvalidSpec naming the field.
    bad["spec"]["strategy"] = {"canary": {"steps": [{"setWeight": 10, "pause": {}}]}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(bad))
    wait_for(lambda: "spec.strategy.canary.steps[0]" in (status(cluster, "bad").get("message") or ""),
             timeout=30, what="InvalidSpec message")
    assert status(cluster, "bad")["phase"] == "Degraded"
    cluster.kubectl("delete", "rollout", "bad")


def test_canary_abort_then_promote_step_by_step(cluster):
    cluster.kubectl("apply", "-f", "-", input=canary_manifests("v1"))
    wait_for(lambda: status(cluster).get("phase") == "Healthy", timeout=90, what="v1 Healthy")
    st = status(cluster)
    assert st["stableRS"] and st["currentStepIndex"] == 5
    out = cluster.kubectl("get", "rollout", "web").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "DESIRED", "CURRENT", "UP-TO-DATE", "AVAILABLE", "PHASE", "STEP",
                      "WEIGHT", "AGE"], out
    assert "Healthy" in out
    vip = get_json(cluster, "service", "web")["spec"]["clusterIP"]
    wait_for(lambda: sample(vip, 80, 5)[0].get("v1") == 5, timeout=30, what="v1 serving on the VIP")

    # --- a bad canary (every 20th request fails: 5%) is aborted by the analysis ---
    load = Load(vip, 80).start()
    try:
        time.sleep(1)
        t0 = time.time()
        set_version(cluster, "web", "web", "v2", error_every=20)
        wait_for(lambda: status(cluster).get("phase") == "Degraded", timeout=120, interval=0.5,
                 what="the analysis aborting the bad canary")
        t_abort = time.time()
        st = status(cluster)
        # Traffic back on v1 only.
        wait_for(lambda: status(cluster)["canary"]["weights"]["canary"]["weight"] == 0, timeout=10,
                 what="weight 0")
        time.sleep(3)
        t_settled = time.time()
        time.sleep(4)
        t_end = time.time()
    finally:
        load.stop()
    during = load.between(t0, t_settled)
    after = load.between(t_settled, t_end)
    failed = [a for a in during if a[1] != 200]
    v2 = [a for a in during if a[2] == "v2"]
    print(f"bad canary: {len(during)} requests from update to settled, {len(v2)} answered by v2, "
          f"{len(failed)} failed; aborted {t_abort - t0:.1f}s after the update")
    assert v2, "the canary never received traffic"
    assert failed, "the bad canary answered no errors (the test could not have seen a failure)"
    assert after and all(a[1] == 200 and a[2] == "v1" for a in after), \
        f"after the abort: {sorted(set((a[1], a[2]) for a in after))}"
    assert st["abort"] is True
    assert st["message"].startswith("RolloutAborted"), st["message"]
    prog = [c for c in st["conditions"] if c["type"] == "Progressing"][0]
    assert (prog["status"], prog["reason"]) == ("False", "RolloutAborted"), prog
    run = st["canary"]["currentBackgroundAnalysisRunStatus"]
    assert run["status"] == "Failed", run
    ar = get_json(cluster, "analysisrun", run["name"])
    assert ar["status"]["phase"] == "Failed"
    assert ar["status"]["metricResults"][0]["failed"] >= 2
    ev = cluster.kubectl("get", "events", "--field-selector", "reason=RolloutAborted", "-o", "json").stdout
    assert any(e["involvedObject"]["name"] == "web" for e in json.loads(ev)["items"]), ev
    # The canary's pods go after abortScaleDownDelaySeconds.
    canary_hash = st["currentPodHash"]
    wait_for(lambda: get_json(cluster, "rs", f"web-{canary_hash}")["spec"]["replicas"] == 0, timeout=30,
             what="canary scaled down")
    assert get(vip, 80) == (200, "v1")

    # --- a good version goes step by step ---
    # (Its analysis reads the same canary Service's series: let v2's errors leave the window.)
    time.sleep(8)
    set_version(cluster, "web", "web", "v3")
    wait_for(lambda: status(cluster).get("currentStepIndex") == 2 and status(cluster).get("phase") == "Paused",
             timeout=90, what="paused at step 2 (weight 20)")
    st = status(cluster)
    assert st["canary"]["weights"]["canary"]["weight"] == 20
    assert not st.get("abort")
    # Testers reach the canary by header, through the gateway and the node proxy.
    seen, failed = sample("127.0.0.1", cluster.http_port, 20, {"Host": "web.local", "x-canary": "yes"})
    assert seen == {"v3": 20} and failed == 0, seen
    seen, _ = sample(vip, 80, 10, {"x-canary": "yes"})
    assert seen == {"v3": 10}, seen
    # Weight 20 in the actual split, per request, on both paths.
    seen, failed = sample(vip, 80, 300)
    share = seen.get("v3", 0) / 300
    print(f"weight 20 through the node proxy: {seen}")
    assert failed == 0 and 0.10 <= share <= 0.32, seen
    seen, failed = sample("127.0.0.1", cluster.http_port, 200, {"Host": "web.local"})
    print(f"weight 20 through the gateway: {seen}")
    assert failed == 0 and 0.08 <= seen.get("v3", 0) / 200 <= 0.34, seen
    # Still paused: no step moves without a promote.
    time.sleep(2)
    assert status(cluster)["currentStepIndex"] == 2
    out = cluster.kubectl("get", "rollout", "web").stdout
    assert "Paused" in out and " 20 " in out, out
    # Promote (the CLI sends the status patch of `kubectl argo rollouts promote`).
    r = cluster.cli("rollout", "promote", "web")
    assert "promoted" in r.stdout
    wait_for(lambda: status(cluster).get("currentStepIndex") == 4, timeout=60, what="step 4 (weight 60)")
    seen, failed = sample(vip, 80, 200)
    print(f"weight 60 through the node proxy: {seen}")
    assert status(cluster)["currentStepIndex"] == 4, "the timed pause ended while sampling"
    assert failed == 0 and 0.45 <= seen.get("v3", 0) / 200 <= 0.75, seen
    # The timed pause ends by itself; then v3 is stable and takes everything.
    wait_for(lambda: status(cluster).get("phase") == "Healthy" and
             status(cluster).get("stableRS") == status(cluster).get("currentPodHash"),
             timeout=90, what="promoted")
    seen, failed = sample(vip, 80, 50)
    assert seen == {"v3": 50} and failed == 0, seen
    split = get_json(cluster, "service", "web")["metadata"].get("annotations", {})
    assert "rollouts.bosun.dev/traffic-split" not in split, split
    ev = cluster.kubectl("get", "events", "--field-selector", "reason=RolloutCompleted", "-o", "json").stdout
    assert json.loads(ev)["items"], ev


def test_blue_green_preview_then_promote(cluster):
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "bg"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "bg"}},
                 "template": template("bg", "blue"),
                 "strategy": {"blueGreen": {"activeService": "bg-active", "previewService": "bg-preview",
                                            "autoPromotionEnabled": False, "scaleDownDelaySeconds": 1}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        service("bg-active", "bg"), service("bg-preview", "bg"), rollout]}))
    wait_for(lambda: status(cluster, "bg").get("phase") == "Healthy", timeout=90, what="blue Healthy")
    active = get_json(cluster, "service", "bg-active")["spec"]["clusterIP"]
    preview = get_json(cluster, "service", "bg-preview")["spec"]["clusterIP"]
    wait_for(lambda: sample(active, 80, 3)[0] == {"blue": 3}, timeout=30, what="blue on active")
    set_version(cluster, "bg", "bg", "green")
    wait_for(lambda: status(cluster, "bg").get("phase") == "Paused", timeout=90, what="green in preview")
    wait_for(lambda: sample(preview, 80, 5)[0] == {"green": 5}, timeout=30, what="green on preview")
    assert sample(active, 80, 10)[0] == {"blue": 10}
    # Promote with kubectl alone, as the Argo plugin does it.
    cluster.kubectl("patch", "rollout", "bg", "--subresource=status", "--type=merge",
                    "-p", '{"status":{"pauseConditions":null}}')
    wait_for(lambda: status(cluster, "bg").get("phase") == "Healthy", timeout=60, what="green promoted")
    wait_for(lambda: sample(active, 80, 5)[0] == {"green": 5}, timeout=30, what="green on active")
    st = status(cluster, "bg")
    assert st["blueGreen"]["activeSelector"] == st["currentPodHash"]
    # Blue's pods go after scaleDownDelaySeconds.
    wait_for(lambda: sum(rs["spec"]["replicas"] for rs in get_json(cluster, "rs")["items"]
                         if rs["metadata"]["labels"].get("app") == "bg") == 1,
             timeout=30, what="blue scaled down")
