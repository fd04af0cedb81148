"""bosun's own client verbs."""

import json
import os
import tempfile

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
    # Logs from every pod of the deployment, prefixed with pod and container.
    logs = cluster.cli("logs", "deploy/cli", "--tail", "5").stdout
    prefixes = {line.split()[0] for line in logs.splitlines() if "say ahoy" in line}
    assert len(prefixes) == 2 and all(p.endswith("/main]") for p in prefixes), logs

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
