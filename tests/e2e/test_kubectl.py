"""The everyday kubectl workflow against a real `bosun up`."""

import json
import subprocess
import urllib.error
import urllib.request

from conftest import wait_for

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      runtimeClassName: process
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        command: ["python3", "-u", "-m", "http.server", "8080"]
        env:
        - {name: GREETING, value: hello}
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
"""


def pods(cluster, selector="app=web"):
    out = cluster.kubectl("get", "pods", "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def running_ready(cluster, n, selector="app=web"):
    ps = [p for p in pods(cluster, selector) if not p["metadata"].get("deletionTimestamp")]
    ok = [p for p in ps if p["status"].get("phase") == "Running"
          and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    return ok if len(ok) == n and len(ps) == n else None


def test_apply_creates_running_pods_with_own_ips(cluster):
    r = cluster.kubectl("apply", "-f", "-", input=WEB)
    assert "deployment.apps/web created" in r.stdout
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=90s")
    ready = wait_for(lambda: running_ready(cluster, 3), what="3 ready pods")
    ips = {p["status"]["podIP"] for p in ready}
    assert len(ips) == 3, ips
    # Every replica listens on 8080 in its own network namespace.
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as r:
            assert r.status == 200
    wide = cluster.kubectl("get", "pods", "-o", "wide").stdout
    header = wide.splitlines()[0].split()
    assert header[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], wide
    assert "IP" in header and "NODE" in header
    assert wide.count("Running") == 3, wide
    assert cluster.node_name in wide


def test_apply_twice_is_idempotent(cluster):
    before = json.loads(cluster.kubectl("get", "deploy", "web", "-o", "json").stdout)["metadata"]
    r = cluster.kubectl("apply", "-f", "-", input=WEB)
    assert "deployment.apps/web unchanged" in r.stdout, r.stdout
    # A patch that changes nothing writes nothing: same resourceVersion and generation.
    cluster.kubectl("patch", "deploy", "web", "--type=merge", "-p", '{"spec":{"replicas":3}}')
    after = json.loads(cluster.kubectl("get", "deploy", "web", "-o", "json").stdout)["metadata"]
    assert (after["resourceVersion"], after["generation"]) == (before["resourceVersion"], before["generation"])
    rs = json.loads(cluster.kubectl("get", "rs", "-l", "app=web", "-o", "json").stdout)["items"]
    assert len(rs) == 1


def test_get_tables_line_up(cluster):
    out = cluster.kubectl("get", "deploy").stdout.splitlines()
    assert out[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert out[1].split()[:4] == ["web", "3/3", "3", "3"]
    assert out[0].index("READY") == out[1].index("3/3")


def test_set_env_rolls_out_with_zero_unavailable(cluster):
    cluster.kubectl("set", "env", "deploy/web", "GREETING=hi")
    # Watch availability while the rollout runs: with maxUnavailable=0 it never drops.
    watcher = subprocess.Popen(
        ["kubectl", "get", "deploy", "web", "-w", "-o", "jsonpath={.status.availableReplicas}{\"\\n\"}"],
        stdout=subprocess.PIPE, text=True, env={**__import__("os").environ, "KUBECONFIG": cluster.kubeconfig})
    try:
        cluster.kubectl("rollout", "status", "deploy/web", "--timeout=120s")
    finally:
        watcher.terminate()
        seen = watcher.communicate(timeout=10)[0].split()
    assert seen and all(int(x) >= 3 for x in seen if x), seen
    ready = wait_for(lambda: running_ready(cluster, 3), what="3 ready pods after set env")
    for p in ready:
        env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
        assert env["GREETING"] == "hi"
    hist = cluster.kubectl("rollout", "history", "deploy/web").stdout
    assert "1" in hist and "2" in hist


def test_rollout_undo_goes_back_to_revision_1(cluster):
    cluster.kubectl("rollout", "undo", "deploy/web")
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=120s")
    ready = wait_for(lambda: running_ready(cluster, 3), what="3 ready pods after undo")
    for p in ready:
        env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
        assert env["GREETING"] == "hello"
    d = json.loads(cluster.kubectl("get", "deploy", "web", "-o", "json").stdout)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_scale(cluster):
    cluster.kubectl("scale", "deploy/web", "--replicas=1")
    wait_for(lambda: running_ready(cluster, 1), what="scale down to 1")
    cluster.kubectl("scale", "deploy/web", "--replicas=2")
    wait_for(lambda: running_ready(cluster, 2), what="scale up to 2")


def test_logs(cluster):
    p = running_ready(cluster, 2)[0]
    ip = p["status"]["podIP"]
    try:
        urllib.request.urlopen(f"http://{ip}:8080/hello-logs", timeout=5)
    except urllib.error.HTTPError as e:
        assert e.code == 404  # http.server has no such file; the request is logged all the same
    def logged():
        out = cluster.kubectl("logs", p["metadata"]["name"]).stdout
        return "hello-logs" in out
    wait_for(logged, what="request line in kubectl logs")
    # deploy/NAME picks a pod of the deployment.
    out = cluster.kubectl("logs", "deploy/web", "--tail=100").stdout
    assert "GET" in out


def test_killed_pod_process_is_replaced(cluster):
    before = {p["metadata"]["name"] for p in running_ready(cluster, 2)}
    victim = sorted(before)[0]
    cluster.kubectl("delete", "pod", victim, "--wait=true")
    def replaced():
        now = running_ready(cluster, 2)
        return now and victim not in {p["metadata"]["name"] for p in now}
    wait_for(replaced, what="replacement pod")


def test_delete_cascades(cluster):
    cluster.kubectl("delete", "deploy", "web")
    wait_for(lambda: not pods(cluster) and not json.loads(
        cluster.kubectl("get", "rs", "-l", "app=web", "-o", "json").stdout)["items"],
        what="pods and replicasets gone")
