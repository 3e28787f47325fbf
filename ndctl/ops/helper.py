"""Run the on-demand helper on a host: check and run in one round trip, upload only when missing."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ndctl.commands.helper import MISSING, NO_PYTHON, run_argv, upload_argv
from ndctl.commands.shell import for_host
from ndctl.core.errors import RemoteError
from ndctl.core.facts import parse_facts, parse_metrics
from ndctl.core.inventory import Host
from ndctl.core.results import HostResult, Status
from ndctl.helper import helper_hash, helper_source
from ndctl.transport.ssh import Runner


async def run_helper(runner: Runner, host: Host, args: Sequence[str], *, helper_dir: str,
                     parse: Callable[[str], Any] | None = None, timeout: float | None = None) -> HostResult:
    digest = helper_hash()
    r = await runner.run(host, for_host(run_argv(helper_dir, digest, args), host),
                         timeout=timeout)
    if r.exit_code == MISSING:
        first = r.duration
        r = await runner.run(host, for_host(upload_argv(helper_dir, digest, len(helper_source()), args), host),
                             input=helper_source(), timeout=timeout)
        r.duration += first
    if r.status is Status.UNREACHABLE:
        return r
    if r.exit_code == NO_PYTHON:
        r.error = r.stderr.strip() or "python3 is not installed on this host"
        r.status = Status.FAILED
        return r
    # No exit status: the connection (or the helper) died mid-way; its partial output would
    # only turn "connection lost" into a misleading parse error.
    if parse is not None and r.status in (Status.OK, Status.FAILED) and r.exit_code is not None:
        try:
            r.value = parse(r.stdout)
        except RemoteError as e:
            r.status = Status.FAILED
            r.error = f"{e}" + (f" (stderr: {r.stderr.strip()[:500]})" if r.stderr.strip() else "")
    return r


async def gather_facts(runner: Runner, host: Host, *, helper_dir: str) -> HostResult:
    return await run_helper(runner, host, ["facts"], helper_dir=helper_dir, parse=parse_facts)


async def sample_metrics(runner: Runner, host: Host, *, helper_dir: str, interval: float = 0.5) -> HostResult:
    return await run_helper(runner, host, ["metrics", "--interval", str(interval)], helper_dir=helper_dir,
                            parse=parse_metrics)
