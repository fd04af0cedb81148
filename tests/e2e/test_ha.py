"""Several `bosun server`s on one real 3-member etcd, as one cluster: a server joins with
the first server's token alone (CA, tokens and the Secrets encryption key come sealed from
etcd), every certificate names its server and the shared names, `bosun kubeconfig
--server` reaches any server, the `kubernetes` Service's endpoints follow the live servers,
a client survives a rolling restart of every server with at most one retry per request,
and killing the leading server during a rolling update moves the controllers and the
node's agent (given every --server) to the others, and the rollout finishes.
"""

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import Bosun, bosun_bin, free_port, wait_for
from test_etcd import Etcd

SAN = "api.bosun-ha.test"


class Server:
    """One `bosun server` on the shared etcd; restartable on its data dir and port."""

    def __init__(self, name, etcd, service_cidr, join_token=None):
        self.b = Bosun(name)  # only for its unique data dir and ports
        self.etcd = etcd
        self.service_cidr = service_cidr
        self.join_token = join_token
        self.log_path = os.path.join(self.b.data_dir, "server.log")
        self.proc = None

    @property
    def url(self):
        return f"https://127.0.0.1:{self.b.api_port}"

    def run(self, join_token=None, wait=True):
        args = [bosun_bin(), "server", "--data-dir", self.b.data_dir,
                "--listen", f"127.0.0.1:{self.b.api_port}", "--service-cidr", self.service_cidr,
                "--tls-san", SAN, "--store", self.etcd.store_flag()]
        token = join_token or self.join_token
        env = dict(os.environ, RUST_LOG="info")
        if token:
            env["BOSUN_JOIN_TOKEN"] = token
        self.proc = subprocess.Popen(args, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, env=env)
        if wait:
            wait_for(lambda: self.proc.poll() is None and os.path.exists(self.b.kubeconfig) and self.b.ready(),
                     timeout=90, what=f"{self.b.name} ready")
        return self

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def leads(self):
        """Whether this run of the server has taken the leader lease (since its last start)."""
        runs = self.log().split("bosun server is up")
        return "is now the leader" in runs[-1] if len(runs) > 1 else False

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def file(self, rel):
        with open(os.path.join(self.b.data_dir, rel), "rb") as f:
            return f.read()


class HA:
    def __init__(self):
        self.etcd = Etcd(3)
        self.service_cidr = f"10.96.{int(time.time()) % 200 + 20}.0/24"
        self.servers = []

    def add(self, name, join_token=None):
        s = Server(name, self.etcd, self.service_cidr, join_token)
        self.servers.append(s)
        return s

    def stop(self):
        for s in self.servers:
            s.stop()
            shutil.rmtree(s.b.data_dir, ignore_errors=True)
        self.etcd.stop()


@pytest.fixture(scope="module")
def ha(request):
    h = HA()
    try:
        first = h.add("ha-a").run()
        token = first.file("server-token").decode().strip()
        h.add("ha-b", token).run()
        h.add("ha-c", token).run()
        yield h
    finally:
        if request.session.testsfailed:
            for s in h.servers:
                print(f"--- {s.b.name} ---\n{s.log()[-3000:]}")
        h.stop()


def kubectl(server, *args, check=True, input=None, kubeconfig=None, timeout=60):
    env = dict(os.environ, KUBECONFIG=kubeconfig or server.b.kubeconfig)
    r = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} on {server.b.name}: {r.stdout}\n{r.stderr}")
    return r


def test_a_server_joins_with_the_token_alone(ha):
    a, b, c = ha.servers[:3]
    # One identity: the same CA, admin token and Secrets encryption key on every server.
    for s in (b, c):
        assert s.file("pki/ca.crt") == a.file("pki/ca.crt")
        assert s.file("pki/ca.key") == a.file("pki/ca.key")
        assert s.file("pki/token") == a.file("pki/token")
        assert s.file("encryption-config.yaml") == a.file("encryption-config.yaml")
        assert oct(os.stat(os.path.join(s.b.data_dir, "pki", "ca.key")).st_mode & 0o777) == "0o600"
    # A Secret written through one server reads back through another (same key at rest).
    kubectl(a, "create", "secret", "generic", "shared", "--from-literal=password=s3cret-value")
    got = kubectl(c, "get", "secret", "shared", "-o", "jsonpath={.data.password}").stdout
    assert base64.b64decode(got) == b"s3cret-value"

    # etcd holds the identity sealed: neither the CA key nor the encryption key in the clear.
    r = ha.etcd.call(0, "/v3/kv/range", {"key": base64.b64encode(b"/bosun/cluster-identity").decode()})
    stored = base64.b64decode(r["kvs"][0]["value"])
    ca_key_body = a.file("pki/ca.key").decode().splitlines()[1]
    assert ca_key_body.encode() not in stored and b"PRIVATE KEY" not in stored
    assert b"aescbc" not in stored and b"aesgcm" not in stored and b"secret:" not in stored
    r = ha.etcd.call(0, "/v3/kv/range", {"key": base64.b64encode(b"/registry/secrets/default/shared").decode()})
    assert b"s3cret-value" not in base64.b64decode(r["kvs"][0]["value"])

    # Without the token, or with a wrong one, a new server refuses to start, and says why.
    d = ha.add("ha-d")
    d.run(wait=False)
    assert d.proc.wait(timeout=60) != 0
    assert "already holds a bosun cluster" in d.log() and "--join-token" in d.log(), d.log()
    token = a.file("server-token").decode().strip()
    wrong = token[:-8] + ("a" if token[-8] != "a" else "b") + token[-7:]
    d.run(join_token=wrong, wait=False)
    assert d.proc.wait(timeout=60) != 0
    assert "token is wrong" in d.log(), d.log()
    assert not os.path.exists(os.path.join(d.b.data_dir, "pki", "ca.key"))
    other = token.replace(token[3:67], "ab" * 32)
    d.run(join_token=other, wait=False)
    assert d.proc.wait(timeout=60) != 0
    assert "another cluster" in d.log(), d.log()


def peer_cert(server, hostname):
    """The server's certificate, verified by the cluster CA for `hostname`."""
    ctx = ssl.create_default_context(cafile=os.path.join(server.b.data_dir, "pki", "ca.crt"))
    with socket.create_connection(("127.0.0.1", server.b.api_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            return tls.getpeercert()


def stored_secret(ha, ns, name):
    r = ha.etcd.call(0, "/v3/kv/range", {"key": base64.b64encode(f"/registry/secrets/{ns}/{name}".encode()).decode()})
    return base64.b64decode(r["kvs"][0]["value"])


def test_rotating_the_secrets_key_on_one_server_reaches_every_server(ha):
    a, b, c = ha.servers[:3]
    kubectl(a, "create", "secret", "generic", "before-rotation", "--from-literal=k=old")
    assert stored_secret(ha, "default", "before-rotation").startswith(b"k8s:enc:aesgcm:v1:key1:")
    r = subprocess.run([bosun_bin(), "secrets", "rotate-key", "--data-dir", b.b.data_dir],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "new key key2 encrypts from now on (3 servers)" in r.stdout, r.stdout
    # Every server has the new key first, on disk as in memory.
    for s in (a, b, c):
        assert s.file("encryption-config.yaml") == b.file("encryption-config.yaml"), s.b.name
    assert "key2" in a.file("encryption-config.yaml").decode()
    # Old Secrets were re-encrypted with it, and new ones written through any server use
    # it and read back through every other.
    assert stored_secret(ha, "default", "before-rotation").startswith(b"k8s:enc:aesgcm:v1:key2:")
    kubectl(c, "create", "secret", "generic", "after-rotation", "--from-literal=k=new")
    assert stored_secret(ha, "default", "after-rotation").startswith(b"k8s:enc:aesgcm:v1:key2:")
    for s in (a, b, c):
        got = kubectl(s, "get", "secret", "after-rotation", "-o", "jsonpath={.data.k}").stdout
        assert base64.b64decode(got) == b"new"
        got = kubectl(s, "get", "secret", "before-rotation", "-o", "jsonpath={.data.k}").stdout
        assert base64.b64decode(got) == b"old"
    assert "published this server's encryption configuration" in b.log()
    assert "loaded the encryption configuration another server published" in a.log()


def test_certificates_and_kubeconfigs_name_each_server(ha):
    a, b, _ = ha.servers[:3]
    for s in ha.servers[:3]:
        # Verifies under the shared name, the in-cluster names and its own address.
        sans = {v for _, v in peer_cert(s, SAN)["subjectAltName"]}
        assert {SAN, "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "127.0.0.1"} <= sans, sans
        first_ip = ha.service_cidr.split("/")[0].rsplit(".", 1)[0] + ".1"
        assert first_ip in sans, sans
        # The kubeconfig a server writes names that server.
        with open(s.b.kubeconfig) as f:
            assert f"server: {s.url}\n" in f.read()
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_cert(a, "not-a-name.example")

    # `bosun kubeconfig --server` writes one for another server, from this server's data dir.
    out = os.path.join(a.b.data_dir, "kubeconfig-b")
    r = subprocess.run([bosun_bin(), "kubeconfig", "--data-dir", a.b.data_dir, "--server", b.url, "-o", out],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    got = kubectl(a, "get", "namespace", "default", "-o", "name", kubeconfig=out).stdout
    assert got.strip() == "namespace/default"
    with open(out) as f:
        assert f"server: {b.url}\n" in f.read()
    printed = subprocess.run([bosun_bin(), "kubeconfig", "--data-dir", a.b.data_dir, "--server", b.url],
                             capture_output=True, text=True, timeout=30).stdout
    assert f"server: {b.url}" in printed
    bad = subprocess.run([bosun_bin(), "kubeconfig", "--data-dir", a.b.data_dir, "--server", "http://x:1"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "https://HOST:PORT" in bad.stderr, bad.stderr


def endpoint_ports(server):
    r = kubectl(server, "get", "endpoints", "kubernetes", "-n", "default", "-o", "json", check=False)
    if r.returncode != 0:
        return set()
    eps = json.loads(r.stdout)
    return {(a["ip"], p["port"]) for s in eps.get("subsets") or [] for a in s.get("addresses", [])
            for p in s.get("ports", [])}


def slice_ports(server):
    r = kubectl(server, "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes",
                "-o", "json")
    return {(e["addresses"][0], p["port"]) for s in json.loads(r.stdout)["items"]
            for e in s.get("endpoints") or [] for p in s.get("ports") or []}


def test_kubernetes_endpoints_list_the_live_servers(ha):
    a, b, c = ha.servers[:3]
    every = {("127.0.0.1", s.b.api_port) for s in (a, b, c)}
    wait_for(lambda: endpoint_ports(a) == every, timeout=30, what="every server in the endpoints")
    assert slice_ports(a) == every
    # A server that stops cleanly leaves at once; back, it returns.
    c.stop()
    wait_for(lambda: endpoint_ports(a) == every - {("127.0.0.1", c.b.api_port)}, timeout=10,
             what="the stopped server out of the endpoints")
    assert slice_ports(a) == every - {("127.0.0.1", c.b.api_port)}
    c.run()
    wait_for(lambda: endpoint_ports(a) == every, timeout=30, what="the restarted server back")
    # One killed outright leaves when its Lease (15 s) runs out.
    c.stop(signal.SIGKILL)
    killed = time.time()
    wait_for(lambda: endpoint_ports(a) == every - {("127.0.0.1", c.b.api_port)}, timeout=40,
             what="the killed server out of the endpoints")
    assert time.time() - killed <= 25
    c.run()
    wait_for(lambda: endpoint_ports(a) == every, timeout=30, what="the restarted server back")


class Client:
    """Reads and writes through the servers in turn; a failed request is retried once, on
    the next server, as a client given several servers does."""

    def __init__(self, ha):
        self.ha = ha
        self.token = ha.servers[0].b.token()
        self.ctx = ssl.create_default_context(cafile=os.path.join(ha.servers[0].b.data_dir, "pki", "ca.crt"))
        self.i = 0
        self.ok = 0
        self.retried = 0
        self.failed = []

    def call(self, method, path, body=None):
        for attempt in range(2):
            s = self.ha.servers[self.i % 3]
            self.i += 1
            req = urllib.request.Request(s.url + path, method=method,
                                         data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                    self.ok += 1
                    return json.load(r)
            except urllib.error.HTTPError as e:
                if e.code == 409 and attempt == 1 and method == "POST":
                    self.ok += 1  # the first attempt was applied before its answer was lost
                    return None
                if attempt == 1 or e.code < 500:
                    self.failed.append(f"{method} {path} on {s.b.name}: {e.code} {e.read()[:200]!r}")
                    return None
            except (OSError, urllib.error.URLError) as e:
                if attempt == 1:
                    self.failed.append(f"{method} {path} on {s.b.name}: {e}")
                    return None
            self.retried += 1
        return None


def test_rolling_restart_of_every_server_under_client_load(ha):
    client = Client(ha)
    n = 0

    def work():
        nonlocal n
        name = f"roll-{n}"
        n += 1
        client.call("POST", "/api/v1/namespaces/default/configmaps",
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": str(n)}})
        client.call("GET", f"/api/v1/namespaces/default/configmaps/{name}")

    for s in ha.servers[:3]:
        s.stop()
        t = time.time()
        while time.time() - t < 2:
            work()
        s.run(wait=False)
        while not (os.path.exists(s.b.kubeconfig) and s.b.ready()):
            work()
        for _ in range(10):
            work()
    assert not client.failed, client.failed
    # Every acknowledged create is there.
    listed = client.call("GET", "/api/v1/namespaces/default/configmaps")
    names = {i["metadata"]["name"] for i in listed["items"]}
    assert all(f"roll-{i}" in names for i in range(n)), sorted(set(f"roll-{i}" for i in range(n)) - names)
    print(f"{client.ok} requests, {client.retried} retried once, across a rolling restart of 3 servers")
    assert client.ok >= 2 * n


def test_disaster_recovery_drill(ha):
    """Backup of the live cluster, a new empty etcd, restore, a server joins it with the old
    server token on an empty data dir: every object is back, Secrets readable."""
    a = ha.servers[0]
    kubectl(a, "create", "configmap", "drill", "--from-literal=k=v")
    snap = os.path.join(a.b.data_dir, "drill.snap")
    r = subprocess.run([bosun_bin(), "backup", "--store", ha.etcd.store_flag(), "--out", snap],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "backed up" in r.stdout, r.stderr
    uid = kubectl(a, "get", "secret", "shared", "-o", "jsonpath={.metadata.uid}").stdout
    fresh = Etcd(3)
    s = Server("ha-dr", fresh, ha.service_cidr, a.file("server-token").decode().strip())
    try:
        r = subprocess.run([bosun_bin(), "restore", "--store", fresh.store_flag(), "--from", snap],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "restored" in r.stdout, r.stderr
        s.run()
        assert s.file("pki/ca.crt") == a.file("pki/ca.crt")
        got = kubectl(s, "get", "secret", "shared", "-o", "jsonpath={.metadata.uid} {.data.password}").stdout
        assert got.split() == [uid, base64.b64encode(b"s3cret-value").decode()], got
        assert "configmap/drill" in kubectl(s, "get", "configmaps", "-o", "name").stdout
    except Exception:
        print(f"--- {s.b.name} ---\n{s.log()[-3000:] if os.path.exists(s.log_path) else ''}")
        raise
    finally:
        s.stop()
        shutil.rmtree(s.b.data_dir, ignore_errors=True)
        fresh.stop()


def restart_member(etcd, i):
    m = etcd.members[i]
    log = open(os.path.join(etcd.dir, f"{m['name']}.log"), "ab")
    m["proc"] = subprocess.Popen(m["proc"].args, stdout=log, stderr=subprocess.STDOUT)


def test_etcd_losing_quorum_is_reported_and_healed(ha):
    a, b = ha.servers[:2]
    kubectl(a, "create", "configmap", "before-outage", "--from-literal=k=v")
    lost = [i for i in range(3) if i != ha.etcd.leader()][:1] + [ha.etcd.leader()]
    for i in lost:
        ha.etcd.kill(i)
    try:
        # Writes fail with a Status that names the cause; the servers stay up.
        t = time.time()
        r = kubectl(a, "create", "configmap", "during-outage", "--request-timeout=60s", check=False, timeout=90)
        assert r.returncode != 0 and "cluster unavailable" in r.stderr, r.stderr
        assert time.time() - t < 45
        # Reads are still served, from the member that is up.
        got = kubectl(b, "get", "configmap", "before-outage", "-o", "jsonpath={.data.k}",
                      "--request-timeout=60s", timeout=90).stdout
        assert got == "v"
        assert "configmap/before-outage" in kubectl(a, "get", "configmaps", "-o", "name",
                                                    "--request-timeout=60s", timeout=90).stdout
        assert a.proc.poll() is None and b.proc.poll() is None
    finally:
        for i in lost:
            restart_member(ha.etcd, i)
    wait_for(lambda: ha.etcd.leader() is not None, timeout=60, what="etcd quorum back")
    # No restart of bosun: writes and reads work again through every server, and a leader
    # holds the Lease again.
    wait_for(lambda: kubectl(b, "create", "configmap", "after-outage", check=False).returncode == 0,
             timeout=60, what="writes after the outage")
    assert "configmap/after-outage" in kubectl(a, "get", "configmap", "after-outage", "-o", "name").stdout
    wait_for(lambda: json.loads(kubectl(a, "get", "lease", "-n", "kube-system", "bosun-controller-manager",
                                        "-o", "json").stdout)["spec"].get("holderIdentity"),
             timeout=30, what="a leader again")


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  # Each new pod counts as available only after 3 s, so the rollout outlives the leader
  # killed 1 s into it: a new leader has to finish it.
  minReadySeconds: 3
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxUnavailable: 1, maxSurge: 1}}
  template:
    metadata: {labels: {app: web}}
    spec:
      runtimeClassName: process
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: unused
        env: [{name: VERSION, value: "1"}]
        command: ["sh", "-c", "echo serving $VERSION; sleep 3600"]
"""

ROLLOUT_DEADLINE = 60  # seconds from the leader's death to the rollout's end


def test_leader_killed_during_a_rolling_update(ha):
    servers = ha.servers[:3]
    wait_for(lambda: sum(1 for s in servers if s.leads()) >= 1, timeout=30, what="a leader")
    lease = json.loads(kubectl(servers[0], "get", "lease", "-n", "kube-system", "bosun-controller-manager",
                               "-o", "json").stdout)["spec"]["holderIdentity"]
    leader = next(s for s in servers if f"bosun: {lease} is now the leader" in s.log())
    others = [s for s in servers if s is not leader]

    # A node agent given every server, the leader first.
    node = Bosun("ha-node")
    agent_dir = tempfile.mkdtemp(prefix="bosun-e2e-ha-agent-")
    agent_log = os.path.join(agent_dir, "agent.log")
    node_args = ["--node-name", node.node_name, "--bridge", node.bridge, "--service-interface",
                 node.service_interface, "--pod-cidr", node.pod_cidr, "--kubelet-port", str(node.kubelet_port),
                 "--http-port", str(node.http_port), "--https-port", str(node.https_port)]
    token = leader.file("node-token").decode().strip()
    agent = subprocess.Popen([bosun_bin(), "agent", "--data-dir", agent_dir, "--token", token,
                              *[a for s in [leader, *others] for a in ("--server", s.url)], *node_args],
                             stdout=open(agent_log, "ab"), stderr=subprocess.STDOUT,
                             env=dict(os.environ, RUST_LOG="info"))
    try:
        o = others[0]
        wait_for(lambda: kubectl(o, "get", "node", node.node_name, "-o",
                                 "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                                 check=False).stdout == "True", timeout=90, what="the node Ready")
        kubectl(o, "apply", "-f", "-", input=DEPLOYMENT)
        kubectl(o, "rollout", "status", "deployment/web", "--timeout=120s", timeout=150)

        kubectl(o, "set", "env", "deployment/web", "VERSION=2")
        time.sleep(1)  # the rollout is under way
        leader.stop(signal.SIGKILL)
        killed = time.time()
        kubectl(o, "rollout", "status", "deployment/web", f"--timeout={ROLLOUT_DEADLINE}s",
                timeout=ROLLOUT_DEADLINE + 30)
        took = time.time() - killed
        assert took <= ROLLOUT_DEADLINE
        # Under a new leader, with the agent on another server.
        def holder_now():
            return json.loads(kubectl(o, "get", "lease", "-n", "kube-system", "bosun-controller-manager",
                                      "-o", "json").stdout)["spec"].get("holderIdentity")
        holder = wait_for(lambda: (h := holder_now()) and h != lease and h, timeout=30,
                          what="a new holder of the leader lease")
        assert any(f"bosun: {holder} is now the leader" in s.log() for s in others)
        with open(agent_log, errors="replace") as f:
            assert "API server failover" in f.read()
        pods = json.loads(kubectl(o, "get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"
                   and not p["metadata"].get("deletionTimestamp")]
        assert len(running) == 3, [(p["metadata"]["name"], p["status"].get("phase")) for p in pods]
        for p in running:
            env = p["spec"]["containers"][0]["env"]
            assert {"name": "VERSION", "value": "2"} in env
        # The node keeps reporting through the surviving servers.
        time.sleep(3)
        ready = kubectl(o, "get", "node", node.node_name, "-o",
                        "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout
        assert ready == "True"
        print(f"rollout finished {took:.1f}s after the leader was killed")
        kubectl(o, "delete", "deployment", "web", "--wait=true", "--timeout=60s", check=False, timeout=90)
    except Exception:
        with open(agent_log, errors="replace") as f:
            print(f"--- agent ---\n{f.read()[-4000:]}")
        raise
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        subprocess.run([bosun_bin(), "reset", "--data-dir", agent_dir, *node_args[:8]],
                       capture_output=True, timeout=120)
        shutil.rmtree(agent_dir, ignore_errors=True)
        shutil.rmtree(node.data_dir, ignore_errors=True)
        leader.run(wait=False)
