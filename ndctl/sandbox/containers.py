"""Isolated container test hosts: own sshd, own filesystem, own Docker engine.

Each host is a container of the ``ndctl-testhost`` image running sshd and a
private ``dockerd --cgroup-parent=/<name>`` (storage on a ``<name>-docker``
volume). sshd is published on a random 127.0.0.1 port. Containers and volumes
carry the label ``ndctl.sandbox=<group>``; :func:`stop_group` removes both.
"""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from ._util import (
    RUN_DIR, CommandError, SandboxError, docker, ensure_client_key, file_lock,
    public_key_of, read_ssh_banner, try_lock,
)
from .hosts import TestHost
from .image import ensure_image

LABEL = "ndctl.sandbox"
HOST_LABEL = "ndctl.sandbox.host"
START_TIMEOUT = float(os.environ.get("NDCTL_SANDBOX_START_TIMEOUT", "120"))

RUN_OPTIONS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run",
    "-p", "127.0.0.1::22",
)

# Run by `docker exec` once the container is up: install the client key, wait
# for the inner dockerd to answer `docker info`, print the host key.
_FINISH_SCRIPT = r"""
set -e
mkdir -p /root/.ssh && chmod 700 /root/.ssh
printf '%s\n' "$1" > /root/.ssh/authorized_keys.tmp
chmod 600 /root/.ssh/authorized_keys.tmp
mv /root/.ssh/authorized_keys.tmp /root/.ssh/authorized_keys
i=0
until docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt "$2" ]; then echo "inner dockerd does not answer 'docker info'" >&2; exit 3; fi
    sleep 0.1
done
# the entrypoint starts sshd before dockerd: no sshd now means it died
pgrep -x sshd >/dev/null || { echo "sshd is not running in the container" >&2; exit 4; }
cat /etc/ssh/ssh_host_ed25519_key.pub
"""


def container_hosts_unavailable_reason() -> str | None:
    """Why container test hosts cannot exist on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "container test hosts need root"
    if not shutil.which(os.environ.get("NDCTL_DOCKER", "docker")):
        return "no docker CLI on PATH"
    try:
        cp = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20)
    except SandboxError as exc:
        return f"docker daemon not reachable: {exc}"
    if cp.returncode != 0:
        return f"docker daemon not reachable: {(cp.stderr or cp.stdout).strip()[:300]}"
    if not os.path.isdir("/sys/fs/cgroup"):
        return "no /sys/fs/cgroup to hand to the inner dockerd"
    return None


@contextmanager
def group_lock(group: str, *, timeout: float | None = 1800) -> Iterator[None]:
    """Exclusive (inter-process) use of a host group, e.g. one pytest session at a time.

    Do not nest it for the same group in one process (flock would deadlock).
    """
    with file_lock(RUN_DIR / f"group-{group}.lock", timeout=timeout, what=f"sandbox group {group!r}"):
        yield


def group_in_use(group: str) -> bool:
    """True if some process currently holds :func:`group_lock` for ``group``."""
    fd = try_lock(RUN_DIR / f"group-{group}.lock")
    if fd is None:
        return True
    os.close(fd)
    return False


def stop_group_if_unused(group: str, *, also: tuple[str, ...] = ()) -> list[str] | None:
    """:func:`stop_group` for ``group`` and ``also``, but only if no process holds
    :func:`group_lock` for ``group`` (else None).

    For removing the leftovers of crashed runs without touching a live session's hosts.
    """
    fd = try_lock(RUN_DIR / f"group-{group}.lock")
    if fd is None:
        return None
    try:
        removed = stop_group(group)
        for other in also:
            removed += stop_group(other)
        return removed
    finally:
        os.close(fd)


def _volume_name(name: str) -> str:
    return f"{name}-docker"


def _remove_cgroups(names: list[str]) -> None:
    """rmdir the (now empty) ``/sys/fs/cgroup/*/<name>`` trees left by inner dockerds."""
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return
    tops = [root] + [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    for name in names:
        for top in tops:
            base = top / name
            if not base.is_dir():
                continue
            for attempt in range(10):
                dirs = sorted((d for d, _, _ in os.walk(base)), key=len, reverse=True)
                busy = False
                for d in dirs:
                    try:
                        os.rmdir(d)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        busy = True
                if not busy:
                    break
                time.sleep(0.1)


def _containers(*filters: str) -> list[dict]:
    argv = ["ps", "-a", "--no-trunc", "--format", "{{.Names}}\t{{.ID}}\t{{.State}}\t{{.Image}}"]
    for f in filters:
        argv += ["--filter", f]
    out = docker(*argv).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            rows.append({"name": parts[0], "id": parts[1], "state": parts[2], "image": parts[3]})
    return rows


def list_group(group: str) -> list[dict]:
    """Containers of ``group``: ``[{name, id, state, image}]``."""
    return _containers(f"label={LABEL}={group}")


def remove_containers(names: list[str]) -> None:
    """Force-remove containers by name, with their volumes and cgroups (missing ones are fine)."""
    if not names:
        return
    docker("rm", "-f", "-v", *names, check=False, timeout=300)
    docker("volume", "rm", "-f", *[_volume_name(n) for n in names], check=False, timeout=300)
    _remove_cgroups(names)


def stop_group(group: str) -> list[str]:
    """Remove every container AND volume labelled ``ndctl.sandbox=<group>``; returns the names."""
    names = [c["name"] for c in list_group(group)]
    if names:
        docker("rm", "-f", "-v", *names, check=False, timeout=300)
    vols = docker("volume", "ls", "-q", "--filter", f"label={LABEL}={group}").stdout.split()
    vols += [_volume_name(n) for n in names if _volume_name(n) not in vols]
    if vols:
        docker("volume", "rm", "-f", *vols, check=False, timeout=300)
    _remove_cgroups(names)
    return names


def _logs(name: str, tail: int = 60) -> str:
    cp = docker("logs", "--tail", str(tail), name, check=False, timeout=30)
    return ((cp.stdout or "") + (cp.stderr or "")).strip()


def _state(name: str) -> str:
    cp = docker("inspect", "--format", "{{.State.Status}} (exit {{.State.ExitCode}}) {{.State.Error}}",
                name, check=False, timeout=30)
    return cp.stdout.strip() if cp.returncode == 0 else "missing"


def _failure(name: str, what: str) -> SandboxError:
    return SandboxError(
        f"test host {name} did not come up: {what}\n"
        f"container state: {_state(name)}\n--- docker logs {name} (tail) ---\n{_logs(name)}"
    )


def published_port(name: str) -> int:
    out = docker("port", name, "22/tcp").stdout
    for line in out.splitlines():
        host, _, port = line.strip().rpartition(":")
        if host in ("127.0.0.1", "0.0.0.0") and port.isdigit():
            return int(port)
    raise SandboxError(f"no 127.0.0.1 port published for {name}:22 (docker port said {out!r})")


def _create(name: str, *, group: str, image: str) -> None:
    docker("volume", "create", "--label", f"{LABEL}={group}", "--label", f"{HOST_LABEL}={name}",
           _volume_name(name), timeout=60)
    docker(
        "run", "-d", "--name", name, "--hostname", name, *RUN_OPTIONS,
        "-v", f"{_volume_name(name)}:/var/lib/docker",
        "--label", f"{LABEL}={group}", "--label", f"{HOST_LABEL}={name}",
        image, timeout=120,
    )


def attach_host(name: str, *, identity: Path, timeout: float = START_TIMEOUT) -> TestHost:
    """Make a running container host usable: key in, sshd + inner dockerd answering."""
    deadline = time.monotonic() + timeout
    try:
        port = published_port(name)
    except CommandError as exc:
        raise _failure(name, f"docker port failed: {exc}") from None
    pubkey = public_key_of(identity)
    tries = max(1, int(timeout * 10))
    try:
        cp = docker("exec", name, "sh", "-c", _FINISH_SCRIPT, "sh", pubkey, str(tries), timeout=timeout + 10)
    except (CommandError, SandboxError) as exc:
        raise _failure(name, str(exc)) from None
    host_key = " ".join(cp.stdout.split()[:2])
    if not host_key.startswith("ssh-"):
        raise _failure(name, f"unexpected host key {cp.stdout!r}")
    while read_ssh_banner("127.0.0.1", port, timeout=2) is None:
        if time.monotonic() > deadline:
            raise _failure(name, f"sshd does not answer on 127.0.0.1:{port} after {timeout:.0f}s")
        time.sleep(0.05)
    return TestHost(name=name, address="127.0.0.1", port=port, user="root",
                    identity=Path(identity), host_key=host_key, container=name)


def start_container_hosts(
    names: list[str],
    *,
    group: str,
    workdir: Path,
    image: str | None = None,
    timeout: float = START_TIMEOUT,
) -> list[TestHost]:
    """Start fresh container hosts ``names`` in parallel and wait until they answer.

    Stale containers/volumes with the same names are removed first. The client
    key is ``workdir/id_ed25519`` (made once). On failure, the hosts started by
    this call are removed and :class:`SandboxError` (with container logs) raised.
    """
    if len(set(names)) != len(names):
        raise SandboxError(f"duplicate host names in {names}")
    workdir = Path(workdir)
    identity = ensure_client_key(workdir)
    image = image or ensure_image()
    remove_containers(names)
    return _start(names, group=group, image=image, identity=identity, timeout=timeout)


def _start(names: list[str], *, group: str, image: str, identity: Path, timeout: float) -> list[TestHost]:
    if not names:
        return []

    def one(name: str) -> TestHost:
        try:
            _create(name, group=group, image=image)
        except CommandError as exc:
            raise SandboxError(f"cannot start test host {name}: {exc}") from None
        return attach_host(name, identity=identity, timeout=timeout)

    with ThreadPoolExecutor(max_workers=min(16, len(names)), thread_name_prefix="ndctl-host") as pool:
        futures = [pool.submit(one, n) for n in names]
        errors, hosts = [], []
        for f in futures:
            try:
                hosts.append(f.result())
            except Exception as exc:  # noqa: BLE001 - collected, re-raised below
                errors.append(exc)
    if errors:
        remove_containers(names)
        if len(errors) == 1:
            raise errors[0]
        raise SandboxError(f"{len(errors)} of {len(names)} test hosts failed to start:\n\n"
                           + "\n\n".join(str(e) for e in errors))
    return hosts
