"""The deploy benchmark's split of a deploy's wall time (benchmarks/deploy.py), from a made-up report."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("deploy_benchmark", ROOT / "benchmarks" / "deploy.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # its dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _host(name: str, steps: dict[str, float], switched: bool = True) -> dict:
    return {"host": name, "value": {"steps": [{"action": a, "seconds_taken": s} for a, s in steps.items()],
                                    "switched_at": "2026-11-27T00:00:00Z" if switched else None}}


def test_side_by_side_steps_count_once_and_pipelined_bookkeeping_only_for_the_last_batch(bench) -> None:
    doc = {"batches": [["a"], ["b"]], "hosts": [
        _host("a", {"ensure-proxy": 0.20, "lock": 0.30, "start": 0.4, "health-check": 0.3, "switch": 0.05,
                    "write-current": 0.02, "prune": 0.06, "unlock": 0.01}),
        _host("b", {"ensure-proxy": 0.35, "lock": 0.25, "start": 0.5, "health-check": 0.3, "switch": 0.04,
                    "write-current": 0.03, "prune": 0.04, "unlock": 0.02}),
    ]}
    d = bench.Deploy("x", "img", 0.0, 3.0, 2.5, 0.0, 0, doc)
    assert d.boot_health == pytest.approx(0.7 + 0.8)
    assert d.switch == pytest.approx(0.05 + 0.04)
    assert d.step_seconds("bookkeeping") == pytest.approx(0.04)  # b's slowest; a's ran during b's batch
    assert d.step_seconds("unlock") == pytest.approx(0.02)
    # ensure-proxy and lock overlap on each host: the longer per host (a 0.30, b 0.35), the slowest host
    assert d.outside_steps == pytest.approx(2.5 - 0.35 - 1.5 - 0.09 - 0.04 - 0.02)
    assert d.overhead == pytest.approx(2.5 - 1.5)
