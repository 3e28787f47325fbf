"""Pure parts of `ndctl logs`: Docker's timestamps split off and merged in time order."""
from __future__ import annotations

import pytest

from ndctl.ops.logs import LogLine, _sort_key, split_timestamp


@pytest.mark.parametrize("line,stamp,rest", [
    ("2026-11-27T12:00:00.123456789Z hello world", "2026-11-27T12:00:00.123456789Z", "hello world"),
    ("2026-11-27T12:00:00Z x", "2026-11-27T12:00:00Z", "x"),
    ("2026-11-27T12:00:00.5Z ", "2026-11-27T12:00:00.5Z", ""),
    ("no stamp here", "", "no stamp here"),
    ("", "", ""),
    ("2026 is not a stamp", "", "2026 is not a stamp"),
])
def test_split_timestamp(line: str, stamp: str, rest: str) -> None:
    assert split_timestamp(line) == (stamp, rest)


def test_merge_order_compares_fractions_as_numbers() -> None:
    xs = [LogLine("b", "v1", "stdout", "3", "2026-11-27T12:00:01Z"),
          LogLine("a", "v1", "stdout", "2", "2026-11-27T12:00:00.5Z"),
          LogLine("a", "v1", "stdout", "1", "2026-11-27T12:00:00.123456789Z")]
    assert [x.line for x in sorted(xs, key=_sort_key)] == ["1", "2", "3"]
