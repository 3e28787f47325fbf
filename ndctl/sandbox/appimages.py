"""Tiny container images for test hosts, built locally (no registry is reachable).

``busybox_rootfs_tar`` packs the machine's static busybox into an image rootfs;
``import_busybox`` loads it into a test host's own Docker engine. busybox's
``httpd`` makes it a small HTTP app for deploy tests.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ._util import SandboxError
from .hosts import TestHost

BUSYBOX_REF = "ndt-busybox:1"


def busybox_rootfs_tar(dest: Path) -> Path:
    busybox = shutil.which("busybox")
    if not busybox:
        raise SandboxError("no busybox on this machine (apt-get install busybox-static)")
    with tarfile.open(dest, "w") as tf:
        info = tf.gettarinfo(busybox, arcname="bin/busybox")
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o755, 0, 0, "root", "root"
        with open(busybox, "rb") as f:
            tf.addfile(info, f)
        for d in ("tmp", "etc", "www"):
            dinfo = tarfile.TarInfo(d)
            dinfo.type, dinfo.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tf.addfile(dinfo)
    return dest


def import_busybox(host: TestHost, ref: str = BUSYBOX_REF) -> str:
    """Make ``ref`` exist in ``host``'s Docker engine (idempotent)."""
    if host.exec("docker", "image", "inspect", ref, check=False).returncode == 0:
        return ref
    with tempfile.TemporaryDirectory() as d:
        tar = busybox_rootfs_tar(Path(d) / "busybox.tar")
        subprocess.run(["docker", "cp", str(tar), f"{host.container}:/tmp/busybox.tar"], check=True,
                       capture_output=True, timeout=120)
    host.exec("docker", "import", "--change", 'CMD ["/bin/busybox", "sh"]', "/tmp/busybox.tar", ref)
    host.exec("rm", "-f", "/tmp/busybox.tar")
    return ref


def build_web_image(tag: str, body: str, *, healthy: bool = True) -> str:
    """A busybox httpd app image in THIS machine's engine: ``/`` says ``body``; ``/health``
    answers 200 only when ``healthy``. For the demo and deploy tests."""
    with tempfile.TemporaryDirectory() as d:
        tar = busybox_rootfs_tar(Path(d) / "app.tar")
        files = {"index.html": body + "\n", **({"health": "ok\n"} if healthy else {})}
        with tarfile.open(tar, "a") as tf:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"www/{name}")
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
        r = subprocess.run(["docker", "import", "--change",
                            'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]', str(tar), tag],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SandboxError(f"docker import {tag} failed: {r.stderr.strip()}")
    return tag
