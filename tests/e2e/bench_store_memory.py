"""bosun's resident memory after `kill -9` and recovery of a large store, for a given
--store-cache-size.

    BOSUN_BIN=.../bosun python3 tests/e2e/bench_store_memory.py [--mib 150] [--cache 64Mi 1Gi]

For each cache size: starts its own `bosun up` (like the e2e tests), fills the store with
ConfigMaps of about 1 MiB each, kills bosun with SIGKILL, starts it again on the same data
dir (redb repairs the file), and prints the store file's size and bosun's RSS once ready,
after reading every object back (`kubectl get cm -o json`), and its peak (VmHWM).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Bosun  # noqa: E402


class Sized(Bosun):
    def __init__(self, name, cache):
        super().__init__(name)
        self.cache = cache

    def args(self):
        return super().args() + ["--store-cache-size", self.cache]


def status_mb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(cache, mib):
    b = Sized("storemem", cache)
    try:
        b.start()
        value = "x" * (1024 * 1024 - 4096)
        for i in range(mib):
            cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"big-{i}"},
                  "data": {"v": value}}
            b.kubectl("create", "-f", "-", input=json.dumps(cm))
        b.restart()  # SIGKILL, then start on the same data dir
        time.sleep(5)
        size = os.path.getsize(os.path.join(b.data_dir, "store.redb")) / 2**20
        ready = status_mb(b.proc.pid, "VmRSS")
        n = len(b.kubectl("get", "cm", "-o", "json", timeout=600).stdout)
        time.sleep(2)
        after = status_mb(b.proc.pid, "VmRSS")
        peak = status_mb(b.proc.pid, "VmHWM")
        print(f"cache {cache}: store file {size:.0f} MiB ({mib} ConfigMaps of ~1 MiB); RSS after "
              f"recovery {ready:.0f} MiB, after reading all ({n / 2**20:.0f} MiB of JSON) "
              f"{after:.0f} MiB, peak {peak:.0f} MiB", flush=True)
    finally:
        b.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=150, help="ConfigMaps of ~1 MiB to store")
    ap.add_argument("--cache", nargs="+", default=["64Mi", "1Gi"])
    a = ap.parse_args()
    for c in a.cache:
        measure(c, a.mib)


if __name__ == "__main__":
    main()
