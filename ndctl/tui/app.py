"""DashboardApp: modes built from the screen registry, global keys, help, palette, read-only mode."""
from __future__ import annotations

from functools import partial
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from ndctl.tui.backend import DashboardBackend
from ndctl.tui.screens import REGISTRY, ScreenEntry
from ndctl.tui.screens.base import DashScreen
from ndctl.tui.screens.confirm import ConfirmScreen, PromptScreen
from ndctl.tui.screens.help import HelpScreen, key_rows

CSS = """
.dialog {
    width: 90%; max-width: 120; height: auto; max-height: 90%;
    border: thick $accent; background: $surface; padding: 1 2;
}
ModalScreen { align: center middle; }
.buttons { height: auto; margin-top: 1; }
.buttons Button { margin-right: 2; }
#confirm-lines, #result-lines { height: auto; max-height: 20; }
#help-table { height: auto; max-height: 40; }
#hosts { width: 1fr; }
#detail { width: 42; border-left: solid $primary; padding: 0 1; }
#facts-scroll { height: 1fr; }
#fleet-status, #deploy-status, #log-status { height: 1; padding: 0 1; background: $boost; }
#apps, #log-hosts { width: 24; }
#serving { height: auto; max-height: 45%; }
#progress { height: auto; padding: 0 1; }
#search, #filter { display: none; }
"""


class DashboardApp(App[None]):
    """``ndctl dashboard``. ``backend``: a :class:`DashboardBackend` (real, or a fake in tests)."""

    CSS = CSS
    TITLE = "ndctl dashboard"
    BINDINGS = [
        *(Binding(e.key, f"show('{e.name}')", e.title) for e in REGISTRY),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+p", "command_palette", "Palette"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, backend: DashboardBackend, *, readonly: bool = False, refresh_seconds: float = 5.0,
                 start: str = "fleet", app_name: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.readonly = readonly
        self.refresh_seconds = refresh_seconds
        self.start_mode = start
        self.app_name = app_name  # the app the Deployments and Logs screens start on
        if readonly:
            self.sub_title = "READ-ONLY"

    def on_mount(self) -> None:
        for entry in REGISTRY:
            self.add_mode(entry.name, entry.load())
        self.switch_mode(self.start_mode)

    async def on_unmount(self) -> None:
        try:
            await self.backend.close()
        except Exception as e:  # noqa: BLE001 - closing connections must not turn an exit into a crash
            self.log.error(f"closing the backend: {e!r}")

    def action_show(self, name: str) -> None:
        self.switch_mode(name)

    # --- help and palette -------------------------------------------------------------
    def help_rows(self) -> list[tuple[str, str, str]]:
        sections: list = [("global", DashboardApp, self.BINDINGS)]
        sections += [(e.title, cls, cls.BINDINGS) for e in REGISTRY if (cls := e.load())]
        sections += [("confirm dialog", ConfirmScreen, ConfirmScreen.BINDINGS),
                     ("prompt", PromptScreen, PromptScreen.BINDINGS),
                     ("help", HelpScreen, HelpScreen.BINDINGS)]
        return key_rows(sections, readonly=self.readonly)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_rows()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for e in REGISTRY:
            yield SystemCommand(f"Show {e.title}", f"Switch to the {e.title} screen (key {e.key})",
                                partial(self.action_show, e.name))
        yield SystemCommand("Help", "Every key of every screen (key ?)", self.action_help)
        target = screen if isinstance(screen, DashScreen) else None
        if target is None:
            return
        for b in target.BINDINGS:
            if not isinstance(b, Binding) or (self.readonly and b.action in target.MUTATING):
                continue  # read-only: the palette does not offer what is disabled
            yield SystemCommand(b.description, f"{self.screen_title(target)}: {b.description} (key {b.key_display or b.key})",
                                partial(target.run_action, b.action))

    def screen_title(self, screen: DashScreen) -> str:
        entry: ScreenEntry | None = next((e for e in REGISTRY if isinstance(screen, e.load())), None)
        return entry.title if entry else type(screen).__name__
