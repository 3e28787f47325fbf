"""SSH transport: one reused asyncssh connection per host, bounded fan-out.

The rest of ndctl hands this module argv lists; this is the only place they
are joined into command lines (``shlex.join``). It deals with OpenSSH's
limits so callers do not have to:

* ``MaxStartups``: sshd drops unauthenticated connections beyond 10 pending
  handshakes, so handshakes per target sshd are capped (``max_handshakes``)
  and a reset during the handshake is retried with backoff.
* ``MaxSessions``: sshd refuses an 11th channel on one connection, so channel
  opens per connection are capped (``max_channels``) and a refused open is
  retried.

known_hosts and client keys are loaded once per Runner, not per host.
"""
from __future__ import annotations

import asyncio
import os
import random
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from asyncssh.public_key import load_default_keypairs

from ndctl.core.errors import AuthError, ExitStatus, HostKeyChanged, HostKeyError, HostUnreachable, NdctlError
from ndctl.core.inventory import Host
from ndctl.core.results import GroupResult, HostResult, Status
from ndctl.core.knownhosts import pattern as known_hosts_pattern
from ndctl.transport import sshconfig

OutputCallback = Callable[[str, str, str], None]  # (host name, "stdout"|"stderr", line)
T = TypeVar("T")

TIMEOUT_EXIT = 124  # same as coreutils timeout(1)
_NEW_HOST_KEY_ALGS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256",
                      "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"]


def fingerprint(key_line_or_key: str | asyncssh.SSHKey) -> str:
    key = asyncssh.import_public_key(key_line_or_key) if isinstance(key_line_or_key, str) else key_line_or_key
    return key.get_fingerprint("sha256")


def key_line(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA...`` without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


@dataclass
class HostKeyPolicy:
    """How unknown or changed host keys are treated.

    ``trust_new``: accept a key for a host that has none pinned (registration
    with --trust-host-key). ``accept_changed``: also replace a pinned key that
    changed (explicit --trust-host-key on re-registration).
    """

    trust_new: bool = False
    accept_changed: bool = False


@dataclass
class RunOptions:
    forks: int = 100
    connect_timeout: float = 10.0
    command_timeout: float | None = None
    max_handshakes: int = 8  # per target sshd: below OpenSSH's MaxStartups start of 10
    max_channels: int = 10  # per connection: OpenSSH's MaxSessions default
    connect_attempts: int = 4
    channel_attempts: int = 6  # opens of a channel refused by MaxSessions
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 4
    ssh_config: str | None = None
    known_hosts_files: list[Path] = field(default_factory=list)
    host_key_policy: HostKeyPolicy = field(default_factory=HostKeyPolicy)


class _Client(asyncssh.SSHClient):
    """Records the presented host key so errors can name both fingerprints."""

    def __init__(self, record: dict[str, Any], accept: bool) -> None:
        self._record = record
        self._accept = accept

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # Only called when the key is NOT among the trusted ones for this host.
        self._record["presented"] = key
        return self._accept


@dataclass
class _Conn:
    conn: asyncssh.SSHClientConnection
    channels: asyncio.Semaphore  # at most max_channels sessions at once (sshd's MaxSessions)


class Runner:
    """An async context holding one SSH connection per host for its lifetime.

    >>> async with Runner(opts) as r:
    ...     result = await r.fan_out(hosts, lambda h: r.run(h, ["uptime"]))
    """

    def __init__(self, options: RunOptions | None = None) -> None:
        self.opts = options or RunOptions()
        self._conns: dict[str, _Conn] = {}
        self._conn_locks: dict[str, asyncio.Lock] = {}
        self._handshake_sems: dict[str, asyncio.Semaphore] = {}
        self._jumps: dict[str, asyncssh.SSHClientConnection] = {}
        self._jump_lock = asyncio.Lock()
        self._key_cache: dict[tuple[str, ...], Any] = {}
        self._known_hosts = self._load_known_hosts()
        self._pinned: dict[str, list[str]] = {}
        self.presented_keys: dict[str, asyncssh.SSHKey] = {}

    # ----- lifecycle -------------------------------------------------------
    async def __aenter__(self) -> "Runner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conns = [c.conn for c in self._conns.values()] + list(self._jumps.values())
        self._conns.clear()
        self._jumps.clear()
        for c in conns:
            c.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)

    # ----- keys, loaded once ------------------------------------------------
    def _load_known_hosts(self) -> asyncssh.SSHKnownHosts | None:
        lines: list[str] = []
        for p in self.opts.known_hosts_files:
            try:
                lines.append(Path(p).expanduser().read_text())
            except FileNotFoundError:
                continue
        text = "\n".join(lines)
        return asyncssh.import_known_hosts(text) if text.strip() else None

    def pin(self, host: Host, key: str) -> None:
        """Trust ``key`` for ``host`` for the rest of this run (after the user accepted it)."""
        self._pinned.setdefault(known_hosts_pattern(host.address, host.port), []).append(key)

    def _trusted_keys(self, host: Host) -> list[asyncssh.SSHKey]:
        keys: list[asyncssh.SSHKey] = []
        if self._known_hosts is not None:
            trusted, *_ = self._known_hosts.match(host.address, host.address, host.port)
            keys.extend(trusted)
        for line in self._pinned.get(known_hosts_pattern(host.address, host.port), []):
            keys.append(asyncssh.import_public_key(line))
        return keys

    def _client_keys(self, host: Host) -> Any:
        """Keys for ``host``, loaded once per identity per run.

        An explicit identity is the only key offered (like OpenSSH's
        IdentitiesOnly), unless it is passphrase-protected and an ssh-agent
        runs: then the agent, which presumably holds it, is used instead.
        Without an identity: the agent, else the default ``~/.ssh/id_*`` files.
        """
        ident = (host.identity,) if host.identity else ()
        if ident in self._key_cache:
            return self._key_cache[ident]
        agent = bool(os.environ.get("SSH_AUTH_SOCK"))
        keys: Any
        if ident:
            path = Path(ident[0]).expanduser()
            try:
                keys = asyncssh.load_keypairs([str(path)])
            except asyncssh.KeyImportError as e:
                if "assphrase" in str(e) and agent:
                    keys = ()  # asyncssh default: ask the agent
                else:
                    hint = " (passphrase-protected: add it to ssh-agent)" if "assphrase" in str(e) else ""
                    raise AuthError(f"cannot load identity {path}: {e}{hint}") from e
            except OSError as e:
                raise AuthError(f"cannot load identity {path}: {e.strerror or e}") from e
        elif agent:
            keys = ()  # asyncssh default: agent first, then ~/.ssh/id_*
        else:
            keys = load_default_keypairs()
        self._key_cache[ident] = keys
        return keys

    # ----- connecting ---------------------------------------------------------
    async def _jump(self, spec: str) -> asyncssh.SSHClientConnection:
        """One shared connection per bastion, resolved like ``ssh`` would."""
        async with self._jump_lock:
            if spec in self._jumps:
                return self._jumps[spec]
            tunnel = None
            for hop in spec.split(","):
                user, _, hostport = hop.rpartition("@")
                hostname, _, port = hostport.partition(":")
                r = sshconfig.resolve(hostname, sshconfig.config_paths(self.opts.ssh_config))
                jump_host = Host(
                    name=hostname,
                    address=r.hostname,
                    port=int(port or r.port),
                    user=user or r.user,
                    identity=r.identity_files[0] if r.identity_files else None,
                )
                # A bastion must already be trusted (ndctl's or the user's known_hosts):
                # --trust-host-key is about the target being registered, never the hop to it.
                tunnel = await self._open(jump_host, tunnel=tunnel, strict=True)
            assert tunnel is not None
            self._jumps[spec] = tunnel
            return tunnel

    async def _open(self, host: Host, tunnel: asyncssh.SSHClientConnection | None = None,
                    strict: bool = False) -> asyncssh.SSHClientConnection:
        target = known_hosts_pattern(host.address, host.port)
        sem = self._handshake_sems.setdefault(target, asyncio.Semaphore(self.opts.max_handshakes))
        policy = self.opts.host_key_policy
        trusted = self._trusted_keys(host)
        record: dict[str, Any] = {}
        accept = False if strict else (policy.trust_new if not trusted else policy.accept_changed)
        last_exc: BaseException | None = None
        keys = self._client_keys(host)
        for attempt in range(self.opts.connect_attempts):
            try:
                async with sem:
                    conn = await asyncssh.connect(
                        host.address,
                        port=host.port,
                        tunnel=tunnel,
                        username=host.user,
                        client_keys=keys,
                        agent_path=() if keys == () else None,
                        known_hosts=(trusted, [], []),
                        server_host_key_algs=_host_key_algs(trusted),
                        client_factory=lambda: _Client(record, accept),
                        config=[],
                        connect_timeout=self.opts.connect_timeout,
                        keepalive_interval=self.opts.keepalive_interval,
                        keepalive_count_max=self.opts.keepalive_count_max,
                        agent_forwarding=False,
                    )
                key = conn.get_server_host_key()
                if key is not None:
                    self.presented_keys[host.name] = key
                return conn
            except asyncssh.HostKeyNotVerifiable as e:
                presented = record.get("presented")
                if presented is not None:
                    self.presented_keys[host.name] = presented
                if presented is not None and trusted:
                    raise HostKeyChanged(
                        f"{host.name} ({target})",
                        ", ".join(dict.fromkeys(fingerprint(k) for k in trusted)),
                        fingerprint(presented),
                    ) from e
                fp = f" {fingerprint(presented)}" if presented is not None else ""
                hint = ("a bastion must already be trusted: connect once with `ssh` and check its "
                        "fingerprint (it goes to ~/.ssh/known_hosts); --trust-host-key never covers a hop"
                        if strict else "register the host (`ndctl agent register`) to pin its key, "
                        "or pass --trust-host-key after checking the fingerprint")
                what = "bastion" if strict else "host"
                raise HostKeyError(f"{what} key{fp} of {host.name} ({target}) is not trusted", hint=hint) from e
            except asyncssh.PermissionDenied as e:
                raise AuthError(
                    f"authentication failed for {host.user}@{host.address}:{host.port}: {e.reason}",
                    hint="check --user and --identity (or your ssh-agent / ~/.ssh/config)",
                ) from e
            except (OSError, asyncio.TimeoutError, asyncssh.ConnectionLost, asyncssh.DisconnectError) as e:
                last_exc = e
                if isinstance(e, (ConnectionRefusedError, asyncio.TimeoutError)) and attempt >= 1:
                    break  # a refused port or a dead host will not come back in a second
                if attempt + 1 < self.opts.connect_attempts:
                    await asyncio.sleep((0.2 * 2**attempt) + random.uniform(0, 0.2))
        raise HostUnreachable(f"cannot connect to {host.user}@{host.address}:{host.port}: {_describe(last_exc)}")

    async def connect(self, host: Host) -> _Conn:
        c = self._conns.get(host.name)
        if c is not None:
            return c
        lock = self._conn_locks.setdefault(host.name, asyncio.Lock())
        async with lock:
            c = self._conns.get(host.name)
            if c is None:
                tunnel = await self._jump(host.proxy_jump) if host.proxy_jump else None
                conn = await self._open(host, tunnel=tunnel)
                c = _Conn(conn, asyncio.Semaphore(self.opts.max_channels))
                self._conns[host.name] = c
            return c

    # ----- running ----------------------------------------------------------
    async def _in_session(self, host: Host, started: float,
                          body: Callable[[asyncssh.SSHClientConnection], Awaitable[HostResult]]) -> HostResult:
        """Run ``body`` with a session channel slot of the host's connection.

        Handles what every command shares: a connection dropped while idle is
        re-opened once; a channel refused by sshd's MaxSessions is retried with
        backoff; a connection lost before the command started is "unreachable"
        (once started, ``body`` reports a lost connection as a failure).
        """
        try:
            c = await self.connect(host)
        except NdctlError as e:
            return _unreachable(host, e, started)
        attempts = max(1, self.opts.channel_attempts)
        reconnected = False
        for attempt in range(attempts):
            if c.conn.is_closed() and not reconnected:
                # dropped while idle (sshd restarted, NAT timeout): one fresh connection, then carry on
                self._conns.pop(host.name, None)
                reconnected = True
                try:
                    c = await self.connect(host)
                except NdctlError as e:
                    return _unreachable(host, e, started)
            try:
                async with c.channels:
                    return await body(c.conn)
            except asyncssh.ChannelOpenError as e:
                if c.conn.is_closed() and not reconnected:
                    continue  # the connection went away under us: reconnect at the top of the loop
                # MaxSessions reached (another ndctl, a user's ssh multiplexing): back off and retry.
                if attempt == attempts - 1:
                    return HostResult(host.name, Status.FAILED, None, "", "", time.monotonic() - started,
                                      error=f"channel open refused: {e.reason}")
                await asyncio.sleep(0.1 * 2**attempt + random.uniform(0, 0.1))
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as e:
                self._conns.pop(host.name, None)
                return _unreachable(host, HostUnreachable(f"connection to {host.name} lost: {_describe(e)}"),
                                    started)
        raise AssertionError("unreachable")

    async def run(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> HostResult:
        """Run one argv on one host. Never raises for remote failures: returns a HostResult."""
        started = time.monotonic()
        command = shlex.join(argv)
        text = input.decode("utf-8") if isinstance(input, bytes) else input
        timeout = timeout if timeout is not None else self.opts.command_timeout

        async def body(conn: asyncssh.SSHClientConnection) -> HostResult:
            proc = await conn.create_process(command, encoding="utf-8", errors="replace")
            return await self._collect(host, proc, text, timeout, on_output, started)

        return await self._in_session(host, started, body)

    async def _collect(self, host: Host, proc: asyncssh.SSHClientProcess, input: str | None,
                       timeout: float | None, on_output: OutputCallback | None, started: float) -> HostResult:
        out: list[str] = []
        err: list[str] = []

        async def pump(stream: Any, sink: list[str], name: str) -> None:
            if on_output is None:
                # chunk by chunk, so a connection lost mid-command keeps what already arrived
                while chunk := await stream.read(65536):
                    sink.append(chunk)
                return
            while True:
                line = await stream.readline()
                if not line:  # EOF (asyncssh's async iterator can yield a final '' instead)
                    return
                sink.append(line)
                on_output(host.name, name, line.rstrip("\n"))

        async def body() -> None:
            try:
                if input is not None:
                    proc.stdin.write(input)
                proc.stdin.write_eof()
            except BrokenPipeError:
                # A command that exits without reading its stdin can close the channel before we write:
                # its output and exit status still arrive, so this is not a lost connection.
                pass
            await asyncio.gather(pump(proc.stdout, out, "stdout"), pump(proc.stderr, err, "stderr"))
            await proc.wait_closed()

        try:
            await asyncio.wait_for(body(), timeout)
        except asyncio.TimeoutError:
            try:  # sshd forwards signals (OpenSSH >= 7.9); without it closing the channel is all we can do
                proc.terminate()
            except (OSError, asyncssh.Error):
                pass
            proc.close()
            return HostResult(host.name, Status.FAILED, TIMEOUT_EXIT, "".join(out), "".join(err),
                              time.monotonic() - started, error=f"timed out after {timeout:g}s")
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as e:  # after TimeoutError: a subclass
            self._conns.pop(host.name, None)
            # It started and may have done part of its work: a failure, never "did not run".
            return HostResult(host.name, Status.FAILED, None, "".join(out), "".join(err),
                              time.monotonic() - started,
                              error=f"connection lost while the command ran: {_describe(e)}")
        code = proc.exit_status
        if code is None or code < 0:
            why = (f"killed by signal {proc.exit_signal[0]}" if proc.exit_signal
                   else "ended without an exit status (connection lost while it ran?)")
            return HostResult(host.name, Status.FAILED, code, "".join(out), "".join(err),
                              time.monotonic() - started, error=why)
        return HostResult(host.name, Status.OK if code == 0 else Status.FAILED, code, "".join(out), "".join(err),
                          time.monotonic() - started)

    async def run_stream(
        self,
        host: Host,
        argv: Sequence[str],
        source: AsyncIterator[bytes],
        *,
        timeout: float | None = None,
    ) -> HostResult:
        """Run one argv on one host with its stdin streamed from ``source`` (chunks of bytes).

        A chunk is written and drained before the next is pulled, so memory stays
        bounded by the SSH window and a slow host slows down its own source. EOF is
        sent only after ``source`` is exhausted; if ``source`` raises, the channel
        is closed without EOF (the command sees its input cut short) and the result
        is a failure naming the cause. If the command stops reading (it exited), the
        rest of ``source`` is not consumed. ``source`` is always closed (``aclose``)
        on return. Like :meth:`run`, never raises for remote failures; ``value`` is
        ``{"stdin_bytes": N}``, the bytes handed to the channel.
        """
        started = time.monotonic()
        command = shlex.join(argv)
        timeout = timeout if timeout is not None else self.opts.command_timeout

        async def body(conn: asyncssh.SSHClientConnection) -> HostResult:
            proc = await conn.create_process(command, encoding=None)
            return await self._collect_stream(host, proc, source, timeout, started)

        try:
            return await self._in_session(host, started, body)
        finally:
            await _aclose(source)

    async def _collect_stream(self, host: Host, proc: asyncssh.SSHClientProcess, source: AsyncIterator[bytes],
                              timeout: float | None, started: float) -> HostResult:
        out = bytearray()
        err = bytearray()
        sent = 0
        source_error: list[BaseException] = []

        async def feed() -> None:
            nonlocal sent
            try:
                async for chunk in source:
                    if not chunk:
                        continue
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, asyncssh.ConnectionLost, asyncssh.DisconnectError):
                return  # the command stopped reading (exited) or the connection dropped: the result says which
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the source failed: never send EOF, the command must not see a clean end
                source_error.append(e)
                proc.close()
                return
            try:
                proc.stdin.write_eof()
            except (OSError, asyncssh.Error):
                pass

        async def pump(stream: Any, sink: bytearray) -> None:
            while chunk := await stream.read(65536):
                sink.extend(chunk)

        async def body() -> None:
            feeder = asyncio.ensure_future(feed())
            try:
                await asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err))
                await proc.wait_closed()
            finally:
                if not feeder.done():
                    feeder.cancel()  # the command ended without reading everything
                await asyncio.gather(feeder, return_exceptions=True)

        def result(status: Status, code: int | None, error: str | None = None) -> HostResult:
            return HostResult(host.name, status, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                              time.monotonic() - started, error=error, value={"stdin_bytes": sent})

        try:
            await asyncio.wait_for(body(), timeout)
        except asyncio.TimeoutError:
            try:
                proc.terminate()
            except (OSError, asyncssh.Error):
                pass
            proc.close()
            return result(Status.FAILED, TIMEOUT_EXIT, f"timed out after {timeout:g}s")
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as e:
            self._conns.pop(host.name, None)
            return result(Status.FAILED, None, f"connection lost while the command ran: {_describe(e)}")
        if source_error:
            return result(Status.FAILED, proc.exit_status, f"input stream failed: {_describe(source_error[0])}")
        code = proc.exit_status
        if code is None or code < 0:
            why = (f"killed by signal {proc.exit_signal[0]}" if proc.exit_signal
                   else "ended without an exit status (connection lost while it ran?)")
            return result(Status.FAILED, code, why)
        return result(Status.OK if code == 0 else Status.FAILED, code)

    async def fan_out(self, hosts: Iterable[Host], fn: Callable[[Host], Awaitable[HostResult]],
                      forks: int | None = None) -> GroupResult:
        """Run ``fn`` for every host, at most ``forks`` at once; results keep the host order."""
        sem = asyncio.Semaphore(forks or self.opts.forks)

        async def one(h: Host) -> HostResult:
            async with sem:
                started = time.monotonic()
                try:
                    return await fn(h)
                except NdctlError as e:
                    if e.exit_status in (ExitStatus.UNREACHABLE, ExitStatus.AUTH, ExitStatus.HOST_KEY):
                        return _unreachable(h, e, started)
                    return HostResult(h.name, Status.FAILED, None, "", "", time.monotonic() - started,
                                      error=str(e), exit_status=e.exit_status)

        return GroupResult(list(await asyncio.gather(*(one(h) for h in hosts))))


def _host_key_algs(trusted: list[asyncssh.SSHKey]) -> list[str]:
    """Algorithms of the pinned keys first, then the rest, ed25519 first.

    Offering only the pinned key's algorithm (asyncssh's default) turns a
    host whose key type changed into a bare negotiation failure; offering all
    of them lets the handshake finish and the pin check name both keys. For a
    new host, ed25519 comes first because secrets are encrypted to that key.
    """
    algs: list[str] = []
    for key in trusted:
        for a in key.sig_algorithms:
            name = a.decode() if isinstance(a, bytes) else a
            if name not in algs:
                algs.append(name)
    return algs + [a for a in _NEW_HOST_KEY_ALGS if a not in algs]


def _unreachable(host: Host, e: NdctlError, started: float) -> HostResult:
    return HostResult(host.name, Status.UNREACHABLE, None, "", "", time.monotonic() - started,
                      error=str(e), exit_status=e.exit_status)


async def _aclose(source: Any) -> None:
    close = getattr(source, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a failed source must not hide the result
            pass


def _describe(e: BaseException | None) -> str:
    if e is None:
        return "unknown error"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e) or type(e).__name__
    return text
