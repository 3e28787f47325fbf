"""``ndctl dashboard`` on the command line: refused without a terminal, selector errors first."""
from __future__ import annotations

import pytest

from ndctl.cli.main import run
from ndctl.core.errors import ExitStatus


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    path = tmp_path / "inventory.yaml"
    path.write_text("version: 1\nhosts:\n  web-1:\n    address: 127.0.0.1\n    user: root\n    tags: [web]\n")
    monkeypatch.setenv("NDCTL_INVENTORY", str(path))
    return path


def exit_status(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        run(argv)
    return e.value.code


def test_dashboard_without_a_terminal_is_a_usage_error(inventory, capsys):
    assert exit_status(["dashboard"]) == ExitStatus.USAGE
    assert "needs a terminal" in capsys.readouterr().err


def test_dashboard_selector_errors(inventory, capsys):
    assert exit_status(["dashboard", "--tags", "(web"]) == ExitStatus.USAGE
    assert exit_status(["dashboard", "--tags", "db"]) == ExitStatus.NOT_FOUND
    assert "matches no host" in capsys.readouterr().err
