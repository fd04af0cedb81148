"""Several "machines" on one: each host is a network namespace on a test bridge.

A run gets its own /24 on a bridge of its own in the root namespace (the range is picked at
random among 10.210-10.249 and checked against the routes already there), and each host a
namespace with one address on it. Host 0 runs `bosun up` (server and node); the others run
`bosun agent`. Inside a host namespace every port is private, so the hosts use bosun's
default ports. Everything is removed by PID and by name afterwards.
"""

import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

from conftest import bosun_bin, wait_for


def sh(*args, check=True, timeout=60):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def used_networks():
    out = sh("ip", "-4", "-o", "route", "show", "table", "all", check=False).stdout
    nets = []
    for line in out.splitlines():
        dst = line.split()[0]
        if dst[0].isdigit():
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    return nets


def pick_subnet():
    used = used_networks()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randrange(210, 250)}.{random.randrange(0, 256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free test subnet in 10.210-10.249")


class Host:
    """One machine: a network namespace with an address on the test bridge, a data dir,
    and the bosun process running there."""

    def __init__(self, net, index, tag, server, backend="host-gw"):
        self.backend = backend
        self.net = net
        self.index = index
        self.tag = tag
        self.server = server
        self.ns = f"bh{tag}-{index}"
        self.ip = str(net.network_address + 10 + index)
        self.node_name = f"host-{index}"
        self.bridge = f"bp{tag}{index}"[:15]
        self.service_interface = f"bs{tag}{index}"[:15]
        self.veth = f"bv{tag}{index}"[:15]
        self.data_dir = tempfile.mkdtemp(prefix=f"bosun-mh-{index}-")
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "bosun.log")
        self.up = False

    def create(self, bridge):
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "link", "set", self.veth, "master", bridge, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.ip}/{self.net.prefixlen}", "dev", "eth0")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        self.up = True

    def node_args(self):
        # The gateway stays off :80/:443: a Service port 80 on a cluster IP cannot be bound
        # next to a wildcard listener on the same port.
        return ["--node-name", self.node_name, "--node-ip", self.ip, "--bridge", self.bridge,
                "--service-interface", self.service_interface, "--cpu-manager-policy", "none",
                "--http-port", "8880", "--https-port", "8843", "--flannel-backend", self.backend]

    def run(self, args):
        """Starts `bosun ARGS` inside this host's network namespace (nsenter execs bosun,
        so the PID is bosun's own)."""
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        cmd = ["nsenter", f"--net=/run/netns/{self.ns}", "--", bosun_bin(), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def exec(self, *args, check=True, timeout=60):
        return sh("nsenter", f"--net=/run/netns/{self.ns}", "--", *args, check=check, timeout=timeout)

    def pod_pids(self):
        """PIDs of this host's pod processes: those living in one of its pod namespaces."""
        inodes = set()
        prefix = f"{self.bridge}-"
        for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if name.startswith(prefix):
                try:
                    inodes.add(os.stat(os.path.join("/run/netns", name)).st_ino)
                except OSError:
                    pass
        pids = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if os.stat(f"/proc/{p}/ns/net").st_ino in inodes:
                        pids.append(int(p))
                except OSError:
                    pass
        return pids

    def power_off(self):
        """What pulling the plug looks like from outside: bosun and every pod process die at
        once and the host drops off the network."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid in self.pod_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "-n", self.ns, "link", "set", "eth0", "down", check=False)

    def tail_log(self, n=60):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def destroy(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.up:
            self.exec(bosun_bin(), "reset", "--data-dir", self.data_dir, *self.node_args(),
                      check=False, timeout=120)
        for pid in self.pod_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A host killed without `bosun reset` leaves its pods' namespaces (BRIDGE-UID) behind.
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{self.bridge}-"):
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)



class MultiHost:
    """A cluster of `n` hosts: host 0 is the server (with a node), the rest join it."""

    def __init__(self, n, backend="host-gw"):
        self.tag = f"{os.getpid() % 1000}{random.randrange(0, 100)}"
        self.net = pick_subnet()
        self.bridge = f"bt{self.tag}"[:15]
        self.gateway = str(self.net.network_address + 1)
        self.hosts = [Host(self.net, i, self.tag, server=(i == 0), backend=backend) for i in range(n)]
        self.server = self.hosts[0]
        self.kubeconfig = os.path.join(self.server.data_dir, "kubeconfig")
        self.api_url = f"https://{self.server.ip}:6443"
        self.fwd_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        self.created_bridge = False

    def start(self, timeout=120):
        sh("ip", "link", "add", "name", self.bridge, "type", "bridge")
        self.created_bridge = True
        sh("ip", "addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        # With br_netfilter, frames crossing the test bridge pass the root FORWARD chain, where
        # a DROP policy (Docker sets one) would cut the hosts off from each other.
        sh("iptables", "-w", "-I", *self.fwd_rule, check=False)
        for h in self.hosts:
            h.create(self.bridge)
        s = self.server
        s.run(["up", "--data-dir", s.data_dir, "--listen", "0.0.0.0:6443",
               "--advertise-address", s.ip, *self.server_args(), *s.node_args(),
               ])
        deadline = time.time() + timeout
        wait_for(lambda: self.alive(s) and os.path.exists(os.path.join(s.data_dir, "node-token"))
                 and self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
                 timeout=timeout, what="server ready")
        for h in self.hosts[1:]:
            self.join(h)
        self.wait_nodes_ready(self.hosts, max(10, deadline - time.time()))
        return self

    # Pod ranges exist only inside the host namespaces; any range but the test /24 does.
    CLUSTER_CIDR = "172.30.0.0/16"

    def server_args(self):
        return ["--cluster-cidr", self.CLUSTER_CIDR]

    def node_token(self):
        with open(os.path.join(self.server.data_dir, "node-token")) as f:
            return f.read().strip()

    def join(self, h, extra=()):
        """Starts `bosun agent` on host `h`, joined to the server with the node-token alone."""
        # The last host is also given a server that does not answer, first: it must move on.
        dead = ["--server", f"https://{self.net.network_address + 254}:6443"] \
            if h.index == len(self.hosts) - 1 and h.index > 1 else []
        h.run(["agent", *dead, "--server", self.api_url, "--token", self.node_token(),
               "--data-dir", h.data_dir, *h.node_args(), "--zone", f"zone-{h.index}",
               "--system-reserved", "cpu=250m,memory=64Mi", *extra])

    def alive(self, h):
        if h.proc.poll() is not None:
            raise RuntimeError(f"bosun on {h.ns} exited with {h.proc.returncode}:\n{h.tail_log()}")
        return True

    def wait_nodes_ready(self, hosts, timeout=60):
        def ready():
            for h in hosts:
                self.alive(h)
            out = self.kubectl("get", "nodes", "-o", "json", check=False)
            if out.returncode != 0:
                return False
            ready = {n["metadata"]["name"] for n in json.loads(out.stdout)["items"]
                     if any(c["type"] == "Ready" and c["status"] == "True"
                            for c in n.get("status", {}).get("conditions", []))}
            return all(h.node_name in ready for h in hosts)
        wait_for(ready, timeout=timeout, what="every node Ready")

    def kubectl(self, *args, check=True, input=None, timeout=120):
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        r = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                           input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def cli(self, *args, check=True, timeout=120):
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        r = subprocess.run([bosun_bin(), *args], capture_output=True, text=True, env=env,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"bosun {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def logs(self):
        return "\n".join(f"--- {h.ns} ({h.node_name}) ---\n{h.tail_log(80)}" for h in self.hosts)

    def stop(self):
        # Agents first, the server last: `bosun reset` needs no API, but a clean stop does.
        for h in reversed(self.hosts):
            try:
                h.destroy()
            except Exception as e:  # keep tearing the rest down
                print(f"teardown of {h.ns}: {e}")
        if self.created_bridge:
            sh("ip", "link", "del", self.bridge, check=False)
        sh("iptables", "-w", "-D", *self.fwd_rule, check=False)
