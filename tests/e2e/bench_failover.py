"""Failover time on a multi-host cluster (network namespaces, see multihost.py): how long
after a host dies its pods are Running and Ready on the other hosts.

    BOSUN_BIN=target/debug/bosun python3 tests/e2e/bench_failover.py [RUNS]

Each run deploys 4 replicas over 3 hosts, pulls the plug on one host (bosun and its pods
killed, link down), measures until 4 replicas are Ready elsewhere, then brings the host back.
"""

import statistics
import sys
import time

from conftest import wait_for
from multihost import MultiHost
from test_multihost import measure_failover


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    mh = MultiHost(3)
    times = []
    try:
        mh.start()
        for i in range(runs):
            victim = mh.hosts[1 + i % 2]
            took = measure_failover(mh, victim, app=f"fo{i}")
            times.append(took)
            print(f"run {i + 1}: {took:.2f}s", flush=True)
            mh.kubectl("delete", "deploy,svc", f"fo{i}", "--wait=false")
            victim.exec("ip", "link", "set", "eth0", "up")
            mh.join(victim)
            mh.wait_nodes_ready([victim], timeout=60)
            wait_for(lambda: "unreachable" not in mh.kubectl(
                "get", "node", victim.node_name, "-o", "jsonpath={.spec.taints}").stdout,
                what="taint removed")
            time.sleep(1)
    finally:
        mh.stop()
    times.sort()
    print(f"failover over {len(times)} runs: p50 {statistics.median(times):.2f}s, "
          f"max {max(times):.2f}s, min {min(times):.2f}s")


if __name__ == "__main__":
    main()
