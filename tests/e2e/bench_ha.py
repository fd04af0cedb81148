"""Control-plane HA figures on a real 3-member etcd (loopback):

    BOSUN_BIN=$CARGO_TARGET_DIR/debug/bosun python3 tests/e2e/bench_ha.py [--runs 5] [--watchers 1000]

1. Leader failover: two `bosun server`s; `kill -9` of the leader, time until the other
   holds the leader Lease (from its log line), restart the killed one; `--runs` times.
2. Watch delivery: `--watchers` ConfigMap watches (HTTP/1.1 streams) spread over the two
   servers, then 20 ConfigMaps created one at a time; latency of each delivery = its arrival
   minus the moment the create was sent.
"""

import argparse
import asyncio
import json
import os
import signal
import ssl
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from conftest import wait_for  # noqa: E402
from test_ha import HA  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def holder(s):
    ctx = ssl.create_default_context(cafile=os.path.join(s.b.data_dir, "pki", "ca.crt"))
    req = urllib.request.Request(s.url + "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/"
                                 "bosun-controller-manager", headers={"Authorization": f"Bearer {s.b.token()}"})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
        return json.load(r)["spec"]["holderIdentity"]


def failover(ha, runs):
    a, b = ha.servers[:2]
    times = []
    for i in range(runs):
        time.sleep(2)
        h = holder(a if a.proc.poll() is None else b)
        leader = next(s for s in (a, b) if f"bosun: {h} is now the leader" in s.log())
        other = b if leader is a else a
        leader.stop(signal.SIGKILL)
        killed = time.time()
        wait_for(lambda: holder(other) != h, timeout=30, interval=0.05, what="a new leader")
        times.append(time.time() - killed)
        print(f"run {i + 1}: new leader after {times[-1]:.2f}s", flush=True)
        leader.run()
    return times


async def watcher(server, ctx, token, rv, expect, arrivals):
    host, port = "127.0.0.1", server.b.api_port
    r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="127.0.0.1")
    w.write((f"GET /api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv} HTTP/1.1\r\n"
             f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    await w.drain()
    while True:  # headers
        line = await r.readline()
        if line in (b"\r\n", b""):
            break
    got, buf = 0, b""
    while got < expect:
        size = await r.readline()
        if not size:
            break
        n = int(size.strip() or b"0", 16)
        if n == 0:
            break
        buf += (await r.readexactly(n + 2))[:-2]
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if b'"ADDED"' in line:
                name = json.loads(line)["object"]["metadata"]["name"]
                arrivals.append((name, time.time()))
                got += 1
    w.close()


async def watch_latency(ha, n_watchers):
    a, b = ha.servers[:2]
    ctx = ssl.create_default_context(cafile=os.path.join(a.b.data_dir, "pki", "ca.crt"))
    token = a.b.token()
    req = urllib.request.Request(a.url + "/api/v1/namespaces/default/configmaps",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        rv = json.load(r)["metadata"]["resourceVersion"]
    arrivals = []
    count = 20
    tasks = [asyncio.create_task(watcher((a, b)[i % 2], ctx, token, rv, count, arrivals))
             for i in range(n_watchers)]
    await asyncio.sleep(5)  # every watch open
    sent = {}
    for i in range(count):
        name = f"watch-bench-{i}"
        body = json.dumps({"metadata": {"name": name}}).encode()
        req = urllib.request.Request(a.url + "/api/v1/namespaces/default/configmaps", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        sent[name] = time.time()
        await asyncio.to_thread(lambda: urllib.request.urlopen(req, context=ctx, timeout=10).read())
        await asyncio.sleep(0.5)
    await asyncio.wait(tasks, timeout=60)
    lat = [t - sent[name] for name, t in arrivals if name in sent]
    return lat, n_watchers * count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--watchers", type=int, default=1000)
    o = ap.parse_args()
    ha = HA()
    try:
        first = ha.add("bench-a").run()
        ha.add("bench-b", first.file("server-token").decode().strip()).run()
        times = failover(ha, o.runs)
        print(f"leader failover over {len(times)} runs: p50 {statistics.median(times):.2f}s, "
              f"max {max(times):.2f}s")
        time.sleep(3)
        lat, want = asyncio.run(watch_latency(ha, o.watchers))
        print(f"watch delivery, {o.watchers} watchers x 20 events: {len(lat)}/{want} delivered, "
              f"p50 {statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, "
              f"max {max(lat) * 1000:.1f} ms")
    finally:
        ha.stop()


if __name__ == "__main__":
    main()
