"""HTTP health checks of app containers (pure): the check's settings and its result.

The probing runs ON the host (``ndhelper.py health``), from where container
addresses on the ``nextdeploy`` network are reachable. :class:`HealthCheck`
holds and validates the settings and builds the helper's arguments;
:func:`parse_health` validates the helper's JSON result into a
:class:`HealthResult`. Redirects are never followed: a 301 is a status like
any other, so ``expect`` says whether it counts as healthy.

Run it with ``ndctl.ops.helper.run_helper(runner, host, check.helper_args(container=NAME),
helper_dir=..., parse=parse_health, timeout=check.helper_timeout())``: the
result's ``value`` is the HealthResult (the helper exits 3 when unhealthy,
so the HostResult is FAILED then, with ``value`` still parsed).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ndctl.core.errors import RemoteError, UsageError
from ndctl.core.facts import _check, _load_document

HISTORY = 10
MAX_SECONDS = 3600.0
_DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")


def parse_expect(spec: str | int | list[Any] | tuple[Any, ...], field_name: str = "expect") -> tuple[tuple[int, int], ...]:
    """``"200-399"``, ``"200,204"``, ``200`` or ``[200, "300-399"]`` -> ((low, high), ...).

    Raises UsageError naming ``field_name`` and the bad part.
    """
    if isinstance(spec, bool):
        raise UsageError(f"{field_name}: not a status list: {spec!r}")
    parts: list[str]
    if isinstance(spec, int):
        parts = [str(spec)]
    elif isinstance(spec, (list, tuple)):
        parts = [str(p) for p in spec]
    elif isinstance(spec, str):
        parts = spec.split(",")
    else:
        raise UsageError(f"{field_name}: not a status list: {spec!r}")
    if not [p for p in parts if p.strip()]:
        raise UsageError(f"{field_name}: empty status list")
    out: list[tuple[int, int]] = []
    for part in parts:
        m = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", part)
        if not m:
            raise UsageError(f"{field_name}: {part.strip()!r} is not an HTTP status or a range like 200-399")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not (100 <= lo <= 599 and 100 <= hi <= 599) or lo > hi:
            raise UsageError(f"{field_name}: {part.strip()!r}: statuses are 100-599, the low one first")
        out.append((lo, hi))
    return tuple(out)


def format_expect(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 300 -> ``5m``, 1.5 -> ``1500ms``, 90 -> ``90s``."""
    if seconds == int(seconds):
        s = int(seconds)
        for unit, size in (("h", 3600), ("m", 60)):
            if s and s % size == 0:
                return f"{s // size}{unit}"
        return f"{s}s"
    return f"{round(seconds * 1000)}ms"


def cross_check(*, interval: float, timeout: float, successes: int, start_period: float,
                deadline: float) -> tuple[str, str] | None:
    """The first impossible combination of settings as ``(field, why)``, else None.

    One rule set for ``nextdeploy.yaml`` (which adds line numbers) and the type itself.
    """
    if timeout > deadline:
        return "timeout", f"per-probe timeout {format_duration(timeout)} is longer than the deadline {format_duration(deadline)}"
    if start_period >= deadline:
        return "start_period", (f"{format_duration(start_period)} is not shorter than the deadline {format_duration(deadline)}: "
                                "the check could only ever fail")
    if (successes - 1) * interval >= deadline:
        return "deadline", (f"{format_duration(deadline)} leaves no time for {successes} consecutive successes "
                            f"{format_duration(interval)} apart")
    return None


@dataclass(frozen=True)
class HealthCheck:
    """What a healthy container looks like (``nextdeploy.yaml``'s ``health_check`` and the probe
    the helper runs on the host: one type for both). Times are seconds.

    Probes start at once, one every ``interval``, each bounded by ``timeout``;
    the check passes after ``successes`` consecutive answers whose status is in
    ``status`` (default 2xx and 3xx: a login redirect is a healthy app), and
    fails at ``deadline`` (counted from the start), or early after ``failures``
    consecutive unexpected statuses (0: never early). As with Docker's
    ``--start-period``, unexpected statuses during ``start_period`` do not count
    towards ``failures`` (a booting app may answer 503), but a success counts at
    once. Refused connections (still booting) only ever fail at the deadline.
    ``port`` None: the app's port (:meth:`for_port` fills it in).
    """

    path: str = "/"
    port: int | None = None
    status: Any = ((200, 399),)  # ranges ((lo, hi), ...); "200-399", 200 or [200, "301-302"] are normalised
    host: str | None = None  # Host header (None: ADDRESS:PORT)
    interval: float = 1.0
    timeout: float = 2.0
    successes: int = 2
    failures: int = 3
    start_period: float = 0.0
    deadline: float = 60.0

    def __post_init__(self) -> None:
        if not (isinstance(self.status, tuple) and self.status
                and all(isinstance(r, tuple) and len(r) == 2 for r in self.status)):
            object.__setattr__(self, "status", parse_expect(self.status, "health_check.status"))
        self.validate()

    @property
    def expect(self) -> str:
        """The accepted statuses as the helper's ``--expect`` spells them (``200-399``)."""
        return format_expect(self.status)

    status_text = expect

    def accepts(self, code: int) -> bool:
        return any(lo <= code <= hi for lo, hi in self.status)

    def for_port(self, app_port: int) -> "HealthCheck":
        """This check with the app's port filled in when it names none."""
        return self if self.port is not None else replace(self, port=app_port)

    def validate(self, prefix: str = "health_check") -> None:
        """Raise UsageError naming the field (``prefix.field``) of the first bad value."""
        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"{prefix}.{name}: {why}")

        if self.port is not None and (isinstance(self.port, bool) or not isinstance(self.port, int)
                                      or not 1 <= self.port <= 65535):
            raise bad("port", f"must be a port number 1-65535, not {self.port!r}")
        if not isinstance(self.path, str) or not self.path.startswith("/") or _bad_text(self.path):
            raise bad("path", f"must start with / and contain no spaces or control characters, not {self.path!r}")
        if self.host is not None and (not isinstance(self.host, str) or not self.host or _bad_text(self.host)):
            raise bad("host", f"not a valid Host header: {self.host!r}")
        for name, low in (("interval", 0.0), ("timeout", 0.001), ("start_period", 0.0), ("deadline", 0.001)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= MAX_SECONDS:
                raise bad(name, f"must be a number of seconds between {low:g} and {MAX_SECONDS:g}, not {v!r}")
        for name, low in (("successes", 1), ("failures", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 1000:
                raise bad(name, f"must be a whole number between {low} and 1000, not {v!r}")
        wrong = cross_check(interval=self.interval, timeout=self.timeout, successes=self.successes,
                            start_period=self.start_period, deadline=self.deadline)
        if wrong:
            raise bad(*wrong)

    def helper_args(self, *, container: str | None = None, address: str | None = None,
                    network: str = "nextdeploy") -> list[str]:
        """Arguments of ``ndhelper.py health``: probe ``container`` (its address on ``network``,
        looked up on the host) or a known ``address``."""
        if (container is None) == (address is None):
            raise ValueError("exactly one of container or address")
        args = ["health"]
        if container is not None:
            if not _DOCKER_NAME.match(container) or not _DOCKER_NAME.match(network):
                raise UsageError(f"not a Docker container/network name: {container!r} / {network!r}")
            args += ["--container", container, "--network", network]
        else:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise UsageError(f"not an IP address: {address!r}") from None
            args += ["--address", str(address)]
        if self.port is None:
            raise ValueError("no port: for_port(app_port) first")
        args += ["--port", str(self.port), "--path", self.path]
        if self.host is not None:
            args += ["--host", self.host]
        args += ["--expect", self.expect, "--timeout", f"{self.timeout:g}",
                 "--interval", f"{self.interval:g}", "--successes", str(self.successes),
                 "--failures", str(self.failures), "--start-period", f"{self.start_period:g}",
                 "--deadline", f"{self.deadline:g}"]
        return args

    def helper_timeout(self) -> float:
        """SSH command timeout for one helper run: the deadline plus a probe and start-up margin."""
        return self.deadline + self.timeout + 30.0


def _bad_text(value: str) -> bool:
    return any(ord(c) < 33 or ord(c) == 127 for c in value)


HEALTH_SCHEMA: dict[str, Any] = {
    "ok": "bool",
    "status_history": [{"status": "int?", "error": "str?", "latency": "num"}],
    "consecutive": "int",
    "elapsed": "num",
}


@dataclass(frozen=True)
class Probe:
    status: int | None  # HTTP status, None when no answer
    error: str | None  # why there was no answer
    latency: float  # seconds until the response headers (or the error)
    ok: bool | None = None  # the status was an expected one (None: older helper did not say)
    at: float | None = None  # seconds since the check started

    def describe(self) -> str:
        what = str(self.status) if self.status is not None else (self.error or "no answer")
        return f"{what} ({self.latency * 1000:.0f} ms)"


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    status_history: tuple[Probe, ...]
    consecutive: int
    elapsed: float
    probes: int | None = None
    reason: str | None = None
    address: str | None = None
    url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def summary(self) -> str:
        """One line for humans: ``healthy after 1.2s`` / ``unhealthy: REASON; last probes: 404 (2 ms), ...``."""
        if self.ok:
            return f"healthy after {self.elapsed:g}s ({self.consecutive} consecutive successes)"
        last = ", ".join(p.describe() for p in self.status_history[-5:]) or "none"
        return f"unhealthy after {self.elapsed:g}s: {self.reason or 'no reason given'}; last probes: {last}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw) if self.raw else {
            "ok": self.ok, "consecutive": self.consecutive, "elapsed": self.elapsed,
            "status_history": [{"status": p.status, "error": p.error, "latency": p.latency}
                               for p in self.status_history],
        }


def parse_health(text: str | bytes) -> HealthResult:
    """Parse and validate the stdout of ``ndhelper.py health``. Raises RemoteError."""
    doc = _load_document(text, "health check result")
    _check(doc, HEALTH_SCHEMA, "", "health check result")
    probes = []
    for i, p in enumerate(doc["status_history"]):
        if p["status"] is not None and not 100 <= p["status"] <= 599:
            raise RemoteError(f"invalid health check result: status_history[{i}].status: "
                              f"{p['status']} is not an HTTP status")
        ok = p.get("ok")
        at = p.get("at")
        probes.append(Probe(p["status"], p["error"], float(p["latency"]),
                            ok if isinstance(ok, bool) else None,
                            float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None))
    if len(probes) > HISTORY:
        probes = probes[-HISTORY:]
    extra = {k: doc.get(k) for k in ("reason", "address", "url")}
    for k, v in extra.items():
        if v is not None and not isinstance(v, str):
            raise RemoteError(f"invalid health check result: {k}: expected a string or null")
    n = doc.get("probes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise RemoteError("invalid health check result: probes: expected a non-negative integer")
    if doc["ok"] and doc["consecutive"] < 1:
        raise RemoteError("invalid health check result: ok without a single successful probe")
    return HealthResult(doc["ok"], tuple(probes), doc["consecutive"], float(doc["elapsed"]), n,
                        extra["reason"], extra["address"], extra["url"], raw=doc)


__all__ = ["HISTORY", "HealthCheck", "HealthResult", "Probe", "format_expect", "parse_expect", "parse_health"]
