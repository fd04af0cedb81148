"""StatefulSets and storage end to end: a StatefulSet of Debian's redis-server as process pods
with a volumeClaimTemplate on the built-in local-path class keeps its data across pod
deletion and a bosun restart; stable DNS names through the headless Service; ordered scaling;
partitioned rolling updates and `kubectl rollout`; reclaim of deleted claims; emptyDir on
tmpfs, downwardAPI and subPath volumes."""

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import wait_for

REDIS = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def apply(cluster, items):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def get(cluster, *args):
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def redis_set(version="1", partition=0):
    labels = {"app": "redis"}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "redis"},
        "spec": {
            "serviceName": "redis",
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "redis",
                        "command": [REDIS, "--port", "6379", "--bind", "0.0.0.0",
                                    "--protected-mode", "no", "--dir", "/data",
                                    "--appendonly", "yes", "--appendfsync", "always",
                                    "--save", ""],
                        "env": [{"name": "VERSION", "value": version}],
                        "ports": [{"containerPort": 6379, "name": "redis"}],
                        "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "64Mi"}}},
            }],
        },
    }


HEADLESS = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis"},
    "spec": {"clusterIP": "None", "selector": {"app": "redis"},
             "ports": [{"name": "redis", "port": 6379}]},
}


def pod(cluster, name):
    r = cluster.kubectl("get", "pod", name, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def ready(p):
    if not p or p["metadata"].get("deletionTimestamp"):
        return False
    conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions") or []}
    return conds.get("Ready") == "True"


def wait_ready(cluster, name, not_uid=None, timeout=120):
    def ok():
        p = pod(cluster, name)
        return p if ready(p) and p["metadata"]["uid"] != not_uid else None
    return wait_for(ok, timeout=timeout, what=f"{name} ready")


def cli(ip, *args):
    r = subprocess.run([REDIS_CLI, "-h", ip, "-p", "6379", *args],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def redis_get(cluster, name, key):
    ip = pod(cluster, name)["status"]["podIP"]
    return cli(ip, "get", key)


@pytest.fixture(scope="module")
def redis(cluster):
    if not REDIS or not REDIS_CLI:
        pytest.skip("redis-server and redis-cli (Debian's redis-server package) are needed")
    apply(cluster, [HEADLESS, redis_set()])
    cluster.kubectl("rollout", "status", "sts/redis", "--timeout=180s", timeout=200)
    return cluster


def test_default_class_and_claims_bound_on_the_node(redis):
    cluster = redis
    out = cluster.kubectl("get", "storageclass").stdout
    assert "local-path (default)" in out and "bosun.dev/local-path" in out, out
    assert "WaitForFirstConsumer" in out and "Delete" in out, out
    claims = {c["metadata"]["name"]: c for c in get(cluster, "pvc")["items"]}
    assert set(claims) == {"data-redis-0", "data-redis-1"}
    for c in claims.values():
        assert c["status"]["phase"] == "Bound", c
        assert c["spec"]["storageClassName"] == "local-path"
        assert "kubernetes.io/pvc-protection" in c["metadata"]["finalizers"]
        pv = get(cluster, "pv", c["spec"]["volumeName"])
        assert pv["status"]["phase"] == "Bound"
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
        terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["values"] == [cluster.node_name]
        assert pv["spec"]["local"]["path"].startswith(os.path.realpath(cluster.data_dir))
    table = cluster.kubectl("get", "pvc").stdout
    assert "Bound" in table and "RWO" in table and "64Mi" in table, table
    # Ordered start: redis-1 was created only once redis-0 was Ready.
    p0, p1 = pod(cluster, "redis-0"), pod(cluster, "redis-1")
    ready0 = next(c for c in p0["status"]["conditions"] if c["type"] == "Ready")
    assert p1["metadata"]["creationTimestamp"] >= ready0["lastTransitionTime"]
    assert p0["spec"]["hostname"] == "redis-0" and p0["spec"]["subdomain"] == "redis"
    labels = p0["metadata"]["labels"]
    assert labels["statefulset.kubernetes.io/pod-name"] == "redis-0"
    assert labels["controller-revision-hash"].startswith("redis-")
    assert cluster.kubectl("get", "sts", "redis").stdout.split("\n")[1].split()[1] == "2/2"


def test_data_survives_pod_deletion_and_bosun_restart(redis):
    cluster = redis
    ip = pod(cluster, "redis-0")["status"]["podIP"]
    assert cli(ip, "set", "greeting", "hello from redis-0") == "OK"
    uid = pod(cluster, "redis-0")["metadata"]["uid"]
    cluster.kubectl("delete", "pod", "redis-0", "--wait=false")
    wait_ready(cluster, "redis-0", not_uid=uid)
    assert wait_for(lambda: redis_get(cluster, "redis-0", "greeting") == "hello from redis-0",
                    timeout=30, what="the key in the new redis-0")

    cluster.restart()
    wait_ready(cluster, "redis-0", timeout=180)
    assert wait_for(lambda: redis_get(cluster, "redis-0", "greeting") == "hello from redis-0",
                    timeout=60, what="the key after a bosun restart")


CLIENT = r'''
import json, socket, time
names = ["redis-0.redis.default.svc.cluster.local", "redis-1.redis", "redis"]
while True:
    out = {}
    for n in names:
        try:
            out[n] = sorted({a[4][0] for a in socket.getaddrinfo(n, 6379, socket.AF_INET, socket.SOCK_STREAM)})
        except socket.gaierror as e:
            out[n] = "error: %s" % e
    print("ROUND " + json.dumps(out), flush=True)
    time.sleep(1)
'''


def test_pod_names_resolve_through_the_headless_service(redis):
    cluster = redis
    apply(cluster, [{
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dns-client"},
        "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "command": ["python3", "-c", CLIENT]}]},
    }])
    ips = {n: pod(cluster, n)["status"]["podIP"] for n in ("redis-0", "redis-1")}

    def good():
        r = cluster.kubectl("logs", "dns-client", check=False)
        rounds = [json.loads(l[6:]) for l in r.stdout.splitlines() if l.startswith("ROUND ")]
        if not rounds:
            return None
        last = rounds[-1]
        ok = (last["redis-0.redis.default.svc.cluster.local"] == [ips["redis-0"]]
              and last["redis-1.redis"] == [ips["redis-1"]]
              and last["redis"] == sorted(ips.values()))
        return last if ok else None

    try:
        wait_for(good, timeout=90, what=f"per-pod DNS answers {ips}")
    finally:
        cluster.kubectl("delete", "pod", "dns-client", "--wait=false", check=False)


def delete_order(cluster):
    evs = get(cluster, "events", "--field-selector", "involvedObject.name=redis")["items"]
    evs = [e for e in evs if e.get("reason") == "SuccessfulDelete"]
    evs.sort(key=lambda e: e.get("eventTime") or e.get("lastTimestamp") or "")
    return [e["message"].split()[2] for e in evs]


def test_scaling_is_ordered(redis):
    cluster = redis
    cluster.kubectl("scale", "sts/redis", "--replicas=4")
    cluster.kubectl("rollout", "status", "sts/redis", "--timeout=180s", timeout=200)
    p2, p3 = pod(cluster, "redis-2"), pod(cluster, "redis-3")
    ready2 = next(c for c in p2["status"]["conditions"] if c["type"] == "Ready")
    assert p3["metadata"]["creationTimestamp"] >= ready2["lastTransitionTime"]
    before = delete_order(cluster)
    cluster.kubectl("scale", "sts/redis", "--replicas=2")
    wait_for(lambda: pod(cluster, "redis-2") is None and pod(cluster, "redis-3") is None,
             timeout=90, what="scale down")
    assert delete_order(cluster)[len(before):] == ["redis-3", "redis-2"]
    # Claims stay (whenScaled: Retain): scaling up again finds the old data.
    claims = {c["metadata"]["name"] for c in get(cluster, "pvc")["items"]}
    assert {"data-redis-2", "data-redis-3"} <= claims


def revision(cluster, name):
    return pod(cluster, name)["metadata"]["labels"]["controller-revision-hash"]


def test_partitioned_rolling_update_and_rollout_verbs(redis):
    cluster = redis
    old = revision(cluster, "redis-0")
    cluster.kubectl("patch", "sts", "redis", "--type=strategic", "-p", json.dumps({"spec": {
        "updateStrategy": {"rollingUpdate": {"partition": 1}},
        "template": {"spec": {"containers": [{"name": "redis", "env": [{"name": "VERSION", "value": "2"}]}]}},
    }}))
    out = cluster.kubectl("rollout", "status", "sts/redis", "--timeout=180s", timeout=200).stdout
    assert "partitioned roll out complete" in out, out
    assert revision(cluster, "redis-0") == old
    new = revision(cluster, "redis-1")
    assert new != old
    sts = get(cluster, "sts", "redis")
    assert sts["status"]["currentRevision"] == old and sts["status"]["updateRevision"] == new
    assert sts["status"]["updatedReplicas"] == 1

    cluster.kubectl("patch", "sts", "redis", "--type=merge", "-p",
                    json.dumps({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}))
    out = cluster.kubectl("rollout", "status", "sts/redis", "--timeout=180s", timeout=200).stdout
    # kubectl reports any set with a partition (0 included, as defaulted) this way.
    assert "partitioned roll out complete: 2 new pods have been updated" in out, out
    assert revision(cluster, "redis-0") == new
    wait_for(lambda: get(cluster, "sts", "redis")["status"]["currentRevision"] == new,
             timeout=30, what="the update revision becoming current")
    # The data written before is still there after the update replaced the pod.
    assert redis_get(cluster, "redis-0", "greeting") == "hello from redis-0"

    hist = cluster.kubectl("rollout", "history", "sts/redis").stdout
    assert "1" in hist and "2" in hist, hist
    revs = cluster.kubectl("get", "controllerrevisions").stdout
    assert "statefulset.apps/redis" in revs, revs
    cluster.kubectl("rollout", "undo", "sts/redis")
    cluster.kubectl("rollout", "status", "sts/redis", "--timeout=180s", timeout=200)
    wait_for(lambda: revision(cluster, "redis-0") == old and revision(cluster, "redis-1") == old,
             timeout=120, what="undo back to the first revision")


def test_deleted_claims_release_and_remove_their_volume(redis):
    cluster = redis
    cluster.kubectl("delete", "sts", "redis", "--wait=true", "--timeout=90s", timeout=120)
    wait_for(lambda: not get(cluster, "pods", "-l", "app=redis")["items"], timeout=90,
             what="redis pods gone")
    claim = get(cluster, "pvc", "data-redis-0")
    pv = claim["spec"]["volumeName"]
    path = get(cluster, "pv", pv)["spec"]["local"]["path"]
    assert os.path.exists(os.path.join(path, "appendonlydir")), os.listdir(path)
    cluster.kubectl("delete", "pvc", "--all", "--wait=true", "--timeout=60s", timeout=90)
    wait_for(lambda: cluster.kubectl("get", "pv", pv, check=False).returncode != 0,
             timeout=60, what=f"volume {pv} deleted")
    assert not os.path.exists(path)


def test_static_volume_is_bound_by_class_and_size_and_retained(cluster):
    host_dir = os.path.join(cluster.data_dir, "static-pv")
    os.makedirs(host_dir, exist_ok=True)
    apply(cluster, [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "static-small"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                  "storageClassName": "manual", "hostPath": {"path": host_dir}}},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "static-big"},
         "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
                  "storageClassName": "manual", "hostPath": {"path": host_dir}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "manual"},
         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                  "resources": {"requests": {"storage": "2Gi"}}}},
    ])
    wait_for(lambda: get(cluster, "pvc", "manual")["status"].get("phase") == "Bound",
             timeout=30, what="static claim bound")
    assert get(cluster, "pvc", "manual")["spec"]["volumeName"] == "static-big"
    assert get(cluster, "pv", "static-small")["status"]["phase"] == "Available"
    cluster.kubectl("delete", "pvc", "manual", "--timeout=30s")
    wait_for(lambda: get(cluster, "pv", "static-big")["status"].get("phase") == "Released",
             timeout=30, what="Retain volume released")
    assert os.path.isdir(host_dir)
    cluster.kubectl("delete", "pv", "static-small", "static-big", "--timeout=30s")


VOLUMES_POD = r'''
import time
mounts = open("/proc/self/mountinfo").read().splitlines()
print("CACHE " + " ".join(l for l in mounts if " /cache " in l), flush=True)
print("CONF " + open("/etc/app.conf").read(), flush=True)
while True:
    labels = open("/etc/podinfo/labels").read().replace("\n", ";")
    print("INFO %s|%s|%s" % (open("/etc/podinfo/name").read(), labels, open("/etc/podinfo/mem").read()), flush=True)
    time.sleep(0.5)
'''


def test_memory_emptydir_downward_api_and_subpath(cluster):
    apply(cluster, [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"},
         "data": {"app.conf": "mode=fast", "other": "x"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vols", "labels": {"tier": "one"}},
         "spec": {
             "runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
             "containers": [{
                 "name": "c", "command": ["python3", "-c", VOLUMES_POD],
                 "resources": {"limits": {"memory": "64Mi"}},
                 "volumeMounts": [
                     {"name": "cache", "mountPath": "/cache"},
                     {"name": "info", "mountPath": "/etc/podinfo"},
                     {"name": "conf", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
                 ]}],
             "volumes": [
                 {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                 {"name": "info", "downwardAPI": {"items": [
                     {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                     {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                     {"path": "mem", "resourceFieldRef": {"containerName": "c",
                                                          "resource": "limits.memory",
                                                          "divisor": "1Mi"}},
                 ]}},
                 {"name": "conf", "configMap": {"name": "app"}},
             ]}},
    ])

    def lines(prefix):
        r = cluster.kubectl("logs", "vols", check=False)
        return [l[len(prefix) + 1:] for l in r.stdout.splitlines() if l.startswith(prefix + " ")]

    cache = wait_for(lambda: lines("CACHE"), timeout=90, what="pod output")[0]
    assert " - tmpfs " in cache and "size=16384k" in cache, cache
    assert lines("CONF")[0] == "mode=fast"
    info = wait_for(lambda: lines("INFO"), timeout=10, what="downward output")[-1]
    assert info == 'vols|tier="one"|64', info
    cluster.kubectl("label", "pod", "vols", "tier=two", "--overwrite")
    wait_for(lambda: lines("INFO")[-1] == 'vols|tier="two"|64', timeout=30,
             what="downwardAPI labels follow the pod")
    cluster.kubectl("delete", "pod", "vols", "--wait=true", "--timeout=30s")


def test_emptydir_over_its_size_limit_evicts_the_pod(cluster):
    """The node agent evicts a pod whose disk-backed emptyDir grows past its sizeLimit, with
    the kubelet's reason, message, condition and event; a pod within its limit keeps running.
    A memory-backed emptyDir without sizeLimit is sized to the pod's memory limit."""
    def scratch_pod(name, mb):
        script = (f"dd if=/dev/zero of=/scratch/fill bs=1048576 count={mb} 2>/dev/null; "
                  "grep ' /mem ' /proc/mounts; sleep 3600")
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 30,
                         "containers": [{"name": "c", "command": ["/bin/sh", "-c", script],
                                         "resources": {"limits": {"memory": "32Mi"}},
                                         "volumeMounts": [
                                             {"name": "scratch", "mountPath": "/scratch"},
                                             {"name": "mem", "mountPath": "/mem"}]}],
                         "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "4Mi"}},
                                     {"name": "mem", "emptyDir": {"medium": "Memory"}}]}}

    apply(cluster, [scratch_pod("fits", 1), scratch_pod("spills", 8)])

    def evicted():
        p = get(cluster, "pod", "spills")
        return p if p["status"].get("phase") == "Failed" else None

    p = wait_for(evicted, timeout=60, what="the pod over its emptyDir limit evicted")
    msg = 'Usage of EmptyDir volume "scratch" exceeds the limit "4Mi". '
    assert p["status"]["reason"] == "Evicted", p["status"]
    assert p["status"]["message"] == msg, p["status"]
    cond = [c for c in p["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert cond and cond[0]["status"] == "True" and cond[0]["reason"] == "TerminationByKubelet", \
        p["status"]["conditions"]
    state = p["status"]["containerStatuses"][0]["state"]
    assert "terminated" in state, state
    events = get(cluster, "events", "--field-selector", "involvedObject.name=spills")["items"]
    assert any(e["reason"] == "Evicted" and e["type"] == "Warning" and e["message"] == msg
               for e in events), [(e["reason"], e["message"]) for e in events]
    # `kubectl describe` shows the pod's reason and message.
    described = cluster.kubectl("describe", "pod", "spills").stdout
    assert "Evicted" in described and "exceeds the limit" in described, described
    # Within its limit: still running, and its memory emptyDir is as large as its limit.
    fits = get(cluster, "pod", "fits")
    assert fits["status"]["phase"] == "Running", fits["status"]
    mounts = wait_for(lambda: cluster.kubectl("logs", "fits").stdout.strip(), timeout=30,
                      what="the memory volume's mount line")
    assert " tmpfs " in mounts and "size=32768k" in mounts, mounts
    cluster.kubectl("delete", "pod", "fits", "spills", "--wait=true", "--timeout=60s")
