"""Cross-node request latency: a pod on one host calls a pod on another host, directly by pod
IP and through the node proxy (the Service's cluster IP), on a multi-host cluster of network
namespaces (see multihost.py).

    BOSUN_BIN=target/debug/bosun python3 tests/e2e/bench_crossnode_latency.py [REQUESTS]

The server is a Python HTTP/1.1 server pinned to host-1; the client, pinned to host-0, sends
REQUESTS GET requests (default 2000) per path after 100 unmeasured ones, both on one kept-alive
connection and with a new connection per request, and prints p50/p90/p99 per path. Direct
traffic goes pod -> host-0 bridge -> route to host-1 -> pod; through the Service it goes pod
-> host-0's node proxy (which terminates HTTP and picks the endpoint) -> host-1 -> pod.
"""

import json
import sys
import time

from conftest import wait_for
from multihost import MultiHost

# Answers GET with its name in one write, Nagle off: with headers and body in two writes a
# kept-alive connection waits for the peer's delayed ACK (~40 ms) on every response, which
# would measure TCP's timers instead of the path.
SERVER = r"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        b = (os.environ.get("HOSTNAME", "?") + "\n").encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(b)}\r\n\r\n".encode()
        self.wfile.write(head + b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"""

CLIENT = r"""
import http.client, json, sys, time
n = int(sys.argv[1])
targets = {"direct": (sys.argv[2], 8080), "service": (sys.argv[3], 80)}

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def once(conn):
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(r.status)

out = {}
for name, (host, port) in targets.items():
    # Wait until the path answers (routes, endpoints and the proxy's listener are set up).
    for _ in range(600):
        try:
            c = http.client.HTTPConnection(host, port, timeout=3)
            once(c)
            c.close()
            break
        except Exception:
            time.sleep(0.1)
    for mode in ("keepalive", "new-connection"):
        conn = http.client.HTTPConnection(host, port, timeout=5)
        lat = []
        for i in range(n + 100):
            if mode == "new-connection":
                conn = http.client.HTTPConnection(host, port, timeout=5)
            t = time.perf_counter()
            once(conn)
            took = time.perf_counter() - t
            if mode == "new-connection":
                conn.close()
            if i >= 100:
                lat.append(took * 1000)
        conn.close()
        out[f"{name}/{mode}"] = {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                                 "max": max(lat), "n": len(lat)}
print("RESULT " + json.dumps(out), flush=True)
time.sleep(3600)
"""


def manifests(server_node):
    server = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "lat-server", "labels": {"app": "lat-server"}},
              "spec": {"nodeName": server_node, "runtimeClassName": "process",
                       "terminationGracePeriodSeconds": 1,
                       "containers": [{"name": "web", "image": "unused",
                                       "command": ["python3", "-c", SERVER],
                                       "ports": [{"containerPort": 8080}],
                                       "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                          "periodSeconds": 1}}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lat-server"},
           "spec": {"selector": {"app": "lat-server"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    return server, svc


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    mh = MultiHost(2)
    try:
        mh.start()
        server_node, client_node = mh.hosts[1].node_name, mh.hosts[0].node_name
        server, svc = manifests(server_node)
        mh.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": [server, svc]}))
        mh.kubectl("wait", "--for=condition=Ready", "pod/lat-server", "--timeout=120s")
        pod_ip = json.loads(mh.kubectl("get", "pod", "lat-server", "-o", "json").stdout)["status"]["podIP"]
        cluster_ip = json.loads(mh.kubectl("get", "svc", "lat-server", "-o", "json").stdout)["spec"]["clusterIP"]
        client = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lat-client"},
                  "spec": {"nodeName": client_node, "runtimeClassName": "process",
                           "terminationGracePeriodSeconds": 1,
                           "containers": [{"name": "c", "image": "unused",
                                           "command": ["python3", "-c", CLIENT, str(n), pod_ip,
                                                       cluster_ip]}]}}
        mh.kubectl("apply", "-f", "-", input=json.dumps(client))

        def result():
            out = mh.kubectl("logs", "lat-client", check=False).stdout
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    return json.loads(line[len("RESULT "):])
            return None
        res = wait_for(result, timeout=600, interval=1, what="client results")
        print(f"{n} requests per path, server on {server_node}, client on {client_node}")
        print(f"{'path':28} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for k, v in res.items():
            print(f"{k:28} {v['p50']:8.3f} {v['p90']:8.3f} {v['p99']:8.3f} {v['max']:8.3f}")
        with open("/proc/loadavg") as f:
            print("load average:", " ".join(f.read().split()[:3]))
        mh.kubectl("delete", "pod", "lat-client", "lat-server", "--wait=false")
    except Exception:
        print(mh.logs())
        raise
    finally:
        mh.stop()


if __name__ == "__main__":
    main()
