"""The deploy state machine: plans, failures, recovery, rollback, batches. Pure, data-driven."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ndctl.core import deployplan as dp
from ndctl.core.appspec import Parallelism, parse_appspec
from ndctl.core.deployplan import (
    Action as A,
)
from ndctl.core.deployplan import (
    Container,
    Current,
    HistoryRecord,
    HostOutcome,
    HostState,
    LockInfo,
    Rollout,
    iso,
)
from ndctl.core.errors import ConflictError, NotFoundError, UsageError

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
NEW = "cccccccc"  # this deploy's id
IMG = "sha256:" + "c" * 64
SPEC = parse_appspec("app: web\nimage: web:v3\nport: 8080\nproxy:\n  hosts: [example.com]\n")
RECREATE = parse_appspec("app: web\nimage: web:v3\nport: 8080\nstrategy: recreate\n")


def ago(minutes: float) -> str:
    return iso(NOW - timedelta(minutes=minutes))


def ctr(deploy_id: str, version: str, *, running: bool = False, created: float = 60, image_id: str | None = None,
        port: int = 8080) -> Container:
    return Container(name=f"nd-web-{deploy_id}", app="web", version=version, deploy_id=deploy_id, port=port,
                     image=f"web:{version}", image_id=image_id or f"sha256:{version}", running=running,
                     state="running" if running else "exited", created=ago(created))


def rec(deploy_id: str, version: str, finished: float, result: str = "ok", container: str = "",
        strategy: str = "blue-green", host: str = "h1", who: str = "alice") -> HistoryRecord:
    return HistoryRecord(deploy_id=deploy_id, app="web", version=version, image=f"web:{version}",
                         image_id=f"sha256:{version}", who=who, host=host, started_at=ago(finished + 0.5),
                         finished_at=ago(finished), result=result, duration=30.0, strategy=strategy,
                         container=container)


def cur(c: Container, switched: float = 10) -> Current:
    return Current(version=c.version, deploy_id=c.deploy_id, container=c.name, port=c.port, switched_at=ago(switched))


def host(containers=(), current=None, history=(), route="same", lock=None, complete=True, image_ids=None,
         network=True, proxy=True, name="h1") -> HostState:
    if route == "same":
        route = current.container if current else None
    return HostState(host=name, app="web", containers=tuple(containers), current=current, lock=lock, route=route,
                     history=tuple(history), history_complete=complete,
                     image_ids=frozenset(image_ids) if image_ids is not None else None, network=network,
                     proxy=proxy)


OURS = LockInfo(who="me", from_="lap", at=ago(0), version="v3", deploy_id=NEW)
V1 = ctr("aaaaaaaa", "v1", created=120)
V2 = ctr("bbbbbbbb", "v2", running=True, created=60)
STEADY = host([V1, V2], cur(V2), [rec("aaaaaaaa", "v1", 119), rec("bbbbbbbb", "v2", 59)], lock=OURS)


def actions(steps) -> list[str]:
    return [s.action.value for s in steps]


def plan(state: HostState = STEADY, spec=SPEC, **kw) -> dp.HostPlan:
    kw.setdefault("image_id", IMG)
    return dp.plan_deploy(spec, state, version="v3", deploy_id=NEW, now=NOW, **kw)


# ---------------------------------------------------------------- the happy paths
def test_first_deploy_full_step_list() -> None:
    p = plan(host(network=None, proxy=None))
    assert actions(p.steps) == ["ensure-proxy", "lock", "ship-image", "start", "health-check",
                                "switch", "write-current", "record", "unlock"]
    assert p.blue is None and p.green == "nd-web-cccccccc" and p.image == IMG and p.image_ref == "web:v3"
    assert actions(p.prepare) == ["ensure-proxy", "lock", "ship-image"]
    start = p.steps[3]
    assert (start.container, start.image, start.version, start.deploy_id, start.port) == (
        "nd-web-cccccccc", IMG, "v3", NEW, 8080)
    assert p.steps[0].image == "caddy:2-alpine"
    assert p.steps[4].check == SPEC.health_check and p.steps[4].port == 8080
    assert (p.steps[5].container, p.steps[5].port, p.steps[5].seconds) == ("nd-web-cccccccc", 8080, 30.0)
    assert p.steps[7].result == "ok"


def test_known_network_and_proxy_are_not_ensured_again() -> None:
    assert actions(dp.begin_steps(SPEC, host(), deploy_id=NEW)) == ["lock"]
    assert actions(dp.begin_steps(SPEC, None, deploy_id=NEW)) == ["ensure-proxy", "lock"]


def test_blue_green_second_deploy_under_our_lock() -> None:
    p = plan()
    assert actions(p.steps) == ["ship-image", "start", "health-check", "switch", "write-current", "record",
                                "schedule-stop", "unlock"]
    assert p.blue == V2
    stop = p.steps[6]
    assert (stop.container, stop.seconds) == ("nd-web-bbbbbbbb", 300.0)
    assert "beside nd-web-bbbbbbbb (v2)" in p.steps[1].why
    json.dumps(p.to_dict())  # -o json


def test_image_already_on_host_is_not_shipped() -> None:
    st = host([V1, V2], cur(V2), STEADY.history, lock=OURS, image_ids={IMG})
    p = plan(st)
    assert A.SHIP_IMAGE not in [s.action for s in p.steps]
    assert any("already on the host" in n for n in p.notes)


def test_pull_mode_always_pulls_the_reference() -> None:
    p = plan(image_id=None, image_source="pull")
    assert p.steps[0].action == A.PULL_IMAGE and p.steps[0].image == "web:v3"
    assert p.steps[1].image == "web:v3"  # no id known: run by reference


def test_recreate_stops_blue_first_and_schedules_nothing() -> None:
    p = plan(spec=RECREATE)
    assert actions(p.steps) == ["ship-image", "stop", "start", "health-check", "switch", "write-current", "record",
                                "unlock"]
    assert p.steps[1].containers == ("nd-web-bbbbbbbb",) and p.steps[1].seconds == 10.0
    assert p.strategy == "recreate"


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        plan(image_source="ftp")
    with pytest.raises(UsageError, match="image: is required"):
        dp.plan_deploy(parse_appspec("app: web\nport: 80\n", require_image=False), STEADY, version="v", deploy_id=NEW,
                       now=NOW)
    clash = host([ctr(NEW, "v9")], lock=OURS)
    with pytest.raises(ConflictError, match="already exists"):
        plan(clash)


# ---------------------------------------------------------------- locks
def test_lock_held_by_another_deploy_blocks_with_who_and_when() -> None:
    other = LockInfo(who="bob@desk", from_="desk", at=ago(5), version="v9", deploy_id="dddddddd")
    p = plan(host([V2], cur(V2), [rec("bbbbbbbb", "v2", 59)], lock=other))
    assert p.steps == () and p.blocked
    assert "bob@desk" in p.blocked and "(from desk)" in p.blocked and "v9" in p.blocked
    assert "dddddddd" in p.blocked and "5m ago" in p.blocked and "died" not in p.blocked


def test_old_lock_is_reported_as_probably_dead() -> None:
    old = LockInfo(who="bob", at=ago(180), version="v9", deploy_id="dddddddd")
    e = dp.lock_conflict("web", "h1", old, NOW)
    assert isinstance(e, ConflictError)
    assert "3h ago" in e.message and "most likely belongs to a deploy that died" in e.message
    assert "ndctl deploy unlock web" in e.hint and "--lock-wait" in e.hint


def test_lock_without_details() -> None:
    e = dp.lock_conflict("web", "h1", LockInfo(), NOW)
    assert "without details" in e.message and "ndctl deploy unlock web" in e.hint
    p = plan(host(lock=LockInfo()))
    assert p.blocked and "without details" in p.blocked


# ---------------------------------------------------------------- recovery
RECOVERY_CASES = {
    # name: (state, expected prepare actions, expected removed, notes substring)
    "failed green of an earlier deploy is removed": (
        host([V1, V2, ctr("eeeeeeee", "v3", running=False, created=30)], cur(V2),
             STEADY.history + (rec("eeeeeeee", "v3", 29, result="failed"),), lock=OURS),
        ["remove", "ship-image"], ("nd-web-eeeeeeee",), None),
    "interrupted deploy without any record is removed (history read in full)": (
        host([V1, V2, ctr("eeeeeeee", "v3", running=True, created=5)], cur(V2), STEADY.history, lock=OURS),
        ["remove", "ship-image"], ("nd-web-eeeeeeee",), None),
    "interrupted record counts too": (
        host([V2, ctr("eeeeeeee", "v3", running=True, created=5)], cur(V2),
             (rec("bbbbbbbb", "v2", 59), rec("eeeeeeee", "v3", 4, result="interrupted")), lock=OURS),
        ["remove", "ship-image"], ("nd-web-eeeeeeee",), None),
    "unknown container older than a cut history is kept": (
        host([ctr("99999999", "v0", created=10_000), V2], cur(V2), (rec("bbbbbbbb", "v2", 59),), complete=False,
             lock=OURS),
        ["ship-image"], (), None),
    "unknown container newer than a cut history is removed": (
        host([V2, ctr("eeeeeeee", "v3", created=5)], cur(V2), (rec("bbbbbbbb", "v2", 59),), complete=False,
             lock=OURS),
        ["remove", "ship-image"], ("nd-web-eeeeeeee",), None),
    "no state files at all: nothing is removed": (
        host([ctr("eeeeeeee", "v3", running=True, created=5)], None, (), lock=OURS),
        ["ship-image"], (), None),
    "switched but not recorded: current is repaired from the route": (
        host([V1, V2, ctr("eeeeeeee", "v3", running=True, created=5)], cur(V2), STEADY.history,
             route="nd-web-eeeeeeee", lock=OURS),
        ["repair-current", "ship-image"], (), "interrupted after its switch"),
    "route naming a removed container is reported": (
        host([V2], cur(V2), (rec("bbbbbbbb", "v2", 59),), route="nd-web-12345678", lock=OURS),
        ["ship-image"], (), "no longer exists"),
    "a release still running long after its grace (lost sleeper) is stopped": (
        host([ctr("aaaaaaaa", "v1", running=True, created=120), V2], cur(V2, switched=59), STEADY.history,
             lock=OURS),
        ["stop", "ship-image"], (), None),
    "a release inside its grace period is left running": (
        host([ctr("aaaaaaaa", "v1", running=True, created=120), ctr("bbbbbbbb", "v2", running=True, created=3)],
             cur(ctr("bbbbbbbb", "v2"), switched=2), (rec("aaaaaaaa", "v1", 119), rec("bbbbbbbb", "v2", 2)),
             lock=OURS),
        ["ship-image"], (), None),
}


@pytest.mark.parametrize("name", list(RECOVERY_CASES))
def test_recovery(name: str) -> None:
    state, expected, removed, note = RECOVERY_CASES[name]
    p = plan(state)
    assert actions(p.prepare) == expected
    rm = [s for s in p.prepare if s.action == A.REMOVE]
    assert (rm[0].containers if rm else ()) == removed
    if note:
        assert any(note in n for n in p.notes), p.notes
    # whatever recovery does, it never touches what serves
    touched = {n for s in p.prepare for n in s.containers}
    serving = {state.route, state.current.container if state.current else None}
    assert not touched & serving


def test_repair_step_carries_the_served_release() -> None:
    p = plan(RECOVERY_CASES["switched but not recorded: current is repaired from the route"][0])
    fix = p.prepare[0]
    assert (fix.container, fix.version, fix.deploy_id, fix.port) == ("nd-web-eeeeeeee", "v3", "eeeeeeee", 8080)
    assert p.blue and p.blue.name == "nd-web-eeeeeeee"  # the route is the truth about traffic


def test_stale_stop_targets_only_the_stale_release() -> None:
    p = plan(RECOVERY_CASES["a release still running long after its grace (lost sleeper) is stopped"][0])
    assert p.prepare[0].containers == ("nd-web-aaaaaaaa",)


# ---------------------------------------------------------------- pruning
def _releases(n: int, *, running_newest: bool = True) -> HostState:
    ids = [f"{i:08x}" for i in range(1, n + 1)]
    cs = [ctr(d, f"v{i + 1}", created=100 - i * 10, running=(i == n - 1 and running_newest))
          for i, d in enumerate(ids)]
    hist = [rec(d, f"v{i + 1}", 99 - i * 10) for i, d in enumerate(ids)]
    return host(cs, cur(cs[-1]), hist, lock=OURS)


@pytest.mark.parametrize("n,retain,pruned", [
    # the serving release (blue) becomes the newest previous release
    (1, 3, []),
    (3, 3, []),
    (4, 3, ["nd-web-00000001"]),
    (5, 3, ["nd-web-00000002", "nd-web-00000001"]),
    (6, 1, ["nd-web-00000005", "nd-web-00000004", "nd-web-00000003", "nd-web-00000002", "nd-web-00000001"]),
])
def test_prune_keeps_retain_previous_releases(n: int, retain: int, pruned: list[str]) -> None:
    spec = parse_appspec(f"app: web\nimage: web:v3\nport: 8080\nretain: {retain}\n")
    p = plan(_releases(n), spec=spec)
    steps = [s for s in p.steps if s.action == A.PRUNE]
    assert (list(steps[0].containers) if steps else []) == pruned
    if steps:
        assert list(steps[0].image_ids) == [f"sha256:v{c[-1]}" for c in pruned]
        assert actions(p.rollout)[-2:] == ["prune", "unlock"]


def test_prune_spares_images_still_used_and_the_new_one() -> None:
    shared = "sha256:shared"
    old = [ctr("00000001", "v1", created=100, image_id=shared), ctr("00000002", "v2", created=90, image_id=IMG),
           ctr("00000003", "v3", created=80, image_id=shared), ctr("00000004", "v4", created=70, running=True)]
    st = host(old, cur(old[-1]), [rec(c.deploy_id, c.version, 99 - i) for i, c in enumerate(old)], lock=OURS)
    spec = parse_appspec("app: web\nimage: web:v3\nport: 8080\nretain: 1\n")
    p = plan(st, spec=spec)
    prune = next(s for s in p.steps if s.action == A.PRUNE)
    assert prune.containers == ("nd-web-00000003", "nd-web-00000002", "nd-web-00000001")
    assert prune.image_ids == (shared,)  # IMG is what green runs


def test_prune_leaves_running_releases_in_their_grace() -> None:
    # five quick deploys, all within the 5-minute grace: every old one still drains or waits for its sleeper
    cs = [ctr(f"0000000{i}", f"v{i}", created=3 - 0.5 * i, running=True) for i in range(1, 6)]
    st = host(cs, cur(cs[-1], switched=0.4), [rec(c.deploy_id, c.version, 2.9 - 0.5 * i) for i, c in enumerate(cs)],
              lock=OURS)
    p = plan(st, spec=parse_appspec("app: web\nimage: web:v3\nport: 8080\nretain: 1\n"))
    assert A.PRUNE not in [s.action for s in p.steps]


def test_prune_includes_stray_images_and_stale_releases_being_stopped() -> None:
    stray = ctr("eeeeeeee", "v9", created=5, image_id="sha256:v9")
    stale = ctr("00000001", "v1", running=True, created=300)
    cs = [stale, ctr("00000002", "v2", created=200), ctr("00000003", "v3", created=100, running=True)]
    st = host(cs + [stray], cur(cs[-1], switched=99),
              [rec("00000001", "v1", 299), rec("00000002", "v2", 199), rec("00000003", "v3", 99)], lock=OURS)
    p = plan(st, spec=parse_appspec("app: web\nimage: web:v3\nport: 8080\nretain: 1\n"))
    assert actions(p.prepare) == ["remove", "stop", "ship-image"]
    prune = next(s for s in p.steps if s.action == A.PRUNE)
    assert prune.containers == ("nd-web-00000002", "nd-web-00000001")
    assert set(prune.image_ids) == {"sha256:v2", "sha256:v1", "sha256:v9"}


# ---------------------------------------------------------------- failures
BG = plan()
BG_FIRST = plan(host(network=None, proxy=None))
RC = plan(spec=RECREATE)
G, B = "nd-web-cccccccc", "nd-web-bbbbbbbb"

FAILURE_CASES = [
    # (plan, failing action, interrupted, result, switched, cleanup [(action, target)], message part)
    (BG_FIRST, A.ENSURE_PROXY, False, "failed", False, [], "nothing changed"),
    (BG_FIRST, A.LOCK, False, "failed", False, [], "nothing changed"),
    (BG_FIRST, A.LOCK, True, "interrupted", False, [("unlock", NEW)], "nothing changed"),
    (BG, A.SHIP_IMAGE, False, "failed", False, [("record", G), ("unlock", NEW)], "nd-web-bbbbbbbb (v2) keeps serving"),
    (BG, A.START, False, "failed", False, [("remove", G), ("record", G), ("unlock", NEW)], "keeps serving"),
    (BG, A.HEALTH_CHECK, False, "failed", False,
     [("capture-logs", G), ("stop", G), ("record", G), ("unlock", NEW)], "keeps serving"),
    (BG, A.HEALTH_CHECK, True, "interrupted", False,
     [("capture-logs", G), ("stop", G), ("record", G), ("unlock", NEW)], "was interrupted"),
    (BG, A.SWITCH, False, "failed", False, [("switch", B), ("stop", G), ("record", G), ("unlock", NEW)],
     "keeps serving"),
    (BG, A.WRITE_CURRENT, False, "ok", True, [], "next deploy repairs it"),
    (BG, A.RECORD, False, "ok", True, [], "history line was not written"),
    (BG, A.SCHEDULE_STOP, False, "ok", True, [], "keeps running; the next deploy stops it"),
    (BG, A.UNLOCK, False, "ok", True, [], "ndctl deploy unlock web"),
    (BG_FIRST, A.HEALTH_CHECK, False, "failed", False,
     [("capture-logs", G), ("stop", G), ("record", G), ("unlock", NEW)], "nothing served before"),
    (BG_FIRST, A.SWITCH, False, "failed", False, [("stop", G), ("record", G), ("unlock", NEW)], "nothing served"),
    (RC, A.SHIP_IMAGE, False, "failed", False, [("record", G), ("unlock", NEW)], "keeps serving"),
    (RC, A.STOP, False, "failed", False, [("start-existing", B), ("record", G), ("unlock", NEW)], "started again"),
    (RC, A.START, False, "failed", False,
     [("remove", G), ("start-existing", B), ("record", G), ("unlock", NEW)], "started again"),
    (RC, A.HEALTH_CHECK, False, "failed", False,
     [("capture-logs", G), ("stop", G), ("start-existing", B), ("record", G), ("unlock", NEW)], "started again"),
    (RC, A.SWITCH, False, "failed", False,
     [("stop", G), ("start-existing", B), ("switch", B), ("record", G), ("unlock", NEW)], "started again"),
]


def _target(s: dp.Step) -> str | None:
    return s.deploy_id if s.action == A.UNLOCK else (s.container or (s.containers[0] if s.containers else None))


@pytest.mark.parametrize("case", FAILURE_CASES,
                         ids=[f"{c[0].strategy}{'-first' if c[0].blue is None else ''}-{c[1].value}"
                              f"{'-interrupted' if c[2] else ''}" for c in FAILURE_CASES])
def test_failure_decisions(case) -> None:
    p, action, interrupted, result, switched, cleanup, msg = case
    step = next(s for s in p.steps if s.action == action)
    d = dp.on_failure(p, step, interrupted=interrupted)
    assert (d.result, d.switched) == (result, switched)
    assert [(s.action.value, _target(s)) for s in d.cleanup] == cleanup
    assert msg in d.message, d.message
    # before the switch, nothing is done to blue except restarting it after a recreate stop
    if not switched:
        for s in d.cleanup:
            if B in s.containers or s.container == B:
                assert s.action in (A.START_EXISTING, A.SWITCH)
    rec_steps = [s for s in d.cleanup if s.action == A.RECORD]
    assert all(s.result == result for s in rec_steps)


def test_failure_after_the_switch_continues_with_the_rest() -> None:
    step = next(s for s in BG.steps if s.action == A.WRITE_CURRENT)
    d = dp.on_failure(BG, step)
    assert actions(d.remaining) == ["record", "schedule-stop", "unlock"]
    assert dp.on_failure(BG, len(BG.steps) - 1).remaining == ()  # by index too


def test_failed_health_check_logs_are_asked_for() -> None:
    d = dp.on_failure(BG, next(s for s in BG.steps if s.action == A.HEALTH_CHECK))
    assert d.cleanup[0].lines == dp.LOG_LINES and d.cleanup[1].seconds == 10.0


def test_recovery_step_failure_before_anything_started() -> None:
    p = plan(RECOVERY_CASES["failed green of an earlier deploy is removed"][0])
    d = dp.on_failure(p, p.prepare[0])
    assert [s.action for s in d.cleanup] == [A.RECORD, A.UNLOCK] and not d.switched


# ---------------------------------------------------------------- rollback
def test_rollback_to_previous_stopped_container() -> None:
    p = dp.plan_rollback(SPEC, STEADY, deploy_id=NEW, now=NOW)
    assert p.kind == "rollback" and p.version == "v1" and p.green == "nd-web-aaaaaaaa" and p.blue == V2
    assert actions(p.steps) == ["start-existing", "health-check", "switch", "write-current", "record",
                                "schedule-stop", "unlock"]
    write = next(s for s in p.steps if s.action == A.WRITE_CURRENT)
    assert (write.container, write.deploy_id, write.version) == ("nd-web-aaaaaaaa", "aaaaaaaa", "v1")
    record = next(s for s in p.steps if s.action == A.RECORD)
    assert (record.deploy_id, record.container) == (NEW, "nd-web-aaaaaaaa")
    assert next(s for s in p.steps if s.action == A.SCHEDULE_STOP).container == B


def test_rollback_to_a_running_container_is_instant() -> None:
    st = host([ctr("aaaaaaaa", "v1", running=True, created=120), V2], cur(V2, switched=1),
              [rec("aaaaaaaa", "v1", 119), rec("bbbbbbbb", "v2", 1)], lock=OURS)
    p = dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW)
    assert actions(p.steps) == ["switch", "write-current", "record", "schedule-stop", "unlock"]
    assert any("switching instantly" in n for n in p.notes)


def test_rollback_recreates_from_the_retained_image() -> None:
    st = host([V2], cur(V2), [rec("aaaaaaaa", "v1", 119), rec("bbbbbbbb", "v2", 59)], lock=OURS,
              image_ids={"sha256:v1", "sha256:v2"})
    p = dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW)
    assert p.green == "nd-web-cccccccc"
    start = p.steps[0]
    assert (start.action, start.image, start.version, start.deploy_id) == (A.START, "sha256:v1", "v1", NEW)
    assert actions(p.steps)[1:3] == ["health-check", "switch"]
    assert any("re-creating v1" in n for n in p.notes)


def test_secret_names_travel_with_a_release_into_a_re_creating_rollback() -> None:
    from dataclasses import replace as dc_replace

    # names only: the history record keeps what green ran with, never a value
    spec = dc_replace(SPEC, secrets=("DB_PASSWORD",))
    p = dp.plan_deploy(spec, STEADY, version="v3", deploy_id=NEW, now=NOW)
    rec_ = dp.history_record(p, result="ok", who="alice", started_at=NOW, finished_at=NOW)
    assert rec_["secrets"] == ["DB_PASSWORD"]
    assert HistoryRecord.from_dict(rec_).secrets == ("DB_PASSWORD",)
    assert "secrets" not in dp.history_record(dp.plan_deploy(SPEC, STEADY, version="v3", deploy_id=NEW, now=NOW),
                                              result="ok", who="a", started_at=NOW, finished_at=NOW)
    assert HistoryRecord.from_dict({"deploy_id": "x", "secrets": "DB_PASSWORD"}).secrets == ()  # not a list

    # v1 ran with API_TOKEN given only with --secret; the file now names DB_PASSWORD alone
    v1 = dc_replace(rec("aaaaaaaa", "v1", 119), secrets=("API_TOKEN",))
    st = host([V2], cur(V2), [v1, rec("bbbbbbbb", "v2", 59)], lock=OURS, image_ids={"sha256:v1", "sha256:v2"})
    p = dp.plan_rollback(spec, st, deploy_id=NEW, now=NOW)
    start = p.steps[0]
    assert (start.action, start.secrets) == (A.START, ("DB_PASSWORD", "API_TOKEN"))
    assert start.to_dict()["secrets"] == ["DB_PASSWORD", "API_TOKEN"] and p.secrets == start.secrets
    assert any("its secrets DB_PASSWORD, API_TOKEN" in n for n in p.notes)
    # an instant rollback to a container that still exists keeps what it was created with
    st = host([ctr("aaaaaaaa", "v1", running=True, created=120), V2], cur(V2, switched=1),
              [v1, rec("bbbbbbbb", "v2", 1)], lock=OURS)
    p = dp.plan_rollback(spec, st, deploy_id=NEW, now=NOW)
    assert p.secrets == ("API_TOKEN",) and not any(s.secrets for s in p.steps)


def test_rollback_to_a_named_version_and_errors() -> None:
    st = host([V1, V2, ctr("dddddddd", "v3", running=True, created=30)], cur(ctr("dddddddd", "v3", running=True)),
              [rec("aaaaaaaa", "v1", 119), rec("bbbbbbbb", "v2", 59), rec("dddddddd", "v3", 29)], lock=OURS)
    assert dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW).version == "v2"
    assert dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW, to_version="v1").green == "nd-web-aaaaaaaa"
    with pytest.raises(NotFoundError, match=r"no retained release 'v0' on h1 \(retained: v2, v1\)"):
        dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW, to_version="v0")
    with pytest.raises(UsageError, match="already serves v3"):
        dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW, to_version="v3")
    with pytest.raises(NotFoundError, match="no previous release"):
        dp.plan_rollback(SPEC, host([V2], cur(V2), [rec("bbbbbbbb", "v2", 59)], lock=OURS), deploy_id=NEW, now=NOW)


def test_rollback_skips_failed_and_gone_releases() -> None:
    st = host([V2, ctr("eeeeeeee", "v9", created=30)], cur(V2),
              [rec("aaaaaaaa", "v1", 119), rec("bbbbbbbb", "v2", 59), rec("eeeeeeee", "v9", 29, result="failed")],
              lock=OURS, image_ids={"sha256:v2"})  # v1's container and image are both gone
    assert dp.retained_releases(st) == []


def test_rollback_toggles_back() -> None:
    # after rolling back to v1, "previous" is v2 again
    v1 = ctr("aaaaaaaa", "v1", running=True, created=120)
    st = host([v1, V2], cur(v1, switched=1),
              [rec("aaaaaaaa", "v1", 119), rec("bbbbbbbb", "v2", 59),
               rec("12345678", "v1", 1, container="nd-web-aaaaaaaa", strategy="rollback")], lock=OURS)
    assert [r.version for r in dp.retained_releases(st)] == ["v2"]
    assert dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW).green == B
    # and the rolled-back-to container is not a stray for the next deploy
    assert A.REMOVE not in [s.action for s in plan(st).steps]


def test_rollback_of_a_recreate_app_stops_the_serving_one_first() -> None:
    p = dp.plan_rollback(RECREATE, STEADY, deploy_id=NEW, now=NOW)
    assert actions(p.steps) == ["stop", "start-existing", "health-check", "switch", "write-current", "record",
                                "unlock"]
    d = dp.on_failure(p, next(s for s in p.steps if s.action == A.HEALTH_CHECK))
    assert [(s.action.value, _target(s)) for s in d.cleanup] == [
        ("capture-logs", "nd-web-aaaaaaaa"), ("stop", "nd-web-aaaaaaaa"), ("start-existing", B),
        ("record", "nd-web-aaaaaaaa"), ("unlock", NEW)]


def test_rollback_failures() -> None:
    p = dp.plan_rollback(SPEC, STEADY, deploy_id=NEW, now=NOW)
    d = dp.on_failure(p, p.steps[0])
    assert [(s.action.value, _target(s)) for s in d.cleanup] == [
        ("stop", "nd-web-aaaaaaaa"), ("record", "nd-web-aaaaaaaa"), ("unlock", NEW)]
    d = dp.on_failure(p, next(s for s in p.steps if s.action == A.SWITCH))
    assert [(s.action.value, _target(s)) for s in d.cleanup] == [
        ("switch", B), ("stop", "nd-web-aaaaaaaa"), ("record", "nd-web-aaaaaaaa"), ("unlock", NEW)]


def test_rollback_blocked_by_lock() -> None:
    other = LockInfo(who="bob", at=ago(1), version="v9", deploy_id="dddddddd")
    st = host([V1, V2], cur(V2), STEADY.history, lock=other)
    p = dp.plan_rollback(SPEC, st, deploy_id=NEW, now=NOW)
    assert p.blocked and p.steps == ()


# ---------------------------------------------------------------- rolling batches
@pytest.mark.parametrize("n,parallel,sizes", [
    (3, "1", [1, 1, 1]), (3, "2", [2, 1]), (3, "100%", [3]), (10, "25%", [3, 3, 3, 1]), (1, "50%", [1]),
    (0, "2", []),
])
def test_batches(n: int, parallel: str, sizes: list[int]) -> None:
    from ndctl.core.appspec import parse_parallel

    hosts = [f"h{i}" for i in range(n)]
    b = dp.batches(hosts, parse_parallel(parallel))
    assert [len(x) for x in b] == sizes
    assert [h for x in b for h in x] == hosts


def test_rollout_stops_at_the_first_failed_batch() -> None:
    r = Rollout(["h1", "h2", "h3", "h4", "h5"], Parallelism(count=2))
    assert r.next_batch() == ("h1", "h2")
    r.record("h1", HostOutcome("ok", True))
    r.record("h2", HostOutcome("ok", True))
    assert r.next_batch() == ("h3", "h4")
    r.record("h3", HostOutcome("failed", False))
    r.record("h4", HostOutcome("ok", True))  # the batch in flight finishes
    assert r.next_batch() is None
    assert r.result == "failed"
    assert (r.switched, r.failed, r.untouched) == (["h1", "h2", "h4"], ["h3"], ["h5"])
    assert r.to_roll_back() == []  # without --rollback-on-failure switched hosts stay on green
    assert r.summary()["untouched"] == ["h5"]


def test_rollout_with_rollback_on_failure() -> None:
    r = Rollout(["h1", "h2", "h3"], Parallelism(count=1), rollback_on_failure=True)
    r.record(r.next_batch()[0], HostOutcome("ok", True))
    r.record(r.next_batch()[0], HostOutcome("interrupted", False))
    assert r.next_batch() is None and r.to_roll_back() == ["h1"]


def test_rollout_success() -> None:
    r = Rollout(["h1", "h2", "h3"], Parallelism(percent=50))
    while (b := r.next_batch()) is not None:
        for h in b:
            r.record(h, HostOutcome("ok", True))
    assert r.result == "ok" and r.batches == [("h1", "h2"), ("h3",)] and r.to_roll_back() == []


# ---------------------------------------------------------------- history, status, parsing
def test_history_record_has_the_contract_fields() -> None:
    r = dp.history_record(BG, result="ok", who="alice@lap", started_at=NOW, finished_at=NOW + timedelta(seconds=12.5),
                          image_id=IMG)
    assert r == {"deploy_id": NEW, "app": "web", "version": "v3", "image": "web:v3", "image_id": IMG,
                 "who": "alice@lap", "host": "h1", "started_at": "2026-11-27T12:00:00Z",
                 "finished_at": "2026-11-27T12:00:12Z", "result": "ok", "duration": 12.5, "strategy": "blue-green",
                 "container": G}
    assert dp.history_record(BG, result="failed", who="a", started_at=NOW, finished_at=NOW,
                             error="health check: 502")["error"] == "health check: 502"
    assert HistoryRecord.from_dict(json.loads(json.dumps(r))).release("web") == G


def test_merge_history_across_hosts() -> None:
    h1 = [rec("aaaaaaaa", "v1", 100, host="h1"), rec("bbbbbbbb", "v2", 50, host="h1")]
    h2 = [rec("aaaaaaaa", "v1", 99, host="h2"), rec("bbbbbbbb", "v2", 49, result="failed", host="h2")]
    rows = dp.merge_history({"h1": h1, "h2": h2})
    assert [(r["deploy_id"], r["result"], r["hosts"]) for r in rows] == [
        ("aaaaaaaa", "ok", {"h1": "ok", "h2": "ok"}),
        ("bbbbbbbb", "partial", {"h1": "ok", "h2": "failed"})]
    assert rows[0]["started_at"] == ago(100.5) and rows[0]["finished_at"] == ago(99)


def test_host_status() -> None:
    other = LockInfo(who="bob", from_="desk", at=ago(3), version="v9", deploy_id="dddddddd")
    st = host([V1, V2, ctr("eeeeeeee", "v9", created=5)], cur(V2), STEADY.history, lock=other)
    s = dp.host_status(st, now=NOW)
    assert s["serving"] == {"version": "v2", "container": B, "deploy_id": "bbbbbbbb", "running": True,
                            "state": "running"}
    assert s["lock"]["who"] == "bob" and s["lock"]["age"] == "3m ago"
    assert [r["version"] for r in s["releases"]] == ["v1"] and s["releases"][0]["exists"] is True
    assert s["strays"] == ["nd-web-eeeeeeee"]
    json.dumps(s)


def test_state_from_real_outputs() -> None:
    inspect = {
        "id": "f" * 64, "name": "/nd-web-bbbbbbbb", "image": "web:v2", "image_id": "sha256:v2",
        "created": "2026-11-27T11:00:00.123456789Z", "state": "running", "running": True, "exit_code": 0,
        "started_at": "2026-11-27T11:00:01.5Z", "finished_at": "0001-01-01T00:00:00Z", "restart_count": 0,
        "labels": {"com.nextdeploy.app": "web", "com.nextdeploy.version": "v2",
                   "com.nextdeploy.deploy-id": "bbbbbbbb", "com.nextdeploy.role": "app",
                   "com.nextdeploy.port": "8080"},
        "networks": {"nextdeploy": {"IPAddress": "172.30.0.5"}},
    }
    other_app = {**inspect, "name": "/nd-api-11111111", "labels": {**inspect["labels"], "com.nextdeploy.app": "api"}}
    state_text = (
        'lock {"who":"me","from":"lap","at":"2026-11-27T11:59:00Z","version":"v3","deploy_id":"cccccccc"}\n'
        'current {"version":"v2","deploy_id":"bbbbbbbb","container":"nd-web-bbbbbbbb","port":8080,'
        '"switched_at":"2026-11-27T11:00:30Z"}\n'
        'route {"app":"web","hosts":["example.com"],"upstream":"nd-web-bbbbbbbb:8080","drain_seconds":30}\n'
        'history {"deploy_id":"bbbbbbbb","app":"web","version":"v2","result":"ok","duration":31}\n')
    st = HostState.from_outputs("h1", "web", containers_text=json.dumps(inspect) + "\n" + json.dumps(other_app)
                                + "\nnot json\n", state_text=state_text, history_tail=1, network=True)
    assert len(st.containers) == 1
    c = st.containers[0]
    assert (c.name, c.version, c.deploy_id, c.port, c.running, c.ip) == (
        "nd-web-bbbbbbbb", "v2", "bbbbbbbb", 8080, True, "172.30.0.5")
    assert dp.parse_time(c.created) == datetime(2026, 11, 27, 11, 0, 0, 123456, tzinfo=timezone.utc)
    assert dp.parse_time(c.finished_at) is None
    assert st.lock == LockInfo(who="me", from_="lap", at="2026-11-27T11:59:00Z", version="v3", deploy_id=NEW)
    assert st.current == Current("v2", "bbbbbbbb", "nd-web-bbbbbbbb", 8080, "2026-11-27T11:00:30Z")
    assert st.route == "nd-web-bbbbbbbb" and st.serving == c
    assert st.history[0].duration == 31.0
    assert st.history_complete is False  # as many lines as asked for: older ones may exist
    assert HostState.from_outputs("h1", "web", state_text=state_text, history_tail=200).history_complete
    p = dp.plan_deploy(SPEC, st, version="v3", deploy_id=NEW, now=NOW)
    assert actions(p.steps)[0] == "ship-image"  # our lock: no begin steps
    # a crash between Caddy's live marker and the route file: the marker is what serves, and the
    # deploy that switched to it is not in the history; it is repaired as current, never removed as a stray
    crashed = {**inspect, "name": "/nd-web-dddddddd",
               "labels": {**inspect["labels"], "com.nextdeploy.deploy-id": "dddddddd", "com.nextdeploy.version": "v4"}}
    st = HostState.from_outputs("h1", "web", containers_text=json.dumps(inspect) + "\n" + json.dumps(crashed),
                                state_text=state_text.replace("lock ", "x ")
                                + 'live {"upstream":"nd-web-dddddddd:8080"}\n', history_tail=200)
    assert st.route == "nd-web-dddddddd" and st.serving.name == "nd-web-dddddddd"
    p = dp.plan_deploy(SPEC, st, version="v5", deploy_id=NEW, now=NOW)
    assert p.blue.name == "nd-web-dddddddd"
    assert "nd-web-dddddddd" not in [c for s in p.steps if s.action is dp.Action.REMOVE for c in s.containers]
    assert any(s.action is dp.Action.REPAIR_CURRENT and s.container == "nd-web-dddddddd" for s in p.steps)


@pytest.mark.parametrize("text,expected", [
    ("2026-11-27T10:06:00Z", datetime(2026, 11, 27, 10, 6, tzinfo=timezone.utc)),
    ("2026-11-27T10:06:00.999999999Z", datetime(2026, 11, 27, 10, 6, 0, 999999, tzinfo=timezone.utc)),
    ("2026-11-27T11:06:00+01:00", datetime(2026, 11, 27, 10, 6, tzinfo=timezone.utc)),
    ("0001-01-01T00:00:00Z", None), ("", None), ("yesterday", None), (None, None), (5, None),
])
def test_parse_time(text, expected) -> None:
    assert dp.parse_time(text) == expected


def test_new_deploy_id() -> None:
    ids = {dp.new_deploy_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 8 and int(i, 16) >= 0 for i in ids)


def test_split_at_switch_leaves_only_bookkeeping_after_it() -> None:
    S = dp.Step
    start, check, switch = S(dp.Action.START), S(dp.Action.HEALTH_CHECK), S(dp.Action.SWITCH)
    tail = (S(dp.Action.WRITE_CURRENT), S(dp.Action.RECORD), S(dp.Action.SCHEDULE_STOP), S(dp.Action.PRUNE),
            S(dp.Action.UNLOCK))
    assert dp.split_at_switch((start, check, switch, *tail)) == ((start, check, switch), tail)
    assert dp.split_at_switch((start, check, switch)) == ((start, check, switch), ())
    no_switch = (S(dp.Action.STOP), S(dp.Action.UNLOCK))
    assert dp.split_at_switch(no_switch) == (no_switch, ())
    # anything else after the switch (a step the next batch must wait for) keeps the rollout whole
    odd = (start, switch, S(dp.Action.HEALTH_CHECK), S(dp.Action.UNLOCK))
    assert dp.split_at_switch(odd) == (odd, ())
