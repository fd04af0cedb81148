"""The web console driven in headless Chromium (Debian's chromium + chromium-driver, Python
selenium): sign-in with a token and with an uploaded kubeconfig, a wrong token refused,
a Deployment scaled and rolled back through the page, live logs arriving, a node chart with
points, RBAC's 403 shown to a user who may not scale, and CSRF protection of actions.

Screenshots of the main pages go to $BOSUN_ARTIFACTS/console (default
tests/e2e/artifacts/console); docs/screenshots holds a committed set.
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import REPO, Bosun, wait_for

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = os.path.join(os.environ.get("BOSUN_ARTIFACTS", os.path.join(REPO, "tests", "e2e", "artifacts")),
                         "console")

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromium-driver are not installed")

TICKER = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "annotations": {"kubernetes.io/change-cause": "first"}},
    "spec": {
        "replicas": 1, "revisionHistoryLimit": 5,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "command": [
                         "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]}]},
        },
    },
}

SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}

# May read workloads, events and logs in "default", but not scale or patch anything.
VIEWER = [
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "viewer", "namespace": "default"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
     "metadata": {"name": "viewer", "namespace": "default"},
     "rules": [{"apiGroups": ["", "apps"],
                "resources": ["deployments", "replicasets", "pods", "pods/log", "events", "services"],
                "verbs": ["get", "list", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": "viewer", "namespace": "default"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
     "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": "default"}]},
]


class ConsoleBosun(Bosun):
    def args(self):
        # Scrape every second so the charts have points within the test.
        return super().args() + ["--metrics-scrape-interval", "1s"]


@pytest.fixture(scope="module")
def cluster(request):
    b = ConsoleBosun("console")
    b.start()
    yield b
    if request.session.testsfailed:
        print(f"--- bosun log ({b.name}) ---\n{b.tail_log(200)}")
    b.stop()


@pytest.fixture(scope="module")
def browser():
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900"]:
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.implicitly_wait(0)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def url(cluster):
    return f"http://127.0.0.1:{cluster.console_port}"


def load(d, url):
    """Opens url; again when Chromium aborted the load because the host's network changed
    (pods coming and going add and remove interfaces: ERR_NETWORK_CHANGED)."""
    for _ in range(5):
        d.get(url)
        if "Your connection was interrupted" not in d.page_source:
            return
        time.sleep(1)
    raise AssertionError(f"could not load {url}")


def shot(d, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    d.save_screenshot(os.path.join(ARTIFACTS, f"{name}.png"))


def text_of(d, css):
    # Read in one script call: live updates may replace the element between two calls.
    return d.execute_script(
        "var e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : '';", css)


def sign_in_token(d, url, token):
    load(d, url + "/login")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.ID, "signin").click()


def sign_out(d, url):
    for _ in range(3):  # again if the host's network changed under the request
        load(d, url + "/nodes")
        d.find_element(By.CSS_SELECTOR, "header form.who button").click()
        wait_for(lambda: "/login" in d.current_url or "Your connection was interrupted" in d.page_source,
                 timeout=30, what=f"the login page: {d.current_url} {d.page_source[:2000]}")
        if "/login" in d.current_url:
            break
    assert d.get_cookie("bosun_console") is None
    load(d, url + "/login")


def replicas(cluster):
    return int(cluster.kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout)


def submitted_error(d, submit):
    """Runs submit (which posts a form) and returns the page's #error text once the answer
    has arrived: the click can return before the next page is loaded, and a load Chromium
    aborted because the host's network changed is sent again."""
    for _ in range(3):
        submit()
        wait_for(lambda: text_of(d, "#error") or "Your connection was interrupted" in d.page_source,
                 timeout=30, what=f"the error in {d.current_url}")
        if text_of(d, "#error"):
            break
    return text_of(d, "#error")


def test_wrong_token_is_refused(cluster, browser, url):
    err = submitted_error(browser, lambda: sign_in_token(browser, url, "not-a-valid-token"))
    assert "the API server refused these credentials" in err, err
    assert browser.find_elements(By.ID, "login"), "still on the sign-in form"
    # No session: pages send the browser back to the sign-in form.
    load(browser, url + "/ns/default")
    assert "/login?next=%2Fns%2Fdefault" in browser.current_url
    shot(browser, "login")


def test_sign_in_and_overview(cluster, browser, url):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(TICKER))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(SERVICE))
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=90s")
    sign_in_token(browser, url, cluster.token())
    wait_for(lambda: browser.find_elements(By.ID, "namespaces"), timeout=10, what="the overview")
    assert text_of(browser, "#user"), "the API's name for the user is shown"
    rows = text_of(browser, "#namespaces")
    assert "default" in rows, rows
    cookie = browser.get_cookie("bosun_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    shot(browser, "overview")


def test_deployment_scale_and_live_progress(cluster, browser, url):
    load(browser, url + "/ns/default")
    shot(browser, "namespace")
    browser.find_element(By.LINK_TEXT, "web").click()
    wait_for(lambda: browser.find_elements(By.ID, "scale-form"), timeout=10, what="the deployment page")
    assert "/ns/default/deployments/web" in browser.current_url
    assert text_of(browser, "#replicas") == "1"
    field = browser.find_element(By.ID, "scale-replicas")
    field.clear()
    field.send_keys("3")
    browser.find_element(By.ID, "scale").click()
    wait_for(lambda: "scaled to 3" in text_of(browser, "#flash"), timeout=10, what="the scale message")
    assert replicas(cluster) == 3
    # The page follows the rollout over server-sent events, without a reload.
    marker = browser.execute_script("document.body.dataset.marker = 'same-page'; return 1;")
    assert marker == 1
    wait_for(lambda: text_of(browser, "#ready") == "3", timeout=90, what="3 ready replicas on the page")
    assert browser.execute_script("return document.body.dataset.marker") == "same-page"
    assert "successfully rolled out" in text_of(browser, "#rollout")
    shot(browser, "deployment")


def test_undo_rollout(cluster, browser, url):
    cluster.kubectl("set", "env", "deploy/web", "COLOR=blue")
    # As kubectl's --record did: the new revision's ReplicaSet takes the Deployment's annotations.
    cluster.kubectl("annotate", "deploy/web", "kubernetes.io/change-cause=set COLOR=blue", "--overwrite")
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=90s")
    wait_for(lambda: "set COLOR=blue" in cluster.kubectl(
        "get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.annotations}").stdout,
        timeout=30, what="the change-cause on the new ReplicaSet")
    load(browser, url + "/ns/default/deployments/web")
    history = text_of(browser, "#history")
    assert "set COLOR=blue" in history and "first" in history, history
    assert text_of(browser, "#revision") == "2"
    browser.find_element(By.ID, "undo").click()
    wait_for(lambda: "rolled back to revision 1" in text_of(browser, "#flash"), timeout=10,
             what="the rollback message")
    env = cluster.kubectl("get", "deploy", "web", "-o",
                          "jsonpath={.spec.template.spec.containers[0].env}").stdout
    assert "COLOR" not in env, env
    cluster.kubectl("rollout", "status", "deploy/web", "--timeout=90s")
    wait_for(lambda: cluster.kubectl("get", "deploy", "web", "-o",
                                     "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
                                     ).stdout == "3", timeout=30, what="revision 3")
    # As kubectl: revision 1 became revision 3, and its change-cause came back.
    wait_for(lambda: text_of(browser, "#revision") == "3", timeout=30, what="revision 3 on the page")
    assert replicas(cluster) == 3


def test_live_logs_appear(cluster, browser, url):
    pod = cluster.kubectl("get", "pods", "-l", "app=web", "--field-selector=status.phase=Running",
                          "-o", "jsonpath={.items[0].metadata.name}").stdout
    load(browser, url + "/ns/default/deployments/web")
    browser.find_element(By.LINK_TEXT, pod).click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "pre.logs"), timeout=10, what="the pod page")
    assert text_of(browser, "#restarts") == "0"

    def ticks():
        return [int(n) for n in re.findall(r"tick (\d+)", text_of(browser, "pre.logs"))]
    first = wait_for(ticks, timeout=30, what="log lines")
    # New lines keep arriving on the open page.
    wait_for(lambda: max(ticks()) >= max(first) + 2, timeout=30, what="new log lines")
    assert "Started" in text_of(browser, "#events")
    shot(browser, "pod")


def test_node_chart_has_points(cluster, browser, url):
    def points():
        load(browser, url + "/nodes")
        svgs = browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")
        if len(svgs) < 2:
            return None
        n = [int(s.get_attribute("data-points")) for s in svgs]
        return n if all(x >= 2 for x in n) else None
    wait_for(points, timeout=90, interval=2, what="CPU and memory charts with points")
    line = browser.find_element(By.CSS_SELECTOR, "figure.chart polyline").get_attribute("points")
    assert len(line.split()) >= 2, line
    assert cluster.node_name in text_of(browser, "#nodes")
    assert cluster.node_name in text_of(browser, "figure.chart .legend")
    shot(browser, "nodes")


def test_service_traces_and_alerts_pages(cluster, browser, url):
    load(browser, url + "/ns/default/services/web")
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "figure.chart figcaption")]
    assert titles == ["Request rate", "Error rate (5xx share)", "Latency"], titles
    shot(browser, "service")
    load(browser, url + "/traces")
    assert browser.find_elements(By.TAG_NAME, "h1")[0].text == "Recent traces"
    shot(browser, "traces")
    load(browser, url + "/alerts")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Alerts"
    assert browser.find_elements(By.ID, "alerts") or browser.find_elements(By.ID, "no-alerts") \
        or "not served" in text_of(browser, "main")
    shot(browser, "alerts")


def test_page_weight_is_small(cluster, browser, url):
    sid = browser.get_cookie("bosun_console")["value"]
    total = 0
    for path in ["/ns/default/deployments/web", "/static/console.js", "/static/console.css"]:
        req = urllib.request.Request(url + path, headers={"Cookie": f"bosun_console={sid}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            total += len(r.read())
    print(f"deployment page with script and style: {total} bytes")
    assert total < 64 * 1024, total


def test_actions_need_the_csrf_token(cluster, browser, url):
    sid = browser.get_cookie("bosun_console")["value"]
    before = replicas(cluster)
    data = urllib.parse.urlencode({"replicas": "7", "csrf": "forged"}).encode()
    req = urllib.request.Request(url + "/ns/default/deployments/web/scale", data=data,
                                 headers={"Cookie": f"bosun_console={sid}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403 and b"csrf" in e.value.read()
    assert replicas(cluster) == before


def test_forbidden_scale_shows_the_apis_403(cluster, browser, url, tmp_path):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": VIEWER}))
    token = cluster.kubectl("create", "token", "viewer", "-n", "default").stdout.strip()
    kubeconfig = tmp_path / "viewer.yaml"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: viewer\n"
        f"clusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:{cluster.api_port}'}}\n"
        "contexts:\n- name: viewer\n  context: {cluster: c, user: viewer, namespace: default}\n"
        f"users:\n- name: viewer\n  user: {{token: {token}}}\n")
    sign_out(browser, url)
    browser.find_element(By.ID, "kubeconfig-file").send_keys(str(kubeconfig))
    wait_for(lambda: "current-context" in browser.find_element(By.ID, "kubeconfig").get_attribute("value"),
             timeout=10, what="the kubeconfig read into the form")
    browser.find_element(By.ID, "signin").click()
    wait_for(lambda: text_of(browser, "#user") == "system:serviceaccount:default:viewer", timeout=10,
             what="signed in as the viewer")
    # Listing namespaces is not allowed for this user: the API's answer is shown.
    assert "forbidden" in text_of(browser, "main"), text_of(browser, "main")
    before = replicas(cluster)

    def scale():
        load(browser, url + "/ns/default/deployments/web")
        field = browser.find_element(By.ID, "scale-replicas")
        field.clear()
        field.send_keys(str(before + 2))
        browser.find_element(By.ID, "scale").click()

    err = submitted_error(browser, scale)
    assert err.startswith("403 Forbidden"), err
    assert 'cannot patch resource "deployments/scale"' in err, err
    assert replicas(cluster) == before
    shot(browser, "forbidden")
