"""Service discovery from inside pods: cluster DNS (service names, search paths, headless
services), the pod's resolv.conf, and the service environment variables."""

import ipaddress
import json

from conftest import HOSTNAME_SERVER, wait_for

# Runs in the client pod: prints its resolver file and environment once, then resolves names
# with the system resolver (getaddrinfo reads /etc/resolv.conf) and fetches every address of
# the headless service, one JSON line per round.
CLIENT = r'''
import json, os, socket, sys, time, urllib.request
print("RESOLV " + json.dumps(open("/etc/resolv.conf").read()), flush=True)
print("ENV " + json.dumps({k: v for k, v in os.environ.items() if "SERVICE" in k or "_PORT" in k}), flush=True)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
names = ["web", "web.default", "web.default.svc", "web.default.svc.cluster.local",
         "web-headless", "web-headless.default.svc.cluster.local", "nothere"]
for _ in range(600):
    out = {}
    for n in names:
        try:
            out[n] = sorted({a[4][0] for a in socket.getaddrinfo(n, 80, socket.AF_INET, socket.SOCK_STREAM)})
        except socket.gaierror as e:
            out[n] = "error: %s" % e
    fetched = {}
    for ip in out["web-headless"] if isinstance(out["web-headless"], list) else []:
        try:
            with opener.open("http://%s:8080/" % ip, timeout=3) as r:
                fetched[ip] = r.read().decode().strip()
        except Exception as e:
            fetched[ip] = "error: %s" % e
    out["_fetched"] = fetched
    # Through the Service name, its cluster IP and the node proxy, from inside the pod.
    try:
        with opener.open("http://web/", timeout=3) as r:
            out["_via_service"] = r.read().decode().strip()
    except Exception as e:
        out["_via_service"] = "error: %s" % e
    print("ROUND " + json.dumps(out), flush=True)
    time.sleep(1)
'''


def deployment(name, command, labels, probe=False):
    c = {"name": name, "command": command}
    if probe:
        c["ports"] = [{"containerPort": 8080}]
        c["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2 if probe else 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"runtimeClassName": "process", "containers": [c]}},
        },
    }


def services():
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-headless"},
         "spec": {"clusterIP": "None", "selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 8080}]}},
    ]


def apply(cluster, items):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def ready_pod_ips(cluster, app):
    out = json.loads(cluster.kubectl("get", "pods", "-l", f"app={app}", "-o", "json").stdout)
    ips = {}
    for p in out["items"]:
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions") or []}
        if conds.get("Ready") == "True" and not p["metadata"].get("deletionTimestamp"):
            ips[p["status"]["podIP"]] = p["metadata"]["name"]
    return ips


def client_lines(cluster, prefix):
    r = cluster.kubectl("logs", "deployment/client", check=False)
    if r.returncode != 0:
        return []
    return [json.loads(l[len(prefix) + 1:]) for l in r.stdout.splitlines() if l.startswith(prefix + " ")]


def test_pods_resolve_services_and_get_service_variables(cluster):
    # Services first: the variables are those existing when the container starts.
    apply(cluster, services() + [deployment("web", ["python3", "-c", HOSTNAME_SERVER], {"app": "web"}, probe=True)])
    wait_for(lambda: len(ready_pod_ips(cluster, "web")) == 2, timeout=90, what="two ready web pods")
    svc = json.loads(cluster.kubectl("get", "svc", "web", "-o", "json").stdout)
    vip = svc["spec"]["clusterIP"]
    apply(cluster, [deployment("client", ["python3", "-c", CLIENT], {"app": "client"})])

    # resolv.conf points at cluster DNS on the pod bridge's gateway.
    resolv = wait_for(lambda: client_lines(cluster, "RESOLV"), timeout=90, what="client output")[0]
    gateway = str(next(ipaddress.ip_network(cluster.pod_cidr).hosts()))
    lines = resolv.splitlines()
    assert f"nameserver {gateway}" in lines, resolv
    assert any(l.startswith("search default.svc.cluster.local svc.cluster.local cluster.local")
               for l in lines), resolv
    assert "options ndots:5" in lines, resolv

    # Service variables, as kubelet sets them; a headless service has none.
    env = client_lines(cluster, "ENV")[0]
    assert env["WEB_SERVICE_HOST"] == vip
    assert env["WEB_SERVICE_PORT"] == "80"
    assert env["WEB_SERVICE_PORT_HTTP"] == "80"
    assert env["WEB_PORT"] == f"tcp://{vip}:80"
    assert env["WEB_PORT_80_TCP"] == f"tcp://{vip}:80"
    assert env["WEB_PORT_80_TCP_PROTO"] == "tcp"
    assert env["WEB_PORT_80_TCP_PORT"] == "80"
    assert env["WEB_PORT_80_TCP_ADDR"] == vip
    assert "WEB_HEADLESS_SERVICE_HOST" not in env

    # Names resolve through the search path to the cluster IP; the headless name to the
    # ready pods, which answer on their own addresses; unknown names fail.
    pods = ready_pod_ips(cluster, "web")

    def good_round():
        rounds = client_lines(cluster, "ROUND")
        if not rounds:
            return None
        r = rounds[-1]
        for n in ["web", "web.default", "web.default.svc", "web.default.svc.cluster.local"]:
            if r[n] != [vip]:
                return None
        want = sorted(pods)
        if r["web-headless"] != want or r["web-headless.default.svc.cluster.local"] != want:
            return None
        if r["_fetched"] != pods:
            return None
        if r["_via_service"] not in pods.values():
            return None
        return r

    try:
        r = wait_for(good_round, timeout=60, what=f"DNS answers {vip} / {sorted(pods)}")
    except AssertionError as e:
        raise AssertionError(f"{e}\nlast round: {(client_lines(cluster, 'ROUND') or [None])[-1]}")
    assert str(r["nothere"]).startswith("error"), r


def test_headless_answers_follow_scaling(cluster):
    cluster.kubectl("scale", "deployment/web", "--replicas=1")
    wait_for(lambda: len(ready_pod_ips(cluster, "web")) == 1, timeout=90, what="one web pod")
    pods = ready_pod_ips(cluster, "web")

    def one_address():
        rounds = client_lines(cluster, "ROUND")
        return rounds and rounds[-1]["web-headless"] == sorted(pods) and rounds[-1]["_fetched"] == pods

    wait_for(one_address, timeout=60, what=f"headless answer {sorted(pods)}")
