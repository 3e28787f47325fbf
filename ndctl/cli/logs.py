"""``ndctl logs APP``: stream an app's logs from every selected host, prefixed by host."""
from __future__ import annotations

import asyncio
import sys
from typing import Optional

import typer


def logs_command(
    app_name: str = typer.Argument(..., metavar="APP", help="The app (its containers' com.nextdeploy.app label)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep following, across deploy switches."),
    since: Optional[str] = typer.Option(None, "--since", help="Only lines since (10m, 2h, RFC 3339)."),
    tail: Optional[int] = typer.Option(None, "--tail", "-n", min=0, help="Last N lines per container."),
    timestamps: bool = typer.Option(False, "--timestamps", help="Prefix Docker's timestamps."),
    selector: Optional[str] = typer.Option(None, "--tags", "-t", help="Host selector (default: every host)."),
) -> None:
    """Merged logs of an app's running containers on the selected hosts."""
    from ndctl.api import Fleet
    from ndctl.cli.main import state
    from ndctl.commands.appstate import _app
    from ndctl.core.errors import UsageError
    from ndctl.ops.logs import stream_logs
    from ndctl.transport.ssh import Runner

    try:
        _app(app_name)
    except ValueError as e:
        raise UsageError(str(e)) from e
    fleet = Fleet(state.inventory, selector=selector)
    hosts = fleet.hosts
    width = max(len(h.name) for h in hosts)

    def on_line(host: str, version: str, stream: str, line: str) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.write(f"{host:<{width}} {version} | {line}\n")
        target.flush()

    async def main():
        async with Runner(fleet.run_options()) as runner:
            return await stream_logs(runner, hosts, app_name, on_line, follow=follow, since=since,
                                     tail=tail, timestamps=timestamps)

    try:
        result = asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(0)
    if not result.ok:
        from ndctl.cli import output

        output.summary(result)
        raise typer.Exit(int(result.exit_status()))


def register(app: typer.Typer) -> None:
    app.command("logs")(logs_command)
