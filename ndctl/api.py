"""The Python API: everything the CLI does, usable without it.

>>> from ndctl import Fleet
>>> fleet = Fleet()                       # ~/.nextdeploy/inventory.yaml or $NDCTL_INVENTORY
>>> result = fleet.select("production,web").exec("uptime")
>>> for r in result:
...     print(r.host, r.status.value, r.stdout.strip())
>>> result.raise_on_error()               # GroupError carrying the GroupResult

Several steps over one connection per host::

    async with fleet.session() as s:
        await s.exec("apt-get update")
        facts = await s.facts()
"""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from ndctl.commands.shell import for_host, user_command
from ndctl.core.inventory import Host, Inventory
from ndctl.core.selectors import select
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.ops import agents
from ndctl.ops.helper import gather_facts, sample_metrics
from ndctl.transport.ssh import OutputCallback, Runner, RunOptions

Command = str | Sequence[str]

if TYPE_CHECKING:  # pragma: no cover
    from ndctl.ops.secrets import Secrets


def _argv(command: Command, host: Host) -> list[str]:
    words = [command] if isinstance(command, str) else list(command)
    return for_host(user_command(words), host)


class FleetSession:
    """Hosts plus an open Runner: every call reuses one connection per host."""

    def __init__(self, fleet: "Fleet", runner: Runner) -> None:
        self.fleet = fleet
        self.runner = runner

    @property
    def hosts(self) -> list[Host]:
        return self.fleet.hosts

    async def exec(self, command: Command, *, on_output: OutputCallback | None = None,
                   timeout: float | None = None) -> GroupResult:
        return await self.runner.fan_out(
            self.hosts, lambda h: self.runner.run(h, _argv(command, h), timeout=timeout, on_output=on_output))

    async def steps(self, commands: Sequence[Command], *, stop_on_failure: bool = True) -> GroupResult:
        """Run commands in order on each host (hosts in parallel); one result per host.

        A host's result is its last step's, with every step's stdout joined.
        """
        async def per_host(h: Host) -> HostResult:
            outs: list[str] = []
            total = 0.0
            r = HostResult(h.name, Status.OK, 0)
            for cmd in commands:
                r = await self.runner.run(h, _argv(cmd, h))
                outs.append(r.stdout)
                total += r.duration
                if not r.ok and stop_on_failure:
                    break
            r.stdout, r.duration = "".join(outs), total
            return r

        return await self.runner.fan_out(self.hosts, per_host)

    async def facts(self) -> GroupResult:
        d = self.fleet.inventory.settings.helper_dir
        return await self.runner.fan_out(self.hosts, lambda h: gather_facts(self.runner, h, helper_dir=d))

    async def metrics(self, interval: float = 0.5) -> GroupResult:
        d = self.fleet.inventory.settings.helper_dir
        return await self.runner.fan_out(
            self.hosts, lambda h: sample_metrics(self.runner, h, helper_dir=d, interval=interval))


class Fleet:
    """A selection of inventory hosts, and the operations that fan out across them."""

    def __init__(self, inventory: Inventory | str | Path | None = None, *, selector: str | None = None,
                 forks: int | None = None, connect_timeout: float | None = None,
                 command_timeout: float | None = None) -> None:
        self.inventory = inventory if isinstance(inventory, Inventory) else Inventory.load(inventory, readonly=True)
        self.selector = selector
        self._hosts = self.inventory.select(selector) if selector else list(self.inventory)
        self._run_kw: dict[str, Any] = {"forks": forks, "connect_timeout": connect_timeout,
                                        "command_timeout": command_timeout}

    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts)

    def __len__(self) -> int:
        return len(self._hosts)

    def select(self, selector: str) -> "Fleet":
        """The hosts of this fleet that also match ``selector``; raises NoHostsMatched when none do."""
        f = Fleet(self.inventory, **self._run_kw)
        f._hosts = select(self._hosts, selector)
        f.selector = selector if not self.selector else f"({self.selector}),({selector})"
        return f

    def run_options(self) -> RunOptions:
        return agents.run_options(self.inventory, **self._run_kw)

    @property
    def secrets(self) -> "Secrets":
        """The inventory's secrets (``ndctl.ops.secrets.Secrets``): set, get, list, remove, rekey, audit."""
        from ndctl.ops.secrets import Secrets

        if getattr(self, "_secrets", None) is None:
            self._secrets = Secrets(self.inventory)
        return self._secrets

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[FleetSession]:
        async with Runner(self.run_options()) as runner:
            yield FleetSession(self, runner)

    # ----- synchronous conveniences --------------------------------------------
    def _sync(self, coro_fn: Any) -> Any:
        async def main() -> Any:
            async with self.session() as s:
                return await coro_fn(s)
        return asyncio.run(main())

    def exec(self, command: Command, *, on_output: OutputCallback | None = None,
             timeout: float | None = None) -> GroupResult:
        return self._sync(lambda s: s.exec(command, on_output=on_output, timeout=timeout))

    def steps(self, commands: Sequence[Command]) -> GroupResult:
        return self._sync(lambda s: s.steps(commands))

    def facts(self) -> GroupResult:
        return self._sync(lambda s: s.facts())

    def metrics(self, interval: float = 0.5) -> GroupResult:
        return self._sync(lambda s: s.metrics(interval))

    def refresh(self) -> GroupResult:
        return asyncio.run(agents.refresh(self.inventory, self.hosts, self.run_options()))

    @staticmethod
    def register(name: str, *, inventory: str | Path | None = None, **kw: Any) -> agents.Registration:
        """Register (or update) a host; see ``ndctl.ops.agents.register`` for the keywords."""
        return asyncio.run(agents.register(inventory, name, **kw))
