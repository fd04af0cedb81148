"""Scale to zero: an idle Deployment goes to zero replicas after its window, and the first
requests after that (to the cluster IP, over a TCP-declared port, and through the gateway)
wait while it comes back to its earlier count and then all get their answer. A Deployment
whose pod never becomes ready answers a waiting request with a 503 naming the Service once
the activation timeout passes. Also: a Docker pod (busybox httpd in a scratch image) from
zero, and the target of an HPA with minReplicas: 0 woken by a request."""

import http.client
import json
import socket
import sys
import threading
import time

from conftest import wait_for

# Takes a moment to start (as real apps do), then answers every GET with its pod name.
SLOW_SERVER = r'''
import http.server, os, time
time.sleep(0.5)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = (os.environ.get("HOSTNAME", "?") + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''


def deployment(name, replicas, after, probe_port=8080):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"bosun.dev/scale-to-zero-after": after}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": name,
                        "command": [sys.executable, "-c", SLOW_SERVER],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": probe_port}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }


def service(name, annotations=None, ports=None):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"selector": {"app": name},
                     "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}]}}


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get(cluster, kind, name):
    return json.loads(cluster.kubectl("get", kind, name, "-o", "json").stdout)


def replicas(cluster, name):
    return get(cluster, "deploy", name)["spec"].get("replicas")


def pod_count(cluster, app):
    out = json.loads(cluster.kubectl("get", "pods", "-l", f"app={app}", "-o", "json").stdout)
    return len(out["items"])


def http_get(host, port, headers=None, timeout=60):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", "/", headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def tcp_get(host, port, timeout=60):
    """HTTP/1.0 over a raw connection to a port the proxy relays as opaque TCP."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0].decode()
    return int(line.split()[1]) if line.startswith("HTTP/") else 0, data.decode(errors="replace")


def concurrently(calls):
    results = [None] * len(calls)

    def run(i, f):
        try:
            results[i] = f()
        except Exception as e:  # counted as a failure below
            results[i] = (0, repr(e))
    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_idle_deployment_goes_to_zero_and_queued_requests_wake_it(cluster):
    apply(cluster,
          deployment("sleepy", 2, "3s"),
          service("sleepy", ports=[{"name": "http", "port": 80, "targetPort": 8080},
                                   {"name": "raw", "port": 81, "targetPort": 8080,
                                    "appProtocol": "tcp"}]),
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "sleepy"},
           "spec": {"rules": [{"host": "sleepy.local", "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "sleepy", "port": {"number": 80}}}}]}}]}})
    cluster.kubectl("rollout", "status", "deploy/sleepy", "--timeout=120s", timeout=150)
    ip = get(cluster, "svc", "sleepy")["spec"]["clusterIP"]
    # The controller marks the Service so proxies hold its requests when it has no endpoint.
    wait_for(lambda: get(cluster, "svc", "sleepy")["metadata"].get("annotations", {})
             .get("bosun.dev/scale-to-zero-target") == "sleepy", timeout=30, what="service marked")
    assert http_get(ip, 80)[0] == 200

    # Traffic keeps it up: requests every second for longer than the 3s window.
    for _ in range(5):
        assert http_get("127.0.0.1", cluster.http_port, {"Host": "sleepy.local"})[0] == 200
        time.sleep(1)
    assert replicas(cluster, "sleepy") == 2

    # Idle: down to zero, remembering 2.
    t0 = time.time()
    wait_for(lambda: replicas(cluster, "sleepy") == 0, timeout=30, what="scale to zero")
    idle_for = time.time() - t0
    assert idle_for < 15, idle_for
    dep = get(cluster, "deploy", "sleepy")
    assert dep["metadata"]["annotations"]["bosun.dev/scale-to-zero-restore"] == "2"
    wait_for(lambda: pod_count(cluster, "sleepy") == 0, timeout=60, what="pods gone")
    events = cluster.kubectl("get", "events", "--field-selector",
                             "involvedObject.name=sleepy,reason=ScaledToZero").stdout
    assert "ScaledToZero" in events, events

    # 20 concurrent requests to the cluster IP, 20 through the gateway, 4 over the TCP port.
    n = 20
    calls = ([lambda: http_get(ip, 80)] * n
             + [lambda: http_get("127.0.0.1", cluster.http_port, {"Host": "sleepy.local"})] * n
             + [lambda: tcp_get(ip, 81)] * 4)
    t0 = time.time()
    results = concurrently(calls)
    took = time.time() - t0
    ok = sum(1 for r in results if r and r[0] == 200)
    failed = [r for r in results if not r or r[0] != 200]
    print(f"scale from zero: {ok}/{len(calls)} answered 200 in {took:.2f}s")
    assert ok == len(calls), failed[:5]
    assert replicas(cluster, "sleepy") == 2
    assert "bosun.dev/scale-to-zero-restore" not in get(cluster, "deploy", "sleepy")["metadata"]["annotations"]
    wait_for(lambda: pod_count(cluster, "sleepy") == 2, timeout=30, what="both pods back")


def test_request_gets_503_naming_the_service_when_no_pod_becomes_ready(cluster):
    # The readiness probe asks a port nothing listens on: the pod never becomes Ready.
    apply(cluster,
          deployment("stuck", 1, "2s", probe_port=9999),
          service("stuck", {"bosun.dev/activation-timeout": "3s"}))
    wait_for(lambda: replicas(cluster, "stuck") == 0, timeout=40, what="scale to zero")
    wait_for(lambda: pod_count(cluster, "stuck") == 0, timeout=60, what="pods gone")
    ip = get(cluster, "svc", "stuck")["spec"]["clusterIP"]
    t0 = time.time()
    status, body = http_get(ip, 80)
    waited = time.time() - t0
    assert status == 503, (status, body)
    assert "default/stuck" in body and "scaled to zero" in body, body
    assert waited >= 2.5, waited
    # The request did wake it (to the remembered count of 1).
    assert replicas(cluster, "stuck") == 1
    cluster.kubectl("delete", "deploy/stuck", "svc/stuck")


def test_service_without_scale_to_zero_fails_fast_without_endpoints(cluster):
    """Holding applies only to Services of Deployments marked for scale to zero."""
    apply(cluster, service("plain"))
    ip = get(cluster, "svc", "plain")["spec"]["clusterIP"]
    time.sleep(1)
    t0 = time.time()
    status, body = http_get(ip, 80)
    assert status == 503 and "no ready endpoints" in body, (status, body)
    assert time.time() - t0 < 2


def test_hpa_target_with_min_replicas_zero_is_woken(cluster):
    """A Deployment at zero that an HPA with minReplicas: 0 scales (HPAScaleToZero) gets
    its requests held and is brought back to one replica."""
    dep = deployment("hpazero", 0, "1h")
    del dep["metadata"]["annotations"]
    apply(cluster, dep, service("hpazero"),
          {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "hpazero"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hpazero"},
                    "minReplicas": 0, "maxReplicas": 3,
                    # Kubernetes allows minReplicas 0 only with an Object or External metric.
                    "metrics": [{"type": "Object", "object": {
                        "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "hpazero"},
                        "metric": {"name": "requests_per_second"},
                        "target": {"type": "Value", "value": "1"}}}]}})
    wait_for(lambda: get(cluster, "svc", "hpazero")["metadata"].get("annotations", {})
             .get("bosun.dev/scale-to-zero-target") == "hpazero", timeout=30, what="service marked")
    ip = get(cluster, "svc", "hpazero")["spec"]["clusterIP"]
    status, body = http_get(ip, 80)
    assert status == 200, body
    assert replicas(cluster, "hpazero") >= 1
    cluster.kubectl("delete", "hpa/hpazero", "deploy/hpazero", "svc/hpazero")


def test_docker_pod_scales_from_zero(cluster):
    """The same with a container: a scratch image with busybox httpd."""
    import test_docker
    if not test_docker._OK:
        import pytest
        pytest.skip(f"no Docker engine: {test_docker._WHY}")
    image = f"{test_docker.APP}-s2z"
    test_docker.build_image(image, "v1")
    try:
        dep = deployment("boxy", 1, "2s")
        c = dep["spec"]["template"]["spec"]
        del c["runtimeClassName"]
        c["containers"][0].pop("command")
        c["containers"][0].update(image=f"{image}:v1", imagePullPolicy="Never")
        apply(cluster, dep, service("boxy"))
        wait_for(lambda: replicas(cluster, "boxy") == 0, timeout=60, what="scale to zero")
        wait_for(lambda: pod_count(cluster, "boxy") == 0, timeout=60, what="pods gone")
        ip = get(cluster, "svc", "boxy")["spec"]["clusterIP"]
        results = concurrently([lambda: http_get(ip, 80)] * 10)
        assert [r[0] for r in results] == [200] * 10, results
        assert all(r[1] == "v1\n" for r in results), results
        assert replicas(cluster, "boxy") == 1
        cluster.kubectl("delete", "deploy/boxy", "svc/boxy")
    finally:
        import subprocess
        subprocess.run(["docker", "rmi", "-f", f"{image}:v1"], capture_output=True)
