"""Starts real bosun clusters for end-to-end tests.

Each cluster gets its own data dir, API and agent ports, bridge name and pod address
range, so several test runs can share one machine; everything is removed afterwards.
"""

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Under CI (scripts/test.sh sets it) every test must run: a skip for a missing component
# is reported as a failure instead.
REQUIRE_ALL = os.environ.get("BOSUN_REQUIRE_ALL", "").lower() in ("1", "true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    # Third-party files the repository does not ship are the one exception: such a skip
    # stays a skip, printed loudly.
    if rep.skipped and item.get_closest_marker("third_party_files"):
        print(f"\nSKIPPED (third-party files missing): {item.nodeid}")
        return
    if REQUIRE_ALL and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped, but BOSUN_REQUIRE_ALL=1 requires every test to run: {reason}"


# A pod that answers every GET on :8080 with its HOSTNAME (the pod name), keep-alive.
HOSTNAME_SERVER = r'''
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = (os.environ.get("HOSTNAME", "?") + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''


def bosun_bin():
    path = os.environ.get("BOSUN_BIN")
    if path:
        return path
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "debug", "bosun")


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT = set()


def free_port():
    """A loopback port free now and handed out once per test run.

    Taken below the kernel's ephemeral range: a `bind(0)` port is free only until an
    outgoing connection takes it as its local port, and two `bind(0)` calls in a row may
    return the same port (one cluster's API server and agent then collide). The band sits
    below the one `bosun up` takes its own internal ports from (12,000 under the range)."""
    low = _ephemeral_low() - 12000
    start = max(1024, low - 12000)
    for _ in range(500):
        port = random.randrange(start, low) if start < low else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class Bosun:
    """One `bosun up` process with its own everything."""

    def __init__(self, name):
        self.name = name
        self.data_dir = tempfile.mkdtemp(prefix=f"bosun-e2e-{name}-")
        self.api_port = free_port()
        self.kubelet_port = free_port()
        tag = random.randrange(1, 250)
        # Pod ranges inside 10.200-10.249 (only ever used inside this machine's own
        # namespaces), bridge names unique per cluster.
        self.pod_cidr = f"10.{200 + tag % 50}.{random.randrange(0, 255)}.0/24"
        self.bridge = f"be{os.getpid() % 10000}{tag}"[:15]
        self.service_interface = f"bs{os.getpid() % 10000}{tag}"[:15]
        self.service_cidr = f"10.{150 + tag % 50}.{random.randrange(0, 255)}.0/24"
        self.http_port = free_port()
        self.https_port = free_port()
        self.console_port = free_port()
        self.node_name = f"node-{name}"
        self.kubeconfig = os.path.join(self.data_dir, "kubeconfig")
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "bosun.log")

    def args(self):
        return [
            bosun_bin(), "up",
            "--data-dir", self.data_dir,
            "--listen", f"127.0.0.1:{self.api_port}",
            "--kubelet-port", str(self.kubelet_port),
            "--pod-cidr", self.pod_cidr,
            "--bridge", self.bridge,
            "--node-name", self.node_name,
            "--service-cidr", self.service_cidr,
            "--service-interface", self.service_interface,
            "--http-port", str(self.http_port),
            "--https-port", str(self.https_port),
            "--console-listen", f"127.0.0.1:{self.console_port}",
        ]

    def start(self, timeout=60):
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.proc = subprocess.Popen(self.args(), stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bosun exited with {self.proc.returncode}:\n{self.tail_log()}")
            if os.path.exists(self.kubeconfig) and self.ready():
                self.wait_node_ready(deadline)
                return self
            time.sleep(0.1)
        raise RuntimeError(f"bosun did not become ready:\n{self.tail_log()}")

    def ready(self):
        ctx = ssl.create_default_context(cafile=os.path.join(self.data_dir, "pki", "ca.crt"))
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.api_port}/readyz",
            headers={"Authorization": f"Bearer {self.token()}"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_node_ready(self, deadline):
        while time.time() < deadline:
            r = self.kubectl("get", "node", self.node_name, "-o",
                             "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            if r.returncode == 0 and r.stdout.strip() == "True":
                return
            time.sleep(0.2)
        raise RuntimeError(f"node never became Ready:\n{self.tail_log()}")

    def token(self):
        with open(os.path.join(self.data_dir, "pki", "token")) as f:
            return f.read().strip()

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def restart(self):
        self.kill(signal.SIGKILL)
        return self.start()

    def kubectl(self, *args, check=True, input=None, timeout=120, binary="kubectl"):
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        r = subprocess.run([binary, *args], capture_output=True, text=True, env=env,
                           input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def cli(self, *args, check=True, input=None, timeout=120):
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        r = subprocess.run([bosun_bin(), *args], capture_output=True, text=True, env=env,
                           input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"bosun {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def tail_log(self, n=60):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """Stops bosun and removes every pod process, namespace and the bridge."""
        try:
            # Delete workloads first so the agent stops their processes gracefully.
            if self.proc and self.proc.poll() is None:
                self.kubectl("delete", "deployments,replicasets,pods", "--all", "--all-namespaces",
                             "--wait=true", "--timeout=60s", check=False, timeout=90)
        finally:
            self.kill(signal.SIGTERM)
            cleanup_host(self)
            shutil.rmtree(self.data_dir, ignore_errors=True)


def cleanup_host(b):
    """Stops every pod of the cluster's node and removes its pod networks and bridge."""
    subprocess.run([bosun_bin(), "reset", "--data-dir", b.data_dir, "--bridge", b.bridge,
                    "--node-name", b.node_name, "--pod-cidr", b.pod_cidr,
                    "--service-interface", b.service_interface],
                   capture_output=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def cluster(request):
    b = Bosun(request.module.__name__.split(".")[-1].replace("test_", "")[:10].replace("_", "-").strip("-"))
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


def wait_for(fn, timeout=60, interval=0.2, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except AssertionError as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "third_party_files: needs third-party files the repository does not ship"
    )
