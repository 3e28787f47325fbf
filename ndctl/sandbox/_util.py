"""Small shared helpers of ``ndctl.sandbox``: running commands, locks, errors.

Everything here is synchronous and stdlib-only (subprocess + the ``docker``
and ``ssh-keygen`` command-line tools). No asyncssh.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ndctl.core.errors import NdctlError

DOCKER = os.environ.get("NDCTL_DOCKER", "docker")

#: Where sandbox bookkeeping that must not outlive a reboot lives (locks, pid files).
RUN_DIR = Path(os.environ.get("NDCTL_RUN_DIR", "/run/ndctl"))


class SandboxError(NdctlError):
    """A test host / sandbox could not be built, started, reached or stopped."""


class CommandError(SandboxError):
    """A helper command (docker, ssh-keygen, debootstrap...) failed."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        shown = " ".join(str(a) for a in argv)
        if len(shown) > 300:
            shown = shown[:300] + "..."
        detail = (stderr or stdout or "").strip()
        if len(detail) > 4000:
            detail = "..." + detail[-4000:]
        msg = f"command failed (exit {returncode}): {shown}"
        if detail:
            msg += "\n" + detail
        super().__init__(msg)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = 300,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``argv`` capturing stdout/stderr; raise :class:`CommandError` if ``check``."""
    argv = [os.fspath(a) for a in argv]
    if isinstance(input, bytes):
        text = False
    try:
        cp = subprocess.run(
            argv, input=input, capture_output=True, text=text, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise SandboxError(f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"command timed out after {timeout}s: {' '.join(argv)[:300]}") from exc
    if check and cp.returncode != 0:
        out = cp.stdout if isinstance(cp.stdout, str) else (cp.stdout or b"").decode(errors="replace")
        err = cp.stderr if isinstance(cp.stderr, str) else (cp.stderr or b"").decode(errors="replace")
        raise CommandError(argv, cp.returncode, out, err)
    return cp


def docker(*args: str | os.PathLike[str], **kw) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], **kw)


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float | None = None, what: str = "") -> Iterator[None]:
    """Exclusive ``fcntl.flock`` on ``path`` (created if needed).

    Note: flock is per open file description, so taking the same lock twice
    in one process (nested) deadlocks until ``timeout``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if deadline is not None and time.monotonic() > deadline:
                    raise SandboxError(
                        f"timed out after {timeout:.0f}s waiting for lock {path}"
                        + (f" ({what})" if what else "")
                    ) from None
                time.sleep(0.2)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock(path: Path) -> int | None:
    """Non-blocking flock; returns the fd (caller closes it to unlock) or None if busy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def read_ssh_banner(address: str, port: int, timeout: float = 2.0) -> str | None:
    """Connect to ``address:port`` and return the SSH identification line, or None.

    A bare TCP connect is not enough: docker-proxy accepts connections before
    the sshd inside the container listens, and then closes them.
    """
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].strip().decode(errors="replace")
    return line if line.startswith("SSH-") else None


def ensure_client_key(directory: Path, name: str = "id_ed25519", comment: str = "ndctl-sandbox") -> Path:
    """Return ``directory/name``, an ed25519 client key made with ssh-keygen once."""
    directory = Path(directory).expanduser().absolute()
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    with file_lock(directory / f".{name}.lock", timeout=60, what="client key generation"):
        if key.exists() and key.with_suffix(".pub").exists():
            return key
        tmp = directory / f".{name}.tmp{os.getpid()}"
        for p in (tmp, Path(f"{tmp}.pub")):
            p.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", tmp])
        os.chmod(tmp, 0o600)
        os.replace(f"{tmp}.pub", key.with_suffix(".pub"))  # public first: private => public exists
        os.replace(tmp, key)
    return key


def public_key_of(identity: Path) -> str:
    """``"ssh-ed25519 AAAA..."`` (type and base64, no comment) of a key pair."""
    return " ".join(Path(f"{identity}.pub").read_text().split()[:2])


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # field 3 (state) follows the ")" that ends the command name
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


def pid_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``: tells a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
