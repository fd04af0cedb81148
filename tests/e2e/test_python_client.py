"""The official Python `kubernetes` client against a real `bosun up`."""

import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from conftest import wait_for


def deployment(name, replicas, greeting="hello"):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "main",
                        "command": ["sh", "-c", "echo started $GREETING; exec sleep 3600"],
                        "env": [{"name": "GREETING", "value": greeting}],
                    }],
                },
            },
        },
    }


def apis(cluster):
    api_client = config.new_client_from_config(config_file=cluster.kubeconfig)
    return client.CoreV1Api(api_client), client.AppsV1Api(api_client)


def ready_count(apps, name, ns="default"):
    d = apps.read_namespaced_deployment(name, ns)
    return (d.status and d.status.ready_replicas) or 0


def test_create_watch_scale_patch_delete(cluster):
    core, apps = apis(cluster)
    events = []

    def watch_pods():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, "default", label_selector="app=py", timeout_seconds=60):
            events.append((ev["type"], ev["object"].metadata.name))
            if sum(1 for t, _ in events if t == "DELETED") >= 2:
                w.stop()

    t = threading.Thread(target=watch_pods, daemon=True)
    t.start()
    time.sleep(0.5)
    apps.create_namespaced_deployment("default", deployment("py", 2))
    wait_for(lambda: ready_count(apps, "py") == 2, what="2 ready replicas")

    # Creating it again is a 409 AlreadyExists Status.
    try:
        apps.create_namespaced_deployment("default", deployment("py", 2))
        raise AssertionError("duplicate create succeeded")
    except ApiException as e:
        assert e.status == 409 and "already exists" in e.body

    apps.patch_namespaced_deployment_scale("py", "default", {"spec": {"replicas": 3}})
    wait_for(lambda: ready_count(apps, "py") == 3, what="scaled to 3")
    scale = apps.read_namespaced_deployment_scale("py", "default")
    assert scale.spec.replicas == 3 and scale.kind == "Scale"

    apps.patch_namespaced_deployment("py", "default", deployment("py", 3, greeting="bonjour"))
    def rolled():
        d = apps.read_namespaced_deployment("py", "default")
        s = d.status
        return s and (s.observed_generation >= d.metadata.generation and s.updated_replicas == 3
                and s.available_replicas == 3 and (s.replicas or 0) == 3)
    wait_for(rolled, timeout=120, what="rolling update finished")
    pods = core.list_namespaced_pod("default", label_selector="app=py").items
    live = [p for p in pods if not p.metadata.deletion_timestamp]
    assert all(p.spec.containers[0].env[0].value == "bonjour" for p in live)

    def logged():
        # Old pods may still be listed while they terminate; the new ones are not deleting.
        p = [p for p in core.list_namespaced_pod("default", label_selector="app=py").items
             if p.status.phase == "Running" and not p.metadata.deletion_timestamp][0]
        return "started bonjour" in core.read_namespaced_pod_log(p.metadata.name, "default")
    wait_for(logged, what="log line from the new pods")

    apps.delete_namespaced_deployment("py", "default", propagation_policy="Foreground")
    wait_for(lambda: not core.list_namespaced_pod("default", label_selector="app=py").items,
             timeout=60, what="pods deleted with the deployment")
    t.join(timeout=70)
    kinds = {typ for typ, _ in events}
    assert {"ADDED", "MODIFIED", "DELETED"} <= kinds, events


def test_namespace_deletion_removes_everything(cluster):
    core, apps = apis(cluster)
    core.create_namespace({"metadata": {"name": "scratch"}})
    apps.create_namespaced_deployment("scratch", deployment("tmp", 1))
    core.create_namespaced_config_map("scratch", {"metadata": {"name": "c"}, "data": {"a": "b"}})
    wait_for(lambda: ready_count(apps, "tmp", "scratch") == 1, what="pod in scratch")
    core.delete_namespace("scratch")
    ns = core.read_namespace("scratch")
    assert ns.status.phase == "Terminating"
    def gone():
        try:
            core.read_namespace("scratch")
            return False
        except ApiException as e:
            return e.status == 404
    wait_for(gone, timeout=90, what="namespace gone")


def test_list_paging_and_stale_update(cluster):
    core, _ = apis(cluster)
    for i in range(7):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"page-{i}", "labels": {"set": "paging"}}})
    names, token = [], None
    while True:
        page = core.list_namespaced_config_map("default", label_selector="set=paging", limit=3, _continue=token)
        names += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert sorted(names) == [f"page-{i}" for i in range(7)]
    cm = core.read_namespaced_config_map("page-0", "default")
    cm.data = {"v": "1"}
    core.replace_namespaced_config_map("page-0", "default", cm)
    cm.data = {"v": "stale"}
    try:
        core.replace_namespaced_config_map("page-0", "default", cm)
        raise AssertionError("stale write accepted")
    except ApiException as e:
        assert e.status == 409
    assert core.read_namespaced_config_map("page-0", "default").data == {"v": "1"}
