"""`kubectl exec` round trips and `kubectl port-forward` throughput, kubectl 1.27 (SPDY) and
1.33 (WebSocket), against a process pod.

    BOSUN_BIN=.../bosun python3 tests/e2e/bench_streaming.py [--execs 20] [--mib 200]

Starts its own `bosun up` (like the e2e tests), prints the figures and removes everything it
created.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Bosun, free_port  # noqa: E402
from test_streaming import KUBECTL, PortForward, apply, process_pod, wait_running  # noqa: E402

# Sends N MiB of zeros to whoever connects.
ZEROS = r'''
import socket, sys, threading
n = int(sys.argv[1]) << 20
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9000)); s.listen(16)
def send(c):
    buf = bytes(1 << 16); left = n
    while left > 0:
        c.sendall(buf[:min(left, len(buf))]); left -= min(left, len(buf))
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=send, args=(c,), daemon=True).start()
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=20)
    ap.add_argument("--mib", type=int, default=200)
    a = ap.parse_args()
    b = Bosun("bench-stream")
    b.start()
    try:
        apply(b, process_pod("zeros", ["python3", "-c", ZEROS, str(a.mib)]))
        wait_running(b, "zeros")
        for v, k in KUBECTL.items():
            times = []
            for _ in range(a.execs):
                t = time.perf_counter()
                b.kubectl("exec", "zeros", "--", "true", binary=k)
                times.append(time.perf_counter() - t)
            print(f"kubectl {v} exec -- true: median {statistics.median(times) * 1000:.0f} ms, "
                  f"p90 {sorted(times)[int(len(times) * 0.9) - 1] * 1000:.0f} ms (n={a.execs})")
            port = free_port()
            pf = PortForward(b, k, "pod/zeros", f"{port}:9000")
            try:
                t = time.perf_counter()
                got = 0
                # Counted, not read to EOF: kubectl 1.27 does not pass the end on.
                with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                    while got < a.mib << 20:
                        chunk = s.recv(1 << 16)
                        if not chunk:
                            break
                        got += len(chunk)
                dt = time.perf_counter() - t
                assert got == a.mib << 20, got
                print(f"kubectl {v} port-forward: {a.mib} MiB in {dt:.2f} s = {a.mib / dt:.0f} MiB/s")
            finally:
                pf.close()
    finally:
        b.stop()


if __name__ == "__main__":
    main()
