"""What a test (or the README demo) needs to reach one test host."""
from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ._util import DOCKER, SandboxError, atomic_write


class ExecError(subprocess.CalledProcessError):
    """``TestHost.exec`` failed; unlike CalledProcessError, str() shows stderr."""

    def __str__(self) -> str:
        msg = super().__str__()
        err = self.stderr
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        if err and err.strip():
            msg += "\n" + err.strip()[-3000:]
        return msg


@dataclass
class TestHost:
    """One reachable SSH test host (a container host or a plain sshd on 127.0.0.x)."""

    __test__ = False  # not a pytest test class

    name: str
    address: str
    port: int
    user: str
    identity: Path
    host_key: str  # "ssh-ed25519 AAAA..." (type + base64, no comment)
    container: str | None = None  # docker container name; None for plain sshd hosts

    def exec(
        self,
        *argv: str,
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float | None = 300,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the container with ``docker exec`` (for assertions).

        Output is captured; text unless ``input`` is bytes.
        """
        if self.container is None:
            raise SandboxError(f"{self.name} is not a container host: exec() needs docker exec")
        cmd = [DOCKER, "exec"]
        if input is not None:
            cmd.append("-i")
        cmd += [self.container, *argv]
        text = not isinstance(input, bytes)
        cp = subprocess.run(
            cmd, input=input, capture_output=True, text=text, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and cp.returncode != 0:
            raise ExecError(cp.returncode, cmd, cp.stdout, cp.stderr)
        return cp

    # -- OpenSSH client side -------------------------------------------------

    @property
    def known_hosts_pattern(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_pattern} {self.host_key}"

    def ssh_config_entry(self, known_hosts: Path | None = None) -> str:
        """A ``Host <name>`` block for an OpenSSH client config."""
        lines = [
            f"Host {self.name}",
            f"    HostName {self.address}",
            f"    Port {self.port}",
            f"    User {self.user}",
            f"    IdentityFile {self.identity}",
            "    IdentitiesOnly yes",
            "    StrictHostKeyChecking yes",
        ]
        if known_hosts is not None:
            lines.append(f"    UserKnownHostsFile {known_hosts}")
            lines.append("    GlobalKnownHostsFile /dev/null")
        lines += ["    BatchMode yes", "    LogLevel ERROR"]
        return "\n".join(lines) + "\n"

    def ssh_argv(self, *command: str, known_hosts: Path | None = None) -> list[str]:
        """``ssh`` argv (no config file) that runs ``command`` on this host."""
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(self.identity), "-p", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
        ]
        if known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
        return [*argv, f"{self.user}@{self.address}", *command]

    # -- (de)serialisation for state.json ---------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        d["identity"] = str(self.identity)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TestHost":
        d = dict(d)
        d["identity"] = Path(d["identity"])
        d["port"] = int(d["port"])
        return cls(**d)


def write_known_hosts(hosts: Iterable[TestHost], path: Path) -> Path:
    atomic_write(Path(path), "".join(h.known_hosts_line() + "\n" for h in hosts))
    return Path(path)


def write_ssh_config(hosts: Sequence[TestHost], path: Path, *, known_hosts: Path | None = None) -> Path:
    """Write an OpenSSH client config with one ``Host`` block per host.

    Also writes the hosts' keys to ``known_hosts`` (default: ``known_hosts``
    next to ``path``), which the config names as ``UserKnownHostsFile``, so
    ``ssh -F path <name>`` works with strict host key checking.
    """
    path = Path(path)
    known_hosts = Path(known_hosts) if known_hosts is not None else path.parent / "known_hosts"
    write_known_hosts(hosts, known_hosts)
    body = "# written by ndctl.sandbox; use with: ssh -F {}\n\n".format(path)
    body += "\n".join(h.ssh_config_entry(known_hosts=known_hosts.resolve()) for h in hosts)
    atomic_write(path, body)
    return path


__all__ = ["ExecError", "TestHost", "write_known_hosts", "write_ssh_config"]
