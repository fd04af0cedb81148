"""Secrets: stringData merged into data on every kind of write; encryption at rest and key
rotation."""

import base64
import json
import os
import secrets
import ssl
import stat
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config, watch

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


# ---------------------------------------------------------------- encryption at rest

PLAIN_CONFIG = """apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - identity: {}
  - aesgcm:
      keys:
      - {name: key1, secret: %s}
"""


def store_bytes(b):
    with open(os.path.join(b.data_dir, "store.redb"), "rb") as f:
        return f.read()


def assert_not_stored(b, value):
    raw = store_bytes(b)
    assert value.encode() not in raw
    assert b64(value).encode() not in raw


@pytest.fixture
def fresh():
    started = []

    def make(name, config=None):
        b = Bosun(name)
        if config is not None:
            path = os.path.join(b.data_dir, "encryption-config.yaml")
            with open(path, "w") as f:
                f.write(config)
            os.chmod(path, 0o600)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


def test_secrets_encrypted_at_rest_and_rotated(fresh):
    b = fresh("enc")
    cfg_path = os.path.join(b.data_dir, "encryption-config.yaml")
    assert stat.S_IMODE(os.stat(cfg_path).st_mode) == 0o600
    value = "bosun-distinctive-" + secrets.token_hex(8)
    b.kubectl("create", "secret", "generic", "top", f"--from-literal=v={value}")
    b.kubectl("apply", "-f", "-", input=f"""
apiVersion: v1
kind: Secret
metadata: {{name: applied}}
stringData: {{v: {value}-applied}}
""")
    assert data_of(b, "top", "v") == value
    assert data_of(b, "applied", "v") == value + "-applied"
    assert_not_stored(b, value)
    assert b"k8s:enc:aesgcm:v1:key1:" in store_bytes(b)

    # Lists and watches return decrypted Secrets.
    api = client.CoreV1Api(config.new_client_from_config(config_file=b.kubeconfig))
    listed = api.list_namespaced_secret("default")
    by_name = {s.metadata.name: s for s in listed.items}
    assert base64.b64decode(by_name["top"].data["v"]).decode() == value
    api.create_namespaced_secret("default", client.V1Secret(
        metadata=client.V1ObjectMeta(name="watched"), string_data={"w": value + "-w"}))
    events = list(watch.Watch().stream(api.list_namespaced_secret, "default",
                                       resource_version=listed.metadata.resource_version,
                                       timeout_seconds=3))
    added = [e for e in events if e["object"].metadata.name == "watched"]
    assert added and base64.b64decode(added[0]["object"].data["w"]).decode() == value + "-w"

    # Every Secret of the cluster is re-encrypted: the three above and bosun's own in
    # kube-system (join tokens, the agents' access token).
    total = len(api.list_secret_for_all_namespaces().items)
    r = b.cli("secrets", "rotate-key", "--data-dir", b.data_dir, "--drop-old")
    assert "key2" in r.stdout and f"re-encrypted {total} Secrets" in r.stdout, r.stdout
    with open(cfg_path) as f:
        text = f.read()
    assert "key2" in text and "key1" not in text
    assert stat.S_IMODE(os.stat(cfg_path).st_mode) == 0o600
    assert b"k8s:enc:aesgcm:v1:key2:" in store_bytes(b)
    # key1 is gone from the configuration: these read only because they were re-encrypted.
    assert data_of(b, "top", "v") == value
    assert data_of(b, "watched", "w") == value + "-w"
    b.restart()
    assert data_of(b, "top", "v") == value
    assert data_of(b, "applied", "v") == value + "-applied"


def test_plaintext_secrets_still_read_and_are_encrypted_on_write(fresh):
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    b = fresh("encold", PLAIN_CONFIG % key)
    value = "bosun-legacy-" + secrets.token_hex(8)
    b.kubectl("create", "secret", "generic", "old", f"--from-literal=v={value}")
    # Written in the clear, as before encryption at rest.
    assert b64(value).encode() in store_bytes(b)
    rv = b.kubectl("get", "secret", "old", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    b.kill()
    with open(os.path.join(b.data_dir, "encryption-config.yaml"), "w") as f:
        f.write(PLAIN_CONFIG.replace("  - identity: {}\n", "") % key + "  - identity: {}\n")
    b.start()
    assert data_of(b, "old", "v") == value
    # An unchanged replace still writes: the stored form is stale.
    doc = b.kubectl("get", "secret", "old", "-o", "json").stdout
    b.kubectl("replace", "-f", "-", input=doc)
    rv2 = b.kubectl("get", "secret", "old", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    assert rv2 != rv
    assert data_of(b, "old", "v") == value
    r = b.cli("secrets", "rotate-key", "--data-dir", b.data_dir)
    assert "key2" in r.stdout
    assert data_of(b, "old", "v") == value


def post_reload(b):
    ctx = ssl.create_default_context(cafile=os.path.join(b.data_dir, "pki", "ca.crt"))
    req = urllib.request.Request(f"https://127.0.0.1:{b.api_port}/bosun/v1/encryption/reload",
                                 method="POST", headers={"Authorization": f"Bearer {b.token()}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_encryption_config_is_refused(fresh):
    b = fresh("encbad")
    path = os.path.join(b.data_dir, "encryption-config.yaml")
    with open(path) as f:
        good = f.read()
    with open(path, "w") as f:
        f.write(good.replace("aesgcm", "aescbc"))
    r = b.cli("secrets", "rotate-key", "--data-dir", b.data_dir, check=False)
    assert r.returncode != 0
    assert "aescbc" in r.stderr
    code, body = post_reload(b)
    assert code == 400 and "aescbc" in body, body
    # The keys in use stay: Secrets still write and read.
    with open(path, "w") as f:
        f.write(good)
    b.kubectl("create", "secret", "generic", "after", "--from-literal=v=still-works")
    assert data_of(b, "after", "v") == "still-works"
