"""Deploys that pull from a registry with a login: a real registry (Debian's docker-registry,
htpasswd auth) runs inside a test host on its own loopback, and the host pulls from it."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest

from ndctl.core.errors import ExitStatus
from ndctl.sandbox import caddyimage

from .conftest import reset_host
from .test_deploy import build_app_image, serve

pytestmark = pytest.mark.e2e

APP = "ndtreg"
REGISTRY = "127.0.0.1:5000"
USER, PASSWORD = "ndreg", "pw-7c1f9e"
IMAGE = f"{REGISTRY}/ndt/reg:v1"
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"

CONFIG = """version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: /var/lib/ndt-registry}}
http: {addr: 127.0.0.1:5000}
auth: {htpasswd: {realm: ndtest, path: /etc/ndt-registry/htpasswd}}
"""


def _start_registry(host, tmp_path: Path) -> None:
    assert Path(REGISTRY_BIN).exists(), "docker-registry is not installed (scripts/setup.sh installs it)"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")
    (tmp_path / "registry.yml").write_text(CONFIG)
    host.exec("mkdir", "-p", "/etc/ndt-registry")
    for src, dst in ((REGISTRY_BIN, "/usr/local/bin/docker-registry"), (htpasswd, "/etc/ndt-registry/htpasswd"),
                     (tmp_path / "registry.yml", "/etc/ndt-registry/config.yml")):
        subprocess.run(["docker", "cp", str(src), f"{host.container}:{dst}"], check=True, capture_output=True)
    subprocess.run(["docker", "exec", "-d", host.container, "sh", "-c",
                    "exec /usr/local/bin/docker-registry serve /etc/ndt-registry/config.yml "
                    ">/var/log/ndt-registry.log 2>&1"], check=True)
    host.exec("sh", "-c", "for i in $(seq 50); do python3 -c 'import socket; socket.create_connection("
                          "(\"127.0.0.1\", 5000), 1)' 2>/dev/null && exit 0; sleep 0.1; done; exit 1")


@pytest.fixture
def registry_env(cli, container_hosts, ssh_block, tmp_path):
    host = container_hosts[0]
    cli.ssh_config.write_text(ssh_block("reg-0", host))
    assert cli("agent", "register", "--name", "reg-0", "--tags", "regtest", "--trust-host-key").returncode == 0
    proxy_ref = caddyimage.build_caddy_image()
    caddyimage.load_into(host, proxy_ref)
    _start_registry(host, tmp_path)
    local = build_app_image(tmp_path, "ndt-reg:v1", "hello from the registry")
    caddyimage.load_into(host, local)
    # Push it with a throw-away login, then leave the host without the image or the login.
    host.exec("sh", "-c", f'd=$(mktemp -d); export DOCKER_CONFIG=$d; docker tag ndt-reg:v1 {IMAGE} && '
                          f'printf %s "$1" | docker login -u {USER} --password-stdin {REGISTRY} >/dev/null && '
                          f'docker push {IMAGE} >/dev/null; rc=$?; rm -rf "$d"; '
                          f'docker rmi {IMAGE} ndt-reg:v1 >/dev/null; exit $rc', "push", PASSWORD)
    spec = tmp_path / "nextdeploy.yaml"
    spec.write_text(f"""
app: {APP}
image: {IMAGE}
port: 8080
tags: regtest
health_check: {{path: /health, interval: 0.3s, successes: 2, deadline: 20s}}
proxy: {{kind: caddy, image: {proxy_ref}}}
drain: 1s
grace: 1s
registry:
  server: "{REGISTRY}"
  username: {USER}
  password_env: NDT_REG_PW
""")
    try:
        yield cli, host, spec
    finally:
        reset_host(host, APP, f"docker rmi -f {IMAGE}", "pkill -f '[d]ocker-registry serve'",
                   "rm -rf /var/lib/ndt-registry /etc/ndt-registry")
        subprocess.run(["docker", "rmi", "-f", "ndt-reg:v1"], capture_output=True)


def _app_containers(host) -> str:
    return host.exec("docker", "ps", "-aq", "--filter", f"label=com.nextdeploy.app={APP}").stdout.strip()


def test_deploy_pulls_with_a_login_that_leaves_nothing_behind(registry_env) -> None:
    cli, host, spec = registry_env

    # No password: refused before any host is touched.
    r = cli("deploy", "-f", str(spec))
    assert r.returncode == ExitStatus.USAGE, r.stderr
    assert "no password for registry user 'ndreg': set NDT_REG_PW" in r.stderr
    assert _app_containers(host) == "" and host.exec("test", "-e", f"/var/lib/nextdeploy/apps/{APP}",
                                                     check=False).returncode != 0

    # A wrong password: the pull fails on the host, nothing is started.
    cli.env["NDT_REG_PW"] = "wrong"
    r = cli("deploy", "-f", str(spec))
    assert r.returncode == ExitStatus.HOST_FAILED, r.stderr
    assert "pull-image" in r.stdout and "unauthorized" in (r.stdout + r.stderr).lower()
    assert _app_containers(host) == ""

    # The right one, from stdin this time: pulled, started, serving; history names the image id.
    del cli.env["NDT_REG_PW"]
    r = cli("deploy", "-f", str(spec), "--registry-password-stdin", "-o", "json", input=PASSWORD + "\n")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    steps = [s["action"] for s in doc["hosts"][0]["value"]["steps"]]
    assert "pull-image" in steps and "ship-image" not in steps
    assert serve(host) == "hello from the registry"
    image_id = host.exec("docker", "image", "inspect", "-f", "{{.Id}}", IMAGE).stdout.strip()
    history = cli.json("deploy", "history", APP, "-f", str(spec))
    assert history[-1]["image_id"] == image_id and history[-1]["image"] == IMAGE

    # The password is nowhere: not in ndctl's output, not in a docker config on the host.
    assert PASSWORD not in r.stdout + r.stderr
    left = host.exec("sh", "-c", "grep -rls ndreg /root/.docker /tmp 2>/dev/null; "
                                 "ls /root/.docker/config.json 2>/dev/null", check=False).stdout
    assert left.strip() == ""
