"""The remote helper, as seen from the controller side.

``ndhelper.py`` next to this file is NOT imported here: it is a standalone,
stdlib-only script for python3 >= 3.6 that ndctl uploads to each host as
``/var/lib/nextdeploy/helper-<hash>.py`` (``<hash>`` = :func:`helper_hash`) and
runs as ``python3 <that path> SUBCOMMAND [args]``.  Because the name carries
the content hash, an upload is only needed when the file changed.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

HELPER_PATH: Path = Path(__file__).resolve().parent / "ndhelper.py"
"""Local path of the helper script."""

HELPER_HASH_LEN = 16
REMOTE_HELPER_DIR = "/var/lib/nextdeploy"


@functools.lru_cache(maxsize=1)
def helper_source() -> bytes:
    """The helper script's bytes, exactly as they are uploaded."""
    return HELPER_PATH.read_bytes()


@functools.lru_cache(maxsize=1)
def helper_hash() -> str:
    """First 16 hex chars of the sha256 of :func:`helper_source`."""
    return hashlib.sha256(helper_source()).hexdigest()[:HELPER_HASH_LEN]


def remote_helper_path() -> str:
    """Where the helper lives on a host: ``/var/lib/nextdeploy/helper-<hash>.py``."""
    return f"{REMOTE_HELPER_DIR}/helper-{helper_hash()}.py"


__all__ = ["HELPER_PATH", "REMOTE_HELPER_DIR", "helper_hash", "helper_source", "remote_helper_path"]
