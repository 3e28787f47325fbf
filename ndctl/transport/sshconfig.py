"""Resolve a name the way ``ssh NAME`` does, from OpenSSH client config files.

asyncssh already parses OpenSSH's config format (Host/Match blocks, HostName,
Port, User, IdentityFile, ProxyJump, %-expansion); we reuse its parser rather
than writing another.
"""
from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

from asyncssh.config import SSHClientConfig


@dataclass
class Resolved:
    name: str
    hostname: str
    port: int
    user: str
    identity_files: list[str] = field(default_factory=list)
    proxy_jump: str | None = None
    from_config: bool = False  # a Host block changed something
    set_fields: frozenset[str] = frozenset()  # of address, port, user, identity, proxy_jump


def config_paths(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """NDCTL_SSH_CONFIG (colon-separated), else the inventory's setting, else ~/.ssh/config."""
    env = os.environ.get("NDCTL_SSH_CONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if explicit:
        return [Path(explicit).expanduser()]
    default = Path("~/.ssh/config").expanduser()
    return [default] if default.is_file() else []


def resolve(name: str, paths: list[Path] | None = None) -> Resolved:
    paths = config_paths() if paths is None else paths
    local_user = getpass.getuser()
    cfg = SSHClientConfig.load(None, [p for p in paths if p.is_file()], False, False, False,
                               local_user, (), name, ())
    hostname = cfg.get("Hostname") or name
    port = int(cfg.get("Port") or 22)
    user = cfg.get("User") or local_user
    idents = [str(Path(str(p)).expanduser()) for p in (cfg.get("IdentityFile") or [])]
    jump = cfg.get("ProxyJump")
    if isinstance(jump, (list, tuple)):
        jump = ",".join(jump)
    if jump in ("none", ""):
        jump = None
    keys = {"Hostname": "address", "Port": "port", "User": "user", "IdentityFile": "identity",
            "ProxyJump": "proxy_jump"}
    set_fields = frozenset(field for k, field in keys.items() if cfg.get(k))
    return Resolved(name, str(hostname), port, str(user), idents, jump, bool(set_fields), set_fields)
