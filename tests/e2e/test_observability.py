"""Logs and traces: `kubectl logs` options against process pods, `bosun logs` through the
log search API (grep, since, a selector across two Deployments, all namespaces, follow, a
deleted pod's logs), its RBAC, and request spans of the gateway and node proxy for a
request through gateway -> service A -> service B, read back with `bosun traces`, from the
gateway's admin listener, and received by a real OTLP/gRPC receiver."""

import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures

import grpc
import pytest

from conftest import Bosun, bosun_bin, free_port, wait_for

try:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
except ImportError:  # scripts/test.sh installs it
    trace_service_pb2 = None


class Receiver:
    """An OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        outer = self

        class Svc(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                with outer.lock:
                    for rs in request.resource_spans:
                        svc = [a.value.string_value for a in rs.resource.attributes
                               if a.key == "service.name"]
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                attrs = {a.key: a.value for a in s.attributes}
                                outer.spans.append({
                                    "service.name": svc[0] if svc else None,
                                    "trace": s.trace_id.hex(),
                                    "span": s.span_id.hex(),
                                    "parent": s.parent_span_id.hex(),
                                    "component": attrs["bosun.component"].string_value,
                                    "service": attrs["bosun.service"].string_value,
                                    "status": attrs["http.response.status_code"].int_value,
                                    "duration": s.end_time_unix_nano - s.start_time_unix_nano,
                                })
                return trace_service_pb2.ExportTraceServiceResponse()

        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Svc(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def of_trace(self, trace_id):
        with self.lock:
            return [s for s in self.spans if s["trace"] == trace_id]


class ObservedBosun(Bosun):
    def __init__(self, name, otlp_port):
        super().__init__(name)
        self.otlp_port = otlp_port
        self.admin_port = free_port()

    def args(self):
        return super().args() + [
            "--otlp-endpoint", f"http://127.0.0.1:{self.otlp_port}",
            "--gateway-admin-port", str(self.admin_port),
        ]


@pytest.fixture(scope="module")
def env(request):
    if trace_service_pb2 is None:
        pytest.skip("opentelemetry-proto is not installed (pip install opentelemetry-proto)")
    receiver = Receiver()
    b = ObservedBosun("observe", receiver.port)
    b.start()
    yield b, receiver
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()
    receiver.server.stop(0)


# Prints a tagged line now and then: `NAME tick N`, and once `NAME early` ... `NAME late`.
TICKER = r'''
import os, sys, time
name = os.environ["NAME"]
print(f"{name} early", flush=True)
time.sleep(6)
print(f"{name} late", flush=True)
i = 0
while True:
    print(f"{name} tick {i}", flush=True)
    print(f"{name} to stderr {i}", file=sys.stderr, flush=True)
    i += 1
    time.sleep(1)
'''


def ticker(name, labels, namespace="default"):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": dict(labels, app=name)},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "command": ["python3", "-u", "-c", TICKER],
                        "env": [{"name": "NAME", "value": name}],
                    }],
                },
            },
        },
    }


def apply(b, *objs):
    b.kubectl("apply", "-f", "-",
              input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def pod_of(b, app, namespace="default"):
    def one():
        out = json.loads(b.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}",
                                   "-o", "json").stdout)
        running = [p for p in out["items"] if p.get("status", {}).get("phase") == "Running"]
        return running[0]["metadata"]["name"] if running else None
    return wait_for(one, timeout=60, what=f"a running pod of {app}")


def test_kubectl_logs_options(env):
    b, _ = env
    apply(b, ticker("kube", {"team": "k"}))
    pod = pod_of(b, "kube")
    wait_for(lambda: "kube tick 2" in b.kubectl("logs", pod).stdout, timeout=60,
             what="three ticks")
    # --tail: the last lines only (stdout and stderr together, in order).
    tail = b.kubectl("logs", pod, "--tail=2").stdout.splitlines()
    assert len(tail) == 2, tail
    # --timestamps: RFC 3339 with nanoseconds before each line.
    ts = b.kubectl("logs", pod, "--timestamps", "--tail=1").stdout
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z kube ", ts), ts
    # --since: "early" was written 6 s before "late".
    stamped = b.kubectl("logs", pod, "--timestamps").stdout.splitlines()
    late = next(l for l in stamped if l.endswith("kube late")).split()[0]
    age = time.time() - parse_ts(late)
    since = int(age) + 2
    out = b.kubectl("logs", pod, f"--since={since}s").stdout
    assert "kube late" in out and "kube early" not in out, (since, out)
    out = b.kubectl("logs", pod, f"--since-time={late}").stdout
    assert "kube late" in out and "kube early" not in out, out
    # -p: the previous attempt of a restarted container.
    crash = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash"},
             "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                      "containers": [{"name": "main", "command": [
                          "sh", "-c", "echo attempt-$(date +%s%N); sleep 1; exit 3"]}]}}
    apply(b, crash)

    def restarted():
        st = json.loads(b.kubectl("get", "pod", "crash", "-o", "json").stdout)["status"]
        return (st.get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1
    wait_for(restarted, timeout=60, what="a restart")
    prev = b.kubectl("logs", "crash", "-p").stdout
    assert prev.startswith("attempt-"), prev
    b.kubectl("delete", "pod", "crash", "--wait=false")


def parse_ts(s):
    # 2026-12-06T22:34:16.123456789Z
    base, frac = s.rstrip("Z").split(".")
    import calendar
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)


def test_bosun_logs_search(env):
    b, _ = env
    b.kubectl("create", "namespace", "other", check=False)
    apply(b, ticker("alpha", {"team": "x"}), ticker("beta", {"team": "x"}),
          ticker("gamma", {"team": "y"}, namespace="other"))
    alpha, beta = pod_of(b, "alpha"), pod_of(b, "beta")
    pod_of(b, "gamma", "other")

    def both():
        out = b.cli("logs", "-l", "team=x", "--grep", "tick [1-9]").stdout
        return out if (f"default/{alpha}/main alpha tick" in out
                       and f"default/{beta}/main beta tick" in out) else None
    out = wait_for(both, timeout=60, what="ticks of both Deployments")
    lines = out.splitlines()
    assert all(re.search(r" (alpha|beta) tick [1-9]", l) for l in lines), lines
    assert not any("stderr" in l for l in lines), "grep filters"

    # One pod, one container: no prefix. --tail counts lines per container.
    wait_for(lambda: "alpha tick 3" in b.cli("logs", alpha).stdout, timeout=30,
             what="four ticks")
    one = b.cli("logs", alpha, "--grep", "tick", "--tail", "3").stdout.splitlines()
    assert len(one) == 3 and all(l.startswith("alpha tick") for l in one), one
    two = b.cli("logs", "-l", "team=x", "--grep", "early", "--tail", "1").stdout.splitlines()
    assert sorted(l.split()[1] for l in two) == ["alpha", "beta"], two
    # deploy/NAME resolves to its selector.
    dep = b.cli("logs", "deploy/beta", "--grep", "early").stdout
    assert dep.strip() == f"default/{beta}/main beta early", dep

    # --since: the early line is 6 s older than the late one.
    stamped = b.cli("logs", alpha, "--timestamps", "--grep", "late").stdout.split()
    age = time.time() - parse_ts(stamped[0])
    recent = b.cli("logs", alpha, "--since", f"{int(age) + 2}s").stdout
    assert "alpha late" in recent and "alpha early" not in recent, recent

    # -A: every namespace, each line naming its namespace.
    everywhere = b.cli("logs", "-A", "--grep", "early").stdout
    assert f"default/{alpha}/main alpha early" in everywhere, everywhere
    assert re.search(r"^other/gamma-[^/]+/main gamma early$", everywhere, re.M), everywhere
    # The namespace of the kubeconfig only, without -A.
    assert "gamma" not in b.cli("logs", "-l", "team=y").stdout

    # -f: follows, and lines keep coming.
    p = subprocess.Popen([bosun_bin(), "logs", "-f", "-l", "team=x", "--grep", "tick"],
                         stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, KUBECONFIG=b.kubeconfig))
    try:
        seen = set()
        deadline = time.time() + 30
        while time.time() < deadline and len(seen) < 4:
            line = p.stdout.readline()
            m = re.search(r"(alpha|beta) tick (\d+)", line)
            if m:
                seen.add(line.strip())
        assert len(seen) >= 4, seen
    finally:
        p.kill()
        p.wait()

    # A deleted pod's logs stay searchable; kubectl has nothing left to ask.
    gone = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gone", "labels": {"app": "gone"}},
            "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "command": [
                         "sh", "-c", "echo farewell-marker; exec sleep 3600"]}]}}
    apply(b, gone)
    wait_for(lambda: "farewell-marker" in b.kubectl("logs", "gone", check=False).stdout,
             timeout=60, what="the pod's line")
    b.kubectl("delete", "pod", "gone", "--wait=true", "--timeout=60s")
    assert b.kubectl("logs", "gone", check=False).returncode != 0
    after = b.cli("logs", "gone").stdout
    assert after.strip().endswith("farewell-marker"), after
    assert "farewell-marker" in b.cli("logs", "-l", "app=gone").stdout
    assert "farewell-marker" not in b.cli("logs", "-l", "app=gone", "--no-deleted").stdout


def api(b, path, token):
    ctx = ssl.create_default_context(cafile=os.path.join(b.data_dir, "pki", "ca.crt"))
    req = urllib.request.Request(f"https://127.0.0.1:{b.api_port}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_log_search_api_and_rbac(env):
    b, _ = env
    status, body = api(b, "/apis/logs.bosun.dev/v1/namespaces/default/podlogs?labelSelector=team%3Dx"
                          "&grep=early&limit=1", b.token())
    assert status == 200 and body["kind"] == "PodLogList", body
    assert len(body["items"]) == 1, body
    item = body["items"][0]
    assert {"timestamp", "namespace", "pod", "container", "node", "stream", "line"} <= item.keys()
    assert item["node"] == b.node_name and item["stream"] == "stdout"
    # Mistakes are one Status naming the field.
    status, st = api(b, "/apis/logs.bosun.dev/v1/podlogs?grep=(", b.token())
    assert status == 400 and st["kind"] == "Status" and st["message"].startswith("grep:"), st
    # A ServiceAccount allowed `get pods/log` in default only.
    b.kubectl("create", "serviceaccount", "reader")
    b.kubectl("create", "role", "logreader", "--verb=get", "--resource=pods/log")
    b.kubectl("create", "rolebinding", "logreader", "--role=logreader",
              "--serviceaccount=default:reader")
    token = b.kubectl("create", "token", "reader").stdout.strip()

    def allowed():
        return api(b, "/apis/logs.bosun.dev/v1/namespaces/default/podlogs?grep=early", token)[0] == 200
    wait_for(allowed, timeout=30, what="the role to apply")
    assert api(b, "/apis/logs.bosun.dev/v1/namespaces/other/podlogs", token)[0] == 403
    assert api(b, "/apis/logs.bosun.dev/v1/podlogs", token)[0] == 403


# Service A answers after asking service B, passing the request's traceparent on.
FRONT = r'''
import http.server, os, urllib.request
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        req = urllib.request.Request("http://svc-b/")
        tp = self.headers.get("traceparent")
        if tp:
            req.add_header("traceparent", tp)
        with urllib.request.urlopen(req, timeout=10) as r:
            b = ("a->" + r.read().decode()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''

BACK = r'''
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = ("b:" + self.headers.get("traceparent", "-")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''


def service_app(name, code):
    return [{
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "command": ["python3", "-c", code],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }]


def test_trace_across_gateway_and_services(env):
    b, receiver = env
    ingress = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "traced"},
        "spec": {"rules": [{"host": "traced.test", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "svc-a", "port": {"number": 80}}}}]}}]},
    }
    apply(b, *service_app("svc-b", BACK), *service_app("svc-a", FRONT), ingress)
    b.kubectl("rollout", "status", "deploy/svc-a", "deploy/svc-b", "--timeout=90s")
    trace_id = os.urandom(16).hex()
    client_span = os.urandom(8).hex()

    def call():
        r = subprocess.run(["curl", "-s", "-H", "Host: traced.test", "-H",
                            f"traceparent: 00-{trace_id}-{client_span}-01",
                            f"http://127.0.0.1:{b.http_port}/hello"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout if r.stdout.startswith("a->b:") else None
    body = wait_for(call, timeout=60, what="gateway -> A -> B")
    # B saw the trace id, under a span the node proxy made.
    seen = body.split("b:")[1]
    assert seen.split("-")[1] == trace_id, body

    def spans():
        out = b.cli("traces", trace_id, "-o", "json").stdout
        s = json.loads(out)
        return s if {x["component"] for x in s} >= {"gateway", "proxy"} else None
    spans = wait_for(spans, timeout=30, what="spans of both hops")
    by_comp = {}
    for s in spans:
        assert s["traceId"] == trace_id
        by_comp.setdefault(s["component"], []).append(s)
    gw = [s for s in by_comp["gateway"] if s["service"] == "default/svc-a"]
    px = [s for s in by_comp["proxy"] if s["service"] == "default/svc-b"]
    assert gw and px, spans
    gw, px = gw[-1], px[-1]
    # The gateway's span is the client's child, the proxy's the gateway's (A passed the
    # header on), and B got the proxy's span id as its parent.
    assert gw["parentSpanId"] == client_span, gw
    assert px["parentSpanId"] == gw["spanId"], (gw, px)
    assert seen.split("-")[2] == px["spanId"], (seen, px)
    assert gw["status"] == 200 and px["status"] == 200
    assert gw["route"] and "traced" in gw["route"], gw
    assert gw["pod"].startswith("svc-a-") and px["pod"].startswith("svc-b-"), (gw, px)
    assert gw["durationNanos"] >= px["durationNanos"] > 0
    tree = b.cli("traces", trace_id).stdout
    assert re.search(r"gateway GET default/svc-a.*\n\s+proxy GET default/svc-b", tree), tree

    # The gateway's admin listener serves the same spans.
    with urllib.request.urlopen(
            f"http://127.0.0.1:{b.admin_port}/traces?traceId={trace_id}", timeout=10) as r:
        local = json.loads(r.read())["spans"]
    assert any(s["spanId"] == gw["spanId"] for s in local), local

    # And the OTLP receiver got both, with the same ids.
    got = wait_for(lambda: (lambda s: s if len({x["component"] for x in s}) == 2 else None)(
        receiver.of_trace(trace_id)), timeout=30, what="spans at the OTLP receiver")
    ids = {(x["component"], x["span"], x["parent"]) for x in got}
    assert ("gateway", gw["spanId"], client_span) in ids, ids
    assert ("proxy", px["spanId"], gw["spanId"]) in ids, ids
    assert all(x["service.name"] == "bosun" and x["duration"] > 0 for x in got), got
