"""Argv builders for the Docker CLI on a host.

Values are separate argv words (the transport quotes each), never parts of a
shell line: an env value with quotes or newlines is one ``-e K=V`` word. The
few multi-command actions are fixed ``sh -c`` scripts taking values as
positional parameters. Names are checked so that no value can be read as an
option. The JSON format strings make every listing one JSON object per line.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ndctl.core.appspec import AppSpec

Argv = list[str]

NETWORK = "nextdeploy"
PROXY_CONTAINER = "nextdeploy-proxy"

LABEL_APP = "com.nextdeploy.app"
LABEL_VERSION = "com.nextdeploy.version"
LABEL_DEPLOY_ID = "com.nextdeploy.deploy-id"
LABEL_ROLE = "com.nextdeploy.role"
LABEL_PORT = "com.nextdeploy.port"
ROLE_APP = "app"
ROLE_ACCESSORY = "accessory"
ROLE_PROXY = "proxy"

DEPLOY_ID_RE = re.compile(r"^[0-9a-f]{8}\Z")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")  # container / network / volume names
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}\Z")  # image refs and ids (sha256:...)
_LABEL_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

# One JSON object per container. Built field by field rather than `{{json .}}`:
# stable keys, a fraction of the size, and labels as a real map.
INSPECT_FORMAT = (
    '{"id":{{json .Id}},"name":{{json .Name}},"image":{{json .Config.Image}},'
    '"image_id":{{json .Image}},"created":{{json .Created}},"state":{{json .State.Status}},'
    '"running":{{json .State.Running}},"exit_code":{{json .State.ExitCode}},'
    '"started_at":{{json .State.StartedAt}},"finished_at":{{json .State.FinishedAt}},'
    '"restart_count":{{json .RestartCount}},"labels":{{json .Config.Labels}},'
    '"networks":{{json .NetworkSettings.Networks}}}'
)
# `docker ps` renders .Labels as one "k=v,k=v" string (ambiguous with commas
# in values), so our labels are read one by one.
PS_FORMAT = (
    '{"id":{{json .ID}},"name":{{json .Names}},"image":{{json .Image}},"state":{{json .State}},'
    '"status":{{json .Status}},"created":{{json .CreatedAt}},'
    f'"app":{{{{json (.Label "{LABEL_APP}")}}}},"version":{{{{json (.Label "{LABEL_VERSION}")}}}},'
    f'"deploy_id":{{{{json (.Label "{LABEL_DEPLOY_ID}")}}}},"role":{{{{json (.Label "{LABEL_ROLE}")}}}},'
    f'"port":{{{{json (.Label "{LABEL_PORT}")}}}}}}'
)
IMAGE_FORMAT = (
    '{"id":{{json .Id}},"repo_tags":{{json .RepoTags}},"repo_digests":{{json .RepoDigests}},'
    '"created":{{json .Created}},"size":{{json .Size}}}'
)


def check_name(value: str, what: str = "container name") -> str:
    """``value`` if Docker accepts it as a container, network or volume name; else ValueError naming ``what``."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}")
    return value


def _ref(value: str, what: str = "image") -> str:
    if not isinstance(value, str) or not _REF_RE.match(value):
        raise ValueError(f"invalid {what} reference {value!r}")
    return value


def _seconds(value: float) -> str:
    """Docker takes whole seconds; round up so a timeout is never shortened."""
    if value < 0:
        raise ValueError(f"negative timeout {value!r}")
    return str(math.ceil(value))


def container_name(app: str, deploy_id: str) -> str:
    """``nd-<app>-<deploy_id>``: the name of one release of an app."""
    if not DEPLOY_ID_RE.match(deploy_id):
        raise ValueError(f"invalid deploy id {deploy_id!r} (8 lowercase hex digits)")
    return check_name(f"nd-{app}-{deploy_id}")


def app_labels(app: str, version: str, deploy_id: str, port: int, role: str = ROLE_APP) -> dict[str, str]:
    return {LABEL_APP: app, LABEL_VERSION: version, LABEL_DEPLOY_ID: deploy_id, LABEL_ROLE: role,
            LABEL_PORT: str(port)}


def run_container(
    name: str,
    image: str,
    *,
    command: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    env: Iterable[tuple[str, str]] = (),
    volumes: Iterable[str] = (),
    network: str | None = NETWORK,
    restart: str | None = "unless-stopped",
    publish: Iterable[str] = (),
    stop_timeout: float | None = None,
    detach: bool = True,
    remove: bool = False,
    interactive: bool = False,
    entrypoint: str | None = None,
) -> Argv:
    """``docker run`` for any container ndctl starts (apps, accessories, the proxy, one-offs).

    ``volumes`` are ``name:/path[:ro]`` strings, ``publish`` docker ``-p`` specs.
    """
    argv = ["docker", "run"]
    if detach:
        argv.append("-d")
    if interactive:
        argv.append("-i")
    if remove:
        argv.append("--rm")
    argv += ["--name", check_name(name)]
    if network:
        argv += ["--network", check_name(network, "network name")]
    if restart:
        if restart not in ("no", "always", "unless-stopped") and not re.fullmatch(r"on-failure(:\d+)?", restart):
            raise ValueError(f"invalid restart policy {restart!r}")
        argv += ["--restart", restart]
    if stop_timeout is not None:
        argv += ["--stop-timeout", _seconds(stop_timeout)]
    for k, v in (labels or {}).items():
        if not _LABEL_KEY_RE.match(k):
            raise ValueError(f"invalid label key {k!r}")
        argv += ["--label", f"{k}={v}"]
    for k, v in env:
        if not _ENV_KEY_RE.match(k):
            raise ValueError(f"invalid environment variable name {k!r}")
        argv += ["-e", f"{k}={v}"]
    for vol in volumes:
        if not isinstance(vol, str) or vol.startswith("-") or ":" not in vol:
            raise ValueError(f"invalid volume {vol!r}")
        argv += ["-v", vol]
    for p in publish:
        if not re.fullmatch(r"[0-9.:\[\]a-f/tcpud]+", p):
            raise ValueError(f"invalid port publication {p!r}")
        argv += ["-p", p]
    if entrypoint is not None:
        if not entrypoint.startswith("/"):
            raise ValueError(f"invalid entrypoint {entrypoint!r}")
        argv += ["--entrypoint", entrypoint]
    argv.append(_ref(image))
    argv += list(command)
    return argv


def run_app(spec: AppSpec, *, version: str, deploy_id: str, image: str | None = None,
            port: int | None = None, image_command: ImageCommand | None = None) -> Argv:
    """Start one release of an app: ``nd-<app>-<deploy_id>`` on the app network, not published.

    ``image`` overrides the spec's (rollback re-creates from a retained image id),
    as does ``port`` (that release's container port). With ``spec.secrets``,
    ``image_command`` (the image's entrypoint and command, :func:`image_command`)
    runs behind the secrets entrypoint wrapper (``ndctl.commands.secrets``).
    """
    port = port or spec.port
    labels = app_labels(spec.app, version, deploy_id, port)
    volumes = [str(v) for v in spec.volumes]
    command: Sequence[str] = spec.command
    entrypoint = None
    if getattr(spec, "secrets", ()):
        from ndctl.commands import secrets as sec

        if image_command is None:
            raise ValueError("an app with secrets needs the image's entrypoint and command")
        labels[sec.LABEL_SECRETS] = ",".join(spec.secrets)
        volumes += sec.mounts(spec.app)
        entrypoint = sec.CONTAINER_ENTRYPOINT
        command = [*image_command.entrypoint, *(spec.command or image_command.cmd)]
        if not command:
            raise ValueError(f"image {image or spec.image} has no entrypoint or command, and the app sets none")
    return run_container(
        container_name(spec.app, deploy_id),
        image or spec.image,
        command=command,
        labels=labels,
        env=spec.env,
        volumes=volumes,
        network=NETWORK,
        restart="unless-stopped",
        stop_timeout=spec.stop_timeout,
        entrypoint=entrypoint,
    )


@dataclass(frozen=True)
class ImageCommand:
    """An image's ``Config.Entrypoint`` and ``Config.Cmd``."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "ImageCommand":
        """The output of :func:`image_command`; ValueError when it is not that."""
        d = json.loads(text.strip().splitlines()[-1] if text.strip() else "")
        if not isinstance(d, dict):
            raise ValueError("not an object")
        return cls(tuple(d.get("entrypoint") or ()), tuple(d.get("cmd") or ()))


def image_command(ref: str) -> Argv:
    """One JSON object: the image's entrypoint and command (each a list, or null)."""
    return ["docker", "image", "inspect", "--format",
            '{"entrypoint":{{json .Config.Entrypoint}},"cmd":{{json .Config.Cmd}}}', _ref(ref)]


def start(*names: str) -> Argv:
    return ["docker", "start", *(check_name(n) for n in names)]


def stop(*names: str, timeout: float = 10) -> Argv:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    return ["docker", "stop", "-t", _seconds(timeout), *(check_name(n) for n in names)]


def rm(*names: str, force: bool = False) -> Argv:
    """Remove containers (``force`` also removes running ones). Volumes are never removed."""
    return ["docker", "rm", *(["-f"] if force else []), *(check_name(n) for n in names)]


def inspect_containers(*names: str) -> Argv:
    """One :data:`INSPECT_FORMAT` JSON object per line."""
    return ["docker", "container", "inspect", "--format", INSPECT_FORMAT, *(check_name(n) for n in names)]


def _label_filters(app: str | None, role: str | None, labels: Mapping[str, str] | None) -> list[str]:
    out: list[str] = []
    wanted = dict(labels or {})
    if app is not None:
        wanted[LABEL_APP] = check_name(app, "app name")
    if role is not None:
        wanted[LABEL_ROLE] = check_name(role, "role")
    for k, v in wanted.items():
        if not _LABEL_KEY_RE.match(k) or "," in v:
            raise ValueError(f"invalid label filter {k}={v}")
        out += ["--filter", f"label={k}={v}"]
    return out


def ps(*, app: str | None = None, role: str | None = None, labels: Mapping[str, str] | None = None,
       all: bool = True) -> Argv:
    """ndctl's containers (``com.nextdeploy.*`` labels), one :data:`PS_FORMAT` JSON object per line."""
    argv = ["docker", "ps", "--no-trunc"]
    if all:
        argv.append("--all")
    argv += _label_filters(app, role, labels) or ["--filter", f"label={LABEL_ROLE}"]
    return argv + ["--format", PS_FORMAT]


# ps then inspect in one round trip. A container removed between the two (only
# a delayed stop of ours runs concurrently, and it stops, never removes) makes
# inspect fail: list again once before reporting the error.
_LIST = (
    'for try in 1 2 3; do '
    'ids=$(docker ps --all --quiet --no-trunc --filter "label=$1=$2" --filter "label=$3=$4") || exit $?; '
    '[ -n "$ids" ] || exit 0; '
    'if [ "$try" = 3 ]; then exec docker container inspect --format "$0" $ids; fi; '
    'if out=$(docker container inspect --format "$0" $ids 2>/dev/null); then printf "%s\\n" "$out"; exit 0; fi; '
    'done'
)


def list_app_containers(app: str, role: str = ROLE_APP) -> Argv:
    """Every container of an app (running or not), one :data:`INSPECT_FORMAT` object per line."""
    return ["sh", "-c", _LIST, INSPECT_FORMAT, LABEL_APP, check_name(app, "app name"), LABEL_ROLE, check_name(role, "role")]


def image_id(ref: str) -> Argv:
    """Prints ``sha256:...``; exits non-zero when the host does not have the image."""
    return ["docker", "image", "inspect", "--format", "{{.Id}}", _ref(ref)]


def image_ids() -> Argv:
    """Every image id the host's engine has (``sha256:...``), one per line."""
    return ["docker", "image", "ls", "--no-trunc", "--quiet"]


def image_inspect(*refs: str) -> Argv:
    """One :data:`IMAGE_FORMAT` JSON object per line."""
    return ["docker", "image", "inspect", "--format", IMAGE_FORMAT, *(_ref(r) for r in refs)]


_PRUNE_IMAGES = 'for i do if docker image rm "$i" >/dev/null 2>&1; then printf "%s\\n" "$i"; fi; done; exit 0'


def prune_images(ids: Sequence[str]) -> Argv:
    """Remove the given images, printing each one removed.

    Not ``docker image prune``: only these ids, never another app's. An image
    still used by any container (a retained release) is refused by Docker and
    silently kept, so this never fails the deploy.
    """
    return ["sh", "-c", _PRUNE_IMAGES, "nd-prune-images", *(_ref(i, "image id") for i in ids)]


def pull(ref: str) -> Argv:
    return ["docker", "pull", "--quiet", _ref(ref)]


def load() -> Argv:
    """``docker load`` of a ``docker save`` stream on stdin."""
    return ["docker", "load", "--quiet"]


def save(*refs: str) -> Argv:
    """``docker save`` to stdout (run locally; piped into :func:`load` on the host)."""
    return ["docker", "save", *(_ref(r) for r in refs)]


def tag(source: str, target: str) -> Argv:
    return ["docker", "tag", _ref(source), _ref(target)]


def logs(name: str, *, follow: bool = False, since: str | None = None, tail: int | str | None = None,
         timestamps: bool = True) -> Argv:
    """``docker logs``; ``since`` is anything docker accepts (``10m``, RFC 3339, unix time)."""
    argv = ["docker", "logs"]
    if follow:
        argv.append("--follow")
    if timestamps:
        argv.append("--timestamps")
    if since is not None:
        if not re.fullmatch(r"[0-9A-Za-z.:+-]+", since) or since.startswith("-"):
            raise ValueError(f"invalid --since value {since!r}")
        argv.append(f"--since={since}")
    if tail is not None:
        if not (tail == "all" or (isinstance(tail, int) and not isinstance(tail, bool) and tail >= 0)):
            raise ValueError(f"invalid --tail value {tail!r}")
        argv.append(f"--tail={tail}")
    return argv + [check_name(name)]


def exec_in(name: str, command: Sequence[str], *, interactive: bool = False, tty: bool = False,
            user: str | None = None, workdir: str | None = None,
            env: Iterable[tuple[str, str]] = ()) -> Argv:
    """``docker exec`` of an exact argv inside a running container."""
    if not command:
        raise ValueError("no command given")
    argv = ["docker", "exec"]
    if interactive:
        argv.append("-i")
    if tty:
        argv.append("-t")
    if user is not None:
        argv.append(f"--user={user}")
    if workdir is not None:
        argv.append(f"--workdir={workdir}")
    for k, v in env:
        if not _ENV_KEY_RE.match(k):
            raise ValueError(f"invalid environment variable name {k!r}")
        argv += ["-e", f"{k}={v}"]
    return argv + [check_name(name), *command]


# Prints `created` or `exists`. Two deploys of different apps may race to
# create it: the loser finds it on the second look and succeeds too.
_ENSURE_NETWORK = (
    'if docker network inspect "$1" >/dev/null 2>&1; then echo exists; exit 0; fi; '
    'if err=$(docker network create --driver bridge --label "$2" "$1" 2>&1 >/dev/null); then echo created; exit 0; fi; '
    'if docker network inspect "$1" >/dev/null 2>&1; then echo exists; exit 0; fi; '
    'printf "%s\\n" "$err" >&2; exit 1'
)


def ensure_network(name: str = NETWORK) -> Argv:
    """Create the network if missing (idempotent); prints ``created`` or ``exists``."""
    return ["sh", "-c", _ENSURE_NETWORK, "nd-network", check_name(name, "network name"), f"{LABEL_ROLE}=network"]


__all__ = [
    "NETWORK", "PROXY_CONTAINER", "LABEL_APP", "LABEL_VERSION", "LABEL_DEPLOY_ID", "LABEL_ROLE", "LABEL_PORT",
    "ROLE_APP", "ROLE_ACCESSORY", "ROLE_PROXY", "INSPECT_FORMAT", "PS_FORMAT", "IMAGE_FORMAT",
    "check_name", "container_name", "app_labels", "run_container", "run_app", "start", "stop", "rm", "inspect_containers",
    "ps", "list_app_containers", "image_id", "image_inspect", "prune_images", "pull", "load", "save", "tag",
    "logs", "exec_in", "ensure_network", "ImageCommand", "image_command",
]
