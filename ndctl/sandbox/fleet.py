"""A cheap many-hosts fleet: plain ``sshd`` processes on 127.0.0.x of this machine.

Host i listens on ``127.0.0.(i+2):base_port`` (or the next free port), with
its own ed25519 host key, logging in as user ``ndbench`` (empty start-up
files). 100 hosts start in a few seconds. Every started sshd is recorded in a
state file under ``/run/ndctl/sshd-fleets/`` so that a later run can kill the
leftovers of a crashed one (:func:`cleanup_stale_fleets`).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._util import (
    RUN_DIR, SandboxError, atomic_write, cmdline, file_lock, pid_alive, pid_start_time,
    read_ssh_banner, run,
)
from .hosts import TestHost, write_ssh_config

SSHD = "/usr/sbin/sshd"
BENCH_USER = "ndbench"
STATE_DIR = RUN_DIR / "sshd-fleets"
START_TIMEOUT = 60.0

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
UsePAM no
UseDNS no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
MaxStartups {max_startups}
MaxSessions {max_sessions}
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def sshd_fleet_unavailable_reason() -> str | None:
    """Why an :class:`SshdFleet` cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "the sshd fleet needs root (sshd must switch to the ndbench user)"
    if not os.access(SSHD, os.X_OK):
        return f"no {SSHD} (apt-get install openssh-server)"
    for tool in ("ssh-keygen", "useradd"):
        if not shutil.which(tool):
            return f"no {tool} on PATH"
    return None


def ensure_bench_user(user: str = BENCH_USER) -> Path:
    """Create ``user`` (home /home/<user>, bash) if missing; force its start-up files empty.

    The password field is ``*`` (no password but *not* locked): with
    ``UsePAM no`` sshd refuses key logins to locked (``!``) accounts.
    """
    with file_lock(RUN_DIR / "bench-user.lock", timeout=60, what="useradd"):
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            run(["useradd", "--create-home", "--home-dir", f"/home/{user}", "--shell", "/bin/bash",
                 "--password", "*", "--user-group", user])
            pw = pwd.getpwnam(user)
        else:
            shadow = run(["getent", "shadow", user], check=False).stdout.split(":")
            if len(shadow) > 1 and shadow[1].startswith("!"):
                run(["usermod", "--password", "*", user])
        home = Path(pw.pw_dir)
        if not home.is_dir():
            home.mkdir(parents=True, mode=0o755)
            os.chown(home, pw.pw_uid, pw.pw_gid)
        for name in (".bashrc", ".profile", ".bash_profile", ".bash_login", ".bash_logout"):
            f = home / name
            if name in (".bash_login", ".bash_logout"):
                f.unlink(missing_ok=True)
                continue
            if not f.exists() or f.stat().st_size:
                f.write_text("")
                os.chown(f, pw.pw_uid, pw.pw_gid)
        return home


def loopback_address(index: int) -> str:
    """index 0 -> 127.0.0.2, 1 -> 127.0.0.3, ... 252 -> 127.0.0.254, 253 -> 127.0.1.1, ..."""
    per = 254  # .1 .. .254 per /24, skipping 127.0.0.1
    n = index + 1  # skip 127.0.0.1
    third, last = divmod(n, per)
    if third > 255:
        raise SandboxError(f"no loopback address for fleet host #{index}")
    return f"127.0.{third}.{last + 1}"


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        try:
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        except (IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(roots: set[int]) -> set[int]:
    children = _children_map()
    seen: set[int] = set()
    todo = [p for p in roots if pid_alive(p)]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children.get(p, ()))
    return seen


def kill_trees(roots: set[int]) -> None:
    """SIGKILL ``roots`` and all their descendants (connection children, user shells).

    Freezes the trees with SIGSTOP first so nothing forks or escapes (a child
    of a killed listener would be re-parented and lost) before the SIGKILL.
    """
    def send(pids: set[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    stopped: set[int] = set()
    for _ in range(50):
        new = _descendants(roots | stopped) - stopped
        if not new:
            break
        send(new, signal.SIGSTOP)
        stopped |= new
    roots = {p for p in roots if p in stopped}
    children = _children_map()
    direct = {c for r in roots for c in children.get(r, ())} & stopped
    # Children first, then let the listeners reap their direct children (a
    # killed listener's children would be re-parented to PID 1 and linger as
    # zombies until it reaps them; deeper ones, from sessions still open at
    # stop time, do that anyway).
    send(stopped - roots, signal.SIGKILL)
    send(roots, signal.SIGCONT)
    deadline = time.monotonic() + 1.0
    while direct and time.monotonic() < deadline:
        direct = {p for p in direct if os.path.exists(f"/proc/{p}")}
        time.sleep(0.01)
    send(roots, signal.SIGKILL)


class SshdFleet:
    """``n`` plain sshd processes on 127.0.0.2.. (context manager; :meth:`stop` always cleans up).

    ``SshdFleet(n)`` starts them right away (``autostart=False`` to call
    :meth:`start` later). ``hosts`` are :class:`TestHost` with ``container=None``.
    """

    def __init__(
        self,
        n: int,
        base_port: int = 2222,
        *,
        user: str = BENCH_USER,
        name_prefix: str = "fleet-",
        identity: Path | None = None,
        timeout: float = START_TIMEOUT,
        autostart: bool = True,
        max_startups: str = "100:30:200",
        max_sessions: int = 100,
    ) -> None:
        """``max_startups``/``max_sessions``: sshd's limits; pass OpenSSH's defaults
        (``"10:30:100"``, ``10``) to test how a client copes with them."""
        if n < 1:
            raise ValueError("an SshdFleet needs at least one host")
        self.n = n
        self.base_port = base_port
        self.user = user
        self.name_prefix = name_prefix
        self.timeout = timeout
        self.max_startups = max_startups
        self.max_sessions = max_sessions
        self._identity = Path(identity) if identity else None
        self.tmpdir: Path | None = None
        self._procs: list[subprocess.Popen | None] = []
        self._hosts: list[TestHost] = []
        self._ports: list[int] = []
        self._state_file: Path | None = None
        self._started = False
        self._stopped = False
        self.start_seconds: float | None = None  # how long start() took
        if autostart:
            self.start()

    # -- public --------------------------------------------------------------

    @property
    def hosts(self) -> list[TestHost]:
        if not self._started or self._stopped:
            raise SandboxError("SshdFleet is not running (start() it, or use it as a context manager)")
        return list(self._hosts)

    @property
    def identity(self) -> Path:
        assert self._identity is not None
        return self._identity

    @property
    def ssh_config(self) -> Path:
        """An OpenSSH client config with a Host block per fleet host (``ssh -F``)."""
        assert self.tmpdir is not None
        return self.tmpdir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "known_hosts"

    @property
    def pids(self) -> list[int]:
        """Pids of the listening sshd processes."""
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def __enter__(self) -> "SshdFleet":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; stop() is the API
        try:
            if self._started and not self._stopped:
                self.stop()
        except Exception:  # noqa: BLE001
            pass

    def start(self) -> "SshdFleet":
        if self._started:
            return self
        reason = sshd_fleet_unavailable_reason()
        if reason:
            raise SandboxError(reason)
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every sshd this fleet started (and their children), remove the temp dir."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        kill_trees(set(self.pids))
        if self.tmpdir is not None:
            # a connection accepted while the listeners reaped their children
            # runs `sshd ... -f <tmpdir>/...` re-exec'd: sweep those up too
            marker = str(self.tmpdir) + "/"
            strays = {int(e) for e in os.listdir("/proc") if e.isdigit() and marker in cmdline(int(e))}
            if strays:
                kill_trees(strays)
        for p in self._procs:
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self._state_file is not None:
            self._state_file.unlink(missing_ok=True)

    # -- internals -------------------------------------------------------------

    def _start(self) -> None:
        t0 = time.monotonic()
        ensure_bench_user(self.user)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="ndctl-sshd-fleet-"))
        self.tmpdir.chmod(0o755)  # sshd reads authorized_keys as the user
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._state_file = STATE_DIR / f"{self.tmpdir.name}.json"
        self._write_state()

        if self._identity is None:
            self._identity = self.tmpdir / "id_ed25519"
            keygens = [self._keygen(self._identity, f"{self.user}@ndctl-fleet")]
        else:
            keygens = []
        for i in range(self.n):
            d = self.tmpdir / f"h{i}"
            d.mkdir()
            keygens.append(self._keygen(d / "ssh_host_ed25519_key", f"root@{self.name_prefix}{i + 1}"))
        for kg in keygens:
            _, err = kg.communicate()
            if kg.returncode != 0:
                raise SandboxError(f"ssh-keygen failed: {err.decode(errors='replace').strip()}")
        auth = self.tmpdir / "authorized_keys"
        auth.write_text(Path(f"{self._identity}.pub").read_text())
        auth.chmod(0o644)

        self._ports = [self._free_port(loopback_address(i), self.base_port) for i in range(self.n)]
        self._procs = [None] * self.n
        for i in range(self.n):
            self._launch(i)
        self._write_state()
        self._wait_ready(t0)
        host_keys = [
            " ".join((self.tmpdir / f"h{i}" / "ssh_host_ed25519_key.pub").read_text().split()[:2])
            for i in range(self.n)
        ]
        self._hosts = [
            TestHost(name=f"{self.name_prefix}{i + 1}", address=loopback_address(i), port=self._ports[i],
                     user=self.user, identity=self._identity, host_key=host_keys[i], container=None)
            for i in range(self.n)
        ]
        write_ssh_config(self._hosts, self.ssh_config, known_hosts=self.known_hosts)
        self.start_seconds = time.monotonic() - t0

    @staticmethod
    def _keygen(path: Path, comment: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    @staticmethod
    def _free_port(address: str, port: int) -> int:
        for candidate in range(port, port + 200):
            if _port_free(address, candidate):
                return candidate
        raise SandboxError(f"no free port on {address} in {port}..{port + 199}")

    def _launch(self, i: int) -> None:
        assert self.tmpdir is not None
        d = self.tmpdir / f"h{i}"
        cfg = d / "sshd_config"
        (d / "sshd.pid").unlink(missing_ok=True)
        cfg.write_text(SSHD_CONFIG.format(
            address=loopback_address(i), port=self._ports[i], host_key=d / "ssh_host_ed25519_key",
            pid_file=d / "sshd.pid", authorized_keys=self.tmpdir / "authorized_keys", user=self.user,
            max_startups=self.max_startups, max_sessions=self.max_sessions,
        ))
        with open(d / "sshd.log", "wb") as log:
            self._procs[i] = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # no terminal signals; we kill by pid
            )

    def _wait_ready(self, t0: float) -> None:
        assert self.tmpdir is not None
        deadline = t0 + self.timeout
        pending = set(range(self.n))
        restarts = 0

        def probe(i: int) -> bool:
            if not (self.tmpdir / f"h{i}" / "sshd.pid").exists():  # written after listen()
                return False
            return read_ssh_banner(loopback_address(i), self._ports[i], timeout=5) is not None

        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="ndctl-fleet") as pool:
            while pending:
                # restart sshds that died (typically: port taken between check and bind)
                for i in sorted(pending):
                    p = self._procs[i]
                    if p is not None and p.poll() is not None:
                        log = (self.tmpdir / f"h{i}" / "sshd.log").read_text(errors="replace")
                        if "Address already in use" in log and restarts < 3 * self.n:
                            restarts += 1
                            self._ports[i] = self._free_port(loopback_address(i), self._ports[i] + 1)
                            self._launch(i)
                            self._write_state()
                        else:
                            raise SandboxError(
                                f"sshd for {loopback_address(i)}:{self._ports[i]} exited "
                                f"({p.returncode}):\n{log.strip()[-2000:]}")
                ready = [i for i, ok in zip(sorted(pending), pool.map(probe, sorted(pending))) if ok]
                pending.difference_update(ready)
                if not pending:
                    break
                if time.monotonic() > deadline:
                    shown = ", ".join(f"{loopback_address(i)}:{self._ports[i]}" for i in sorted(pending)[:10])
                    raise SandboxError(
                        f"{len(pending)} of {self.n} fleet sshds do not answer after {self.timeout:.0f}s: {shown}")
                time.sleep(0.02)

    def _write_state(self) -> None:
        assert self._state_file is not None and self.tmpdir is not None
        me = os.getpid()
        atomic_write(self._state_file, json.dumps({
            "owner_pid": me,
            "owner_start": pid_start_time(me),
            "tmpdir": str(self.tmpdir),
            "pids": self.pids,
        }))


def cleanup_stale_fleets() -> list[int]:
    """Kill sshds of fleets whose owning process is gone (crashed runs); returns the pids killed.

    Fleets of live processes (another test session running right now) are left alone.
    A recorded pid is only killed if its command line still names the fleet's temp dir.
    """
    killed: list[int] = []
    if not STATE_DIR.is_dir():
        return killed
    for f in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        owner = int(state.get("owner_pid", 0))
        if owner and pid_alive(owner) and pid_start_time(owner) == state.get("owner_start"):
            continue
        tmpdir = state.get("tmpdir", "")
        roots = {int(p) for p in state.get("pids", []) if tmpdir and tmpdir in cmdline(int(p))}
        if roots:
            kill_trees(roots)
            killed += sorted(roots)
        if tmpdir.startswith(tempfile.gettempdir()) and "ndctl-sshd-fleet-" in tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        f.unlink(missing_ok=True)
    return killed


__all__ = [
    "SshdFleet", "cleanup_stale_fleets", "ensure_bench_user", "loopback_address",
    "sshd_fleet_unavailable_reason",
]
