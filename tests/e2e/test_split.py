"""`bosun server` plus a `bosun agent --join` process: the control plane and a node apart."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from conftest import Bosun, bosun_bin, free_port, wait_for


def test_agent_joins_a_server_and_runs_pods():
    b = Bosun("split")  # only for its unique names and ports
    agent_dir = tempfile.mkdtemp(prefix="bosun-e2e-agent-")
    logs = open(os.path.join(agent_dir, "log"), "ab")
    server = subprocess.Popen([bosun_bin(), "server", "--data-dir", b.data_dir,
                               "--listen", f"127.0.0.1:{b.api_port}", "--service-cidr", b.service_cidr],
                              stdout=logs, stderr=subprocess.STDOUT)
    node = ["--node-name", b.node_name, "--pod-cidr", b.pod_cidr, "--bridge", b.bridge,
            "--service-interface", b.service_interface]
    agent = None
    try:
        wait_for(lambda: os.path.exists(b.kubeconfig) and b.ready(), what="server ready")
        agent = subprocess.Popen([bosun_bin(), "agent", "--join", f"https://127.0.0.1:{b.api_port}",
                                  "--pki-dir", os.path.join(b.data_dir, "pki"), "--data-dir", agent_dir,
                                  "--kubelet-port", str(free_port()), "--http-port", str(b.http_port),
                                  "--https-port", str(b.https_port), *node],
                                 stdout=logs, stderr=subprocess.STDOUT)
        b.wait_node_ready(time.time() + 60)
        pod = ('{"spec":{"runtimeClassName":"process","containers":[{"name":"c",'
               '"command":["sh","-c","echo joined-node-says-hi; sleep 300"]}]}}')
        b.kubectl("run", "hello", "--image=unused", f"--overrides={pod}")
        wait_for(lambda: "joined-node-says-hi" in b.kubectl("logs", "hello", check=False).stdout,
                 what="log of a pod on the joined node")
        wide = b.kubectl("get", "pod", "hello", "-o", "wide").stdout
        assert b.node_name in wide and "Running" in wide, wide
        b.kubectl("delete", "pod", "hello", "--wait=true", "--timeout=60s")
    finally:
        for p in (agent, server):
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
        subprocess.run([bosun_bin(), "reset", "--data-dir", agent_dir, "--pki-dir",
                        os.path.join(b.data_dir, "pki"), *node], capture_output=True, timeout=120)
        shutil.rmtree(agent_dir, ignore_errors=True)
        shutil.rmtree(b.data_dir, ignore_errors=True)
