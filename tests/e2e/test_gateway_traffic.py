"""Traffic through the gateway while the cluster changes: a bounded load generator runs
through an Ingress during a rolling update of 5 replicas and a scale-down, and every
request must succeed; and gRPC (a real grpcio client and server) through an HTTPRoute to
a Service port that declares h2c."""

import http.client
import json
import sys
import threading
import time

import grpc
import pytest

from conftest import HOSTNAME_SERVER, wait_for

# A gRPC service without generated code: raw bytes in and out.
GRPC_SERVER = r'''
import os, signal, threading
from concurrent import futures
import grpc
def echo(req, ctx):
    return os.environ["HOSTNAME"].encode() + b":" + req
def count(req, ctx):
    for i in range(int(req)):
        yield str(i).encode()
    ctx.set_trailing_metadata((("x-count", req.decode()),))
handler = grpc.method_handlers_generic_handler("bosun.Echo", {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Count": grpc.unary_stream_rpc_method_handler(count),
})
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:9090")
server.start()
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
server.stop(5).wait()
'''


def deployment(name, replicas, command, port, probe):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": name,
                        "command": command,
                        "ports": [{"containerPort": port}],
                        "readinessProbe": dict(probe, periodSeconds=1),
                    }],
                },
            },
        },
    }


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def live_pods(cluster, app):
    out = json.loads(cluster.kubectl("get", "pods", "-l", f"app={app}", "-o", "json").stdout)
    return {p["metadata"]["name"] for p in out["items"] if not p["metadata"].get("deletionTimestamp")}


class Load:
    """Clients through the gateway, each keeping its connection alive (so draining must
    close it cleanly) and opening a fresh one now and then; bounded in count and time."""

    def __init__(self, port, host, clients=3, max_requests=6000, seconds=150):
        self.port, self.host = port, host
        self.ok, self.errors, self.seen = 0, [], set()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.budget = max_requests
        self.deadline = time.time() + seconds
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self):
        conn = None
        n = 0
        while not self.stop.is_set() and time.time() < self.deadline:
            with self.lock:
                if self.budget <= 0:
                    return
                self.budget -= 1
            n += 1
            try:
                if conn is None or n % 20 == 0:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/", headers={"Host": self.host})
                r = conn.getresponse()
                body = r.read().decode().strip()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                        self.seen.add(body.split()[0])
                    else:
                        self.errors.append(f"status {r.status}: {body[:200]}")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                # Every failure counts, a kept-alive connection closed under a request
                # included: draining must end connections only between requests.
                with self.lock:
                    self.errors.append(repr(e))
                conn = None
            time.sleep(0.005)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_rolling_update_and_scale_down_through_the_gateway_drop_nothing(cluster):
    apply(cluster,
          deployment("orders", 5, ["python3", "-c", HOSTNAME_SERVER], 8080,
                     {"httpGet": {"path": "/", "port": 8080}}),
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders"},
           "spec": {"selector": {"app": "orders"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "orders"},
           "spec": {"rules": [{"host": "orders.local", "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "orders", "port": {"number": 80}}}}]}}]}})
    cluster.kubectl("rollout", "status", "deploy/orders", "--timeout=120s", timeout=150)

    def answering():
        c = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=5)
        c.request("GET", "/", headers={"Host": "orders.local"})
        return c.getresponse().status == 200
    wait_for(answering, timeout=60, what="the gateway serving orders.local")
    before = live_pods(cluster, "orders")
    assert len(before) == 5

    with Load(cluster.http_port, "orders.local") as load:
        time.sleep(1)
        cluster.kubectl("set", "env", "deploy/orders", "ROLL=1")
        cluster.kubectl("rollout", "status", "deploy/orders", "--timeout=150s", timeout=180)
        after_roll = live_pods(cluster, "orders")
        cluster.kubectl("scale", "deploy/orders", "--replicas=2")
        wait_for(lambda: len(live_pods(cluster, "orders")) == 2, timeout=60, what="2 pods left")
        cluster.kubectl("rollout", "status", "deploy/orders", "--timeout=60s", timeout=90)
        time.sleep(2)  # traffic on the two that remain
    assert not (before & after_roll), "the rollout did not replace the pods"
    assert load.ok > 300, f"only {load.ok} requests went through"
    assert load.errors == [], f"{len(load.errors)} of {load.ok + len(load.errors)} failed: {load.errors[:5]}"
    # Old pods, new pods and, at the end, only the two that remain answered.
    assert load.seen & before and load.seen & after_roll, load.seen


def grpc_channel(cluster):
    return grpc.insecure_channel(f"127.0.0.1:{cluster.http_port}",
                                 options=[("grpc.default_authority", "echo.local")])


def test_grpc_through_the_gateway_to_an_h2c_port(cluster):
    apply(cluster,
          deployment("echo", 2, [sys.executable, "-c", GRPC_SERVER], 9090,
                     {"tcpSocket": {"port": 9090}}),
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
           "spec": {"selector": {"app": "echo"},
                    "ports": [{"name": "rpc", "port": 9090, "appProtocol": "kubernetes.io/h2c"}]}},
          {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "echo"},
           "spec": {"hostnames": ["echo.local"],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/bosun.Echo/"}}],
                               "backendRefs": [{"name": "echo", "port": 9090}]}]}})
    cluster.kubectl("rollout", "status", "deploy/echo", "--timeout=120s", timeout=150)
    pods = live_pods(cluster, "echo")
    with grpc_channel(cluster) as ch:
        echo = ch.unary_unary("/bosun.Echo/Echo")
        count = ch.unary_stream("/bosun.Echo/Count")

        def call():
            try:
                return echo(b"hi", timeout=5)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    return None  # the route is not programmed yet
                raise
        first = wait_for(call, timeout=60, what="gRPC through the gateway")
        answers = {first}
        for _ in range(40):
            answers.add(echo(b"hi", timeout=5))
        # Per-request balancing over both pods, and the payload intact.
        assert {a.split(b":")[0].decode() for a in answers} == pods, answers
        assert all(a.endswith(b":hi") for a in answers)
        # Streaming with trailers (gRPC status and custom metadata) passes through.
        stream = count(b"5", timeout=5)
        assert [m for m in stream] == [b"0", b"1", b"2", b"3", b"4"]
        assert dict(stream.trailing_metadata()).get("x-count") == "5"
        assert stream.code() == grpc.StatusCode.OK
        # An unknown method is the server's gRPC status, not a gateway error.
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/bosun.Echo/Nope")(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
