"""bosun's own client verbs."""

import json
import os
import tempfile

from conftest import wait_for

APP = """
apiVersion: v1
kind: ConfigMap
metadata: {name: cli-config}
data: {WORD: ahoy}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: cli}
spec:
  replicas: 2
  selector: {matchLabels: {app: cli}}
  template:
    metadata: {labels: {app: cli}}
    spec:
      runtimeClassName: process
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        command: ["sh", "-c", "while true; do echo say $WORD; sleep 1; done"]
        envFrom: [{configMapRef: {name: cli-config}}]
"""


def test_apply_wait_get_logs_rollout(cluster):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "app.yaml")
        with open(path, "w") as f:
            f.write(APP)
        r = cluster.cli("apply", "-f", d, "--wait", "--timeout", "90")
        assert "configmap/cli-config created" in r.stdout
        assert "deployment.apps/cli created" in r.stdout
        assert 'deployment "cli" successfully rolled out' in r.stdout, r.stdout
        r = cluster.cli("apply", "-f", path)
        assert "deployment.apps/cli unchanged" in r.stdout, r.stdout

    out = cluster.cli("get", "deploy").stdout.splitlines()
    assert out[0].split()[:2] == ["NAME", "READY"] and out[1].split()[:2] == ["cli", "2/2"], out
    # Logs from every pod of the deployment, prefixed with namespace, pod and container.
    # A pod is Ready as soon as it starts; its first line may come a moment later.
    def prefixes_of_both():
        logs = cluster.cli("logs", "deploy/cli", "--tail", "5").stdout
        found = {line.split()[0] for line in logs.splitlines() if "say ahoy" in line}
        return (found, logs) if len(found) == 2 else None

    prefixes, logs = wait_for(prefixes_of_both, timeout=30, what="a line from both pods")
    assert len(prefixes) == 2 and all(
        p.startswith("default/cli-") and p.endswith("/main") for p in prefixes), logs

    cluster.kubectl("set", "env", "deploy/cli", "EXTRA=1")
    cluster.cli("rollout", "status", "deploy/cli", "--timeout", "90")
    hist = cluster.cli("rollout", "history", "deploy/cli").stdout
    assert [l.split()[0] for l in hist.splitlines()[2:]] == ["1", "2"], hist
    r = cluster.cli("rollout", "undo", "deploy/cli")
    assert "rolled back" in r.stdout
    cluster.cli("rollout", "status", "deploy/cli", "--timeout", "90")
    d = json.loads(cluster.kubectl("get", "deploy", "cli", "-o", "json").stdout)
    assert "EXTRA" not in json.dumps(d["spec"]["template"])


def test_bad_manifest_exit_code(cluster):
    r = cluster.cli("apply", "-f", "-", input="kind: [", check=False)
    assert r.returncode == 1 and "error" in r.stderr
    r = cluster.cli("get", "widgets", check=False)
    assert r.returncode == 1 and "doesn't have a resource type" in r.stderr


# --- resource resolution: the same answer every time ---------------------------------

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: Pod
metadata: {name: getter-dev, namespace: dev, labels: {app: getter, where: dev}}
spec:
  runtimeClassName: process
  terminationGracePeriodSeconds: 1
  containers: [{name: main, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: getter-default, namespace: default, labels: {app: getter, where: default}}
spec:
  runtimeClassName: process
  terminationGracePeriodSeconds: 1
  containers: [{name: main, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Service
metadata: {name: getter-svc, namespace: default}
spec:
  selector: {app: getter}
  ports: [{port: 80, targetPort: 8080}]
"""

RUNS = 20


def names(stdout):
    """First column of a table, without its header."""
    lines = stdout.splitlines()
    return [l.split()[0] for l in lines[1:] if l.strip()]


def test_get_resolves_types_the_same_way_every_time(cluster):
    import yaml
    cluster.kubectl("apply", "-f", "-", input=PODS)
    cluster.cli("apply", "-f", "-", input=APP.replace("name: cli", "name: getter-app")
                .replace("app: cli", "app: getter-app").replace("cli-config", "getter-config"))
    for i in range(RUNS):
        r = cluster.cli("get", "nodes")
        assert cluster.node_name in names(r.stdout) and r.stdout.startswith("NAME"), (i, r.stdout, r.stderr)
        assert "STATUS" in r.stdout.splitlines()[0], r.stdout

        r = cluster.cli("get", "pods", "-n", "dev")
        assert names(r.stdout) == ["getter-dev"], (i, r.stdout, r.stderr)
        assert "READY" in r.stdout.splitlines()[0], r.stdout

        r = cluster.cli("get", "pods", "-o", "yaml")
        doc = yaml.safe_load(r.stdout)
        assert doc["kind"] == "List" and doc["apiVersion"] == "v1", (i, r.stdout[:300])
        assert doc["items"] and all(p["kind"] == "Pod" and p["apiVersion"] == "v1" for p in doc["items"])
        assert "getter-default" in [p["metadata"]["name"] for p in doc["items"]]
        assert "getter-dev" not in [p["metadata"]["name"] for p in doc["items"]]

        r = cluster.cli("get", "po", "getter-default", "-o", "json")
        assert json.loads(r.stdout)["kind"] == "Pod", (i, r.stdout[:300])

        assert "getter-app" in names(cluster.cli("get", "deploy").stdout), i
        assert "getter-svc" in names(cluster.cli("get", "svc").stdout), i
        assert names(cluster.cli("get", "po", "getter-default").stdout) == ["getter-default"], i
        assert names(cluster.cli("get", "pods", "-l", "app=getter").stdout) == ["getter-default"], i

        r = cluster.cli("get", "pods", "-A", "-l", "app=getter")
        lines = r.stdout.splitlines()
        assert lines[0].split()[:2] == ["NAMESPACE", "NAME"], (i, r.stdout)
        assert sorted((l.split()[0], l.split()[1]) for l in lines[1:]) == \
            [("default", "getter-default"), ("dev", "getter-dev")], (i, r.stdout)

        # Cluster-scoped kinds ignore -n; the namespace list holds both namespaces.
        ns = names(cluster.cli("get", "namespaces", "-n", "dev").stdout)
        assert "dev" in ns and "default" in ns, (i, ns)
        assert cluster.node_name in names(cluster.cli("get", "no", "-n", "dev").stdout), i

        r = cluster.cli("get", "widgets", check=False)
        assert r.returncode == 1, r
        assert r.stderr.strip() == 'error: the server doesn\'t have a resource type "widgets"', r.stderr

    # The metrics API stays reachable by its full name.
    r = cluster.cli("get", "pods.metrics.k8s.io", "-n", "dev", check=False)
    assert "PodMetrics" not in r.stderr and r.returncode == 0, r


def test_get_missing_object_is_kubectls_not_found(cluster):
    r = cluster.cli("get", "deploy", "nope", check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == 'Error from server (NotFound): deployments.apps "nope" not found', r.stderr
    assert "Status {" not in r.stderr and "ApiError" not in r.stderr
    r = cluster.cli("get", "pods", "x", "-A", check=False)
    assert r.returncode == 1 and "cannot be retrieved by name across all namespaces" in r.stderr, r.stderr


# --- apply: strict fields, clear errors, and kubectl's keep-going rule -----------------

def test_apply_rejects_unknown_fields(cluster):
    doc = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: strict-web}
spec:
  replicas: 1
  replicass: 3
  selector: {matchLabels: {app: strict-web}}
  template:
    metadata: {labels: {app: strict-web}}
    spec:
      runtimeClassName: process
      containers: [{name: main, command: ["sleep", "3600"], imagee: x}]
"""
    r = cluster.cli("apply", "-f", "-", input=doc, check=False)
    assert r.returncode == 1, r
    err = r.stderr
    assert err.startswith("Error from server (BadRequest): "), err
    assert "spec.replicass" in err and "imagee" in err, err
    assert cluster.kubectl("get", "deploy", "strict-web", check=False).returncode != 0, "half-written"


def test_apply_invalid_object_is_a_clear_error(cluster):
    doc = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: invalid-web}
spec:
  replicas: -1
  selector: {matchLabels: {app: invalid-web}}
  template:
    metadata: {labels: {app: invalid-web}}
    spec:
      runtimeClassName: process
      containers: [{name: main, command: ["sleep", "3600"]}]
"""
    r = cluster.cli("apply", "-f", "-", input=doc, check=False)
    assert r.returncode == 1, r
    assert r.stderr.startswith("Error from server (Invalid): "), r.stderr
    assert "spec.replicas" in r.stderr and "Status {" not in r.stderr, r.stderr


def test_apply_keeps_going_past_a_bad_object(cluster):
    docs = """
apiVersion: v1
kind: ConfigMap
metadata: {name: multi-a}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: multi-bad}
data: {k: v}
bogus: 1
---
apiVersion: v1
kind: Widget
metadata: {name: multi-w}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: multi-c}
data: {k: v}
"""
    r = cluster.cli("apply", "-f", "-", input=docs, check=False)
    assert r.returncode == 1, r
    assert "configmap/multi-a created" in r.stdout and "configmap/multi-c created" in r.stdout, r.stdout
    assert 'unknown field "bogus"' in r.stderr, r.stderr
    assert 'no matches for kind "Widget" in version "v1"' in r.stderr, r.stderr
    got = cluster.kubectl("get", "cm", "-o", "name").stdout.split()
    assert "configmap/multi-a" in got and "configmap/multi-c" in got and "configmap/multi-bad" not in got


def test_malformed_yaml_names_line_and_column(cluster):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "broken.yaml")
        with open(path, "w") as f:
            f.write("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before-broken}\n---\n"
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\n   data: x\n")
        r = cluster.cli("apply", "-f", path, check=False)
    assert r.returncode == 1, r
    assert f"error: error parsing {path}" in r.stderr, r.stderr
    assert "line 9" in r.stderr and "column" in r.stderr, r.stderr
    # As kubectl, the documents before the bad one are applied.
    assert "configmap/before-broken created" in r.stdout, r.stdout
