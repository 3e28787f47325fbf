"""Host facts and metrics as reported by the remote helper (pure, stdlib only).

The helper (``ndctl/helper/ndhelper.py``) prints one JSON document per run.
:func:`parse_facts` and :func:`parse_metrics` check that document against the
shape the helper promises and wrap it in the frozen :class:`Facts` /
:class:`Metrics` value objects; anything else (not JSON, the helper's own
``{"error": ..., "kind": ...}`` document, a missing key, a wrong type) raises
:class:`ndctl.core.errors.RemoteError` with a message naming the problem.

Unknown extra keys are accepted (a newer helper may report more), missing or
mistyped known keys are not.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from ndctl.core.errors import RemoteError

GiB = 1024**3

#: GPU vendors that count as compute GPUs (``has_gpu``, the ``gpu-enabled`` tag).
COMPUTE_GPU_VENDORS = frozenset({"nvidia", "amd"})

# ---------------------------------------------------------------------------
# Validation: a tiny schema language.  Leaves are type names ("str", "int",
# "num", "bool", "labels"), "?" makes null acceptable; dicts are objects with
# required keys; one-element lists are arrays of that element.
# ---------------------------------------------------------------------------

FACTS_SCHEMA: dict[str, Any] = {
    "helper_version": "str",
    "collected_at": "num",
    "hostname": "str",
    "arch": "str",
    "machine": "str",
    "cpus": {"count": "int?", "model": "str?"},
    "memory": {"total_bytes": "int?", "available_bytes": "int?", "swap_total_bytes": "int?"},
    "disks": [
        {
            "mount": "str",
            "device": "str",
            "fstype": "str",
            "total_bytes": "int",
            "free_bytes": "int",
            "used_percent": "num",
        }
    ],
    "gpus": [{"vendor": "str", "pci_address": "str", "vendor_id": "str", "device_id": "str", "model": "str?"}],
    "os": {"id": "str", "version_id": "str?", "pretty_name": "str", "family": "str"},
    "kernel": {"release": "str", "version": "str"},
    "python": "str",
    "user": "str",
    "uid": "int",
    "docker": {"installed": "bool", "running": "bool", "version": "str?", "api_version": "str?", "error": "str?"},
    "containers": [
        {"id": "str", "name": "str", "image": "str", "state": "str", "status": "str", "labels": "labels"}
    ],
}

METRICS_SCHEMA: dict[str, Any] = {
    "collected_at": "num",
    "interval": "num",
    "cpu_percent": "num",
    "load": "load",
    "memory": {"total_bytes": "int?", "available_bytes": "int?", "used_percent": "num?"},
    "disks": [{"mount": "str", "total_bytes": "int", "free_bytes": "int", "used_percent": "num"}],
    "containers": [
        {"id": "str", "name": "str", "cpu_percent": "num?", "memory_bytes": "int?", "memory_limit_bytes": "int?"}
    ],
}

_TYPE_NAMES = {
    "str": "a string",
    "int": "a non-negative integer",
    "num": "a finite number",
    "bool": "a boolean",
    "labels": "an object of string labels",
    "load": "a list of 3 numbers",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _leaf_ok(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "num":
        return _is_num(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "labels":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if kind == "load":
        return isinstance(value, list) and len(value) == 3 and all(_is_num(v) for v in value)
    raise AssertionError(f"unknown schema type {kind!r}")  # pragma: no cover


def _check(value: Any, schema: Any, path: str, what: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise RemoteError(f"invalid {what}: {path or 'document'}: expected an object, got {_json_type(value)}")
        for key, sub in schema.items():
            sub_path = f"{path}.{key}" if path else key
            if key not in value:
                raise RemoteError(f"invalid {what}: missing key {sub_path!r}")
            _check(value[key], sub, sub_path, what)
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise RemoteError(f"invalid {what}: {path}: expected an array, got {_json_type(value)}")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{path}[{i}]", what)
        return
    kind = schema.rstrip("?")
    if value is None and schema.endswith("?"):
        return
    if not _leaf_ok(kind, value):
        expected = _TYPE_NAMES[kind] + (" or null" if schema.endswith("?") else "")
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise RemoteError(f"invalid {what}: {path}: expected {expected}, got {_json_type(value)} {shown}")


def _load_document(text: str | bytes, what: str) -> dict[str, Any]:
    """Decode the helper's stdout into a JSON object or raise RemoteError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RemoteError(f"invalid {what}: helper output is not UTF-8 ({e})") from None
    if not text.strip():
        raise RemoteError(f"invalid {what}: helper printed nothing")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        snippet = text.strip()[:80]
        raise RemoteError(
            f"invalid {what}: helper output is not JSON ({e.msg} at line {e.lineno} column {e.colno}): {snippet!r}"
        ) from None
    if not isinstance(doc, dict):
        raise RemoteError(f"invalid {what}: expected a JSON object, got {_json_type(doc)}")
    if "error" in doc:
        kind = doc.get("kind") or "error"
        raise RemoteError(f"helper failed collecting {what} ({kind}): {doc.get('error')}")
    return doc


# ---------------------------------------------------------------------------
# Value objects
# ---------------------------------------------------------------------------


class _ItemAccess:
    """``obj["field"]`` / ``obj.get("field")`` with the helper's JSON key names,
    for callers that treat disks, GPUs and containers as the raw dicts."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclass(frozen=True)
class Disk(_ItemAccess):
    mount: str
    total_bytes: int
    free_bytes: int
    used_percent: float
    device: str = ""
    fstype: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Disk:
        return cls(
            mount=d["mount"],
            total_bytes=d["total_bytes"],
            free_bytes=d["free_bytes"],
            used_percent=float(d["used_percent"]),
            device=d.get("device", ""),
            fstype=d.get("fstype", ""),
        )

    @property
    def free_percent(self) -> float:
        """Free space (available to unprivileged users) in percent of the size."""
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass(frozen=True)
class Gpu(_ItemAccess):
    vendor: str
    pci_address: str
    vendor_id: str
    device_id: str
    model: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Gpu:
        return cls(d["vendor"], d["pci_address"], d["vendor_id"], d["device_id"], d.get("model"))

    @property
    def is_compute(self) -> bool:
        """An NVIDIA or AMD GPU (a BMC's ASPEED VGA or an Intel iGPU is not)."""
        return self.vendor in COMPUTE_GPU_VENDORS


@dataclass(frozen=True)
class Container(_ItemAccess):
    id: str
    name: str
    image: str
    state: str
    status: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Container:
        return cls(d["id"], d["name"], d["image"], d["state"], d["status"], dict(d.get("labels") or {}))

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class ContainerUsage(_ItemAccess):
    id: str
    name: str
    cpu_percent: float | None  # like `docker stats`: 100 = one full core
    memory_bytes: int | None
    memory_limit_bytes: int | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContainerUsage:
        cpu = d["cpu_percent"]
        return cls(d["id"], d["name"], None if cpu is None else float(cpu), d["memory_bytes"], d["memory_limit_bytes"])


@dataclass(frozen=True)
class _HelperDocument:
    """A helper JSON document, validated against its schema, kept as ``raw``."""

    raw: Mapping[str, Any] = field(hash=False)
    _what: ClassVar[str] = "document"

    @classmethod
    def _schema(cls) -> Any:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        if not isinstance(d, Mapping):
            raise RemoteError(f"invalid {cls._what}: expected an object, got {_json_type(d)}")
        doc = copy.deepcopy(dict(d))
        _check(doc, cls._schema(), "", cls._what)
        return cls(doc)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.raw))


@dataclass(frozen=True)
class Facts(_HelperDocument):
    """Facts of one host: the helper's validated JSON plus typed accessors.

    Build it with :func:`parse_facts` (helper output) or :meth:`from_dict`
    (a cached document); both validate.
    """

    _what: ClassVar[str] = "facts"

    @classmethod
    def _schema(cls) -> Any:
        return FACTS_SCHEMA

    # --- identity ---
    @property
    def hostname(self) -> str:
        return self.raw["hostname"]

    @property
    def helper_version(self) -> str:
        return self.raw["helper_version"]

    @property
    def collected_at(self) -> float:
        return float(self.raw["collected_at"])

    @property
    def arch(self) -> str:
        """amd64 / arm64, else the raw ``uname -m``."""
        return self.raw["arch"]

    @property
    def machine(self) -> str:
        return self.raw["machine"]

    # --- CPU, memory ---
    @property
    def cpu_count(self) -> int | None:
        return self.raw["cpus"]["count"]

    @property
    def cpu_model(self) -> str | None:
        return self.raw["cpus"]["model"]

    @property
    def memory_total_bytes(self) -> int | None:
        return self.raw["memory"]["total_bytes"]

    @property
    def memory_available_bytes(self) -> int | None:
        return self.raw["memory"]["available_bytes"]

    # --- disks ---
    @property
    def disks(self) -> tuple[Disk, ...]:
        return tuple(Disk.from_dict(d) for d in self.raw["disks"])

    @property
    def root_disk(self) -> Disk | None:
        """The "/" filesystem, else the largest one, else None."""
        disks = self.disks
        for d in disks:
            if d.mount == "/":
                return d
        return max(disks, key=lambda d: d.total_bytes) if disks else None

    @property
    def disk_total_bytes(self) -> int | None:
        root = self.root_disk
        return root.total_bytes if root else None

    @property
    def disk_free_bytes(self) -> int | None:
        root = self.root_disk
        return root.free_bytes if root else None

    @property
    def disk_free_percent(self) -> float | None:
        root = self.root_disk
        return root.free_percent if root else None

    # --- GPUs ---
    @property
    def gpus(self) -> tuple[Gpu, ...]:
        """Every display controller, including BMC VGA chips."""
        return tuple(Gpu.from_dict(g) for g in self.raw["gpus"])

    @property
    def compute_gpus(self) -> tuple[Gpu, ...]:
        return tuple(g for g in self.gpus if g.is_compute)

    @property
    def has_gpu(self) -> bool:
        """True when an NVIDIA or AMD GPU is present (not for ASPEED/Intel/virtual VGA)."""
        return bool(self.compute_gpus)

    # --- OS ---
    @property
    def os_id(self) -> str:
        return self.raw["os"]["id"]

    @property
    def os_version_id(self) -> str | None:
        return self.raw["os"]["version_id"]

    @property
    def os_family(self) -> str:
        return self.raw["os"]["family"]

    @property
    def os_pretty(self) -> str:
        return self.raw["os"]["pretty_name"]

    @property
    def kernel(self) -> str:
        """Kernel release (``uname -r``)."""
        return self.raw["kernel"]["release"]

    @property
    def python_version(self) -> str:
        return self.raw["python"]

    # --- Docker ---
    @property
    def docker_installed(self) -> bool:
        return bool(self.raw["docker"]["installed"])

    @property
    def docker_running(self) -> bool:
        return bool(self.raw["docker"]["running"])

    @property
    def docker_version(self) -> str | None:
        """Engine version, None when Docker is not installed or not reachable."""
        docker = self.raw["docker"]
        return docker["version"] if docker["running"] else None

    @property
    def docker_error(self) -> str | None:
        return self.raw["docker"]["error"]

    @property
    def containers(self) -> tuple[Container, ...]:
        return tuple(Container.from_dict(c) for c in self.raw["containers"])

    # --- host list ---
    def summary(self) -> dict[str, Any]:
        """Short fields for a host list.

        ``{"arch": "amd64", "cpus": 8, "memory_gib": 15.6,
        "disk": "38.1/80.0 GiB free", "docker": "24.0.7"}``; docker is the
        engine version, ``"not running"`` or ``"not installed"``; unknown
        values are None.
        """
        total = self.memory_total_bytes
        root = self.root_disk
        if self.docker_version is not None:
            docker = self.docker_version
        elif self.docker_installed:
            docker = "not running"
        else:
            docker = "not installed"
        return {
            "arch": self.arch,
            "cpus": self.cpu_count,
            "memory_gib": round(total / GiB, 1) if total is not None else None,
            "disk": f"{root.free_bytes / GiB:.1f}/{root.total_bytes / GiB:.1f} GiB free" if root else None,
            "docker": docker,
        }


@dataclass(frozen=True)
class Metrics(_HelperDocument):
    """One ``metrics`` sample of a host (validated helper JSON + accessors)."""

    _what: ClassVar[str] = "metrics"

    @classmethod
    def _schema(cls) -> Any:
        return METRICS_SCHEMA

    @property
    def collected_at(self) -> float:
        return float(self.raw["collected_at"])

    @property
    def interval(self) -> float:
        """The requested sampling interval in seconds."""
        return float(self.raw["interval"])

    @property
    def window_seconds(self) -> float | None:
        """The real sampling window (>= ~1 s when containers run: the engine samples once a second)."""
        value = self.raw.get("window_seconds")
        return float(value) if _is_num(value) else None

    @property
    def cpu_percent(self) -> float:
        """Busy share of all CPUs of the host, 0..100."""
        return float(self.raw["cpu_percent"])

    @property
    def load(self) -> tuple[float, float, float]:
        a, b, c = self.raw["load"]
        return (float(a), float(b), float(c))

    @property
    def memory_total_bytes(self) -> int | None:
        return self.raw["memory"]["total_bytes"]

    @property
    def memory_available_bytes(self) -> int | None:
        return self.raw["memory"]["available_bytes"]

    @property
    def memory_used_percent(self) -> float | None:
        value = self.raw["memory"]["used_percent"]
        return None if value is None else float(value)

    @property
    def disks(self) -> tuple[Disk, ...]:
        return tuple(Disk.from_dict(d) for d in self.raw["disks"])

    @property
    def containers(self) -> tuple[ContainerUsage, ...]:
        return tuple(ContainerUsage.from_dict(c) for c in self.raw["containers"])

    @property
    def docker_error(self) -> str | None:
        value = self.raw.get("docker_error")
        return value if isinstance(value, str) else None


def parse_facts(text: str | bytes) -> Facts:
    """Parse and validate the stdout of ``ndhelper.py facts``.  Raises RemoteError."""
    return Facts.from_dict(_load_document(text, "facts"))


def parse_metrics(text: str | bytes) -> Metrics:
    """Parse and validate the stdout of ``ndhelper.py metrics``.  Raises RemoteError."""
    return Metrics.from_dict(_load_document(text, "metrics"))


__all__ = [
    "COMPUTE_GPU_VENDORS",
    "Container",
    "ContainerUsage",
    "Disk",
    "Facts",
    "GiB",
    "Gpu",
    "Metrics",
    "parse_facts",
    "parse_metrics",
]
