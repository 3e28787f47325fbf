"""Pilot tests of every dashboard screen and action, against the fake backend."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable, Input, RichLog, SelectionList, Static

from ndctl.tui.screens.confirm import ConfirmScreen, PromptScreen, ResultScreen
from ndctl.tui.screens.deployments import DeploymentsScreen
from ndctl.tui.screens.fleet import FleetScreen
from ndctl.tui.screens.help import HelpScreen
from ndctl.tui.screens.logs import LogsScreen

SIZE = (150, 36)
WEB = ["web-1", "web-2", "web-3"]


async def fleet_ready(pilot, until) -> FleetScreen:
    screen = pilot.app.screen
    assert isinstance(screen, FleetScreen)
    await until(pilot, lambda: screen.rounds >= 1)
    return screen


def row_texts(table: DataTable, key: str) -> list[Text]:
    return table.get_row(key)


def dialog_lines(screen: ConfirmScreen) -> list[str]:
    return [str(w.render()) for w in screen.query(".plan-line").results(Static)]


# ----------------------------------------------------------------------------- fleet
async def test_fleet_rows_show_metrics_and_grey_unreachable_host_with_reason(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        table = screen.query_one("#hosts", DataTable)
        assert table.row_count == 6
        web1 = row_texts(table, "web-1")
        assert [str(c) for c in web1[1:4]] == ["web-1", "production,web,us-east +2", "yes"]
        assert float(str(web1[4])) > 0 and str(web1[5]).endswith("%/4G")
        edge = row_texts(table, "edge-1")
        assert str(edge[3]) == "no: connect to 10.0.9…"  # truncated; the detail pane has it all
        assert all(c.style == "grey50" for c in edge)
        assert "1 unreachable" in str(screen.query_one("#fleet-status").render())
        # the detail pane of the unreachable host gives the whole reason
        table.move_cursor(row=5)
        await pilot.pause()
        assert "unreachable: connect to 10.0.9.4:22: connection refused" in str(
            screen.query_one("#facts", Static).render())


async def test_detail_pane_shows_facts_and_history_plots(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        await pilot.press("g")  # two more samples
        await until(pilot, lambda: screen.rounds >= 2)
        await pilot.press("g")
        await until(pilot, lambda: screen.rounds >= 3)
        facts = str(screen.query_one("#facts", Static).render())
        assert "Debian GNU/Linux 12" in facts and "docker: 24.0.7" in facts
        from textual.widgets import Sparkline
        cpu = screen.query_one("#cpu-history").query_one(Sparkline)
        assert len(cpu.data) == 3 and cpu.data == [c for c, _ in screen.history["web-1"]]
        assert "3 samples" in str(screen.query_one("#cpu-history").query_one("Label").render())


async def test_background_refresh_repeats(backend, until):
    from ndctl.tui.app import DashboardApp
    app = DashboardApp(backend, refresh_seconds=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.rounds >= 3)
        assert backend.rounds >= 3
        await pilot.press("2")  # each screen refreshes on its own timer; the fleet keeps going meanwhile
        await until(pilot, lambda: backend.deploy_reads >= 3)
        rounds = screen.rounds
        await until(pilot, lambda: screen.rounds > rounds)


async def test_filter_uses_selector_language(make_app, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        await pilot.press("slash")
        assert screen.query_one("#filter", Input).has_focus
        await pilot.press(*"production,web,!name:web-3", "enter")
        assert screen.shown == ["web-1", "web-2"]
        assert screen.query_one("#hosts", DataTable).row_count == 2
        # a syntax error and a selector matching nothing leave the view as it was, with a message
        for bad in ("(web", "nosuchtag", "[/bold]x["):  # the last: remote/operator text is never markup
            await pilot.press("slash", "ctrl+u", *bad, "enter")
            assert screen.shown == ["web-1", "web-2"]
        assert screen.selector == "production,web,!name:web-3"
        await pilot.press("ctrl+u", "enter")  # empty: every host
        assert len(screen.shown) == 6 and screen.selector is None


async def test_multi_select_and_select_all(make_app, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        await pilot.press("space", "space")  # web-1, web-2 (the cursor moves down)
        assert screen.selected == {"web-1", "web-2"}
        assert str(screen.query_one("#hosts", DataTable).get_row("web-1")[0]) == "✓"
        await pilot.press("space")
        assert screen.selected == {"web-1", "web-2", "web-3"}
        await pilot.press("escape")
        assert screen.selected == set()
        await pilot.press("a")
        assert screen.selected == {h.name for h in screen.hosts}
        assert [h.name for h in screen.targets()] == screen.shown


async def test_bulk_exec_runs_exactly_what_the_dialog_showed(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await fleet_ready(pilot, until)
        await pilot.press("space", "space", "x")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press(*"df -h / | tail -1", "enter")
        dialog = app.screen
        assert isinstance(dialog, ConfirmScreen)
        shown = dialog_lines(dialog)
        assert shown == ["web-1: sh -c 'df -h / | tail -1'", "web-2: sh -c 'df -h / | tail -1'"]
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, ResultScreen))
        [(kind, plan)] = backend.calls
        assert kind == "run_plan" and list(plan.lines) == shown
        assert [(c.host, c.argv) for c in plan.commands] == [(h, ("sh", "-c", "df -h / | tail -1")) for h in
                                                             ("web-1", "web-2")]
        assert "2 hosts: 2 ok" in str(app.screen.query_one("Label").render())


async def test_bulk_exec_on_cursor_host_and_unreachable_result(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        screen.query_one("#hosts", DataTable).move_cursor(row=5)  # edge-1, nothing selected
        await pilot.press("x", *"uptime", "enter", "y")
        await until(pilot, lambda: isinstance(app.screen, ResultScreen))
        assert [c.host for c in backend.calls[0][1].commands] == ["edge-1"]
        assert "1 unreachable" in str(app.screen.query_one("Label").render())


async def test_cancel_does_nothing(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        await pilot.press("x", *"reboot", "enter")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.screen is screen
        await pilot.press("x", "escape")  # cancelling the prompt
        assert app.screen is screen
        await pilot.press("t", *"canary", "enter", "escape")
        await pilot.pause()
        assert app.screen is screen and backend.calls == []
        assert "canary" not in backend.hosts()[0].tags


async def test_add_and_remove_tag_on_selection(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        await pilot.press("space", "space", "t", *"canary", "enter")
        assert dialog_lines(app.screen) == ["web-1: tags production,web,us-east -> production,web,us-east,canary",
                                            "web-2: tags production,web,us-east -> production,web,us-east,canary"]
        await pilot.press("y")
        await until(pilot, lambda: "canary" in screen.host("web-2").tags)
        assert str(screen.query_one("#hosts", DataTable).get_row("web-2")[2]) == "production,web,us-east,ca…"
        assert [h.name for h in backend.select("canary")] == ["web-1", "web-2"]
        await pilot.press("u", *"canary", "enter", "y")
        await until(pilot, lambda: "canary" not in screen.host("web-1").tags)
        assert [k for k, _ in backend.calls] == ["retag", "retag"]
        assert backend.calls[1][1].data == {"add": [], "remove": ["canary"]}
        # an invalid tag is refused before any dialog
        await pilot.press("t", *"bad tag!", "enter")
        assert app.screen is screen and len(backend.calls) == 2


async def test_refresh_facts_on_selection(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await fleet_ready(pilot, until)
        await pilot.press("a", "r")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: bool(backend.calls))
        assert backend.calls == [("refresh_facts", ["web-1", "web-2", "web-3", "db-1", "staging-1", "edge-1"])]


async def test_readonly_disables_every_action(make_app, backend, until):
    app = make_app(readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        assert app.sub_title == "READ-ONLY" and "READ-ONLY" in str(screen.query_one("#fleet-status").render())
        for key in ("x", "r", "t", "u"):
            await pilot.press(key)
            assert app.screen is screen
        for action in FleetScreen.MUTATING:
            assert screen.check_action(action, ()) is None  # shown greyed in the footer
            await screen.run_action(action)  # the palette path is refused too
            assert app.screen is screen
        commands = [c.title for c in app.get_system_commands(screen)]
        assert "Sample now" in commands and not {"Run command", "Add tag", "Remove tag", "Refresh facts"} & set(commands)
        await pilot.press("2")
        dep = app.screen
        await until(pilot, lambda: dep.view is not None)
        await pilot.press("b")
        await pilot.pause()
        assert app.screen is dep
        await pilot.press("question_mark")
        rows = app.screen.rows
        assert ("Fleet", "x", "Run command (disabled: read-only)") in rows
        assert ("Deployments", "b", "Roll back (disabled: read-only)") in rows
        assert backend.calls == []


async def test_backend_exceptions_never_crash_the_app(make_app, backend, until):
    backend.raise_on = {"sample", "run_plan", "deployments", "stream_logs", "apps"}
    app = make_app()

    def messages() -> str:
        return " ".join(n.message for n in app._notifications)

    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.rounds >= 1)
        assert "refresh failed: fake backend failure in sample" in messages()
        await pilot.press("x", *"uptime", "enter", "y")
        await until(pilot, lambda: "run failed: fake backend failure in run_plan" in messages())
        await pilot.press("2")
        await until(pilot, lambda: "listing apps failed" in messages())
        await pilot.press("3")
        await until(pilot, lambda: messages().count("listing apps failed") == 2)
        await pilot.press("1")
        assert app.is_running and app.screen is screen
        backend.raise_on = {"deployments", "stream_logs"}
        await pilot.press("2", "g")  # apps now load, reading the app's state fails
        await until(pilot, lambda: "reading api failed" in messages())
        await pilot.press("3", "a")
        await until(pilot, lambda: "logs of api failed" in messages())
        assert app.is_running


# ----------------------------------------------------------------------------- deployments
async def test_deployments_timeline_serving_and_running_deploy(make_app, until):
    app = make_app(start="deployments", app_name="shop")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, DeploymentsScreen)
        await until(pilot, lambda: screen.view is not None)
        assert screen.app_name == "shop"
        timeline = screen.query_one("#timeline", DataTable)
        first = [str(c) for c in timeline.get_row_at(0)]  # newest first
        assert first[:5] == ["2026-11-26 16:45:00Z", "v3", "carol", "ok", "44.0s"]
        assert [str(c) for c in timeline.get_row_at(1)][3] == "partial"
        serving = screen.query_one("#serving", DataTable)
        assert [str(c) for c in serving.get_row("web-1")][:2] == ["web-1", "v3"]
        assert "unreadable: connect to 10.0.9.4" in str(serving.get_row("edge-1")[5])
        progress = str(screen.query_one("#progress", Static).render())
        assert "DEPLOY RUNNING shop v4 by dave" in progress and "lock on web-3" in progress


async def test_rollback_behind_confirm(make_app, backend, until):
    app = make_app(start="deployments")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.view is not None)
        await pilot.press("b")
        assert isinstance(app.screen, ConfirmScreen)
        lines = dialog_lines(app.screen)
        assert lines[0] == "edge-1: skipped (state unreadable: connect to 10.0.9.4:22: connection refused)"
        assert lines[1:] == [f"{h}: api v3 -> v2 (api-00000001)" for h in WEB]
        await pilot.press("n")
        assert backend.calls == [] and app.screen is screen
        await pilot.press("b", "y")
        await until(pilot, lambda: isinstance(app.screen, ResultScreen))
        [(kind, plan)] = backend.calls
        assert kind == "rollback" and plan.data == {"app": "api", "targets": {h: "v2" for h in WEB}}


async def test_switching_app_loads_its_view(make_app, until):
    app = make_app(start="deployments")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.view is not None and screen.view.app == "api")
        await pilot.press("down")
        await until(pilot, lambda: screen.view is not None and screen.view.app == "shop")


# ----------------------------------------------------------------------------- logs
async def logs_ready(pilot, until) -> LogsScreen:
    await pilot.press("3")
    screen = pilot.app.screen
    assert isinstance(screen, LogsScreen)
    await until(pilot, lambda: len(screen.buffer) == 15)
    return screen


async def test_logs_tail_all_hosts_then_pause_and_resume(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await logs_ready(pilot, until)
        log = screen.query_one("#log", RichLog)
        assert backend.calls[-1] == ("stream_logs", ("api", [h.name for h in backend.hosts()]))
        assert len(log.lines) == 15
        await pilot.press("p")
        backend.emit("web-2", "late line 1")
        backend.emit("db-1", "late line 2")
        await pilot.pause()
        assert len(log.lines) == 15 and "PAUSED (2 new)" in str(screen.query_one("#log-status").render())
        await pilot.press("p")
        assert len(log.lines) == 17 and "following" in str(screen.query_one("#log-status").render())
        assert log.lines[-1].text == "db-1 v3 | late line 2"


async def test_logs_search_and_host_filter(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await logs_ready(pilot, until)
        log = screen.query_one("#log", RichLog)
        await pilot.press("slash", *"items/1", "enter")
        assert [s.text for s in log.lines] == [f"{h} v3 | GET /api/items/1 200 4ms"
                                               for h in ["web-1", "web-2", "web-3", "db-1", "staging-1"]]
        backend.emit("web-1", "GET /api/items/1 500 9ms")
        backend.emit("web-1", "GET /other 200")
        await pilot.pause()
        assert len(log.lines) == 6  # new lines are filtered too
        screen.query_one("#log-hosts", SelectionList).deselect("web-1")
        await pilot.pause()
        assert all(not s.text.startswith("web-1") for s in log.lines) and len(log.lines) == 4
        await pilot.press("escape")  # clear the search
        assert len(log.lines) == 12  # 3 lines x 4 hosts (web-1 hidden, edge-1 unreachable)


async def test_logs_next_app(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await logs_ready(pilot, until)
        await pilot.press("a")
        await until(pilot, lambda: backend.calls[-1][1][0] == "shop" and len(screen.buffer) == 15)
        assert screen.app_name == "shop"


# ----------------------------------------------------------------------------- help and palette
async def test_help_lists_every_binding(make_app, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await fleet_ready(pilot, until)
        await pilot.press("question_mark")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        table = help_screen.query_one("#help-table", DataTable)
        shown = {tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)}
        for cls, where in ((FleetScreen, "Fleet"), (DeploymentsScreen, "Deployments"), (LogsScreen, "Logs")):
            for b in cls.BINDINGS:
                assert any(r[0] == where and r[2] == b.description for r in shown), (where, b)
        for b in app.BINDINGS:
            assert any(r[0] == "global" and r[2] == b.description for r in shown), b
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)


async def test_palette_switches_screens_and_runs_actions(make_app, backend, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await fleet_ready(pilot, until)
        titles = [c.title for c in app.get_system_commands(screen)]
        assert {"Show Fleet", "Show Deployments", "Show Logs", "Help", "Run command", "Add tag"} <= set(titles)
        await pilot.press("ctrl+p")
        await pilot.press(*"Show Deployments")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DeploymentsScreen))
        await pilot.press("1")
        assert app.screen is screen
        rounds = screen.rounds
        await pilot.press("ctrl+p", *"Sample now")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: screen.rounds > rounds)


async def test_screen_keys_switch_modes(make_app, until):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert isinstance(app.screen, DeploymentsScreen)
        await pilot.press("3")
        assert isinstance(app.screen, LogsScreen)
        await pilot.press("1")
        assert isinstance(app.screen, FleetScreen)
        await pilot.press("q")
    assert app.return_code == 0 or app.return_code is None


# ----------------------------------------------------------------------------- backend thread
async def test_threaded_backend_delivers_on_the_ui_loop_and_cancels_streams(until):
    import threading

    from ndctl.tui.app import DashboardApp
    from ndctl.tui.backend import ThreadedBackend
    from ndctl.tui.fake import FakeBackend

    fake = FakeBackend()
    threaded = ThreadedBackend(fake)
    app = DashboardApp(threaded, refresh_seconds=0)
    seen_threads: set[str] = set()
    async with app.run_test(size=SIZE) as pilot:
        fleet = app.screen
        original = fleet.on_sample
        fleet.on_sample = lambda s: (seen_threads.add(threading.current_thread().name), original(s))
        fleet.refresh_data()
        await until(pilot, lambda: fleet.rounds >= 2)
        assert seen_threads == {threading.main_thread().name}  # callbacks come back to the UI thread
        assert fleet.query_one("#hosts", DataTable).row_count == 6 and fleet.samples["web-1"].ok
        logs = await logs_ready(pilot, until)
        await pilot.press("a")  # the 'api' stream is cancelled in the backend thread, 'shop' starts
        await until(pilot, lambda: ("stream_cancelled", "api") in fake.calls and logs.app_name == "shop"
                    and len(logs.buffer) == 15)
        await pilot.press("1", "space", "x", *"uptime", "enter", "y")
        await until(pilot, lambda: isinstance(app.screen, ResultScreen))
        assert [c.host for c in fake.calls[-1][1].commands] == ["web-1"]
    assert fake.closed and not threaded._thread.is_alive()  # closed with the app
