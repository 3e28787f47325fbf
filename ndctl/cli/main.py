"""Entry point: the Typer app, global options, and typed errors -> exit statuses."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ndctl import __version__
from ndctl.cli import output
from ndctl.core.errors import ExitStatus, GroupError, NdctlError

app = typer.Typer(
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


@app.callback()
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


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"ndctl.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ndctl.cli.{name}":
                continue  # not written yet
            raise
        mod.register(app)


_register_commands()


def run(argv: list[str] | None = None) -> None:
    """Console-script entry: the single place exceptions turn into exit statuses."""
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
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(int(ExitStatus.USAGE))
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    run()
