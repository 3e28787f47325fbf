"""Tests of ``ndctl.core.autotags`` over the facts files of ``tests/data/facts``
(described at the top of ``test_facts.py``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ndctl.core import autotags
from ndctl.core.autotags import AutoTagThresholds, compute_auto_tags
from ndctl.core.errors import ExitStatus, InventoryError
from ndctl.core.facts import GiB, Facts, parse_facts

FACTS_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "facts"


def load(name: str) -> Facts:
    return parse_facts((FACTS_DIR / name).read_text())


def raw(name: str) -> dict:
    return json.loads((FACTS_DIR / name).read_text())


DEFAULT = AutoTagThresholds()

TABLE = [
    # the dev machine: 23.5 GiB, 31 % of "/" free, dockerd running
    ("debian12-amd64-local.json", ["amd64", "docker", "os-debian"]),
    ("arm64-nvidia.json", ["arm64", "docker", "gpu-enabled", "high-mem", "nvidia", "os-ubuntu"]),
    ("no-docker.json", ["amd64", "os-debian"]),
    ("nearly-full-disk.json", ["amd64", "docker", "high-mem", "low-disk", "os-debian"]),
    # ASPEED VGA only, Docker installed but the socket is not usable
    ("ubuntu2004.json", ["amd64", "os-ubuntu"]),
    ("amd-gpu.json", ["amd-gpu", "amd64", "docker", "gpu-enabled", "high-mem", "os-rocky"]),
    # raw arch, no os-release (id "linux"), no disks
    ("minimal-riscv64.json", ["riscv64"]),
]


@pytest.mark.parametrize("name, expected", TABLE)
def test_auto_tag_table(name, expected):
    assert compute_auto_tags(load(name), DEFAULT) == expected


def test_every_fact_file_is_in_the_table():
    files = {p.name for p in FACTS_DIR.glob("*.json") if not p.name.startswith(("docker-", "metrics-"))}
    assert files == {name for name, _ in TABLE}


def test_default_thresholds_argument():
    assert compute_auto_tags(load("amd-gpu.json")) == compute_auto_tags(load("amd-gpu.json"), DEFAULT)


@pytest.mark.parametrize(
    "name, thresholds, added, removed",
    [
        ("debian12-amd64-local.json", {"high_mem_gib": 16}, {"high-mem"}, set()),
        ("debian12-amd64-local.json", {"low_disk_free_gib": 100}, {"low-disk"}, set()),  # 79.4 GiB free
        ("debian12-amd64-local.json", {"low_disk_free_percent": 50}, {"low-disk"}, set()),  # 31.5 % free
        ("nearly-full-disk.json", {"low_disk_free_percent": 0, "low_disk_free_gib": 0}, set(), {"low-disk"}),
        ("nearly-full-disk.json", {"low_disk_free_percent": 0}, set(), set()),  # 2.5 GiB < 5 GiB still
        ("nearly-full-disk.json", {"low_disk_free_percent": 3, "low_disk_free_gib": 2}, set(), {"low-disk"}),
        ("nearly-full-disk.json", {"high_mem_gib": 64}, set(), {"high-mem"}),  # 62.7 GiB
        ("arm64-nvidia.json", {"high_mem_gib": 0}, set(), set()),
    ],
)
def test_thresholds_change_tags(name, thresholds, added, removed):
    base = set(compute_auto_tags(load(name), DEFAULT))
    got = set(compute_auto_tags(load(name), AutoTagThresholds.from_mapping(thresholds)))
    assert got - base == added and base - got == removed


def test_high_mem_is_inclusive():
    d = raw("no-docker.json")
    d["memory"]["total_bytes"] = 32 * GiB
    assert "high-mem" in compute_auto_tags(Facts.from_dict(d), DEFAULT)
    d["memory"]["total_bytes"] = 32 * GiB - 1
    assert "high-mem" not in compute_auto_tags(Facts.from_dict(d), DEFAULT)
    d["memory"]["total_bytes"] = None
    assert "high-mem" not in compute_auto_tags(Facts.from_dict(d), DEFAULT)


@pytest.mark.parametrize(
    "vendors, expected",
    [
        (["intel"], []),
        (["aspeed", "virtio"], []),
        (["nvidia"], ["gpu-enabled", "nvidia"]),
        (["amd"], ["amd-gpu", "gpu-enabled"]),
        (["nvidia", "amd", "intel"], ["amd-gpu", "gpu-enabled", "nvidia"]),
    ],
)
def test_gpu_tags(vendors, expected):
    d = raw("no-docker.json")
    d["gpus"] = [
        {"vendor": v, "pci_address": f"0000:0{i}:00.0", "vendor_id": "0x0000", "device_id": "0x0000", "model": None}
        for i, v in enumerate(vendors)
    ]
    tags = compute_auto_tags(Facts.from_dict(d), DEFAULT)
    assert [t for t in tags if t in {"gpu-enabled", "nvidia", "amd-gpu"}] == expected


@pytest.mark.parametrize(
    "arch, machine, os_id, expected_arch, expected_os",
    [
        ("amd64", "x86_64", "debian", "amd64", "os-debian"),
        ("arm64", "aarch64", "ubuntu", "arm64", "os-ubuntu"),
        ("armv7l", "armv7l", "raspbian", "armv7l", "os-raspbian"),
        ("i686", "I686", "opensuse-leap", "i686", "os-opensuse-leap"),
        ("s390x", "s390x", "Weird OS!", "s390x", "os-weird-os"),
    ],
)
def test_arch_and_os_tags(arch, machine, os_id, expected_arch, expected_os):
    d = raw("no-docker.json")
    d["arch"], d["machine"], d["os"]["id"] = arch, machine, os_id
    tags = compute_auto_tags(Facts.from_dict(d), DEFAULT)
    assert tags == sorted([expected_arch, expected_os])


def test_docker_needs_installed_and_running():
    d = raw("nearly-full-disk.json")
    d["docker"].update(running=False, version=None, error="connection refused")
    assert "docker" not in compute_auto_tags(Facts.from_dict(d), DEFAULT)


def test_tags_are_sorted_and_deterministic():
    for name, _ in TABLE:
        tags = compute_auto_tags(load(name), DEFAULT)
        assert tags == sorted(set(tags))
        assert all(re.fullmatch(r"[a-z0-9._-]+", t) for t in tags)


def test_docstring_documents_every_tag_and_default():
    doc = autotags.__doc__
    for tag in ["amd64", "arm64", "high-mem", "gpu-enabled", "nvidia", "amd-gpu", "docker", "low-disk", "os-<id>"]:
        assert f"``{tag}``" in doc, tag
    for key, default in DEFAULT.to_dict().items():
        assert key in doc
        assert f"**{default:g}**" in doc


# --------------------------------------------------------------------------- thresholds


def test_from_mapping_defaults_and_values():
    assert AutoTagThresholds.from_mapping(None) == DEFAULT
    assert AutoTagThresholds.from_mapping({}) == DEFAULT
    t = AutoTagThresholds.from_mapping({"high_mem_gib": 64, "low_disk_free_percent": 12.5})
    assert t == AutoTagThresholds(high_mem_gib=64.0, low_disk_free_percent=12.5, low_disk_free_gib=5.0)
    assert isinstance(t.high_mem_gib, float)
    assert t.to_dict() == {"high_mem_gib": 64.0, "low_disk_free_percent": 12.5, "low_disk_free_gib": 5.0}


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"high_mem": 32}, "autotags.high_mem: unknown key (known: high_mem_gib, low_disk_free_gib, "
                           "low_disk_free_percent)"),
        ({"high_mem_gib": "32"}, "autotags.high_mem_gib: expected a number, got '32'"),
        ({"high_mem_gib": None}, "autotags.high_mem_gib: expected a number, got None"),
        ({"low_disk_free_gib": True}, "autotags.low_disk_free_gib: expected a number, got True"),
        ({"low_disk_free_gib": float("nan")}, "autotags.low_disk_free_gib: expected a number, got nan"),
        ({"low_disk_free_gib": float("inf")}, "autotags.low_disk_free_gib: expected a number, got inf"),
        ({"high_mem_gib": -1}, "autotags.high_mem_gib: must not be negative, got -1"),
        ({"low_disk_free_percent": 101}, "autotags.low_disk_free_percent: must be a percentage (0-100), got 101"),
        ([("high_mem_gib", 1)], "autotags: expected a mapping, got list"),
        ("32", "autotags: expected a mapping, got str"),
    ],
)
def test_from_mapping_errors(mapping, message):
    with pytest.raises(InventoryError) as e:
        AutoTagThresholds.from_mapping(mapping)  # type: ignore[arg-type]
    assert str(e.value) == message
    assert e.value.exit_status is ExitStatus.USAGE
