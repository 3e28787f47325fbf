"""The local inventory: a human-edited YAML file of tagged hosts.

Reads and writes go through ruamel.yaml's round-trip mode so that the user's
ordering and comments survive every write. Writes are atomic (temporary file,
fsync, rename) under an advisory lock, and a file that does not parse is
reported with line and column and never overwritten.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml
# ruamel (round-trip, comment-keeping) is imported only where the inventory is written
# or an error needs a position: read-only commands never pay for it.

from ndctl.core.autotags import AutoTagThresholds
from ndctl.core.atomicfile import atomic_write
from ndctl.core.errors import ConflictError, InventoryError, NotFoundError, UsageError
from ndctl.core.selectors import select
from ndctl.core.yamlio import YamlSyntaxError, load_roundtrip

DEFAULT_HOME = Path("~/.nextdeploy")


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml, but with YAML 1.2 booleans as ruamel reads them: `yes`/`no`/`on`/`off` stay strings."""


_FastLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_FastLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
SCHEMA_VERSION = 1

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
HOST_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+\Z")

HOST_FIELDS = {
    "id", "address", "port", "user", "identity", "proxy_jump", "sudo",
    "tags", "auto_tags", "host_key", "registered_at", "ssh_name",
}
DEFAULT_FIELDS = {"user", "port", "identity", "proxy_jump", "sudo"}
SETTINGS_FIELDS = {"forks", "connect_timeout", "command_timeout", "ssh_config", "helper_dir",
                   "max_handshakes", "max_channels"}
TOP_FIELDS = {"version", "defaults", "settings", "autotags", "hosts", "environments", "operators", "access"}
ENV_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}\Z")  # secrets environments (also ndctl.core.secretstore)
OPERATOR_KEY_RE = re.compile(r"^age1[02-9ac-hj-np-z]{58}\Z")


def default_inventory_path() -> Path:
    env = os.environ.get("NDCTL_INVENTORY")
    if env:
        return Path(env).expanduser()
    return (DEFAULT_HOME / "inventory.yaml").expanduser()


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(
            f"invalid host name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise UsageError(
            f"invalid tag {tag!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return tag


def parse_tag_list(text: str | None) -> list[str]:
    """``"production, web,us-east"`` -> ``['production', 'web', 'us-east']`` (validated, deduplicated)."""
    if not text:
        return []
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        validate_tag(part)
        if part not in out:
            out.append(part)
    return out


def agent_id(name: str) -> str:
    """Short stable id: derived from the name, so every operator's inventory agrees."""
    return hashlib.sha256(f"ndctl-agent:{name}".encode()).hexdigest()[:8]


@dataclass
class Host:
    name: str
    address: str
    port: int = 22
    user: str = "root"
    identity: str | None = None
    proxy_jump: str | None = None
    sudo: bool = False
    tags: list[str] = field(default_factory=list)
    auto_tags: list[str] = field(default_factory=list)
    host_key: str | None = None
    registered_at: str | None = None
    ssh_name: str | None = None  # the ~/.ssh/config alias it was resolved from
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = agent_id(self.name)

    @property
    def all_tags(self) -> list[str]:
        return self.tags + [t for t in self.auto_tags if t not in self.tags]

    @property
    def target(self) -> str:
        """Where sshd is, as a key for per-target limits and known_hosts."""
        return f"[{self.address}]:{self.port}" if self.port != 22 else self.address

    def to_mapping(self, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """The YAML mapping; connection fields equal to the inventory's defaults are left out
        (so they keep following them), and any that differ are written out."""
        defaults = defaults or {}
        builtin = {"port": 22, "sudo": False, "identity": None, "proxy_jump": None}
        d: dict[str, Any] = {"id": self.id, "address": self.address}
        for k in ("port", "user", "identity", "proxy_jump", "sudo"):
            v = getattr(self, k)
            if k == "user" or v != defaults.get(k, builtin[k]):
                d[k] = v
        if self.ssh_name:
            d["ssh_name"] = self.ssh_name
        d["tags"] = list(self.tags)
        d["auto_tags"] = list(self.auto_tags)
        if self.host_key:
            d["host_key"] = self.host_key
        if self.registered_at:
            d["registered_at"] = self.registered_at
        return d


@dataclass
class Settings:
    forks: int = 100
    connect_timeout: float = 10.0
    command_timeout: float | None = None
    ssh_config: str | None = None  # None: ~/.ssh/config (or NDCTL_SSH_CONFIG)
    helper_dir: str = "/var/lib/nextdeploy"
    max_handshakes: int = 8  # per target sshd; keep below its MaxStartups (OpenSSH: 10)
    max_channels: int = 10  # per connection; keep at or below its MaxSessions (OpenSSH: 10)


def _where(node: Any, key: Any = None) -> str:
    try:
        from ruamel.yaml.comments import CommentedMap

        if key is not None and isinstance(node, CommentedMap):
            line, col = node.lc.key(key)
        else:
            line, col = node.lc.line, node.lc.col
        return f"line {line + 1}, column {col + 1}"
    except Exception:  # noqa: BLE001 - positions are best effort
        return "unknown position"


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.preserve_quotes = True
    y.width = 4096
    return y


class Inventory:
    """An inventory file, loaded; mutate it with the methods below, then ``save()``."""

    def __init__(self, path: Path, doc: dict, exists: bool, readonly: bool = False) -> None:
        self.path = path
        self._doc = doc
        self.exists = exists
        self.readonly = readonly
        self.hosts: dict[str, Host] = {}
        self.settings = Settings()
        self.defaults: dict[str, Any] = {}
        self.thresholds = AutoTagThresholds()
        self.environments: dict[str, str] = {}  # secrets: environment name -> host selector
        self.operators: dict[str, str] = {}  # secrets: operator name -> age x25519 recipient
        self.access_doc: dict[str, Any] = {}  # secrets: roles (ndctl.core.access.AccessPolicy)
        self._parse()

    # ----- loading ---------------------------------------------------------
    @classmethod
    def load(cls, path: Path | str | None = None, *, readonly: bool = False) -> "Inventory":
        """Load for update (round-trip, keeps comments), or ``readonly`` for speed.

        The read-only path parses with libyaml, several times faster than the
        round-trip parser on a large fleet; when the file has a problem it is
        parsed again the slow way, so the error still names line and column.
        """
        p = Path(path).expanduser() if path else default_inventory_path()
        if not p.exists():
            if readonly:
                return cls(p, {"version": SCHEMA_VERSION, "hosts": {}}, exists=False, readonly=True)
            from ruamel.yaml.comments import CommentedMap

            return cls(p, CommentedMap([("version", SCHEMA_VERSION), ("hosts", CommentedMap())]), exists=False)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise InventoryError(f"cannot read inventory {p}: {e.strerror}") from e
        if readonly:
            try:
                doc = yaml.load(text, Loader=_FastLoader)
                if doc is None:
                    doc = {}
                if isinstance(doc, dict):
                    if doc.get("hosts") is None:
                        doc["hosts"] = {}
                    return cls(p, doc, exists=True, readonly=True)
            except (yaml.YAMLError, InventoryError):
                pass  # reported below, with positions
        return cls.from_text(text, p)

    @classmethod
    def from_text(cls, text: str, path: Path | str = "<inventory>") -> "Inventory":
        from ruamel.yaml.comments import CommentedMap

        p = Path(path)
        try:
            doc = load_roundtrip(text, _yaml())
        except YamlSyntaxError as e:
            if not e.marked:
                raise InventoryError(f"{p}: invalid YAML: {e.problem}") from e
            where = f"line {e.line}, column {e.column}" if e.line else "unknown position"
            raise InventoryError(f"{p}: invalid YAML at {where}: {e.problem}") from e
        if doc is None:
            doc = CommentedMap()
        if not isinstance(doc, CommentedMap):
            raise InventoryError(f"{p}: the top level must be a mapping with a 'hosts:' key")
        doc.setdefault("hosts", CommentedMap())
        if doc["hosts"] is None:
            doc["hosts"] = CommentedMap()
        return cls(p, doc, exists=True)

    def _err(self, msg: str, node: Any = None, key: Any = None) -> InventoryError:
        where = f" ({_where(node, key)})" if node is not None else ""
        return InventoryError(f"{self.path}: {msg}{where}")

    def _parse(self) -> None:
        doc = self._doc
        for k in doc:
            if k not in TOP_FIELDS:
                raise self._err(f"unknown top-level key {k!r} (known: {', '.join(sorted(TOP_FIELDS))})", doc, k)
        version = doc.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise self._err(f"unsupported inventory version {version!r} (this ndctl reads version {SCHEMA_VERSION})", doc, "version")
        self.defaults = self._mapping(doc, "defaults", DEFAULT_FIELDS)
        settings = self._mapping(doc, "settings", SETTINGS_FIELDS)
        try:
            self.settings = Settings(**settings)
            self._check_settings()
        except TypeError as e:
            raise self._err(f"settings: {e}", doc, "settings") from e
        try:
            self.thresholds = AutoTagThresholds.from_mapping(self._mapping(doc, "autotags", None) or None)
        except InventoryError as e:
            raise self._err(e.message, doc, "autotags") from e
        self._parse_secrets_config(doc)
        hosts = doc["hosts"]
        if not isinstance(hosts, dict):
            raise self._err("'hosts' must be a mapping of host name to host", doc, "hosts")
        ids: dict[str, str] = {}
        for name, raw in hosts.items():
            host = self._parse_host(name, raw, hosts)
            if host.id in ids:
                raise self._err(f"hosts {ids[host.id]!r} and {name!r} share the id {host.id!r}", hosts, name)
            ids[host.id] = name
            self.hosts[name] = host

    def _parse_secrets_config(self, doc: dict) -> None:
        """``environments:``, ``operators:`` and ``access:`` (see docs/features/secrets.md)."""
        from ndctl.core.access import AccessPolicy
        from ndctl.core.errors import SelectorError
        from ndctl.core.selectors import parse_selector

        envs = self._mapping(doc, "environments", None)
        for name, sel in envs.items():
            if not isinstance(name, str) or not ENV_NAME_RE.match(name):
                raise self._err(f"environments: invalid name {name!r} (1-40 lowercase letters, digits, '_' or '-')",
                                doc["environments"], name)
            if not isinstance(sel, str) or not sel.strip():
                raise self._err(f"environments.{name} must be a host selector such as 'production'",
                                doc["environments"], name)
            try:
                parse_selector(sel)
            except SelectorError as e:
                raise self._err(f"environments.{name}: {e.message}", doc["environments"], name) from None
        self.environments = {str(k): str(v).strip() for k, v in envs.items()}
        ops = self._mapping(doc, "operators", None)
        for name, key in ops.items():
            if not isinstance(key, str) or not OPERATOR_KEY_RE.match(key):
                raise self._err(f"operators.{name} must be an age recipient (age1...)", doc["operators"], name)
        self.operators = {str(k): str(v) for k, v in ops.items()}
        self.access_doc = self._mapping(doc, "access", None)
        try:
            AccessPolicy.from_mapping(self.access_doc)
        except ValueError as e:
            raise self._err(f"access: {e}", doc, "access") from None

    def _mapping(self, doc: dict, key: str, allowed: set[str] | None) -> dict[str, Any]:
        val = doc.get(key)
        if val is None:
            return {}
        if not isinstance(val, dict):
            raise self._err(f"{key!r} must be a mapping", doc, key)
        if allowed is not None:
            for k in val:
                if k not in allowed:
                    raise self._err(f"{key}: unknown key {k!r} (known: {', '.join(sorted(allowed))})", val, k)
        return dict(val)

    def _check_settings(self) -> None:
        s = self.settings
        for k in ("forks", "max_handshakes", "max_channels"):
            v = getattr(s, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise self._err(f"settings.{k} must be a positive integer, not {v!r}", self._doc, "settings")
        for k in ("connect_timeout", "command_timeout"):
            v = getattr(s, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise self._err(f"settings.{k} must be a positive number of seconds, not {v!r}", self._doc, "settings")

    def _parse_host(self, name: Any, raw: Any, hosts: dict) -> Host:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise self._err(f"invalid host name {name!r}", hosts, name)
        if not isinstance(raw, dict):
            raise self._err(f"host {name!r} must be a mapping", hosts, name)
        for k in raw:
            if k not in HOST_FIELDS:
                raise self._err(f"host {name!r}: unknown key {k!r} (known: {', '.join(sorted(HOST_FIELDS))})", raw, k)
        merged = {**self.defaults, **dict(raw)}
        if not merged.get("address") or not isinstance(merged["address"], str):
            raise self._err(f"host {name!r}: 'address' is required", hosts, name)
        port = merged.get("port", 22)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise self._err(f"host {name!r}: port must be 1-65535, not {port!r}", raw, "port" if "port" in raw else None)
        for key in ("tags", "auto_tags"):
            tags = merged.get(key) or []
            if not isinstance(tags, list):
                raise self._err(f"host {name!r}: {key} must be a list", raw, key)
            for t in tags:
                if not isinstance(t, str) or not TAG_RE.match(t):
                    raise self._err(f"host {name!r}: invalid tag {t!r} in {key}", raw, key)
        hk = merged.get("host_key")
        if hk is not None and (not isinstance(hk, str) or not HOST_KEY_RE.match(hk)):
            raise self._err(f"host {name!r}: host_key must be an OpenSSH public key line ('ssh-ed25519 AAAA...')", raw, "host_key")
        sudo = merged.get("sudo", False)
        if not isinstance(sudo, bool):
            raise self._err(f"host {name!r}: sudo must be true or false", raw, "sudo")
        hid = merged.get("id") or agent_id(name)
        return Host(
            name=name,
            id=str(hid),
            address=merged["address"],
            port=port,
            user=str(merged.get("user") or "root"),
            identity=merged.get("identity"),
            proxy_jump=merged.get("proxy_jump"),
            sudo=sudo,
            tags=[str(t) for t in merged.get("tags") or []],
            auto_tags=[str(t) for t in merged.get("auto_tags") or []],
            host_key=hk,
            registered_at=str(merged["registered_at"]) if merged.get("registered_at") else None,
            ssh_name=merged.get("ssh_name"),
        )

    # ----- queries ---------------------------------------------------------
    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def __len__(self) -> int:
        return len(self.hosts)

    def select(self, selector: str | None) -> list[Host]:
        return select(self.hosts.values(), selector)

    def get(self, ref: str) -> Host:
        """A host by name, id, or unique id prefix (at least 4 characters)."""
        if ref in self.hosts:
            return self.hosts[ref]
        by_id = [h for h in self.hosts.values() if h.id == ref]
        if by_id:
            return by_id[0]
        if len(ref) >= 4:
            pref = [h for h in self.hosts.values() if h.id.startswith(ref)]
            if len(pref) == 1:
                return pref[0]
            if len(pref) > 1:
                raise UsageError(f"agent id prefix {ref!r} is ambiguous: {', '.join(h.name for h in pref)}")
        raise NotFoundError(f"no agent named or with id {ref!r} in {self.path}",
                            hint="`ndctl agent list` shows names and ids")

    def environment_hosts(self, env: str) -> list[Host]:
        """The hosts of a secrets environment (its selector may match none: an empty list)."""
        if env not in self.environments:
            known = ", ".join(sorted(self.environments)) or "none yet"
            raise NotFoundError(f"no environment {env!r} in {self.path} (known: {known})",
                                hint=f"`ndctl secrets env set {env} SELECTOR` maps it to hosts")
        return self._select_quiet(self.environments[env])

    def environments_of(self, host: Host) -> list[str]:
        return [e for e, sel in self.environments.items() if host.name in {h.name for h in self._select_quiet(sel)}]

    def _select_quiet(self, selector: str) -> list[Host]:
        from ndctl.core.errors import NoHostsMatched

        try:
            return select(self.hosts.values(), selector)
        except NoHostsMatched:
            return []

    # ----- mutations (applied to the round-trip document too) --------------
    def set_mapping_entry(self, section: str, key: str, value: str | None) -> None:
        """Set (or, with None, remove) one entry of ``environments:`` or ``operators:``."""
        self._writable()
        if section not in ("environments", "operators"):
            raise ValueError(section)
        from ruamel.yaml.comments import CommentedMap

        node = self._doc.get(section)
        if node is None:
            if value is None:
                return
            node = CommentedMap()
            # before `hosts:`, so the small sections stay at the top of a long file
            keys = list(self._doc.keys())
            pos = keys.index("hosts") if "hosts" in keys else len(keys)
            self._doc.insert(pos, section, node)
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
        self._parse_secrets_config(self._doc)

    def _writable(self) -> None:
        if self.readonly:
            raise RuntimeError("this Inventory was loaded read-only; use ndctl.core.inventory.locked() to change it")

    def upsert(self, host: Host) -> bool:
        """Add or update a host; returns True when it was new."""
        self._writable()
        validate_name(host.name)
        for other in self.hosts.values():
            if other.id == host.id and other.name != host.name:
                raise ConflictError(f"id {host.id!r} of {host.name!r} clashes with {other.name!r}")
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        hosts = self._doc["hosts"]
        new = host.name not in hosts
        data = host.to_mapping(self.defaults)
        if new:
            node = CommentedMap()
            hosts[host.name] = node
        else:
            node = hosts[host.name]
            # Drop keys the host no longer has; keep the order (and comments) of the rest, and
            # keep a hand-written field that merely repeats the default (`port: 22`).
            for k in [k for k in node if k not in data]:
                if not hasattr(host, k) or node[k] != getattr(host, k):
                    del node[k]
        for k, v in data.items():
            if isinstance(v, list):
                seq = CommentedSeq(v)
                seq.fa.set_flow_style()
                if k in node and isinstance(node[k], list) and list(node[k]) == v:
                    continue  # untouched: keep the user's formatting
                node[k] = seq
            elif node.get(k) != v:
                node[k] = v
        self.hosts[host.name] = host
        return new

    def remove(self, name: str) -> Host:
        self._writable()
        host = self.get(name)
        del self._doc["hosts"][host.name]
        del self.hosts[host.name]
        return host

    # ----- writing -----------------------------------------------------------
    def dumps(self) -> str:
        buf = io.StringIO()
        _yaml().dump(self._doc, buf)
        return buf.getvalue()

    def save(self) -> None:
        """Write atomically: a crash leaves either the old or the new file, never half of one."""
        self._writable()
        text = self.dumps()
        Inventory.from_text(text, self.path)  # never write what we could not read back
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o600
        atomic_write(self.path, text, mode)
        self.exists = True

    @property
    def home(self) -> Path:
        """ndctl's directory beside the inventory: known_hosts, caches, locks."""
        return self.path.parent

    @property
    def known_hosts_path(self) -> Path:
        return self.home / "known_hosts"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


@contextlib.contextmanager
def locked(path: Path | str | None = None) -> Iterator[Inventory]:
    """Load the inventory under an exclusive lock for a read-modify-write.

    Two ndctl processes (an operator and a cron refresh) never lose each
    other's changes: the second waits, then reads what the first wrote.
    """
    p = Path(path).expanduser() if path else default_inventory_path()
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = p.with_name(p.name + ".lock")
    with open(lock_path, "a") as lf:
        fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
        try:
            yield Inventory.load(p)
        finally:
            fcntl.flock(lf.fileno(), fcntl.LOCK_UN)

