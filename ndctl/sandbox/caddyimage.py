"""Proxy images for test hosts, built locally (no registry is reachable).

``build_caddy_image`` packs Debian's ``/usr/bin/caddy`` and the shared
libraries ``ldd`` lists into a rootfs and ``docker import``s it on this
machine's engine as ``nextdeploy-caddy:local`` (``build_nginx_image``: the
same with ``/usr/sbin/nginx``). Rebuilt only when the binary changed (its
sha256 is a label). ``load_into`` ships an image into a test host's own engine
with ``docker save | docker exec -i HOST docker load``, skipped when the host
already has that image id.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._util import DOCKER, RUN_DIR, CommandError, SandboxError, docker, file_lock, run
from .hosts import TestHost

CADDY_REF = "nextdeploy-caddy:local"
NGINX_REF = "nextdeploy-nginx:local"
SOURCE_LABEL = "com.nextdeploy.source-sha256"

_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
           "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
_GROUP = "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"
_NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class _Spec:
    binary: str
    dirs: tuple[str, ...]
    env: tuple[str, ...]
    cmd: str  # JSON array for the image's CMD
    package: str


_SPECS = {
    "caddy": _Spec("/usr/bin/caddy", ("data", "config", "root", "tmp", "run", "etc/nextdeploy/proxy"),
                   ("XDG_DATA_HOME=/data", "XDG_CONFIG_HOME=/config", "HOME=/root"),
                   '["/usr/bin/caddy", "run", "--config", "/etc/nextdeploy/proxy/caddy.json"]', "caddy"),
    "nginx": _Spec("/usr/sbin/nginx", ("var/lib/nginx", "var/log/nginx", "usr/share/nginx", "etc/nginx", "root",
                                       "tmp", "run", "etc/nextdeploy/proxy"),
                   ("HOME=/root",),
                   '["/usr/sbin/nginx", "-c", "/etc/nextdeploy/proxy/nginx.conf", "-g", "daemon off;"]', "nginx"),
}


def shared_libraries(binary: str) -> list[str]:
    """Paths ``ldd`` lists for ``binary`` (libraries and the dynamic loader), as the binary names them."""
    out = run(["ldd", binary]).stdout
    paths: list[str] = []
    for line in out.splitlines():
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m and m.group(1) not in paths:
            paths.append(m.group(1))
    return paths


def _nss_modules() -> list[str]:
    # dlopen()ed by glibc, so ldd does not list them; nginx resolves its user name through them.
    found = []
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu"):
        for name in ("libnss_files.so.2", "libnss_dns.so.2"):
            p = f"{d}/{name}"
            if os.path.exists(p) and not any(f.endswith(name) for f in found):
                found.append(p)
    return found


def rootfs_tar(kind: str, dest: Path) -> Path:
    """A minimal rootfs: the proxy binary, its libraries, passwd/group, empty work directories."""
    spec = _SPECS[kind]
    if not os.path.exists(spec.binary):
        raise SandboxError(f"no {spec.binary} on this machine (apt-get install {spec.package})")
    files = [spec.binary, *shared_libraries(spec.binary), *_nss_modules()]
    dirs: set[str] = set(spec.dirs)
    for f in files:
        parent = os.path.dirname(f.lstrip("/"))
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    dirs.add("etc")
    with tarfile.open(dest, "w") as tf:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tf.addfile(info)
        for f in files:
            real = os.path.realpath(f)
            info = tf.gettarinfo(real, arcname=f.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(real, "rb") as fh:
                tf.addfile(info, fh)
        for name, text in (("etc/passwd", _PASSWD), ("etc/group", _GROUP), ("etc/nsswitch.conf", _NSSWITCH)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return dest


def _source_hash(kind: str) -> str:
    h = hashlib.sha256()
    with open(_SPECS[kind].binary, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _label_of(ref: str) -> str | None:
    cp = docker("image", "inspect", "-f", "{{index .Config.Labels \"" + SOURCE_LABEL + "\"}}", ref, check=False)
    return cp.stdout.strip() if cp.returncode == 0 else None


def build_image(kind: str, ref: str) -> str:
    """``docker import`` the proxy image on this machine's engine (cached per binary hash)."""
    if kind not in _SPECS:
        raise SandboxError(f"no image recipe for proxy {kind!r}")
    source = _source_hash(kind)
    if _label_of(ref) == source:
        return ref
    with file_lock(RUN_DIR / f"proxy-image-{kind}.lock", timeout=300, what=f"building {ref}"):
        if _label_of(ref) == source:
            return ref
        spec = _SPECS[kind]
        with tempfile.TemporaryDirectory() as d:
            tar = rootfs_tar(kind, Path(d) / "rootfs.tar")
            changes = [f"LABEL {SOURCE_LABEL}={source}", "LABEL com.nextdeploy.role=proxy",
                       f"ENV PATH={_PATH}", *(f"ENV {e}" for e in spec.env), f"CMD {spec.cmd}"]
            argv: list[str] = ["import"]
            for c in changes:
                argv += ["--change", c]
            docker(*argv, str(tar), ref, timeout=300)
    return ref


def build_caddy_image(ref: str = CADDY_REF) -> str:
    return build_image("caddy", ref)


def build_nginx_image(ref: str = NGINX_REF) -> str:
    return build_image("nginx", ref)


def image_id(ref: str, host: TestHost | None = None) -> str | None:
    """The image id of ``ref`` on this machine's engine, or on ``host``'s."""
    argv = ["docker", "image", "inspect", "-f", "{{.Id}}", ref]
    if host is None:
        cp = docker(*argv[1:], check=False)
    else:
        cp = host.exec(*argv, check=False)
    return cp.stdout.strip() if cp.returncode == 0 else None


def load_into(host: TestHost, ref: str = CADDY_REF) -> bool:
    """Ship ``ref`` into ``host``'s engine; False (nothing sent) when it already has that image id."""
    local = image_id(ref)
    if local is None:
        raise SandboxError(f"image {ref} is not on this machine: build it first")
    if image_id(ref, host) == local:
        return False
    if host.container is None:
        raise SandboxError(f"{host.name} is not a container host")
    save = subprocess.Popen([DOCKER, "save", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        load = subprocess.run([DOCKER, "exec", "-i", host.container, "docker", "load"], stdin=save.stdout,
                              capture_output=True, timeout=300)
    finally:
        assert save.stdout is not None
        save.stdout.close()
        save_err = save.stderr.read() if save.stderr else b""
        save.wait(timeout=60)
    if save.returncode != 0:
        raise CommandError([DOCKER, "save", ref], save.returncode, "", save_err.decode(errors="replace"))
    if load.returncode != 0:
        raise CommandError(["docker", "exec", "-i", host.container, "docker", "load"], load.returncode,
                           load.stdout.decode(errors="replace"), load.stderr.decode(errors="replace"))
    if image_id(ref, host) != local:
        raise SandboxError(f"{ref} loaded into {host.name} but its image id differs from {local}")
    return True
