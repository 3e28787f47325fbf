"""The entry point imports only the command modules the command line needs."""
from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main

from ndctl.cli import main


def test_the_command_map_names_every_top_level_command() -> None:
    registered = set(typer.main.get_command(main.app).commands)  # `app`: every module registered
    assert set(main.COMMANDS) == registered
    assert {m for mods in main.COMMANDS.values() for m in mods} == set(main.COMMAND_MODULES)


@pytest.mark.parametrize("argv,modules", [
    (["deploy", "status", "web"], ("deploy",)),
    (["-i", "inv.yaml", "rollback", "web"], ("deploy",)),
    (["--inventory", "agent", "agent", "list"], ("agent", "play")),  # the option's value is not the command
    (["--inventory=x.yaml", "logs", "web"], ("logs",)),
    (["--help"], None), ([], None), (["deplyo"], None), (["--", "deploy"], None),
])
def test_modules_for(argv: list[str], modules) -> None:
    assert main.modules_for(argv) == modules


@pytest.mark.parametrize("command", sorted(main.COMMANDS))
def test_each_command_works_with_only_its_modules(command: str) -> None:
    code = ("import sys, typer.main; from ndctl.cli import main; "
            "main.register_commands(main.modules_for(sys.argv[1:])); "
            "print(sorted(typer.main.get_command(main._app).commands)); "
            "print(sorted(m for m in sys.modules if m.startswith('ndctl.cli.')))")
    out = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, check=True).stdout
    commands, modules = out.splitlines()
    assert repr(command) in commands
    assert "'ndctl.cli.dashboard'" not in modules or command == "dashboard"  # the TUI is never loaded for others
    r = subprocess.run([sys.executable, "-m", "ndctl", command, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Usage: ndctl " + command in r.stdout, r.stdout + r.stderr


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_quick_exit_runs_the_atexit_handlers_flushes_and_keeps_the_status() -> None:
    r = _python("import atexit, sys\nfrom ndctl.cli.main import quick_exit\n"
                "atexit.register(lambda: print('atexit ran'))\n"
                "sys.stdout.write('buffered, ')\nsys.stderr.write('err')\nquick_exit(3)\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, "buffered, atexit ran\n", "err")


def test_quick_exit_waits_for_a_running_non_daemon_thread() -> None:
    r = _python("import threading, time\nfrom ndctl.cli.main import quick_exit\n"
                "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished'))).start()\n"
                "quick_exit(4)\n")
    assert (r.returncode, r.stdout) == (4, "thread finished\n")


@pytest.mark.parametrize("argv,status,stream,text", [
    (["--version"], 0, "stdout", "ndctl "),
    (["deploy", "-f", "/nonexistent/nextdeploy.yaml"], 2, "stderr", "no app definition"),
    (["deplyo"], 2, "stderr", "No such command 'deplyo'"),  # once a traceback: typer's click is its own
    (["deploy", "--bogus"], 2, "stderr", "No such option: --bogus"),
])
def test_python_dash_m_ndctl_exits_with_the_commands_status(argv, status, stream, text) -> None:
    r = subprocess.run([sys.executable, "-m", "ndctl", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == status and text in getattr(r, stream), r.stdout + r.stderr
