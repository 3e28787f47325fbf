"""Deployments: per app, the release timeline across hosts, what serves where, a running deploy, rollback."""
from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Label, OptionList, Static

from ndctl.tui.backend import DeployView, rollback_plan
from ndctl.tui.screens.base import DashScreen
from ndctl.tui.screens.confirm import ConfirmScreen, ResultScreen

RESULT_STYLE = {"ok": "green", "failed": "red", "partial": "yellow", "interrupted": "yellow"}


def _when(stamp: str | None) -> str:
    return (stamp or "-").replace("T", " ").replace("+00:00", "Z")


class DeploymentsScreen(DashScreen):
    BINDINGS = [
        Binding("b", "rollback", "Roll back"),
        Binding("g", "reload", "Reload"),
    ]
    MUTATING = frozenset({"rollback"})

    def __init__(self) -> None:
        super().__init__()
        self.apps: list[str] = []
        self.app_name: str | None = None
        self.view: DeployView | None = None
        self.loading_view = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("", id="deploy-status")
        with Horizontal():
            yield OptionList(id="apps")
            with Vertical():
                yield Static("", id="progress")
                yield DataTable(id="serving", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="timeline", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ndctl dashboard — Deployments"
        self.query_one("#serving", DataTable).add_columns("HOST", "SERVING", "CONTAINER", "LOCK", "ROLLBACK TO",
                                                          "NOTES")
        self.query_one("#timeline", DataTable).add_columns("STARTED", "VERSION", "WHO", "RESULT", "DURATION",
                                                           "HOSTS")
        self.query_one("#deploy-status", Label).update(Text("loading apps…"))
        self.query_one("#apps", OptionList).focus()
        self.load_apps()

    @work(group="deploy-apps", exclusive=True)
    async def load_apps(self) -> None:
        apps = await self.guarded("listing apps", self.backend.apps())
        self.apps = list(apps or [])
        options = self.query_one("#apps", OptionList)
        options.clear_options()
        options.add_options(self.apps)
        if not self.apps:
            self.query_one("#deploy-status", Label).update(Text("no app deployed on these hosts"))
            return
        want = self.dash.app_name if self.dash.app_name in self.apps else self.apps[0]
        options.highlighted = self.apps.index(want)
        self.choose(want)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "apps" and event.option_index < len(self.apps):
            app = self.apps[event.option_index]
            if app != self.app_name:
                self.choose(app)

    def choose(self, app: str) -> None:
        self.app_name = app
        self.view = None
        self.query_one("#deploy-status", Label).update(Text(f"{app}: reading state from the hosts…"))
        self.load_view()

    def refresh_data(self) -> None:
        if self.app_name and not self.loading_view:
            self.load_view()

    def action_reload(self) -> None:
        self.refresh_data() if self.app_name else self.load_apps()

    @work(group="deploy-view", exclusive=True)
    async def load_view(self) -> None:
        app = self.app_name
        if app is None:
            return
        self.loading_view = True
        try:
            view = await self.guarded(f"reading {app}", self.backend.deployments(app))
        finally:
            self.loading_view = False
        if view is not None and app == self.app_name:
            self.view = view
            self.render_view()

    def render_view(self) -> None:
        v = self.view
        if v is None:
            return
        unreadable = [h for h, st in v.status.items() if "error" in st]
        status = f"{v.app}: {len(v.history)} deploys, {len(v.status)} hosts"
        if unreadable:
            status += f", {len(unreadable)} unreadable"
        if v.rollback_blocked:
            status += f" · rollback unavailable: {v.rollback_blocked}"
        if self.dash.readonly:
            status += " · READ-ONLY"
        self.query_one("#deploy-status", Label).update(Text(status))

        locks = [(h, st["lock"]) for h, st in sorted(v.status.items()) if st.get("lock")]
        progress = Text()
        if locks:
            for h, lk in locks:
                readable = [st for st in v.status.values() if "error" not in st]
                switched = sum(1 for st in readable if (st.get("serving") or {}).get("version") == lk.get("version"))
                progress.append("DEPLOY RUNNING ", style="bold yellow")
                progress.append(f"{v.app} {lk.get('version') or '?'} by {lk.get('who') or '?'}"
                                f"{' from ' + lk['from'] if lk.get('from') else ''} since {_when(lk.get('at'))}"
                                f" ({lk.get('age') or '?'}) [{lk.get('deploy_id') or 'no id'}], lock on {h}; "
                                f"{switched}/{len(readable)} readable hosts serve it\n")
        else:
            progress.append("no deploy running", style="grey50")
        self.query_one("#progress", Static).update(progress)

        serving = self.query_one("#serving", DataTable)
        serving.clear()
        for host, st in sorted(v.status.items()):
            if "error" in st:
                serving.add_row(*(Text(x, style="grey50") for x in (host, "-", "-", "-", "-",
                                                                     f"unreadable: {st['error']}")), key=host)
                continue
            s = st.get("serving") or {}
            lk = st.get("lock")
            rel = st.get("releases") or []
            serving.add_row(host, s.get("version") or "-", s.get("container") or "-",
                            f"{lk.get('who') or '?'} → {lk.get('version') or '?'}" if lk else "-",
                            rel[0]["version"] if rel else "-", "; ".join(st.get("notes") or []) or "", key=host)

        timeline = self.query_one("#timeline", DataTable)
        timeline.clear()
        for row in reversed(v.history):  # newest first
            res = row.get("result") or "?"
            timeline.add_row(_when(row.get("started_at")), row.get("version") or "-", row.get("who") or "-",
                             Text(res, style=RESULT_STYLE.get(res, "")),
                             f"{row['duration']:.1f}s" if row.get("duration") is not None else "-",
                             ", ".join(f"{h}={r}" for h, r in sorted(row.get("hosts", {}).items())))

    def action_rollback(self) -> None:
        if not self.allowed("rollback"):
            return
        if self.view is None:
            self.notify("no app state loaded yet", severity="warning")
            return
        if self.view.rollback_blocked:
            self.notify(self.view.rollback_blocked, severity="error", timeout=8)
            return
        plan = rollback_plan(self.view)
        if not plan.hosts:
            self.notify(f"{self.view.app}: no host has a previous release to roll back to", severity="warning")
            return

        def done(ok: bool | None) -> None:
            if ok:
                self.do_rollback(plan)
        self.app.push_screen(ConfirmScreen(plan), done)

    @work(group="deploy-action")
    async def do_rollback(self, plan) -> None:
        self.notify(f"{plan.title}…")
        result = await self.guarded("rollback", self.backend.rollback(plan))
        if result is not None:
            self.app.push_screen(ResultScreen(plan.title, result))
        self.refresh_data()
