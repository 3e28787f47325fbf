"""Where the shipped ``playbooks/`` and ``templates/`` are: the source tree (a checkout or an
editable install), else ``<prefix>/share/ndctl`` (a wheel's data files)."""
from __future__ import annotations

import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def data_dir(name: str, *, source_root: Path = SOURCE_ROOT, prefixes: tuple[str, ...] | None = None) -> Path:
    """The directory ``name`` (``playbooks`` or ``templates``); the source tree's when it is there."""
    src = source_root / name
    if src.is_dir():
        return src
    for prefix in prefixes if prefixes is not None else (sys.prefix, sys.base_prefix):
        installed = Path(prefix) / "share" / "ndctl" / name
        if installed.is_dir():
            return installed
    return src  # missing everywhere: the error that follows names the expected path
