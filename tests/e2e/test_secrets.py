"""Secrets end to end on a real test host: an app deployed with two secrets reads both (env and
file), a leak scan finds the values nowhere but in tmpfs, and a container restart and a simulated
reboot (tmpfs wiped, the boot unseal, containers started again) keep them readable."""
from __future__ import annotations

import io
import json
import secrets as pysecrets
import subprocess
import tarfile
from pathlib import Path

import pytest

from ndctl import sandbox
from ndctl.commands import secrets as host_cmds
from ndctl.core.errors import ExitStatus
from ndctl.sandbox import caddyimage

from .conftest import reset_host

pytestmark = pytest.mark.e2e

APP = "ndtsec"
IMAGE = "ndt-secapp:v1"

# CGI: the app's own process tree reads one secret from its environment, one from its file.
CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo
printf 'env=%s file=%s\\n' "$DB_PASSWORD" "$(cat /run/secrets/API_TOKEN)"
"""


def build_secret_app_image(tmp_path: Path) -> str:
    """busybox httpd with /bin/sh (the wrapper's interpreter), an ENTRYPOINT and a CMD of its own."""
    tar = sandbox.busybox_rootfs_tar(tmp_path / "secapp.tar")
    with tarfile.open(tar, "a") as tf:
        for d in ("www/cgi-bin",):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        sh = tarfile.TarInfo("bin/sh")
        sh.type, sh.linkname = tarfile.SYMTYPE, "busybox"
        tf.addfile(sh)
        for name, text, mode in (("www/index.html", "hello secrets\n", 0o644), ("www/health", "ok\n", 0o644),
                                 ("www/cgi-bin/s", CGI, 0o755)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    subprocess.run(["docker", "import", "--change", 'ENTRYPOINT ["/bin/busybox"]',
                    "--change", 'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]', str(tar), IMAGE],
                   check=True, capture_output=True)
    return IMAGE


def fetch(host, path: str) -> str:
    r = host.exec("python3", "-c", "import urllib.request;"
                  f"print(urllib.request.urlopen('http://127.0.0.1:80{path}', timeout=5).read().decode().strip())",
                  check=False)
    return r.stdout.strip() if r.returncode == 0 else f"ERROR {r.stderr.strip()[-300:]}"


def app_container(host) -> str:
    out = host.exec("docker", "ps", "--filter", f"label=com.nextdeploy.app={APP}", "--format", "{{.Names}}").stdout
    names = out.split()
    assert len(names) == 1, out
    return names[0]


def process_env(host, container: str) -> dict[str, str]:
    """The environment of the app process (PID 1 after the wrapper's exec)."""
    raw = host.exec("docker", "exec", container, "/bin/busybox", "cat", "/proc/1/environ").stdout
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


@pytest.fixture
def secrets_env(cli, container_hosts, ssh_block, tmp_path):
    host = container_hosts[0]
    cli.ssh_config.write_text(ssh_block("sec-0", host))
    cli.env["NDCTL_KEYRING"] = "0"  # never the real OS keyring: the documented file fallback
    r = cli("agent", "register", "--name", "sec-0", "--tags", "sectest", "--trust-host-key")
    assert r.returncode == 0, r.stderr
    # what `ndctl agent prepare` installs (the test hosts have no package mirror): the age binary
    subprocess.run(["docker", "cp", "/usr/bin/age", f"{host.container}:/usr/bin/age"], check=True)
    proxy_ref = caddyimage.build_caddy_image()
    caddyimage.load_into(host, proxy_ref)
    build_secret_app_image(tmp_path)
    spec = tmp_path / "nextdeploy.yaml"
    spec.write_text(f"""
app: {APP}
image: {IMAGE}
port: 8080
tags: sectest
health_check: {{path: /health, interval: 0.3s, successes: 2, deadline: 20s}}
proxy: {{kind: caddy, hosts: [], image: {proxy_ref}}}
drain: 1s
grace: 1s
secrets: [DB_PASSWORD]
""")
    try:
        yield cli, host, spec
    finally:
        reset_host(host, APP, "rm -rf /var/lib/nextdeploy/secrets /var/lib/nextdeploy/bin /var/lib/nextdeploy/audit "
                              "/run/nextdeploy /usr/bin/age", f"docker rmi -f {IMAGE}")
        subprocess.run(["docker", "rmi", "-f", IMAGE], capture_output=True)


def test_deploy_two_secrets_env_and_file_no_leaks_restart_and_reboot(secrets_env, tmp_path) -> None:
    cli, host, spec = secrets_env
    db = "dbpw-" + pysecrets.token_hex(12)
    token = "tok-" + pysecrets.token_hex(12)
    values = (db, token)
    outputs: list[str] = []

    def run(*args: str, input: str | None = None, ok: bool = True):
        r = cli(*args, input=input, timeout=600)
        outputs.append(r.stdout + r.stderr)
        if ok:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    run("secrets", "init")
    run("secrets", "env", "set", "production", "sectest")
    run("secrets", "set", "DB_PASSWORD", "--env", "production", input=db)  # stdin: not in any argv
    vf = tmp_path / "token.txt"
    vf.write_text(token)
    run("secrets", "set", "API_TOKEN", "--env", "production", "--from-file", str(vf))
    vf.unlink()
    listed = json.loads(run("secrets", "list", "-o", "json").stdout)
    assert {(s["name"], s["env"]) for s in listed} == {("DB_PASSWORD", "production"), ("API_TOKEN", "production")}
    assert all({r["name"] for r in s["recipients"] if r["kind"] == "host"} == {"sec-0"} for s in listed)

    # An unknown secret is refused before any host is touched.
    r = run("deploy", "-f", str(spec), "--secret", "API_TOKEN", "--secret", "NOPE", ok=False)
    assert r.returncode == ExitStatus.NOT_FOUND and "no secret NOPE in environment production" in r.stderr
    assert host.exec("test", "-e", f"/var/lib/nextdeploy/apps/{APP}", check=False).returncode == 1
    assert host.exec("test", "-e", host_cmds.STATE_DIR, check=False).returncode == 1

    r = run("deploy", "-f", str(spec), "--secret", "API_TOKEN", "-o", "json")
    step = [s for s in json.loads(r.stdout)["hosts"][0]["value"]["steps"] if s["action"] == "secrets"]
    assert [(s["ok"], s["names"], s["env"]) for s in step] == [(True, ["DB_PASSWORD", "API_TOKEN"], "production")]
    print(f"secrets step: {step[0]['seconds_taken']} s, boot hook: {step[0]['boot']}")
    c = app_container(host)
    assert fetch(host, "/cgi-bin/s") == f"env={db} file={token}"  # through the proxy, read by the app
    env = process_env(host, c)
    assert (env.get("DB_PASSWORD"), env.get("API_TOKEN")) == (db, token)
    cat = host.exec("docker", "exec", c, "/bin/busybox", "cat", "/run/secrets/DB_PASSWORD", "/run/secrets/API_TOKEN").stdout
    assert cat == db + token
    assert host.exec("docker", "exec", c, "sh", "-c", "echo x > /run/secrets/DB_PASSWORD",
                     check=False).returncode != 0  # read-only
    assert "httpd" in host.exec("docker", "exec", c, "/bin/busybox", "cat", "/proc/1/cmdline").stdout  # the image's own command
    modes = host.exec("sh", "-c", f"stat -c '%a %U' {host_cmds.RUN_DIR}/{APP}/DB_PASSWORD "
                                  f"{host_cmds.STATE_DIR}/{APP}/DB_PASSWORD.age; stat -f -c %T /run").stdout.split()
    assert modes == ["400", "root", "600", "root", "tmpfs"]

    # ---- leak scan -----------------------------------------------------------------------
    # A canary on the same disk proves the scan looks where it should (Docker's data included).
    canary = "canary-" + pysecrets.token_hex(8)
    host.exec("sh", "-c", f"echo {canary} > /var/lib/docker/nd-canary")
    pattern = ["-e", db, "-e", token, "-e", canary]
    disk = host.exec("grep", "-rlaF", *pattern, "/", "--exclude-dir=proc", "--exclude-dir=sys",
                     "--exclude-dir=dev", "--exclude-dir=run", check=False, timeout=600)
    host.exec("rm", "-f", "/var/lib/docker/nd-canary")
    assert disk.stdout.split() == ["/var/lib/docker/nd-canary"], f"plaintext on the host's disk: {disk.stdout[:2000]}"
    inspect = host.exec("docker", "inspect", c).stdout
    assert c in inspect and not any(v in inspect for v in values)
    assert json.loads(inspect)[0]["Config"]["Entrypoint"] == [host_cmds.CONTAINER_ENTRYPOINT]
    ps = host.exec("ps", "-eo", "args").stdout
    assert "httpd" in ps and not any(v in ps for v in values)
    local = [p for root in (cli.home, cli.inventory.parent) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "DB_PASSWORD.json" for p in local) and any(p.name == "age-identity.txt" for p in local)
    leaks = [str(p) for p in local if any(v.encode() in p.read_bytes() for v in values)]
    assert leaks == []
    assert not any(v in out for out in outputs for v in values)

    # ---- audit: local and on the host ---------------------------------------------------------
    audit = json.loads(run("secrets", "audit", "--tags", "sectest", "-o", "json").stdout)
    acts = {(a["action"], a["secret"], a["host"]) for a in audit}
    assert {("set", "DB_PASSWORD", "local"), ("set", "API_TOKEN", "local"),
            ("use", "DB_PASSWORD", "sec-0"), ("use", "API_TOKEN", "sec-0"),
            ("unseal", "DB_PASSWORD", "sec-0")} <= acts
    assert not any(v in json.dumps(audit) for v in values)
    assert host.exec("stat", "-c", "%a", host_cmds.AUDIT_LOG).stdout.strip() == "600"

    # ---- get is audited, prints the value ---------------------------------------------------------
    assert run("secrets", "get", "API_TOKEN", "--env", "production").stdout == token
    assert ("get", "API_TOKEN") in {(a["action"], a["secret"]) for a in
                                    json.loads(run("secrets", "audit", "API_TOKEN", "-o", "json").stdout)}

    # ---- container restart ---------------------------------------------------------------------
    host.exec("docker", "restart", "-t", "1", c)
    assert process_env(host, c)["API_TOKEN"] == token
    assert fetch(host, "/cgi-bin/s") == f"env={db} file={token}"

    # ---- simulated reboot, systemd order: containers stop, /run (tmpfs) is wiped, the unit's unseal
    # runs before Docker starts them again
    host.exec("docker", "stop", "-t", "1", c)
    host.exec("rm", "-rf", "/run/nextdeploy")
    host.exec(host_cmds.UNSEAL)  # ExecStart of nextdeploy-secrets.service (Before=docker.service)
    host.exec("docker", "start", c)
    env = process_env(host, c)
    assert (env["DB_PASSWORD"], env["API_TOKEN"]) == (db, token)
    assert fetch(host, "/cgi-bin/s") == f"env={db} file={token}"
    # ---- simulated reboot, cron order (this test host has no systemd: the deploy installed the
    # @reboot entry): Docker starts the container first, without secrets; the entry unseals and restarts it
    assert host.exec("cat", "/etc/cron.d/nextdeploy-secrets").stdout == host_cmds.CRON_LINE
    host.exec("docker", "stop", "-t", "1", c)
    host.exec("rm", "-rf", "/run/nextdeploy")
    host.exec("docker", "start", c)
    assert "DB_PASSWORD" not in process_env(host, c)
    host.exec(*host_cmds.CRON_LINE.split()[2:])  # `nd-unseal-secrets --restart`
    env = process_env(host, c)
    assert (env["DB_PASSWORD"], env["API_TOKEN"]) == (db, token)
    assert fetch(host, "/cgi-bin/s") == f"env={db} file={token}"
    disk = host.exec("grep", "-rlaF", *pattern, "/var/lib", "/etc", "/root", "/tmp", check=False, timeout=600)
    assert disk.returncode == 1, disk.stdout[:2000]


    # ---- a rollback that re-creates a release runs it with the secrets it ran with, also those
    # named only with --secret (here: every one, the file naming none)
    bare = tmp_path / "bare.yaml"
    bare.write_text(spec.read_text().replace("secrets: [DB_PASSWORD]\n", ""))
    run("deploy", "-f", str(bare), "--secret", "DB_PASSWORD", "--secret", "API_TOKEN", "--version", "v2")
    first = host.exec("docker", "ps", "-aq", "--filter", f"label=com.nextdeploy.app={APP}",
                      "--filter", "label=com.nextdeploy.version=v1").stdout.split()
    assert len(first) == 1
    host.exec("docker", "rm", "-f", *first)  # gone: the rollback must re-create v1 from its image
    r = run("rollback", APP, "-f", str(bare), "--to", "v1", "-o", "json")
    value = json.loads(r.stdout)["hosts"][0]["value"]
    start = [s for s in value["steps"] if s["action"] == "start"]
    assert [s.get("secrets") for s in start] == [["DB_PASSWORD", "API_TOKEN"]], value["steps"]
    c = value["container"]  # v2 still runs, within its grace period
    env = process_env(host, c)
    assert (env.get("DB_PASSWORD"), env.get("API_TOKEN")) == (db, token)
    assert fetch(host, "/cgi-bin/s") == f"env={db} file={token}"
    history = host.exec("tail", "-n", "1", f"/var/lib/nextdeploy/apps/{APP}/history.jsonl").stdout
    assert json.loads(history)["secrets"] == ["DB_PASSWORD", "API_TOKEN"] and db not in history

def test_host_key_problems_are_refused_before_anything_is_stored(secrets_env) -> None:
    cli, host, spec = secrets_env
    assert cli("secrets", "init").returncode == 0
    assert cli("secrets", "env", "set", "production", "sectest").returncode == 0
    assert cli("secrets", "set", "DB_PASSWORD", "x-value", "--env", "production").returncode == 0
    # the host's key file no longer matches the pinned key (a reinstalled host): clear error, nothing stored
    host.exec("sh", "-c", "cp /etc/ssh/ssh_host_ed25519_key.pub /tmp/k.pub && "
                          "echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdzjtq5P+K/kTdAfHsgvG972y08WVndoFAHgsWTWXpE' "
                          "> /etc/ssh/ssh_host_ed25519_key.pub")
    try:
        r = cli("deploy", "-f", str(spec), timeout=600)
    finally:
        host.exec("sh", "-c", "cp /tmp/k.pub /etc/ssh/ssh_host_ed25519_key.pub")
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    assert "not the one pinned at registration" in r.stdout + r.stderr
    assert host.exec("sh", "-c", f"ls {host_cmds.STATE_DIR}/{APP} 2>/dev/null | wc -l").stdout.strip() == "0"
    assert host.exec("test", "-e", f"/var/lib/nextdeploy/apps/{APP}/lock", check=False).returncode == 1
    # no age on the host: says to prepare it
    host.exec("mv", "/usr/bin/age", "/usr/bin/age.off")
    try:
        r = cli("deploy", "-f", str(spec), timeout=600)
    finally:
        host.exec("mv", "/usr/bin/age.off", "/usr/bin/age")
    assert r.returncode == ExitStatus.HOST_FAILED and "ndctl agent prepare" in r.stdout + r.stderr

