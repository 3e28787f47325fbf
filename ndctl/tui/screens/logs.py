"""Logs: live tail of an app across hosts, per-host filter, search, pause and resume."""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Label, RichLog, SelectionList

from ndctl.tui.screens.base import DashScreen

BUFFER = 5000  # lines kept for re-filtering
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta")


class LogLine(NamedTuple):
    host: str
    version: str
    stream: str
    text: str


class LogsScreen(DashScreen):
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("escape", "clear_search", "Clear search"),
        Binding("a", "next_app", "Next app"),
        Binding("h", "focus_hosts", "Hosts"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.apps: list[str] = []
        self.app_name: str | None = None
        self.buffer: deque[LogLine] = deque(maxlen=BUFFER)
        self.paused = False
        self.pending = 0  # lines that arrived while paused
        self.search = ""
        self.host_names: list[str] = []
        self.shown_hosts: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("", id="log-status")
        yield Input(placeholder="search (enter: apply, empty: everything, escape: close)", id="search")
        with Horizontal():
            yield SelectionList[str](id="log-hosts")
            with Vertical():
                yield RichLog(id="log", max_lines=BUFFER, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ndctl dashboard — Logs"
        try:
            self.host_names = [h.name for h in self.backend.hosts()]
        except Exception as e:  # noqa: BLE001
            self.notify(f"cannot list hosts: {e}", severity="error")
        self.shown_hosts = set(self.host_names)
        hosts = self.query_one("#log-hosts", SelectionList)
        hosts.add_options([(n, n, True) for n in self.host_names])
        self.query_one("#log", RichLog).focus()
        self.update_status()
        self.load_apps()

    @work(group="logs-apps", exclusive=True)
    async def load_apps(self) -> None:
        self.apps = list(await self.guarded("listing apps", self.backend.apps()) or [])
        if not self.apps:
            self.update_status()
            return
        self.follow(self.dash.app_name if self.dash.app_name in self.apps else self.apps[0])

    def follow(self, app: str) -> None:
        self.app_name = app
        self.buffer.clear()
        self.pending = 0
        self.query_one("#log", RichLog).clear()
        self.update_status()
        self.stream()

    @work(group="logs-stream", exclusive=True)
    async def stream(self) -> None:
        app = self.app_name
        if app is None:
            return
        result = await self.guarded(f"logs of {app}", self.backend.stream_logs(app, self.host_names, self.on_line))
        if result is not None:
            for r in result:
                if not r.ok:
                    self.on_line(r.host, "-", "error", f"[ndctl] {r.status.value}: {r.error or r.stderr.strip()}")

    # --- lines -------------------------------------------------------------------------
    def on_line(self, host: str, version: str, stream: str, text: str) -> None:
        line = LogLine(host, version, stream, text)
        self.buffer.append(line)
        if self.paused:
            self.pending += 1
            self.update_status()
            return
        if self.wanted(line):
            self.query_one("#log", RichLog).write(self.format_line(line))

    def wanted(self, line: LogLine) -> bool:
        return line.host in self.shown_hosts and (not self.search or self.search.lower() in line.text.lower())

    def format_line(self, line: LogLine) -> Text:
        i = self.host_names.index(line.host) if line.host in self.host_names else 0
        t = Text()
        t.append(f"{line.host} {line.version} | ", style=PALETTE[i % len(PALETTE)])
        body = Text(line.text, style="red" if line.stream in ("stderr", "error") else "")
        if self.search:
            body.highlight_words([self.search], style="black on yellow", case_sensitive=False)
        t.append_text(body)
        return t

    def redraw(self) -> None:
        log = self.query_one("#log", RichLog)
        log.clear()
        for line in self.buffer:
            if self.wanted(line):
                log.write(self.format_line(line))
        self.update_status()

    def update_status(self) -> None:
        if self.app_name is None:
            text = "no app to follow" if self.apps == [] else "looking for apps…"
        else:
            drawn = list(self.buffer)[:len(self.buffer) - self.pending]  # not the ones held back by a pause
            shown = sum(1 for line in drawn if self.wanted(line))
            text = (f"{self.app_name}: {len(self.shown_hosts)}/{len(self.host_names)} hosts · "
                    f"{shown}/{len(self.buffer)} lines shown")
            if self.search:
                text += f" · search {self.search!r}"
            text += f" · PAUSED ({self.pending} new)" if self.paused else " · following"
        self.query_one("#log-status", Label).update(Text(text))

    # --- actions -----------------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            log = self.query_one("#log", RichLog)
            news = list(self.buffer)[-self.pending:] if self.pending else []
            for line in news:
                if self.wanted(line):
                    log.write(self.format_line(line))
            self.pending = 0
        self.update_status()

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = True
        box.value = self.search
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            self.search = event.value.strip()
            event.input.display = False
            self.query_one("#log", RichLog).focus()
            self.redraw()

    def action_clear_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = False
        if self.search:
            self.search = ""
            self.redraw()

    def action_next_app(self) -> None:
        if not self.apps:  # none found (or listing failed): look again
            self.load_apps()
        else:
            i = self.apps.index(self.app_name) + 1 if self.app_name in self.apps else 0
            self.follow(self.apps[i % len(self.apps)])

    def action_focus_hosts(self) -> None:
        self.query_one("#log-hosts", SelectionList).focus()

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self.shown_hosts = set(event.selection_list.selected)
        self.redraw()
