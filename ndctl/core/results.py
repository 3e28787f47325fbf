"""Per-host results gathered into one group result (after Fabric's GroupResult)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterator

from ndctl.core.errors import ExitStatus


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"  # ran, exited non-zero
    UNREACHABLE = "unreachable"  # never ran: connect, auth or host-key failure


@dataclass
class HostResult:
    host: str
    status: Status
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    error: str | None = None  # why it was unreachable (or what failed locally)
    exit_status: ExitStatus | None = None  # for unreachable: the typed cause
    value: Any = None  # parsed payload of a step (facts, metrics ...)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def reason(self) -> str:
        """Why it failed, in one phrase: the transport's error, else the command's stderr, else its status."""
        status = "no exit status" if self.exit_code is None else f"exit status {self.exit_code}"
        return self.error or self.stderr.strip() or status

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "host": self.host,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration": round(self.duration, 4),
        }
        if self.error is not None:
            d["error"] = self.error
        if self.value is not None:
            d["value"] = self.value
        return d


@dataclass
class GroupResult:
    results: list[HostResult] = field(default_factory=list)

    def __iter__(self) -> Iterator[HostResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, host: str) -> HostResult:
        for r in self.results:
            if r.host == host:
                return r
        raise KeyError(host)

    def by_status(self, status: Status) -> list[HostResult]:
        return [r for r in self.results if r.status is status]

    @property
    def succeeded(self) -> list[HostResult]:
        return self.by_status(Status.OK)

    @property
    def failed(self) -> list[HostResult]:
        return self.by_status(Status.FAILED)

    @property
    def unreachable(self) -> list[HostResult]:
        return self.by_status(Status.UNREACHABLE)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def counts(self) -> dict[str, int]:
        return {s.value: len(self.by_status(s)) for s in Status}

    def summary_line(self) -> str:
        c = self.counts()
        return f"{len(self)} hosts: {c['ok']} ok, {c['failed']} failed, {c['unreachable']} unreachable"

    def exit_status(self) -> ExitStatus:
        """Unreachable wins over failed: a host that never ran is the worse surprise."""
        if self.unreachable:
            causes = {r.exit_status for r in self.unreachable}
            if causes == {ExitStatus.HOST_KEY}:
                return ExitStatus.HOST_KEY
            if causes == {ExitStatus.AUTH}:
                return ExitStatus.AUTH
            return ExitStatus.UNREACHABLE
        if self.failed:
            return ExitStatus.HOST_FAILED
        return ExitStatus.OK

    def raise_on_error(self) -> "GroupResult":
        from ndctl.core.errors import GroupError

        if not self.ok:
            raise GroupError(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.counts(),
            "hosts": [r.to_dict() for r in self.results],
        }
