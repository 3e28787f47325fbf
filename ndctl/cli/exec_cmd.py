"""``ndctl exec``: run a shell command on every selected host at once (or, with ``--app``,
inside the app's serving container on each of them)."""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from ndctl.cli import output
from ndctl.cli.output import Output
from ndctl.core.errors import UsageError


def exec_command(
    command: List[str] = typer.Argument(..., help="The command (after --). One word is a shell line."),
    selector: Optional[str] = typer.Option(None, "--tags", "-t", help="Host selector (default: every host)."),
    group: bool = typer.Option(False, "--group", "-g", help="Print output grouped per host, not streamed."),
    fmt: Output = typer.Option(Output.table, "--output", "-o", help="table (streamed text) or json/yaml."),
    forks: Optional[int] = typer.Option(None, "--forks", "-f", min=1,
                                        help="Hosts at once (default: settings.forks, 100)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.001, help="Per-host command timeout, seconds."),
    app: Optional[str] = typer.Option(None, "--app", help="Run inside APP's serving container (docker exec) "
                                                          "instead of on the hosts."),
) -> None:
    """Run a shell command on the selected hosts; exit 0 only if it succeeded everywhere.

    Exit statuses: 0 all ok, 2 usage error, 3 failed on some host, 4 some host
    unreachable (wins over 3), 5 the selector matched no host, 6 host key
    refused or changed (every failing host), 7 authentication failed (every
    failing host).

    With ``--app APP`` the command runs in the container the proxy routes APP's
    traffic to on each host (``docker exec``; one word is run with the
    container's ``sh -c``, several words are an exact argv). Hosts where APP is
    not deployed are skipped with a note; none at all is an error (exit 5).
    """
    from ndctl.api import Fleet
    from ndctl.cli.main import state

    if not command:
        raise UsageError("no command given: ndctl exec [--tags SELECTOR] -- COMMAND")
    fleet = Fleet(state.inventory, selector=selector, forks=forks)
    if len(fleet) == 0:
        from ndctl.core.errors import NoHostsMatched
        raise NoHostsMatched(selector or "*")
    streaming = fmt in (Output.table, Output.wide) and not group
    width = max(len(h.name) for h in fleet.hosts)
    colors = ["cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta", "bright_green"]
    color_of = {h.name: colors[i % len(colors)] for i, h in enumerate(fleet.hosts)}
    use_color = sys.stdout.isatty()

    def on_output(host: str, stream: str, line: str) -> None:
        prefix = f"{host:<{width}} | "
        target = sys.stdout if stream == "stdout" else sys.stderr
        if use_color and target is sys.stdout:
            output.stdout.print(f"[{color_of[host]}]{prefix}[/]", end="", markup=True)
            output.stdout.out(line, highlight=False)
        else:
            target.write(prefix + line + "\n")
            target.flush()

    if app is not None:
        result = _exec_in_app(fleet, app, command, on_output if streaming else None, timeout)
    else:
        result = fleet.exec(command, on_output=on_output if streaming else None, timeout=timeout)
    if fmt in (Output.json, Output.yaml):
        output.emit_data(result.to_dict(), fmt)
    else:
        if group:
            for r in result:
                code = "" if r.exit_code is None else f", exit {r.exit_code}"
                sys.stdout.write(f"--- {r.host} ({r.status.value}{code})\n")
                if r.stdout:
                    sys.stdout.write(r.stdout if r.stdout.endswith("\n") else r.stdout + "\n")
                if r.stderr:
                    sys.stderr.write(r.stderr if r.stderr.endswith("\n") else r.stderr + "\n")
            sys.stdout.flush()
        output.summary(result)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


def _exec_in_app(fleet, app: str, command: List[str], on_output, timeout: Optional[float]):
    import asyncio

    from ndctl.commands.appstate import _app
    from ndctl.ops.deploy import exec_in_app
    from ndctl.transport.ssh import Runner

    try:
        _app(app)
    except ValueError as e:
        raise UsageError(f"--app: {e}") from e

    async def main():
        async with Runner(fleet.run_options()) as runner:
            return await exec_in_app(runner, fleet.hosts, app, command, on_output=on_output, timeout=timeout)

    result, missing = asyncio.run(main())
    for host in missing:
        sys.stderr.write(f"{host}: {app} is not deployed here: skipped\n")
    return result


def register(root: typer.Typer) -> None:
    root.command("exec", context_settings={"allow_interspersed_args": False})(exec_command)
