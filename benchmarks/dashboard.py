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


async def measure(inventory: Path, args: argparse.Namespace) -> dict:
    backend = FleetBackend(inventory, metrics_interval=args.interval)
    if not args.same_loop:
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


def rows(n: int, r: dict) -> list[list[str]]:
    ms = lambda x: f"{x * 1000:.0f}"  # noqa: E731
    return [
        ["hosts", str(n)],
        ["unreachable after refresh", str(r["unreachable"])],
        ["first refresh (connect + helper upload), s", f"{r['cold']:.2f}"],
        ["refresh over reused connections, median / max, s",
         f"{statistics.median(r['refresh']):.2f} / {max(r['refresh']):.2f}"],
        ["dashboard process CPU per warm refresh, s", f"{r['refresh_cpu']:.2f}"],
        ["key -> screen update at idle, p50 / p95 / max, ms",
         f"{ms(pct(r['idle'], 50))} / {ms(pct(r['idle'], 95))} / {ms(max(r['idle']))}"],
        ["key -> screen update during refreshes, p50 / p95 / max, ms",
         f"{ms(pct(r['busy'], 50))} / {ms(pct(r['busy'], 95))} / {ms(max(r['busy']))}"],
        ["refreshes completed while keys were pressed", str(r["busy_rounds"])],
        ["worst event-loop lag during refreshes, ms", ms(r["lag"])],
    ]


def table_text(data: list[list[str]]) -> str:
    w = max(len(k) for k, _ in data)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in data)


def write_report(path: Path, n: int, r: dict, args: argparse.Namespace, machine: dict, started: str) -> None:
    L = ["# Dashboard benchmark", "",
         f"Generated by `python3 benchmarks/dashboard.py` on {started} (UTC). "
         "See `docs/features/dashboard.md` (Performance impact) for what the numbers mean.", "",
         "| measure | value |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in rows(n, r)]
    L += ["", f"Metrics sampling interval inside the helper: {args.interval} s (part of every refresh). "
          f"{args.rounds} warm refreshes, {args.keys} key presses at idle and {args.keys} during refreshes "
          f"({args.key_gap * 1000:.0f} ms apart).", "",
          "Machine: " + ", ".join(f"{k}: {v}" for k, v in machine.items()) + ".", ""]
    if r.get("errors"):
        L += ["Unreachable reasons: " + "; ".join(r["errors"]), ""]
    path.write_text("\n".join(L))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5, help="warm refreshes timed (default 5)")
    p.add_argument("--keys", type=int, default=100, help="key presses timed, idle and busy each (default 100)")
    p.add_argument("--key-gap", type=float, default=0.05, help="seconds between key presses while busy")
    p.add_argument("--interval", type=float, default=0.5, help="metrics sampling interval (the dashboard's 0.5)")
    p.add_argument("--same-loop", action="store_true",
                   help="run the SSH work on the UI's event loop (no ThreadedBackend), for comparison")
    p.add_argument("--pin", action="store_true",
                   help="pin the fleet's sshds (and the helpers they start) to the last CPU, the dashboard to the rest")
    p.add_argument("--quick", action="store_true", help="10 hosts, 2 refreshes, 20 keys, no report file")
    p.add_argument("--output", default=None, help=f"report path (default {DEFAULT_REPORT.relative_to(REPO)}; '-': none)")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts, args.rounds, args.keys = 10, 2, 20
    out_path = C.report_path(args.output, args.quick, DEFAULT_REPORT)
    reason = sandbox.sshd_fleet_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    started, machine = C.now_utc(), C.machine_details()
    root = Path(tempfile.mkdtemp(prefix="ndctl-bench-dash-"))
    try:
        with sandbox.SshdFleet(args.hosts) as fleet:
            inventory = write_inventory(fleet, root, args.hosts)
            if args.pin:  # the "hosts" on the last core, the dashboard on the others: hosts as other machines
                import os

                cores = sorted(os.sched_getaffinity(0))
                for pid in fleet.pids:
                    os.sched_setaffinity(pid, {cores[-1]})
                os.sched_setaffinity(0, set(cores[:-1]) or {cores[0]})
            r = asyncio.run(measure(inventory, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    data = rows(args.hosts, r)
    print(table_text(data))
    if out_path is not None:
        write_report(out_path, args.hosts, r, args, machine, started)
        print(f"\nwrote {out_path}", file=sys.stderr)
    return 0 if r["unreachable"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
