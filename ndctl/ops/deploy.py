"""Deploys: run the plans of ``ndctl.core.deployplan`` over SSH, host by host, batch by batch.

The plan decides *what* happens (and what a failure means); this module only
executes steps with the builders of ``ndctl.commands`` and the proxy, image and
helper operations, and reports every step as it goes.

Interruptions: a dropped connection during a step is handled like Ctrl-C
(``on_failure(interrupted=True)``), and its cleanup runs over a fresh
connection; Ctrl-C arrives as the cancellation of the deploy's task
(``asyncio.run`` cancels the main task on SIGINT), is caught per host, the
cleanup runs, and the cancellation goes on. Whatever ends a deploy, every host
still holding its lock is released before it returns or raises, and
:attr:`Deployer.report` holds the per-host outcome (also when cancelled).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from ndctl.commands import appstate, docker
from ndctl.commands import secrets as secrets_cmds
from ndctl.commands.shell import for_host
from ndctl.core import deployplan as dp
from ndctl.core.appspec import AppSpec
from ndctl.core.errors import ExitStatus, NdctlError, NotFoundError, RemoteError, UsageError
from ndctl.core.health import parse_health
from ndctl.core.inventory import Host, Inventory
from ndctl.core.proxy import Route
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.ops import images as image_ops
from ndctl.ops import proxy as proxy_ops
from ndctl.ops.helper import run_helper
from ndctl.transport.ssh import OutputCallback, Runner

EventCallback = Callable[[str, str, str], None]  # (host, event, message)

RESULT_SKIPPED = "skipped"  # in reports only: the host's batch never ran (never in history)
OBSERVED_HISTORY = 200  # history lines a deploy reads (older ones only matter to tell strays, see deployplan)


def connection_lost(r: HostResult | None) -> bool:
    """The command's connection dropped (or never came up): not a verdict on the command itself."""
    if r is None:
        return False
    if r.status is Status.UNREACHABLE:
        return True
    # No exit status: the channel or connection ended under the command (the transport's
    # "connection lost ..."; a parser may have replaced that error text since).
    return r.status is Status.FAILED and r.exit_code is None


def explain(host: str, r: HostResult) -> str | None:
    """A clear cause for failures any Docker step can hit on an unprepared host, else None."""
    text = f"{r.stderr}\n{r.stdout}\n{r.error or ''}"
    if re.search(r"docker: (command )?not found|\"docker\": executable file not found|"
                 r"docker: No such file or directory", text):
        return (f"Docker is not installed on {host} (no `docker` command in its PATH); "
                f"prepare the host first: `ndctl agent prepare --tags name:{host}`")
    if "Cannot connect to the Docker daemon" in text or "Is the docker daemon running" in text:
        return f"the Docker daemon is not running on {host} (start it, or run `ndctl agent prepare`)"
    if "permission denied" in text.lower() and "docker.sock" in text:
        return (f"permission denied on the Docker socket of {host}: log in as root, or set the host's "
                f"sudo option (passwordless sudo)")
    return None


_PORT_RE = re.compile(r":(\d+)(?: failed: port is already allocated|: bind: address already in use)")
_CLASH_RE = re.compile(r"(Bind for \S+ failed: port is already allocated|listen \S+ \S+: bind: address already in use)")


def port_clash(host: str, kind: str, text: str) -> str | None:
    """The message for a proxy that cannot publish its port, else None."""
    if "port is already allocated" not in text and "address already in use" not in text:
        return None
    m = _PORT_RE.search(text)
    port = m.group(1) if m else "80 or 443"
    clash = _CLASH_RE.search(text)
    why = f" ({clash.group(1)})" if clash else ""
    return (f"port {port} is already in use on {host}, so the {kind} proxy cannot start{why}; "
            f"free the port and deploy again (nothing was deployed)")


class StepFailed(NdctlError):
    exit_status = ExitStatus.HOST_FAILED

    def __init__(self, step: dp.Step, message: str, result: HostResult | None = None) -> None:
        super().__init__(f"{step.action.value}: {message}")
        self.step = step
        self.result = result
        self.lost = connection_lost(result)


def _text(e: BaseException) -> str:
    """An error's message with its hint: a report line must say what to do, not only what broke."""
    hint = getattr(e, "hint", None)
    return f"{e} ({hint})" if hint else str(e)


def _never_reached(e: BaseException, run: "HostRun") -> bool:
    """The host's connection could not be made: the error's command never started, nor did any other."""
    r = getattr(e, "result", None)
    return (r is not None and r.status is Status.UNREACHABLE
            and not any(s.get("ok") for s in run.done))


def _lost(e: BaseException) -> bool:
    if isinstance(e, StepFailed):
        return e.lost
    return isinstance(e, RemoteError) and connection_lost(e.result)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(dt: datetime | None) -> str | None:
    """Millisecond UTC timestamps for reports (the order of batches is visible in them)."""
    return None if dt is None else dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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
    started: datetime = field(default_factory=_now)
    locked: bool = False  # this operation holds the app's lock on the host
    lock_pending: bool = False  # a lock request was sent: it may hold the lock even without an answer
    exit_status: ExitStatus | None = None
    rollout_started: datetime | None = None
    rollout_finished: datetime | None = None
    switched_at: datetime | None = None  # when the switch was done (the next batch may start)
    rolled_back: dict[str, Any] | None = None
    proxy_snapshot: object = None  # ensure-proxy's reading, for the switch (ops.proxy.set_route known=)
    image_id: str | None = None  # the id of a pulled image (a shipped one's is in the plan already)
    unreachable: bool = False  # no command ever reached the host (its connection could not be made)
    observed: dp.HostState | None = field(default=None, repr=False)  # read by the lock step, under the lock

    def to_dict(self) -> dict[str, Any]:
        out = {"host": self.host.name, "result": self.result, "switched": self.switched, "message": self.message,
               "version": self.plan.version if self.plan else None,
               "container": self.plan.green if self.plan else None,
               "blue": self.plan.blue.name if self.plan and self.plan.blue else None,
               "started_at": _stamp(self.started),
               "rollout_started_at": _stamp(self.rollout_started),
               "rollout_finished_at": _stamp(self.rollout_finished),
               "switched_at": _stamp(self.switched_at),
               "steps": self.done, "logs": self.logs}
        if self.rolled_back is not None:
            out["rolled_back"] = self.rolled_back
        return out


class Deployer:
    def __init__(self, runner: Runner, inventory: Inventory, spec: AppSpec, *,
                 on_event: EventCallback | None = None, lock_wait: float = 0.0,
                 registry_auth: image_ops.RegistryAuth | None = None,
                 secrets: dict[str, Any] | None = None) -> None:
        self.lock_wait = max(0.0, lock_wait)  # seconds to wait for another deploy's lock
        self.registry_auth = registry_auth  # for pulls: a throw-away docker login on each host
        self._warned_caddy = False
        self._shipper: _SharedShip | None = None  # during deploy(): one `docker save` for every host
        #: host name -> ndctl.ops.secrets.HostDelivery (validated before any host is touched)
        self.secrets = secrets or {}
        self.runner = runner
        self.inv = inventory
        self.spec = spec
        self.on_event = on_event or (lambda h, e, m: None)
        self.who, self.origin = appstate.operator()
        self.base = appstate.BASE_DIR
        #: the last deploy's (GroupResult, summary); set before deploy() returns or raises
        self.report: tuple[GroupResult, dict[str, Any]] | None = None

    # ----- plumbing ------------------------------------------------------------
    async def _run(self, host: Host, argv: list[str], *, input: str | bytes | None = None,
                   timeout: float | None = 300) -> HostResult:
        return await self.runner.run(host, for_host(argv, host), input=input,
                                     timeout=timeout)

    async def _must(self, host: Host, step: dp.Step, argv: list[str], **kw: Any) -> HostResult:
        r = await self._run(host, argv, **kw)
        if not r.ok:
            why = explain(host.name, r) or r.error or \
                (r.stderr.strip().splitlines() or [f"exit status {r.exit_code}"])[-1]
            raise StepFailed(step, why, r)
        return r

    async def observe(self, host: Host) -> dp.HostState:
        """The host's state for this app: three reads, side by side on the host's connection
        (a deploy's lock step reads the same, see :func:`appstate.acquire_lock_then_read`)."""
        app = self.spec.app
        c, s, ids = await asyncio.gather(
            self._run(host, docker.list_app_containers(app)),
            self._run(host, appstate.read_state(app, history_tail=OBSERVED_HISTORY)),
            self._run(host, docker.image_ids()))
        for r in (c, s):
            if not r.ok:
                raise self._unreadable(host, r)
        return self._host_state(host, c.stdout, s.stdout, ids.stdout.split() if ids.ok else None)

    def _host_state(self, host: Host, containers_text: str, state_text: str,
                    image_ids: Sequence[str] | None) -> dp.HostState:
        return dp.HostState.from_outputs(host.name, self.spec.app, containers_text=containers_text,
                                         state_text=state_text, history_tail=OBSERVED_HISTORY, image_ids=image_ids,
                                         network=True, proxy=True)

    def _unreadable(self, host: Host, r: HostResult) -> RemoteError:
        return RemoteError(f"{host.name}: cannot read the state of {self.spec.app}: "
                           f"{explain(host.name, r) or r.reason}", r)

    async def _begin(self, run: HostRun, deploy_id: str) -> dp.HostState:
        """The begin steps and the observation. The proxy's step (one read when all is there)
        runs side by side with taking the lock and reading the app's state under it: they
        touch different things, and a failure of either ends the host's deploy the same way."""
        steps = dp.begin_steps(self.spec, None, deploy_id=deploy_id)
        side = [s for s in steps if s.action is dp.Action.ENSURE_PROXY]
        chain = [s for s in steps if s.action is not dp.Action.ENSURE_PROXY]

        async def locked_state() -> dp.HostState:
            for s in chain:
                await self.step(run, s)
            state, run.observed = run.observed, None
            return state or await self.observe(run.host)

        results = await asyncio.gather(*(self.step(run, s) for s in side), locked_state(), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if not isinstance(e, Exception)), errors[0])
        return results[-1]

    async def _release(self, run: HostRun, deploy_id: str) -> None:
        """Free this operation's lock on the host (a no-op when it holds none); raises when it cannot."""
        r = await self._run(run.host, appstate.release_lock(self.spec.app, deploy_id))
        if r.ok:
            run.locked = run.lock_pending = False
            return
        if r.exit_code == appstate.LOCK_HELD:  # another deploy's lock: never ours to free
            run.locked = run.lock_pending = False
            return
        raise StepFailed(dp.Step(dp.Action.UNLOCK, deploy_id=deploy_id),
                         explain(run.host.name, r) or r.reason, r)

    async def _release_quietly(self, run: HostRun, deploy_id: str) -> None:
        if not (run.locked or run.lock_pending):
            return
        try:
            await asyncio.shield(self._release(run, deploy_id))
        except Exception as e:  # noqa: BLE001 - reported; the message says how to free it
            self.on_event(run.host.name, "cleanup-failed", f"unlock: {e}")
            run.message = _join(run.message, self._lock_left(run))

    def _lock_left(self, run: HostRun) -> str:
        app = self.spec.app
        return (f"the lock of {app} stays on {run.host.name} (held by {self.who}); "
                f"`ndctl deploy status {app}` shows it, `ndctl deploy unlock {app}` frees it")

    # ----- steps -----------------------------------------------------------------
    async def step(self, run: HostRun, step: dp.Step) -> None:
        """Run one step; it is appended to ``run.done`` (with its error when it failed)."""
        t0 = time.monotonic()
        self.on_event(run.host.name, step.action.value, step.why)
        try:
            extra = await self._do(run, step)
        except BaseException as e:
            run.done.append({**step.to_dict(), "seconds_taken": round(time.monotonic() - t0, 3), "ok": False,
                             "error": "interrupted" if isinstance(e, asyncio.CancelledError) else str(e)})
            raise
        run.done.append({**step.to_dict(), "seconds_taken": round(time.monotonic() - t0, 3), "ok": True,
                         **(extra or {})})

    async def _do(self, run: HostRun, step: dp.Step) -> dict[str, Any] | None:
        """Run one step; returns what the step's record should say beyond the step itself."""
        host, spec, plan = run.host, self.spec, run.plan
        A = dp.Action
        if step.action is A.ENSURE_PROXY:
            await self._ensure_proxy(run, step)
        elif step.action is A.LOCK:
            payload = appstate.lock_payload(who=self.who, from_=self.origin, at=dp.iso(run.started),
                                            version=plan.version if plan else "", deploy_id=step.deploy_id or "")
            run.lock_pending = True
            # Taking the lock also reads what the plan needs (one round trip instead of two).
            argv = appstate.acquire_lock_then_read(spec.app, docker.list_app_containers(spec.app),
                                                   history_tail=OBSERVED_HISTORY)
            r = await self._run(host, argv, input=payload)
            if r.status is Status.UNREACHABLE:  # the request never reached the host: no lock to free
                run.lock_pending = False
            deadline = time.monotonic() + self.lock_wait
            while r.exit_code == appstate.LOCK_HELD and time.monotonic() < deadline:
                # --lock-wait: another deploy holds the app; poll until it is done or we give up
                self.on_event(host.name, "waiting", f"{spec.app} is locked by another deploy; waiting")
                await asyncio.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
                r = await self._run(host, argv, input=payload)
            lines = r.stdout.splitlines()
            taken = lines[:1] == ["locked"]  # the script says so first: a failed read after it leaves the lock ours
            if r.exit_code == appstate.LOCK_HELD and not taken:
                run.lock_pending = False
                try:
                    info = dp.LockInfo.from_dict(json.loads(r.stdout or "{}"))
                except ValueError:
                    info = None
                raise dp.lock_conflict(spec.app, host.name, info, _now())
            run.locked = taken
            if not r.ok:
                if taken:
                    raise self._unreadable(host, r)
                raise StepFailed(step, explain(host.name, r) or r.reason, r)
            run.observed = self._host_state(host, r.stdout, r.stdout, [x for x in lines if x.startswith("sha256:")]
                                            if "images listed" in lines else None)
        elif step.action is A.REMOVE:
            await self._must(host, step, docker.rm(*step.containers, force=True))
        elif step.action is A.STOP:
            await self._must(host, step, docker.stop(*step.containers, timeout=step.seconds or 10))
        elif step.action in (A.REPAIR_CURRENT, A.WRITE_CURRENT):
            payload = appstate.current_payload(version=step.version or (plan.version if plan else ""),
                                               deploy_id=step.deploy_id or (plan.deploy_id if plan else ""),
                                               container=step.container or "", port=step.port or spec.port,
                                               switched_at=dp.iso(_now()))
            await self._must(host, step, appstate.write_current(spec.app), input=payload)
        elif step.action in (A.PULL_IMAGE, A.SHIP_IMAGE):
            source = "pull" if step.action is A.PULL_IMAGE else "ship"
            if source == "ship" and self._shipper is not None:
                r = await self._shipper.ship(host)
            else:
                r = (await image_ops.ensure_image(self.runner, [host], step.image or spec.image, source=source,
                                                  registry_auth=self.registry_auth if source == "pull" else None)
                     ).results[0]
            if not r.ok:
                raise StepFailed(step, explain(host.name, r) or r.reason, r)
            run.image_id = (r.value or {}).get("image_id")  # what the pull brought: history names it
        elif step.action is A.START:
            # a re-created release runs with the secrets it ran with, even when named only with --secret then
            app = replace(spec, secrets=step.secrets) if step.secrets else spec
            await self._must(host, step, docker.run_app(app, version=step.version or "",
                                                       deploy_id=step.deploy_id or "", image=step.image,
                                                       port=step.port,
                                                       image_command=await self._image_command(host, step, app)))
        elif step.action is A.START_EXISTING:
            await self._must(host, step, docker.start(step.container or ""))
        elif step.action is A.HEALTH_CHECK:
            probe = (step.check or spec.health_check).for_port(step.port or spec.port)
            args = probe.helper_args(container=step.container)
            r = await run_helper(self.runner, host, args, helper_dir=self.inv.settings.helper_dir,
                                 parse=parse_health, timeout=probe.deadline + 60)
            if not r.ok or r.value is None or not getattr(r.value, "ok", False):
                if connection_lost(r):  # no verdict: the probe was cut off with its connection
                    raise StepFailed(step, f"the health check of {step.container} was cut off: the connection "
                                           "dropped while it ran", r)
                if r.value is not None and hasattr(r.value, "summary"):
                    detail = r.value.summary()
                else:
                    detail = explain(host.name, r) or r.error or r.stdout.strip()[-500:] or r.stderr.strip()[-500:]
                raise StepFailed(step, f"{step.container} failed its health check (GET {probe.path} on port "
                                       f"{probe.port}): {detail}", r)
        elif step.action is A.SWITCH:
            route = self._route(f"{step.container}:{step.port or spec.port}", step.seconds)
            known, run.proxy_snapshot = run.proxy_snapshot, None  # stale once this switch commits
            change = await proxy_ops.set_route(self.runner, host, route, known=known)
            run.switched = True
            return {"via": change.via}
        elif step.action is A.RECORD:
            rec = dp.history_record(plan, result=step.result or dp.RESULT_OK, who=self.who, started_at=run.started,
                                    finished_at=_now(), error=run.message, image_id=run.image_id)
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
            await self._release(run, step.deploy_id or "")
        else:  # pragma: no cover - a new Action without an executor is a bug
            raise AssertionError(f"no executor for {step.action}")
        return None

    async def _check_route(self, run: HostRun) -> None:
        """A host name another app claims would only fail at the switch, after green started."""
        await proxy_ops.check_route(self.runner, run.host, self._route(f"nd-check:{self.spec.port}"),
                                    known=run.proxy_snapshot)

    def _route(self, upstream: str, drain: float | None = None) -> Route:
        return Route(app=self.spec.app, upstream=upstream, hosts=tuple(self.spec.proxy.hosts),
                     drain_seconds=max(1, int(drain or 1)), tls=self.spec.proxy.tls)

    # ----- secrets (ndctl.ops.secrets) ----------------------------------------------
    async def _image_command(self, host: Host, step: dp.Step, app: AppSpec) -> docker.ImageCommand | None:
        """The image's entrypoint and command, which an app with secrets runs behind the wrapper."""
        if not app.secrets:
            return None
        r = await self._must(host, step, docker.image_command(step.image or self.spec.image))
        try:
            return docker.ImageCommand.parse(r.stdout)
        except ValueError:
            raise StepFailed(step, f"cannot read the entrypoint of {step.image or self.spec.image}", r) from None

    async def _deliver_secrets(self, run: HostRun) -> None:
        """Under the lock, before green starts: ciphertext to the host, unsealed into tmpfs."""
        from ndctl.ops.secrets import deliver

        d = self.secrets.get(run.host.name)
        if d is None or run.result != dp.RESULT_OK:
            return
        t0 = time.monotonic()
        self.on_event(run.host.name, "secrets", f"delivering {', '.join(d.ciphertexts)} (ciphertext only)")
        entry: dict[str, Any] = {"action": "secrets", "names": list(d.ciphertexts), "env": d.env,
                                 "why": "ciphertext to the host, unsealed into tmpfs before green starts"}
        try:
            boot = await deliver(self.runner, d, self.spec.app, who=self.who)
        except NdctlError as e:
            run.done.append({**entry, "seconds_taken": round(time.monotonic() - t0, 3), "ok": False,
                             "error": str(e)})
            raise
        run.done.append({**entry, "seconds_taken": round(time.monotonic() - t0, 3), "ok": True, "boot": boot})
        if boot == "none":
            self.on_event(run.host.name, "note", "no systemd or cron on this host: after a reboot, run "
                                                 f"{secrets_cmds.UNSEAL} --restart to give containers their secrets")

    async def _ensure_proxy(self, run: HostRun, step: dp.Step) -> None:
        host, spec = run.host, self.spec
        try:
            status = await proxy_ops.ensure_proxy(self.runner, host, spec.proxy.kind,
                                                  step.image or spec.proxy.image_ref)
            run.proxy_snapshot = status.snapshot
            if status.cuts_upgraded_connections and not self._warned_caddy:
                self._warned_caddy = True  # once per deploy: the same on every host
                self.on_event(host.name, "note", f"Caddy {'.'.join(map(str, status.version))} closes WebSockets "
                                                 "and other upgraded connections at the switch; they get the drain "
                                                 "time with Caddy >= 2.6.2 (proxy.image) or nginx (proxy.kind)")
        except RemoteError as e:
            r = e.result
            why = (explain(host.name, r) if r is not None else None) or \
                port_clash(host.name, spec.proxy.kind, f"{e}\n{r.stderr if r else ''}") or str(e)
            raise StepFailed(step, why, r) from None

    async def run_steps(self, run: HostRun, steps: Sequence[dp.Step]) -> bool:
        """Run steps in order; on a failure, apply what the plan says it means.

        A lost connection counts as an interruption (the cleanup reconnects);
        a cancellation (Ctrl-C) runs the same cleanup, then goes on. True when
        every step ran; False when a failure ended the list (its decision's
        remaining steps ran instead).
        """
        i = 0
        while i < len(steps):
            step = steps[i]
            if run.switched and step.action in _BOOKKEEPING:
                j = i
                while j < len(steps) and steps[j].action in _BOOKKEEPING:
                    j += 1
                try:
                    await self._bookkeeping(run, steps[i:j])
                except asyncio.CancelledError:
                    for rest in steps[j:]:  # the unlock: green serves, the lock must not stay behind
                        await self._warned(run, rest)
                    raise
                i = j
                continue
            i += 1
            try:
                await self.step(run, step)
            except (NdctlError, asyncio.CancelledError) as e:
                cancelled = isinstance(e, asyncio.CancelledError)
                lost = not cancelled and _lost(e)
                decision = dp.on_failure(run.plan, step, interrupted=cancelled or lost)
                run.result, run.switched = decision.result, decision.switched
                if cancelled:
                    run.message = f"interrupted during {step.action.value}: {decision.message}"
                elif lost:
                    run.message = f"the connection to {run.host.name} was lost during {step.action.value} ({e}); " \
                                  f"{decision.message}"
                else:
                    run.message = _text(e) if decision.result != dp.RESULT_OK else decision.message
                if isinstance(e, NdctlError) and not lost:
                    run.exit_status = e.exit_status
                event = "interrupted" if cancelled or lost else ("warning" if decision.result == dp.RESULT_OK
                                                                 else "failed")
                extra = "; cleaning up (Ctrl-C again abandons the cleanup)" if cancelled and decision.cleanup else ""
                self.on_event(run.host.name, event, run.message + extra)
                await self._cleanup(run, decision.cleanup)
                for rest in decision.remaining:
                    try:
                        await self.step(run, rest)
                    except Exception as re_:  # noqa: BLE001 - after the switch: warn, the deploy stands
                        self.on_event(run.host.name, "warning", f"{rest.action.value}: {re_}")
                        if rest.action is dp.Action.UNLOCK:
                            run.message = _join(run.message, self._lock_left(run))
                if cancelled:
                    raise
                return False
        return True

    async def _bookkeeping(self, run: HostRun, steps: Sequence[dp.Step]) -> None:
        """After the switch: current.json, history, the delayed stop and pruning are independent,
        so they run side by side (one round trip of wall time, not four). Each failure is only
        warned about, as :func:`deployplan.on_failure` decides after a switch. Ctrl-C interrupts
        the ones still running (the caller still unlocks); the next deploy repairs what they left."""
        await asyncio.gather(*(self._warned(run, s) for s in steps))

    async def _warned(self, run: HostRun, step: dp.Step) -> None:
        try:
            await self.step(run, step)
        except Exception as e:  # noqa: BLE001 - after the switch a failed step is a warning
            decision = dp.on_failure(run.plan, step, interrupted=_lost(e))
            run.message = _join(run.message, decision.message)
            self.on_event(run.host.name, "warning", f"{decision.message} ({_text(e)})")
            if step.action is dp.Action.UNLOCK:
                run.message = _join(run.message, self._lock_left(run))

    async def _cleanup(self, run: HostRun, steps: Sequence[dp.Step]) -> None:
        """Best effort, in order, shielded from a further cancellation; a host that cannot be
        reached ends it, and the message then says what was left behind."""
        for i, cleanup in enumerate(steps):
            try:
                await asyncio.shield(self.step(run, cleanup))
            except Exception as ce:  # noqa: BLE001 - best effort, reported
                self.on_event(run.host.name, "cleanup-failed", f"{cleanup.action.value}: {ce}")
                if _lost(ce):  # the host cannot be reached: the rest would fail the same way
                    self._explain_leftovers(run, steps[i:])
                    return
                if cleanup.action is dp.Action.UNLOCK:
                    self._explain_leftovers(run, [cleanup])

    def _explain_leftovers(self, run: HostRun, left: Sequence[dp.Step]) -> None:
        A = dp.Action
        parts = []
        running = [c for s in left if s.action in (A.STOP, A.REMOVE) for c in (s.containers or ())]
        if running:
            parts.append(f"{', '.join(running)} may still run on {run.host.name}; the next deploy removes it")
        if any(s.action is A.UNLOCK for s in left) and (run.locked or run.lock_pending):
            parts.append(self._lock_left(run))
        if parts:
            run.message = _join(run.message, "could not clean up: " + "; ".join(parts))

    # ----- rollback ------------------------------------------------------------------
    async def _rollback_host(self, h: Host, deploy_id: str, *, to_version: str | None) -> HostRun:
        """Switch one host back to its previous (or ``to_version``) release, under its own lock."""
        spec = self.spec
        run = HostRun(h)
        run.plan = dp.HostPlan(host=h.name, app=spec.app, kind="rollback", strategy=dp.STRATEGY_ROLLBACK,
                               deploy_id=deploy_id, version=to_version or "", image=spec.image,
                               image_ref=spec.image, green=None, blue=None, spec=spec)
        try:
            state = await self._begin(run, deploy_id)
            run.plan = dp.plan_rollback(spec, state, deploy_id=deploy_id, now=_now(), to_version=to_version)
            if run.plan.blocked:
                raise dp.lock_conflict(spec.app, h.name, state.lock, _now())
            if not await self._defuse(run, state):  # stopped under us: plan again (start, check, switch)
                state = await self.observe(h)
                run.plan = dp.plan_rollback(spec, state, deploy_id=deploy_id, now=_now(), to_version=to_version)
            for note in run.plan.notes:
                self.on_event(h.name, "note", note)
            await self.run_steps(run, run.plan.steps)
        except asyncio.CancelledError:
            run.result, run.message = dp.RESULT_INTERRUPTED, run.message or "interrupted"
            await self._release_quietly(run, deploy_id)
            raise
        except NdctlError as e:
            run.result, run.message = dp.RESULT_FAILED, _text(e)
            run.exit_status = e.exit_status
            await self._release_quietly(run, deploy_id)
        return run

    async def _defuse(self, run: HostRun, state: dp.HostState) -> bool:
        """A rollback switching instantly to a release that still runs: cancel its delayed stop.

        False when it was being stopped anyway (the stop had begun before this
        rollback took the lock): it is stopped now, and the plan must start it.
        """
        plan = run.plan
        target = state.container(plan.green) if plan else None
        starts = any(s.action in (dp.Action.START, dp.Action.START_EXISTING) for s in plan.steps) if plan else True
        if target is None or not target.running or starts:
            return True
        r = await self._run(run.host, appstate.defuse_stop(target.name, wait=self.spec.stop_timeout + 10),
                            timeout=self.spec.stop_timeout + 60)
        if r.ok and r.stdout.strip() == "false":
            self.on_event(run.host.name, "note", f"{target.name} was being stopped (its grace period had "
                                                 "ended): starting it again")
            return False
        return True

    async def rollback(self, hosts: Sequence[Host], *, to_version: str | None = None) -> GroupResult:
        """Switch every host back to its previous (or the named) retained release."""
        deploy_id = dp.new_deploy_id()

        async def one(h: Host) -> HostResult:
            run = await self._rollback_host(h, deploy_id, to_version=to_version)
            ok = run.result == dp.RESULT_OK
            return HostResult(h.name, Status.OK if ok else Status.FAILED, 0 if ok else 1,
                              error=None if ok else run.message, value=run.to_dict(),
                              exit_status=None if ok else run.exit_status)

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
        """Deploy on every host: prepare all (lock, recovery, image), then roll out batch by batch.

        Stops at the first failed batch; with ``rollback_on_failure`` the hosts it
        already switched go back to the release they replaced. Cancelled (Ctrl-C),
        each host in flight cleans up, every lock still held is released, and the
        cancellation propagates with :attr:`report` set.
        """
        spec = self.spec
        deploy_id = dp.new_deploy_id()
        image_id = await image_ops.local_image_id(spec.image) if image_source == "ship" else None
        runs = {h.name: HostRun(h) for h in hosts}
        by_name = {h.name: h for h in hosts}
        rollout = dp.Rollout([h.name for h in hosts], spec.parallel, rollback_on_failure=rollback_on_failure)
        interrupted = False

        async def begin(h: Host) -> HostResult:
            run = runs[h.name]
            shipper.join(h.name)
            run.plan = dp.HostPlan(host=h.name, app=spec.app, kind="deploy", strategy=spec.strategy,
                                   deploy_id=deploy_id, version=version, image=image_id or spec.image,
                                   image_ref=spec.image, green=None, blue=None, spec=spec)
            try:
                state = await self._begin(run, deploy_id)
                run.plan = dp.plan_deploy(spec, state, version=version, deploy_id=deploy_id, now=_now(),
                                          image_id=image_id, image_source=image_source)
                if run.plan.blocked:
                    raise dp.lock_conflict(spec.app, h.name, state.lock, _now())
                await self._check_route(run)
                for note in run.plan.notes:
                    self.on_event(h.name, "note", note)
                await self.run_steps(run, run.plan.prepare)
                await self._deliver_secrets(run)
            except asyncio.CancelledError:
                if run.result == dp.RESULT_OK:
                    run.result, run.message = dp.RESULT_INTERRUPTED, "interrupted while preparing"
                await self._release_quietly(run, deploy_id)
                raise
            except NdctlError as e:
                run.unreachable = _never_reached(e, run)
                run.result = dp.RESULT_INTERRUPTED if _lost(e) and not run.unreachable else dp.RESULT_FAILED
                run.message = _text(e)
                run.exit_status = ExitStatus.UNREACHABLE if run.unreachable else e.exit_status
                self.on_event(h.name, "failed", run.message)
                await self._release_quietly(run, deploy_id)
            finally:
                shipper.leave(h.name)  # it will not ship (any more): the others need not wait for it
            ok = run.result == dp.RESULT_OK
            return HostResult(h.name, Status.OK if ok else Status.FAILED, error=None if ok else run.message)

        def finished(run: HostRun) -> None:
            run.rollout_finished = _now()
            if run.result == dp.RESULT_OK:
                self.on_event(run.host.name, "done", f"serving {run.plan.version} from {run.plan.green} "
                                                     f"({(run.rollout_finished - run.started).total_seconds():.1f}s)")

        async def finish(run: HostRun, tail: Sequence[dp.Step]) -> None:
            try:
                await self.run_steps(run, tail)
            finally:
                finished(run)

        async def roll(h: Host) -> HostResult:
            run = runs[h.name]
            run.rollout_started = _now()
            head, tail = dp.split_at_switch(run.plan.rollout)
            pipelined = False
            try:
                if await self.run_steps(run, head) and tail:
                    if run.switched:
                        # Traffic has moved: the next batch starts while this host writes its
                        # bookkeeping and unlocks (their failures are warnings, not the batch's).
                        run.switched_at = _now()
                        tails.append(asyncio.ensure_future(finish(run, tail)))
                        pipelined = True
                    else:
                        await self.run_steps(run, tail)
            finally:
                rollout.record(h.name, dp.HostOutcome(run.result, run.switched, run.message))
                if not pipelined:
                    finished(run)
            ok = run.result == dp.RESULT_OK
            return HostResult(h.name, Status.OK if ok else Status.FAILED, error=None if ok else run.message)

        async def settle(*, cut: bool = False) -> None:
            """Wait for the hosts still finishing after their switch (shielded: they unlock).
            ``cut``: interrupt their bookkeeping first (Ctrl-C while they were waited for); each
            still unlocks, as a host interrupted during its bookkeeping always has."""
            if cut:
                for t in tails:
                    t.cancel()
            if tails:
                await asyncio.shield(asyncio.gather(*tails, return_exceptions=True))

        shipper = self._shipper = _SharedShip(self.runner, spec.image)
        tails: list[asyncio.Future[None]] = []
        settling = False  # waiting for the last hosts' bookkeeping
        try:
            prep = await self.runner.fan_out(hosts, begin)
            if not prep.ok:
                rollout.stopped = True  # no batch starts; the hosts that prepared are released below
                for r in prep:
                    if not r.ok:
                        run = runs[r.host]
                        rollout.record(r.host, dp.HostOutcome(run.result, False, run.message))
            while (batch := rollout.next_batch()) is not None:
                await self.runner.fan_out([by_name[n] for n in batch], roll)
            settling = True
            await settle()
            back = rollout.to_roll_back()
            if back:
                await self._roll_back_switched([runs[n] for n in back], rollout.failed)
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            # Interrupted earlier (a later batch), the switched hosts' short bookkeeping completes.
            await settle(cut=interrupted and settling)
            # Hosts never reached (a failed or interrupted earlier batch) still hold this deploy's lock.
            for name in rollout.untouched:
                run = runs[name]
                if run.result == dp.RESULT_OK:
                    run.result = RESULT_SKIPPED
                    if interrupted:
                        run.message = "not deployed: interrupted before its batch"
                    elif any(r.rollout_started for r in runs.values()):
                        run.message = "not deployed: an earlier batch failed"
                    else:
                        run.message = "not deployed: another host failed while preparing"
            await asyncio.shield(asyncio.gather(*(self._release_quietly(run, deploy_id) for run in runs.values())))
            self.report = self._report(hosts, runs, rollout, deploy_id, version, interrupted)
        return self.report

    async def _roll_back_switched(self, runs: Sequence[HostRun], failed: Sequence[str]) -> None:
        """``--rollback-on-failure``: each switched host goes back to the blue it replaced."""
        rb_id = dp.new_deploy_id()
        why = f"the deploy failed on {', '.join(failed) or 'another host'}"

        async def back(run: HostRun) -> HostResult:
            blue = run.plan.blue if run.plan else None
            h = run.host
            if blue is None:
                run.rolled_back = {"result": dp.RESULT_FAILED, "message": "no earlier release on this host"}
                run.message = _join(run.message, f"{why}, but there is no earlier release to roll back to")
                return HostResult(h.name, Status.FAILED)
            self.on_event(h.name, "rollback", f"{why}: rolling back to {blue.name} ({blue.version})")
            rb = await self._rollback_host(h, rb_id, to_version=blue.version)
            run.rolled_back = {"result": rb.result, "deploy_id": rb_id, "container": rb.plan.green if rb.plan else None,
                               "version": blue.version, "message": rb.message, "steps": rb.done}
            if rb.result == dp.RESULT_OK:
                run.message = f"rolled back to {rb.plan.green} ({blue.version}): {why}"
            else:
                run.message = f"{why}; rolling back to {blue.name} ({blue.version}) failed: {rb.message}"
            self.on_event(h.name, "rolled-back" if rb.result == dp.RESULT_OK else "failed", run.message)
            return HostResult(h.name, Status.OK if rb.result == dp.RESULT_OK else Status.FAILED)

        by_name = {r.host.name: r for r in runs}
        await self.runner.fan_out([r.host for r in runs], lambda h: back(by_name[h.name]))

    def _report(self, hosts: Sequence[Host], runs: dict[str, HostRun], rollout: dp.Rollout, deploy_id: str,
                version: str, interrupted: bool) -> tuple[GroupResult, dict[str, Any]]:
        results = []
        for h in hosts:
            run = runs[h.name]
            ok = run.result == dp.RESULT_OK and run.rolled_back is None
            if run.rolled_back is not None and run.rolled_back.get("result") == dp.RESULT_OK:
                run.result = "rolled-back"
            status = Status.OK if ok else (Status.UNREACHABLE if run.unreachable else Status.FAILED)
            results.append(HostResult(h.name, status, 0 if ok else 1,
                                      error=None if ok else (run.message or run.result), value=run.to_dict(),
                                      exit_status=None if ok else run.exit_status))
        summary = {"app": self.spec.app, "version": version, "deploy_id": deploy_id, **rollout.summary(),
                   "rolled_back": [r.host.name for r in runs.values() if r.result == "rolled-back"],
                   "interrupted": interrupted}
        if interrupted:
            summary["result"] = dp.RESULT_INTERRUPTED
        return GroupResult(results), summary


class _SharedShip:
    """One ``docker save`` fanned out to every host of a deploy that lacks the image.

    Hosts reach their ship step at different times (each after its own lock and
    recovery): the transfer starts once every host that began preparing has
    either arrived or left (prepared without shipping, or failed). Nothing waits
    longer than before: the rollout starts only when every host is prepared
    anyway. Hosts that begin later (more hosts than forks) make a later transfer.
    """

    def __init__(self, runner: Runner, image: str) -> None:
        self.runner, self.image = runner, image
        self.expected: set[str] = set()
        self.waiting: dict[str, tuple[Host, asyncio.Future]] = {}

    def join(self, name: str) -> None:
        self.expected.add(name)

    async def ship(self, host: Host) -> HostResult:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiting[host.name] = (host, fut)
        self.expected.discard(host.name)
        self._launch_when_ready()
        return await fut

    def leave(self, name: str) -> None:
        self.expected.discard(name)
        self._launch_when_ready()

    def _launch_when_ready(self) -> None:
        if self.expected or not self.waiting:
            return
        batch, self.waiting = self.waiting, {}
        task = asyncio.ensure_future(image_ops.ensure_image(self.runner, [h for h, _ in batch.values()],
                                                            self.image, source="ship"))

        def done(t: asyncio.Task) -> None:
            error = None if t.cancelled() else t.exception()
            for name, (_, fut) in batch.items():
                if fut.done():
                    continue
                if t.cancelled():
                    fut.cancel()
                elif error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(t.result()[name])

        task.add_done_callback(done)


#: after the switch, independent of each other (not of the switch, nor of the unlock that follows)
_BOOKKEEPING = dp.AFTER_SWITCH - {dp.Action.UNLOCK}


def _join(a: str, b: str) -> str:
    """``a; b``, without saying ``b`` twice (a lock left behind is reported by every cleanup that tries it)."""
    if b and b in a:
        return a
    return f"{a}; {b}" if a else b


# --------------------------------------------------------------------------- unlock
async def force_unlock(runner: Runner, hosts: Sequence[Host], app: str) -> GroupResult:
    """Release the app's lock whoever holds it; ``value``: the holder's LockInfo, None when it was free."""
    async def one(h: Host) -> HostResult:
        r = await runner.run(h, for_host(appstate.read_lock(app), h))
        if not r.ok:
            return r
        held = r.stdout.strip()
        info = None
        if held:
            try:
                doc = json.loads(held)
            except ValueError:
                doc = {}
            info = dp.LockInfo.from_dict(doc if isinstance(doc, dict) else {})
        rel = await runner.run(h, for_host(appstate.release_lock(app, "00000000", force=True), h))
        if rel.ok:
            rel.value = info if rel.stdout.strip() == "released" else None
        return rel

    return await runner.fan_out(hosts, one)


# --------------------------------------------------------------------------- exec --app
async def serving_container(runner: Runner, host: Host, app: str) -> HostResult:
    """``value``: the container the app's traffic goes to on ``host`` (the proxy route's, else
    current.json's), None when the app is not deployed there."""
    r = await runner.run(host, for_host(appstate.read_state(app, history_tail=1), host))
    if r.status is Status.UNREACHABLE:
        return r
    if not r.ok:
        why = explain(host.name, r) or r.reason
        r.error = f"cannot read the state of {app}: {why}"
        return r
    st = dp.HostState.from_outputs(host.name, app, state_text=r.stdout, history_tail=1)
    r.value = st.route or (st.current.container if st.current else None)
    return r


def container_command(words: Sequence[str]) -> list[str]:
    """One word is a shell line (``sh -c``, as ``ndctl exec`` does on hosts); several are an exact argv."""
    if not words:
        raise UsageError("no command given")
    return ["sh", "-c", words[0]] if len(words) == 1 else list(words)


async def exec_in_app(runner: Runner, hosts: Sequence[Host], app: str, words: Sequence[str], *,
                      on_output: OutputCallback | None = None,
                      timeout: float | None = None) -> tuple[GroupResult, list[str]]:
    """``docker exec`` of a command in the app's serving container on each host.

    Returns the results of the hosts that serve the app and the names of those
    that do not; NotFoundError when no selected host serves it.
    """
    command = container_command(words)
    found = await runner.fan_out(hosts, lambda h: serving_container(runner, h, app))
    serving = {r.host: r.value for r in found if r.ok and r.value}
    missing = [r.host for r in found if r.ok and not r.value]
    if not serving and not [r for r in found if not r.ok]:
        raise NotFoundError(f"app {app!r} is not deployed on any selected host",
                            hint="`ndctl deploy status APP` shows where it runs")
    by_name = {h.name: h for h in hosts}

    async def one(h: Host) -> HostResult:
        pre = found[h.name]
        if not pre.ok:
            return HostResult(h.name, pre.status, pre.exit_code, "", "", pre.duration, error=pre.error,
                              exit_status=pre.exit_status)
        argv = docker.exec_in(serving[h.name], command)
        return await runner.run(h, for_host(argv, h), on_output=on_output, timeout=timeout)

    result = await runner.fan_out([by_name[n] for n in by_name if n not in missing], one)
    return result, missing
