"""Getting an image onto hosts: shipped from this machine over SSH, or pulled from a registry.

Ship (no registry): the local image id comes from this machine's engine; hosts
that already hold that id are skipped ("present"). For the others, ONE local
``docker save`` is read once and its chunks fanned out to every host's
``docker load`` over the host's existing SSH connection, several hosts at once,
never holding the tarball in memory: each host has a bounded queue, and the
slowest host paces the reader. After the load, each host's id is checked
against the local one (``docker save``/``docker load`` keep the image id, the
sha256 of its config).

Pull: ``docker pull`` on each host; with credentials, ``docker login
--password-stdin`` into a throw-away ``DOCKER_CONFIG`` directory, so the
password is never in an argv and never stays on the host.

Every per-host result carries ``value = {"image", "image_id", "action",
"bytes", "seconds"}`` where ``action`` is ``present``, ``shipped`` or ``pulled``.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ndctl.commands.shell import for_host
from ndctl.core.errors import NotFoundError, UsageError
from ndctl.core.inventory import Host
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.core.secret import Secret
from ndctl.transport.ssh import Runner

Source = Literal["ship", "pull"]

CHUNK = 256 * 1024  # bytes read from `docker save` at a time
QUEUE_DEPTH = 16  # chunks queued per host: at most CHUNK * QUEUE_DEPTH (4 MiB) buffered per host


@dataclass(frozen=True)
class RegistryAuth:
    """Registry credentials for ``docker login`` (``server`` None: Docker Hub)."""

    username: str
    password: Secret
    server: str | None = None


def registry_auth(registry: Any, *, password_stdin: bool = False, stdin: Any = None,
                  environ: Mapping[str, str] | None = None) -> RegistryAuth | None:
    """The credentials of a pull for ``registry`` (an ``appspec.RegistrySpec``), None without one.

    The password comes from stdin's first line (``password_stdin``) or the variable
    ``registry.password_env`` names; a missing one is a UsageError before any host is touched.
    """
    if registry is None:
        if password_stdin:
            raise UsageError("--registry-password-stdin: no registry user (add a registry: section to the file, "
                             "or pass --registry-user)")
        return None
    if password_stdin:
        password = (stdin or sys.stdin).readline().rstrip("\r\n")
        if not password:
            raise UsageError("--registry-password-stdin: stdin held no password")
    else:
        password = (os.environ if environ is None else environ).get(registry.password_env, "")
        if not password:
            raise UsageError(f"no password for registry user {registry.username!r}: set {registry.password_env} "
                             f"(registry.password_env) or pass --registry-password-stdin")
    return RegistryAuth(username=registry.username, password=Secret(password), server=registry.server)


# ---------------------------------------------------------------------------
# Pure builders (argv lists; the transport joins them)
# ---------------------------------------------------------------------------

def image_id_argv(image: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{.Id}}", "--", image]


def save_argv(image: str) -> list[str]:
    return ["docker", "save", "--", image]


def load_argv() -> list[str]:
    return ["docker", "load"]


# The password arrives on stdin and goes straight to --password-stdin; the
# login lives in a temporary DOCKER_CONFIG removed on exit, so no credential
# is left on the host.
_PULL_LOGIN = (
    'img="$1"; user="$2"; srv="$3"; '
    'd=$(mktemp -d) || exit 1; trap \'rm -rf "$d"\' EXIT; export DOCKER_CONFIG="$d"; '
    'if [ -n "$srv" ]; then docker login --username "$user" --password-stdin -- "$srv"; '
    'else docker login --username "$user" --password-stdin; fi >/dev/null || exit $?; '
    'docker pull -- "$img"'
)


def pull_argv(image: str, auth: RegistryAuth | None = None) -> list[str]:
    if auth is None:
        return ["docker", "pull", "--", image]
    return ["sh", "-c", _PULL_LOGIN, "ndctl-pull", image, auth.username, auth.server or ""]


def parse_image_id(result: HostResult) -> str | None:
    """The id from ``image_id_argv`` output; None when the engine has no such image.

    Raises ValueError with the engine's message for any other failure.
    """
    if result.ok:
        ident = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
        if not ident.startswith("sha256:"):
            raise ValueError(f"unexpected image id {ident!r}")
        return ident
    text = (result.stderr or result.stdout).strip()
    if "no such image" in text.lower():
        return None
    raise ValueError(result.error or text or f"exit status {result.exit_code}")


# ---------------------------------------------------------------------------
# One byte stream to many consumers, bounded
# ---------------------------------------------------------------------------

_EOF = object()


class _Sink:
    """One consumer of a :class:`Tee`: an async iterator of chunks with an explicit ``aclose``.

    A class, not an async generator: a generator that never started would not
    run its ``finally`` on ``aclose``, and the producer would wait on it forever.
    """

    def __init__(self, depth: int) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(depth)
        self.closed = False

    async def put(self, item: Any) -> None:
        if not self.closed:
            await self.queue.put(item)

    def __aiter__(self) -> "_Sink":
        return self

    async def __anext__(self) -> bytes:
        if self.closed:
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is _EOF:
            self.closed = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.closed = True
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True
        while not self.queue.empty():  # frees a producer blocked on this full queue
            self.queue.get_nowait()


class Tee:
    """Copies one byte stream to ``n`` consumers, each behind a queue of ``depth`` chunks.

    The producer waits for the slowest live consumer, so memory is bounded by
    ``n * depth`` chunks; a consumer that stops (its host failed) is dropped and
    never stalls the others. :meth:`feed` ends every consumer with EOF, or with
    the error ``finish`` returns (then the consumers raise it instead of ending
    cleanly).
    """

    def __init__(self, n: int, depth: int = QUEUE_DEPTH) -> None:
        self.sinks = [_Sink(depth) for _ in range(n)]

    def live(self) -> list[_Sink]:
        return [s for s in self.sinks if not s.closed]

    async def feed(self, read: Callable[[], Awaitable[bytes]],
                   finish: Callable[[], Awaitable[BaseException | None]] | None = None) -> int:
        """Pump ``read()`` until it returns b"" or no consumer is left; returns the bytes read."""
        total = 0
        end: Any = _EOF
        try:
            while True:
                if not self.live():
                    return total
                chunk = await read()
                if not chunk:
                    break
                total += len(chunk)
                for s in self.live():
                    await s.put(chunk)
            if finish is not None:
                end = (await finish()) or _EOF
        except Exception as e:  # a consumer waiting for more must hear about it, not hang
            end = e
        for s in self.live():
            await s.put(end)
        return total


# ---------------------------------------------------------------------------
# This machine's engine
# ---------------------------------------------------------------------------

async def _local(argv: Sequence[str]) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise UsageError("no local Docker engine: the `docker` command is not installed on this machine",
                         hint="shipping builds the image here; or pull it on the hosts from a registry") from None
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _no_engine(stderr: str) -> bool:
    s = stderr.lower()
    return "cannot connect to the docker daemon" in s or "is the docker daemon running" in s \
        or "error during connect" in s or ("permission denied" in s and "docker" in s and "sock" in s)


async def local_image_id(image: str) -> str:
    """The id of ``image`` in this machine's engine; NotFoundError naming it when absent."""
    code, out, err = await _local(image_id_argv(image))
    if code == 0 and out.strip().startswith("sha256:"):
        return out.strip().splitlines()[0]
    if _no_engine(err):
        raise UsageError(f"no local Docker engine: {err.strip()}",
                         hint="start Docker here (or set DOCKER_HOST) to ship images")
    if "no such image" in err.lower():
        raise NotFoundError(f"image {image!r} is not in the local Docker engine",
                            hint="build or pull it on this machine first (`docker images` lists what is there)")
    raise UsageError(f"cannot inspect local image {image!r}: {err.strip() or out.strip()}")


# ---------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------


async def host_image_id(runner: Runner, host: Host, image: str, timeout: float | None = 60) -> HostResult:
    """``value`` = the host's id of ``image`` (None when it has none); FAILED when Docker cannot say."""
    r = await runner.run(host, for_host(image_id_argv(image), host), timeout=timeout)
    if r.status is Status.UNREACHABLE:
        return r
    try:
        r.value = parse_image_id(r)
    except ValueError as e:
        r.status, r.error = Status.FAILED, f"cannot inspect images with Docker on {host.name}: {e}"
        return r
    r.status = Status.OK
    return r


def _value(image: str, image_id: str | None, action: str, nbytes: int = 0, seconds: float = 0.0) -> dict:
    return {"image": image, "image_id": image_id, "action": action, "bytes": nbytes,
            "seconds": round(seconds, 3)}


async def ensure_image(
    runner: Runner,
    hosts: Sequence[Host],
    image: str,
    *,
    source: Source = "ship",
    registry_auth: RegistryAuth | None = None,
    timeout: float | None = None,
    forks: int | None = None,
) -> GroupResult:
    """Make ``image`` exist on every host; one result per host, in host order.

    ``source="ship"`` raises before touching any host when the image is not in
    the local engine (NotFoundError) or there is no local engine (UsageError).
    ``timeout`` bounds each host's transfer or pull (None: no limit).
    """
    if source not in ("ship", "pull"):
        raise UsageError(f"image source must be 'ship' or 'pull', not {source!r}")
    if source == "pull":
        return await runner.fan_out(hosts, lambda h: _pull(runner, h, image, registry_auth, timeout), forks)
    if registry_auth is not None:
        raise UsageError("registry credentials are only for source='pull'")

    started = time.monotonic()
    local_id = await local_image_id(image)
    checked = await runner.fan_out(hosts, lambda h: host_image_id(runner, h, image), forks)
    results: dict[str, HostResult] = {}
    need: list[Host] = []
    for h in hosts:
        r = checked[h.name]
        if not r.ok:
            results[h.name] = r
        elif r.value == local_id:
            r.value = _value(image, local_id, "present", seconds=time.monotonic() - started)
            r.duration = time.monotonic() - started
            results[h.name] = r
        else:
            need.append(h)
    # Every receiving host of one `docker save` must consume at once (the slowest
    # paces the rest), so at most `forks` hosts share one save; more hosts, more saves.
    batch = max(1, forks or runner.opts.forks)
    for i in range(0, len(need), batch):
        for r in await _ship(runner, need[i:i + batch], image, local_id, timeout):
            results[r.host] = r
    return GroupResult([results[h.name] for h in hosts])


async def _ship(runner: Runner, hosts: Sequence[Host], image: str, local_id: str,
                timeout: float | None) -> list[HostResult]:
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(*save_argv(image), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise UsageError("no local Docker engine: the `docker` command is not installed on this machine") from None
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    tee = Tee(len(hosts))

    async def finish() -> BaseException | None:
        code = await proc.wait()
        if code != 0:
            err = (await stderr_task).decode("utf-8", "replace").strip()
            return RuntimeError(f"local `docker save {image}` failed (exit {code}): {err}")
        return None

    async def load(h: Host, sink: _Sink) -> HostResult:
        r = await runner.run_stream(h, for_host(load_argv(), h), sink, timeout=timeout)
        sent = (r.value or {}).get("stdin_bytes", 0)
        if r.ok:
            check = await host_image_id(runner, h, image)
            got = check.value if check.ok else None
            if got != local_id:
                why = check.error if not check.ok else f"it has {got or 'no such image'}"
                r.status, r.error = Status.FAILED, f"image id after docker load does not match {local_id}: {why}"
        elif r.status is Status.FAILED and not r.error:
            r.error = f"docker load failed: {r.stderr.strip()[-2000:] or f'exit status {r.exit_code}'}"
        elif r.status is Status.FAILED and r.stderr.strip():
            r.error = f"{r.error}; docker load said: {r.stderr.strip()[-2000:]}"
        r.duration = time.monotonic() - started
        r.value = _value(image, local_id if r.ok else None, "shipped", sent, r.duration)
        return r

    feeder = asyncio.ensure_future(tee.feed(lambda: proc.stdout.read(CHUNK), finish))
    try:
        loads = await asyncio.gather(*(load(h, s) for h, s in zip(hosts, tee.sinks)))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # every host stopped early: nobody needs the rest
        await asyncio.gather(feeder, return_exceptions=True)
        await proc.wait()
        stderr_task.cancel()
        await asyncio.gather(stderr_task, return_exceptions=True)
    return list(loads)


async def _pull(runner: Runner, host: Host, image: str, auth: RegistryAuth | None,
                timeout: float | None) -> HostResult:
    started = time.monotonic()
    password = auth.password.reveal() + "\n" if auth is not None else None
    r = await runner.run(host, for_host(pull_argv(image, auth), host), input=password, timeout=timeout)
    if not r.ok:
        if r.status is Status.FAILED:
            r.error = f"docker pull {image} failed: {r.stderr.strip()[-2000:] or r.error or r.exit_code}"
        return r
    check = await host_image_id(runner, host, image)
    if not check.ok or check.value is None:
        r.status, r.error = Status.FAILED, check.error or f"{image} is not on {host.name} after docker pull"
    r.duration = time.monotonic() - started
    r.value = _value(image, check.value if check.ok else None, "pulled", seconds=r.duration)
    return r


async def stream_chunks(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    """An async source of fixed chunks (tests, small payloads)."""
    for c in chunks:
        yield c


__all__ = ["RegistryAuth", "Tee", "registry_auth", "ensure_image", "host_image_id", "image_id_argv", "load_argv",
           "local_image_id", "parse_image_id", "pull_argv", "save_argv", "stream_chunks"]
