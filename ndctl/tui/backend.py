"""What the dashboard needs from the fleet, as one protocol, and its real implementation.

Screens never touch SSH: they call a :class:`DashboardBackend`. :class:`FleetBackend`
implements it on ``ndctl.ops`` with ONE :class:`~ndctl.transport.ssh.Runner` kept
open for the app's lifetime, so every refresh reuses one connection per host.
Every per-host failure comes back as data (``HostSample.reason``, a non-ok
``HostResult``), never as an exception.
"""
from __future__ import annotations

import asyncio
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ndctl.commands import appstate
from ndctl.commands.shell import for_host, user_command
from ndctl.core import deployplan as dp
from ndctl.core.cache import Cache
from ndctl.core.errors import NoHostsMatched
from ndctl.core.facts import Facts, Metrics
from ndctl.core.inventory import Host, Inventory
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.core.selectors import select

LineCallback = Callable[[str, str, str, str], None]  # (host, version, stream, line), as ops.logs
SampleCallback = Callable[["HostSample"], None]


# ----------------------------------------------------------------------------- data
@dataclass
class HostSample:
    """One metrics sample of a host, or why there is none (``reason``)."""

    host: str
    ok: bool
    reason: str | None = None
    cpu_percent: float | None = None
    memory_used_percent: float | None = None
    memory_total_bytes: int | None = None
    disk_used_percent: float | None = None
    containers: int | None = None  # running containers
    at: float = 0.0

    @classmethod
    def from_result(cls, r: HostResult, now: float) -> "HostSample":
        if not r.ok or not isinstance(r.value, Metrics):
            return cls(r.host, False, reason=failure_reason(r), at=now)
        m: Metrics = r.value
        disks = m.disks
        root = next((d for d in disks if d.mount == "/"), disks[0] if disks else None)
        return cls(r.host, True, cpu_percent=m.cpu_percent, memory_used_percent=m.memory_used_percent,
                   memory_total_bytes=m.memory_total_bytes,
                   disk_used_percent=root.used_percent if root else None,
                   containers=len(m.containers), at=now)


def failure_reason(r: HostResult) -> str:
    """One line saying why a host result is not ok (unreachable cause, error, stderr, exit status)."""
    if r.error:
        return r.error.strip().splitlines()[0] if r.error.strip() else r.status.value
    err = r.stderr.strip().splitlines()
    if err:
        return err[-1]
    return f"{r.status.value} (exit status {r.exit_code})"


@dataclass(frozen=True)
class PlannedCommand:
    """One host's command line, exactly as the transport will send it (``shlex.join`` of the argv)."""

    host: str
    argv: tuple[str, ...]

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Plan:
    """What a confirmed action will do, shown verbatim by the confirm dialog and then run as is."""

    title: str
    lines: tuple[str, ...]  # what the dialog shows
    hosts: tuple[str, ...]
    commands: tuple[PlannedCommand, ...] = ()  # bulk exec
    data: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # tags, rollback targets


@dataclass
class DeployView:
    """The Deployments screen's data for one app (read from the hosts)."""

    app: str
    history: list[dict[str, Any]]  # dp.merge_history rows, oldest first
    status: dict[str, dict[str, Any]]  # host -> dp.host_status (+ "error" when unreadable)
    rollback_blocked: str | None = None  # why one-key rollback is unavailable


def exec_plan(hosts: Sequence[Host], command: str) -> Plan:
    """The bulk-exec plan: the argv ``ndctl exec -- COMMAND`` would run on each host."""
    cmds = tuple(PlannedCommand(h.name, tuple(for_host(user_command([command]), h)))
                 for h in hosts)
    lines = tuple(f"{c.host}: {c.line}" for c in cmds)
    return Plan(f"Run on {len(cmds)} host(s)", lines, tuple(c.host for c in cmds), cmds, {"command": command})


def tag_plan(hosts: Sequence[Host], *, add: Sequence[str] = (), remove: Sequence[str] = ()) -> Plan:
    lines = []
    for h in hosts:
        after = [t for t in h.tags if t not in remove] + [t for t in add if t not in h.tags]
        lines.append(f"{h.name}: tags {','.join(h.tags) or '-'} -> {','.join(after) or '-'}")
    verb = "Add tag " + ",".join(add) if add else "Remove tag " + ",".join(remove)
    return Plan(f"{verb} on {len(hosts)} host(s)", tuple(lines), tuple(h.name for h in hosts),
                data={"add": list(add), "remove": list(remove)})


def refresh_plan(hosts: Sequence[Host]) -> Plan:
    return Plan(f"Re-gather facts on {len(hosts)} host(s)",
                tuple(f"{h.name}: ndhelper facts (recompute auto-tags)" for h in hosts), tuple(h.name for h in hosts))


def rollback_plan(view: DeployView) -> Plan:
    """Per host: the serving version and the release a rollback switches to (``retained_releases[0]``)."""
    lines, targets = [], {}
    for host, st in sorted(view.status.items()):
        if "error" in st:
            lines.append(f"{host}: skipped (state unreadable: {st['error']})")
            continue
        releases = st.get("releases") or []
        serving = (st.get("serving") or {}).get("version") or "-"
        if not releases:
            lines.append(f"{host}: skipped (no previous release retained; serving {serving})")
            continue
        target = releases[0]
        targets[host] = target["version"]
        lines.append(f"{host}: {view.app} {serving} -> {target['version']} ({target['container']})")
    return Plan(f"Roll back {view.app} on {len(targets)} host(s)", tuple(lines), tuple(sorted(targets)),
                data={"app": view.app, "targets": targets})


# ----------------------------------------------------------------------------- protocol
class DashboardBackend(Protocol):
    """Everything the screens ask of the fleet. Per-host failures are data, not exceptions."""

    def hosts(self) -> list[Host]: ...
    def select(self, selector: str | None) -> list[Host]: ...  # raises SelectorError / NoHostsMatched
    def cached_facts(self, name: str) -> tuple[Facts | None, str | None]: ...  # (facts, last error)
    def now(self) -> datetime: ...
    async def sample(self, names: Sequence[str], on_sample: SampleCallback | None = None) -> list[HostSample]: ...
    async def run_plan(self, plan: Plan) -> GroupResult: ...  # a bulk exec plan, exactly its commands
    async def retag(self, plan: Plan) -> None: ...
    async def refresh_facts(self, names: Sequence[str]) -> GroupResult: ...
    async def apps(self) -> list[str]: ...
    async def deployments(self, app: str) -> DeployView: ...
    async def rollback(self, plan: Plan) -> GroupResult: ...
    async def stream_logs(self, app: str, names: Sequence[str], on_line: LineCallback) -> GroupResult: ...
    async def close(self) -> None: ...


# ----------------------------------------------------------------------------- real backend
class FleetBackend:
    """The real backend: inventory + ``ndctl.ops`` over one long-lived Runner.

    Create and use it inside the app's event loop (the Runner's connections belong to it).
    """

    def __init__(self, inventory: Path | str | Inventory | None = None, *, selector: str | None = None,
                 spec_file: Path | None = None, metrics_interval: float = 0.5) -> None:
        from ndctl.api import Fleet

        self._fleet = Fleet(inventory if isinstance(inventory, Inventory) else Inventory.load(inventory, readonly=True),
                            selector=selector)
        self.selector = selector
        self.inventory = self._fleet.inventory
        self.spec_file = spec_file
        self.metrics_interval = metrics_interval
        self._runner = None

    @property
    def runner(self):
        from ndctl.transport.ssh import Runner

        if self._runner is None:
            self._runner = Runner(self._fleet.run_options())
        return self._runner

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.close()
            self._runner = None

    # --- hosts -----------------------------------------------------------------------
    def _reload(self) -> None:
        self.inventory = Inventory.load(self.inventory.path, readonly=True)

    def hosts(self) -> list[Host]:
        """The inventory's hosts within ``--tags``; none (not an error) once a retag left none matching."""
        try:
            return select(self.inventory, self.selector) if self.selector else list(self.inventory)
        except NoHostsMatched:
            return []

    def select(self, selector: str | None) -> list[Host]:
        return select(self.hosts(), selector)

    def _by_names(self, names: Sequence[str]) -> list[Host]:
        wanted = set(names)
        return [h for h in self.hosts() if h.name in wanted]

    def cached_facts(self, name: str) -> tuple[Facts | None, str | None]:
        h = self.inventory.hosts.get(name)
        if h is None:
            return None, "not in the inventory"
        entry = Cache(self.inventory.cache_dir).get(h.id)
        try:
            return (Facts.from_dict(entry.facts) if entry.facts else None), entry.last_error
        except Exception as e:  # noqa: BLE001 - a stale or corrupt cache entry is just missing facts
            return None, f"unreadable cached facts: {e}"

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    # --- fleet screen ------------------------------------------------------------------
    async def sample(self, names: Sequence[str], on_sample: SampleCallback | None = None) -> list[HostSample]:
        from ndctl.ops.helper import sample_metrics

        runner, d = self.runner, self.inventory.settings.helper_dir

        async def one(h: Host) -> HostResult:
            r = await sample_metrics(runner, h, helper_dir=d, interval=self.metrics_interval)
            if on_sample is not None:
                on_sample(HostSample.from_result(r, time.time()))
            return r

        group = await runner.fan_out(self._by_names(names), one)
        return [HostSample.from_result(r, time.time()) for r in group]

    async def run_plan(self, plan: Plan) -> GroupResult:
        runner = self.runner
        argv = {c.host: list(c.argv) for c in plan.commands}
        return await runner.fan_out(self._by_names(list(argv)), lambda h: runner.run(h, argv[h.name]))

    async def retag(self, plan: Plan) -> None:
        from ndctl.ops.agents import retag

        selector = "|".join(f"name:{n}" for n in plan.hosts)
        await asyncio.to_thread(retag, self.inventory.path, selector, plan.data.get("add", []),
                                plan.data.get("remove", []))
        self._reload()

    async def refresh_facts(self, names: Sequence[str]) -> GroupResult:
        from ndctl.ops.agents import refresh

        inv = Inventory.load(self.inventory.path)
        group = await refresh(inv, [h for h in inv if h.name in set(names)], self._fleet.run_options(),
                              runner=self.runner)
        self._reload()
        return group

    # --- deployments -------------------------------------------------------------------
    def _spec(self, app: str):
        """(spec, why rollback is unavailable): the spec file's when it defines ``app``."""
        from ndctl.core.appspec import AppSpec, load_appspec

        if self.spec_file is not None and self.spec_file.exists():
            try:
                spec = load_appspec(self.spec_file, require_image=False)
            except Exception as e:  # noqa: BLE001 - shown, not raised
                return AppSpec(app=app, image="", port=80), f"{self.spec_file}: {e}"
            if spec.app == app:
                return spec, None
        return AppSpec(app=app, image="", port=80), f"rollback needs the app's nextdeploy.yaml ({app} is not " \
                                                    f"defined by {self.spec_file or '--file'})"

    async def apps(self) -> list[str]:
        runner = self.runner
        group = await runner.fan_out(self.hosts(), lambda h: runner.run(
            h, for_host(appstate.list_apps(), h)))
        found = {line.strip() for r in group if r.ok for line in r.stdout.splitlines()}
        found = {a for a in found if appstate._APP_RE.match(a)}  # a stray directory name is not an app
        if self.spec_file is not None and self.spec_file.exists():
            from ndctl.core.appspec import load_appspec

            try:
                found.add(load_appspec(self.spec_file, require_image=False).app)
            except Exception:  # noqa: BLE001 - an invalid file shows up when rolling back
                pass
        return sorted(found)

    async def deployments(self, app: str) -> DeployView:
        from ndctl.ops.deploy import Deployer

        spec, blocked = self._spec(app)
        group = await Deployer(self.runner, self.inventory, spec).states(self.hosts())
        now = self.now()
        status = {r.host: (dp.host_status(r.value, now=now, grace=spec.grace) if r.ok
                           else {"error": failure_reason(r)}) for r in group}
        history = dp.merge_history({r.host: r.value.history for r in group if r.ok})
        return DeployView(app, history, status, blocked)

    async def rollback(self, plan: Plan) -> GroupResult:
        from ndctl.ops.deploy import Deployer

        app, targets = plan.data["app"], plan.data["targets"]
        spec, blocked = self._spec(app)
        if blocked:
            return GroupResult([HostResult(h, Status.FAILED, None, error=blocked) for h in plan.hosts])
        deployer = Deployer(self.runner, self.inventory, spec)
        by_version: dict[str, list[str]] = {}
        for host, version in targets.items():
            by_version.setdefault(version, []).append(host)
        parts = await asyncio.gather(*(deployer.rollback(self._by_names(hs), to_version=v)
                                       for v, hs in by_version.items()))
        return GroupResult([r for g in parts for r in g])

    # --- logs --------------------------------------------------------------------------
    async def stream_logs(self, app: str, names: Sequence[str], on_line: LineCallback) -> GroupResult:
        from ndctl.ops.logs import stream_logs

        return await stream_logs(self.runner, self._by_names(names), app, on_line, follow=True, tail=100)


# ----------------------------------------------------------------------------- off the UI loop
class ThreadedBackend:
    """Runs a backend's coroutines on an event loop of its own, in a thread; the UI loop only awaits results.

    SSH work (asyncssh's packet handling and ciphers are partly Python) then never
    runs inside a UI callback: the interpreter switches threads every few
    milliseconds, so a 100-host refresh cannot hold a key press for longer than
    that. Callbacks (``on_sample``, ``on_line``) are delivered on the UI loop.
    Cancelling an awaiting UI task cancels the backend task (a log stream stops).
    """

    def __init__(self, inner: Any) -> None:
        import threading

        self.inner = inner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ndctl-dashboard-backend", daemon=True)
        self._thread.start()

    # synchronous reads (inventory, laptop cache) stay direct
    def hosts(self) -> list[Host]:
        return self.inner.hosts()

    def select(self, selector: str | None) -> list[Host]:
        return self.inner.select(selector)

    def cached_facts(self, name: str) -> tuple[Facts | None, str | None]:
        return self.inner.cached_facts(name)

    def now(self) -> datetime:
        return self.inner.now()

    async def _call(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    @staticmethod
    def _to_ui(callback: Callable[..., None] | None) -> Callable[..., None] | None:
        if callback is None:
            return None
        ui = asyncio.get_running_loop()
        return lambda *args: ui.call_soon_threadsafe(callback, *args)

    async def sample(self, names: Sequence[str], on_sample: SampleCallback | None = None) -> list[HostSample]:
        return await self._call(self.inner.sample(names, self._to_ui(on_sample)))

    async def run_plan(self, plan: Plan) -> GroupResult:
        return await self._call(self.inner.run_plan(plan))

    async def retag(self, plan: Plan) -> None:
        return await self._call(self.inner.retag(plan))

    async def refresh_facts(self, names: Sequence[str]) -> GroupResult:
        return await self._call(self.inner.refresh_facts(names))

    async def apps(self) -> list[str]:
        return await self._call(self.inner.apps())

    async def deployments(self, app: str) -> DeployView:
        return await self._call(self.inner.deployments(app))

    async def rollback(self, plan: Plan) -> GroupResult:
        return await self._call(self.inner.rollback(plan))

    async def stream_logs(self, app: str, names: Sequence[str], on_line: LineCallback) -> GroupResult:
        return await self._call(self.inner.stream_logs(app, names, self._to_ui(on_line)))

    async def close(self) -> None:
        if not self._loop.is_running():
            return
        try:
            await self._call(self.inner.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            self._loop.close()
