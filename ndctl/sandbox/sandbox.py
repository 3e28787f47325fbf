"""``ndctl sandbox up|down|status``: a few container hosts for the README demo.

``up`` is idempotent: running hosts of the right image are reused, stopped
ones restarted, missing or broken ones (re)created, extra ones removed. It writes ``workdir/ssh_config``
(+ ``workdir/known_hosts``) and ``workdir/state.json``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ._util import SandboxError, atomic_write, docker, ensure_client_key, read_ssh_banner
from .containers import (
    START_TIMEOUT, _start, attach_host, group_lock, list_group, published_port, remove_containers,
    stop_group,
)
from .hosts import TestHost, write_ssh_config
from .image import ensure_image

SANDBOX_GROUP = "sandbox"
DEFAULT_WORKDIR = Path(os.environ.get("NDCTL_SANDBOX_DIR", "~/.nextdeploy/sandbox")).expanduser()
STATE_FILE = "state.json"


def host_names(n: int, prefix: str = "sbx-") -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def up(
    n: int = 3,
    workdir: Path = DEFAULT_WORKDIR,
    *,
    group: str = SANDBOX_GROUP,
    prefix: str = "sbx-",
    log=None,
    timeout: float = START_TIMEOUT,
) -> list[TestHost]:
    """Ensure container hosts ``sbx-1..n`` run; return them (in name order)."""
    if n < 1:
        raise SandboxError("a sandbox needs at least one host")
    say = log or (lambda msg: None)
    workdir = Path(workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    identity = ensure_client_key(workdir)
    image = ensure_image(log=say)
    wanted = host_names(n, prefix)
    with group_lock(group, timeout=600):
        existing = {c["name"]: c for c in list_group(group)}
        ours = {name for name in wanted if existing.get(name, {}).get("image") == image}
        # stopped hosts (e.g. after a reboot) are restarted: same host key, same inner Docker state
        restart = sorted(name for name in ours if existing[name]["state"] in ("exited", "created"))
        if restart:
            say(f"restarting {', '.join(restart)}")
            docker("start", *restart, check=False, timeout=120)
        reuse = [name for name in wanted
                 if name in ours and (existing[name]["state"] == "running" or name in restart)]
        stale = [name for name in existing if name not in reuse]
        if stale:
            say(f"removing {', '.join(sorted(stale))}")
            remove_containers(stale)
        hosts: dict[str, TestHost] = {}
        broken = []
        for name in reuse:
            try:
                hosts[name] = attach_host(name, identity=identity, timeout=min(timeout, 30))
            except SandboxError as exc:
                say(f"{name} is broken, recreating it: {str(exc).splitlines()[0]}")
                broken.append(name)
        remove_containers(broken)
        create = [name for name in wanted if name not in hosts]
        if create:
            say(f"starting {', '.join(create)}")
            for h in _start(create, group=group, image=image, identity=identity, timeout=timeout):
                hosts[h.name] = h
        result = [hosts[name] for name in wanted]
        write_ssh_config(result, workdir / "ssh_config", known_hosts=workdir / "known_hosts")
        atomic_write(workdir / STATE_FILE, json.dumps({
            "group": group,
            "image": image,
            "identity": str(identity),
            "ssh_config": str(workdir / "ssh_config"),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hosts": [h.to_dict() for h in result],
        }, indent=2) + "\n")
    return result


def down(workdir: Path = DEFAULT_WORKDIR, *, group: str = SANDBOX_GROUP) -> list[str]:
    """Remove the sandbox hosts (containers + volumes) and the generated files; keep the key."""
    workdir = Path(workdir).expanduser()
    with group_lock(group, timeout=600):
        names = stop_group(group)
        for f in (STATE_FILE, "ssh_config", "known_hosts"):
            (workdir / f).unlink(missing_ok=True)
    return names


@dataclass
class HostStatus:
    name: str
    state: str  # docker container state: running, exited, ... or "missing"
    address: str | None
    port: int | None
    ssh: bool  # sshd answers the SSH banner
    docker: bool | None = None  # inner dockerd answers (only checked for running hosts)

    def to_dict(self) -> dict:
        return asdict(self)


def load_state(workdir: Path = DEFAULT_WORKDIR) -> dict | None:
    try:
        return json.loads((Path(workdir).expanduser() / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def status(workdir: Path = DEFAULT_WORKDIR, *, group: str = SANDBOX_GROUP, check_docker: bool = True) -> list[HostStatus]:
    """Every host of the sandbox (containers of the group + hosts in state.json)."""
    containers = {c["name"]: c for c in list_group(group)}
    state = load_state(workdir) or {}
    names = sorted(set(containers) | {h["name"] for h in state.get("hosts", [])},
                   key=lambda s: (len(s), s))
    out = []
    for name in names:
        c = containers.get(name)
        if c is None:
            out.append(HostStatus(name, "missing", None, None, False))
            continue
        port = None
        if c["state"] == "running":
            try:
                port = published_port(name)
            except SandboxError:
                port = None
        ssh = port is not None and read_ssh_banner("127.0.0.1", port, timeout=2) is not None
        dock = None
        if check_docker and c["state"] == "running":
            dock = docker("exec", name, "docker", "info", "--format", "{{.ID}}",
                          check=False, timeout=30).returncode == 0
        out.append(HostStatus(name, c["state"], "127.0.0.1" if port else None, port, ssh, dock))
    return out
