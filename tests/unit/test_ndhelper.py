"""Tests of the remote helper ``ndctl/helper/ndhelper.py``.

The helper is a standalone script, so it is loaded from its path.  Parsers are
fed files captured on the dev machine (``tests/data/proc/*-amd64``,
``os-release-debian12``, ``stat-a``/``stat-b``, ``loadavg``) and hand-written
samples in the real formats (``cpuinfo-arm64``: an Ampere Altra / Neoverse-N1,
``cpuinfo-rpi4``, ``os-release-ubuntu2004``/``rocky9``/``alpine``/``debian-sid``,
``mounts-docker-host``: a Docker host with snaps, NFS, ZFS, btrfs subvolumes,
bind mounts and container layers, ``mounts-container-root``: a host that is
itself a container, ``meminfo-old-kernel``: no MemAvailable,
``nvidia-information``, ``pci.ids-excerpt``).  Docker engine answers were
captured from dockerd 20.10 (``tests/data/facts/docker-*.json``: a container
spinning one core, an idle one and a created one).
"""
from __future__ import annotations

import ast
import glob
import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ndctl import helper as helper_pkg
from ndctl.core.facts import parse_facts, parse_metrics

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "ndctl" / "helper" / "ndhelper.py"
PROC = ROOT / "tests" / "data" / "proc"
FACTS = ROOT / "tests" / "data" / "facts"


def _load_helper():
    spec = importlib.util.spec_from_file_location("ndhelper_under_test", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


h = _load_helper()


def proc(name: str) -> str:
    return (PROC / name).read_text()


def engine(name: str):
    return json.loads((FACTS / name).read_text())


# --------------------------------------------------------------------------- source


def test_source_parses_with_python36_grammar():
    src = HELPER.read_text()
    tree = ast.parse(src, filename=str(HELPER), feature_version=(3, 6))
    futures = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "__future__"
               for a in n.names]
    assert "annotations" not in futures  # a SyntaxError on 3.6
    assert src.startswith("#!/usr/bin/env python3\n")
    assert 'if __name__ == "__main__":\n    sys.exit(main(sys.argv[1:]))' in src


def test_source_imports_stdlib_only():
    tree = ast.parse(HELPER.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
    assert "subprocess" not in names


def test_helper_package_hash_and_source():
    data = HELPER.read_bytes()
    assert helper_pkg.HELPER_PATH == HELPER
    assert helper_pkg.helper_source() == data
    assert helper_pkg.helper_hash() == hashlib.sha256(data).hexdigest()[:16]
    assert helper_pkg.helper_hash() is helper_pkg.helper_hash()  # cached
    assert helper_pkg.remote_helper_path() == f"/var/lib/nextdeploy/helper-{helper_pkg.helper_hash()}.py"


# --------------------------------------------------------------------------- meminfo / cpuinfo


def test_meminfo_captured_values_match_file():
    text = proc("meminfo-amd64")
    info = h.parse_meminfo(text)
    kb = {m[0]: int(m[1]) for m in re.findall(r"^(\w+(?:\(\w+\))?):\s+(\d+) kB$", text, re.M)}
    assert info["MemTotal"] == kb["MemTotal"] * 1024
    assert info["MemAvailable"] == kb["MemAvailable"] * 1024
    assert info["HugePages_Total"] == int(re.search(r"^HugePages_Total:\s+(\d+)$", text, re.M).group(1))
    mem = h.memory_from_meminfo(info)
    assert mem == {
        "total_bytes": kb["MemTotal"] * 1024,
        "available_bytes": kb["MemAvailable"] * 1024,
        "swap_total_bytes": kb["SwapTotal"] * 1024,
    }


def test_meminfo_old_kernel_estimates_available():
    mem = h.memory_from_meminfo(h.parse_meminfo(proc("meminfo-old-kernel")))
    assert mem["total_bytes"] == 2052108 * 1024
    assert mem["available_bytes"] == (120344 + 80112 + 901220) * 1024
    assert mem["swap_total_bytes"] == 1048572 * 1024


def test_meminfo_empty():
    assert h.memory_from_meminfo(h.parse_meminfo("")) == {
        "total_bytes": None,
        "available_bytes": None,
        "swap_total_bytes": None,
    }


def _first_model_name(text):
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip()


@pytest.mark.parametrize(
    "name, count, model",
    [
        ("cpuinfo-amd64", None, None),  # expected values read from the captured file
        ("cpuinfo-arm64", 4, "Neoverse-N1"),
        ("cpuinfo-rpi4", 2, "Cortex-A72"),
    ],
)
def test_parse_cpuinfo(name, count, model):
    text = proc(name)
    if count is None:
        count = len(re.findall(r"^processor\s*:", text, re.M))
        model = _first_model_name(text)
        assert count >= 1
    assert h.parse_cpuinfo(text) == {"count": count, "model": model}


def test_parse_cpuinfo_unknown_arm_part_falls_back_to_board_model():
    text = proc("cpuinfo-rpi4").replace("0xd08", "0xfff")
    assert h.parse_cpuinfo(text)["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert h.parse_cpuinfo("") == {"count": None, "model": None}


# --------------------------------------------------------------------------- os-release


@pytest.mark.parametrize(
    "name, expected",
    [
        ("os-release-debian12", {"id": "debian", "version_id": "12",
                                 "pretty_name": "Debian GNU/Linux 12 (bookworm)", "family": "debian"}),
        ("os-release-ubuntu2004", {"id": "ubuntu", "version_id": "20.04",
                                   "pretty_name": "Ubuntu 20.04.6 LTS", "family": "debian"}),
        ("os-release-rocky9", {"id": "rocky", "version_id": "9.3",
                               "pretty_name": "Rocky Linux 9.3 (Blue Onyx)", "family": "rhel"}),
        ("os-release-alpine", {"id": "alpine", "version_id": "3.19.1",
                               "pretty_name": "Alpine Linux v3.19", "family": "alpine"}),
        ("os-release-debian-sid", {"id": "debian", "version_id": None,
                                   "pretty_name": "Debian GNU/Linux trixie/sid", "family": "debian"}),
    ],
)
def test_os_release(name, expected):
    assert h.os_info(h.parse_os_release(proc(name))) == expected


def test_os_release_quoting_and_defaults():
    fields = h.parse_os_release('# comment\nNAME="My \\"OS\\""\nID=\'myos\'\nBROKEN\n\nID_LIKE="opensuse suse"\n')
    assert fields == {"NAME": 'My "OS"', "ID": "myos", "ID_LIKE": "opensuse suse"}
    assert h.os_info(fields) == {"id": "myos", "version_id": None, "pretty_name": 'My "OS"', "family": "suse"}
    assert h.os_info({}) == {"id": "linux", "version_id": None, "pretty_name": "Linux", "family": "linux"}


# --------------------------------------------------------------------------- /proc/stat, loadavg


def test_parse_proc_stat_captured():
    a = h.parse_proc_stat(proc("stat-a"))
    b = h.parse_proc_stat(proc("stat-b"))
    fields = [int(x) for x in proc("stat-a").splitlines()[0].split()[1:9]]
    assert a == {"total": sum(fields), "idle": fields[3] + fields[4]}
    # between the two captures the CPUs were busy 60 of 60 jiffies
    assert b["total"] - a["total"] == 60 and b["idle"] == a["idle"]
    assert h.cpu_percent(a, b) == 100.0


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ({"total": 1000, "idle": 800}, {"total": 1200, "idle": 900}, 50.0),
        ({"total": 1000, "idle": 800}, {"total": 1400, "idle": 1100}, 25.0),
        ({"total": 1000, "idle": 800}, {"total": 1000, "idle": 800}, 0.0),  # no time passed
        ({"total": 1000, "idle": 800}, {"total": 900, "idle": 700}, 0.0),  # counter went backwards
        ({"total": 0, "idle": 0}, {"total": 3, "idle": 0}, 100.0),
        ({"total": 0, "idle": 0}, {"total": 3, "idle": 1}, 66.67),
    ],
)
def test_cpu_percent(a, b, expected):
    assert h.cpu_percent(a, b) == expected


def test_parse_proc_stat_ignores_guest_and_short_lines():
    # guest (9th) and guest_nice (10th) are already in user/nice
    assert h.parse_proc_stat("cpu  10 0 10 70 10 0 0 0 5 5\n") == {"total": 100, "idle": 80}
    assert h.parse_proc_stat("cpu  10 0 10 70\n") == {"total": 90, "idle": 70}
    with pytest.raises(ValueError, match="aggregate"):
        h.parse_proc_stat("cpu0 1 2 3 4\n")


def test_parse_loadavg():
    text = proc("loadavg")
    assert h.parse_loadavg(text) == [float(x) for x in text.split()[:3]]


# --------------------------------------------------------------------------- mounts


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mounts-amd64", [("/", "/dev/vda", "ext4")]),  # /var/lib/docker is the same device
        (
            "mounts-docker-host",
            [
                ("/", "/dev/mapper/vg0-root", "ext4"),
                ("/boot", "/dev/nvme0n1p2", "ext4"),
                ("/boot/efi", "/dev/nvme0n1p1", "vfat"),
                ("/mnt/btrfs", "/dev/sdc", "btrfs"),
                ("/srv/data files", "/dev/sdb1", "xfs"),
                ("/tank/apps", "tank/apps", "zfs"),
            ],
        ),
        ("mounts-container-root", [("/", "overlay", "overlay"), ("/var/lib/docker", "/dev/nvme0n1p2", "ext4")]),
    ],
)
def test_filter_mounts(name, expected):
    kept = h.filter_mounts(h.parse_mounts(proc(name)))
    assert [(m["mount"], m["device"], m["fstype"]) for m in kept] == expected


def test_parse_mounts_unescapes_octal():
    (m,) = h.parse_mounts("/dev/sdb1 /srv/a\\040b\\011c\\134d xfs rw 0 0\n")
    assert m == {"device": "/dev/sdb1", "mount": "/srv/a b\tc\\d", "fstype": "xfs", "options": "rw"}


def test_filter_mounts_last_mount_on_a_path_wins():
    text = "rootfs / rootfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\n/dev/sda2 /data ext4 rw 0 0\n/dev/sda3 /data ext4 rw 0 0\n"
    kept = h.filter_mounts(h.parse_mounts(text))
    assert [(m["mount"], m["device"]) for m in kept] == [("/", "/dev/sda1"), ("/data", "/dev/sda3")]


@pytest.mark.parametrize(
    "blocks, bfree, bavail, frsize, expected",
    [
        (1000, 400, 350, 4096, (4096000, 1433600, 63.16)),  # ext4 reserve: used/(used+avail), like df
        (1000, 1000, 1000, 512, (512000, 512000, 0.0)),
        (1000, 0, 0, 4096, (4096000, 0, 100.0)),
        (0, 0, 0, 4096, (0, 0, 0.0)),
    ],
)
def test_disk_usage(blocks, bfree, bavail, frsize, expected):
    assert h.disk_usage(blocks, bfree, bavail, frsize) == expected


# --------------------------------------------------------------------------- GPUs


@pytest.mark.parametrize(
    "cls, expected",
    [("0x030000", True), ("0x030200\n", True), ("0x038000", True), ("0x020000", False), ("0x0300", False), ("", False)],
)
def test_is_display_class(cls, expected):
    assert h.is_display_class(cls) is expected


def test_nvidia_information_and_pci_ids():
    info = h.parse_nvidia_information(proc("nvidia-information"))
    assert info == {
        "model": "NVIDIA A100-SXM4-40GB",
        "bus_location": "0000:07:00.0",
        "uuid": "GPU-3f2b9a1c-8d7e-4f60-a5b4-c3d2e1f0a9b8",
    }
    ids = proc("pci.ids-excerpt")
    assert h.lookup_pci_ids(ids, "0x1002", "0x740f") == "Aldebaran/MI200 [Instinct MI210]"
    assert h.lookup_pci_ids(ids, "0x10de", "0x2204") == "GA102 [GeForce RTX 3090]"
    assert h.lookup_pci_ids(ids, "0x10de", "0x0c34") is None  # subsystem lines are not devices
    assert h.lookup_pci_ids(ids, "0x8086", "0x56a0") is None
    assert h.normalize_pci_address("00000000:07:00.0") == "0000:07:00.0"
    assert h.normalize_pci_address("000D:01:00.0") == "000d:01:00.0"


def _pci_dev(root: Path, addr: str, cls: str, vendor: str, device: str, **extra: str) -> None:
    d = root / addr
    d.mkdir(parents=True)
    (d / "class").write_text(cls + "\n")
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
    for k, v in extra.items():
        (d / k).write_text(v + "\n")


def test_collect_gpus_from_fake_sysfs(tmp_path, monkeypatch):
    pci = tmp_path / "pci"
    _pci_dev(pci, "0000:00:1f.0", "0x060100", "0x8086", "0xa1c8")  # ISA bridge: ignored
    _pci_dev(pci, "0000:02:00.0", "0x030000", "0x1a03", "0x2000")  # BMC VGA
    _pci_dev(pci, "0000:07:00.0", "0x030200", "0x10de", "0x20b0")  # A100 (3D controller)
    _pci_dev(pci, "0000:c1:00.0", "0x038000", "0x1002", "0x740f", product_name="AMD Instinct MI210")
    nv = tmp_path / "nvidia"
    (nv / "0000:07:00.0").mkdir(parents=True)
    (nv / "0000:07:00.0" / "information").write_text(proc("nvidia-information"))
    monkeypatch.setattr(h, "PCI_IDS_PATHS", (str(tmp_path / "missing"), str(PROC / "pci.ids-excerpt")))
    gpus = h.collect_gpus(str(pci), str(nv))
    assert gpus == [
        {"vendor": "aspeed", "pci_address": "0000:02:00.0", "vendor_id": "0x1a03", "device_id": "0x2000",
         "model": "ASPEED Graphics Family"},
        {"vendor": "nvidia", "pci_address": "0000:07:00.0", "vendor_id": "0x10de", "device_id": "0x20b0",
         "model": "NVIDIA A100-SXM4-40GB"},
        {"vendor": "amd", "pci_address": "0000:c1:00.0", "vendor_id": "0x1002", "device_id": "0x740f",
         "model": "AMD Instinct MI210"},
    ]


def test_collect_gpus_without_sysfs(tmp_path):
    assert h.collect_gpus(str(tmp_path / "none"), str(tmp_path / "none2")) == []


# --------------------------------------------------------------------------- Docker documents


def test_container_entries_from_engine():
    raw = engine("docker-containers.json")
    entries = h.container_entries(raw)
    assert len(entries) == len(raw) == 3
    assert [c["name"] for c in entries] == ["ndhelper-test-busy", "ndhelper-test-idle", "ndhelper-test-stopped"]
    by_name = {c["name"]: c for c in entries}
    busy = by_name["ndhelper-test-busy"]
    src = next(c for c in raw if c["Names"] == ["/ndhelper-test-busy"])
    assert busy == {
        "id": src["Id"][:12],
        "name": "ndhelper-test-busy",
        "image": src["Image"],
        "state": "running",
        "status": src["Status"],
        "labels": {"app": "test"},
    }
    assert by_name["ndhelper-test-stopped"]["state"] == "created"
    assert all(len(c["id"]) == 12 for c in entries)
    assert h.container_entries(None) == []


def test_docker_version_info():
    doc = engine("docker-version.json")
    assert h.docker_version_info(doc) == (doc["Version"], doc["ApiVersion"])
    assert h.docker_version_info("nope") == (None, None)


@pytest.mark.parametrize(
    "api, wanted, expected",
    [("1.41", "1.41", True), ("1.43", "1.41", True), ("1.40", "1.41", False), ("1.9", "1.41", False),
     (None, "1.41", False), ("x", "1.41", False)],
)
def test_api_at_least(api, wanted, expected):
    assert h.api_at_least(api, wanted) is expected


def test_container_cpu_percent_one_shot_pair():
    a, b = engine("docker-stats-oneshot-a.json"), engine("docker-stats-oneshot-b.json")
    d_usage = b["cpu_stats"]["cpu_usage"]["total_usage"] - a["cpu_stats"]["cpu_usage"]["total_usage"]
    d_system = b["cpu_stats"]["system_cpu_usage"] - a["cpu_stats"]["system_cpu_usage"]
    expected = round(100.0 * d_usage / d_system * b["cpu_stats"]["online_cpus"], 2)
    got = h.container_cpu_percent(a, b)
    assert got == expected
    assert 90.0 <= got <= 110.0  # the captured container spins exactly one core
    # a one-shot document alone has no precpu sample
    assert h.container_cpu_percent(a, a) is None


def test_container_cpu_percent_stream_false_uses_precpu():
    s = engine("docker-stats-stream-false.json")
    got = h.container_cpu_percent(s, s)
    assert 90.0 <= got <= 110.0
    assert h.container_cpu_percent({}, {}) is None
    same = engine("docker-stats-oneshot-a.json")
    assert h.container_cpu_percent(same, json.loads(json.dumps(same))) == 0.0  # no system time passed


@pytest.mark.parametrize(
    "memory_stats, expected",
    [
        ({"usage": 1000, "limit": 5000, "stats": {"total_inactive_file": 300, "inactive_file": 100}}, (700, 5000)),
        ({"usage": 1000, "limit": 5000, "stats": {"inactive_file": 100, "anon": 900}}, (900, 5000)),  # cgroup v2
        ({"usage": 1000, "limit": 5000, "stats": {"cache": 400}}, (600, 5000)),  # old engines
        ({"usage": 1000, "limit": 5000, "stats": {"inactive_file": 2000}}, (1000, 5000)),
        ({"usage": 1000, "limit": 5000}, (1000, 5000)),
        ({}, (None, None)),
    ],
)
def test_container_memory(memory_stats, expected):
    assert h.container_memory({"memory_stats": memory_stats}) == expected


def test_container_memory_captured():
    s = engine("docker-stats-oneshot-b.json")
    ms = s["memory_stats"]
    assert h.container_memory(s) == (ms["usage"] - ms["stats"]["total_inactive_file"], ms["limit"])


@pytest.mark.parametrize(
    "value, expected",
    [(None, "/var/run/docker.sock"), ("", "/var/run/docker.sock"), ("unix:///run/user/1000/docker.sock",
                                                                       "/run/user/1000/docker.sock"),
     ("/tmp/d.sock", "/tmp/d.sock")],
)
def test_parse_docker_host(value, expected):
    assert h.parse_docker_host(value) == expected


def test_parse_docker_host_rejects_tcp():
    with pytest.raises(h.HelperError, match="not a unix socket"):
        h.parse_docker_host("tcp://10.0.0.1:2376")


# --------------------------------------------------------------------------- fake engine over a unix socket


class _FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, api: str = "1.41"):
        self.api = api
        self.calls: list[str] = []
        self.usage = {"aaaaaaaaaaaa": 0, "bbbbbbbbbbbb": 0}
        self.system = {"aaaaaaaaaaaa": 0, "bbbbbbbbbbbb": 0}
        self.lock = threading.Lock()
        super().__init__(path, _EngineHandler)


class _EngineHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
        pass

    def address_string(self):
        return "unix"

    def _send(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv: _FakeEngine = self.server  # type: ignore[assignment]
        srv.calls.append(self.path)
        if self.path == "/version":
            return self._send(200, {"Version": "99.0.0-fake", "ApiVersion": srv.api})
        if self.path.startswith("/containers/json"):
            items = [
                {"Id": "a" * 64, "Names": ["/web"], "Image": "nginx", "State": "running", "Status": "Up", "Labels": {}},
                {"Id": "b" * 64, "Names": ["/worker"], "Image": "py", "State": "running", "Status": "Up",
                 "Labels": None},
            ]
            if "all=1" in self.path:
                items.append({"Id": "c" * 64, "Names": ["/old"], "Image": "x", "State": "exited", "Status": "Exited"})
            return self._send(200, items)
        m = re.match(r"/containers/(\w+)/stats\?(.*)", self.path)
        if m:
            cid = m.group(1)
            if cid not in srv.usage:
                return self._send(404, {"message": f"No such container: {cid}"})
            with srv.lock:
                # between two samples of a container the system used 1e9 ns
                # (all CPUs), web 0.5e9 ns, worker nothing
                before = (srv.usage[cid], srv.system[cid])
                srv.system[cid] += 10**9
                srv.usage[cid] += 10**9 // 2 if cid.startswith("a") else 0
                now = (srv.usage[cid], srv.system[cid])
            doc = {
                "cpu_stats": {"cpu_usage": {"total_usage": now[0]}, "system_cpu_usage": now[1], "online_cpus": 2},
                "precpu_stats": {"cpu_usage": {"total_usage": before[0]}, "system_cpu_usage": before[1]},
                "memory_stats": {"usage": 10_000, "limit": 99_999, "stats": {"inactive_file": 1_000}},
            }
            return self._send(200, doc)
        return self._send(404, {"message": "page not found"})


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    path = str(tmp_path / "docker.sock")
    srv = _FakeEngine(path)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    monkeypatch.setenv("DOCKER_HOST", "unix://" + path)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_collect_docker_fake_engine(fake_engine):
    info, containers = h.collect_docker()
    assert info == {"installed": True, "running": True, "version": "99.0.0-fake", "api_version": "1.41",
                    "error": None}
    assert [(c["name"], c["state"], c["labels"]) for c in containers] == [
        ("old", "exited", {}), ("web", "running", {}), ("worker", "running", {})]
    assert fake_engine.calls == ["/version", "/containers/json?all=1"]


def test_docker_get_error_status(fake_engine):
    with pytest.raises(h.DockerError, match="404 to GET /nope: page not found"):
        h.docker_get(h.docker_socket_path(), "/nope")


def test_collect_docker_no_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix://" + str(tmp_path / "missing.sock"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker binaries either
    info, containers = h.collect_docker()
    assert info == {"installed": False, "running": False, "version": None, "api_version": None, "error": None}
    assert containers == []


def test_collect_docker_refused(tmp_path, monkeypatch):
    import socket

    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    monkeypatch.setenv("DOCKER_HOST", "unix://" + str(path))
    info, _ = h.collect_docker()
    assert info["installed"] is True and info["running"] is False
    assert "connection refused" in info["error"]


def test_docker_get_permission_denied_message(monkeypatch):
    class Conn:
        def __init__(self, *a, **kw):
            pass

        def request(self, *a, **kw):
            raise PermissionError(13, "Permission denied")

        def close(self):
            pass

    monkeypatch.setattr(h, "_unix_connection_class", lambda: Conn)
    with pytest.raises(h.DockerError, match=r"permission denied on /x.sock \(user .* docker group"):
        h.docker_get("/x.sock", "/version")


@pytest.mark.parametrize("api", ["1.41", "1.40"])
def test_metrics_fake_engine(fake_engine, api):
    fake_engine.api = api
    doc = h.cmd_metrics(["--interval", "0.05"])
    m = parse_metrics(json.dumps(doc))
    web, worker = m.containers
    assert (web.name, worker.name) == ("web", "worker")
    # web: +0.5e9 ns of CPU per 1e9 ns of system time on 2 CPUs -> 100 % (one core)
    assert web.cpu_percent == 100.0 and worker.cpu_percent == 0.0
    assert web.memory_bytes == 9_000 and web.memory_limit_bytes == 99_999
    stats_calls = [c for c in fake_engine.calls if "/stats" in c]
    if api == "1.41":  # one sample at each end of the window
        assert len(stats_calls) == 4 and all(c.endswith("stream=false&one-shot=true") for c in stats_calls)
    else:  # one stream=false request per container, precpu inside
        assert len(stats_calls) == 2 and all(c.endswith("stream=false") for c in stats_calls)
    assert m.interval == 0.05 and m.window_seconds >= 0.05


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args, expected",
    [([], 0.5), (["--interval", "0.1"], 0.1), (["--interval=2"], 2.0), (["--interval", "0"], 0.0)],
)
def test_parse_metrics_args(args, expected):
    assert h.parse_metrics_args(args) == expected


@pytest.mark.parametrize(
    "args, message",
    [(["--interval"], "needs a value"), (["--interval", "x"], "not a number"), (["--interval", "-1"], "between"),
     (["--interval", "61"], "between"), (["--bogus"], "unknown argument")],
)
def test_parse_metrics_args_errors(args, message):
    with pytest.raises(h.HelperError, match=message) as e:
        h.parse_metrics_args(args)
    assert e.value.exit_code == 2 and e.value.kind == "usage"


def _run_main(capsys, argv):
    rc = h.main(argv)
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON document, one line
    return rc, json.loads(out)


def test_main_version(capsys):
    rc, doc = _run_main(capsys, ["version"])
    assert rc == 0
    assert doc == {"helper_version": h.VERSION, "python": "%d.%d.%d" % sys.version_info[:3]}


@pytest.mark.parametrize("argv", [[], ["bogus"], ["FACTS"]])
def test_main_unknown_subcommand(capsys, argv):
    rc, doc = _run_main(capsys, argv)
    assert rc == 2 and doc["kind"] == "usage" and "unknown subcommand" in doc["error"]


def test_main_usage_and_internal_errors(capsys, monkeypatch):
    rc, doc = _run_main(capsys, ["facts", "extra"])
    assert rc == 2 and doc == {"error": "facts takes no arguments", "kind": "usage"}

    def boom(args):
        raise RuntimeError("kaputt")

    monkeypatch.setitem(h.COMMANDS, "facts", boom)
    rc, doc = _run_main(capsys, ["facts"])
    assert rc == 1 and doc == {"error": "RuntimeError: kaputt", "kind": "internal"}


# --------------------------------------------------------------------------- the real thing, as a subprocess


def _interpreters():
    found = {sys.executable: "current"}
    candidates = [shutil.which(f"python3.{minor}") for minor in (6, 8, 9)]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.6*", "bin", "python3")))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            try:
                out = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2] >= (3, 6))"],
                                     capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if out.returncode == 0 and out.stdout.strip() == "True":
                found.setdefault(os.path.realpath(c), "old")
    return list(found.items())


INTERPRETERS = _interpreters()


@pytest.mark.parametrize("python", [p for p, _ in INTERPRETERS])
def test_helper_subprocess_facts(python):
    """``facts`` for real: this machine's /proc, /sys and Docker engine."""
    out = subprocess.run([python, str(HELPER), "facts"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""
    facts = parse_facts(out.stdout)
    assert facts.cpu_count >= 1
    assert facts.root_disk is not None and facts.root_disk.mount == "/"
    assert facts.arch in ("amd64", "arm64") or facts.arch == facts.machine
    py = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                        capture_output=True, text=True, timeout=30).stdout.strip()
    assert facts.python_version == py
    if os.path.exists("/var/run/docker.sock") and "DOCKER_HOST" not in os.environ:
        assert facts.docker_installed
        assert facts.docker_running == (facts.docker_error is None)

    out = subprocess.run([python, str(HELPER), "nope"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and json.loads(out.stdout)["kind"] == "usage"


@pytest.mark.parametrize("python", [p for p, _ in INTERPRETERS])
def test_helper_subprocess_metrics(python, fake_engine):
    """``metrics`` for real on the host side; containers come from the fake engine
    (a real engine answers stats on its own 1 s tick: 1-2 s, see benchmarks)."""
    out = subprocess.run([python, str(HELPER), "metrics", "--interval", "0.1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = parse_metrics(out.stdout)
    assert 0.0 <= metrics.cpu_percent <= 100.0
    assert metrics.interval == 0.1 and metrics.window_seconds >= 0.1
    assert metrics.memory_total_bytes == h.collect_memory()["total_bytes"]
    assert [(c.name, c.cpu_percent) for c in metrics.containers] == [("web", 100.0), ("worker", 0.0)]
    assert [d.mount for d in metrics.disks][:1] == ["/"]


def test_parse_cpuinfo_ppc64le():
    text = "processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\nclock\t\t: 2300.000000MHz\n\n" \
           "processor\t: 1\ncpu\t\t: POWER9 (raw), altivec supported\n\ntimebase\t: 512000000\n"
    assert h.parse_cpuinfo(text) == {"count": 2, "model": "POWER9 (raw), altivec supported"}
