"""Autoscaling reaction time: from the moment load starts on a Service to (1) the HPA raising
the Deployment's replicas and (2) a new pod answering requests, for a CPU-bound process pod
and a CPU Utilization target, with the HPA sync period at Kubernetes' default (15 s) and at
a short one.

    BOSUN_BIN=.../bosun python3 tests/e2e/bench_hpa.py [--rounds 5] [--sync 15s,2s]

Starts its own `bosun up` per sync period (like the e2e tests), prints the figures, and
removes everything it created.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Bosun, wait_for  # noqa: E402
from test_hpa import Load, get_json, manifests  # noqa: E402


class SyncBosun(Bosun):
    sync = "15s"

    def args(self):
        return super().args() + ["--horizontal-pod-autoscaler-sync-period", self.sync]


def replicas(b):
    return get_json(b, "deployment", "burn")["spec"]["replicas"]


def one_round(b):
    b.kubectl("apply", "-f", "-", input=manifests())
    b.kubectl("rollout", "status", "deployment/burn", "--timeout=90s")
    b.kubectl("autoscale", "deployment", "burn", "--cpu-percent=50", "--min=1", "--max=3")
    # Let the HPA read metrics at rest first (ScalingActive=True).
    wait_for(lambda: any(c["type"] == "ScalingActive" and c["status"] == "True"
                         for c in get_json(b, "hpa", "burn").get("status", {}).get("conditions", [])),
             timeout=90, interval=0.5, what="ScalingActive")
    vip = get_json(b, "service", "burn")["spec"]["clusterIP"]
    # Wait until the first pod has answered, so "new pod" means a pod started by the HPA.
    load = Load(f"http://{vip}:80").start()
    try:
        wait_for(lambda: load.first_seen, timeout=30, what="first answer")
        wait_for(lambda: replicas(b) >= 2, timeout=120, interval=0.1, what="scale up")
        scaled = time.time() - load.started
        wait_for(lambda: len(load.first_seen) >= 2, timeout=120, interval=0.1, what="new pod serving")
        serving = sorted(load.first_seen.values())[1] - load.started
    finally:
        load.stop()
    b.kubectl("delete", "hpa", "burn")
    b.kubectl("delete", "deployment,service", "burn", "--wait=true", "--timeout=60s")
    return scaled, serving


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sync", default="15s,2s")
    args = ap.parse_args()
    for sync in args.sync.split(","):
        SyncBosun.sync = sync
        b = SyncBosun("bench-hpa")
        b.start()
        try:
            res = [one_round(b) for _ in range(args.rounds)]
        finally:
            b.stop()
        for i, what in enumerate(["load start -> replicas raised", "load start -> new pod serving"]):
            xs = [r[i] for r in res]
            print(f"sync {sync}: {what}: p50 {statistics.median(xs):.1f} s, max {max(xs):.1f} s "
                  f"({', '.join(f'{x:.1f}' for x in xs)})")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
