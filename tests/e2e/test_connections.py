"""Connections that are never used cannot exhaust the API server or the agent's port:
idle and half-open connections time out, connections are capped per client IP and
overall (unauthenticated ones make room), and the bearer scheme is matched in any case."""

import os
import resource
import select
import socket
import ssl
import subprocess
import time

import pytest

from conftest import Bosun


class LowFdBosun(Bosun):
    """bosun with the common default of 1024 open files, so a flood can reach the limit."""

    def args(self):
        return ["prlimit", "--nofile=1024:1024", "--"] + super().args()


@pytest.fixture(scope="module")
def lowfd(request):
    b = LowFdBosun("conns")
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


def tls_context(b):
    ctx = ssl.create_default_context(cafile=os.path.join(b.data_dir, "pki", "ca.crt"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def agent_addr(b):
    ip = b.kubectl("get", "node", b.node_name, "-o",
                   "jsonpath={.status.addresses[?(@.type=='InternalIP')].address}").stdout.strip()
    return ip or "127.0.0.1", b.kubelet_port


def test_idle_connections_do_not_lock_out_clients(lowfd):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4500:
        pytest.skip("this process cannot open the 2,000+ sockets the test needs")
    held = []
    try:
        ctx = tls_context(lowfd)
        # Half of them finish the TLS handshake and then say nothing (with no
        # timeout after the handshake, these would be held forever) ...
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", lowfd.api_port), timeout=10)
            try:
                held.append(ctx.wrap_socket(s, server_hostname="127.0.0.1"))
            except (ssl.SSLError, OSError):
                s.close()
        # ... the other half never finish it: a TLS record header and then silence.
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", lowfd.api_port), timeout=10)
            s.sendall(b"\x16\x03\x01")
            held.append(s)
        assert len(held) > 1500
        # A real client from the same address still gets through at once.
        r = lowfd.kubectl("get", "pods", "-A", "--request-timeout=20s", timeout=60)
        assert "No resources found" in (r.stdout + r.stderr) or r.stdout.strip()
        r = lowfd.kubectl("get", "node", lowfd.node_name, "--request-timeout=20s", timeout=60)
        assert lowfd.node_name in r.stdout
    finally:
        for s in held:
            s.close()


def closed_by_peer(sock, wait):
    """True when the peer closes `sock` (or resets it) within `wait` seconds."""
    r, _, _ = select.select([sock], [], [], wait)
    if not r:
        return False
    try:
        return sock.recv(4096) == b""
    except (ssl.SSLError, ConnectionError, OSError):
        return True


@pytest.mark.parametrize("port_of", ["api", "agent"])
def test_slowloris_is_cut_off(lowfd, port_of):
    host, port = ("127.0.0.1", lowfd.api_port) if port_of == "api" else agent_addr(lowfd)
    ctx = tls_context(lowfd)
    if port_of == "agent":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10),
                        server_hostname=host)
    request = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n"
               b"X-Padding: " + b"a" * 60 + b"\r\n\r\n")
    start = time.monotonic()
    closed = False
    # One byte every half second: the whole header would take ~50 s.
    for i in range(len(request) - 2):
        try:
            s.sendall(request[i:i + 1])
        except (ssl.SSLError, OSError):
            closed = True
            break
        if closed_by_peer(s, 0.5):
            closed = True
            break
    elapsed = time.monotonic() - start
    s.close()
    assert closed, "the server kept a connection whose headers never finished"
    # Cut off by the 10 s header timeout (with room for a loaded machine), long before
    # the request would have been complete.
    print("slowloris closed after", elapsed)
    assert elapsed < 25, elapsed


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
def test_idle_tls_connection_is_closed(lowfd, alpn):
    ctx = tls_context(lowfd)
    ctx.set_alpn_protocols([alpn])
    s = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", lowfd.api_port), timeout=10),
        server_hostname="127.0.0.1")
    try:
        # Nothing sent after the handshake: closed by the 10 s first-request timeout.
        assert s.selected_alpn_protocol() == alpn
        assert closed_by_peer(s, 25), "an idle connection was kept open"
    finally:
        s.close()


def curl(url, token, *extra):
    return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           "-H", f"Authorization: {token}", *extra, url],
                          capture_output=True, text=True, timeout=30)


def test_bearer_scheme_in_any_case(lowfd):
    ca = os.path.join(lowfd.data_dir, "pki", "ca.crt")
    api = f"https://127.0.0.1:{lowfd.api_port}/api/v1/namespaces"
    for scheme in ["Bearer", "bearer", "BEARER"]:
        r = curl(api, f"{scheme} {lowfd.token()}", "--cacert", ca)
        assert r.stdout == "200", (scheme, r.stdout, r.stderr)
    assert curl(api, "bearer wrong", "--cacert", ca).stdout == "401"
    host, port = agent_addr(lowfd)
    agent = f"https://{host}:{port}/stats/summary"
    # The API server calls agents with the kubelet token, not the admin token.
    with open(os.path.join(lowfd.data_dir, "pki", "kubelet-token")) as f:
        kubelet_token = f.read().strip()
    assert curl(agent, f"bearer {kubelet_token}", "-k").stdout == "200"
    assert curl(agent, "bearer wrong", "-k").stdout == "401"
