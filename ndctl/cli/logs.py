"""``ndctl logs APP``: stream an app's logs from every selected host, prefixed by host."""
from __future__ import annotations

import asyncio
import json
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
    fmt: str = typer.Option("text", "--output", "-o", help="text, or json (one JSON object per line)."),
) -> None:
    """Merged logs of an app's running containers on the selected hosts.

    Without -f the lines of all hosts are merged by Docker's timestamps; with -f they
    appear as they arrive and new containers (a deploy's green) are followed too.
    """
    from ndctl.api import Fleet
    from ndctl.cli.main import state
    from ndctl.commands.appstate import _app
    from ndctl.core.errors import NotFoundError, UsageError
    from ndctl.ops.logs import LogLine, collect_logs, log_line, stream_logs
    from ndctl.transport.ssh import Runner

    try:
        _app(app_name)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if fmt not in ("text", "json"):
        raise UsageError(f"--output: {fmt!r} is not text or json")
    fleet = Fleet(state.inventory, selector=selector)
    hosts = fleet.hosts
    width = max(len(h.name) for h in hosts)

    def emit(x: LogLine) -> None:
        if fmt == "json":  # scripts get every field, whatever the stream
            sys.stdout.write(json.dumps(x.to_dict()) + "\n")
            sys.stdout.flush()
            return
        target = sys.stdout if x.stream == "stdout" else sys.stderr
        stamp = f"{x.time} " if timestamps and x.time else ""
        target.write(f"{x.host:<{width}} {x.version} | {stamp}{x.line}\n")
        target.flush()

    async def main():
        async with Runner(fleet.run_options()) as runner:
            if follow:
                return await stream_logs(runner, hosts, app_name, lambda *a: emit(log_line(*a)), follow=True,
                                         since=since, tail=tail, timestamps=True)
            result, lines, containers = await collect_logs(runner, hosts, app_name, since=since, tail=tail)
            if not containers and result.ok:
                raise NotFoundError(f"no running container of app {app_name!r} on the selected hosts "
                                    f"({len(hosts)})", hint="`ndctl deploy status APP` shows where it runs")
            for x in lines:
                emit(x)
            return result

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
