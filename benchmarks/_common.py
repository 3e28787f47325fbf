"""Shared helpers for the benchmarks: timed child processes, statistics, machine details.

Stdlib only, so that importing it costs nothing measurable and it runs wherever
the benchmarks do.

Timing model (:func:`run_measured`): one tool invocation is one child process,
started fresh (so it pays interpreter start-up), with its output going to files.

* wall time: from just before the fork until the child has exited;
* server CPU (informational): the CPU delta of a cgroup holding the fleet's
  sshds (every connection's sshd, shell and remote command); on this
  one-machine fleet it competes with the client for the same cores;
* client CPU: the ``RUSAGE_CHILDREN`` delta (user + sys) around the run, i.e.
  the child and every descendant it waited for; plus the CPU of daemons the
  tool forked off and left running -- OpenSSH ``ControlPersist`` masters
  started by Ansible, which do the SSH crypto for every task -- read from
  /proc just before they are ended after the run.

(Deliberately no child-subreaper here: the fleet's sshds are our children, and
server-side processes orphaned under them would be counted as client CPU.)
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes_marked(marker: str) -> list[int]:
    """Pids (not ours) whose command line contains ``marker`` (a per-run temp path)."""
    me = os.getpid()
    return [int(e.name) for e in os.scandir("/proc")
            if e.name.isdigit() and int(e.name) != me and marker in _cmdline(int(e.name))]


def process_cpu(pid: int) -> float:
    """utime+stime of ``pid`` and its reaped children, from /proc (0 if gone)."""
    f = _stat_fields(pid)
    if not f:
        return 0.0
    # after ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in f[11:15]) / CLK_TCK


def end_marked(marker: str, grace: float = 3.0) -> tuple[list[str], float]:
    """End the daemons a tool left behind (e.g. ssh ControlPersist masters, found by ``marker``).

    Returns their command lines and the CPU time they had used (read just before
    the SIGTERM: an idle master uses nothing after the tool has exited). Only
    processes whose command line names the run's own temp path are touched.
    """
    pids = processes_marked(marker)
    cpu = sum(process_cpu(p) for p in pids)
    cmds = [_cmdline(p) for p in pids]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.02)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return cmds, cpu


def sessions_of(listeners: set[int]) -> list[int]:
    """Live children of the given sshd listeners (per-connection sshd processes)."""
    out = []
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            f = _stat_fields(int(e.name))
            if f and f[0] != b"Z" and int(f[1]) in listeners:
                out.append(int(e.name))
    return out


def settle_sessions(listeners: set[int], timeout: float = 5.0) -> None:
    """Wait until the sshds have no connection left (the server side of the last run is over)."""
    deadline = time.monotonic() + timeout
    while listeners and sessions_of(listeners) and time.monotonic() < deadline:
        time.sleep(0.02)


class CpuAccount:
    """A CPU-accounting cgroup of our own for a process tree (the fleet's sshds and all they start).

    Process-tree counters cannot do this: sshd's per-connection processes do not
    all wait for their children, so a remote command's CPU never reaches the
    listener's counters. A cgroup counts every descendant wherever it is
    re-parented. cgroup v1 ``cpuacct`` (a child of the root group) or cgroup v2;
    :meth:`usage` is None where neither can be created. Only the processes
    :meth:`add`-ed (and their descendants) are moved, and only in the CPU
    accounting hierarchy.
    """

    V1 = Path("/sys/fs/cgroup/cpuacct")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        self.kind = ""
        for kind, base, probe in (("v1", self.V1, "cpuacct.usage"), ("v2", self.V2, "cgroup.controllers")):
            if (base / probe).exists():
                try:
                    (base / name).mkdir()
                except OSError:
                    continue
                self.path, self.kind = base / name, kind
                break

    def add(self, pids: Iterable[int]) -> bool:
        if self.path is None:
            return False
        try:
            for pid in pids:
                (self.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            self.close()
            return False
        return True

    def usage(self) -> float | None:
        """CPU seconds used so far by everything in the group."""
        if self.path is None:
            return None
        try:
            if self.kind == "v1":
                return int((self.path / "cpuacct.usage").read_text()) / 1e9
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            pass
        return None

    def close(self) -> None:
        """Move what is left back to the root group and remove ours (call after the fleet stopped)."""
        if self.path is None:
            return
        path, self.path = self.path, None
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    (path.parent / "cgroup.procs").write_text(pid + "\n")
                except OSError:
                    pass
        except OSError:
            pass
        for _ in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return bool(f) and f[0] != b"Z"


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class RunRecord:
    """One invocation of one tool."""

    argv: list[str]
    returncode: int | None
    wall: float
    cpu: float
    stdout: str
    stderr: str
    timed_out: bool = False
    leftovers: list[str] = field(default_factory=list)
    server_cpu: float | None = None


class ChildTracker:
    """Remembers the one tool process running now, so a Ctrl-C handler can kill its group."""

    current: subprocess.Popen | None = None

    @classmethod
    def kill_current(cls) -> None:
        p = cls.current
        if p is not None and p.returncode is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def run_measured(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_prefix: Path,
    timeout: float,
    daemon_marker: str | None = None,
    stdin_text: str | None = None,
    server_pids: Iterable[int] = (),
    server_account: CpuAccount | None = None,
) -> RunRecord:
    """Run ``argv`` as a fresh child; measure wall and client CPU; capture output to files.

    ``daemon_marker``: a string (a per-run temp path) in the command line of
    daemons the tool may leave behind; they are ended after the run and their
    CPU is added.

    ``server_pids``: the fleet's sshd listeners: runs start and end with none
    of their connections open. ``server_account``: the cgroup holding them; its
    CPU delta (every connection's sshd, shell and remote command) is reported as
    ``server_cpu`` (None when unavailable).
    """
    listeners = set(server_pids)
    settle_sessions(listeners)
    out_path, err_path = Path(f"{log_prefix}.out"), Path(f"{log_prefix}.err")
    in_path = Path(f"{log_prefix}.in")
    if stdin_text is not None:
        in_path.write_text(stdin_text)
    timed_out = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err, \
            (open(in_path, "rb") if stdin_text is not None else open(os.devnull, "rb")) as stdin:
        srv0 = server_account.usage() if server_account else None
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        p = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err,
                             start_new_session=True)  # its own process group: killable as a whole
        ChildTracker.current = p

        def on_timeout() -> None:
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, on_timeout)
        timer.daemon = True
        timer.start()
        try:
            while True:
                try:
                    _, status, _ = os.wait4(p.pid, 0)
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries anyway
                    continue
            wall = time.perf_counter() - t0
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        ChildTracker.current = None
        # whatever the tool left running in its own process group
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cpu = _children_cpu() - cpu0
        leftovers: list[str] = []
        if daemon_marker:
            leftovers, daemon_cpu = end_marked(daemon_marker)
            cpu += daemon_cpu
        settle_sessions(listeners)
        srv1 = server_account.usage() if server_account else None
        srv = srv1 - srv0 if srv0 is not None and srv1 is not None else None
    return RunRecord(
        argv=list(argv), returncode=p.returncode, wall=wall, cpu=cpu,
        stdout=out_path.read_text(errors="replace"), stderr=err_path.read_text(errors="replace"),
        timed_out=timed_out.is_set(), leftovers=leftovers, server_cpu=srv,
    )


# ----- statistics -------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


# ----- machine and tool details --------------------------------------------------

def _first_line(argv: Sequence[str], env: dict[str, str] | None = None, pattern: str | None = None) -> str:
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env,
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (cp.stdout + "\n" + cp.stderr).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and (pattern is None or re.search(pattern, line)):
            return line
    return text.splitlines()[0] if text else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def machine_details() -> dict[str, str]:
    la = os.getloadavg()
    return {
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "Memory": f"{mem_total_gib():.1f} GiB",
        "OS": os_name(),
        "Kernel": platform.release(),
        "Python": f"{platform.python_implementation()} {platform.python_version()} ({os.path.realpath(sys.executable)})",
        "Load average at start (1/5/15 min)": f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}",
    }


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def dist_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return "not installed"


def which_in(bindir: Path, name: str) -> str | None:
    """``name`` in ``bindir`` (the running interpreter's), else on PATH."""
    p = bindir / name
    if p.is_file() and os.access(p, os.X_OK):
        return str(p)
    return shutil.which(name)


def first_line_of(argv: Sequence[str], pattern: str | None = None) -> str:
    return _first_line(argv, pattern=pattern)


__all__ = [
    "ChildTracker", "CpuAccount", "RunRecord", "end_marked", "dist_version", "first_line_of", "fmt_s",
    "machine_details", "median", "now_utc", "processes_marked", "run_measured", "which_in",
]


def report_path(output: str | None, quick: bool, default: Path) -> Path | None:
    """Where a benchmark writes its page: ``--output`` ('-' for none), else the default,
    except for ``--quick`` smoke runs, which never overwrite the real page."""
    if output is None:
        return None if quick else default
    return None if output == "-" else Path(output).resolve()
