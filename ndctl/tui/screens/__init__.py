"""The dashboard's screens: one module each, listed once in :data:`REGISTRY`.

A later issue adds a screen (secrets audit, alerts, ...) by writing a module with a
:class:`~ndctl.tui.screens.base.DashScreen` subclass and adding one entry here;
the app builds its modes, switch keys, help and palette entries from this list.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ScreenEntry:
    name: str  # the app mode
    key: str  # the global key that shows it
    title: str
    target: str  # "module:Class"

    def load(self) -> type:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


REGISTRY: tuple[ScreenEntry, ...] = (
    ScreenEntry("fleet", "1", "Fleet", "ndctl.tui.screens.fleet:FleetScreen"),
    ScreenEntry("deployments", "2", "Deployments", "ndctl.tui.screens.deployments:DeploymentsScreen"),
    ScreenEntry("logs", "3", "Logs", "ndctl.tui.screens.logs:LogsScreen"),
)
