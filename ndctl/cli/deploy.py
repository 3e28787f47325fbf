"""``ndctl deploy`` (and ``deploy init|status|history|unlock``) and ``ndctl rollback``."""
from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from ndctl.cli import output
from ndctl.cli.output import Output

app = typer.Typer(help="Zero-downtime deploys of the app in nextdeploy.yaml.", invoke_without_command=True,
                  no_args_is_help=False)

FILE = typer.Option(Path("nextdeploy.yaml"), "--file", "-f", help="The app definition.")
OUTPUT = typer.Option(Output.table, "--output", "-o", help="table or json.")


def _state():
    from ndctl.cli.main import state

    return state


def _spec(path: Path, **overrides):
    from ndctl.core.appspec import apply_overrides, load_appspec

    spec = load_appspec(path)
    return apply_overrides(spec, **overrides) if any(v is not None for v in overrides.values()) else spec


def _event(host: str, event: str, message: str) -> None:
    if event in ("failed", "warning", "cleanup-failed", "note") or output.progress_enabled():
        sys.stderr.write(f"{host}: {event}: {message}\n" if message else f"{host}: {event}\n")
        sys.stderr.flush()


def _fleet(selector: Optional[str], spec):
    from ndctl.api import Fleet

    return Fleet(_state().inventory, selector=selector or spec.tags)


@app.callback()
def deploy(
    ctx: typer.Context,
    file: Path = FILE,
    image: Optional[str] = typer.Option(None, "--image", help="Image to deploy (overrides the file)."),
    selector: Optional[str] = typer.Option(None, "--tags", "-t", help="Hosts (overrides the file)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="blue-green (default) or recreate."),
    health_check: Optional[str] = typer.Option(None, "--health-check", help="Health-check path, e.g. /api/health."),
    parallel: Optional[str] = typer.Option(None, "--parallel", help="Hosts per batch: N or N%."),
    version: Optional[str] = typer.Option(None, "--version", help="Version label (default: the image tag)."),
    pull: bool = typer.Option(False, "--pull", help="docker pull on the hosts instead of shipping the local image."),
    rollback_on_failure: bool = typer.Option(False, "--rollback-on-failure",
                                             help="Roll switched hosts back when a later batch fails."),
    fmt: Output = OUTPUT,
) -> None:
    """Deploy the app blue-green (or recreate) on its hosts; exit 0 only if every host serves the new version."""
    if ctx.invoked_subcommand is not None:
        return
    from ndctl.core.appspec import default_version, validate_version
    from ndctl.ops.deploy import Deployer
    from ndctl.transport.ssh import Runner

    spec = _spec(file, image=image, tags=selector, strategy=strategy, health_check=health_check, parallel=parallel)
    ver = validate_version(version) if version else default_version(spec.image)
    fleet = _fleet(selector, spec)

    async def main():
        async with Runner(fleet.run_options()) as runner:
            d = Deployer(runner, fleet.inventory, spec, on_event=_event)
            return await d.deploy(fleet.hosts, version=ver, image_source="pull" if pull else "ship",
                                  rollback_on_failure=rollback_on_failure)

    result, summary = asyncio.run(main())
    if fmt is Output.json:
        output.emit_data({**summary, **result.to_dict()}, fmt)
    else:
        for r in result:
            v = r.value or {}
            line = f"{r.host}: {v.get('result', r.status.value)}"
            if r.ok:
                line += f", serving {spec.app} {ver} from {v.get('container')}"
            elif v.get("message"):
                line += f": {v['message']}"
            output.stdout.print(line, markup=False)
            if not r.ok and v.get("logs"):
                sys.stderr.write(f"--- last log lines of the failed container on {r.host}:\n{v['logs']}\n")
        output.summary(result)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


@app.command("init")
def init(file: Path = FILE, force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")) -> None:
    """Write a commented example nextdeploy.yaml."""
    from ndctl.core.appspec import example_yaml
    from ndctl.core.errors import ConflictError

    if file.exists() and not force:
        raise ConflictError(f"{file} exists (use --force to overwrite)")
    file.write_text(example_yaml())
    output.stdout.print(f"wrote {file}")


@app.command("status")
def status(app_name: Optional[str] = typer.Argument(None, metavar="[APP]"), file: Path = FILE,
           selector: Optional[str] = typer.Option(None, "--tags", "-t"), fmt: Output = OUTPUT) -> None:
    """Which version serves on each host, the lock, and strays."""
    from ndctl.core import deployplan as dp
    from ndctl.ops.deploy import Deployer
    from ndctl.transport.ssh import Runner

    spec = _spec(file)
    _check_app(spec, app_name)
    fleet = _fleet(selector, spec)

    async def main():
        async with Runner(fleet.run_options()) as runner:
            return await Deployer(runner, fleet.inventory, spec).states(fleet.hosts)

    result = asyncio.run(main())
    now = datetime.now(timezone.utc)
    rows = {r.host: (dp.host_status(r.value, now=now, grace=spec.grace) if r.ok else {"error": r.error})
            for r in result}
    if fmt is Output.json:
        output.emit_data(rows, fmt)
    else:
        table = []
        for host, st in rows.items():
            serving = st.get("serving") or {}
            lock = st.get("lock")
            table.append([host, serving.get("version") or "-", serving.get("name") or "-",
                          f"{lock['who']} since {lock['at']}" if lock else "-", st.get("error") or ""])
        output.table(["HOST", "VERSION", "CONTAINER", "LOCK", "ERROR"], table)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


@app.command("history")
def history(app_name: Optional[str] = typer.Argument(None, metavar="[APP]"), file: Path = FILE,
            selector: Optional[str] = typer.Option(None, "--tags", "-t"), fmt: Output = OUTPUT) -> None:
    """The deploy timeline merged across hosts (read from the hosts: every operator sees the same)."""
    from ndctl.core import deployplan as dp
    from ndctl.ops.deploy import Deployer
    from ndctl.transport.ssh import Runner

    spec = _spec(file)
    _check_app(spec, app_name)
    fleet = _fleet(selector, spec)

    async def main():
        async with Runner(fleet.run_options()) as runner:
            return await Deployer(runner, fleet.inventory, spec).states(fleet.hosts)

    result = asyncio.run(main())
    rows = dp.merge_history({r.host: r.value.history for r in result if r.ok})
    if fmt is Output.json:
        output.emit_data(rows, fmt)
    else:
        output.table(["STARTED", "VERSION", "WHO", "STRATEGY", "HOSTS", "DURATION"],
                     [[r["started_at"], r["version"], r["who"], r["strategy"],
                       ", ".join(f"{h}={res}" for h, res in sorted(r["hosts"].items())), f"{r['duration']:.1f}s"]
                      for r in rows])


@app.command("unlock")
def unlock(app_name: str = typer.Argument(..., metavar="APP"),
           selector: Optional[str] = typer.Option(None, "--tags", "-t"),
           yes: bool = typer.Option(False, "--yes", "-y")) -> None:
    """Release a deploy lock left by an interrupted deploy (shows who held it first)."""
    from ndctl.api import Fleet
    from ndctl.commands import appstate
    from ndctl.core.errors import UsageError

    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to unlock {app_name} without --yes (no terminal to confirm on)")
        if not typer.confirm(f"Force-release the deploy lock of {app_name}?", default=False, err=True):
            raise typer.Exit(2)
    try:
        argv = appstate.release_lock(app_name, "00000000", force=True)
    except ValueError as e:
        raise UsageError(str(e)) from e
    fleet = Fleet(_state().inventory, selector=selector)
    result = fleet.exec(argv)
    for r in result:
        output.stdout.print(f"{r.host}: {r.stdout.strip() or r.status.value}", markup=False)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


def _check_app(spec, app_name: Optional[str]) -> None:
    from ndctl.core.errors import NotFoundError

    if app_name and app_name != spec.app:
        raise NotFoundError(f"unknown app {app_name!r}: nextdeploy.yaml defines {spec.app!r}")


def rollback(app_name: str = typer.Argument(..., metavar="APP"), to: Optional[str] = typer.Option(None, "--to"),
             file: Path = FILE, selector: Optional[str] = typer.Option(None, "--tags", "-t"),
             list_: bool = typer.Option(False, "--list", help="List the retained versions instead."),
             fmt: Output = OUTPUT) -> None:
    """Switch back to the previous (or --to) release: instantly when its container still exists."""
    from ndctl.core import deployplan as dp
    from ndctl.ops.deploy import Deployer
    from ndctl.transport.ssh import Runner

    spec = _spec(file)
    _check_app(spec, app_name)
    fleet = _fleet(selector, spec)

    async def main():
        async with Runner(fleet.run_options()) as runner:
            d = Deployer(runner, fleet.inventory, spec, on_event=_event)
            if list_:
                return await d.states(fleet.hosts)
            return await d.rollback(fleet.hosts, to_version=to)

    result = asyncio.run(main())
    if list_:
        data = {r.host: [x.to_dict() for x in dp.retained_releases(r.value)] for r in result if r.ok}
        if fmt is Output.json:
            output.emit_data(data, fmt)
        else:
            output.table(["HOST", "VERSION", "CONTAINER", "STATE"],
                         [[h, x["version"], x.get("container") or "-", x.get("state") or "-"]
                          for h, xs in data.items() for x in xs])
        return
    if fmt is Output.json:
        output.emit_data(result.to_dict(), fmt)
    else:
        for r in result:
            v = r.value or {}
            output.stdout.print(f"{r.host}: {v.get('result')}" + (f": {v.get('message')}" if v.get("message") else ""),
                                markup=False)
        output.summary(result)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="deploy")
    root.command("rollback")(rollback)
