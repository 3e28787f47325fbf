"""A deterministic in-memory :class:`~ndctl.tui.backend.DashboardBackend` for tests and screenshots.

It records every mutating call (``calls``), can be told to fail (``raise_on``), and
its log stream is driven by the test (``emit``).
"""
from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from typing import Any, Sequence

from ndctl.core.facts import Facts
from ndctl.core.inventory import Host
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.core.selectors import select
from ndctl.tui.backend import DeployView, HostSample, LineCallback, Plan, SampleCallback, rollback_plan

FAKE_NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
GiB = 1024 ** 3

_HOSTS = [
    ("web-1", ["production", "web", "us-east"], ["amd64", "docker"]),
    ("web-2", ["production", "web", "us-east"], ["amd64", "docker"]),
    ("web-3", ["production", "web", "eu-west"], ["amd64", "docker", "high-mem"]),
    ("db-1", ["production", "db"], ["amd64", "docker", "high-mem"]),
    ("staging-1", ["staging", "web"], ["arm64", "docker", "low-disk"]),
    ("edge-1", ["production", "edge"], ["amd64"]),
]
UNREACHABLE = {"edge-1": "connect to 10.0.9.4:22: connection refused"}


def _facts(name: str, i: int) -> Facts:
    return Facts.from_dict({
        "helper_version": "1", "collected_at": FAKE_NOW.timestamp(), "hostname": name,
        "arch": "arm64" if name.startswith("staging") else "amd64", "machine": "x86_64",
        "cpus": {"count": 2 * (i + 1), "model": "Fake CPU @ 2.4GHz"},
        "memory": {"total_bytes": (8 << i) * GiB // 2, "available_bytes": (3 << i) * GiB // 2,
                   "swap_total_bytes": 0},
        "disks": [{"mount": "/", "device": "/dev/vda1", "fstype": "ext4", "total_bytes": 80 * GiB,
                   "free_bytes": (40 - 5 * i) * GiB, "used_percent": 50.0 + 6.25 * i}],
        "gpus": [],
        "os": {"id": "debian", "version_id": "12", "family": "debian", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
        "kernel": {"release": "6.1.0-13-amd64", "version": "#1 SMP Debian 6.1.55-1"},
        "python": "3.11.2", "user": "root", "uid": 0,
        "docker": {"installed": True, "running": True, "version": "24.0.7", "api_version": "1.43", "error": None},
        "containers": [{"id": f"c{i}{j}", "name": f"shop-0000000{j}", "image": "shop:v3", "state": "running",
                        "status": "Up 2 hours", "labels": {}} for j in range(i % 3)],
    })


class FakeBackend:
    def __init__(self, *, samples_per_refresh: int = 1, sample_delay: float = 0.0) -> None:
        self._hosts = [Host(name=n, address=f"10.0.0.{i + 1}", tags=list(t), auto_tags=list(a))
                       for i, (n, t, a) in enumerate(_HOSTS)]
        self.unreachable = dict(UNREACHABLE)
        self.calls: list[tuple[str, Any]] = []
        self.raise_on: set[str] = set()  # method names that raise RuntimeError (a backend bug)
        self.sample_delay = sample_delay
        self.rounds = 0  # sample() calls
        self.deploy_reads = 0  # deployments() calls
        self.closed = False
        self.on_line: LineCallback | None = None
        self.log_hosts: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        if what in self.raise_on:
            raise RuntimeError(f"fake backend failure in {what}")

    # --- hosts -----------------------------------------------------------------------
    def hosts(self) -> list[Host]:
        self._maybe_fail("hosts")
        return list(self._hosts)

    def select(self, selector: str | None) -> list[Host]:
        return select(self._hosts, selector)

    def cached_facts(self, name: str) -> tuple[Facts | None, str | None]:
        if name in self.unreachable:
            return None, self.unreachable[name]
        i = [h.name for h in self._hosts].index(name)
        return _facts(name, i), None

    def now(self) -> datetime:
        return FAKE_NOW

    async def sample(self, names: Sequence[str], on_sample: SampleCallback | None = None) -> list[HostSample]:
        self._maybe_fail("sample")
        self.rounds += 1
        k = self.rounds
        if self.sample_delay:
            await asyncio.sleep(self.sample_delay)
        out = []
        order = [h.name for h in self._hosts]
        for name in names:
            i = order.index(name)
            if name in self.unreachable:
                s = HostSample(name, False, reason=self.unreachable[name], at=FAKE_NOW.timestamp())
            else:
                s = HostSample(name, True, cpu_percent=round(20 + 15 * i + 10 * math.sin(k + i), 1),
                               memory_used_percent=round(35 + 8 * i + 5 * math.cos(k + i), 1),
                               memory_total_bytes=(8 << i) * GiB // 2, disk_used_percent=50.0 + 6.25 * i,
                               containers=i % 3, at=FAKE_NOW.timestamp())
            if on_sample is not None:
                on_sample(s)
            out.append(s)
        return out

    async def run_plan(self, plan: Plan) -> GroupResult:
        self._maybe_fail("run_plan")
        self.calls.append(("run_plan", plan))
        return GroupResult([
            HostResult(c.host, Status.UNREACHABLE, error=self.unreachable[c.host]) if c.host in self.unreachable
            else HostResult(c.host, Status.OK, 0, stdout=f"{c.host} ok\n") for c in plan.commands])

    async def retag(self, plan: Plan) -> None:
        self._maybe_fail("retag")
        self.calls.append(("retag", plan))
        add, remove = plan.data.get("add", []), plan.data.get("remove", [])
        for h in self._hosts:
            if h.name in plan.hosts:
                h.tags = [t for t in h.tags if t not in remove] + [t for t in add if t not in h.tags]

    async def refresh_facts(self, names: Sequence[str]) -> GroupResult:
        self._maybe_fail("refresh_facts")
        self.calls.append(("refresh_facts", list(names)))
        return GroupResult([HostResult(n, Status.UNREACHABLE, error=self.unreachable[n]) if n in self.unreachable
                            else HostResult(n, Status.OK, 0) for n in names])

    # --- deployments -------------------------------------------------------------------
    async def apps(self) -> list[str]:
        self._maybe_fail("apps")
        return ["api", "shop"]

    async def deployments(self, app: str) -> DeployView:
        self._maybe_fail("deployments")
        self.deploy_reads += 1
        web = ["web-1", "web-2", "web-3"]
        rel = [("v1", "alice", "2026-11-20T09:00:00+00:00", 41.2, "ok"),
               ("v2", "bob", "2026-11-24T14:30:00+00:00", 38.9, "ok"),
               ("v3-rc1", "alice", "2026-11-25T10:05:00+00:00", 12.4, "failed"),
               ("v3", "carol", "2026-11-26T16:45:00+00:00", 44.0, "ok")]
        history = []
        for n, (v, who, at, dur, res) in enumerate(rel):
            hosts = {h: res for h in web}
            if res == "failed":
                hosts["web-1"] = "ok"
            history.append({"deploy_id": f"0000000{n}", "app": app, "version": v, "image": f"{app}:{v}",
                            "who": who, "strategy": "blue-green", "started_at": at, "finished_at": at,
                            "hosts": hosts, "duration": dur,
                            "result": "partial" if res == "failed" else res})
        status: dict[str, dict[str, Any]] = {}
        for h in web:
            status[h] = {"host": h, "app": app,
                         "serving": {"version": "v3", "container": f"{app}-00000003", "running": True},
                         "lock": None, "releases": [{"version": "v2", "container": f"{app}-00000001"}],
                         "strays": [], "stale": [], "notes": []}
        status["web-3"]["lock"] = {"who": "dave", "from": "laptop", "at": "2026-11-27T11:58:00+00:00",
                                   "version": "v4", "deploy_id": "0000000f", "age": "2m"}
        status["edge-1"] = {"error": self.unreachable["edge-1"]}
        return DeployView(app, history, status, None)

    async def rollback(self, plan: Plan) -> GroupResult:
        self._maybe_fail("rollback")
        self.calls.append(("rollback", plan))
        return GroupResult([HostResult(h, Status.OK, 0, value={"result": "ok"}) for h in plan.hosts])

    # --- logs --------------------------------------------------------------------------
    async def stream_logs(self, app: str, names: Sequence[str], on_line: LineCallback) -> GroupResult:
        self._maybe_fail("stream_logs")
        self.calls.append(("stream_logs", (app, list(names))))
        self.on_line, self.log_hosts = on_line, list(names)
        for i in range(3):
            for n in names:
                if n not in self.unreachable:
                    on_line(n, "v3", "stdout", f"GET /api/items/{i} 200 {3 + i}ms")
        try:
            await asyncio.Event().wait()  # follows until cancelled
        except asyncio.CancelledError:
            self.calls.append(("stream_cancelled", app))
            raise
        return GroupResult([])

    def emit(self, host: str, line: str, version: str = "v3") -> None:
        assert self.on_line is not None, "no log stream running"
        self.on_line(host, version, "stdout", line)

    async def close(self) -> None:
        self.closed = True
