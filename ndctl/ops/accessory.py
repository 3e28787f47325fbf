"""Accessories: long-lived containers (a database, a cache) or one-off runs, from an image on the hosts.

A long-lived accessory is the container named NAME on network ``nextdeploy``
(so apps reach it as ``NAME``), restart policy ``unless-stopped``, labelled
``com.nextdeploy.role=accessory``, ``com.nextdeploy.accessory=NAME`` and
``com.nextdeploy.spec=<JSON>``: what it was created from (image id, volumes,
ports, command, env names and a hash of the env values). That label makes a
re-run idempotent: same spec and running -> nothing to do; same spec but
stopped -> started; different spec -> refused unless ``replace``.

Every host is inspected before any is changed: a conflict on one host refuses
the run on all of them. Creation is one script per host that undoes its own
work on failure (volumes it created, the container it created; a replaced
container is set aside, not removed, until the new one started).

One-offs (``remove=True``) run as ``nd-run-NAME-<6 hex>`` with ``--rm``,
their output streamed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ndctl.commands.docker import LABEL_ROLE, NETWORK, ROLE_ACCESSORY
from ndctl.commands.shell import for_host
from ndctl.core.appspec import ENV_KEY_RE, IMAGE_RE, Volume
from ndctl.core.appspec import parse_volume as _parse_volume
from ndctl.core.errors import ConflictError, UsageError
from ndctl.core.inventory import Host
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.ops import images
from ndctl.transport.ssh import OutputCallback, Runner

LABEL_ACCESSORY = "com.nextdeploy.accessory"
LABEL_SPEC = "com.nextdeploy.spec"
LABEL_ONEOFF = "com.nextdeploy.oneoff"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")

Action = Literal["create", "none", "start", "replace", "conflict"]
PullPolicy = Literal["missing", "never"]


# ---------------------------------------------------------------------------
# The spec, parsed from the command line (pure)
# ---------------------------------------------------------------------------

VolumeMount = Volume  # one volume syntax for nextdeploy.yaml and `ndctl run -v`


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    host_ip: str | None = None
    proto: str = "tcp"

    def __str__(self) -> str:
        ip = (f"[{self.host_ip}]:" if ":" in self.host_ip else f"{self.host_ip}:") if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class AccessorySpec:
    name: str
    image: str
    volumes: tuple[VolumeMount, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # values may be secret
    ports: tuple[PortMapping, ...] = ()
    command: tuple[str, ...] = ()
    network: str = NETWORK

    def record(self, image_id: str) -> dict[str, Any]:
        """What the container is created from, as stored in its spec label (env values hashed)."""
        env_digest = hashlib.sha256("\0".join(f"{k}={v}" for k, v in sorted(self.env)).encode()).hexdigest()
        return {
            "image": self.image,
            "image_id": image_id,
            "command": list(self.command),
            "volumes": sorted(str(v) for v in self.volumes),
            "ports": sorted(str(p) for p in self.ports),
            "env": sorted(k for k, _ in self.env),
            "env_sha256": env_digest,
            "network": self.network,
        }


def parse_volume(text: str) -> VolumeMount:
    """``name:/path[:ro|:rw]`` (a named volume; host paths are refused for now)."""
    try:
        return _parse_volume(text)
    except ValueError as e:
        raise UsageError(f"--volume {e}") from None


def parse_env(text: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """``KEY=VALUE``, or ``KEY`` alone for this machine's value of KEY (kept out of shell history)."""
    key, sep, value = text.partition("=")
    if not ENV_KEY_RE.match(key):
        raise UsageError(f"--env {key!r}: not an environment variable name")
    if not sep:
        env = os.environ if environ is None else environ
        if key not in env:
            raise UsageError(f"--env {key}: no value given and {key} is not set here")
        value = env[key]
    return key, value


def parse_port(text: str) -> PortMapping:
    """``HOST:CONTAINER[/tcp|/udp]`` or ``IP:HOST:CONTAINER[/proto]`` (``[::1]:HOST:CONTAINER``)."""
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError(f"--publish {text!r}: protocol must be tcp or udp")
    ip: str | None = None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(.+)", body)
    if m:
        ip, body = m.group(1), m.group(2)
    parts = body.split(":")
    if ip is None and len(parts) == 3:
        ip, parts = parts[0], parts[1:]
    if len(parts) != 2:
        raise UsageError(f"--publish {text!r}: expected HOST_PORT:CONTAINER_PORT or IP:HOST_PORT:CONTAINER_PORT")
    if ip is not None:
        import ipaddress
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"--publish {text!r}: {ip!r} is not an IP address") from None
    ports = []
    for p in parts:
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise UsageError(f"--publish {text!r}: {p!r} is not a port number 1-65535")
        ports.append(int(p))
    return PortMapping(ports[0], ports[1], ip, proto)


def default_name(image: str) -> str:
    """``postgres:16`` -> ``postgres``; ``ghcr.io/org/cache@sha256:..`` -> ``cache``."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    name = last.split(":", 1)[0]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("_.-")
    return name or "accessory"


def build_spec(image: str, name: str | None = None, *, volumes: Sequence[str] = (), env: Sequence[str] = (),
               ports: Sequence[str] = (), command: Sequence[str] = (), network: str = NETWORK,
               environ: dict[str, str] | None = None) -> AccessorySpec:
    """Validate command-line values into a spec; UsageError naming the bad one."""
    if not IMAGE_RE.match(image or "") or image.startswith("sha256:") and len(image) < 14:
        raise UsageError(f"image {image!r} is not a valid image reference")
    name = name if name is not None else default_name(image)
    if not _NAME_RE.match(name):
        raise UsageError(f"name {name!r}: letters, digits, '_', '.' or '-', starting with a letter or digit, "
                         "at most 63 characters")
    vols = tuple(parse_volume(v) for v in volumes)
    paths = [v.path for v in vols]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    if dup:
        raise UsageError(f"--volume: {dup[0]} is mounted twice")
    env_pairs = tuple(parse_env(e, environ) for e in env)
    published = tuple(parse_port(p) for p in ports)
    seen: set[tuple[str | None, int, str]] = set()
    for p in published:
        key = (p.host_ip, p.host_port, p.proto)
        if key in seen:
            raise UsageError(f"--publish: host port {p.host_port}/{p.proto} is given twice")
        seen.add(key)
    return AccessorySpec(name, image, vols, env_pairs, published, tuple(command), network)


# ---------------------------------------------------------------------------
# Builders (argv lists) and the plan (pure)
# ---------------------------------------------------------------------------

def labels(spec: AccessorySpec, image_id: str, *, oneoff: bool = False) -> dict[str, str]:
    out = {LABEL_ROLE: ROLE_ACCESSORY, LABEL_ACCESSORY: spec.name}
    if oneoff:
        out[LABEL_ONEOFF] = "1"
    else:
        out[LABEL_SPEC] = json.dumps(spec.record(image_id), sort_keys=True, separators=(",", ":"))
    return out


def container_args(spec: AccessorySpec, image_id: str, *, name: str | None = None, oneoff: bool = False) -> list[str]:
    """The options, image and command shared by ``docker create`` and ``docker run``."""
    args = ["--name", name or spec.name, "--network", spec.network]
    if not oneoff:
        args += ["--restart", "unless-stopped"]
    for k, v in labels(spec, image_id, oneoff=oneoff).items():
        args += ["--label", f"{k}={v}"]
    for k, v in spec.env:
        args += ["-e", f"{k}={v}"]
    for vol in spec.volumes:
        args += ["-v", str(vol)]
    for p in spec.ports:
        args += ["-p", str(p)]
    # The image as named by the operator, not its id: `docker ps` stays readable,
    # and the id is pinned in the spec label for the idempotency check.
    args.append(spec.image)
    args += list(spec.command)
    return args


# Prepares the network and the volumes, then runs the container-specific part.
# Positional parameters: NETWORK NVOLUMES VOLUME... then the rest for the part.
_PREPARE = (
    'net="$1"; n="$2"; shift 2; made=""; '
    'undo_volumes() { for v in $made; do docker volume rm -- "$v" >/dev/null 2>&1; done; }; '
    'docker network inspect "$net" >/dev/null 2>&1 || docker network create "$net" >/dev/null 2>&1 '
    '|| docker network inspect "$net" >/dev/null || exit 1; '
    'while [ "$n" -gt 0 ]; do v="$1"; shift; n=$((n - 1)); '
    'if ! docker volume inspect -- "$v" >/dev/null 2>&1; then '
    f'docker volume create --label {LABEL_ROLE}={ROLE_ACCESSORY} -- "$v" >/dev/null '
    '|| { undo_volumes; exit 1; }; made="$made $v"; fi; done; '
)

# Create (or replace) a long-lived accessory. After _PREPARE: NAME OLD_ID CREATE_ARGS...
# A replaced container is stopped and renamed aside first (two databases must
# never share a data volume), and put back and restarted if the new one fails.
_CREATE = _PREPARE + (
    'name="$1"; old="$2"; shift 2; running=""; '
    'if [ -n "$old" ]; then '
    '[ "$(docker container inspect --format "{{.State.Running}}" -- "$old")" = true ] && running=1; '
    'docker stop -- "$old" >/dev/null && docker rename "$old" "$name-replaced-$$" '
    '|| { echo "ndctl: cannot set the old container $name aside" >&2; exit 1; }; fi; '
    'restore() { if [ -n "$old" ]; then docker rename "$old" "$name"; '
    'if [ -n "$running" ]; then docker start -- "$old" >/dev/null; fi; fi; }; '
    'id=$(docker create "$@") || { rc=$?; undo_volumes; restore; exit $rc; }; '
    'if ! docker start -- "$id" >/dev/null; then '
    'docker rm -f -- "$id" >/dev/null 2>&1; undo_volumes; restore; exit 125; fi; '
    'if [ -n "$old" ]; then docker rm -f -- "$old" >/dev/null; fi; '
    'echo "$id"'
)

# A one-off: after _PREPARE, the `docker run` arguments.
_ONEOFF = _PREPARE + 'exec docker run "$@"'


def create_argv(spec: AccessorySpec, image_id: str, old_id: str | None = None) -> list[str]:
    """Create and start the accessory (replacing ``old_id`` when given); prints the new id."""
    return ["sh", "-c", _CREATE, "ndctl-accessory", spec.network, str(len(spec.volumes)),
            *(v.name for v in spec.volumes), spec.name, old_id or "", *container_args(spec, image_id)]


def oneoff_name(spec: AccessorySpec, token: str | None = None) -> str:
    return f"nd-run-{spec.name}-{token or secrets.token_hex(3)}"[:127]


def oneoff_argv(spec: AccessorySpec, image_id: str, *, name: str, detach: bool = False) -> list[str]:
    run = ["--rm", *(["-d"] if detach else []), *container_args(spec, image_id, name=name, oneoff=True)]
    return ["sh", "-c", _ONEOFF, "ndctl-run", spec.network, str(len(spec.volumes)),
            *(v.name for v in spec.volumes), *run]


def start_argv(container_id: str) -> list[str]:
    return ["docker", "start", "--", container_id]


def inspect_argv(name: str) -> list[str]:
    return ["docker", "container", "inspect", "--", name]


def logs_argv(container: str) -> list[str]:
    return ["docker", "logs", "--follow", "--", container]


def parse_inspect(result: HostResult) -> dict[str, Any] | None:
    """``docker container inspect`` output -> the container's document, None when there is none."""
    if not result.ok:
        text = (result.stderr or result.stdout).strip()
        if "no such container" in text.lower() or "no such object" in text.lower():
            return None
        raise ValueError(result.error or text or f"exit status {result.exit_code}")
    try:
        docs = json.loads(result.stdout)
    except ValueError as e:
        raise ValueError(f"docker container inspect printed no JSON: {e}") from None
    if not isinstance(docs, list) or not docs or not isinstance(docs[0], dict):
        return None
    return docs[0]


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str
    container_id: str | None = None


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            if k == "env_sha256":
                if old.get("env") == new.get("env"):
                    parts.append("env values differ")
                continue
            parts.append(f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}")
    return "; ".join(parts) or "spec differs"


def plan(spec: AccessorySpec, image_id: str, doc: dict[str, Any] | None, *, replace: bool = False) -> Plan:
    """What to do on one host, from the existing container's inspect document (None: no container)."""
    if doc is None:
        return Plan("create", "created")
    cid = doc.get("Id")
    lab = (doc.get("Config") or {}).get("Labels") or {}
    if lab.get(LABEL_ROLE) != ROLE_ACCESSORY or lab.get(LABEL_ACCESSORY) != spec.name:
        what = f"role={lab[LABEL_ROLE]}" if lab.get(LABEL_ROLE) else "not created by ndctl"
        return Plan("conflict", f"a container named {spec.name} already exists ({what}); "
                                "ndctl will not touch it: choose another NAME", cid)
    try:
        old = json.loads(lab.get(LABEL_SPEC) or "{}")
    except ValueError:
        old = {}
    new = spec.record(image_id)
    if old != new:
        if replace:
            return Plan("replace", f"replaced ({_diff(old, new)})", cid)
        return Plan("conflict", f"accessory {spec.name} runs with a different spec ({_diff(old, new)}); "
                                "pass --replace to re-create it", cid)
    running = bool((doc.get("State") or {}).get("Running"))
    if running:
        return Plan("none", "already running", cid)
    return Plan("start", "started (it was stopped)", cid)


# ---------------------------------------------------------------------------
# Running it on hosts
# ---------------------------------------------------------------------------


async def _image_ids(runner: Runner, hosts: Sequence[Host], spec: AccessorySpec, *, ship: bool,
                     pull: PullPolicy, forks: int | None) -> tuple[dict[str, str], list[HostResult]]:
    """Each host's id of the image, shipping or pulling first; failures returned, not raised."""
    failures: list[HostResult] = []
    if ship:
        shipped = await images.ensure_image(runner, hosts, spec.image, source="ship", forks=forks)
        failures += [r for r in shipped if not r.ok]
    checked = await runner.fan_out(hosts, lambda h: images.host_image_id(runner, h, spec.image), forks)
    ids: dict[str, str] = {}
    missing: list[Host] = []
    failed = {r.host for r in failures}
    for h in hosts:
        r = checked[h.name]
        if h.name in failed:
            continue
        if not r.ok:
            failures.append(r)
        elif r.value is None:
            missing.append(h)
        else:
            ids[h.name] = r.value
    if missing and pull == "missing":
        pulled = await images.ensure_image(runner, missing, spec.image, source="pull", forks=forks)
        for r in pulled:
            if r.ok:
                ids[r.host] = r.value["image_id"]
            else:
                r.error = (f"image {spec.image} is not on {r.host} and pulling it failed: {r.error}; "
                           "--ship sends it from this machine")
                failures.append(r)
    elif missing:
        for h in missing:
            failures.append(HostResult(h.name, Status.FAILED, None, error=(
                f"image {spec.image} is not on {h.name}; --ship sends it from this machine, "
                "--pull missing pulls it")))
    return ids, failures


def _skipped(hosts: Sequence[Host], failures: list[HostResult]) -> GroupResult:
    """Failures as they are; every other host did nothing because of them."""
    by = {r.host: r for r in failures}
    names = ", ".join(sorted(by))
    return GroupResult([by.get(h.name) or HostResult(
        h.name, Status.FAILED, None, error=f"not started: the run failed on {names}",
        value={"action": "skipped"}) for h in hosts])


async def run_accessory(
    runner: Runner,
    hosts: Sequence[Host],
    spec: AccessorySpec,
    *,
    replace: bool = False,
    ship: bool = False,
    pull: PullPolicy = "missing",
    follow: bool = False,
    on_output: OutputCallback | None = None,
    forks: int | None = None,
    timeout: float | None = None,
) -> GroupResult:
    """Make the long-lived accessory run on every host (see the module docstring).

    Nothing changes anywhere when any host cannot get the image or has a
    conflicting container: ConflictError names each conflicting host. ``value``
    per host: ``{"action": "created"|"already running"|"started"|"replaced",
    "container", "id", "image_id", "reason"}``. ``follow`` then streams the
    containers' logs through ``on_output`` until they stop (or the caller is
    interrupted).
    """
    if pull not in ("missing", "never"):
        raise UsageError(f"--pull must be missing or never, not {pull!r}")
    ids, failures = await _image_ids(runner, hosts, spec, ship=ship, pull=pull, forks=forks)
    if failures:
        return _skipped(hosts, failures)

    inspected = await runner.fan_out(
        hosts, lambda h: runner.run(h, for_host(inspect_argv(spec.name), h), timeout=60), forks)
    plans: dict[str, Plan] = {}
    for r in inspected:
        if r.status is Status.UNREACHABLE:
            failures.append(r)
            continue
        try:
            doc = parse_inspect(r)
        except ValueError as e:
            r.status, r.error = Status.FAILED, f"cannot inspect containers with Docker: {e}"
            failures.append(r)
            continue
        plans[r.host] = plan(spec, ids[r.host], doc, replace=replace)
    if failures:
        return _skipped(hosts, failures)
    conflicts = {h: p for h, p in plans.items() if p.action == "conflict"}
    if conflicts:
        lines = [f"{h}: {p.reason}" for h, p in conflicts.items()]
        raise ConflictError("refused, nothing was changed: " + ("; ".join(lines) if len(lines) == 1
                                                                else "\n  " + "\n  ".join(lines)))

    async def apply(h: Host) -> HostResult:
        started = time.monotonic()
        p = plans[h.name]
        value = {"action": {"create": "created", "none": "already running", "start": "started",
                            "replace": "replaced"}[p.action],
                 "container": spec.name, "id": p.container_id, "image_id": ids[h.name], "reason": p.reason}
        if p.action == "none":
            return HostResult(h.name, Status.OK, 0, duration=time.monotonic() - started, value=value)
        if p.action == "start":
            r = await runner.run(h, for_host(start_argv(p.container_id or spec.name), h), timeout=timeout or 120)
        else:
            replaced = p.container_id if p.action == "replace" else None
            r = await runner.run(h, for_host(create_argv(spec, ids[h.name], replaced), h), timeout=timeout or 300)
            if r.ok:
                value["id"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else None
        if not r.ok and r.status is Status.FAILED and not r.error:
            r.error = f"docker failed: {r.stderr.strip()[-2000:] or f'exit status {r.exit_code}'}"
        r.value = value
        return r

    result = await runner.fan_out(hosts, apply, forks)
    if follow and result.ok:
        await runner.fan_out(hosts, lambda h: runner.run(h, for_host(logs_argv(spec.name), h), on_output=on_output),
                             forks)
    return result


async def run_oneoff(
    runner: Runner,
    hosts: Sequence[Host],
    spec: AccessorySpec,
    *,
    ship: bool = False,
    pull: PullPolicy = "missing",
    detach: bool = False,
    on_output: OutputCallback | None = None,
    forks: int | None = None,
    timeout: float | None = None,
) -> GroupResult:
    """``docker run --rm`` on every host, output streamed through ``on_output`` (unless ``detach``).

    A host's result is the container's exit status; ``value`` is
    ``{"action": "ran"|"started", "container", "image_id"}``.
    """
    if pull not in ("missing", "never"):
        raise UsageError(f"--pull must be missing or never, not {pull!r}")
    ids, failures = await _image_ids(runner, hosts, spec, ship=ship, pull=pull, forks=forks)
    if failures:
        return _skipped(hosts, failures)
    token = secrets.token_hex(3)

    async def one(h: Host) -> HostResult:
        name = oneoff_name(spec, token)
        r = await runner.run(h, for_host(oneoff_argv(spec, ids[h.name], name=name, detach=detach), h),
                             on_output=None if detach else on_output, timeout=timeout)
        r.value = {"action": "started" if detach else "ran", "container": name, "image_id": ids[h.name]}
        if r.status is Status.FAILED and not r.error and r.exit_code in (125, 126, 127):
            r.error = f"docker run failed (exit {r.exit_code}): {r.stderr.strip()[-2000:]}"
        return r

    return await runner.fan_out(hosts, one, forks)


__all__ = ["AccessorySpec", "LABEL_ACCESSORY", "LABEL_ONEOFF", "LABEL_SPEC", "Plan", "PortMapping",
           "VolumeMount", "build_spec", "container_args", "create_argv", "default_name", "labels",
           "oneoff_argv", "oneoff_name", "parse_env", "parse_inspect", "parse_port", "parse_volume", "plan",
           "run_accessory", "run_oneoff"]
