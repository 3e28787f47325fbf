"""What every dashboard screen shares: the backend, read-only gating, failure-proof workers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, ClassVar

from textual.screen import Screen

if TYPE_CHECKING:  # pragma: no cover
    from ndctl.tui.app import DashboardApp
    from ndctl.tui.backend import DashboardBackend


class DashScreen(Screen):
    """A dashboard screen. ``MUTATING`` names the actions ``--readonly`` disables (shown greyed)."""

    MUTATING: ClassVar[frozenset[str]] = frozenset()

    @property
    def dash(self) -> "DashboardApp":
        return self.app  # type: ignore[return-value]

    @property
    def backend(self) -> "DashboardBackend":
        return self.dash.backend

    def notify(self, message: str, *, markup: bool = False, **kw: Any) -> None:  # type: ignore[override]
        """Messages carry remote and operator text: never interpreted as markup."""
        super().notify(message, markup=markup, **kw)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.MUTATING and self.dash.readonly:
            return None  # visible but disabled: the footer shows it greyed
        return True

    def allowed(self, action: str) -> bool:
        """Second line of defence (palette, direct calls): refuse a mutating action in read-only mode."""
        if action in self.MUTATING and self.dash.readonly:
            self.notify(f"read-only dashboard: {action.replace('_', ' ')} is disabled", severity="warning")
            return False
        return True

    async def guarded(self, what: str, coro: Awaitable[Any]) -> Any:
        """Await a backend call; an exception becomes a notification, never a crash. None on failure."""
        try:
            return await coro
        except Exception as e:  # noqa: BLE001 - the dashboard must outlive any backend bug
            self.log.error(f"{what} failed: {e!r}")
            self.notify(f"{what} failed: {e}", severity="error", timeout=8)
            return None

    def on_mount(self) -> None:
        # Textual also calls the subclasses' own on_mount; every screen refreshes on its own timer,
        # also while another screen is shown (a switch back shows fresh data).
        if self.dash.refresh_seconds > 0:
            self.set_interval(self.dash.refresh_seconds, self.refresh_data)

    def refresh_data(self) -> None:
        """Periodic refresh hook, called every --refresh seconds."""
