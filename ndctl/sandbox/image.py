"""The test host image: a debootstrapped Debian bookworm rootfs, ``docker import``ed.

Built once and cached twice: as the image ``ndctl-testhost:<recipe hash>`` and
as a rootfs tarball under ``/var/cache/ndctl/`` (so that ``docker system
prune`` does not cost another debootstrap). An fcntl lock serialises builders.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from ._util import SandboxError, docker, file_lock, run

IMAGE_REPO = "ndctl-testhost"
CACHE_DIR = Path(os.environ.get("NDCTL_CACHE_DIR", "/var/cache/ndctl"))
SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = (
    "openssh-server",
    "python3",
    "iptables",
    "docker.io",  # pulls in containerd, runc and tini
    "iproute2",
    "procps",
    "ca-certificates",
    "sudo",  # for tests of non-root logins that escalate with sudo
)
#: bump to force a rebuild when something outside the texts below changes
RECIPE_VERSION = 1

SSHD_CONFIG = """\
# ndctl test host: root login by key only, nothing slow.
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
MaxStartups 100:30:200
MaxSessions 64
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

# PID 1 is tini (reaps zombies, forwards signals); this script is its child.
ENTRYPOINT_SCRIPT = r"""#!/bin/sh
# ndctl test host init: own sshd + own dockerd, then wait.
set -u
name="$(hostname)"
log() { echo "ndctl-testhost[$name]: $*"; }

mkdir -p /run/sshd /root/.ssh
chmod 0755 /run/sshd
chmod 0700 /root/.ssh
# Host keys are never baked into the image: one per container, made at first start.
# Only ed25519 (RSA generation would cost a noticeable part of the start-up time).
if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f /etc/ssh/ssh_host_ed25519_key
fi
/usr/sbin/sshd -D -e &
sshd_pid=$!

alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$1/status" 2>/dev/null; }

dockerd_pid=""
start_dockerd() {
    rm -f /var/run/docker.sock /var/run/docker.pid
    dockerd --cgroup-parent="/$name" --host unix:///var/run/docker.sock \
        --storage-driver "$1" --log-level warn &
    dockerd_pid=$!
}
# 0: answers; 1: died; 2: still starting after a minute
wait_dockerd() {
    i=0
    while [ "$i" -lt 600 ]; do
        if [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1; then return 0; fi
        if ! alive "$dockerd_pid"; then wait "$dockerd_pid" 2>/dev/null; return 1; fi
        sleep 0.1
        i=$((i + 1))
    done
    return 2
}

driver=overlay2
start_dockerd overlay2
if wait_dockerd; then :; else
    rc=$?
    if [ "$rc" -eq 1 ]; then
        log "dockerd with overlay2 failed; falling back to vfs"
        driver=vfs
        start_dockerd vfs
        wait_dockerd || log "dockerd (vfs) did not come up"
    else
        log "dockerd is slow to start"
    fi
fi
echo "$driver" > /run/ndctl-testhost.storage-driver
log "ready (storage driver $driver)"

term() {
    log "stopping"
    kill -TERM "$dockerd_pid" "$sshd_pid" 2>/dev/null
    wait
    exit 0
}
trap term TERM INT HUP
while :; do
    sleep 86400 &
    wait $!
done
"""

ENTRYPOINT_PATH = "/usr/local/sbin/ndctl-testhost-init"
IMAGE_CHANGES = (
    f'ENTRYPOINT ["/usr/bin/tini", "--", "{ENTRYPOINT_PATH}"]',
    "CMD []",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "WORKDIR /root",
)


def rootfs_recipe() -> dict:
    """Everything that determines the rootfs content (the mirror does not)."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "include": list(INCLUDE),
        "sshd_config": SSHD_CONFIG,
        "entrypoint": ENTRYPOINT_SCRIPT,
        "customize": inspect.getsource(_customize),
    }


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_tag() -> str:
    return _hash(rootfs_recipe())


def recipe_tag() -> str:
    """The image tag: the rootfs recipe plus the image config (``docker import --change``)."""
    return _hash({"rootfs": rootfs_tag(), "changes": list(IMAGE_CHANGES)})


def image_ref() -> str:
    return f"{IMAGE_REPO}:{recipe_tag()}"


def rootfs_tarball() -> Path:
    return CACHE_DIR / f"{IMAGE_REPO}-rootfs-{rootfs_tag()}.tar"


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", "--format", "{{.Id}}", ref, check=False).returncode == 0


def ensure_image(*, log=None) -> str:
    """Return the test host image ref, importing/building it if needed.

    Order: existing image -> cached rootfs tarball -> debootstrap (about a
    minute). Safe to call concurrently from several processes.
    """
    ref = image_ref()
    if image_exists(ref):
        return ref
    say = log or (lambda msg: None)
    with file_lock(CACHE_DIR / "build.lock", timeout=1800, what="test host image build"):
        if image_exists(ref):  # another builder finished while we waited
            return ref
        tarball = rootfs_tarball()
        if not tarball.exists():
            say(f"building the test host rootfs with debootstrap ({SUITE}, about a minute)")
            build_rootfs_tarball(tarball)
        say(f"importing {tarball} as {ref}")
        argv = ["import"]
        for change in IMAGE_CHANGES:
            argv += ["--change", change]
        argv += ["--change", f"LABEL ndctl.testhost.recipe={recipe_tag()}"]
        argv += ["--message", f"ndctl test host, recipe {recipe_tag()}", str(tarball), ref]
        docker(*argv, timeout=900)
    return ref


# ---------------------------------------------------------------------------
# apt mirror discovery


def _parse_one_line_sources(text: str) -> list[tuple[str, list[str], list[str], str | None]]:
    """``deb [opts] URI suite comp...`` lines -> (uri, suites, components, signed_by)."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        signed_by = None
        m = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
        if m:
            for opt in m.group(1).split():
                if opt.startswith("signed-by="):
                    signed_by = opt.split("=", 1)[1]
            rest = m.group(2).split()
        else:
            rest = line.split()[1:]
        if len(rest) >= 2:
            out.append((rest[0], [rest[1]], rest[2:], signed_by))
    return out


def _parse_deb822_sources(text: str) -> list[tuple[str, list[str], list[str], str | None]]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
                continue
            if ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and "\n" in signed_by:  # an inline key block, not a path
            signed_by = None
        for uri in fields.get("uris", "").split():
            out.append((uri, fields.get("suites", "").split(), fields.get("components", "").split(), signed_by))
    return out


def apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[tuple[str, list[str], list[str], str | None]]:
    entries = []
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        entries += _parse_deb822_sources(text) if f.suffix == ".sources" else _parse_one_line_sources(text)
    return entries


def debian_mirror(etc_apt: Path = Path("/etc/apt"), suite: str = SUITE) -> tuple[str, str | None]:
    """The machine's configured Debian archive mirror (and its keyring, if named).

    ``NDCTL_DEBIAN_MIRROR`` overrides. Security/updates/backports suites are
    not archive mirrors; an entry for ``suite`` is preferred.
    """
    env = os.environ.get("NDCTL_DEBIAN_MIRROR")
    if env:
        return env, None
    candidates = []
    for uri, suites, comps, signed_by in apt_sources(etc_apt):
        if not re.match(r"(https?|file)://", uri) or "main" not in comps:
            continue
        plain = [s for s in suites if "-" not in s and "/" not in s]
        if not plain:
            continue
        candidates.append((0 if suite in plain else 1, uri, signed_by))
    if not candidates:
        raise SandboxError(
            f"no Debian archive mirror found in {etc_apt}/sources.list(.d)",
            hint="set NDCTL_DEBIAN_MIRROR=http://<mirror>/debian",
        )
    candidates.sort(key=lambda c: c[0])
    _, uri, signed_by = candidates[0]
    return uri, signed_by


def _apt_proxy_env() -> dict[str, str]:
    """debootstrap uses wget, which ignores apt.conf proxies: pass them on."""
    env = dict(os.environ)
    if env.get("http_proxy") or not shutil.which("apt-config"):
        return env
    cp = run(["apt-config", "shell", "P", "Acquire::http::Proxy"], check=False)
    m = re.search(r"P='([^']+)'", cp.stdout or "")
    if m and m.group(1).upper() not in ("DIRECT", "FALSE"):
        env["http_proxy"] = m.group(1)
    return env


# ---------------------------------------------------------------------------
# rootfs build


def _mounts_under(path: Path) -> list[str]:
    root = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == root or mnt.startswith(root + "/"):
                found.append(mnt)
    return found


def safe_rmtree(path: Path) -> None:
    """Remove a chroot dir: unmount anything left under it first, never cross file systems."""
    if not os.path.lexists(path):
        return
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    if _mounts_under(path):
        raise SandboxError(f"refusing to remove {path}: still has mounts {_mounts_under(path)}")
    run(["rm", "-rf", "--one-file-system", str(path)], timeout=600)


def _customize(root: Path) -> None:
    """Write sshd_config + entrypoint, drop host keys, empty root's start-up files, trim caches."""
    etc_ssh = root / "etc/ssh"
    for key in etc_ssh.glob("ssh_host_*"):
        key.unlink()
    (etc_ssh / "sshd_config").write_text(SSHD_CONFIG)
    conf_d = etc_ssh / "sshd_config.d"
    if conf_d.is_dir():
        for f in conf_d.iterdir():
            f.unlink()
    ep = root / ENTRYPOINT_PATH.lstrip("/")
    ep.parent.mkdir(parents=True, exist_ok=True)
    ep.write_text(ENTRYPOINT_SCRIPT)
    ep.chmod(0o755)
    rootdir = root / "root"
    rootdir.mkdir(mode=0o700, exist_ok=True)
    for name in (".bashrc", ".profile"):
        (rootdir / name).write_text("")
    (rootdir / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)
    (root / "etc/motd").write_text("")
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for p in root.glob(pattern):
            p.unlink()
    for d in ("usr/share/doc", "usr/share/man", "usr/share/info"):
        for p in (root / d).glob("*"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (root / "etc/machine-id").write_text("")
    for required in ("usr/bin/tini", "usr/sbin/sshd", "usr/sbin/dockerd", "usr/bin/docker", "usr/bin/python3"):
        if not os.path.lexists(root / required):
            raise SandboxError(f"debootstrapped rootfs lacks /{required}")


def build_rootfs_tarball(tarball: Path) -> None:
    """debootstrap + customise + tar into ``tarball`` (atomically). Caller holds the build lock."""
    for tool in ("debootstrap", "tar"):
        if not shutil.which(tool):
            raise SandboxError(f"{tool} is not installed", hint="apt-get install debootstrap")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # we hold the build lock: any rootfs-* dir is a leftover of a crashed build
    for stale in CACHE_DIR.glob("rootfs-*"):
        safe_rmtree(stale)
    for stale in CACHE_DIR.glob(".*.tar.tmp*"):
        stale.unlink(missing_ok=True)
    mirror, keyring = debian_mirror()
    build = CACHE_DIR / f"rootfs-{rootfs_tag()}-{os.getpid()}"
    debs = CACHE_DIR / "debs"
    debs.mkdir(exist_ok=True)
    log = CACHE_DIR / f"debootstrap-{rootfs_tag()}.log"
    argv = [
        "debootstrap", f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}",
        "--components=main", f"--cache-dir={debs}",
    ]
    if keyring and os.path.exists(keyring):
        argv.append(f"--keyring={keyring}")
    argv += [SUITE, str(build), mirror]
    t0 = time.monotonic()
    try:
        with open(log, "w") as logf:
            logf.write(" ".join(argv) + "\n")
            logf.flush()
            rc = subprocess.run(argv, stdout=logf, stderr=subprocess.STDOUT,
                                env=_apt_proxy_env(), timeout=1800).returncode
        if rc != 0:
            tail = log.read_text(errors="replace")[-3000:]
            inner = build / "debootstrap/debootstrap.log"
            if inner.exists():
                tail += "\n--- debootstrap.log ---\n" + inner.read_text(errors="replace")[-3000:]
            raise SandboxError(f"debootstrap failed (exit {rc}), log {log}:\n{tail}")
        _customize(build)
        if _mounts_under(build):
            raise SandboxError(f"debootstrap left mounts under {build}: {_mounts_under(build)}")
        tmp = CACHE_DIR / f".{tarball.name}.tmp{os.getpid()}"
        try:
            run(["tar", "-C", str(build), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                 "-cf", str(tmp), "."], timeout=900)
            os.replace(tmp, tarball)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        safe_rmtree(build)
    with open(log, "a") as logf:
        logf.write(f"rootfs built in {time.monotonic() - t0:.1f}s -> {tarball}\n")
    _prune_tarballs(keep=2)


def _prune_tarballs(keep: int) -> None:
    """Keep only the ``keep`` newest cached rootfs tarballs (about 450 MB each)."""
    tarballs = sorted(CACHE_DIR.glob(f"{IMAGE_REPO}-rootfs-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in tarballs[keep:]:
        old.unlink(missing_ok=True)
        (CACHE_DIR / f"debootstrap-{old.stem.rsplit('-', 1)[-1]}.log").unlink(missing_ok=True)
