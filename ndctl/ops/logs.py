"""``ndctl logs``: an app's container logs from many hosts, merged, following across deploys."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Callable

from ndctl.commands import docker
from ndctl.commands.shell import for_host
from ndctl.core.inventory import Host
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.transport.ssh import Runner

LineCallback = Callable[[str, str, str, str], None]  # (host, version, stream, line)


def parse_containers(text: str) -> list[dict]:
    """``docker container inspect`` lines (docker.INSPECT_FORMAT) -> dicts, skipping blank lines."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def app_containers(runner: Runner, host: Host, app: str) -> tuple[HostResult, list[dict]]:
    r = await runner.run(host, for_host(docker.list_app_containers(app), host))
    if not r.ok:
        return r, []
    try:
        return r, parse_containers(r.stdout)
    except ValueError as e:
        r.status, r.error = Status.FAILED, f"unreadable container list: {e}"
        return r, []


async def stream_logs(runner: Runner, hosts: list[Host], app: str, on_line: LineCallback, *,
                      follow: bool = False, since: str | None = None, tail: int | str | None = None,
                      timestamps: bool = False, poll_interval: float = 2.0) -> GroupResult:
    """Logs of the app's running containers on every host; without ``follow``, each host's
    ``value`` is how many containers it read.

    With ``follow`` it keeps polling for containers that appear later (a deploy's
    green) and follows each from its own start, so a switch never loses lines;
    followers of stopped containers end by themselves. Runs until cancelled.
    """

    async def per_host(h: Host) -> HostResult:
        followed: dict[str, asyncio.Task] = {}
        first = True
        while True:
            r, containers = await app_containers(runner, h, app)
            if not r.ok:
                return r
            running = [c for c in containers if c.get("running")]
            if first and not running and not follow:
                return HostResult(h.name, Status.OK, 0, value=0)
            for c in running:
                name = c["name"].lstrip("/")
                if name in followed:
                    continue
                version = (c.get("labels") or {}).get(docker.LABEL_VERSION, "?")
                # A container that appeared after we started: from its own start, not from `tail`.
                start_since = since if first else c.get("started_at")
                argv = docker.logs(name, follow=follow, since=start_since,
                                   tail=tail if first else None, timestamps=timestamps)
                followed[name] = asyncio.create_task(runner.run(
                    h, for_host(argv, h),
                    on_output=lambda _h, stream, line, v=version: on_line(h.name, v, stream, line)))
            first = False
            if not follow:
                results = await asyncio.gather(*followed.values())
                bad = [x for x in results if not x.ok]
                return bad[0] if bad else HostResult(h.name, Status.OK, 0, value=len(followed))
            await asyncio.sleep(poll_interval)

    return await runner.fan_out(hosts, per_host, forks=len(hosts) or 1)


@dataclass(frozen=True)
class LogLine:
    host: str
    version: str
    stream: str  # stdout | stderr
    line: str  # without Docker's timestamp
    time: str  # Docker's RFC 3339 timestamp (nanoseconds, UTC), "" when the line had none

    def to_dict(self) -> dict[str, str]:
        return {"time": self.time, "host": self.host, "version": self.version, "stream": self.stream,
                "line": self.line}


def split_timestamp(line: str) -> tuple[str, str]:
    """``docker logs --timestamps`` line -> (timestamp, rest); ("", line) when it has none."""
    stamp, sep, rest = line.partition(" ")
    if sep and len(stamp) >= 20 and stamp[4:5] == "-" and stamp[10:11] == "T" and stamp.endswith("Z"):
        return stamp, rest
    return "", line


def log_line(host: str, version: str, stream: str, raw: str) -> LogLine:
    """A ``stream_logs(timestamps=True)`` callback's arguments as a LogLine."""
    stamp, text = split_timestamp(raw)
    return LogLine(host, version, stream, text, stamp)


def _sort_key(x: LogLine) -> str:
    # RFC 3339 in UTC with Docker's fixed 9-digit fraction sorts as text once padded.
    head, _, frac = x.time.rstrip("Z").partition(".")
    return f"{head}.{frac:0<9}" if x.time else ""


async def collect_logs(runner: Runner, hosts: list[Host], app: str, *, since: str | None = None,
                       tail: int | str | None = None) -> tuple[GroupResult, list[LogLine], int]:
    """Every host's lines at once, merged by Docker's timestamps (oldest first), plus how many
    running containers were read; for a one-off read (``stream_logs(follow=True)`` streams)."""
    lines: list[LogLine] = []

    result = await stream_logs(runner, hosts, app, lambda *a: lines.append(log_line(*a)), since=since, tail=tail, timestamps=True)
    lines.sort(key=_sort_key)  # stable: a host's own order stays for equal stamps
    return result, lines, sum(r.value or 0 for r in result if r.ok)
