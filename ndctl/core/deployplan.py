"""The deploy state machine, as pure functions of observed host state.

The ops layer observes a host (``docker.list_app_containers`` and
``appstate.read_state``, parsed by :meth:`HostState.from_outputs`), asks this
module what to do, runs the returned :class:`Step` list in order, and on a
failed or interrupted step asks :func:`on_failure` what that means. Nothing
here does I/O, reads the clock or draws randomness except
:func:`new_deploy_id`: time comes in as ``now``.

Lifecycle on one host (blue-green)::

    ensure-proxy (and network), lock              begin_steps(): before observing
    remove strays, repair current, stop stale     recovery (under the lock)
    ship-image | pull-image                       } HostPlan.prepare: every host,
    start green, health-check, switch,            } HostPlan.rollout: batch by
    write-current, record, schedule-stop blue,      batch (Rollout)
    prune, unlock

Observe the state *after* taking the lock: a plan made from state seen before
it may describe a deploy that finished in between. A state whose lock is ours
yields a plan without the begin steps; a free lock (a dry run) yields the full
list; a lock held by another deploy yields a blocked plan.

Rules that keep blue serving whatever happens:

* nothing the route or ``current.json`` names is ever stopped or removed;
* a container is a *stray* only with evidence it never served: history says
  its deploy failed or was interrupted, or (history read in full) it has no
  successful record at all. Strays are removed by the next deploy;
* traffic moves only after the health check passes; a failure before the switch
  leaves blue untouched; a failure after it keeps green (it passed) and only warns.
"""
from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from ndctl.commands.docker import (
    LABEL_APP,
    LABEL_DEPLOY_ID,
    LABEL_PORT,
    LABEL_ROLE,
    LABEL_VERSION,
    NETWORK,
    ROLE_APP,
    container_name,
)
from ndctl.core.appspec import AppSpec, HealthCheck, Parallelism
from ndctl.core.errors import ConflictError, NotFoundError, UsageError

RESULT_OK = "ok"
RESULT_FAILED = "failed"
RESULT_INTERRUPTED = "interrupted"
STRATEGY_ROLLBACK = "rollback"
LOG_LINES = 50  # log lines of a failed green shown to the operator
STALE_LOCK_AFTER = timedelta(minutes=30)  # older locks are reported as probably abandoned


# --------------------------------------------------------------------------- time
def iso(dt: datetime) -> str:
    """UTC, second precision, ``Z``: the format of every time ndctl writes on hosts."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?\Z")


def parse_time(text: Any) -> datetime | None:
    """ISO 8601 as docker and ndctl write it (nanoseconds allowed); None for missing/zero/garbage."""
    if not isinstance(text, str):
        return None
    m = _TIME_RE.match(text.strip())
    if not m or m.group(1).startswith("0001-"):
        return None
    frac = (m.group(2) or "")[:7]  # '.' + at most 6 digits: docker writes nanoseconds
    tz = m.group(3) or "Z"
    try:
        return datetime.fromisoformat(m.group(1) + frac + ("+00:00" if tz == "Z" else tz))
    except ValueError:
        return None


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "at an unknown time"
    s = int((now - then).total_seconds())
    if s < 0:
        return f"at {iso(then)}"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def new_deploy_id() -> str:
    """8 lowercase hex digits, shared by every host of one deploy (and its containers' names)."""
    return secrets.token_hex(4)


# --------------------------------------------------------------------------- observed state
@dataclass(frozen=True)
class Container:
    """One app container as ``docker.INSPECT_FORMAT`` reports it."""

    name: str
    app: str = ""
    version: str = ""
    deploy_id: str = ""
    role: str = ROLE_APP
    port: int | None = None
    image: str = ""
    image_id: str = ""
    state: str = ""  # created | running | paused | restarting | exited | dead
    running: bool = False
    created: str = ""
    started_at: str = ""
    finished_at: str = ""
    restart_count: int = 0
    ip: str | None = None  # on the app network
    id: str = ""

    @classmethod
    def from_inspect(cls, obj: Mapping[str, Any]) -> Container:
        labels = obj.get("labels") or {}
        try:
            port: int | None = int(labels.get(LABEL_PORT, ""))
        except ValueError:
            port = None
        nets = obj.get("networks") or {}
        ip = (nets.get(NETWORK) or {}).get("IPAddress") or None
        return cls(
            name=str(obj.get("name") or "").lstrip("/"),
            app=labels.get(LABEL_APP, ""),
            version=labels.get(LABEL_VERSION, ""),
            deploy_id=labels.get(LABEL_DEPLOY_ID, ""),
            role=labels.get(LABEL_ROLE, ""),
            port=port,
            image=str(obj.get("image") or ""),
            image_id=str(obj.get("image_id") or ""),
            state=str(obj.get("state") or ""),
            running=bool(obj.get("running")),
            created=str(obj.get("created") or ""),
            started_at=str(obj.get("started_at") or ""),
            finished_at=str(obj.get("finished_at") or ""),
            restart_count=int(obj.get("restart_count") or 0),
            ip=ip,
            id=str(obj.get("id") or ""),
        )


@dataclass(frozen=True)
class LockInfo:
    who: str = ""
    from_: str = ""
    at: str = ""
    version: str = ""
    deploy_id: str = ""

    @property
    def incomplete(self) -> bool:
        """Held without an info.json (a deploy died while taking it)."""
        return not self.deploy_id

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LockInfo:
        return cls(who=str(d.get("who") or ""), from_=str(d.get("from") or ""), at=str(d.get("at") or ""),
                   version=str(d.get("version") or ""), deploy_id=str(d.get("deploy_id") or ""))


@dataclass(frozen=True)
class Current:
    version: str
    deploy_id: str
    container: str
    port: int | None = None
    switched_at: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Current | None:
        if not d.get("container"):
            return None
        try:
            port: int | None = int(d["port"]) if d.get("port") is not None else None
        except (TypeError, ValueError):
            port = None
        return cls(version=str(d.get("version") or ""), deploy_id=str(d.get("deploy_id") or ""),
                   container=str(d["container"]), port=port, switched_at=str(d.get("switched_at") or ""))


@dataclass(frozen=True)
class HistoryRecord:
    """One line of ``history.jsonl``. ``container`` is the release that served as a result
    (a rollback to an existing container records that container under its own deploy id)."""

    deploy_id: str
    app: str = ""
    version: str = ""
    image: str = ""
    image_id: str = ""
    who: str = ""
    host: str = ""
    started_at: str = ""
    finished_at: str = ""
    result: str = ""
    duration: float | None = None
    strategy: str = ""
    container: str = ""
    error: str = ""
    secrets: tuple[str, ...] = ()  # names of the secrets the release ran with (never values)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HistoryRecord:
        dur = d.get("duration")
        names = d.get("secrets")
        return cls(
            deploy_id=str(d.get("deploy_id") or ""), app=str(d.get("app") or ""),
            version=str(d.get("version") or ""), image=str(d.get("image") or ""),
            image_id=str(d.get("image_id") or ""), who=str(d.get("who") or ""), host=str(d.get("host") or ""),
            started_at=str(d.get("started_at") or ""), finished_at=str(d.get("finished_at") or ""),
            result=str(d.get("result") or ""),
            duration=float(dur) if isinstance(dur, (int, float)) and not isinstance(dur, bool) else None,
            strategy=str(d.get("strategy") or ""), container=str(d.get("container") or ""),
            error=str(d.get("error") or ""),
            secrets=tuple(n for n in names if isinstance(n, str) and n) if isinstance(names, list) else (),
        )

    def release(self, app: str) -> str:
        """The container this record is about."""
        if self.container:
            return self.container
        try:
            return container_name(self.app or app, self.deploy_id)
        except ValueError:
            return ""


@dataclass(frozen=True)
class HostState:
    """What one host says about one app."""

    host: str
    app: str
    containers: tuple[Container, ...] = ()
    current: Current | None = None
    lock: LockInfo | None = None
    route: str | None = None  # the container the proxy sends traffic to (live marker, else route file)
    history: tuple[HistoryRecord, ...] = ()  # oldest first
    history_complete: bool = True  # False when the read tail may have cut older records
    image_ids: frozenset[str] | None = None  # images known present; None: not asked
    network: bool | None = None  # app network exists; None: not asked
    proxy: bool | None = None  # proxy container running; None: not asked

    @classmethod
    def from_outputs(cls, host: str, app: str, *, containers_text: str = "", state_text: str = "",
                     history_tail: int | None = None, image_ids: Iterable[str] | None = None,
                     network: bool | None = None, proxy: bool | None = None) -> HostState:
        """Parse ``docker.list_app_containers`` and ``appstate.read_state`` output.

        ``history_tail``: the tail length asked for; a history that long may be cut.
        """
        from ndctl.commands.appstate import parse_state

        containers = []
        for line in containers_text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                c = Container.from_inspect(obj)
                if c.app == app and c.role == ROLE_APP:
                    containers.append(c)
        st = parse_state(state_text)
        route = None
        # The live marker is what Caddy serves; the route file follows it (and is all nginx has).
        upstream = (st["live"] or st["route"] or {}).get("upstream")
        if isinstance(upstream, str) and upstream:
            route = upstream.rsplit(":", 1)[0]
        history = tuple(HistoryRecord.from_dict(h) for h in st["history"])
        return cls(
            host=host, app=app, containers=tuple(containers),
            current=Current.from_dict(st["current"]) if st["current"] else None,
            lock=LockInfo.from_dict(st["lock"]) if st["lock"] is not None else None,
            route=route, history=history,
            history_complete=history_tail is None or len(st["history"]) + st["bad_lines"] < history_tail,
            image_ids=frozenset(image_ids) if image_ids is not None else None,
            network=network, proxy=proxy,
        )

    def container(self, name: str | None) -> Container | None:
        return next((c for c in self.containers if c.name == name), None) if name else None

    @property
    def serving(self) -> Container | None:
        """The container traffic goes to: the route's, else current.json's."""
        return self.container(self.route) or self.container(self.current.container if self.current else None)


# --------------------------------------------------------------------------- steps
class Action(str, Enum):
    """What a step does; the fields of :class:`Step` it uses are in brackets."""

    ENSURE_PROXY = "ensure-proxy"  # the app network and the proxy container exist and run [image]
    LOCK = "lock"  # appstate.acquire_lock [deploy_id]
    REMOVE = "remove"  # docker rm -f [containers]
    STOP = "stop"  # docker stop [containers, seconds = stop timeout]
    REPAIR_CURRENT = "repair-current"  # rewrite current.json from the container the route serves [container]
    SHIP_IMAGE = "ship-image"  # docker save [image] | ssh docker load
    PULL_IMAGE = "pull-image"  # docker pull [image]
    START = "start"  # docker.run_app [container, image, version, deploy_id, port]
    START_EXISTING = "start-existing"  # docker start [container] (rollback, restore after recreate)
    HEALTH_CHECK = "health-check"  # probe [container, port, check] from the app network
    SWITCH = "switch"  # route the app's hosts to [container:port], drain [seconds]
    WRITE_CURRENT = "write-current"  # appstate.write_current [container, version, deploy_id, port]
    RECORD = "record"  # appstate.append_history [result, version, deploy_id, container, image]
    SCHEDULE_STOP = "schedule-stop"  # appstate.schedule_stop [container, seconds = delay]
    PRUNE = "prune"  # docker rm [containers], then docker.prune_images [image_ids]
    CAPTURE_LOGS = "capture-logs"  # docker logs --tail [lines] [container], shown to the operator
    UNLOCK = "unlock"  # appstate.release_lock [deploy_id]


@dataclass(frozen=True)
class Step:
    action: Action
    container: str | None = None
    containers: tuple[str, ...] = ()
    image: str | None = None
    image_ids: tuple[str, ...] = ()
    version: str | None = None
    deploy_id: str | None = None
    port: int | None = None
    seconds: float | None = None
    lines: int | None = None
    result: str | None = None
    check: HealthCheck | None = None
    secrets: tuple[str, ...] = ()  # START: the secrets green runs with, when not the spec's
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action.value}
        for k in ("container", "image", "version", "deploy_id", "port", "seconds", "lines", "result"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.containers:
            out["containers"] = list(self.containers)
        if self.image_ids:
            out["image_ids"] = list(self.image_ids)
        if self.secrets:
            out["secrets"] = list(self.secrets)
        if self.why:
            out["why"] = self.why
        return out


@dataclass(frozen=True)
class HostPlan:
    host: str
    app: str
    kind: str  # deploy | rollback
    strategy: str  # blue-green | recreate | rollback
    deploy_id: str  # this operation's id (lock, history)
    version: str
    image: str  # what green runs: an image id when known, else the reference
    image_ref: str  # the image reference, for people and the history
    green: str | None  # the container that serves if all goes well
    blue: Container | None  # the container serving before
    prepare: tuple[Step, ...] = ()  # every host, before the first batch (lock, recovery, image)
    rollout: tuple[Step, ...] = ()  # batch by batch
    notes: tuple[str, ...] = ()
    blocked: str | None = None  # why nothing can run (lock held by another deploy)
    spec: AppSpec | None = field(default=None, compare=False, repr=False)
    secrets: tuple[str, ...] = ()  # names green runs with; its history record keeps them

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.prepare + self.rollout

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host, "app": self.app, "kind": self.kind, "strategy": self.strategy,
            "deploy_id": self.deploy_id, "version": self.version, "image": self.image,
            "image_ref": self.image_ref, "green": self.green,
            "blue": self.blue.name if self.blue else None, "blocked": self.blocked, "notes": list(self.notes),
            "prepare": [s.to_dict() for s in self.prepare], "rollout": [s.to_dict() for s in self.rollout],
        }


def begin_steps(spec: AppSpec, state: HostState | None = None, *, deploy_id: str) -> tuple[Step, ...]:
    """Network and proxy, lock: what runs before the state is observed (skipping what is known present)."""
    steps = []
    # One step for both: the proxy's inspection (one round trip) already looks at the network.
    if state is None or state.network is not True or state.proxy is not True:
        steps.append(Step(Action.ENSURE_PROXY, image=spec.proxy.image_ref,
                          why=f"make sure the {NETWORK} network and the {spec.proxy.kind} proxy exist"))
    steps.append(Step(Action.LOCK, deploy_id=deploy_id, why=f"lock {spec.app} on this host"))
    return tuple(steps)


# --------------------------------------------------------------------------- locks
def lock_conflict(app: str, host: str, lock: LockInfo | None, now: datetime) -> ConflictError:
    """The error for a lock held by another deploy: who, from where, when, which version."""
    hint = (f"wait for it (--lock-wait DURATION), or if that deploy is dead (its ndctl exited or lost "
            f"the connection), free the lock with `ndctl deploy unlock {app}`")
    if lock is None or lock.incomplete:
        return ConflictError(f"{app} is locked on {host} without details (a deploy died while taking the lock)",
                             hint=f"`ndctl deploy unlock {app}` frees it")
    at = parse_time(lock.at)
    msg = (f"{app} is being deployed on {host} by {lock.who or 'someone'}"
           f"{f' (from {lock.from_})' if lock.from_ else ''}, version {lock.version or '?'}, "
           f"deploy {lock.deploy_id}, locked {_ago(at, now)}")
    if at is not None and now - at > STALE_LOCK_AFTER:
        msg += "; a lock this old most likely belongs to a deploy that died"
    return ConflictError(msg, hint=hint)


# --------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class Analysis:
    """A host's app containers sorted into what they are."""

    serving: Container | None
    releases: tuple[Container, ...]  # served once (or cannot tell), not serving; newest first
    strays: tuple[Container, ...]  # never served: failed or interrupted deploys
    stale: tuple[Container, ...]  # releases still running past their grace period (lost sleeper)
    repair: Container | None  # the route serves this, current.json says otherwise
    notes: tuple[str, ...] = ()


def _sort_key(c: Container) -> tuple[datetime, str]:
    return (parse_time(c.created) or datetime.min.replace(tzinfo=timezone.utc), c.name)


def analyse(state: HostState, *, grace: float, now: datetime, exclude: Iterable[str] = ()) -> Analysis:
    """Sort the app's containers into serving, releases, strays and stale ones.

    ``exclude``: containers of the operation in progress (never strays).
    """
    app = state.app
    excluded = set(exclude)
    notes: list[str] = []
    protected = {n for n in (state.route, state.current.container if state.current else None) if n}
    ok_at: dict[str, datetime | None] = {}  # release -> when it started serving
    bad: set[str] = set()
    oldest: datetime | None = None
    for r in state.history:
        t = parse_time(r.started_at) or parse_time(r.finished_at)
        if t is not None and (oldest is None or t < oldest):
            oldest = t
        name = r.release(app)
        if not name:
            continue
        if r.result == RESULT_OK:
            ok_at[name] = parse_time(r.finished_at) or t
            bad.discard(name)
        elif name not in ok_at:
            bad.add(name)
    serving = state.serving
    repair = None
    if state.route and state.container(state.route) and (not state.current or state.current.container != state.route):
        repair = state.container(state.route)
        notes.append(f"current.json names {state.current.container if state.current else 'nothing'} but the proxy "
                     f"serves {state.route}: an earlier deploy was interrupted after its switch; repairing")
    elif state.route and not state.container(state.route):
        notes.append(f"the proxy route names {state.route}, which no longer exists")

    # With no history, no current.json and no route at all (first deploy, or the
    # state directory was wiped) absence proves nothing: keep unknown containers.
    evidence = bool(state.history or state.current or state.route)
    releases, strays = [], []
    for c in state.containers:
        if c.name in protected or c.name in excluded:
            continue
        if c.name in ok_at:
            releases.append(c)
        elif c.name in bad:
            strays.append(c)
        elif state.history_complete and evidence:
            strays.append(c)  # no record in a history read in full: it never served
        else:
            created = parse_time(c.created)
            if created is not None and oldest is not None and created > oldest:
                strays.append(c)  # newer than the history we read, yet not in it
            else:
                releases.append(c)  # its record may be older than the tail we read: keep it
    releases.sort(key=_sort_key, reverse=True)
    strays.sort(key=_sort_key)

    # When did each release stop serving? When the next one (in history order) started.
    order = sorted((t, n) for n, t in ok_at.items() if t is not None)
    replaced_at: dict[str, datetime] = {}
    for (_, name), (t_next, _) in zip(order, order[1:]):
        replaced_at[name] = t_next
    stale = []
    for c in releases:
        if c.running:
            t = replaced_at.get(c.name)
            if t is None and state.current and state.current.container != c.name:
                t = parse_time(state.current.switched_at)
            if t is not None and (now - t).total_seconds() > grace:
                stale.append(c)
    return Analysis(serving=serving, releases=tuple(releases), strays=tuple(strays), stale=tuple(stale),
                    repair=repair, notes=tuple(notes))


def releases_to_prune(releases: Sequence[Container], *, retain: int, stopping: Iterable[str] = ()) -> list[Container]:
    """Releases beyond the ``retain`` newest (``releases`` newest first), stopped or being stopped.

    A running one beyond retention is in its grace period: its sleeper stops it and
    the next deploy prunes it.
    """
    stopping = set(stopping)
    return [c for c in releases[retain:] if not c.running or c.name in stopping]


def images_to_prune(removed: Iterable[Container], kept: Iterable[Container], protect: Iterable[str] = ()) -> list[str]:
    """Image ids only the removed containers used (Docker would refuse the others anyway)."""
    keep_ids = {c.image_id for c in kept} | set(protect)
    out: list[str] = []
    for c in removed:
        if c.image_id and c.image_id not in keep_ids and c.image_id not in out:
            out.append(c.image_id)
    return out


def _recovery(spec: AppSpec, state: HostState, a: Analysis) -> list[Step]:
    steps: list[Step] = []
    if a.strays:
        steps.append(Step(Action.REMOVE, containers=tuple(c.name for c in a.strays),
                          why="remove containers of deploys that never switched: "
                              + ", ".join(f"{c.name} ({c.version or '?'})" for c in a.strays)))
    if a.repair is not None:
        r = a.repair
        steps.append(Step(Action.REPAIR_CURRENT, container=r.name, version=r.version, deploy_id=r.deploy_id,
                          port=r.port, why=f"record {r.name} ({r.version}) as current: the proxy serves it"))
    if a.stale:
        steps.append(Step(Action.STOP, containers=tuple(c.name for c in a.stale), seconds=spec.stop_timeout,
                          why="stop old releases still running past their grace period: "
                              + ", ".join(c.name for c in a.stale)))
    return steps


# --------------------------------------------------------------------------- deploy
def plan_deploy(
    spec: AppSpec,
    state: HostState,
    *,
    version: str,
    deploy_id: str,
    now: datetime,
    image_id: str | None = None,
    image_source: str = "ship",
) -> HostPlan:
    """The steps that deploy ``spec`` at ``version`` on one host.

    ``image_id``: the image's id when known (shipping: the local one); green then
    runs that exact image and the transfer is skipped when the host has it.
    ``image_source``: ``ship`` (docker save | load over SSH) or ``pull`` (registry).
    """
    if image_source not in ("ship", "pull"):
        raise ValueError(f"image_source must be ship or pull, not {image_source!r}")
    if not spec.image:
        raise UsageError("image: is required (set image: in nextdeploy.yaml or pass --image)")
    green = container_name(spec.app, deploy_id)
    run_image = image_id or spec.image
    base = dict(host=state.host, app=spec.app, kind="deploy", strategy=spec.strategy, deploy_id=deploy_id,
                version=version, image=run_image, image_ref=spec.image, green=green, spec=spec)
    if state.lock is not None and state.lock.deploy_id != deploy_id:
        return HostPlan(**base, blue=state.serving, blocked=lock_conflict(spec.app, state.host, state.lock, now).message)
    begin = begin_steps(spec, state, deploy_id=deploy_id) if state.lock is None else ()
    if state.container(green):
        raise ConflictError(f"container {green} already exists on {state.host} (deploy id reused?)")

    a = analyse(state, grace=spec.grace, now=now)
    blue = a.serving
    notes = list(a.notes)
    if blue is not None and not blue.running:
        notes.append(f"{blue.name} ({blue.version}) is current but not running: this deploy cannot be zero-downtime")

    prepare = list(begin) + _recovery(spec, state, a)
    if image_source == "pull":
        prepare.append(Step(Action.PULL_IMAGE, image=spec.image, why=f"pull {spec.image}"))
    elif image_id and state.image_ids is not None and image_id in state.image_ids:
        notes.append(f"image {image_id[:19]} already on the host: not shipped")
    else:
        prepare.append(Step(Action.SHIP_IMAGE, image=spec.image, image_ids=(image_id,) if image_id else (),
                            why=f"ship {spec.image} (docker save | docker load; skipped if the host has it)"))

    port = spec.port
    start = Step(Action.START, container=green, image=run_image, version=version, deploy_id=deploy_id, port=port,
                 why=f"start {green} ({version})" + (f" beside {blue.name} ({blue.version})"
                                                     if blue and spec.strategy == "blue-green" else ""))
    check = Step(Action.HEALTH_CHECK, container=green, port=spec.health_port, check=spec.health_check,
                 why=f"health-check {green}: GET {spec.health_check.path} on port {spec.health_port}, "
                     f"{spec.health_check.successes} consecutive {spec.health_check.status_text} "
                     f"within {spec.health_check.deadline:g}s")
    switch = Step(Action.SWITCH, container=green, port=port, seconds=spec.drain,
                  why=f"route {', '.join(spec.proxy.hosts) or 'all requests'} to {green}:{port}"
                      + (f", draining {blue.name} for up to {spec.drain:g}s" if blue else ""))
    write = Step(Action.WRITE_CURRENT, container=green, version=version, deploy_id=deploy_id, port=port,
                 why=f"record {green} as current")
    record = Step(Action.RECORD, result=RESULT_OK, container=green, version=version, deploy_id=deploy_id,
                  image=spec.image, why="append to the host's deploy history")

    rollout: list[Step] = []
    if spec.strategy == "recreate":
        if blue is not None and blue.running:
            rollout.append(Step(Action.STOP, containers=(blue.name,), seconds=spec.stop_timeout,
                                why=f"stop {blue.name} ({blue.version}) first (recreate: not zero-downtime)"))
        rollout += [start, check, switch, write, record]
    else:
        rollout += [start, check, switch, write, record]
        if blue is not None and blue.running:
            rollout.append(Step(Action.SCHEDULE_STOP, container=blue.name, seconds=spec.grace,
                                why=f"stop {blue.name} in {spec.grace:g}s, unless it serves again by then"))

    # Retention after this deploy: blue becomes the newest release.
    future = ([blue] if blue is not None else []) + [c for c in a.releases if blue is None or c.name != blue.name]
    stale_names = {c.name for c in a.stale}
    pruned = releases_to_prune(future, retain=spec.retain, stopping=stale_names)
    kept = [c for c in state.containers if c not in pruned and c not in a.strays]
    image_ids = images_to_prune(pruned + list(a.strays), kept, protect=[i for i in (image_id,) if i])
    if pruned or image_ids:
        rollout.append(Step(Action.PRUNE, containers=tuple(c.name for c in pruned), image_ids=tuple(image_ids),
                            why=f"keep {spec.retain} previous release(s); remove "
                                + (", ".join(f"{c.name} ({c.version})" for c in pruned) or "no container")
                                + (f" and {len(image_ids)} unused image(s)" if image_ids else "")))
    rollout.append(Step(Action.UNLOCK, deploy_id=deploy_id, why=f"unlock {spec.app}"))
    return HostPlan(**base, blue=blue, prepare=tuple(prepare), rollout=tuple(rollout), notes=tuple(notes),
                    secrets=tuple(spec.secrets))


# --------------------------------------------------------------------------- failures
@dataclass(frozen=True)
class FailureDecision:
    """What a failed (or interrupted) step means for the host."""

    result: str  # history result: ok (failure after the switch) | failed | interrupted
    switched: bool  # traffic is on green
    cleanup: tuple[Step, ...]  # run now, in order, best effort
    remaining: tuple[Step, ...]  # the plan's later steps still to run (after-switch failures)
    message: str


def _index(plan: HostPlan, step: Step | int) -> int:
    steps = plan.steps
    if isinstance(step, int):
        return step
    for i, s in enumerate(steps):
        if s is step:
            return i
    return steps.index(step)


def on_failure(plan: HostPlan, step: Step | int, *, interrupted: bool = False) -> FailureDecision:
    """Decide what a failure of ``step`` (or Ctrl-C / a dropped connection during it) means.

    Before the switch: undo this operation's own container, leave blue alone
    (recreate: start it again), record the failure, unlock. After the switch:
    green passed its health check and serves, so the deploy stands and the
    failed bookkeeping step is only warned about. When the connection is gone
    nothing here can run: the next deploy's recovery removes the stray green and
    the lock is reported with who and when.
    """
    steps = plan.steps
    i = _index(plan, step)
    failed = steps[i]
    a = failed.action
    done = {s.action for s in steps[:i]}
    bad = RESULT_INTERRUPTED if interrupted else RESULT_FAILED
    what = "was interrupted" if interrupted else "failed"
    green, blue = plan.green, plan.blue
    stop_timeout = plan.spec.stop_timeout if plan.spec else 10.0
    has_lock_step = any(s.action == Action.LOCK for s in steps)
    locked = Action.LOCK in done or not has_lock_step
    serving = f"{blue.name} ({blue.version}) keeps serving" if blue is not None else "nothing served before"

    if Action.SWITCH in done:
        hints = {
            Action.WRITE_CURRENT: "current.json was not updated; the next deploy repairs it from the route",
            Action.RECORD: "its history line was not written",
            Action.SCHEDULE_STOP: f"{failed.container} keeps running; the next deploy stops it",
            Action.PRUNE: "old releases were not pruned; the next deploy retries",
            Action.UNLOCK: f"the lock stays on {plan.host}: `ndctl deploy unlock {plan.app}`",
        }
        return FailureDecision(RESULT_OK, True, (), steps[i + 1:],
                               f"{green} serves on {plan.host}, but {a.value} {what}: {hints.get(a, 'continuing')}")

    if a is Action.ENSURE_PROXY:
        return FailureDecision(bad, False, (), (), f"{a.value} {what} on {plan.host}; nothing changed, {serving}")
    if a == Action.LOCK:
        # Interrupted, the lock may have been taken: releasing by our id is safe either way.
        cleanup = (Step(Action.UNLOCK, deploy_id=plan.deploy_id, why=f"unlock {plan.app}"),) if interrupted else ()
        return FailureDecision(bad, False, cleanup, (), f"locking {plan.app} {what} on {plan.host}; nothing changed")

    cleanup: list[Step] = []
    blue_first = _stops_blue_first(plan)
    blue_down = blue_first and any(_is_blue_stop(plan, s) for s in steps[:i + 1])
    ours = a in (Action.START, Action.START_EXISTING) or bool(done & {Action.START, Action.START_EXISTING})
    if a == Action.HEALTH_CHECK:
        cleanup += [
            Step(Action.CAPTURE_LOGS, container=failed.container, lines=LOG_LINES,
                 why=f"show the last {LOG_LINES} log lines of {failed.container}"),
            Step(Action.STOP, containers=(failed.container,), seconds=stop_timeout,
                 why=f"stop {failed.container} (kept, stopped, for inspection until the next deploy)"),
        ]
    elif a == Action.START:
        cleanup.append(Step(Action.REMOVE, containers=(failed.container,),
                            why=f"remove {failed.container}, which did not start"))
    elif a == Action.START_EXISTING:
        cleanup.append(Step(Action.STOP, containers=(failed.container,), seconds=stop_timeout,
                            why=f"stop {failed.container} again"))
    elif a == Action.SWITCH:
        # Whether the proxy applied it is unknown: point it back explicitly.
        if blue is not None and blue.running and not blue_down:
            cleanup.append(Step(Action.SWITCH, container=blue.name, port=blue.port, seconds=0,
                                why=f"route back to {blue.name}"))
        if ours and green:
            cleanup.append(Step(Action.STOP, containers=(green,), seconds=stop_timeout, why=f"stop {green}"))
    if blue_down and blue is not None:
        # Blue was stopped first (the app cannot run twice): start it again, green being down by now.
        cleanup.append(Step(Action.START_EXISTING, container=blue.name, why=f"start {blue.name} again"))
        if a == Action.SWITCH:
            cleanup.append(Step(Action.SWITCH, container=blue.name, port=blue.port, seconds=0,
                                why=f"route back to {blue.name}"))
        serving = f"{blue.name} ({blue.version}) is started again"
    if locked:
        cleanup.append(Step(Action.RECORD, result=bad, container=green, version=plan.version,
                            deploy_id=plan.deploy_id, image=plan.image_ref, why=f"record that the {plan.kind} {what}"))
        cleanup.append(Step(Action.UNLOCK, deploy_id=plan.deploy_id, why=f"unlock {plan.app}"))
    return FailureDecision(bad, False, tuple(cleanup), (), f"{a.value} {what} on {plan.host}; {serving}")


def _is_blue_stop(plan: HostPlan, step: Step) -> bool:
    return (step.action == Action.STOP and plan.blue is not None and step.containers == (plan.blue.name,)
            and any(s is step for s in plan.rollout))


def _stops_blue_first(plan: HostPlan) -> bool:
    """Recreate (and rollback of a recreate app) stop the serving container before starting the new one."""
    return any(_is_blue_stop(plan, s) for s in plan.rollout)


# --------------------------------------------------------------------------- rollback
@dataclass(frozen=True)
class Release:
    """A version this host can roll back to."""

    version: str
    deploy_id: str  # the release's container's deploy id
    container: str
    image: str
    image_id: str
    finished_at: str
    exists: bool  # the container is still there (instant switch)
    running: bool
    image_present: bool | None  # None: not asked
    secrets: tuple[str, ...] = ()  # the names its history record lists

    @property
    def state(self) -> str:
        """What a rollback to it does: ``running`` / ``stopped`` (instant switch; a stopped one
        is started and health-checked first), ``image`` (re-created from the kept image)."""
        if self.exists:
            return "running" if self.running else "stopped"
        return "image" if self.image_present else "image?"

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "deploy_id": self.deploy_id, "container": self.container,
                "image": self.image, "image_id": self.image_id, "finished_at": self.finished_at,
                "exists": self.exists, "running": self.running, "image_present": self.image_present,
                "state": self.state}


def retained_releases(state: HostState) -> list[Release]:
    """Releases other than the serving one, newest first: from history, with what is left of each.

    A release with neither its container nor (when known) its image is gone and left out.
    """
    serving = state.serving
    serving_name = serving.name if serving else (state.current.container if state.current else None)
    seen: set[str] = set()
    out: list[Release] = []
    for r in reversed(state.history):
        if r.result != RESULT_OK:
            continue
        name = r.release(state.app)
        if not name or name in seen or name == serving_name:
            continue
        seen.add(name)
        c = state.container(name)
        image_id = c.image_id if c else r.image_id
        present = None if state.image_ids is None else (image_id in state.image_ids)
        if c is None and present is False:
            continue
        if c is None and not image_id and not r.image:
            continue
        out.append(Release(version=c.version if c else r.version, deploy_id=c.deploy_id if c else r.deploy_id,
                           container=name, image=r.image or (c.image if c else ""), image_id=image_id,
                           finished_at=r.finished_at, exists=c is not None, running=bool(c and c.running),
                           image_present=True if c is not None else present, secrets=r.secrets))
    # A retained container whose record fell out of the history tail still counts.
    for c in sorted(state.containers, key=_sort_key, reverse=True):
        if c.name in seen or c.name == serving_name:
            continue
        if any(r.release(state.app) == c.name for r in state.history):
            continue  # failed or interrupted: not a release
        if state.history_complete:
            continue
        out.append(Release(version=c.version, deploy_id=c.deploy_id, container=c.name, image=c.image,
                           image_id=c.image_id, finished_at="", exists=True, running=c.running, image_present=True))
    return out


def plan_rollback(
    spec: AppSpec,
    state: HostState,
    *,
    deploy_id: str,
    now: datetime,
    to_version: str | None = None,
) -> HostPlan:
    """Switch back to the previous release (or the newest one of ``to_version``).

    Its container still there: start it if stopped (then health-check it), switch.
    Gone but its image kept: re-create it as a new container (deploy id
    ``deploy_id``) from that image with the current spec's settings.
    """
    releases = retained_releases(state)
    if to_version is not None:
        target = next((r for r in releases if r.version == to_version), None)
        if target is None:
            cur = state.serving.version if state.serving else (state.current.version if state.current else None)
            if cur == to_version:
                raise UsageError(f"{spec.app} already serves {to_version} on {state.host}")
            avail = ", ".join(dict.fromkeys(r.version for r in releases)) or "none"
            raise NotFoundError(f"{spec.app} has no retained release {to_version!r} on {state.host} "
                                f"(retained: {avail})", hint=f"`ndctl rollback {spec.app} --list` shows them")
    else:
        if not releases:
            raise NotFoundError(f"{spec.app} has no previous release retained on {state.host}",
                                hint="deploy the wanted version again with --image")
        target = releases[0]

    blue = state.serving
    base: dict[str, Any] = dict(host=state.host, app=spec.app, kind="rollback", strategy=STRATEGY_ROLLBACK,
                                deploy_id=deploy_id, version=target.version, image_ref=target.image or target.image_id,
                                spec=spec)
    if state.lock is not None and state.lock.deploy_id != deploy_id:
        return HostPlan(**base, image=target.image_id or target.image, green=target.container, blue=blue,
                        blocked=lock_conflict(spec.app, state.host, state.lock, now).message)
    begin = begin_steps(spec, state, deploy_id=deploy_id) if state.lock is None else ()
    a = analyse(state, grace=spec.grace, now=now, exclude=[target.container])
    notes = list(a.notes)
    prepare = list(begin) + _recovery(spec, state, a)
    rollout: list[Step] = []
    one_at_a_time = spec.strategy == "recreate" and blue is not None and blue.running and blue.name != target.container
    if one_at_a_time:
        rollout.append(Step(Action.STOP, containers=(blue.name,), seconds=spec.stop_timeout,
                            why=f"stop {blue.name} ({blue.version}) first (recreate: the app cannot run twice)"))
    if target.exists:
        green = target.container
        names = target.secrets  # its container was created with them
        c = state.container(green)
        port = (c.port if c else None) or spec.port
        release_id = target.deploy_id
        image = target.image_id or target.image
        if not target.running:
            rollout.append(Step(Action.START_EXISTING, container=green, why=f"start the retained {green} ({target.version})"))
            rollout.append(Step(Action.HEALTH_CHECK, container=green, port=spec.health_check.port or port,
                                check=spec.health_check, why=f"health-check {green}"))
        else:
            notes.append(f"{green} is still running (within its grace period): switching instantly")
    else:
        green = container_name(spec.app, deploy_id)
        port = spec.port
        release_id = deploy_id
        image = target.image_id or target.image
        # the secrets it ran with (also those named only with --secret back then) and the file's
        names = tuple(dict.fromkeys((*spec.secrets, *target.secrets)))
        notes.append(f"{target.container} was removed; re-creating {target.version} from image "
                     f"{image[:19]} with the current nextdeploy.yaml settings"
                     + (f" and its secrets {', '.join(names)} (as last delivered)" if names else ""))
        rollout.append(Step(Action.START, container=green, image=image, version=target.version, deploy_id=deploy_id,
                            port=port, secrets=names, why=f"re-create {target.version} as {green}"))
        rollout.append(Step(Action.HEALTH_CHECK, container=green, port=spec.health_port, check=spec.health_check,
                            why=f"health-check {green}"))
    rollout += [
        Step(Action.SWITCH, container=green, port=port, seconds=spec.drain, why=f"route {spec.app} to {green}:{port}"),
        Step(Action.WRITE_CURRENT, container=green, version=target.version, deploy_id=release_id, port=port,
             why=f"record {green} as current"),
        Step(Action.RECORD, result=RESULT_OK, container=green, version=target.version, deploy_id=deploy_id,
             image=target.image or target.image_id, why="append to the host's deploy history"),
    ]
    if blue is not None and blue.running and blue.name != green and not one_at_a_time:
        rollout.append(Step(Action.SCHEDULE_STOP, container=blue.name, seconds=spec.grace,
                            why=f"stop {blue.name} in {spec.grace:g}s, unless it serves again by then"))
    rollout.append(Step(Action.UNLOCK, deploy_id=deploy_id, why=f"unlock {spec.app}"))
    return HostPlan(**base, image=image, green=green, blue=blue, prepare=tuple(prepare), rollout=tuple(rollout),
                    notes=tuple(notes), secrets=names)


# --------------------------------------------------------------------------- rolling
def batches(hosts: Sequence[str], parallel: Parallelism) -> list[tuple[str, ...]]:
    """Hosts in rolling batches, in the given order."""
    size = parallel.batch_size(len(hosts))
    return [tuple(hosts[i:i + size]) for i in range(0, len(hosts), size)]


@dataclass
class HostOutcome:
    result: str  # ok | failed | interrupted
    switched: bool
    message: str = ""


#: what may still run on a host while the next batch starts: traffic has moved, and a
#: failure of these is only a warning (see :func:`on_failure`)
AFTER_SWITCH = frozenset({Action.WRITE_CURRENT, Action.RECORD, Action.SCHEDULE_STOP, Action.PRUNE, Action.UNLOCK})


def split_at_switch(rollout: Sequence[Step]) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """``(up to and including the switch, the rest)`` when everything after the switch is
    bookkeeping (:data:`AFTER_SWITCH`), else ``(rollout, ())``. A batch is done for the
    rollout once its hosts switched: the rest overlaps the next batch."""
    at = next((i for i, s in enumerate(rollout) if s.action is Action.SWITCH), None)
    if at is None or not all(s.action in AFTER_SWITCH for s in rollout[at + 1:]):
        return tuple(rollout), ()
    return tuple(rollout[:at + 1]), tuple(rollout[at + 1:])


class Rollout:
    """Batch bookkeeping of a multi-host deploy: next batch, stop at the first failed one.

    ``rollback_on_failure``: after a failure, the hosts already switched are to be
    rolled back (:meth:`to_roll_back`); otherwise they stay on green.
    """

    def __init__(self, hosts: Sequence[str], parallel: Parallelism, *, rollback_on_failure: bool = False) -> None:
        self.batches = batches(list(hosts), parallel)
        self.rollback_on_failure = rollback_on_failure
        self.outcomes: dict[str, HostOutcome] = {}
        self._next = 0
        self.stopped = False

    def next_batch(self) -> tuple[str, ...] | None:
        if self.stopped or self._next >= len(self.batches):
            return None
        batch = self.batches[self._next]
        self._next += 1
        return batch

    def record(self, host: str, outcome: HostOutcome) -> None:
        self.outcomes[host] = outcome
        if outcome.result != RESULT_OK:
            self.stopped = True  # the batch in flight finishes; no new one starts

    @property
    def failed(self) -> list[str]:
        return [h for h, o in self.outcomes.items() if o.result != RESULT_OK]

    @property
    def switched(self) -> list[str]:
        return [h for h, o in self.outcomes.items() if o.switched]

    @property
    def untouched(self) -> list[str]:
        return [h for b in self.batches for h in b if h not in self.outcomes]

    def to_roll_back(self) -> list[str]:
        if not (self.stopped and self.rollback_on_failure):
            return []
        return self.switched

    @property
    def result(self) -> str:
        if not self.outcomes:
            return RESULT_FAILED if self.stopped else RESULT_OK
        return RESULT_OK if not self.failed and not self.untouched else RESULT_FAILED

    def summary(self) -> dict[str, Any]:
        return {"result": self.result, "batches": [list(b) for b in self.batches], "switched": self.switched,
                "failed": self.failed, "untouched": self.untouched, "roll_back": self.to_roll_back()}


# --------------------------------------------------------------------------- history and status
def history_record(plan: HostPlan, *, result: str, who: str, started_at: datetime, finished_at: datetime,
                   image_id: str | None = None, error: str = "") -> dict[str, Any]:
    """The ``history.jsonl`` object for one host's outcome of ``plan`` (see ``appstate.history_payload``)."""
    rec: dict[str, Any] = {
        "deploy_id": plan.deploy_id, "app": plan.app, "version": plan.version,
        "image": plan.image_ref,
        "image_id": image_id or (plan.image if plan.image.startswith("sha256:") else ""),
        "who": who, "host": plan.host, "started_at": iso(started_at), "finished_at": iso(finished_at),
        "result": result, "duration": round((finished_at - started_at).total_seconds(), 3),
        "strategy": plan.strategy, "container": plan.green or "",
    }
    if error:
        rec["error"] = error
    if plan.secrets:
        rec["secrets"] = list(plan.secrets)
    return rec


def merge_history(by_host: Mapping[str, Sequence[HistoryRecord]]) -> list[dict[str, Any]]:
    """One timeline across hosts: a row per deploy, oldest first, with each host's result."""
    rows: dict[str, dict[str, Any]] = {}
    for host, records in by_host.items():
        for r in records:
            key = r.deploy_id or f"?{host}:{r.started_at}"
            row = rows.setdefault(key, {
                "deploy_id": r.deploy_id, "app": r.app, "version": r.version, "image": r.image,
                "image_id": r.image_id, "who": r.who, "strategy": r.strategy, "started_at": r.started_at,
                "finished_at": r.finished_at, "hosts": {}, "duration": r.duration})
            row["hosts"][r.host or host] = r.result
            if r.started_at and (not row["started_at"] or r.started_at < row["started_at"]):
                row["started_at"] = r.started_at
            if r.finished_at and r.finished_at > (row["finished_at"] or ""):
                row["finished_at"] = r.finished_at
            if r.duration is not None:
                row["duration"] = max(row["duration"] or 0.0, r.duration)
            if r.error and "error" not in row:
                row["error"] = r.error
    out = sorted(rows.values(), key=lambda x: (x["started_at"] or "", x["deploy_id"]))
    for row in out:
        results = set(row["hosts"].values())
        row["result"] = results.pop() if len(results) == 1 else "partial"
    return out


def host_status(state: HostState, *, now: datetime, grace: float = 300.0) -> dict[str, Any]:
    """What ``ndctl deploy status`` shows for one host (read-only: strays are reported, not removed)."""
    a = analyse(state, grace=grace, now=now)
    s = a.serving
    lock = None
    if state.lock is not None:
        lock = {"who": state.lock.who, "from": state.lock.from_, "at": state.lock.at,
                "version": state.lock.version, "deploy_id": state.lock.deploy_id,
                "age": _ago(parse_time(state.lock.at), now) if state.lock.at else None}
    return {
        "host": state.host, "app": state.app,
        "serving": None if s is None else {"version": s.version, "container": s.name, "deploy_id": s.deploy_id,
                                           "running": s.running, "state": s.state},
        "current": None if state.current is None else {
            "version": state.current.version, "container": state.current.container,
            "switched_at": state.current.switched_at},
        "lock": lock,
        "releases": [r.to_dict() for r in retained_releases(state)],
        "strays": [c.name for c in a.strays],
        "stale": [c.name for c in a.stale],
        "notes": list(a.notes),
    }


__all__ = [
    "Action", "Analysis", "Container", "Current", "FailureDecision", "HistoryRecord", "HostOutcome", "HostPlan",
    "HostState", "LockInfo", "Release", "Rollout", "Step",
    "RESULT_OK", "RESULT_FAILED", "RESULT_INTERRUPTED", "STRATEGY_ROLLBACK",
    "analyse", "batches", "begin_steps", "history_record", "host_status", "images_to_prune", "iso",
    "lock_conflict", "merge_history", "new_deploy_id", "on_failure", "parse_time", "plan_deploy", "plan_rollback",
    "releases_to_prune", "retained_releases",
]
