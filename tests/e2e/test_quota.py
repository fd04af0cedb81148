"""ResourceQuota and LimitRange admission against a real `bosun up`, with the
messages Kubernetes gives."""

import json

from conftest import wait_for


def pod(name, resources=None):
    c = {"name": "main", "command": ["sleep", "3600"]}
    if resources is not None:
        c["resources"] = resources
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                                "containers": [c]}})


def deployment(name):
    return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                       "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                                "template": {"metadata": {"labels": {"app": name}},
                                             "spec": {"containers": [{"name": "c", "image": "x"}]}}}})


def test_count_quota(cluster):
    cluster.kubectl("create", "namespace", "q-count")
    cluster.kubectl("create", "quota", "counts", "-n", "q-count",
                    "--hard=count/deployments.apps=1,services=1")
    cluster.kubectl("apply", "-n", "q-count", "-f", "-", input=deployment("d1"))
    r = cluster.kubectl("apply", "-n", "q-count", "-f", "-", input=deployment("d2"), check=False)
    assert r.returncode != 0
    assert ('deployments.apps "d2" is forbidden: exceeded quota: counts, requested: '
            'count/deployments.apps=1, used: count/deployments.apps=1, '
            'limited: count/deployments.apps=1') in r.stderr, r.stderr
    assert "(Forbidden)" in r.stderr

    def used():
        q = json.loads(cluster.kubectl("get", "quota", "counts", "-n", "q-count", "-o", "json").stdout)
        return q.get("status", {}).get("used", {}).get("count/deployments.apps") == "1"

    wait_for(used, timeout=20, what="status.used")
    # Deleting frees the quota.
    cluster.kubectl("delete", "deployment", "d1", "-n", "q-count")
    wait_for(lambda: cluster.kubectl("apply", "-n", "q-count", "-f", "-", input=deployment("d2"),
                                     check=False).returncode == 0, timeout=20, what="quota freed")


def test_compute_quota(cluster):
    cluster.kubectl("create", "namespace", "q-compute")
    cluster.kubectl("create", "quota", "compute", "-n", "q-compute",
                    "--hard=requests.cpu=1,limits.memory=1Gi")
    r = cluster.kubectl("apply", "-n", "q-compute", "-f", "-", input=pod("bare"), check=False)
    assert ('pods "bare" is forbidden: failed quota: compute: must specify '
            'limits.memory for: main; requests.cpu for: main') in r.stderr, r.stderr
    ok = {"requests": {"cpu": "500m"}, "limits": {"memory": "256Mi"}}
    cluster.kubectl("apply", "-n", "q-compute", "-f", "-", input=pod("p1", ok))
    big = {"requests": {"cpu": "600m"}, "limits": {"memory": "256Mi"}}
    r = cluster.kubectl("apply", "-n", "q-compute", "-f", "-", input=pod("p2", big), check=False)
    assert ('pods "p2" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, '
            'used: requests.cpu=500m, limited: requests.cpu=1') in r.stderr, r.stderr

    def status():
        q = json.loads(cluster.kubectl("get", "quota", "compute", "-n", "q-compute", "-o", "json").stdout)
        return q.get("status", {}).get("used") == {"limits.memory": "256Mi", "requests.cpu": "500m"} \
            and q["status"]["hard"] == {"limits.memory": "1Gi", "requests.cpu": "1"}

    wait_for(status, timeout=20, what="quota status")


def test_limit_range_defaults_and_bounds(cluster):
    cluster.kubectl("create", "namespace", "q-limits")
    cluster.kubectl("apply", "-n", "q-limits", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "limits"},
        "spec": {"limits": [{"type": "Container",
                             "default": {"cpu": "200m", "memory": "64Mi"},
                             "defaultRequest": {"cpu": "100m"},
                             "max": {"memory": "128Mi"}, "min": {"cpu": "50m"}}]}}))
    cluster.kubectl("apply", "-n", "q-limits", "-f", "-", input=pod("defaulted"))
    got = json.loads(cluster.kubectl("get", "pod", "defaulted", "-n", "q-limits", "-o", "json").stdout)
    res = got["spec"]["containers"][0]["resources"]
    assert res == {"limits": {"cpu": "200m", "memory": "64Mi"},
                   "requests": {"cpu": "100m", "memory": "64Mi"}}, res
    r = cluster.kubectl("apply", "-n", "q-limits", "-f", "-", check=False,
                        input=pod("fat", {"limits": {"memory": "256Mi"}}))
    assert ('pods "fat" is forbidden: maximum memory usage per Container is 128Mi, '
            'but limit is 256Mi') in r.stderr, r.stderr
    r = cluster.kubectl("apply", "-n", "q-limits", "-f", "-", check=False,
                        input=pod("thin", {"requests": {"cpu": "10m"}}))
    assert "minimum cpu usage per Container is 50m, but request is 10m" in r.stderr, r.stderr


def test_concurrent_creates_do_not_share_the_last_room(cluster):
    """Kubernetes reserves an object's usage in the quota's status in admission, before the
    write: of creates that race for the last room, exactly one gets it."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    for rnd in range(4):
        ns = f"q-race-{rnd}"
        cluster.kubectl("create", "namespace", ns)
        cluster.kubectl("create", "quota", "one", "-n", ns, "--hard=count/secrets=1,cpu=1")

        def create(i, ns=ns):
            try:
                api.create_namespaced_secret(ns, {"metadata": {"name": f"s{i}"},
                                                  "stringData": {"i": str(i)}})
                return "created"
            except ApiException as e:
                assert e.status == 403 and "exceeded quota: one" in e.body, e.body
                return "refused"

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(create, range(8)))
        assert got.count("created") == 1, (rnd, got)
        names = [c.metadata.name for c in api.list_namespaced_secret(ns).items]
        assert len(names) == 1, names

        def used(ns=ns):
            q = api.read_namespaced_resource_quota("one", ns)
            return (q.status.used or {}).get("count/secrets") == "1"

        wait_for(used, timeout=20, what="status.used after the race")
    # Compute resources too: two pods of 600m under 1 CPU.
    cluster.kubectl("create", "namespace", "q-race-cpu")
    cluster.kubectl("create", "quota", "cpu", "-n", "q-race-cpu", "--hard=requests.cpu=1")

    def create_pod(i):
        body = json.loads(pod(f"p{i}", {"requests": {"cpu": "600m"}}))
        try:
            api.create_namespaced_pod("q-race-cpu", body)
            return "created"
        except ApiException as e:
            assert e.status == 403 and "exceeded quota: cpu" in e.body, e.body
            return "refused"

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(create_pod, range(6)))
    assert got.count("created") == 1, got
