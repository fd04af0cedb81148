"""Pods on two hosts reach each other through the VXLAN backend (`--flannel-backend vxlan`)."""

import json
import os

import pytest

from conftest import wait_for
from multihost import MultiHost
from test_multihost import PROBER, pinned_pod, ready_pods, web_deployment


@pytest.fixture(scope="module")
def hosts(request):
    if os.geteuid() != 0:
        pytest.skip("multi-host tests need root: each host is a network namespace")
    mh = MultiHost(2, backend="vxlan")
    try:
        mh.start()
    except Exception:
        print(mh.logs())
        mh.stop()
        raise
    yield mh
    if request.session.testsfailed:
        print(mh.logs())
    mh.stop()


def test_pods_reach_each_other_through_vxlan(hosts):
    a, b = hosts.hosts
    # Routes to the other node's pods go through the VXLAN device, not via its address.
    node_b = json.loads(hosts.kubectl("get", "node", b.node_name, "-o", "json").stdout)
    assert node_b["metadata"]["annotations"].get("bosun.dev/vtep-mac"), node_b["metadata"]
    cidr_b = node_b["spec"]["podCIDR"]
    route = wait_for(lambda: a.exec("ip", "route", "show", cidr_b).stdout.strip(),
                     what="route to the other node's pods")
    assert "dev bosun-vxlan" in route, route

    hosts.kubectl("apply", "-f", "-", input=web_deployment("vx", 2))
    hosts.kubectl("rollout", "status", "deploy/vx", "--timeout=120s")
    pods = ready_pods(hosts, "vx")
    assert {p["spec"]["nodeName"] for p in pods} == {a.node_name, b.node_name}
    remote = next(p for p in pods if p["spec"]["nodeName"] == b.node_name)
    url = f"http://{remote['status']['podIP']}:8080/"
    hosts.kubectl("apply", "-f", "-", input=pinned_pod("vxprober", a.node_name,
                                                       ["python3", "-c", PROBER, url]))
    wait_for(lambda: f"{url} {remote['metadata']['name']}" in hosts.kubectl(
        "logs", "vxprober", check=False).stdout, timeout=90, what="an answer through VXLAN")
