"""`ndctl deploy` end to end on real test hosts: blue-green through Caddy, a failing
health check that leaves the old version serving, rollback, history and the lock."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from ndctl import sandbox
from ndctl.commands import appstate
from ndctl.core.errors import ExitStatus
from ndctl.sandbox import caddyimage

from .conftest import reset_host

pytestmark = pytest.mark.e2e

APP = "ndtweb"


def build_app_image(tmp_path: Path, tag: str, body: str, *, healthy: bool = True, health: str = "health") -> str:
    """A busybox httpd image whose / says ``body``; /``health`` exists only when ``healthy``."""
    tar = sandbox.busybox_rootfs_tar(tmp_path / f"{tag.replace(':', '_')}.tar")
    www = tmp_path / f"www-{tag.replace(':', '_')}"
    www.mkdir()
    (www / "index.html").write_text(body + "\n")
    if healthy:
        (www / health).parent.mkdir(parents=True, exist_ok=True)
        (www / health).write_text("ok\n")
    with tarfile.open(tar, "a") as tf:  # the rootfs has www/ already: its entries, not the directory
        for f in sorted(www.rglob("*")):
            tf.add(f, arcname=f"www/{f.relative_to(www).as_posix()}", recursive=False)
    subprocess.run(["docker", "import", "--change", 'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]',
                    str(tar), tag], check=True, capture_output=True)
    return tag


def serve(host, path: str = "/") -> str:
    """What the host's proxy answers on port 80 (asked from inside the test host)."""
    r = host.exec("python3", "-c", "import sys,urllib.request;"
                  f"print(urllib.request.urlopen('http://127.0.0.1:80{path}', timeout=5).read().decode().strip())",
                  check=False)
    return r.stdout.strip() if r.returncode == 0 else f"ERROR {r.stderr.strip()[-200:]}"


@pytest.fixture
def deploy_env(cli, container_hosts, ssh_block, tmp_path):
    hosts = container_hosts[:2]
    cli.ssh_config.write_text("".join(ssh_block(f"dep-{i}", h) for i, h in enumerate(hosts)))
    for i in range(len(hosts)):
        r = cli("agent", "register", "--name", f"dep-{i}", "--tags", "deploytest", "--trust-host-key")
        assert r.returncode == 0, r.stderr
    proxy_ref = caddyimage.build_caddy_image()
    for h in hosts:
        caddyimage.load_into(h, proxy_ref)
    images = {v: build_app_image(tmp_path, f"ndt-web:{v}", f"hello {v}") for v in ("v1", "v2")}
    images["v3"] = build_app_image(tmp_path, "ndt-web:v3", "hello v3", healthy=False)
    spec = tmp_path / "nextdeploy.yaml"
    spec.write_text(f"""
app: {APP}
image: ndt-web:v1
port: 8080
tags: deploytest
health_check: {{path: /health, interval: 0.3s, successes: 2, failures: 3, deadline: 20s}}
proxy: {{kind: caddy, hosts: [], image: {proxy_ref}}}
drain: 2s
grace: 2s
retain: 2
""")
    try:
        yield cli, hosts, spec
    finally:
        for h in hosts:
            reset_host(h, APP)
        for v in ("v1", "v2", "v3"):
            subprocess.run(["docker", "rmi", "-f", f"ndt-web:{v}"], capture_output=True)


def test_blue_green_deploy_failure_rollback_history_and_lock(deploy_env) -> None:
    cli, hosts, spec = deploy_env
    f = ["-f", str(spec)]
    r = cli("deploy", *f, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(serve(h) == "hello v1" for h in hosts)
    # Debian's Caddy 2.6.2 switches by live marker: nothing to warn about upgraded connections
    assert "closes WebSockets" not in r.stdout + r.stderr

    r = cli("deploy", *f, "--image", "ndt-web:v2", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(serve(h) == "hello v2" for h in hosts)

    # v3 fails its health check: a non-zero exit, its last log lines shown, v2 keeps serving untouched.
    r = cli("deploy", *f, "--image", "ndt-web:v3", timeout=600)
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    assert "health check" in (r.stdout + r.stderr)
    assert all(serve(h) == "hello v2" for h in hosts)
    for h in hosts:  # the failed green is gone; the lock is free
        names = h.exec("sh", "-c", f"docker ps -a --format '{{{{.Names}}}} {{{{.Image}}}}' "
                                   f"--filter label=com.nextdeploy.app={APP}").stdout
        assert "ndt-web:v3" not in names
        assert h.exec("test", "-e", f"/var/lib/nextdeploy/apps/{APP}/lock", check=False).returncode == 1

    st = json.loads(cli("deploy", "status", APP, *f, "-o", "json").stdout)
    assert {s["serving"]["version"] for s in st.values()} == {"v2"}
    hist = json.loads(cli("deploy", "history", APP, *f, "-o", "json").stdout)
    assert [(row["version"], sorted(set(row["hosts"].values()))) for row in hist] == [
        ("v1", ["ok"]), ("v2", ["ok"]), ("v3", ["failed"])]

    # What a rollback can go back to: v1, its container stopped (retained); never the failed v3.
    listed = cli.json("rollback", APP, *f, "--list")
    assert {h: [(x["version"], x["state"]) for x in xs] for h, xs in listed.items()} == {
        "dep-0": [("v1", "stopped")], "dep-1": [("v1", "stopped")]}
    table = cli("rollback", APP, *f, "--list")
    assert table.returncode == 0 and "STATE" in table.stdout and "stopped" in table.stdout

    r = cli("rollback", APP, *f, "--to", "v1", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(serve(h) == "hello v1" for h in hosts)

    # A deploy holding the lock on a host refuses a second one, naming who holds it.
    h0 = hosts[0]
    h0.exec("sh", "-c", f"mkdir -p /var/lib/nextdeploy/apps/{APP}/lock && echo "
                        f"'{{\"who\":\"alice@laptop\",\"from\":\"laptop\",\"at\":\"2026-11-27T10:00:00Z\","
                        f"\"version\":\"v9\",\"deploy_id\":\"0badcafe\"}}' > /var/lib/nextdeploy/apps/{APP}/lock/info.json")
    r = cli("deploy", *f, "--image", "ndt-web:v2", timeout=600)
    assert r.returncode != 0 and "alice@laptop" in (r.stdout + r.stderr)
    assert all(serve(h) == "hello v1" for h in hosts)
    # --lock-wait waits for the holder instead of refusing: here it goes away 3 s later.
    h0.exec("sh", "-c", f"(sleep 3; rm -rf /var/lib/nextdeploy/apps/{APP}/lock) >/dev/null 2>&1 &")
    r = cli("deploy", *f, "--image", "ndt-web:v2", "--lock-wait", "60", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(serve(h) == "hello v2" for h in hosts)
    h0.exec("sh", "-c", f"mkdir -p /var/lib/nextdeploy/apps/{APP}/lock && echo "
                        f"'{{\"who\":\"bob@bastion\",\"from\":\"bastion\",\"at\":\"2026-11-27T10:00:00Z\","
                        f"\"version\":\"v8\",\"deploy_id\":\"0badbeef\"}}' > /var/lib/nextdeploy/apps/{APP}/lock/info.json")
    r = cli("deploy", *f, "--image", "ndt-web:v1", "--lock-wait", "2", timeout=600)
    assert r.returncode != 0 and "bob@bastion" in (r.stdout + r.stderr)  # gave up after 2 s
    r = cli("deploy", "unlock", APP, "--yes")
    assert r.returncode == 0, r.stderr
    assert h0.exec("test", "-e", f"/var/lib/nextdeploy/apps/{APP}/lock", check=False).returncode == 1
    assert appstate.LOCK_HELD == 75


def test_the_issues_command_lines_work_exactly_as_written(deploy_env, tmp_path: Path) -> None:
    """``ndctl deploy --strategy blue-green --health-check /api/health`` with nextdeploy.yaml in the
    current directory, and ``ndctl run postgres -v db-data:/var/lib/postgresql``, verbatim."""
    cli, hosts, spec = deploy_env
    build_app_image(tmp_path, "ndt-web:api", "hello api", health="api/health")  # no /health
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    # The file says recreate and /health: only the flags make this a blue-green deploy that passes.
    (app_dir / "nextdeploy.yaml").write_text(spec.read_text().replace("image: ndt-web:v1", "image: ndt-web:api")
                                             + "strategy: recreate\n")
    accessory = ("docker rm -f postgres; docker volume rm db-data; docker image rm postgres:latest "
                 "ndt-pg:latest")
    try:
        r = cli("deploy", "--strategy", "blue-green", "--health-check", "/api/health", cwd=app_dir, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert [serve(h) for h in hosts] == ["hello api"] * len(hosts)
        hist = json.loads(cli("deploy", "history", APP, "-o", "json", cwd=app_dir).stdout)
        assert hist[-1]["strategy"] == "blue-green" and hist[-1]["version"] == "api"

        # `postgres` stands for a long-running image each host already has (no registry here)
        tar = sandbox.busybox_rootfs_tar(tmp_path / "pg.tar")
        subprocess.run(["docker", "import", "--change", 'CMD ["/bin/busybox", "sh", "-c", '
                        '"trap \'exit 0\' TERM; while :; do /bin/busybox sleep 1; done"]', str(tar), "ndt-pg:latest"],
                       check=True, capture_output=True, timeout=120)
        for h in hosts:
            caddyimage.load_into(h, "ndt-pg:latest")
            h.exec("docker", "tag", "ndt-pg:latest", "postgres:latest")
        r = cli("run", "postgres", "-v", "db-data:/var/lib/postgresql", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        for h in hosts:
            st = h.exec("docker", "inspect", "-f", "{{.State.Running}} {{range .Mounts}}{{.Type}}:{{.Name}}:"
                        "{{.Destination}}{{end}}", "postgres").stdout.split()
            assert st == ["true", "volume:db-data:/var/lib/postgresql"], (h.name, st)
    finally:
        subprocess.run(["docker", "rmi", "-f", "ndt-web:api", "ndt-pg:latest"], capture_output=True)
        for h in hosts:
            h.exec("sh", "-c", accessory, check=False)
