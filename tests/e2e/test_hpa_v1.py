"""autoscaling/v1 HorizontalPodAutoscaler beside the stored autoscaling/v2: `kubectl autoscale`
of every installed kubectl (1.27-1.32 post v1 in protobuf), `kubectl get hpa` of every installed
kubectl, v1 reads, writes and watches through the official Python client and raw requests, and
the annotations that carry what v1 cannot say."""

import json
import os

import pytest
from kubernetes import client, config

SDK = "/usr/lib/google-cloud-sdk/bin"
VERSIONS = sorted(
    (f.split("kubectl.", 1)[1] for f in os.listdir(SDK) if f.startswith("kubectl.1.")),
    key=lambda v: int(v.split(".")[1]),
) if os.path.isdir(SDK) else []

METRICS = "autoscaling.alpha.kubernetes.io/metrics"
BEHAVIOR = "autoscaling.alpha.kubernetes.io/behavior"

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: target}
spec:
  replicas: 1
  selector: {matchLabels: {app: target}}
  template:
    metadata: {labels: {app: target}}
    spec:
      runtimeClassName: process
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        command: ["sleep", "3600"]
        resources: {requests: {cpu: 50m}}
"""


def binary(version):
    return os.path.join(SDK, f"kubectl.{version}")


def raw(cluster, path):
    return json.loads(cluster.kubectl("get", "--raw", path).stdout)


@pytest.fixture(scope="module")
def app(cluster):
    cluster.kubectl("apply", "-f", "-", input=APP)
    return "target"


def test_discovery_lists_v1_and_prefers_v2(cluster):
    g = raw(cluster, "/apis/autoscaling")
    assert g["preferredVersion"]["version"] == "v2", g
    assert [v["version"] for v in g["versions"]] == ["v2", "v1"], g
    names = [r["name"] for r in raw(cluster, "/apis/autoscaling/v1")["resources"]]
    assert "horizontalpodautoscalers" in names and "horizontalpodautoscalers/status" in names, names


@pytest.mark.parametrize("version", [v for v in VERSIONS if int(v.split(".")[1]) <= 32] or ["missing"])
def test_kubectl_autoscale_posts_v1(cluster, app, version):
    if version == "missing":
        pytest.skip("no versioned kubectl clients installed")
    name = "as" + version.replace(".", "")
    r = cluster.kubectl("autoscale", f"deployment/{app}", f"--name={name}", "--min=1", "--max=3",
                        "--cpu-percent=55", binary=binary(version), check=False)
    assert r.returncode == 0 and f"horizontalpodautoscaler.autoscaling/{name} autoscaled" in r.stdout, \
        (r.stdout, r.stderr)
    # Stored as v2: the CPU percentage is a Resource metric.
    v2 = raw(cluster, f"/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/{name}")
    assert v2["apiVersion"] == "autoscaling/v2"
    assert v2["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}}], v2["spec"]
    assert v2["spec"]["maxReplicas"] == 3 and v2["spec"]["minReplicas"] == 1
    # And read back as v1.
    v1 = raw(cluster, f"/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/{name}")
    assert v1["apiVersion"] == "autoscaling/v1" and v1["kind"] == "HorizontalPodAutoscaler"
    assert v1["spec"]["targetCPUUtilizationPercentage"] == 55, v1
    assert "metrics" not in v1["spec"]
    # The same kubectl lists it (through the preferred version, as a Table).
    out = cluster.kubectl("get", "hpa", name, binary=binary(version)).stdout
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "REFERENCE", "TARGETS"], out
    assert row.split()[:2] == [name, f"Deployment/{app}"], out
    cluster.kubectl("delete", "hpa", name, binary=binary(version))


@pytest.mark.parametrize("version", VERSIONS or ["missing"])
def test_kubectl_get_hpa_every_version(cluster, app, version):
    if version == "missing":
        pytest.skip("no versioned kubectl clients installed")
    name = "get" + version.replace(".", "")
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": name},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                    "minReplicas": 1, "maxReplicas": 4,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                 "target": {"type": "Utilization", "averageUtilization": 70}}}]}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(hpa))
    k = binary(version)
    out = cluster.kubectl("get", "hpa", binary=k).stdout
    assert out.splitlines()[0].split() == ["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS",
                                           "REPLICAS", "AGE"], out
    row = next(line for line in out.splitlines() if line.startswith(name + " "))
    assert "70%" in row and row.split()[-3] == "4", out
    got = json.loads(cluster.kubectl("get", "hpa", name, "-o", "json", binary=k).stdout)
    assert got["apiVersion"] == "autoscaling/v2"
    # The same object read as v1.
    v1 = json.loads(cluster.kubectl(
        "get", "--raw", f"/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/{name}",
        binary=k).stdout)
    assert v1["spec"]["targetCPUUtilizationPercentage"] == 70
    cluster.kubectl("delete", "hpa", name)


def test_v1_round_trip_keeps_what_v1_cannot_say(cluster, app):
    """A v2 HPA with a Pods metric and a behavior, read and replaced through the official client's
    AutoscalingV1Api, keeps both (they travel in Kubernetes' annotations)."""
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "rich"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                    "minReplicas": 1, "maxReplicas": 5,
                    "metrics": [
                        {"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 60}}},
                        {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
                         "target": {"type": "AverageValue", "averageValue": "20"}}}],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 17}}}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(hpa))
    api = client.AutoscalingV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    v1 = api.read_namespaced_horizontal_pod_autoscaler("rich", "default")
    assert v1.spec.target_cpu_utilization_percentage == 60
    ann = v1.metadata.annotations
    assert json.loads(ann[METRICS])[0]["pods"]["metricName"] == "requests_per_second", ann
    assert json.loads(ann[BEHAVIOR])["scaleDown"]["stabilizationWindowSeconds"] == 17, ann
    # Replace through v1: a new CPU target and max, the rest carried by the annotations. The
    # HPA controller writes the status meanwhile, so a stale read gets a Conflict: read again,
    # as every read-modify-write client does.
    for _ in range(20):
        v1.spec.target_cpu_utilization_percentage = 40
        v1.spec.max_replicas = 6
        try:
            out = api.replace_namespaced_horizontal_pod_autoscaler("rich", "default", v1)
            break
        except client.exceptions.ApiException as e:
            if e.status != 409:
                raise
            v1 = api.read_namespaced_horizontal_pod_autoscaler("rich", "default")
    else:
        raise AssertionError("the v1 replace kept conflicting")
    assert out.api_version == "autoscaling/v1" and out.spec.target_cpu_utilization_percentage == 40
    v2 = raw(cluster, "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/rich")
    assert v2["spec"]["maxReplicas"] == 6
    kinds = {m["type"]: m for m in v2["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["target"]["averageUtilization"] == 40, v2["spec"]
    assert kinds["Pods"]["pods"]["target"]["averageValue"] == "20", v2["spec"]
    assert v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 17
    # The conversion annotations are not stored on the v2 object.
    assert METRICS not in (v2["metadata"].get("annotations") or {}), v2["metadata"]
    # A merge patch through v1 changes the v1 field.
    api.patch_namespaced_horizontal_pod_autoscaler(
        "rich", "default", {"spec": {"targetCPUUtilizationPercentage": 35}})
    v2 = raw(cluster, "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/rich")
    kinds = {m["type"]: m for m in v2["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["target"]["averageUtilization"] == 35
    assert kinds["Pods"]["pods"]["metric"]["name"] == "requests_per_second"
    # Lists and watches of v1 speak v1.
    lst = api.list_namespaced_horizontal_pod_autoscaler("default")
    assert any(h.metadata.name == "rich" and h.spec.target_cpu_utilization_percentage == 35
               for h in lst.items)
    w = cluster.kubectl("get", "--raw",
                        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers"
                        "?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3Drich").stdout
    ev = json.loads(w.splitlines()[0])
    assert ev["type"] == "ADDED" and ev["object"]["apiVersion"] == "autoscaling/v1", ev
    assert ev["object"]["spec"]["targetCPUUtilizationPercentage"] == 35
    cluster.kubectl("delete", "hpa", "rich")


def test_v1_bad_input_names_the_field(cluster, app):
    bad = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "bad1", "annotations": {METRICS: "[not json"}},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                    "maxReplicas": 2}}
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and METRICS in r.stderr, r.stderr
    del bad["metadata"]["annotations"]
    bad["spec"]["maxReplicas"] = 0
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.maxReplicas" in r.stderr, r.stderr
    bad["spec"]["maxReplicas"] = 2
    # Validated in the stored form, as Kubernetes does: the field path is v2's.
    bad["spec"]["targetCPUUtilizationPercentage"] = 0
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.metrics[0].resource.target.averageUtilization" in r.stderr, \
        r.stderr
