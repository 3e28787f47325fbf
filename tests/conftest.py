"""Shared pytest fixtures: real test hosts (``ndctl.sandbox``).

* ``container_hosts`` (session): 3 isolated container hosts ``ndt-1..3`` with
  their own sshd and Docker engine; tests using it are marked ``e2e``.
* ``sshd_fleet_factory`` (session) / ``sshd_fleet`` (20 hosts): plain sshd
  processes on 127.0.0.x logging in as ``ndbench``; marked ``fleet``.

A missing capability (not root, no Docker daemon, no sshd) skips those tests,
except when the ``CI`` environment variable is set: then it is an error.
Everything started here is removed at session end, also on failure; the
leftovers of crashed earlier sessions are removed at session start.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator

import pytest

from ndctl import sandbox

#: label group of the pytest container hosts (never collides with the demo sandbox)
TEST_GROUP = "ndctl-pytest"
#: groups whose hosts only exist while a session holds the TEST_GROUP lock (tests using
#: them also use ``container_hosts``), so they are leftovers whenever that lock is free
DEPENDENT_GROUPS = ("ndctl-pytest-sbx",)
CONTAINER_HOST_NAMES = ["ndt-1", "ndt-2", "ndt-3"]
FLEET_SIZE = 20

_CONTAINER_FIXTURES = {"container_hosts", "container_host"}
_FLEET_FIXTURES = {"sshd_fleet", "sshd_fleet_factory"}


def _require(reason: str | None) -> None:
    """Skip (or, with CI set, fail) when a capability cannot exist here."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a missing test capability is an error, not a skip)",
                    pytrace=False)
    pytest.skip(reason)


def _sigterm_as_interrupt(signum, frame):  # pragma: no cover - only on kill
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A plain `kill` of pytest would skip fixture finalizers and leave hosts
    # running; as KeyboardInterrupt, pytest tears down cleanly.
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    except ValueError:  # not the main thread
        pass


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove leftovers of crashed earlier runs (only ones no live session owns)."""
    if os.geteuid() != 0:
        return
    try:
        sandbox.cleanup_stale_fleets()
    except Exception as exc:  # noqa: BLE001 - never break collection over cleanup
        print(f"warning: stale sshd fleet cleanup failed: {exc}")
    if sandbox.container_hosts_unavailable_reason() is None:
        try:
            sandbox.stop_group_if_unused(TEST_GROUP, also=DEPENDENT_GROUPS)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: stale test host cleanup failed: {exc}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _CONTAINER_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        if names & _FLEET_FIXTURES:
            item.add_marker(pytest.mark.fleet)


@pytest.fixture(scope="session")
def container_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[sandbox.TestHost]]:
    """Three fresh container hosts ``ndt-1..3`` (root login with ``host.identity``)."""
    _require(sandbox.container_hosts_unavailable_reason())
    workdir = tmp_path_factory.mktemp("container-hosts")
    # One pytest session at a time uses the ndt-* hosts; a second one waits.
    if sandbox.group_in_use(TEST_GROUP):
        print(f"\nwaiting for another pytest session to release the {TEST_GROUP} test hosts...",
              file=sys.__stderr__, flush=True)
    with sandbox.group_lock(TEST_GROUP, timeout=1800):
        sandbox.stop_group(TEST_GROUP)
        try:
            hosts = sandbox.start_container_hosts(CONTAINER_HOST_NAMES, group=TEST_GROUP, workdir=workdir)
            sandbox.write_ssh_config(hosts, workdir / "ssh_config", known_hosts=workdir / "known_hosts")
            yield hosts
        finally:
            sandbox.stop_group(TEST_GROUP)


@pytest.fixture(scope="session")
def container_hosts_ssh_config(container_hosts: list[sandbox.TestHost]):
    """Path of an OpenSSH client config (``ssh -F``) with a Host block per container host."""
    return container_hosts[0].identity.parent / "ssh_config"


@pytest.fixture()
def container_host(container_hosts: list[sandbox.TestHost]) -> sandbox.TestHost:
    """The first container host (``ndt-1``)."""
    return container_hosts[0]


@pytest.fixture(scope="session")
def sshd_fleet_factory() -> Iterator[Callable[..., sandbox.SshdFleet]]:
    """``sshd_fleet_factory(n, **kw)`` -> a running :class:`SshdFleet`; all stopped at session end."""
    _require(sandbox.sshd_fleet_unavailable_reason())
    fleets: list[sandbox.SshdFleet] = []

    def make(n: int, **kw) -> sandbox.SshdFleet:
        fleet = sandbox.SshdFleet(n, autostart=False, **kw)
        fleets.append(fleet)
        return fleet.start()

    try:
        yield make
    finally:
        errors = []
        for fleet in fleets:
            try:
                fleet.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def sshd_fleet(sshd_fleet_factory) -> sandbox.SshdFleet:
    """A running fleet of 20 plain sshd hosts on 127.0.0.2..21 (user ``ndbench``)."""
    return sshd_fleet_factory(FLEET_SIZE)
