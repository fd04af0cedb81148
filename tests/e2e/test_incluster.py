"""Pods that talk to the API as their ServiceAccount: ServiceAccount admission (the
`default` ServiceAccount, `automountServiceAccountToken`), the projected
`kube-api-access-*` volume (a bound, expiring token, `ca.crt`, `namespace`), the
`kubernetes` Service and `KUBERNETES_SERVICE_HOST/PORT`, so that the official Python
client's in-cluster configuration works from a process pod, and kubectl's from a Docker
pod. Also the admin kubeconfig's client certificate and the audit policy file."""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import Bosun, wait_for

MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

# Lists the pods of its own namespace every second, reporting each answer.
IN_CLUSTER = r'''
import json, os, sys, time
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_incluster_config()
v1 = client.CoreV1Api()
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
print("HOST", os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"], flush=True)
while True:
    try:
        names = sorted(p.metadata.name for p in v1.list_namespaced_pod(ns).items)
        print("LISTED", json.dumps(names), flush=True)
        break
    except ApiException as e:
        print("DENIED", e.status, json.loads(e.body)["message"], flush=True)
    time.sleep(1)
time.sleep(3600)
'''


def jwt_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    policy = tmp_path_factory.mktemp("audit") / "policy.yaml"
    policy.write_text("""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["configmaps", "secrets"]
  - level: Request
    verbs: ["create"]
    resources:
      - group: ""
        resources: ["services"]
  - level: None
    verbs: ["watch"]
  - level: Metadata
""")
    b = Bosun("incluster")
    args = b.args
    b.args = lambda: args() + ["--audit-policy-file", str(policy)]
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


def wait_default_sa(cluster, ns):
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
             timeout=30, what=f"ServiceAccount default in {ns}")


def pod_json(cluster, ns, name):
    return json.loads(cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)


def logs(cluster, ns, name):
    return cluster.kubectl("logs", name, "-n", ns, check=False).stdout


def test_kubernetes_service_names_the_api_server(cluster):
    svc = json.loads(cluster.kubectl("get", "service", "kubernetes", "-n", "default", "-o", "json").stdout)
    first = cluster.service_cidr.split("/")[0].rsplit(".", 1)[0] + ".1"
    assert svc["spec"]["clusterIP"] == first, svc["spec"]
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "protocol": "TCP",
                                     "targetPort": cluster.api_port}], svc["spec"]["ports"]
    eps = json.loads(cluster.kubectl("get", "endpoints", "kubernetes", "-n", "default", "-o", "json").stdout)
    assert eps["subsets"][0]["ports"][0]["port"] == cluster.api_port
    # The serving certificate is valid for the Service's address and names.
    pem = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{cluster.api_port}"],
                         input="", capture_output=True, text=True, timeout=20).stdout
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=pem,
                          capture_output=True, text=True).stdout
    assert f"IP Address:{first}" in text and "DNS:kubernetes.default.svc" in text, text


def test_admin_kubeconfig_uses_a_client_certificate(cluster):
    with open(cluster.kubeconfig) as f:
        kc = f.read()
    assert "client-certificate-data" in kc and "token:" not in kc
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert who["username"] == "admin" and "system:masters" in who["groups"], who
    crt = os.path.join(cluster.data_dir, "pki", "admin.crt")
    subj = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", crt],
                          capture_output=True, text=True).stdout
    assert "CN = admin" in subj and "O = system:masters" in subj, subj
    assert oct(os.stat(os.path.join(cluster.data_dir, "pki", "admin.key")).st_mode & 0o777) == "0o600"


def test_service_account_admission(cluster):
    cluster.kubectl("create", "namespace", "adm")
    wait_default_sa(cluster, "adm")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "adm"},
           "spec": {"runtimeClassName": "process", "containers": [{"name": "c", "command": ["sleep", "1"]}]}}
    out = json.loads(cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                     input=json.dumps(pod)).stdout)
    spec = out["spec"]
    assert spec["serviceAccountName"] == "default"
    vol = [v for v in spec["volumes"] if v["name"].startswith("kube-api-access-")]
    assert len(vol) == 1, spec["volumes"]
    sources = vol[0]["projected"]["sources"]
    assert sources[0]["serviceAccountToken"] == {"expirationSeconds": 3607, "path": "token"}
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": vol[0]["name"], "mountPath": MOUNT, "readOnly": True}]
    # automountServiceAccountToken: false on the pod, or on its ServiceAccount.
    off = json.loads(json.dumps(pod))
    off["spec"]["automountServiceAccountToken"] = False
    out = json.loads(cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                     input=json.dumps(off)).stdout)
    assert "volumes" not in out["spec"] and "volumeMounts" not in out["spec"]["containers"][0]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "quiet", "namespace": "adm"},
         "automountServiceAccountToken": False}))
    quiet = json.loads(json.dumps(pod))
    quiet["spec"]["serviceAccountName"] = "quiet"
    out = json.loads(cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                     input=json.dumps(quiet)).stdout)
    assert "volumes" not in out["spec"]
    # A ServiceAccount that does not exist: refused with Kubernetes' message.
    ghost = json.loads(json.dumps(pod))
    ghost["spec"]["serviceAccountName"] = "ghost"
    r = cluster.kubectl("create", "-f", "-", input=json.dumps(ghost), check=False)
    assert r.returncode != 0
    assert ('pods "p" is forbidden: error looking up service account adm/ghost: '
            'serviceaccount "ghost" not found') in r.stderr, r.stderr


def test_python_client_in_a_process_pod_needs_a_rolebinding(cluster):
    ns = "incl"
    cluster.kubectl("create", "namespace", ns)
    wait_default_sa(cluster, ns)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": ns},
           "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "py", "command": [sys.executable, "-c", IN_CLUSTER]}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    denied = ('DENIED 403 pods is forbidden: User "system:serviceaccount:incl:default" cannot list '
              'resource "pods" in API group "" in the namespace "incl"')
    wait_for(lambda: denied in logs(cluster, ns, "client"), timeout=60,
             what=f"the in-cluster client's 403; log: {logs(cluster, ns, 'client')}")
    svc_ip = cluster.kubectl("get", "svc", "kubernetes", "-n", "default",
                             "-o", "jsonpath={.spec.clusterIP}").stdout
    assert f"HOST {svc_ip} 443" in logs(cluster, ns, "client")
    cluster.kubectl("create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods", "-n", ns)
    cluster.kubectl("create", "rolebinding", "read-pods", "--role=pod-reader",
                    "--serviceaccount=incl:default", "-n", ns)
    wait_for(lambda: 'LISTED ["client"]' in logs(cluster, ns, "client"), timeout=30,
             what=f"listing after the RoleBinding; log: {logs(cluster, ns, 'client')}")
    # The token in the pod is bound to it and expires; the files are the pod's.
    token = cluster.kubectl("exec", "client", "-n", ns, "--", "cat", f"{MOUNT}/token").stdout
    claims = jwt_claims(token)
    assert claims["sub"] == "system:serviceaccount:incl:default"
    assert claims["kubernetes.io"]["pod"]["name"] == "client"
    assert claims["exp"] - claims["iat"] == 3607
    ca = cluster.kubectl("exec", "client", "-n", ns, "--", "cat", f"{MOUNT}/ca.crt").stdout
    with open(os.path.join(cluster.data_dir, "pki", "ca.crt")) as f:
        assert ca.strip() == f.read().strip()
    assert cluster.kubectl("exec", "client", "-n", ns, "--", "cat", f"{MOUNT}/namespace").stdout == ns
    # A deleted pod's token no longer authenticates.
    cluster.kubectl("delete", "pod", "client", "-n", ns, "--wait=true", "--timeout=60s")
    r = subprocess.run(["kubectl", "--server", f"https://127.0.0.1:{cluster.api_port}",
                        "--certificate-authority", os.path.join(cluster.data_dir, "pki", "ca.crt"),
                        "--token", token, "get", "pods", "-n", ns],
                       capture_output=True, text=True, env=dict(os.environ, KUBECONFIG="/dev/null"))
    assert r.returncode != 0 and "Unauthorized" in r.stderr, r.stderr


def docker_ok():
    return shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"


@pytest.mark.skipif(not docker_ok(), reason="no Docker engine")
def test_kubectl_in_a_docker_pod_uses_in_cluster_config(cluster):
    """kubectl (client-go, statically linked) in a scratch image finds the API through
    KUBERNETES_SERVICE_HOST/PORT, checks its certificate against the mounted ca.crt and
    authenticates with the mounted token."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    kubectl = KUBECTL if os.path.exists(KUBECTL) else shutil.which("kubectl")
    image = f"bosun-e2e-incluster-{os.getpid()}:v1"
    d = tempfile.mkdtemp(prefix="bosun-e2e-img-")
    try:
        shutil.copy(busybox, os.path.join(d, "busybox"))
        shutil.copy(kubectl, os.path.join(d, "kubectl"))
        with open(os.path.join(d, "Dockerfile"), "w") as f:
            f.write('FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
                    'RUN ["/bin/mkdir", "-m", "1777", "/tmp"]\nCOPY kubectl /bin/kubectl\nENV HOME=/tmp\n')
        r = subprocess.run(["docker", "build", "-q", "-t", image, d], capture_output=True, text=True,
                           env=dict(os.environ, DOCKER_BUILDKIT="0"), timeout=300)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)
    try:
        ns = "dock"
        cluster.kubectl("create", "namespace", ns)
        wait_default_sa(cluster, ns)
        script = ('while true; do if kubectl get pods -o name >/tmp/out 2>/tmp/err; then '
                  'echo "LISTED $(cat /tmp/out)"; sleep 3600; else echo "DENIED $(cat /tmp/err)"; fi; sleep 1; done')
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "box", "namespace": ns},
               "spec": {"terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                                        "command": ["sh", "-c", script]}]}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        denied = ('pods is forbidden: User "system:serviceaccount:dock:default" cannot list resource '
                  '"pods" in API group "" in the namespace "dock"')
        wait_for(lambda: denied in logs(cluster, ns, "box"), timeout=90,
                 what=f"a 403 from the Docker pod; log: {logs(cluster, ns, 'box')}")
        cluster.kubectl("create", "rolebinding", "view", "--clusterrole=view",
                        "--serviceaccount=dock:default", "-n", ns)
        wait_for(lambda: "LISTED pod/box" in logs(cluster, ns, "box"), timeout=30,
                 what=f"the pod list from the Docker pod; log: {logs(cluster, ns, 'box')}")
        cluster.kubectl("delete", "pod", "box", "-n", ns, "--wait=true", "--timeout=60s")
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_audit_policy_levels(cluster):
    value = "s3cr3t-" + os.urandom(6).hex()
    cluster.kubectl("create", "configmap", "audited", "--from-literal=k=visible", "-n", "default")
    cluster.kubectl("create", "secret", "generic", "hidden", f"--from-literal=k={value}", "-n", "default")
    cluster.kubectl("create", "service", "clusterip", "audsvc", "--tcp=80:80", "-n", "default")
    path = os.path.join(cluster.data_dir, "audit.log")

    def events():
        with open(path) as f:
            return [json.loads(line) for line in f]

    def find(resource, verb, name):
        return [e for e in events() if e["verb"] == verb and e.get("objectRef", {}).get("resource") == resource
                and (e["objectRef"].get("name") == name or json.dumps(e.get("requestObject", {})).find(name) >= 0)]
    cm = wait_for(lambda: find("configmaps", "create", "audited"), timeout=10, what="configmap event")[0]
    assert cm["level"] == "RequestResponse"
    assert cm["requestObject"]["data"] == {"k": "visible"}
    assert cm["responseObject"]["metadata"]["name"] == "audited"
    svc = wait_for(lambda: find("services", "create", "audsvc"), timeout=10, what="service event")[0]
    assert svc["level"] == "Request" and "responseObject" not in svc
    sec = wait_for(lambda: [e for e in events() if e["verb"] == "create"
                            and e.get("objectRef", {}).get("resource") == "secrets"], timeout=10,
                   what="secret event")
    assert all(e["level"] == "Metadata" and "requestObject" not in e for e in sec)
    with open(path, "rb") as f:
        text = f.read()
    assert value.encode() not in text and base64.b64encode(value.encode()) not in text
    assert not [e for e in events() if e.get("requestURI", "").startswith("/readyz")]
    assert not [e for e in events() if e["verb"] == "watch"]
