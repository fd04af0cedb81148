"""Real public manifests nobody here wrote apply unchanged (kubectl with strict
validation, and the Python client), every object is served back, and pods whose
images cannot be pulled show ImagePullBackOff rather than an API error."""

import hashlib
import json
import os
import subprocess

import pytest
import yaml
from kubernetes import client, config, utils

from conftest import wait_for

# The manifests are third-party files and are not shipped in this repository: put them in
# tests/e2e/manifests/ (or the directory named by BOSUN_REAL_MANIFESTS), as listed, with
# their SHA-256, in tests/e2e/manifests/README.md.
HERE = os.environ.get("BOSUN_REAL_MANIFESTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "manifests"
)
SHA256 = {
    "microservices-demo.yaml": "41a4736597543ee562c673c0c0446e2cc4bddf2b816c294690e83b38cfcc66a2",
    "argo-cd-install.yaml": "8e3566afe274f505ebaffbb7bbcb31f459ee7953a07ed161165ec551f3c3f2b9",
}

# Without the files these tests skip even under BOSUN_REQUIRE_ALL, loudly (see conftest.py).
pytestmark = pytest.mark.third_party_files


def manifest(name):
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        pytest.skip(
            f"third-party manifest {path} is not present (not shipped with the repository; "
            "see tests/e2e/manifests/README.md for its source, commit and checksum)"
        )
    with open(path, "rb") as f:
        raw = f.read()
    got = hashlib.sha256(raw).hexdigest()
    assert got == SHA256[name], f"{path}: sha256 {got}, expected {SHA256[name]}"
    return path, [d for d in yaml.safe_load_all(raw.decode()) if d]


def assert_all_served(cluster, docs, ns):
    refs = []
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        refs.append(f"{kind}.{group}/{name}" if group else f"{kind}/{name}")
    # One request per object, in one kubectl run.
    got = json.loads(cluster.kubectl("get", *refs, "-n", ns, "-o", "json").stdout)
    items = got["items"] if got.get("kind") == "List" else [got]
    served = [(i["kind"], i["metadata"]["name"]) for i in items]
    assert served == [(d["kind"], d["metadata"]["name"]) for d in docs]


def test_microservices_demo_with_kubectl(cluster):
    path, docs = manifest("microservices-demo.yaml")
    cluster.kubectl("create", "namespace", "boutique")
    r = cluster.kubectl("apply", "-n", "boutique", "-f", path)
    assert r.stderr.strip() == "" or "Warning" not in r.stderr, r.stderr
    assert_all_served(cluster, docs, "boutique")
    # `describe` reads every defaulted field (a gRPC probe's service among them).
    cluster.kubectl("describe", "deployment", "-n", "boutique", "frontend")

    def pulled_back_off():
        pods = json.loads(cluster.kubectl("get", "pods", "-n", "boutique", "-l", "app=frontend",
                                          "-o", "json").stdout)["items"]
        reasons = [s.get("state", {}).get("waiting", {}).get("reason")
                   for p in pods for s in p.get("status", {}).get("containerStatuses", [])]
        return reasons and all(r in ("ImagePullBackOff", "ErrImagePull") for r in reasons) \
            and "ImagePullBackOff" in reasons

    wait_for(pulled_back_off, timeout=120, what="frontend pods in ImagePullBackOff")
    # Applying again changes nothing and fails nothing.
    again = cluster.kubectl("apply", "-n", "boutique", "-f", path).stdout
    assert "configured" not in again, again


def test_microservices_demo_with_python_client(cluster):
    path, docs = manifest("microservices-demo.yaml")
    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "boutique-py"}})
    utils.create_from_yaml(api, path, namespace="boutique-py")
    assert_all_served(cluster, docs, "boutique-py")


def test_argo_cd_install_server_side(cluster):
    path, docs = manifest("argo-cd-install.yaml")
    cluster.kubectl("create", "namespace", "argocd")
    cluster.kubectl("apply", "--server-side", "-n", "argocd", "-f", path, timeout=300)
    crds = [d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    *[f"crd/{c}" for c in crds])
    assert_all_served(cluster, docs, "argocd")
    # Its custom kinds are served: an AppProject validates against the CRD's schema.
    project = {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
               "metadata": {"name": "team", "namespace": "argocd"},
               "spec": {"sourceRepos": ["*"], "destinations": [{"namespace": "*", "server": "*"}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(project))
    bad = dict(project, spec={"sourceRepos": "not-a-list"})
    r = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.sourceRepos" in r.stderr, r.stderr
