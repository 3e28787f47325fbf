"""``ndctl run``: run an accessory (long-lived, or a one-off with --rm) from an image on the hosts."""
from __future__ import annotations

import asyncio
import sys
from typing import List, Optional

import typer
from typer.core import TyperCommand

from ndctl.cli import output
from ndctl.cli.output import Output

_COMMAND_KEY = "ndctl.run.command"


class _RunCommand(TyperCommand):
    """Everything after ``--`` is the container's command, never IMAGE or NAME.

    Click would otherwise fill the optional NAME from the first word after
    ``--`` (``ndctl run busybox -- echo hi`` would name the container ``echo``).
    """

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if "--" in args:
            i = args.index("--")
            ctx.meta[_COMMAND_KEY] = list(args[i + 1:])
            args = args[:i]
        return super().parse_args(ctx, args)


def run_command(
    ctx: typer.Context,
    image: str = typer.Argument(..., help="Image on the hosts' engines (see --ship, --pull)."),
    name: Optional[str] = typer.Argument(None, help="Container name (default: from the image, postgres:16 -> postgres)."),
    volume: List[str] = typer.Option([], "--volume", "-v", help="NAME:/PATH[:ro] named volume (created if missing)."),
    env: List[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, or KEY to pass this machine's value."),
    publish: List[str] = typer.Option([], "--publish", "-p", help="HOST_PORT:CONTAINER_PORT[/udp] or IP:HOST:CONTAINER."),
    selector: Optional[str] = typer.Option(None, "--tags", "-t", help="Host selector (default: every host)."),
    remove: bool = typer.Option(False, "--rm", help="A one-off: run, stream its output, remove it."),
    detach: Optional[bool] = typer.Option(None, "--detach/--foreground", "-d/-F",
                                          help="Default: detach, except --rm runs in the foreground."),
    replace: bool = typer.Option(False, "--replace", help="Re-create an accessory that runs with a different spec."),
    ship: bool = typer.Option(False, "--ship", help="Ship the image from this machine's engine first (skipped "
                                                    "on hosts that have that image id)."),
    pull: str = typer.Option("missing", "--pull", help="missing: docker pull on hosts without the image; never."),
    fmt: Output = typer.Option(Output.table, "--output", "-o", help="table (streamed text) or json/yaml."),
    forks: Optional[int] = typer.Option(None, "--forks", "-f", min=1, help="Hosts at once (default: settings.forks)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.001, help="Per-host timeout of the run, seconds."),
) -> None:
    """Run a container from IMAGE on the selected hosts: an accessory, or a one-off with --rm.

    Put the container's command after --. Accessories are idempotent: the same
    spec again is a no-op ("already running"); a different one is refused
    without --replace, on every host, before anything changes.

    Exit statuses: 0 ok, 2 usage error, 3 failed on some host (for --rm: the
    command exited non-zero), 4 some host unreachable, 5 no host matched or
    the image is not on this machine (--ship), 8 refused (a conflicting
    container).
    """
    from ndctl.api import Fleet
    from ndctl.cli.main import state
    from ndctl.core.errors import NoHostsMatched, UsageError
    from ndctl.ops import accessory

    command = ctx.meta.get(_COMMAND_KEY, [])
    if pull not in ("missing", "never"):
        raise UsageError(f"--pull must be missing or never, not {pull!r}")
    spec = accessory.build_spec(image, name, volumes=volume, env=env, ports=publish, command=command)
    if detach is None:
        detach = not remove
    fleet = Fleet(state.inventory, selector=selector, forks=forks)
    if len(fleet) == 0:
        raise NoHostsMatched(selector or "*")
    hosts = fleet.hosts
    width = max(len(h.name) for h in hosts)
    streaming = fmt in (Output.table, Output.wide)

    def on_output(host: str, stream: str, line: str) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.write(f"{host:<{width}} | {line}\n")
        target.flush()

    async def main():
        from ndctl.transport.ssh import Runner

        async with Runner(fleet.run_options()) as runner:
            if remove:
                return await accessory.run_oneoff(runner, hosts, spec, ship=ship, pull=pull,  # type: ignore[arg-type]
                                                  detach=detach, on_output=on_output if streaming else None,
                                                  forks=forks, timeout=timeout)
            return await accessory.run_accessory(runner, hosts, spec, replace=replace, ship=ship,
                                                 pull=pull,  # type: ignore[arg-type]
                                                 follow=not detach and streaming, on_output=on_output,
                                                 forks=forks, timeout=timeout)

    result = asyncio.run(main())
    if fmt in (Output.json, Output.yaml):
        output.emit_data(result.to_dict(), fmt)
    else:
        for r in result:
            v = r.value or {}
            if not r.ok:
                continue
            if remove:
                if detach:
                    sys.stdout.write(f"{r.host}: started one-off {v.get('container')}\n")
            else:
                cid = (v.get("id") or "")[:12]
                sys.stdout.write(f"{r.host}: {v.get('container')} {v.get('reason') or v.get('action')}"
                                 + (f" ({cid})" if cid else "") + "\n")
        sys.stdout.flush()
        if not result.ok or remove:
            output.summary(result)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


def register(root: typer.Typer) -> None:
    root.command("run", cls=_RunCommand)(run_command)
