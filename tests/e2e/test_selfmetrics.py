"""bosun's own control plane in its metrics, and connection spans.

- The controllers' reconciles (controller-runtime's names) and the store's calls
  (kube-apiserver's etcd_* names, the store file's size) are scraped by the built-in store
  and can be queried from the Prometheus API after a Deployment was created.
- A TCP connection through a Service's cluster IP (a process pod echoing lines) leaves one
  span in the node proxy with protocol "tcp", the bytes each way and its duration; an
  HTTP/1.1 Upgrade (WebSocket) leaves a "websocket" span, child of its handshake's span.
"""

import json
import socket
import time
import urllib.parse
import urllib.request

from conftest import wait_for

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

ECHO = r'''
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("", 9000), H).serve_forever()
'''


def query(cluster, q):
    url = f"http://127.0.0.1:{cluster.console_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with NO_PROXY.open(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_controller_and_store_metrics(cluster):
    cluster.kubectl("create", "deployment", "selfm", "--image=none", "--", "sleep", "3600")
    cluster.kubectl("patch", "deployment", "selfm", "-p",
                    json.dumps({"spec": {"template": {"spec": {"runtimeClassName": "process"}}}}))
    r = wait_for(lambda: query(cluster, 'controller_runtime_reconcile_total{controller="deployment",result="success"} > 0'),
                 timeout=90, interval=1, what="deployment reconciles scraped")
    assert r[0]["metric"]["job"] == "bosun-apiserver"
    assert query(cluster, 'controller_runtime_reconcile_time_seconds_count{controller="replicaset"} > 0')
    assert query(cluster, 'controller_runtime_max_concurrent_reconciles{controller="deployment"} > 0')
    created = query(cluster, 'etcd_requests_total{operation="create",type="deployments.apps"}')
    assert created and float(created[0]["value"][1]) >= 1
    assert query(cluster, 'histogram_quantile(0.99, sum by (le) (rate(etcd_request_duration_seconds_bucket{operation="get"}[1m]))) >= 0')
    size = query(cluster, "apiserver_storage_size_bytes")
    assert size and float(size[0]["value"][1]) > 4096
    cluster.kubectl("delete", "deployment", "selfm")


def test_tcp_connection_span(cluster):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "echo", "labels": {"app": "echo"}},
        "spec": {"runtimeClassName": "process", "containers": [{
            "name": "echo", "image": "none", "command": ["python3", "-u", "-c", ECHO],
            "ports": [{"containerPort": 9000}],
            "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1}}]},
    }, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"name": "tcp", "port": 9000}]},
    }]}))
    ip = cluster.kubectl("get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()

    def talk():
        try:
            with socket.create_connection((ip, 9000), timeout=5) as s:
                s.sendall(b"hello bosun\n")
                data = s.recv(100)
                time.sleep(0.3)
                return data
        except OSError:
            return None
    assert wait_for(talk, timeout=90, interval=1, what="echo through the cluster IP") == b"HELLO BOSUN\n"

    def spans():
        r = cluster.kubectl("get", "--raw", "/bosun/v1/traces?service=default/echo&limit=50", check=False)
        if r.returncode != 0:
            return []
        body = json.loads(r.stdout)
        items = body.get("spans", body) if isinstance(body, dict) else body
        return [s for s in items if s.get("protocol") == "tcp" and s.get("bytesIn") == 12]
    s = wait_for(spans, timeout=30, what="a tcp span")[0]
    assert s["name"] == "proxy TCP default/echo"
    assert s["bytesOut"] == 12
    assert s["durationNanos"] >= 300_000_000
    assert s["upstream"].endswith(":9000")


# Answers an HTTP/1.1 Upgrade with 101, then echoes lines upper-cased on the raw connection
# (the proxy relays bytes after the upgrade; WebSocket framing is the ends' business).
UPGRADER = r'''
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        self.wfile.flush()
        for line in self.rfile:
            self.wfile.write(line.upper())
            self.wfile.flush()
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("", 9100), H).serve_forever()
'''


def test_websocket_connection_span(cluster):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ws", "labels": {"app": "ws"}},
        "spec": {"runtimeClassName": "process", "containers": [{
            "name": "ws", "image": "none", "command": ["python3", "-u", "-c", UPGRADER],
            "ports": [{"containerPort": 9100}],
            "readinessProbe": {"tcpSocket": {"port": 9100}, "periodSeconds": 1}}]},
    }, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ws"},
        "spec": {"selector": {"app": "ws"}, "ports": [{"name": "http", "port": 80, "targetPort": 9100}]},
    }]}))
    ip = cluster.kubectl("get", "svc", "ws", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()

    def talk():
        try:
            with socket.create_connection((ip, 80), timeout=5) as s:
                s.sendall(b"GET /chat HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(1000)
                    if not chunk:
                        return None
                    head += chunk
                if not head.startswith(b"HTTP/1.1 101"):
                    return None
                s.sendall(b"ping\n")
                data = s.recv(100)
                time.sleep(0.2)
                return data
        except OSError:
            return None
    assert wait_for(talk, timeout=90, interval=1, what="upgrade through the cluster IP") == b"PING\n"

    def spans():
        r = cluster.kubectl("get", "--raw", "/bosun/v1/traces?service=default/ws&limit=50", check=False)
        return json.loads(r.stdout)["spans"] if r.returncode == 0 else []
    conn = wait_for(lambda: [s for s in spans() if s.get("protocol") == "websocket"],
                    timeout=30, what="a websocket span")[0]
    assert conn["name"] == "proxy WebSocket default/ws"
    assert (conn["bytesIn"], conn["bytesOut"]) == (5, 5)
    assert conn["durationNanos"] >= 200_000_000
    # A child of the handshake's span (101) in the same trace.
    hs = [s for s in spans() if s["spanId"] == conn["parentSpanId"]]
    assert hs and hs[0]["status"] == 101 and hs[0]["traceId"] == conn["traceId"]
