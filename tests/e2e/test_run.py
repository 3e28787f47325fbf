"""End to end: ``ndctl run`` (accessories and one-offs) and the helper's HTTP health check,
on real test hosts (own sshd and Docker engine each)."""
from __future__ import annotations

import asyncio
import json
import secrets
import subprocess

import pytest

from ndctl import sandbox
from ndctl.core.errors import ExitStatus
from ndctl.core.health import HealthCheck, parse_health
from ndctl.core.inventory import Host
from ndctl.helper import helper_hash
from ndctl.ops.helper import run_helper
from ndctl.transport.ssh import Runner, RunOptions

pytestmark = pytest.mark.e2e

NAMES = ["acc-1", "acc-2"]
VOLUME = "nd-test-data"
# Ends at once on `docker stop` (a shell as PID 1 ignores SIGTERM without a trap).
LOOP = ["/bin/busybox", "sh", "-c", 'trap "exit 0" TERM; while :; do /bin/busybox sleep 1; done']


def build_local_image(tmp_path, ref: str) -> str:
    """A busybox image in this machine's engine; returns its id."""
    tar = sandbox.busybox_rootfs_tar(tmp_path / "busybox.tar")
    subprocess.run(["docker", "import", "--change", 'CMD ["/bin/busybox", "sh"]', str(tar), ref],
                   check=True, capture_output=True, timeout=120)
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


def _has_network(th) -> bool:
    return th.exec("docker", "network", "inspect", "nextdeploy", check=False).returncode == 0


@pytest.fixture
def fleet(cli, container_hosts, ssh_block, tmp_path):
    """ndt-1 and ndt-2 registered in a temp inventory, and an image built on this machine's
    engine; everything `ndctl run` creates on the hosts is removed afterwards."""
    ths = container_hosts[:2]
    cli.ssh_config.write_text("".join(ssh_block(n, h) for n, h in zip(NAMES, ths)))
    had_network = [_has_network(t) for t in ths]
    ref = f"ndt-acc-{secrets.token_hex(4)}:1"
    image_id = build_local_image(tmp_path, ref)
    try:
        for n in NAMES:
            r = cli("agent", "register", "--name", n, "--tags", "accessories", "--trust-host-key")
            assert r.returncode == 0, r.stderr
        yield ths, ref, image_id
    finally:
        subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True, timeout=60)
        for t, had in zip(ths, had_network):
            names = t.exec("docker", "ps", "-aq", "--filter", "label=com.nextdeploy.role=accessory",
                           check=False).stdout.split()
            if names:
                t.exec("docker", "rm", "-f", *names, check=False)
            t.exec("docker", "volume", "rm", "-f", VOLUME, check=False)
            t.exec("docker", "image", "rm", "-f", ref, check=False)
            if not had:
                t.exec("docker", "network", "rm", "nextdeploy", check=False)


def _inspect(th, name: str) -> dict:
    return json.loads(th.exec("docker", "container", "inspect", name).stdout)[0]


def _by_host(doc: dict) -> dict:
    return {h["host"]: h for h in doc["hosts"]}


def test_run_accessory_with_a_volume_idempotent_and_data_survives(cli, fleet):
    ths, ref, image_id = fleet
    base = ["run", ref, "store", "-v", f"{VOLUME}:/data", "--tags", "accessories"]

    # First run ships the image (2 hosts in parallel) and creates the accessory.
    r = cli(*base, "--ship", "-o", "json", "--", *LOOP)
    assert r.returncode == 0, r.stderr
    hosts = _by_host(json.loads(r.stdout))
    assert [hosts[n]["value"]["action"] for n in NAMES] == ["created", "created"]
    ids = {}
    for t in ths:
        c = _inspect(t, "store")
        ids[t.name] = c["Id"]
        assert c["State"]["Running"] and c["Image"] == image_id
        labels = c["Config"]["Labels"]
        assert labels["com.nextdeploy.role"] == "accessory" and labels["com.nextdeploy.accessory"] == "store"
        assert list(c["NetworkSettings"]["Networks"]) == ["nextdeploy"]
        assert c["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert [(m["Type"], m["Name"], m["Destination"]) for m in c["Mounts"]] == [("volume", VOLUME, "/data")]
        t.exec("docker", "exec", "store", "/bin/busybox", "sh", "-c", f"echo kept-on-{t.name} > /data/f")

    # Same spec again: a no-op on both hosts (no ship needed: the image id is there).
    r = cli(*base, "--", *LOOP)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already running") == 2
    assert {t.name: _inspect(t, "store")["Id"] for t in ths} == ids

    # A different spec is refused everywhere before anything changes.
    r = cli(*base, "-e", "MODE=fast", "--", *LOOP)
    assert r.returncode == ExitStatus.CONFLICT, r.stderr
    assert "different spec" in r.stderr and "--replace" in r.stderr and "env" in r.stderr
    assert {t.name: _inspect(t, "store")["Id"] for t in ths} == ids

    # Removed behind ndctl's back: a re-run re-creates it, and the volume kept the data.
    for t in ths:
        t.exec("docker", "rm", "-f", "store")
    r = cli(*base, "-o", "json", "--", *LOOP)
    assert r.returncode == 0, r.stderr
    assert [h["value"]["action"] for h in json.loads(r.stdout)["hosts"]] == ["created", "created"]
    for t in ths:
        assert t.exec("docker", "exec", "store", "/bin/busybox", "cat", "/data/f").stdout == f"kept-on-{t.name}\n"

    # --replace re-creates it with the new spec; the data is still there.
    r = cli(*base, "-e", "MODE=fast", "--replace", "--", *LOOP)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("replaced") == 2
    for t in ths:
        c = _inspect(t, "store")
        assert "MODE=fast" in c["Config"]["Env"] and c["State"]["Running"]
        assert t.exec("docker", "exec", "store", "/bin/busybox", "cat", "/data/f").stdout == f"kept-on-{t.name}\n"
        assert t.exec("docker", "ps", "-aq", "--filter", "name=store-replaced").stdout == ""

    # A one-off with --rm streams its output, prefixed by host, and leaves no container.
    r = cli("run", ref, "--rm", "-v", f"{VOLUME}:/data", "--tags", "accessories", "--",
            "/bin/busybox", "cat", "/data/f")
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert lines == [f"{n} | kept-on-{t.name}" for n, t in zip(NAMES, ths)]
    for t in ths:
        assert t.exec("docker", "ps", "-aq", "--filter", "label=com.nextdeploy.oneoff=1").stdout == ""

    # A one-off that fails: non-zero exit, the command's own status per host.
    r = cli("run", ref, "--rm", "--tags", "name:acc-1", "-o", "json", "--", "/bin/busybox", "sh", "-c", "exit 7")
    assert r.returncode == ExitStatus.HOST_FAILED
    assert json.loads(r.stdout)["hosts"][0]["exit_code"] == 7


def test_run_bad_input_changes_nothing(cli, fleet):
    ths, ref, _ = fleet
    before = [t.exec("docker", "ps", "-aq").stdout for t in ths]
    r = cli("run", "ndt-never-built:404", "--ship", "--tags", "accessories")
    assert r.returncode == ExitStatus.NOT_FOUND and "'ndt-never-built:404' is not in the local Docker engine" in r.stderr
    r = cli("run", "ndt-never-built:404", "--pull", "never", "--tags", "accessories")
    assert r.returncode == ExitStatus.HOST_FAILED
    assert "image ndt-never-built:404 is not on acc-1; --ship sends it" in r.stderr
    r = cli("run", ref, "-v", "/etc:/host-etc")
    assert r.returncode == ExitStatus.USAGE and "host paths are not supported" in r.stderr
    r = cli("run", ref, "-p", "99999:80")
    assert r.returncode == ExitStatus.USAGE and "'99999' is not a port number" in r.stderr
    # A container that ndctl did not create is never touched, even with --replace.
    r = cli("run", ref, "--rm", "--ship", "--tags", "name:acc-1", "--", "/bin/busybox", "true")
    assert r.returncode == 0, r.stderr  # (also: a one-off leaves no container behind)
    ths[0].exec("docker", "create", "--name", "foreign", "--network", "none", ref, "/bin/busybox", "true")
    try:
        r = cli("run", ref, "foreign", "--ship", "--replace", "--tags", "accessories", "--", *LOOP)
        assert r.returncode == ExitStatus.CONFLICT and "acc-1: a container named foreign already exists" in r.stderr
        assert ths[1].exec("docker", "ps", "-aq", "--filter", "name=^/foreign$").stdout == ""  # nothing on acc-2
    finally:
        ths[0].exec("docker", "rm", "-f", "foreign", check=False)
    assert [t.exec("docker", "ps", "-aq").stdout for t in ths] == before


# --------------------------------------------------------------------------- health checks


@pytest.fixture
def httpd(container_hosts, tmp_path):
    """busybox httpd (/ -> 200, /sub -> 302 to /sub/, else 404) in a container on the
    `nextdeploy` network of ndt-1; yields (RunOptions, Host, TestHost, container)."""
    th = container_hosts[0]
    had_image = th.exec("docker", "image", "inspect", sandbox.BUSYBOX_REF, check=False).returncode == 0
    had_network = _has_network(th)
    had_helper = th.exec("test", "-e", f"/var/lib/nextdeploy/helper-{helper_hash()}.py", check=False).returncode == 0
    name = f"nd-health-{secrets.token_hex(3)}"
    bb = "/bin/busybox"
    try:
        sandbox.import_busybox(th)
        if not had_network:
            th.exec("docker", "network", "create", "nextdeploy")
        th.exec("docker", "run", "-d", "--name", name, "--network", "nextdeploy", sandbox.BUSYBOX_REF,
                bb, "sh", "-c", f"{bb} mkdir -p /www/sub && echo ok > /www/index.html && "
                f"echo sub > /www/sub/index.html && exec {bb} httpd -f -p 8080 -h /www")
        kh = sandbox.write_known_hosts([th], tmp_path / "known_hosts")
        host = Host(th.name, th.address, port=th.port, user=th.user, identity=str(th.identity))
        yield RunOptions(known_hosts_files=[kh]), host, th, name
    finally:
        th.exec("docker", "rm", "-f", name, check=False)
        if not had_network:
            th.exec("docker", "network", "rm", "nextdeploy", check=False)
        if not had_image:
            th.exec("docker", "image", "rm", "-f", sandbox.BUSYBOX_REF, check=False)
        if not had_helper:
            th.exec("rm", "-f", f"/var/lib/nextdeploy/helper-{helper_hash()}.py", check=False)


def _health(opts, host, args, timeout):
    async def go():
        async with Runner(opts) as r:
            return await run_helper(r, host, args, helper_dir="/var/lib/nextdeploy", parse=parse_health,
                                    timeout=timeout)
    return asyncio.run(go())


def test_health_check_ok_wrong_path_and_redirect(httpd):
    opts, host, th, name = httpd

    ok = HealthCheck(port=8080, path="/", interval=0.2, successes=3, deadline=60)
    r = _health(opts, host, ok.helper_args(container=name), ok.helper_timeout())
    assert r.ok, (r.error, r.stdout, r.stderr)
    assert r.value.ok and r.value.consecutive == 3 and r.value.status_history[-1].status == 200
    assert r.value.address == th.exec("docker", "inspect", "-f",
                                      "{{.NetworkSettings.Networks.nextdeploy.IPAddress}}", name).stdout.strip()

    # The caller may resolve the address itself.
    r = _health(opts, host, ok.helper_args(address=r.value.address), ok.helper_timeout())
    assert r.ok and r.value.ok

    # A wrong path: 404s fail the check long before the deadline, with the status history.
    wrong = HealthCheck(port=8080, path="/api/health", interval=0.2, failures=3, deadline=120)
    r = _health(opts, host, wrong.helper_args(container=name), wrong.helper_timeout())
    assert not r.ok and r.exit_code == 3 and r.value is not None and not r.value.ok
    assert [p.status for p in r.value.status_history] == [404, 404, 404]
    assert r.value.elapsed < 60 and "unexpected HTTP statuses" in r.value.reason
    assert "404 (" in r.value.summary()

    # A redirect is not followed: its 3xx (busybox httpd answers 302 for a directory
    # without its trailing slash) is its own status, healthy only when expected.
    redirect = HealthCheck(port=8080, path="/sub", status="200", interval=0.2, deadline=60)
    r = _health(opts, host, redirect.helper_args(container=name), redirect.helper_timeout())
    assert not r.value.ok and {p.status for p in r.value.status_history} == {302}
    redirect = HealthCheck(port=8080, path="/sub", status="200-399", interval=0.2, deadline=60)
    r = _health(opts, host, redirect.helper_args(container=name), redirect.helper_timeout())
    assert r.value.ok and [p.status for p in r.value.status_history] == [302, 302]
