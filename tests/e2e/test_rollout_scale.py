"""A Rollout is scaled like a Deployment, through its `/scale` subresource: `kubectl scale
rollout/NAME` and a HorizontalPodAutoscaler whose scaleTargetRef is the Rollout (as with Argo
Rollouts) change its replicas; `status.selector` counts the pods of both versions for a
canary; the canary steps then work at the new count."""

import json

import pytest

from conftest import Bosun, wait_for
from test_rollouts import get_json, service, set_version, status, template


class ScaleBosun(Bosun):
    def args(self):
        return super().args() + ["--horizontal-pod-autoscaler-sync-period", "2s"]


@pytest.fixture(scope="module")
def cluster(request):
    b = ScaleBosun("roscale")
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


def rollout(name, replicas):
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, "v1"),
            "strategy": {"canary": {
                "stableService": name, "canaryService": f"{name}-canary",
                "scaleDownDelaySeconds": 2,
                "steps": [{"setWeight": 50}, {"pause": {}}],
            }},
        },
    }


def replica_sets(cluster, name):
    """pod-template-hash -> spec.replicas of the Rollout's ReplicaSets."""
    items = get_json(cluster, "rs", "-l", f"app={name}")["items"]
    return {rs["metadata"]["labels"]["rollouts-pod-template-hash"]: rs["spec"]["replicas"] for rs in items}


def test_kubectl_scale_and_an_hpa_scale_a_rollout_and_canary_steps_follow(cluster):
    name = "scaled"
    items = [service(name, name), service(f"{name}-canary", name), rollout(name, 2)]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    wait_for(lambda: status(cluster, name).get("phase") == "Healthy", timeout=90, what="v1 Healthy")

    # The scale subresource: replicas and a label selector string (every pod of the Rollout).
    scale = json.loads(cluster.kubectl(
        "get", "--raw", f"/apis/argoproj.io/v1alpha1/namespaces/default/rollouts/{name}/scale").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2, scale
    assert scale["status"]["selector"] == f"app={name}", scale

    cluster.kubectl("scale", f"rollout/{name}", "--replicas=3")
    wait_for(lambda: status(cluster, name).get("availableReplicas") == 3, timeout=60, what="3 available")
    assert list(replica_sets(cluster, name).values()) == [3]

    # An HPA aimed at the Rollout: no traffic, so its metric asks for the least, minReplicas 4.
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
           "spec": {"scaleTargetRef": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": name},
                    "minReplicas": 4, "maxReplicas": 6,
                    "metrics": [{"type": "Object", "object": {
                        "describedObject": {"apiVersion": "v1", "kind": "Service", "name": name},
                        "metric": {"name": "requests_per_second"},
                        "target": {"type": "Value", "value": "100"}}}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hpa))
    wait_for(lambda: get_json(cluster, "rollout", name)["spec"]["replicas"] == 4, timeout=60,
             what="the HPA scaling the Rollout to 4")
    wait_for(lambda: status(cluster, name).get("availableReplicas") == 4, timeout=60, what="4 available")
    wait_for(lambda: get_json(cluster, "hpa", name)["status"].get("currentReplicas") == 4, timeout=30,
             what="the HPA seeing 4 replicas")
    h = get_json(cluster, "hpa", name)
    able = [c for c in h["status"]["conditions"] if c["type"] == "AbleToScale"][0]
    assert able["status"] == "True", h["status"]

    # A new version: the setWeight 50 step makes ceil(4 * 50%) = 2 canary pods beside 4 stable.
    stable = status(cluster, name)["stableRS"]
    set_version(cluster, name, name, "v2")
    wait_for(lambda: status(cluster, name).get("phase") == "Paused", timeout=90, what="paused at weight 50")
    st = status(cluster, name)
    canary = st["currentPodHash"]
    assert canary != stable and st["currentStepIndex"] == 1, st
    assert st["canary"]["weights"]["canary"]["weight"] == 50, st
    rs = replica_sets(cluster, name)
    assert rs[stable] == 4 and rs[canary] == 2, rs
    # The HPA still sees the whole Rollout (both versions' pods) through status.selector.
    assert st["selector"] == f"app={name}", st
    cluster.cli("rollout", "promote", name)
    wait_for(lambda: status(cluster, name).get("phase") == "Healthy"
             and status(cluster, name).get("stableRS") == canary, timeout=90, what="v2 promoted")
    wait_for(lambda: replica_sets(cluster, name) == {stable: 0, canary: 4}, timeout=60,
             what="v2 at 4, v1 scaled down")
    assert get_json(cluster, "rollout", name)["spec"]["replicas"] == 4
    cluster.kubectl("delete", "hpa", name)
    cluster.kubectl("delete", "rollout", name)
