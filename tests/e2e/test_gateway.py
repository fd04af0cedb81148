"""The gateway in `bosun up`: Ingress and HTTPRoute routing to process pods, canary
weights, TLS with SNI from a kubernetes.io/tls Secret, and status conditions for a bad
route while the others keep serving."""

import base64
import json
import subprocess

from conftest import wait_for

SERVER = r'''
import http.server, os
NAME = os.environ["NAME"]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = json.dumps({"name": NAME, "path": self.path, "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
import json
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''


def app(name):
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "containers": [{
                        "name": "web",
                        "command": ["python3", "-c", SERVER],
                        "env": [{"name": "NAME", "value": name}],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                           "periodSeconds": 1},
                    }],
                },
            },
        },
    }
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    return [deploy, svc]


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "5", "-w", "\n%{http_code}", *args],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return None, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


def get(cluster, host, path):
    return curl("-H", f"Host: {host}", f"http://127.0.0.1:{cluster.http_port}{path}")


def served_by(cluster, host, path):
    code, body = get(cluster, host, path)
    if code != 200:
        return None
    return json.loads(body)


def test_ingress_routes_to_service(cluster):
    apply(cluster, *app("shop"), {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop"},
        "spec": {"rules": [{"host": "shop.local", "http": {"paths": [
            {"path": "/api", "pathType": "Prefix",
             "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]},
    })
    got = wait_for(lambda: served_by(cluster, "shop.local", "/api/items?x=1"), timeout=90,
                   what="shop.local/api served")
    assert got["name"] == "shop"
    assert got["path"] == "/api/items?x=1"
    assert got["host"] == "shop.local"
    assert get(cluster, "shop.local", "/other")[0] == 404
    assert get(cluster, "nope.local", "/api")[0] == 404
    ing = json.loads(cluster.kubectl("get", "ingress", "shop", "-o", "json").stdout)
    wait_for(lambda: json.loads(cluster.kubectl("get", "ingress", "shop", "-o", "json").stdout)
             .get("status", {}).get("loadBalancer", {}).get("ingress"), what="ingress status address")
    assert ing["metadata"]["name"] == "shop"


def test_httproute_weighted_split(cluster):
    apply(cluster, *app("stable"), *app("canary"), {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split"},
        "spec": {"hostnames": ["split.local"], "rules": [{
            "backendRefs": [{"name": "stable", "port": 80, "weight": 90},
                            {"name": "canary", "port": 80, "weight": 10}]}]},
    })
    wait_for(lambda: served_by(cluster, "split.local", "/"), timeout=90, what="split.local served")
    # Both backends ready before counting.
    wait_for(lambda: all(cluster.kubectl("get", "deploy", n, "-o", "jsonpath={.status.readyReplicas}").stdout == "1"
                         for n in ["stable", "canary"]), timeout=90, what="stable and canary ready")
    counts = {"stable": 0, "canary": 0}
    for _ in range(200):
        got = served_by(cluster, "split.local", "/")
        assert got is not None
        counts[got["name"]] += 1
    assert 5 <= counts["canary"] <= 40, counts
    r = json.loads(cluster.kubectl("get", "httproute", "split", "-o", "json").stdout)
    conds = {c["type"]: c["status"] for c in r["status"]["parents"][0]["conditions"]}
    assert conds == {"Accepted": "True", "ResolvedRefs": "True"}
    # An update through kubectl apply (a patch) takes effect: canary weight 0.
    apply(cluster, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split"},
        "spec": {"hostnames": ["split.local"], "rules": [{
            "backendRefs": [{"name": "stable", "port": 80, "weight": 90},
                            {"name": "canary", "port": 80, "weight": 0}]}]},
    })
    r = json.loads(cluster.kubectl("get", "httproute", "split", "-o", "json").stdout)
    assert r["spec"]["rules"][0]["backendRefs"][1]["weight"] == 0

    def only_stable():
        return all(served_by(cluster, "split.local", "/")["name"] == "stable" for _ in range(30))
    wait_for(only_stable, timeout=30, what="canary weight 0 applied")


def test_tls_with_sni(cluster, tmp_path):
    key, crt = make_cert(tmp_path, "secure.local")
    cluster.kubectl("create", "secret", "tls", "secure-tls", f"--cert={crt}", f"--key={key}")
    apply(cluster, *app("secure"), {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "secure"},
        "spec": {"ingressClassName": "bosun",
                 "tls": [{"hosts": ["secure.local"], "secretName": "secure-tls"}],
                 "rules": [{"host": "secure.local", "http": {"paths": [
                     {"path": "/", "pathType": "Prefix",
                      "backend": {"service": {"name": "secure", "port": {"number": 80}}}}]}}]},
    })
    url = f"https://secure.local:{cluster.https_port}/hello"
    resolve = f"secure.local:{cluster.https_port}:127.0.0.1"

    def fetch():
        code, body = curl("--cacert", crt, "--resolve", resolve, url)
        return code == 200 and json.loads(body)
    got = wait_for(fetch, timeout=90, what="TLS request served")
    assert got["name"] == "secure" and got["path"] == "/hello"
    # HTTP/2 is negotiated with ALPN.
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--http2", "--cacert", crt, "--resolve", resolve,
                        "-o", "/dev/null", "-w", "%{http_version}", url],
                       capture_output=True, text=True, timeout=20)
    assert r.stdout == "2", r
    # Another SNI name gets no certificate: the handshake fails.
    code, err = curl("--cacert", crt, "--resolve", f"other.local:{cluster.https_port}:127.0.0.1",
                     f"https://other.local:{cluster.https_port}/")
    assert code is None, err


def test_bad_tls_secret_is_reported_while_others_serve(cluster):
    # Runs after test_tls_with_sni: secure.local keeps its certificate.
    junk = base64.b64encode(b"not a certificate").decode()
    apply(cluster, {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "broken-tls"},
        "data": {"tls.crt": junk, "tls.key": junk},
    }, {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "broken-tls"},
        "spec": {"tls": [{"hosts": ["broken.local"], "secretName": "broken-tls"}],
                 "rules": [{"host": "broken.local", "http": {"paths": [
                     {"path": "/", "pathType": "Prefix",
                      "backend": {"service": {"name": "secure", "port": {"number": 80}}}}]}}]},
    })

    def warned():
        events = json.loads(cluster.kubectl("get", "events", "-o", "json").stdout)["items"]
        return [e for e in events
                if e["involvedObject"].get("name") == "broken-tls" and e.get("type") == "Warning"
                and "broken-tls" in e.get("message", "")]
    ev = wait_for(warned, timeout=60, what="a Warning Event about the bad TLS Secret")
    assert ev[0]["involvedObject"]["kind"] == "Ingress", ev
    # The other TLS host keeps serving with its own certificate.
    code, body = curl("-k", "--resolve", f"secure.local:{cluster.https_port}:127.0.0.1",
                      f"https://secure.local:{cluster.https_port}/still")
    assert code == 200 and json.loads(body)["path"] == "/still", body
    cluster.kubectl("delete", "ingress,secret", "broken-tls")


def test_invalid_regex_reported_while_others_serve(cluster):
    apply(cluster, *app("good"), {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "bad-regex"},
        "spec": {"hostnames": ["mixed.local"], "rules": [{
            "matches": [{"path": {"type": "RegularExpression", "value": "/bad/(["}}],
            "backendRefs": [{"name": "good", "port": 80}]}]},
    }, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "good"},
        "spec": {"hostnames": ["mixed.local"], "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/good"}}],
            "backendRefs": [{"name": "good", "port": 80}]}]},
    }, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "missing-svc"},
        "spec": {"hostnames": ["mixed.local"], "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
            "backendRefs": [{"name": "does-not-exist", "port": 80}]}]},
    })

    def conditions(name):
        r = json.loads(cluster.kubectl("get", "httproute", name, "-o", "json").stdout)
        parents = (r.get("status") or {}).get("parents") or []
        return parents and {c["type"]: (c["status"], c["reason"], c["message"]) for c in parents[0]["conditions"]}

    bad = wait_for(lambda: conditions("bad-regex"), what="bad-regex status")
    assert bad["Accepted"][0] == "False" and bad["Accepted"][1] == "UnsupportedValue", bad
    assert "regular expression" in bad["Accepted"][2]
    missing = wait_for(lambda: conditions("missing-svc"), what="missing-svc status")
    assert missing["ResolvedRefs"][:2] == ("False", "BackendNotFound"), missing
    assert missing["Accepted"][0] == "True"
    got = wait_for(lambda: served_by(cluster, "mixed.local", "/good/x"), timeout=90, what="good route served")
    assert got["name"] == "good"
    assert get(cluster, "mixed.local", "/missing")[0] == 500
    assert get(cluster, "mixed.local", "/bad/x")[0] == 404
    events = json.loads(cluster.kubectl("get", "events", "-o", "json").stdout)["items"]
    reasons = [e["reason"] for e in events if e["involvedObject"].get("name") == "bad-regex"]
    assert "UnsupportedValue" in reasons, reasons
    # kubectl reads the new kinds like any other.
    out = cluster.kubectl("get", "httproutes").stdout
    assert "bad-regex" in out and "good" in out


def make_cert(d, host):
    key, crt = str(d / "tls.key"), str(d / "tls.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", crt, "-days", "1", "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=DNS:{host}"],
                   check=True, capture_output=True)
    return key, crt


def test_gateway_listeners_and_status(cluster, tmp_path):
    key, crt = make_cert(tmp_path, "secure.edge.local")
    cluster.kubectl("create", "secret", "tls", "edge-tls", f"--cert={crt}", f"--key={key}")
    apply(cluster, *app("edge"), {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "bosun"},
        "spec": {"controllerName": "bosun.dev/gateway-controller"},
    }, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge"},
        "spec": {"gatewayClassName": "bosun", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.edge.local"},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "secure.edge.local",
             "tls": {"certificateRefs": [{"name": "edge-tls"}]}},
        ]},
    }, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "edge"},
        "spec": {"parentRefs": [{"name": "edge"}],
                 "hostnames": ["a.edge.local", "secure.edge.local", "elsewhere.local"],
                 "rules": [{"backendRefs": [{"name": "edge", "port": 80}]}]},
    })
    got = wait_for(lambda: served_by(cluster, "a.edge.local", "/x"), timeout=90, what="a.edge.local served")
    assert got["name"] == "edge"
    # Outside the listener's hostname: not attached.
    assert get(cluster, "elsewhere.local", "/")[0] == 404
    code, body = curl("--cacert", crt, "--resolve", f"secure.edge.local:{cluster.https_port}:127.0.0.1",
                      f"https://secure.edge.local:{cluster.https_port}/s")
    assert code == 200 and json.loads(body)["name"] == "edge", (code, body)

    def gateway_status():
        g = json.loads(cluster.kubectl("get", "gateway", "edge", "-o", "json").stdout)
        st = g.get("status") or {}
        listeners = {l["name"]: l for l in st.get("listeners") or []}
        return listeners.get("https") and (st, listeners)
    st, listeners = wait_for(gateway_status, what="gateway status")
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Accepted": "True", "Programmed": "True"}
    assert listeners["http"]["attachedRoutes"] == 1
    assert {c["type"]: c["status"] for c in listeners["https"]["conditions"]}["ResolvedRefs"] == "True"
    gc = json.loads(cluster.kubectl("get", "gatewayclass", "bosun", "-o", "json").stdout)
    assert gc["status"]["conditions"][0]["type"] == "Accepted"
    assert gc["status"]["conditions"][0]["status"] == "True"
    r = json.loads(cluster.kubectl("get", "httproute", "edge", "-o", "json").stdout)
    parent = r["status"]["parents"][0]
    assert parent["parentRef"]["name"] == "edge"
    assert parent["controllerName"] == "bosun.dev/gateway-controller"
