"""The reverse proxy on one host: create it once, switch routes atomically.

A switch is two round trips: read the route files (and the live config's
hash), then commit the re-rendered config under the host's proxy lock with a
compare-and-swap on the route files, so concurrent deploys of different apps
never lose each other's routes. An unchanged route is a no-op (no reload).
Caddy (2.6.2 on) reads each app's upstream from its live marker, so a switch
there makes another marker file the newest and reloads nothing: no connection is cut.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from ndctl.commands import proxy as cmd
from ndctl.commands.shell import for_host
from ndctl.core.errors import ConflictError, RemoteError
from ndctl.core.inventory import Host
from ndctl.core.proxy import (
    PROXY_CONTAINER,
    PROXY_DIR,
    ProxyChange,
    ProxyStatus,
    Route,
    RouteConflict,
    RouteError,
    check_app,
    check_kind,
    check_routes,
    config_name,
    kind_of_config,
    parse_route_listing,
    parse_version,
    render,
    uses_markers,
)
from ndctl.core.results import HostResult, Status
from ndctl.transport.ssh import Runner

CAS_ATTEMPTS = 5


@dataclass
class _State:
    configs: dict[str, str]  # config file name -> sha256 of its content
    routes: list[Route]
    listing_hash: str  # sha256 of the route listing, as the commit script recomputes it
    network: bool | None = None
    container: tuple[str, str, str] | None = None  # (status, kind label, image)
    version: tuple[int, ...] | None = None  # the proxy's, recorded in proxy/version by ensure_proxy
    handle: str = ""  # "<pid>:<container id>" of a running proxy, as inspected (commit_argv's hint)
    stale_view: bool = False  # the running proxy reads a proxy directory the host has replaced since


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _parse_state(host: Host, stdout: str) -> _State:
    configs: dict[str, str] = {}
    route_lines: list[str] = []
    network: bool | None = None
    container: tuple[str, str, str] | None = None
    version: tuple[int, ...] | None = None
    handle = ""
    stale_view = False
    for line in stdout.splitlines():
        if line.startswith("route "):
            route_lines.append(line + "\n")
        elif line.startswith("config "):
            _, name, digest = line.split(" ", 2)
            configs[name] = digest
        elif line.startswith("version "):
            version = parse_version(line[8:])
        elif line.startswith("network "):
            network = line == "network yes"
        elif line == "view stale":
            stale_view = True
        elif line.startswith("container "):
            if line != "container absent":
                # "container <status> <kind label, maybe empty> <image> <pid>:<id>"
                status, kind, image, pid_id = (line.split(" ") + ["", "", "", ""])[1:5]
                container = (status, kind, image)
                handle = pid_id if status == "running" and cmd.HANDLE_RE.match(pid_id) else ""
    try:
        routes = parse_route_listing("".join(route_lines))
    except RouteError as e:
        raise RouteError(f"{host.name}: {e}", hint="fix or remove that file on the host") from None
    return _State(configs, routes, _sha("".join(route_lines)), network, container, version, handle, stale_view)


def _check(host: Host, r: HostResult, what: str) -> HostResult:
    if r.status is not Status.OK:
        detail = (r.error or "") + (f": {r.stderr.strip()[-2000:]}" if r.stderr.strip() else "")
        raise RemoteError(f"{host.name}: {what} failed{': ' + detail if detail else ''}", r)
    return r


async def _run(runner: Runner, host: Host, argv: list[str], what: str, *, input: str | None = None,
               check: bool = True, timeout: float | None = 120) -> HostResult:
    r = await runner.run(host, for_host(argv, host), input=input, timeout=timeout)
    return _check(host, r, what) if check else r


async def _read(runner: Runner, host: Host) -> _State:
    r = await _run(runner, host, cmd.read_state_argv(), "reading the proxy routes")
    return _parse_state(host, r.stdout)


def _kind(host: Host, state: _State) -> str:
    kinds = [kind_of_config(name) for name in sorted(state.configs)]
    if not kinds:
        raise ConflictError(f"{host.name}: no proxy is set up ({PROXY_DIR} has no config)",
                            hint="the first deploy creates it (ensure_proxy)")
    if len(kinds) > 1:
        raise ConflictError(f"{host.name}: both a Caddy and an nginx config are in {PROXY_DIR}",
                            hint="remove the one of the proxy that is not running")
    return kinds[0]


async def ensure_proxy(runner: Runner, host: Host, kind: str, image: str, *,
                       ports: tuple[int, ...] = (80, 443)) -> ProxyStatus:
    """Make the ``nextdeploy`` network, the proxy's config and a running ``nextdeploy-proxy`` exist.

    Idempotent: a second call changes nothing (one round trip). A proxy of the
    other kind is refused rather than replaced (that would drop traffic). When the
    container cannot start (port 80 taken...), what this call created is removed.
    """
    check_kind(kind)
    r = await _run(runner, host, cmd.inspect_argv(), "inspecting the proxy")
    state = _parse_state(host, r.stdout)
    status = ProxyStatus(kind, image)
    other = [n for n in state.configs if n != config_name(kind)]
    if state.container and state.container[1] and state.container[1] != kind:
        raise ConflictError(f"{host.name}: the proxy container {PROXY_CONTAINER} is {state.container[1]}, "
                            f"not {kind}", hint="remove it first; switching proxies interrupts traffic")
    if other:
        raise ConflictError(f"{host.name}: {PROXY_DIR} holds {', '.join(other)}, the config of another proxy kind",
                            hint=f"remove it to use {kind}")
    if state.stale_view:
        raise ConflictError(
            f"{host.name}: the running proxy {PROXY_CONTAINER} reads an older {PROXY_DIR} (the directory was "
            "replaced or removed after the proxy started): a switch or config written now would not reach it",
            hint=f"restart the proxy so that it mounts the directory again, e.g. `ndctl exec --tags name:{host.name} "
                 f"-- docker restart {PROXY_CONTAINER}` (it drops open connections), then run the command again")
    created_network = wrote_config = False
    if not state.network:
        r = await _run(runner, host, cmd.network_create_argv(), "creating the nextdeploy network")
        created_network = r.stdout.strip() == "created"  # else another deploy made it meanwhile: not ours
        if created_network:
            status.changes.append("created network nextdeploy")
    version = state.version
    if state.container is None or version is None:
        # Before the first config is written: what it may contain depends on the version.
        source = image if state.container is None else None
        r = await _run(runner, host, cmd.version_argv(kind, source), f"asking the {kind} proxy its version",
                       check=False)
        found = parse_version(r.stdout + " " + r.stderr) if r.status is Status.OK else None
        if found is not None and found != version:
            await _run(runner, host, cmd.mkdirs_argv(), "creating the proxy directory")
            await _run(runner, host, cmd.write_file_argv(f"{PROXY_DIR}/version"), "recording the proxy version",
                       input=".".join(map(str, found)) + "\n")
            version = found
    if config_name(kind) not in state.configs:
        text = render(kind, state.routes, version)
        await _run(runner, host, cmd.mkdirs_argv(), "creating the proxy directory")
        if state.routes and uses_markers(kind, version):
            await _run(runner, host, cmd.ensure_markers_argv([(r.app, r.upstream) for r in state.routes]),
                       "writing the live markers")
        await _run(runner, host, cmd.write_file_argv(f"{PROXY_DIR}/{config_name(kind)}"), "writing the proxy config",
                   input=text)
        wrote_config = True
        status.changes.append(f"wrote {PROXY_DIR}/{config_name(kind)} ({len(state.routes)} route(s))")
    if state.container is None:
        r = await _run(runner, host, cmd.run_proxy_argv(kind, image, ports=ports), "starting the proxy", check=False)
        if r.status is Status.OK:
            r = await _run(runner, host, cmd.wait_ready_argv(kind), "waiting for the proxy", check=False)
        if r.status is not Status.OK:
            await _run(runner, host, cmd.remove_container_argv(), "removing the proxy", check=False)
            if created_network:
                await _run(runner, host, cmd.network_remove_argv(), "removing the network", check=False)
            if wrote_config:  # else the next set_route would think a proxy is set up
                await _run(runner, host, ["rm", "-f", f"{PROXY_DIR}/{config_name(kind)}"], "removing the config",
                           check=False)
            _check(host, r, f"starting the {kind} proxy ({image})")
        status.changes.append(f"started {PROXY_CONTAINER} ({kind}, {image})")
    elif state.container[0] != "running":
        await _run(runner, host, cmd.start_argv(), "starting the proxy")
        await _run(runner, host, cmd.wait_ready_argv(kind), "waiting for the proxy")
        status.changes.append(f"started {PROXY_CONTAINER} (was {state.container[0]})")
    else:
        status.image = state.container[2] or image
    if not status.changes:
        status.snapshot = state
    status.version = version
    return status


async def _apply(runner: Runner, host: Host, app: str, route: Route | None,
                 known: _State | None = None) -> ProxyChange:
    started = time.monotonic()
    handle = ""
    for attempt in range(CAS_ATTEMPTS):
        trusted = attempt > 0 or known is None  # read just now, not a snapshot from earlier
        state = await _read(runner, host) if trusted else known
        kind = _kind(host, state)
        before = next((r for r in state.routes if r.app == app), None)
        others = [r for r in state.routes if r.app != app]
        new_routes = others + ([route] if route is not None else [])
        check_routes(new_routes)  # a host clash is refused before anything changes
        text = render(kind, new_routes, state.version)
        if trusted and before == route and state.configs.get(config_name(kind)) == _sha(text):
            return ProxyChange(app, "unchanged", kind, before, route, time.monotonic() - started)
        handle = handle or state.handle  # a re-read does not inspect the container: keep the first one
        markers = uses_markers(kind, state.version)
        argv = cmd.commit_argv(kind, app, state.listing_hash, route.to_json() if route else None, handle=handle,
                               live=route.upstream if markers and route else "",
                               markers=[(r.app, r.upstream) for r in new_routes] if markers else ())
        r = await _run(runner, host, argv, "switching the proxy", input=text, check=False)
        if r.exit_code == cmd.CAS_MISMATCH:
            continue  # another app's route changed in between: re-read and re-render
        if r.exit_code == cmd.INVALID:
            raise RemoteError(f"{host.name}: the {kind} proxy refused the new config; nothing was changed: "
                              f"{r.stderr.strip()[-2000:]}", r)
        if r.exit_code == cmd.RELOAD_FAILED:
            raise RemoteError(f"{host.name}: reloading the {kind} proxy failed; the previous config was restored: "
                              f"{r.stderr.strip()[-2000:]}", r)
        _check(host, r, "switching the proxy")
        action = "removed" if route is None else ("created" if before is None else "updated")
        out = r.stdout.splitlines()
        via = "signal" if kind == "nginx" else next(
            (line.split(" ", 1)[1] for line in out if line.startswith("reloaded ")),
            "marker" if "switched marker" in out else None)
        return ProxyChange(app, action, kind, before, route, time.monotonic() - started, via=via)
    raise ConflictError(f"{host.name}: the proxy routes kept changing during {CAS_ATTEMPTS} attempts",
                        hint="another deploy is switching routes on this host; try again")


async def set_route(runner: Runner, host: Host, route: Route, *, known: object = None) -> ProxyChange:
    """Point ``route.app``'s traffic at ``route.upstream`` (atomic, graceful: the old upstream drains).

    ``known``: a :attr:`ProxyStatus.snapshot` of this host, saving the first read (a stale one
    costs a retry, never a lost route).
    """
    return await _apply(runner, host, route.app, route, known if isinstance(known, _State) else None)


async def check_route(runner: Runner, host: Host, route: Route, *, known: object = None) -> None:
    """Refuse (RouteConflict) a route that clashes with another app's on ``host``, before
    anything is started for it; ``known``: a :attr:`ProxyStatus.snapshot` saves the read."""
    state = known if isinstance(known, _State) else await _read(runner, host)
    try:
        check_routes([r for r in state.routes if r.app != route.app] + [route])
    except RouteConflict as e:
        raise RouteConflict(f"{host.name}: {e}", hint="give each app its own proxy.hosts, and at most one app "
                                                      "none (the catch-all)") from None


async def remove_route(runner: Runner, host: Host, app: str) -> ProxyChange:
    """Stop routing ``app`` (its route file goes, the config is re-rendered without it)."""
    check_app(app)
    return await _apply(runner, host, app, None)


async def read_routes(runner: Runner, host: Host) -> list[Route]:
    return (await _read(runner, host)).routes


async def remove_proxy(runner: Runner, host: Host, *, purge: bool = False) -> None:
    """Remove the proxy container and the network (and, with ``purge``, its config and routes)."""
    await _run(runner, host, cmd.remove_container_argv(), "removing the proxy", check=False)
    await _run(runner, host, cmd.network_remove_argv(), "removing the network", check=False)
    if purge:
        await _run(runner, host, cmd.remove_state_argv(), "removing the proxy config")
