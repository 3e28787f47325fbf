"""End to end: shipping an image built on THIS machine's engine to real test hosts
(``docker save`` once, fanned out to each host's ``docker load`` over SSH)."""
from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import pytest

from ndctl import sandbox
from ndctl.core.errors import NotFoundError
from ndctl.core.inventory import Host
from ndctl.core.results import Status
from ndctl.ops import images
from ndctl.transport.ssh import Runner, RunOptions

pytestmark = pytest.mark.e2e


def build_local_image(tmp_path: Path, ref: str) -> str:
    """A busybox image in this machine's engine; returns its id."""
    tar = sandbox.busybox_rootfs_tar(tmp_path / "busybox.tar")
    subprocess.run(["docker", "import", "--change", 'CMD ["/bin/busybox", "sh"]', str(tar), ref],
                   check=True, capture_output=True, timeout=120)
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def local_image(tmp_path):
    ref = f"ndt-ship-{secrets.token_hex(4)}:1"
    image_id = build_local_image(tmp_path, ref)
    try:
        yield ref, image_id
    finally:
        subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True, timeout=60)


@pytest.fixture
def two(container_hosts, tmp_path):
    """(RunOptions, [Host, Host], [TestHost, TestHost]) for ndt-1 and ndt-2."""
    ths = container_hosts[:2]
    kh = sandbox.write_known_hosts(ths, tmp_path / "known_hosts")
    hosts = [Host(t.name, t.address, port=t.port, user=t.user, identity=str(t.identity)) for t in ths]
    return RunOptions(known_hosts_files=[kh]), hosts, ths


def host_image_id(th, ref: str) -> str | None:
    r = th.exec("docker", "image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def ensure(opts, hosts, ref, **kw):
    async def go():
        async with Runner(opts) as r:
            return await images.ensure_image(r, hosts, ref, **kw)
    return asyncio.run(go())


def test_ship_to_two_hosts_then_skip_as_present(two, local_image):
    opts, hosts, ths = two
    ref, local_id = local_image
    try:
        assert [host_image_id(t, ref) for t in ths] == [None, None]
        res = ensure(opts, hosts, ref)
        assert res.ok, [r.to_dict() for r in res]
        for r in res:
            assert r.value["action"] == "shipped" and r.value["image_id"] == local_id
            assert r.value["bytes"] > 1_000_000  # the static busybox, streamed
        assert [host_image_id(t, ref) for t in ths] == [local_id, local_id]  # ids match this machine's

        again = ensure(opts, hosts, ref)
        assert again.ok and [r.value["action"] for r in again] == ["present", "present"]
        assert [r.value["bytes"] for r in again] == [0, 0]

        # One host lost it: only that one receives it again.
        ths[1].exec("docker", "image", "rm", "-f", ref)
        mixed = ensure(opts, hosts, ref)
        assert mixed.ok and [r.value["action"] for r in mixed] == ["present", "shipped"]
        assert host_image_id(ths[1], ref) == local_id
    finally:
        for t in ths:
            t.exec("docker", "image", "rm", "-f", ref, check=False)


def test_missing_local_image_is_a_clear_error_and_changes_nothing(two):
    opts, hosts, ths = two
    def images():  # as sets: `docker image ls` orders images created in the same second arbitrarily
        return [sorted(t.exec("docker", "image", "ls", "-q", "--no-trunc").stdout.split()) for t in ths]

    before = images()
    with pytest.raises(NotFoundError) as e:
        ensure(opts, hosts, "ndt-never-built:404")
    assert "'ndt-never-built:404' is not in the local Docker engine" in str(e.value)
    assert images() == before


def test_load_failing_on_one_host_names_it_and_the_other_still_gets_the_image(two, local_image):
    """A `docker` on one host whose `load` fails (a wrapper earlier in PATH): that host's
    stderr is the error, the other host's transfer from the same `docker save` completes."""
    opts, hosts, ths = two
    ref, local_id = local_image
    wrapper = "/usr/local/bin/docker"
    assert ths[1].exec("test", "-e", wrapper, check=False).returncode != 0
    script = ('#!/bin/sh\n'
              'if [ "$1" = load ]; then echo "ndt: no space left on device" >&2; exit 1; fi\n'
              'exec /usr/bin/docker "$@"\n')
    ths[1].exec("sh", "-c", f"cat > {wrapper} && chmod 0755 {wrapper}", input=script)
    try:
        res = ensure(opts, hosts, ref)
        ok, bad = res[hosts[0].name], res[hosts[1].name]
        assert ok.ok and ok.value["action"] == "shipped" and host_image_id(ths[0], ref) == local_id
        assert bad.status is Status.FAILED and "ndt: no space left on device" in bad.error
        assert host_image_id(ths[1], ref) is None
        assert not res.ok and int(res.exit_status()) == 3
    finally:
        ths[1].exec("rm", "-f", wrapper)
        for t in ths:
            t.exec("docker", "image", "rm", "-f", ref, check=False)
