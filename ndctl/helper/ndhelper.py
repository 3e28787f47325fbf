#!/usr/bin/env python3
"""ndhelper: the on-demand remote helper of ndctl (NextDeploy).

One stdlib-only file, uploaded to a host under its content hash and run as::

    python3 /var/lib/nextdeploy/helper-<sha>.py SUBCOMMAND [ARGS]

Subcommands (each prints ONE JSON document on stdout):

    version                         {"helper_version", "python"}
    facts                           host facts (hardware, OS, Docker, containers)
    metrics [--interval SECONDS]    CPU/memory/disk usage and per-container usage
    health (--address IP | --container NAME [--network NET]) --port PORT [--path PATH]
           [--host HOST] [--expect 200-399] [--timeout S] [--interval S] [--successes N]
           [--failures N] [--start-period S] [--deadline S]
                                    HTTP health check of an app container:
                                    {"ok", "status_history", "consecutive", "elapsed", ...}

Exit statuses: 0 success, 1 runtime error, 2 usage error (unknown subcommand or
bad argument), 3 health check failed (its result document is still printed).  On error the JSON document is ``{"error": "...", "kind": "..."}``.
A Docker engine that cannot be reached is not an error: ``docker.error`` (facts)
or ``docker_error`` (metrics) says why.

Notes on the output:

- facts ``containers`` lists all containers (``docker ps -a``); ``disks`` only
  local, real filesystems (no pseudo, memory, squashfs or network mounts), one
  per device; ``gpus`` every PCI display controller (base class 0x03),
  including BMC VGA chips: consumers decide what counts as a GPU.
- metrics ``cpu_percent`` is the busy share of all host CPUs (0..100);
  per-container ``cpu_percent`` is computed like ``docker stats`` (100 = one
  full core, up to 100 x CPUs) and ``memory_bytes`` excludes the reclaimable
  page cache like ``docker stats``.  The engine samples containers once per
  second, so with running containers the real window (``window_seconds``) is
  about 1 s and the command takes 1-2 s whatever ``--interval`` says; without
  running containers it takes ``--interval`` plus start-up.

Health check: GET http://ADDRESS:PORT/PATH from the host (the container's
address on its Docker network, given or looked up in the engine), redirects
never followed (a 301 is its own status). Probes start at once, one every
``--interval`` seconds, each bounded by ``--timeout``; the check passes after
``--successes`` consecutive expected statuses, and fails at ``--deadline``, or
early after ``--failures`` consecutive unexpected HTTP statuses once the
``--start-period`` is over (a wrong path or a redirect the check does not
expect will not fix itself; refused connections during boot never fail early),
or at once when the named container has exited.

Compatibility: python3 >= 3.6 (Debian 11+, Ubuntu 20.04+, RHEL 8+), amd64 and
arm64.  Keep it that way: no walrus, no dataclasses, no ``match``, no
``from __future__ import annotations``, no 3.7+ library APIs (``capture_output``,
``str.removeprefix`` ...).  Nothing here starts a subprocess: everything comes
from /proc, /sys, /etc and the Docker engine's unix socket.

Every parser is a pure function taking text or already-decoded JSON so that the
tests can feed it captured files; the ``collect_*`` functions only read files
and sockets.
"""
import json
import os
import socket
import sys
import time

VERSION = "0.1.0"

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DOCKER_TIMEOUT = 5.0  # seconds, per request to the engine
MAX_STATS_THREADS = 128  # engine stats requests in flight at once
MAX_INTERVAL = 60.0


class HelperError(Exception):
    """An error reported as ``{"error": message, "kind": kind}``."""

    def __init__(self, message, kind="error", exit_code=1):
        Exception.__init__(self, message)
        self.message = message
        self.kind = kind
        self.exit_code = exit_code


# ---------------------------------------------------------------------------
# Pure parsers
# ---------------------------------------------------------------------------

ARCH_MAP = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8l": "arm64",
}


def normalize_arch(machine):
    """``uname -m`` -> Docker/Go style arch name (amd64, arm64, else unchanged)."""
    return ARCH_MAP.get((machine or "").lower(), machine or "")


def parse_meminfo(text):
    """/proc/meminfo -> {key: bytes} ("kB" values are converted to bytes)."""
    out = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1].lower() == "kb":
            value *= 1024
        out[key.strip()] = value
    return out


def memory_from_meminfo(info):
    """Parsed meminfo -> {"total_bytes", "available_bytes", "swap_total_bytes"}.

    MemAvailable only exists since Linux 3.14; older kernels get the classic
    MemFree + Buffers + Cached estimate.  Unknown values are None.
    """
    total = info.get("MemTotal")
    available = info.get("MemAvailable")
    if available is None and "MemFree" in info:
        available = info["MemFree"] + info.get("Buffers", 0) + info.get("Cached", 0)
    return {
        "total_bytes": total,
        "available_bytes": available,
        "swap_total_bytes": info.get("SwapTotal", 0 if total is not None else None),
    }


# ARM "CPU implementer" / "CPU part" -> core name, for arm64 cpuinfo which has
# no "model name".  Only the common server/SBC cores; others stay None.
ARM_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x46": "Fujitsu",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x50": "Ampere",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0xc0": "Ampere",
}
ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd44"): "Cortex-X1",
    ("0x41", "0xd46"): "Cortex-A510",
    ("0x41", "0xd47"): "Cortex-A710",
    ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x48", "0xd01"): "Kunpeng-920",
    ("0x4e", "0x004"): "Carmel",
    ("0x50", "0x000"): "X-Gene",
    ("0xc0", "0xac3"): "AmpereOne",
}


def parse_cpuinfo(text):
    """/proc/cpuinfo -> {"count": int|None, "model": str|None}.

    count is the number of "processor" stanzas.  model is "model name" (x86,
    some arm), else the core name from "CPU implementer"/"CPU part" (arm64),
    else "Model"/"Hardware" (Raspberry Pi and other boards), else None.
    """
    count = 0
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        value = value.strip()
        if key == "processor":
            count += 1
        if key not in fields and value:
            fields[key] = value
    model = fields.get("model name") or fields.get("cpu model")
    if not model:
        impl = fields.get("CPU implementer", "").lower()
        part = fields.get("CPU part", "").lower()
        core = ARM_PARTS.get((impl, part))
        if core:
            vendor = ARM_IMPLEMENTERS.get(impl)
            model = "%s %s" % (vendor, core) if vendor and vendor != "ARM" else core
    if not model:
        model = fields.get("Model") or fields.get("Hardware") or fields.get("cpu") or None
    return {"count": count or None, "model": model}


def _unquote_os_release(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        quote = value[0]
        value = value[1:-1]
        if quote == '"':
            out = []
            i = 0
            while i < len(value):
                c = value[i]
                if c == "\\" and i + 1 < len(value) and value[i + 1] in '\\"$`':
                    out.append(value[i + 1])
                    i += 2
                    continue
                out.append(c)
                i += 1
            value = "".join(out)
    return value


def parse_os_release(text):
    """/etc/os-release (shell-style KEY=value lines) -> {KEY: value}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        out[key.strip()] = _unquote_os_release(value)
    return out


OS_FAMILIES = (
    ("debian", ("debian", "ubuntu", "raspbian")),
    ("rhel", ("rhel", "centos", "fedora", "rocky", "almalinux", "ol", "amzn")),
    ("suse", ("suse", "sles", "opensuse")),
    ("alpine", ("alpine",)),
    ("arch", ("arch",)),
)


def os_family(os_id, id_like):
    """Family from ID and ID_LIKE: debian, rhel, suse, alpine, arch, else ID."""
    candidates = [os_id or ""] + (id_like or "").split()
    for family, members in OS_FAMILIES:
        for cand in candidates:
            cand = cand.lower()
            if cand in members or any(cand.startswith(m + "-") for m in members):
                return family
    return (os_id or "linux").lower()


def os_info(fields):
    """Parsed os-release -> {"id", "version_id", "pretty_name", "family"}.

    Defaults follow os-release(5): ID=linux, PRETTY_NAME=Linux.  version_id is
    None when absent (Debian testing/sid, Arch).
    """
    os_id = fields.get("ID") or "linux"
    return {
        "id": os_id,
        "version_id": fields.get("VERSION_ID") or None,
        "pretty_name": fields.get("PRETTY_NAME") or fields.get("NAME") or "Linux",
        "family": os_family(os_id, fields.get("ID_LIKE")),
    }


def parse_proc_stat(text):
    """/proc/stat -> {"total": jiffies, "idle": jiffies} of the aggregate "cpu" line.

    idle includes iowait; guest/guest_nice are left out of total because the
    kernel already counts them in user/nice.
    """
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (8 - len(values))
            user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
            total = user + nice + system + idle + iowait + irq + softirq + steal
            return {"total": total, "idle": idle + iowait}
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def cpu_percent(a, b):
    """Busy percentage of all CPUs between two parse_proc_stat() samples (0..100)."""
    d_total = b["total"] - a["total"]
    d_idle = b["idle"] - a["idle"]
    if d_total <= 0:
        return 0.0
    busy = 100.0 * (d_total - d_idle) / d_total
    return round(min(100.0, max(0.0, busy)), 2)


def parse_loadavg(text):
    """/proc/loadavg -> [1m, 5m, 15m]."""
    parts = text.split()
    return [float(parts[0]), float(parts[1]), float(parts[2])]


def _unescape_mount_field(value):
    # /proc/mounts escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in value:
        return value
    out = []
    i = 0
    while i < len(value):
        chunk = value[i + 1:i + 4]
        if value[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_mounts(text):
    """/proc/mounts -> [{"device", "mount", "fstype", "options"}] in file order."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        out.append({
            "device": _unescape_mount_field(parts[0]),
            "mount": _unescape_mount_field(parts[1]),
            "fstype": parts[2],
            "options": parts[3] if len(parts) > 3 else "",
        })
    return out


# Filesystems that are not "disks": kernel pseudo filesystems, memory-backed
# ones, read-only images (squashfs snaps, ISO), and network filesystems (left
# out on purpose: statvfs on a dead NFS server hangs forever).
PSEUDO_FSTYPES = frozenset([
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
    "devpts", "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs",
    "proc", "pstore", "ramfs", "rootfs", "rpc_pipefs", "securityfs", "selinuxfs",
    "sysfs", "tmpfs", "tracefs", "squashfs", "iso9660", "udf", "aufs", "shm",
    "none", "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal", "fuse.snapfuse",
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "9p", "virtiofs", "overlay", "fuse-overlayfs", "fuse.fuse-overlayfs",
])
# overlay-like root filesystems are kept when they are "/" (a host that is
# itself a container); elsewhere they are container layers.
ROOT_ONLY_FSTYPES = frozenset(["overlay", "fuse-overlayfs", "fuse.fuse-overlayfs", "aufs", "9p", "virtiofs"])
# Files the container runtime bind-mounts into a container (a host that is a
# container shows them); they are not mount points anybody cares about.
RUNTIME_FILE_MOUNTS = frozenset(["/etc/resolv.conf", "/etc/hostname", "/etc/hosts"])


def filter_mounts(mounts):
    """Keep real filesystems only, one entry per device.

    Drops pseudo/memory/network filesystems and the files a container runtime
    bind-mounts (/etc/hosts ...), keeps "/" even when it is an overlay, collapses repeated mount points (the last mount wins, as in the
    kernel) and bind mounts / btrfs subvolumes of one device ("/" wins, else
    the shortest mount path).
    """
    by_mount = {}
    order = []
    for m in mounts:
        fstype = m["fstype"]
        mount = m["mount"]
        if fstype in PSEUDO_FSTYPES and not (mount == "/" and fstype in ROOT_ONLY_FSTYPES):
            continue
        if not mount.startswith("/") or mount in RUNTIME_FILE_MOUNTS:
            continue
        if mount not in by_mount:
            order.append(mount)
        by_mount[mount] = m
    by_device = {}
    for mount in order:
        m = by_mount[mount]
        key = m["device"]
        best = by_device.get(key)
        if best is None or _mount_rank(m) < _mount_rank(best):
            by_device[key] = m
    kept = sorted(by_device.values(), key=lambda m: (m["mount"] != "/", m["mount"]))
    return kept


def _mount_rank(m):
    return (m["mount"] != "/", len(m["mount"]), m["mount"])


def disk_usage(total_blocks, free_blocks, avail_blocks, fragment_size):
    """statvfs numbers -> (total_bytes, free_bytes, used_percent) like df.

    free_bytes is what unprivileged users can still write (f_bavail); the
    percentage is used / (used + available), as df prints it.
    """
    total = total_blocks * fragment_size
    avail = avail_blocks * fragment_size
    used = (total_blocks - free_blocks) * fragment_size
    denom = used + avail
    pct = round(100.0 * used / denom, 2) if denom > 0 else 0.0
    return total, avail, pct


PCI_VENDORS = {
    "0x10de": "nvidia",
    "0x1002": "amd",
    "0x1022": "amd",
    "0x8086": "intel",
    "0x1a03": "aspeed",
    "0x102b": "matrox",
    "0x1013": "cirrus",
    "0x15ad": "vmware",
    "0x1234": "qemu",
    "0x1af4": "virtio",
    "0x1b36": "qemu",
    "0x1414": "microsoft",
    "0x80ee": "virtualbox",
    "0x5143": "qualcomm",
    "0x13b5": "arm",
}


def is_display_class(pci_class):
    """PCI class code (e.g. "0x030200") is a display controller (base class 0x03)."""
    value = (pci_class or "").strip().lower()
    if value.startswith("0x"):
        value = value[2:]
    return len(value) == 6 and value.startswith("03")


def gpu_entry(pci_address, vendor_id, device_id, model=None):
    """One GPU record from sysfs values."""
    vendor_id = (vendor_id or "").strip().lower()
    device_id = (device_id or "").strip().lower()
    return {
        "vendor": PCI_VENDORS.get(vendor_id, vendor_id or "unknown"),
        "pci_address": pci_address,
        "vendor_id": vendor_id,
        "device_id": device_id,
        "model": model,
    }


def parse_nvidia_information(text):
    """/proc/driver/nvidia/gpus/<bus>/information -> {"model", "bus_location", "uuid"}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key == "model":
            out["model"] = value
        elif key == "bus location":
            out["bus_location"] = value
        elif key == "gpu uuid":
            out["uuid"] = value
    return out


def lookup_pci_ids(text, vendor_id, device_id):
    """Device name for vendor/device ids ("0x10de", "0x2204") in pci.ids text, or None."""
    vendor = vendor_id.lower().replace("0x", "")
    device = device_id.lower().replace("0x", "")
    in_vendor = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line[0] != "\t":
            if line.startswith("C "):
                break  # device classes follow the vendor list
            in_vendor = line[:4].lower() == vendor
            continue
        if in_vendor and not line.startswith("\t\t") and line[1:5].lower() == device:
            return line[5:].strip() or None
    return None


def normalize_pci_address(address):
    """"00000000:07:00.0" (NVIDIA proc) / "0000:07:00.0" (sysfs) -> "0000:07:00.0"."""
    address = address.strip().lower()
    parts = address.split(":")
    if len(parts) == 3:
        parts[0] = parts[0][-4:].rjust(4, "0")
        return ":".join(parts)
    return address


def parse_docker_host(value, default=DEFAULT_DOCKER_SOCKET):
    """DOCKER_HOST value -> unix socket path.  Raises HelperError for non-unix hosts."""
    if not value:
        return default
    if value.startswith("unix://"):
        return value[len("unix://"):] or default
    if value.startswith("/"):
        return value
    raise HelperError(
        "DOCKER_HOST=%s is not a unix socket; the helper only talks to a local engine" % value,
        kind="docker",
    )


def docker_version_info(doc):
    """GET /version document -> (version, api_version)."""
    if not isinstance(doc, dict):
        return None, None
    return doc.get("Version"), doc.get("ApiVersion")


def container_entries(items):
    """GET /containers/json document -> [{"id", "name", "image", "state", "status", "labels"}]."""
    out = []
    for c in items or []:
        if not isinstance(c, dict):
            continue
        names = c.get("Names") or []
        name = names[0].lstrip("/") if names else ""
        out.append({
            "id": (c.get("Id") or "")[:12],
            "name": name,
            "image": c.get("Image") or "",
            "state": c.get("State") or "",
            "status": c.get("Status") or "",
            "labels": c.get("Labels") or {},
        })
    out.sort(key=lambda c: (c["name"], c["id"]))
    return out


def api_at_least(api_version, wanted):
    """"1.41" >= "1.40" on the engine API version (None -> False)."""
    try:
        have = tuple(int(p) for p in str(api_version).split("."))
        want = tuple(int(p) for p in wanted.split("."))
    except ValueError:
        return False
    return have >= want


def _cpu_sample(stats, key):
    section = (stats or {}).get(key) or {}
    usage = (section.get("cpu_usage") or {}).get("total_usage")
    system = section.get("system_cpu_usage")
    online = section.get("online_cpus") or len((section.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    return usage, system, online


def container_cpu_percent(first, second):
    """CPU % of one container from two stats documents, as `docker stats` does.

    (delta total_usage / delta system_cpu_usage) * online_cpus * 100.  Pass the
    same document twice to use its own cpu_stats/precpu_stats pair (engines
    older than API 1.41 without one-shot).  None when it cannot be computed.
    """
    if first is second:
        u0, s0, _ = _cpu_sample(first, "precpu_stats")
    else:
        u0, s0, _ = _cpu_sample(first, "cpu_stats")
    u1, s1, online = _cpu_sample(second, "cpu_stats")
    if None in (u0, s0, u1, s1):
        return None
    d_usage = u1 - u0
    d_system = s1 - s0
    if d_system <= 0 or d_usage < 0:
        return 0.0
    return round(100.0 * d_usage / d_system * online, 2)


def container_memory(stats):
    """(memory_bytes, memory_limit_bytes) from a stats document, as `docker stats` does.

    usage minus the page cache that can be dropped: total_inactive_file
    (cgroup v1), inactive_file (cgroup v2), or cache (old engines).
    """
    mem = (stats or {}).get("memory_stats") or {}
    usage = mem.get("usage")
    limit = mem.get("limit")
    if usage is None:
        return None, limit
    detail = mem.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file", "cache"):
        value = detail.get(key)
        if value is not None and value < usage:
            return usage - value, limit
    return usage, limit


# ---------------------------------------------------------------------------
# Collectors: read files and sockets, call the parsers above
# ---------------------------------------------------------------------------

def _read(path, default=None):
    # explicit encoding: under LANG=C, python 3.6 would decode as ASCII
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, IOError, UnicodeDecodeError):
        return default


def collect_memory():
    text = _read("/proc/meminfo")
    mem = memory_from_meminfo(parse_meminfo(text)) if text else memory_from_meminfo({})
    if mem["total_bytes"] is None:
        try:
            mem["total_bytes"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    return mem


def collect_cpus():
    text = _read("/proc/cpuinfo")
    info = parse_cpuinfo(text) if text else {"count": None, "model": None}
    if not info["count"]:
        info["count"] = os.cpu_count()
    return info


def collect_os():
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = _read(path)
        if text is not None:
            return os_info(parse_os_release(text))
    return os_info({})


def collect_disks():
    text = _read("/proc/mounts") or _read("/proc/self/mounts") or ""
    out = []
    for m in filter_mounts(parse_mounts(text)):
        try:
            st = os.statvfs(m["mount"])
        except OSError:
            continue
        total, free, pct = disk_usage(st.f_blocks, st.f_bfree, st.f_bavail, st.f_frsize or st.f_bsize)
        if total <= 0:
            continue
        out.append({
            "mount": m["mount"],
            "device": m["device"],
            "fstype": m["fstype"],
            "total_bytes": total,
            "free_bytes": free,
            "used_percent": pct,
        })
    return out


PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


def collect_gpus(sys_pci="/sys/bus/pci/devices", nvidia_proc="/proc/driver/nvidia/gpus"):
    gpus = []
    try:
        addresses = sorted(os.listdir(sys_pci))
    except OSError:
        addresses = []
    for addr in addresses:
        base = os.path.join(sys_pci, addr)
        if not is_display_class(_read(os.path.join(base, "class"), "")):
            continue
        gpu = gpu_entry(addr, _read(os.path.join(base, "vendor"), ""), _read(os.path.join(base, "device"), ""))
        product = _read(os.path.join(base, "product_name"))  # amdgpu exposes it on some boards
        if product and product.strip():
            gpu["model"] = product.strip()
        gpus.append(gpu)
    # The NVIDIA driver knows the marketing name; it may also list GPUs that
    # sysfs does not show (restricted containers).
    try:
        nv_dirs = sorted(os.listdir(nvidia_proc))
    except OSError:
        nv_dirs = []
    by_addr = dict((normalize_pci_address(g["pci_address"]), g) for g in gpus)
    for d in nv_dirs:
        info = parse_nvidia_information(_read(os.path.join(nvidia_proc, d, "information"), ""))
        addr = normalize_pci_address(info.get("bus_location") or d)
        gpu = by_addr.get(addr)
        if gpu is None:
            gpu = gpu_entry(addr, "0x10de", "")
            gpus.append(gpu)
            by_addr[addr] = gpu
        if info.get("model"):
            gpu["model"] = info["model"]
    missing = [g for g in gpus if not g["model"] and g["device_id"]]
    if missing:
        for path in PCI_IDS_PATHS:
            text = _read(path)
            if text:
                for g in missing:
                    g["model"] = lookup_pci_ids(text, g["vendor_id"], g["device_id"])
                break
    return gpus


def _current_user(uid):
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER") or os.environ.get("LOGNAME") or str(uid)


def python_version():
    return "%d.%d.%d" % tuple(sys.version_info[:3])


# --- Docker engine over its unix socket ------------------------------------

_CONN_CLASS = []


def _unix_connection_class():
    if not _CONN_CLASS:
        import http.client

        class UnixHTTPConnection(http.client.HTTPConnection):
            def __init__(self, path, timeout=DOCKER_TIMEOUT):
                http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
                self.unix_path = path

            def connect(self):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.unix_path)
                except Exception:
                    sock.close()
                    raise
                self.sock = sock

        _CONN_CLASS.append(UnixHTTPConnection)
    return _CONN_CLASS[0]


class DockerError(Exception):
    pass


def docker_get(socket_path, path, timeout=DOCKER_TIMEOUT):
    """GET path from the engine, return the decoded JSON body.  Raises DockerError."""
    conn = _unix_connection_class()(socket_path, timeout=timeout)
    try:
        try:
            conn.request("GET", path, headers={"Host": "docker", "Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        except PermissionError:
            raise DockerError(
                "permission denied on %s (user %s cannot use Docker: add it to the docker group or use root)"
                % (socket_path, _current_user(os.getuid())))
        except FileNotFoundError:
            raise DockerError("Docker socket %s does not exist (dockerd not running?)" % socket_path)
        except ConnectionRefusedError:
            raise DockerError("connection refused on %s (dockerd not running?)" % socket_path)
        except socket.timeout:
            raise DockerError("Docker engine did not answer GET %s within %ss" % (path, timeout))
        except (OSError, IOError) as e:
            raise DockerError("cannot talk to the Docker engine on %s: %s" % (socket_path, e))
        except Exception as e:  # http.client.HTTPException and friends
            raise DockerError("bad answer from the Docker engine on %s: %s" % (socket_path, e))
    finally:
        conn.close()
    try:
        doc = json.loads(body.decode("utf-8")) if body else None
    except ValueError:
        doc = None
    if resp.status != 200:
        message = doc.get("message") if isinstance(doc, dict) else None
        raise DockerError("Docker engine answered %d to GET %s: %s" % (resp.status, path, message or resp.reason))
    return doc


def _which(name):
    import shutil
    return shutil.which(name) is not None


def docker_socket_path():
    return parse_docker_host(os.environ.get("DOCKER_HOST"))


def collect_docker(want_containers=True, all_containers=True):
    """-> (docker info dict, containers list).  Never raises."""
    info = {"installed": False, "running": False, "version": None, "api_version": None, "error": None}
    try:
        sock = docker_socket_path()
    except HelperError as e:
        info["installed"] = _which("dockerd") or _which("docker")
        info["error"] = e.message
        return info, []
    sock_exists = os.path.exists(sock)
    info["installed"] = bool(sock_exists or _which("dockerd") or _which("docker"))
    if not sock_exists:
        if info["installed"]:
            info["error"] = "Docker socket %s does not exist (dockerd not running?)" % sock
        return info, []
    containers = []
    try:
        info["version"], info["api_version"] = docker_version_info(docker_get(sock, "/version"))
        info["running"] = True
        if want_containers:
            query = "?all=1" if all_containers else ""
            containers = container_entries(docker_get(sock, "/containers/json" + query))
    except DockerError as e:
        info["error"] = str(e)
    return info, containers


# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------

def cmd_version(args):
    if args:
        raise HelperError("version takes no arguments", kind="usage", exit_code=2)
    return {"helper_version": VERSION, "python": python_version()}


def cmd_facts(args):
    if args:
        raise HelperError("facts takes no arguments", kind="usage", exit_code=2)
    uname = os.uname()
    uid = os.getuid()
    docker, containers = collect_docker()
    return {
        "helper_version": VERSION,
        "collected_at": round(time.time(), 3),
        "hostname": socket.gethostname(),
        "arch": normalize_arch(uname.machine),
        "machine": uname.machine,
        "cpus": collect_cpus(),
        "memory": collect_memory(),
        "disks": collect_disks(),
        "gpus": collect_gpus(),
        "os": collect_os(),
        "kernel": {"release": uname.release, "version": uname.version},
        "python": python_version(),
        "user": _current_user(uid),
        "uid": uid,
        "docker": docker,
        "containers": containers,
    }


def parse_metrics_args(args):
    """["--interval", "0.2"] / ["--interval=0.2"] -> interval seconds (default 0.5)."""
    interval = 0.5
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--interval":
            if i + 1 >= len(args):
                raise HelperError("--interval needs a value", kind="usage", exit_code=2)
            value = args[i + 1]
            i += 2
        elif arg.startswith("--interval="):
            value = arg.split("=", 1)[1]
            i += 1
        else:
            raise HelperError("unknown argument for metrics: %s" % arg, kind="usage", exit_code=2)
        try:
            interval = float(value)
        except ValueError:
            raise HelperError("--interval: not a number: %s" % value, kind="usage", exit_code=2)
        if not (0.0 <= interval <= MAX_INTERVAL):
            raise HelperError("--interval must be between 0 and %g seconds" % MAX_INTERVAL,
                              kind="usage", exit_code=2)
    return interval


def _read_proc_stat():
    text = _read("/proc/stat")
    if text is None:
        raise HelperError("cannot read /proc/stat", kind="proc")
    return parse_proc_stat(text)


def _stats_path(cid, one_shot):
    return "/containers/%s/stats?stream=false%s" % (cid, "&one-shot=true" if one_shot else "")


def _fetch_stats(sock, cid, one_shot):
    try:
        return docker_get(sock, _stats_path(cid, one_shot))
    except DockerError:
        return None


def cmd_metrics(args):
    interval = parse_metrics_args(args)
    docker, running = collect_docker(all_containers=False)
    sock = docker_socket_path() if docker["running"] else None
    running = [c for c in running if c["state"] == "running"] if docker["running"] else []
    # The engine samples container stats on its own clock: its collector
    # publishes once a second, and a stats request waits for the next
    # publication (0..1 s).  So container CPU always spans >= ~1 s of engine
    # time whatever --interval says.  To keep host and container numbers on
    # the same window, the host /proc/stat samples are taken when the engine
    # samples come back, not on our own clock.
    # API >= 1.41 (Docker 20.10) has one-shot: one sample at each end of the
    # window.  Older engines ignore one-shot and answer stream=false after two
    # publications (cpu_stats + precpu_stats): one request per container.
    one_shot = api_at_least(docker["api_version"], "1.41")

    pool = None
    if running:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=min(MAX_STATS_THREADS, len(running)))

    def wave():
        futures = [pool.submit(_fetch_stats, sock, c["id"], one_shot) for c in running]
        return [f.result() for f in futures]

    first = []
    if pool and one_shot:
        first = wave()
    start = time.monotonic()
    stat_a = _read_proc_stat()
    if pool and not one_shot:
        first = wave()
    remaining = interval - (time.monotonic() - start)
    if remaining > 0:
        time.sleep(remaining)
    second = wave() if pool and one_shot else (first if pool else [])
    stat_b = _read_proc_stat()
    window = time.monotonic() - start
    if pool:
        pool.shutdown(wait=True)

    containers = []
    for c, a, b in zip(running, first, second):
        if a is None or b is None:
            cpu, (mem, limit) = None, (None, None)
        else:
            cpu = container_cpu_percent(a, b)
            mem, limit = container_memory(b)
        containers.append({"id": c["id"], "name": c["name"], "cpu_percent": cpu,
                           "memory_bytes": mem, "memory_limit_bytes": limit})

    mem = collect_memory()
    total, avail = mem["total_bytes"], mem["available_bytes"]
    used_pct = round(100.0 * (total - avail) / total, 2) if total and avail is not None else None
    try:
        load = [round(x, 2) for x in parse_loadavg(_read("/proc/loadavg", ""))]
    except (ValueError, IndexError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "helper_version": VERSION,
        "collected_at": round(time.time(), 3),
        "interval": interval,
        "window_seconds": round(window, 3),
        "cpu_percent": cpu_percent(stat_a, stat_b),
        "load": load,
        "memory": {"total_bytes": total, "available_bytes": avail, "used_percent": used_pct},
        "disks": [{"mount": d["mount"], "total_bytes": d["total_bytes"], "free_bytes": d["free_bytes"],
                   "used_percent": d["used_percent"]} for d in collect_disks()],
        "containers": containers,
        "docker_error": docker["error"],
    }


# ---------------------------------------------------------------------------
# health: HTTP probes of an app container, from the host
# ---------------------------------------------------------------------------

UNHEALTHY = 3  # exit status of a failed health check
HEALTH_HISTORY = 10  # probe results kept in the output
MAX_DEADLINE = 3600.0
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


def parse_status_spec(spec):
    """"200-399" / "200,204" / "200-299,301" -> [(low, high), ...]; HelperError (usage) if invalid."""
    ranges = []
    text = (spec or "").strip()
    if not text:
        raise HelperError("--expect: empty status list", kind="usage", exit_code=2)
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        try:
            lo = int(low.strip())
            hi = int(high.strip()) if sep else lo
        except ValueError:
            raise HelperError("--expect: not a status or range: %r" % part, kind="usage", exit_code=2)
        if not (100 <= lo <= 599 and 100 <= hi <= 599) or lo > hi:
            raise HelperError("--expect: statuses are 100-599, low before high: %r" % part,
                              kind="usage", exit_code=2)
        ranges.append((lo, hi))
    return ranges


def status_expected(status, ranges):
    return status is not None and any(lo <= status <= hi for lo, hi in ranges)


def _bad_header_text(value):
    return any(ord(c) < 33 or ord(c) == 127 for c in value)


HEALTH_DEFAULTS = {
    "address": None, "container": None, "network": "nextdeploy", "port": None, "path": "/",
    "host": None, "expect": "200-399", "timeout": 2.0, "interval": 1.0, "successes": 2,
    "failures": 3, "start_period": 0.0, "deadline": 60.0,
}
_HEALTH_FLOATS = {"timeout": (0.001, MAX_DEADLINE), "interval": (0.0, MAX_DEADLINE),
                  "start_period": (0.0, MAX_DEADLINE), "deadline": (0.001, MAX_DEADLINE)}
_HEALTH_INTS = {"port": (1, 65535), "successes": (1, 1000), "failures": (0, 1000)}


def parse_health_args(args):
    """Command-line words -> options dict (see HEALTH_DEFAULTS); HelperError (usage) if invalid."""
    opts = dict(HEALTH_DEFAULTS)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise HelperError("unexpected argument for health: %s" % arg, kind="usage", exit_code=2)
        name, sep, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key not in HEALTH_DEFAULTS:
            raise HelperError("unknown option for health: --%s" % name, kind="usage", exit_code=2)
        if not sep:
            if i + 1 >= len(args):
                raise HelperError("--%s needs a value" % name, kind="usage", exit_code=2)
            value = args[i + 1]
            i += 1
        i += 1
        if key in _HEALTH_FLOATS:
            lo, hi = _HEALTH_FLOATS[key]
            try:
                num = float(value)
            except ValueError:
                raise HelperError("--%s: not a number: %s" % (name, value), kind="usage", exit_code=2)
            if not (lo <= num <= hi):
                raise HelperError("--%s must be between %g and %g seconds" % (name, lo, hi),
                                  kind="usage", exit_code=2)
            opts[key] = num
        elif key in _HEALTH_INTS:
            lo, hi = _HEALTH_INTS[key]
            try:
                num = int(value)
            except ValueError:
                raise HelperError("--%s: not an integer: %s" % (name, value), kind="usage", exit_code=2)
            if not (lo <= num <= hi):
                raise HelperError("--%s must be between %d and %d" % (name, lo, hi), kind="usage", exit_code=2)
            opts[key] = num
        else:
            opts[key] = value
    if (opts["address"] is None) == (opts["container"] is None):
        raise HelperError("health needs exactly one of --address or --container", kind="usage", exit_code=2)
    if opts["port"] is None:
        raise HelperError("health needs --port", kind="usage", exit_code=2)
    if opts["address"] is not None:
        import ipaddress
        try:
            ipaddress.ip_address(opts["address"])
        except ValueError:
            raise HelperError("--address: not an IP address: %s" % opts["address"], kind="usage", exit_code=2)
    for key in ("container", "network"):
        v = opts[key]
        if v is not None and (not v or not all(c in _NAME_CHARS for c in v) or v[0] in "_.-"):
            raise HelperError("--%s: not a Docker name: %r" % (key, v), kind="usage", exit_code=2)
    if not opts["path"].startswith("/") or _bad_header_text(opts["path"]):
        raise HelperError("--path must start with / and contain no spaces or control characters: %r"
                          % opts["path"], kind="usage", exit_code=2)
    if opts["host"] is not None and (not opts["host"] or _bad_header_text(opts["host"])):
        raise HelperError("--host: not a valid Host header: %r" % opts["host"], kind="usage", exit_code=2)
    opts["expect_ranges"] = parse_status_spec(opts["expect"])
    return opts


def _host_port(address, port):
    return ("[%s]:%d" if ":" in address else "%s:%d") % (address, port)


def probe_http(address, port, path, host, timeout):
    """One GET without following redirects -> (status or None, error or None, latency seconds)."""
    import http.client

    started = time.monotonic()
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or _host_port(address, port))
        conn.putheader("User-Agent", "ndctl-health/%s" % VERSION)
        conn.putheader("Accept", "*/*")
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        latency = time.monotonic() - started
        try:
            resp.read(65536)  # a polite read; the status is what counts
        except Exception:
            pass
        return resp.status, None, latency
    except socket.timeout:
        return None, "timed out after %gs" % timeout, time.monotonic() - started
    except ConnectionRefusedError:
        return None, "connection refused", time.monotonic() - started
    except (OSError, IOError) as e:
        return None, (e.strerror or str(e) or type(e).__name__), time.monotonic() - started
    except Exception as e:  # http.client.HTTPException: not an HTTP answer
        return None, "bad HTTP answer: %s" % (str(e) or type(e).__name__), time.monotonic() - started
    finally:
        conn.close()


def container_address(doc, network):
    """Engine's /containers/NAME/json -> (address or None, exited: None or a reason)."""
    state = (doc or {}).get("State") or {}
    status = state.get("Status")
    if status in ("exited", "dead", "removing"):
        return None, "container exited (status %s, exit code %s)" % (status, state.get("ExitCode"))
    nets = ((doc or {}).get("NetworkSettings") or {}).get("Networks") or {}
    addr = (nets.get(network) or {}).get("IPAddress") or None
    return addr, None


def _inspect_container(name, network):
    try:
        doc = docker_get(docker_socket_path(), "/containers/%s/json" % name)
    except DockerError as e:
        return None, None, str(e)
    addr, exited = container_address(doc, network)
    return addr, exited, None


def run_health(opts, probe=probe_http, clock=time.monotonic, sleep=time.sleep, inspect=_inspect_container):
    """The probe loop; ``probe``, ``clock``, ``sleep`` and ``inspect`` are injectable for tests."""
    start = clock()
    deadline = start + opts["deadline"]
    ranges = opts["expect_ranges"]
    history = []
    consecutive = 0
    unexpected = 0
    probes = 0
    address = opts["address"]
    reason = None
    ok = False
    while True:
        t0 = clock()
        status, error, latency = None, None, 0.0
        inspected = address is None
        if inspected:
            address, exited, error = inspect(opts["container"], opts["network"])
            if exited:
                reason = exited
            elif address is None and error is None:
                error = "container has no address on network %s" % opts["network"]
        if reason is None and address is not None:
            budget = max(0.05, min(opts["timeout"], deadline - t0))
            status, error, latency = probe(address, opts["port"], opts["path"], opts["host"], budget)
        if reason is None:
            probes += 1
            good = status_expected(status, ranges)
            history.append({"at": round(t0 - start, 3), "status": status, "error": error,
                            "latency": round(latency, 4), "ok": good})
            del history[:-HEALTH_HISTORY]
            if good:
                consecutive += 1
                unexpected = 0
            else:
                consecutive = 0
                if status is not None and t0 - start >= opts["start_period"]:
                    unexpected += 1
                elif status is None and opts["container"] is not None and not inspected:
                    # a refused probe: did the container die? (then waiting is pointless)
                    addr2, exited, _ = inspect(opts["container"], opts["network"])
                    if exited:
                        reason = exited
                    elif addr2:
                        address = addr2
            if consecutive >= opts["successes"]:
                ok = True
            elif opts["failures"] and unexpected >= opts["failures"]:
                reason = "%d consecutive unexpected HTTP statuses (expected %s), last %s" % (
                    unexpected, opts["expect"], status)
        if ok or reason is not None:
            break
        next_at = t0 + opts["interval"]
        if next_at >= deadline:
            reason = "deadline of %gs passed with %d/%d consecutive successes" % (
                opts["deadline"], consecutive, opts["successes"])
            break
        pause = next_at - clock()
        if pause > 0:
            sleep(pause)
    return {
        "ok": ok,
        "reason": reason,
        "status_history": history,
        "consecutive": consecutive,
        "probes": probes,
        "elapsed": round(clock() - start, 3),
        "address": address,
        "url": "http://%s%s" % (_host_port(address, opts["port"]), opts["path"]) if address else None,
    }


def cmd_health(args):
    return run_health(parse_health_args(args))


COMMANDS = {
    "version": cmd_version,
    "facts": cmd_facts,
    "metrics": cmd_metrics,
    "health": cmd_health,
}


def _emit(doc):
    sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    sys.stdout.write("\n")
    sys.stdout.flush()


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        what = argv[0] if argv else "(none)"
        _emit({"error": "unknown subcommand %s; expected one of: %s" % (what, ", ".join(sorted(COMMANDS))),
               "kind": "usage"})
        return 2
    try:
        doc = COMMANDS[argv[0]](argv[1:])
    except HelperError as e:
        _emit({"error": e.message, "kind": e.kind})
        return e.exit_code
    except KeyboardInterrupt:
        _emit({"error": "interrupted", "kind": "interrupted"})
        return 1
    except Exception as e:  # report, never a traceback on stdout
        _emit({"error": "%s: %s" % (type(e).__name__, e), "kind": "internal"})
        return 1
    _emit(doc)
    if argv[0] == "health" and not doc.get("ok"):
        return UNHEALTHY
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
