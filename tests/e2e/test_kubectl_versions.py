"""The oldest and newest kubectl bosun supports (1.27 and 1.33), called directly."""

import json
import os

import pytest

from conftest import wait_for

SDK = "/usr/lib/google-cloud-sdk/bin"
VERSIONS = ["1.27", "1.33"]

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: v%(tag)s}
spec:
  replicas: 2
  selector: {matchLabels: {app: v%(tag)s}}
  template:
    metadata: {labels: {app: v%(tag)s}}
    spec:
      runtimeClassName: process
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        command: ["sleep", "3600"]
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
"""


def binary(version):
    path = os.path.join(SDK, f"kubectl.{version}")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: the kubectl dispatcher's versioned clients are needed")
    return path


@pytest.mark.parametrize("version", VERSIONS)
def test_apply_update_rollout_with_kubectl(cluster, version):
    k = binary(version)
    tag = version.replace(".", "")
    manifest = APP % {"tag": tag}
    r = cluster.kubectl("apply", "-f", "-", input=manifest, binary=k)
    assert f"deployment.apps/v{tag} created" in r.stdout, r.stdout
    cluster.kubectl("rollout", "status", f"deploy/v{tag}", "--timeout=60s", binary=k)
    # An update through a strategic merge patch keeps the list merged by key.
    updated = manifest.replace('{name: B, value: "2"}', '{name: B, value: "3"}, {name: C, value: "4"}')
    r = cluster.kubectl("apply", "-f", "-", input=updated, binary=k)
    assert "configured" in r.stdout, r.stdout
    d = json.loads(cluster.kubectl("get", "deploy", f"v{tag}", "-o", "json", binary=k).stdout)
    env = d["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}], env
    cluster.kubectl("rollout", "status", f"deploy/v{tag}", "--timeout=90s", binary=k)
    out = cluster.kubectl("get", "pods", "-l", f"app=v{tag}", binary=k).stdout
    assert out.splitlines()[0].split()[:3] == ["NAME", "READY", "STATUS"], out
    # Typed commands send protobuf bodies.
    cluster.kubectl("create", "configmap", f"cm{tag}", "--from-literal=k=v", binary=k)
    cm = json.loads(cluster.kubectl("get", "cm", f"cm{tag}", "-o", "json", binary=k).stdout)
    assert cm["data"] == {"k": "v"}
    cluster.kubectl("create", "namespace", f"ns{tag}", binary=k)
    cluster.kubectl("delete", "namespace", f"ns{tag}", "--wait=true", "--timeout=60s", binary=k)
    cluster.kubectl("delete", "deploy", f"v{tag}", binary=k)
    wait_for(lambda: not json.loads(cluster.kubectl("get", "pods", "-l", f"app=v{tag}", "-o", "json",
                                                     binary=k).stdout)["items"], what="pods deleted")
