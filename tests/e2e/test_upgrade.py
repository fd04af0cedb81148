"""Upgrading bosun in place: a new `bosun up` on the data dir of a running one takes over its
listening sockets while a bounded load runs through a Service's cluster IP, the gateway and
cluster DNS; no request may fail. A plain stop and start still works afterwards."""

import http.client
import ipaddress
import json
import random
import signal
import socket
import struct
import subprocess
import threading
import time

from conftest import HOSTNAME_SERVER, wait_for


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def objects():
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"runtimeClassName": "process",
                                        "containers": [{
                                            "name": "web",
                                            "command": ["python3", "-c", HOSTNAME_SERVER],
                                            "ports": [{"containerPort": 8080}],
                                            "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                               "periodSeconds": 1}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
         "spec": {"rules": [{"host": "web.local", "http": {"paths": [
             {"path": "/", "pathType": "Prefix",
              "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}},
    ]


class Load:
    """HTTP clients on one address, each keeping its connection alive and opening a new
    one every 10 requests; bounded in requests and time. Every failure counts."""

    def __init__(self, addr, port, host, clients, budget, seconds=60):
        self.addr, self.port, self.host = addr, port, host
        self.ok, self.errors, self.times = 0, [], []
        self.budget, self.deadline = budget, time.time() + seconds
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def take(self):
        with self.lock:
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True

    def run(self):
        conn, n = None, 0
        while not self.stop.is_set() and time.time() < self.deadline and self.take():
            n += 1
            try:
                if conn is None or n % 10 == 0:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection(self.addr, self.port, timeout=10)
                conn.request("GET", "/", headers={"Host": self.host})
                r = conn.getresponse()
                body = r.read().decode().strip()
                with self.lock:
                    if r.status == 200 and body.startswith("web-"):
                        self.ok += 1
                        self.times.append(time.time())
                    else:
                        self.errors.append(f"{time.time():.3f} status {r.status}: {body[:120]}")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.errors.append(f"{time.time():.3f} {e!r}")
                conn = None
            # Paced so that the budget lasts the whole upgrade, however long it takes.
            time.sleep(0.08)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def dns_query(server, name):
    """One A query over UDP, as a stub resolver makes it: two attempts of 1 s each."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for _ in range(2):
            s.sendto(q, (server, 53))
            try:
                data, _ = s.recvfrom(4096)
            except socket.timeout:
                continue
            rid, flags, _, an = struct.unpack(">HHHH", data[:8])
            if rid == qid:
                return flags & 0xF, an
    raise TimeoutError(f"no DNS answer for {name} from {server}")


class DnsLoad(Load):
    def __init__(self, server, budget, seconds=60):
        super().__init__(server, 53, None, 1, budget, seconds)

    def run(self):
        while not self.stop.is_set() and time.time() < self.deadline and self.take():
            try:
                rcode, answers = dns_query(self.addr, "web.default.svc.cluster.local")
                with self.lock:
                    if rcode == 0 and answers >= 1:
                        self.ok += 1
                        self.times.append(time.time())
                    else:
                        self.errors.append(f"{time.time():.3f} rcode {rcode}, {answers} answers")
            except OSError as e:
                with self.lock:
                    self.errors.append(f"{time.time():.3f} {e!r}")
            time.sleep(0.08)


def start_new_process(cluster):
    """A second `bosun up` with the same flags and data dir: the upgrade."""
    return subprocess.Popen(cluster.args(), stdout=cluster.log, stderr=subprocess.STDOUT)


def test_upgrade_in_place_under_load_drops_nothing(cluster):
    apply(cluster, *objects())
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=120s", timeout=150)
    vip = json.loads(cluster.kubectl("get", "svc", "web", "-o", "json").stdout)["spec"]["clusterIP"]
    dns = str(next(ipaddress.ip_network(cluster.pod_cidr).hosts()))

    def all_answer():
        c = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=5)
        c.request("GET", "/", headers={"Host": "web.local"})
        g = c.getresponse().status == 200
        c = http.client.HTTPConnection(vip, 80, timeout=5)
        c.request("GET", "/")
        v = c.getresponse().status == 200
        return g and v and dns_query(dns, "web.default.svc.cluster.local")[1] >= 1
    wait_for(all_answer, timeout=60, what="gateway, cluster IP and DNS answering")

    loads = {
        "cluster IP": Load(vip, 80, "web", clients=2, budget=1200),
        "gateway": Load("127.0.0.1", cluster.http_port, "web.local", clients=2, budget=1200),
        "DNS": DnsLoad(dns, budget=600),
    }
    old = cluster.proc
    for load in loads.values():
        load.start()
    try:
        time.sleep(2)
        began = time.time()
        new = start_new_process(cluster)
        try:
            old.wait(timeout=60)
        except subprocess.TimeoutExpired:
            new.send_signal(signal.SIGTERM)
            new.wait(timeout=30)
            raise AssertionError(f"the old process did not hand over:\n{cluster.tail_log(80)}")
        cluster.proc = new
        handed = time.time()
        wait_for(cluster.ready, timeout=60, what="the new process's API server")
        time.sleep(3)  # traffic on the new process alone
    finally:
        for load in loads.values():
            load.finish()

    assert old.returncode == 0, f"old process exited with {old.returncode}"
    assert new.poll() is None, f"new process exited:\n{cluster.tail_log(80)}"
    log = cluster.tail_log(400)
    assert "took over" in log and "upgrading in place" in log, log
    print(f"upgrade: old process gone after {handed - began:.1f}s; " + ", ".join(
        f"{name} {load.ok} ok / {len(load.errors)} failed" for name, load in loads.items()))
    for name, load in loads.items():
        assert load.errors == [], (
            f"{name}: {len(load.errors)} of {load.ok + len(load.errors)} failed "
            f"(upgrade began {began:.3f}, old process gone {handed:.3f}): {load.errors[:5]}")
        assert any(t < began for t in load.times), f"{name}: no traffic before the upgrade"
        assert any(t > handed for t in load.times), f"{name}: no traffic after the old process left"
        assert load.ok > 50, f"{name}: only {load.ok} requests"

    # The new process runs everything: pods are still managed, and a plain stop and start
    # (no process to hand over from) still works.
    cluster.kubectl("scale", "deploy/web", "--replicas=2")
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=60s", timeout=90)
    cluster.kill(signal.SIGTERM)
    cluster.start()
    wait_for(all_answer, timeout=60, what="everything answering after a plain restart")
