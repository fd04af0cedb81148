"""Scale to zero counts open requests as activity, not only their arrival: a slow download
that stays open 10 s keeps a Deployment marked `bosun.dev/scale-to-zero-after: 3s` up while
it lasts (through the cluster IP, the gateway, and a port relayed as opaque TCP), and the
Deployment goes to zero once the download has ended and the window has passed."""

import http.client
import socket
import sys
import threading
import time

from conftest import wait_for
from test_scale_to_zero import apply, get, pod_count, replicas, service

# `/slow` sends 10 bytes, one a second; anything else answers at once.
SLOW_SERVER = r'''
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        n = 10 if self.path == "/slow" else 1
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        for i in range(n):
            if i:
                time.sleep(1)
            self.wfile.write(b"x")
            self.wfile.flush()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''

OPEN_FOR = 10


def deployment(name):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"bosun.dev/scale-to-zero-after": "3s"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app",
                        "command": [sys.executable, "-c", SLOW_SERVER],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }


def slow_http(host, port, headers=None):
    c = http.client.HTTPConnection(host, port, timeout=60)
    try:
        c.request("GET", "/slow", headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def slow_tcp(host, port):
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return (200 if head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200") else 0), body


def test_open_requests_keep_a_deployment_up_until_they_end(cluster):
    apply(cluster, deployment("longpoll"),
          service("longpoll", ports=[{"name": "http", "port": 80, "targetPort": 8080},
                                     {"name": "raw", "port": 81, "targetPort": 8080,
                                      "appProtocol": "tcp"}]),
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "longpoll"},
           "spec": {"rules": [{"host": "longpoll.local", "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "longpoll", "port": {"number": 80}}}}]}}]}})
    wait_for(lambda: get(cluster, "svc", "longpoll")["metadata"].get("annotations", {})
             .get("bosun.dev/scale-to-zero-target") == "longpoll", timeout=30, what="service marked")
    ip = get(cluster, "svc", "longpoll")["spec"]["clusterIP"]
    ways = {
        "cluster IP": lambda: slow_http(ip, 80),
        "gateway": lambda: slow_http("127.0.0.1", cluster.http_port, {"Host": "longpoll.local"}),
        "tcp": lambda: slow_tcp(ip, 81),
    }
    for way, call in ways.items():
        # Idle first: the download starts from zero and wakes the Deployment.
        wait_for(lambda: replicas(cluster, "longpoll") == 0, timeout=60, what=f"{way}: scale to zero")
        wait_for(lambda: pod_count(cluster, "longpoll") == 0, timeout=60, what=f"{way}: pods gone")
        result = {}
        t = threading.Thread(target=lambda: result.update(r=call()))
        t0 = time.time()
        t.start()
        wait_for(lambda: replicas(cluster, "longpoll") == 1, timeout=30, what=f"{way}: woken")
        # Three windows and more pass while the download is open: never scaled to zero.
        seen = []
        while t.is_alive():
            seen.append(replicas(cluster, "longpoll"))
            time.sleep(0.5)
        t.join()
        took = time.time() - t0
        assert result.get("r") == (200, b"x" * OPEN_FOR), (way, result)
        assert took >= OPEN_FOR - 1, (way, took)
        assert 0 not in seen, (way, seen)
        # Once it has ended, the window counts from its end.
        ended = time.time()
        wait_for(lambda: replicas(cluster, "longpoll") == 0, timeout=30, what=f"{way}: zero after the end")
        assert time.time() - ended >= 2, way
    cluster.kubectl("delete", "deploy/longpoll", "svc/longpoll", "ingress/longpoll")
