"""`ndctl deploy` end to end, continued: 3 hosts rolled in batches (and rolled back on
failure), a killed SSH connection, Ctrl-C and a dead ndctl mid-deploy, `exec --app`, and
bad input (unknown app, missing image, invalid file, port 80 taken, wrong health-check
path, a proxy reading a replaced directory, a host without Docker) failing clearly with
nothing half-deployed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ndctl import sandbox
from ndctl.core.errors import ExitStatus
from ndctl.sandbox import caddyimage

from .conftest import reset_host

pytestmark = pytest.mark.e2e

APP = "ndtmore"
STATE = f"/var/lib/nextdeploy/apps/{APP}"
OPERATOR = "tester@e2e"
BASE_SPEC = """
app: {app}
image: ndt-more:v1
port: 8080
tags: deploytest
health_check: {{path: /health, interval: 0.3s, successes: 2, failures: 3, deadline: {deadline}{extra_check}}}
proxy: {{kind: caddy, hosts: [], image: {proxy}}}
parallel: 1
drain: 1s
grace: 2s
stop_timeout: {stop_timeout}
retain: 2
{extra}"""


@dataclass
class Cli:
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ndctl", *args]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@dataclass
class Env:
    cli: Cli
    hosts: list
    dir: Path
    proxy: str

    def spec(self, name: str, extra: str = "", extra_check: str = "", deadline: str = "20s",
             stop_timeout: str = "1s") -> str:
        p = self.dir / name
        p.write_text(BASE_SPEC.format(app=APP, proxy=self.proxy, extra=extra, extra_check=extra_check,
                                      deadline=deadline, stop_timeout=stop_timeout))
        return str(p)


def serve(host, path: str = "/") -> str:
    """What the host's proxy answers on port 80 (asked from inside the test host)."""
    r = host.exec("python3", "-c", "import sys,urllib.request;"
                  f"print(urllib.request.urlopen('http://127.0.0.1:80{path}', timeout=5).read().decode().strip())",
                  check=False)
    return r.stdout.strip() if r.returncode == 0 else f"ERROR {r.stderr.strip()[-200:]}"


def locked(host) -> bool:
    return host.exec("test", "-e", f"{STATE}/lock", check=False).returncode == 0


def app_containers(host, *filters: str) -> list[str]:
    args = [f"--filter=label=com.nextdeploy.app={APP}", *(f"--filter={f}" for f in filters)]
    return host.exec("docker", "ps", "-a", "--format", "{{.Names}}", *args).stdout.split()


def history(host) -> list[dict]:
    r = host.exec("cat", f"{STATE}/history.jsonl", check=False)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def wait_until(fn, timeout: float = 60, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def reset(hosts) -> None:
    for h in hosts:
        reset_host(h, APP, "docker volume ls -q | grep '^ndtwww' | xargs -r docker volume rm",
                   "pkill -f 'http[.]server 80'",  # [.]: not matching its own sh -c
                   "[ ! -e /usr/bin/docker.ndt-hidden ] || mv /usr/bin/docker.ndt-hidden /usr/bin/docker")


def _ssh_block(alias: str, h) -> str:
    return (f"Host {alias}\n    HostName {h.address}\n    Port {h.port}\n    User {h.user}\n"
            f"    IdentityFile {h.identity}\n")


@pytest.fixture(scope="module")
def denv(container_hosts, tmp_path_factory):
    """Three registered hosts dep-0..2 (tag deploytest), the Caddy image on them, app images v1-v3 here."""
    d = tmp_path_factory.mktemp("deploy-more")
    home = d / "home"
    (home / ".ssh").mkdir(parents=True)
    ssh_config = d / "ssh_config"
    ssh_config.write_text("".join(_ssh_block(f"dep-{i}", h) for i, h in enumerate(container_hosts)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NDCTL_", "SSH_AUTH_SOCK"))}
    env.update(HOME=str(home), NDCTL_INVENTORY=str(d / "nd" / "inventory.yaml"), NDCTL_SSH_CONFIG=str(ssh_config),
               NDCTL_OPERATOR=OPERATOR, COLUMNS="200", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cli = Cli(env)
    for i in range(len(container_hosts)):
        r = cli("agent", "register", "--name", f"dep-{i}", "--tags", "deploytest", "--trust-host-key")
        assert r.returncode == 0, r.stderr
    proxy = caddyimage.build_caddy_image()
    for h in container_hosts:
        caddyimage.load_into(h, proxy)
        sandbox.import_busybox(h)
    for v in ("v1", "v2", "v3"):
        sandbox.build_web_image(f"ndt-more:{v}", f"hello {v}")
    try:
        yield Env(cli, list(container_hosts), d, proxy)
    finally:
        reset(container_hosts)
        for v in ("v1", "v2", "v3"):
            subprocess.run(["docker", "rmi", "-f", f"ndt-more:{v}"], capture_output=True)


@pytest.fixture
def e(denv):
    try:
        yield denv
    finally:
        reset(denv.hosts)


def break_health_volume(host, volume: str) -> None:
    """A named volume whose /www has no /health: a green mounting it at /www fails its check there only
    (on the other hosts the volume is new, so Docker fills it from the image, /health included)."""
    host.exec("docker", "volume", "create", volume)
    host.exec("docker", "run", "--rm", "-v", f"{volume}:/www", "ndt-busybox:1", "/bin/busybox", "sh", "-c",
              "echo broken > /www/index.html")


def test_three_hosts_rolled_in_batches_then_rolled_back_on_failure(e) -> None:
    cli, hosts = e.cli, e.hosts
    spec = e.spec("nextdeploy.yaml")
    r = cli("deploy", "-f", spec, "--parallel", "1", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["batches"] == [["dep-0"], ["dep-1"], ["dep-2"]] and out["result"] == "ok"
    vals = [hr["value"] for hr in out["hosts"]]
    assert [v["host"] for v in vals] == ["dep-0", "dep-1", "dep-2"]
    for a, b in zip(vals, vals[1:]):  # one batch after the other, in order: each switched before the next starts
        assert a["switched_at"] and a["switched_at"] <= b["rollout_started_at"], (a, b)
    for v in vals:
        acts = [s["action"] for s in v["steps"]]
        assert {"lock", "ship-image", "start", "health-check", "switch", "record", "unlock"} <= set(acts), acts
        assert all(s["ok"] for s in v["steps"])
        # Caddy took the config from its admin API, inside its own network namespace
        assert [s.get("via") for s in v["steps"] if s["action"] == "switch"] == ["admin-api"], v["steps"]
    assert [serve(h) for h in hosts] == ["hello v1"] * 3

    # exec --app: inside the serving container (busybox only exists there), prefixed by host
    r = cli("exec", "--app", APP, "--tags", "deploytest", "--", "/bin/busybox", "cat", "/www/index.html")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"dep-{i} | hello v1" for i in range(3)]
    r = cli("exec", "--app", "nope", "--", "/bin/busybox", "true")
    assert r.returncode == ExitStatus.NOT_FOUND and "'nope' is not deployed on any selected host" in r.stderr

    # v2 fails only on dep-1: dep-0 already switched stays on v2, dep-2 is never touched
    break_health_volume(hosts[1], "ndtwww2")
    bad = e.spec("bad2.yaml", extra="volumes: [\"ndtwww2:/www\"]\n")
    r = cli("deploy", "-f", bad, "--image", "ndt-more:v2", "--parallel", "1", "-o", "json")
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert (out["switched"], out["failed"], out["untouched"], out["rolled_back"]) == (
        ["dep-0"], ["dep-1"], ["dep-2"], [])
    assert [serve(h) for h in hosts] == ["hello v2", "hello v1", "hello v1"]
    assert app_containers(hosts[2], "label=com.nextdeploy.version=v2") == []
    assert not any(locked(h) for h in hosts)
    green2 = out["hosts"][0]["value"]["container"]
    # the app's route exists now: Caddy's switch is the rename of its live marker, no reload
    assert [s.get("via") for s in out["hosts"][0]["value"]["steps"] if s["action"] == "switch"] == ["marker"]
    failed = out["hosts"][1]["value"]
    assert "health check" in failed["message"] and failed["result"] == "failed"

    # v3 fails on dep-1 too, with --rollback-on-failure: dep-0 goes back to the v2 container it replaced
    break_health_volume(hosts[1], "ndtwww3")
    bad = e.spec("bad3.yaml", extra="volumes: [\"ndtwww3:/www\"]\n")
    r = cli("deploy", "-f", bad, "--image", "ndt-more:v3", "--parallel", "1", "--rollback-on-failure", "-o", "json")
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["rolled_back"] == ["dep-0"] and out["untouched"] == ["dep-2"]
    h0 = out["hosts"][0]["value"]
    assert h0["result"] == "rolled-back" and h0["rolled_back"]["result"] == "ok", h0
    assert [serve(h) for h in hosts] == ["hello v2", "hello v1", "hello v1"]
    st = json.loads(cli("deploy", "status", APP, "-f", spec, "-o", "json").stdout)
    assert st["dep-0"]["serving"]["container"] == green2
    time.sleep(2 + 1 + 2)  # past grace + stop_timeout: no delayed stop of the v2 container may fire now
    assert serve(hosts[0]) == "hello v2" and green2 in app_containers(hosts[0], "status=running")
    assert [x["version"] for x in history(hosts[0])][-2:] == ["v3", "v2"]  # the v3 deploy, then its rollback
    assert history(hosts[0])[-1]["strategy"] == "rollback"
    assert not any(locked(h) for h in hosts)


def serving_container(host) -> str:
    return json.loads(host.exec("cat", f"{STATE}/current.json").stdout)["container"]


def test_rollback_while_the_old_release_is_being_stopped_starts_it_again(e) -> None:
    """The old release's grace period has ended and its `docker stop` is under way (busybox
    httpd ignores SIGTERM, so it lasts stop_timeout): a rollback must not switch to it as if
    it were running, or the proxy would route to a container that dies seconds later."""
    cli, h0 = e.cli, e.hosts[0]
    one = ["--tags", "name:dep-0"]
    spec = e.spec("slowstop.yaml", stop_timeout="8s")
    assert cli("deploy", "-f", spec, *one).returncode == 0
    v1 = serving_container(h0)
    r = cli("deploy", "-f", spec, *one, "--image", "ndt-more:v2")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: h0.exec("pgrep", "-f", f"docker stop -t 8 {v1}", check=False).returncode == 0, 30,
               "the delayed stop of the v1 container")
    r = cli("rollback", APP, "-f", spec, *one)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{v1} was being stopped" in r.stderr, r.stderr
    assert serve(h0) == "hello v1" and serving_container(h0) == v1
    assert h0.exec("pgrep", "-f", f"docker stop -t 8 {v1}", check=False).returncode != 0  # it was waited for
    time.sleep(1)
    assert serve(h0) == "hello v1" and v1 in app_containers(h0, "status=running")


def _wait_for_health_check(host, p: subprocess.Popen) -> str:
    """Until a new app container runs and the helper is probing it; returns its name."""
    blue = serving_container(host)
    found: list[str] = []

    def probing() -> bool:
        if p.poll() is not None:
            out, err = p.communicate()
            raise AssertionError(f"ndctl ended (exit {p.returncode}) before the health check: {out}{err}")
        new = [c for c in app_containers(host, "status=running") if c != blue]
        if not new:
            return False
        found[:] = new
        return host.exec("pgrep", "-f", f"health --container {new[0]} ", check=False).returncode == 0
    wait_until(probing, 90, "the health check of the new container")
    return found[0]


def test_killed_connection_ctrl_c_and_a_dead_ndctl_keep_the_old_version_serving(e) -> None:
    cli, h0 = e.cli, e.hosts[0]
    one = ["--tags", "name:dep-0"]
    fast = e.spec("nextdeploy.yaml")
    # an app that takes 30s to boot: its health check runs (refused connections) for that long
    slow = e.spec("slow.yaml", deadline="90s", extra='command: ["/bin/busybox", "sh", "-c", '
                  '"sleep 30; exec /bin/busybox httpd -f -p 8080 -h /www"]\n')
    r = cli("deploy", "-f", fast, *one)
    assert r.returncode == 0, r.stdout + r.stderr
    assert serve(h0) == "hello v1"

    # 1. The SSH connection is killed while green is health-checked: blue serves; ndctl
    #    reconnects to clean up (green stopped, the failure recorded, the lock released).
    p = cli.popen("deploy", "-f", slow, "--image", "ndt-more:v2", *one)
    try:
        green1 = _wait_for_health_check(h0, p)
        h0.exec("pkill", "-f", "sshd: root@notty")
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode != 0, out + err
    assert "connection to dep-0 was lost during health-check" in out + err, out + err
    assert serve(h0) == "hello v1"
    assert not locked(h0)
    assert history(h0)[-1]["result"] == "interrupted" and history(h0)[-1]["version"] == "v2"
    stray = history(h0)[-1]["container"]
    assert stray == green1 and app_containers(h0, "status=exited") == [green1]  # stopped, kept until the next deploy
    st = json.loads(cli("deploy", "status", APP, "-f", fast, "-o", "json").stdout)["dep-0"]
    assert st["serving"]["version"] == "v1" and st["lock"] is None
    assert st["strays"] == [stray] and any("interrupted before its switch" in n for n in st["notes"])

    # 2. Ctrl-C during the health check: the cancellation runs the cleanup, exit 130.
    p = cli.popen("deploy", "-f", slow, "--image", "ndt-more:v2", *one)
    try:
        green2 = _wait_for_health_check(h0, p)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == ExitStatus.INTERRUPTED, out + err
    assert "interrupted" in err
    assert serve(h0) == "hello v1" and not locked(h0)
    last = history(h0)[-1]
    assert last["result"] == "interrupted" and last["container"] == green2
    assert stray not in app_containers(h0)  # this deploy's recovery removed the first stray
    assert app_containers(h0, "status=running") == [st["serving"]["container"]]

    # 3. ndctl dies (SIGKILL) during the health check: nothing can clean up. Blue serves,
    #    status shows the lock (who, when, version) and the stray; the next deploy is
    #    refused until `deploy unlock`, then recovers (removes the stray) and succeeds.
    p = cli.popen("deploy", "-f", slow, "--image", "ndt-more:v2", *one)
    try:
        green3 = _wait_for_health_check(h0, p)
        p.kill()
        p.communicate(timeout=30)
    finally:
        p.kill()
    assert serve(h0) == "hello v1" and locked(h0)
    st = json.loads(cli("deploy", "status", APP, "-f", fast, "-o", "json").stdout)["dep-0"]
    assert st["lock"]["who"] == OPERATOR and st["lock"]["version"] == "v2" and st["lock"]["at"]
    dead_green = [c for c in app_containers(h0, "status=running") if c != st["serving"]["container"]]
    assert dead_green == [green3] and green3 in st["strays"]
    table = cli("deploy", "status", APP, "-f", fast).stdout
    assert f"{OPERATOR} since" in table and "deploying v2" in table and dead_green[0] in table

    r = cli("deploy", "-f", fast, "--image", "ndt-more:v2", *one)
    assert r.returncode == ExitStatus.CONFLICT, r.stdout + r.stderr
    assert OPERATOR in r.stdout + r.stderr and f"ndctl deploy unlock {APP}" in r.stdout + r.stderr
    assert serve(h0) == "hello v1"

    r = cli("deploy", "unlock", APP, "--yes", *one)
    assert r.returncode == 0, r.stderr
    assert f"dep-0: released the lock of {APP} held by {OPERATOR}" in r.stdout and "deploying v2" in r.stdout
    r = cli("deploy", "-f", fast, "--image", "ndt-more:v2", *one, "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = json.loads(r.stdout)["hosts"][0]["value"]["steps"]
    assert any(s["action"] == "remove" and dead_green[0] in s["containers"] for s in steps), steps
    assert serve(h0) == "hello v2"
    st = json.loads(cli("deploy", "status", APP, "-f", fast, "-o", "json").stdout)["dep-0"]
    assert st["strays"] == [] and st["lock"] is None


def test_bad_input_fails_clearly_and_changes_nothing(e) -> None:
    cli, hosts = e.cli, e.hosts
    spec = e.spec("nextdeploy.yaml")

    # unknown app: status, history, rollback
    for args in (("deploy", "status", "nope"), ("deploy", "history", "nope"), ("rollback", "nope")):
        r = cli(*args, "-f", spec)
        assert r.returncode == ExitStatus.NOT_FOUND, (args, r.stdout, r.stderr)
        assert "unknown app 'nope'" in r.stderr, r.stderr
    # a missing image (locally): refused before touching any host
    r = cli("deploy", "-f", spec, "--image", "ndt-more:missing")
    assert r.returncode == ExitStatus.NOT_FOUND and "'ndt-more:missing' is not in the local Docker engine" in r.stderr
    # an invalid nextdeploy.yaml: the field and its line
    bad = e.dir / "invalid.yaml"
    bad.write_text("app: web\nimage: web:v1\nport: eighty\n")
    r = cli("deploy", "-f", str(bad))
    assert r.returncode == ExitStatus.USAGE and "port" in r.stderr and "line 3" in r.stderr, r.stderr
    assert not any(locked(h) or app_containers(h) for h in hosts)
    assert all(h.exec("docker", "inspect", "nextdeploy-proxy", check=False).returncode != 0 for h in hosts)

    # port 80 taken on dep-2: the proxy cannot start; the error says so and nothing stays behind
    h2 = hosts[2]
    had_network = h2.exec("docker", "network", "inspect", "nextdeploy", check=False).returncode == 0
    subprocess.run(["docker", "exec", "-d", h2.container, "python3", "-m", "http.server", "80"], check=True)
    wait_until(lambda: h2.exec("sh", "-c", "ss -ltn | grep -q ':80 '", check=False).returncode == 0, 20,
               "the port-80 listener")
    r = cli("deploy", "-f", spec, "--tags", "name:dep-2")
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    assert "port 80 is already in use on dep-2, so the caddy proxy cannot start" in r.stdout + r.stderr
    assert h2.exec("docker", "inspect", "nextdeploy-proxy", check=False).returncode != 0
    assert (h2.exec("docker", "network", "inspect", "nextdeploy", check=False).returncode == 0) == had_network
    assert not locked(h2) and app_containers(h2) == []
    assert h2.exec("test", "-e", "/var/lib/nextdeploy/proxy/caddy.json", check=False).returncode != 0
    h2.exec("pkill", "-f", "http.server 80", check=False)

    # a wrong health-check path: fails in seconds, the old version keeps serving
    one = ["--tags", "name:dep-0"]
    assert cli("deploy", "-f", spec, *one).returncode == 0
    r = cli("deploy", "-f", spec, *one, "--image", "ndt-more:v2", "--health-check", "/nope")
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    assert "GET /nope" in r.stdout and "404" in r.stdout, r.stdout
    assert serve(hosts[0]) == "hello v1" and not locked(hosts[0])
    assert len(app_containers(hosts[0], "status=running")) == 1

    # dep-0's proxy directory replaced while the proxy runs (a restore, an rm -rf and a new prepare): the
    # proxy keeps reading the old one and would never see the switch. Refused before anything starts,
    # v1 keeps serving; after the restart the error suggests, the deploy goes through.
    h0 = hosts[0]
    h0.exec("sh", "-c", "cd /var/lib/nextdeploy && cp -a proxy proxy.new && mv proxy proxy.replaced "
                        "&& mv proxy.new proxy")
    try:
        r = cli("deploy", "-f", spec, *one, "--image", "ndt-more:v2")
        assert r.returncode == ExitStatus.CONFLICT, r.stdout + r.stderr
        assert ("dep-0: the running proxy nextdeploy-proxy reads an older /var/lib/nextdeploy/proxy"
                in r.stdout + r.stderr), r.stdout + r.stderr
        assert "docker restart nextdeploy-proxy" in r.stdout + r.stderr
        assert serve(h0) == "hello v1" and not locked(h0)
        assert len(app_containers(h0, "status=running")) == 1
        h0.exec("docker", "restart", "nextdeploy-proxy")
        r = cli("deploy", "-f", spec, *one, "--image", "ndt-more:v2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert serve(h0) == "hello v2"
    finally:
        h0.exec("rm", "-rf", "/var/lib/nextdeploy/proxy.replaced", check=False)

    # a host without Docker (not prepared): named as such, nothing changed on it
    h1 = hosts[1]
    docker_bin = h1.exec("sh", "-c", "command -v docker").stdout.strip()
    h1.exec("mv", docker_bin, "/usr/bin/docker.ndt-hidden")
    try:
        r = cli("deploy", "-f", spec, "--tags", "name:dep-1")
    finally:
        h1.exec("mv", "/usr/bin/docker.ndt-hidden", docker_bin)
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    assert "Docker is not installed on dep-1" in r.stdout + r.stderr and "ndctl agent prepare" in r.stdout + r.stderr
    assert not locked(h1) and app_containers(h1) == []
