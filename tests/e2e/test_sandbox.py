"""The real test fleet itself: container hosts, the sshd fleet, the sandbox commands."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ndctl import sandbox
from ndctl.sandbox import image as sbimage
from ndctl.sandbox._util import cmdline, pid_alive, read_ssh_banner

SANDBOX_TEST_GROUP = "ndctl-pytest-sbx"  # listed in conftest.DEPENDENT_GROUPS


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _plain_ssh(host: sandbox.TestHost, known_hosts: Path, *command: str) -> subprocess.CompletedProcess:
    """The OpenSSH client, no config file: ssh -i KEY -p PORT -o UserKnownHostsFile=... user@addr cmd."""
    return _run([
        "ssh", "-F", "/dev/null", "-i", str(host.identity), "-p", str(host.port),
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        f"{host.user}@{host.address}", *command,
    ])


def _keyscan(host: sandbox.TestHost) -> str:
    cp = _run(["ssh-keyscan", "-T", "10", "-t", "ed25519", "-p", str(host.port), host.address])
    lines = [ln for ln in cp.stdout.splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 1, (cp.stdout, cp.stderr)
    pattern, ktype, kb64 = lines[0].split()[:3]
    assert pattern == host.known_hosts_pattern
    return f"{ktype} {kb64}"


# ---------------------------------------------------------------------------
# pure parts (no hosts needed)


def test_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://mirror.example/debian-security bookworm-security main\n")
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (d / "other.list.disabled").write_text("deb http://nope.example/debian bookworm main\n")
    os.environ.pop("NDCTL_DEBIAN_MIRROR", None)
    uri, keyring = sbimage.debian_mirror(tmp_path)
    assert uri == "http://mirror.example/debian"
    assert keyring == "/usr/share/keyrings/debian-archive-keyring.gpg"
    (d / "debian.sources").unlink()
    with pytest.raises(sandbox.SandboxError, match="no Debian archive mirror"):
        sbimage.debian_mirror(tmp_path)


def test_image_tag_is_a_stable_recipe_hash() -> None:
    ref = sandbox.image_ref()
    assert ref.startswith("ndctl-testhost:") and ref == sandbox.image_ref()
    assert len(ref.split(":", 1)[1]) == 16


def test_loopback_addresses_and_ssh_config(tmp_path: Path) -> None:
    assert [sandbox.loopback_address(i) for i in (0, 1, 252, 253)] == [
        "127.0.0.2", "127.0.0.3", "127.0.0.254", "127.0.1.1"]
    h = sandbox.TestHost("h1", "127.0.0.2", 2222, "ndbench", Path("/k/id"), "ssh-ed25519 AAAA", None)
    cfg = sandbox.write_ssh_config([h], tmp_path / "ssh_config")
    text = cfg.read_text()
    for needle in ("Host h1\n", "HostName 127.0.0.2", "Port 2222", "User ndbench", "IdentityFile /k/id",
                   "StrictHostKeyChecking yes", f"UserKnownHostsFile {tmp_path / 'known_hosts'}"):
        assert needle in text
    assert (tmp_path / "known_hosts").read_text() == "[127.0.0.2]:2222 ssh-ed25519 AAAA\n"
    assert sandbox.TestHost.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    with pytest.raises(sandbox.SandboxError, match="not a container host"):
        h.exec("true")


# ---------------------------------------------------------------------------
# container hosts


def test_container_hosts_answer_plain_openssh(container_hosts, tmp_path: Path) -> None:
    known_hosts = sandbox.write_known_hosts(container_hosts, tmp_path / "known_hosts")
    assert [h.name for h in container_hosts] == ["ndt-1", "ndt-2", "ndt-3"]
    assert len({h.port for h in container_hosts}) == 3
    with ThreadPoolExecutor(len(container_hosts)) as pool:
        results = list(pool.map(lambda h: _plain_ssh(h, known_hosts, "true"), container_hosts))
    for h, cp in zip(container_hosts, results):
        assert h.address == "127.0.0.1" and h.user == "root" and h.container == h.name
        assert cp.returncode == 0, (h.name, cp.stderr)
    # the same through the generated client config, checking who/where we are
    cp = _plain_ssh(container_hosts[1], known_hosts, "id -un; hostname; wc -c < ~/.bashrc; wc -c < ~/.profile")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["root", "ndt-2", "0", "0"]


def test_ssh_config_file_works(container_hosts, container_hosts_ssh_config) -> None:
    cp = _run(["ssh", "-F", str(container_hosts_ssh_config), "ndt-3", "hostname"])
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "ndt-3"


def test_wrong_host_key_is_refused(container_hosts, tmp_path: Path) -> None:
    a, b = container_hosts[0], container_hosts[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{a.known_hosts_pattern} {b.host_key}\n")  # b's key pinned for a
    cp = _plain_ssh(a, known_hosts, "true")
    assert cp.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in cp.stderr or "verification failed" in cp.stderr


def test_host_key_matches_ssh_keyscan(container_hosts) -> None:
    keys = set()
    for h in container_hosts:
        assert h.host_key.startswith("ssh-ed25519 AAAA")
        assert _keyscan(h) == h.host_key
        keys.add(h.host_key)
    assert len(keys) == len(container_hosts)  # generated per container, not baked in


def test_hosts_have_their_own_docker_engine_and_filesystem(container_hosts) -> None:
    ids = set()
    for h in container_hosts:
        cp = h.exec("docker", "info", "--format", "{{.ID}} {{.Driver}}")
        engine_id, driver = cp.stdout.split()
        assert driver in ("overlay2", "vfs")
        ids.add(engine_id)
    assert len(ids) == len(container_hosts)
    a, b = container_hosts[0], container_hosts[1]
    a.exec("sh", "-c", "cat > /root/only-on-a", input="marker\n")
    assert a.exec("cat", "/root/only-on-a").stdout == "marker\n"
    assert b.exec("test", "-e", "/root/only-on-a", check=False).returncode == 1


def test_exec_error_shows_stderr(container_host) -> None:
    with pytest.raises(sandbox.ExecError, match="oops") as info:
        container_host.exec("sh", "-c", "echo oops >&2; exit 3")
    assert info.value.returncode == 3
    assert container_host.exec("sh", "-c", "exit 4", check=False).returncode == 4
    assert container_host.exec("cat", input=b"\x00\x01").stdout == b"\x00\x01"


def _busybox_rootfs(tmp_path: Path) -> Path:
    if not shutil.which("busybox"):
        if os.environ.get("CI"):
            pytest.fail("no busybox (apt-get install busybox-static); CI is set, so this is an error")
        pytest.skip("needs busybox-static")
    return sandbox.busybox_rootfs_tar(tmp_path / "busybox-rootfs.tar")


def test_inner_docker_run_of_a_locally_imported_image(container_hosts, tmp_path: Path) -> None:
    host, other = container_hosts[0], container_hosts[1]
    tar = _busybox_rootfs(tmp_path)
    subprocess.run(["docker", "cp", str(tar), f"{host.container}:/tmp/busybox.tar"], check=True,
                   capture_output=True)
    # A tag of its own: other tests import ndt-busybox:1 into the shared hosts.
    ref = f"ndt-isolation-{os.getpid()}:1"
    host.exec("docker", "import", "--change", 'CMD ["/bin/busybox", "sh"]', "/tmp/busybox.tar", ref)
    cp = host.exec("docker", "run", "--rm", "--name", "bb", ref, "/bin/busybox", "sh", "-c",
                   "echo hello from busybox; /bin/busybox cat /proc/self/cgroup", timeout=120)
    assert cp.stdout.startswith("hello from busybox\n")
    # the inner engine puts its containers under the test host's own cgroup parent
    assert f":/{host.name}/" in cp.stdout
    # ... and the image exists only in that host's engine
    try:
        assert other.exec("docker", "image", "inspect", ref, check=False).returncode != 0
        assert _run(["docker", "image", "inspect", ref]).returncode != 0
    finally:
        host.exec("docker", "image", "rm", "-f", ref, check=False)


def test_stop_group_removes_containers_and_volumes(container_hosts) -> None:
    group = f"ndctl-pytest-aux-{os.getpid()}"
    image = sandbox.image_ref()
    name = f"ndt-aux-{os.getpid()}"
    try:
        subprocess.run(["docker", "volume", "create", "--label", f"{sandbox.LABEL}={group}", f"{name}-docker"],
                       check=True, capture_output=True)
        subprocess.run(["docker", "create", "--name", name, "--label", f"{sandbox.LABEL}={group}",
                        "-v", f"{name}-docker:/var/lib/docker", image], check=True, capture_output=True)
        assert [c["name"] for c in sandbox.list_group(group)] == [name]
        assert sandbox.stop_group(group) == [name]
        assert sandbox.list_group(group) == []
        vols = _run(["docker", "volume", "ls", "-q", "--filter", f"label={sandbox.LABEL}={group}"]).stdout
        assert vols.strip() == ""
        # the test hosts of the session are untouched
        assert len(sandbox.list_group("ndctl-pytest")) == len(container_hosts)
    finally:
        sandbox.stop_group(group)


def test_sandbox_up_is_idempotent_and_down_cleans(container_hosts, tmp_path: Path) -> None:
    # (container_hosts: capability check, e2e marker, and the session lock that guards our group)
    workdir = tmp_path / "sbx"
    kw = {"group": SANDBOX_TEST_GROUP}
    try:
        first = sandbox.up(1, workdir, prefix="ndt-sbx-", **kw)
        again = sandbox.up(1, workdir, prefix="ndt-sbx-", **kw)
        assert [h.name for h in first] == ["ndt-sbx-1"]
        assert again == first  # reused: same port, same host key
        state = json.loads((workdir / "state.json").read_text())
        assert [sandbox.TestHost.from_dict(h) for h in state["hosts"]] == first
        cp = _run(["ssh", "-F", str(workdir / "ssh_config"), "ndt-sbx-1", "docker info --format '{{.Name}}'"])
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.strip() == "ndt-sbx-1"
        [st] = sandbox.status(workdir, **kw)
        assert (st.name, st.state, st.port, st.ssh, st.docker) == ("ndt-sbx-1", "running", first[0].port, True, True)
        # a host that died (say, a reboot) is restarted by the next up: same key, same inner state
        first[0].exec("docker", "volume", "create", "survivor")
        subprocess.run(["docker", "kill", "ndt-sbx-1"], check=True, capture_output=True)
        assert sandbox.status(workdir, **kw)[0].state == "exited"
        third = sandbox.up(1, workdir, prefix="ndt-sbx-", **kw)
        assert third[0].host_key == first[0].host_key
        assert third[0].exec("docker", "volume", "ls", "-q").stdout.split() == ["survivor"]
        assert _plain_ssh(third[0], workdir / "known_hosts", "true").returncode == 0
        # a broken one (sshd gone) is recreated
        third[0].exec("sh", "-c", "pkill -x sshd; rm -f /usr/sbin/sshd")
        fourth = sandbox.up(1, workdir, prefix="ndt-sbx-", **kw)
        assert fourth[0].host_key != first[0].host_key
        assert _plain_ssh(fourth[0], workdir / "known_hosts", "true").returncode == 0
    finally:
        assert sandbox.down(workdir, **kw) == ["ndt-sbx-1"]
    assert sandbox.list_group(SANDBOX_TEST_GROUP) == []
    assert not (workdir / "state.json").exists() and not (workdir / "ssh_config").exists()
    assert sandbox.status(workdir, **kw) == []


# ---------------------------------------------------------------------------
# plain sshd fleet


def test_sshd_fleet_of_10_answers_and_stop_leaves_nothing(sshd_fleet_factory) -> None:
    fleet = sshd_fleet_factory(10)
    hosts = fleet.hosts
    assert [h.address for h in hosts] == [f"127.0.0.{i}" for i in range(2, 12)]
    assert all(h.user == "ndbench" and h.container is None for h in hosts)
    assert len({h.host_key for h in hosts}) == 10
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda h: _plain_ssh(h, fleet.known_hosts, "true"), hosts))
    assert [cp.returncode for cp in results] == [0] * 10, [cp.stderr for cp in results]
    cp = _run(["ssh", "-F", str(fleet.ssh_config), hosts[-1].name, "id -un; echo $HOME"])
    assert cp.stdout.split() == ["ndbench", "/home/ndbench"], cp.stderr
    assert _keyscan(hosts[3]) == hosts[3].host_key

    pids, tmpdir = fleet.pids, fleet.tmpdir
    assert len(pids) == 10 and all(pid_alive(p) for p in pids)
    fleet.stop()
    assert not [p for p in pids if pid_alive(p)]
    assert not [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                if pid_alive(p) and str(tmpdir) in cmdline(p)]
    assert not tmpdir.exists()
    assert all(read_ssh_banner(h.address, h.port, timeout=1) is None for h in hosts)
    fleet.stop()  # idempotent


def test_sshd_fleet_fixture_has_20_hosts_with_empty_startup_files(sshd_fleet) -> None:
    hosts = sshd_fleet.hosts
    assert len(hosts) == 20
    assert all(read_ssh_banner(h.address, h.port) for h in hosts)
    for name in (".bashrc", ".profile", ".bash_profile"):
        assert Path("/home/ndbench", name).stat().st_size == 0
    cp = _plain_ssh(hosts[19], sshd_fleet.known_hosts, "echo ok")
    assert cp.returncode == 0 and cp.stdout == "ok\n", cp.stderr
