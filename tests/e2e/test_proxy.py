"""End to end: the reverse proxy on a real test host (own sshd and Docker engine).

A load generator (``ndctl.sandbox.loadgen``) runs INSIDE the test host (stdlib
python3, persistent HTTP/1.1 keep-alive connections to 127.0.0.1:80) while routes
switch between two busybox httpd apps. Like browsers and urllib3, it retries a
request once when a reused keep-alive connection is closed before any response
byte; those are counted separately and are not failures.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ndctl import sandbox
from ndctl.core.inventory import Host
from ndctl.core.proxy import NETWORK, PROXY_CONTAINER, PROXY_DIR, Route
from ndctl.ops import proxy as ops
from ndctl.sandbox import caddyimage
from ndctl.sandbox.loadgen import LoadGen
from ndctl.sandbox._util import DOCKER
from ndctl.transport.ssh import Runner, RunOptions

pytestmark = pytest.mark.e2e

SWITCHES = 20
IMAGES = {"caddy": caddyimage.CADDY_REF, "nginx": caddyimage.NGINX_REF}

# An upgraded (WebSocket-like) endpoint for busybox nc: answers 101, then a line every 0.1 s.
WS_APP = r"""#!/bin/busybox sh
cr=$(printf '\r')
while IFS= read -r line; do [ -z "$line" ] || [ "$line" = "$cr" ] && break; done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
i=0; while [ $i -lt 600 ]; do echo "tick $i $V" || exit 0; /bin/busybox sleep 0.1; i=$((i+1)); done
"""

WS_CLIENT = r"""
import socket, sys, time
c = socket.create_connection(("127.0.0.1", 80), timeout=60)
c.sendall(b"GET /live HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    d = c.recv(4096)
    if not d:
        sys.exit("closed before the 101: %r" % buf)
    buf += d
head, _, rest = buf.partition(b"\r\n\r\n")
assert head.startswith(b"HTTP/1.1 101"), head
print("open", flush=True)
ticks = []  # (wall time, line)
pending = rest
try:
    while True:
        d = c.recv(4096)
        if not d:
            break
        pending += d
        *lines, pending = pending.split(b"\n")
        ticks += [(time.time(), l.decode(errors="replace")) for l in lines]
except OSError as e:
    print("error", type(e).__name__, flush=True)
print("closed", time.time(), len(ticks), ticks[-1][1] if ticks else "", flush=True)
print(" ".join("%.3f" % t for t, _ in ticks), flush=True)
"""


@dataclass
class Env:
    th: sandbox.TestHost
    host: Host
    opts: RunOptions
    kind: str
    image: str
    containers: list[str]

    def runner(self) -> Runner:
        return Runner(self.opts)

    def ensure_proxy(self) -> None:
        async def main():
            async with self.runner() as r:
                await ops.ensure_proxy(r, self.host, self.kind, self.image)
        asyncio.run(main())

    def start_app(self, name: str, version: str) -> str:
        """A busybox httpd app on the nextdeploy network serving ``version`` (and a 3 s slow CGI)."""
        script = ('v=$1; /bin/busybox mkdir -p /www/cgi-bin; echo "$v" > /www/index.html; '
                  'printf "#!/bin/busybox sh\\necho Content-Type: text/plain\\necho\\n/bin/busybox sleep 3\\n'
                  'echo slow-%s\\n" "$v" > /www/cgi-bin/slow; /bin/busybox chmod 755 /www/cgi-bin/slow; '
                  'printf "%s" "$2" > /ws; /bin/busybox chmod 755 /ws; export V="$v"; '
                  '/bin/busybox nc -ll -p 8081 -e /ws & '
                  'exec /bin/busybox httpd -f -p 8080 -h /www')
        self.containers.append(name)
        self.th.exec("docker", "run", "-d", "--name", name, "--network", NETWORK,
                     "--label", "com.nextdeploy.app=web", "--label", f"com.nextdeploy.version={version}",
                     "--label", "com.nextdeploy.role=app", "--label", "com.nextdeploy.port=8080",
                     sandbox.BUSYBOX_REF, "/bin/busybox", "sh", "-c", script, "app", version, WS_APP)
        return f"{name}:8080"

    def get(self, path: str = "/", timeout: float = 10) -> str:
        code = ("import urllib.request,sys\n"
                "try:\n r=urllib.request.urlopen('http://127.0.0.1'+sys.argv[1],timeout=float(sys.argv[2]));"
                " print(r.status, r.read().decode().strip())\n"
                "except urllib.error.HTTPError as e: print(e.code, e.read().decode().strip())")
        return self.th.exec("python3", "-c", code, path, str(timeout), timeout=timeout + 30).stdout.strip()


@pytest.fixture(scope="module")
def images(container_hosts):
    """Build the proxy images here once and ship them into the first test host."""
    th = container_hosts[0]
    sandbox.import_busybox(th)
    refs = {"caddy": caddyimage.build_caddy_image(), "nginx": caddyimage.build_nginx_image()}
    for ref in refs.values():
        caddyimage.load_into(th, ref)
    assert caddyimage.load_into(th, refs["caddy"]) is False  # same image id: nothing shipped
    return refs


@pytest.fixture(params=["caddy", "nginx"])
def env(request, container_hosts, images, tmp_path: Path):
    th = container_hosts[0]
    kh = tmp_path / "known_hosts"
    kh.write_text(th.known_hosts_line() + "\n")
    host = Host(th.name, th.address, port=th.port, user=th.user, identity=str(th.identity))
    had_state_dir = th.exec("test", "-d", "/var/lib/nextdeploy", check=False).returncode == 0
    # Start from a host without a proxy or app network: other tests on the shared hosts
    # (accessories, deploys) may have left the network behind.
    th.exec("sh", "-c", 'docker ps -aq --filter network=nextdeploy | xargs -r docker rm -f >/dev/null 2>&1; '
            'docker network rm nextdeploy >/dev/null 2>&1; rm -rf /var/lib/nextdeploy/proxy', check=False)
    e = Env(th, host, RunOptions(known_hosts_files=[kh]), request.param, images[request.param], [])
    try:
        yield e
    finally:
        # Leave the shared host as we found it, whatever happened above.
        th.exec("sh", "-c", 'docker rm -f "$@" >/dev/null 2>&1; docker network rm nextdeploy >/dev/null 2>&1; '
                'rm -rf /var/lib/nextdeploy/proxy', "cleanup", PROXY_CONTAINER, *e.containers, check=False)
        if not had_state_dir:
            th.exec("rmdir", "/var/lib/nextdeploy", check=False)
        left = th.exec("docker", "ps", "-aq", "--filter", "name=nd-web-", "--filter", "name=nextdeploy-proxy").stdout
        assert left.strip() == "", "containers left behind"


def test_ensure_proxy_is_idempotent_and_admin_is_private(env: Env) -> None:
    async def main():
        async with env.runner() as r:
            first = await ops.ensure_proxy(r, env.host, env.kind, env.image)
            second = await ops.ensure_proxy(r, env.host, env.kind, env.image)
            return first, second

    first, second = asyncio.run(main())
    assert first.changes == ["created network nextdeploy",
                             f"wrote {PROXY_DIR}/{'caddy.json' if env.kind == 'caddy' else 'nginx.conf'} (0 route(s))",
                             f"started {PROXY_CONTAINER} ({env.kind}, {env.image})"]
    assert second.changes == []
    assert env.get("/") == "404 nextdeploy: no app is routed for this host"
    ports = env.th.exec("docker", "port", PROXY_CONTAINER).stdout
    assert sorted(set(line.split(" -> ")[0] for line in ports.splitlines())) == ["443/tcp", "80/tcp"]
    if env.kind == "caddy":
        # The admin API answers only inside the proxy's own network namespace.
        ip = env.th.exec("docker", "inspect", "-f", "{{(index .NetworkSettings.Networks \"nextdeploy\").IPAddress}}",
                         PROXY_CONTAINER).stdout.strip()
        probe = "import socket,sys\ntry: socket.create_connection((sys.argv[1], 2019), 2); print('open')\n" \
                "except OSError: print('closed')"
        for addr in ("127.0.0.1", ip):
            assert env.th.exec("python3", "-c", probe, addr).stdout.strip() == "closed", addr
        assert env.th.exec("docker", "exec", PROXY_CONTAINER, "caddy", "reload", "--config",
                           "/etc/nextdeploy/proxy/caddy.json").returncode == 0


def test_switching_under_load_drops_no_request(env: Env) -> None:
    env.ensure_proxy()
    blue = env.start_app("nd-web-0000b1e0", "v1")
    green = env.start_app("nd-web-000094ee", "v2")  # noqa: F841 - named for the reader
    gen: LoadGen | None = None
    timings: list[float] = []

    async def main():
        nonlocal gen
        async with env.runner() as r:
            first = await ops.set_route(r, env.host, Route("web", blue, drain_seconds=5))
            assert first.action == "created"
            # a new app changes the config: Caddy takes it from its admin API inside its netns
            assert first.via == ("admin-api" if env.kind == "caddy" else "signal"), first
            assert env.get("/") == "200 v1"
            again = await ops.set_route(r, env.host, Route("web", blue, drain_seconds=5))
            assert again.action == "unchanged"
            gen = LoadGen(env.th, expected=("v1", "v2")).start()
            await asyncio.sleep(1.0)
            for i in range(SWITCHES):
                target = "nd-web-000094ee:8080" if i % 2 == 0 else blue
                change = await ops.set_route(r, env.host, Route("web", target, drain_seconds=5))
                assert change.action == "updated", change
                # Caddy 2.6.2 switches by renaming the app's live marker: no reload at all
                assert change.via == ("marker" if env.kind == "caddy" else "signal"), change
                timings.append(change.duration)
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.5)

    try:
        asyncio.run(main())
        assert gen is not None
        stats = gen.stop()
    finally:
        if gen is not None:
            gen.kill()
    timings.sort()
    print(f"\n[{env.kind}] {SWITCHES} switches under load: {json.dumps(stats, sort_keys=True)}; "
          f"set_route took p50 {timings[len(timings) // 2]:.3f}s max {timings[-1]:.3f}s")
    assert stats["failed"] == 0, stats
    assert stats["versions"].get("v1", 0) > 0 and stats["versions"].get("v2", 0) > 0, stats
    assert stats["requests"] > 100, stats
    assert env.get("/") == "200 v1"  # an even number of switches ends on blue


def test_stop_then_start_control_run_shows_failures(env: Env) -> None:
    """Proves the generator sees failures: remove blue, then route to green."""
    env.ensure_proxy()
    blue = env.start_app("nd-web-0000b1e0", "v1")
    green = env.start_app("nd-web-000094ee", "v2")
    gen: LoadGen | None = None

    async def main():
        nonlocal gen
        async with env.runner() as r:
            await ops.set_route(r, env.host, Route("web", blue, drain_seconds=5))
            gen = LoadGen(env.th, expected=("v1", "v2")).start()
            await asyncio.sleep(1.0)
            env.th.exec("docker", "rm", "-f", "nd-web-0000b1e0")
            await ops.set_route(r, env.host, Route("web", green, drain_seconds=5))
            # Requests stuck on the removed blue fail slowly (its name no longer resolves):
            # give the generator time to get through them and reach green.
            await asyncio.sleep(5.0)

    try:
        asyncio.run(main())
        assert gen is not None
        stats = gen.stop()
    finally:
        if gen is not None:
            gen.kill()
    print(f"\n[{env.kind}] stop-then-start control: {json.dumps(stats, sort_keys=True)}")
    assert stats["failed"] > 0, stats
    assert stats["versions"].get("v2", 0) > 0, stats


@pytest.mark.parametrize("drain", [20, 1])
def test_in_flight_request_on_blue_completes_after_the_switch(env: Env, drain: int) -> None:
    env.ensure_proxy()
    blue = env.start_app("nd-web-0000b1e0", "v1")
    green = env.start_app("nd-web-000094ee", "v2")
    slow: subprocess.Popen | None = None

    async def main():
        nonlocal slow
        async with env.runner() as r:
            await ops.set_route(r, env.host, Route("web", blue, drain_seconds=drain))
            code = ("import urllib.request,time; t=time.monotonic(); "
                    "r=urllib.request.urlopen('http://127.0.0.1/cgi-bin/slow', timeout=30); "
                    "print(r.status, r.read().decode().strip(), round(time.monotonic()-t, 2))")
            slow = subprocess.Popen([DOCKER, "exec", env.th.container, "python3", "-c", code],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            await asyncio.sleep(1.0)  # the 3 s request is in flight on blue
            t0 = time.monotonic()
            change = await ops.set_route(r, env.host, Route("web", green, drain_seconds=drain))
            return change, time.monotonic() - t0

    try:
        change, took = asyncio.run(main())
        assert change.action == "updated"
        assert env.get("/") == "200 v2"  # new requests go to green at once
        assert slow is not None
        out, err = slow.communicate(timeout=60)
    finally:
        if slow is not None and slow.poll() is None:
            slow.kill()
    print(f"\n[{env.kind}] drain {drain}s: in-flight request across the switch: {out.strip()!r} {err[-300:]!r}; "
          f"set_route took {took:.2f}s")
    if drain == 1:
        # nginx closes what is left when worker_shutdown_timeout ends; Caddy 2.6's grace_period
        # only stops waiting for it (Go's Server.Shutdown never closes active connections).
        if env.kind == "nginx":
            assert slow.returncode != 0 and "RemoteDisconnected" in err, (out, err)
        return
    assert slow.returncode == 0, err
    status, body, _ = out.split()
    assert (status, body) == ("200", "slow-v1")


def test_upgraded_connection_gets_the_drain_time(env: Env) -> None:
    """A WebSocket-like connection on blue is not cut by the switch: nginx keeps it for the
    route's drain time, then closes it; Caddy's marker switch leaves it alone until blue stops
    (a deploy stops blue after its grace period, which is never shorter than the drain)."""
    drain = 3
    env.ensure_proxy()
    blue = env.start_app("nd-web-0000b1e0", "v1")
    green = env.start_app("nd-web-000094ee", "v2")
    ws_blue, ws_green = blue.replace(":8080", ":8081"), green.replace(":8080", ":8081")
    client: subprocess.Popen | None = None
    version = env.th.exec("cat", f"{PROXY_DIR}/version", check=False).stdout.strip()
    marker = env.kind == "caddy" and tuple(int(x) for x in version.split(".")[:3]) >= (2, 6, 2)
    stop_blue_after = drain + 2.0

    async def main():
        nonlocal client
        async with env.runner() as r:
            await ops.set_route(r, env.host, Route("ws", ws_blue, ["ws.test"], drain_seconds=drain))
            client = subprocess.Popen([DOCKER, "exec", env.th.container, "python3", "-c", WS_CLIENT],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "open"
            await asyncio.sleep(1.0)
            change = await ops.set_route(r, env.host, Route("ws", ws_green, ["ws.test"], drain_seconds=drain))
            assert change.via == ("marker" if marker else "signal" if env.kind == "nginx" else change.via)
            switched = time.time()
            if marker:
                await asyncio.sleep(stop_blue_after)
                env.th.exec("docker", "stop", "-t", "1", "nd-web-0000b1e0")
            return switched

    try:
        switched_at = asyncio.run(main())
        assert client is not None
        out, _ = client.communicate(timeout=60)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
    closed = next(line for line in out.splitlines() if line.startswith("closed"))
    _, closed_at, nticks, last = closed.split(" ", 3)
    after = float(closed_at) - switched_at
    times = [float(t) for t in out.strip().splitlines()[-1].split()] if nticks != "0" else []
    ticks_after = sum(1 for t in times if t > switched_at)
    print(f"\n[{env.kind} {version}] upgraded connection: closed {after:.2f}s after the switch "
          f"(drain {drain}s); {ticks_after} lines from blue after the switch; last line {last!r}")
    assert "v1" in last
    if marker:
        # open until blue stopped, and blue kept talking on it the whole time
        assert stop_blue_after <= after <= stop_blue_after + 10, after
        assert ticks_after >= 10 * stop_blue_after * 0.7, ticks_after
    elif env.kind == "nginx" or tuple(int(x) for x in version.split(".")[:2]) >= (2, 7):
        assert drain - 1.0 <= after <= drain + 10, after  # kept for the drain time, then closed
        assert ticks_after >= 10
    else:
        # Caddy < 2.6.2 switches by reload, and before 2.7 a reload closes upgraded connections.
        assert after < drain - 1.0, after


@pytest.mark.parametrize("env", ["caddy"], indirect=True)
def test_caddy_refusing_a_config_through_its_admin_api_changes_nothing(env: Env) -> None:
    """The commit script's admin-API path on a real Caddy: a config Caddy cannot load is
    refused with Caddy's reason (exit INVALID), nothing is written, and the old config serves."""
    from ndctl.commands import proxy as cmd
    from ndctl.commands.shell import for_host

    env.ensure_proxy()
    blue = env.start_app("nd-web-0000b1e0", "v1")

    async def route():
        async with env.runner() as r:
            await ops.set_route(r, env.host, Route("web", blue, drain_seconds=1))

    async def main():
        async with env.runner() as r:
            state = await ops._read(r, env.host)
            bad = json.dumps({"apps": {"http": {"servers": {"x": {"listen": [":80"],
                                                                  "routes": [{"handle": [{"handler": "no_such"}]}]}}}}})
            argv = cmd.commit_argv("caddy", "web", state.listing_hash, None)
            return await r.run(env.host, for_host(argv, env.host), input=bad)

    asyncio.run(route())
    before = env.th.exec("cat", f"{PROXY_DIR}/caddy.json").stdout
    res = asyncio.run(main())
    assert res.exit_code == cmd.INVALID, res
    assert "caddy:" in res.stderr and "no_such" in res.stderr, res.stderr
    assert "reloaded" not in res.stdout  # the docker exec fallback did not run
    assert env.th.exec("cat", f"{PROXY_DIR}/caddy.json").stdout == before
    assert env.th.exec("test", "-f", f"{PROXY_DIR}/routes/web.json", check=False).returncode == 0  # route kept
    assert env.get("/") == "200 v1"
