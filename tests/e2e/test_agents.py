"""End to end: every `ndctl agent` command and `ndctl exec` against real test hosts
(containers with their own OpenSSH sshd, filesystem and Docker engine)."""
from __future__ import annotations

import socket
import subprocess
import sys

import asyncssh
import pytest

from ndctl.core import knownhosts
from ndctl.core.errors import ExitStatus
from ndctl.core.inventory import Host, agent_id, locked
from ndctl.transport.ssh import fingerprint

pytestmark = pytest.mark.e2e

NAMES = ["prod-web-1", "prod-web-2", "prod-db-1"]
TAGS = ["production,web,us-east", "production,web,eu-west", "production,db,us-east"]


@pytest.fixture
def fleet(cli, container_hosts, ssh_block):
    """The three test hosts under ~/.ssh/config-style aliases, not yet registered."""
    cli.ssh_config.write_text("".join(ssh_block(n, h) for n, h in zip(NAMES, container_hosts)))
    return dict(zip(NAMES, container_hosts))


def register_all(cli, fleet) -> None:
    for name, tags in zip(NAMES, TAGS):
        r = cli("agent", "register", "--name", name, "--tags", tags, "--trust-host-key")
        assert r.returncode == 0, r.stderr


def test_register_resolves_ssh_config_pins_key_and_gathers_facts(cli, fleet) -> None:
    th = fleet["prod-web-1"]
    # No terminal and no --trust-host-key: an unknown key is refused, and nothing is written.
    r = cli("agent", "register", "--name", "prod-web-1", "--tags", "production,web,us-east")
    assert r.returncode == ExitStatus.HOST_KEY, r.stderr
    assert fingerprint(th.host_key) in r.stderr and "--trust-host-key" in r.stderr
    assert not cli.inventory.exists() and not cli.known_hosts.exists()

    r = cli("agent", "register", "--name", "prod-web-1", "--tags", "production,web,us-east", "--trust-host-key")
    assert r.returncode == 0, r.stderr
    assert "registered prod-web-1" in r.stdout and fingerprint(th.host_key) in r.stdout
    h = cli.inv().get("prod-web-1")
    assert (h.address, h.port, h.user) == ("127.0.0.1", th.port, "root")  # from the ssh config
    assert h.identity == str(th.identity)
    assert h.tags == ["production", "web", "us-east"]
    assert h.host_key == th.host_key  # the ssh-ed25519 key secrets will be encrypted to
    assert {"amd64", "docker", "os-debian"} <= set(h.auto_tags)
    assert knownhosts.read_pins(cli.known_hosts)[f"[127.0.0.1]:{th.port}"] == [th.host_key]

    # The helper was uploaded under its content hash.
    ls = th.exec("sh", "-c", "ls /var/lib/nextdeploy").stdout.split()
    from ndctl.helper import helper_hash
    assert ls == [f"helper-{helper_hash()}.py"]

    # Facts are real: the Docker version is what the host's own engine reports.
    docker_version = th.exec("docker", "version", "--format", "{{.Server.Version}}").stdout.strip()
    listed = cli.json("agent", "list")
    assert len(listed) == 1
    assert listed[0]["id"] == agent_id("prod-web-1") and listed[0]["facts"]["docker"] == docker_version
    facts = cli.json("agent", "facts", "prod-web-1")
    assert facts["docker"]["version"] == docker_version
    assert facts["hostname"] == th.container
    cpus = int(th.exec("nproc").stdout)
    assert facts["cpus"]["count"] == cpus

    # The table has every column the issue names.
    table = cli("agent", "list").stdout
    for col in ("ID", "NAME", "ADDRESS", "TAGS", "ARCH", "CPUS", "MEMORY", "DISK", "DOCKER", "LAST SEEN"):
        assert col in table
    assert agent_id("prod-web-1") in table and docker_version in table


def test_reregistering_updates_never_duplicates(cli, fleet) -> None:
    register_all(cli, fleet)
    r = cli("agent", "register", "--name", "prod-web-1", "--tags", "production,web,canary")
    assert r.returncode == 0, r.stderr  # key pinned now: no trust flag needed
    assert "updated prod-web-1" in r.stdout
    inv = cli.inv()
    assert [h.name for h in inv] == NAMES
    assert inv.get("prod-web-1").tags == ["production", "web", "canary"]
    assert cli.inventory.read_text().count("prod-web-1:") == 1


def test_key_already_in_users_known_hosts_is_accepted(cli, fleet) -> None:
    th = fleet["prod-web-2"]
    (cli.home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{th.port} {th.host_key}\n")
    r = cli("agent", "register", "--name", "prod-web-2", "--tags", "web")
    assert r.returncode == 0, r.stderr


def test_changed_host_key_is_a_hard_error_naming_both(cli, fleet) -> None:
    th = fleet["prod-web-1"]
    register_all(cli, fleet)
    impostor = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2])
    knownhosts.set_pin(cli.known_hosts, "127.0.0.1", th.port, impostor)  # as if the pinned host were replaced
    r = cli("exec", "--tags", "name:prod-web-1", "--", "true")
    assert r.returncode == ExitStatus.HOST_KEY
    assert "CHANGED" in r.stderr and fingerprint(impostor) in r.stderr and fingerprint(th.host_key) in r.stderr
    r = cli("agent", "register", "--name", "prod-web-1")
    assert r.returncode == ExitStatus.HOST_KEY
    assert fingerprint(impostor) in r.stderr and fingerprint(th.host_key) in r.stderr
    assert knownhosts.read_pins(cli.known_hosts)[f"[127.0.0.1]:{th.port}"] == [impostor]  # untouched
    r = cli("agent", "register", "--name", "prod-web-1", "--trust-host-key")
    assert r.returncode == 0, r.stderr
    assert knownhosts.read_pins(cli.known_hosts)[f"[127.0.0.1]:{th.port}"] == [th.host_key]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_and_bad_auth_add_nothing(cli, fleet, tmp_path) -> None:
    th = fleet["prod-web-1"]
    r = cli("agent", "register", "--name", "ghost", "--address", "127.0.0.1", "--port", str(_closed_port()),
            "--identity", str(th.identity), "--trust-host-key")
    assert r.returncode == ExitStatus.UNREACHABLE, r.stderr
    assert "cannot connect to root@127.0.0.1" in r.stderr
    wrong = tmp_path / "wrong_key"
    wrong.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    wrong.chmod(0o600)
    r = cli("agent", "register", "--name", "prod-web-1", "--identity", str(wrong), "--trust-host-key")
    assert r.returncode == ExitStatus.AUTH, r.stderr
    assert "authentication failed for root@127.0.0.1" in r.stderr
    r = cli("agent", "register", "--name", "bad name!", "--trust-host-key")
    assert r.returncode == ExitStatus.USAGE and "invalid host name 'bad name!'" in r.stderr
    r = cli("agent", "register", "--name", "prod-web-1", "--tags", "ok,not ok", "--trust-host-key")
    assert r.returncode == ExitStatus.USAGE and "invalid tag 'not ok'" in r.stderr
    assert not cli.inventory.exists() and not cli.known_hosts.exists()


def test_host_without_python_gets_a_clear_error(cli, fleet) -> None:
    th = fleet["prod-db-1"]
    th.exec("sh", "-c", "for f in /usr/bin/python3*; do mv $f $f.off; done")
    try:
        r = cli("agent", "register", "--name", "prod-db-1", "--trust-host-key")
    finally:
        th.exec("sh", "-c", "for f in /usr/bin/python3*.off; do mv $f ${f%.off}; done")
    assert r.returncode == ExitStatus.HOST_FAILED, r.stderr
    assert "python3 is not installed on this host" in r.stderr
    assert not cli.inventory.exists()


def test_exec_streams_prefixed_output_and_summarises(cli, fleet) -> None:
    register_all(cli, fleet)
    r = cli("exec", "--tags", "web", "--", "uptime")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sorted(ln.split(" | ")[0].strip() for ln in lines) == ["prod-web-1", "prod-web-2"]
    assert all("load average" in ln for ln in lines)
    assert "2 hosts: 2 ok, 0 failed, 0 unreachable" in r.stderr

    r = cli("exec", "--", "hostname")
    assert sorted(r.stdout.splitlines()) == sorted(f"{n:<10} | {fleet[n].container}" for n in NAMES)

    # Partial failure: exit 3, and the failing host is named.
    r = cli("exec", "--", f'test "$(hostname)" != {fleet["prod-web-2"].container}')
    assert r.returncode == ExitStatus.HOST_FAILED
    assert "3 hosts: 2 ok, 1 failed, 0 unreachable" in r.stderr and "prod-web-2: failed: exit status 1" in r.stderr

    # Grouped output and JSON carry exit code, stdout, stderr and duration per host.
    r = cli("exec", "--group", "--tags", "db", "--", "echo out; echo err >&2")
    assert "prod-db-1" in r.stdout and "out" in r.stdout and "err" in r.stderr
    data = cli.json("exec", "--tags", "production,!db", "--", "echo $((6*7))")
    assert data["summary"] == {"ok": 2, "failed": 0, "unreachable": 0}
    for h in data["hosts"]:
        assert (h["exit_code"], h["stdout"], h["stderr"], h["status"]) == (0, "42\n", "", "ok")
        assert h["duration"] > 0

    # Several words are an exact argv: shell syntax inside an argument stays data.
    r = cli("exec", "--tags", "name:prod-db-1", "--", "printf", "%s", "a; echo INJECTED")
    assert r.stdout.strip() == "prod-db-1 | a; echo INJECTED"

    # A selector matching nothing is an error, not a silent success.
    r = cli("exec", "--tags", "staging", "--", "true")
    assert r.returncode == ExitStatus.NOT_FOUND and "matches no host" in r.stderr
    r = cli("exec", "--tags", "web,,db", "--", "true")
    assert r.returncode == ExitStatus.USAGE and "position 5" in r.stderr


def test_unreachable_host_has_its_own_exit_status(cli, fleet) -> None:
    register_all(cli, fleet)
    with locked(cli.inventory) as inv:
        inv.upsert(Host("gone-1", "127.0.0.1", port=_closed_port(), identity=str(fleet["prod-web-1"].identity),
                        tags=["production", "web"]))
        inv.save()
    r = cli("exec", "--tags", "web", "--", "true")
    assert r.returncode == ExitStatus.UNREACHABLE
    assert "3 hosts: 2 ok, 0 failed, 1 unreachable" in r.stderr and "gone-1: unreachable" in r.stderr
    # refresh is meant for cron: it reports the host that went away and exits non-zero
    r = cli("agent", "refresh")
    assert r.returncode == ExitStatus.UNREACHABLE
    assert "gone-1" in r.stdout and "unreachable" in r.stdout


def test_tags_are_manual_and_auto_tags_follow_facts(cli, fleet) -> None:
    register_all(cli, fleet)
    r = cli("agent", "tag", "add", "canary", "blue", "--tags", "name:prod-web-*")
    assert r.returncode == 0, r.stderr
    assert [h["name"] for h in cli.json("agent", "list", "--tags", "canary,blue")] == ["prod-web-1", "prod-web-2"]
    r = cli("agent", "tag", "remove", "blue", "--tags", "name:prod-web-2")
    assert r.returncode == 0
    assert cli.inv().get("prod-web-2").tags == ["production", "web", "eu-west", "canary"]
    # Thresholds come from the inventory: drop high_mem_gib below this machine's memory.
    text = cli.inventory.read_text()
    cli.inventory.write_text(text.replace("version: 1\n", "version: 1\nautotags:\n  high_mem_gib: 0.5\n", 1))
    r = cli("agent", "refresh")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in NAMES:
        h = cli.inv().get(name)
        assert "high-mem" in h.auto_tags
    assert cli.inv().get("prod-web-1").tags == ["production", "web", "us-east", "canary", "blue"]  # untouched
    assert [h["name"] for h in cli.json("agent", "list", "--tags", "high-mem,canary")] == ["prod-web-1", "prod-web-2"]
    r = cli("agent", "tag", "add", "bad tag", "--tags", "web")
    assert r.returncode == ExitStatus.USAGE


def test_remove_asks_and_purges(cli, fleet) -> None:
    register_all(cli, fleet)
    hid = agent_id("prod-db-1")
    r = cli("agent", "remove", hid)
    assert r.returncode == ExitStatus.USAGE and "without --yes" in r.stderr
    assert "prod-db-1" in cli.inv().hosts
    r = cli("agent", "remove", hid[:6], "--yes", "--purge")
    assert r.returncode == 0, r.stderr
    assert "prod-db-1" not in cli.inv().hosts
    probe = fleet["prod-db-1"].exec("sh", "-c", "test -e /var/lib/nextdeploy", check=False)
    assert probe.returncode == 1  # ndctl's files are gone from the host
    r = cli("agent", "remove", "prod-db-1", "--yes")
    assert r.returncode == ExitStatus.NOT_FOUND


def test_proxy_jump_through_a_bastion(cli, fleet, container_hosts, ssh_block) -> None:
    bastion, target = container_hosts[0], container_hosts[1]
    ip = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                         target.container], capture_output=True, text=True, check=True).stdout.strip()
    # The target's sshd is reachable only through the bastion's network, on port 22.
    cli.ssh_config.write_text(ssh_block("bastion", bastion) + ssh_block(
        "inner-1", type(target)(target.name, ip, 22, "root", target.identity, target.host_key), proxy_jump="bastion"))
    # --trust-host-key covers the target, never the hop: an unknown bastion is refused.
    r = cli("agent", "register", "--name", "inner-1", "--tags", "inner", "--trust-host-key")
    assert r.returncode == ExitStatus.HOST_KEY, r.stderr
    assert f"(127.0.0.1:{bastion.port})" in r.stderr.replace("[", "").replace("]", "")
    assert not cli.inventory.exists()
    (cli.home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{bastion.port} {bastion.host_key}\n")
    r = cli("agent", "register", "--name", "inner-1", "--tags", "inner", "--trust-host-key")
    assert r.returncode == 0, r.stderr
    h = cli.inv().get("inner-1")
    assert (h.address, h.port, h.proxy_jump) == (ip, 22, "bastion")
    r = cli("exec", "--tags", "inner", "--", "hostname")
    assert r.returncode == 0 and r.stdout.strip().endswith(target.container)


def test_non_root_login_with_sudo(cli, fleet) -> None:
    th = fleet["prod-web-2"]
    # password '*' (not the locked '!'): with UsePAM no, sshd refuses keys for locked accounts
    th.exec("sh", "-c", "id deploy >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' deploy; "
                        "mkdir -p ~deploy/.ssh && cp /root/.ssh/authorized_keys ~deploy/.ssh/ && "
                        "chown -R deploy: ~deploy/.ssh && echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy")
    th.exec("sh", "-c", "rm -rf /var/lib/nextdeploy ~deploy/.cache/nextdeploy")
    common = ["--address", "127.0.0.1", "--port", str(th.port), "--identity", str(th.identity), "--trust-host-key"]
    # Without sudo the helper lives in the user's home and runs unprivileged.
    r = cli("agent", "register", "--name", "deployer", "--user", "deploy", "--tags", "plain", *common)
    assert r.returncode == 0, r.stderr
    assert th.exec("sh", "-c", "ls ~deploy/.cache/nextdeploy").stdout.startswith("helper-")
    assert cli.json("agent", "facts", "deployer")["user"] == "deploy"
    r = cli("exec", "--tags", "plain", "--", "id -u")
    assert r.stdout.strip().endswith("| " + th.exec("id", "-u", "deploy").stdout.strip())
    # With --sudo every command escalates with `sudo -n`, the helper included.
    r = cli("agent", "register", "--name", "deployer", "--user", "deploy", "--sudo", *common)
    assert r.returncode == 0, r.stderr
    assert cli.inv().get("deployer").sudo is True
    r = cli("exec", "--tags", "name:deployer", "--", "id -u")
    assert r.returncode == 0 and r.stdout.strip() == "deployer | 0"
    assert cli.json("agent", "facts", "deployer")["uid"] == 0
    assert th.exec("stat", "-c", "%U", "/var/lib/nextdeploy").stdout.strip() == "root"
    # A sudo that wants a password fails at once instead of hanging the fan-out.
    th.exec("rm", "/etc/sudoers.d/deploy")
    r = cli("exec", "--tags", "name:deployer", "--", "id -u", timeout=60)
    assert r.returncode == 3 and "password is required" in r.stderr


def _on_a_terminal(cli, args: list[str], answer: str) -> tuple[int, str]:
    """Run ndctl with a pseudo-terminal as stdin/stdout/stderr and answer its first prompt."""
    import os
    import pty
    import select
    import sys
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ndctl", *args], env=cli.env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen, answered, deadline = b"", False, time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not answered and b"Trust this host key" in seen:
                os.write(master, answer.encode() + b"\n")
                answered = True
        elif proc.poll() is not None:
            break
    rc = proc.wait(timeout=60)
    os.close(master)
    return rc, seen.decode(errors="replace")


def test_first_use_on_a_terminal_shows_the_fingerprint_and_asks(cli, fleet) -> None:
    th = fleet["prod-web-1"]
    rc, screen = _on_a_terminal(cli, ["agent", "register", "--name", "prod-web-1", "--tags", "web"], "n")
    assert fingerprint(th.host_key) in screen and "can't be established" in screen
    assert rc == ExitStatus.HOST_KEY and "not accepted" in screen
    assert not cli.inventory.exists()
    rc, screen = _on_a_terminal(cli, ["agent", "register", "--name", "prod-web-1", "--tags", "web"], "y")
    assert rc == 0, screen
    assert "registered prod-web-1" in screen
    assert cli.inv().get("prod-web-1").host_key == th.host_key


def test_metrics_and_running_containers_on_a_real_engine(cli, fleet) -> None:
    from ndctl import Fleet, sandbox

    th = fleet["prod-db-1"]
    ref = sandbox.import_busybox(th)
    th.exec("docker", "rm", "-f", "ndt-burner", check=False)
    th.exec("docker", "run", "-d", "--name", "ndt-burner", "--label", "com.nextdeploy.test=1", ref,
            "/bin/busybox", "sh", "-c", "while :; do :; done")
    try:
        register_all(cli, fleet)
        facts = cli.json("agent", "facts", "prod-db-1")
        burner = [c for c in facts["containers"] if c["name"] == "ndt-burner"]
        assert burner and burner[0]["state"] == "running" and burner[0]["image"] == ref
        assert burner[0]["labels"] == {"com.nextdeploy.test": "1"}
        m = Fleet(cli.inventory).select("name:prod-db-1").metrics(interval=0.5)
        assert m.ok, m.summary_line()
        metrics = m["prod-db-1"].value
        usage = {c.name: c for c in metrics.containers}
        assert usage["ndt-burner"].cpu_percent > 20  # a busy loop: most of a core
        assert usage["ndt-burner"].memory_bytes > 0
        assert 0 <= metrics.cpu_percent <= 100 and len(metrics.load) == 3
        # -o yaml and --inventory work like -o json and NDCTL_INVENTORY
        env = {k: v for k, v in cli.env.items() if k != "NDCTL_INVENTORY"}
        r = subprocess.run([sys.executable, "-m", "ndctl", "--inventory", str(cli.inventory), "agent", "list",
                            "-o", "yaml"], env=env, capture_output=True, text=True, timeout=60)
        import yaml
        assert [h["name"] for h in yaml.safe_load(r.stdout)] == NAMES
    finally:
        th.exec("docker", "rm", "-f", "ndt-burner", check=False)
