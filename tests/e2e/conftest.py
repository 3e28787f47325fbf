"""Helpers for end-to-end tests that drive the real ``ndctl`` CLI against real test hosts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ndctl.core.inventory import Inventory


@dataclass
class Cli:
    """Runs ``ndctl`` as a user would, with its own HOME, inventory and ssh config (no terminal)."""

    env: dict[str, str]
    inventory: Path
    ssh_config: Path
    home: Path

    def __call__(self, *args: str, input: str | None = None, timeout: float = 180,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ndctl", *args], env=self.env, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def json(self, *args: str) -> object:
        """Run with ``-o json`` (placed before any ``--``) and parse stdout."""
        args_l = list(args)
        at = args_l.index("--") if "--" in args_l else len(args_l)
        r = self(*args_l[:at], "-o", "json", *args_l[at:])
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def inv(self) -> Inventory:
        return Inventory.load(self.inventory)

    @property
    def known_hosts(self) -> Path:
        return self.inventory.parent / "known_hosts"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NDCTL_", "SSH_AUTH_SOCK"))}
    inventory = tmp_path / "nd" / "inventory.yaml"
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("")
    env.update(HOME=str(home), NDCTL_INVENTORY=str(inventory), NDCTL_SSH_CONFIG=str(ssh_config),
               COLUMNS="200", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return Cli(env, inventory, ssh_config, home)


@pytest.fixture
def ssh_block():
    """``ssh_block(alias, test_host, proxy_jump=None)`` -> a ``Host`` block for an OpenSSH client config."""
    return ssh_config_block


def ssh_config_block(alias: str, host, *, proxy_jump: str | None = None) -> str:
    lines = [f"Host {alias}", f"    HostName {host.address}", f"    Port {host.port}", f"    User {host.user}",
             f"    IdentityFile {host.identity}"]
    if proxy_jump:
        lines.append(f"    ProxyJump {proxy_jump}")
    return "\n".join(lines) + "\n"


def reset_host(host, app: str, *extra: str) -> None:
    """Remove what deploying ``app`` left on ``host``: its containers, the proxy (and its data
    volume), the network and ndctl's state; then each ``extra`` shell line, run on its own so
    that one failing (or a `pkill -f` matching its own shell) never skips the rest."""
    host.exec("sh", "-c", 'docker ps -aq --filter "label=com.nextdeploy.app=$1" | xargs -r docker rm -f; '
                          "docker rm -f nextdeploy-proxy; docker network rm nextdeploy; "
                          "docker volume rm nextdeploy-proxy-data; "
                          "rm -rf /var/lib/nextdeploy/apps /var/lib/nextdeploy/proxy", "reset-host", app, check=False)
    for line in extra:
        host.exec("sh", "-c", line, check=False)
