"""Identities and authorization: whoami, ServiceAccount tokens (TokenRequest), x509 users,
RBAC with Kubernetes' 403 messages, can-i and impersonation, the Node authorizer, and the
audit log. One cluster for the module; each test uses its own namespaces and names."""

import base64
import json
import os
import secrets
import subprocess
import tempfile

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import wait_for


def core_api(cluster, token=None, cert=None):
    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{cluster.api_port}"
    cfg.ssl_ca_cert = os.path.join(cluster.data_dir, "pki", "ca.crt")
    if token:
        cfg.api_key = {"authorization": "Bearer " + token}
    if cert:
        cfg.cert_file, cfg.key_file = cert
    return client.CoreV1Api(client.ApiClient(cfg))


def issue_cert(cluster, cn, orgs):
    """A client certificate from the cluster CA (what an administrator hands a user)."""
    d = tempfile.mkdtemp(prefix="bosun-e2e-x509-")
    key, csr, crt = (os.path.join(d, n) for n in ("u.key", "u.csr", "u.crt"))
    subj = f"/CN={cn}" + "".join(f"/O={o}" for o in orgs)
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", csr, "-subj", subj],
                   check=True, capture_output=True)
    pki = os.path.join(cluster.data_dir, "pki")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(pki, "ca.crt"),
                    "-CAkey", os.path.join(pki, "ca.key"), "-CAcreateserial", "-out", crt,
                    "-days", "1", "-extfile", "/dev/stdin"],
                   input=b"extendedKeyUsage=clientAuth\n", check=True, capture_output=True)
    return crt, key


def kubectl_as_cert(cluster, cert, *args):
    """kubectl with a kubeconfig that holds only the client certificate."""
    crt, key = cert
    kc = crt + ".kubeconfig"
    if not os.path.exists(kc):
        ca = os.path.join(cluster.data_dir, "pki", "ca.crt")
        with open(kc, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "https://127.0.0.1:{cluster.api_port}", certificate-authority: "{ca}"}}
users:
- name: u
  user: {{client-certificate: "{crt}", client-key: "{key}"}}
contexts:
- name: c
  context: {{cluster: c, user: u, namespace: default}}
current-context: c
""")
    return subprocess.run(["kubectl", "--kubeconfig", kc, *args], capture_output=True, text=True)


def create_token(cluster, ns, sa, *extra):
    return cluster.kubectl("create", "token", sa, "-n", ns, *extra).stdout.strip()


def jwt_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def wait_default_sa(cluster, ns):
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
             timeout=30, what=f"ServiceAccount default in {ns}")


def test_whoami_is_the_admin(cluster):
    out = json.loads(cluster.kubectl("auth", "whoami", "-o", "json").stdout)
    assert out["kind"] == "SelfSubjectReview"
    info = out["status"]["userInfo"]
    assert "system:masters" in info["groups"] and "system:authenticated" in info["groups"], info


def test_every_namespace_gets_default_sa_and_root_ca(cluster):
    cluster.kubectl("create", "namespace", "sa-ns")
    wait_default_sa(cluster, "sa-ns")
    ca = wait_for(lambda: cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", "sa-ns",
                                          "-o", "jsonpath={.data.ca\\.crt}", check=False).stdout,
                  timeout=30, what="kube-root-ca.crt")
    with open(os.path.join(cluster.data_dir, "pki", "ca.crt")) as f:
        assert ca.strip() == f.read().strip()
    # A deleted default ServiceAccount comes back, as in Kubernetes.
    cluster.kubectl("delete", "sa", "default", "-n", "sa-ns")
    wait_default_sa(cluster, "sa-ns")


def test_can_i_as_a_service_account(cluster):
    for ns in ("dev", "prod"):
        cluster.kubectl("create", "namespace", ns)
    r = cluster.kubectl("auth", "can-i", "--as=system:serviceaccount:dev:default",
                        "get", "secrets", "-n", "prod", check=False)
    assert r.returncode == 1 and r.stdout.strip() == "no", (r.stdout, r.stderr)
    r = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", "prod")
    assert r.stdout.strip() == "yes"
    # Granted in dev only: the answer follows the RoleBinding.
    cluster.kubectl("create", "rolebinding", "sa-edit", "--clusterrole=edit",
                    "--serviceaccount=dev:default", "-n", "dev")
    wait_for(lambda: cluster.kubectl("auth", "can-i", "--as=system:serviceaccount:dev:default",
                                     "get", "secrets", "-n", "dev", check=False).returncode == 0,
             timeout=10, what="can-i yes after the RoleBinding")
    r = cluster.kubectl("auth", "can-i", "--as=system:serviceaccount:dev:default",
                        "get", "secrets", "-n", "prod", check=False)
    assert r.returncode == 1
    listed = cluster.kubectl("auth", "can-i", "--list", "-n", "dev",
                             "--as=system:serviceaccount:dev:default").stdout
    assert "pods/exec" in listed and "selfsubjectaccessreviews" in listed, listed


def test_service_account_token_403_then_rolebinding(cluster):
    cluster.kubectl("create", "namespace", "tok")
    wait_default_sa(cluster, "tok")
    token = create_token(cluster, "tok", "default", "--duration=15m")
    claims = jwt_claims(token)
    assert claims["sub"] == "system:serviceaccount:tok:default"
    assert claims["kubernetes.io"]["namespace"] == "tok"
    assert 890 <= claims["exp"] - claims["iat"] <= 910, claims
    api = core_api(cluster, token=token)
    with pytest.raises(ApiException) as e:
        api.list_namespaced_pod("tok")
    assert e.value.status == 403
    body = json.loads(e.value.body)
    assert body["reason"] == "Forbidden"
    assert body["message"] == ('pods is forbidden: User "system:serviceaccount:tok:default" cannot '
                               'list resource "pods" in API group "" in the namespace "tok"'), body
    cluster.kubectl("create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods", "-n", "tok")
    cluster.kubectl("create", "rolebinding", "read-pods", "--role=pod-reader",
                    "--serviceaccount=tok:default", "-n", "tok")
    wait_for(lambda: api.list_namespaced_pod("tok") is not None, timeout=10,
             what="listing allowed after the RoleBinding")
    # Other namespaces and other verbs stay closed.
    with pytest.raises(ApiException) as e:
        api.list_namespaced_pod("default")
    assert e.value.status == 403
    with pytest.raises(ApiException) as e:
        api.list_namespaced_secret("tok")
    assert e.value.status == 403
    # whoami with the token names the ServiceAccount.
    who = subprocess.run(["kubectl", "--server", f"https://127.0.0.1:{cluster.api_port}",
                          "--certificate-authority", os.path.join(cluster.data_dir, "pki", "ca.crt"),
                          "--token", token, "auth", "whoami", "-o", "json"],
                         capture_output=True, text=True, env=dict(os.environ, KUBECONFIG="/dev/null"))
    assert who.returncode == 0, who.stderr
    info = json.loads(who.stdout)["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:tok:default"
    assert "system:serviceaccounts:tok" in info["groups"]


def test_token_validation(cluster):
    cluster.kubectl("create", "namespace", "val")
    cluster.kubectl("create", "serviceaccount", "robot", "-n", "val")
    token = create_token(cluster, "val", "robot")
    assert jwt_claims(token)["exp"] - jwt_claims(token)["iat"] == 3600
    who = core_api(cluster, token=token)
    with pytest.raises(ApiException) as e:  # authenticated, not authorized
        who.list_namespaced_pod("val")
    assert e.value.status == 403
    # A token that is too short-lived, a forged one, one of a deleted ServiceAccount: refused.
    r = cluster.kubectl("create", "token", "robot", "-n", "val", "--duration=1m", check=False)
    assert r.returncode != 0 and "expirationSeconds" in r.stderr, r.stderr
    head, payload, sig = token.split(".")
    claims = jwt_claims(token)
    claims["sub"] = "system:serviceaccount:kube-system:default"
    forged = ".".join([head, base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("="), sig])
    with pytest.raises(ApiException) as e:
        core_api(cluster, token=forged).list_namespaced_pod("val")
    assert e.value.status == 401
    cluster.kubectl("delete", "serviceaccount", "robot", "-n", "val")
    with pytest.raises(ApiException) as e:
        who.list_namespaced_pod("val")
    assert e.value.status == 401
    assert cluster.kubectl("create", "token", "ghost", "-n", "val", check=False).returncode != 0


def test_x509_user_and_impersonation(cluster):
    cert = issue_cert(cluster, "jane", ["devs"])
    who = kubectl_as_cert(cluster, cert, "auth", "whoami", "-o", "json")
    assert who.returncode == 0, who.stderr
    info = json.loads(who.stdout)["status"]["userInfo"]
    assert info["username"] == "jane" and info["groups"] == ["devs", "system:authenticated"], info
    r = kubectl_as_cert(cluster, cert, "get", "deployments", "-n", "default")
    assert r.returncode != 0
    assert ('deployments.apps is forbidden: User "jane" cannot list resource "deployments" in API '
            'group "apps" in the namespace "default"') in r.stderr, r.stderr
    cluster.kubectl("create", "clusterrolebinding", "devs-view", "--clusterrole=view", "--group=devs")
    wait_for(lambda: kubectl_as_cert(cluster, cert, "get", "deployments", "-n", "default").returncode == 0,
             timeout=10, what="view through the group binding")
    # view is aggregated from system:aggregate-to-view (and written back, as Kubernetes'
    # aggregation controller does): no Secrets, no writes.
    view = json.loads(cluster.kubectl("get", "clusterrole", "view", "-o", "json").stdout)
    assert any("pods" in r.get("resources", []) for r in view["rules"]), view
    assert not any("secrets" in r.get("resources", []) for r in view["rules"]), view
    assert kubectl_as_cert(cluster, cert, "get", "secrets").returncode != 0
    assert kubectl_as_cert(cluster, cert, "create", "configmap", "x").returncode != 0
    # The admin may impersonate; jane may not.
    r = cluster.kubectl("get", "secrets", "--as=jane", "--as-group=devs", check=False)
    assert r.returncode != 0 and 'User "jane" cannot list resource "secrets"' in r.stderr, r.stderr
    r = kubectl_as_cert(cluster, cert, "get", "pods", "--as=admin")
    assert r.returncode != 0
    assert 'users "admin" is forbidden: User "jane" cannot impersonate resource "users"' in r.stderr, r.stderr


def test_node_authorizer(cluster):
    """A node reads the Secrets of pods bound to it and no other."""
    cluster.kubectl("create", "namespace", "nodes")
    cluster.kubectl("create", "secret", "generic", "mine", "--from-literal=k=v", "-n", "nodes")
    cluster.kubectl("create", "secret", "generic", "unused", "--from-literal=k=v", "-n", "nodes")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user", "namespace": "nodes"},
           "spec": {"runtimeClassName": "process", "nodeName": cluster.node_name,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "command": ["sleep", "3600"],
                                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "k"}}}]}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    here = issue_cert(cluster, f"system:node:{cluster.node_name}", ["system:nodes"])
    other = issue_cert(cluster, "system:node:elsewhere", ["system:nodes"])
    assert kubectl_as_cert(cluster, here, "get", "secret", "mine", "-n", "nodes").returncode == 0
    r = kubectl_as_cert(cluster, here, "get", "secret", "unused", "-n", "nodes")
    assert r.returncode != 0 and "no relationship" in r.stderr, r.stderr
    r = kubectl_as_cert(cluster, other, "get", "secret", "mine", "-n", "nodes")
    assert r.returncode != 0 and 'secrets "mine" is forbidden' in r.stderr, r.stderr
    assert kubectl_as_cert(cluster, here, "get", "secrets", "-n", "nodes").returncode != 0
    # Nodes read pods, but write only their own Node.
    assert kubectl_as_cert(cluster, other, "get", "pods", "-A").returncode == 0
    r = kubectl_as_cert(cluster, other, "label", "node", cluster.node_name, "x=y")
    assert r.returncode != 0 and "its own Node" in r.stderr, r.stderr
    cluster.kubectl("delete", "pod", "user", "-n", "nodes", "--wait=false")


def test_audit_log_has_requests_but_no_secret_values(cluster):
    value = "audit-" + secrets.token_hex(12)
    cluster.kubectl("create", "secret", "generic", "audited", f"--from-literal=password={value}")
    cluster.kubectl("get", "secret", "audited", "-o", "yaml")
    cluster.kubectl("auth", "can-i", "--as=nobody", "list", "pods", check=False)
    path = os.path.join(cluster.data_dir, "audit.log")

    def events():
        with open(path) as f:
            return [json.loads(line) for line in f]

    def created():
        return [e for e in events() if e["verb"] == "create"
                and e.get("objectRef", {}).get("resource") == "secrets"
                and e["objectRef"].get("name", "audited") == "audited"]
    ev = wait_for(created, timeout=10, what="the Secret's create in the audit log")[0]
    assert ev["apiVersion"] == "audit.k8s.io/v1" and ev["kind"] == "Event"
    assert ev["level"] == "Metadata" and ev["stage"] == "ResponseComplete"
    assert ev["responseStatus"]["code"] == 201
    assert ev["user"]["username"] == "admin" and ev["sourceIPs"] == ["127.0.0.1"]
    assert ev["annotations"]["authorization.k8s.io/decision"] == "allow"
    # Events are written by a thread of their own: the later ones may need a moment.
    wait_for(lambda: [e for e in events() if e.get("impersonatedUser", {}).get("username") == "nobody"],
             timeout=10, what="an impersonated request recorded with impersonatedUser")
    with open(path, "rb") as f:
        text = f.read()
    assert value.encode() not in text
    assert base64.b64encode(value.encode()) not in text
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
