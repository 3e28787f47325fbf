"""playbooks/ and templates/ are found in a checkout and in a wheel install."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from ndctl.resources import SOURCE_ROOT, data_dir


def test_source_tree_first(tmp_path: Path) -> None:
    assert data_dir("playbooks") == SOURCE_ROOT / "playbooks" and (SOURCE_ROOT / "playbooks/prepare.yaml").exists()
    (tmp_path / "share/ndctl/playbooks").mkdir(parents=True)
    # no source tree (a wheel install): the prefix's share/ndctl
    assert data_dir("playbooks", source_root=tmp_path / "site-packages", prefixes=(str(tmp_path),)) == \
        tmp_path / "share/ndctl/playbooks"
    assert data_dir("templates", source_root=tmp_path / "x", prefixes=(str(tmp_path),)) == tmp_path / "x/templates"


def test_the_wheel_carries_playbooks_and_templates(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                        str(SOURCE_ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("ndctl-*.whl"))).namelist()
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    assert "share/ndctl/playbooks/prepare.yaml" in data
    assert {f"share/ndctl/templates/actions/{p.name}" for p in (SOURCE_ROOT / "templates/actions").glob("*.j2")} <= data
    assert "ndctl/helper/ndhelper.py" in names
