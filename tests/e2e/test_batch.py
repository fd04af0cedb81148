"""Jobs, CronJobs and DaemonSets on a real bosun, driven by kubectl: retries with back-off,
Indexed Jobs, deadlines, a CronJob firing on schedule, `kubectl create job --from=cronjob`,
and a DaemonSet's rollout, history and undo."""

import json
import os
import shutil
import tempfile
import time

import pytest

from conftest import wait_for


@pytest.fixture(scope="module")
def shared_dir():
    # Process pods have their own /tmp: files shared with the test go through a hostPath.
    d = tempfile.mkdtemp(prefix="bosun-batch-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def job_manifest(name, script, spec=None, host_dir=None, restart="Never"):
    container = {"name": "main", "command": ["/bin/sh", "-c", script]}
    pod = {"restartPolicy": restart, "runtimeClassName": "process", "containers": [container]}
    if host_dir:
        container["volumeMounts"] = [{"name": "shared", "mountPath": host_dir}]
        pod["volumes"] = [{"name": "shared", "hostPath": {"path": host_dir, "type": "Directory"}}]
    body = {"template": {"spec": pod}}
    body.update(spec or {})
    return json.dumps({"apiVersion": "batch/v1", "kind": "Job",
                       "metadata": {"name": name}, "spec": body})


def get(cluster, *what):
    return json.loads(cluster.kubectl("get", *what, "-o", "json").stdout)


def test_job_fails_twice_then_succeeds(cluster, shared_dir):
    count = os.path.join(shared_dir, "attempts")
    script = (f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; "
              f"echo attempt $n; [ $n -ge 3 ]")
    cluster.kubectl("apply", "-f", "-", input=job_manifest(
        "flaky", script, {"backoffLimit": 4}, host_dir=shared_dir))
    # Back-off: 10 s after the first failure, 20 s after the second.
    started = time.time()
    cluster.kubectl("wait", "--for=condition=complete", "job/flaky", "--timeout=120s", timeout=150)
    took = time.time() - started
    job = get(cluster, "job", "flaky")
    assert job["status"]["succeeded"] == 1
    assert job["status"]["failed"] == 2
    assert job["status"].get("completionTime")
    assert took >= 25, f"retries did not back off ({took:.0f}s)"
    with open(count) as f:
        assert f.read().strip() == "3"
    pods = get(cluster, "pods", "-l", "batch.kubernetes.io/job-name=flaky")["items"]
    phases = sorted(p["status"]["phase"] for p in pods)
    assert phases == ["Failed", "Failed", "Succeeded"], phases
    row = cluster.kubectl("get", "job", "flaky", "--no-headers").stdout.split()
    assert row[1:3] == ["Complete", "1/1"], row


def test_indexed_parallel_job_gets_its_index(cluster):
    cluster.kubectl("apply", "-f", "-", input=job_manifest(
        "indexed", "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        {"completions": 3, "parallelism": 3, "completionMode": "Indexed"}))
    cluster.kubectl("wait", "--for=condition=complete", "job/indexed", "--timeout=90s", timeout=120)
    job = get(cluster, "job", "indexed")
    assert job["status"]["completedIndexes"] == "0-2"
    pods = get(cluster, "pods", "-l", "batch.kubernetes.io/job-name=indexed")["items"]
    seen = set()
    for p in pods:
        i = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        log = cluster.kubectl("logs", p["metadata"]["name"]).stdout
        assert f"index={i}" in log, log
        seen.add(i)
    assert seen == {"0", "1", "2"}


def test_deadline_stops_a_job_and_ttl_removes_it(cluster):
    cluster.kubectl("apply", "-f", "-", input=job_manifest(
        "deadline", "sleep 300", {"activeDeadlineSeconds": 3, "ttlSecondsAfterFinished": 5}))
    cluster.kubectl("wait", "--for=condition=failed", "job/deadline", "--timeout=90s", timeout=120)
    job = get(cluster, "job", "deadline")
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "DeadlineExceeded"
    assert "active" not in job["status"]
    # The TTL then deletes the Job and its pods.
    wait_for(lambda: cluster.kubectl("get", "job", "deadline", check=False).returncode != 0,
             timeout=60, what="the TTL to delete the job")
    wait_for(lambda: not get(cluster, "pods", "-l", "batch.kubernetes.io/job-name=deadline")["items"],
             timeout=60, what="the job's pods to go")


def test_cronjob_runs_on_schedule_and_on_demand(cluster):
    cj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
          "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": "Forbid",
                   "successfulJobsHistoryLimit": 1,
                   "jobTemplate": {"spec": {"template": {"spec": {
                       "restartPolicy": "OnFailure", "runtimeClassName": "process",
                       "containers": [{"name": "main", "command": ["/bin/sh", "-c", "echo tick"]}]}}}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(cj))
    # kubectl create job --from=cronjob/x runs the template at once.
    cluster.kubectl("create", "job", "--from=cronjob/tick", "tick-manual")
    cluster.kubectl("wait", "--for=condition=complete", "job/tick-manual", "--timeout=60s", timeout=90)

    def scheduled():
        jobs = get(cluster, "jobs")["items"]
        return [j for j in jobs if "batch.kubernetes.io/cronjob-scheduled-timestamp"
                in j["metadata"].get("annotations", {})]
    jobs = wait_for(scheduled, timeout=75, interval=1, what="a scheduled job")
    name = jobs[0]["metadata"]["name"]
    cluster.kubectl("wait", "--for=condition=complete", f"job/{name}", "--timeout=60s", timeout=90)
    status = wait_for(lambda: (s := get(cluster, "cronjob", "tick").get("status", {})).get(
        "lastSuccessfulTime") and s, timeout=30, what="lastSuccessfulTime")
    assert status["lastScheduleTime"].endswith(":00Z"), status
    row = cluster.kubectl("get", "cronjob", "tick", "--no-headers").stdout.split()
    assert row[1:6] == ["*/1", "*", "*", "*", "*"], row
    cluster.kubectl("delete", "cronjob", "tick")


def test_daemonset_rolls_out_and_back(cluster):
    def ds(arg, cause):
        return json.dumps({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "node-agent", "annotations": {"kubernetes.io/change-cause": cause}},
            "spec": {"selector": {"matchLabels": {"app": "node-agent"}}, "template": {
                "metadata": {"labels": {"app": "node-agent"}},
                "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "command": ["/bin/sleep", arg]}]}}}})
    cluster.kubectl("apply", "-f", "-", input=ds("3600", "first"))
    cluster.kubectl("rollout", "status", "ds/node-agent", "--timeout=60s", timeout=90)
    pods = get(cluster, "pods", "-l", "app=node-agent")["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [cluster.node_name]
    row = cluster.kubectl("get", "ds", "node-agent", "--no-headers").stdout.split()
    assert row[1:6] == ["1", "1", "1", "1", "1"], row

    cluster.kubectl("apply", "-f", "-", input=ds("3601", "second"))
    cluster.kubectl("rollout", "status", "ds/node-agent", "--timeout=60s", timeout=90)
    history = cluster.kubectl("rollout", "history", "ds/node-agent").stdout
    assert "first" in history and "second" in history, history

    cluster.kubectl("rollout", "undo", "ds/node-agent")
    cluster.kubectl("rollout", "status", "ds/node-agent", "--timeout=60s", timeout=90)
    d = get(cluster, "ds", "node-agent")
    assert d["spec"]["template"]["spec"]["containers"][0]["command"] == ["/bin/sleep", "3600"]
    live = [p for p in get(cluster, "pods", "-l", "app=node-agent")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert [p["spec"]["containers"][0]["command"][1] for p in live] == ["3600"]
    cluster.kubectl("delete", "ds", "node-agent")


def test_job_with_a_sidecar_completes_when_its_main_container_does(cluster, shared_dir):
    log = os.path.join(shared_dir, "sidecar.log")
    hook = os.path.join(shared_dir, "poststart")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "with-sidecar"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never", "runtimeClassName": "process",
               "terminationGracePeriodSeconds": 5,
               "volumes": [{"name": "shared", "hostPath": {"path": shared_dir, "type": "Directory"}}],
               "initContainers": [{
                   "name": "sidecar", "restartPolicy": "Always",
                   "command": ["/bin/sh", "-c",
                               f"trap 'echo stopped >> {log}; exit 0' TERM; echo up >> {log}; "
                               "while true; do sleep 0.2; done"],
                   "volumeMounts": [{"name": "shared", "mountPath": shared_dir}]}],
               "containers": [{
                   "name": "main",
                   # Runs only once the sidecar is up, and sees it.
                   "command": ["/bin/sh", "-c", f"sleep 1; grep -q up {log} && echo main-done"],
                   "lifecycle": {"postStart": {"exec": {"command": [
                       "/bin/sh", "-c", f"echo hooked > {hook}"]}}},
                   "volumeMounts": [{"name": "shared", "mountPath": shared_dir}]}]}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
    cluster.kubectl("wait", "--for=condition=complete", "job/with-sidecar", "--timeout=90s", timeout=120)
    pod = get(cluster, "pods", "-l", "batch.kubernetes.io/job-name=with-sidecar")["items"][0]
    assert pod["status"]["phase"] == "Succeeded"
    side = pod["status"]["initContainerStatuses"][0]
    assert side["name"] == "sidecar" and "terminated" in side["state"], side
    with open(log) as f:
        assert f.read().split() == ["up", "stopped"]
    # The main container's postStart hook ran in the pod (before its 1 s of work ended).
    with open(hook) as f:
        assert f.read().strip() == "hooked"
    assert "main-done" in cluster.kubectl("logs", pod["metadata"]["name"], "-c", "main").stdout


def test_loadbalancer_service_is_served_on_the_node_address(cluster):
    from conftest import HOSTNAME_SERVER, free_port
    port = free_port()
    items = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lb-web", "labels": {"app": "lb-web"}},
         "spec": {"runtimeClassName": "process",
                  "containers": [{"name": "web", "command": ["python3", "-c", HOSTNAME_SERVER],
                                  "ports": [{"containerPort": 8080}],
                                  "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                     "periodSeconds": 1}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb-web"},
         "spec": {"type": "LoadBalancer", "selector": {"app": "lb-web"},
                  "ports": [{"port": port, "targetPort": 8080}]}},
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    node = get(cluster, "node", cluster.node_name)
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"][0]
    svc = wait_for(lambda: (s := get(cluster, "svc", "lb-web")).get("status", {}).get(
        "loadBalancer", {}).get("ingress") and s, timeout=30, what="the LoadBalancer ingress")
    assert [i["ip"] for i in svc["status"]["loadBalancer"]["ingress"]] == [internal]
    row = cluster.kubectl("get", "svc", "lb-web", "--no-headers").stdout.split()
    assert row[1] == "LoadBalancer" and row[3] == internal, row
    cluster.kubectl("wait", "--for=condition=ready", "pod/lb-web", "--timeout=60s", timeout=90)
    import urllib.request

    def answer():
        try:
            return urllib.request.urlopen(f"http://{internal}:{port}/", timeout=3).read().decode().strip()
        except Exception:
            return None
    assert wait_for(answer, timeout=30, what="the Service port on the node address") == "lb-web"
    cluster.kubectl("delete", "svc,pod", "lb-web", "--wait=true", "--timeout=60s")


def test_pod_failure_policy(cluster, shared_dir):
    """podFailurePolicy: FailJob ends the Job at the first matching exit code, Ignore does
    not count a failure toward backoffLimit, Count (NotIn) counts, FailIndex fails one index
    of an Indexed Job without retrying it."""
    rules = {"podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In",
                                              "values": [42]}},
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]}}
    # FailJob: one pod, the Job fails with the rule's reason and Kubernetes' message.
    cluster.kubectl("apply", "-f", "-", input=job_manifest(
        "pfp-failjob", "exit 42", dict(rules, backoffLimit=6)))
    cluster.kubectl("wait", "--for=condition=failed", "job/pfp-failjob", "--timeout=60s", timeout=90)
    job = get(cluster, "job", "pfp-failjob")
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "PodFailurePolicy", failed
    pods = get(cluster, "pods", "-l", "batch.kubernetes.io/job-name=pfp-failjob")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    assert failed["message"] == (f"Container main for pod default/{pods[0]['metadata']['name']} "
                                 "failed with exit code 42 matching FailJob rule at index 0"), failed
    assert job["status"]["failed"] == 1

    # Ignore: with backoffLimit 0 a counted failure would fail the Job; an ignored one is
    # retried. The second attempt succeeds.
    marker = os.path.join(shared_dir, "pfp-ignore")
    script = f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; exit 3"
    cluster.kubectl("apply", "-f", "-", input=job_manifest(
        "pfp-ignore", script, dict(rules, backoffLimit=0), host_dir=shared_dir))
    cluster.kubectl("wait", "--for=condition=complete", "job/pfp-ignore", "--timeout=90s",
                    timeout=120)
    job = get(cluster, "job", "pfp-ignore")
    assert job["status"]["succeeded"] == 1 and "failed" not in job["status"], job["status"]
    pods = get(cluster, "pods", "-l", "batch.kubernetes.io/job-name=pfp-ignore")["items"]
    assert sorted(p["status"]["phase"] for p in pods) == ["Failed", "Succeeded"]

    # Count: exit code 7 counts, backoffLimit 0 fails the Job as without a policy.
    cluster.kubectl("apply", "-f", "-", input=job_manifest(
        "pfp-count", "exit 7", dict(rules, backoffLimit=0)))
    cluster.kubectl("wait", "--for=condition=failed", "job/pfp-count", "--timeout=60s", timeout=90)
    job = get(cluster, "job", "pfp-count")
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "BackoffLimitExceeded", failed

    # FailIndex: index 1 exits 5 and is not retried; index 0 succeeds; the Job fails with
    # FailedIndexes once every index is done.
    fail_index = {"completionMode": "Indexed", "completions": 2, "parallelism": 2,
                  "backoffLimitPerIndex": 2,
                  "podFailurePolicy": {"rules": [
                      {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [5]}}]}}
    cluster.kubectl("apply", "-f", "-", input=job_manifest(
        "pfp-index", 'if [ "$JOB_COMPLETION_INDEX" = 1 ]; then exit 5; fi; exit 0', fail_index))
    cluster.kubectl("wait", "--for=condition=failed", "job/pfp-index", "--timeout=60s", timeout=90)
    job = get(cluster, "job", "pfp-index")
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "FailedIndexes", failed
    assert job["status"]["failedIndexes"] == "1", job["status"]
    assert job["status"]["completedIndexes"] == "0", job["status"]
    pods = get(cluster, "pods", "-l", "batch.kubernetes.io/job-name=pfp-index")["items"]
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
