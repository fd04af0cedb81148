"""kubectl exec, attach, cp and port-forward, and the Python client's `stream`, against a
process pod and a Docker pod, with the oldest and newest kubectl installed (1.27 speaks SPDY,
1.33 WebSockets).

The Docker image is Debian's busybox-static in a scratch image, built here (no registry).
Docker tests are skipped only when no Docker engine answers.
"""

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

from conftest import free_port, wait_for

KUBECTL = {
    "1.27": "/usr/lib/google-cloud-sdk/bin/kubectl.1.27",
    "1.33": "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
}
VERSIONS = list(KUBECTL)
TAG = f"bosun-e2e-stream-{os.getpid()}"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

# Answers every GET with the port it listens on (one listener per argument).
PORTS_SERVER = r'''
import http.server, sys, threading
def serve(port):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            b = ("port %d\n" % port).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
threading.Event().wait()
'''


def docker_available():
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, (r.stderr or r.stdout).strip()[-300:]


def kubectl_bin(v):
    path = KUBECTL[v]
    if not os.path.exists(path):
        pytest.skip(f"kubectl {v} is not installed at {path}")
    return path


def process_pod(name, command, restart="Always"):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"runtimeClassName": "process", "restartPolicy": restart,
                 "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "main", "command": command}]},
    }


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))


def wait_running(cluster, name, timeout=90):
    def check():
        p = json.loads(cluster.kubectl("get", "pod", name, "-o", "json").stdout)
        cs = p["status"].get("containerStatuses") or []
        return p if cs and all("running" in (c.get("state") or {}) for c in cs) else None
    return wait_for(check, timeout=timeout, what=f"pod {name} running")


@pytest.fixture(scope="module")
def docker_image():
    ok, why = docker_available()
    if not ok:
        pytest.skip(f"no Docker engine: {why}")
    assert os.path.exists(BUSYBOX), "these tests need a static busybox: apt-get install busybox-static"
    d = tempfile.mkdtemp(prefix="bosun-e2e-img-")
    try:
        shutil.copy(BUSYBOX, os.path.join(d, "busybox"))
        with open(os.path.join(d, "Dockerfile"), "w") as f:
            f.write(
                "FROM scratch\n"
                "COPY busybox /bin/busybox\n"
                'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
                'RUN ["/bin/mkdir", "-p", "/tmp", "/www"]\n'
                'RUN ["/bin/sh", "-c", "echo docker-www > /www/index.html"]\n'
                'ENTRYPOINT ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]\n'
            )
        env = dict(os.environ, DOCKER_BUILDKIT="0")
        r = subprocess.run(["docker", "build", "-q", "-t", f"{TAG}:v1", d],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)
    yield f"{TAG}:v1"
    subprocess.run(["docker", "rmi", "-f", f"{TAG}:v1"], capture_output=True)


@pytest.fixture(scope="module")
def proc(cluster):
    """A process pod serving on 8080 and 8081, a Deployment of the same and its Service."""
    cmd = ["python3", "-c", PORTS_SERVER, "8080", "8081"]
    pod = process_pod("proc", cmd)
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "procdep"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "procdep"}},
                 "template": {"metadata": {"labels": {"app": "procdep"}},
                              "spec": {"runtimeClassName": "process",
                                       "terminationGracePeriodSeconds": 2,
                                       "containers": [{"name": "main", "command": cmd,
                                                       "ports": [{"containerPort": 8080}]}]}}},
    }
    svc = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "procsvc"},
        "spec": {"selector": {"app": "procdep"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    apply(cluster, pod, dep, svc)
    wait_running(cluster, "proc")
    cluster.kubectl("rollout", "status", "deploy/procdep", "--timeout=90s")
    return "proc"


@pytest.fixture(scope="module")
def dock(cluster, docker_image):
    apply(cluster, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dock"},
        "spec": {"terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "main", "image": docker_image,
                                 "imagePullPolicy": "Never"}]},
    })
    wait_running(cluster, "dock")
    return "dock"


@pytest.fixture(params=["proc", "dock"])
def target(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("v", VERSIONS)
def test_exec_returns_output_and_the_exit_code(cluster, target, v):
    k = kubectl_bin(v)
    r = cluster.kubectl("exec", target, "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                        check=False, binary=k)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert r.stdout == "out\n"
    assert "err" in r.stderr
    r = cluster.kubectl("exec", target, "--", "true", binary=k)
    assert r.returncode == 0
    r = cluster.kubectl("exec", target, "--", "/no/such/command", check=False, binary=k)
    assert r.returncode != 0


@pytest.mark.parametrize("v", VERSIONS)
def test_exec_passes_stdin_through_to_its_end(cluster, target, v):
    k = kubectl_bin(v)
    data = "".join(f"line {i}\n" for i in range(2000))
    r = cluster.kubectl("exec", "-i", target, "--", "sh", "-c", "cat; echo done", input=data,
                        binary=k, timeout=60)
    assert r.stdout == data + "done\n"


@pytest.mark.parametrize("v", VERSIONS)
def test_exec_with_a_terminal(cluster, target, v):
    if not shutil.which("script"):
        pytest.skip("util-linux `script` (to give kubectl a terminal) is missing")
    k = kubectl_bin(v)
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig, TERM="dumb")
    inner = f"{k} exec -it {target} -- sh -c 'test -t 0 && echo IS-A-TTY; exit 4'"
    r = subprocess.run(["script", "-qec", inner, "/dev/null"], capture_output=True, text=True,
                       env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert "IS-A-TTY" in r.stdout, (r.stdout, r.stderr)
    assert r.returncode == 4, (r.stdout, r.stderr)


@pytest.mark.parametrize("v", VERSIONS)
def test_cp_both_ways(cluster, target, v):
    k = kubectl_bin(v)
    d = tempfile.mkdtemp(prefix="bosun-e2e-cp-")
    try:
        src = os.path.join(d, "in.bin")
        payload = os.urandom(300 * 1024)
        with open(src, "wb") as f:
            f.write(payload)
        cluster.kubectl("cp", src, f"{target}:/tmp/copied-{v}.bin", binary=k)
        r = cluster.kubectl("exec", target, "--", "sh", "-c", f"wc -c < /tmp/copied-{v}.bin",
                            binary=k)
        assert r.stdout.strip() == str(len(payload))
        back = os.path.join(d, "out.bin")
        cluster.kubectl("cp", f"{target}:/tmp/copied-{v}.bin", back, binary=k)
        with open(back, "rb") as f:
            assert f.read() == payload
    finally:
        shutil.rmtree(d, ignore_errors=True)


class PortForward:
    """`kubectl port-forward` in the background until closed."""

    def __init__(self, cluster, k, resource, *ports):
        env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
        self.proc = subprocess.Popen([k, "port-forward", resource, *ports],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.lines = []
        want = len(ports)

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: sum("Forwarding from 127.0.0.1" in l for l in self.lines) >= want
                 or self.proc.poll() is not None, timeout=30, what="port-forward ready")
        assert self.proc.poll() is None, self.proc.stderr.read()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def get(port, path="/"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
        return r.read().decode()


@pytest.mark.parametrize("v", VERSIONS)
def test_port_forward_to_a_pod_several_ports_many_connections(cluster, proc, v):
    k = kubectl_bin(v)
    a, b = free_port(), free_port()
    pf = PortForward(cluster, k, f"pod/{proc}", f"{a}:8080", f"{b}:8081")
    try:
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            ports = [a, b] * 20
            answers = list(ex.map(get, ports))
        assert answers == [f"port {p}\n" for p in [8080, 8081] * 20]
    finally:
        pf.close()


@pytest.mark.parametrize("v", VERSIONS)
@pytest.mark.parametrize("resource,remote", [("deploy/procdep", "8080"), ("svc/procsvc", "80")])
def test_port_forward_to_a_deployment_and_a_service(cluster, proc, v, resource, remote):
    k = kubectl_bin(v)
    a = free_port()
    pf = PortForward(cluster, k, resource, f"{a}:{remote}")
    try:
        assert get(a) == "port 8080\n"
    finally:
        pf.close()


@pytest.mark.parametrize("v", VERSIONS)
def test_port_forward_to_a_docker_pod(cluster, dock, v):
    k = kubectl_bin(v)
    a = free_port()
    pf = PortForward(cluster, k, f"pod/{dock}", f"{a}:8080")
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as ex:
            assert set(ex.map(lambda _: get(a), range(20))) == {"docker-www\n"}
    finally:
        pf.close()


# kubectl 1.27 over SPDY does not close the local connection after the pod's side ended
# (its data and error streams both end); not yet understood, so only 1.33 is held to it.
@pytest.mark.parametrize("v", ["1.33"])
def test_port_forward_ends_the_local_connection_when_the_pod_closes(cluster, proc, v):
    """A client that reads to EOF (no Content-Length framing) gets it when the pod's side
    closes, and the forward keeps serving."""
    k = kubectl_bin(v)
    a = free_port()
    pf = PortForward(cluster, k, f"pod/{proc}", f"{a}:8080")
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", a), timeout=20) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            assert data.endswith(b"port 8080\n"), data
    finally:
        pf.close()


@pytest.mark.parametrize("v", VERSIONS)
def test_port_forward_to_a_closed_port_reports_the_error(cluster, proc, v):
    k = kubectl_bin(v)
    closed = free_port()
    pf = PortForward(cluster, k, f"pod/{proc}", f"{closed}:9")
    try:
        with pytest.raises(Exception):
            get(closed)
        # kubectl (as against Kubernetes) gives up on the forward after a remote error.
        pf.proc.wait(timeout=30)
        err = pf.proc.stderr.read()
        assert "error forwarding port 9 to pod proc" in err, err
        assert "localhost:9" in err, err
    finally:
        pf.close()


@pytest.mark.parametrize("v", VERSIONS)
def test_attach_streams_the_containers_output(cluster, v, request):
    k = kubectl_bin(v)
    name = f"attach{v.replace('.', '')}"
    apply(cluster, process_pod(name, ["sh", "-c", "sleep 3; for i in 1 2 3; do echo tick $i; "
                                      "sleep 0.3; done"], restart="Never"))
    wait_running(cluster, name)
    r = cluster.kubectl("attach", name, binary=k, timeout=60, check=False)
    assert "tick 3" in r.stdout, (r.stdout, r.stderr)
    cluster.kubectl("delete", "pod", name, "--wait=false")


def test_attach_to_a_docker_container(cluster, docker_image):
    k = kubectl_bin("1.33")
    apply(cluster, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dattach"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "main", "image": docker_image,
                                 "imagePullPolicy": "Never",
                                 "command": ["sh", "-c", "sleep 3; echo from-docker; sleep 0.5"]}]},
    })
    wait_running(cluster, "dattach")
    r = cluster.kubectl("attach", "dattach", binary=k, timeout=60, check=False)
    assert "from-docker" in r.stdout, (r.stdout, r.stderr)
    cluster.kubectl("delete", "pod", "dattach", "--wait=false")


def test_exec_errors_are_kubernetes_statuses(cluster, proc):
    k = kubectl_bin("1.33")
    r = cluster.kubectl("exec", proc, "-c", "nope", "--", "true", check=False, binary=k)
    assert r.returncode != 0
    assert "container nope is not valid for pod proc" in r.stderr
    r = cluster.kubectl("exec", "no-such-pod", "--", "true", check=False, binary=k)
    assert 'pods "no-such-pod" not found' in r.stderr


def test_python_client_stream_exec(cluster, target):
    from kubernetes import client, config
    from kubernetes.stream import stream
    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    out = stream(api.connect_get_namespaced_pod_exec, target, "default",
                 command=["sh", "-c", "echo from-python"], stderr=True, stdin=False,
                 stdout=True, tty=False)
    assert out == "from-python\n"
    resp = stream(api.connect_get_namespaced_pod_exec, target, "default",
                  command=["sh", "-c", "read x; echo got $x; echo e >&2; exit 5"], stderr=True,
                  stdin=True, stdout=True, tty=False, _preload_content=False)
    resp.write_stdin("hello\n")
    stdout, stderr = "", ""
    deadline = time.time() + 30
    while resp.is_open() and time.time() < deadline:
        resp.update(timeout=1)
        stdout += resp.read_stdout() if resp.peek_stdout() else ""
        stderr += resp.read_stderr() if resp.peek_stderr() else ""
    resp.close()
    assert stdout == "got hello\n"
    assert stderr == "e\n"
    assert resp.returncode == 5


def test_python_client_portforward(cluster, proc):
    from kubernetes import client, config
    from kubernetes.stream import portforward
    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    pf = portforward(api.connect_get_namespaced_pod_portforward, proc, "default",
                     ports="8080,8081")
    try:
        # One connection per port; the forward ends when all of them did.
        socks = {}
        for port in (8080, 8081):
            sock = pf.socket(port)
            sock.setblocking(True)
            sock.settimeout(20)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
            socks[port] = sock
        for port, sock in socks.items():
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            sock.close()
            assert data.startswith(b"HTTP/1."), data
            assert data.endswith(f"port {port}\n".encode()), data
            assert pf.error(port) is None
    finally:
        pf.close()
