"""`kubectl debug` with ephemeral containers, with the oldest and newest kubectl installed:
an interactive shell (`-it`) in a process pod and in a Docker pod, sharing the target
container's processes (`--target`), attached through a real terminal; a non-interactive
debug container whose output `kubectl logs` shows; the `ephemeralcontainers` subresource's
rules (only additions)."""

import json
import os
import pty
import select
import subprocess
import time

import pytest

from conftest import wait_for
from test_streaming import (KUBECTL, VERSIONS, apply, docker_image, kubectl_bin,  # noqa: F401
                            process_pod, wait_running)


@pytest.fixture(scope="module")
def dproc(cluster):
    apply(cluster, process_pod("dproc", ["sh", "-c", "exec sleep 3600"]))
    wait_running(cluster, "dproc")
    return "dproc"


@pytest.fixture(scope="module")
def ddock(cluster, docker_image):  # noqa: F811
    apply(cluster, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ddock"},
        "spec": {"terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "main", "image": docker_image,
                                 "imagePullPolicy": "Never"}]},
    })
    wait_running(cluster, "ddock")
    return "ddock", docker_image


def interactive(cluster, argv, lines, until, timeout=90):
    """Runs kubectl on a pseudo-terminal; once it is attached types `lines`, and returns
    everything it printed when `until` appeared (or it ended)."""
    master, slave = pty.openpty()
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig, TERM="dumb")
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                         start_new_session=True)
    os.close(slave)
    out = b""
    typed = False
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            text = out.decode(errors="replace")
            if not typed and "If you don't see a command prompt" in text:
                time.sleep(1)
                for line in lines:
                    os.write(master, line.encode() + b"\r")
                    time.sleep(0.3)
                typed = True
            if until in text:
                break
            if p.poll() is not None and not r:
                break
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        os.close(master)
    return out.decode(errors="replace")


def ephemeral_status(cluster, pod, name):
    p = json.loads(cluster.kubectl("get", "pod", pod, "-o", "json").stdout)
    for s in p["status"].get("ephemeralContainerStatuses") or []:
        if s["name"] == name:
            return s
    return None


def check_shell(cluster, v, pod, image, ps_shows):
    name = f"dbg{v.replace('.', '')}"
    argv = [kubectl_bin(v), "debug", "-it", pod, f"--image={image}", "--target=main",
            "-c", name, "--", "sh"]
    # Every process it sees (busybox and procps `ps` differ): the target's are among them.
    procs = "cat /proc/[0-9]*/cmdline | tr '\\000' ' '; echo"
    out = interactive(cluster, argv, ["echo marker-$((6*7))", procs, "exit 3"], "marker-42\r\n")
    assert "marker-42" in out, out
    spec = json.loads(cluster.kubectl("get", "pod", pod, "-o", "json").stdout)["spec"]
    ec = [c for c in spec["ephemeralContainers"] if c["name"] == name][0]
    assert ec["targetContainerName"] == "main" and ec["stdin"] and ec["tty"], ec

    def terminated():
        s = ephemeral_status(cluster, pod, name)
        return s if s and "terminated" in s["state"] else None

    # The shell saw the target's processes and ended with its exit code.
    s = wait_for(terminated, timeout=60, what=f"ephemeral container {name} terminated")
    log = cluster.kubectl("logs", pod, "-c", name).stdout
    assert s["state"]["terminated"]["exitCode"] == 3, (json.dumps(s), log, out)
    assert ps_shows in log, log


@pytest.mark.parametrize("v", VERSIONS)
def test_debug_shell_in_a_process_pod(cluster, dproc, v):
    check_shell(cluster, v, dproc, "busybox", "sleep 3600")


@pytest.mark.parametrize("v", VERSIONS)
def test_debug_shell_in_a_docker_pod(cluster, ddock, v):
    pod, image = ddock
    check_shell(cluster, v, pod, image, "httpd")


def test_debug_command_runs_without_a_terminal(cluster, dproc):
    k = kubectl_bin(VERSIONS[-1])
    cluster.kubectl("debug", dproc, "--image=busybox", "-c", "once", "--",
                    "sh", "-c", "echo from-debug; hostname", binary=k)

    def done():
        s = ephemeral_status(cluster, dproc, "once")
        return s if s and "terminated" in s["state"] else None

    s = wait_for(done, timeout=60, what="the debug command ended")
    assert s["state"]["terminated"]["exitCode"] == 0 and s["state"]["terminated"]["reason"] == "Completed"
    log = cluster.kubectl("logs", dproc, "-c", "once").stdout.split()
    assert log == ["from-debug", "dproc"], log


def test_ephemeral_containers_subresource_only_adds(cluster, dproc):
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    add = {"spec": {"ephemeralContainers": [{"name": "quick", "image": "busybox",
                                             "command": ["true"]}]}}
    pod = api.patch_namespaced_pod_ephemeralcontainers(dproc, "default", add)
    assert "quick" in [c.name for c in pod.spec.ephemeral_containers], pod.spec
    pod = api.read_namespaced_pod_ephemeralcontainers(dproc, "default")
    # Changing or removing an existing one, or reusing a container's name, is refused.
    body = {"spec": {"ephemeralContainers": []}}
    with pytest.raises(ApiException) as e:
        api.replace_namespaced_pod_ephemeralcontainers(
            dproc, "default", {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": dproc},
                               "spec": dict(api.api_client.sanitize_for_serialization(pod.spec),
                                            **body["spec"])})
    assert e.value.status == 422 and "may not be removed" in e.value.body, e.value.body
    dup = {"spec": {"ephemeralContainers": [{"name": "main", "image": "busybox"}]}}
    with pytest.raises(ApiException) as e:
        api.patch_namespaced_pod_ephemeralcontainers(dproc, "default", dup)
    assert e.value.status == 422 and "spec.ephemeralContainers" in e.value.body, e.value.body
    # Through the pod itself ephemeral containers cannot be added.
    r = cluster.kubectl("patch", "pod", dproc, "--type=strategic", "-p",
                        json.dumps({"spec": {"ephemeralContainers": [
                            {"name": "sneaky", "image": "busybox"}]}}), check=False)
    assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr
