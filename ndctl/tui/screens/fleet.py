"""Fleet: a live table of the agents, selector filter, multi-select and bulk actions, a detail pane."""
from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from ndctl.core.errors import NdctlError
from ndctl.core.facts import GiB
from ndctl.core.inventory import Host, validate_tag
from ndctl.tui.backend import HostSample, Plan, exec_plan, refresh_plan, tag_plan
from ndctl.tui.screens.base import DashScreen
from ndctl.tui.screens.confirm import ConfirmScreen, PromptScreen, ResultScreen
from ndctl.tui.widgets.history import MetricHistory

HISTORY = 60  # samples kept per host for the sparklines
# Fixed widths: a refresh updates cells without re-measuring every row (which costs seconds at 100 hosts).
COLUMNS = (("sel", " ", 1), ("name", "NAME", None), ("tags", "TAGS", 26), ("reach", "REACHABLE", 22),
           ("cpu", "CPU %", 5), ("mem", "MEMORY", 10), ("disk", "DISK", 6), ("containers", "CONTAINERS", 10))
GREY = "grey50"
REASON_WIDTH = 18  # the full reason is in the detail pane


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


class FleetScreen(DashScreen):
    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("space", "toggle_select", "Select"),
        Binding("a", "select_all", "Select all"),
        Binding("escape", "clear", "Clear selection"),
        Binding("x", "run_command", "Run command"),
        Binding("r", "refresh_facts", "Refresh facts"),
        Binding("t", "add_tag", "Add tag"),
        Binding("u", "remove_tag", "Remove tag"),
        Binding("g", "sample_now", "Sample now"),
    ]
    MUTATING = frozenset({"run_command", "refresh_facts", "add_tag", "remove_tag"})

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[Host] = []
        self.shown: list[str] = []  # names matching the filter, in inventory order
        self.selector: str | None = None
        self.selected: set[str] = set()
        self.samples: dict[str, HostSample] = {}
        self.history: dict[str, deque[tuple[float, float]]] = {}
        self.sampling = False
        self.rounds = 0  # completed refreshes

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="selector, e.g. production,web  (enter: apply, empty: all, escape: close)",
                    id="filter")
        yield Label("", id="fleet-status")
        with Horizontal():
            yield DataTable(id="hosts", cursor_type="row", zebra_stripes=True)
            with Vertical(id="detail"):
                yield VerticalScroll(Static("", id="facts"), id="facts-scroll")
                yield MetricHistory("CPU", id="cpu-history")
                yield MetricHistory("Memory", id="mem-history")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ndctl dashboard — Fleet"
        table = self.query_one("#hosts", DataTable)
        table.focus()
        self.load_hosts()
        self.refresh_data()

    # --- data ----------------------------------------------------------------------------
    def load_hosts(self) -> None:
        try:
            self.hosts = self.backend.hosts()
        except Exception as e:  # noqa: BLE001
            self.notify(f"cannot list hosts: {e}", severity="error")
            self.hosts = []
        names = {h.name for h in self.hosts}
        table = self.query_one("#hosts", DataTable)
        if not table.columns:
            name_width = max([len(n) for n in names] + [4])
            for key, label, width in COLUMNS:
                table.add_column(label, key=key, width=width or name_width)
        if self.selector:
            try:
                self.shown = [h.name for h in self.backend.select(self.selector) if h.name in names]
            except NdctlError:
                self.shown = [h.name for h in self.hosts]
        else:
            self.shown = [h.name for h in self.hosts]
        self.selected &= names
        self.rebuild()

    def host(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def cells(self, h: Host) -> list[Text]:
        s = self.samples.get(h.name)
        auto = [t for t in h.auto_tags if t not in h.tags]
        tags = ",".join(h.tags) + (f" +{len(auto)}" if auto else "")  # the detail pane lists them
        if len(tags) > 26:
            tags = tags[:25] + "…"
        sel = "✓" if h.name in self.selected else " "
        if s is None:
            vals = [sel, h.name, tags, "…", "-", "-", "-", "-"]
            return [Text(v) for v in vals]
        if not s.ok:
            reason = s.reason or "unreachable"
            short = reason if len(reason) <= REASON_WIDTH else reason[:REASON_WIDTH - 1] + "…"
            vals = [sel, h.name, tags, f"no: {short}", "-", "-", "-", "-"]
            return [Text(v, style=GREY) for v in vals]
        mem = _pct(s.memory_used_percent) + "%"
        if s.memory_total_bytes:
            mem += f"/{s.memory_total_bytes / GiB:.0f}G"
        vals = [sel, h.name, tags, "yes", _pct(s.cpu_percent), mem,
                _pct(s.disk_used_percent) + "%", "-" if s.containers is None else str(s.containers)]
        return [Text(v) for v in vals]

    def rebuild(self) -> None:
        table = self.query_one("#hosts", DataTable)
        current = self.cursor_name()
        table.clear()
        for name in self.shown:
            h = self.host(name)
            if h is not None:
                table.add_row(*self.cells(h), key=name)
        if current in self.shown:
            table.move_cursor(row=self.shown.index(current))
        self.update_status()
        self.show_detail()

    def update_row(self, name: str) -> None:
        table = self.query_one("#hosts", DataTable)
        h = self.host(name)
        if h is None or name not in self.shown:
            return
        for (key, _, _), cell in zip(COLUMNS, self.cells(h)):
            table.update_cell(name, key, cell)

    def update_status(self) -> None:
        bad = sum(1 for n in self.shown if n in self.samples and not self.samples[n].ok)
        text = (f"{len(self.shown)}/{len(self.hosts)} hosts"
                + (f" matching {self.selector!r}" if self.selector else "")
                + f" · {len(self.selected)} selected · {bad} unreachable")
        if self.dash.readonly:
            text += " · READ-ONLY"
        self.query_one("#fleet-status", Label).update(Text(text))

    def cursor_name(self) -> str | None:
        table = self.query_one("#hosts", DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - no row under the cursor
            return None

    def targets(self) -> list[Host]:
        """The selection (visible hosts only), else the host under the cursor."""
        names = [n for n in self.shown if n in self.selected]
        if not names and (c := self.cursor_name()):
            names = [c]
        return [h for h in self.hosts if h.name in names]

    # --- detail pane ----------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        name = self.cursor_name()
        facts_w = self.query_one("#facts", Static)
        if name is None or (h := self.host(name)) is None:
            facts_w.update("no host")
            self.query_one("#cpu-history", MetricHistory).show([])
            self.query_one("#mem-history", MetricHistory).show([])
            return
        lines = Text()
        lines.append(f"{h.name}\n", style="bold")
        lines.append(f"{h.user}@{h.address}:{h.port}  id {h.id}\n")
        lines.append(f"tags: {', '.join(h.tags) or '-'}\nauto: {', '.join(h.auto_tags) or '-'}\n")
        s = self.samples.get(name)
        if s is not None and not s.ok:
            lines.append(f"unreachable: {s.reason}\n", style="bold red")
        try:
            facts, last_error = self.backend.cached_facts(name)
        except Exception as e:  # noqa: BLE001
            facts, last_error = None, f"cannot read cached facts: {e}"
        if facts is not None:
            summ = facts.summary()
            lines.append(f"os: {facts.os_pretty}\nkernel: {facts.kernel}\narch: {summ['arch']}  cpus: "
                         f"{summ['cpus']}  memory: {summ['memory_gib']} GiB\ndisk: {summ['disk']}\n"
                         f"docker: {summ['docker']}  containers: {len(facts.containers)}\n")
        else:
            lines.append("no facts cached (r: refresh facts)\n", style=GREY)
        if last_error:
            lines.append(f"last refresh error: {last_error}\n", style="red")
        facts_w.update(lines)
        hist = self.history.get(name, ())
        self.query_one("#cpu-history", MetricHistory).show([c for c, _ in hist])
        self.query_one("#mem-history", MetricHistory).show([m for _, m in hist])

    # --- background refresh --------------------------------------------------------------
    def refresh_data(self) -> None:
        if not self.sampling:
            self.sampling = True
            self.sample_worker()

    def on_sample(self, s: HostSample) -> None:
        self.samples[s.host] = s
        if s.ok and s.cpu_percent is not None:
            self.history.setdefault(s.host, deque(maxlen=HISTORY)).append(
                (s.cpu_percent, s.memory_used_percent or 0.0))
        self.update_row(s.host)
        if s.host == self.cursor_name():
            self.show_detail()

    @work(group="fleet-sample")
    async def sample_worker(self) -> None:
        try:
            names = [h.name for h in self.hosts]
            if names:
                await self.guarded("refresh", self.backend.sample(names, on_sample=self.on_sample))
            self.rounds += 1
            self.update_status()
        finally:
            self.sampling = False

    def action_sample_now(self) -> None:
        self.refresh_data()

    # --- filter and selection -------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.value = self.selector or ""
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        text = event.value.strip()
        try:
            chosen = self.backend.select(text or None)
        except NdctlError as e:  # bad syntax, or nothing matches: say so, keep the current view
            self.notify(str(e), severity="error", timeout=6)
            return
        self.selector = text or None
        self.shown = [h.name for h in chosen]
        event.input.display = False
        self.query_one("#hosts", DataTable).focus()
        self.rebuild()

    def action_clear(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            box.display = False
            self.query_one("#hosts", DataTable).focus()
            return
        self.selected.clear()
        self.rebuild()

    def action_toggle_select(self) -> None:
        name = self.cursor_name()
        if name is None:
            return
        self.selected ^= {name}
        self.update_row(name)
        self.update_status()
        table = self.query_one("#hosts", DataTable)
        table.move_cursor(row=min(table.cursor_row + 1, table.row_count - 1))

    def action_select_all(self) -> None:
        self.selected = set(self.shown) if not set(self.shown) <= self.selected else set()
        self.rebuild()

    # --- bulk actions ---------------------------------------------------------------------
    def _confirm_then(self, plan: Plan, what: str) -> None:
        def done(ok: bool | None) -> None:
            if ok:
                self.perform(plan, what)
        self.app.push_screen(ConfirmScreen(plan), done)

    def _start(self, action: str) -> list[Host] | None:
        if not self.allowed(action):
            return None
        targets = self.targets()
        if not targets:
            self.notify("no host selected", severity="warning")
            return None
        return targets

    def action_run_command(self) -> None:
        if (targets := self._start("run_command")) is None:
            return

        def got(command: str | None) -> None:
            if command:
                self._confirm_then(exec_plan(targets, command), "run")
        self.app.push_screen(PromptScreen(f"Command to run on {len(targets)} host(s)", "e.g. uptime"), got)

    def action_refresh_facts(self) -> None:
        if (targets := self._start("refresh_facts")) is not None:
            self._confirm_then(refresh_plan(targets), "refresh")

    def _tag(self, action: str, add: bool) -> None:
        if (targets := self._start(action)) is None:
            return

        def got(tag: str | None) -> None:
            if not tag:
                return
            try:
                validate_tag(tag)
            except NdctlError as e:
                self.notify(str(e), severity="error")
                return
            plan = tag_plan(targets, add=[tag]) if add else tag_plan(targets, remove=[tag])
            self._confirm_then(plan, "retag")
        self.app.push_screen(PromptScreen("Tag to add" if add else "Tag to remove", "e.g. canary"), got)

    def action_add_tag(self) -> None:
        self._tag("add_tag", True)

    def action_remove_tag(self) -> None:
        self._tag("remove_tag", False)

    @work(group="fleet-action")
    async def perform(self, plan: Plan, what: str) -> None:
        self.notify(f"{plan.title}…")
        if what == "run":
            result = await self.guarded("run", self.backend.run_plan(plan))
            if result is not None:
                self.app.push_screen(ResultScreen(f"Ran {plan.data.get('command')!r}", result))
        elif what == "refresh":
            result = await self.guarded("refresh facts", self.backend.refresh_facts(list(plan.hosts)))
            if result is not None:
                self.notify(f"facts: {result.summary_line()}",
                            severity="information" if result.ok else "warning")
            self.load_hosts()
        elif what == "retag":
            await self.guarded("retag", self.backend.retag(plan))
            self.load_hosts()
