"""Real public manifests nobody here wrote, taken at test time from packages published on
PyPI (see tests/e2e/packaged_manifests.md), apply unchanged: the CustomResourceDefinitions
of the Dask Kubernetes operator's Helm chart and its own example custom objects, and the
pod templates Apache Airflow's Kubernetes provider ships. kubectl (strict validation) and
the Python client create them, and every object is served back as written."""

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest
import yaml
from kubernetes import client, config, utils

# Package, version, wheel file and its SHA-256 (as published). scripts/test.sh downloads
# them into BOSUN_TEST_DEPS; the test does the same when they are missing.
WHEELS = {
    "dask-kubernetes": (
        "2026.3.0",
        "dask_kubernetes-2026.3.0-py3-none-any.whl",
        "5cf138e03cb1851063b82b74e9fd4679251238e3867fcae1e3682aada6410728",
    ),
    "apache-airflow-providers-cncf-kubernetes": (
        "10.25.0",
        "apache_airflow_providers_cncf_kubernetes-10.25.0-py3-none-any.whl",
        "6644520fcfec8b16c271602bfe0492848857261a48885e83ae4477e1da662d74",
    ),
}
DEPS = os.environ.get("BOSUN_TEST_DEPS", "/var/tmp/bosun-test-deps")

DASK_CRDS = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/"
DASK_OBJECTS = "dask_kubernetes/operator/controller/tests/resources/"
AIRFLOW_PODS = [
    "airflow/providers/cncf/kubernetes/kubernetes_executor_templates/basic_template.yaml",
    "airflow/providers/cncf/kubernetes/pod_template_file_examples/dags_in_image_template.yaml",
    "airflow/providers/cncf/kubernetes/pod_template_file_examples/dags_in_volume_template.yaml",
    "airflow/providers/cncf/kubernetes/pod_template_file_examples/git_sync_template.yaml",
]


def wheel(package, tmp_path_factory):
    """The published wheel, checked against its SHA-256, unpacked into a fresh directory."""
    version, filename, sha = WHEELS[package]
    path = os.path.join(DEPS, filename)
    if not os.path.exists(path):
        os.makedirs(DEPS, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--only-binary=:all:", "-d", DEPS, f"{package}=={version}"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0 or not os.path.exists(path):
            pytest.skip(f"{package}=={version} could not be downloaded: {r.stderr[-500:]}")
    with open(path, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    assert got == sha, f"{path}: sha256 {got}, expected {sha}"
    out = tmp_path_factory.mktemp(package)
    with zipfile.ZipFile(path) as z:
        z.extractall(out)
    return str(out)


@pytest.fixture(scope="module")
def dask(tmp_path_factory):
    return wheel("dask-kubernetes", tmp_path_factory)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    return wheel("apache-airflow-providers-cncf-kubernetes", tmp_path_factory)


def docs_of(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def served(cluster, doc, ns=None):
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    plural = {"CustomResourceDefinition": "customresourcedefinitions", "Pod": "pods"}.get(
        doc["kind"], doc["kind"].lower() + "s")
    ref = f"{plural}.{group}/{doc['metadata']['name']}" if group else f"{plural}/{doc['metadata']['name']}"
    args = ["get", ref, "-o", "json"] + (["-n", ns] if ns else [])
    return json.loads(cluster.kubectl(*args).stdout)


def same_spec(written, got):
    """Every field written is served back (defaults may add fields, and admission list
    items, such as a pod's ServiceAccount token volume; none are lost)."""
    if isinstance(written, dict):
        assert isinstance(got, dict), (written, got)
        for k, v in written.items():
            assert k in got, f"field {k} missing"
            same_spec(v, got[k])
    elif isinstance(written, list):
        assert isinstance(got, list) and len(got) >= len(written), (written, got)
        for a, b in zip(written, got):
            same_spec(a, b)
    elif isinstance(written, (int, float)) and isinstance(got, (int, float)):
        assert written == got
    else:
        assert str(written) == str(got), (written, got)


def test_dask_operator_crds_and_objects(cluster, dask):
    crd_dir = os.path.join(dask, DASK_CRDS)
    crd_files = sorted(os.path.join(crd_dir, f) for f in os.listdir(crd_dir))
    assert len(crd_files) == 4, crd_files
    # The largest CRD is ~470 KB: too large for client-side apply's last-applied annotation
    # on Kubernetes as here, so server-side, as for any large CRD.
    for f in crd_files:
        cluster.kubectl("apply", "--server-side", "-f", f, timeout=180)
    crds = [d for f in crd_files for d in docs_of(f)]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{d['metadata']['name']}" for d in crds])
    for d in crds:
        same_spec(d["spec"], served(cluster, d)["spec"])

    # The operator's own example objects validate against those schemas, with strict
    # client-side validation, unchanged.
    cluster.kubectl("create", "namespace", "dask")
    objects = []
    for name in ("simplecluster.yaml", "simpleworkergroup.yaml", "simplejob.yaml", "failedjob.yaml"):
        path = os.path.join(dask, DASK_OBJECTS, name)
        r = cluster.kubectl("apply", "--validate=strict", "-n", "dask", "-f", path)
        assert "Warning" not in r.stderr, r.stderr
        objects += docs_of(path)
    for d in objects:
        got = served(cluster, d, "dask")
        assert got["kind"] == d["kind"]
        same_spec(d["spec"], got["spec"])
    # Applying again changes nothing.
    again = cluster.kubectl("apply", "-n", "dask", "-f", os.path.join(dask, DASK_OBJECTS,
                                                                        "simplecluster.yaml"))
    assert "unchanged" in again.stdout, again.stdout
    # The schema is enforced: replicas must be an integer.
    bad = dict(objects[0], metadata={"name": "bad"})
    bad["spec"] = dict(bad["spec"], worker=dict(bad["spec"]["worker"], replicas="two"))
    r = cluster.kubectl("apply", "-n", "dask", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.worker.replicas" in r.stderr, r.stderr
    # The Python client reads them, and creates them unchanged in another namespace.
    api = client.CustomObjectsApi(config.new_client_from_config(config_file=cluster.kubeconfig))
    listed = api.list_namespaced_custom_object("kubernetes.dask.org", "v1", "dask", "daskjobs")
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["failed-job", "simple-job"]
    cluster.kubectl("create", "namespace", "dask-py")
    plural = {"DaskCluster": "daskclusters", "DaskWorkerGroup": "daskworkergroups",
              "DaskJob": "daskjobs"}
    for d in objects:
        api.create_namespaced_custom_object("kubernetes.dask.org", "v1", "dask-py",
                                            plural[d["kind"]], d)
        same_spec(d["spec"], served(cluster, d, "dask-py")["spec"])


def test_airflow_pod_templates(cluster, airflow):
    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    for i, rel in enumerate(AIRFLOW_PODS):
        path = os.path.join(airflow, rel)
        (doc,) = docs_of(path)
        own_ns = doc["metadata"].get("namespace")
        sa = doc["spec"].get("serviceAccountName")

        if sa and sa.startswith("RELEASE-NAME-"):
            # Helm output with the release name left as a placeholder: no such
            # ServiceAccount can exist (not a valid name), so Kubernetes' ServiceAccount
            # admission refuses the pod, and so does bosun, with the same message.
            ns = f"airflow-r{i}"
            cluster.kubectl("create", "namespace", ns)
            r = cluster.kubectl("apply", "--validate=strict", "-n", ns, "-f", path, check=False)
            assert r.returncode != 0, r.stdout
            assert (f'pods "{doc["metadata"]["name"]}" is forbidden: error looking up service '
                    f'account {ns}/{sa}: serviceaccount "{sa}" not found') in r.stderr, r.stderr
            continue

        def prepare(ns):
            # The chart these templates belong to makes the ServiceAccount they name; as on
            # Kubernetes, a pod of a missing ServiceAccount is refused.
            cluster.kubectl("create", "namespace", ns)
            if sa:
                cluster.kubectl("create", "serviceaccount", sa, "-n", ns)

        if own_ns:
            # A file naming its namespace goes there: kubectl first, then, once that pod is
            # gone, the Python client.
            prepare(own_ns)
            r = cluster.kubectl("apply", "--validate=strict", "-f", path)
            assert "Warning" not in r.stderr, r.stderr
            same_spec(doc["spec"], served(cluster, doc, own_ns)["spec"])
            cluster.kubectl("delete", "-f", path, "--wait=true", "--timeout=90s", timeout=120)
            utils.create_from_yaml(api, path)
            same_spec(doc["spec"], served(cluster, doc, own_ns)["spec"])
            continue
        # kubectl in one namespace, the Python client in another: the files share names.
        ns_k, ns_p = f"airflow-k{i}", f"airflow-p{i}"
        prepare(ns_k)
        prepare(ns_p)
        r = cluster.kubectl("apply", "--validate=strict", "-n", ns_k, "-f", path)
        assert "Warning" not in r.stderr, r.stderr
        utils.create_from_yaml(api, path, namespace=ns_p)
        for ns in (ns_k, ns_p):
            got = served(cluster, doc, ns)
            same_spec(doc["spec"], got["spec"])
