"""Isolation of process pods on the node: own PID, mount and UTS namespaces, the
securityContext honoured (user, groups, capabilities, runAsNonRoot), bosun's data and
credentials out of reach, unsupported fields refused at admission, and private file modes
of the data dir."""

import json
import os
import stat
import time

from conftest import wait_for

# Runs in the pod: reports what it is and what it can reach as one JSON line, then waits.
PROBE = r'''
import json, os, socket, sys, time
def status():
    out = {}
    for l in open("/proc/self/status"):
        k, _, v = l.partition(":")
        out[k] = v.split()
    return out
def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        return type(e).__name__
data = sys.argv[1]
s = status()
report = {
    "uid": [int(x) for x in s["Uid"]],
    "gid": [int(x) for x in s["Gid"]],
    "groups": sorted(int(x) for x in s.get("Groups", [])),
    "capeff": int(s["CapEff"][0], 16),
    "nonewprivs": int(s.get("NoNewPrivs", ["0"])[0]),
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "hostname": socket.gethostname(),
    "fqdn": socket.getfqdn(),
    "self_addr": socket.gethostbyname(socket.gethostname()),
    "read_ca_key": attempt(lambda: open(os.path.join(data, "pki", "ca.key")).read()),
    "read_token": attempt(lambda: open(os.path.join(data, "pki", "token")).read()),
    "list_data_dir": attempt(lambda: os.listdir(os.path.join(data, "agent", "pods")) or 1/0),
    "read_shadow": attempt(lambda: open("/etc/shadow").read() or 1/0),
    "write_usr": attempt(lambda: open("/usr/bosun-isolation-probe", "w").close()),
    "write_tmp": attempt(lambda: open("/tmp/probe", "w").close()),
    "dev": sorted(os.listdir("/dev")),
}
print("REPORT " + json.dumps(report), flush=True)
time.sleep(3600)
'''

CAP_SYS_ADMIN = 1 << 21
CAP_NET_ADMIN = 1 << 12
CAP_CHOWN = 1 << 0


def probe_pod(name, data_dir, pod_sc=None, sc=None, extra=None):
    c = {"name": "probe", "command": ["python3", "-c", PROBE, data_dir]}
    if sc is not None:
        c["securityContext"] = sc
    spec = {"runtimeClassName": "process", "terminationGracePeriodSeconds": 2, "containers": [c]}
    if pod_sc is not None:
        spec["securityContext"] = pod_sc
    spec.update(extra or {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def apply(cluster, *objs):
    return cluster.kubectl("apply", "-f", "-", check=False,
                           input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def report_of(cluster, name):
    def get():
        r = cluster.kubectl("logs", name, check=False)
        for l in r.stdout.splitlines():
            if l.startswith("REPORT "):
                return json.loads(l[len("REPORT "):])
        return None
    return wait_for(get, timeout=90, what=f"report of pod {name}")


def delete(cluster, *names):
    cluster.kubectl("delete", "pod", *names, "--wait=false", check=False)


def test_process_pod_runs_as_its_user_in_its_own_namespaces(cluster):
    r = apply(cluster, probe_pod("nobody", cluster.data_dir,
                                 pod_sc={"runAsUser": 1000, "supplementalGroups": [3000]},
                                 sc={"runAsUser": 65534, "runAsGroup": 65534}))
    assert r.returncode == 0, r.stderr
    rep = report_of(cluster, "nobody")
    # The container's runAsUser wins over the pod's; groups from supplementalGroups.
    assert rep["uid"] == [65534] * 4, rep
    assert rep["gid"] == [65534] * 4, rep
    assert rep["groups"] == [3000], rep
    assert rep["capeff"] == 0, rep
    assert rep["nonewprivs"] == 1, rep
    # Its own PID namespace: the workload is a child of the pod's init (PID 1), and only
    # the pod's processes are there.
    assert rep["ppid"] == 1, rep
    assert len(rep["pids"]) <= 3 and 1 in rep["pids"], rep
    assert rep["hostname"] == "nobody", rep
    # bosun's data dir and credentials are out of reach, the host is read-only, /tmp is private.
    assert rep["read_ca_key"] != "ok", rep
    assert rep["read_token"] != "ok", rep
    assert rep["list_data_dir"] != "ok", rep
    assert rep["write_usr"] != "ok", rep
    assert rep["write_tmp"] == "ok", rep
    assert "sda" not in rep["dev"] and "null" in rep["dev"], rep
    delete(cluster, "nobody")


def test_root_pod_gets_default_capabilities_and_still_no_secrets(cluster):
    r = apply(cluster,
              probe_pod("rootpod", cluster.data_dir, extra={"hostname": "db", "subdomain": "sub"}),
              probe_pod("netadmin", cluster.data_dir,
                        sc={"capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN"]}}),
              probe_pod("privileged", cluster.data_dir, sc={"privileged": True}))
    assert r.returncode == 0, r.stderr
    root = report_of(cluster, "rootpod")
    assert root["uid"] == [0] * 4, root
    assert root["capeff"] & CAP_SYS_ADMIN == 0, root
    assert root["capeff"] & CAP_CHOWN, root
    assert root["hostname"] == "db", root
    # The pod's hosts file names it (FQDN under its subdomain) at its IP.
    ip = cluster.kubectl("get", "pod", "rootpod", "-o", "jsonpath={.status.podIP}").stdout
    assert root["self_addr"] == ip, (root, ip)
    assert root["fqdn"] == "db.sub.default.svc.cluster.local", root
    # Root in the pod is not root on the host: the keys, the store and the host's secrets
    # are hidden, the host's files are read-only.
    assert root["read_ca_key"] != "ok", root
    assert root["list_data_dir"] != "ok", root
    assert root["read_shadow"] != "ok", root
    assert root["write_usr"] != "ok", root
    assert len(root["pids"]) <= 3, root

    na = report_of(cluster, "netadmin")
    assert na["capeff"] & CAP_NET_ADMIN, na
    assert na["capeff"] & CAP_CHOWN == 0, na
    assert na["capeff"] & CAP_SYS_ADMIN == 0, na

    # privileged: every capability and the host's view of the files.
    priv = report_of(cluster, "privileged")
    assert priv["capeff"] & CAP_SYS_ADMIN, priv
    assert priv["nonewprivs"] == 0, priv
    assert priv["read_ca_key"] == "ok", priv
    delete(cluster, "rootpod", "netadmin", "privileged")


def test_sigterm_reaches_a_workload_without_handlers(cluster):
    # `sleep` installs no signal handler: as PID 1 of its namespace it would ignore SIGTERM
    # and the pod would wait for SIGKILL at the end of its grace period.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
           "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 120,
                    "containers": [{"name": "s", "command": ["sleep", "3600"]}]}}
    assert apply(cluster, pod).returncode == 0
    wait_for(lambda: cluster.kubectl("get", "pod", "sleeper", "-o",
                                     "jsonpath={.status.phase}").stdout == "Running",
             timeout=60, what="sleeper running")
    t0 = time.time()
    cluster.kubectl("delete", "pod", "sleeper", "--wait=true", "--timeout=100s", timeout=110)
    # Far from the 120 s grace period: SIGTERM ended it.
    assert time.time() - t0 < 60


def test_run_as_non_root_without_user_is_refused(cluster):
    assert apply(cluster, probe_pod("mustnotroot", cluster.data_dir,
                                    pod_sc={"runAsNonRoot": True})).returncode == 0

    def waiting():
        p = json.loads(cluster.kubectl("get", "pod", "mustnotroot", "-o", "json").stdout)
        for s in p["status"].get("containerStatuses") or []:
            w = (s.get("state") or {}).get("waiting") or {}
            if w.get("reason") == "CreateContainerConfigError":
                return w
        return None
    w = wait_for(waiting, timeout=60, what="CreateContainerConfigError")
    assert "container has runAsNonRoot and image will run as root" in w["message"], w
    # Never started.
    assert cluster.kubectl("logs", "mustnotroot", check=False).stdout.strip() == ""
    delete(cluster, "mustnotroot")


def test_unsupported_security_fields_are_refused_naming_the_field(cluster):
    cases = [
        (probe_pod("selinux", "/", pod_sc={"seLinuxOptions": {"level": "s0:c1"}}),
         "spec.securityContext.seLinuxOptions"),
        (probe_pod("unmasked", "/", sc={"procMount": "Unmasked"}),
         "spec.containers[0].securityContext.procMount"),
        (probe_pod("localhost", "/", sc={"seccompProfile": {"type": "Localhost",
                                                           "localhostProfile": "x.json"}}),
         "spec.containers[0].securityContext.seccompProfile.type"),
        (probe_pod("windows", "/", sc={"windowsOptions": {"runAsUserName": "x"}}),
         "spec.containers[0].securityContext.windowsOptions"),
    ]
    for obj, field in cases:
        r = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
        assert r.returncode != 0, (field, r.stdout)
        assert field in r.stderr, (field, r.stderr)
        assert cluster.kubectl("get", "pod", obj["metadata"]["name"], check=False).returncode != 0
    # In a Deployment's template too, with the template's path.
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sel"},
           "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": probe_pod("x", "/", sc={"seLinuxOptions": {"user": "u"}})["spec"]}}}
    r = cluster.kubectl("apply", "-f", "-", input=json.dumps(dep), check=False)
    assert r.returncode != 0
    assert "spec.template.spec.containers[0].securityContext.seLinuxOptions" in r.stderr, r.stderr


def test_secret_volume_modes_and_fs_group(cluster):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"user": "admin", "password": "s3cret"}}
    script = r'''
import json, os, stat, time
out = {}
for root, dirs, files in os.walk("/etc/creds"):
    for f in files:
        p = os.path.join(root, f)
        st = os.stat(p)
        out[os.path.relpath(p, "/etc/creds")] = [oct(stat.S_IMODE(st.st_mode)), st.st_gid, open(p).read()]
try:
    open("/scratch/x", "w").write("x")
    out["_scratch"] = [oct(stat.S_IMODE(os.stat("/scratch").st_mode)), os.stat("/scratch/x").st_gid]
except Exception as e:
    out["_scratch"] = str(e)
print("REPORT " + json.dumps(out), flush=True)
time.sleep(3600)
'''
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "secretuser"},
           "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 2,
                    "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 2000},
                    "volumes": [
                        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400,
                                                     "items": [{"key": "password", "path": "pw", "mode": 0o600},
                                                               {"key": "user", "path": "u"}]}},
                        {"name": "scratch", "emptyDir": {}}],
                    "containers": [{"name": "c", "command": ["python3", "-c", script],
                                    "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"},
                                                     {"name": "scratch", "mountPath": "/scratch"}]}]}}
    r = apply(cluster, secret, pod)
    assert r.returncode == 0, r.stderr
    rep = report_of(cluster, "secretuser")
    # Items' mode wins over defaultMode; fsGroup owns them and reads them (as the kubelet).
    assert rep["pw"] == ["0o640", 2000, "s3cret"], rep
    assert rep["u"] == ["0o440", 2000, "admin"], rep
    # An emptyDir is writable, set-group-ID to the fsGroup.
    assert rep["_scratch"] == ["0o2777", 2000], rep
    # On the host, the pod's files are out of other users' reach.
    uid = json.loads(cluster.kubectl("get", "pod", "secretuser", "-o", "json").stdout)["metadata"]["uid"]
    pod_dir = os.path.join(cluster.data_dir, "agent", "pods", uid)
    assert stat.S_IMODE(os.stat(pod_dir).st_mode) == 0o700
    delete(cluster, "secretuser")


def test_data_dir_store_and_keys_are_private(cluster):
    d = cluster.data_dir
    modes = {p: stat.S_IMODE(os.stat(os.path.join(d, p)).st_mode)
             for p in ["", "store.redb", "pki", "pki/ca.key", "pki/token", "kubeconfig",
                       "agent", "agent/pods"]}
    assert modes == {"": 0o700, "store.redb": 0o600, "pki": 0o700, "pki/ca.key": 0o600,
                     "pki/token": 0o600, "kubeconfig": 0o600, "agent": 0o700,
                     "agent/pods": 0o700}, {k: oct(v) for k, v in modes.items()}
