"""Playbooks: schema validation, exact rendered scripts, the scripts' behaviour
(run by a real ``sh`` against stub package managers and real directories), the
check / apply / verify loop over a local fake runner, and the property that no
parameter value ever becomes shell syntax."""
from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ndctl.core.errors import UsageError
from ndctl.core.facts import Facts
from ndctl.core.inventory import Host
from ndctl.core.playbook import (
    ACTIONS,
    PACKAGE_MANAGERS,
    StepStatus,
    load_playbook,
    parse_playbook,
    parse_vars,
    render_step,
    when_facts,
)
from ndctl.core.results import HostResult, Status
from ndctl.core.templating import TEMPLATE_DIRS

DATA = Path(__file__).resolve().parents[1] / "data" / "facts"
ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def pb(text: str, **variables: str):
    return parse_playbook(textwrap.dedent(text), "pb.yaml", variables=variables or None)


def yaml_str(s: str) -> str:
    """A YAML double-quoted scalar holding exactly ``s`` (every non-ASCII character escaped)."""
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def yaml_val(v) -> str:
    if isinstance(v, str):
        return yaml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(yaml_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {yaml_val(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def one(action: str, **params):
    """A one-step playbook with these params (as YAML flow values)."""
    return pb(f"- name: s\n  action: {action}\n  params: {yaml_val(params)}\n").steps[0]


# ---------------------------------------------------------------------------
# schema validation: every error names the file, the line and the field
# ---------------------------------------------------------------------------
BAD = [
    ("""\
     - name: a
       action: packages
       params: {names: [age]}
     """, "pb.yaml: line 2: step 'a': unknown action 'packages' (known: directory, file, package, service, shell)"),
    ("""\
     name: x
     steps:
       - name: d
         action: directory
         params: {mode: "0755"}
     """, "pb.yaml: line 5: step 'd': missing parameter 'path' of action 'directory'"),
    ("""\
     - name: d
       action: directory
     """, "pb.yaml: line 1: step 'd': missing parameter 'path' of action 'directory'"),
    ("""\
     - name: p
       action: package
       params: {}
     """, "step 'p': give the packages in names (every package manager) or in apt, dnf or apk"),
    ("""\
     - name: d
       action: directory
       params:
         path: /x
         colour: blue
     """, "pb.yaml: line 5: step 'd': unknown parameter 'colour' of action 'directory' (known: path, mode, owner, group)"),
    ("""\
     - name: w
       action: directory
       params: {path: /x}
       when: {distro: debian}
     """, ("pb.yaml: line 4: step 'w': when: unknown fact 'distro' (known: arch, docker_installed, docker_running, "
           "os_family, os_id, os_version, pkg_manager, user, not)")),
    ("""\
     - name: w
       action: directory
       params: {path: /x}
       when:
         pkg_manager: [apt, yum]
     """, "pb.yaml: line 5: step 'w': when.pkg_manager: unknown value 'yum' (known: apt, dnf, apk, zypper, pacman, unknown)"),
    ("""\
     - name: w
       action: directory
       params: {path: /x}
       when: {docker_running: "no"}
     """, "step 'w': when.docker_running must be true or false, not 'no'"),
    ("""\
     - name: w
       action: directory
       params: {path: /x}
       when: pkg_manager == apt
     """, "pb.yaml: line 4: step 'w': when must be a non-empty mapping of fact to value(s), not a string"),
    ("""\
     - name: w
       action: directory
       params: {path: /x}
       when: {not: {arch: [amd64], color: red}}
     """, "step 'w': when: unknown fact 'color'"),
    ("""\
     - name: d
       action: directory
       params: {path: /x, mode: 0755}
     """, "step 'd': params.mode must be a quoted octal string such as '0755', not 755"),
    ("""\
     - name: d
       action: directory
       params: {path: [/x, relative/y]}
     """, "pb.yaml: line 3: step 'd': params.path[1] must be an absolute path, not 'relative/y'"),
    ("""\
     - name: p
       action: package
       params: {names: [age, -oAPT::Update::Pre-Invoke::=touch]}
     """, "step 'p': params.names[1]: invalid package name '-oAPT::Update::Pre-Invoke::=touch'"),
    ("""\
     - name: p
       action: package
       params: {names: ["age; reboot"]}
     """, "params.names[0]: invalid package name 'age; reboot'"),
    ("""\
     - name: s
       action: service
       params: {name: "docker; reboot"}
     """, "step 's': params.name must be a service name, not 'docker; reboot'"),
    ("""\
     - name: f
       action: file
       params: {path: /etc/x, content: hi, owner: "root:root"}
     """, "params.owner must be a user or group name, not 'root:root'"),
    ("""\
     - name: a
       action: directory
       params: {path: /a}
     - name: a
       action: directory
       params: {path: /b}
     """, "pb.yaml: line 4: duplicate step name 'a'"),
    ("""\
     - name: a
       action: directory
       params: {path: /a}
       become: yes
     """, "pb.yaml: line 4: step 'a': unknown key 'become' (known: action, name, params, timeout, when)"),
    ("""\
     - action: directory
       params: {path: /a}
     """, "pb.yaml: line 1: step 1 has no name"),
    ("""\
     - name: a
       params: {path: /a}
     """, "step 'a': missing action"),
    ("""\
     - name: a
       action: directory
       params: {path: /a}
       timeout: -1
     """, "pb.yaml: line 4: step 'a': timeout must be a positive number of seconds, not -1"),
    ("""\
     - name: a
       action: directory
       params: {path: "{{ root }}/x"}
     """, "pb.yaml: line 3: step 'a': params.path: undefined variable 'root' (defined: none)"),
    ("""\
     vars: {dir: /srv}
     steps:
       - name: a
         action: shell
         params: {check: "test -d {{ dir }}", apply: "mkdir {{ dir }}"}
     """, "params.check is shell code: variables are never spliced into it; pass them with args"),
    ("name: x\nsteps: []\n", "pb.yaml: line 2: the playbook has no steps"),
    ("name: x\nstep: []\n", "pb.yaml: line 2: unknown top-level key 'step' (known: description, name, steps, vars)"),
    ("just a string\n", "pb.yaml: a playbook is a list of steps (or a mapping with steps:), not a string"),
    ("- name: a\n  action: [directory\n", "pb.yaml: invalid YAML: line 3, column 1"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_invalid_playbooks_name_the_line_and_field(text: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        pb(text)
    assert message in str(e.value)


def test_vars_from_the_command_line_must_be_declared() -> None:
    text = "vars: {dir: /srv}\nsteps:\n  - {name: a, action: directory, params: {path: '{{ dir }}'}}\n"
    assert pb(text).steps[0].params["path"] == ["/srv"]
    assert pb(text, dir="/opt/x").steps[0].params["path"] == ["/opt/x"]
    with pytest.raises(UsageError, match=r"--var dri: pb.yaml declares no variable 'dri' \(declared: dir\)"):
        pb(text, dri="/opt")
    assert parse_vars(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in ("noequals", "1x=2", "a b=c", "=v"):
        with pytest.raises(UsageError, match="expected NAME=VALUE"):
            parse_vars([bad])


def test_vars_substitute_whole_lists_and_inside_strings() -> None:
    text = """\
    vars: {pkgs: [age, jq], base: /srv}
    steps:
      - {name: p, action: package, params: {names: "{{ pkgs }}"}}
      - {name: d, action: directory, params: {path: ["{{base}}", "{{ base }}/apps"]}}
    """
    p = pb(text)
    assert p.steps[0].params["names"] == ["age", "jq"]
    assert p.steps[1].params["path"] == ["/srv", "/srv/apps"]
    with pytest.raises(UsageError, match="variable 'pkgs' is a list and cannot be part of a string"):
        pb(text.replace('"{{ pkgs }}"', '"x{{ pkgs }}"'))


def test_only_identifier_references_are_variables_and_content_is_verbatim() -> None:
    text = """\
    vars: {fmt: json}
    steps:
      - {name: d, action: shell, params: {check: 'exit 0', apply: 'true', args: ["{{.Names}} {{ fmt }}"]}}
      - {name: f, action: file, params: {path: /etc/x, content: "{{ fmt }} {{ undefined }}"}}
    """
    steps = pb(text).steps
    assert steps[0].params["args"] == ["{{.Names}} json"]
    assert steps[1].params["content"] == "{{ fmt }} {{ undefined }}"


def test_missing_playbook_file_and_builtin_names(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="playbook 'nope' not found"):
        load_playbook("nope")
    with pytest.raises(UsageError, match="not found"):
        load_playbook(tmp_path / "missing.yaml")
    prepare = load_playbook("prepare")
    assert prepare.name == "prepare"
    assert [s.name for s in prepare.steps] == ["python3", "docker engine", "age and ca-certificates",
                                               "docker running", "ndctl directories"]
    assert all(s.when is None for s in prepare.steps[:1])  # python3 first, and without facts


def test_prepare_installs_the_issue_list_on_each_package_manager() -> None:
    steps = {s.name: s for s in load_playbook("prepare").steps}
    pkgs = {pm: [p for s in steps.values() if s.action == "package" for p in s.params["packages"][pm]]
            for pm in PACKAGE_MANAGERS}
    assert pkgs == {"apt": ["python3", "docker.io", "age", "ca-certificates"],
                    "dnf": ["python3", "moby-engine|docker", "age", "ca-certificates"],
                    "apk": ["python3", "docker", "age", "ca-certificates"]}
    d = steps["ndctl directories"].params
    assert d["path"] == ["/var/lib/nextdeploy", "/var/lib/nextdeploy/apps", "/var/lib/nextdeploy/proxy",
                         "/var/lib/nextdeploy/proxy/routes"]
    assert (d["mode"], d["owner"], d["group"]) == ("755", "root", "root")


def test_every_action_has_a_template() -> None:
    for a in ACTIONS.values():
        assert (TEMPLATE_DIRS[0] / a.template).is_file(), a.template


# ---------------------------------------------------------------------------
# when
# ---------------------------------------------------------------------------
def facts_of(name: str) -> dict:
    return when_facts(Facts.from_dict(json.loads((DATA / name).read_text())))


def test_when_facts_from_real_helper_output() -> None:
    f = facts_of("debian12-amd64-local.json")
    assert f == {"os_family": "debian", "os_id": "debian", "os_version": "12", "arch": "amd64",
                 "pkg_manager": "apt", "docker_installed": True, "docker_running": True, "user": "root"}
    assert facts_of("ubuntu2004.json")["pkg_manager"] == "apt"
    assert facts_of("no-docker.json")["docker_installed"] is False


def test_when_matches_every_fact_and_not() -> None:
    w = pb("""\
    - name: a
      action: directory
      params: {path: /a}
      when:
        pkg_manager: [apt, dnf]
        arch: amd64
        not: {os_id: ubuntu}
    """).steps[0].when
    deb = {"pkg_manager": "apt", "arch": "amd64", "os_id": "debian"}
    assert w.matches(deb)
    assert not w.matches({**deb, "os_id": "ubuntu"})
    assert not w.matches({**deb, "pkg_manager": "apk"})
    assert not w.matches({**deb, "arch": "arm64"})
    assert w.describe() == "pkg_manager in ['apt', 'dnf'] and arch = amd64 and not (os_id = ubuntu)"


# ---------------------------------------------------------------------------
# exact scripts
# ---------------------------------------------------------------------------
PM_BLOCK = {
    ("apt", "check"): """\
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' installed$'; }
set -- age 'moby-engine|docker.io'
""",
    ("apt", "apply"): """\
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' installed$'; }
export DEBIAN_FRONTEND=noninteractive
refreshed=0
refresh() { [ "$refreshed" = 1 ] && return 1; refreshed=1; apt-get -q -o DPkg::Lock::Timeout=300 update >&2; }
install() {
  if ! ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages'; then refresh || return 1; fi
  apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "$@" >&2 && return 0
  refresh && apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "$@" >&2
}
set -- age 'moby-engine|docker.io'
""",
    ("dnf", "check"): """\
installed() { rpm -q --quiet "$1" 2>/dev/null; }
set -- age 'moby-engine|docker'
""",
    ("dnf", "apply"): """\
installed() { rpm -q --quiet "$1" 2>/dev/null; }
install() { dnf -y -q install "$@" >&2; }
set -- age 'moby-engine|docker'
""",
    ("apk", "check"): """\
installed() { apk info -e "$1" >/dev/null 2>&1; }
set -- age docker
""",
    ("apk", "apply"): """\
installed() { apk info -e "$1" >/dev/null 2>&1; }
install() { apk add -q --no-cache "$@" >&2; }
set -- age docker
""",
}
FIND_MISSING = """\
missing=''
for spec do
  ok=0
  IFS='|'
  for p in $spec; do installed "$p" && ok=1; done
  unset IFS
  [ "$ok" = 1 ] || missing="$missing $spec"
done
[ -z "$missing" ] && exit 0
"""
CHECK_TAIL = """\
echo "would install:$missing"
exit 1
"""
APPLY_TAIL = """\
plain='' alts=''
for spec in $missing; do
  case $spec in *'|'*) alts="$alts $spec" ;; *) plain="$plain $spec" ;; esac
done
if [ -n "$plain" ]; then
  install $plain || exit 1
fi
for spec in $alts; do
  done_=0
  IFS='|'
  for p in $spec; do
    unset IFS
    if install "$p"; then done_=1; break; fi
  done
  unset IFS
  [ "$done_" = 1 ] || { echo "none of $spec could be installed" >&2; exit 1; }
done
echo "installed:$missing"
"""
PKG_STEP = {"names": ["age"], "apt": ["age", "moby-engine|docker.io"], "dnf": ["age", "moby-engine|docker"],
            "apk": ["age", "docker"]}


@pytest.mark.parametrize("pm", PACKAGE_MANAGERS)
@pytest.mark.parametrize("phase", ["check", "apply"])
def test_package_script_for_each_package_manager(pm: str, phase: str) -> None:
    script = render_step(one("package", **PKG_STEP), phase, pkg_manager=pm)
    tail = CHECK_TAIL if phase == "check" else APPLY_TAIL
    assert script.argv == ["sh", "-c", "set -uf\n" + PM_BLOCK[pm, phase] + FIND_MISSING + tail, "nd-package"]
    assert script.input is None


@pytest.mark.parametrize("phase", ["check", "apply"])
def test_package_script_without_facts_detects_the_package_manager(phase: str) -> None:
    script = render_step(one("package", **PKG_STEP), phase).argv[2]
    blocks = [textwrap.indent(PM_BLOCK[pm, phase], "  ") for pm in PACKAGE_MANAGERS]
    tail = CHECK_TAIL if phase == "check" else APPLY_TAIL
    assert script == (
        "set -uf\n"
        "if command -v apt-get >/dev/null 2>&1; then\n" + blocks[0] +
        "elif command -v dnf >/dev/null 2>&1; then\n" + blocks[1] +
        "elif command -v apk >/dev/null 2>&1; then\n" + blocks[2] +
        "else\n"
        "  echo 'no supported package manager on this host (apt-get, dnf or apk)' >&2\n"
        "  exit 2\n"
        "fi\n" + FIND_MISSING + tail)


def test_directory_scripts() -> None:
    step = one("directory", path=["/var/lib/nextdeploy", "/var/lib/nextdeploy/it's here"], mode="0750",
               owner="root", group="adm")
    head = ("set -uf\n"
            "set -- /var/lib/nextdeploy '/var/lib/nextdeploy/it'\"'\"'s here'\n"
            "todo=''\n"
            "for p do\n"
            "  if [ ! -d \"$p\" ] || [ \"$(stat -c '%a %U %G' \"$p\")\" != '750 root adm' ]; then\n"
            "    todo=\"$todo $p\"\n")
    assert render_step(step, "check").argv[2] == head + (
        "  fi\n"
        "done\n"
        "[ -z \"$todo\" ] && exit 0\n"
        "echo \"would create or fix:$todo\"\n"
        "exit 1\n")
    assert render_step(step, "apply").argv[2] == head + (
        "    mkdir -p \"$p\" && chown root:adm \"$p\" && chmod 750 \"$p\" || exit 1\n"
        "  fi\n"
        "done\n"
        "[ -z \"$todo\" ] && exit 0\n"
        "echo \"created or fixed:$todo\"\n")


def test_file_scripts_send_the_content_on_stdin() -> None:
    step = one("file", path="/etc/nextdeploy/x.conf", content="a $(b) 'c'\n", mode="600")
    check = render_step(step, "check")
    assert check.input == "a $(b) 'c'\n"
    assert check.argv[2] == (
        "set -uf\n"
        "p=/etc/nextdeploy/x.conf\n"
        "if [ -f \"$p\" ] && cmp -s - \"$p\" && [ \"$(stat -c '%a %U %G' \"$p\")\" = '600 root root' ]; then\n"
        "  exit 0\n"
        "fi\n"
        "echo \"would write $p\"\n"
        "exit 1\n")
    apply = render_step(step, "apply")
    assert apply.input == "a $(b) 'c'\n"
    assert apply.argv[2] == (
        "set -uf\n"
        "p=/etc/nextdeploy/x.conf\n"
        "tmp=$(mktemp \"$(dirname \"$p\")/.nd-tmp.XXXXXX\") || exit 1\n"
        "trap 'rm -f \"$tmp\"' EXIT\n"
        "cat >\"$tmp\" && chown root:root \"$tmp\" && chmod 600 \"$tmp\" && mv -f \"$tmp\" \"$p\" || exit 1\n"
        "echo \"wrote $p\"\n")


SERVICE_HEAD = """\
set -uf
svc=docker
if [ -d /run/systemd/system ]; then
  init=systemd
elif command -v rc-service >/dev/null 2>&1 && [ -d /run/openrc ]; then
  init=openrc
else
  init=none
fi
running() {
  case $init in
    systemd) systemctl is-active --quiet "$svc" && systemctl is-enabled --quiet "$svc" ;;
    openrc) rc-service "$svc" status >/dev/null 2>&1 && rc-update show default 2>/dev/null | grep -qw "$svc" ;;
    none) pgrep -x dockerd >/dev/null 2>&1 || pidof dockerd >/dev/null 2>&1 ;;
  esac
}
"""


def test_service_scripts_start_dockerd_when_no_init_system_runs() -> None:
    step = one("service", name="docker", process="dockerd", start=["dockerd", "--log-level=warn"],
               ready=["docker", "version"], wait=10)
    assert render_step(step, "check").argv[2] == SERVICE_HEAD + (
        "running && exit 0\n"
        "echo \"would start $svc ($init)\"\n"
        "exit 1\n")
    assert render_step(step, "apply").argv[2] == SERVICE_HEAD + """\
if ! running; then
  case $init in
    systemd) systemctl enable --now "$svc" >&2 || exit 1 ;;
    openrc) { rc-update add "$svc" default && rc-service "$svc" start; } >&2 || exit 1 ;;
    none) setsid dockerd --log-level=warn </dev/null >>/var/log/docker.log 2>&1 & ;;
  esac
fi
i=0
while :; do
  running && docker version >/dev/null 2>&1 && break
  i=$((i + 1))
  if [ "$i" -gt 20 ]; then
    echo "$svc did not become ready within 10s ($init)" >&2
    [ "$init" = none ] && tail -n 20 /var/log/docker.log >&2
    exit 1
  fi
  sleep 0.5
done
echo "started $svc ($init)"
"""
    # Without a start command, a host with no init system is an error, not "would change".
    bare = one("service", name="docker", process="dockerd")
    assert "no init system manages it and the step gives no start command" in render_step(bare, "check").argv[2]


def test_shell_scripts_get_values_as_positional_parameters() -> None:
    step = one("shell", check='test -e "$1"', apply='touch "$1"', args=["/tmp/a b; c"])
    assert render_step(step, "check").argv == [
        "sh", "-c", "exec sh -c 'test -e \"$1\"' nd-check '/tmp/a b; c'\n", "nd-shell"]
    assert render_step(step, "apply").argv[2] == "exec sh -c 'touch \"$1\"' nd-apply '/tmp/a b; c'\n"


# ---------------------------------------------------------------------------
# the scripts, run: stub package managers on a PATH without the real ones
# ---------------------------------------------------------------------------
TOOLS = ["sh", "grep", "ls", "cat", "rm", "mkdir", "stat", "cmp", "mktemp", "dirname", "mv", "chmod", "chown",
         "env", "printf", "sleep", "pgrep", "pidof", "setsid", "tail", "test", "touch"]

STUBS = {
    # each records its argv (and DEBIAN_FRONTEND) and keeps "installed" packages in $STATE/installed
    "apt": {
        "dpkg-query": 'for a do :; done; grep -qx "$a" "$STATE/installed" 2>/dev/null && printf "install ok installed" || exit 1',
        "apt-get": 'echo "apt-get $* FRONTEND=${DEBIAN_FRONTEND:-}" >>"$STATE/log"\n'
                   'for a do case $a in -*|install|update|DPkg*) ;; *) grep -qx "$a" "$STATE/refuse" 2>/dev/null '
                   '&& { echo "E: Unable to locate package $a" >&2; exit 100; } ;; esac; done\n'
                   'for a do case $a in -*|install|update|DPkg*) ;; *) echo "$a" >>"$STATE/installed" ;; esac; done',
    },
    "dnf": {
        "rpm": 'grep -qx "$3" "$STATE/installed" 2>/dev/null',
        "dnf": 'echo "dnf $*" >>"$STATE/log"\n'
               'for a do case $a in -*|install) ;; *) grep -qx "$a" "$STATE/refuse" 2>/dev/null && exit 1 ;; esac; done\n'
               'for a do case $a in -*|install) ;; *) echo "$a" >>"$STATE/installed" ;; esac; done',
    },
    "apk": {
        "apk": 'case $1 in info) grep -qx "$3" "$STATE/installed" 2>/dev/null; exit ;; esac\n'
               'echo "apk $*" >>"$STATE/log"\n'
               'for a do case $a in -*|add) ;; *) grep -qx "$a" "$STATE/refuse" 2>/dev/null && exit 1 ;; esac; done\n'
               'for a do case $a in -*|add) ;; *) echo "$a" >>"$STATE/installed" ;; esac; done',
    },
}


def stub_host(tmp_path: Path, pm: str) -> dict[str, str]:
    """A PATH with basic tools plus one stub package manager (and no real apt-get/dnf/apk)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for t in TOOLS:
        real = subprocess.run(["sh", "-c", f"command -v {t}"], capture_output=True, text=True, check=False).stdout.strip()
        if real.startswith("/"):
            (bin_ / t).symlink_to(real)
    for name, body in STUBS[pm].items():
        (bin_ / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_ / name).chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    return {"PATH": str(bin_), "STATE": str(state)}


def run_script(script, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """What the transport does: shlex.join the argv, and the login shell runs it."""
    return subprocess.run(["sh", "-c", shlex.join(script.argv)], input=script.input, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("pm", PACKAGE_MANAGERS)
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "detected"])
def test_package_check_apply_check_on_each_package_manager(tmp_path: Path, pm: str, pinned: bool) -> None:
    env = stub_host(tmp_path, pm)
    state = Path(env["STATE"])
    (state / "installed").write_text("ca-certificates\n")
    (state / "refuse").write_text("moby-engine\n")  # not in this distro: the alternative is installed instead
    step = one("package", names=["age", "ca-certificates", "moby-engine|docker"])
    kw = {"pkg_manager": pm} if pinned else {}
    r = run_script(render_step(step, "check", **kw), env)
    assert (r.returncode, r.stdout) == (1, "would install: age moby-engine|docker\n"), r.stderr
    assert not (state / "log").exists()  # check changes nothing
    r = run_script(render_step(step, "apply", **kw), env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "installed: age moby-engine|docker\n"
    log = (state / "log").read_text().splitlines()
    lock = "-o DPkg::Lock::Timeout=300"
    expected = {
        "apt": [f"apt-get -q -y {lock} install --no-install-recommends age FRONTEND=noninteractive",
                f"apt-get -q -y {lock} install --no-install-recommends moby-engine FRONTEND=noninteractive",
                f"apt-get -q {lock} update FRONTEND=noninteractive",
                f"apt-get -q -y {lock} install --no-install-recommends moby-engine FRONTEND=noninteractive",
                f"apt-get -q -y {lock} install --no-install-recommends docker FRONTEND=noninteractive"],
        "dnf": ["dnf -y -q install age", "dnf -y -q install moby-engine", "dnf -y -q install docker"],
        "apk": ["apk add -q --no-cache age", "apk add -q --no-cache moby-engine", "apk add -q --no-cache docker"],
    }[pm]
    if pm == "apt" and not any("_Packages" in f for f in os.listdir("/var/lib/apt/lists")
                               if os.path.isdir("/var/lib/apt/lists")):
        expected.insert(0, f"apt-get -q {lock} update FRONTEND=noninteractive")  # no package lists yet
    assert log == expected
    r = run_script(render_step(step, "check", **kw), env)
    assert (r.returncode, r.stdout) == (0, "")


def test_package_without_a_supported_manager_is_an_error(tmp_path: Path) -> None:
    env = stub_host(tmp_path, "apk")
    (Path(env["PATH"]) / "apk").unlink()
    r = run_script(render_step(one("package", names=["age"]), "check"), env)
    assert r.returncode == 2 and "no supported package manager on this host (apt-get, dnf or apk)" in r.stderr


def test_package_apply_fails_with_the_managers_error(tmp_path: Path) -> None:
    env = stub_host(tmp_path, "apt")
    (Path(env["STATE"]) / "refuse").write_text("nosuchpkg\n")
    r = run_script(render_step(one("package", names=["nosuchpkg"]), "apply", pkg_manager="apt"), env)
    assert r.returncode == 1 and "E: Unable to locate package nosuchpkg" in r.stderr


def test_directory_check_apply_check(tmp_path: Path) -> None:
    a, b = tmp_path / "apps", tmp_path / "apps" / "routes"
    step = one("directory", path=[str(a), str(b)], mode="0750", owner=ME, group=MY_GROUP)
    r = run_script(render_step(step, "check"))
    assert (r.returncode, r.stdout) == (1, f"would create or fix: {a} {b}\n")
    assert not a.exists()
    r = run_script(render_step(step, "apply"))
    assert (r.returncode, r.stdout) == (0, f"created or fixed: {a} {b}\n"), r.stderr
    assert stat.S_IMODE(b.stat().st_mode) == 0o750
    assert run_script(render_step(step, "check")).returncode == 0
    b.chmod(0o777)  # drift is detected and fixed
    r = run_script(render_step(step, "check"))
    assert (r.returncode, r.stdout) == (1, f"would create or fix: {b}\n")
    assert run_script(render_step(step, "apply")).returncode == 0
    assert stat.S_IMODE(b.stat().st_mode) == 0o750
    (tmp_path / "afile").write_text("")
    r = run_script(render_step(one("directory", path=str(tmp_path / "afile"), owner=ME, group=MY_GROUP), "apply"))
    assert r.returncode == 1 and "File exists" in r.stderr


def test_file_check_apply_check(tmp_path: Path) -> None:
    f = tmp_path / "x.conf"
    step = one("file", path=str(f), content="line 1\n$(touch CANARY)\n", mode="0640", owner=ME, group=MY_GROUP)
    assert run_script(render_step(step, "check"), cwd=tmp_path).returncode == 1
    r = run_script(render_step(step, "apply"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f.read_text() == "line 1\n$(touch CANARY)\n" and stat.S_IMODE(f.stat().st_mode) == 0o640
    assert run_script(render_step(step, "check"), cwd=tmp_path).returncode == 0
    f.write_text("edited\n")
    assert run_script(render_step(step, "check"), cwd=tmp_path).returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.conf"]  # no temp files, no canary


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs here: the no-init path is not taken")
def test_service_without_init_system_starts_the_daemon_detached(tmp_path: Path) -> None:
    daemon = tmp_path / f"ndfake{os.getpid()}"
    daemon.write_bytes(Path(shutil.which("sleep") or "/bin/sleep").read_bytes())
    daemon.chmod(0o755)
    step = one("service", name=daemon.name, start=[str(daemon), "300"], ready=["test", "-d", str(tmp_path)], wait=20)
    try:
        r = run_script(render_step(step, "check"))
        assert (r.returncode, r.stdout) == (1, f"would start {daemon.name} (none)\n")
        r = run_script(render_step(step, "apply"))  # returns: the daemon does not hold the session open
        assert (r.returncode, r.stdout) == (0, f"started {daemon.name} (none)\n"), r.stderr
        assert run_script(render_step(step, "check")).returncode == 0
    finally:
        # the daemon's name is unique to this test: these ids are only the process it started
        pids = subprocess.run(["pgrep", "-x", daemon.name], capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            os.kill(int(pid), 15)
        Path(f"/var/log/{daemon.name}.log").unlink(missing_ok=True)
    bare = one("service", name=f"{daemon.name}x")
    r = run_script(render_step(bare, "check"))
    assert r.returncode == 2 and "no init system manages it" in r.stderr


# ---------------------------------------------------------------------------
# property: values with quotes, `;`, `$(...)` stay data
# ---------------------------------------------------------------------------
NASTY = st.sampled_from([
    "'", '"', ";", "$(touch CANARY)", "`touch CANARY`", "\n touch CANARY", "&& touch CANARY", "|", "\\",
    "${IFS}", "*", "~", "#", "$HOME", "-rf", "--", " ", "\t", "é", "{{.Names}}", "{%", "{#", "%}", "}}",
])
VALUES = st.lists(st.one_of(NASTY, st.text(st.characters(blacklist_characters="\x00/",
                                                         blacklist_categories=("Cs",)), max_size=6)),
                  max_size=5).map("".join)
HSETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])




@HSETTINGS
@given(value=VALUES, content=VALUES)
def test_parameter_values_stay_data(value: str, content: str, tmp_path: Path) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    d = f"{work}/d{value}"
    f = f"{work}/f{value}"
    text = f"""\
    vars: {{v: {yaml_str(value)}}}
    steps:
      - {{name: dir, action: directory, params: {{path: {yaml_str(d)}, owner: {ME}, group: {MY_GROUP}}}}}
      - {{name: file, action: file, params: {{path: {yaml_str(f)}, content: {yaml_str(content)},
          owner: {ME}, group: {MY_GROUP}}}}}
      - {{name: sh, action: shell, params: {{check: 'exit 1', apply: 'printf "%s" "$1" > "$2"',
          args: ["{{{{ v }}}}", {yaml_str(str(work / "out"))}]}}}}
    """
    try:
        steps = pb(text).steps
    except UsageError as e:  # only a value that YAML itself cannot carry may be refused, by name
        pytest.fail(f"refused {value!r}: {e}")
    for step in steps:
        r = run_script(render_step(step, "apply"), cwd=work)
        assert r.returncode == 0, (step.name, r.stderr)
    assert os.path.isdir(d)
    assert Path(f).read_bytes() == content.encode()
    assert (work / "out").read_bytes() == value.encode()
    assert not (work / "CANARY").exists() and not Path("CANARY").exists()
    assert run_script(render_step(steps[0], "check"), cwd=work).returncode == 0


@given(value=VALUES)
def test_package_and_service_names_refuse_shell_syntax_by_name(value: str) -> None:
    for action, params in (("package", {"names": [value]}), ("service", {"name": value})):
        try:
            step = one(action, **params)
        except UsageError as e:
            assert repr(value) in str(e)
        else:  # accepted: then each name needs no quoting at all (`a|b`: alternatives, split on the host)
            words = step.params["packages"]["apt"] if action == "package" else [step.params["name"]]
            names = [n for w in words for n in (w.split("|") if action == "package" else [w])]
            assert all(shlex.quote(n) == n and not n.startswith("-") for n in names)


# ---------------------------------------------------------------------------
# the check / apply / verify loop, over a runner that runs argv locally
# ---------------------------------------------------------------------------
class LocalRunner:
    """Runner stand-in: runs the argv with a local sh, as sshd would."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    async def run(self, host, argv, *, input=None, timeout=None, on_output=None):
        self.argvs.append(list(argv))
        p = await asyncio.create_subprocess_exec("sh", "-c", shlex.join(argv), stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate((input or "").encode())
        return HostResult(host.name, Status.OK if p.returncode == 0 else Status.FAILED, p.returncode,
                          out.decode(), err.decode())

    async def fan_out(self, hosts, fn, forks=None):
        from ndctl.core.results import GroupResult

        return GroupResult([await fn(h) for h in hosts])


@pytest.fixture
def fake_facts(monkeypatch):
    calls = []

    async def gather(runner, host, *, helper_dir):
        calls.append(host.name)
        return HostResult(host.name, Status.OK, 0,
                          value=Facts.from_dict(json.loads((DATA / "debian12-amd64-local.json").read_text())))

    monkeypatch.setattr("ndctl.ops.play.gather_facts", gather)
    return calls


def play(text: str, *, check: bool = False, hosts=("h1",)):
    from ndctl.ops.play import run_playbook

    runner = LocalRunner()
    result = asyncio.run(run_playbook(runner, [Host(h, "127.0.0.1", user="root") for h in hosts],  # type: ignore[arg-type]
                                      pb(text), helper_dir="/nowhere", check=check))
    return result, runner


def statuses(result, host="h1"):
    return [(s.step, s.status) for s in result[host].value]


def test_play_changes_then_reports_unchanged(tmp_path: Path, fake_facts) -> None:
    text = f"""\
    - {{name: dir, action: directory, params: {{path: {tmp_path}/a, owner: {ME}, group: {MY_GROUP}}}}}
    - {{name: only on dnf, action: shell, params: {{check: 'exit 1', apply: 'exit 9'}}, when: {{pkg_manager: dnf}}}}
    - {{name: marker, action: shell, params: {{check: 'test -e "$1"', apply: 'touch "$1"', args: [{tmp_path}/m]}}}}
    """
    result, runner = play(text, check=True)
    assert result.ok
    assert statuses(result) == [("dir", StepStatus.WOULD_CHANGE), ("only on dnf", StepStatus.SKIPPED),
                                ("marker", StepStatus.WOULD_CHANGE)]
    assert result["h1"].value[0].detail == f"would create or fix: {tmp_path}/a"
    assert result["h1"].value[1].detail == "when: pkg_manager = dnf"
    assert not (tmp_path / "a").exists() and not (tmp_path / "m").exists()
    assert [a[2].startswith("set -uf") or a[2].startswith("exec sh") for a in runner.argvs] == [True, True]

    result, runner = play(text)
    assert result.ok
    assert statuses(result) == [("dir", StepStatus.CHANGED), ("only on dnf", StepStatus.SKIPPED),
                                ("marker", StepStatus.CHANGED)]
    assert len(runner.argvs) == 6  # check, apply, check again for each step that ran
    assert (tmp_path / "a").is_dir() and (tmp_path / "m").exists()

    result, runner = play(text)
    assert statuses(result) == [("dir", StepStatus.UNCHANGED), ("only on dnf", StepStatus.SKIPPED),
                                ("marker", StepStatus.UNCHANGED)]
    assert len(runner.argvs) == 2


def test_play_stops_a_host_at_its_first_failed_step(tmp_path: Path, fake_facts) -> None:
    text = f"""\
    - {{name: boom, action: shell, params: {{check: 'exit 1', apply: 'echo working; echo "disk on fire" >&2; exit 7'}}}}
    - {{name: after, action: shell, params: {{check: 'exit 1', apply: 'touch "$1"', args: [{tmp_path}/after]}}}}
    """
    result, _ = play(text, hosts=("h1", "h2"))
    assert not result.ok and result.exit_status() == 3
    for h in ("h1", "h2"):
        r = result[h]
        assert r.status is Status.FAILED and r.exit_code == 7
        assert r.error == "step 'boom' failed (apply): apply failed: disk on fire"
        [s] = r.value
        assert (s.status, s.phase, s.exit_code, s.stderr) == (StepStatus.FAILED, "apply", 7, "disk on fire")
    assert not (tmp_path / "after").exists()


def test_play_verifies_after_apply_and_reports_check_errors(fake_facts) -> None:
    result, _ = play("- {name: liar, action: shell, params: {check: 'echo still wrong; exit 1', apply: 'true'}}\n")
    [s] = result["h1"].value
    assert (s.status, s.phase) == (StepStatus.FAILED, "verify")
    assert s.detail == "still not in the desired state after apply: still wrong"
    result, _ = play("- {name: broken, action: shell, params: {check: 'echo nope >&2; exit 5', apply: 'true'}}\n")
    [s] = result["h1"].value
    assert (s.status, s.phase, s.detail) == (StepStatus.FAILED, "check", "check failed: nope")


def test_facts_are_gathered_only_for_when_and_again_after_a_change(fake_facts) -> None:
    play("- {name: a, action: shell, params: {check: 'exit 0', apply: 'true'}}\n")
    assert fake_facts == []
    fake_facts.clear()
    play("""\
    - {name: a, action: shell, params: {check: 'exit 0', apply: 'true'}, when: {pkg_manager: apt}}
    - {name: b, action: shell, params: {check: 'exit 0', apply: 'true'}, when: {pkg_manager: apt}}
    - {name: c, action: shell, params: {check: 'test -e /proc/self/nonexistent-x', apply: 'true'}}
    """.replace("test -e /proc/self/nonexistent-x", "exit 0"))
    assert fake_facts == ["h1"]  # once, then reused while nothing changed


def test_when_without_python3_says_how_to_fix_it(monkeypatch) -> None:
    async def gather(runner, host, *, helper_dir):
        return HostResult(host.name, Status.FAILED, 127, "", "", error="python3 is not installed on this host")

    monkeypatch.setattr("ndctl.ops.play.gather_facts", gather)
    result, _ = play("- {name: a, action: shell, params: {check: 'exit 0', apply: 'true'}, when: {arch: amd64}}\n")
    [s] = result["h1"].value
    assert (s.status, s.phase) == (StepStatus.FAILED, "facts")
    assert s.detail == ("cannot evaluate when: gathering facts failed: python3 is not installed on this host "
                        "(install python3 in an earlier step, without `when`)")
