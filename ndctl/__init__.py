"""ndctl (NextDeploy): deploy and operate a fleet of Docker hosts over plain SSH."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Fleet", "FleetSession", "Inventory", "Host", "GroupResult", "HostResult", "Status", "__version__"]


def __getattr__(name: str):  # lazy: `import ndctl` must not pull asyncssh into the pure core's users
    if name in ("Fleet", "FleetSession"):
        from ndctl import api
        return getattr(api, name)
    if name in ("Inventory", "Host"):
        from ndctl.core import inventory
        return getattr(inventory, name)
    if name in ("GroupResult", "HostResult", "Status"):
        from ndctl.core import results
        return getattr(results, name)
    raise AttributeError(name)
