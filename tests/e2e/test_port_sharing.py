"""A Service on the gateway's own port: pods reach the Service by name through its cluster
IP while the gateway keeps serving an Ingress on that port, whether the Service existed
before bosun started or was created after."""

import http.client
import json
import signal

from conftest import HOSTNAME_SERVER, wait_for

# Runs in a pod: fetches the Service by name (cluster DNS, then its cluster IP) every
# 300 ms and prints one line per answer.
CLIENT = r'''
import os, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
url = "http://orders:%s/" % os.environ["PORT"]
for _ in range(3000):
    try:
        with opener.open(url, timeout=3) as r:
            print("GOT %d %s" % (r.status, r.read().decode().strip()), flush=True)
    except Exception as e:
        body = e.read().decode().strip() if hasattr(e, "read") else ""
        print("ERR %r %s" % (e, body), flush=True)
    time.sleep(0.3)
'''


def deployment(name, command, env=None, probe=False):
    c = {"name": name, "command": command, "env": env or []}
    if probe:
        c["ports"] = [{"containerPort": 8080}]
        c["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"runtimeClassName": "process", "containers": [c]}},
        },
    }


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def client_lines(cluster):
    r = cluster.kubectl("logs", "deployment/client", check=False)
    return r.stdout.splitlines() if r.returncode == 0 else []


def pods(cluster, app):
    out = json.loads(cluster.kubectl("get", "pods", "-l", f"app={app}", "-o", "json").stdout)
    return {p["metadata"]["name"] for p in out["items"]}


def through_gateway(cluster):
    c = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=5)
    c.request("GET", "/", headers={"Host": "orders.local"})
    r = c.getresponse()
    return r.status, r.read().decode().strip()


def assert_both_served(cluster, after_line):
    """New client lines after `after_line` come from the Service's pod, and the gateway
    routes the Ingress on the same port."""
    orders = pods(cluster, "orders")

    def fresh_answers():
        lines = client_lines(cluster)[after_line:]
        got = [l for l in lines if l.startswith("GOT 200 orders-")]
        if len(got) < 3:
            raise AssertionError(f"the client's last lines: {lines[-3:]}")
        return lines
    lines = wait_for(fresh_answers, timeout=60, what="the client pod reaching the Service")
    # Once the Service answered, it keeps answering: no line goes to the gateway.
    first = next(i for i, l in enumerate(lines) if l.startswith("GOT 200 orders-"))
    for l in lines[first:]:
        assert l.split()[:2] == ["GOT", "200"] and l.split()[2] in orders, lines[first:]
    status, body = wait_for(lambda: (lambda r: r[0] == 200 and r)(through_gateway(cluster)),
                            timeout=30, what="the gateway routing orders.local")
    assert body in orders, body


def test_service_on_the_gateway_port_created_after_start_and_after_restart(cluster):
    port = cluster.http_port
    apply(cluster,
          deployment("orders", ["python3", "-c", HOSTNAME_SERVER], probe=True),
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders"},
           "spec": {"selector": {"app": "orders"},
                    "ports": [{"name": "http", "port": port, "targetPort": 8080}]}},
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "orders"},
           "spec": {"rules": [{"host": "orders.local", "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "orders", "port": {"number": port}}}}]}}]}},
          deployment("client", ["python3", "-c", CLIENT], env=[{"name": "PORT", "value": str(port)}]))
    cluster.kubectl("rollout", "status", "deploy/orders", "--timeout=120s", timeout=150)
    # The gateway bound the port at start-up, the Service's listener came after.
    assert_both_served(cluster, 0)

    # Restart with the Service existing: the node proxy and the gateway bind at start-up
    # in whatever order they get to it. Pods keep running across the restart.
    cluster.kill(signal.SIGTERM)
    cluster.start()
    # Only what the client printed after the restart counts.
    mark = len(client_lines(cluster))
    assert_both_served(cluster, mark)
