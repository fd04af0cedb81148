"""Acknowledged writes survive `kill -9` of bosun, and running pods survive restarts."""

import json
import threading

from kubernetes import client, config

from conftest import wait_for


def test_acknowledged_writes_survive_kill_9(cluster):
    acked = []
    stop = threading.Event()

    def writer(worker):
        api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
        i = 0
        while not stop.is_set() and i < 2000:
            name = f"dur-{worker}-{i}"
            try:
                api.create_namespaced_config_map("default", {"metadata": {"name": name}, "data": {"i": str(i)}},
                                                 _request_timeout=5)
                acked.append((name, str(i)))
            except Exception:
                return  # the server died under us; whatever was acked must be there
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 200, timeout=60, what="200 acknowledged writes")
    cluster.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    cluster.start()
    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    stored = {c.metadata.name: c.data["i"] for c in api.list_namespaced_config_map("default").items
              if c.metadata.name.startswith("dur-")}
    missing = [(n, v) for n, v in acked if stored.get(n) != v]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


def test_pods_keep_running_across_restart(cluster):
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "keep"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "keep"}},
                 "template": {"metadata": {"labels": {"app": "keep"}},
                              "spec": {"runtimeClassName": "process",
                                       "containers": [{"name": "c", "command": ["sleep", "3600"]}]}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(dep))
    cluster.kubectl("rollout", "status", "deploy/keep", "--timeout=60s")
    def pod():
        ps = json.loads(cluster.kubectl("get", "pods", "-l", "app=keep", "-o", "json").stdout)["items"]
        return ps[0] if len(ps) == 1 and ps[0]["status"].get("phase") == "Running" else None
    before = wait_for(pod, what="running pod")
    started = before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    cluster.restart()
    after = wait_for(pod, what="pod after restart")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    cs = after["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 0 and cs["state"]["running"]["startedAt"] == started, cs
