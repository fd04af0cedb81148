"""Services through the node proxy: cluster IP from the host, NodePort, and no failed
request during a rolling update."""

import json
import threading
import time
import urllib.request

from conftest import HOSTNAME_SERVER, wait_for

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def manifest(replicas):
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "runtimeClassName": "process",
                    "containers": [{
                        "name": "web",
                        "command": ["python3", "-c", HOSTNAME_SERVER],
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
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deploy, svc]})


def fetch(url, timeout=5):
    with OPENER.open(url, timeout=timeout) as r:
        return r.status, r.read().decode().strip()


def service_addr(cluster):
    out = json.loads(cluster.kubectl("get", "svc", "web", "-o", "json").stdout)
    return out["spec"]["clusterIP"], out["spec"]["ports"][0]["nodePort"]


def ready_endpoints(cluster):
    r = cluster.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web",
                        "-o", "json", check=False)
    if r.returncode != 0:
        return 0
    n = 0
    for s in json.loads(r.stdout)["items"]:
        for e in s.get("endpoints") or []:
            if (e.get("conditions") or {}).get("ready", True):
                n += 1
    return n


def live_pods(cluster):
    out = json.loads(cluster.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)
    return {p["metadata"]["name"] for p in out["items"]
            if not p["metadata"].get("deletionTimestamp")}


def test_cluster_ip_spreads_over_all_pods(cluster):
    cluster.kubectl("apply", "-f", "-", input=manifest(3))
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=90s", timeout=120)
    wait_for(lambda: ready_endpoints(cluster) == 3, timeout=60, what="3 ready endpoints")
    ip, _ = service_addr(cluster)
    url = f"http://{ip}:80/"
    wait_for(lambda: fetch(url)[0] == 200, timeout=30, what="VIP answering")
    pods = live_pods(cluster)
    seen = {}
    for _ in range(100):
        status, body = fetch(url)
        assert status == 200
        seen[body] = seen.get(body, 0) + 1
        time.sleep(0.02)
    assert set(seen) == pods, f"answers {seen} vs pods {pods}"


def test_node_port(cluster):
    _, node_port = service_addr(cluster)
    status, body = wait_for(lambda: fetch(f"http://127.0.0.1:{node_port}/"), timeout=30,
                            what="NodePort answering")
    assert status == 200 and body.startswith("web-")


def test_no_failed_request_during_rolling_update(cluster):
    cluster.kubectl("scale", "deploy/web", "--replicas=5")
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=90s", timeout=120)
    wait_for(lambda: ready_endpoints(cluster) == 5, timeout=60, what="5 ready endpoints")
    ip, _ = service_addr(cluster)
    url = f"http://{ip}:80/"

    results = {"ok": 0, "errors": []}
    stop = threading.Event()

    def load():
        deadline = time.time() + 60
        for _ in range(2000):
            if stop.is_set() or time.time() > deadline:
                break
            try:
                status, _ = fetch(url)
                if status == 200:
                    results["ok"] += 1
                else:
                    results["errors"].append(f"status {status}")
            except Exception as e:  # noqa: BLE001 - every failure counts
                results["errors"].append(repr(e))
            time.sleep(0.01)

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(1)
        before = live_pods(cluster)
        cluster.kubectl("set", "env", "deploy/web", "ROLL=1")
        cluster.kubectl("rollout", "status", "deploy/web", "--timeout=120s", timeout=150)
        # Let traffic run on the new pods for a moment.
        time.sleep(2)
    finally:
        stop.set()
        t.join(timeout=90)
    after = live_pods(cluster)
    assert not (before & after), "rollout did not replace the pods"
    assert results["ok"] > 100, results
    assert results["errors"] == [], f"{len(results['errors'])} failed: {results['errors'][:5]}"
    # New pods serve.
    status, body = fetch(url)
    assert status == 200 and body in after
