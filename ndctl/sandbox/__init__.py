"""Real test hosts for ndctl's tests, benchmarks and README demo.

Two kinds, both described by :class:`TestHost`:

* container hosts (:func:`start_container_hosts`, :func:`up`): a Debian
  bookworm container with its own sshd, filesystem and Docker engine, sshd
  published on a random 127.0.0.1 port, logging in as root with a key;
* :class:`SshdFleet`: many cheap plain sshd processes on 127.0.0.2, .3, ...
  of this machine, logging in as ``ndbench``.

Synchronous, stdlib only: drives the ``docker``, ``ssh-keygen`` and ``sshd``
binaries with subprocess (no asyncssh). Needs root.
"""
from ._util import CommandError, SandboxError
from .containers import (
    LABEL,
    container_hosts_unavailable_reason,
    group_in_use,
    group_lock,
    list_group,
    start_container_hosts,
    stop_group,
    stop_group_if_unused,
)
from .fleet import (
    SshdFleet,
    cleanup_stale_fleets,
    ensure_bench_user,
    loopback_address,
    sshd_fleet_unavailable_reason,
)
from .appimages import BUSYBOX_REF, build_web_image, busybox_rootfs_tar, import_busybox
from .hosts import ExecError, TestHost, write_known_hosts, write_ssh_config
from .image import ensure_image, image_ref
from .sandbox import DEFAULT_WORKDIR, SANDBOX_GROUP, HostStatus, down, status, up

__all__ = [
    "BUSYBOX_REF", "build_web_image", "busybox_rootfs_tar", "import_busybox",
    "CommandError",
    "DEFAULT_WORKDIR",
    "ExecError",
    "HostStatus",
    "LABEL",
    "SANDBOX_GROUP",
    "SandboxError",
    "SshdFleet",
    "TestHost",
    "cleanup_stale_fleets",
    "container_hosts_unavailable_reason",
    "down",
    "ensure_bench_user",
    "ensure_image",
    "group_in_use",
    "group_lock",
    "image_ref",
    "list_group",
    "loopback_address",
    "sshd_fleet_unavailable_reason",
    "start_container_hosts",
    "status",
    "stop_group",
    "stop_group_if_unused",
    "up",
    "write_known_hosts",
    "write_ssh_config",
]
