"""HostResult.reason: the one phrase every failure message is built from."""
from __future__ import annotations

import pytest

from ndctl.core.results import HostResult, Status


@pytest.mark.parametrize("result, reason", [
    (HostResult("h", Status.UNREACHABLE, error="connection refused", stderr="ignored"), "connection refused"),
    (HostResult("h", Status.FAILED, 1, stderr="  docker: no such image\n"), "docker: no such image"),
    (HostResult("h", Status.FAILED, 3, stderr=" \n"), "exit status 3"),
    (HostResult("h", Status.FAILED, None), "no exit status"),  # the channel ended without one
])
def test_reason(result: HostResult, reason: str) -> None:
    assert result.reason == reason
