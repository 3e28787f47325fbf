"""FleetBackend without SSH: inventory-side behaviour and the plans the confirm dialog shows."""
from __future__ import annotations

import pytest

from ndctl.core.errors import NoHostsMatched, SelectorError
from ndctl.core.inventory import Host
from ndctl.tui.backend import DeployView, FleetBackend, exec_plan, rollback_plan, tag_plan

INVENTORY = """\
version: 1
hosts:
  web-1: {address: 10.0.0.1, user: root, tags: [web, canary]}
  web-2: {address: 10.0.0.2, user: deploy, sudo: true, tags: [web]}
  db-1: {address: 10.0.0.3, user: root, tags: [db]}
"""


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return path


def test_hosts_selection_and_retag_scope(inventory):
    import asyncio

    b = FleetBackend(inventory, selector="canary")
    assert [h.name for h in b.hosts()] == ["web-1"]
    with pytest.raises(SelectorError):
        b.select("(web")
    with pytest.raises(NoHostsMatched):
        b.select("db")
    asyncio.run(b.retag(tag_plan(b.hosts(), remove=["canary"])))
    assert b.hosts() == []  # --tags no longer matches anything: an empty table, not an error
    assert FleetBackend(inventory).select("web")[0].tags == ["web"]
    assert b.cached_facts("web-1") == (None, None)


def test_exec_plan_shows_the_exact_line_per_host_including_sudo():
    hosts = [Host("web-1", "10.0.0.1", user="root"), Host("web-2", "10.0.0.2", user="deploy", sudo=True)]
    plan = exec_plan(hosts, "echo 'a b' | wc -c")
    assert plan.lines == ("web-1: sh -c 'echo '\"'\"'a b'\"'\"' | wc -c'",
                          "web-2: sudo -n -- sh -c 'echo '\"'\"'a b'\"'\"' | wc -c'")
    assert plan.commands[1].argv == ("sudo", "-n", "--", "sh", "-c", "echo 'a b' | wc -c")


def test_rollback_plan_targets_and_skips():
    view = DeployView("shop", [], {
        "a": {"serving": {"version": "v2"}, "releases": [{"version": "v1", "container": "shop-1"}]},
        "b": {"serving": {"version": "v2"}, "releases": []},
        "c": {"error": "connection refused"},
    })
    plan = rollback_plan(view)
    assert plan.hosts == ("a",) and plan.data["targets"] == {"a": "v1"}
    assert plan.lines == ("a: shop v2 -> v1 (shop-1)", "b: skipped (no previous release retained; serving v2)",
                          "c: skipped (state unreadable: connection refused)")


def test_list_apps_builder_lists_app_directories(tmp_path):
    import subprocess

    from ndctl.commands.appstate import list_apps

    argv = list_apps(base=str(tmp_path))
    assert subprocess.run(argv, capture_output=True, text=True, check=True).stdout == ""  # no apps dir yet
    for name in ("shop", "api"):
        (tmp_path / "apps" / name / "lock").mkdir(parents=True)
    (tmp_path / "apps" / "not-a-dir").write_text("")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert sorted(out.split()) == ["api", "shop"]
    with pytest.raises(ValueError):
        list_apps(base="relative/path")
