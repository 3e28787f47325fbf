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
from ndctl.core.errors import ExitStatus

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


# Shown even without a terminal: what the final per-host lines do not say. (A failure is
# in its host's final line; on a terminal it also shows as it happens.)
ALWAYS_SHOWN = ("warning", "cleanup-failed", "note", "interrupted", "rollback", "rolled-back")


def _event(host: str, event: str, message: str) -> None:
    """Progress on stderr: every step on a terminal; warnings, notes, interruptions and rollbacks always."""
    if event in ALWAYS_SHOWN or output.progress_enabled():
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
    pull: bool = typer.Option(False, "--pull", help="docker pull on the hosts instead of shipping the local image "
                                                    "(the default when the file has a registry: section)."),
    registry_server: Optional[str] = typer.Option(None, "--registry-server", help="Registry to log in to for the "
                                                  "pull (overrides the file; default: Docker Hub)."),
    registry_user: Optional[str] = typer.Option(None, "--registry-user", help="Registry user (overrides the file)."),
    registry_password_stdin: bool = typer.Option(False, "--registry-password-stdin",
                                                 help="Read the registry password from stdin (else from the "
                                                      "variable named by registry.password_env)."),
    rollback_on_failure: bool = typer.Option(False, "--rollback-on-failure",
                                             help="Roll switched hosts back when a later batch fails."),
    lock_wait: float = typer.Option(0.0, "--lock-wait", min=0,
                                    help="Seconds to wait for another deploy's lock instead of refusing."),
    secret: Optional[list[str]] = typer.Option(None, "--secret", help="A secret the app gets as /run/secrets/NAME "
                                               "and $NAME (repeatable; adds to the file's secrets:)."),
    env: Optional[str] = typer.Option(None, "--env", help="Secrets environment (default: each host's own)."),
    fmt: Output = OUTPUT,
) -> None:
    """Deploy the app blue-green (or recreate) on its hosts; exit 0 only if every host serves the new version."""
    if ctx.invoked_subcommand is not None:
        return
    from ndctl.core.appspec import default_version, validate_version
    from ndctl.ops.deploy import Deployer
    from ndctl.ops.images import registry_auth
    from ndctl.transport.ssh import Runner

    spec = _spec(file, image=image, tags=selector, strategy=strategy, health_check=health_check, parallel=parallel,
                 registry_server=registry_server, registry_user=registry_user, secrets=secret or None)
    ver = validate_version(version) if version else default_version(spec.image)
    source = "pull" if pull or spec.registry is not None else "ship"
    auth = registry_auth(spec.registry, password_stdin=registry_password_stdin) if source == "pull" else None
    fleet = _fleet(selector, spec)
    # secrets: every one checked for every host (exists, may be used, encrypted to its key) before any host is touched
    deliveries = fleet.secrets.plan_delivery(fleet.hosts, spec.secrets, env=env) if spec.secrets else {}

    async def main():
        async with Runner(fleet.run_options()) as runner:
            d = Deployer(runner, fleet.inventory, spec, on_event=_event, lock_wait=lock_wait, registry_auth=auth,
                         secrets=deliveries)
            try:
                return await d.deploy(fleet.hosts, version=ver, image_source=source,
                                      rollback_on_failure=rollback_on_failure)
            except asyncio.CancelledError:  # Ctrl-C: the hosts cleaned up; report what happened
                if d.report is None:
                    raise
                return d.report

    result, summary = asyncio.run(main())
    if deliveries:
        fleet.secrets.record_use([deliveries[r.host] for r in result
                                  if any(s.get("action") == "secrets" and s.get("ok")
                                         for s in (r.value or {}).get("steps", []))], spec.app)
    if fmt is Output.json:
        output.emit_data({**summary, **result.to_dict()}, fmt)
    else:
        for line in final_lines(result, spec.app, ver):
            output.stdout.print(line, markup=False)
        for r in result:
            v = r.value or {}
            if not r.ok and v.get("logs"):
                sys.stderr.write(f"--- last log lines of {v.get('container')} on {r.host}:\n{v['logs']}\n")
        sys.stderr.write(result.summary_line() + "\n")  # the per-host lines above already say why
    if summary.get("interrupted"):
        sys.stderr.write("interrupted\n")
        raise typer.Exit(int(ExitStatus.INTERRUPTED))
    if not result.ok:
        raise typer.Exit(int(deploy_exit_status(result)))


def final_lines(result, app: str, version: str) -> list[str]:
    """One line per host: what serves there now, or why not."""
    lines = []
    for r in result:
        v = r.value or {}
        res = v.get("result", r.status.value)
        if r.ok:
            lines.append(f"{r.host}: ok, serving {app} {version} from {v.get('container')}")
        else:
            lines.append(f"{r.host}: {res}" + (f": {v['message']}" if v.get("message") else
                                               (f": {r.error}" if r.error else "")))
    return lines


def deploy_exit_status(result) -> "ExitStatus":
    """Conflict (8) when every failed host was refused by a lock, else the group's status."""
    failed = [r for r in result if not r.ok and (r.value or {}).get("result") != "skipped"]
    if failed and all(r.exit_status is ExitStatus.CONFLICT for r in failed):
        return ExitStatus.CONFLICT
    return result.exit_status()


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
    """Which version serves on each host, the lock (who, when, which version), strays and pending stops.

    Read-only. Works from any machine: without nextdeploy.yaml (or for another app
    than the file's) name the APP; the hosts are then --tags (default: all).
    """
    from ndctl.core import deployplan as dp

    spec, result = _observe(app_name, file, selector)
    now = datetime.now(timezone.utc)
    rows = {r.host: (status_row(dp.host_status(r.value, now=now, grace=spec.grace)) if r.ok else {"error": r.error})
            for r in result}
    if fmt is Output.json:
        output.emit_data(rows, fmt)
    else:
        output.table(["HOST", "VERSION", "CONTAINER", "LOCK", "STRAYS", "PENDING STOPS", "NOTES"],
                     [status_cells(host, st) for host, st in rows.items()])
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


def status_row(st: dict) -> dict:
    """``host_status`` plus ``pending_stops``: previous releases still running inside their grace
    period (a detached sleeper on the host stops them), and why each stray is one."""
    stale = set(st.get("stale") or [])
    st["pending_stops"] = [r["container"] for r in st.get("releases") or []
                           if r.get("running") and r["container"] not in stale]
    if st.get("strays"):
        st.setdefault("notes", []).append(
            f"{', '.join(st['strays'])}: left by a deploy that failed or was interrupted before its switch "
            "(never served); the next deploy removes it")
    if st.get("stale"):
        st.setdefault("notes", []).append(
            f"{', '.join(st['stale'])}: still running past the grace period; the next deploy stops it")
    if not st.get("serving") and not st.get("releases") and not st.get("strays") and st.get("current") is None:
        st.setdefault("notes", []).append("not deployed on this host")
    lock = st.get("lock")
    if lock is not None and not lock.get("deploy_id"):
        st.setdefault("notes", []).append("locked without details (a deploy died while taking the lock)")
    return st


def status_cells(host: str, st: dict) -> list[str]:
    if "error" in st and "serving" not in st:
        return [host, "-", "-", "-", "-", "-", f"error: {st['error']}"]
    serving = st.get("serving") or {}
    lock = st.get("lock")
    lock_text = "-"
    if lock is not None:
        lock_text = (f"{lock.get('who') or '?'} since {lock.get('at') or '?'} ({lock.get('age') or '?'}), "
                     f"deploying {lock.get('version') or '?'} [{lock.get('deploy_id') or 'no id'}]")
    version = serving.get("version") or "-"
    if serving and not serving.get("running"):
        version += f" ({serving.get('state') or 'not running'})"
    return [host, version, serving.get("container") or "-", lock_text, ", ".join(st.get("strays") or []) or "-",
            ", ".join(st.get("pending_stops") or []) or "-", "; ".join(st.get("notes") or [])]


@app.command("history")
def history(app_name: Optional[str] = typer.Argument(None, metavar="[APP]"), file: Path = FILE,
            selector: Optional[str] = typer.Option(None, "--tags", "-t"), fmt: Output = OUTPUT) -> None:
    """The deploy timeline merged across hosts (read from the hosts: every operator sees the same)."""
    from ndctl.core import deployplan as dp

    _, result = _observe(app_name, file, selector)
    rows = dp.merge_history({r.host: r.value.history for r in result if r.ok})
    if fmt is Output.json:
        output.emit_data(rows, fmt)
    else:
        output.table(["STARTED", "VERSION", "WHO", "STRATEGY", "HOSTS", "DURATION"],
                     [[r["started_at"], r["version"], r["who"], r["strategy"],
                       ", ".join(f"{h}={res}" for h, res in sorted(r["hosts"].items())),
                       f"{r['duration']:.1f}s" if r.get("duration") is not None else "-"]
                      for r in rows])
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


def _observe(app_name: Optional[str], file: Path, selector: Optional[str]):
    """(spec, each host's observed state) for status and history.

    The app is the file's, or APP; an APP no selected host has ever seen is
    refused (NotFoundError) rather than shown as an empty table.
    """
    from ndctl.core.errors import NotFoundError
    from ndctl.ops.deploy import Deployer
    from ndctl.transport.ssh import Runner

    spec, file_app = _spec_for(app_name, file)
    fleet = _fleet(selector, spec)

    async def main():
        async with Runner(fleet.run_options()) as runner:
            return await Deployer(runner, fleet.inventory, spec).states(fleet.hosts)

    result = asyncio.run(main())
    states = [r.value for r in result if r.ok]
    known = any(s.containers or s.current or s.lock is not None or s.history or s.route for s in states)
    if result.ok and not known and file_app != spec.app:  # the file's own app may just not be deployed yet
        where = f"hosts matching {selector or spec.tags!r}"
        defined = f"; {file} defines {file_app!r}" if file_app and file_app != spec.app else ""
        raise NotFoundError(f"unknown app {spec.app!r}: no deploy of it on the {where}{defined}",
                            hint="check the name, or --tags to look at other hosts")
    return spec, result


def _spec_for(app_name: Optional[str], file: Path):
    """(spec, the file's app or None): the file's spec when it defines APP (or no APP is given),
    else a bare spec for APP, enough for read-only commands."""
    from ndctl.commands.appstate import _app
    from ndctl.core.appspec import AppSpec, load_appspec
    from ndctl.core.errors import UsageError

    file_app = None
    if app_name is None or file.exists():
        spec = load_appspec(file, require_image=False)
        if app_name is None or spec.app == app_name:
            return spec, spec.app
        file_app = spec.app
    try:
        _app(app_name)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return AppSpec(app=app_name, image="", port=80), file_app


@app.command("unlock")
def unlock(app_name: str = typer.Argument(..., metavar="APP"),
           selector: Optional[str] = typer.Option(None, "--tags", "-t"),
           yes: bool = typer.Option(False, "--yes", "-y")) -> None:
    """Release a deploy lock left by an interrupted deploy (says whose it was)."""
    from ndctl.api import Fleet
    from ndctl.commands.appstate import _app
    from ndctl.core.errors import UsageError
    from ndctl.ops.deploy import force_unlock
    from ndctl.transport.ssh import Runner

    try:
        _app(app_name)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to unlock {app_name} without --yes (no terminal to confirm on)")
        if not typer.confirm(f"Force-release the deploy lock of {app_name}?", default=False, err=True):
            raise typer.Exit(2)
    fleet = Fleet(_state().inventory, selector=selector)

    async def main():
        async with Runner(fleet.run_options()) as runner:
            return await force_unlock(runner, fleet.hosts, app_name)

    result = asyncio.run(main())
    for r in result:
        if not r.ok:
            output.stdout.print(f"{r.host}: {r.status.value}: {r.error or r.stderr.strip()}", markup=False)
        elif r.value is None:
            output.stdout.print(f"{r.host}: not locked", markup=False)
        else:
            info = r.value
            held = (f"held by {info.who or '?'}" + (f" (from {info.from_})" if info.from_ else "")
                    + f" since {info.at or '?'}, deploying {info.version or '?'} [{info.deploy_id or 'no id'}]"
                    if not info.incomplete else "held without details")
            output.stdout.print(f"{r.host}: released the lock of {app_name} {held}", markup=False)
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
            output.emit_data({**data, **{r.host: {"error": r.error or r.status.value} for r in result if not r.ok}},
                             fmt)
        else:
            rows = [[h, x["version"], x.get("container") or "-", x["state"], x.get("finished_at") or "-"]
                    for h, xs in data.items() for x in xs]
            rows += [[r.host, "-", "-", r.status.value, r.error or ""] for r in result if not r.ok]
            output.table(["HOST", "VERSION", "CONTAINER", "STATE", "DEPLOYED"], rows)
        if not result.ok:  # a host it could not read: the list is incomplete
            raise typer.Exit(int(result.exit_status()))
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
