#!/usr/bin/env python3
"""Dashboard benchmark: refresh time and input latency of ``ndctl dashboard`` with 100 hosts.

Starts an ``ndctl.sandbox.SshdFleet`` (plain sshd processes on 127.0.0.x, user
``ndbench``), writes an inventory for it, and runs the real dashboard
(``DashboardApp`` + ``FleetBackend``, one long-lived Runner) headless with
``App.run_test()``:

* refresh time: the Fleet screen's background refresh of every host (the
  ``metrics`` helper on each, ``--interval`` seconds of sampling inside it),
  cold (connect, upload the helper) and warm (reused connections);
* input latency: from a key press (cursor down in the host table) to the next
  screen refresh showing it (``App.call_after_refresh``), at idle and while
  refreshes run back to back; and the event loop's worst lag meanwhile.

    python3 benchmarks/dashboard.py --quick   # 10 hosts, no report file
    python3 benchmarks/dashboard.py           # 100 hosts; writes docs/dashboard-benchmark.md

Needs root (the fleet's sshds switch to ``ndbench``) and /usr/sbin/sshd. All
traffic goes to 127.0.0.0/8. Every "host" is on this machine, so each refresh
also runs one helper process per host here, competing with the dashboard for
the same cores: an upper bound of what the laptop side costs.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from textual import events  # noqa: E402

from ndctl import sandbox  # noqa: E402
from ndctl.tui.app import DashboardApp  # noqa: E402
from ndctl.tui.backend import FleetBackend, ThreadedBackend  # noqa: E402

DEFAULT_REPORT = REPO / "docs" / "dashboard-benchmark.md"


def write_inventory(fleet, root: Path, n: int) -> Path:
    d = root / "inventory"
    d.mkdir()
    lines = ["version: 1", "settings:", f"  forks: {n}", f"  helper_dir: {root / 'helper'}", "hosts:"]
    for h in fleet.hosts[:n]:
        lines += [f"  {h.name}:", f"    address: {h.address}", f"    port: {h.port}", f"    user: {h.user}",
                  f"    identity: {h.identity}", "    tags: [bench]", f"    host_key: {h.host_key}"]
    (d / "inventory.yaml").write_text("\n".join(lines) + "\n")
    (d / "known_hosts").write_text("".join(h.known_hosts_line() + "\n" for h in fleet.hosts[:n]))
    return d / "inventory.yaml"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def measure(inventory: Path, args: argparse.Namespace, *, same_loop: bool) -> dict:
    backend = FleetBackend(inventory, metrics_interval=args.interval)
    if not same_loop:
        backend = ThreadedBackend(backend)
    app = DashboardApp(backend, refresh_seconds=0)  # the benchmark drives refreshes
    out: dict = {"refresh": [], "idle": [], "busy": [], "lag": 0.0, "unreachable": 0}
    async with app.run_test(size=(150, 50)) as pilot:
        screen = app.screen
        loop = asyncio.get_running_loop()

        async def refreshed(target: int, timeout: float = 300) -> None:
            deadline = loop.time() + timeout
            while screen.rounds < target:
                if loop.time() > deadline:
                    raise TimeoutError("refresh did not finish")
                await asyncio.sleep(0.005)

        # cold: the first refresh (started by the screen at mount) connects and uploads the helper
        t0 = time.perf_counter()
        await refreshed(1)
        out["cold"] = time.perf_counter() - t0
        cpu0 = time.process_time()
        for i in range(args.rounds):
            t0 = time.perf_counter()
            screen.refresh_data()
            await refreshed(2 + i)
            out["refresh"].append(time.perf_counter() - t0)
        out["refresh_cpu"] = (time.process_time() - cpu0) / max(1, args.rounds)
        out["unreachable"] = sum(1 for s in screen.samples.values() if not s.ok)
        out["errors"] = sorted({s.reason for s in screen.samples.values() if not s.ok})[:3]

        table = screen.query_one("#hosts")

        direction = ["down"]

        async def key_latency() -> float:
            before = table.cursor_row
            if before in (0, table.row_count - 1):
                direction[0] = "down" if before == 0 else "up"
            done = loop.create_future()
            t0 = time.perf_counter()
            # the key as the terminal driver delivers it (Pilot.press adds its own waits)
            app.post_message(events.Key(direction[0], None))
            while table.cursor_row == before:
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError("the key press was never handled")
                await asyncio.sleep(0.001)
            app.call_after_refresh(lambda: done.done() or done.set_result(time.perf_counter()))
            return await done - t0

        for _ in range(args.keys):
            out["idle"].append(await key_latency())
            await asyncio.sleep(0.01)

        # busy: refreshes back to back while keys are pressed; a lag probe watches the loop
        stop = asyncio.Event()

        async def keep_refreshing() -> None:
            while not stop.is_set():
                if not screen.sampling:
                    screen.refresh_data()
                await asyncio.sleep(0.005)

        async def lag_probe() -> None:
            while not stop.is_set():
                t = loop.time()
                await asyncio.sleep(0.01)
                out["lag"] = max(out["lag"], loop.time() - t - 0.01)

        bg = [asyncio.create_task(keep_refreshing()), asyncio.create_task(lag_probe())]
        start_round = screen.rounds
        for _ in range(args.keys):
            out["busy"].append(await key_latency())
            await asyncio.sleep(args.key_gap)
        out["busy_rounds"] = screen.rounds - start_round
        stop.set()
        await asyncio.gather(*bg)
        await refreshed(screen.rounds + (1 if screen.sampling else 0))
    return out


VARIANTS = {
    "threaded": ("ThreadedBackend (as `ndctl dashboard`)", False, False),
    "threaded-pinned": ("ThreadedBackend, fleet pinned to its own CPU", False, True),
    "same-loop": ("SSH on the UI loop (no ThreadedBackend)", True, False),
    "same-loop-pinned": ("SSH on the UI loop, fleet pinned to its own CPU", True, True),
}


def rows(n: int, results: dict[str, dict]) -> list[list[str]]:
    ms = lambda x: f"{x * 1000:.0f}"  # noqa: E731
    def line(label: str, fn) -> list[str]:
        return [label] + [fn(r) for r in results.values()]
    return [
        line("unreachable after refresh", lambda r: str(r["unreachable"])),
        line("first refresh of all hosts (connect + helper upload), s", lambda r: f"{r['cold']:.2f}"),
        line("refresh over reused connections, median / max, s",
             lambda r: f"{statistics.median(r['refresh']):.2f} / {max(r['refresh']):.2f}"),
        line("dashboard process CPU per warm refresh, s", lambda r: f"{r['refresh_cpu']:.2f}"),
        line("key -> screen update at idle, p50 / p95 / max, ms",
             lambda r: f"{ms(pct(r['idle'], 50))} / {ms(pct(r['idle'], 95))} / {ms(max(r['idle']))}"),
        line("key -> screen update during refreshes, p50 / p95 / max, ms",
             lambda r: f"{ms(pct(r['busy'], 50))} / {ms(pct(r['busy'], 95))} / {ms(max(r['busy']))}"),
        line("refreshes completed while keys were pressed", lambda r: str(r["busy_rounds"])),
        line("worst event-loop lag during refreshes, ms", lambda r: ms(r["lag"])),
    ]


def table_text(header: list[str], data: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *data]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *data])


def write_report(path: Path, header: list[str], data: list[list[str]], args: argparse.Namespace,
                 machine: dict, started: str, errors: list[str]) -> None:
    L = ["# Dashboard benchmark", "",
         f"Generated by `python3 benchmarks/dashboard.py` on {started} (UTC): the real dashboard "
         f"(`DashboardApp` + `FleetBackend`) headless, against {args.hosts} local sshds (`ndctl.sandbox.SshdFleet`). "
         "See `docs/features/dashboard.md` (Performance impact) for what the numbers mean.", "",
         "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    L += ["| " + " | ".join(row) + " |" for row in data]
    L += ["", f"Metrics sampling interval inside the helper: {args.interval} s (part of every refresh). "
          f"Per variant: {args.rounds} warm refreshes, {args.keys} key presses at idle and {args.keys} while "
          f"refreshes run back to back ({args.key_gap * 1000:.0f} ms apart). *Pinned*: the fleet's sshds and "
          "every process they start (the helpers) on the last CPU, the dashboard on the other(s), i.e. the hosts "
          "behave more like other machines; unpinned, 100 helper processes per refresh share the dashboard's CPUs.",
          "", "Machine: " + ", ".join(f"{k}: {v}" for k, v in machine.items()) + ".", ""]
    if errors:
        L += ["Unreachable reasons: " + "; ".join(errors), ""]
    path.write_text("\n".join(L))


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5, help="warm refreshes timed (default 5)")
    p.add_argument("--keys", type=int, default=100, help="key presses timed, idle and busy each (default 100)")
    p.add_argument("--key-gap", type=float, default=0.05, help="seconds between key presses while busy")
    p.add_argument("--interval", type=float, default=0.5, help="metrics sampling interval (the dashboard's 0.5)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--quick", action="store_true", help="10 hosts, 2 refreshes, 20 keys, 'threaded' only, no report")
    p.add_argument("--output", default=None, help=f"report path (default {DEFAULT_REPORT.relative_to(REPO)}; '-': none)")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts, args.rounds, args.keys, args.variants = 10, 2, 20, "threaded"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variant(s): {', '.join(unknown)}")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        variants = [v for v in variants if not VARIANTS[v][2]]
    out_path = C.report_path(args.output, args.quick, DEFAULT_REPORT)
    reason = sandbox.sshd_fleet_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    started, machine = C.now_utc(), C.machine_details()
    root = Path(tempfile.mkdtemp(prefix="ndctl-bench-dash-"))
    results: dict[str, dict] = {}
    try:
        with sandbox.SshdFleet(args.hosts) as fleet:
            inventory = write_inventory(fleet, root, args.hosts)
            for v in variants:
                label, same_loop, pinned = VARIANTS[v]
                # new connections fork new per-connection sshds, which inherit the listener's affinity
                for pid in fleet.pids:
                    os.sched_setaffinity(pid, {cores[-1]} if pinned else set(cores))
                os.sched_setaffinity(0, set(cores[:-1]) if pinned else set(cores))
                print(f"{v}: {label}", file=sys.stderr, flush=True)
                results[v] = asyncio.run(measure(inventory, args, same_loop=same_loop))
            os.sched_setaffinity(0, set(cores))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    header = [f"{args.hosts} hosts"] + variants
    data = rows(args.hosts, results)
    print(table_text(header, data))
    if out_path is not None:
        errors = sorted({e for r in results.values() for e in r.get("errors", [])})[:3]
        write_report(out_path, header, data, args, machine, started, errors)
        print(f"\nwrote {out_path}", file=sys.stderr)
    return 0 if all(r["unreachable"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
