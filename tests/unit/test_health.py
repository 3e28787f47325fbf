"""Health checks: the helper's ``health`` subcommand (pure parts with a fake clock, and real
probes of a loopback HTTP server) and ``ndctl.core.health`` (settings, helper args, result parsing)."""
from __future__ import annotations

import http.server
import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ndctl.core.errors import RemoteError, UsageError
from ndctl.core.health import HealthCheck, format_expect, parse_expect, parse_health

HELPER = Path(__file__).resolve().parents[2] / "ndctl" / "helper" / "ndhelper.py"


def _load_helper():
    spec = importlib.util.spec_from_file_location("ndhelper_health_under_test", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


h = _load_helper()


# --------------------------------------------------------------------------- status specs


@pytest.mark.parametrize("spec, expected", [
    ("200-399", [(200, 399)]),
    ("200,204", [(200, 200), (204, 204)]),
    (" 200 - 299 , 301 ", [(200, 299), (301, 301)]),
    ("599", [(599, 599)]),
])
def test_status_spec_helper_and_core_agree(spec, expected):
    assert h.parse_status_spec(spec) == expected
    assert list(parse_expect(spec)) == expected


@pytest.mark.parametrize("spec", ["", " ", "abc", "200-", "-300", "99", "600", "399-200", "200,,", "2xx"])
def test_status_spec_rejected(spec):
    with pytest.raises(h.HelperError) as e:
        h.parse_status_spec(spec)
    assert e.value.kind == "usage" and e.value.exit_code == 2
    with pytest.raises(UsageError, match="expect"):
        parse_expect(spec)


def test_parse_expect_other_shapes_and_format():
    assert parse_expect(204) == ((204, 204),)
    assert parse_expect([200, "300-399"]) == ((200, 200), (300, 399))
    assert format_expect(((200, 299), (301, 301))) == "200-299,301"
    with pytest.raises(UsageError, match="health_check.expect"):
        parse_expect(True, "health_check.expect")


@pytest.mark.parametrize("status, ok", [(200, True), (399, True), (301, True), (404, False), (None, False),
                                        (199, False)])
def test_status_expected(status, ok):
    assert h.status_expected(status, [(200, 399)]) is ok


# --------------------------------------------------------------------------- helper arguments


def test_parse_health_args_defaults_and_forms():
    o = h.parse_health_args(["--address", "172.18.0.5", "--port=8080"])
    assert (o["address"], o["port"], o["path"], o["expect_ranges"]) == ("172.18.0.5", 8080, "/", [(200, 399)])
    assert (o["timeout"], o["interval"], o["successes"], o["failures"], o["deadline"]) == (2.0, 1.0, 2, 3, 60.0)
    o = h.parse_health_args(["--container", "nd-web-0123abcd", "--network", "nextdeploy", "--port", "80",
                             "--path", "/api/health?full=1", "--host", "example.com", "--expect", "200,204",
                             "--start-period", "5", "--failures", "0"])
    assert o["container"] == "nd-web-0123abcd" and o["host"] == "example.com" and o["failures"] == 0
    assert o["start_period"] == 5.0 and o["expect_ranges"] == [(200, 200), (204, 204)]


@pytest.mark.parametrize("args, message", [
    (["--port", "80"], "exactly one of --address or --container"),
    (["--address", "1.2.3.4", "--container", "x", "--port", "80"], "exactly one"),
    (["--address", "1.2.3.4"], "needs --port"),
    (["--address", "not-an-ip", "--port", "80"], "not an IP address"),
    (["--address", "1.2.3.4", "--port", "0"], "--port must be between 1 and 65535"),
    (["--address", "1.2.3.4", "--port", "80", "--path", "health"], "--path must start with /"),
    (["--address", "1.2.3.4", "--port", "80", "--path", "/a b"], "--path must start with /"),
    (["--address", "1.2.3.4", "--port", "80", "--host", "a\r\nX-Evil: 1"], "--host: not a valid Host header"),
    (["--address", "1.2.3.4", "--port", "80", "--timeout", "0"], "--timeout must be between"),
    (["--address", "1.2.3.4", "--port", "80", "--successes", "0"], "--successes must be between 1"),
    (["--address", "1.2.3.4", "--port", "80", "--deadline", "x"], "--deadline: not a number"),
    (["--address", "1.2.3.4", "--port", "80", "--bogus", "1"], "unknown option for health: --bogus"),
    (["--address", "1.2.3.4", "--port"], "--port needs a value"),
    (["--container", "-x", "--port", "80"], "--container: not a Docker name"),
    (["stray"], "unexpected argument"),
])
def test_parse_health_args_errors(args, message):
    with pytest.raises(h.HelperError, match=message) as e:
        h.parse_health_args(args)
    assert e.value.exit_code == 2 and e.value.kind == "usage"


# --------------------------------------------------------------------------- the probe loop, fake clock


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        assert s >= 0
        self.now += s


def _loop(answers, clock=None, inspect=None, **overrides):
    """Run run_health with probes answering from ``answers`` (status or error string), each taking 10 ms."""
    clock = clock or FakeClock()
    seq = list(answers)
    calls = []

    def probe(address, port, path, host, timeout):
        calls.append((address, port, path, host, timeout))
        a = seq.pop(0) if seq else seq_last[0]
        clock.now += 0.01
        if isinstance(a, int):
            return a, None, 0.01
        return None, a, 0.01

    seq_last = [answers[-1]]
    args = ["--address", "10.0.0.2", "--port", "8080", "--interval", "1", "--deadline", "30"]
    for k, v in overrides.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    if inspect is not None:
        args[0:2] = ["--container", "app"]
    kw = {"inspect": inspect} if inspect is not None else {}
    doc = h.run_health(h.parse_health_args(args), probe=probe, clock=clock, sleep=clock.sleep, **kw)
    return doc, calls, clock


def test_loop_passes_after_consecutive_successes():
    doc, calls, _ = _loop(["connection refused", "connection refused", 200, 500, 200, 200, 200], successes=3)
    assert doc["ok"] is True and doc["consecutive"] == 3 and doc["probes"] == 7 and doc["reason"] is None
    assert [p["status"] for p in doc["status_history"]] == [None, None, 200, 500, 200, 200, 200]
    assert doc["status_history"][0]["error"] == "connection refused"
    assert [p["at"] for p in doc["status_history"]][:3] == [0.0, 1.0, 2.0]  # one per interval
    assert doc["url"] == "http://10.0.0.2:8080/" and doc["elapsed"] == pytest.approx(6.01)
    parse_health(json.dumps(doc))  # the core parser accepts what the helper prints


def test_loop_wrong_path_fails_early_with_history():
    doc, calls, clock = _loop([404], failures=3, deadline=60)
    assert doc["ok"] is False and doc["probes"] == 3
    assert "3 consecutive unexpected HTTP statuses" in doc["reason"] and "last 404" in doc["reason"]
    assert clock.now - 1000.0 < 5  # long before the 60 s deadline


def test_loop_redirect_is_its_own_status():
    doc, _, _ = _loop([301], expect="200")
    assert doc["ok"] is False and [p["status"] for p in doc["status_history"]] == [301, 301, 301]
    doc, _, _ = _loop([301], expect="200-399")
    assert doc["ok"] is True and doc["status_history"][-1] == {"at": 1.0, "status": 301, "error": None,
                                                               "latency": 0.01, "ok": True}


def test_loop_start_period_tolerates_bad_statuses():
    doc, _, _ = _loop([404, 404, 404, 404, 404, 200, 200], start_period=5, failures=3)
    assert doc["ok"] is True and doc["probes"] == 7


def test_loop_refused_connections_only_fail_at_the_deadline():
    doc, calls, clock = _loop(["connection refused"], deadline=10, failures=1)
    assert doc["ok"] is False and "deadline of 10s passed with 0/2" in doc["reason"]
    assert doc["probes"] == 10 and len(doc["status_history"]) == 10
    assert clock.now - 1000.0 <= 10.0


def test_loop_history_keeps_the_last_ten():
    doc, _, _ = _loop(["connection refused"] * 14 + [200, 200], deadline=100)
    assert doc["ok"] is True and doc["probes"] == 16 and len(doc["status_history"]) == 10
    assert doc["status_history"][0]["at"] == 6.0


def test_loop_probe_timeout_never_passes_the_deadline():
    clock = FakeClock()
    doc, calls, _ = _loop(["timed out"], clock=clock, deadline=2.5, interval=1, timeout=2)
    assert [round(c[4], 2) for c in calls] == [2.0, 1.5, 0.5]  # probes at 0, 1 and 2 s


def test_loop_container_exit_fails_at_once():
    states = iter([("172.18.0.9", None, None), ("172.18.0.9", None, None),
                   (None, "container exited (status exited, exit code 1)", None)])
    doc, calls, _ = _loop(["connection refused"], inspect=lambda name, net: next(states), deadline=60)
    # probe 1 (address just looked up), probe 2 (refused: still running), probe 3 (refused: exited)
    assert doc["ok"] is False and doc["reason"].startswith("container exited") and doc["probes"] == 3
    assert calls[0][0] == "172.18.0.9"


def test_loop_container_without_address_yet():
    states = iter([(None, None, None), ("172.18.0.9", None, None)])
    doc, calls, _ = _loop([200], inspect=lambda name, net: next(states))
    assert doc["ok"] is True
    assert doc["status_history"][0] == {"at": 0.0, "status": None, "ok": False, "latency": 0.0,
                                        "error": "container has no address on network nextdeploy"}
    assert doc["address"] == "172.18.0.9"


def test_container_address_from_engine_document():
    doc = {"State": {"Status": "running", "Running": True},
           "NetworkSettings": {"Networks": {"nextdeploy": {"IPAddress": "172.20.0.3"}, "bridge": {}}}}
    assert h.container_address(doc, "nextdeploy") == ("172.20.0.3", None)
    assert h.container_address(doc, "other") == (None, None)
    gone = {"State": {"Status": "exited", "ExitCode": 137}}
    assert h.container_address(gone, "nextdeploy") == (None, "container exited (status exited, exit code 137)")


# --------------------------------------------------------------------------- real probes on loopback


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Host")))
        if self.path == "/ok":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
        elif self.path == "/moved":
            self.send_response(301)
            self.send_header("Location", "/ok")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_probe_http_real(server):
    port = server.server_address[1]
    assert h.probe_http("127.0.0.1", port, "/ok", None, 2)[:2] == (200, None)
    assert h.probe_http("127.0.0.1", port, "/moved", "app.example", 2)[:2] == (301, None)  # not followed
    assert h.probe_http("127.0.0.1", port, "/nope", None, 2)[:2] == (404, None)
    assert server.seen == [("/ok", f"127.0.0.1:{port}"), ("/moved", "app.example"), ("/nope", f"127.0.0.1:{port}")]


def test_probe_http_refused():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    status, error, latency = h.probe_http("127.0.0.1", port, "/", None, 1)
    assert status is None and error == "connection refused" and latency >= 0


def test_helper_subprocess_health(server):
    """The real script: exit 0 healthy, 3 unhealthy with the result printed, 2 usage."""
    port = str(server.server_address[1])
    base = [sys.executable, str(HELPER), "health", "--address", "127.0.0.1", "--port", port, "--interval", "0.05"]
    out = subprocess.run(base + ["--path", "/ok"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    r = parse_health(out.stdout)
    assert r.ok and r.consecutive == 2 and [p.status for p in r.status_history] == [200, 200]
    out = subprocess.run(base + ["--path", "/nope", "--deadline", "20"], capture_output=True, text=True, timeout=30)
    assert out.returncode == h.UNHEALTHY
    r = parse_health(out.stdout)
    assert not r.ok and r.elapsed < 20 and [p.status for p in r.status_history] == [404, 404, 404]
    assert "unexpected HTTP statuses" in r.summary() and "404 (" in r.summary()
    out = subprocess.run(base[:3] + ["--port", port], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and json.loads(out.stdout)["kind"] == "usage"


# --------------------------------------------------------------------------- ndctl.core.health


def _doc(**kw):
    d = {"ok": False, "status_history": [{"status": 404, "error": None, "latency": 0.002, "ok": False, "at": 0.0}],
         "consecutive": 0, "elapsed": 1.5, "probes": 1, "reason": "wrong", "address": "172.18.0.2",
         "url": "http://172.18.0.2:80/"}
    d.update(kw)
    return json.dumps(d)


def test_parse_health_ok_and_fields():
    r = parse_health(_doc())
    assert (r.ok, r.consecutive, r.elapsed, r.probes, r.reason, r.address) == (False, 0, 1.5, 1, "wrong", "172.18.0.2")
    assert r.status_history[0].status == 404 and r.status_history[0].ok is False
    assert r.summary() == "unhealthy after 1.5s: wrong; last probes: 404 (2 ms)"
    ok = parse_health(_doc(ok=True, consecutive=2, reason=None))
    assert ok.ok and ok.summary().startswith("healthy after 1.5s")
    assert ok.to_dict()["consecutive"] == 2
    # a minimal document (only the promised keys) is enough; extra keys are fine
    minimal = parse_health(json.dumps({"ok": True, "status_history": [{"status": 200, "error": None, "latency": 0}],
                                       "consecutive": 1, "elapsed": 0.1, "new_key": 1}))
    assert minimal.probes is None and minimal.status_history[0].ok is None


@pytest.mark.parametrize("text, message", [
    ("", "printed nothing"),
    ("nope", "not JSON"),
    ("[]", "expected a JSON object"),
    ('{"error": "--port needs a value", "kind": "usage"}', r"helper failed .*\(usage\): --port needs a value"),
    (_doc(ok="yes"), "ok: expected a boolean"),
    (_doc(status_history={}), "status_history: expected an array"),
    (_doc(status_history=[{"status": "200", "error": None, "latency": 0}]), r"status_history\[0\].status"),
    (_doc(status_history=[{"status": 99, "error": None, "latency": 0}]), "99 is not an HTTP status"),
    (_doc(status_history=[{"status": 200, "error": None}]), r"missing key 'status_history\[0\].latency'"),
    (_doc(consecutive=-1), "consecutive: expected a non-negative integer"),
    (_doc(reason=3), "reason: expected a string"),
    (_doc(ok=True, consecutive=0), "ok without a single successful probe"),
])
def test_parse_health_rejects(text, message):
    with pytest.raises(RemoteError, match=message):
        parse_health(text)


def test_health_check_validation_names_the_field():
    assert HealthCheck(port=8080).expect == "200-399"
    for kw, field in [({"port": 0}, "port"), ({"path": "up"}, "path"), ({"status": "2xx"}, "status"),
                      ({"interval": -1}, "interval"), ({"successes": 0}, "successes"),
                      ({"timeout": 10, "deadline": 5}, "timeout"), ({"host": "a b"}, "host"),
                      ({"failures": True}, "failures")]:
        with pytest.raises(UsageError, match=rf"health_check\.{field}:"):
            HealthCheck(**{"port": 80, **kw})


def test_health_check_helper_args_round_trip():
    hc = HealthCheck(port=3000, path="/api/health", host="app.example", status="200,204", interval=0.5,
                     timeout=1, successes=3, failures=0, start_period=2, deadline=45)
    args = hc.helper_args(container="nd-web-0123abcd")
    assert args == ["health", "--container", "nd-web-0123abcd", "--network", "nextdeploy", "--port", "3000",
                    "--path", "/api/health", "--host", "app.example", "--expect", "200,204", "--timeout", "1",
                    "--interval", "0.5", "--successes", "3", "--failures", "0", "--start-period", "2",
                    "--deadline", "45"]
    o = h.parse_health_args(args[1:])  # the helper accepts exactly what the core builds
    assert (o["container"], o["port"], o["path"], o["host"], o["successes"], o["deadline"]) == \
        ("nd-web-0123abcd", 3000, "/api/health", "app.example", 3, 45.0)
    assert HealthCheck(port=80).helper_args(address="172.18.0.4")[:3] == ["health", "--address", "172.18.0.4"]
    assert hc.helper_timeout() > hc.deadline
    with pytest.raises(ValueError):
        hc.helper_args()
    with pytest.raises(UsageError):
        hc.helper_args(address="x; rm -rf /")
