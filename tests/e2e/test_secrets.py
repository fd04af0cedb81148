"""Secrets: stringData merged into data on every kind of write."""

import base64
import json
import subprocess

import pytest
from kubernetes import client, config

from conftest import Bosun


def b64(s):
    return base64.b64encode(s.encode()).decode()


def data_of(cluster, name, key):
    r = cluster.kubectl("get", "secret", name, "-o", f"jsonpath={{.data.{key}}}")
    return base64.b64decode(r.stdout).decode()


def full(cluster, name):
    return json.loads(cluster.kubectl("get", "secret", name, "-o", "json").stdout)


def test_create_secret_from_literal(cluster):
    cluster.kubectl("create", "secret", "generic", "lit", "--from-literal=x=hello world")
    assert data_of(cluster, "lit", "x") == "hello world"


def test_apply_manifest_with_string_data(cluster):
    manifest = """
apiVersion: v1
kind: Secret
metadata: {name: applied}
data: {x: b2xk, kept: a2VwdA==}
stringData: {x: from-string-data, second: "two words"}
"""
    cluster.kubectl("apply", "-f", "-", input=manifest)
    assert data_of(cluster, "applied", "x") == "from-string-data"
    assert data_of(cluster, "applied", "second") == "two words"
    assert data_of(cluster, "applied", "kept") == "kept"
    assert "stringData" not in full(cluster, "applied")
    # A second apply with a changed value goes through a strategic merge patch.
    cluster.kubectl("apply", "-f", "-", input=manifest.replace("two words", "changed"))
    assert data_of(cluster, "applied", "second") == "changed"
    assert "stringData" not in full(cluster, "applied")


def test_server_side_apply_string_data(cluster):
    manifest = """
apiVersion: v1
kind: Secret
metadata: {name: ssa}
stringData: {a: one, b: two}
"""
    cluster.kubectl("apply", "--server-side", "-f", "-", input=manifest)
    assert data_of(cluster, "ssa", "a") == "one"
    assert "stringData" not in full(cluster, "ssa")
    # Dropping a key from the applied configuration removes it from data.
    cluster.kubectl("apply", "--server-side", "-f", "-",
                    input=manifest.replace("a: one, b: two", "a: uno"))
    assert data_of(cluster, "ssa", "a") == "uno"
    assert "b" not in full(cluster, "ssa")["data"]


@pytest.mark.parametrize("patch_type,patch", [
    ("merge", {"stringData": {"p": "merged"}}),
    ("strategic", {"stringData": {"p": "strategic"}}),
    ("json", [{"op": "add", "path": "/stringData", "value": {"p": "json-patched"}}]),
])
def test_patch_string_data(cluster, patch_type, patch):
    name = f"patch-{patch_type}"
    cluster.kubectl("create", "secret", "generic", name, "--from-literal=q=keep")
    cluster.kubectl("patch", "secret", name, "--type", patch_type, "-p", json.dumps(patch))
    expected = {"merge": "merged", "strategic": "strategic", "json": "json-patched"}[patch_type]
    assert data_of(cluster, name, "p") == expected
    assert data_of(cluster, name, "q") == "keep"
    assert "stringData" not in full(cluster, name)


def test_python_client_create_and_replace(cluster):
    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    body = client.V1Secret(metadata=client.V1ObjectMeta(name="py"),
                           data={"d": b64("from-data")},
                           string_data={"s": "from-python", "d": "overridden"})
    created = api.create_namespaced_secret("default", body)
    assert created.string_data is None
    assert base64.b64decode(created.data["s"]).decode() == "from-python"
    assert base64.b64decode(created.data["d"]).decode() == "overridden"
    created.string_data = {"s": "replaced"}
    replaced = api.replace_namespaced_secret("py", "default", created)
    assert base64.b64decode(replaced.data["s"]).decode() == "replaced"
    assert replaced.string_data is None
    got = api.read_namespaced_secret("py", "default")
    assert base64.b64decode(got.data["s"]).decode() == "replaced"
    assert got.string_data is None


def test_bad_string_data_key_is_rejected(cluster):
    r = cluster.kubectl("apply", "-f", "-", check=False, input="""
apiVersion: v1
kind: Secret
metadata: {name: badkey}
stringData: {"no/slash": x}
""")
    assert r.returncode != 0
    assert "no/slash" in r.stderr
    assert cluster.kubectl("get", "secret", "badkey", check=False).returncode != 0
