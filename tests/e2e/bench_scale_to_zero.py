"""First response from zero: a Deployment marked for scale to zero is at 0 replicas, one
request goes to its Service's cluster IP, and the bench measures when the answer arrives,
for a process pod (`python3 -m http.server`) and a Docker pod (busybox httpd in a scratch
image), each with a tcpSocket readiness probe (periodSeconds 1).

    BOSUN_BIN=.../bosun python3 tests/e2e/bench_scale_to_zero.py [--runs 10]

Per run it also records, from API watches started before the request, when the Deployment
was scaled up (the wake path: proxy -> activity Lease -> controller) and when the pod turned
Ready (pod start + readiness, the app's own part), so bosun's share can be told apart:
wake = scale-up seen - request sent, forward = response - pod Ready seen.
Starts its own `bosun up`, prints the figures and removes everything it created.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import kubernetes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Bosun, wait_for  # noqa: E402


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


class Watch(threading.Thread):
    """Notes the first time `pred` holds for an object of a watch."""

    def __init__(self, list_fn, pred, **kw):
        super().__init__(daemon=True)
        self.list_fn, self.pred, self.kw = list_fn, pred, kw
        self.at = None
        self.started = threading.Event()
        self.w = kubernetes.watch.Watch()

    def run(self):
        rv = self.list_fn(**self.kw).metadata.resource_version
        self.started.set()
        for ev in self.w.stream(self.list_fn, resource_version=rv, timeout_seconds=120, **self.kw):
            if self.pred(ev["object"]):
                self.at = time.perf_counter()
                self.w.stop()
                return


def pod_ready(p):
    return any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))


def one_run(b, name, ip, apps, core):
    time.sleep(1)  # the proxies report the end of the last run's wait
    b.kubectl("scale", f"deploy/{name}", "--replicas=0")
    wait_for(lambda: not json.loads(b.kubectl("get", "pods", "-l", f"app={name}", "-o", "json").stdout)["items"],
             timeout=60, interval=0.1, what="pods gone")
    time.sleep(0.5)
    woke = Watch(apps.list_namespaced_deployment, lambda d: (d.spec.replicas or 0) > 0,
                 namespace="default", field_selector=f"metadata.name={name}")
    ready = Watch(core.list_namespaced_pod, pod_ready, namespace="default", label_selector=f"app={name}")
    for w in (woke, ready):
        w.start()
        w.started.wait(10)
    time.sleep(0.3)  # both watches open
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(ip, 80, timeout=60)
    c.request("GET", "/")
    r = c.getresponse()
    r.read()
    t1 = time.perf_counter()
    assert r.status == 200, r.status
    for w in (woke, ready):
        w.join(10)
    return {"first": t1 - t0,
            "wake": (woke.at - t0) if woke.at else float("nan"),
            "ready": (ready.at - t0) if ready.at else float("nan"),
            "forward": (t1 - ready.at) if ready.at else float("nan")}


def summary(label, runs):
    def ms(k, f):
        return f(r[k] for r in runs) * 1000
    print(f"{label}: first response p50 {ms('first', statistics.median):.0f} ms, "
          f"max {ms('first', max):.0f} ms | wake p50 {ms('wake', statistics.median):.0f} ms "
          f"max {ms('wake', max):.0f} ms | pod Ready p50 {ms('ready', statistics.median):.0f} ms | "
          f"forward after Ready p50 {ms('forward', statistics.median):.0f} ms max {ms('forward', max):.0f} ms "
          f"({len(runs)} runs)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-docker", action="store_true")
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
            runs = [one_run(b, f"s2z-{rt}", ip, apps, core) for _ in range(args.runs)]
            for r in runs:
                print(f"  {rt}: " + " ".join(f"{k}={v * 1000:.0f}ms" for k, v in r.items()))
            summary(rt, runs)
    finally:
        b.stop()
        if image:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


if __name__ == "__main__":
    main()
