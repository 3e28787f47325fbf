"""Auto-tags: tags every host gets from its facts (pure).

Auto-tags are recomputed from the facts each time they are collected and can
be used in selectors like hand-written tags.  The list is sorted and
deterministic.

=================  ==========================================================
Tag                When
=================  ==========================================================
``amd64``,         The CPU architecture.  ``amd64`` for x86_64, ``arm64``
``arm64``, ...     for aarch64; any other architecture gives the raw
                   ``uname -m`` lowercased (e.g. ``riscv64``, ``armv7l``).
``high-mem``       Total memory (``MemTotal``) >= ``high_mem_gib`` GiB
                   (default **32**).  The kernel reports a little less than
                   the installed RAM (a 32 GiB machine shows ~31.3 GiB), so
                   set e.g. ``high_mem_gib: 30`` to include 32 GiB machines.
``gpu-enabled``    An NVIDIA or AMD GPU is present.  Other display
                   controllers (a server BMC's ASPEED VGA, an Intel iGPU,
                   virtual VGA) do not count.
``nvidia``         An NVIDIA GPU is present.
``amd-gpu``        An AMD GPU is present.
``docker``         The Docker engine is installed **and** running (the
                   helper could talk to it).  Not set when ``dockerd`` is
                   stopped or the SSH user may not use its socket.
``low-disk``       The root filesystem ("/", else the largest one) has less
                   than ``low_disk_free_percent`` percent (default **10**)
                   **or** less than ``low_disk_free_gib`` GiB (default **5**)
                   free.  "Free" is the space available to unprivileged
                   users, as ``df`` shows it.  Set a threshold to 0 to
                   disable that half of the test.
``os-<id>``        The ``ID`` of ``/etc/os-release``: ``os-debian``,
                   ``os-ubuntu``, ``os-rocky``, ``os-alpine`` ... (not set
                   when the host has no os-release, i.e. the id is
                   ``linux``).
=================  ==========================================================

Tags are lowercased; characters other than ``a-z 0-9 . _ -`` become ``-``.

The thresholds come from the ``autotags:`` mapping of the inventory::

    autotags:
      high_mem_gib: 64
      low_disk_free_percent: 15
      low_disk_free_gib: 20

Unknown keys, non-numeric and negative values are rejected
(``low_disk_free_percent`` must also be <= 100).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ndctl.core.errors import InventoryError
from ndctl.core.facts import GiB, Facts

KNOWN_ARCHES = frozenset({"amd64", "arm64"})
_UNSAFE = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class AutoTagThresholds:
    high_mem_gib: float = 32.0
    low_disk_free_percent: float = 10.0
    low_disk_free_gib: float = 5.0

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> AutoTagThresholds:
        """Thresholds from the inventory's ``autotags:`` mapping (None -> defaults)."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise InventoryError(f"autotags: expected a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        values: dict[str, float] = {}
        for key, value in d.items():
            if key not in known:
                raise InventoryError(f"autotags.{key}: unknown key (known: {', '.join(sorted(known))})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InventoryError(f"autotags.{key}: expected a number, got {value!r}")
            if value < 0:
                raise InventoryError(f"autotags.{key}: must not be negative, got {value!r}")
            if key == "low_disk_free_percent" and value > 100:
                raise InventoryError(f"autotags.{key}: must be a percentage (0-100), got {value!r}")
            values[key] = float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _clean(tag: str) -> str:
    return _UNSAFE.sub("-", tag.lower()).strip("-")


def compute_auto_tags(facts: Facts, thresholds: AutoTagThresholds | None = None) -> list[str]:
    """The auto-tags of a host (sorted).  See the module docstring for the rules."""
    t = thresholds or AutoTagThresholds()
    tags: set[str] = set()

    arch = facts.arch if facts.arch in KNOWN_ARCHES else facts.machine
    if arch and _clean(arch):
        tags.add(_clean(arch))

    total = facts.memory_total_bytes
    if total is not None and total >= t.high_mem_gib * GiB:
        tags.add("high-mem")

    vendors = {g.vendor for g in facts.compute_gpus}
    if vendors:
        tags.add("gpu-enabled")
    if "nvidia" in vendors:
        tags.add("nvidia")
    if "amd" in vendors:
        tags.add("amd-gpu")

    if facts.docker_installed and facts.docker_running:
        tags.add("docker")

    root = facts.root_disk
    if root is not None and root.total_bytes > 0:
        if root.free_percent < t.low_disk_free_percent or root.free_bytes < t.low_disk_free_gib * GiB:
            tags.add("low-disk")

    os_id = _clean(facts.os_id or "")
    if os_id and os_id != "linux":
        tags.add(f"os-{os_id}")

    return sorted(tags)


__all__ = ["AutoTagThresholds", "compute_auto_tags"]
