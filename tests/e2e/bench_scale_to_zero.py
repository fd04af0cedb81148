"""First response from zero: a Deployment marked for scale to zero is at 0 replicas, one
request goes to its Service's cluster IP, and the bench measures when the answer arrives,
for a process pod (`python3 -m http.server`) and a Docker pod (busybox httpd in a scratch
image), each with a tcpSocket readiness probe (periodSeconds 1).

    BOSUN_BIN=.../bosun python3 tests/e2e/bench_scale_to_zero.py [--runs 10]

Per run it also records, from API watches opened before the request, when each step of the
path was seen (`STEPS`: Deployment scaled up, ReplicaSet scaled up, Pod created, bound,
running, Ready, EndpointSlice ready, response), and from bosun's log when the agent started
the container. The app's own start-to-listen time is measured outside bosun (same command
or image, `app_start`); bosun's share is the first response minus that.
Starts its own `bosun up`, prints the figures and removes everything it created.
"""

import argparse
import datetime
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

import kubernetes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Bosun, free_port, wait_for  # noqa: E402


def deployment(name, runtime, image):
    c = {"name": "c", "ports": [{"containerPort": 8080}],
         "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}
    spec = {"terminationGracePeriodSeconds": 1, "containers": [c]}
    if runtime == "process":
        spec["runtimeClassName"] = "process"
        c["command"] = ["python3", "-m", "http.server", "8080"]
    else:
        c["image"] = image
        c["imagePullPolicy"] = "Never"
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "annotations": {"bosun.dev/scale-to-zero-after": "1h"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def service(name):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}


class Steps(threading.Thread):
    """Notes, per step, the first time its predicate holds for an object of one watch."""

    def __init__(self, list_fn, preds, **kw):
        super().__init__(daemon=True)
        self.list_fn, self.preds, self.kw = list_fn, preds, kw
        self.at = {}
        self.started = threading.Event()
        self.w = kubernetes.watch.Watch()

    def run(self):
        rv = self.list_fn(**self.kw).metadata.resource_version
        self.started.set()
        for ev in self.w.stream(self.list_fn, resource_version=rv, timeout_seconds=120, **self.kw):
            now = time.perf_counter()
            for step, pred in self.preds.items():
                if step not in self.at and ev["type"] != "DELETED" and pred(ev["object"]):
                    self.at[step] = now
            if len(self.at) == len(self.preds):
                self.w.stop()
                return


def pod_ready(p):
    return any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))


def pod_running(p):
    return any(c.state and c.state.running for c in (p.status.container_statuses or []))


def slice_ready(s):
    return any(e.conditions and e.conditions.ready for e in (s.endpoints or []))


# The path of the first request, in order: (step, what happened by then).
STEPS = [
    ("wake", "Deployment spec.replicas > 0 (proxy -> activity Lease -> controller)"),
    ("rs", "ReplicaSet spec.replicas > 0 (deployment controller)"),
    ("pod", "Pod created (ReplicaSet controller)"),
    ("bound", "Pod bound to the node (scheduler)"),
    ("running", "container running in the Pod status (agent)"),
    ("ready", "Pod Ready (readiness probe passed, status written)"),
    ("slice", "EndpointSlice endpoint ready (endpoints controller)"),
    ("first", "response received (proxy forwards, app answers)"),
]


def log_times(b, since):
    """Wall-clock times of the agent's container start from bosun's log (info level)."""
    out = {}
    try:
        with open(b.log_path, "rb") as f:
            for line in f:
                line = line.decode(errors="replace")
                if 'reason="Started"' not in line or "started" in out:
                    continue
                try:
                    t = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
                except (ValueError, IndexError):
                    continue
                if t >= since:
                    out["started"] = t
    except OSError:
        pass
    return out


def one_run(b, name, ip, apps, core, disc):
    time.sleep(1)  # the proxies report the end of the last run's wait
    b.kubectl("scale", f"deploy/{name}", "--replicas=0")
    wait_for(lambda: not json.loads(b.kubectl("get", "pods", "-l", f"app={name}", "-o", "json").stdout)["items"],
             timeout=60, interval=0.1, what="pods gone")
    time.sleep(0.5)
    sel = f"app={name}"
    watches = [
        Steps(apps.list_namespaced_deployment, {"wake": lambda d: (d.spec.replicas or 0) > 0},
              namespace="default", field_selector=f"metadata.name={name}"),
        Steps(apps.list_namespaced_replica_set, {"rs": lambda r: (r.spec.replicas or 0) > 0},
              namespace="default", label_selector=sel),
        Steps(core.list_namespaced_pod, {"pod": lambda p: p.metadata.deletion_timestamp is None,
                                         "bound": lambda p: bool(p.spec.node_name),
                                         "running": pod_running, "ready": pod_ready},
              namespace="default", label_selector=sel),
        Steps(disc.list_namespaced_endpoint_slice, {"slice": slice_ready},
              namespace="default", label_selector=f"kubernetes.io/service-name={name}"),
    ]
    for w in watches:
        w.start()
        w.started.wait(10)
    time.sleep(0.3)  # every watch open
    wall0, t0 = time.time(), time.perf_counter()
    c = http.client.HTTPConnection(ip, 80, timeout=60)
    c.request("GET", "/")
    r = c.getresponse()
    r.read()
    t1 = time.perf_counter()
    assert r.status == 200, r.status
    out = {}
    for w in watches:
        w.join(10)
        out.update({k: v - t0 for k, v in w.at.items()})
    out["first"] = t1 - t0
    for k, v in log_times(b, wall0 - 0.05).items():
        out[k] = v - wall0
    return out


def app_start(runtime, image, n=10):
    """The app's own start-to-listen time outside bosun, p50 over n starts: for a process
    from spawn to its port accepting; for Docker from `docker create` to its port accepting
    after `docker start` (the runtime's own create and start are part of it, as they are
    of every container bosun starts)."""
    times = []
    for _ in range(n):
        if runtime == "process":
            port = free_port()
            t0 = time.perf_counter()
            p = subprocess.Popen(["python3", "-m", "http.server", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            addr = ("127.0.0.1", port)
        else:
            t0 = time.perf_counter()
            cid = subprocess.run(["docker", "create", image], capture_output=True, text=True,
                                 check=True).stdout.strip()
            subprocess.run(["docker", "start", cid], capture_output=True, check=True)
            ip = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", cid],
                                capture_output=True, text=True, check=True).stdout.strip()
            addr = (ip, 8080)
        try:
            while True:
                try:
                    socket.create_connection(addr, timeout=0.05).close()
                    break
                except OSError:
                    time.sleep(0.002)
            times.append(time.perf_counter() - t0)
        finally:
            if runtime == "process":
                p.kill()
                p.wait()
            else:
                subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    return statistics.median(times)


def summary(label, runs, app):
    def col(k, f):
        vals = [r[k] for r in runs if k in r]
        return f(vals) * 1000 if vals else float("nan")
    print(f"{label}: {len(runs)} runs, ms after the request was sent (p50 / max):")
    for k, what in STEPS + [("started", "agent started the container (its log)")]:
        print(f"  {k:8} {col(k, statistics.median):7.0f} / {col(k, max):7.0f}  {what}")
    share = [r["first"] - app for r in runs]
    print(f"  app start-to-listen outside bosun (p50 of 10): {app * 1000:.0f} ms")
    print(f"  bosun's share (first - app): p50 {statistics.median(share) * 1000:.0f} ms, "
          f"max {max(share) * 1000:.0f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--keep-log", help="copy bosun's log here before cleaning up")
    args = ap.parse_args()
    b = Bosun("bench-s2z")
    image = None
    runtimes = ["process"]
    if not args.no_docker and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        from test_docker import APP, build_image
        build_image(APP, "v1")
        image = f"{APP}:v1"
        runtimes.append("docker")
    try:
        b.start()
        kubernetes.config.load_kube_config(config_file=b.kubeconfig)
        apps, core = kubernetes.client.AppsV1Api(), kubernetes.client.CoreV1Api()
        disc = kubernetes.client.DiscoveryV1Api()
        objs = []
        for rt in runtimes:
            objs += [deployment(f"s2z-{rt}", rt, image), service(f"s2z-{rt}")]
        b.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
        for rt in runtimes:
            b.kubectl("rollout", "status", f"deploy/s2z-{rt}", "--timeout=120s", timeout=150)
            wait_for(lambda: json.loads(b.kubectl("get", "svc", f"s2z-{rt}", "-o", "json").stdout)["metadata"]
                     .get("annotations", {}).get("bosun.dev/scale-to-zero-target"), timeout=30)
        for rt in runtimes:
            ip = json.loads(b.kubectl("get", "svc", f"s2z-{rt}", "-o", "json").stdout)["spec"]["clusterIP"]
            runs = [one_run(b, f"s2z-{rt}", ip, apps, core, disc) for _ in range(args.runs)]
            for r in runs:
                print(f"  {rt}: " + " ".join(f"{k}={v * 1000:.0f}ms" for k, v in sorted(r.items(), key=lambda kv: kv[1])))
            summary(rt, runs, app_start(rt, image))
            print(f"  load average: {os.getloadavg()}")
    finally:
        if args.keep_log:
            shutil.copy(b.log_path, args.keep_log)
        b.stop()
        if image:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


if __name__ == "__main__":
    main()
