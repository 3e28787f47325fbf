"""One way to replace a local file: write a temporary file beside it, fsync, then rename,
so a reader (or a crash) sees the old content or the new one, never a part."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o600, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``text`` (its directory made 0700 if missing); ``mode`` for the new file.

    ``fsync`` False for caches, whose loss costs only a re-read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
