"""Deploys: run the plans of ``ndctl.core.deployplan`` over SSH, host by host, batch by batch.

The plan decides *what* happens (and what a failure means); this module only
executes steps with the builders of ``ndctl.commands`` and the proxy, image and
helper operations, and reports every step as it goes.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from ndctl.commands import appstate, docker
from ndctl.commands.shell import with_sudo
from ndctl.core import deployplan as dp
from ndctl.core.appspec import AppSpec
from ndctl.core.errors import ConflictError, NdctlError, UsageError
from ndctl.core.health import parse_health
from ndctl.core.inventory import Host, Inventory
from ndctl.core.proxy import Route
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.ops import images as image_ops
from ndctl.ops import proxy as proxy_ops
from ndctl.ops.helper import run_helper
from ndctl.transport.ssh import Runner

EventCallback = Callable[[str, str, str], None]  # (host, event, message)


class StepFailed(NdctlError):
    def __init__(self, step: dp.Step, message: str, result: HostResult | None = None) -> None:
        super().__init__(f"{step.action.value}: {message}")
        self.step = step
        self.result = result


@dataclass
class HostRun:
    """One host's deploy: its plan, what ran, and how it ended."""

    host: Host
    plan: dp.HostPlan | None = None
    done: list[dict[str, Any]] = field(default_factory=list)
    result: str = dp.RESULT_OK
    switched: bool = False
    message: str = ""
    logs: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    locked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host.name, "result": self.result, "switched": self.switched, "message": self.message,
                "version": self.plan.version if self.plan else None,
                "container": self.plan.green if self.plan else None,
                "steps": self.done, "logs": self.logs}


class Deployer:
    def __init__(self, runner: Runner, inventory: Inventory, spec: AppSpec, *,
                 on_event: EventCallback | None = None) -> None:
        self.runner = runner
        self.inv = inventory
        self.spec = spec
        self.on_event = on_event or (lambda h, e, m: None)
        self.who, self.origin = appstate.operator()
        self.base = appstate.BASE_DIR

    # ----- plumbing ------------------------------------------------------------
    async def _run(self, host: Host, argv: list[str], *, input: str | bytes | None = None,
                   timeout: float | None = 300) -> HostResult:
        return await self.runner.run(host, with_sudo(argv, sudo=host.sudo, user=host.user), input=input,
                                     timeout=timeout)

    async def _must(self, host: Host, step: dp.Step, argv: list[str], **kw: Any) -> HostResult:
        r = await self._run(host, argv, **kw)
        if not r.ok:
            why = r.error or (r.stderr.strip().splitlines() or [f"exit status {r.exit_code}"])[-1]
            raise StepFailed(step, why, r)
        return r

    async def observe(self, host: Host) -> dp.HostState:
        """The host's state for this app, in two round trips."""
        app = self.spec.app
        c = await self._run(host, docker.list_app_containers(app))
        s = await self._run(host, appstate.read_state(app, history_tail=200))
        for r in (c, s):
            if not r.ok:
                raise NdctlError(f"{host.name}: cannot read the state of {app}: "
                                 f"{r.error or r.stderr.strip() or r.exit_code}")
        ids = await self._run(host, ["docker", "image", "ls", "--no-trunc", "--quiet"])
        return dp.HostState.from_outputs(host.name, app, containers_text=c.stdout, state_text=s.stdout,
                                         history_tail=200, image_ids=ids.stdout.split() if ids.ok else None,
                                         network=True, proxy=True)

    # ----- steps -----------------------------------------------------------------
    async def step(self, run: HostRun, step: dp.Step) -> None:
        host, spec, plan = run.host, self.spec, run.plan
        A = dp.Action
        t0 = time.monotonic()
        self.on_event(host.name, step.action.value, step.why)
        if step.action is A.ENSURE_NETWORK:
            await self._must(host, step, docker.ensure_network())
        elif step.action is A.ENSURE_PROXY:
            await proxy_ops.ensure_proxy(self.runner, host, spec.proxy.kind, step.image or spec.proxy.image_ref)
        elif step.action is A.LOCK:
            payload = appstate.lock_payload(who=self.who, from_=self.origin, at=dp.iso(run.started),
                                            version=plan.version if plan else "", deploy_id=step.deploy_id or "")
            r = await self._run(host, appstate.acquire_lock(spec.app), input=payload)
            if r.exit_code == appstate.LOCK_HELD:
                try:
                    info = dp.LockInfo.from_dict(json.loads(r.stdout or "{}"))
                except ValueError:
                    info = None
                raise dp.lock_conflict(spec.app, host.name, info, datetime.now(timezone.utc))
            if not r.ok:
                raise StepFailed(step, r.error or r.stderr.strip() or f"exit status {r.exit_code}", r)
            run.locked = True
        elif step.action is A.REMOVE:
            await self._must(host, step, docker.rm(*step.containers, force=True))
        elif step.action is A.STOP:
            await self._must(host, step, docker.stop(*step.containers, timeout=step.seconds or 10))
        elif step.action in (A.REPAIR_CURRENT, A.WRITE_CURRENT):
            payload = appstate.current_payload(version=step.version or (plan.version if plan else ""),
                                               deploy_id=step.deploy_id or (plan.deploy_id if plan else ""),
                                               container=step.container or "", port=step.port or spec.port,
                                               switched_at=dp.iso(datetime.now(timezone.utc)))
            await self._must(host, step, appstate.write_current(spec.app), input=payload)
        elif step.action is A.PULL_IMAGE:
            g = await image_ops.ensure_image(self.runner, [host], step.image or spec.image, source="pull")
            if not g.ok:
                raise StepFailed(step, g.results[0].error or g.results[0].stderr.strip(), g.results[0])
        elif step.action is A.SHIP_IMAGE:
            g = await image_ops.ensure_image(self.runner, [host], step.image or spec.image, source="ship")
            if not g.ok:
                raise StepFailed(step, g.results[0].error or g.results[0].stderr.strip(), g.results[0])
        elif step.action is A.START:
            await self._must(host, step, docker.run_app(spec, version=step.version or "", deploy_id=step.deploy_id or "",
                                                       image=step.image, port=step.port))
        elif step.action is A.START_EXISTING:
            await self._must(host, step, docker.start(step.container or ""))
        elif step.action is A.HEALTH_CHECK:
            probe = (step.check or spec.health_check).to_probe(spec.port)
            args = probe.helper_args(container=step.container)
            r = await run_helper(self.runner, host, args, helper_dir=self.inv.settings.helper_dir,
                                 parse=parse_health, timeout=probe.deadline + 60)
            if not r.ok or not r.value.ok:
                detail = r.error or (r.value.summary() if r.value is not None and hasattr(r.value, "summary")
                                     else r.stdout.strip()[-500:])
                raise StepFailed(step, f"{step.container} failed its health check: {detail}", r)
        elif step.action is A.SWITCH:
            route = Route(app=spec.app, upstream=f"{step.container}:{step.port}", hosts=tuple(spec.proxy.hosts),
                          drain_seconds=max(1, int(step.seconds or 1)))
            await proxy_ops.set_route(self.runner, host, route)
            run.switched = True
        elif step.action is A.RECORD:
            rec = dp.history_record(plan, result=step.result or dp.RESULT_OK, who=self.who, started_at=run.started,
                                    finished_at=datetime.now(timezone.utc), error=run.message)
            await self._must(host, step, appstate.append_history(spec.app), input=appstate.history_payload(rec))
        elif step.action is A.SCHEDULE_STOP:
            await self._must(host, step, appstate.schedule_stop(spec.app, step.container or "",
                                                                 delay=step.seconds or spec.grace,
                                                                 timeout=spec.stop_timeout))
        elif step.action is A.PRUNE:
            if step.containers:
                await self._must(host, step, docker.rm(*step.containers, force=True))
            if step.image_ids:
                await self._run(host, docker.prune_images(step.image_ids))
        elif step.action is A.CAPTURE_LOGS:
            r = await self._run(host, docker.logs(step.container or "", tail=step.lines or 30, timestamps=False))
            run.logs = (r.stdout + r.stderr).strip()
        elif step.action is A.UNLOCK:
            await self._run(host, appstate.release_lock(spec.app, step.deploy_id or ""))
            run.locked = False
        else:  # pragma: no cover - a new Action without an executor is a bug
            raise AssertionError(f"no executor for {step.action}")
        run.done.append({**step.to_dict(), "seconds_taken": round(time.monotonic() - t0, 3)})

    async def run_steps(self, run: HostRun, steps: Sequence[dp.Step]) -> None:
        """Run steps in order; on a failure, apply what the plan says it means."""
        for step in steps:
            try:
                await self.step(run, step)
            except (StepFailed, NdctlError, asyncio.CancelledError) as e:
                interrupted = isinstance(e, asyncio.CancelledError)
                decision = dp.on_failure(run.plan, step, interrupted=interrupted)
                run.result, run.switched = decision.result, decision.switched
                run.message = f"{e}" if not interrupted else "interrupted"
                self.on_event(run.host.name, "failed", run.message)
                for cleanup in decision.cleanup:
                    try:
                        await asyncio.shield(self.step(run, cleanup))
                    except Exception as ce:  # noqa: BLE001 - best effort, reported
                        self.on_event(run.host.name, "cleanup-failed", f"{cleanup.action.value}: {ce}")
                if decision.remaining:
                    for rest in decision.remaining:
                        try:
                            await self.step(run, rest)
                        except Exception as re_:  # noqa: BLE001
                            self.on_event(run.host.name, "warning", f"{rest.action.value}: {re_}")
                if interrupted:
                    raise
                return

    # ----- rollback ------------------------------------------------------------------
    async def rollback(self, hosts: Sequence[Host], *, to_version: str | None = None) -> GroupResult:
        """Switch every host back to its previous (or the named) retained release."""
        spec = self.spec
        deploy_id = dp.new_deploy_id()

        async def one(h: Host) -> HostResult:
            run = HostRun(h)
            run.plan = dp.HostPlan(host=h.name, app=spec.app, kind="rollback", strategy=dp.STRATEGY_ROLLBACK,
                                   deploy_id=deploy_id, version=to_version or "", image=spec.image,
                                   image_ref=spec.image, green=None, blue=None, spec=spec)
            try:
                for s in dp.begin_steps(spec, None, deploy_id=deploy_id):
                    await self.step(run, s)
                state = await self.observe(h)
                run.plan = dp.plan_rollback(spec, state, deploy_id=deploy_id, now=datetime.now(timezone.utc),
                                            to_version=to_version)
                if run.plan.blocked:
                    raise ConflictError(run.plan.blocked)
                await self.run_steps(run, run.plan.steps)
            except (NdctlError, StepFailed) as e:
                run.result, run.message = dp.RESULT_FAILED, str(e)
                if run.locked:
                    await self._run(h, appstate.release_lock(spec.app, deploy_id))
            ok = run.result == dp.RESULT_OK
            return HostResult(h.name, Status.OK if ok else Status.FAILED, 0 if ok else 1,
                              error=None if ok else run.message, value=run.to_dict(),
                              exit_status=None)

        return await self.runner.fan_out(hosts, one)

    async def states(self, hosts: Sequence[Host]) -> GroupResult:
        """Each host's observed state of the app (read-only), as ``HostResult.value``."""
        async def one(h: Host) -> HostResult:
            state = await self.observe(h)
            return HostResult(h.name, Status.OK, 0, value=state)
        return await self.runner.fan_out(hosts, one)

    # ----- the whole deploy ---------------------------------------------------------
    async def deploy(self, hosts: Sequence[Host], *, version: str, image_source: str = "ship",
                     rollback_on_failure: bool = False) -> tuple[GroupResult, dict[str, Any]]:
        spec = self.spec
        deploy_id = dp.new_deploy_id()
        image_id = await image_ops.local_image_id(spec.image) if image_source == "ship" else None
        runs = {h.name: HostRun(h) for h in hosts}

        async def begin(h: Host) -> HostResult:
            run = runs[h.name]
            try:
                pre = dp.begin_steps(spec, None, deploy_id=deploy_id)
                run.plan = dp.HostPlan(host=h.name, app=spec.app, kind="deploy", strategy=spec.strategy,
                                       deploy_id=deploy_id, version=version, image=image_id or spec.image,
                                       image_ref=spec.image, green=None, blue=None, spec=spec)
                for s in pre:
                    await self.step(run, s)
                state = await self.observe(h)
                run.plan = dp.plan_deploy(spec, state, version=version, deploy_id=deploy_id,
                                          now=datetime.now(timezone.utc), image_id=image_id,
                                          image_source=image_source)
                if run.plan.blocked:
                    raise ConflictError(run.plan.blocked)
                for note in run.plan.notes:
                    self.on_event(h.name, "note", note)
                await self.run_steps(run, run.plan.prepare)
            except (NdctlError, StepFailed) as e:
                run.result, run.message = dp.RESULT_FAILED, str(e)
                self.on_event(h.name, "failed", run.message)
                if run.locked:
                    await self._run(h, appstate.release_lock(spec.app, deploy_id))
                    run.locked = False
                return HostResult(h.name, Status.FAILED, error=run.message,
                                  exit_status=getattr(e, "exit_status", None))
            return HostResult(h.name, Status.OK if run.result == dp.RESULT_OK else Status.FAILED, error=run.message
                              or None)

        prep = await self.runner.fan_out(hosts, begin)
        rollout = dp.Rollout([h.name for h in hosts], spec.parallel, rollback_on_failure=rollback_on_failure)
        by_name = {h.name: h for h in hosts}
        if not prep.ok:
            rollout.stopped = True
            for r in prep:
                rollout.record(r.host, dp.HostOutcome(runs[r.host].result, False, runs[r.host].message))
        while (batch := rollout.next_batch()) is not None:
            async def one(h: Host) -> HostResult:
                run = runs[h.name]
                await self.run_steps(run, run.plan.rollout)
                rollout.record(h.name, dp.HostOutcome(run.result, run.switched, run.message))
                return HostResult(h.name, Status.OK if run.result == dp.RESULT_OK else Status.FAILED,
                                  error=run.message or None)
            await self.runner.fan_out([by_name[n] for n in batch], one)
        # Hosts never reached (a failed earlier batch) still hold this deploy's lock: release it.
        for name in rollout.untouched:
            run = runs[name]
            if run.locked:
                await self._run(run.host, appstate.release_lock(spec.app, deploy_id))
                run.result, run.message = dp.RESULT_FAILED, "not deployed: an earlier batch failed"
        results = []
        for h in hosts:
            run = runs[h.name]
            ok = run.result == dp.RESULT_OK and h.name not in rollout.untouched
            results.append(HostResult(h.name, Status.OK if ok else Status.FAILED, 0 if ok else 1,
                                      error=None if ok else (run.message or run.result), value=run.to_dict()))
        summary = {"app": spec.app, "version": version, "deploy_id": deploy_id, **rollout.summary()}
        return GroupResult(results), summary
