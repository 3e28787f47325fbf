"""Argv builders for the per-app state ndctl keeps on each host.

Layout under the base directory (``/var/lib/nextdeploy``)::

    apps/<app>/lock/            mkdir is the atomic acquire
    apps/<app>/lock/info.json   {"who","from","at","version","deploy_id"}
    apps/<app>/history.jsonl    one JSON object per line, appended (history.1.jsonl: the
                                previous HISTORY_ROTATE records)
    apps/<app>/current.json     {"version","deploy_id","container","port","switched_at"}
    proxy/routes/<app>.json     written by the proxy code; read here for recovery

Every builder is a fixed ``sh -c`` script whose values are positional
parameters; JSON documents travel on stdin (the ``*_payload`` helpers build
them), never in argv. The payloads are compact JSON on one line, which is what
lets the scripts match ``"deploy_id":"<id>"`` without a JSON parser on the host.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import re
import shlex
import socket
from collections.abc import Mapping
from typing import Any

from ndctl.commands.docker import DEPLOY_ID_RE, check_name, image_ids
from ndctl.commands.proxy import NEWEST_LIVE

Argv = list[str]

BASE_DIR = "/var/lib/nextdeploy"
LOCK_HELD = 75  # EX_TEMPFAIL: another deploy holds the lock; its info.json is on stdout

_APP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}\Z")


def _app(app: str) -> str:
    if not isinstance(app, str) or not _APP_RE.match(app):
        raise ValueError(f"invalid app name {app!r}")
    return app


def _base(base: str) -> str:
    if not isinstance(base, str) or not base.startswith("/") or base.rstrip("/") == "":
        raise ValueError(f"the state directory must be an absolute path other than '/', not {base!r}")
    return base.rstrip("/")


def _deploy_id(deploy_id: str) -> str:
    if not isinstance(deploy_id, str) or not DEPLOY_ID_RE.match(deploy_id):
        raise ValueError(f"invalid deploy id {deploy_id!r} (8 lowercase hex digits)")
    return deploy_id


# --------------------------------------------------------------------------- payloads
def _line(obj: Mapping[str, Any]) -> bytes:
    # ensure_ascii: a value's newline or odd byte becomes an escape, so one record is one line
    return (json.dumps(dict(obj), separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def operator() -> tuple[str, str]:
    """(who, from): ``NDCTL_OPERATOR`` or ``user@hostname``, and this machine's name."""
    host = socket.gethostname()
    who = os.environ.get("NDCTL_OPERATOR")
    if not who:
        try:
            user = getpass.getuser()
        except Exception:
            user = str(os.getuid())
        who = f"{user}@{host}"
    return who, host


def lock_payload(*, who: str, from_: str, at: str, version: str, deploy_id: str) -> bytes:
    return _line({"who": who, "from": from_, "at": at, "version": version, "deploy_id": _deploy_id(deploy_id)})


def current_payload(*, version: str, deploy_id: str, container: str, port: int, switched_at: str) -> bytes:
    check_name(container)
    return _line({"version": version, "deploy_id": _deploy_id(deploy_id), "container": container,
                  "port": int(port), "switched_at": switched_at})


def history_payload(record: Mapping[str, Any]) -> bytes:
    """One history line; see ``deployplan.history_record`` for the fields."""
    return _line(record)


# --------------------------------------------------------------------------- scripts
# Acquire: the info is written to a temporary file first and moved into the lock
# directory right after the mkdir, so a dropped connection cannot leave a lock
# without its explanation (the window is two syscalls, not a network round trip).
# A lock directory seen without info.json (that window, or a crash inside it) is
# reported as `{}` after two seconds.
_ACQUIRE = (
    'umask 022; d="$1/apps/$2"; l="$d/lock"; '
    'mkdir -p "$d" || exit 1; t="$d/.lock-info.$$"; '
    'if ! cat > "$t" || [ ! -s "$t" ]; then rm -f "$t"; echo "ndctl: no lock info on stdin" >&2; exit 1; fi; '
    'i=0; while :; do '
    'if err=$(mkdir "$l" 2>&1); then '
    'if mv -f "$t" "$l/info.json"; then exit 0; fi; rm -f "$t"; rmdir "$l"; exit 1; fi; '
    'if [ -f "$l/info.json" ] && info=$(cat "$l/info.json" 2>/dev/null) && [ -n "$info" ]; then '
    'rm -f "$t"; printf "%s\\n" "$info"; exit 75; fi; '
    'i=$((i + 1)); if [ "$i" -ge 20 ]; then rm -f "$t"; '
    'if [ -d "$l" ]; then echo "{}"; exit 75; fi; printf "%s\\n" "$err" >&2; exit 1; fi; '
    'sleep 0.1; done'
)

# Release: only the holder's deploy id (unless forced). The directory is renamed
# away first: one atomic step frees the lock, the rm comes after.
_RELEASE = (
    'l="$1/apps/$2/lock"; '
    'if [ ! -d "$l" ]; then echo not-locked; exit 0; fi; '
    'if [ "$4" != 1 ]; then info=$(cat "$l/info.json" 2>/dev/null); [ -n "$info" ] || info="{}"; '
    'case "$info" in *"\\"deploy_id\\":\\"$3\\""*|*"\\"deploy_id\\": \\"$3\\""*) ;; '
    '*) printf "%s\\n" "$info"; exit 75;; esac; fi; '
    'g="$l.released.$$"; mv "$l" "$g" && rm -rf "$g" && echo released'
)

_READ_LOCK = (
    'l="$1/apps/$2/lock"; [ -d "$l" ] || exit 0; '
    'if [ -f "$l/info.json" ]; then exec cat "$l/info.json"; fi; echo "{}"'
)

# History: the line is spooled to a file and appended by one cat, i.e. one
# write(2) with O_APPEND for any record under cat's buffer (128 KiB), so lines
# from concurrent writers never interleave. More or less than one line is refused.
_APPEND_HISTORY = (
    'umask 022; d="$1/apps/$2"; mkdir -p "$d" || exit 1; t="$d/.history.$$"; '
    'if ! cat > "$t"; then rm -f "$t"; exit 1; fi; '
    'if [ "$(wc -l < "$t")" -ne 1 ]; then rm -f "$t"; echo "ndctl: a history record must be one line" >&2; exit 2; fi; '
    'cat "$t" >> "$d/history.jsonl"; rc=$?; rm -f "$t"; [ "$rc" -eq 0 ] || exit $rc; '
    # Rotation by rename: a concurrent append that opened the file before lands in the archive,
    # never lost; the archive before that one goes (bounded: at most twice $3 records).
    'if [ "$(wc -l < "$d/history.jsonl")" -ge "$3" ]; then mv -f "$d/history.jsonl" "$d/history.1.jsonl"; fi'
)

# Both files, the archive first (see _APPEND_HISTORY).
_HISTORY_FILES = 'hist() { for h in "$1/history.1.jsonl" "$1/history.jsonl"; do [ ! -f "$h" ] || cat "$h"; done; }; '

_READ_HISTORY = (
    _HISTORY_FILES + 'a="$1/apps/$2"; if [ "$3" = all ]; then hist "$a"; else hist "$a" | tail -n "$3"; fi'
)

_WRITE_CURRENT = (
    'umask 022; d="$1/apps/$2"; mkdir -p "$d" || exit 1; t="$d/.current.json.$$"; '
    'if cat > "$t" && [ -s "$t" ] && mv -f "$t" "$d/current.json"; then exit 0; fi; '
    'rm -f "$t"; exit 1'
)

_READ_CURRENT = 'f="$1/apps/$2/current.json"; [ -f "$f" ] || exit 0; exec cat "$f"'

# Everything a deploy, status or rollback plan needs from the files, in one round
# trip: lines "lock JSON", "current JSON", "route JSON", "live JSON" (Caddy's newest live
# marker: what the proxy serves, should a crash have left the route file behind), "history JSON".
_READ_STATE = (
    _HISTORY_FILES + NEWEST_LIVE + 'a="$1/apps/$2"; '
    'p() { while IFS= read -r x || [ -n "$x" ]; do [ -z "$x" ] || printf "%s %s\\n" "$1" "$x"; done; }; '
    'if [ -d "$a/lock" ]; then if [ -f "$a/lock/info.json" ]; then p lock < "$a/lock/info.json"; '
    'else echo "lock {}"; fi; fi; '
    '[ ! -f "$a/current.json" ] || p current < "$a/current.json"; '
    '[ ! -f "$1/proxy/routes/$2.json" ] || p route < "$1/proxy/routes/$2.json"; '
    'n=$(newest_live "$1/proxy/live/$2"); [ -z "$n" ] || printf \'live {"upstream":"%s"}\\n\' "$n"; '
    'hist "$a" | tail -n "$3" | p history; exit 0'
)

# The old container stops `delay` seconds after the switch with no ndctl
# connected: a detached sleeper (HUP ignored, no descriptor tied to the SSH
# channel). It stops nothing that serves again by then: a rollback inside the
# grace period rewrites current.json, and the sleeper checks it first.
_SCHEDULE_STOP = (
    'f="$1/apps/$2/current.json"; c="$3"; d="$4"; t="$5"; '
    '( trap "" HUP; sleep "$d"; '
    'case "$(cat "$f" 2>/dev/null)" in *"\\"container\\":\\"$c\\""*|*"\\"container\\": \\"$c\\""*) exit 0;; esac; '
    'exec docker stop -t "$t" "$c" ) </dev/null >/dev/null 2>&1 & '
    'echo $!'
)


def acquire_lock(app: str, base: str = BASE_DIR) -> Argv:
    """Take the app's lock; stdin: :func:`lock_payload`.

    Exit 0: acquired. Exit :data:`LOCK_HELD`: held, the holder's info.json (or
    ``{}`` when it has none) on stdout. Anything else: could not try.
    """
    return ["sh", "-c", _ACQUIRE, "nd-lock", _base(base), _app(app)]


# acquire_lock, then, only once it is held, what a deploy plans from: the state files,
# the app's containers ("$@": a listing argv) and the host's image ids. The first line
# after taking the lock is "locked", so a read that fails after it (exit 3) still says
# that the lock is ours to free.
_ACQUIRE_THEN_READ = (
    'acq=$1; st=$2; b=$3; a=$4; n=$5; shift 5; '
    'sh -c "$acq" nd-lock "$b" "$a" || exit $?; echo locked; '
    # The image listing (a docker call of its own) runs beside the reads, into a temporary
    # file; without one, after them.
    'ids() { ' + shlex.join(image_ids()) + ' </dev/null; }; '
    'i=; t=$(mktemp 2>/dev/null) && { trap \'rm -f "$t"\' EXIT; trap "exit 129" HUP INT TERM PIPE; '
    'ids >"$t" & i=$!; }; '
    'sh -c "$st" nd-state "$b" "$a" "$n" </dev/null || exit 3; '
    '"$@" </dev/null || exit 3; '
    'if [ -n "$i" ]; then wait "$i" && cat "$t" && echo "images listed"; '
    'else ids && echo "images listed"; fi; exit 0'
)


def acquire_lock_then_read(app: str, listing: Argv, *, history_tail: int = 200, base: str = BASE_DIR) -> Argv:
    """:func:`acquire_lock` and, once held, :func:`read_state`, ``listing`` (the app's
    containers) and :func:`docker.image_ids`: one round trip instead of two.

    stdin: :func:`lock_payload`. Lock held by another: as :func:`acquire_lock` (exit
    :data:`LOCK_HELD`, its info on stdout). Taken: ``locked``, then the three outputs one
    after the other (their lines tell themselves apart: ``kind JSON``, ``{...}``,
    ``sha256:...``), then ``images listed`` unless that listing failed; exit 3 when the
    state or the containers could not be read (the lock is held all the same).
    """
    state = read_state(app, history_tail, base)
    return ["sh", "-c", _ACQUIRE_THEN_READ, "nd-lock-read", _ACQUIRE, state[2], _base(base), _app(app),
            str(history_tail), *listing]


def release_lock(app: str, deploy_id: str, *, force: bool = False, base: str = BASE_DIR) -> Argv:
    """Free the lock if ``deploy_id`` holds it (any holder when ``force``).

    Prints ``released`` or ``not-locked`` (exit 0); held by another deploy:
    its info on stdout, exit :data:`LOCK_HELD`.
    """
    return ["sh", "-c", _RELEASE, "nd-unlock", _base(base), _app(app), _deploy_id(deploy_id), "1" if force else "0"]


def read_lock(app: str, base: str = BASE_DIR) -> Argv:
    """The holder's info.json; nothing when free; ``{}`` when held without info."""
    return ["sh", "-c", _READ_LOCK, "nd-read-lock", _base(base), _app(app)]


HISTORY_ROTATE = 2000  # records per file: history.jsonl becomes history.1.jsonl at this length


def append_history(app: str, base: str = BASE_DIR, *, rotate_at: int = HISTORY_ROTATE) -> Argv:
    """Append one record; stdin: :func:`history_payload`. At ``rotate_at`` records the file
    becomes ``history.1.jsonl`` (replacing the one before): at most twice that many are kept."""
    if isinstance(rotate_at, bool) or not isinstance(rotate_at, int) or rotate_at < 1:
        raise ValueError(f"invalid rotation length {rotate_at!r}")
    return ["sh", "-c", _APPEND_HISTORY, "nd-history-add", _base(base), _app(app), str(rotate_at)]


def read_history(app: str, tail: int | None = 100, base: str = BASE_DIR) -> Argv:
    """The last ``tail`` history lines (``None``: all), oldest first."""
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
        raise ValueError(f"invalid history length {tail!r}")
    return ["sh", "-c", _READ_HISTORY, "nd-history", _base(base), _app(app), "all" if tail is None else str(tail)]


def write_current(app: str, base: str = BASE_DIR) -> Argv:
    """Replace current.json atomically (temporary file, then rename); stdin: :func:`current_payload`."""
    return ["sh", "-c", _WRITE_CURRENT, "nd-current-set", _base(base), _app(app)]


def read_current(app: str, base: str = BASE_DIR) -> Argv:
    return ["sh", "-c", _READ_CURRENT, "nd-current", _base(base), _app(app)]


def read_state(app: str, history_tail: int = 200, base: str = BASE_DIR) -> Argv:
    """Lock, current, route and the history tail in one round trip; see :func:`parse_state`."""
    if isinstance(history_tail, bool) or not isinstance(history_tail, int) or history_tail < 1:
        raise ValueError(f"invalid history length {history_tail!r}")
    return ["sh", "-c", _READ_STATE, "nd-state", _base(base), _app(app), str(history_tail)]


def list_apps(base: str = BASE_DIR) -> Argv:
    """Names of the apps with state on the host (``apps/*/``), one per line; nothing when none."""
    return ["sh", "-c", 'for d in "$1"/apps/*/; do [ -d "$d" ] && basename "$d"; done; true', "nd-apps", _base(base)]


def schedule_stop(app: str, container: str, *, delay: float, timeout: float, base: str = BASE_DIR) -> Argv:
    """Stop ``container`` after ``delay`` seconds unless current.json names it by then.

    Prints the sleeper's pid. A reboot in between loses the sleeper; the next
    deploy stops such leftovers (``deployplan`` recovery).
    """
    check_name(container)
    if delay < 0 or timeout < 0:
        raise ValueError("delay and timeout must not be negative")
    return ["sh", "-c", _SCHEDULE_STOP, "nd-stop-later", _base(base), _app(app), container,
            str(math.ceil(delay)), str(math.ceil(timeout))]


# Before switching back to a release that still runs (a rollback inside its grace
# period), the delayed stop scheduled for it (schedule_stop) must not
# fire: its sleeper is killed, and a `docker stop` already under way (the sleeper
# checked current.json before the rollback wrote it) is waited for. Prints the
# container's State.Running afterwards: "false" means it was stopped meanwhile and
# the rollback must start it again. $1 container, $2 polls of 0.2 s at most.
_DEFUSE_STOP = (
    'c="$1"; pkill -f "nd-stop-later [^ ]* [^ ]* $c " 2>/dev/null; i=0; '
    'while pgrep -f "docker stop -t [0-9]* $c\\$" >/dev/null 2>&1; do '
    'i=$((i + 1)); [ "$i" -lt "$2" ] || break; sleep 0.2; done; '
    'exec docker container inspect --format "{{.State.Running}}" "$c"'
)


def defuse_stop(container: str, *, wait: float) -> Argv:
    """Cancel the pending delayed stop of ``container`` and wait (up to ``wait`` s) for one in flight."""
    check_name(container)
    return ["sh", "-c", _DEFUSE_STOP, "nd-defuse-stop", container, str(max(1, int(wait / 0.2)))]


def parse_state(text: str) -> dict[str, Any]:
    """The output of :func:`read_state` -> ``{"lock","current","route","live": dict|None, "history": [dict]}``.

    A line that is not valid JSON (a torn or hand-edited file) is skipped, not fatal:
    history is an audit trail, and one bad line must not block deploys.
    """
    out: dict[str, Any] = {"lock": None, "current": None, "route": None, "live": None, "history": [],
                           "bad_lines": 0}
    for line in text.splitlines():
        kind, _, payload = line.partition(" ")
        if kind not in ("lock", "current", "route", "live", "history"):
            continue
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            if kind == "lock":
                out["lock"] = {}  # held, but unreadable: still held
            out["bad_lines"] += 1
            continue
        if kind == "history":
            out["history"].append(obj)
        else:
            out[kind] = obj
    return out


__all__ = [
    "BASE_DIR", "LOCK_HELD", "operator", "lock_payload", "current_payload", "history_payload",
    "acquire_lock", "acquire_lock_then_read", "release_lock", "read_lock", "append_history", "read_history",
    "write_current", "read_current", "read_state", "parse_state", "schedule_stop", "defuse_stop",
]
