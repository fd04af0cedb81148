"""Process pods behave the way programs expect: SIGTERM first, with the default signal
state and transparent huge pages as the system sets them, and their stdout and stderr
logged in the order written.

The stop tests give their pod a long grace period, so a program that does not see SIGTERM
would be SIGKILLed only much later; they assert what the program itself did on SIGTERM (a
marker it writes, its exit code, its own log line), not how long it took.
"""

import json
import os
import shutil
import tempfile

import pytest

from conftest import wait_for

# Writes a marker and exits 0 on SIGTERM; reports its signal state at start.
GRACEFUL = r'''
import os, signal, sys, time
marker = sys.argv[1]
def term(*_):
    print("got SIGTERM", flush=True)
    if marker != "-":
        with open(marker, "w") as f:
            f.write("got SIGTERM\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
status = open("/proc/self/status").read()
print([l for l in status.splitlines() if l.startswith(("SigBlk", "THP_enabled"))], flush=True)
print("serving", flush=True)
while True:
    time.sleep(3600)
'''


def pod_manifest(name, command, grace=60, extra=None, host_dir=None):
    """A process pod; `host_dir` is a host directory the pod sees at the same path (a
    process pod's /tmp is its own, so files shared with the test need a hostPath)."""
    container = {"name": "main", "command": command}
    container.update(extra or {})
    spec = {"runtimeClassName": "process", "terminationGracePeriodSeconds": grace,
            "containers": [container]}
    if host_dir:
        container["volumeMounts"] = [{"name": "shared", "mountPath": host_dir}]
        spec["volumes"] = [{"name": "shared",
                            "hostPath": {"path": host_dir, "type": "Directory"}}]
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": "lifecycle"}},
        "spec": spec,
    })


def get_pod(cluster, name):
    r = cluster.kubectl("get", "pod", name, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def container_status(cluster, name):
    p = get_pod(cluster, name)
    cs = (p or {}).get("status", {}).get("containerStatuses") or []
    return cs[0] if cs else None


def running(cluster, name):
    cs = container_status(cluster, name)
    return cs if cs and "running" in (cs.get("state") or {}) else None


def logs_contain(cluster, name, text):
    r = cluster.kubectl("logs", name, check=False)
    return r.returncode == 0 and text in r.stdout


def test_delete_sends_sigterm_that_a_python_handler_sees(cluster):
    tmp = tempfile.mkdtemp(prefix="bosun-e2e-sigterm-")
    marker = os.path.join(tmp, "marker")
    try:
        cluster.kubectl("apply", "-f", "-", input=pod_manifest(
            "graceful", ["python3", "-c", GRACEFUL, marker], host_dir=tmp))
        wait_for(lambda: running(cluster, "graceful") and logs_contain(cluster, "graceful", "serving"),
                 what="graceful pod running")
        # The program starts with no signal blocked (Python itself ignores SIGPIPE, so
        # SigIgn is not all clear here; the runtime tests check it with a plain program).
        out = cluster.kubectl("logs", "graceful").stdout
        assert "'SigBlk:\\t0000000000000000'" in out, out
        # bosun runs with transparent huge pages off; its programs get the system's setting,
        # the one this test process has.
        with open("/proc/self/status") as f:
            thp = next(l for l in f.read().splitlines() if l.startswith("THP_enabled"))
        assert repr(thp) in out, (thp, out)
        r = cluster.kubectl("delete", "pod", "graceful", "--wait=true", timeout=150)
        assert 'pod "graceful" deleted' in r.stdout
        with open(marker) as f:
            assert f.read() == "got SIGTERM\n", "the program's SIGTERM handler ran"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_liveness_restart_stops_with_sigterm(cluster):
    # A failing liveness probe restarts the container: the old one gets SIGTERM, exits 0
    # from its handler, and that exit is the restarted container's last state.
    cluster.kubectl("apply", "-f", "-", input=pod_manifest(
        "unhealthy", ["python3", "-c", GRACEFUL, "-"],
        extra={"livenessProbe": {"exec": {"command": ["false"]}, "initialDelaySeconds": 2,
                                 "periodSeconds": 1, "failureThreshold": 1}}))

    def restarted():
        cs = container_status(cluster, "unhealthy")
        term = ((cs or {}).get("lastState") or {}).get("terminated")
        return term if cs and cs["restartCount"] >= 1 and term else None
    term = wait_for(restarted, timeout=120, what="a restart after the liveness failure")
    assert term["exitCode"] == 0, term
    assert term["reason"] == "Completed", term
    prev = cluster.kubectl("logs", "unhealthy", "--previous", check=False).stdout
    assert "got SIGTERM" in prev, prev
    cluster.kubectl("delete", "pod", "unhealthy", "--wait=true", timeout=150)


def test_redis_shuts_down_on_sigterm(cluster):
    redis = shutil.which("redis-server")
    if not redis:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    tmp = tempfile.mkdtemp(prefix="bosun-e2e-redis-")
    os.chmod(tmp, 0o777)
    logfile = os.path.join(tmp, "redis.log")
    try:
        cluster.kubectl("apply", "-f", "-", input=pod_manifest(
            "redis", [redis, "--port", "6399", "--save", "", "--appendonly", "no",
                      "--dir", tmp, "--logfile", logfile], host_dir=tmp))
        wait_for(lambda: running(cluster, "redis") and os.path.exists(logfile)
                 and "Ready to accept connections" in open(logfile).read(),
                 what="redis ready")
        cluster.kubectl("delete", "pod", "redis", "--wait=true", timeout=150)
        log = open(logfile).read()
        assert "Received SIGTERM" in log, log
        assert "ready to exit, bye bye" in log, log
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Alternates stdout and stderr: each round one burst of lines on stdout (one write), then
# one on stderr, with flushes; every line carries its sequence number.
ALTERNATING = r'''
import sys, time
n = 0
for round in range(20):
    for stream in (sys.stdout, sys.stderr):
        stream.write("".join(f"line {n + i}\n" for i in range(20)))
        stream.flush()
        n += 20
    time.sleep(0.1)
print("done", flush=True)
time.sleep(3600)
'''


def test_logs_keep_the_order_of_stdout_and_stderr(cluster):
    cluster.kubectl("apply", "-f", "-", input=pod_manifest(
        "alternating", ["python3", "-c", ALTERNATING], grace=1))
    wait_for(lambda: logs_contain(cluster, "alternating", "done"), what="all lines logged")
    out = cluster.kubectl("logs", "alternating").stdout
    nums = [int(l.split()[1]) for l in out.splitlines() if l.startswith("line ")]
    assert nums == list(range(800)), f"out of order: {out}"
    cluster.kubectl("delete", "pod", "alternating", "--wait=true", timeout=60)


def test_a_failing_probe_counts_one_event_instead_of_writing_one_per_period(cluster):
    name = "probe-events"
    probe = {"readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1,
                                "failureThreshold": 1}}
    cluster.kubectl("apply", "-f", "-", input=pod_manifest(name, ["sleep", "3600"], grace=1, extra=probe))
    try:
        def unhealthy():
            r = cluster.kubectl("get", "events", "--field-selector",
                                f"involvedObject.name={name},reason=Unhealthy", "-o", "json")
            return json.loads(r.stdout)["items"]
        # Several periods of failures: still one Event, its count growing.
        wait_for(lambda: sum(e.get("count", 1) for e in unhealthy()) >= 5, timeout=60,
                 what="five failed probes")
        events = unhealthy()
        assert len(events) == 1, [(e["metadata"]["name"], e.get("count"), e["message"]) for e in events]
        ev = events[0]
        assert ev["count"] >= 5 and ev["type"] == "Warning"
        assert ev["source"]["component"] == "kubelet" and ev["source"].get("host")
        assert ev["lastTimestamp"] > ev["firstTimestamp"]
        # kubectl describe shows it the way Kubernetes does: "(xN over ...)".
        described = cluster.kubectl("describe", "pod", name).stdout
        assert "Unhealthy" in described and "(x" in described, described[-1500:]
    finally:
        cluster.kubectl("delete", "pod", name, "--wait=false", check=False)
