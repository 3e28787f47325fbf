"""End to end: `ndctl agent prepare` and `ndctl play` on real test hosts (own sshd,
filesystem, Docker engine and apt). Every test puts the hosts back as it found
them: packages it installed are purged and directories it created removed."""
from __future__ import annotations

import json
import re
import textwrap

import pytest

from ndctl.core.errors import ExitStatus

pytestmark = pytest.mark.e2e

NAMES = ["play-1", "play-2", "play-3"]
TAGS = ["web", "web", "fresh"]
ND_DIRS = ["/var/lib/nextdeploy/apps", "/var/lib/nextdeploy/proxy/routes", "/var/lib/nextdeploy/proxy"]


@pytest.fixture
def hosts(cli, container_hosts, ssh_block):
    cli.ssh_config.write_text("".join(ssh_block(n, h) for n, h in zip(NAMES, container_hosts)))
    for name, tags in zip(NAMES, TAGS):
        r = cli("agent", "register", "--name", name, "--tags", tags, "--trust-host-key")
        assert r.returncode == 0, r.stderr
    return dict(zip(NAMES, container_hosts))


def packages(th) -> set[str]:
    out = th.exec("dpkg-query", "-W", "-f", "${Package} ${Status}\\n").stdout
    return {ln.split()[0] for ln in out.splitlines() if ln.endswith(" installed")}


def tree(th) -> str:
    return th.exec("sh", "-c", "find /var/lib/nextdeploy -printf '%p %m %u\\n' 2>/dev/null | sort",
                   check=False).stdout


def apt_lists(th) -> str:
    return th.exec("sh", "-c", "ls /var/lib/apt/lists").stdout


def restore(th, before: set[str], lists: str | None = None) -> None:
    """Purge what was installed since ``before``, remove the directories prepare creates and
    the package lists `apt-get update` downloaded (all but the entries in ``lists``)."""
    added = sorted(packages(th) - before)
    if added:
        th.exec("sh", "-c", 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "$@"', "purge", *added)
    th.exec("rm", "-rf", *ND_DIRS)
    th.exec("apt-get", "clean")
    if lists is not None:  # back to the entries that were there
        th.exec("sh", "-c", 'cd /var/lib/apt/lists && for f in *; do case " $* " in *" $f "*) ;; *) rm -rf "$f" ;; '
                'esac; done', "keep", *lists.split())


def row(stdout: str, host: str, step: str, result: str, detail: str = "") -> bool:
    pattern = rf"^{re.escape(host)}\s+{re.escape(step)}\s+{re.escape(result)}\b\s*{re.escape(detail)}"
    return re.search(pattern, stdout, re.MULTILINE) is not None


def test_prepare_installs_age_and_directories_then_changes_nothing(cli, hosts) -> None:
    web = {n: hosts[n] for n in ("play-1", "play-2")}
    before = {n: packages(th) for n, th in web.items()}
    lists = {n: apt_lists(th) for n, th in web.items()}
    assert all("age" not in b and "docker.io" in b and "python3" in b for b in before.values())
    try:
        r = cli("agent", "prepare", "--tags", "web", timeout=900)
        print(r.stdout, r.stderr)  # shown with -rP: what an operator sees
        assert r.returncode == 0, r.stdout + r.stderr
        for n in web:
            assert row(r.stdout, n, "python3", "unchanged")
            assert row(r.stdout, n, "docker engine", "unchanged")
            assert row(r.stdout, n, "age and ca-certificates", "changed", "installed: age")
            assert row(r.stdout, n, "docker running", "unchanged")  # dockerd runs (no init system: pgrep)
            assert row(r.stdout, n, "ndctl directories", "changed",
                       "created or fixed: /var/lib/nextdeploy/apps /var/lib/nextdeploy/proxy "
                       "/var/lib/nextdeploy/proxy/routes")
            assert "play-3" not in r.stdout
        assert "prepare: 2 host(s), steps: 4 changed, 6 unchanged, 0 skipped, 0 failed" in r.stdout
        assert "no changes" not in r.stdout
        for th in web.values():
            assert re.match(r"v?1\.\d+", th.exec("age", "--version").stdout)
            for d in ("/var/lib/nextdeploy", *ND_DIRS):
                assert th.exec("stat", "-c", "%F %a %U %G", d).stdout.strip() == "directory 755 root root"

        # Second run: every step unchanged, and it says so.
        r = cli("agent", "prepare", "--tags", "web", timeout=300)
        print(r.stdout, r.stderr)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "prepare: 2 host(s), steps: 0 changed, 10 unchanged, 0 skipped, 0 failed - no changes" in r.stdout
        data = cli.json("play", "prepare", "--tags", "web")
        assert data["changed"] is False and data["check"] is False
        assert data["summary"]["steps"]["unchanged"] == 10 and data["summary"]["ok"] == 2
        for h in data["hosts"]:
            assert [s["status"] for s in h["steps"]] == ["unchanged"] * 5
    finally:
        for n, th in web.items():
            restore(th, before[n], lists[n])
    for n, th in web.items():
        assert packages(th) == before[n] and "age" not in packages(th)
        assert apt_lists(th) == lists[n]
        assert th.exec("test", "-e", "/var/lib/nextdeploy/apps", check=False).returncode == 1


def test_check_on_a_fresh_host_reports_and_changes_nothing(cli, hosts) -> None:
    th = hosts["play-3"]
    before, before_tree = packages(th), tree(th)
    lists = apt_lists(th)
    try:
        r = cli("agent", "prepare", "--tags", "fresh", "--check")
        print(r.stdout, r.stderr)
        assert r.returncode == 0, r.stdout + r.stderr
        assert row(r.stdout, "play-3", "python3", "unchanged")
        assert row(r.stdout, "play-3", "age and ca-certificates", "would change", "would install: age")
        assert row(r.stdout, "play-3", "ndctl directories", "would change", "would create or fix: "
                   "/var/lib/nextdeploy/apps /var/lib/nextdeploy/proxy /var/lib/nextdeploy/proxy/routes")
        assert "prepare: 1 host(s), steps: 2 would change, 3 unchanged, 0 skipped, 0 failed" in r.stdout
        data = cli.json("play", "prepare", "--tags", "fresh", "--check")
        assert data["check"] is True and data["changed"] is True
        assert {s["step"]: s["status"] for s in data["hosts"][0]["steps"]} == {
            "python3": "unchanged", "docker engine": "unchanged", "age and ca-certificates": "would_change",
            "docker running": "unchanged", "ndctl directories": "would_change"}
        # Verified on the host: nothing installed, created, or even downloaded.
        assert packages(th) == before
        assert tree(th) == before_tree
        assert apt_lists(th) == lists
    finally:
        restore(th, before, lists)


PLAYBOOK = """\
name: release
vars:
  work: /tmp/nd-play-e2e
  db: orders
steps:
  - name: work dir
    action: directory
    params: {path: "{{ work }}", mode: "0700"}
  - name: only on dnf hosts
    action: shell
    when: {pkg_manager: dnf}
    params: {check: "exit 1", apply: "exit 1"}
  - name: config file
    action: file
    params: {path: "{{ work }}/app.conf", content: "port = 8080\\ndb = $(hostname)\\n", mode: "0600"}
  - name: migrate database
    action: shell
    params:
      check: 'test -e "$1/migrated"'
      apply: 'echo "migrating $2"; echo "error: database $2 is on fire" >&2; exit 7'
      args: ["{{ work }}", "{{ db }}"]
  - name: never reached
    action: directory
    params: {path: "{{ work }}/after"}
"""


def test_user_playbook_stops_a_host_at_its_failing_step(cli, hosts, tmp_path) -> None:
    web = [hosts["play-1"], hosts["play-2"]]
    work = "/tmp/nd-play-e2e-$(touch /tmp/INJECTED)"
    book = tmp_path / "release.yaml"
    book.write_text(PLAYBOOK)
    try:
        r = cli("play", str(book), "--tags", "web", "--var", f"work={work}", "--var", "db=orders; touch /tmp/INJECTED")
        print(r.stdout, r.stderr)
        assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
        for n in ("play-1", "play-2"):
            assert row(r.stdout, n, "work dir", "changed")
            assert row(r.stdout, n, "only on dnf hosts", "skipped", "when: pkg_manager = dnf")
            assert row(r.stdout, n, "config file", "changed", f"wrote {work}/app.conf")
            assert row(r.stdout, n, "migrate database", "failed",
                       "apply failed: error: database orders; touch /tmp/INJECTED is on fire")
            assert not row(r.stdout, n, "never reached", "")
            assert (f"--- {n}: step 'migrate database' failed (apply, exit 7); last lines of stderr:\n"
                    "error: database orders; touch /tmp/INJECTED is on fire\n") in r.stderr
            assert (f"{n}: failed: step 'migrate database' failed (apply): apply failed: "
                    "error: database orders; touch /tmp/INJECTED is on fire") in r.stderr
        assert "release: 2 host(s), steps: 4 changed, 0 unchanged, 2 skipped, 2 failed" in r.stdout
        assert "2 hosts: 0 ok, 2 failed, 0 unreachable" in r.stderr
        for th in web:
            assert th.exec("cat", f"{work}/app.conf").stdout == "port = 8080\ndb = $(hostname)\n"
            assert th.exec("stat", "-c", "%a %U", f"{work}/app.conf").stdout.strip() == "600 root"
            assert th.exec("test", "-e", f"{work}/after", check=False).returncode == 1  # the host stopped
            assert th.exec("test", "-e", "/tmp/INJECTED", check=False).returncode == 1  # values stayed data

        # Again, as JSON: the steps that succeeded are now unchanged; the failure is the same.
        r = cli("play", str(book), "--tags", "name:play-1", "-o", "json", "--var", f"work={work}")
        assert r.returncode == ExitStatus.HOST_FAILED
        [h] = json.loads(r.stdout)["hosts"]
        assert h["status"] == "failed" and "database orders is on fire" in h["error"]
        assert [(s["step"], s["status"]) for s in h["steps"]] == [
            ("work dir", "unchanged"), ("only on dnf hosts", "skipped"), ("config file", "unchanged"),
            ("migrate database", "failed")]
        assert h["steps"][-1]["phase"] == "apply" and h["steps"][-1]["exit_code"] == 7

        # An invalid playbook is refused before any host is touched.
        book.write_text(PLAYBOOK.replace("action: file", "action: template"))
        r = cli("play", str(book), "--tags", "web", "--var", "work=/tmp/nd-play-e2e-never")
        assert r.returncode == ExitStatus.USAGE
        assert f"{book}: line 14: step 'config file': unknown action 'template'" in r.stderr
        r = cli("play", str(book), "--tags", "web", "--var", "wrok=/x")
        assert r.returncode == ExitStatus.USAGE and "declares no variable 'wrok' (declared: db, work)" in r.stderr
        for th in web:
            assert th.exec("test", "-e", "/tmp/nd-play-e2e-never", check=False).returncode == 1
    finally:
        for th in web:
            th.exec("rm", "-rf", work, "/tmp/INJECTED")


def test_play_reaches_hosts_that_are_still_missing_python3(cli, hosts, tmp_path) -> None:
    """The package action needs no facts: it detects apt-get itself, so it runs where the helper cannot."""
    th = hosts["play-3"]
    book = tmp_path / "probe.yaml"
    book.write_text(textwrap.dedent("""\
        - name: python3
          action: package
          params: {names: [python3]}
        - name: needs facts
          action: shell
          when: {os_family: debian}
          params: {check: "exit 0", apply: "true"}
        """))
    th.exec("sh", "-c", "for f in /usr/bin/python3*; do mv $f $f.off; done")
    try:
        # dpkg still says python3 is installed, so the check passes without python; the `when` step then fails
        # clearly, because facts need python3.
        r = cli("play", str(book), "--tags", "fresh")
    finally:
        th.exec("sh", "-c", "for f in /usr/bin/python3*.off; do mv $f ${f%.off}; done")
    assert r.returncode == ExitStatus.HOST_FAILED, r.stdout + r.stderr
    assert row(r.stdout, "play-3", "python3", "unchanged")
    assert row(r.stdout, "play-3", "needs facts", "failed", "cannot evaluate when: gathering facts failed: "
               "ndctl: python3 is not installed on this host")
    assert "(install python3 in an earlier step, without `when`)" in r.stdout
