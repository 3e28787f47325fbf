"""``nextdeploy.yaml``: how ``ndctl deploy`` runs one app (like Kamal's ``config/deploy.yml``).

Loaded with ruamel's round-trip parser so every error names the field and its
line. The result is a tree of frozen dataclasses; CLI flags override the file
through :func:`apply_overrides`, which validates exactly like the loader.

Durations are numbers of seconds or ``500ms``, ``30s``, ``5m``, ``1h`` (and
sums such as ``1m30s``).
"""
from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ndctl.core.errors import SelectorError, UsageError
from ndctl.core.secretstore import SECRET_NAME_RE
from ndctl.core.selectors import parse_selector
from ndctl.core.yamlio import YamlSyntaxError, load_roundtrip
from ndctl.core.health import HealthCheck, cross_check, format_duration, parse_expect

DEFAULT_FILENAME = "nextdeploy.yaml"
STRATEGIES = ("blue-green", "recreate")
PROXY_KINDS = ("caddy", "nginx")
DEFAULT_PROXY_IMAGES = {"caddy": "caddy:2-alpine", "nginx": "nginx:stable-alpine"}

# The app name becomes a container name (nd-<app>-<id>), a directory under
# /var/lib/nextdeploy/apps and a route file name: keep it to safe characters.
APP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}\Z")
# Docker's own reference grammar is looser to parse than to explain; this accepts
# every reference docker accepts that an operator would write, never a leading '-'.
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}\Z")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,127}\Z")  # docker: at least 2 characters
HOSTNAME_RE = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

TOP_FIELDS = ("app", "image", "port", "command", "tags", "health_check", "env", "volumes", "proxy",
              "strategy", "parallel", "drain", "grace", "stop_timeout", "retain", "registry", "secrets")
HEALTH_FIELDS = ("path", "port", "status", "host", "interval", "timeout", "successes", "failures",
                 "start_period", "deadline")
PROXY_FIELDS = ("kind", "hosts", "image", "tls")
REGISTRY_FIELDS = ("server", "username", "password_env")
DEFAULT_PASSWORD_ENV = "NDCTL_REGISTRY_PASSWORD"
REGISTRY_SERVER_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})(:\d{1,5})?\Z")


class AppSpecError(UsageError):
    """An invalid ``nextdeploy.yaml`` or override; the message names the field."""


# --------------------------------------------------------------------------- values
def parse_duration(value: Any, what: str = "duration") -> float:
    """``30`` / ``2.5`` / ``"30s"`` / ``"5m"`` / ``"1h"`` / ``"1m30s"`` / ``"500ms"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration such as 30s, 5m, 1h or a number of seconds, not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or pos == 0:
                raise ValueError(
                    f"{what}: {value!r} is not a duration (use 30s, 5m, 1h, 500ms or a number of seconds)"
                ) from None
    else:
        raise ValueError(f"{what}: expected a duration such as 30s, 5m, 1h or a number of seconds, not {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what}: must be a non-negative duration, not {value!r}")
    return seconds


def parse_status(value: Any) -> tuple[tuple[int, int], ...]:
    """``200`` / ``"200-399"`` / ``"200,301-302"`` / ``[200, "301-302"]`` -> ranges ((lo, hi), ...)."""
    try:
        return parse_expect(value, "status")
    except UsageError as e:
        raise ValueError(str(e).removeprefix("status: ")) from None


def parse_parallel(value: Any) -> Parallelism:
    """``2`` -> two hosts per batch; ``"25%"`` -> a quarter of the hosts (at least one)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a host count or percentage")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be at least 1, not {value}")
        return Parallelism(count=value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):
            return parse_parallel(int(text))
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
        if m:
            pct = float(m.group(1))
            if not 0 < pct <= 100:
                raise ValueError(f"percentage must be in (0, 100], not {value!r}")
            return Parallelism(percent=pct)
    raise ValueError(f"{value!r} is not a host count (2) or a percentage (25%)")


def parse_volume(text: Any) -> Volume:
    """``name:/path`` or ``name:/path:ro`` (named volumes only; host paths are not mounted)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a volume (use name:/path or name:/path:ro)")
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{text!r} is not a volume (use name:/path or name:/path:ro)")
    name, path = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if name.startswith(("/", ".", "~")):
        raise ValueError(f"{text!r}: host paths are not supported, only named volumes (name:/path)")
    if not VOLUME_NAME_RE.match(name):
        raise ValueError(f"{text!r}: volume name {name!r} must be letters, digits, '_', '.' or '-' "
                         "(at least 2 characters, starting with a letter or digit)")
    if not path.startswith("/") or path == "/" or "," in path or any(ord(c) < 32 for c in path):
        raise ValueError(f"{text!r}: the container path must be absolute, not / (and without ',')")
    if mode not in ("ro", "rw"):
        raise ValueError(f"{text!r}: mode must be ro or rw, not {mode!r}")
    return Volume(name=name, path=path, read_only=mode == "ro")


def default_version(image: str) -> str:
    """The version recorded for an image: its tag, else a short digest, else ``latest``."""
    ref, _, digest = image.partition("@")
    if digest:
        return digest.split(":", 1)[-1][:12]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def validate_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise AppSpecError(
            f"invalid version {version!r}: use 1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit")
    return version


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Parallelism:
    """How many hosts a rolling deploy changes at once: a count or a percentage."""

    count: int | None = None
    percent: float | None = None

    def batch_size(self, n_hosts: int) -> int:
        if n_hosts <= 0:
            return 1
        if self.percent is not None:
            return max(1, min(n_hosts, math.ceil(n_hosts * self.percent / 100 - 1e-9)))
        return max(1, min(n_hosts, self.count or 1))

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return str(self.count or 1)


@dataclass(frozen=True)
class Volume:
    name: str
    path: str
    read_only: bool = False

    def __str__(self) -> str:
        return f"{self.name}:{self.path}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class ProxySpec:
    kind: str = "caddy"
    hosts: tuple[str, ...] = ()  # empty: every Host header (one such app per host)
    image: str | None = None  # None: DEFAULT_PROXY_IMAGES[kind]
    tls: str = "off"  # off | auto (ACME certificates for hosts) | internal (Caddy's local CA)

    @property
    def image_ref(self) -> str:
        return self.image or DEFAULT_PROXY_IMAGES[self.kind]


@dataclass(frozen=True)
class RegistrySpec:
    """Where hosts pull the image from, and as whom. The password is never in the file: it
    is read on the operator's machine from ``password_env`` (or ``--registry-password-stdin``)
    and reaches each host's ``docker login --password-stdin`` on stdin only."""

    username: str
    server: str | None = None  # None: Docker Hub
    password_env: str = DEFAULT_PASSWORD_ENV


@dataclass(frozen=True)
class AppSpec:
    app: str
    image: str  # "" only when loaded with require_image=False and no --image yet
    port: int
    command: tuple[str, ...] = ()  # empty: the image's CMD
    tags: str = "*"
    health_check: HealthCheck = HealthCheck()
    env: tuple[tuple[str, str], ...] = ()
    volumes: tuple[Volume, ...] = ()
    proxy: ProxySpec = ProxySpec()
    strategy: str = "blue-green"
    parallel: Parallelism = Parallelism(count=1)
    drain: float = 30.0  # long-lived connections keep going this long after the switch
    grace: float = 300.0  # the old container stops this long after the switch
    stop_timeout: float = 10.0  # SIGTERM -> SIGKILL when a container is stopped
    retain: int = 3  # previous releases kept (stopped) for rollback
    registry: RegistrySpec | None = None  # set: hosts pull the image (with a throw-away login)
    secrets: tuple[str, ...] = ()  # names from `ndctl secrets`: /run/secrets/NAME and $NAME in the app
    path: str | None = field(default=None, compare=False)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def health_port(self) -> int:
        return self.health_check.port or self.port

    def to_mapping(self) -> dict[str, Any]:
        """A plain mapping (``-o json``); loads back to an equal spec."""
        hc = self.health_check
        health: dict[str, Any] = {
            "path": hc.path, "status": hc.status_text, "interval": format_duration(hc.interval),
            "timeout": format_duration(hc.timeout), "successes": hc.successes, "failures": hc.failures,
            "start_period": format_duration(hc.start_period), "deadline": format_duration(hc.deadline)}
        if hc.port is not None:
            health["port"] = hc.port
        if hc.host is not None:
            health["host"] = hc.host
        proxy: dict[str, Any] = {"kind": self.proxy.kind, "hosts": list(self.proxy.hosts)}
        if self.proxy.tls != "off":
            proxy["tls"] = self.proxy.tls
        if self.proxy.image:
            proxy["image"] = self.proxy.image
        out: dict[str, Any] = {"app": self.app, "image": self.image, "port": self.port}
        if self.command:
            out["command"] = list(self.command)
        out.update({
            "tags": self.tags, "health_check": health, "env": dict(self.env),
            "volumes": [str(v) for v in self.volumes], "proxy": proxy, "strategy": self.strategy,
            "parallel": str(self.parallel) if self.parallel.percent is not None else self.parallel.count,
            "drain": format_duration(self.drain), "grace": format_duration(self.grace),
            "stop_timeout": format_duration(self.stop_timeout), "retain": self.retain,
        })
        if self.registry is not None:
            reg = {"username": self.registry.username, "password_env": self.registry.password_env}
            if self.registry.server:
                reg["server"] = self.registry.server
            out["registry"] = reg
        if self.secrets:
            out["secrets"] = list(self.secrets)
        return out


# --------------------------------------------------------------------------- loading
def _pos(node: Any, key: Any = None) -> tuple[int, int] | None:
    try:
        if key is None:
            return node.lc.line + 1, node.lc.col + 1
        if isinstance(key, int) and isinstance(node, list):
            line, col = node.lc.item(key)
        else:
            line, col = node.lc.key(key)
        return line + 1, col + 1
    except Exception:
        return None


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def err(self, field_: str, msg: str, node: Any = None, key: Any = None) -> AppSpecError:
        pos = _pos(node, key) if node is not None else None
        where = f" (line {pos[0]}, column {pos[1]})" if pos else ""
        return AppSpecError(f"{self.source}: {field_}: {msg}{where}",
                            hint="`ndctl deploy init` writes a commented example")

    def mapping(self, node: Any, field_: str, allowed: Iterable[str], parent: Any, key: Any) -> dict:
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise self.err(field_, f"must be a mapping, not {type(node).__name__}", parent, key)
        known = tuple(allowed)
        for k in node:
            if k not in known:
                name = f"{field_}.{k}" if field_ else str(k)
                raise self.err(name, f"unknown field (known: {', '.join(known)})", node, k)
        return node

    def check(self, fn: Any, value: Any, field_: str, node: Any, key: Any) -> Any:
        try:
            return fn(value)
        except ValueError as e:
            raise self.err(field_, str(e), node, key) from None


def _int(value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"must be an integer {lo}-{hi}, not {value!r}")
    return value


def _positive_duration(value: Any) -> float:
    d = parse_duration(value, "value")
    if d <= 0:
        raise ValueError(f"must be greater than zero, not {value!r}")
    return d


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value


def _app_name(value: Any) -> str:
    if not isinstance(value, str) or not APP_RE.match(value):
        raise ValueError(f"{value!r} is not a valid app name: use 1-40 lowercase letters, digits, '_' or '-', "
                         "starting with a letter or digit")
    return value


def _image(value: Any) -> str:
    if not isinstance(value, str) or not IMAGE_RE.match(value):
        raise ValueError(f"{value!r} is not an image reference (e.g. registry.example.com/web:1.2.3)")
    return value


def _selector(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a host selector such as 'web,production' or '*', not {value!r}")
    try:
        parse_selector(value)
    except SelectorError as e:
        raise ValueError(e.message) from None
    return value.strip()


def _strategy(value: Any) -> str:
    if value not in STRATEGIES:
        raise ValueError(f"{value!r} is not a strategy (use {' or '.join(STRATEGIES)})")
    return value


def _health_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an HTTP path (it starts with '/' and has no spaces)")
    return value


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as e:
            raise ValueError(f"{value!r}: {e}") from None
    elif isinstance(value, list) and all(isinstance(w, str) for w in value):
        words = list(value)
    else:
        raise ValueError("must be a command line string or a list of strings")
    if not words:
        raise ValueError("is empty (leave it out to use the image's CMD)")
    return tuple(words)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"values must be plain strings or numbers, not {type(value).__name__}")


def _secret_name(value: Any) -> str:
    if not isinstance(value, str) or not SECRET_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a secret name (letters, digits and '_', not starting with a digit)")
    return value


def _secret_names(r: "_Reader | None", value: Any, node: Any = None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("must be a list of secret names, e.g. [DB_PASSWORD, API_TOKEN]")
    out: list[str] = []
    for i, v in enumerate(value):
        name = r.check(_secret_name, v, f"secrets[{i}]", value if hasattr(value, "lc") else node,
                       i if hasattr(value, "lc") else "secrets") if r else _secret_name(v)
        if name not in out:
            out.append(name)
    return tuple(out)


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.match(value) or len(value) > 253:
        raise ValueError(f"{value!r} is not a host name (example.com, *.example.com, localhost)")
    return value.lower()


def _health(r: _Reader, node: Any, parent: Any) -> HealthCheck:
    if isinstance(node, str):  # shorthand: just the path
        return HealthCheck(path=r.check(_health_path, node, "health_check", parent, "health_check"))
    m = r.mapping(node, "health_check", HEALTH_FIELDS, parent, "health_check")
    kw: dict[str, Any] = {}
    checks = {
        "path": _health_path,
        "port": lambda v: _int(v, 1, 65535),
        "status": parse_status,
        "host": _hostname,
        "interval": _positive_duration,
        "timeout": _positive_duration,
        "successes": lambda v: _int(v, 1, 100),
        "failures": lambda v: _int(v, 0, 100),
        "start_period": lambda v: parse_duration(v, "value"),
        "deadline": _positive_duration,
    }
    for k, fn in checks.items():
        if k in m:
            kw[k] = r.check(fn, m[k], f"health_check.{k}", m, k)
    wrong = cross_check(**{k: kw.get(k, getattr(HealthCheck, k))
                           for k in ("interval", "timeout", "successes", "start_period", "deadline")})
    if wrong:
        f, msg = wrong
        raise r.err(f"health_check.{f}", msg, m, f if f in m else None)
    return HealthCheck(**kw)


def _proxy(r: _Reader, node: Any, parent: Any) -> ProxySpec:
    m = r.mapping(node, "proxy", PROXY_FIELDS, parent, "proxy")
    kind = m.get("kind", "caddy")
    if kind not in PROXY_KINDS:
        raise r.err("proxy.kind", f"{kind!r} is not a proxy (use caddy or nginx)", m, "kind")
    hosts_raw = m.get("hosts", [])
    if isinstance(hosts_raw, str):
        hosts_raw = [hosts_raw]
    if not isinstance(hosts_raw, list):
        raise r.err("proxy.hosts", "must be a list of host names", m, "hosts")
    hosts: list[str] = []
    for i, h in enumerate(hosts_raw):
        h = r.check(_hostname, h, f"proxy.hosts[{i}]", hosts_raw if hasattr(hosts_raw, "lc") else m,
                    i if hasattr(hosts_raw, "lc") else "hosts")
        if h not in hosts:
            hosts.append(h)
    image = r.check(_image, m["image"], "proxy.image", m, "image") if m.get("image") is not None else None
    tls = m.get("tls", "off")
    if tls is False:  # YAML's `tls: off` is a boolean
        tls = "off"
    if tls not in ("off", "auto", "internal"):
        raise r.err("proxy.tls", f"{tls!r} is not off, auto or internal", m, "tls")
    if tls != "off" and kind != "caddy":
        raise r.err("proxy.tls", "TLS is managed by the caddy proxy only (kind: caddy)", m, "tls")
    if tls != "off" and not hosts:
        raise r.err("proxy.tls", "needs proxy.hosts: certificates are issued per host name", m, "tls")
    return ProxySpec(kind=kind, hosts=tuple(hosts), image=image, tls=tls)


def _registry_server(value: Any) -> str:
    if not isinstance(value, str) or not REGISTRY_SERVER_RE.match(value):
        raise ValueError(f"{value!r} is not a registry host name (registry.example.com, ghcr.io, "
                         "127.0.0.1:5000; no scheme, no path)")
    return value


def _registry_user(value: Any) -> str:
    if not isinstance(value, str) or not value or value.startswith("-") or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a user name (non-empty, no spaces, not starting with '-')")
    return value


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not ENV_KEY_RE.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _registry(r: _Reader, node: Any, parent: Any) -> RegistrySpec:
    m = r.mapping(node, "registry", REGISTRY_FIELDS, parent, "registry")
    if m.get("username") is None:
        raise r.err("registry.username", "is required (the password comes from the environment variable "
                                         f"named by password_env, default {DEFAULT_PASSWORD_ENV})", parent, "registry")
    return RegistrySpec(
        username=r.check(_registry_user, m["username"], "registry.username", m, "username"),
        server=r.check(_registry_server, m["server"], "registry.server", m, "server")
        if m.get("server") is not None else None,
        password_env=r.check(_env_name, m["password_env"], "registry.password_env", m, "password_env")
        if m.get("password_env") is not None else DEFAULT_PASSWORD_ENV)


def parse_appspec(text: str, source: str = DEFAULT_FILENAME, *, require_image: bool = True) -> AppSpec:
    """Parse and validate the text of a ``nextdeploy.yaml``."""
    r = _Reader(source)
    try:
        doc = load_roundtrip(text)
    except YamlSyntaxError as e:
        where = f" (line {e.line}, column {e.column})" if e.line else ""
        raise AppSpecError(f"{source}: invalid YAML: {e.problem}{where}") from None
    if not isinstance(doc, dict):
        raise AppSpecError(f"{source}: the top level must be a mapping with at least 'app:' and 'port:'",
                           hint="`ndctl deploy init` writes a commented example")
    r.mapping(doc, "", TOP_FIELDS, None, None)
    for required in ("app", "port") + (("image",) if require_image else ()):
        if doc.get(required) is None:
            hint = " (or pass --image)" if required == "image" else ""
            raise r.err(required, f"is required{hint}", doc if required in doc else None, required)

    kw: dict[str, Any] = {
        "app": r.check(_app_name, doc["app"], "app", doc, "app"),
        "image": r.check(_image, doc["image"], "image", doc, "image") if doc.get("image") is not None else "",
        "port": r.check(lambda v: _int(v, 1, 65535), doc["port"], "port", doc, "port"),
        "path": source,
    }
    if doc.get("command") is not None:
        kw["command"] = r.check(_command, doc["command"], "command", doc, "command")
    if "tags" in doc:
        kw["tags"] = r.check(_selector, doc["tags"], "tags", doc, "tags")
    if doc.get("health_check") is not None:
        kw["health_check"] = _health(r, doc["health_check"], doc)
    if doc.get("env") is not None:
        env = r.mapping(doc["env"], "env", (), doc, "env") if not isinstance(doc["env"], dict) else doc["env"]
        pairs = []
        for k, v in env.items():
            if not isinstance(k, str) or not ENV_KEY_RE.match(k):
                raise r.err(f"env.{k}", "is not a variable name (letters, digits and '_', not starting with a digit)",
                            env, k)
            pairs.append((k, r.check(_env_value, v, f"env.{k}", env, k)))
        kw["env"] = tuple(pairs)
    if doc.get("volumes") is not None:
        vols = doc["volumes"]
        if not isinstance(vols, list):
            raise r.err("volumes", "must be a list of name:/path[:ro]", doc, "volumes")
        parsed = tuple(r.check(parse_volume, v, f"volumes[{i}]", vols, i) for i, v in enumerate(vols))
        paths = [v.path for v in parsed]
        dup = next((p for p in paths if paths.count(p) > 1), None)
        if dup:
            raise r.err("volumes", f"two volumes are mounted at {dup}", doc, "volumes")
        kw["volumes"] = parsed
    if "proxy" in doc:
        kw["proxy"] = _proxy(r, doc["proxy"], doc)
    if "strategy" in doc:
        kw["strategy"] = r.check(_strategy, doc["strategy"], "strategy", doc, "strategy")
    if "parallel" in doc:
        kw["parallel"] = r.check(parse_parallel, doc["parallel"], "parallel", doc, "parallel")
    for k in ("drain", "grace", "stop_timeout"):
        if k in doc:
            kw[k] = r.check(lambda v: parse_duration(v, "value"), doc[k], k, doc, k)
    if "retain" in doc:
        kw["retain"] = r.check(lambda v: _int(v, 1, 100), doc["retain"], "retain", doc, "retain")
    if doc.get("registry") is not None:
        kw["registry"] = _registry(r, doc["registry"], doc)
    if doc.get("secrets") is not None:
        kw["secrets"] = r.check(lambda v: _secret_names(r, v, doc), doc["secrets"], "secrets", doc, "secrets")
    spec = AppSpec(**kw)
    if spec.grace < spec.drain:
        raise r.err("grace", f"{format_duration(spec.grace)} is shorter than drain ({format_duration(spec.drain)}): "
                             "the old container would stop while connections still drain", doc,
                    "grace" if "grace" in doc else "drain")
    return spec


def load_appspec(path: str | Path = DEFAULT_FILENAME, *, require_image: bool = True) -> AppSpec:
    """Load ``nextdeploy.yaml``; raises AppSpecError (a UsageError) naming the field and line.

    ``require_image=False`` when ``--image`` will supply it (see :func:`apply_overrides`).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AppSpecError(f"no app definition: {p} does not exist",
                           hint="`ndctl deploy init` writes a commented example") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AppSpecError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    return parse_appspec(text, str(p), require_image=require_image)


def apply_overrides(
    spec: AppSpec,
    *,
    image: str | None = None,
    tags: str | None = None,
    strategy: str | None = None,
    health_check: str | None = None,
    parallel: str | int | None = None,
    registry_server: str | None = None,
    registry_user: str | None = None,
    secrets: Iterable[str] | None = None,
) -> AppSpec:
    """CLI flags over the file; ``None`` keeps the file's value. Errors name the flag.

    ``secrets`` (``--secret``, repeatable) adds to the file's list."""

    def check(fn: Any, value: Any, flag: str) -> Any:
        try:
            return fn(value)
        except ValueError as e:
            raise AppSpecError(f"{flag}: {e}") from None

    changes: dict[str, Any] = {}
    if image is not None:
        changes["image"] = check(_image, image, "--image")
    if tags is not None:
        changes["tags"] = check(_selector, tags, "--tags")
    if strategy is not None:
        changes["strategy"] = check(_strategy, strategy, "--strategy")
    if health_check is not None:
        changes["health_check"] = replace(spec.health_check, path=check(_health_path, health_check, "--health-check"))
    if parallel is not None:
        changes["parallel"] = check(parse_parallel, parallel, "--parallel")
    if registry_server is not None or registry_user is not None:
        base = spec.registry
        if base is None and registry_user is None:
            raise AppSpecError("--registry-server: also give --registry-user (or a registry: section in the file)")
        changes["registry"] = RegistrySpec(
            username=check(_registry_user, registry_user, "--registry-user") if registry_user is not None
            else base.username,
            server=check(_registry_server, registry_server, "--registry-server") if registry_server is not None
            else (base.server if base else None),
            password_env=base.password_env if base else DEFAULT_PASSWORD_ENV)
    if secrets:
        names = tuple(check(_secret_name, n, "--secret") for n in secrets)
        changes["secrets"] = tuple(dict.fromkeys(spec.secrets + names))
    out = replace(spec, **changes)
    if not out.image:
        raise AppSpecError(f"{spec.path or DEFAULT_FILENAME}: image: is required (set image: or pass --image)")
    return out


_EXAMPLE = """\
# nextdeploy.yaml: how `ndctl deploy` runs this app on your hosts.
# Every field but app, image and port is optional; the values shown are the defaults
# unless the comment says otherwise. CLI flags override this file: --image, --tags,
# --strategy, --health-check, --parallel.

app: web                    # lowercase letters, digits, '-' and '_' (container names: nd-web-<id>)
image: ghcr.io/acme/web:1.0.0
                            # pulled from its registry, or shipped over SSH (docker save | docker load)
                            # when it only exists locally; the version recorded is its tag
port: 8080                  # the port the app listens on inside its container (not published)
# command: ["bundle", "exec", "puma"]   # default: the image's CMD

tags: "*"                   # which hosts: a --tags selector, e.g. "web,production" or "name:web-*"

health_check:
  path: /                   # probed over HTTP from inside the app network
  # port: 8080              # default: port
  status: 200-399           # accepted codes: 200, "200-299", or a list [200, "301-302"];
                            # 3xx is accepted so a login redirect does not fail the deploy
  # host: example.com       # Host header to send (apps that check it)
  interval: 1s              # time between probes
  timeout: 2s               # per probe
  successes: 2              # consecutive successes needed
  failures: 3               # fail early after this many consecutive wrong statuses (0: only at the deadline)
  start_period: 0s          # wrong statuses in this time after start do not count towards failures
  deadline: 1m              # give up (and keep the old version serving) after this

env:                        # plain values only (they show in `docker inspect`); secrets below
  RACK_ENV: production
  LOG_LEVEL: info

secrets: []                 # names set with `ndctl secrets set NAME --env ENV`, e.g. [DB_PASSWORD];
                            # the app gets each as file /run/secrets/NAME and env var NAME
                            # (never in `docker inspect`); --secret NAME adds more

volumes: []                 # named volumes, e.g. ["uploads:/app/uploads", "certs:/certs:ro"]

proxy:
  kind: caddy               # caddy (default) or nginx
  hosts: [example.com]      # Host headers routed to this app; [] = every request
  # image: caddy:2-alpine   # default per kind: caddy:2-alpine, nginx:stable-alpine
  # tls: auto               # caddy: HTTPS on 443 for hosts, certificates by ACME (public DNS
                            #   and ports 80/443 reachable), HTTP redirected; internal: Caddy's
                            #   own CA (private networks); off (default): plain HTTP on 80

strategy: blue-green        # or recreate: stop, then start (NOT zero-downtime)
parallel: 1                 # hosts per rolling batch: a count or a percentage ("25%")
drain: 30s                  # long-lived connections (WebSockets, streams) keep this long after the switch
grace: 5m                   # the old container stops this long after the switch
stop_timeout: 10s           # SIGTERM, then SIGKILL after this
retain: 3                   # previous releases kept (stopped) for `ndctl rollback`

# registry:                 # set it and the hosts pull the image (docker login into a throw-away
#   server: ghcr.io         #   config, removed after the pull) instead of receiving it over SSH
#   username: deploy        # default server: Docker Hub
#   password_env: NDCTL_REGISTRY_PASSWORD   # read on YOUR machine; never written anywhere
"""


def example_yaml() -> str:
    """The commented example ``ndctl deploy init`` writes (it loads back to a valid spec)."""
    return _EXAMPLE


__all__ = [
    "AppSpec", "AppSpecError", "HealthCheck", "Parallelism", "ProxySpec", "RegistrySpec", "Volume",
    "DEFAULT_FILENAME", "STRATEGIES", "PROXY_KINDS", "DEFAULT_PROXY_IMAGES",
    "apply_overrides", "default_version", "example_yaml", "format_duration", "load_appspec",
    "parse_appspec", "parse_duration", "parse_parallel", "parse_status", "parse_volume", "validate_version",
]
