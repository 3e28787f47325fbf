"""Tests of ``ndctl.core.facts`` (parse_facts / parse_metrics and the value objects).

Data in ``tests/data/facts/``:

- ``debian12-amd64-local.json``: real ``ndhelper.py facts`` output of the dev
  machine (Debian 12 VM, 2 vCPU, dockerd 20.10 running three throw-away
  test containers: one spinning, one idle, one created).
- ``metrics-debian12-amd64-local.json``: real ``metrics --interval 0.2`` output,
  same machine and containers.
- Hand-made, in the helper's exact shape:
  - ``arm64-nvidia.json``: Ubuntu 22.04 on arm64 (Neoverse-N1, 80 cores,
    251.5 GiB), an NVIDIA A100 plus the BMC's ASPEED VGA, Docker 24.
  - ``no-docker.json``: Debian 11 amd64, Docker not installed.
  - ``nearly-full-disk.json``: Debian 12, "/" has 2.5 of 80 GiB free (3.1 %),
    62.7 GiB RAM, Docker running with a running and an exited container.
  - ``ubuntu2004.json``: Ubuntu 20.04 (python 3.8), non-root user ``deploy``
    who may not use the Docker socket (installed, not running, error text),
    only an ASPEED VGA (no model name).
  - ``amd-gpu.json``: Rocky Linux 9 with two AMD Instinct MI210, 503.7 GiB RAM.
  - ``minimal-riscv64.json``: a minimal riscv64 board: no os-release, no
    CPU model, no disks, no Docker.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ndctl.core.errors import ExitStatus, RemoteError
from ndctl.core.facts import GiB, Container, Disk, Facts, Gpu, Metrics, parse_facts, parse_metrics

ROOT = Path(__file__).resolve().parents[2]
FACTS_DIR = ROOT / "tests" / "data" / "facts"
PROC_DIR = ROOT / "tests" / "data" / "proc"

FACT_FILES = sorted(
    p.name for p in FACTS_DIR.glob("*.json") if not p.name.startswith(("docker-", "metrics-"))
)


def text(name: str) -> str:
    return (FACTS_DIR / name).read_text()


def raw(name: str) -> dict:
    return json.loads(text(name))


def test_all_fact_files_are_covered():
    assert FACT_FILES == sorted(
        [
            "amd-gpu.json",
            "arm64-nvidia.json",
            "debian12-amd64-local.json",
            "minimal-riscv64.json",
            "nearly-full-disk.json",
            "no-docker.json",
            "ubuntu2004.json",
        ]
    )


@pytest.mark.parametrize("name", FACT_FILES)
def test_parse_facts_round_trip(name):
    facts = parse_facts(text(name))
    assert facts.to_dict() == raw(name)
    assert parse_facts(text(name).encode()) == facts  # bytes are fine too
    assert Facts.from_dict(facts.to_dict()) == facts
    d = facts.to_dict()
    d["hostname"] = "changed"  # to_dict is a copy
    assert facts.hostname == raw(name)["hostname"]


# name -> arch, cpu_count, memory_total_bytes, root mount, has_gpu, docker_version, os_pretty, kernel, n containers
EXPECTED = {
    "arm64-nvidia.json": ("arm64", 80, 270079934464, "/", True, "24.0.7", "Ubuntu 22.04.4 LTS",
                          "5.15.0-101-generic", 1),
    "no-docker.json": ("amd64", 4, 8 * GiB - 300 * 2**20, "/", False, None, "Debian GNU/Linux 11 (bullseye)",
                       "5.10.0-28-amd64", 0),
    "nearly-full-disk.json": ("amd64", 16, 67324178432, "/", False, "24.0.7", "Debian GNU/Linux 12 (bookworm)",
                              "6.1.0-18-amd64", 2),
    "ubuntu2004.json": ("amd64", 2, 4 * GiB - 200 * 2**20, "/", False, None, "Ubuntu 20.04.6 LTS",
                        "5.4.0-172-generic", 0),
    "amd-gpu.json": ("amd64", 128, 540862922752, "/", True, "25.0.3", "Rocky Linux 9.3 (Blue Onyx)",
                     "5.14.0-362.18.1.el9_3.x86_64", 0),
    "minimal-riscv64.json": ("riscv64", 4, 8312512512, None, False, None, "Linux", "6.6.20", 0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_typed_properties(name):
    f = parse_facts(text(name))
    arch, cpus, mem, root, gpu, docker, pretty, kernel, ncont = EXPECTED[name]
    assert f.arch == arch
    assert f.cpu_count == cpus
    assert f.memory_total_bytes == mem
    assert (f.root_disk.mount if f.root_disk else None) == root
    assert f.has_gpu is gpu
    assert f.docker_version == docker
    assert f.os_pretty == pretty
    assert f.kernel == kernel
    assert len(f.containers) == ncont
    assert f.collected_at == raw(name)["collected_at"]


def test_local_capture_matches_captured_proc_files():
    """The local facts and the /proc captures come from the same machine."""
    f = parse_facts(text("debian12-amd64-local.json"))
    meminfo = (PROC_DIR / "meminfo-amd64").read_text()
    mem_total_kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal:")))
    assert f.memory_total_bytes == mem_total_kb * 1024
    cpuinfo = (PROC_DIR / "cpuinfo-amd64").read_text()
    assert f.cpu_count == sum(1 for line in cpuinfo.splitlines() if line.startswith("processor"))
    assert f.os_pretty == "Debian GNU/Linux 12 (bookworm)" and f.os_id == "debian" and f.os_family == "debian"
    assert f.arch == "amd64" and f.machine == "x86_64"
    assert f.docker_installed and f.docker_running and f.docker_version == f.raw["docker"]["version"]
    assert f.root_disk == Disk.from_dict(f.raw["disks"][0])
    states = sorted(c.state for c in f.containers)
    assert states == ["created", "running", "running"]
    busy = next(c for c in f.containers if c.name == "ndhelper-test-busy")
    assert busy == Container("f741a967b4c0", "ndhelper-test-busy", "ndhelper-test-bb:latest", "running",
                             busy.status, {"app": "test"})
    assert busy.running


def test_disks_and_gpus():
    f = parse_facts(text("nearly-full-disk.json"))
    assert [d.mount for d in f.disks] == ["/", "/var/lib/docker"]
    assert f.disk_total_bytes == 80 * GiB
    assert f.disk_free_bytes == int(2.5 * GiB)
    assert f.disk_free_percent == pytest.approx(3.125)

    f = parse_facts(text("arm64-nvidia.json"))
    assert [g.vendor for g in f.gpus] == ["nvidia", "aspeed"]
    assert f.compute_gpus == (
        Gpu("nvidia", "000d:01:00.0", "0x10de", "0x20b5", "NVIDIA A100 80GB PCIe"),
    )
    f = parse_facts(text("ubuntu2004.json"))
    assert len(f.gpus) == 1 and not f.has_gpu  # a BMC VGA is not a GPU
    assert f.docker_installed and not f.docker_running and "permission denied" in f.docker_error


def test_root_disk_falls_back_to_largest():
    d = raw("nearly-full-disk.json")
    d["disks"][0]["mount"] = "/srv"
    f = Facts.from_dict(d)
    assert f.root_disk.mount == "/var/lib/docker"
    assert f.disk_total_bytes == 1800 * GiB
    f = parse_facts(text("minimal-riscv64.json"))
    assert f.root_disk is None and f.disk_free_percent is None and f.disk_total_bytes is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nearly-full-disk.json", {"arch": "amd64", "cpus": 16, "memory_gib": 62.7,
                                   "disk": "2.5/80.0 GiB free", "docker": "24.0.7"}),
        ("arm64-nvidia.json", {"arch": "arm64", "cpus": 80, "memory_gib": 251.5,
                               "disk": "1494.4/1788.0 GiB free", "docker": "24.0.7"}),
        ("ubuntu2004.json", {"arch": "amd64", "cpus": 2, "memory_gib": 3.8,
                             "disk": "30.0/40.0 GiB free", "docker": "not running"}),
        ("no-docker.json", {"arch": "amd64", "cpus": 4, "memory_gib": 7.7,
                            "disk": "200.0/250.0 GiB free", "docker": "not installed"}),
        ("minimal-riscv64.json", {"arch": "riscv64", "cpus": 4, "memory_gib": 7.7,
                                  "disk": None, "docker": "not installed"}),
    ],
)
def test_summary(name, expected):
    assert parse_facts(text(name)).summary() == expected


def test_summary_of_local_capture():
    f = parse_facts(text("debian12-amd64-local.json"))
    s = f.summary()
    root = f.raw["disks"][0]
    assert s["disk"] == f"{root['free_bytes'] / GiB:.1f}/{root['total_bytes'] / GiB:.1f} GiB free"
    assert s["memory_gib"] == round(f.raw["memory"]["total_bytes"] / GiB, 1)


def test_facts_is_hashable_and_frozen():
    f = parse_facts(text("no-docker.json"))
    hash(f)
    with pytest.raises(AttributeError):
        f.raw = {}  # type: ignore[misc]


# --------------------------------------------------------------------------- validation errors


def _mutated(mutate) -> str:
    d = raw("nearly-full-disk.json")
    mutate(d)
    return json.dumps(d)


def _set(path, value):
    def mutate(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        d[last] = value

    return mutate


def _delete(path):
    def mutate(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        del d[last]

    return mutate


BAD_FACTS = [
    ("", "helper printed nothing"),
    ("   \n", "helper printed nothing"),
    ("Traceback (most recent call last):\n  File ...", "not JSON (Expecting value at line 1 column 1): 'Traceback"),
    ('{"hostname": "x"', "not JSON"),
    ("[1, 2]", "expected a JSON object, got array"),
    ('"facts"', "expected a JSON object, got string"),
    ('{"error": "cannot read /proc/stat", "kind": "proc"}', "helper failed collecting facts (proc): cannot read /proc/stat"),
    ('{"error": "boom"}', "helper failed collecting facts (error): boom"),
    ("{}", "missing key 'helper_version'"),
    (_mutated(_delete(["docker", "running"])), "missing key 'docker.running'"),
    (_mutated(_delete(["disks", 1, "free_bytes"])), "missing key 'disks[1].free_bytes'"),
    (_mutated(_set(["memory", "total_bytes"], "64G")), "memory.total_bytes: expected a non-negative integer or null, got string '64G'"),
    (_mutated(_set(["memory", "total_bytes"], -1)), "memory.total_bytes: expected a non-negative integer or null, got number -1"),
    (_mutated(_set(["uid"], True)), "uid: expected a non-negative integer, got boolean True"),
    (_mutated(_set(["uid"], None)), "uid: expected a non-negative integer, got null"),
    (_mutated(_set(["cpus", "count"], 2.5)), "cpus.count: expected a non-negative integer or null, got number 2.5"),
    (_mutated(_set(["docker", "running"], "yes")), "docker.running: expected a boolean, got string 'yes'"),
    (_mutated(_set(["disks"], {"/": 1})), "disks: expected an array, got object"),
    (_mutated(_set(["disks", 0], "/")), "disks[0]: expected an object, got string"),
    (_mutated(_set(["os"], None)), "os: expected an object, got null"),
    (_mutated(_set(["containers", 1, "labels"], {"a": 1})), "containers[1].labels: expected an object of string labels"),
    (_mutated(_set(["gpus"], [{"vendor": "nvidia"}])), "missing key 'gpus[0].pci_address'"),
    (_mutated(_set(["collected_at"], "now")), "collected_at: expected a finite number, got string 'now'"),
    (_mutated(_set(["collected_at"], float("nan"))), "collected_at: expected a finite number, got number nan"),
    (_mutated(_set(["hostname"], "x" * 100)), None),  # long strings are fine
]


@pytest.mark.parametrize("bad, message", BAD_FACTS, ids=range(len(BAD_FACTS)))
def test_parse_facts_errors(bad, message):
    if message is None:
        parse_facts(bad)
        return
    with pytest.raises(RemoteError) as e:
        parse_facts(bad)
    assert message in str(e.value)
    assert e.value.exit_status is ExitStatus.HOST_FAILED
    assert str(e.value).startswith(("invalid facts: ", "helper failed collecting facts"))


def test_parse_facts_long_values_are_shortened_in_messages():
    with pytest.raises(RemoteError) as e:
        parse_facts(_mutated(_set(["uid"], "u" * 500)))
    assert len(str(e.value)) < 200


def test_parse_facts_bad_utf8():
    with pytest.raises(RemoteError, match="not UTF-8"):
        parse_facts(b'{"hostname": "\xff"}')


def test_extra_keys_are_accepted():
    d = raw("no-docker.json")
    d["future_field"] = {"x": 1}
    d["docker"]["rootless"] = False
    assert parse_facts(json.dumps(d)).raw["future_field"] == {"x": 1}


def test_from_dict_rejects_non_mapping():
    with pytest.raises(RemoteError, match="expected an object, got array"):
        Facts.from_dict([])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- metrics


def test_parse_metrics_captured():
    d = raw("metrics-debian12-amd64-local.json")
    m = parse_metrics(text("metrics-debian12-amd64-local.json"))
    assert m.to_dict() == d
    assert m.interval == 0.2
    assert m.window_seconds == d["window_seconds"] >= 0.2
    assert m.cpu_percent == d["cpu_percent"]
    assert m.load == tuple(d["load"])
    assert m.memory_total_bytes == d["memory"]["total_bytes"]
    assert m.memory_used_percent == pytest.approx(
        100 * (d["memory"]["total_bytes"] - d["memory"]["available_bytes"]) / d["memory"]["total_bytes"], abs=0.01
    )
    assert [d.mount for d in m.disks] == ["/"]
    busy, idle = m.containers
    assert busy.name == "ndhelper-test-busy" and 90 <= busy.cpu_percent <= 110
    assert idle.name == "ndhelper-test-idle" and idle.cpu_percent == 0.0
    assert busy.memory_limit_bytes == d["memory"]["total_bytes"]
    assert m.docker_error is None


def _metrics_mutated(mutate) -> str:
    d = raw("metrics-debian12-amd64-local.json")
    mutate(d)
    return json.dumps(d)


BAD_METRICS = [
    ("nope", "invalid metrics: helper output is not JSON"),
    ('{"error": "--interval: not a number: x", "kind": "usage"}',
     "helper failed collecting metrics (usage): --interval: not a number: x"),
    (_metrics_mutated(_delete(["cpu_percent"])), "missing key 'cpu_percent'"),
    (_metrics_mutated(_set(["load"], [0.1, 0.2])), "load: expected a list of 3 numbers"),
    (_metrics_mutated(_set(["load"], [0.1, "x", 0.3])), "load: expected a list of 3 numbers"),
    (_metrics_mutated(_set(["cpu_percent"], None)), "cpu_percent: expected a finite number, got null"),
    (_metrics_mutated(_set(["containers", 0, "memory_bytes"], "1M")), "containers[0].memory_bytes"),
    (_metrics_mutated(_delete(["disks", 0, "used_percent"])), "missing key 'disks[0].used_percent'"),
]


@pytest.mark.parametrize("bad, message", BAD_METRICS, ids=range(len(BAD_METRICS)))
def test_parse_metrics_errors(bad, message):
    with pytest.raises(RemoteError) as e:
        parse_metrics(bad)
    assert message in str(e.value)


def test_metrics_nulls_are_allowed_where_documented():
    def mutate(d):
        d["containers"][0].update(cpu_percent=None, memory_bytes=None, memory_limit_bytes=None)
        d["memory"]["used_percent"] = None
        del d["window_seconds"]

    m = parse_metrics(_metrics_mutated(mutate))
    assert m.containers[0].cpu_percent is None
    assert m.memory_used_percent is None and m.window_seconds is None
    assert isinstance(m, Metrics) and not math.isnan(m.cpu_percent)


def test_items_also_answer_dict_style_lookups():
    f = parse_facts(text("arm64-nvidia.json"))
    g = f.gpus[0]
    assert g.get("vendor") == g["vendor"] == "nvidia" and g.get("nope") is None
    with pytest.raises(KeyError):
        g["nope"]
    c = f.containers[0]
    assert (c.get("id"), c.get("name"), c["labels"]) == ("0b1c2d3e4f5a", "trainer", {"com.nextdeploy.app": "trainer"})
    assert f.root_disk.get("mount") == "/"
