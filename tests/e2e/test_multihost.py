"""Several machines, one cluster: hosts are network namespaces on a test bridge (multihost.py)."""

import json
import os

import pytest

from conftest import wait_for
from multihost import MultiHost

HOSTS = 3

# Fetches each URL given as an argument every half second, printing "URL BODY" (or "URL ERR").
PROBER = r"""
import sys, time, urllib.request
while True:
    for u in sys.argv[1:]:
        try:
            b = urllib.request.urlopen(u, timeout=3).read().decode().strip()
        except Exception:
            b = "ERR"
        print(u, b, flush=True)
    time.sleep(0.5)
"""


@pytest.fixture(scope="module")
def hosts(request):
    if os.geteuid() != 0:
        pytest.skip("multi-host tests need root: each host is a network namespace")
    mh = MultiHost(HOSTS)
    try:
        mh.start()
    except Exception:
        print(mh.logs())
        mh.stop()
        raise
    yield mh
    if request.session.testsfailed:
        print(mh.logs())
    mh.stop()


def pinned_pod(name, node, command):
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "runtimeClassName": "process",
                 "containers": [{"name": "c", "image": "unused", "command": command}]},
    })


def test_every_host_is_a_ready_node_that_runs_pods(hosts):
    nodes = json.loads(hosts.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    cidrs = set()
    for h in hosts.hosts:
        node = by_name[h.node_name]
        addrs = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addrs["InternalIP"] == h.ip, addrs
        # Each node got its own /24 of the cluster CIDR from the server.
        cidr = node["spec"]["podCIDR"]
        assert cidr.startswith("172.30.") and cidr.endswith(".0/24"), cidr
        cidrs.add(cidr)
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == h.node_name
        if h is not hosts.server:
            # Agents join with --zone and --system-reserved (see multihost.py).
            assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == f"zone-{h.index}"
            cap, alloc = node["status"]["capacity"], node["status"]["allocatable"]
            assert alloc["cpu"] == f"{int(cap['cpu']) * 1000 - 250}m", (cap, alloc)
            assert alloc["memory"] == f"{int(cap['memory'][:-2]) - 64 * 1024}Ki", (cap, alloc)
    assert len(cidrs) == len(hosts.hosts), cidrs
    for h in hosts.hosts:
        hosts.kubectl("apply", "-f", "-", input=pinned_pod(
            f"hello-{h.index}", h.node_name, ["sh", "-c", f"echo hi-from-{h.node_name}; sleep 300"]))
    for h in hosts.hosts:
        # `kubectl logs` goes from the server to that host's agent over the test network.
        wait_for(lambda: f"hi-from-{h.node_name}" in hosts.kubectl(
            "logs", f"hello-{h.index}", check=False).stdout, what=f"log of the pod on {h.node_name}")
    hosts.kubectl("delete", "pods", "--all", "--wait=true", "--timeout=60s")


def agent_attempt(hosts, token, *extra):
    """Runs a joining agent (from the root namespace, over the test bridge) that must fail
    before it becomes a node; returns its output."""
    import subprocess
    import tempfile
    from conftest import bosun_bin
    d = tempfile.mkdtemp(prefix="bosun-mh-refused-")
    try:
        r = subprocess.run([bosun_bin(), "agent", "--server", hosts.api_url, "--token", token,
                            "--data-dir", d, "--node-name", "intruder", *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0, f"the agent was let in:\n{r.stdout}\n{r.stderr}"
        return r.stderr
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_wrong_expired_or_mispinned_token_is_refused(hosts):
    good = hosts.node_token()
    pin, boot = good.split("::")
    tid = boot.split(".")[0]
    wrong_secret = f"{pin}::{tid}.{'0' * 16}"
    assert wrong_secret != good
    err = agent_attempt(hosts, wrong_secret)
    assert "refused the join token" in err, err

    # A token that expires: made by `bosun token create`, used after its time.
    out = hosts.cli("token", "create", "--ttl", "1s")
    expired = out.stdout.strip()
    assert expired.startswith("K10") and "bosun agent --server" in out.stderr, out
    import time
    time.sleep(2)
    err = agent_attempt(hosts, expired)
    assert "refused the join token" in err, err

    # The right token with another CA pin: the agent will not trust the server.
    other_pin = "K10" + ("0" * 64) + "::" + boot
    err = agent_attempt(hosts, other_pin)
    assert "does not match the token's CA hash" in err, err
    names = hosts.kubectl("get", "nodes", "-o", "name").stdout
    assert "intruder" not in names, names


def test_created_token_joins_and_nodes_hold_no_cluster_secrets(hosts):
    out = hosts.cli("token", "create", "--ttl", "1h")
    token = out.stdout.strip()
    secret = hosts.kubectl("get", "secret", "-n", "kube-system",
                           f"bootstrap-token-{token.split('::')[1].split('.')[0]}",
                           "-o", "jsonpath={.type}").stdout
    assert secret == "bootstrap.kubernetes.io/token"
    admin_token = open(os.path.join(hosts.server.data_dir, "pki", "token")).read().strip()
    ca_key = open(os.path.join(hosts.server.data_dir, "pki", "ca.key")).read().strip()
    for h in hosts.hosts[1:]:
        for root, _, files in os.walk(h.data_dir):
            for f in files:
                assert f != "ca.key", os.path.join(root, f)
                path = os.path.join(root, f)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as fh:
                    data = fh.read()
                assert admin_token.encode() not in data, f"admin token in {path}"
                assert ca_key.encode() not in data, f"CA key in {path}"
        # The node's client certificate names it and its group; it was issued by a CSR.
        crt = os.path.join(h.data_dir, "pki", "node.crt")
        import subprocess
        subj = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-subject"],
                              capture_output=True, text=True).stdout
        assert f"system:node:{h.node_name}" in subj and "system:nodes" in subj, subj
    # The node's certificate is its identity at the API: it may read the cluster's Nodes but
    # not the bootstrap tokens, nor sign certificates.
    import ssl
    import urllib.error
    import urllib.request
    pki = os.path.join(hosts.hosts[1].data_dir, "pki")
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    ctx.load_cert_chain(os.path.join(pki, "node.crt"), os.path.join(pki, "node.key"))

    def status(path, method="GET"):
        req = urllib.request.Request(hosts.api_url + path, method=method,
                                     data=b"{}" if method != "GET" else None)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    assert status("/api/v1/nodes") == 200
    tid = token.split("::")[1].split(".")[0]
    assert status(f"/api/v1/namespaces/kube-system/secrets/bootstrap-token-{tid}") == 403
    assert status("/api/v1/secrets") == 403
    assert status("/apis/certificates.k8s.io/v1/certificatesigningrequests/x/approval", "PUT") == 403
    csrs = json.loads(hosts.kubectl("get", "csr", "-o", "json").stdout)["items"]
    issued = [c for c in csrs if c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
              and c.get("status", {}).get("certificate")]
    assert any(c["spec"]["username"].startswith("system:bootstrap:") for c in issued), csrs


def web_deployment(name, replicas):
    """A Deployment of pods answering GET with their name, plus its Service."""
    from conftest import HOSTNAME_SERVER
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}},
                               "spec": {"runtimeClassName": "process",
                                        "terminationGracePeriodSeconds": 2,
                                        "containers": [{"name": "web", "image": "unused",
                                                        "command": ["python3", "-c", HOSTNAME_SERVER],
                                                        "ports": [{"containerPort": 8080}],
                                                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                                           "periodSeconds": 1}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]})


def ready_pods(hosts, app):
    pods = json.loads(hosts.kubectl("get", "pods", "-l", f"app={app}", "-o", "json").stdout)["items"]
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", []))]


def test_replicas_spread_and_reach_each_other_across_nodes(hosts):
    hosts.kubectl("apply", "-f", "-", input=web_deployment("spread", 4))
    hosts.kubectl("rollout", "status", "deploy/spread", "--timeout=120s")
    pods = ready_pods(hosts, "spread")
    assert {p["spec"]["nodeName"] for p in pods} == {h.node_name for h in hosts.hosts}, \
        [(p["metadata"]["name"], p["spec"]["nodeName"]) for p in pods]
    # From a pod on the last host: every pod on the other hosts by IP, and the Service by
    # name (cluster DNS, then the node proxy on that host sending to the chosen endpoint).
    here = hosts.hosts[-1].node_name
    targets = [f"http://{p['status']['podIP']}:8080/" for p in pods if p["spec"]["nodeName"] != here]
    targets.append("http://spread.default.svc.cluster.local/")
    hosts.kubectl("apply", "-f", "-", input=pinned_pod("prober", here, ["python3", "-c", PROBER, *targets]))
    want = {f"http://{p['status']['podIP']}:8080/": p["metadata"]["name"]
            for p in pods if p["spec"]["nodeName"] != here}
    names = {p["metadata"]["name"] for p in pods}

    def answers():
        got = {}
        for line in hosts.kubectl("logs", "prober", check=False).stdout.splitlines():
            url, _, body = line.partition(" ")
            got.setdefault(url, set()).add(body)
        return got

    def all_answered():
        got = answers()
        direct = all(want[u] in got.get(u, set()) for u in want)
        by_name = got.get(targets[-1], set()) & names
        return direct and len(by_name) >= 2 and got
    got = wait_for(all_answered, timeout=90, what="answers across nodes")
    assert got[targets[-1]] - {"ERR"} <= names, got
    hosts.kubectl("delete", "pod", "prober", "--wait=true", "--timeout=60s")
    hosts.kubectl("delete", "deploy,svc", "spread", "--wait=true", "--timeout=60s")


def test_daemonset_runs_one_pod_on_every_host(hosts):
    from conftest import HOSTNAME_SERVER
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "per-node"},
          "spec": {"selector": {"matchLabels": {"app": "per-node"}}, "template": {
              "metadata": {"labels": {"app": "per-node"}},
              "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                       "containers": [{"name": "c", "image": "unused",
                                       "command": ["python3", "-c", HOSTNAME_SERVER]}]}}}}
    hosts.kubectl("apply", "-f", "-", input=json.dumps(ds))
    hosts.kubectl("rollout", "status", "ds/per-node", "--timeout=120s")
    pods = ready_pods(hosts, "per-node")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(h.node_name for h in hosts.hosts)
    status = json.loads(hosts.kubectl("get", "ds", "per-node", "-o", "json").stdout)["status"]
    assert status["desiredNumberScheduled"] == status["numberReady"] == len(hosts.hosts), status
    # Each daemon pod answers on its own node's pod network.
    for p in pods:
        node = next(h for h in hosts.hosts if h.node_name == p["spec"]["nodeName"])
        url = f"http://{p['status']['podIP']}:8080/"
        fetch = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=3).read().decode())"
        wait_for(lambda: node.exec("python3", "-c", fetch, check=False).stdout.strip() == p["metadata"]["name"],
                 timeout=30, what=f"the daemon pod on {node.node_name}")
    hosts.kubectl("delete", "ds", "per-node", "--wait=true", "--timeout=60s")


def measure_failover(hosts, victim, app="failover", replicas=4, timeout=120):
    """Kills `victim` (bosun, its pods, its link) once `app` runs on every host; returns the
    seconds until `replicas` pods are Ready again on the other hosts."""
    import time
    hosts.kubectl("apply", "-f", "-", input=web_deployment(app, replicas))
    hosts.kubectl("rollout", "status", f"deploy/{app}", "--timeout=120s")
    wait_for(lambda: len(ready_pods(hosts, app)) == replicas, what="all replicas ready")
    on_victim = [p for p in ready_pods(hosts, app) if p["spec"]["nodeName"] == victim.node_name]
    assert on_victim, "nothing runs on the host to kill"
    t0 = time.monotonic()
    wall0 = time.time()
    victim.power_off()

    def replaced():
        ok = [p for p in ready_pods(hosts, app) if p["spec"]["nodeName"] != victim.node_name]
        return len(ok) >= replicas
    wait_for(replaced, timeout=timeout, interval=0.1, what="replacements ready on the other hosts")
    took = time.monotonic() - t0
    if os.environ.get("FAILOVER_DETAIL"):
        # When the replacements were created (whole seconds, from the API) after the kill.
        import datetime
        for p in ready_pods(hosts, app):
            created = datetime.datetime.fromisoformat(
                p["metadata"]["creationTimestamp"].replace("Z", "+00:00")).timestamp()
            if created > wall0 - 1:
                print(f"  {p['metadata']['name']} created +{created - wall0:.0f}s")
    return took


def pdb(name, min_available):
    return json.dumps({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                       "metadata": {"name": name},
                       "spec": {"minAvailable": min_available,
                                "selector": {"matchLabels": {"app": name}}}})


def test_drain_respects_the_disruption_budget_and_uncordon_undoes_it(hosts):
    node = hosts.hosts[1].node_name
    hosts.kubectl("apply", "-f", "-", input=web_deployment("drn", 3))
    hosts.kubectl("rollout", "status", "deploy/drn", "--timeout=120s")
    assert any(p["spec"]["nodeName"] == node for p in ready_pods(hosts, "drn"))
    # A budget that allows no disruption: the eviction is refused (429) and drain gives up.
    hosts.kubectl("apply", "-f", "-", input=pdb("drn", 3))
    allowed = lambda: hosts.kubectl("get", "pdb", "drn", "-o", "jsonpath={.status.disruptionsAllowed}/{.status.currentHealthy}").stdout
    wait_for(lambda: allowed() == "0/3", what="budget status: no disruption allowed")
    r = hosts.kubectl("drain", node, "--ignore-daemonsets", "--timeout=8s", check=False)
    assert r.returncode != 0, r.stdout
    assert "disruption budget" in (r.stdout + r.stderr), r.stderr
    assert any(p["spec"]["nodeName"] == node for p in ready_pods(hosts, "drn"))
    # One disruption allowed: drain evicts the pods one by one as replacements get ready.
    hosts.kubectl("apply", "-f", "-", input=pdb("drn", 2))
    wait_for(lambda: allowed() == "1/3", what="budget status: one disruption allowed")
    hosts.kubectl("drain", node, "--ignore-daemonsets", "--timeout=120s")
    spec = json.loads(hosts.kubectl("get", "node", node, "-o", "json").stdout)["spec"]
    assert spec.get("unschedulable") is True, spec
    wait_for(lambda: len(ready_pods(hosts, "drn")) == 3, timeout=90, what="3 ready replicas")
    assert all(p["spec"]["nodeName"] != node for p in ready_pods(hosts, "drn"))
    hosts.kubectl("uncordon", node)
    spec = json.loads(hosts.kubectl("get", "node", node, "-o", "json").stdout)["spec"]
    assert not spec.get("unschedulable"), spec
    hosts.kubectl("delete", "deploy,svc,pdb", "drn", "--wait=true", "--timeout=60s")


def test_partitioned_host_heals_and_stops_its_replaced_pods(hosts):
    victim = hosts.hosts[1]
    hosts.kubectl("apply", "-f", "-", input=web_deployment("part", 3))
    hosts.kubectl("rollout", "status", "deploy/part", "--timeout=120s")
    stranded = [p["metadata"]["name"] for p in ready_pods(hosts, "part")
                if p["spec"]["nodeName"] == victim.node_name]
    assert stranded, "nothing runs on the host to cut off"
    pids = victim.pod_pids()
    assert pids, "no pod processes found on the host"
    # Cut the host off: bosun and its pods keep running, but nobody hears from them.
    victim.exec("ip", "link", "set", "eth0", "down")
    try:
        wait_for(lambda: len([p for p in ready_pods(hosts, "part")
                              if p["spec"]["nodeName"] != victim.node_name]) >= 3,
                 timeout=120, what="replacements on the other hosts")
    finally:
        victim.exec("ip", "link", "set", "eth0", "up")
    # Healed: the node is Ready again and no longer tainted, and the pods that were replaced
    # elsewhere are stopped there (their objects are gone, so the agent removes them).
    hosts.wait_nodes_ready([victim], timeout=90)
    wait_for(lambda: "unreachable" not in hosts.kubectl(
        "get", "node", victim.node_name, "-o", "jsonpath={.spec.taints}").stdout,
        timeout=60, what="unreachable taint removed")
    import os as _os
    def stopped():
        alive = [p for p in pids if _os.path.exists(f"/proc/{p}")]
        return not alive
    wait_for(stopped, timeout=90, what="the replaced pods' processes stopped on the healed host")
    names = {p["metadata"]["name"] for p in ready_pods(hosts, "part")}
    assert not names & set(stranded), names
    hosts.kubectl("delete", "deploy,svc", "part", "--wait=true", "--timeout=60s")


def test_a_dead_hosts_pods_run_elsewhere(hosts):
    victim = hosts.hosts[-1]
    took = measure_failover(hosts, victim)
    print(f"failover: replacements ready {took:.1f}s after the host died")
    node = json.loads(hosts.kubectl("get", "node", victim.node_name, "-o", "json").stdout)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "Unknown", ready
    assert any(t["key"] == "node.kubernetes.io/unreachable" and t["effect"] == "NoExecute"
               for t in node["spec"].get("taints", [])), node["spec"]
