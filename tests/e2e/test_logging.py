"""bosun's own log: RUST_LOG, --log-format json, and clear startup failures."""

import json
import os
import socket
import subprocess

from conftest import Bosun, bosun_bin, wait_for


class JsonBosun(Bosun):
    def args(self):
        return super().args() + ["--log-format", "json"]


def json_lines(path):
    """Every log line that is a JSON object (stdout's plain banner lines are skipped)."""
    out = []
    with open(path, "rb") as f:
        for raw in f.read().decode(errors="replace").splitlines():
            if raw.startswith("{"):
                out.append(json.loads(raw))  # a line that starts like JSON must be JSON
    return out


class CacheBosun(JsonBosun):
    def args(self):
        return super().args() + ["--store-cache-size", "32Mi"]


def test_json_log_has_listen_address_and_pod_starts():
    b = CacheBosun("jsonlog")  # conftest runs it with RUST_LOG=info unless set
    try:
        b.start()
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "logged"},
               "spec": {"runtimeClassName": "process", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "main", "command": ["sleep", "3600"]}]}}
        b.kubectl("apply", "-f", "-", input=json.dumps(pod))

        def started():
            return [l for l in json_lines(b.log_path)
                    if l.get("reason") == "Started" and l.get("pod") == "default/logged"]
        wait_for(started, timeout=60, what="a JSON line for the pod's start")
        lines = json_lines(b.log_path)
        assert all({"timestamp", "level", "target"} <= l.keys() for l in lines), lines[:3]
        listen = [l for l in lines if l.get("message") == "API server listening"]
        assert listen and listen[0]["listen"] == f"127.0.0.1:{b.api_port}", listen
        assert listen[0]["level"] == "INFO" and listen[0]["target"].startswith("bosun_apiserver")
        # --store-cache-size reaches the store (redb's cache) as bytes.
        opened = [l for l in lines if l.get("message") == "store opened"]
        assert opened and opened[0]["cache_bytes"] == 32 << 20, opened
        # Nothing per request at info: the many requests of start-up and kubectl above
        # leave only the API server's few lifecycle lines.
        api_info = [l for l in lines if l["target"].startswith("bosun_apiserver")]
        assert len(api_info) <= 5, api_info
    finally:
        b.stop()


def test_rust_log_filters_and_text_has_no_colour_off_a_terminal():
    b = Bosun("rustlog")
    env_before = os.environ.get("RUST_LOG")
    os.environ["RUST_LOG"] = "warn,bosun_apiserver=info"
    try:
        b.start()
    finally:
        if env_before is None:
            del os.environ["RUST_LOG"]
        else:
            os.environ["RUST_LOG"] = env_before
    try:
        with open(b.log_path, "rb") as f:
            text = f.read().decode(errors="replace")
        line = [l for l in text.splitlines() if "API server listening" in l]
        assert line and " INFO " in line[0] and f"listen=127.0.0.1:{b.api_port}" in line[0], text
        assert "store opened" not in text, "RUST_LOG=warn still logs the store's info lines"
        assert "\x1b[" not in text, "colour codes in a log that is not a terminal"
    finally:
        b.stop()


def start_expecting_failure(b):
    try:
        b.start(timeout=60)
    except RuntimeError:
        pass
    b.proc.wait(timeout=60)


def test_port_in_use_is_a_clear_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    b = Bosun("portuse")
    b.api_port = port
    try:
        start_expecting_failure(b)
        assert b.proc.returncode == 1
        log = b.tail_log(20)
        assert f"error: listening on 127.0.0.1:{port}: " in log, log
        assert "in use" in log.lower(), log
    finally:
        taken.close()
        b.stop()


def test_gateway_port_in_use_stops_bosun_with_a_clear_error():
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    b = JsonBosun("gwport")
    b.http_port = taken.getsockname()[1]
    try:
        start_expecting_failure(b)
        assert b.proc.returncode == 1
        errors = [l for l in json_lines(b.log_path) if l["level"] == "ERROR"]
        assert any(f"binding HTTP listener 0.0.0.0:{b.http_port}" in l["message"] for l in errors), errors
    finally:
        taken.close()
        b.stop()


def test_bad_store_cache_size_is_refused_before_anything_starts(tmp_path):
    r = subprocess.run([bosun_bin(), "up", "--data-dir", str(tmp_path / "d"), "--store-cache-size", "64MB"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "--store-cache-size" in r.stderr and "unknown size suffix" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()
    help_text = subprocess.run([bosun_bin(), "up", "--help"], capture_output=True, text=True).stdout
    assert "--store-cache-size" in help_text and "[default: 64Mi]" in help_text, help_text
