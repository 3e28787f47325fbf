"""The deploy executor (``ndctl.ops.deploy``) against simulated hosts: no SSH, no Docker.

``World`` plays the hosts: it applies each step the executor runs to an
in-memory state (containers, route, current.json, history, lock) and observes
that state the way ``Deployer.observe`` would, so the real plans of
``deployplan`` run through the real executor (``step``, ``run_steps``,
``deploy``, cancellation, rollback-on-failure). Failures, lost connections and
Ctrl-C are injected per (host, action).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable

import pytest

from ndctl.cli import deploy as cli_deploy
from ndctl.cli import output
from ndctl.core import deployplan as dp
from ndctl.core.appspec import parse_appspec
from ndctl.core.deployplan import Action as A
from ndctl.core.errors import ExitStatus, NotFoundError, RemoteError
from ndctl.core.inventory import Host
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.ops import deploy as ops
from ndctl.ops.deploy import Deployer, StepFailed
from ndctl.transport.ssh import Runner, RunOptions

SPEC = parse_appspec("app: web\nimage: web:v2\nport: 8080\nparallel: 1\ngrace: 2s\ndrain: 1s\n")
IMG = "sha256:" + "2" * 64


def iso_now() -> str:
    return dp.iso(datetime.now(timezone.utc))


class HostSim:
    def __init__(self, name: str) -> None:
        self.name = name
        self.containers: dict[str, dp.Container] = {}
        self.route: str | None = None
        self.current: dp.Current | None = None
        self.history: list[dp.HistoryRecord] = []
        self.lock: str | None = None  # holder's deploy id
        self.reachable = True

    def state(self, app: str) -> dp.HostState:
        lock = dp.LockInfo(who="me", at=iso_now(), version="?", deploy_id=self.lock) if self.lock else None
        return dp.HostState(host=self.name, app=app, containers=tuple(self.containers.values()),
                            current=self.current, lock=lock, route=self.route, history=tuple(self.history),
                            image_ids=frozenset(), network=True, proxy=True)

    def serving_version(self) -> str | None:
        c = self.containers.get(self.route or "")
        return c.version if c else None


class World:
    """Simulated hosts plus injected trouble: ``fail[(host, action)]`` is an exception to raise,
    or an async callable awaited instead of the step (to block it, or fail it later)."""

    def __init__(self, names: list[str], spec=SPEC) -> None:
        self.hosts = {n: HostSim(n) for n in names}
        self.spec = spec
        self.fail: dict[tuple[str, A], Any] = {}
        self.stopping: set[tuple[str, str]] = set()  # (host, container): a delayed `docker stop` under way
        self.calls: list[tuple[str, str]] = []
        self.route_clash: dict[str, Exception] = {}  # host -> what the proxy route check raises

    def seed(self, version: str = "v1", deploy_id: str = "aaaaaaaa") -> None:
        """Every host serves ``version`` from a container deployed earlier."""
        for h in self.hosts.values():
            name = f"nd-web-{deploy_id}"
            h.containers[name] = dp.Container(name=name, app="web", version=version, deploy_id=deploy_id, port=8080,
                                              image=f"web:{version}", image_id="sha256:" + "1" * 64, running=True,
                                              state="running", created="2026-01-01T00:00:00Z")
            h.route = name
            h.current = dp.Current(version=version, deploy_id=deploy_id, container=name, port=8080,
                                   switched_at="2026-01-01T00:00:01Z")
            h.history.append(dp.HistoryRecord(deploy_id=deploy_id, app="web", version=version, image=f"web:{version}",
                                              image_id="sha256:" + "1" * 64, host=h.name, result="ok",
                                              started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:00:01Z",
                                              container=name))


class FakeDeployer(Deployer):
    def __init__(self, world: World, spec=SPEC, events: list | None = None) -> None:
        ev = events if events is not None else []
        super().__init__(Runner(RunOptions()), None, spec, on_event=lambda h, e, m: ev.append((h, e, m)))
        self.world = world
        self.events = ev

    def sim(self, host: Host) -> HostSim:
        return self.world.hosts[host.name]

    async def observe(self, host: Host) -> dp.HostState:
        sim = self.sim(host)
        if not sim.reachable:
            raise RemoteError(f"{host.name}: unreachable", HostResult(host.name, Status.UNREACHABLE, error="down"))
        return sim.state(self.spec.app)

    async def _run(self, host: Host, argv: list[str], **kw: Any) -> HostResult:
        sim = self.sim(host)
        self.world.calls.append((host.name, " ".join(argv[:2]) if argv[0] != "sh" else argv[3]))
        if not sim.reachable:
            return HostResult(host.name, Status.UNREACHABLE, error="connection refused")
        if argv[0] == "sh" and argv[3] == "nd-defuse-stop":
            c = argv[4]
            if (host.name, c) in self.world.stopping:  # the stop in flight ends before the defuse returns
                sim.containers[c] = replace(sim.containers[c], running=False, state="exited")
            return HostResult(host.name, Status.OK, 0, "true\n" if sim.containers[c].running else "false\n")
        if argv[0] == "sh" and argv[3] == "nd-unlock":
            deploy_id, force = argv[6], argv[7] == "1"
            if sim.lock is None:
                return HostResult(host.name, Status.OK, 0, "not-locked\n")
            if sim.lock != deploy_id and not force:
                return HostResult(host.name, Status.FAILED, 75, '{"deploy_id":"%s"}\n' % sim.lock)
            sim.lock = None
            return HostResult(host.name, Status.OK, 0, "released\n")
        return HostResult(host.name, Status.OK, 0)

    async def _check_route(self, run: ops.HostRun) -> None:
        clash = self.world.route_clash.get(run.host.name)
        if clash is not None:
            raise clash

    async def _do(self, run: ops.HostRun, step: dp.Step) -> None:
        host, sim = run.host, self.sim(run.host)
        self.world.calls.append((host.name, step.action.value))
        trouble = self.world.fail.get((host.name, step.action))
        if trouble is not None:
            if isinstance(trouble, BaseException):
                raise trouble
            await trouble(run, step)
        if not sim.reachable:
            raise StepFailed(step, "connection refused", HostResult(host.name, Status.UNREACHABLE, error="refused"))
        if step.action is A.LOCK:
            run.lock_pending = True
            if sim.lock is not None and sim.lock != step.deploy_id:
                raise dp.lock_conflict(self.spec.app, host.name, dp.LockInfo(who="alice", at=iso_now(),
                                                                             version="v9", deploy_id=sim.lock),
                                       datetime.now(timezone.utc))
            sim.lock = step.deploy_id
            run.locked = True
        elif step.action is A.UNLOCK:
            await self._release(run, step.deploy_id or "")
        elif step.action is A.START:
            sim.containers[step.container] = dp.Container(
                name=step.container, app="web", version=step.version or "", deploy_id=step.deploy_id or "",
                port=step.port, image=step.image or "", image_id=IMG, running=True, state="running",
                created=iso_now())
        elif step.action is A.START_EXISTING:
            sim.containers[step.container] = replace(sim.containers[step.container], running=True, state="running")
        elif step.action is A.STOP:
            for c in step.containers:
                sim.containers[c] = replace(sim.containers[c], running=False, state="exited")
        elif step.action in (A.REMOVE, A.PRUNE):
            for c in step.containers:
                sim.containers.pop(c, None)
        elif step.action is A.SWITCH:
            sim.route = step.container
            run.switched = True
        elif step.action in (A.WRITE_CURRENT, A.REPAIR_CURRENT):
            sim.current = dp.Current(version=step.version or "", deploy_id=step.deploy_id or "",
                                     container=step.container or "", port=step.port, switched_at=iso_now())
        elif step.action is A.RECORD:
            rec = dp.history_record(run.plan, result=step.result or "ok", who=self.who, started_at=run.started,
                                    finished_at=datetime.now(timezone.utc))
            sim.history.append(dp.HistoryRecord.from_dict(rec))


def hosts(*names: str) -> list[Host]:
    return [Host(n, "127.0.0.1") for n in names]


@pytest.fixture(autouse=True)
def local_image(monkeypatch):
    async def local_image_id(image: str) -> str:
        return IMG
    monkeypatch.setattr(ops.image_ops, "local_image_id", local_image_id)


def deploy(d: FakeDeployer, hs: list[Host], **kw):
    return asyncio.run(d.deploy(hs, version="v2", **kw))


def lost() -> Callable:
    """A step whose connection drops while it runs (the transport's result: no exit status)."""
    async def fail(run, step):
        raise StepFailed(step, "connection lost while the command ran: reset",
                         HostResult(run.host.name, Status.FAILED, None, error="connection lost while the command ran"))
    return fail


# --------------------------------------------------------------------------- rolling
def test_three_hosts_roll_one_batch_at_a_time_in_order() -> None:
    w = World(["h1", "h2", "h3"])
    w.seed()
    result, summary = deploy(FakeDeployer(w), hosts("h1", "h2", "h3"))
    assert result.ok and summary["result"] == "ok"
    assert summary["batches"] == [["h1"], ["h2"], ["h3"]]
    vals = [r.value for r in result]
    for a, b in zip(vals, vals[1:]):  # each batch has switched before the next one starts
        assert a["switched_at"] and a["switched_at"] <= b["rollout_started_at"]
    assert all(h.serving_version() == "v2" and h.lock is None for h in w.hosts.values())
    steps = [s["action"] for s in vals[0]["steps"]]
    assert steps[:2] == ["ensure-proxy", "lock"] and steps[-1] == "unlock"
    assert all(s["ok"] for s in vals[0]["steps"])


def test_next_batch_starts_while_the_previous_one_finishes_its_bookkeeping() -> None:
    w = World(["h1", "h2"])
    w.seed()
    h2_started = asyncio.Event()

    async def record_after_h2_started(run, step):
        # without the overlap h2 would start only after this returns: a timeout, then a warning
        await asyncio.wait_for(h2_started.wait(), 5)

    async def note_start(run, step):
        h2_started.set()

    w.fail[("h1", A.RECORD)] = record_after_h2_started
    w.fail[("h2", A.START)] = note_start
    d = FakeDeployer(w)
    result, _ = deploy(d, hosts("h1", "h2"))
    assert result.ok and not [e for e in d.events if e[1] == "warning"], d.events
    assert w.calls.index(("h2", "start")) < w.calls.index(("h1", "unlock"))
    for h in w.hosts.values():  # every host's bookkeeping and unlock still ran
        assert h.serving_version() == "v2" and h.lock is None and h.history[-1].version == "v2"
    v1 = result["h1"].value
    assert v1["switched_at"] <= result["h2"].value["rollout_started_at"] <= v1["rollout_finished_at"]
    assert [s["action"] for s in v1["steps"]][-1] == "unlock" and all(s["ok"] for s in v1["steps"])


def test_ctrl_c_in_the_next_batch_still_finishes_the_previous_ones_bookkeeping() -> None:
    w = World(["h1", "h2"])
    w.seed()
    d = FakeDeployer(w)

    async def slow_record(run, step):
        await asyncio.sleep(0.3)

    w.fail[("h1", A.RECORD)] = slow_record

    async def main():
        reached = _cancel_when(w, "h2", A.HEALTH_CHECK)
        await _deploy_then_cancel(d, hosts("h1", "h2"), reached)

    asyncio.run(main())
    h1, h2 = w.hosts["h1"], w.hosts["h2"]
    assert h1.serving_version() == "v2" and h1.lock is None and h1.history[-1].version == "v2"
    assert h2.serving_version() == "v1" and h2.lock is None
    assert d.report[0]["h1"].value["result"] == "ok" and d.report[0]["h2"].value["result"] == "interrupted"


def test_failed_batch_stops_the_rollout_and_switched_hosts_stay_on_green() -> None:
    w = World(["h1", "h2", "h3"])
    w.seed()
    w.fail[("h2", A.HEALTH_CHECK)] = StepFailed(dp.Step(A.HEALTH_CHECK), "unhealthy: 404")
    result, summary = deploy(FakeDeployer(w), hosts("h1", "h2", "h3"))
    assert not result.ok
    assert (summary["switched"], summary["failed"], summary["untouched"], summary["rolled_back"]) == (
        ["h1"], ["h2"], ["h3"], [])
    assert [w.hosts[n].serving_version() for n in ("h1", "h2", "h3")] == ["v2", "v1", "v1"]
    assert ("h3", "start") not in w.calls  # never reached
    assert all(h.lock is None for h in w.hosts.values())  # h3's lock (taken while preparing) released too
    assert result["h3"].value["result"] == "skipped" and "earlier batch failed" in result["h3"].error
    assert result["h1"].ok and result["h2"].value["result"] == "failed"
    green = result["h2"].value["container"]
    assert w.hosts["h2"].containers[green].running is False  # stopped, kept for inspection
    assert w.hosts["h2"].history[-1].result == "failed"


def test_rollback_on_failure_returns_switched_hosts_to_the_blue_they_replaced() -> None:
    w = World(["h1", "h2", "h3"])
    w.seed()
    w.fail[("h2", A.HEALTH_CHECK)] = StepFailed(dp.Step(A.HEALTH_CHECK), "unhealthy: 404")
    result, summary = deploy(FakeDeployer(w), hosts("h1", "h2", "h3"), rollback_on_failure=True)
    assert summary["rolled_back"] == ["h1"] and summary["roll_back"] == ["h1"]
    assert [w.hosts[n].serving_version() for n in ("h1", "h2", "h3")] == ["v1", "v1", "v1"]
    assert w.hosts["h1"].route == "nd-web-aaaaaaaa"  # the very container it replaced
    assert w.hosts["h1"].current.container == "nd-web-aaaaaaaa"
    h1 = result["h1"]
    assert not h1.ok and h1.value["result"] == "rolled-back" and "rolled back to nd-web-aaaaaaaa" in h1.error
    assert h1.value["rolled_back"]["result"] == "ok"
    assert w.hosts["h1"].history[-1].strategy == "rollback"
    assert all(h.lock is None for h in w.hosts.values())


def test_rollback_to_a_release_whose_delayed_stop_is_under_way_starts_it_again() -> None:
    """The blue's grace period ended during the failed batch and its `docker stop` is in
    flight: switching "instantly" would route to a container about to die."""
    w = World(["h1", "h2"])
    w.seed()
    w.fail[("h2", A.HEALTH_CHECK)] = StepFailed(dp.Step(A.HEALTH_CHECK), "unhealthy: 404")
    w.stopping.add(("h1", "nd-web-aaaaaaaa"))
    d = FakeDeployer(w)
    result, summary = deploy(d, hosts("h1", "h2"), rollback_on_failure=True)
    assert summary["rolled_back"] == ["h1"]
    h1 = w.hosts["h1"]
    assert h1.route == "nd-web-aaaaaaaa" and h1.containers["nd-web-aaaaaaaa"].running
    acts = [s["action"] for s in result["h1"].value["rolled_back"]["steps"]]
    assert acts.index("start-existing") < acts.index("health-check") < acts.index("switch"), acts
    assert any("was being stopped" in m for _, e, m in d.events if e == "note")


def test_rollback_to_a_running_release_cancels_its_delayed_stop_first() -> None:
    w = World(["h1", "h2"])
    w.seed()
    w.fail[("h2", A.HEALTH_CHECK)] = StepFailed(dp.Step(A.HEALTH_CHECK), "unhealthy: 404")
    result, _ = deploy(FakeDeployer(w), hosts("h1", "h2"), rollback_on_failure=True)
    calls = [c for h, c in w.calls if h == "h1"]
    rb = calls[calls.index("nd-defuse-stop"):]
    assert "switch" in rb and "start-existing" not in rb  # defused before the (instant) switch
    assert [s["action"] for s in result["h1"].value["rolled_back"]["steps"]].count("health-check") == 0


def test_without_the_flag_nothing_is_rolled_back() -> None:
    w = World(["h1", "h2"])
    w.seed()
    w.fail[("h2", A.START)] = StepFailed(dp.Step(A.START), "no such image")
    _, summary = deploy(FakeDeployer(w), hosts("h1", "h2"))
    assert summary["roll_back"] == [] and w.hosts["h1"].serving_version() == "v2"


def test_a_host_failing_to_prepare_stops_everything_and_frees_the_others_locks() -> None:
    w = World(["h1", "h2"])
    w.seed()
    w.fail[("h2", A.SHIP_IMAGE)] = StepFailed(dp.Step(A.SHIP_IMAGE), "disk full")
    result, summary = deploy(FakeDeployer(w), hosts("h1", "h2"))
    assert not result.ok and summary["result"] == "failed"
    assert ("h1", "start") not in w.calls and ("h2", "start") not in w.calls
    assert all(h.lock is None and h.serving_version() == "v1" for h in w.hosts.values())
    assert result["h1"].value["result"] == "skipped" and "while preparing" in result["h1"].error


def test_lock_held_by_another_deploy_is_refused_with_who_and_exit_conflict() -> None:
    w = World(["h1", "h2"])
    w.seed()
    w.hosts["h2"].lock = "0badcafe"
    result, _ = deploy(FakeDeployer(w), hosts("h1", "h2"))
    assert "being deployed on h2 by alice" in result["h2"].error
    assert "`ndctl deploy unlock web`" in result["h2"].error
    assert w.hosts["h2"].lock == "0badcafe" and w.hosts["h1"].lock is None
    assert cli_deploy.deploy_exit_status(result) is ExitStatus.CONFLICT


# --------------------------------------------------------------------------- interruptions
def test_lost_connection_during_the_health_check_is_an_interruption_that_cleans_up() -> None:
    w = World(["h1"])
    w.seed()
    w.fail[("h1", A.HEALTH_CHECK)] = lost()
    d = FakeDeployer(w)
    result, summary = deploy(d, hosts("h1"))
    v = result["h1"].value
    assert v["result"] == "interrupted" and "connection to h1 was lost during health-check" in v["message"]
    sim = w.hosts["h1"]
    assert sim.serving_version() == "v1" and sim.lock is None
    assert sim.containers[v["container"]].running is False
    assert sim.history[-1].result == "interrupted"
    assert [s["action"] for s in v["steps"]][-4:] == ["capture-logs", "stop", "record", "unlock"]
    assert any(e == "interrupted" for _, e, _ in d.events)


def test_cleanup_on_an_unreachable_host_says_what_was_left_and_how_to_free_it() -> None:
    w = World(["h1"])
    w.seed()

    async def drop(run, step):
        w.hosts["h1"].reachable = False
        await lost()(run, step)

    w.fail[("h1", A.HEALTH_CHECK)] = drop
    result, _ = deploy(FakeDeployer(w), hosts("h1"))
    msg = result["h1"].error
    assert "could not clean up" in msg and "may still run on h1" in msg
    assert "`ndctl deploy unlock web` frees it" in msg and "ndctl deploy status web" in msg
    assert w.hosts["h1"].lock is not None and w.hosts["h1"].serving_version() == "v1"
    # the first unreachable cleanup step ends the cleanup: no pointless retries of the others
    assert [s["action"] for s in result["h1"].value["steps"]][-2:] == ["health-check", "capture-logs"]


def _cancel_when(w: World, host: str, action: A) -> asyncio.Event:
    reached = asyncio.Event()

    async def block(run, step):
        if action is A.LOCK:  # the lock request reached the host, its answer did not come back
            w.hosts[host].lock = step.deploy_id
            run.lock_pending = True
        reached.set()
        await asyncio.sleep(3600)

    w.fail[(host, action)] = block
    return reached


async def _deploy_then_cancel(d: FakeDeployer, hs: list[Host], reached: asyncio.Event):
    task = asyncio.ensure_future(d.deploy(hs, version="v2"))
    await asyncio.wait_for(reached.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_ctrl_c_during_the_health_check_cleans_up_and_frees_every_lock() -> None:
    w = World(["h1", "h2"])
    w.seed()
    d = FakeDeployer(w)

    async def main():
        reached = _cancel_when(w, "h1", A.HEALTH_CHECK)
        await _deploy_then_cancel(d, hosts("h1", "h2"), reached)

    asyncio.run(main())
    result, summary = d.report
    assert summary["interrupted"] and summary["result"] == "interrupted"
    h1 = w.hosts["h1"]
    assert h1.serving_version() == "v1" and h1.lock is None and w.hosts["h2"].lock is None
    green = result["h1"].value["container"]
    assert h1.containers[green].running is False and h1.history[-1].result == "interrupted"
    assert result["h2"].value["result"] == "skipped" and "interrupted before its batch" in result["h2"].error
    assert ("h2", "start") not in w.calls


def test_ctrl_c_while_taking_the_lock_releases_it() -> None:
    w = World(["h1"])
    w.seed()
    d = FakeDeployer(w)

    async def main():
        reached = _cancel_when(w, "h1", A.LOCK)
        await _deploy_then_cancel(d, hosts("h1"), reached)

    asyncio.run(main())
    assert w.hosts["h1"].lock is None and d.report[0]["h1"].value["result"] == "interrupted"


def test_ctrl_c_after_the_switch_finishes_the_bookkeeping() -> None:
    w = World(["h1"])
    w.seed()
    d = FakeDeployer(w)

    async def main():
        reached = _cancel_when(w, "h1", A.WRITE_CURRENT)
        await _deploy_then_cancel(d, hosts("h1"), reached)

    asyncio.run(main())
    sim = w.hosts["h1"]
    # green passed and serves: the deploy stands, current.json/history/unlock still happen
    assert sim.serving_version() == "v2" and sim.lock is None
    assert sim.history[-1].result == "ok" and d.report[0]["h1"].value["result"] == "ok"


def test_a_route_clash_is_refused_before_green_starts() -> None:
    from ndctl.core.proxy import RouteConflict

    w = World(["h1", "h2"])
    w.seed()
    w.route_clash["h2"] = RouteConflict("h2: host 'example.com' is claimed by apps 'blog' and 'web'")
    d = FakeDeployer(w)
    result, summary = deploy(d, hosts("h1", "h2"))
    assert not result.ok and "claimed by apps 'blog' and 'web'" in result["h2"].error
    assert result["h2"].exit_status is ExitStatus.CONFLICT
    for h in w.hosts.values():  # nothing started anywhere, every lock released
        assert h.serving_version() == "v1" and h.lock is None and len(h.containers) == 1
    assert not any(a == "start" for _, a in w.calls)


def test_failure_after_the_switch_is_a_warning_and_the_rest_still_runs() -> None:
    w = World(["h1"])
    w.seed()
    w.fail[("h1", A.RECORD)] = StepFailed(dp.Step(A.RECORD), "disk full")
    d = FakeDeployer(w)
    result, _ = deploy(d, hosts("h1"))
    assert result.ok and w.hosts["h1"].serving_version() == "v2" and w.hosts["h1"].lock is None
    assert any(e == "warning" for _, e, _ in d.events)


# --------------------------------------------------------------------------- error texts
@pytest.mark.parametrize("stderr,code,expect", [
    ("sh: 1: docker: not found\n", 127, "Docker is not installed on h1"),
    ("sudo: docker: command not found\n", 1, "Docker is not installed on h1"),
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", 1,
     "the Docker daemon is not running on h1"),
    ("permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock", 1,
     "permission denied on the Docker socket of h1"),
    ("Error response from daemon: No such container: x", 1, None),
])
def test_explain(stderr: str, code: int, expect: str | None) -> None:
    got = ops.explain("h1", HostResult("h1", Status.FAILED, code, "", stderr))
    assert (got is None) if expect is None else expect in got


@pytest.mark.parametrize("text,port", [
    ("docker: Error response from daemon: driver failed programming external connectivity on endpoint "
     "nextdeploy-proxy: Bind for 0.0.0.0:80 failed: port is already allocated.", "80"),
    ("Error starting userland proxy: listen tcp4 0.0.0.0:443: bind: address already in use", "443"),
])
def test_port_clash(text: str, port: str) -> None:
    msg = ops.port_clash("h1", "caddy", text)
    assert msg.startswith(f"port {port} is already in use on h1, so the caddy proxy cannot start (")
    assert "nothing was deployed" in msg
    assert ops.port_clash("h1", "caddy", "some other error") is None


def test_proxy_that_cannot_start_names_the_port_clash(monkeypatch) -> None:
    w = World(["h1"])
    d = FakeDeployer(w)
    run = ops.HostRun(hosts("h1")[0])

    async def ensure_proxy(*a, **kw):
        raise RemoteError("h1: starting the caddy proxy failed", HostResult(
            "h1", Status.FAILED, 125, "", "Bind for 0.0.0.0:80 failed: port is already allocated"))

    monkeypatch.setattr(ops.proxy_ops, "ensure_proxy", ensure_proxy)
    with pytest.raises(StepFailed) as e:
        asyncio.run(d._ensure_proxy(run, dp.Step(A.ENSURE_PROXY, image="caddy:x")))
    assert "port 80 is already in use on h1" in str(e.value)
    assert e.value.step.action is A.ENSURE_PROXY


@pytest.mark.parametrize("version,warned", [((2, 6, 1), True), ((2, 6, 2), False), ((2, 8, 4), False)])
def test_only_a_caddy_that_must_reload_to_switch_draws_the_websocket_note(monkeypatch, version, warned) -> None:
    from ndctl.core.proxy import ProxyStatus

    w = World(["h1", "h2"])
    d = FakeDeployer(w)

    async def ensure_proxy(*a, **kw):
        return ProxyStatus("caddy", "caddy:x", version=version)

    monkeypatch.setattr(ops.proxy_ops, "ensure_proxy", ensure_proxy)
    for h in hosts("h1", "h2"):
        asyncio.run(d._ensure_proxy(ops.HostRun(h), dp.Step(A.ENSURE_PROXY, image="caddy:x")))
    notes = [m for _, e, m in d.events if e == "note" and "closes WebSockets" in m]
    assert len(notes) == (1 if warned else 0)  # once per deploy, not once per host


def test_connection_lost_classification() -> None:
    assert ops.connection_lost(HostResult("h", Status.UNREACHABLE))
    assert ops.connection_lost(HostResult("h", Status.FAILED, None, error="connection lost while the command ran"))
    assert not ops.connection_lost(HostResult("h", Status.FAILED, 1, error="x"))
    assert not ops.connection_lost(HostResult("h", Status.FAILED, 124, error="timed out after 3s"))
    assert not ops.connection_lost(None)


# --------------------------------------------------------------------------- exec --app
class ScriptedRunner(Runner):
    def __init__(self, states: dict[str, str], locks: dict[str, str] | None = None) -> None:
        super().__init__(RunOptions())
        self.states = states
        self.locks = dict(locks or {})
        self.argvs: list[tuple[str, list[str]]] = []

    async def run(self, host, argv, *, input=None, timeout=None, on_output=None) -> HostResult:
        self.argvs.append((host.name, list(argv)))
        if argv[0] == "sh" and argv[3] == "nd-state":
            return HostResult(host.name, Status.OK, 0, self.states.get(host.name, ""))
        if argv[0] == "sh" and argv[3] == "nd-read-lock":
            return HostResult(host.name, Status.OK, 0, self.locks.get(host.name, ""))
        if argv[0] == "sh" and argv[3] == "nd-unlock":
            assert argv[-1] == "1"  # forced
            return HostResult(host.name, Status.OK, 0, "released\n" if self.locks.pop(host.name, None) is not None
                              else "not-locked\n")
        if on_output:
            on_output(host.name, "stdout", "hi")
        return HostResult(host.name, Status.OK, 0, "hi\n")


def test_exec_in_app_runs_in_the_routed_container_and_skips_hosts_without_the_app() -> None:
    runner = ScriptedRunner({
        "h1": 'route {"app":"web","hosts":[],"upstream":"nd-web-bbbbbbbb:8080","drain_seconds":1}\n'
              'current {"version":"v1","deploy_id":"aaaaaaaa","container":"nd-web-aaaaaaaa","port":8080}\n',
        "h2": 'current {"version":"v1","deploy_id":"aaaaaaaa","container":"nd-web-aaaaaaaa","port":8080}\n',
    })
    result, missing = asyncio.run(ops.exec_in_app(runner, hosts("h1", "h2", "h3"), "web", ["cat", "/a b"]))
    assert missing == ["h3"] and [r.host for r in result] == ["h1", "h2"] and result.ok
    execs = {h: a for h, a in runner.argvs if a[:2] == ["docker", "exec"]}
    assert execs == {"h1": ["docker", "exec", "nd-web-bbbbbbbb", "cat", "/a b"],  # the route wins
                     "h2": ["docker", "exec", "nd-web-aaaaaaaa", "cat", "/a b"]}
    asyncio.run(ops.exec_in_app(runner, hosts("h1"), "web", ["echo $HOME | wc -c"]))
    assert runner.argvs[-1][1] == ["docker", "exec", "nd-web-bbbbbbbb", "sh", "-c", "echo $HOME | wc -c"]


def test_exec_in_an_app_no_host_has_is_not_found() -> None:
    from ndctl.core.errors import NotFoundError

    with pytest.raises(NotFoundError, match="'web' is not deployed on any selected host"):
        asyncio.run(ops.exec_in_app(ScriptedRunner({}), hosts("h1"), "web", ["true"]))


def test_force_unlock_reports_whose_lock_it_was() -> None:
    runner = ScriptedRunner({}, {"h1": '{"who":"alice@lap","from":"lap","at":"2026-11-27T10:00:00Z",'
                                       '"version":"v9","deploy_id":"0badcafe"}\n', "h3": "{}\n"})
    result = asyncio.run(ops.force_unlock(runner, hosts("h1", "h2", "h3"), "web"))
    assert result.ok and runner.locks == {}
    assert (result["h1"].value.who, result["h1"].value.version) == ("alice@lap", "v9")
    assert result["h2"].value is None and result["h3"].value.incomplete


# --------------------------------------------------------------------------- CLI rendering
def test_status_row_lists_pending_stops_and_explains_strays() -> None:
    st = {"serving": {"version": "v2", "container": "nd-web-b", "running": True, "state": "running"},
          "lock": {"who": "alice@lap", "at": "2026-11-27T10:00:00Z", "age": "3m ago", "version": "v3",
                   "deploy_id": "0badcafe"},
          "releases": [{"container": "nd-web-a", "running": True}, {"container": "nd-web-0", "running": False},
                       {"container": "nd-web-z", "running": True}],
          "strays": ["nd-web-c"], "stale": ["nd-web-z"], "notes": []}
    row = cli_deploy.status_row(st)
    assert row["pending_stops"] == ["nd-web-a"]
    cells = cli_deploy.status_cells("h1", row)
    assert cells[:3] == ["h1", "v2", "nd-web-b"]
    assert cells[3] == "alice@lap since 2026-11-27T10:00:00Z (3m ago), deploying v3 [0badcafe]"
    assert cells[4:6] == ["nd-web-c", "nd-web-a"]
    assert "failed or was interrupted before its switch" in cells[6] and "past the grace period" in cells[6]


def test_final_lines_and_exit_status() -> None:
    g = GroupResult([
        HostResult("h1", Status.OK, 0, value={"result": "ok", "container": "nd-web-b"}),
        HostResult("h2", Status.FAILED, 1, error="x", value={"result": "failed", "message": "health-check: 404"}),
        HostResult("h3", Status.FAILED, 1, error="y", value={"result": "skipped", "message": "not deployed"}),
    ])
    assert cli_deploy.final_lines(g, "web", "v2") == [
        "h1: ok, serving web v2 from nd-web-b", "h2: failed: health-check: 404", "h3: skipped: not deployed"]
    assert cli_deploy.deploy_exit_status(g) is ExitStatus.HOST_FAILED


def test_progress_goes_to_stderr_only_on_a_terminal(monkeypatch, capsys) -> None:
    monkeypatch.setattr(output, "progress_enabled", lambda: False)
    cli_deploy._event("h1", "start", "start nd-web-b")
    cli_deploy._event("h1", "failed", "boom")  # its final line says it
    cli_deploy._event("h1", "rollback", "rolling back to x")
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == "h1: rollback: rolling back to x\n"
    monkeypatch.setattr(output, "progress_enabled", lambda: True)
    cli_deploy._event("h1", "start", "start nd-web-b")
    assert capsys.readouterr().err == "h1: start: start nd-web-b\n"


# --------------------------------------------------------------------------- one docker save for all
def test_shared_ship_waits_for_every_host_then_ships_once(monkeypatch) -> None:
    calls: list[list[str]] = []

    async def ensure_image(runner, hs, image, *, source="ship", **kw):
        calls.append([h.name for h in hs])
        return GroupResult([HostResult(h.name, Status.OK, 0, value={"action": "shipped"}) for h in hs])

    monkeypatch.setattr(ops.image_ops, "ensure_image", ensure_image)

    async def main():
        sh = ops._SharedShip(Runner(RunOptions()), "web:v2")
        h1, h2, h3, h4 = hosts("h1", "h2", "h3", "h4")
        for h in (h1, h2, h3):
            sh.join(h.name)
        t1 = asyncio.ensure_future(sh.ship(h1))
        await asyncio.sleep(0.01)
        assert not calls  # h2 and h3 have not decided yet
        t2 = asyncio.ensure_future(sh.ship(h2))
        await asyncio.sleep(0.01)
        sh.leave("h3")  # prepared without shipping (it had the image), or failed
        r1, r2 = await asyncio.gather(t1, t2)
        assert r1.host == "h1" and r2.host == "h2" and calls == [["h1", "h2"]]
        sh.join("h4")  # began later (more hosts than forks): a transfer of its own
        r4 = await sh.ship(h4)
        assert r4.ok and calls == [["h1", "h2"], ["h4"]]

    asyncio.run(main())


def test_shared_ship_failure_reaches_every_waiting_host(monkeypatch) -> None:
    async def ensure_image(runner, hs, image, **kw):
        raise NotFoundError("image 'web:v2' is not in the local Docker engine")

    monkeypatch.setattr(ops.image_ops, "ensure_image", ensure_image)

    async def main():
        sh = ops._SharedShip(Runner(RunOptions()), "web:v2")
        sh.join("h1"), sh.join("h2")
        results = await asyncio.gather(*(sh.ship(h) for h in hosts("h1", "h2")), return_exceptions=True)
        assert all(isinstance(r, NotFoundError) for r in results)

    asyncio.run(main())


class DownRunner(Runner):
    """Every host refuses the connection: no command ever starts."""

    def __init__(self) -> None:
        super().__init__(RunOptions())
        self.argvs: list[list[str]] = []

    async def run(self, host, argv, *, input=None, timeout=None, on_output=None) -> HostResult:
        self.argvs.append(list(argv))
        return HostResult(host.name, Status.UNREACHABLE, None, error="cannot connect: Connection refused")


def test_a_lock_request_that_never_reached_the_host_leaves_no_lock_to_report() -> None:
    runner = DownRunner()
    d = Deployer(runner, None, SPEC)
    result, summary = asyncio.run(d.deploy(hosts("h1"), version="v2"))
    msg = result["h1"].error
    assert not result.ok and "Connection refused" in msg
    assert "stays on h1" not in msg  # nothing was locked: no advice to unlock
    # counted as unreachable, not as a failed deploy (exit 4, as for every other command)
    assert result["h1"].status is Status.UNREACHABLE and result.exit_status() is ExitStatus.UNREACHABLE
    assert result["h1"].value["result"] == "failed" and summary["failed"] == ["h1"]
    assert not any(a[:4] == ["sh", "-c", a[2], "nd-unlock"] for a in runner.argvs if a[0] == "sh")


def test_join_says_each_part_once() -> None:
    assert ops._join("", "a") == "a" and ops._join("a", "b") == "a; b"
    left = "the lock of web stays on h1 (held by me); `ndctl deploy status web` shows it"
    assert ops._join(ops._join("failed", left), left) == f"failed; {left}"


class LockReadRunner(Runner):
    """Answers the lock step's combined lock-and-read command; anything else is recorded."""

    def __init__(self, answer: HostResult) -> None:
        super().__init__(RunOptions())
        self.answer = answer
        self.argvs: list[list[str]] = []

    async def run(self, host, argv, *, input=None, timeout=None, on_output=None) -> HostResult:
        self.argvs.append(list(argv))
        return self.answer


def _begin_with(monkeypatch, answer: HostResult):
    runner = LockReadRunner(answer)
    d = Deployer(runner, None, SPEC)

    async def no_proxy(run, step):
        return None

    monkeypatch.setattr(d, "_ensure_proxy", no_proxy)
    run = ops.HostRun(hosts("h1")[0])
    return runner, run, d


def test_the_lock_step_reads_the_state_under_the_lock_in_the_same_command(monkeypatch) -> None:
    c = {"name": "/nd-web-aaaaaaaa", "running": True,
         "labels": {"com.nextdeploy.app": "web", "com.nextdeploy.role": "app", "com.nextdeploy.version": "v1"}}
    out = ("locked\n" 'lock {"deploy_id":"bbbbbbbb","who":"me"}\n'
           'current {"container":"nd-web-aaaaaaaa","version":"v1"}\n' + json.dumps(c) + "\n"
           + "sha256:" + "a" * 64 + "\nimages listed\n")
    runner, run, d = _begin_with(monkeypatch, HostResult("h1", Status.OK, 0, out))
    state = asyncio.run(d._begin(run, "bbbbbbbb"))
    assert [a[3] for a in runner.argvs] == ["nd-lock-read"]  # no separate reads after the lock
    assert run.locked and state.lock.deploy_id == "bbbbbbbb" and state.serving.name == "nd-web-aaaaaaaa"
    assert state.image_ids == frozenset({"sha256:" + "a" * 64})
    assert [(s["action"], s["ok"]) for s in run.done] == [("ensure-proxy", True), ("lock", True)]


def test_a_failed_read_after_the_lock_was_taken_still_leaves_the_lock_to_free(monkeypatch) -> None:
    runner, run, d = _begin_with(monkeypatch, HostResult("h1", Status.FAILED, 3, "locked\n",
                                                         "Cannot connect to the Docker daemon"))
    with pytest.raises(RemoteError, match="h1: cannot read the state of web: .*Docker daemon"):
        asyncio.run(d._begin(run, "bbbbbbbb"))
    assert run.locked  # so the deploy's cleanup unlocks it
