#!/usr/bin/env python3
"""Fan-out benchmark: ndctl against Ansible, pyinfra, Fabric, parallel OpenSSH and bare asyncssh.

Starts ONE many-hosts fleet (plain sshds on 127.0.0.x logging in as the
``ndbench`` user, see ``ndctl.sandbox.fleet``) of max(--sizes) hosts and, on
the first N of them for each size, times three scenarios:

* ``single``: one command (``true``) on every host;
* ``steps``:  a 10-step sequence of small different commands per host;
* ``facts``:  gathering host facts.

Every tool runs as a fresh child process (it pays interpreter start-up), with
wall time and client CPU (user+sys of the child and everything it started,
see ``_common.run_measured``) recorded per round; the report shows medians.
Each run is checked: exit status, and that all N hosts really ran (parsed from
the tool's output). A tool that fails shows FAILED, never a time.

    python3 benchmarks/fanout.py --quick            # smoke run: 10 hosts, 1 round, no report file
    python3 benchmarks/fanout.py                    # full run; writes docs/benchmarks.md

Needs root (the fleet switches to the ndbench user), /usr/sbin/sshd, and the
bench extras: ``pip install ansible-core pyinfra fabric``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

PY = sys.executable
BIN = Path(sys.executable).parent
DEFAULT_REPORT = REPO / "docs" / "benchmarks.md"
SCENARIOS = ("single", "steps", "facts")

# The 10-step sequence: small, different, all exit 0; the last one's output proves the sequence finished.
STEP_COMMANDS = [
    "true", "echo 2", "test -d /tmp", "uname -r", "hostname",
    "id -u", "pwd", "ls /", "date +%s", "echo step10",
]

# pyinfra facts mirroring what ndctl's helper collects (hostname, arch, kernel, OS, CPUs, memory,
# disks/mounts, user, docker). One SSH command per fact and host.
PYINFRA_FACTS = [
    "server.Hostname", "server.Arch", "server.Kernel", "server.KernelVersion", "server.LinuxDistribution",
    "hardware.Cpus", "hardware.Memory", "server.Mounts", "server.User", "server.Which", "command=docker",
]

ANSIBLE_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"  # ansible-core's own default

# ----- scripts the benchmark runs as child processes ---------------------------------------------

NDCTL_API_PY = '''\
"""ndctl through its Python API: steps over one connection per host, or facts."""
import json, sys
from ndctl import Fleet

mode, inventory = sys.argv[1], sys.argv[2]
fleet = Fleet(inventory)
if mode == "steps":
    r = fleet.steps(json.loads(sys.argv[3]))
    complete = sum(1 for x in r if x.ok and x.stdout.rstrip().endswith("step10"))
else:
    r = fleet.facts()
    complete = sum(1 for x in r if x.ok and x.value is not None and x.value.raw.get("hostname"))
errors = ["%s: %s %s" % (x.host, x.status.value, (x.error or x.stderr.strip())[:300]) for x in r if not x.ok][:5]
print(json.dumps({"n": len(r), "counts": r.counts(), "complete": complete, "errors": errors}))
sys.exit(0 if r.ok else 1)
'''

FABRIC_PY = '''\
"""Fabric: ThreadingGroup(...).run(command) on every host; host keys checked against the fleet's."""
import json, sys
import paramiko
from fabric import ThreadingGroup
from fabric.exceptions import GroupException

cfg = json.load(open(sys.argv[1]))
group = ThreadingGroup(*["%s@%s:%d" % (cfg["user"], a, p) for a, p in cfg["hosts"]],
                       connect_kwargs={"key_filename": cfg["identity"], "look_for_keys": False,
                                       "allow_agent": False})
for c in group:
    c.client.load_host_keys(cfg["known_hosts"])
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    results = group.run(sys.argv[2], hide=True, warn=True)
except GroupException as e:
    results = e.result
ok = sum(1 for r in results.values() if not isinstance(r, BaseException) and r.ok)
bad = sorted({repr(r)[:200] for r in results.values() if isinstance(r, BaseException)})
print("ok %d/%d" % (ok, len(results)), *bad)
sys.exit(0 if ok == len(cfg["hosts"]) else 1)
'''

PYINFRA_DEPLOY_PY = "from pyinfra.operations import server\n\n" + "".join(
    f"server.shell(name={f'step {i}: {c}'!r}, commands=[{c!r}])\n" for i, c in enumerate(STEP_COMMANDS, 1))

ANSIBLE_PLAYBOOK = "- hosts: all\n  gather_facts: false\n  tasks:\n" + "".join(
    f"    - name: step {i}\n      command: {json.dumps(c)}\n" for i, c in enumerate(STEP_COMMANDS, 1))


# ----- the workspace: one fleet, generated inventories per size ------------------------------------

class Workspace:
    def __init__(self, fleet, root: Path, sizes: list[int], timeout: float,
                 account: C.CpuAccount | None = None) -> None:
        self.fleet = fleet
        self.account = account
        self.root = root
        self.timeout = timeout
        self.hosts = fleet.hosts
        self.listeners = set(fleet.pids)
        self._run_no = 0
        self.ndctl_bin = "python -m ndctl"
        # ndctl runs from this tree: byte-compile it as `pip install` does the other tools (with
        # PYTHONDONTWRITEBYTECODE set, as on the machines this runs on, every run would compile it)
        subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "ndctl")], capture_output=True, check=False)
        (root / "scripts").mkdir()
        (root / "logs").mkdir()
        (root / "cp").mkdir()
        (root / "scripts" / "ndctl_api.py").write_text(NDCTL_API_PY)
        (root / "scripts" / "fabric_run.py").write_text(FABRIC_PY)
        (root / "pyinfra").mkdir()
        (root / "pyinfra" / "deploy.py").write_text(PYINFRA_DEPLOY_PY)
        (root / "ansible").mkdir()
        (root / "ansible" / "steps.yml").write_text(ANSIBLE_PLAYBOOK)
        self.ansible_cfg = root / "ansible" / "ansible.cfg"
        self.ansible_cfg.write_text(self.ansible_cfg_text())
        for n in sizes:
            self._write_size(n)

    # ssh-level settings every tool gets: the fleet's key, its host keys, checked strictly
    def ansible_cfg_text(self) -> str:
        kh = self.fleet.known_hosts
        return textwrap.dedent(f"""\
            [defaults]
            host_key_checking = True
            interpreter_python = /usr/bin/python3
            retry_files_enabled = False
            [ssh_connection]
            ssh_args = {ANSIBLE_SSH_ARGS} -o UserKnownHostsFile={kh} -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes
            pipelining = True
            """)

    def _write_size(self, n: int) -> None:
        hosts = self.hosts[:n]
        ident, kh, user = str(self.fleet.identity), str(self.fleet.known_hosts), self.fleet.hosts[0].user
        # ndctl: inventory + its known_hosts beside it (pinned keys), forks = n
        d = self.root / f"ndctl-{n}"
        d.mkdir()
        lines = ["version: 1", "settings:", f"  forks: {n}", "hosts:"]
        for h in hosts:
            lines += [f"  {h.name}:", f"    address: {h.address}", f"    port: {h.port}", f"    user: {h.user}",
                      f"    identity: {h.identity}", "    tags: [bench]", f"    host_key: {h.host_key}"]
        (d / "inventory.yaml").write_text("\n".join(lines) + "\n")
        (d / "known_hosts").write_text("".join(h.known_hosts_line() + "\n" for h in hosts))
        # ansible
        ini = [f"{h.name} ansible_host={h.address} ansible_port={h.port}" for h in hosts]
        ini += ["", "[all:vars]", f"ansible_user={user}", f"ansible_ssh_private_key_file={ident}"]
        (self.root / "ansible" / f"hosts-{n}.ini").write_text("\n".join(ini) + "\n")
        # pyinfra
        data = {"ssh_user": user, "ssh_key": ident, "ssh_known_hosts_file": kh, "ssh_strict_host_key_checking": "yes"}
        py = ["hosts = ["] + [f"    ({h.address!r}, {{**DATA, 'ssh_port': {h.port}}})," for h in hosts] + ["]"]
        (self.root / "pyinfra" / f"inventory_{n}.py").write_text(f"DATA = {data!r}\n" + "\n".join(py) + "\n")
        # bare asyncssh + fabric
        (self.root / f"hosts-{n}.json").write_text(json.dumps({
            "user": user, "identity": ident, "known_hosts": kh,
            "hosts": [[h.address, h.port] for h in hosts]}))
        # xargs + ssh: host aliases of the fleet's ssh_config
        (self.root / f"names-{n}.txt").write_text("".join(h.name + "\n" for h in hosts))

    # -- paths --
    def ndctl_inventory(self, n: int) -> Path:
        return self.root / f"ndctl-{n}" / "inventory.yaml"

    def py_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NDCTL_", "ANSIBLE_", "PYINFRA_"))}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(extra)
        return env

    def plain_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NDCTL_", "ANSIBLE_", "PYINFRA_"))}
        env.update(extra)
        return env

    def ansible_env(self) -> dict[str, str]:
        # a fresh ControlPath dir per run: every run starts with no SSH master, like every other tool
        self._run_no += 1
        cp = self.root / "cp" / str(self._run_no)
        cp.mkdir()
        return self.plain_env(ANSIBLE_CONFIG=str(self.ansible_cfg), ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp),
                              ANSIBLE_NOCOLOR="1")


# ----- tools -----------------------------------------------------------------------------------------

@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    stdin: str | None = None
    daemon_marker: str | None = None  # in the command line of daemons it leaves (ssh masters)


@dataclass
class Tool:
    key: str
    label: str
    build: Callable[[Workspace, int], Invocation]
    verify: Callable[[C.RunRecord, int], str | None]  # None: every host ran fine; else why not


def _tail(text: str, n: int = 600) -> str:
    text = text.strip()
    return ("..." + text[-n:]) if len(text) > n else text


def _json_doc(text: str) -> object:
    i = text.find("{")
    if i < 0:
        raise ValueError("no JSON object in output")
    return json.JSONDecoder().raw_decode(text[i:])[0]


def _count_hosts(pattern: str, text: str) -> int:
    return len(set(re.findall(pattern, text, flags=re.M)))


def _rc(rec: C.RunRecord) -> str | None:
    if rec.timed_out:
        return "timed out"
    if rec.returncode != 0:
        return f"exit status {rec.returncode}"
    return None


def v_ndctl_exec(rec: C.RunRecord, n: int) -> str | None:
    try:
        doc = _json_doc(rec.stdout)
        ok = doc["summary"]["ok"]
        hosts = len(doc["hosts"])
    except (ValueError, KeyError, TypeError) as e:
        return (_rc(rec) or "unparsable output") + f" ({e}): " + _tail(rec.stderr or rec.stdout)
    if _rc(rec) or ok != n or hosts != n:
        bad = [f"{h['host']}: {h['status']} {h.get('error') or h.get('stderr', '')}"[:200]
               for h in doc["hosts"] if h.get("status") != "ok"][:3]
        return f"{_rc(rec) or 'incomplete'}: {ok}/{n} ok, {hosts} results; " + "; ".join(bad)
    return None


def v_ndctl_api(rec: C.RunRecord, n: int) -> str | None:
    try:
        doc = _json_doc(rec.stdout)
    except ValueError:
        return (_rc(rec) or "unparsable output") + ": " + _tail(rec.stderr or rec.stdout)
    if _rc(rec) or doc.get("complete") != n or doc.get("n") != n:
        return f"{_rc(rec) or 'incomplete'}: {doc.get('complete')}/{n} complete, {doc.get('counts')}; " + \
            "; ".join(doc.get("errors", []))
    return None


def v_ok_line(rec: C.RunRecord, n: int) -> str | None:
    m = re.search(r"^ok (\d+)/(\d+)", rec.stdout, flags=re.M)
    if _rc(rec) or not m or int(m.group(1)) != n or int(m.group(2)) != n:
        return f"{_rc(rec) or 'incomplete'}: " + _tail(rec.stdout + rec.stderr)
    return None


def v_ansible_adhoc(rec: C.RunRecord, n: int) -> str | None:
    got = _count_hosts(r"^(\S+) \| CHANGED \| rc=0 >>", rec.stdout)
    if _rc(rec) or got != n:
        return f"{_rc(rec) or 'incomplete'}: {got}/{n} hosts CHANGED rc=0; " + _tail(rec.stderr or rec.stdout)
    return None


def v_ansible_setup(rec: C.RunRecord, n: int) -> str | None:
    got = _count_hosts(r"^(\S+) \| SUCCESS => \{", rec.stdout)
    if _rc(rec) or got != n:
        return f"{_rc(rec) or 'incomplete'}: {got}/{n} hosts SUCCESS; " + _tail(rec.stderr or rec.stdout[-2000:])
    return None


def v_ansible_playbook(rec: C.RunRecord, n: int) -> str | None:
    rows = re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", rec.stdout, flags=re.M)
    good = {h for h, ok, unr, failed in rows if int(ok) == len(STEP_COMMANDS) and unr == "0" and failed == "0"}
    if _rc(rec) or len(good) != n:
        return f"{_rc(rec) or 'incomplete'}: {len(good)}/{n} hosts ok={len(STEP_COMMANDS)}; " + _tail(rec.stdout)
    return None


def _pyinfra_success(rec: C.RunRecord) -> dict[str, int]:
    counts: dict[str, int] = {}
    for h in re.findall(r"^\s*\[(\S+)\]\s+Success", rec.stderr + "\n" + rec.stdout, flags=re.M):
        counts[h] = counts.get(h, 0) + 1
    return counts


def v_pyinfra_exec(rec: C.RunRecord, n: int) -> str | None:
    got = len(_pyinfra_success(rec))
    if _rc(rec) or got != n:
        return f"{_rc(rec) or 'incomplete'}: {got}/{n} hosts Success; " + _tail(rec.stderr)
    return None


def v_pyinfra_deploy(rec: C.RunRecord, n: int) -> str | None:
    counts = _pyinfra_success(rec)
    full = sum(1 for c in counts.values() if c == len(STEP_COMMANDS))
    if _rc(rec) or full != n:
        return f"{_rc(rec) or 'incomplete'}: {full}/{n} hosts with {len(STEP_COMMANDS)} Success; " + _tail(rec.stderr)
    return None


def v_pyinfra_facts(rec: C.RunRecord, n: int) -> str | None:
    try:
        doc = json.loads(rec.stdout)
        per_fact = {k: sum(1 for v in d.values() if v not in (None, "", [], {})) for k, d in doc.items()}
    except (ValueError, AttributeError) as e:
        return (_rc(rec) or "unparsable output") + f" ({e}): " + _tail(rec.stderr)
    expected = [f for f in PYINFRA_FACTS if "=" not in f]
    missing = [f for f in expected if not any(k.startswith(f) for k in per_fact)]
    short = {k: c for k, c in per_fact.items() if c != n}
    if _rc(rec) or missing or short:
        return f"{_rc(rec) or 'incomplete'}: missing facts {missing}, facts not on all {n} hosts {short}; " + \
            _tail(rec.stderr)
    return None


def v_xargs(rec: C.RunRecord, n: int) -> str | None:
    started = len(re.findall(r"^ssh ", rec.stderr, flags=re.M))  # xargs -t echoes each command it starts
    if _rc(rec) or started != n:
        return f"{_rc(rec) or 'incomplete'}: {started}/{n} ssh started; " + _tail(rec.stderr)
    return None


def tool_bin(name: str) -> str:
    return C.which_in(BIN, name) or name


def make_tools() -> dict[str, list[Tool]]:
    def ndctl_exec(ws: Workspace, n: int) -> Invocation:
        return Invocation([PY, "-m", "ndctl", "exec", "-o", "json", "--", "true"],
                          ws.py_env(NDCTL_INVENTORY=str(ws.ndctl_inventory(n))), ws.root)

    def ndctl_api(mode: str) -> Callable[[Workspace, int], Invocation]:
        def build(ws: Workspace, n: int) -> Invocation:
            argv = [PY, str(ws.root / "scripts" / "ndctl_api.py"), mode, str(ws.ndctl_inventory(n))]
            if mode == "steps":
                argv.append(json.dumps(STEP_COMMANDS))
            return Invocation(argv, ws.py_env(), ws.root)
        return build

    def bare(*cmds: str) -> Callable[[Workspace, int], Invocation]:
        return lambda ws, n: Invocation([PY, str(HERE / "bare_asyncssh.py"), str(ws.root / f"hosts-{n}.json"), *cmds],
                                        ws.plain_env(), ws.root)

    def ansible_adhoc(module: str, arg: str | None) -> Callable[[Workspace, int], Invocation]:
        def build(ws: Workspace, n: int) -> Invocation:
            argv = [tool_bin("ansible"), "all", "-i", str(ws.root / "ansible" / f"hosts-{n}.ini"), "-f", str(n),
                    "-m", module] + (["-a", arg] if arg is not None else [])
            env = ws.ansible_env()
            return Invocation(argv, env, ws.root / "ansible", daemon_marker=env["ANSIBLE_SSH_CONTROL_PATH_DIR"] + "/")
        return build

    def ansible_playbook(ws: Workspace, n: int) -> Invocation:
        env = ws.ansible_env()
        return Invocation([tool_bin("ansible-playbook"), "-i", str(ws.root / "ansible" / f"hosts-{n}.ini"),
                           "-f", str(n), "steps.yml"], env, ws.root / "ansible",
                          daemon_marker=env["ANSIBLE_SSH_CONTROL_PATH_DIR"] + "/")

    def pyinfra(*ops: str, json_out: bool = False) -> Callable[[Workspace, int], Invocation]:
        def build(ws: Workspace, n: int) -> Invocation:
            argv = [tool_bin("pyinfra"), "-y", "--parallel", str(n)] + (["--json"] if json_out else []) + \
                [f"inventory_{n}.py", *ops]
            return Invocation(argv, ws.plain_env(), ws.root / "pyinfra")
        return build

    def fabric(ws: Workspace, n: int) -> Invocation:
        return Invocation([PY, str(ws.root / "scripts" / "fabric_run.py"), str(ws.root / f"hosts-{n}.json"), "true"],
                          ws.plain_env(), ws.root)

    def xargs_ssh(ws: Workspace, n: int) -> Invocation:
        return Invocation(["xargs", "-t", "-P", str(n), "-I{}", "ssh", "-F", str(ws.fleet.ssh_config), "{}", "true"],
                          ws.plain_env(), ws.root, stdin=(ws.root / f"names-{n}.txt").read_text())

    return {
        "single": [
            Tool("ndctl", "ndctl exec", ndctl_exec, v_ndctl_exec),
            Tool("bare", "bare asyncssh (floor)", bare("true"), v_ok_line),
            Tool("ansible-command", "ansible -m command", ansible_adhoc("command", "true"), v_ansible_adhoc),
            Tool("ansible-raw", "ansible -m raw", ansible_adhoc("raw", "true"), v_ansible_adhoc),
            Tool("pyinfra", "pyinfra exec", pyinfra("exec", "--", "true"), v_pyinfra_exec),
            Tool("fabric", "Fabric ThreadingGroup", fabric, v_ok_line),
            Tool("xargs-ssh", "xargs -P N ssh", xargs_ssh, v_xargs),
        ],
        "steps": [
            Tool("ndctl", "ndctl Fleet.steps (API)", ndctl_api("steps"), v_ndctl_api),
            Tool("bare", "bare asyncssh (floor)", bare(*STEP_COMMANDS), v_ok_line),
            Tool("ansible", "ansible-playbook (10 tasks)", ansible_playbook, v_ansible_playbook),
            Tool("pyinfra", "pyinfra deploy (10 ops)", pyinfra("deploy.py"), v_pyinfra_deploy),
        ],
        "facts": [
            Tool("ndctl", "ndctl Fleet.facts (API)", ndctl_api("facts"), v_ndctl_api),
            Tool("ansible-setup", "ansible -m setup", ansible_adhoc("setup", None), v_ansible_setup),
            Tool("pyinfra", f"pyinfra fact ({len([f for f in PYINFRA_FACTS if '=' not in f])} facts)",
                 pyinfra("fact", *PYINFRA_FACTS, json_out=True), v_pyinfra_facts),
        ],
    }


SCENARIO_TITLES = {
    "single": "Single command (`true`) on every host",
    "steps": f"{len(STEP_COMMANDS)}-step sequence per host",
    "facts": "Facts",
}

# (scenario, size, slower tool, faster tool, threshold, description)
# "within": ndctl / floor <= threshold;  "faster": other / ndctl >= threshold
TARGETS = [
    ("single", 100, "ndctl", "bare", "within", 1.3, "single command, 100 hosts: ndctl within 1.3x of bare asyncssh"),
    ("single", 100, "ansible-command", "ndctl", "faster", 4.0,
     "single command, 100 hosts: ndctl >= 4x faster than Ansible -m command"),
    ("single", 100, "pyinfra", "ndctl", "faster", 1.3, "single command, 100 hosts: ndctl >= 1.3x faster than pyinfra"),
    ("steps", 50, "ansible", "ndctl", "faster", 10.0, "10 steps, 50 hosts: ndctl >= 10x faster than Ansible playbook"),
    ("steps", 50, "pyinfra", "ndctl", "faster", 2.0, "10 steps, 50 hosts: ndctl >= 2x faster than pyinfra"),
    ("facts", 100, "ansible-setup", "ndctl", "faster", 4.0, "facts, 100 hosts: ndctl >= 4x faster than Ansible setup"),
]


# ----- measurement -----------------------------------------------------------------------------------

@dataclass
class Sample:
    wall: float
    cpu: float
    error: str | None
    leftovers: int = 0
    srv: float | None = None


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.error]

    @property
    def ok(self) -> bool:
        return bool(self.samples) and not self.failed

    @property
    def wall(self) -> float | None:
        return C.median([s.wall for s in self.samples]) if self.ok else None

    @property
    def cpu(self) -> float | None:
        return C.median([s.cpu for s in self.samples]) if self.ok else None

    @property
    def srv(self) -> float | None:
        vals = [s.srv for s in self.samples if s.srv is not None]
        return C.median(vals) if self.ok and vals else None


class Bench:
    def __init__(self, ws: Workspace, tools: dict[str, list[Tool]], verbose: bool) -> None:
        self.ws = ws
        self.tools = tools
        self.verbose = verbose
        self.cells: dict[tuple[str, str, int], Cell] = {}
        self.warmups: dict[tuple[str, str], Sample] = {}
        self.notes: list[str] = []

    def run_once(self, scenario: str, tool: Tool, n: int, tag: str) -> Sample:
        inv = tool.build(self.ws, n)
        prefix = self.ws.root / "logs" / re.sub(r"[^\w.-]+", "_", f"{scenario}-{tool.key}-{n}-{tag}")
        rec = C.run_measured(inv.argv, cwd=inv.cwd, env=inv.env, log_prefix=prefix, timeout=self.ws.timeout,
                             daemon_marker=inv.daemon_marker, stdin_text=inv.stdin,
                             server_pids=self.ws.listeners, server_account=self.ws.account)
        error = tool.verify(rec, n)
        if inv.daemon_marker and len(rec.leftovers) != n and not error:
            self.notes.append(f"{scenario}/{tool.label}/{n} hosts: {len(rec.leftovers)} ssh masters left "
                              f"after the run (expected one per host)")
        s = Sample(rec.wall, rec.cpu, error, len(rec.leftovers), rec.server_cpu)
        status = "ok" if not error else f"FAILED: {error}"
        print(f"  [{scenario} n={n} {tag}] {tool.label:<30} wall {rec.wall:7.2f} s  cpu {rec.cpu:6.2f} s  "
              f"server cpu {C.fmt_s(rec.server_cpu):>6} s  {status}",
              file=sys.stderr, flush=True)
        if error and self.verbose:
            print(f"    argv: {shlex.join(inv.argv)}\n    logs: {prefix}.out/.err", file=sys.stderr)
        return s

    def run(self, scenarios: list[str], sizes: dict[str, list[int]], rounds: int, warmup: bool) -> None:
        for scenario in scenarios:
            tools = self.tools[scenario]
            if not sizes[scenario]:
                continue
            print(f"== {SCENARIO_TITLES[scenario]} (sizes {sizes[scenario]}, {rounds} round(s))", file=sys.stderr)
            if warmup:
                # one untimed run per tool (caches: .pyc, page cache, ndctl's helper upload, ~/.ansible)
                for tool in tools:
                    self.warmups[(scenario, tool.key)] = self.run_once(scenario, tool, sizes[scenario][0], "warm-up")
            for n in sizes[scenario]:
                for r in range(rounds):
                    # rotate the order every round so slow drift in background load hits every tool alike
                    order = tools[r % len(tools):] + tools[:r % len(tools)]
                    for tool in order:
                        s = self.run_once(scenario, tool, n, f"round {r + 1}/{rounds}")
                        self.cells.setdefault((scenario, tool.key, n), Cell()).samples.append(s)


# ----- reporting -------------------------------------------------------------------------------------

def cell_text(cell: Cell | None, what: str = "wall") -> str:
    if cell is None:
        return "-"
    if not cell.ok:
        return f"FAILED ({len(cell.failed)}/{len(cell.samples)})"
    return C.fmt_s({"wall": cell.wall, "cpu": cell.cpu, "srv": cell.srv}[what])


def evaluate_targets(bench: Bench) -> list[dict[str, str]]:
    rows = []
    for scenario, n, a, b, kind, thr, desc in TARGETS:
        ca, cb = bench.cells.get((scenario, a, n)), bench.cells.get((scenario, b, n))
        row = {"target": desc, "ratio": "-", "verdict": "", "floor": "-"}
        # what the transport floor itself achieves against the same competitor: how much room there is
        floor = bench.cells.get((scenario, "bare", n))
        if kind == "faster" and floor is not None and floor.ok and ca is not None and ca.ok:
            row["floor"] = f"{ca.wall / floor.wall:.2f}x faster"
        if ca is None or cb is None:
            row["verdict"] = f"not measured ({n} hosts not run)"
        elif not bench.cells.get((scenario, "ndctl", n), Cell()).ok:
            row["verdict"] = "NOT met (ndctl FAILED)"
        elif not ca.ok or not cb.ok:
            other = a if not ca.ok else b
            row["verdict"] = f"cannot evaluate ({other} FAILED)"
        else:
            ratio = ca.wall / cb.wall
            if kind == "within":
                row["ratio"] = f"ndctl/floor = {ratio:.2f}x"
                met = ratio <= thr
            else:
                row["ratio"] = f"{ratio:.2f}x faster"
                met = ratio >= thr
            row["verdict"] = "met" if met else "NOT met"
        rows.append(row)
    return rows


def print_tables(bench: Bench, scenarios: list[str], sizes: dict[str, list[int]]) -> None:
    for scenario in scenarios:
        ns = sizes[scenario]
        if not ns:
            continue
        print(f"\n{SCENARIO_TITLES[scenario]}: median wall s / client CPU s / server CPU s")
        head = f"{'tool':<32}" + "".join(f"{f'{n} hosts':>26}" for n in ns)
        print(head)
        print("-" * len(head))
        for tool in bench.tools[scenario]:
            line = f"{tool.label:<32}"
            for n in ns:
                cell = bench.cells.get((scenario, tool.key, n))
                txt = cell_text(cell) if cell is None or not cell.ok else \
                    f"{cell_text(cell)} / {cell_text(cell, 'cpu')} / {cell_text(cell, 'srv')}"
                line += f"{txt:>26}"
            print(line)
    rows = evaluate_targets(bench)
    print("\nTargets (wall-time medians; last column: the bare asyncssh floor against the same tool):")
    for r in rows:
        print(f"  {r['verdict']:<34} {r['ratio']:<22} {r['target']:<72} {r['floor']}")


def versions(ws: Workspace | None) -> dict[str, str]:
    import importlib
    sys.path.insert(0, str(REPO))
    try:
        nd = importlib.import_module("ndctl").__version__
    except Exception as e:  # noqa: BLE001
        nd = f"unknown ({e})"
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    where = rev.stdout.strip() if rev.returncode == 0 else "no commit yet"
    if dirty.stdout.strip():
        where += ", uncommitted changes"
    return {
        "ndctl": f"{nd} (working tree {REPO}, {where}, byte-compiled first); run as `{Path(PY).name} -m ndctl` / the Python API",
        "asyncssh": C.dist_version("asyncssh"),
        "ansible-core": C.first_line_of([tool_bin("ansible"), "--version"]),
        "pyinfra": C.first_line_of([tool_bin("pyinfra"), "--version"]),
        "fabric / invoke / paramiko": " / ".join(C.dist_version(p) for p in ("fabric", "invoke", "paramiko")),
        "OpenSSH (client and sshd)": C.first_line_of(["ssh", "-V"]),
        "xargs": C.first_line_of(["xargs", "--version"]),
    }


def write_report(path: Path, bench: Bench, args: argparse.Namespace, scenarios: list[str],
                 sizes: dict[str, list[int]], machine: dict[str, str], vers: dict[str, str], started: str,
                 elapsed: float, fleet_start: float) -> None:
    L: list[str] = []
    L += ["# Fan-out benchmarks", "",
          f"Generated by `{shlex.join(['python3', 'benchmarks/' + Path(__file__).name, *args.argv])}` on {started} "
          f"({elapsed / 60:.1f} min, {args.rounds} timed round(s) per cell, median shown"
          f"{', after one untimed warm-up run per tool' if not args.no_warmup else ''}). "
          "See `benchmarks/README.md` for the method. Re-run it to refresh this page.", ""]
    L += ["Every number is a median over the timed rounds: the **wall time in seconds** of a fresh client process "
          "(so it includes interpreter start-up), the **client CPU time** (user+sys of that process and every process "
          "it started, ssh ControlPersist masters included) and, for context, the **server CPU time** (every sshd "
          "connection process, shell and remote command on the fleet's side). Every run was checked for exit status "
          "0 and for every host having run every step; a tool with a failed run shows FAILED (failed runs / runs), "
          "never a time.", "",
          "**Read the wall times with the server CPU beside them:** the fleet's 100 \"hosts\" are sshd processes on "
          "this same 2-CPU machine, so whatever a tool makes the hosts do (Ansible starts a Python interpreter on "
          "the host for every module run) competes with the client for the same two cores and lands in the wall "
          "time. On real machines that remote work runs in parallel on each host; a tool with a large server CPU "
          "column is penalised here more than it would be on a real fleet. The targets below are judged on wall "
          "time as measured.", ""]
    L += ["## Targets", "",
          "| target | ndctl, measured (wall, median) | verdict | bare asyncssh floor against the same tool |",
          "|---|---|---|---|"]
    for r in evaluate_targets(bench):
        v = r["verdict"]
        L.append(f"| {r['target']} | {r['ratio']} | {'**' + v + '**' if v.startswith('NOT') else v} | {r['floor']} |")
    L += ["", "The last column is what `bare_asyncssh.py` (no inventory, no CLI, nothing but connect and run) "
          "achieves against the same tool in the same run. Where the floor itself falls short of a target, that "
          "target is out of reach on this machine for any client doing the same server-side work (sshd, shell, "
          "command: the server CPU column), which shares the client's two cores.", ""]
    for scenario in scenarios:
        ns = sizes[scenario]
        if not ns:
            continue
        L += [f"## {SCENARIO_TITLES[scenario]}", ""]
        L.append(SCENARIO_NOTES[scenario])
        L.append("")
        head = "| tool | " + " | ".join(f"{n} hosts: **wall** s | client CPU s | server CPU s" for n in ns) + \
            f" | wall vs ndctl ({ns[-1]} hosts) |"
        L += [head, "|---|" + "---:|---:|---:|" * len(ns) + "---:|"]
        nd = bench.cells.get((scenario, "ndctl", ns[-1]))
        for tool in bench.tools[scenario]:
            row = f"| {tool.label} |"
            for n in ns:
                c = bench.cells.get((scenario, tool.key, n))
                if c is not None and c.ok:
                    row += f" **{cell_text(c)}** | {cell_text(c, 'cpu')} | {cell_text(c, 'srv')} |"
                else:
                    row += f" {cell_text(c)} | | |"
            c = bench.cells.get((scenario, tool.key, ns[-1]))
            if tool.key == "ndctl":
                rel = "1.00x"
            elif nd is not None and nd.ok and c is not None and c.ok:
                rel = f"{c.wall / nd.wall:.2f}x" + (" (slower)" if c.wall > nd.wall else " (faster)")
            else:
                rel = "-"
            row += f" {rel} |"
            L.append(row)
        L.append("")
    # failures, in full
    fails = [(k, c) for k, c in bench.cells.items() if c.failed]
    wfails = [(k, s) for k, s in bench.warmups.items() if s.error]
    if fails or wfails or bench.notes:
        L += ["## Failures and oddities", ""]
        for (scenario, key, n), c in sorted(fails):
            L.append(f"- **{scenario} / {key} / {n} hosts**: {len(c.failed)}/{len(c.samples)} runs failed; first: "
                     f"`{_md_code(c.failed[0].error or '')}`")
        for (scenario, key), s in sorted(wfails):
            L.append(f"- warm-up of {scenario} / {key} failed: `{_md_code(s.error or '')}`")
        for note in bench.notes:
            L.append(f"- {note}")
        L.append("")
    L += ["## Machine", "", "| | |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in machine.items()]
    la = os.getloadavg()
    L += [f"| Load average at end (1/5/15 min; includes the benchmark's own processes) | "
          f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f} |",
          f"| Fleet | {max(max(v) for v in sizes.values() if v)} plain sshd processes on 127.0.0.2.. "
          f"(ndctl.sandbox.fleet), user `ndbench` with empty shell start-up files; started in {fleet_start:.1f} s |",
          "", "Client and \"hosts\" share the same 2 CPUs here (see the server CPU column). Other work on the "
          "machine during the run (other test suites) shows up as noise: see the load averages and the individual "
          "runs at the end.", ""]
    L += ["## Versions", "", "| tool | version |", "|---|---|"]
    L += [f"| {k} | {_md_code(v).replace('|', '/')} |" for k, v in vers.items()]
    L += ["", "## How each tool was run", "", CONFIG_NOTES, ""]
    L += ["<details><summary>Every timed run (wall s / client CPU s / server CPU s)</summary>", "",
          "| scenario | tool | hosts | runs |", "|---|---|---:|---|"]
    for (scenario, key, n), c in sorted(bench.cells.items(), key=lambda kv: (SCENARIOS.index(kv[0][0]), kv[0][2], kv[0][1])):
        runs = ", ".join(f"{s.wall:.2f}/{s.cpu:.2f}/{C.fmt_s(s.srv)}" + (" FAILED" if s.error else "") for s in c.samples)
        L.append(f"| {scenario} | {key} | {n} | {runs} |")
    L += ["", "</details>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)


def _md_code(s: str) -> str:
    return s.replace("`", "'").replace("\n", " ").replace("|", "/")[:700]


SCENARIO_NOTES = {
    "single": ("`ndctl exec -o json -- true` (the real CLI; `-o json` so the benchmark can check every host's result), "
               "`ansible all -m command -a true` and `-m raw -a true`, `pyinfra INVENTORY exec -- true`, Fabric "
               "`ThreadingGroup(...).run('true')` in a script, `xargs -P N ssh HOST true` (one OpenSSH client per "
               "host), and `benchmarks/bare_asyncssh.py` (asyncio.gather over asyncssh connections: the transport "
               "floor)."),
    "steps": ("Commands, in order, per host: " + ", ".join(f"`{c}`" for c in STEP_COMMANDS) + ". ndctl: "
              "`Fleet(inventory).steps([...])` (one connection per host) in a script; Ansible: a playbook of 10 "
              "`command` tasks with `gather_facts: false`; pyinfra: a deploy file of 10 `server.shell` operations; "
              "bare asyncssh: the same script as above running the 10 commands over one connection per host."),
    "facts": ("ndctl: `Fleet(inventory).facts()` in a script (ndctl's one-file helper: hostname, arch, CPUs, memory, "
              "disks, GPUs, OS, kernel, Python, user, Docker and containers, in one round trip). Ansible: "
              "`ansible all -m setup` (its full default fact set). pyinfra: `pyinfra --json INVENTORY fact "
              + " ".join(PYINFRA_FACTS) + "` (the closest pyinfra equivalent of ndctl's set; one SSH command "
              "per fact)."),
}

CONFIG_NOTES = f"""\
- Every tool gets the same fleet, the same client key, and checks host keys strictly against the fleet's
  known_hosts (nothing is accepted blindly); parallelism is set to the number of hosts for each
  (`forks: N` in the ndctl inventory, `-f N` for Ansible, `--parallel N` for pyinfra, `xargs -P N`; Fabric's
  ThreadingGroup and bare asyncssh are unbounded).
- Tools run from the interpreter's bin dir ({BIN}) directly, not through pyenv shims.
- ndctl: a generated inventory (`address`, `port`, `user`, `identity`, `tags`, `host_key`) with the host keys pinned in
  `known_hosts` beside it; `NDCTL_INVENTORY` points at it. The fleet's hosts share one filesystem, so ndctl's helper
  is uploaded once (in the warm-up run) and found in place afterwards; on a real fleet the first facts run per host
  pays one extra round trip for the upload.
- Ansible (ansible-core): INI inventory with `ansible_host`/`ansible_port`/`ansible_user`/
  `ansible_ssh_private_key_file`, and an `ansible.cfg` with: `ssh_args = {ANSIBLE_SSH_ARGS} -o UserKnownHostsFile=...
  -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes` (the default ssh_args, i.e. ControlMaster/ControlPersist
  on, plus the fleet's host keys), `pipelining = True` (not the default: Ansible's own speed-up, it saves the
  temp-file round trips), `host_key_checking = True`, `interpreter_python = /usr/bin/python3` (skips interpreter
  discovery: also in Ansible's favour). Each run gets a fresh ControlPath dir and its ssh masters are ended (and their
  CPU counted) after it: every run starts cold, as every other tool's does. Default (linear) strategy and default
  stdout callback.
- pyinfra: an `inventory.py` of `("127.0.0.x", {{"ssh_port", "ssh_user", "ssh_key", "ssh_known_hosts_file",
  "ssh_strict_host_key_checking": "yes"}})`, run with `-y --parallel N`.
- Fabric: `ThreadingGroup("ndbench@127.0.0.x:port", ..., connect_kwargs={{key_filename, look_for_keys=False,
  allow_agent=False}})` with the fleet's known_hosts loaded and paramiko's `RejectPolicy`.
- OpenSSH: `xargs -t -P N -I{{}} ssh -F <fleet ssh_config> {{}} true` (no connection sharing).
- Client CPU is the `RUSAGE_CHILDREN` delta around each run plus the CPU of the ssh masters Ansible leaves running,
  read from `/proc` before they are ended (no child-subreaper: that would count server processes orphaned under
  the fleet's sshds as client CPU). Server CPU: the CPU-time delta of a cgroup (cpuacct) of the benchmark's own
  that holds the fleet's sshd listeners and so everything they start (every connection's sshd, the user's shell
  and the remote command), read once all connections have closed; it is not part of client CPU. Runs never
  overlap: each starts only after the previous run's connections have all closed."""


# ----- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,50,100", help="host counts, comma-separated (default 10,50,100)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per tool and size (default 3)")
    p.add_argument("--only", default=",".join(SCENARIOS), help="scenarios: single,steps,facts (default all)")
    p.add_argument("--steps-max", type=int, default=50,
                   help="largest size for the steps scenario (default 50; Ansible's 10-task play is slow)")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 10, 1 round; no report unless --output")
    p.add_argument("--output", default=None, help=f"report path (default {DEFAULT_REPORT.relative_to(REPO)}; "
                                                  "'-' for none)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run per tool")
    p.add_argument("--timeout", type=float, default=600, help="seconds before one tool run is killed (default 600)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the generated configs and logs")
    p.add_argument("-v", "--verbose", action="store_true", help="print argv and log paths of failed runs")
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.sizes, args.rounds = "10", 1
    try:
        args.size_list = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        p.error("--sizes: comma-separated integers")
    if not args.size_list or min(args.size_list) < 1:
        p.error("--sizes: at least one positive size")
    args.scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad or not args.scenarios:
        p.error(f"--only: choose from {','.join(SCENARIOS)}")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    args.output_path = C.report_path(args.output, args.quick, DEFAULT_REPORT)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(REPO))
    from ndctl.sandbox.fleet import SshdFleet, cleanup_stale_fleets, sshd_fleet_unavailable_reason

    reason = sshd_fleet_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    missing = [t for t in ("ansible", "ansible-playbook", "pyinfra", "xargs", "ssh") if not C.which_in(BIN, t)]
    if missing:
        print(f"missing tools (pip install ansible-core pyinfra fabric): {', '.join(missing)}", file=sys.stderr)
    sizes = {s: list(args.size_list) for s in args.scenarios}
    if "steps" in sizes:
        sizes["steps"] = [n for n in args.size_list if n <= args.steps_max] or [min(args.size_list)]
    order = [s for s in SCENARIOS if s in args.scenarios]

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    cleanup_stale_fleets()
    started, t_start = C.now_utc(), time.monotonic()
    machine = C.machine_details()
    vers = versions(None)
    root = Path(tempfile.mkdtemp(prefix="ndctl-bench-"))
    fleet = None
    account = None
    try:
        n_max = max(args.size_list)
        print(f"starting a fleet of {n_max} sshd hosts ...", file=sys.stderr, flush=True)
        fleet = SshdFleet(n_max)
        print(f"fleet up in {fleet.start_seconds:.1f} s; workdir {root}", file=sys.stderr, flush=True)
        # server-side CPU: a CPU-accounting cgroup of our own holding the fleet's sshds (and all they start)
        account = C.CpuAccount(f"{root.name}-fleet")
        if not account.add(fleet.pids):
            print("no CPU-accounting cgroup: server CPU will show '-'", file=sys.stderr)
            account = None
        ws = Workspace(fleet, root, args.size_list, args.timeout, account)
        bench = Bench(ws, make_tools(), args.verbose)
        bench.run(order, sizes, args.rounds, warmup=not args.no_warmup)
        print_tables(bench, order, sizes)
        if args.output_path is not None:
            write_report(args.output_path, bench, args, order, sizes, machine, vers, started,
                         time.monotonic() - t_start, fleet.start_seconds)
            print(f"\nwrote {args.output_path}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish cleaning up even on a second Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        C.ChildTracker.kill_current()
        C.end_marked(str(root), grace=1.0)  # any ssh master of an interrupted Ansible run
        if fleet is not None:
            fleet.stop()
        if account is not None:
            account.close()
        if args.keep_workdir:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
