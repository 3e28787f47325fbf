"""A keep-alive HTTP load generator that runs INSIDE a test host, for deploy tests and benchmarks.

:data:`SCRIPT` is stdlib python3 (the test hosts have it): N threads, each with
one persistent HTTP/1.1 connection, GET a path in a loop. Like browsers and
urllib3, a request is retried once when a *reused* keep-alive connection is
closed before any response byte; those stale-connection retries are counted
separately and are not failures. Anything else (an error, a non-200 status, a
body that is not one of the expected ones) is a failed request.

:class:`LoadGen` starts it with ``docker exec -d`` (so the caller is free to
run deploys meanwhile), stops it through a file, and collects its JSON result
and, on request, every request as a :class:`Sample` (wall-clock start time,
latency, outcome) so latencies can be cut to time windows (:func:`summarize`).
The test host shares this machine's clock: its ``time.time()`` is ours.
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._util import DOCKER, SandboxError, run
from .hosts import TestHost

SCRIPT = r'''
import http.client, json, os, sys, threading, time
cfg = json.loads(sys.argv[1])
host, port, path, nthreads, think = cfg["host"], cfg["port"], cfg["path"], cfg["threads"], cfg["think"]
headers = {"Host": cfg["host_header"]} if cfg.get("host_header") else {}
expected = set(cfg["expected"])
d = cfg["dir"]
stop = threading.Event()
lock = threading.Lock()
stats = {"requests": 0, "ok": 0, "failed": 0, "stale_retries": 0, "versions": {}, "errors": {}}
lat = []
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

def note(key, where="errors"):
    stats[where][key] = stats[where].get(key, 0) + 1

def one(box):
    """One logical GET: (ok, body or error, stale retries)."""
    retried = 0
    while True:
        conn = box[0]
        reused = conn is not None
        if conn is None:
            conn = box[0] = http.client.HTTPConnection(host, port, timeout=cfg["timeout"])
        phase = "send"
        try:
            conn.request("GET", path, headers=headers)
            phase = "status"
            resp = conn.getresponse()
            phase = "body"
            body = resp.read().decode(errors="replace").strip()
            if resp.will_close:
                conn.close()
                box[0] = None
            if resp.status == 200 and (not expected or body in expected):
                return True, body[:40], retried
            return False, "status %d %r" % (resp.status, body[:40]), retried
        except Exception as e:
            conn.close()
            box[0] = None
            if reused and phase != "body" and isinstance(e, STALE) and not retried:
                retried = 1  # a stale keep-alive connection: nothing was answered, retry once
                continue
            return False, "%s in %s%s" % (type(e).__name__, phase, " (retry)" if retried else ""), retried

def worker(i):
    box = [None]
    out = open(os.path.join(d, "samples-%d.txt" % i), "w") if cfg["samples"] else None
    while not stop.is_set():
        t_wall, t0 = time.time(), time.monotonic()
        ok, what, retried = one(box)
        dt = time.monotonic() - t0
        with lock:
            stats["requests"] += 1
            stats["stale_retries"] += retried
            lat.append(dt)
            if ok:
                stats["ok"] += 1
                note(what, "versions")
            else:
                stats["failed"] += 1
                note(what)
        if out is not None:
            out.write("%.4f %.3f %d %d %s\n" % (t_wall, dt * 1000, ok, retried, what.replace("\n", " ")))
        if think:
            time.sleep(think)
    if out is not None:
        out.close()

with open(os.path.join(d, "pid"), "w") as f:
    f.write("%d\n" % os.getpid())
threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(nthreads)]
started = time.monotonic()
for t in threads:
    t.start()
open(os.path.join(d, "ready"), "w").close()
stop_file = os.path.join(d, "stop")
while not os.path.exists(stop_file):
    time.sleep(0.05)
stop.set()
for t in threads:
    t.join(cfg["timeout"] + 5)
lat.sort()
pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None
stats.update(p50_ms=pct(0.50), p99_ms=pct(0.99), max_ms=round(lat[-1] * 1000, 2) if lat else None,
             seconds=round(time.monotonic() - started, 2), threads=nthreads)
with open(os.path.join(d, "result.tmp"), "w") as f:
    json.dump(stats, f, sort_keys=True)
os.rename(os.path.join(d, "result.tmp"), os.path.join(d, "result.json"))
'''

# Run the script detached, its output in the run directory ($2): values are positional parameters.
_LAUNCH = ('if [ -n "$4" ]; then set -- "$1" "$2" "$3" taskset -c "$4"; else set -- "$1" "$2" "$3"; fi; '
           'a=$1; d=$2; c=$3; shift 3; exec "$@" python3 -c "$a" "$c" >"$d/log" 2>&1')


@dataclass(frozen=True)
class Sample:
    """One logical request: when it started (wall clock), how long it took, how it ended."""

    t: float  # time.time() at the start
    ms: float  # latency, stale retry included
    ok: bool
    retried: int  # stale-connection retries (0 or 1)
    what: str  # the body when ok, else the error


def parse_samples(text: str) -> list[Sample]:
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 4)
        if len(parts) < 4:
            continue
        out.append(Sample(float(parts[0]), float(parts[1]), parts[2] == "1", int(parts[3]),
                          parts[4] if len(parts) > 4 else ""))
    out.sort(key=lambda s: s.t)
    return out


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The nearest-rank style percentile the generator itself reports (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def summarize(samples: Iterable[Sample], windows: Sequence[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Counts and latency percentiles of the samples that started inside any of ``windows`` (all if None)."""
    chosen = [s for s in samples if windows is None or any(a <= s.t <= b for a, b in windows)]
    lat = sorted(s.ms for s in chosen)
    errors: dict[str, int] = {}
    versions: dict[str, int] = {}
    for s in chosen:
        bucket = versions if s.ok else errors
        bucket[s.what] = bucket.get(s.what, 0) + 1
    return {"requests": len(chosen), "ok": sum(1 for s in chosen if s.ok),
            "failed": sum(1 for s in chosen if not s.ok), "stale_retries": sum(s.retried for s in chosen),
            "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99), "max_ms": lat[-1] if lat else None,
            "versions": versions, "errors": errors}


def version_flips(samples: Sequence[Sample]) -> list[tuple[float, str, str]]:
    """(time, from, to) of every change of the answering version, in time order (ok samples only)."""
    flips = []
    last: str | None = None
    for s in samples:
        if not s.ok:
            continue
        if last is not None and s.what != last:
            flips.append((s.t, last, s.what))
        last = s.what
    return flips


class LoadGen:
    """The generator, detached inside ``host`` (``docker exec -d``).

    ``target``/``port``: where to send requests, as seen from inside the test
    host (its proxy: 127.0.0.1:80). ``expected``: the bodies that count as
    success (empty: any 200). ``samples``: also keep every request for
    :meth:`samples` / :func:`summarize`.
    """

    def __init__(self, host: TestHost, *, target: str = "127.0.0.1", port: int = 80, path: str = "/",
                 expected: Iterable[str] = (), threads: int = 4, think: float = 0.005,
                 host_header: str | None = None, samples: bool = False, timeout: float = 10.0,
                 cpus: str | None = None) -> None:
        if host.container is None:
            raise SandboxError(f"{host.name} is not a container host: the load generator runs inside one")
        self.host = host
        self.dir = f"/tmp/ndctl-loadgen-{secrets.token_hex(4)}"
        self.cfg = {"host": target, "port": port, "path": path, "threads": threads, "think": think,
                    "expected": sorted(expected), "host_header": host_header, "samples": samples,
                    "timeout": timeout, "dir": self.dir}
        self.cpus = cpus  # taskset's list: keep the generator off the CPUs a benchmark measures on
        self.started = False
        self.result: dict[str, Any] | None = None
        self._samples: list[Sample] | None = None

    def _exec(self, *argv: str, check: bool = True, timeout: float = 60):
        return self.host.exec(*argv, check=check, timeout=timeout)

    def start(self, timeout: float = 30.0) -> LoadGen:
        """Launch it and wait until its threads run."""
        self._exec("mkdir", "-m", "0700", self.dir)
        self.started = True
        run([DOCKER, "exec", "-d", self.host.container, "sh", "-c", _LAUNCH, "loadgen", SCRIPT, self.dir,
             json.dumps(self.cfg), self.cpus or ""], timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exec("test", "-e", f"{self.dir}/ready", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        log = self._exec("cat", f"{self.dir}/log", check=False).stdout
        self.kill()
        raise SandboxError(f"the load generator did not start on {self.host.name} within {timeout:g}s: {log[-2000:]}")

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop it and return its JSON result (``requests ok failed stale_retries versions errors p50_ms
        p99_ms max_ms seconds threads``); samples stay available through :meth:`samples`."""
        if self.result is not None and not self.started:
            return self.result
        if not self.started:
            raise SandboxError("the load generator was not started")
        self._exec("touch", f"{self.dir}/stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self._exec("cat", f"{self.dir}/result.json", check=False)
            if r.returncode == 0:
                self.result = json.loads(r.stdout)
                break
            time.sleep(0.1)
        else:
            log = self._exec("cat", f"{self.dir}/log", check=False).stdout
            self.kill()
            raise SandboxError(f"the load generator on {self.host.name} gave no result within {timeout:g}s: "
                               f"{log[-2000:]}")
        if self.cfg["samples"]:
            r = self._exec("sh", "-c", 'cat "$1"/samples-*.txt', "cat", self.dir, timeout=300)
            self._samples = parse_samples(r.stdout)
        self._exec("rm", "-rf", self.dir, check=False)
        self.started = False
        return self.result

    def samples(self) -> list[Sample]:
        """Every request, in start-time order (after :meth:`stop`; needs ``samples=True``)."""
        if self._samples is None:
            raise SandboxError("no samples: create the LoadGen with samples=True and stop() it first")
        return self._samples

    def kill(self) -> None:
        """Best effort, idempotent: end the generator (by its pid) and remove its directory."""
        if not self.started:
            return
        self._exec("sh", "-c", 'p=$(cat "$1/pid" 2>/dev/null) && kill -9 "$p"; rm -rf "$1"', "kill", self.dir,
                   check=False)
        self.started = False

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
