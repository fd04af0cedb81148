"""CustomResourceDefinitions against a real `bosun up`: kubectl (strict validation,
explain, printer columns, scale) and the Python client."""

import json
import os

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from conftest import wait_for

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget should look like.
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10, description: Size in units.}
              color: {type: string, enum: [red, blue], default: red}
              name: {type: string, pattern: '^[a-z]+$'}
              replicas: {type: integer, default: 1}
              port: {x-kubernetes-int-or-string: true}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status:
            type: object
            properties:
              replicas: {type: integer}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""

CLUSTER_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: regions.example.com
spec:
  group: example.com
  scope: Cluster
  names: {plural: regions, kind: Region}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {zone: {type: string}}}
"""


def widget(obj_name, **spec):
    return json.dumps({"apiVersion": "example.com/v1", "kind": "Widget",
                       "metadata": {"name": obj_name}, "spec": spec})


@pytest.fixture(scope="module")
def crds(cluster):
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.kubectl("apply", "-f", "-", input=CLUSTER_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/widgets.example.com", "crd/regions.example.com")
    return cluster


def test_crd_status_conditions(crds):
    out = json.loads(crds.kubectl("get", "crd", "widgets.example.com", "-o", "json").stdout)
    conds = {c["type"]: c["status"] for c in out["status"]["conditions"]}
    assert conds == {"NamesAccepted": "True", "Established": "True"}
    assert out["status"]["acceptedNames"]["kind"] == "Widget"
    assert out["status"]["storedVersions"] == ["v1"]


def test_apply_defaults_and_columns(crds):
    crds.kubectl("apply", "-f", "-", input=widget("w1", size=3, port="http"))
    got = json.loads(crds.kubectl("get", "widget", "w1", "-o", "json").stdout)
    assert got["spec"]["color"] == "red"
    assert got["spec"]["replicas"] == 1
    table = crds.kubectl("get", "widgets").stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "COLOR", "REPLICAS", "AGE"], table
    assert table.splitlines()[1].split()[:3] == ["w1", "red", "1"], table
    # Short name and the `all` category reach the kind too.
    assert "w1" in crds.kubectl("get", "wd").stdout
    # An update through apply (a patch) keeps validating.
    crds.kubectl("apply", "-f", "-", input=widget("w1", size=4, port=8080))
    got = json.loads(crds.kubectl("get", "widget", "w1", "-o", "json").stdout)
    assert got["spec"]["size"] == 4 and got["spec"]["port"] == 8080


def test_invalid_object_is_rejected_naming_the_field(crds):
    r = crds.kubectl("apply", "-f", "-", input=widget("bad", size=20, color="green"), check=False)
    assert r.returncode != 0
    assert "spec.size" in r.stderr and "less than or equal to 10" in r.stderr, r.stderr
    assert "spec.color" in r.stderr and 'Unsupported value: "green"' in r.stderr, r.stderr
    r = crds.kubectl("apply", "-f", "-", input=widget("bad", color="red"), check=False)
    assert "spec.size: Required value" in r.stderr, r.stderr
    r = crds.kubectl("apply", "-f", "-", input=widget("bad", size=2, name="UPPER"), check=False)
    assert "spec.name" in r.stderr and "should match" in r.stderr, r.stderr
    r = crds.kubectl("apply", "-f", "-", input=widget("bad", size="big"), check=False)
    assert "spec.size" in r.stderr and "must be of type integer" in r.stderr, r.stderr
    assert crds.kubectl("get", "widget", "bad", check=False).returncode != 0


def test_unknown_fields_strict_and_pruned(crds):
    r = crds.kubectl("apply", "-f", "-", input=widget("w2", size=1, colour="red"), check=False)
    assert r.returncode != 0
    assert 'unknown field "spec.colour"' in r.stderr, r.stderr
    crds.kubectl("apply", "--validate=false", "-f", "-",
                 input=widget("w2", size=1, colour="red", extra={"kept": True}))
    got = json.loads(crds.kubectl("get", "widget", "w2", "-o", "json").stdout)
    assert "colour" not in got["spec"]
    assert got["spec"]["extra"] == {"kept": True}


def test_explain(crds):
    out = crds.kubectl("explain", "widgets.spec").stdout
    assert "What the widget should look like" in out, out
    assert "size" in out and "Size in units" in out, out


def test_oldest_kubectl_explains_and_validates_through_openapi_v2(crds):
    """kubectl 1.27 reads OpenAPI v2 only (explain, and whether the server validates a
    kind's fields): custom kinds are published there as Kubernetes publishes them."""
    old = "/usr/lib/google-cloud-sdk/bin/kubectl.1.27"
    if not os.path.exists(old):
        pytest.fail(f"{old} is missing: the kubectl dispatcher's versioned clients are needed")
    # `plaintext-openapiv2` is the explain of OpenAPI v2 (older clients' only one).
    v2 = "--output=plaintext-openapiv2"
    out = crds.kubectl("explain", "widgets.spec", v2, binary=old).stdout
    assert "KIND:     Widget" in out and "VERSION:  example.com/v1" in out, out
    assert "RESOURCE: spec <Object>" in out, out
    assert "What the widget should look like" in out, out
    assert "size\t<integer> -required-" in out and "Size in units" in out, out
    out = crds.kubectl("explain", "widgets", "--recursive", v2, binary=old).stdout
    assert "replicas" in out and "apiVersion" in out and "metadata" in out, out
    out = crds.kubectl("explain", "regions.spec.zone", v2, binary=old).stdout
    assert "FIELD:    zone <string>" in out, out
    # Built-in kinds still apply as before alongside the custom definitions (kubectl then
    # computes their strategic merge patches from its own types).
    dep = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "old-cm"},
           "data": {"a": "1"}}
    crds.kubectl("apply", "-f", "-", input=json.dumps(dep), binary=old)
    dep["data"] = {"a": "2", "b": "3"}
    crds.kubectl("apply", "-f", "-", input=json.dumps(dep), binary=old)
    got = json.loads(crds.kubectl("get", "cm", "old-cm", "-o", "json").stdout)
    assert got["data"] == {"a": "2", "b": "3"}, got
    # Validation: strict by default, the unknown field and the wrong type are refused,
    # a valid object applies, and updates as a merge patch.
    r = crds.kubectl("apply", "-f", "-", input=widget("old1", size=1, colour="red"),
                     check=False, binary=old)
    assert r.returncode != 0 and 'unknown field "spec.colour"' in r.stderr, r.stderr
    r = crds.kubectl("apply", "-f", "-", input=widget("old1", size="big"), check=False,
                     binary=old)
    assert r.returncode != 0 and "spec.size" in r.stderr, r.stderr
    crds.kubectl("apply", "-f", "-", input=widget("old1", size=2), binary=old)
    crds.kubectl("apply", "-f", "-", input=widget("old1", size=5), binary=old)
    got = json.loads(crds.kubectl("get", "widget", "old1", "-o", "json").stdout)
    assert got["spec"]["size"] == 5


def test_scale_and_status_subresources(crds):
    crds.kubectl("apply", "-f", "-", input=widget("w3", size=1))
    crds.kubectl("scale", "widget/w3", "--replicas=3")
    got = json.loads(crds.kubectl("get", "widget", "w3", "-o", "json").stdout)
    assert got["spec"]["replicas"] == 3
    # The main resource ignores status; /status writes only status.
    crds.kubectl("patch", "widget", "w3", "--type=merge", "-p", '{"status": {"replicas": 2}}')
    got = json.loads(crds.kubectl("get", "widget", "w3", "-o", "json").stdout)
    assert "status" not in got or got["status"].get("replicas") is None
    crds.kubectl("patch", "widget", "w3", "--subresource=status", "--type=merge",
                 "-p", '{"status": {"replicas": 2}}')
    got = json.loads(crds.kubectl("get", "widget", "w3", "-o", "json").stdout)
    assert got["status"]["replicas"] == 2


def test_versions_and_cluster_scope(crds):
    got = json.loads(crds.kubectl("get", "widgets.v1beta1.example.com", "w1", "-o", "json").stdout)
    assert got["apiVersion"] == "example.com/v1beta1"
    crds.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "example.com/v1", "kind": "Region", "metadata": {"name": "eu"},
        "spec": {"zone": "west"}}))
    got = json.loads(crds.kubectl("get", "region", "eu", "-o", "json").stdout)
    assert got["spec"]["zone"] == "west" and "namespace" not in got["metadata"]


def test_unknown_kind_gets_no_matches(crds):
    r = crds.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}))
    assert r.returncode != 0
    assert 'no matches for kind "Gadget" in version "example.com/v1"' in r.stderr, r.stderr


def test_python_client(crds):
    api = client.CustomObjectsApi(config.new_client_from_config(config_file=crds.kubeconfig))
    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "py"},
            "spec": {"size": 2}}
    made = api.create_namespaced_custom_object("example.com", "v1", "default", "widgets", body)
    assert made["spec"]["color"] == "red"
    body["metadata"]["name"] = "py-bad"
    body["spec"] = {"size": 0}
    with pytest.raises(ApiException) as e:
        api.create_namespaced_custom_object("example.com", "v1", "default", "widgets", body)
    assert e.value.status == 422
    status = json.loads(e.value.body)
    assert status["details"]["causes"][0]["field"] == "spec.size", status
    items = api.list_namespaced_custom_object("example.com", "v1", "default", "widgets")["items"]
    assert "py" in [i["metadata"]["name"] for i in items]


def test_deleting_the_crd_deletes_its_objects(crds):
    crds.kubectl("delete", "crd", "regions.example.com", "--timeout=30s")
    wait_for(lambda: crds.kubectl("get", "crd", "regions.example.com", check=False).returncode != 0,
             what="CRD gone")
    # Recreated, the kind starts empty.
    crds.kubectl("apply", "-f", "-", input=CLUSTER_CRD)
    crds.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/regions.example.com")
    assert crds.kubectl("get", "regions", "-o", "name").stdout.strip() == ""
