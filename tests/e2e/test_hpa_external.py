"""External metrics: `external.metrics.k8s.io/v1beta1` serves series of bosun's built-in metrics
(here a pod's own `/metrics`, scraped because it is annotated prometheus.io/scrape) by name and
label selector, and HorizontalPodAutoscalers with `type: External` scale on them, with a Value
and an AverageValue target; a metric that does not exist is reported in the HPA's conditions."""

import json
import urllib.parse

import pytest

from conftest import Bosun, wait_for

# orders has 30 waiting jobs, mail 5 (constant), in namespace default.
QUEUE = r'''
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = ("# TYPE queue_depth gauge\n"
             'queue_depth{queue="orders"} 30\n'
             'queue_depth{queue="mail"} 5\n').encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''


class ExtBosun(Bosun):
    def args(self):
        return super().args() + ["--horizontal-pod-autoscaler-sync-period", "2s",
                                 "--metrics-scrape-interval", "1s"]


@pytest.fixture(scope="module")
def cluster(request):
    b = ExtBosun("hpa-ext")
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def worker(name):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"runtimeClassName": "process",
                                           "terminationGracePeriodSeconds": 1,
                                           "containers": [{"name": "w",
                                                           "command": ["sleep", "3600"]}]}}}}


def hpa(name, metric, target, selector=None):
    m = {"name": metric}
    if selector:
        m["selector"] = {"matchLabels": selector}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": 1, "maxReplicas": 6,
                     "metrics": [{"type": "External", "external": {"metric": m, "target": target}}]}}


def get_json(cluster, *args):
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def raw(cluster, path):
    return json.loads(cluster.kubectl("get", "--raw", path).stdout)


@pytest.fixture(scope="module")
def queue(cluster):
    apply(cluster, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "queue", "annotations": {
            "prometheus.io/scrape": "true", "prometheus.io/port": "8080"}},
        "spec": {"runtimeClassName": "process",
                 "containers": [{"name": "q", "command": ["python3", "-c", QUEUE],
                                 "ports": [{"containerPort": 8080}],
                                 "readinessProbe": {"tcpSocket": {"port": 8080}}}]}})
    base = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth"
    wait_for(lambda: len(raw(cluster, base)["items"]) == 2, timeout=90, what="queue_depth scraped")
    return base


def test_external_metrics_api(cluster, queue):
    groups = raw(cluster, "/apis")["groups"]
    assert any(g["name"] == "external.metrics.k8s.io" for g in groups), groups
    sel = urllib.parse.quote("queue=orders")
    out = raw(cluster, f"{queue}?labelSelector={sel}")
    assert out["kind"] == "ExternalMetricValueList", out
    [item] = out["items"]
    assert item["metricName"] == "queue_depth" and item["value"] == "30", item
    assert item["metricLabels"]["queue"] == "orders" and item["metricLabels"]["namespace"] == "default"
    # Another namespace does not see this namespace's series.
    other = raw(cluster, "/apis/external.metrics.k8s.io/v1beta1/namespaces/kube-system/queue_depth")
    assert other["items"] == [], other
    # A bad metric name is a 400 naming it.
    r = cluster.kubectl("get", "--raw",
                        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/1bad", check=False)
    assert r.returncode != 0 and "metricName" in r.stderr, r.stderr


def test_hpa_scales_on_external_value_and_average_value(cluster, queue):
    apply(cluster, worker("byvalue"), worker("byaverage"),
          # 30 orders against 10 per ready pod: 3 replicas.
          hpa("byvalue", "queue_depth", {"type": "Value", "value": "10"}, {"queue": "orders"}),
          # 35 jobs in all queues at 15 per pod: ceil(35 / 15) = 3; orders alone would be 2.
          hpa("byaverage", "queue_depth", {"type": "AverageValue", "averageValue": "15"}))
    wait_for(lambda: get_json(cluster, "deploy", "byvalue")["spec"]["replicas"] == 3,
             timeout=90, what="byvalue at 3")
    wait_for(lambda: get_json(cluster, "deploy", "byaverage")["spec"]["replicas"] == 3,
             timeout=90, what="byaverage at 3")
    h = get_json(cluster, "hpa", "byvalue")
    cur = h["status"]["currentMetrics"][0]
    assert cur["type"] == "External", cur
    assert cur["external"]["metric"]["name"] == "queue_depth"
    assert cur["external"]["current"]["value"] == "30", cur
    active = next(c for c in h["status"]["conditions"] if c["type"] == "ScalingActive")
    assert active["status"] == "True", active
    out = cluster.kubectl("get", "hpa", "byvalue").stdout
    assert "30/10" in out, out


def test_missing_external_metric_is_a_condition(cluster, queue):
    apply(cluster, worker("nometric"),
          hpa("nometric", "no_such_metric", {"type": "Value", "value": "1"}))

    def failed():
        h = get_json(cluster, "hpa", "nometric")
        c = [c for c in h.get("status", {}).get("conditions", []) if c["type"] == "ScalingActive"]
        return c and c[0]["status"] == "False" and c[0]["reason"] == "FailedGetExternalMetric" and c[0]
    c = wait_for(failed, timeout=60, what="FailedGetExternalMetric")
    assert "no_such_metric" in c["message"], c
    assert get_json(cluster, "deploy", "nometric")["spec"]["replicas"] == 1
