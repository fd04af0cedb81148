"""Requests failed during an aborted canary: a Rollout whose new version fails every 20th
request (5%) at weight 20, load from three client threads through the stable Service's
cluster IP, background analysis on bosun's own metrics (error rate over 10 s, every 2 s,
failureLimit 1, scrape interval 1 s). Per round: requests and failures from the update to
2 s after the abort (traffic fully back on the stable version), and the time to abort.

    BOSUN_BIN=.../bosun python3 tests/e2e/bench_rollouts.py [--rounds 3]

Starts its own `bosun up` (like the e2e tests), prints the figures, and removes everything
it created.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import wait_for  # noqa: E402
from test_rollouts import Load, RolloutBosun, canary_manifests, get_json, sample, set_version, status, template  # noqa: E402


def one_round(b, i):
    b.kubectl("apply", "-f", "-", input=canary_manifests(f"good{i}"))
    wait_for(lambda: status(b).get("phase") == "Healthy", timeout=120, what="stable Healthy")
    vip = get_json(b, "service", "web")["spec"]["clusterIP"]
    wait_for(lambda: sample(vip, 80, 3)[0].get(f"good{i}") == 3, timeout=30, what="stable serving")
    # Let the previous round's canary errors leave the analysis window.
    time.sleep(11)
    load = Load(vip, 80).start()
    try:
        time.sleep(1)
        t0 = time.time()
        set_version(b, "web", "web", f"bad{i}", error_every=20)
        wait_for(lambda: status(b).get("phase") == "Degraded", timeout=120, interval=0.2, what="abort")
        t_abort = time.time()
        time.sleep(2)
        t_end = time.time()
    finally:
        load.stop()
    during = load.between(t0, t_end)
    failed = sum(1 for a in during if a[1] != 200)
    canary = sum(1 for a in during if a[2] == f"bad{i}")
    after = [a for a in load.answers if a[0] >= t_end - 1]
    # Next round starts from a good version again.
    b.kubectl("patch", "rollout", "web", "--type=merge", "-p", json.dumps(
        {"spec": {"template": template("web", f"good{i + 1}"), "strategy": {"canary": {"steps": []}}}}))
    wait_for(lambda: status(b).get("phase") == "Healthy", timeout=120, what="reset")
    return len(during), canary, failed, t_abort - t0, all(a[1] == 200 for a in after)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    b = RolloutBosun("bench-rollouts")
    b.start()
    rows = []
    try:
        for i in range(args.rounds):
            r = one_round(b, i)
            rows.append(r)
            print(f"round {i + 1}: {r[0]} requests, {r[1]} to the canary, {r[2]} failed, "
                  f"aborted after {r[3]:.1f}s, clean afterwards: {r[4]}", flush=True)
    finally:
        b.stop()
    fails = [r[2] for r in rows]
    share = [r[2] / r[0] * 100 for r in rows]
    t = [r[3] for r in rows]
    print(f"failed requests per aborted canary: p50 {statistics.median(fails)}, max {max(fails)} "
          f"({statistics.median(share):.2f}% of the requests in the episode); "
          f"update -> abort: p50 {statistics.median(t):.1f}s, max {max(t):.1f}s")


if __name__ == "__main__":
    main()
