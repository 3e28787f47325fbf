"""Save an SVG of each dashboard screen (fake backend): ``python -m ndctl.tui.screenshots [DIR]``.

The README shows these; regenerate them after a visible change.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Awaitable, Callable

from ndctl.tui.app import DashboardApp
from ndctl.tui.fake import FakeBackend

SIZE = (150, 36)


async def _wait(pilot, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond() and loop.time() < deadline:
        await pilot.pause(0.02)
    await pilot.pause()


async def prepare_fleet(pilot) -> None:
    screen = pilot.app.screen
    for n in range(1, 13):  # a dozen samples for the history plots
        await _wait(pilot, lambda: not screen.sampling)
        if n > 1:
            screen.refresh_data()
    await _wait(pilot, lambda: not screen.sampling)
    await pilot.press("space", "space")


async def prepare_deployments(pilot) -> None:
    await _wait(pilot, lambda: getattr(pilot.app.screen, "view", None) is not None)


async def prepare_logs(pilot) -> None:
    screen = pilot.app.screen
    await _wait(pilot, lambda: len(screen.buffer) >= 15)
    backend = pilot.app.backend
    backend.emit("web-2", "POST /api/cart 500 ERROR upstream timeout")
    backend.emit("db-1", "checkpoint complete: wrote 312 buffers")
    await pilot.pause()


SCREENS: dict[str, tuple[str, Callable[..., Awaitable[None]]]] = {
    "fleet": ("fleet", prepare_fleet),
    "deployments": ("deployments", prepare_deployments),
    "logs": ("logs", prepare_logs),
}


async def save(name: str, out: Path) -> Path:
    mode, prepare = SCREENS[name]
    app = DashboardApp(FakeBackend(), refresh_seconds=0, start=mode, app_name="shop")
    async with app.run_test(size=SIZE) as pilot:
        await prepare(pilot)
        app.save_screenshot(f"dashboard-{name}.svg", path=str(out))
    return out / f"dashboard-{name}.svg"


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:] or ["docs/screenshots"])[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in SCREENS:
        print(asyncio.run(save(name, out)))


if __name__ == "__main__":
    main()
