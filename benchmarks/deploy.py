#!/usr/bin/env python3
"""Deploy benchmark: blue-green deploys under load on 1 and 3 real test hosts, and a stop-then-start control.

Starts its own container test hosts (own sshd and Docker engine each, group
``ndctl-bench-deploy``, removed at the end whatever happens), ships the Caddy
proxy image into them, and for each host count runs these scenarios with a
keep-alive load generator INSIDE every host hitting that host's proxy
(127.0.0.1:80) for the whole scenario (``ndctl.sandbox.loadgen``):

* ``bg-idle``:    blue-green deploys alternating two images the hosts already hold, without load
                  (the machine's CPUs are shared with the load generators and proxies);
* ``bg-present``: the same under load;
* ``bg-fresh``:   blue-green deploys of a new image each time (shipped: docker save | ssh | docker load);
* ``bg-present-batch`` (3 hosts only): as ``bg-present`` with ``--parallel 3`` (one batch, not rolling);
* ``recreate``:   ``--strategy recreate`` (stop, then start): the control that must show failed requests.

Every deploy is a fresh ``python -m ndctl deploy -o json`` child process; its
per-step ``seconds_taken`` split the wall time into image transfer, app boot +
health check, stopping the old container (recreate) and ndctl's own overhead
(everything else: interpreter start-up, SSH connections, reading the host state,
the lock, the proxy switch, history, scheduling the old container's stop).

    python3 benchmarks/deploy.py --quick     # smoke run: 1 host, 2 deploys per scenario, no report file
    python3 benchmarks/deploy.py             # full run; writes docs/deploy-benchmark.md

Needs root and a Docker daemon (like the e2e tests). All traffic stays inside
the test hosts it starts and on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import _common as C  # noqa: E402

from ndctl import sandbox  # noqa: E402
from ndctl.sandbox import caddyimage  # noqa: E402
from ndctl.sandbox.loadgen import LoadGen, Sample, summarize, version_flips  # noqa: E402

PY = sys.executable
GROUP = "ndctl-bench-deploy"
HOST_NAMES = ["ndb-1", "ndb-2", "ndb-3"]
APP = "benchweb"
IMAGE_REPO = "ndctl-bench-web"
DEFAULT_REPORT = REPO / "docs" / "deploy-benchmark.md"
# steps that run on every host at once before the rolling batches (the rest run batch by batch);
# "stop" here is the recovery of a stale release: recreate's stop of the serving one is in the batches
PREPARE_ACTIONS = ("ensure-proxy", "lock", "remove", "repair-current", "ship-image", "pull-image")
#: run side by side after the switch (ndctl.ops.deploy._BOOKKEEPING): one part, the slowest counts
BOOKKEEPING = ("write-current", "record", "schedule-stop", "prune")
#: after a host switched, the next batch starts while these run (deployplan.AFTER_SWITCH):
#: only the last batch's add to the wall time
AFTER_SWITCH = (*BOOKKEEPING, "unlock")
#: run at the same time on each host (ndctl.ops.deploy.Deployer._begin): their longer one counts
SIDE_BY_SIDE = ("ensure-proxy", "lock")
OVERHEAD_STEPS = ("outside steps", "ensure-proxy", "lock", "switch", "bookkeeping", "unlock")
PINNED_CLIENT_CPUS, PINNED_LOAD_CPUS = "0", "1"  # bg-present-pinned
SWITCH_WINDOW = 1.0  # seconds either side of a version flip seen by the load generator
OVERHEAD_TARGET = 1.0  # seconds per deploy
IMPORTS = "import ndctl.cli.main, ndctl.ops.deploy, ndctl.transport.ssh"  # what a deploy loads

# The app definition every deploy uses (the image and strategy come as flags).
# stop_timeout 1s: busybox httpd runs as PID 1 and ignores SIGTERM, so every docker stop waits for it.
SPEC = """\
app: {app}
image: {image}
port: 8080
tags: bench
health_check: {{path: /health, interval: {interval}, successes: 2, failures: 3, deadline: 30s}}
proxy: {{kind: caddy, hosts: [], image: {proxy}}}
drain: 2s
grace: {grace}s
stop_timeout: {stop_timeout}s
retain: 2
"""
GRACE = 2.0
STOP_TIMEOUT = 1.0

SCENARIO_TITLES = {
    "bg-idle": "blue-green, image already on the hosts, no load (ndctl's overhead without CPU taken by the load)",
    "bg-present": "blue-green, image already on the hosts",
    "bg-present-batch": "blue-green, image present, all hosts in one batch (--parallel N)",
    "bg-present-pinned": "blue-green, image present; the load generators on CPU 1, ndctl on CPU 0 (as when ndctl "
                         "runs on the operator's machine, not on the loaded hosts; the hosts' sshd, dockerd, "
                         "proxies and apps still float)",
    "recreate": "recreate (stop, then start): control",
    "bg-fresh": "blue-green, new image shipped each deploy",
}


# ----- the code under test ---------------------------------------------------------------------------

SNAPSHOT_DIRS = ("ndctl", "templates", "playbooks")


def snapshot_code(dest: Path, ref: str | None, env: dict[str, str], attempts: int = 6) -> str:
    """Copy the code every deploy runs into ``dest``: the working tree as it is now, or git ``ref``.

    Others may be editing the working tree during a run; a snapshot keeps every deploy on one
    version. A working-tree copy that does not import (caught mid-edit) is retaken a little later.
    Returns a description with a hash of the copied ``.py`` files.
    """
    for attempt in range(attempts):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if ref:
            archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, *SNAPSHOT_DIRS], check=True,
                                     capture_output=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
                tf.extractall(dest, filter="data")
        else:
            for d in SNAPSHOT_DIRS:
                if (REPO / d).is_dir():
                    shutil.copytree(REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Byte-compiled as `pip install` leaves it: with PYTHONDONTWRITEBYTECODE set (as on the
        # machines this runs on) every deploy would otherwise compile ndctl from source (~50 ms).
        subprocess.run([PY, "-m", "compileall", "-q", str(dest / "ndctl")], capture_output=True, check=False)
        r = subprocess.run([PY, "-c", IMPORTS], env={**env, "PYTHONPATH": str(dest)}, capture_output=True,
                           text=True, check=False)
        if r.returncode == 0:
            h = hashlib.sha256()
            for f in sorted((dest / "ndctl").rglob("*.py")):
                h.update(f.relative_to(dest).as_posix().encode() + b"\0" + f.read_bytes())
            return f"{'git ' + ref if ref else 'working tree'} snapshot, sha256 of ndctl/**/*.py {h.hexdigest()[:12]}"
        if ref or attempt == attempts - 1:
            raise RuntimeError(f"the ndctl snapshot does not import: {r.stderr.strip()[-1000:]}")
        print(f"working tree does not import (being edited?); retrying in 10 s: {r.stderr.strip()[-200:]}",
              file=sys.stderr, flush=True)
        time.sleep(10)
    raise AssertionError("unreachable")


# ----- images -----------------------------------------------------------------------------------------

def build_image(tag: str, body: str, pad_mb: int) -> str:
    """A busybox httpd app: ``/`` says ``body``, ``/health`` answers 200; ``pad_mb`` MiB of random bytes
    make it a realistic size to ship (and its id unique)."""
    with tempfile.TemporaryDirectory() as d:
        tar = sandbox.busybox_rootfs_tar(Path(d) / "app.tar")
        files = {"www/index.html": (body + "\n").encode(), "www/health": b"ok\n",
                 "www/pad.bin": os.urandom(pad_mb * 1024 * 1024)}
        with tarfile.open(tar, "a") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
        subprocess.run(["docker", "import", "--change",
                        'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]', str(tar), tag],
                       check=True, capture_output=True, timeout=300)
    return tag


def image_mb(tag: str) -> float:
    r = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True)
    return int(r.stdout.strip() or 0) / 1e6


# ----- one deploy -------------------------------------------------------------------------------------

@dataclass
class Deploy:
    """One ``ndctl deploy`` run and its wall-time split."""

    label: str
    image: str
    t0: float  # wall clock (time.time) at the fork
    t1: float
    wall: float
    cpu: float
    returncode: int | None
    doc: dict[str, Any] | None
    error: str | None = None

    def _steps(self) -> dict[str, list[dict[str, Any]]]:
        if not self.doc:
            return {}
        return {h["host"]: (h.get("value") or {}).get("steps", []) for h in self.doc.get("hosts", [])}

    def _per_host(self, actions: tuple[str, ...]) -> dict[str, float]:
        # the bookkeeping steps overlap: their slowest is what they add, not their sum
        overlap = set(actions) <= set(BOOKKEEPING)
        out = {}
        for h, steps in self._steps().items():
            secs = [s.get("seconds_taken", 0.0) for s in steps if s["action"] in actions]
            out[h] = max(secs, default=0.0) if overlap else sum(secs)
        return out

    def _batches(self) -> list[list[str]]:
        return (self.doc or {}).get("batches") or [[h] for h in self._steps()]

    def _critical(self, actions: tuple[str, ...], *, rollout: bool) -> float:
        """Seconds these steps add to the wall time: hosts run them in parallel before the
        batches (``rollout`` False), or batch after batch (True)."""
        per = self._per_host(actions)
        if not per:
            return 0.0
        if not rollout:
            return max(per.values())
        batches = self._batches()
        if set(actions) <= set(AFTER_SWITCH) and self._pipelined():
            batches = batches[-1:]  # the earlier batches' overlap the next batch's boot and health check
        return sum(max((per.get(h, 0.0) for h in batch), default=0.0) for batch in batches)

    def _pipelined(self) -> bool:
        """The next batch started once the previous one switched (reports with ``switched_at``)."""
        return any((h.get("value") or {}).get("switched_at") for h in (self.doc or {}).get("hosts", []))

    @property
    def transfer(self) -> float:
        return self._critical(("ship-image", "pull-image"), rollout=False)

    @property
    def shipped(self) -> bool:
        return any(s["action"] in ("ship-image", "pull-image") for steps in self._steps().values() for s in steps)

    @property
    def boot_health(self) -> float:
        return self._critical(("start", "start-existing", "health-check"), rollout=True)

    @property
    def stop(self) -> float:
        """docker stop of old containers done while ndctl waits (recreate: the serving one, first)."""
        return self._critical(("stop",), rollout=True)

    @property
    def switch(self) -> float:
        return self._critical(("switch",), rollout=True)

    @property
    def overhead(self) -> float:
        return self.wall - self.transfer - self.boot_health - self.stop

    def step_seconds(self, action: str) -> float:
        """What one kind of step adds to the wall time."""
        actions = BOOKKEEPING if action == "bookkeeping" else (action,)
        return self._critical(actions, rollout=action not in PREPARE_ACTIONS)

    @property
    def outside_steps(self) -> float:
        """Wall time in no step: interpreter start-up and imports, reading the app definition and
        inventory, planning, output, exit. ``ensure-proxy`` and ``lock`` run at once: their longer counts."""
        actions = {s["action"] for steps in self._steps().values() for s in steps}
        parts = {"bookkeeping" if a in BOOKKEEPING else a for a in actions} - set(SIDE_BY_SIDE)
        per_host = [self._per_host((a,)) for a in SIDE_BY_SIDE]
        side = max((max(p.get(h, 0.0) for p in per_host) for h in self._steps()), default=0.0)
        return self.wall - side - sum(self.step_seconds(a) for a in parts)


@dataclass
class Scenario:
    key: str
    n_hosts: int
    strategy: str
    parallel: int | None
    loaded: bool = True
    deploys: list[Deploy] = field(default_factory=list)
    load: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> generator result
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.key} / {self.n_hosts} host{'s' if self.n_hosts > 1 else ''}"

    @property
    def ok(self) -> bool:
        return bool(self.deploys) and all(d.error is None for d in self.deploys)

    def total(self, key: str) -> int:
        return sum(int(r.get(key) or 0) for r in self.load.values())

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.load.values():
            for k, v in (r.get("errors") or {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def flips(self) -> dict[str, list[float]]:
        return {h: [t for t, _, _ in version_flips(s)] for h, s in self.samples.items()}

    def window_stats(self, which: str) -> dict[str, Any]:
        """``switch``: +-SWITCH_WINDOW s around every version flip a host's generator saw; ``deploys``:
        while an ndctl deploy ran; ``steady``: outside every deploy."""
        deploy_windows = [(d.t0, d.t1) for d in self.deploys]
        chosen: list[Sample] = []
        for h, samples in self.samples.items():
            if which == "switch":
                wins = [(t - SWITCH_WINDOW, t + SWITCH_WINDOW) for t in self.flips()[h]]
                chosen += [s for s in samples if any(a <= s.t <= b for a, b in wins)]
            elif which == "deploys":
                chosen += [s for s in samples if any(a <= s.t <= b for a, b in deploy_windows)]
            else:
                chosen += [s for s in samples if not any(a <= s.t <= b for a, b in deploy_windows)]
        return summarize(chosen)


# ----- the bench --------------------------------------------------------------------------------------

class Bench:
    def __init__(self, hosts: list[sandbox.TestHost], root: Path, args: argparse.Namespace) -> None:
        self.all_hosts = hosts
        self.root = root
        self.args = args
        self.proxy_ref = ""
        self.images: list[str] = []  # local tags to remove at the end
        self.bodies: set[str] = set()
        self.scenarios: list[Scenario] = []
        self.present: dict[str, str] = {}
        self.image_sizes: dict[str, float] = {}
        self.cli_startup: float | None = None
        self.code = ""
        self.src = root / "src"
        self._n = 0

    # -- set-up --
    def env(self, n: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NDCTL_", "SSH_AUTH_SOCK"))}
        env.update(NDCTL_INVENTORY=str(self.root / f"nd-{n}" / "inventory.yaml"),
                   NDCTL_SSH_CONFIG=str(self.root / "ssh_config"), NDCTL_OPERATOR="bench@ndctl-bench-deploy",
                   PYTHONPATH=str(self.src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""))
        return env

    def write_inventory(self, n: int) -> None:
        d = self.root / f"nd-{n}"
        d.mkdir(exist_ok=True)
        lines = ["version: 1", "settings:", f"  forks: {n}", "hosts:"]
        for h in self.all_hosts[:n]:
            lines += [f"  {h.name}:", f"    address: {h.address}", f"    port: {h.port}", f"    user: {h.user}",
                      f"    identity: {h.identity}", "    tags: [bench]", f"    host_key: {h.host_key}"]
        (d / "inventory.yaml").write_text("\n".join(lines) + "\n")
        (d / "known_hosts").write_text("".join(h.known_hosts_line() + "\n" for h in self.all_hosts[:n]))
        (self.root / "spec.yaml").write_text(SPEC.format(
            app=APP, image=self.present["v1"], proxy=self.proxy_ref, interval=self.args.interval,
            grace=f"{GRACE:g}", stop_timeout=f"{STOP_TIMEOUT:g}"))

    def prepare(self) -> None:
        (self.root / "ssh_config").write_text("")
        (self.root / "logs").mkdir()
        self.code = snapshot_code(self.src, self.args.ref, self.env(1))
        print(f"code under test: {self.code}", file=sys.stderr, flush=True)
        self.proxy_ref = caddyimage.build_caddy_image()
        for h in self.all_hosts:
            caddyimage.load_into(h, self.proxy_ref)
        for v in ("v1", "v2"):
            self.present[v] = self.new_image(f"present-{v}", f"hello {v}")
        self.image_sizes["app image"] = image_mb(self.present["v1"])
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", IMPORTS], env=self.env(1), capture_output=True, check=True)
            runs.append(time.perf_counter() - t0)
        self.cli_startup = C.median(runs)

    def new_image(self, tag: str, body: str) -> str:
        ref = build_image(f"{IMAGE_REPO}:{tag}", body, self.args.pad_mb)
        self.images.append(ref)
        self.bodies.add(body)
        return ref

    # -- running --
    def deploy(self, n: int, image: str, label: str, *, strategy: str = "blue-green",
               parallel: int | None = None, cpus: str | None = None) -> Deploy:
        self._n += 1
        argv = (["taskset", "-c", cpus] if cpus else []) + [PY, "-m", "ndctl", "deploy", "-f", str(self.root / "spec.yaml"), "-o", "json", "--image", image,
                "--version", label, "--strategy", strategy]
        if parallel:
            argv += ["--parallel", str(parallel)]
        t0 = time.time()
        rec = C.run_measured(argv, cwd=self.root, env=self.env(n), log_prefix=self.root / "logs" / f"{self._n:03d}",
                             timeout=600)
        t1 = time.time()
        doc = None
        error = None
        try:
            doc = json.loads(rec.stdout)
        except ValueError:
            error = f"unparsable output: {rec.stdout[-300:]!r} {rec.stderr[-500:]!r}"
        if rec.timed_out:
            error = "timed out"
        elif rec.returncode != 0:
            error = f"exit status {rec.returncode}: {rec.stderr.strip()[-500:]}"
        elif doc is not None and (doc.get("summary") or {}).get("ok") != n:
            error = f"{(doc.get('summary') or {}).get('ok')}/{n} hosts ok"
        d = Deploy(label, image, t0, t1, rec.wall, rec.cpu, rec.returncode, doc, error)
        status = "ok" if error is None else f"FAILED: {error}"
        print(f"  deploy {label:<22} wall {d.wall:5.2f}s  transfer {d.transfer:5.2f}  boot+health "
              f"{d.boot_health:5.2f}  stop {d.stop:5.2f}  overhead {d.overhead:5.2f}  {status}",
              file=sys.stderr, flush=True)
        return d

    def wait_old_stopped(self, n: int) -> float:
        """Until each host runs only the serving container: the previous one's scheduled stop is done
        (deploys a few seconds apart, as in real life; a deploy that finds an old release still running
        past its grace period stops it itself, while the operator waits)."""
        t0 = time.monotonic()
        deadline = t0 + GRACE + STOP_TIMEOUT + 20
        while time.monotonic() < deadline:
            counts = []
            for h in self.all_hosts[:n]:
                r = h.exec("docker", "ps", "-q", "--filter", f"label=com.nextdeploy.app={APP}",
                           "--filter", "label=com.nextdeploy.role=app", check=False)
                counts.append(len(r.stdout.split()))
            if all(c <= 1 for c in counts):
                break
            time.sleep(0.2)
        return time.monotonic() - t0

    def scenario(self, key: str, n: int, count: int) -> Scenario:
        strategy = "recreate" if key == "recreate" else "blue-green"
        parallel = n if key == "bg-present-batch" else None
        pinned = key == "bg-present-pinned"
        sc = Scenario(key, n, strategy, parallel, loaded=key != "bg-idle")
        print(f"== {sc.name}: {count} deploy(s), {SCENARIO_TITLES[key]}", file=sys.stderr, flush=True)
        if key == "bg-fresh":
            images = [self.new_image(f"fresh-{n}-{i}", f"hello fresh-{n}-{i}") for i in range(1, count + 1)]
        else:
            images = [self.present["v2" if i % 2 else "v1"] for i in range(1, count + 1)]
        self.wait_old_stopped(n)
        gens = {h.name: LoadGen(h, expected=sorted(self.bodies), threads=self.args.threads, think=self.args.think,
                                samples=True, cpus=PINNED_LOAD_CPUS if pinned else None)
                for h in self.all_hosts[:n]} if sc.loaded else {}
        try:
            for g in gens.values():
                g.start()
            if gens:
                time.sleep(self.args.steady)
            for i, image in enumerate(images, 1):
                d = self.deploy(n, image, f"{key}-{n}-{i:02d}", strategy=strategy, parallel=parallel,
                                cpus=PINNED_CLIENT_CPUS if pinned else None)
                sc.deploys.append(d)
                if d.error is not None:
                    sc.notes.append(f"deploy {d.label} failed: {d.error}")
                    break
                if key.startswith("bg") and d.shipped != (key == "bg-fresh"):
                    sc.notes.append(f"deploy {d.label}: image {'shipped' if d.shipped else 'not shipped'}, "
                                    f"unexpected for {key}")
                sc.waits.append(self.wait_old_stopped(n))
            if gens:
                time.sleep(1.0)
            for name, g in gens.items():
                sc.load[name] = g.stop()
                sc.samples[name] = g.samples()
        finally:
            for g in gens.values():
                g.kill()
        if sc.loaded:
            print(f"  load: {sc.total('requests')} requests, {sc.total('failed')} failed, "
                  f"{sc.total('stale_retries')} stale retries; {sc.errors() or ''}", file=sys.stderr, flush=True)
        self.scenarios.append(sc)
        return sc

    def run(self) -> None:
        for n in self.args.host_counts:
            print(f"== {n} host(s): set-up deploys (untimed, no load): v1, then v2, then v1", file=sys.stderr)
            self.write_inventory(n)
            for v in ("v1", "v2", "v1"):
                d = self.deploy(n, self.present[v], f"setup-{n}-{v}-{self._n + 1}")
                if d.error:
                    raise RuntimeError(f"set-up deploy failed: {d.error}")
                self.wait_old_stopped(n)
            # recreate before bg-fresh: after ten fresh images, retention has pruned v1/v2 from the hosts
            keys = (["bg-idle", "bg-present"] + (["bg-present-batch"] if n > 1 else [])
                    + (["bg-present-pinned"] if len(os.sched_getaffinity(0)) > 1 else []) + ["recreate", "bg-fresh"])
            for key in keys:
                self.scenario(key, n, self.args.recreate_deploys if key == "recreate" else self.args.deploys)


# ----- reporting --------------------------------------------------------------------------------------

def _ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def _med(xs: list[float]) -> float | None:
    return C.median(xs) if xs else None


def rows(bench: Bench) -> list[dict[str, str]]:
    out = []
    for sc in bench.scenarios:
        ds = [d for d in sc.deploys if d.error is None]
        sw, steady = sc.window_stats("switch"), sc.window_stats("steady")
        load = sc.loaded
        out.append({
            "scenario": sc.key, "hosts": str(sc.n_hosts),
            "deploys": f"{len(ds)}/{len(sc.deploys)}" + ("" if sc.ok else " FAILED"),
            "requests": str(sc.total("requests")) if load else "no load",
            "failed": str(sc.total("failed")) if load else "-",
            "stale": str(sc.total("stale_retries")) if load else "-",
            "switch": f"{_ms(sw['p50_ms'])} / {_ms(sw['p99_ms'])}" if load else "-",
            "steady": f"{_ms(steady['p50_ms'])} / {_ms(steady['p99_ms'])}" if load else "-",
            "wall": C.fmt_s(_med([d.wall for d in ds])),
            "transfer": C.fmt_s(_med([d.transfer for d in ds])),
            "boot": C.fmt_s(_med([d.boot_health for d in ds])),
            "stop": C.fmt_s(_med([d.stop for d in ds])),
            "switchs": C.fmt_s(_med([d.switch for d in ds])),
            "overhead": C.fmt_s(_med([d.overhead for d in ds])),
            "overhead_max": C.fmt_s(max((d.overhead for d in ds), default=None)),
        })
    return out


COLUMNS = [
    ("scenario", "scenario"), ("hosts", "hosts"), ("deploys", "deploys ok"), ("requests", "requests"),
    ("failed", "failed"), ("stale", "stale retries"), ("switch", "switch p50/p99 ms"),
    ("steady", "steady p50/p99 ms"), ("wall", "wall s"), ("transfer", "transfer s"), ("boot", "boot+health s"),
    ("stop", "stop old s"), ("overhead", "ndctl overhead s"), ("overhead_max", "overhead max s"),
    ("switchs", "(switch step s)"),
]


def overhead_rows(bench: Bench) -> list[list[str]]:
    """Median seconds per part of the overhead, per blue-green scenario."""
    out = []
    for sc in bench.scenarios:
        ds = [d for d in sc.deploys if d.error is None]
        if sc.strategy != "blue-green" or not ds:
            continue
        row = [sc.key, str(sc.n_hosts)]
        for part in OVERHEAD_STEPS:
            vals = [d.outside_steps if part == "outside steps" else d.step_seconds(part) for d in ds]
            row.append(C.fmt_s(_med(vals)))
        row.append(C.fmt_s(_med([d.overhead for d in ds])))
        out.append(row)
    return out


OVERHEAD_HEAD = ["scenario", "hosts", *OVERHEAD_STEPS, "overhead"]


def targets(bench: Bench) -> list[tuple[str, str, str]]:
    bg = [sc for sc in bench.scenarios if sc.strategy == "blue-green"]
    loaded = [sc for sc in bg if sc.loaded]
    rc = [sc for sc in bench.scenarios if sc.strategy == "recreate"]
    out = []
    failed = sum(sc.total("failed") for sc in loaded)
    all_ok = bool(loaded) and all(sc.ok for sc in loaded)
    out.append(("0 failed requests with blue-green (every blue-green scenario under load, whole load run)",
                f"{failed} failed of {sum(sc.total('requests') for sc in loaded)} requests over "
                f"{sum(len(sc.deploys) for sc in loaded)} deploys",
                "met" if all_ok and failed == 0 else "NOT met" + ("" if all_ok else " (a deploy failed)")))

    def med(sc: Scenario) -> float | None:
        return _med([d.overhead for d in sc.deploys if d.error is None])

    def verdict(scs: list[Scenario]) -> str:
        return "met" if scs and all(sc.ok and (med(sc) or 99) <= OVERHEAD_TARGET for sc in scs) else "NOT met"

    what = f"ndctl's own overhead <= {OVERHEAD_TARGET:g} s per deploy beyond boot, health check and drain"
    shared = [sc for sc in loaded if sc.key != "bg-present-pinned"]
    pinned = [sc for sc in loaded if sc.key == "bg-present-pinned"]
    for label, scs in (("no load", [sc for sc in bg if not sc.loaded]),
                       ("under load, the load generators sharing ndctl's CPUs", shared),
                       ("under load, the load generators on another CPU than ndctl", pinned)):
        if scs:
            out.append((f"{what} (median, {label})",
                        ", ".join(f"{sc.key}/{sc.n_hosts} host{'s' if sc.n_hosts > 1 else ''}: {C.fmt_s(med(sc))} s"
                                  for sc in scs), verdict(scs)))
    ds = [d for sc in bg for d in sc.deploys if d.error is None]
    worst = max((d.overhead for d in ds), default=None)
    out.append(("... for every single blue-green deploy (any scenario)", f"worst {C.fmt_s(worst)} s",
                "met" if worst is not None and worst <= OVERHEAD_TARGET else "NOT met"))
    rfail = sum(sc.total("failed") for sc in rc)
    out.append(("the stop-then-start control (recreate) shows failed requests (the measurement sees them)",
                f"{rfail} failed of {sum(sc.total('requests') for sc in rc)} requests over "
                f"{sum(len(sc.deploys) for sc in rc)} deploys",
                "met" if rfail > 0 else "NOT met (the measurement may be blind)"))
    return out


def print_tables(bench: Bench) -> None:
    rs = rows(bench)
    widths = {k: max(len(h), *(len(r[k]) for r in rs)) for k, h in COLUMNS} if rs else {}
    print()
    print("  ".join(h.rjust(widths[k]) for k, h in COLUMNS))
    for r in rs:
        print("  ".join(r[k].rjust(widths[k]) for k, _ in COLUMNS))
    print(f"\nWhere the overhead goes (median s; `python -c '{IMPORTS}'`: {C.fmt_s(bench.cli_startup)} s):")
    ors = overhead_rows(bench)
    w = [max(len(h), *(len(r[i]) for r in ors)) if ors else len(h) for i, h in enumerate(OVERHEAD_HEAD)]
    print("  ".join(h.rjust(w[i]) for i, h in enumerate(OVERHEAD_HEAD)))
    for r in ors:
        print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))
    print("\nTargets:")
    for desc, measured, verdict in targets(bench):
        print(f"  {verdict:<10} {desc}: {measured}")


def versions(bench: Bench) -> dict[str, str]:
    import ndctl
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    where = rev.stdout.strip() if rev.returncode == 0 else "no commit yet"
    if dirty.stdout.strip():
        where += ", uncommitted changes"
    h = bench.all_hosts[0]
    inner = h.exec("docker", "version", "--format", "{{.Server.Version}}", check=False).stdout.strip()
    caddy = h.exec("cat", "/var/lib/nextdeploy/proxy/version", check=False).stdout.strip()
    sshd = h.exec("sh", "-c", "ssh -V 2>&1", check=False).stdout.strip()
    return {
        "ndctl": f"{ndctl.__version__} ({REPO} at {where}; measured: {bench.code}), "
                 f"run as `{Path(PY).name} -m ndctl deploy`",
        "asyncssh": C.dist_version("asyncssh"),
        "Docker engine (this machine / inside the test hosts)":
            f"{C.first_line_of(['docker', 'version', '--format', '{{.Server.Version}}'])} / {inner or '?'}",
        "Caddy (proxy image, built locally)": f"{caddy or '?'} ({bench.proxy_ref})",
        "OpenSSH in the test hosts": sshd or "?",
        "Test host image": sandbox.image_ref(),
    }


def write_report(path: Path, bench: Bench, args: argparse.Namespace, machine: dict[str, str],
                 vers: dict[str, str], started: str, elapsed: float) -> None:
    L: list[str] = []
    L += ["# Deploy benchmark", "",
          f"Generated by `{shlex.join(['python3', 'benchmarks/deploy.py', *args.argv])}` on {started} "
          f"({elapsed / 60:.1f} min). Re-run it to refresh this page; the method is below and in the script's "
          "docstring.", ""]
    L += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    for desc, measured, verdict in targets(bench):
        L.append(f"| {desc} | {measured} | {'**' + verdict + '**' if verdict.startswith('NOT') else verdict} |")
    L += ["", "## Results", "",
          "Per scenario and host count: the load over the whole scenario (every request of every host's "
          "generator, from before the first deploy to after the last), latency percentiles around the switches "
          f"(requests started within {SWITCH_WINDOW:g} s of a version flip that host's generator saw) and in "
          "steady state (requests started while no deploy ran), and the medians over the deploys of the "
          "deploy wall time and its split.", "",
          "| " + " | ".join(h for _, h in COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for r in rows(bench):
        L.append("| " + " | ".join(r[k] for k, _ in COLUMNS) + " |")
    L += ["", "Scenarios:", ""]
    ran = {sc.key for sc in bench.scenarios}
    for key, title in SCENARIO_TITLES.items():
        if key in ran:
            L.append(f"- `{key}`: {title}.")
    L += ["", "Columns: **failed**: requests that got an error, a non-200 status or a body that is not one of the "
          "deployed versions (after at most one stale-connection retry); **stale retries**: requests retried once "
          "because a reused keep-alive connection was closed before any response byte (what browsers and urllib3 "
          "do silently; not failures, counted apart); **wall**: fork to exit of `python -m ndctl deploy`; "
          "**transfer**: the `ship-image` step (docker save here, over SSH, docker load there; hosts in "
          "parallel, the slowest counts); **boot+health**: `start` (docker run) + `health-check` (until 2 "
          f"consecutive 200s from /health, probed every {args.interval}), summed over the rolling batches; "
          "**stop old**: docker stop done while ndctl waits (recreate stops the serving container first); "
          "**ndctl overhead** = wall - transfer - boot+health - stop old: interpreter start-up and imports, "
          "SSH connections, reading the host state, the lock, the proxy switch, writing current.json and history, "
          "scheduling the old container's stop, pruning, unlocking; **(switch step)**: the proxy switch alone "
          "(part of the overhead). Drain adds nothing to the wall time: the proxy drains the old upstream after "
          "ndctl has moved on.", ""]
    L += ["### Where ndctl's overhead goes", "",
          "Median seconds each part adds to a blue-green deploy's wall time (rolling steps summed over the "
          "batches). **ensure-proxy** and **lock** run side by side on each host (the SSH connection is made "
          "inside them, and the lock step also reads the host's state: containers, state files, image ids); "
          "the longer of the two is what they add. **outside steps**: wall time in no step (the wall time "
          "minus that and the other columns): interpreter start-up and imports "
          f"(`python -c '{IMPORTS}'` alone takes {C.fmt_s(bench.cli_startup)} s here), reading the app "
          "definition and inventory, planning, output, exit.", "",
          "| " + " | ".join(OVERHEAD_HEAD) + " |", "|---|" + "---:|" * (len(OVERHEAD_HEAD) - 1)]
    L += ["| " + " | ".join(r) + " |" for r in overhead_rows(bench)]
    L.append("")
    all_fails = [(sc, sc.errors()) for sc in bench.scenarios if sc.errors()]
    if all_fails:
        L += ["Failed requests by kind:", ""]
        for sc, errs in all_fails:
            L.append(f"- {sc.name}: " + ", ".join(f"`{k}` x{v}" for k, v in sorted(errs.items())))
        L.append("")
    notes = [f"{sc.name}: {n}" for sc in bench.scenarios for n in sc.notes]
    if notes:
        L += ["## Oddities", ""] + [f"- {n}" for n in notes] + [""]
    L += ["## Method", "",
          f"- Code under test: {bench.code}, copied at the start of the run and run from the copy (others may "
          "edit the working tree meanwhile), byte-compiled as `pip install` leaves an installed package (this "
          "machine sets PYTHONDONTWRITEBYTECODE, so imports from source would compile ndctl on every run).",
          f"- Test hosts: {len(bench.all_hosts)} container host(s) (`ndctl.sandbox.start_container_hosts`, group "
          f"`{GROUP}`), each a Debian container with its own sshd and Docker engine, on this machine; the 1-host "
          "runs use the first one. ndctl reaches them over SSH on 127.0.0.1 ports with their host keys pinned.",
          f"- App: busybox httpd (`/` answers `hello <version>`, `/health` 200) imported locally with "
          f"{args.pad_mb} MiB of random padding: {bench.image_sizes.get('app image', 0):.1f} MB per image. "
          "`bg-present` and `recreate` alternate two such images the hosts already hold (ndctl finds the image id "
          "there and skips the transfer); `bg-fresh` builds a new one per deploy beforehand (not timed) so every "
          "deploy ships it. Each deploy gets its own `--version` label, so each is a new release.",
          f"- App definition: `health_check: {{path: /health, interval: {args.interval}, successes: 2}}`, "
          f"`drain: 2s`, `grace: {GRACE:g}s`, `stop_timeout: {STOP_TIMEOUT:g}s` (busybox httpd as PID 1 ignores "
          "SIGTERM, so every docker stop waits this long), `retain: 2`, Caddy proxy. Rolling batches of 1 host "
          "(the default) except `bg-present-batch` (`--parallel N`).",
          "- Before each host count's scenarios: three untimed set-up deploys (v1, v2, v1) without load: proxy "
          "created, helper uploaded, both images on every host.",
          f"- Load: one generator per host (`ndctl.sandbox.loadgen`, stdlib python3 inside the test host) with "
          f"{args.threads} threads, each a persistent HTTP/1.1 keep-alive connection to the host's proxy "
          f"(127.0.0.1:80), {args.think * 1000:g} ms pause between requests; started {args.steady:g} s before the "
          "first deploy of a scenario, stopped 1 s after the last. Like browsers and urllib3, a request is "
          "retried once when a reused keep-alive connection is closed before any response byte; those retries "
          "are counted separately. Every request is recorded (start time, latency) so latencies can be cut "
          "into windows: the test hosts share this machine's clock.",
          "- Between deploys the benchmark waits until each host runs only the serving container (the "
          "previous one's scheduled stop after the grace period is done), as deploys a few seconds apart would; "
          f"median wait {C.fmt_s(_med([w for sc in bench.scenarios for w in sc.waits]))} s. Without it, a deploy "
          "that finds an old release still running past its grace period stops it itself while the operator "
          "waits (see Oddities if that happened).",
          "- Wall-time split from `ndctl deploy -o json`: every step's `seconds_taken` per host. Steps before the "
          "batches run on all hosts in parallel (the slowest host counts); steps in the rollout run batch after "
          "batch (the slowest host of each batch counts, summed). Every deploy is a fresh "
          "`python -m ndctl` process: interpreter start-up and the imports a deploy needs "
          f"(`python -c '{IMPORTS}'`) take {C.fmt_s(bench.cli_startup)} s here, part of the overhead.",
          "- Everything runs on one machine: the client, the test hosts' sshd and dockerd, the proxies, the apps "
          "and the load generators share its CPUs, so latencies under load are pessimistic and noisy (see the load "
          "averages). Nothing is sent off the machine.", ""]
    L += ["## Machine", "", "| | |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in machine.items()]
    la = os.getloadavg()
    L += [f"| Load average at end (1/5/15 min; includes the benchmark's own processes) | "
          f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f} |", ""]
    L += ["## Versions", "", "| | |", "|---|---|"]
    L += [f"| {k} | {v.replace('|', '/')} |" for k, v in vers.items()]
    L += ["", "<details><summary>Every deploy (wall / transfer / boot+health / stop old / overhead, seconds)"
          "</summary>", "", "| scenario | hosts | deploy | wall | transfer | boot+health | stop old | overhead | "
          "client CPU | result |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for sc in bench.scenarios:
        for d in sc.deploys:
            L.append(f"| {sc.key} | {sc.n_hosts} | {d.label} | {d.wall:.2f} | {d.transfer:.2f} | "
                     f"{d.boot_health:.2f} | {d.stop:.2f} | {d.overhead:.2f} | {d.cpu:.2f} | "
                     f"{'ok' if d.error is None else 'FAILED: ' + d.error.replace('|', '/')[:200]} |")
    L += ["", "</details>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)


# ----- main -------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="1,3", help="host counts, comma-separated, at most 3 (default 1,3)")
    p.add_argument("--deploys", type=int, default=10, help="timed deploys per blue-green scenario (default 10)")
    p.add_argument("--recreate-deploys", type=int, default=3, help="deploys of the recreate control (default 3)")
    p.add_argument("--pad-mb", type=int, default=16, help="MiB of random padding per app image (default 16)")
    p.add_argument("--threads", type=int, default=4, help="load generator connections per host (default 4)")
    p.add_argument("--think", type=float, default=0.02,
                   help="seconds between a connection's requests (default 0.02: ~150-200 requests/s per host)")
    p.add_argument("--steady", type=float, default=2.0, help="seconds of load before the first deploy")
    p.add_argument("--interval", default="0.3s", help="health-check probe interval (default 0.3s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 host, 2 deploys per scenario, no report")
    p.add_argument("--output", default=None, help=f"report path (default {DEFAULT_REPORT.relative_to(REPO)}; "
                                                  "'-' for none)")
    p.add_argument("--ref", default=None,
                   help="benchmark this git ref (git archive) instead of a snapshot of the working tree")
    p.add_argument("--keep-workdir", action="store_true", help="keep the generated configs and deploy logs")
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.hosts, args.deploys, args.recreate_deploys = "1", 2, 2
    try:
        args.host_counts = sorted({int(x) for x in args.hosts.split(",") if x.strip()})
    except ValueError:
        p.error("--hosts: comma-separated integers")
    if not args.host_counts or min(args.host_counts) < 1 or max(args.host_counts) > len(HOST_NAMES):
        p.error(f"--hosts: between 1 and {len(HOST_NAMES)}")
    if args.deploys < 1 or args.recreate_deploys < 1:
        p.error("--deploys and --recreate-deploys must be >= 1")
    args.output_path = C.report_path(args.output, args.quick, DEFAULT_REPORT)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    reason = sandbox.container_hosts_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started, t_start = C.now_utc(), time.monotonic()
    machine = C.machine_details()
    root = Path(tempfile.mkdtemp(prefix="ndctl-bench-deploy-"))
    bench: Bench | None = None
    try:
        with sandbox.group_lock(GROUP, timeout=1800):
            try:
                n_max = max(args.host_counts)
                print(f"starting {n_max} test host(s); workdir {root}", file=sys.stderr, flush=True)
                hosts = sandbox.start_container_hosts(HOST_NAMES[:n_max], group=GROUP, workdir=root)
                bench = Bench(hosts, root, args)
                bench.prepare()
                bench.run()
                print_tables(bench)
                if args.output_path is not None:
                    write_report(args.output_path, bench, args, machine, versions(bench), started,
                                 time.monotonic() - t_start)
                    print(f"\nwrote {args.output_path}", file=sys.stderr)
                return 0 if all(sc.ok for sc in bench.scenarios) else 1
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish cleaning up even on a second Ctrl-C
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                C.ChildTracker.kill_current()
                sandbox.stop_group(GROUP)
                if bench is not None:
                    subprocess.run(["docker", "rmi", "-f", *bench.images], capture_output=True)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaned up", file=sys.stderr)
        return 130
    finally:
        if args.keep_workdir:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
