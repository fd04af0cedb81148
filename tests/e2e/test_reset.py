"""`bosun reset --data-dir DIR` removes the network that node created, as recorded in its
data dir, without being told the names, and leaves another running instance alone."""

import json
import os
import signal
import subprocess

from conftest import Bosun, bosun_bin, wait_for


def link_exists(name):
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def netns_of(bridge):
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith(bridge + "-")]
    except FileNotFoundError:
        return []


def sleeper_pod(name):
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"runtimeClassName": "process",
                 "containers": [{"name": "s", "command": ["sleep", "3600"]}]},
    })


def pod_running(cluster, name):
    r = cluster.kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}", check=False)
    return r.returncode == 0 and r.stdout == "Running"


def test_reset_removes_the_recorded_network_and_nothing_else():
    a, b = Bosun("reset-a"), Bosun("reset-b")
    try:
        a.start()
        b.start()
        for c in (a, b):
            c.kubectl("apply", "-f", "-", input=sleeper_pod("sleeper"))
            wait_for(lambda c=c: pod_running(c, "sleeper"), timeout=60, what="sleeper running")
        assert link_exists(a.bridge) and link_exists(a.service_interface)
        assert netns_of(a.bridge), "the pod has no network namespace"

        a.kill(signal.SIGTERM)
        # What start-up recorded, read before the reset.
        path = os.path.join(a.data_dir, "node-network.json")
        record = open(path).read() if os.path.exists(path) else "{}"
        # No name flags: the data dir says what to remove.
        r = subprocess.run([bosun_bin(), "reset", "--data-dir", a.data_dir],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert a.bridge in r.stdout and a.service_interface in r.stdout, r.stdout
        assert not link_exists(a.bridge), "reset left the bridge"
        assert not link_exists(a.service_interface), "reset left the service interface"
        assert netns_of(a.bridge) == [], "reset left pod namespaces"
        record = json.loads(record)
        assert record.get("bridge") == a.bridge, record
        assert record.get("serviceInterface") == a.service_interface, record

        # The other instance keeps its network and its pod.
        assert link_exists(b.bridge) and link_exists(b.service_interface)
        assert netns_of(b.bridge), "the other instance lost its pod namespace"
        assert pod_running(b, "sleeper")
    finally:
        for c in (a, b):
            c.stop()
