"""Typed errors and the exit statuses they map to (one place, like HTTPie)."""
from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ndctl.core.results import GroupResult, HostResult


class ExitStatus(IntEnum):
    """Process exit statuses of the ``ndctl`` command. Documented in the README."""

    OK = 0
    ERROR = 1  # unexpected internal error
    USAGE = 2  # bad arguments, bad selector, invalid input file
    HOST_FAILED = 3  # a command exited non-zero on at least one host
    UNREACHABLE = 4  # at least one host could not be reached (takes precedence over 3)
    NOT_FOUND = 5  # unknown agent, selector matching no host
    HOST_KEY = 6  # host key unknown, refused or changed
    AUTH = 7  # authentication failed
    CONFLICT = 8  # refused because of state (e.g. name clash, lock held)
    INTERRUPTED = 130


class NdctlError(Exception):
    """Base class: every error ndctl raises on purpose carries an exit status."""

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(NdctlError):
    exit_status = ExitStatus.USAGE


class SelectorError(UsageError):
    """A selector expression that does not parse."""


class InventoryError(UsageError):
    """An inventory file that cannot be read or would be invalid."""


class NotFoundError(NdctlError):
    exit_status = ExitStatus.NOT_FOUND


class NoHostsMatched(NotFoundError):
    def __init__(self, selector: str) -> None:
        super().__init__(
            f"selector {selector!r} matches no host",
            hint="`ndctl agent list` shows the hosts and their tags",
        )
        self.selector = selector


class ConflictError(NdctlError):
    exit_status = ExitStatus.CONFLICT


class HostKeyError(NdctlError):
    exit_status = ExitStatus.HOST_KEY


class HostKeyChanged(HostKeyError):
    def __init__(self, host: str, pinned: str, presented: str) -> None:
        super().__init__(
            f"host key of {host} has CHANGED: pinned {pinned}, presented {presented}",
            hint="if the host was reinstalled, verify the new key out of band and "
            "re-register with --trust-host-key",
        )
        self.pinned = pinned
        self.presented = presented


class AuthError(NdctlError):
    exit_status = ExitStatus.AUTH


class HostUnreachable(NdctlError):
    exit_status = ExitStatus.UNREACHABLE


class RemoteError(NdctlError):
    """A remote step failed; carries the per-host result that caused it."""

    exit_status = ExitStatus.HOST_FAILED

    def __init__(self, message: str, result: "HostResult | None" = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.result = result


class GroupError(NdctlError):
    """Some hosts of a fan-out failed or were unreachable; carries the group result."""

    def __init__(self, result: "GroupResult") -> None:
        self.result = result
        super().__init__(result.summary_line())
        self.exit_status = result.exit_status()
