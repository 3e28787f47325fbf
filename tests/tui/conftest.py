"""Helpers for the dashboard's Pilot and snapshot tests (fake backend, fixed terminal size)."""
from __future__ import annotations

import asyncio
import inspect
from typing import Callable

import pytest

from ndctl.tui.app import DashboardApp
from ndctl.tui.fake import FakeBackend

SIZE = (150, 36)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run ``async def`` tests here in a fresh event loop (what pytest-asyncio would do, without the plugin)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True


async def until(pilot, cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the app run until ``cond()`` holds (fails the test after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await pilot.pause(0.02)
    await pilot.pause()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def make_app(backend) -> Callable[..., DashboardApp]:
    def make(**kw) -> DashboardApp:
        kw.setdefault("refresh_seconds", 0)  # tests drive refreshes themselves
        return DashboardApp(backend, **kw)
    return make


@pytest.fixture(name="until")
def until_fixture():
    return until
