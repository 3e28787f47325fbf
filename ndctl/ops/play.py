"""Run a playbook on hosts: check, apply when needed, check again.

Per host, steps run in order and the host stops at its first failed step;
hosts run in parallel (``Runner.fan_out``). Facts are gathered only when a
step has a ``when``, and again after a step changed something (it may have
installed python3 or started Docker), so a playbook whose first step installs
python3 works on a host where the facts helper cannot run yet.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ndctl.commands.helper import NO_PYTHON
from ndctl.commands.shell import for_host
from ndctl.core.inventory import Host
from ndctl.core.playbook import (
    CHECK_CHANGE,
    CHECK_OK,
    PACKAGE_MANAGERS,
    Playbook,
    Step,
    StepResult,
    StepStatus,
    render_step,
    when_facts,
)
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.ops.helper import gather_facts
from ndctl.transport.ssh import Runner

OnStep = Callable[[str, StepResult], None]  # (host name, result), as each step finishes

_TAIL_LINES = 20


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


async def run_playbook(runner: Runner, hosts: Sequence[Host], playbook: Playbook, *, helper_dir: str,
                       check: bool = False, forks: int | None = None, on_step: OnStep | None = None) -> GroupResult:
    """Every host's result: status ok / failed / unreachable, ``value`` = its list of StepResult."""
    return await runner.fan_out(
        hosts, lambda h: play_host(runner, h, playbook, helper_dir=helper_dir, check=check, on_step=on_step),
        forks=forks)


async def play_host(runner: Runner, host: Host, playbook: Playbook, *, helper_dir: str, check: bool = False,
                    on_step: OnStep | None = None) -> HostResult:
    started = time.monotonic()
    results: list[StepResult] = []
    facts: dict | None = None

    def done(status: Status, *, error: str | None = None, failed: HostResult | None = None) -> HostResult:
        r = HostResult(host.name, status, failed.exit_code if failed else (0 if status is Status.OK else None),
                       "", failed.stderr if failed else "", time.monotonic() - started, error=error,
                       exit_status=failed.exit_status if failed else None, value=results)
        return r

    for step in playbook.steps:
        t0 = time.monotonic()
        if step.when is not None:
            if facts is None:
                fr = await gather_facts(runner, host, helper_dir=helper_dir)
                if fr.status is Status.UNREACHABLE:
                    return done(Status.UNREACHABLE, error=fr.error, failed=fr)
                if not fr.ok:
                    why = fr.error or tail(fr.stderr, 3) or f"exit status {fr.exit_code}"
                    if fr.exit_code == NO_PYTHON:
                        why += " (install python3 in an earlier step, without `when`)"
                    sr = StepResult(step.name, step.action, StepStatus.FAILED,
                                    f"cannot evaluate when: gathering facts failed: {why}", "facts",
                                    fr.exit_code, fr.stderr, time.monotonic() - t0)
                    results.append(sr)
                    if on_step:
                        on_step(host.name, sr)
                    return done(Status.FAILED, error=f"step {step.name!r}: {sr.detail}", failed=fr)
                facts = when_facts(fr.value)
            if not step.when.matches(facts):
                sr = StepResult(step.name, step.action, StepStatus.SKIPPED, f"when: {step.when.describe()}",
                                duration=time.monotonic() - t0)
                results.append(sr)
                if on_step:
                    on_step(host.name, sr)
                continue
        pm = facts.get("pkg_manager") if facts else None
        sr, raw = await _run_step(runner, host, step, check=check,
                                  pkg_manager=pm if pm in PACKAGE_MANAGERS else None)
        sr.duration = time.monotonic() - t0
        results.append(sr)
        if on_step:
            on_step(host.name, sr)
        if raw is not None and raw.status is Status.UNREACHABLE:
            return done(Status.UNREACHABLE, error=raw.error, failed=raw)
        if sr.status is StepStatus.FAILED:
            return done(Status.FAILED, error=f"step {step.name!r} failed ({sr.phase}): {sr.detail}", failed=raw)
        if sr.status is StepStatus.CHANGED:
            facts = None  # what the step changed may change the facts
    return done(Status.OK)


async def _run_step(runner: Runner, host: Host, step: Step, *, check: bool,
                    pkg_manager: str | None) -> tuple[StepResult, HostResult | None]:
    async def run(phase: str) -> HostResult:
        script = render_step(step, phase, pkg_manager=pkg_manager)
        return await runner.run(host, for_host(script.argv, host),
                                input=script.input, timeout=step.timeout)

    def failed(phase: str, r: HostResult, why: str) -> tuple[StepResult, HostResult]:
        return StepResult(step.name, step.action, StepStatus.FAILED, why, phase, r.exit_code,
                          tail(r.stderr)), r

    def error_of(r: HostResult) -> str:
        return r.error or _last_line(r.stderr) or f"exit status {r.exit_code}"

    r = await run("check")
    if r.status is Status.UNREACHABLE:
        return failed("check", r, r.error or "unreachable")
    if r.exit_code == CHECK_OK:
        return StepResult(step.name, step.action, StepStatus.UNCHANGED), r
    if r.exit_code != CHECK_CHANGE or r.error:
        return failed("check", r, f"check failed: {error_of(r)}")
    would = _last_line(r.stdout)
    if check:
        return StepResult(step.name, step.action, StepStatus.WOULD_CHANGE, would), r
    a = await run("apply")
    if a.status is Status.UNREACHABLE:
        return failed("apply", a, a.error or "unreachable")
    if not a.ok:
        return failed("apply", a, f"apply failed: {error_of(a)}")
    v = await run("check")
    if v.status is Status.UNREACHABLE:
        return failed("verify", v, v.error or "unreachable")
    if v.exit_code != CHECK_OK:
        why = error_of(v) if v.exit_code != CHECK_CHANGE else (_last_line(v.stdout) or "check still reports a change")
        return failed("verify", v, f"still not in the desired state after apply: {why}")
    return StepResult(step.name, step.action, StepStatus.CHANGED, _last_line(a.stdout) or would), a


def step_counts(result: GroupResult) -> dict[str, int]:
    """How many steps, over every host, ended in each StepStatus."""
    counts = {s.value: 0 for s in StepStatus}
    for r in result:
        for s in r.value or []:
            counts[s.status.value] += 1
    return counts


__all__ = ["OnStep", "play_host", "run_playbook", "step_counts", "tail"]
