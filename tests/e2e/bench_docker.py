"""Pod start latency (apply -> Ready) for process vs Docker pods, and bosun's resident
memory with 50 Docker pods running.

    BOSUN_BIN=.../bosun python3 tests/e2e/bench_docker.py [--pods 50] [--starts 5]

Starts its own `bosun up` (like the e2e tests), builds a scratch busybox image, prints the
figures, and removes everything it created.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Bosun, wait_for  # noqa: E402
from test_docker import APP, build_image, ready  # noqa: E402


def pod_yaml(name, runtime, image):
    c = {"name": "c", "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}
    spec = {"terminationGracePeriodSeconds": 1, "containers": [c]}
    if runtime == "process":
        spec["runtimeClassName"] = "process"
        c["command"] = ["python3", "-m", "http.server", "8080"]
    else:
        c["image"] = image
        c["imagePullPolicy"] = "Never"
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": runtime}},
                       "spec": spec})


def start_latency(b, runtime, image, n):
    out = []
    for i in range(n):
        name = f"lat-{runtime}-{i}"
        t = time.perf_counter()
        b.kubectl("apply", "-f", "-", input=pod_yaml(name, runtime, image))
        wait_for(lambda: ready(json.loads(b.kubectl("get", "pod", name, "-o", "json").stdout)),
                 timeout=120, interval=0.05, what=f"{name} ready")
        out.append(time.perf_counter() - t)
        b.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s")
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--starts", type=int, default=5)
    a = ap.parse_args()
    build_image(APP, "v1")
    image = f"{APP}:v1"
    b = Bosun("bench")
    try:
        b.start()
        for runtime in ["process", "docker"]:
            lat = start_latency(b, runtime, image, a.starts)
            print(f"start latency {runtime:8s}: median {statistics.median(lat)*1e3:.0f} ms, "
                  f"max {max(lat)*1e3:.0f} ms over {len(lat)} pods")
        idle = rss_kib(b.proc.pid)
        docs = "\n---\n".join(pod_yaml(f"many-{i}", "docker", image) for i in range(a.pods))
        t = time.perf_counter()
        b.kubectl("apply", "-f", "-", input=docs)

        def all_ready():
            items = json.loads(b.kubectl("get", "pods", "-l", "bench=docker", "-o", "json").stdout)["items"]
            return sum(ready(p) for p in items) == a.pods

        wait_for(all_ready, timeout=900, interval=1, what=f"{a.pods} docker pods ready")
        took = time.perf_counter() - t
        time.sleep(5)
        print(f"{a.pods} docker pods ready in {took:.1f} s; bosun RSS: idle {idle/1024:.1f} MiB, "
              f"with {a.pods} docker pods {rss_kib(b.proc.pid)/1024:.1f} MiB")
    finally:
        b.stop()
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


if __name__ == "__main__":
    main()
