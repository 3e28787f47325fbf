"""Fan-out on the many-hosts fleet: plain OpenSSH sshd processes on 127.0.0.x.

These check the engine against real OpenSSH limits. Each limit test has a
control run without ndctl's handling, which must show the failure, so the
test proves it can see what it guards against.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ndctl.api import Fleet
from ndctl.core import knownhosts
from ndctl.core.facts import Facts
from ndctl.core.inventory import Host, Inventory
from ndctl.core.results import Status
from ndctl.transport.ssh import Runner, RunOptions

pytestmark = pytest.mark.fleet


def write_inventory(path: Path, hosts, *, aliases_per_host: int = 1) -> Inventory:
    """Inventory + pinned keys for fleet hosts (registration itself is tested in test_agents)."""
    inv = Inventory.load(path)
    for h in hosts:
        for k in range(aliases_per_host):
            name = h.name if aliases_per_host == 1 else f"{h.name}-a{k}"
            inv.upsert(Host(name, h.address, port=h.port, user=h.user, identity=str(h.identity),
                            tags=["fleet", f"batch{int(h.address.rsplit('.', 1)[1]) % 4}"]))
        knownhosts.set_pin(inv.known_hosts_path, h.address, h.port, h.host_key)
    inv.save()
    return Inventory.load(path)


def test_exec_reaches_100_distinct_sshds(sshd_fleet_factory, tmp_path: Path) -> None:
    fleet = sshd_fleet_factory(100)
    inv = write_inventory(tmp_path / "inventory.yaml", fleet.hosts)
    env = {**os.environ, "NDCTL_INVENTORY": str(inv.path)}
    r = subprocess.run([sys.executable, "-m", "ndctl", "exec", "-o", "json", "--", "echo $SSH_CONNECTION"],
                       env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["summary"] == {"ok": 100, "failed": 0, "unreachable": 0}
    # SSH_CONNECTION = "client_ip client_port server_ip server_port": each host answered from its own sshd
    servers = {tuple(h["stdout"].split()[2:4]) for h in data["hosts"]}
    assert servers == {(h.address, str(h.port)) for h in fleet.hosts}

    r = subprocess.run([sys.executable, "-m", "ndctl", "exec", "--tags", "batch1", "--", "true"],
                       env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "25 hosts: 25 ok" in r.stderr


def test_facts_and_steps_across_the_fleet(sshd_fleet_factory, tmp_path: Path) -> None:
    fleet = sshd_fleet_factory(100)
    inv = write_inventory(tmp_path / "inventory.yaml", fleet.hosts[:30])
    f = Fleet(inv)
    facts = f.facts()
    assert facts.ok, facts.summary_line()
    assert all(isinstance(r.value, Facts) and r.value.cpu_count == os.cpu_count() for r in facts)
    steps = f.steps(["true", "echo one", "echo two", "test -d /tmp", "uname -s"])
    assert steps.ok and all(r.stdout == "one\ntwo\nLinux\n" for r in steps)
    failing = f.steps(["echo before", "false", "echo never"])
    assert failing.counts() == {"ok": 0, "failed": 30, "unreachable": 0}
    assert all(r.stdout == "before\n" and r.exit_code == 1 for r in failing)


def _many_channels(host: Host, known_hosts: Path, n: int, **opts) -> list:
    async def main():
        async with Runner(RunOptions(known_hosts_files=[known_hosts], **opts)) as r:
            return await asyncio.gather(*(r.run(host, ["sh", "-c", "sleep 0.3; echo ok"]) for _ in range(n)))
    return asyncio.run(main())


def test_maxsessions_refusals_are_retried(sshd_fleet_factory, tmp_path: Path) -> None:
    # OpenSSH's default MaxSessions 10; ndctl is told it may open 30 channels at once.
    fleet = sshd_fleet_factory(1, max_sessions=10)
    th = fleet.hosts[0]
    host = Host("one", th.address, port=th.port, user=th.user, identity=str(th.identity))
    kh = tmp_path / "known_hosts"
    knownhosts.set_pin(kh, th.address, th.port, th.host_key)

    control = _many_channels(host, kh, 30, max_channels=30, channel_attempts=1)
    refused = [r for r in control if r.status is Status.FAILED and "channel open refused" in (r.error or "")]
    assert refused, "the control run should hit sshd's MaxSessions"

    results = _many_channels(host, kh, 30, max_channels=30)
    assert [r.stdout for r in results] == ["ok\n"] * 30

    capped = _many_channels(host, kh, 30)  # the default cap never exceeds MaxSessions in the first place
    assert [r.stdout for r in capped] == ["ok\n"] * 30


def test_maxstartups_is_respected(sshd_fleet_factory, tmp_path: Path) -> None:
    # An sshd that drops every unauthenticated connection beyond 4 pending handshakes; ndctl
    # stays one below, as its default (8) stays below OpenSSH's default (10): sshd learns
    # that a handshake finished a moment after the client does.
    fleet = sshd_fleet_factory(1, max_startups="4:100:4")
    th = fleet.hosts[0]
    kh = tmp_path / "known_hosts"
    knownhosts.set_pin(kh, th.address, th.port, th.host_key)
    hosts = [Host(f"alias-{i}", th.address, port=th.port, user=th.user, identity=str(th.identity))
             for i in range(40)]

    async def run(**opts):
        async with Runner(RunOptions(known_hosts_files=[kh], **opts)) as r:
            return await r.fan_out(hosts, lambda h: r.run(h, ["true"]))

    control = asyncio.run(run(max_handshakes=100, connect_attempts=1))
    assert control.unreachable, "the control run should be dropped by MaxStartups"
    result = asyncio.run(run(max_handshakes=3))
    assert result.ok, result.summary_line()


def test_dropped_connections_are_noticed(sshd_fleet_factory, tmp_path: Path) -> None:
    import signal

    fleet = sshd_fleet_factory(1)
    th = fleet.hosts[0]
    kh = tmp_path / "known_hosts"
    knownhosts.set_pin(kh, th.address, th.port, th.host_key)
    host = Host("one", th.address, port=th.port, user=th.user, identity=str(th.identity))

    def session_sshd(pid_text: str) -> int:
        pid = int(pid_text)
        assert "sshd" in Path(f"/proc/{pid}/cmdline").read_text(), "expected the session's sshd"
        return pid

    async def main():
        async with Runner(RunOptions(known_hosts_files=[kh])) as r:
            first = await r.run(host, ["sh", "-c", "echo $PPID"])
            os.kill(session_sshd(first.stdout), signal.SIGKILL)
            await asyncio.sleep(0.3)
            again = await r.run(host, ["echo", "back"])  # dropped while idle: one fresh connection
            # dropped while a command runs: a failure (it may have done part of its work), output kept
            lines: list[str] = []
            task = asyncio.create_task(r.run(host, ["sh", "-c", "echo $PPID; echo partial; sleep 30"],
                                             on_output=lambda h, s, line: lines.append(line)))
            for _ in range(100):
                if len(lines) >= 2:
                    break
                await asyncio.sleep(0.05)
            os.kill(session_sshd(lines[0]), signal.SIGKILL)
            mid = await asyncio.wait_for(task, 10)
            return first, again, mid

    first, again, mid = asyncio.run(main())
    assert again.ok and again.stdout == "back\n" and again.duration < 2.5
    assert mid.status is Status.FAILED and mid.exit_code is None
    assert "partial\n" in mid.stdout
    assert "connection lost" in mid.error or "without an exit status" in mid.error
