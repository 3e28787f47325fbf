"""Entry point: the Typer app, global options, and typed errors -> exit statuses."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from ndctl import __version__
from ndctl.cli import output
from ndctl.core.errors import ExitStatus, GroupError, NdctlError

_app = typer.Typer(
    name="ndctl",
    help="NextDeploy: deploy and operate a fleet of Docker hosts over plain SSH.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class State:
    inventory: Optional[Path] = None


state = State()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ndctl {__version__}")
        raise typer.Exit()


@_app.callback()
def main(
    inventory: Optional[Path] = typer.Option(
        None, "--inventory", "-i", envvar="NDCTL_INVENTORY",
        help="Inventory file (default ~/.nextdeploy/inventory.yaml).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    state.inventory = inventory


# Each CLI module adds its commands with ``register(app)``; one list, so adding a
# command module never means editing another's code.
COMMAND_MODULES = ("agent", "exec_cmd", "sandbox", "run_cmd", "play", "deploy", "logs", "secrets", "dashboard")
#: the modules that register each top-level command: running one imports only those
#: (a cron job's `ndctl deploy` need not load the dashboard); anything else loads all.
COMMANDS = {"agent": ("agent", "play"), "exec": ("exec_cmd",), "sandbox": ("sandbox",), "run": ("run_cmd",),
            "play": ("play",), "deploy": ("deploy",), "rollback": ("deploy",), "logs": ("logs",),
            "secrets": ("secrets",), "dashboard": ("dashboard",)}
_registered: set[str] = set()


def register_commands(modules: tuple[str, ...] | None = None) -> typer.Typer:
    """Register ``modules`` (every one when None) on the app, once each; returns the app."""
    import importlib

    for name in COMMAND_MODULES if modules is None else modules:
        if name in _registered:
            continue
        _registered.add(name)
        importlib.import_module(f"ndctl.cli.{name}").register(_app)
    return _app


def modules_for(argv: list[str]) -> tuple[str, ...] | None:
    """The modules the command in ``argv`` needs, None (all) when it names none or an unknown one."""
    args = iter(argv)
    for a in args:
        if a in ("-i", "--inventory"):
            next(args, None)
        elif a == "--":
            return None
        elif not a.startswith("-"):
            return COMMANDS.get(a)
    return None


def __getattr__(name: str) -> object:
    if name == "app":  # the whole CLI, for tests and tools that inspect it
        return register_commands()
    raise AttributeError(name)


def _click_exception() -> type[Exception]:
    try:
        from typer._click.exceptions import ClickException  # typer >= 0.26 carries its own click
    except ImportError:
        from click import ClickException
    return ClickException


def run(argv: list[str] | None = None) -> None:
    """The CLI, ending in ``SystemExit``: the single place exceptions turn into exit statuses."""
    app = register_commands(modules_for(sys.argv[1:] if argv is None else list(argv)))
    try:
        rv = app(args=argv, prog_name="ndctl", standalone_mode=False)
    except GroupError as e:
        sys.exit(int(e.exit_status))
    except NdctlError as e:
        output.error(e)
        sys.exit(int(e.exit_status))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(int(ExitStatus.INTERRUPTED))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(int(ExitStatus.USAGE))
    except Exception as e:  # click's usage errors
        if isinstance(e, _click_exception()):
            e.show()
            sys.exit(int(ExitStatus.USAGE))
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


def entry() -> None:
    """The ``ndctl`` console script and ``python -m ndctl``: :func:`run`, then :func:`quick_exit`."""
    try:
        run()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            quick_exit(e.code or 0)
        raise


def quick_exit(code: int) -> NoReturn:
    """Exit without the interpreter's teardown, once nothing else is running.

    Freeing every module and object at exit takes 40-90 ms (more on a loaded
    machine) that a deploy script or cron job waits for and gains nothing from.
    atexit handlers run and output is flushed first; while another non-daemon
    thread runs, this is a plain ``sys.exit`` that waits for it.
    """
    import atexit
    import os
    import threading

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere, the plain exit
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if run_exitfuncs is None or others:
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or a full disk: what was written is incomplete
            code = code or int(ExitStatus.ERROR)
    os._exit(code)


if __name__ == "__main__":
    entry()
