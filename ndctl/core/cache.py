"""Laptop-side caches (facts, last seen). Disposable: the hosts are the truth.

One JSON file per agent under ``<inventory dir>/cache/agents/<id>.json`` so
that a cron refresh and an operator's command never rewrite each other's hosts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ndctl.core.atomicfile import atomic_write


@dataclass
class AgentCache:
    facts: dict[str, Any] | None = None
    last_seen: float | None = None  # epoch seconds of the last successful contact
    last_error: str | None = None
    last_attempt: float | None = None


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, agent_id: str) -> Path:
        return self.root / "agents" / f"{agent_id}.json"

    def get(self, agent_id: str) -> AgentCache:
        try:
            data = json.loads(self._path(agent_id).read_text())
        except (OSError, ValueError):
            return AgentCache()  # a missing or corrupt cache entry is just a cache miss
        return AgentCache(
            facts=data.get("facts"),
            last_seen=data.get("last_seen"),
            last_error=data.get("last_error"),
            last_attempt=data.get("last_attempt"),
        )

    def put(self, agent_id: str, entry: AgentCache) -> None:
        atomic_write(self._path(agent_id), json.dumps(entry.__dict__, indent=1, sort_keys=True), 0o600,
                     fsync=False)

    def drop(self, agent_id: str) -> None:
        self._path(agent_id).unlink(missing_ok=True)
