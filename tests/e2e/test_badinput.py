"""Bad input gets a Kubernetes Status naming the problem, and nothing is stored."""

import json

GOOD = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: fast}
"""


def test_unknown_field_is_rejected_by_strict_validation(cluster):
    bad = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: typo}
spec:
  replicas: 1
  replicass: 2
  selector: {matchLabels: {app: typo}}
  template:
    metadata: {labels: {app: typo}}
    spec:
      runtimeClassName: process
      containers: [{name: c, command: ["sleep", "60"]}]
"""
    r = cluster.kubectl("apply", "--validate=strict", "-f", "-", input=bad, check=False)
    assert r.returncode != 0
    assert 'unknown field "spec.replicass"' in r.stderr, r.stderr
    assert cluster.kubectl("get", "deploy", "typo", check=False).returncode != 0


def test_malformed_yaml(cluster):
    r = cluster.kubectl("create", "-f", "-", input="kind: [", check=False)
    assert r.returncode != 0


def test_invalid_name_is_422_naming_the_field(cluster):
    bad = GOOD.replace("settings", "Not_Valid")
    r = cluster.kubectl("create", "-f", "-", input=bad, check=False)
    assert r.returncode != 0
    assert "metadata.name" in r.stderr and "Invalid value" in r.stderr, r.stderr


def test_selector_mismatch_and_immutable_selector(cluster):
    bad = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: mismatch}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec:
      runtimeClassName: process
      containers: [{name: c, command: ["sleep", "60"]}]
"""
    r = cluster.kubectl("create", "-f", "-", input=bad, check=False)
    assert r.returncode != 0 and "selector" in r.stderr, r.stderr
    good = bad.replace("app: b", "app: a")
    cluster.kubectl("create", "-f", "-", input=good)
    r = cluster.kubectl("patch", "deploy", "mismatch", "--type=merge", "-p",
                        '{"spec":{"selector":{"matchLabels":{"app":"z"}},"template":{"metadata":{"labels":{"app":"z"}}}}}',
                        check=False)
    assert r.returncode != 0 and "field is immutable" in r.stderr, r.stderr
    cluster.kubectl("delete", "deploy", "mismatch")


def test_stale_resource_version_conflicts(cluster):
    cluster.kubectl("apply", "-f", "-", input=GOOD)
    obj = json.loads(cluster.kubectl("get", "cm", "settings", "-o", "json").stdout)
    obj["data"]["mode"] = "slow"
    cluster.kubectl("replace", "-f", "-", input=json.dumps(obj))
    obj["data"]["mode"] = "stale"
    r = cluster.kubectl("replace", "-f", "-", input=json.dumps(obj), check=False)
    assert r.returncode != 0
    assert "the object has been modified" in r.stderr, r.stderr
    now = json.loads(cluster.kubectl("get", "cm", "settings", "-o", "json").stdout)
    assert now["data"]["mode"] == "slow"


def test_oversized_body_is_413(cluster):
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
           "data": {"blob": "x" * (4 * 1024 * 1024)}}
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(big), check=False)
    assert r.returncode != 0
    assert "too large" in r.stderr.lower() or "413" in r.stderr, r.stderr
    assert cluster.kubectl("get", "cm", "big", check=False).returncode != 0


def test_unknown_namespace_and_kind(cluster):
    r = cluster.kubectl("create", "-n", "nope", "-f", "-", input=GOOD, check=False)
    assert r.returncode != 0 and 'namespaces "nope" not found' in r.stderr, r.stderr
    r = cluster.kubectl("get", "widgets", check=False)
    assert r.returncode != 0 and "doesn't have a resource type" in r.stderr, r.stderr
