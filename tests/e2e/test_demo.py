"""The README's first command (`ndctl sandbox demo`) end to end: a sandbox of 2 hosts is
started, registered, prepared, an app is deployed blue-green twice and served through Caddy."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ndctl import sandbox

pytestmark = pytest.mark.e2e

GROUP, PREFIX = "ndctl-pytest-sbx", "ndt-demo-"  # conftest.DEPENDENT_GROUPS: never the user's sandbox


def test_the_demo_deploys_twice_and_serves_through_the_proxy(container_hosts, tmp_path: Path) -> None:
    # (container_hosts: the capability check and the session lock that guards GROUP)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NDCTL_")}
    env.update(HOME=str(home), NDCTL_SANDBOX_GROUP=GROUP, NDCTL_SANDBOX_PREFIX=PREFIX, COLUMNS="200",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    try:
        r = subprocess.run([sys.executable, "-m", "ndctl", "sandbox", "demo", "--hosts", "2",
                            "--dir", str(tmp_path / "sbx"), "--down"],
                           env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-4000:]
        for h in ("ndt-demo-1", "ndt-demo-2"):
            assert f"{h} | hello from demo-web v1" in out and f"{h} | hello from demo-web v2" in out
            assert f"{h}: ok, serving demo-web v2 from nd-demo-web-" in out
        assert "sandbox removed" in out and sandbox.list_group(GROUP) == []
    finally:
        sandbox.stop_group(GROUP)
