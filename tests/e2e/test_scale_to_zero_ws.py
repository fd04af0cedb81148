"""Scale to zero, continued: a WebSocket handshake that arrives while a Deployment is at zero is
held by the node proxy and by the gateway, then upgraded end to end (a real WebSocket server in
the pod, a raw-socket RFC 6455 client here); activity Leases expire (a dead node's Lease that
reports waiting requests neither keeps a Deployment up nor wakes it) and are deleted once their
node is gone, while the live node's Leases are renewed."""

import base64
import datetime
import hashlib
import json
import os
import socket
import sys
import time

from conftest import wait_for
from test_scale_to_zero import apply, concurrently, get, pod_count, replicas, service

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Starts slowly, then answers WebSocket handshakes on :8080 and echoes every text message
# back prefixed with the pod name; plain requests get the pod name.
WS_SERVER = r'''
import base64, hashlib, os, socket, struct, threading, time
time.sleep(0.5)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NAME = os.environ.get("HOSTNAME", "?").encode()
def exact(c, buf, n):
    while len(buf) < n:
        chunk = c.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    return buf[:n], buf[n:]
def frame(opcode, payload):
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n)
    return head + payload
def handle(c):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                return
            data += chunk
        head, buf = data.split(b"\r\n\r\n", 1)
        hdrs = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            hdrs[k.strip().lower()] = v.strip()
        key = hdrs.get(b"sec-websocket-key")
        if not key or hdrs.get(b"upgrade", b"").lower() != b"websocket":
            body = NAME + b"\n"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            h, buf = exact(c, buf, 2)
            opcode, n = h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                ext, buf = exact(c, buf, 2)
                n = struct.unpack(">H", ext)[0]
            mask, buf = exact(c, buf, 4)
            payload, buf = exact(c, buf, n)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                c.sendall(frame(8, payload))
                return
            if opcode == 1:
                c.sendall(frame(1, NAME + b": " + payload))
    except (EOFError, OSError):
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 8080))
s.listen(128)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
'''


def ws_deployment(name, replicas_, after):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"bosun.dev/scale-to-zero-after": after}},
        "spec": {
            "replicas": replicas_,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "runtimeClassName": "process",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": name,
                        "command": [sys.executable, "-c", WS_SERVER],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }


def _exact(s, buf, n):
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed after {buf!r}")
        buf += chunk
    return buf[:n], buf[n:]


def _masked(opcode, payload):
    mask = os.urandom(4)
    assert len(payload) < 126
    return (bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def ws_echo(host, port, host_header, message, timeout=60):
    """RFC 6455 handshake and one text message; returns (status, accept_ok, echoed text)."""
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: " + host_header.encode()
                  + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
                  + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return 0, False, data.decode(errors="replace")
            data += chunk
        head, buf = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        if status != 101:
            return status, False, (head + b"\n" + buf).decode(errors="replace")
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in lines[1:])}
        accept_ok = hdrs.get(b"sec-websocket-accept") == base64.b64encode(
            hashlib.sha1(key + GUID).digest())
        s.sendall(_masked(1, message.encode()))
        h, buf = _exact(s, buf, 2)
        assert h[0] & 0x0F == 1, h
        payload, buf = _exact(s, buf, h[1] & 0x7F)
        s.sendall(_masked(8, b"\x03\xe8"))
        h, buf = _exact(s, buf, 2)
        assert h[0] & 0x0F == 8, h
        return status, accept_ok, payload.decode()


def test_websocket_handshake_is_held_while_scaled_to_zero(cluster):
    name = "wsz"
    apply(cluster, ws_deployment(name, 1, "3s"), service(name),
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
           "spec": {"rules": [{"host": "wsz.local", "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}})
    cluster.kubectl("rollout", "status", f"deploy/{name}", "--timeout=120s", timeout=150)
    wait_for(lambda: get(cluster, "svc", name)["metadata"].get("annotations", {})
             .get("bosun.dev/scale-to-zero-target") == name, timeout=30, what="service marked")
    ip = get(cluster, "svc", name)["spec"]["clusterIP"]
    # Upgrades work when the pod is up, on both paths.
    status, accept_ok, text = ws_echo(ip, 80, name, "hi")
    assert (status, accept_ok) == (101, True) and text.endswith(": hi"), (status, text)
    status, accept_ok, text = wait_for(
        lambda: (lambda r: r if r[0] == 101 else None)(
            ws_echo("127.0.0.1", cluster.http_port, "wsz.local", "hi")),
        timeout=30, what="gateway route")
    assert accept_ok and text.endswith(": hi"), text

    wait_for(lambda: replicas(cluster, name) == 0, timeout=40, what="scale to zero")
    wait_for(lambda: pod_count(cluster, name) == 0, timeout=60, what="pods gone")

    # Handshakes at zero, through the node proxy and the gateway: each waits for the pod,
    # gets its 101 from the pod itself and then talks WebSocket with it.
    calls = ([lambda i=i: ws_echo(ip, 80, name, f"proxy {i}") for i in range(3)]
             + [lambda i=i: ws_echo("127.0.0.1", cluster.http_port, "wsz.local", f"gateway {i}")
                for i in range(3)])
    results = concurrently(calls)
    print(f"websocket from zero: {results}")
    for i, r in enumerate(results):
        status, accept_ok, text = r if len(r) == 3 else (r[0], False, r[1])
        assert status == 101 and accept_ok, r
        want = f"proxy {i}" if i < 3 else f"gateway {i - 3}"
        assert text.startswith(f"{name}-") and text.endswith(": " + want), r
    assert replicas(cluster, name) == 1
    cluster.kubectl("delete", f"deploy/{name}", f"svc/{name}", f"ingress/{name}")


def lease(name, services, renew, duration=30):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease",
                         "labels": {"bosun.dev/activity": "true"},
                         "annotations": {"bosun.dev/service-activity": json.dumps(services)}},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": duration,
                     "renewTime": renew.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}


def lease_names(cluster):
    out = json.loads(cluster.kubectl("get", "leases", "-n", "kube-node-lease",
                                     "-l", "bosun.dev/activity=true", "-o", "json").stdout)
    return {i["metadata"]["name"]: i for i in out["items"]}


def test_activity_leases_expire_and_are_collected(cluster):
    name = "leasy"
    node = cluster.node_name
    # A node that died while a request waited there: its Lease, renewed last just now,
    # expires in 20 seconds. Until then the waiting request keeps the Deployment up; after,
    # the Deployment goes to zero (before Leases expired it stayed up for good).
    now = datetime.datetime.now(datetime.timezone.utc)
    expiry = now + datetime.timedelta(seconds=20)
    ghost = lease("bosun-proxy-ghost-node", {f"default/{name}": {"last": 0, "waiting": 1}},
                  now, duration=20)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(ghost))
    apply(cluster, ws_deployment(name, 1, "2s"), service(name))
    cluster.kubectl("rollout", "status", f"deploy/{name}", "--timeout=120s", timeout=150)
    wait_for(lambda: get(cluster, "svc", name)["metadata"].get("annotations", {})
             .get("bosun.dev/scale-to-zero-target") == name, timeout=30, what="service marked")
    # The live node proxy renews its own Lease even when nothing changes.
    own = f"bosun-proxy-{node}"
    first = wait_for(lambda: lease_names(cluster).get(own), timeout=30, what="own lease")
    assert first["spec"]["leaseDurationSeconds"] == 30, first["spec"]
    wait_for(lambda: lease_names(cluster)[own]["spec"]["renewTime"] != first["spec"]["renewTime"],
             timeout=30, what="own lease renewed")

    wait_for(lambda: replicas(cluster, name) == 0, timeout=60, what="scale to zero past expiry")
    changed = get(cluster, "deploy", name)["metadata"]["annotations"]["bosun.dev/scale-to-zero-changed"]
    scaled_at = datetime.datetime.fromisoformat(changed.replace("Z", "+00:00"))
    assert scaled_at >= expiry - datetime.timedelta(milliseconds=100), (changed, expiry)
    wait_for(lambda: pod_count(cluster, name) == 0, timeout=60, what="pods gone")
    # Its node does not exist: the expired Lease is deleted.
    wait_for(lambda: "bosun-proxy-ghost-node" not in lease_names(cluster), timeout=30,
             what="ghost lease deleted")
    # An expired Lease that reports waiting requests does not wake the Deployment either.
    stale = lease("bosun-gateway-ghost2", {f"default/{name}": {"last": 0, "waiting": 3}},
                  now - datetime.timedelta(minutes=5))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(stale))
    time.sleep(3)
    assert replicas(cluster, name) == 0
    wait_for(lambda: "bosun-gateway-ghost2" not in lease_names(cluster), timeout=30,
             what="stale lease deleted")
    # The live node's own Leases stay.
    assert own in lease_names(cluster)
    cluster.kubectl("delete", f"deploy/{name}", f"svc/{name}")
