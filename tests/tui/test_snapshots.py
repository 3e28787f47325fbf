"""Snapshot tests (pytest-textual-snapshot) of each screen and dialog, fake backend, fixed size.

After an intended visible change: ``pytest tests/tui/test_snapshots.py --snapshot-update``,
look at the SVGs, then ``python -m ndctl.tui.screenshots`` for the README's.
"""
from __future__ import annotations

from ndctl.tui import screenshots
from ndctl.tui.app import DashboardApp
from ndctl.tui.fake import FakeBackend

SIZE = screenshots.SIZE


def app(**kw) -> DashboardApp:
    return DashboardApp(FakeBackend(), refresh_seconds=0, app_name="shop", **kw)


def test_fleet_screen(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=screenshots.prepare_fleet)


def test_fleet_readonly_unreachable_detail(snap_compare):
    async def before(pilot):
        await screenshots.prepare_fleet(pilot)
        pilot.app.screen.query_one("#hosts").move_cursor(row=5)  # edge-1: greyed, reason in the detail pane
        await pilot.pause()
    assert snap_compare(app(readonly=True), terminal_size=SIZE, run_before=before)


def test_fleet_confirm_dialog(snap_compare):
    async def before(pilot):
        await screenshots.prepare_fleet(pilot)
        await pilot.press("x", *"systemctl restart docker", "enter")
    assert snap_compare(app(), terminal_size=SIZE, run_before=before)


def test_deployments_screen(snap_compare):
    assert snap_compare(app(start="deployments"), terminal_size=SIZE, run_before=screenshots.prepare_deployments)


def test_rollback_confirm_dialog(snap_compare):
    async def before(pilot):
        await screenshots.prepare_deployments(pilot)
        await pilot.press("b")
    assert snap_compare(app(start="deployments"), terminal_size=SIZE, run_before=before)


def test_logs_screen(snap_compare):
    assert snap_compare(app(start="logs"), terminal_size=SIZE, run_before=screenshots.prepare_logs)


def test_logs_paused_with_search(snap_compare):
    async def before(pilot):
        await screenshots.prepare_logs(pilot)
        await pilot.press("slash", *"items/1", "enter", "p")
        pilot.app.backend.emit("web-1", "GET /api/items/1 200 2ms")
        await pilot.pause()
    assert snap_compare(app(start="logs"), terminal_size=SIZE, run_before=before)


def test_help_screen(snap_compare):
    async def before(pilot):
        await screenshots.prepare_fleet(pilot)
        await pilot.press("question_mark")
    assert snap_compare(app(), terminal_size=(150, 50), run_before=before)
