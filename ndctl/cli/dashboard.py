"""``ndctl dashboard``: the Textual UI (Fleet, Deployments, Logs)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def dashboard(
    selector: Optional[str] = typer.Option(None, "--tags", "-t", help="Only these hosts (selector)."),
    readonly: bool = typer.Option(False, "--readonly", help="Disable every action: look, never change."),
    refresh: float = typer.Option(5.0, "--refresh", min=0.5, help="Seconds between background refreshes."),
    app_name: Optional[str] = typer.Option(None, "--app", help="App the Deployments and Logs screens start on."),
    file: Path = typer.Option(Path("nextdeploy.yaml"), "--file", "-f",
                              help="App definition used for rollback (when it defines the app)."),
) -> None:
    """Live fleet table, deployments and logs in the terminal (needs a terminal)."""
    import sys

    from ndctl.cli.main import state
    from ndctl.core.errors import UsageError
    from ndctl.core.inventory import Inventory
    from ndctl.tui.app import DashboardApp
    from ndctl.tui.backend import FleetBackend, ThreadedBackend

    inv = Inventory.load(state.inventory, readonly=True)
    if selector:
        inv.select(selector)  # a bad selector or one matching nothing fails here (exit 2 / 5)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("ndctl dashboard needs a terminal")
    backend = ThreadedBackend(FleetBackend(inv, selector=selector, spec_file=file))
    DashboardApp(backend, readonly=readonly, refresh_seconds=refresh, app_name=app_name).run()


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)
