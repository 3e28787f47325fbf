"""ndctl's own known_hosts file (OpenSSH format) beside the inventory.

Pins are written here at registration; ``~/.ssh/known_hosts`` is read too but
never written. Writes are atomic and keep every line that is not replaced.
"""
from __future__ import annotations

from pathlib import Path

from ndctl.core.atomicfile import atomic_write


def pattern(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def read_pins(path: Path) -> dict[str, list[str]]:
    """pattern -> ['ssh-ed25519 AAAA...', ...]"""
    pins: dict[str, list[str]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return pins
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or line.lstrip().startswith("#"):
            continue
        for pat in parts[0].split(","):
            pins.setdefault(pat, []).append(f"{parts[1]} {parts[2]}")
    return pins


def set_pin(path: Path, address: str, port: int, key_line: str, comment: str = "") -> None:
    """Replace every pin for ``address:port`` with ``key_line``."""
    pat = pattern(address, port)
    kept: list[str] = []
    try:
        for line in path.read_text().splitlines():
            first = line.split()[0] if line.split() else ""
            if pat in first.split(",") and not line.lstrip().startswith("#"):
                continue
            kept.append(line)
    except FileNotFoundError:
        pass
    kept.append(f"{pat} {key_line}" + (f" {comment}" if comment else ""))
    _write(path, "\n".join(kept) + "\n")


def remove_pin(path: Path, address: str, port: int) -> None:
    pat = pattern(address, port)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    kept = [ln for ln in lines if not (ln.split() and pat in ln.split()[0].split(","))]
    if kept != lines:
        _write(path, "\n".join(kept) + ("\n" if kept else ""))


def _write(path: Path, text: str) -> None:
    atomic_write(path, text, 0o600)
