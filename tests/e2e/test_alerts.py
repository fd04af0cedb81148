"""Alerts on the built-in metrics, end to end.

One `bosun up` scrapes every second, with the built-in crash-loop alert made quick
(`--alert-param crashloop_for=2s`, a 10 s window), a custom rule file (an alerting rule with
templated labels and annotations, and a recording rule) and `--alert-webhook` pointing at a
real HTTP receiver (Python's http.server) in this test.

- A process pod that exits at once goes into CrashLoopBackOff; KubePodCrashLooping fires:
  it is listed at /api/v1/alerts and /api/v1/rules, a Warning Event names it on the Pod,
  and the receiver gets Alertmanager's webhook JSON with status "firing". Once the pod is
  deleted, the receiver gets the same alert "resolved".
- The custom rule fires on a Deployment's kube-state series with its templates filled in,
  and its recording rule's series can be queried.
- A bad rule file stops `bosun up` at once with an error naming the file, group and rule.
"""

import http.server
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

from conftest import Bosun, bosun_bin, free_port, wait_for

RULES = """
groups:
- name: team-rules
  interval: 1s
  rules:
  - alert: TooManyReplicasWanted
    expr: kube_deployment_spec_replicas{job="kube-state-metrics"} > 2
    for: 2s
    labels:
      severity: ticket
      team: "owner-of-{{ $labels.deployment }}"
    annotations:
      summary: "{{ $labels.namespace }}/{{ $labels.deployment }} wants {{ $value }} replicas"
  - record: namespace:kube_deployment_spec_replicas:sum
    expr: sum by (namespace) (kube_deployment_spec_replicas)
"""


class Receiver(http.server.ThreadingHTTPServer):
    """An Alertmanager-webhook receiver that keeps every body it is sent."""

    def __init__(self):
        self.bodies = []
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                with outer.lock:
                    outer.bodies.append((self.headers.get("Content-Type"), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def got(self):
        with self.lock:
            return list(self.bodies)


class AlertsBosun(Bosun):
    def __init__(self, rules_file, webhook):
        super().__init__("alerts")
        self.rules_file = rules_file
        self.webhook = webhook

    def args(self):
        return super().args() + [
            "--metrics-scrape-interval", "1s",
            "--alert-param", "crashloop_for=2s",
            "--alert-param", "crashloop_window=10s",
            "--alert-rules", self.rules_file,
            "--alert-webhook", self.webhook,
        ]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.shutdown()


@pytest.fixture(scope="module")
def cluster(request, receiver):
    work = tempfile.mkdtemp(prefix="bosun-e2e-rules-")
    path = os.path.join(work, "rules.yaml")
    with open(path, "w") as f:
        f.write(RULES)
    b = AlertsBosun(path, f"http://127.0.0.1:{receiver.server_address[1]}/hook")
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()
    shutil.rmtree(work, ignore_errors=True)


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(cluster, path, params=None):
    url = f"http://127.0.0.1:{cluster.console_port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with NO_PROXY.open(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def alerts(cluster, name):
    return [a for a in api(cluster, "/api/v1/alerts")["alerts"]
            if a["labels"].get("alertname") == name]


def apply(cluster, obj):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def test_crash_looping_pod_fires_event_and_webhook(cluster, receiver):
    apply(cluster, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crasher"},
        "spec": {"runtimeClassName": "process", "restartPolicy": "Always",
                 "containers": [{"name": "app", "image": "none",
                                 "command": ["sh", "-c", "echo starting; exit 3"]}]},
    })

    def firing():
        return [a for a in alerts(cluster, "KubePodCrashLooping")
                if a["labels"].get("pod") == "crasher" and a["state"] == "firing"]
    a = wait_for(firing, timeout=120, interval=1, what="KubePodCrashLooping firing")[0]
    assert a["labels"]["namespace"] == "default"
    assert a["labels"]["container"] == "app"
    assert a["labels"]["severity"] == "warning"
    assert "default/crasher (app)" in a["annotations"]["description"]
    # The rules endpoint shows the built-in rule firing, with its query.
    rules = api(cluster, "/api/v1/rules", {"type": "alert"})
    crash = [r for g in rules["groups"] for r in g["rules"] if r["name"] == "KubePodCrashLooping"]
    assert crash and crash[0]["state"] == "firing" and crash[0]["health"] == "ok"
    assert "CrashLoopBackOff" in crash[0]["query"]
    # ALERTS is a series like any other.
    q = api(cluster, "/api/v1/query",
            {"query": 'ALERTS{alertname="KubePodCrashLooping",pod="crasher",alertstate="firing"}'})
    assert len(q["result"]) == 1

    # A Warning Event on the Pod.
    def event():
        r = cluster.kubectl("get", "events", "-o", "json", "--field-selector",
                            "involvedObject.name=crasher,reason=KubePodCrashLooping")
        return [e for e in json.loads(r.stdout)["items"] if e["type"] == "Warning"]
    ev = wait_for(event, timeout=30, what="alert Event")[0]
    assert ev["involvedObject"]["kind"] == "Pod"
    assert ev["involvedObject"]["uid"]
    assert ev["message"].startswith("Firing: Pod default/crasher (app)")
    assert ev["source"]["component"] == "bosun-alerts"

    # The webhook receiver got Alertmanager's JSON.
    def hook(status):
        out = []
        for ctype, b in receiver.got():
            for x in b.get("alerts", []):
                if x["labels"].get("pod") == "crasher" and x["status"] == status:
                    out.append((ctype, b, x))
        return out
    ctype, body, x = wait_for(lambda: hook("firing"), timeout=30, what="firing webhook")[0]
    assert ctype == "application/json"
    assert body["version"] == "4" and body["status"] == "firing"
    assert body["groupLabels"] == {"alertname": "KubePodCrashLooping"}
    assert body["commonLabels"]["alertname"] == "KubePodCrashLooping"
    assert x["endsAt"] == "0001-01-01T00:00:00Z" and x["startsAt"] > "2020"
    assert x["fingerprint"]

    # Gone: the alert resolves, and the receiver hears of it.
    cluster.kubectl("delete", "pod", "crasher", "--wait=true", "--timeout=60s")
    _, body, x = wait_for(lambda: hook("resolved"), timeout=90, interval=1,
                          what="resolved webhook")[0]
    assert x["endsAt"] >= x["startsAt"]
    assert not [a for a in alerts(cluster, "KubePodCrashLooping") if a["labels"].get("pod") == "crasher"]
    r = cluster.kubectl("get", "events", "-o", "json", "--field-selector",
                        "involvedObject.name=crasher,reason=KubePodCrashLooping")
    assert any(e["type"] == "Normal" and e["message"].startswith("Resolved:")
               for e in json.loads(r.stdout)["items"])


def test_custom_rule_file(cluster, receiver):
    apply(cluster, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "wide"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "wide"}},
                 "template": {"metadata": {"labels": {"app": "wide"}},
                              "spec": {"runtimeClassName": "process",
                                       "containers": [{"name": "app", "image": "none",
                                                       "command": ["sleep", "3600"]}]}}},
    })

    def firing():
        return [a for a in alerts(cluster, "TooManyReplicasWanted")
                if a["labels"].get("deployment") == "wide" and a["state"] == "firing"]
    a = wait_for(firing, timeout=60, interval=1, what="custom alert firing")[0]
    assert a["labels"]["team"] == "owner-of-wide"
    assert a["labels"]["severity"] == "ticket"
    assert a["annotations"]["summary"] == "default/wide wants 3 replicas"
    rules = api(cluster, "/api/v1/rules")
    group = [g for g in rules["groups"] if g["name"] == "team-rules"][0]
    assert group["interval"] == 1 and group["file"].endswith("rules.yaml")
    assert [r["type"] for r in group["rules"]] == ["alerting", "recording"]
    # The recording rule's series.
    rec = wait_for(lambda: api(cluster, "/api/v1/query", {
        "query": 'namespace:kube_deployment_spec_replicas:sum{namespace="default"}'})["result"],
        timeout=30, what="recorded series")
    assert float(rec[0]["value"][1]) >= 3
    # An Event on the Deployment.
    r = wait_for(lambda: json.loads(cluster.kubectl(
        "get", "events", "-o", "json", "--field-selector",
        "involvedObject.kind=Deployment,involvedObject.name=wide,reason=TooManyReplicasWanted").stdout)["items"],
        timeout=30, what="Event on the Deployment")
    assert "default/wide wants 3 replicas" in r[0]["message"]
    # Scaled down: resolved.
    cluster.kubectl("scale", "deployment", "wide", "--replicas=1")
    wait_for(lambda: not alerts(cluster, "TooManyReplicasWanted"), timeout=30, interval=1,
             what="custom alert resolved")
    cluster.kubectl("delete", "deployment", "wide")


def test_kube_state_endpoint(cluster):
    """The kube-state-metrics-style series are served for any Prometheus to scrape."""
    with NO_PROXY.open(f"http://127.0.0.1:{cluster.console_port}/metrics/kube-state", timeout=10) as r:
        text = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/plain")
    assert f'kube_node_status_condition{{node="{cluster.node_name}",condition="Ready",status="true"}} 1' in text
    assert "# TYPE kube_pod_container_status_restarts_total counter" in text
    up = api(cluster, "/api/v1/query", {"query": 'up{job="kube-state-metrics"}'})["result"]
    assert up and up[0]["value"][1] == "1"


@pytest.mark.parametrize("text,expect", [
    ("groups:\n- name: broken\n  rules:\n  - alert: HalfWritten\n    expr: sum(rate(x[5m])\n",
     'group "broken": rule 1 (alert "HalfWritten"): expr:'),
    ("groups:\n- name: g\n  rules:\n  - alert: Ok\n    expr: up\n  - alert: BadFor\n    expr: up\n    for: soon\n",
     'group "g": rule 2 (alert "BadFor"): for:'),
    ("groups:\n- name: g\n  rules:\n  - alert: Tpl\n    expr: up\n    annotations:\n      x: '{{ $labels.pod | frobnicate }}'\n",
     'rule 1 (alert "Tpl"): annotations.x'),
])
def test_bad_rule_file_is_refused(text, expect):
    work = tempfile.mkdtemp(prefix="bosun-e2e-badrules-")
    path = os.path.join(work, "bad.yaml")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([bosun_bin(), "up", "--data-dir", os.path.join(work, "data"),
                        "--listen", f"127.0.0.1:{free_port()}",
                        "--console-listen", f"127.0.0.1:{free_port()}",
                        "--alert-rules", path],
                       capture_output=True, text=True, timeout=30)
    try:
        assert r.returncode != 0
        assert path in r.stderr and expect in r.stderr, r.stderr
        # Nothing was started or written.
        assert not os.path.exists(os.path.join(work, "data", "pki"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_unknown_alert_parameter_is_refused():
    work = tempfile.mkdtemp(prefix="bosun-e2e-badrules-")
    r = subprocess.run([bosun_bin(), "up", "--data-dir", work, "--alert-param", "crashloop_fro=1m"],
                       capture_output=True, text=True, timeout=30)
    shutil.rmtree(work, ignore_errors=True)
    assert r.returncode != 0
    assert "crashloop_fro: no such parameter" in r.stderr and "crashloop_for" in r.stderr, r.stderr
