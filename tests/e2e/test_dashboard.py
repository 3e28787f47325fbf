"""``ndctl dashboard`` with the real backend on real test hosts: live rows, a greyed dead host, a bulk command."""
from __future__ import annotations

import asyncio

import pytest

from ndctl.core.inventory import Host, locked
from ndctl.tui.app import DashboardApp
from ndctl.tui.backend import FleetBackend, ThreadedBackend
from ndctl.tui.screens.confirm import ConfirmScreen, ResultScreen

pytestmark = pytest.mark.e2e

MARK = "/tmp/ndctl-dashboard-e2e"
APP_DIR = "/var/lib/nextdeploy/apps/dashe2e"


async def until(pilot, cond, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await pilot.pause(0.05)
    await pilot.pause()


def test_dashboard_on_real_hosts(cli, container_hosts, ssh_block, monkeypatch) -> None:
    a, b = container_hosts[0], container_hosts[1]
    cli.ssh_config.write_text(ssh_block("dash-a", a) + ssh_block("dash-b", b))
    for n in ("dash-a", "dash-b"):
        r = cli("agent", "register", "--name", n, "--tags", "dash", "--trust-host-key")
        assert r.returncode == 0, r.stderr
    with locked(cli.inventory) as inv:  # a host nobody listens for: must show greyed, with the reason
        inv.upsert(Host(name="dash-dead", address="127.0.0.1", port=1, user="root", tags=["dash"]))
        inv.save()
    for k, v in cli.env.items():
        if k.startswith(("HOME", "NDCTL_")):
            monkeypatch.setenv(k, v)
    for h in (a, b):
        h.exec("rm", "-f", MARK, check=False)
    a.exec("mkdir", "-p", f"{APP_DIR}/lock")  # an app with state on one host, its lock held
    a.exec("sh", "-c", f"echo '{{\"who\":\"e2e\",\"version\":\"v9\",\"deploy_id\":\"0000abcd\"}}' "
           f"> {APP_DIR}/lock/info.json")

    async def main() -> None:
        real = FleetBackend(cli.inventory, selector="dash")
        app = DashboardApp(ThreadedBackend(real), refresh_seconds=0)  # as `ndctl dashboard` runs it
        async with app.run_test(size=(150, 36)) as pilot:
            screen = app.screen
            await until(pilot, lambda: screen.rounds >= 1)
            for name in ("dash-a", "dash-b"):
                s = screen.samples[name]
                assert s.ok, s.reason
                assert 0.0 <= s.cpu_percent <= 100.0 and 0.0 < s.memory_used_percent < 100.0
                assert s.memory_total_bytes > 0 and s.containers is not None
                row = [str(c) for c in screen.query_one("#hosts").get_row(name)]
                assert row[3] == "yes" and row[4] == f"{s.cpu_percent:.1f}"
            dead = screen.samples["dash-dead"]
            assert not dead.ok and dead.reason
            assert str(screen.query_one("#hosts").get_row("dash-dead")[3]).startswith("no: ")
            # a second refresh reuses the connections: one per reachable host, opened once
            conns = dict(real.runner._conns)
            await pilot.press("g")
            await until(pilot, lambda: screen.rounds >= 2)
            assert real.runner._conns == conns and set(conns) == {"dash-a", "dash-b"}
            # bulk command on the two live hosts, through the confirm dialog
            await pilot.press("space", "space", "x", *f"hostname > {MARK}", "enter")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await until(pilot, lambda: isinstance(app.screen, ResultScreen))
            assert "2 hosts: 2 ok" in str(app.screen.query_one("Label").render())
            # facts refresh over the same connections, then the auto-tags show in the detail pane
            await pilot.press("escape", "r", "y")
            await until(pilot, lambda: real.cached_facts("dash-a")[0] is not None
                        and real.cached_facts("dash-b")[0] is not None)
            assert real.runner._conns == conns
            assert "docker" in [h for h in real.hosts() if h.name == "dash-a"][0].auto_tags
            # Deployments: the app found on the host, its lock shown as a running deploy
            await pilot.press("2")
            dep = app.screen
            await until(pilot, lambda: dep.view is not None)
            assert dep.apps == ["dashe2e"]
            assert "DEPLOY RUNNING dashe2e v9 by e2e" in str(dep.query_one("#progress").render())
            assert "unreadable" in str(dep.query_one("#serving").get_row("dash-dead")[5])
        assert real._runner is None  # closed with the app

    try:
        asyncio.run(main())
        for h in (a, b):
            assert h.exec("cat", MARK).stdout.strip() != ""
    finally:
        for h in (a, b):
            h.exec("rm", "-f", MARK, check=False)
        a.exec("rm", "-rf", APP_DIR, check=False)
