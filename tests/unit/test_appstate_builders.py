"""On-host state scripts: exact argv, and each script run for real by `sh` on a temp state dir."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ndctl.commands import appstate
from ndctl.commands.appstate import LOCK_HELD

NASTY = "it's \"quoted\"; $(touch /tmp/pwned) `id`\nsecond line\\n \u00e9"


def run(argv: list[str], stdin: bytes = b"", env: dict | None = None) -> tuple[int, str, str]:
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def info(deploy_id: str, who: str = "alice@laptop", version: str = "v1") -> bytes:
    return appstate.lock_payload(who=who, from_="laptop", at="2026-11-27T10:00:00Z", version=version,
                                 deploy_id=deploy_id)


@pytest.fixture
def base(tmp_path: Path) -> str:
    d = tmp_path / "nextdeploy"  # stands in for /var/lib/nextdeploy
    d.mkdir()
    return str(d)


# ---------------------------------------------------------------- exact argv
def test_exact_argv() -> None:
    b = "/var/lib/nextdeploy"
    assert appstate.acquire_lock("web")[3:] == ["nd-lock", b, "web"]
    assert appstate.release_lock("web", "0a1b2c3d")[3:] == ["nd-unlock", b, "web", "0a1b2c3d", "0"]
    assert appstate.release_lock("web", "0a1b2c3d", force=True)[3:] == ["nd-unlock", b, "web", "0a1b2c3d", "1"]
    assert appstate.read_lock("web")[3:] == ["nd-read-lock", b, "web"]
    assert appstate.append_history("web")[3:] == ["nd-history-add", b, "web", "2000"]
    assert appstate.read_history("web", tail=20)[3:] == ["nd-history", b, "web", "20"]
    assert appstate.read_history("web", tail=None)[3:] == ["nd-history", b, "web", "all"]
    assert appstate.write_current("web")[3:] == ["nd-current-set", b, "web"]
    assert appstate.read_current("web")[3:] == ["nd-current", b, "web"]
    assert appstate.read_state("web", history_tail=50)[3:] == ["nd-state", b, "web", "50"]
    assert appstate.schedule_stop("web", "nd-web-0a1b2c3d", delay=300, timeout=9.5)[3:] == [
        "nd-stop-later", b, "web", "nd-web-0a1b2c3d", "300", "10"]
    assert appstate.acquire_lock("web", base="/srv/nd/")[4] == "/srv/nd"
    for argv in (appstate.acquire_lock("web"), appstate.release_lock("web", "0a1b2c3d"),
                 appstate.append_history("web"), appstate.schedule_stop("web", "c", delay=1, timeout=1)):
        assert argv[:2] == ["sh", "-c"]
        assert "web" not in argv[2] and "/var/lib" not in argv[2]  # values only as positional parameters


@pytest.mark.parametrize("call", [
    lambda: appstate.acquire_lock("../etc"),
    lambda: appstate.acquire_lock("Web"),
    lambda: appstate.acquire_lock("web", base="relative"),
    lambda: appstate.acquire_lock("web", base="/"),
    lambda: appstate.release_lock("web", "'; rm -rf /"),
    lambda: appstate.release_lock("web", "0A1B2C3D"),
    lambda: appstate.read_history("web", tail=0),
    lambda: appstate.read_history("web", tail="5"),
    lambda: appstate.read_state("web", history_tail=0),
    lambda: appstate.schedule_stop("web", "-t", delay=1, timeout=1),
    lambda: appstate.schedule_stop("web", "c", delay=-1, timeout=1),
    lambda: appstate.lock_payload(who="x", from_="y", at="z", version="v", deploy_id="nothex!!"),
    lambda: appstate.current_payload(version="v", deploy_id="0a1b2c3d", container="a b", port=1, switched_at="t"),
])
def test_bad_values_are_refused(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_payloads_are_one_compact_line() -> None:
    p = appstate.history_payload({"who": NASTY, "n": 1})
    assert p.count(b"\n") == 1 and p.endswith(b"\n")
    assert json.loads(p) == {"who": NASTY, "n": 1}
    assert appstate.current_payload(version="v1", deploy_id="0a1b2c3d", container="nd-web-0a1b2c3d", port=80,
                                    switched_at="t") == (
        b'{"version":"v1","deploy_id":"0a1b2c3d","container":"nd-web-0a1b2c3d","port":80,"switched_at":"t"}\n')


def test_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NDCTL_OPERATOR", "ci-bot")
    who, frm = appstate.operator()
    assert who == "ci-bot" and frm
    monkeypatch.delenv("NDCTL_OPERATOR")
    who, frm = appstate.operator()
    assert who.endswith("@" + frm)


# ---------------------------------------------------------------- lock, for real
def test_acquire_twice_second_gets_the_first_ones_info(base: str) -> None:
    assert run(appstate.acquire_lock("web", base), info("aaaaaaaa")) == (0, "", "")
    rc, out, _ = run(appstate.acquire_lock("web", base), info("bbbbbbbb", who="bob@desk", version="v2"))
    assert rc == LOCK_HELD
    assert json.loads(out) == {"who": "alice@laptop", "from": "laptop", "at": "2026-11-27T10:00:00Z",
                               "version": "v1", "deploy_id": "aaaaaaaa"}
    lock = Path(base, "apps", "web", "lock")
    assert sorted(os.listdir(lock)) == ["info.json"]
    assert sorted(os.listdir(lock.parent)) == ["lock"]  # no temporary files left behind
    assert stat.S_IMODE(lock.stat().st_mode) == 0o755
    assert stat.S_IMODE((lock / "info.json").stat().st_mode) == 0o644


def test_other_apps_have_their_own_lock(base: str) -> None:
    assert run(appstate.acquire_lock("web", base), info("aaaaaaaa"))[0] == 0
    assert run(appstate.acquire_lock("api", base), info("bbbbbbbb"))[0] == 0


def test_concurrent_acquires_have_exactly_one_winner(base: str) -> None:
    ids = [f"{i:08x}" for i in range(12)]
    with ThreadPoolExecutor(len(ids)) as pool:
        results = list(pool.map(lambda d: (d, run(appstate.acquire_lock("web", base), info(d))), ids))
    winners = [d for d, (rc, _, _) in results if rc == 0]
    assert len(winners) == 1
    for d, (rc, out, _) in results:
        if d != winners[0]:
            assert rc == LOCK_HELD and json.loads(out)["deploy_id"] == winners[0]


def test_release_with_wrong_id_is_refused(base: str) -> None:
    run(appstate.acquire_lock("web", base), info("aaaaaaaa"))
    rc, out, _ = run(appstate.release_lock("web", "bbbbbbbb", base=base))
    assert rc == LOCK_HELD and json.loads(out)["deploy_id"] == "aaaaaaaa"
    assert Path(base, "apps/web/lock/info.json").exists()
    assert run(appstate.release_lock("web", "aaaaaaaa", base=base)) == (0, "released\n", "")
    assert not Path(base, "apps/web/lock").exists()
    assert os.listdir(Path(base, "apps/web")) == []
    assert run(appstate.release_lock("web", "aaaaaaaa", base=base)) == (0, "not-locked\n", "")
    assert run(appstate.acquire_lock("web", base), info("bbbbbbbb"))[0] == 0  # free again


def test_forced_release_takes_any_holder(base: str) -> None:
    run(appstate.acquire_lock("web", base), info("aaaaaaaa"))
    assert run(appstate.release_lock("web", "bbbbbbbb", force=True, base=base)) == (0, "released\n", "")
    assert run(appstate.read_lock("web", base)) == (0, "", "")


def test_release_matches_a_pretty_printed_info_too(base: str) -> None:
    lock = Path(base, "apps/web/lock")
    lock.mkdir(parents=True)
    (lock / "info.json").write_text(json.dumps({"who": "x", "deploy_id": "aaaaaaaa"}, indent=1))
    assert run(appstate.release_lock("web", "aaaaaaaa", base=base))[:2] == (0, "released\n")


def test_lock_without_info_is_reported_not_hidden(base: str) -> None:
    # a deploy that died between mkdir and writing its info (or a hand-made directory)
    Path(base, "apps/web/lock").mkdir(parents=True)
    t0 = time.monotonic()
    rc, out, _ = run(appstate.acquire_lock("web", base), info("bbbbbbbb"))
    assert (rc, out) == (LOCK_HELD, "{}\n")
    assert time.monotonic() - t0 < 15  # waits about 2 s for an info.json being written, not forever
    assert run(appstate.read_lock("web", base)) == (0, "{}\n", "")
    rc, out, _ = run(appstate.release_lock("web", "bbbbbbbb", base=base))
    assert (rc, out) == (LOCK_HELD, "{}\n")  # only a forced unlock frees it
    assert run(appstate.release_lock("web", "bbbbbbbb", force=True, base=base))[:2] == (0, "released\n")


def test_acquire_needs_info_on_stdin(base: str) -> None:
    rc, _, err = run(appstate.acquire_lock("web", base), b"")
    assert rc == 1 and "no lock info" in err
    assert not Path(base, "apps/web/lock").exists()


def test_acquire_reports_an_unwritable_state_dir(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        base = str(blocker)  # a file where the directory should be: fails for root too
    else:
        base = str(tmp_path / "ro")
        os.mkdir(base, 0o555)
    rc, out, _ = run(appstate.acquire_lock("web", base), info("aaaaaaaa"))
    assert rc not in (0, LOCK_HELD) and out == ""


def test_read_lock(base: str) -> None:
    assert run(appstate.read_lock("web", base)) == (0, "", "")
    run(appstate.acquire_lock("web", base), info("aaaaaaaa"))
    rc, out, _ = run(appstate.read_lock("web", base))
    assert rc == 0 and json.loads(out)["deploy_id"] == "aaaaaaaa"


# ---------------------------------------------------------------- history, current, state
def test_history_lines_survive_quotes_and_newlines(base: str) -> None:
    records = [{"deploy_id": f"{i:08x}", "who": NASTY, "version": f"v{i}", "error": "line1\nline2\r\n\t\"x\""}
               for i in range(5)]
    for r in records:
        assert run(appstate.append_history("web", base), appstate.history_payload(r)) == (0, "", "")
    rc, out, _ = run(appstate.read_history("web", tail=None, base=base))
    assert rc == 0 and [json.loads(x) for x in out.splitlines()] == records
    rc, out, _ = run(appstate.read_history("web", tail=2, base=base))
    assert [json.loads(x) for x in out.splitlines()] == records[-2:]
    f = Path(base, "apps/web/history.jsonl")
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert sorted(os.listdir(f.parent)) == ["history.jsonl"]


def test_history_refuses_anything_but_one_line(base: str) -> None:
    for bad in (b"", b'{"a":1}', b'{"a":1}\n{"b":2}\n'):
        rc, _, err = run(appstate.append_history("web", base), bad)
        assert rc == 2 and "one line" in err
    assert run(appstate.read_history("web", base=base)) == (0, "", "")
    assert sorted(os.listdir(Path(base, "apps/web"))) == []


def test_concurrent_history_appends_never_interleave(base: str) -> None:
    payloads = [appstate.history_payload({"deploy_id": f"{i:08x}", "pad": "x" * 3000}) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        assert all(r[0] == 0 for r in pool.map(lambda p: run(appstate.append_history("web", base), p), payloads))
    lines = Path(base, "apps/web/history.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["deploy_id"] for x in lines) == [f"{i:08x}" for i in range(16)]


def test_history_rotates_and_reads_across_the_archive(base: str) -> None:
    recs = [{"deploy_id": f"{i:08x}", "n": i} for i in range(12)]
    for r in recs:
        assert run(appstate.append_history("web", base, rotate_at=5), appstate.history_payload(r))[0] == 0
    d = Path(base, "apps/web")
    # 12 appends at 5 per file: rotated after the 5th and the 10th; the first five are gone
    assert len(d.joinpath("history.1.jsonl").read_text().splitlines()) == 5
    assert len(d.joinpath("history.jsonl").read_text().splitlines()) == 2
    rc, out, _ = run(appstate.read_history("web", tail=None, base=base))
    assert [json.loads(x)["n"] for x in out.splitlines()] == list(range(5, 12))
    rc, out, _ = run(appstate.read_history("web", tail=4, base=base))
    assert [json.loads(x)["n"] for x in out.splitlines()] == [8, 9, 10, 11]  # across both files
    rc, out, _ = run(appstate.read_state("web", history_tail=3, base=base))
    assert [x["n"] for x in appstate.parse_state(out)["history"]] == [9, 10, 11]
    with pytest.raises(ValueError):
        appstate.append_history("web", base, rotate_at=0)


def test_current_is_replaced_atomically(base: str) -> None:
    assert run(appstate.read_current("web", base)) == (0, "", "")
    for i, c in enumerate(("nd-web-aaaaaaaa", "nd-web-bbbbbbbb")):
        p = appstate.current_payload(version=f"v{i}", deploy_id=c[-8:], container=c, port=80, switched_at="t")
        assert run(appstate.write_current("web", base), p) == (0, "", "")
        rc, out, _ = run(appstate.read_current("web", base))
        assert json.loads(out)["container"] == c
    assert sorted(os.listdir(Path(base, "apps/web"))) == ["current.json"]  # no temporary file left
    # an empty payload (a dropped connection) never replaces it
    assert run(appstate.write_current("web", base), b"")[0] == 1
    assert json.loads(run(appstate.read_current("web", base))[1])["container"] == "nd-web-bbbbbbbb"
    assert sorted(os.listdir(Path(base, "apps/web"))) == ["current.json"]


def test_read_state_in_one_round_trip(base: str) -> None:
    assert appstate.parse_state(run(appstate.read_state("web", base=base))[1]) == {
        "lock": None, "current": None, "route": None, "live": None, "history": [], "bad_lines": 0}
    run(appstate.acquire_lock("web", base), info("aaaaaaaa"))
    run(appstate.write_current("web", base), appstate.current_payload(
        version="v1", deploy_id="aaaaaaaa", container="nd-web-aaaaaaaa", port=80, switched_at="t"))
    for i in range(4):
        run(appstate.append_history("web", base), appstate.history_payload({"deploy_id": f"{i:08x}", "who": NASTY}))
    routes = Path(base, "proxy/routes")
    routes.mkdir(parents=True)
    # a route file as another writer may leave it: pretty-printed, no final newline
    (routes / "web.json").write_text(json.dumps({"app": "web", "hosts": [], "upstream": "nd-web-aaaaaaaa:80"}))
    rc, out, _ = run(appstate.read_state("web", history_tail=3, base=base))
    assert rc == 0
    st = appstate.parse_state(out)
    assert st["lock"]["deploy_id"] == "aaaaaaaa"
    assert st["current"]["container"] == "nd-web-aaaaaaaa"
    assert st["route"]["upstream"] == "nd-web-aaaaaaaa:80"
    assert [h["deploy_id"] for h in st["history"]] == ["00000001", "00000002", "00000003"]
    assert st["history"][0]["who"] == NASTY and st["bad_lines"] == 0
    assert st["live"] is None
    # Caddy's live marker: what the proxy serves, even where a crash left the route file behind
    live = Path(base, "proxy/live/web")
    live.mkdir(parents=True)
    (live / "nd-web-bbbbbbbb:80").touch()
    st = appstate.parse_state(run(appstate.read_state("web", history_tail=3, base=base))[1])
    assert st["live"] == {"upstream": "nd-web-bbbbbbbb:80"} and st["route"]["upstream"] == "nd-web-aaaaaaaa:80"
    # after a switch the replaced marker stays, dated 1980: the newest one is what serves
    (live / "nd-web-cccccccc:80").touch()
    os.utime(live / "nd-web-bbbbbbbb:80", (315532800, 315532800))
    st = appstate.parse_state(run(appstate.read_state("web", history_tail=3, base=base))[1])
    assert st["live"] == {"upstream": "nd-web-cccccccc:80"}


def test_lock_then_read_takes_the_lock_and_reads_under_it_in_one_round_trip(base: str, tmp_path: Path) -> None:
    from ndctl.core.deployplan import HostState

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    images = tmp_path / "images"
    (bin_dir / "docker").write_text(f'#!/bin/sh\n[ "$*" = "image ls --no-trunc --quiet" ] && exec cat "{images}"\n'
                                    'exit 1\n')
    (bin_dir / "docker").chmod(0o755)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp)}
    images.write_text("sha256:" + "a" * 64 + "\n")
    c = {"name": "/nd-web-aaaaaaaa", "labels": {"com.nextdeploy.app": "web", "com.nextdeploy.role": "app"}}
    listing = ["sh", "-c", 'printf "%s\\n" "$1"', "list", json.dumps(c)]
    argv = appstate.acquire_lock_then_read("web", listing, history_tail=5, base=base)
    assert argv[3:5] == ["nd-lock-read", appstate.acquire_lock("web", base)[2]]
    assert argv[5:10] == [appstate.read_state("web", 5, base)[2], base, "web", "5", "sh"]
    run(appstate.append_history("web", base), appstate.history_payload({"deploy_id": "aaaaaaaa", "result": "ok"}))

    rc, out, err = run(argv, info("bbbbbbbb"), env)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "locked" and lines[-2:] == ["sha256:" + "a" * 64, "images listed"]
    st = HostState.from_outputs("h1", "web", containers_text=out, state_text=out, history_tail=5)
    assert st.lock.deploy_id == "bbbbbbbb"  # read under the lock: our own
    assert [x.name for x in st.containers] == ["nd-web-aaaaaaaa"] and len(st.history) == 1
    assert st.history_complete

    # held by another deploy: refused as acquire_lock refuses, and nothing else is read
    rc, out, _ = run(argv, info("cccccccc"), env)
    assert rc == appstate.LOCK_HELD and json.loads(out)["deploy_id"] == "bbbbbbbb"
    run(appstate.release_lock("web", "bbbbbbbb", base=base))

    # the listing fails after the lock was taken: exit 3, but "locked" says whose lock it is now
    rc, out, _ = run(appstate.acquire_lock_then_read("web", ["false"], base=base), info("dddddddd"), env)
    assert rc == 3 and out.splitlines() == ["locked"] + out.splitlines()[1:]
    run(appstate.release_lock("web", "dddddddd", base=base))

    # the image listing fails: the rest stands, without "images listed"
    images.unlink()
    rc, out, _ = run(argv, info("eeeeeeee"), env)
    assert rc == 0 and "images listed" not in out and out.startswith("locked\n")
    run(appstate.release_lock("web", "eeeeeeee", base=base))
    assert not list(tmp.iterdir())  # the listing's temporary file is gone every time


def test_lock_then_read_lists_the_images_beside_the_reads(base: str, tmp_path: Path) -> None:
    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir()
    tmp.mkdir()
    started = tmp_path / "image-listing-started"
    (bin_dir / "docker").write_text(f'#!/bin/sh\ntouch "{started}"\necho sha256:{"b" * 64}\n')
    (bin_dir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp)}
    # the container listing succeeds only if the image listing started while it runs
    listing = ["sh", "-c", 'for i in $(seq 100); do [ -e "$1" ] && exec echo "{}"; sleep 0.05; done; exit 1',
               "list", str(started)]
    rc, out, err = run(appstate.acquire_lock_then_read("web", listing, base=base), info("aaaaaaaa"), env)
    assert rc == 0, err
    assert out.splitlines()[-3:] == ["{}", "sha256:" + "b" * 64, "images listed"]
    assert not list(tmp.iterdir())
    run(appstate.release_lock("web", "aaaaaaaa", base=base))

    # no temporary file to be had: the images are listed after the reads
    started.unlink()
    rc, out, _ = run(appstate.acquire_lock_then_read("web", ["sh", "-c", "echo {}"], base=base), info("bbbbbbbb"),
                     {**env, "TMPDIR": str(tmp_path / "missing")})
    assert rc == 0 and out.splitlines()[-3:] == ["{}", "sha256:" + "b" * 64, "images listed"]


def test_parse_state_skips_torn_lines() -> None:
    st = appstate.parse_state('history {"a":1}\nhistory {"a":\nlock not-json\ngarbage\ncurrent {"container":"c"}\n')
    assert st == {"lock": {}, "current": {"container": "c"}, "route": None, "live": None, "history": [{"a": 1}],
                  "bad_lines": 2}


# ---------------------------------------------------------------- delayed stop, with a fake docker
@pytest.fixture
def fake_docker(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
    (bin_dir / "docker").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def _wait_for(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            # exited but not reaped (a PID 1 that does not reap orphans): done as well
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    raise AssertionError(f"sleeper {pid} still running")


def test_schedule_stop_detaches_and_stops_later(base: str, fake_docker: tuple[dict, Path]) -> None:
    env, log = fake_docker
    run(appstate.write_current("web", base), appstate.current_payload(
        version="v2", deploy_id="bbbbbbbb", container="nd-web-bbbbbbbb", port=80, switched_at="t"))
    t0 = time.monotonic()
    rc, out, _ = run(appstate.schedule_stop("web", "nd-web-aaaaaaaa", delay=1, timeout=7, base=base), env=env)
    assert rc == 0 and out.strip().isdigit()
    assert time.monotonic() - t0 < 1  # returns at once: the stop happens without us connected
    _wait_for(int(out))
    assert log.read_text() == "stop -t 7 nd-web-aaaaaaaa\n"


def test_scheduled_stop_spares_a_container_that_serves_again(base: str, fake_docker: tuple[dict, Path]) -> None:
    env, log = fake_docker
    rc, out, _ = run(appstate.schedule_stop("web", "nd-web-aaaaaaaa", delay=1, timeout=7, base=base), env=env)
    # a rollback inside the grace period makes it current again
    run(appstate.write_current("web", base), appstate.current_payload(
        version="v1", deploy_id="aaaaaaaa", container="nd-web-aaaaaaaa", port=80, switched_at="t"))
    _wait_for(int(out))
    assert not log.exists()


def test_defuse_stop() -> None:
    argv = appstate.defuse_stop("nd-web-aaaaaaaa", wait=20)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["nd-defuse-stop", "nd-web-aaaaaaaa", "100"]
    with pytest.raises(ValueError):
        appstate.defuse_stop("-rf x", wait=1)
