"""bosun on an etcd cluster: `bosun up --store etcd://...` runs workloads, a server
whose etcd is unreachable says so and starts once etcd answers, and two `bosun server` processes on one
etcd elect one leader for the controllers and scheduler, which moves when it dies.

Each test starts its own 3-member etcd (Debian's etcd-server) on free loopback ports
with data dirs in a temporary directory, and kills it by PID at the end.
"""

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import Bosun, bosun_bin, free_port, wait_for

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class Etcd:
    """A real etcd cluster of `n` members on loopback."""

    def __init__(self, n=3):
        if not os.path.exists(ETCD):
            raise AssertionError("etcd is not installed (Debian package etcd-server; scripts/test.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="bosun-e2e-etcd-")
        self.members = [dict(name=f"m{i}", client=free_port(), peer=free_port(), proc=None) for i in range(n)]
        initial = ",".join(f"{m['name']}=http://127.0.0.1:{m['peer']}" for m in self.members)
        for m in self.members:
            log = open(os.path.join(self.dir, f"{m['name']}.log"), "ab")
            m["proc"] = subprocess.Popen([
                ETCD, "--name", m["name"], "--data-dir", os.path.join(self.dir, m["name"]),
                "--listen-client-urls", f"http://127.0.0.1:{m['client']}",
                "--advertise-client-urls", f"http://127.0.0.1:{m['client']}",
                "--listen-peer-urls", f"http://127.0.0.1:{m['peer']}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{m['peer']}",
                "--initial-cluster", initial, "--initial-cluster-token", os.path.basename(self.dir),
                "--initial-cluster-state", "new",
                "--experimental-watch-progress-notify-interval", "5s",
            ], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: all(self.healthy(i) for i in range(n)) and self.leader() is not None,
                 timeout=60, what="etcd cluster healthy")

    def url(self, i):
        return f"http://127.0.0.1:{self.members[i]['client']}"

    def store_flag(self):
        return "etcd://" + ",".join(f"127.0.0.1:{m['client']}" for m in self.members)

    def healthy(self, i):
        try:
            with urllib.request.urlopen(self.url(i) + "/health", timeout=2) as r:
                return json.load(r).get("health") == "true"
        except Exception:
            return False

    def call(self, i, path, body):
        """etcd's JSON gateway (v3 API over HTTP)."""
        req = urllib.request.Request(self.url(i) + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def leader(self):
        """Index of the leading member, as the live members report it."""
        ids, leader = {}, None
        for i, m in enumerate(self.members):
            if m["proc"].poll() is not None:
                continue
            try:
                s = self.call(i, "/v3/maintenance/status", {})
            except Exception:
                continue
            ids[s["header"]["member_id"]] = i
            leader = s.get("leader") or leader
        return ids.get(leader)

    def keys(self, prefix):
        live = next(i for i, m in enumerate(self.members) if m["proc"].poll() is None)
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        b64 = lambda s: base64.b64encode(s.encode()).decode()
        r = self.call(live, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end), "keys_only": True})
        return [base64.b64decode(kv["key"]).decode() for kv in r.get("kvs", [])]

    def kill(self, i):
        p = self.members[i]["proc"]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)

    def stop(self):
        for i in range(len(self.members)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdBosun(Bosun):
    def __init__(self, name, etcd):
        super().__init__(name)
        self.etcd = etcd
        self.on_etcd = True

    def args(self):
        return super().args() + (["--store", self.etcd.store_flag()] if self.on_etcd else [])


@pytest.fixture
def etcd():
    e = Etcd(3)
    yield e
    e.stop()


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      runtimeClassName: process
      containers:
      - name: web
        image: unused
        command: ["sh", "-c", "echo serving; sleep 3600"]
"""


def watch_first_line(b, path):
    ctx = ssl.create_default_context(cafile=os.path.join(b.data_dir, "pki", "ca.crt"))
    req = urllib.request.Request(f"https://127.0.0.1:{b.api_port}{path}",
                                 headers={"Authorization": f"Bearer {b.token()}"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.loads(r.readline())


def running_pods(b, selector="app=web"):
    out = b.kubectl("get", "pods", "-l", selector, "-o",
                    "jsonpath={range .items[*]}{.status.phase}{'\\n'}{end}", check=False).stdout
    return out.split().count("Running")


def test_up_on_etcd_runs_a_deployment_and_survives_an_etcd_member(etcd):
    b = EtcdBosun("etcd-up", etcd)
    try:
        b.start(timeout=90)
        b.kubectl("apply", "-f", "-", input=DEPLOYMENT)
        wait_for(lambda: running_pods(b) == 2, timeout=90, what="2 pods Running")
        # The objects live in etcd, laid out as Kubernetes lays them out.
        assert "/registry/deployments/default/web" in etcd.keys("/registry/deployments/")
        assert any(k.startswith("/registry/pods/default/web-") for k in etcd.keys("/registry/pods/"))
        assert f"/registry/minions/{b.node_name}" in etcd.keys("/registry/minions/")

        # A watch from history etcd has compacted away is 410 Gone, as from Kubernetes.
        rev = int(etcd.call(0, "/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        etcd.call(0, "/v3/kv/compaction", {"revision": str(rev)})
        gone = watch_first_line(b, "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=2")
        assert gone["type"] == "ERROR" and gone["object"]["code"] == 410, gone

        # Losing the etcd leader costs a pause, not the control plane.
        etcd.kill(etcd.leader())
        wait_for(lambda: etcd.leader() is not None, timeout=30, what="a new etcd leader")
        b.kubectl("scale", "deployment", "web", "--replicas=3", timeout=60)
        wait_for(lambda: running_pods(b) == 3, timeout=90, what="3 pods Running after the etcd leader died")
        assert "Running" in b.kubectl("get", "pods", "-l", "app=web").stdout
    except Exception:
        print(f"--- bosun log ---\n{b.tail_log(120)}")
        raise
    finally:
        b.stop()


def test_server_waits_for_an_unreachable_etcd_and_starts_when_it_answers():
    data_dir = tempfile.mkdtemp(prefix="bosun-e2e-noetcd-")
    etcd_dir = tempfile.mkdtemp(prefix="bosun-e2e-lateetcd-")
    port, peer, api = free_port(), free_port(), free_port()
    log_path = os.path.join(data_dir, "server.log")
    server = subprocess.Popen([bosun_bin(), "server", "--data-dir", data_dir,
                               "--listen", f"127.0.0.1:{api}", "--service-cidr", "10.96.78.0/24",
                               "--store", f"etcd://127.0.0.1:{port}"],
                              stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    etcd = None
    read = lambda: open(log_path, errors="replace").read()
    try:
        # It says what is wrong, keeps trying, and serves nothing meanwhile.
        wait_for(lambda: "did not answer" in read() and "starts once etcd answers" in read(),
                 timeout=60, what="the server saying etcd does not answer")
        assert f"127.0.0.1:{port}" in read()
        assert server.poll() is None, read()
        assert not os.path.exists(os.path.join(data_dir, "kubeconfig")), "a kubeconfig for a server that never ran"
        # etcd comes up: the server starts by itself.
        etcd = subprocess.Popen([
            ETCD, "--name", "late", "--data-dir", os.path.join(etcd_dir, "late"),
            "--listen-client-urls", f"http://127.0.0.1:{port}", "--advertise-client-urls", f"http://127.0.0.1:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"late=http://127.0.0.1:{peer}"],
            stdout=open(os.path.join(etcd_dir, "etcd.log"), "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(os.path.join(data_dir, "kubeconfig")), timeout=90,
                 what="the server starting once etcd answers")
        assert "etcd answers again" in read(), read()
        r = subprocess.run(["kubectl", "get", "namespace", "default", "-o", "name"], capture_output=True, text=True,
                           env=dict(os.environ, KUBECONFIG=os.path.join(data_dir, "kubeconfig")), timeout=60)
        assert r.stdout.strip() == "namespace/default", r.stderr
    finally:
        for p in (server, etcd):
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM if p is server else signal.SIGKILL)
                p.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(etcd_dir, ignore_errors=True)


def test_bad_store_flag_is_refused():
    r = subprocess.run([bosun_bin(), "server", "--data-dir", "/nonexistent/never-created",
                        "--store", "etcd://no-port-here"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--store" in r.stderr and "HOST:PORT" in r.stderr, r.stderr


class Server:
    """One `bosun server` process on the shared etcd."""

    def __init__(self, name, etcd, join_token=None):
        self.b = Bosun(name)  # only for its unique data dir and ports
        self.log_path = os.path.join(self.b.data_dir, "server.log")
        self.proc = subprocess.Popen(
            [bosun_bin(), "server", "--data-dir", self.b.data_dir,
             "--listen", f"127.0.0.1:{self.b.api_port}", "--service-cidr", "10.96.77.0/24",
             "--store", etcd.store_flag()] + (["--join-token", join_token] if join_token else []),
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def identity(self):
        """The identity this server campaigns with, once it has led."""
        for line in self.log().splitlines():
            if "is now the leader" in line:
                return line.split("bosun: ", 1)[1].split(" is now the leader")[0]
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        shutil.rmtree(self.b.data_dir, ignore_errors=True)


def lease(b):
    r = b.kubectl("get", "lease", "-n", "kube-system", "bosun-controller-manager", "-o", "json")
    return json.loads(r.stdout)["spec"]


def test_two_servers_elect_one_leader_and_fail_over(etcd):
    servers = [Server("etcd-s1", etcd)]
    try:
        token_file = os.path.join(servers[0].b.data_dir, "server-token")
        wait_for(lambda: os.path.exists(token_file), timeout=90, what="the first server's server-token")
        with open(token_file) as f:
            servers.append(Server("etcd-s2", etcd, f.read().strip()))
        for s in servers:
            wait_for(lambda: os.path.exists(s.b.kubeconfig) and s.b.ready(), timeout=90, what="server ready")
        # Every server serves the API; exactly one leads.
        wait_for(lambda: sum(1 for s in servers if s.identity()) == 1, timeout=30, what="one leader")
        time.sleep(3)  # a second leader would show up within a lease duration
        leaders = [s for s in servers if s.identity()]
        assert len(leaders) == 1, [s.log() for s in servers]
        leader = leaders[0]
        other = next(s for s in servers if s is not leader)
        spec = lease(other.b)
        assert spec["holderIdentity"] == leader.identity()
        assert spec["leaseDurationSeconds"] == 4
        transitions = spec.get("leaseTransitions", 0)

        # The controllers run on the leader: a Deployment created through the other
        # server gets its ReplicaSet and pods (Pending: no node joined).
        other.b.kubectl("apply", "-f", "-", input=DEPLOYMENT)
        wait_for(lambda: len(other.b.kubectl("get", "pods", "-l", "app=web", "-o", "name").stdout.split()) == 2,
                 timeout=60, what="pods of the first deployment")

        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(timeout=30)
        killed = time.time()
        wait_for(lambda: other.identity() is not None, timeout=30, what="the other server taking over")
        took_over = time.time() - killed
        spec = lease(other.b)
        assert spec["holderIdentity"] == other.identity()
        assert spec["leaseTransitions"] == transitions + 1

        # A Deployment created after the failover gets its pods from the new leader.
        other.b.kubectl("apply", "-f", "-", input=DEPLOYMENT.replace("web", "api"))
        wait_for(lambda: len(other.b.kubectl("get", "pods", "-l", "app=api", "-o", "name").stdout.split()) == 2,
                 timeout=60, what="pods of a deployment created after the failover")
        print(f"new leader after {took_over:.1f}s")
    except Exception:
        for s in servers:
            print(f"--- {s.b.name} log ---\n{s.log()[-4000:]}")
        raise
    finally:
        for s in servers:
            s.stop()


def test_migrate_from_the_embedded_store_to_etcd(etcd):
    b = EtcdBosun("etcd-mig", etcd)
    b.on_etcd = False
    try:
        b.start(timeout=90)
        b.kubectl("apply", "-f", "-", input=DEPLOYMENT)
        wait_for(lambda: running_pods(b) == 2, timeout=90, what="2 pods Running on redb")
        uids = b.kubectl("get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.uid}").stdout.split()

        # Refused while bosun holds the store file.
        r = b.cli("store", "migrate", "--from", os.path.join(b.data_dir, "store.redb"),
                  "--to", etcd.store_flag(), check=False)
        assert r.returncode != 0 and "still running" in r.stderr, r.stderr

        b.kill(signal.SIGTERM)
        r = b.cli("store", "migrate", "--from", os.path.join(b.data_dir, "store.redb"), "--to", etcd.store_flag())
        assert "copied" in r.stdout, r.stdout
        assert "/registry/deployments/default/web" in etcd.keys("/registry/deployments/")

        # The same server on etcd has every object; its pods kept running throughout.
        b.on_etcd = True
        b.start(timeout=90)
        wait_for(lambda: running_pods(b) == 2, timeout=90, what="the migrated pods Running on etcd")
        after = b.kubectl("get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.uid}").stdout.split()
        assert sorted(after) == sorted(uids)
        b.kubectl("scale", "deployment", "web", "--replicas=3", timeout=60)
        wait_for(lambda: running_pods(b) == 3, timeout=90, what="3 pods Running after the migration")

        # A second migration into the now-used cluster is refused.
        r = b.cli("store", "migrate", "--from", os.path.join(b.data_dir, "store.redb"),
                  "--to", etcd.store_flag(), check=False)
        assert r.returncode != 0 and "already holds bosun data" in r.stderr, r.stderr
    except Exception:
        print(f"--- bosun log ---\n{b.tail_log(120)}")
        raise
    finally:
        b.stop()


def test_backup_of_a_live_etcd_cluster_restores_into_a_new_embedded_store(etcd):
    b = EtcdBosun("etcd-bk", etcd)
    restored = Bosun("etcd-rs")
    backup = os.path.join(restored.data_dir, "..", os.path.basename(restored.data_dir) + ".backup")
    try:
        b.start(timeout=90)
        b.kubectl("apply", "-f", "-", input=DEPLOYMENT)
        wait_for(lambda: running_pods(b) == 2, timeout=90, what="2 pods Running")
        uid = b.kubectl("get", "deployment", "web", "-o", "jsonpath={.metadata.uid}").stdout
        # Live: the etcd-backed cluster keeps running while it is backed up.
        r = b.cli("backup", "--out", backup, "--store", etcd.store_flag())
        assert "backed up" in r.stdout, r.stdout
        # The drill keeps the credentials and the Secrets key beside the backup: Secrets
        # (bosun's own among them) stay encrypted in it.
        shutil.copytree(os.path.join(b.data_dir, "pki"), os.path.join(restored.data_dir, "pki"))
        shutil.copy(os.path.join(b.data_dir, "encryption-config.yaml"), restored.data_dir)
        b.stop()

        r = restored.cli("restore", "--from", backup, "--data-dir", restored.data_dir)
        assert "restored" in r.stdout, r.stdout
        r = restored.cli("restore", "--from", backup, "--data-dir", restored.data_dir, check=False)
        assert r.returncode != 0 and "already holds bosun data" in r.stderr, r.stderr
        with open(backup, "a") as f:
            f.write("not json\n")
        other = tempfile.mkdtemp(prefix="bosun-e2e-restore-")
        r = restored.cli("restore", "--from", backup, "--data-dir", other, check=False)
        assert r.returncode != 0 and "damaged" in r.stderr, r.stderr
        assert not os.path.exists(os.path.join(other, "store.redb")), "a damaged backup was half-restored"
        shutil.rmtree(other, ignore_errors=True)

        restored.start(timeout=90)
        got = restored.kubectl("get", "deployment", "web", "-o", "jsonpath={.metadata.uid}").stdout
        assert got == uid
    except Exception:
        print(f"--- bosun log ---\n{b.tail_log(80)}\n--- restored ---\n{restored.tail_log(80)}")
        raise
    finally:
        b.stop()
        restored.stop()
        if os.path.exists(backup):
            os.remove(backup)
