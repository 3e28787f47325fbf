"""The proxy: route validation, exact rendered configs, exact argv, and the host-side scripts
(run here with ``sh`` against a temporary directory and a fake ``docker``)."""
from __future__ import annotations

import asyncio
from dataclasses import replace
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ndctl.commands import docker
from ndctl.commands import proxy as cmd
from ndctl.core.errors import ConflictError, ExitStatus, RemoteError, UsageError
from ndctl.core.inventory import Host
from ndctl.core.proxy import (
    CADDY_ADMIN,
    CONTAINER_DIR,
    PROXY_DIR,
    ProxyStatus,
    Route,
    RouteConflict,
    RouteError,
    check_routes,
    parse_route_listing,
    render,
    render_caddy,
    render_nginx,
)
from ndctl.core.results import HostResult, Status
from ndctl.ops import proxy as ops

WEB = Route("web", "nd-web-0a1b2c3d:8080", ("www.example.com", "example.com"), drain_seconds=10)
API = Route("api", "nd-api-11223344:3000", ("api.example.com",), drain_seconds=45)
ALL = Route("site", "nd-site-deadbeef:80")


# ----- validation -----------------------------------------------------------------

def test_route_normalises_hosts() -> None:
    r = Route("web", "nd-web-1:8080", ["WWW.Example.com.", "example.com", "www.example.com", "*.Apps.example.com"])
    assert r.hosts == ("*.apps.example.com", "example.com", "www.example.com")
    assert (r.container, r.port, r.catch_all) == ("nd-web-1", 8080, False)
    assert Route("web", "nd-web-1:8080").catch_all


@pytest.mark.parametrize("kwargs,message", [
    (dict(app="Web", upstream="c:80"), "app 'Web' is not a valid app name"),
    (dict(app="-web", upstream="c:80"), "app '-web' is not a valid app name"),
    (dict(app="We-b", upstream="c:80"), "app 'We-b' is not a valid app name"),
    (dict(app="a" * 64, upstream="c:80"), "is not a valid app name"),
    (dict(app="web", upstream="c"), "upstream 'c' is not <container>:<port>"),
    (dict(app="web", upstream="c:0"), "port '0' is not a number from 1 to 65535"),
    (dict(app="web", upstream="c:65536"), "port '65536'"),
    (dict(app="web", upstream="c:08"), "port '08'"),
    (dict(app="web", upstream="c;rm:80"), "'c;rm' is not a container name"),
    (dict(app="web", upstream="[::1]:80"), "is not <container>:<port>"),
    (dict(app="web", upstream="c:80", hosts=["ex ample.com"]), "hosts: 'ex ample.com' is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts=["a..b"]), "hosts: 'a..b' is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts=["-a.com"]), "is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts=["a.*.com"]), "is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts=["x.com;"]), "is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts=['x.com"']), "is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts=[""]), "is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts=["a" * 64 + ".com"]), "is not a DNS name"),
    (dict(app="web", upstream="c:80", hosts="example.com"), "hosts of app 'web' must be a list"),
    (dict(app="web", upstream="c:80", hosts=[3]), "hosts: 3 is not a string"),
    (dict(app="web", upstream="c:80", drain_seconds=0), "drain_seconds of app 'web' must be a whole number"),
    (dict(app="web", upstream="c:80", drain_seconds=1.5), "drain_seconds"),
    (dict(app="web", upstream="c:80", drain_seconds=True), "drain_seconds"),
    (dict(app="web", upstream="c:80", drain_seconds=86401), "from 1 to 86400"),
])
def test_route_validation_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(RouteError, match=None) as e:
        Route(**kwargs)
    assert message in str(e.value)
    assert e.value.exit_status is ExitStatus.USAGE


@pytest.mark.parametrize("data,message", [
    ([], "x.json: expected a JSON object, got list"),
    ({"app": "web"}, "x.json: missing field 'upstream'"),
    ({"app": "web", "upstream": "c:80", "port": 1}, "x.json: unknown field(s) port"),
    ({"app": "web", "upstream": "c:80", "hosts": "a.com"}, "x.json: hosts must be a list"),
    ({"app": "web", "upstream": "c:80", "drain_seconds": -1}, "x.json: drain_seconds of app 'web'"),
])
def test_route_from_dict_names_the_source_and_field(data: object, message: str) -> None:
    with pytest.raises(RouteError) as e:
        Route.from_dict(data, "x.json")
    assert message in str(e.value)


def test_route_json_round_trip_is_one_sorted_line() -> None:
    assert WEB.to_json() == ('{"app":"web","drain_seconds":10,"hosts":["example.com","www.example.com"],'
                             '"upstream":"nd-web-0a1b2c3d:8080"}\n')
    assert Route.from_json(WEB.to_json()) == WEB
    with pytest.raises(RouteError, match="r.json: not valid JSON"):
        Route.from_json("{", "r.json")


def test_route_listing_checks_file_names() -> None:
    listing = f"route api.json {API.to_json().strip()} \nroute web.json {WEB.to_json()}"
    assert parse_route_listing(listing) == [API, WEB]
    with pytest.raises(RouteError, match=r"/routes/blog.json: holds the route of app 'web'; expected web.json"):
        parse_route_listing(f"route blog.json {WEB.to_json()}")


def test_conflicting_routes_are_refused() -> None:
    with pytest.raises(RouteConflict, match="host 'example.com' is claimed by apps 'blog' and 'web'"):
        check_routes([WEB, Route("blog", "b:80", ["example.com"])])
    with pytest.raises(RouteConflict, match="apps 'other' and 'site' both want every host"):
        check_routes([ALL, Route("other", "o:80")])
    with pytest.raises(RouteConflict, match="two routes for app 'web'"):
        check_routes([WEB, WEB])
    assert issubclass(RouteConflict, ConflictError)
    # host rules first (by app), the catch-all last, whatever the input order
    assert check_routes([ALL, WEB, API]) == [API, WEB, ALL]


def test_unknown_kind() -> None:
    with pytest.raises(UsageError, match="proxy 'traefik' is not supported: use one of caddy, nginx"):
        render("traefik", [])


# ----- Caddy ------------------------------------------------------------------------------

def _caddy(routes: list[dict], grace: str = "30s") -> str:
    expected = {
        "admin": {"listen": "localhost:2019", "config": {"persist": False}},
        "apps": {"http": {"grace_period": grace, "servers": {"nextdeploy": {
            "listen": [":80"], "automatic_https": {"disable": True}, "routes": routes}}}},
    }
    return json.dumps(expected, indent=2, sort_keys=True) + "\n"


NOT_ROUTED = {"handle": [{"handler": "static_response", "status_code": 404,
                          "body": "nextdeploy: no app is routed for this host\n"}]}


def _rp(dial: str, hosts: list[str] | None = None) -> dict:
    r: dict = {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": dial}]}], "terminal": True}
    if hosts:
        r["match"] = [{"host": hosts}]
    return r


def test_caddy_no_routes() -> None:
    assert render_caddy([]) == _caddy([NOT_ROUTED])


def test_caddy_one_catch_all() -> None:
    assert render_caddy([ALL]) == _caddy([_rp("nd-site-deadbeef:80")])


def test_caddy_one_host_rule_falls_back_to_404() -> None:
    assert render_caddy([WEB]) == _caddy([_rp("nd-web-0a1b2c3d:8080", ["example.com", "www.example.com"]),
                                          NOT_ROUTED], grace="10s")


def test_caddy_two_routes_drain_is_the_longest() -> None:
    text = render_caddy([WEB, API])
    assert text == _caddy([_rp("nd-api-11223344:3000", ["api.example.com"]),
                           _rp("nd-web-0a1b2c3d:8080", ["example.com", "www.example.com"]), NOT_ROUTED], grace="45s")
    assert render_caddy([API, WEB]) == text  # deterministic: input order does not matter
    assert render_caddy([WEB, ALL]) == _caddy([_rp("nd-web-0a1b2c3d:8080", ["example.com", "www.example.com"]),
                                               _rp("nd-site-deadbeef:80")], grace="30s")
    # the admin API is never on a routable address
    assert json.loads(text)["admin"]["listen"] == "localhost:2019"


# ----- nginx ------------------------------------------------------------------------------

NGINX_HEAD = """\
# Rendered by ndctl from /var/lib/nextdeploy/proxy/routes/*.json; edits are overwritten.
worker_processes auto;
pid /run/nginx.pid;
error_log stderr warn;
worker_shutdown_timeout {grace}s;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    resolver 127.0.0.11 valid=5s ipv6=off;
    resolver_timeout 5s;
    map $http_upgrade $nd_connection {{
        default upgrade;
        "" "";
    }}
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $nd_connection;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $http_host;
"""
NGINX_404 = """\
    server {
        listen 80 default_server;
        server_name "";
        return 404 "nextdeploy: no app is routed for this host\\n";
    }
"""


def _server(listen: str, names: str, upstream: str) -> str:
    return (f"    server {{\n        {listen}\n        server_name {names};\n        location / {{\n"
            f'            set $nd_upstream "{upstream}";\n            proxy_pass http://$nd_upstream;\n'
            "        }\n    }\n")


def test_nginx_no_routes() -> None:
    assert render_nginx([]) == NGINX_HEAD.format(grace=30) + NGINX_404 + "}\n"


def test_nginx_one_catch_all() -> None:
    assert render_nginx([ALL]) == (NGINX_HEAD.format(grace=30)
                                   + _server("listen 80 default_server;", '""', "nd-site-deadbeef:80") + "}\n")


def test_nginx_two_routes() -> None:
    text = render_nginx([WEB, API])
    assert text == (NGINX_HEAD.format(grace=45)
                    + _server("listen 80;", '"api.example.com"', "nd-api-11223344:3000")
                    + _server("listen 80;", '"example.com" "www.example.com"', "nd-web-0a1b2c3d:8080")
                    + NGINX_404 + "}\n")
    assert render_nginx([API, WEB]) == text
    assert render("nginx", [WEB, ALL]) == (NGINX_HEAD.format(grace=30)
                                           + _server("listen 80;", '"example.com" "www.example.com"',
                                                     "nd-web-0a1b2c3d:8080")
                                           + _server("listen 80 default_server;", '""', "nd-site-deadbeef:80")
                                           + "}\n")


@pytest.mark.skipif(not os.path.exists("/usr/sbin/nginx"), reason="no nginx binary here")
@pytest.mark.parametrize("routes", [[], [ALL], [WEB, API], [WEB, API, ALL],
                                    [Route("my_app", "nd-my_app-0a1b2c3d:8080", ["shop.example.com"])]])
def test_nginx_accepts_the_rendered_config(tmp_path: Path, routes: list[Route]) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx(routes))
    cp = subprocess.run(["nginx", "-t", "-q", "-c", str(conf)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr


@pytest.mark.skipif(not os.path.exists("/usr/bin/caddy"), reason="no caddy binary here")
def test_caddy_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = tmp_path / "caddy.json"
    conf.write_text(render_caddy([WEB, API, ALL]))
    cp = subprocess.run(["caddy", "validate", "--config", str(conf)], capture_output=True, text=True,
                        env={**os.environ, "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    assert cp.returncode == 0, cp.stderr


# ----- builders ---------------------------------------------------------------------------

def test_network_and_container_builders() -> None:
    assert cmd.network_create_argv() == docker.ensure_network("nextdeploy")  # race-safe, says if it created
    assert cmd.network_remove_argv() == ["docker", "network", "rm", "nextdeploy"]
    assert cmd.start_argv() == ["docker", "start", "nextdeploy-proxy"]
    assert cmd.remove_container_argv() == ["docker", "rm", "-f", "nextdeploy-proxy"]
    assert cmd.mkdirs_argv() == ["mkdir", "-p", "-m", "0755", "/var/lib/nextdeploy/proxy/routes"]


def test_run_proxy_argv_publishes_only_http_ports() -> None:
    common = ["docker", "run", "-d", "--name", "nextdeploy-proxy", "--network", "nextdeploy",
              "--restart", "unless-stopped", "--label", "com.nextdeploy.role=proxy"]
    assert cmd.run_proxy_argv("caddy", "caddy:2") == [
        *common, "--label", "com.nextdeploy.proxy-kind=caddy", "-p", "80:80", "-p", "443:443",
        "-v", "/var/lib/nextdeploy/proxy:/etc/nextdeploy/proxy:ro",
        "-v", "nextdeploy-proxy-data:/data", "-e", "XDG_DATA_HOME=/data", "-e", "XDG_CONFIG_HOME=/config",
        "caddy:2", "caddy", "run", "--config", "/etc/nextdeploy/proxy/caddy.json"]
    assert cmd.run_proxy_argv("nginx", "nginx:1.27", ports=(80,)) == [
        *common, "--label", "com.nextdeploy.proxy-kind=nginx", "-p", "80:80",
        "-v", "/var/lib/nextdeploy/proxy:/etc/nextdeploy/proxy:ro", "nginx:1.27",
        "nginx", "-c", "/etc/nextdeploy/proxy/nginx.conf", "-g", "daemon off;"]
    assert "2019" not in " ".join(cmd.run_proxy_argv("caddy", "caddy:2"))
    with pytest.raises(ValueError, match="port 0"):
        cmd.run_proxy_argv("caddy", "caddy:2", ports=(0,))
    with pytest.raises(UsageError):
        cmd.run_proxy_argv("haproxy", "x")


def test_validate_and_reload_argv() -> None:
    assert cmd.reload_argv("caddy") == ["docker", "exec", "nextdeploy-proxy", "caddy", "reload", "--config",
                                        "/etc/nextdeploy/proxy/caddy.json"]
    assert cmd.reload_argv("nginx") == ["docker", "exec", "nextdeploy-proxy", "nginx", "-c",
                                        "/etc/nextdeploy/proxy/nginx.conf", "-s", "reload"]
    assert cmd.validate_argv("caddy", "/etc/nextdeploy/proxy/x.json") == [
        "docker", "exec", "nextdeploy-proxy", "caddy", "validate", "--config", "/etc/nextdeploy/proxy/x.json"]
    assert cmd.validate_argv("nginx") == ["docker", "exec", "nextdeploy-proxy", "nginx", "-t", "-q", "-c",
                                          "/etc/nextdeploy/proxy/nginx.conf"]


def test_scripts_take_values_as_positional_parameters() -> None:
    assert cmd.write_file_argv("/var/lib/nextdeploy/proxy/caddy.json")[3:] == [
        "ndctl-write", "/var/lib/nextdeploy/proxy/caddy.json", "0644"]
    assert cmd.read_state_argv()[3:] == ["ndctl-proxy-read", PROXY_DIR]
    assert cmd.inspect_argv()[3:] == ["ndctl-proxy-inspect", PROXY_DIR, "nextdeploy-proxy", "nextdeploy",
                                      "/etc/nextdeploy/proxy"]
    assert cmd.wait_ready_argv("caddy")[3:] == ["ndctl-proxy-wait", "nextdeploy-proxy", "100",
                                                *cmd.reload_argv("caddy")]
    assert cmd.wait_ready_argv("nginx")[3:] == [
        "ndctl-proxy-wait", "nextdeploy-proxy", "100",
        "sh", "-c", 'docker top "$1" -eo pid,args | grep -q " nginx: worker process$"', "ndctl-probe", "nextdeploy-proxy"]
    argv = cmd.commit_argv("caddy", "web", "abc", WEB.to_json())
    assert argv[3:] == ["ndctl-proxy-commit", PROXY_DIR, "caddy", "web", "abc", WEB.to_json().strip(),
                        "nextdeploy-proxy", "/etc/nextdeploy/proxy", "", cmd._CADDY_LOAD_PY, "localhost:2019", ""]
    assert cmd.commit_argv("caddy", "web", "abc", None, handle="42:" + "ab" * 32)[11] == "42:" + "ab" * 32
    marked = cmd.commit_argv("caddy", "web", "abc", WEB.to_json(), live=WEB.upstream,
                             markers=[("api", API.upstream), ("web", WEB.upstream)])
    assert marked[14:] == [WEB.upstream, "api", API.upstream, "web", WEB.upstream]
    for bad in (dict(live="x;y:80"), dict(markers=[("../a", "c:80")]), dict(markers=[("a", "c:99999")])):
        with pytest.raises((RouteError, ValueError)):
            cmd.commit_argv("caddy", "web", "abc", None, **bad)
    with pytest.raises(ValueError, match="live markers are Caddy's"):
        cmd.commit_argv("nginx", "web", "abc", None, live=WEB.upstream)
    assert cmd.ensure_markers_argv([("web", WEB.upstream)])[3:] == ["ndctl-proxy-markers", PROXY_DIR, "web",
                                                                   WEB.upstream]
    with pytest.raises(ValueError, match="invalid proxy container handle"):
        cmd.commit_argv("caddy", "web", "abc", None, handle="42; rm -rf /")
    assert cmd.commit_argv("nginx", "web", "abc", None)[8] == ""
    with pytest.raises(RouteError):
        cmd.commit_argv("caddy", "../etc", "abc", None)
    for a in (cmd.write_file_argv("/x/y"), cmd.read_state_argv(), cmd.inspect_argv(), cmd.wait_ready_argv("caddy"),
              argv, marked, cmd.ensure_markers_argv([("web", WEB.upstream)]), cmd.remove_state_argv()):
        assert a[:2] == ["sh", "-c"] and "/var/lib" not in a[2]
        assert subprocess.run(["sh", "-n", "-c", a[2]]).returncode == 0  # the script parses
        assert shlex.split(shlex.join(a)) == a


def test_scripts_embed_the_same_reload_as_the_builders() -> None:
    script = cmd.commit_argv("caddy", "web", "x", None)[2]
    assert 'caddy_load "$c" "$hint" "$new" "$cd_/.$conf.new"' in script
    assert 'docker exec "$c" caddy reload --config "$cf"' in script  # the fallback
    assert 'docker exec "$c" nginx -t -q -c "$cd_/.$conf.new"' in script
    assert 'docker exec "$c" nginx -c "$cd_/$conf" -s reload' in script


# ----- host-side scripts, run locally against a fake docker -------------------------------

FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
[ -n "$FAKE_FAIL" ] && case " $* " in *" $FAKE_FAIL "*) echo "fake docker: $FAKE_FAIL failed" >&2; exit 1;; esac
if [ "$1" = top ]; then  # a new nginx worker pid on every call: the reload has turned them over
  n=$(cat "$FAKE_LOG.pid" 2>/dev/null || echo 100); echo $((n + 1)) > "$FAKE_LOG.pid"
  echo "PID COMMAND"; echo "1 nginx: master process nginx"; echo "$n nginx: worker process"; exit 0
fi
case " $* " in *" caddy version "*|*" nginx -v "*) [ -n "$FAKE_VERSION" ] && echo "$FAKE_VERSION";; esac
case " $* " in *" caddy reload "*) [ -z "$FAKE_ON_RELOAD" ] || sh -c "$FAKE_ON_RELOAD";; esac
case "$1 $2" in
  "network inspect") [ "$FAKE_NETWORK" = yes ] || exit 1;;
  "container inspect") case "$*" in "container inspect -f {{.State.Pid}}:{{.Id}} "*) [ -n "$FAKE_PIDID" ] || exit 1; echo "$FAKE_PIDID"; exit 0;; esac
                       [ -n "$FAKE_CONTAINER" ] || exit 1; echo "$FAKE_CONTAINER";;
esac
exit 0
"""


class LocalRunner:
    """Runs argv with ``sh`` on this machine, the proxy directory moved to a temporary one."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.dir = tmp / "nextdeploy" / "proxy"
        bindir = tmp / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        (bindir / "docker").write_text(FAKE_DOCKER)
        (bindir / "docker").chmod(0o755)
        self.log = tmp / "docker.log"
        self.env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_LOG": str(self.log),
                    "FAKE_FAIL": "", "FAKE_NETWORK": "yes", "FAKE_CONTAINER": "", "FAKE_VERSION": "",
                    "FAKE_PIDID": "", "FAKE_ON_RELOAD": "", **env}
        self.admin = CADDY_ADMIN  # where the commit script's Caddy admin client connects
        self.calls: list[list[str]] = []
        self.before_commit = None
        #: the directory the fake proxy container sees as CONTAINER_DIR (None: it has none). The
        #: inspection looks through /proc/<pid>/root: with this test's own pid, the path as it is here.
        self.container_view: Path | None = None

    def docker_calls(self) -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line for line in lines if not line.startswith("top ")]

    def top_calls(self) -> int:
        return sum(1 for line in self.log.read_text().splitlines() if line.startswith("top "))

    async def run(self, host, argv, *, input=None, timeout=None, on_output=None) -> HostResult:
        argv = [a.replace(PROXY_DIR, str(self.dir)) for a in argv]
        argv = [self.admin if a == CADDY_ADMIN else a for a in argv]
        if self.container_view is not None:
            argv = [str(self.container_view) if a == CONTAINER_DIR else a for a in argv]
        if argv[3:4] == ["ndctl-proxy-commit"] and self.before_commit:
            hook, self.before_commit = self.before_commit, None
            hook()
        self.calls.append(argv)
        cp = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env, timeout=30, check=False)
        return HostResult(host.name, Status.OK if cp.returncode == 0 else Status.FAILED, cp.returncode,
                          cp.stdout, cp.stderr)


HOST = Host("h1", "127.0.0.1")


def _setup(tmp_path: Path, kind: str = "caddy", routes: tuple[Route, ...] = (), **env: str) -> LocalRunner:
    runner = LocalRunner(tmp_path, **env)
    (runner.dir / "routes").mkdir(parents=True)
    (runner.dir / ("caddy.json" if kind == "caddy" else "nginx.conf")).write_text(render(kind, routes))
    for r in routes:
        (runner.dir / "routes" / f"{r.app}.json").write_text(r.to_json())
    return runner


def _files(runner: LocalRunner) -> dict[str, str]:
    return {str(p.relative_to(runner.dir)): p.read_text() for p in sorted(runner.dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("kind", ["caddy", "nginx"])
def test_set_route_switches_then_is_a_no_op(tmp_path: Path, kind: str) -> None:
    runner = _setup(tmp_path, kind, (API,))
    conf = "caddy.json" if kind == "caddy" else "nginx.conf"
    change = asyncio.run(ops.set_route(runner, HOST, WEB))
    assert (change.action, change.kind, change.before, change.after) == ("created", kind, None, WEB)
    assert _files(runner) == {conf: render(kind, [API, WEB]), "routes/api.json": API.to_json(),
                              "routes/web.json": WEB.to_json()}
    reload_call = (["container inspect -f {{.State.Pid}}:{{.Id}} nextdeploy-proxy",  # no pid: docker exec
                    "exec nextdeploy-proxy caddy reload --config /etc/nextdeploy/proxy/.caddy.json.new"]
                   if kind == "caddy" else
                   ["exec nextdeploy-proxy nginx -t -q -c /etc/nextdeploy/proxy/.nginx.conf.new",
                    "exec nextdeploy-proxy nginx -c /etc/nextdeploy/proxy/nginx.conf -s reload"])
    assert runner.docker_calls() == reload_call
    assert len(runner.calls) == 2  # read, commit
    # nginx: the workers before the reload, then until all accepting workers are new ones
    assert runner.top_calls() == (0 if kind == "caddy" else 2)

    green = Route("web", "nd-web-99999999:8080", WEB.hosts, WEB.drain_seconds)
    change = asyncio.run(ops.set_route(runner, HOST, green))
    assert (change.action, change.before, change.after) == ("updated", WEB, green)
    assert _files(runner)[conf] == render(kind, [API, green])

    runner.calls.clear()
    change = asyncio.run(ops.set_route(runner, HOST, green))
    assert change.action == "unchanged" and not change.changed
    assert len(runner.calls) == 1 and len(runner.docker_calls()) == 2 * len(reload_call)  # no reload

    change = asyncio.run(ops.remove_route(runner, HOST, "web"))
    assert (change.action, change.before, change.after) == ("removed", green, None)
    assert _files(runner) == {conf: render(kind, [API]), "routes/api.json": API.to_json()}
    assert asyncio.run(ops.remove_route(runner, HOST, "web")).action == "unchanged"


def test_rejected_config_changes_nothing(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_FAIL="reload")
    before = _files(runner)
    green = Route("web", "nd-web-99999999:8080", WEB.hosts)
    with pytest.raises(RemoteError, match="h1: the caddy proxy refused the new config; nothing was changed: "
                                          "fake docker: reload failed"):
        asyncio.run(ops.set_route(runner, HOST, green))
    assert _files(runner) == before


def test_nginx_invalid_config_changes_nothing(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "nginx", (WEB,), FAKE_FAIL="-t")
    before = _files(runner)
    with pytest.raises(RemoteError, match="nginx proxy refused the new config; nothing was changed"):
        asyncio.run(ops.set_route(runner, HOST, API))
    assert _files(runner) == before


def test_nginx_failed_reload_restores_the_previous_config(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "nginx", (WEB,), FAKE_FAIL="-s")
    before = _files(runner)
    with pytest.raises(RemoteError, match="reloading the nginx proxy failed; the previous config was restored"):
        asyncio.run(ops.set_route(runner, HOST, API))
    assert _files(runner) == before


def test_concurrent_route_change_is_re_read_not_lost(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,))
    # Another app's deploy writes its route between our read and our commit.
    runner.before_commit = lambda: (runner.dir / "routes" / "site.json").write_text(ALL.to_json())
    change = asyncio.run(ops.set_route(runner, HOST, API))
    assert change.action == "created"
    assert _files(runner)["caddy.json"] == render_caddy([WEB, API, ALL])
    commits = [c for c in runner.calls if c[3] == "ndctl-proxy-commit"]
    assert len(commits) == 2  # the first one was refused (CAS), the second re-rendered with site's route


def test_switch_from_ensure_proxys_snapshot_skips_the_read(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER="running caddy img")
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert status.changes == [] and status.snapshot is not None
    runner.calls.clear()
    change = asyncio.run(ops.set_route(runner, HOST, API, known=status.snapshot))
    assert change.action == "created" and _files(runner)["caddy.json"] == render_caddy([WEB, API])
    assert [c[3] for c in runner.calls] == ["ndctl-proxy-commit"]  # no read first


def test_stale_snapshot_costs_a_retry_never_a_route(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER="running caddy img")
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    # another app's deploy adds its route after the snapshot was taken
    (runner.dir / "routes" / "site.json").write_text(ALL.to_json())
    runner.calls.clear()
    change = asyncio.run(ops.set_route(runner, HOST, API, known=status.snapshot))
    assert change.action == "created"
    assert _files(runner)["caddy.json"] == render_caddy([WEB, API, ALL])
    assert [c[3] for c in runner.calls] == ["ndctl-proxy-commit", "ndctl-proxy-read", "ndctl-proxy-commit"]


def test_a_stale_snapshot_never_makes_a_switch_a_no_op(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER="running caddy img")
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    (runner.dir / "routes" / "web.json").write_text(API.to_json().replace('"api"', '"web"'))  # changed since
    change = asyncio.run(ops.set_route(runner, HOST, WEB, known=status.snapshot))
    assert change.action == "updated" and _files(runner)["caddy.json"] == render_caddy([WEB])


def test_a_proxy_reading_a_replaced_directory_is_refused_before_anything_changes(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER=f"running caddy img {os.getpid()}:{'c' * 64}| nextdeploy")
    runner.container_view = runner.dir
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert status.changes == [] and status.snapshot is not None and not status.snapshot.stale_view
    # replaced by a copy (a restore, say) while the proxy runs: its bind mount keeps the old directory
    old = runner.dir.with_name("proxy.old")
    runner.dir.rename(old)
    shutil.copytree(old, runner.dir)
    runner.container_view = old
    before, calls = _files(runner), len(runner.docker_calls())
    with pytest.raises(ConflictError, match=r"h1: the running proxy nextdeploy-proxy reads an older "
                                            r"/var/lib/nextdeploy/proxy \(the directory was replaced") as e:
        asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert "docker restart nextdeploy-proxy" in e.value.hint and "--tags name:h1" in e.value.hint
    assert _files(runner) == before and len(runner.docker_calls()) == calls + 1  # the inspection only
    # removed, not replaced: the same
    shutil.rmtree(runner.dir)
    with pytest.raises(ConflictError, match="reads an older"):
        asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    # restarted, the proxy mounts what is there now
    shutil.copytree(old, runner.dir)
    runner.container_view = runner.dir
    assert asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img")).changes == []
    # a view that cannot be looked at (no such path in the container, or no access): not refused
    runner.container_view = tmp_path / "nowhere"
    assert asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img")).changes == []


def test_inspection_trusts_a_running_proxy_on_the_network(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER="running caddy img| nextdeploy bridge",
                    FAKE_NETWORK="no")
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert status.changes == []
    assert not [c for c in runner.docker_calls() if c.startswith("network")]  # one docker call
    # stopped, its network may be gone: asked separately, and made again
    runner = _setup(tmp_path / "b", "caddy", (WEB,), FAKE_CONTAINER="exited caddy img| nextdeploy",
                    FAKE_NETWORK="no")
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert "created network nextdeploy" in status.changes


def test_host_clash_is_refused_before_anything_changes(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,))
    before = _files(runner)
    with pytest.raises(RouteConflict, match="host 'example.com' is claimed by apps 'blog' and 'web'"):
        asyncio.run(ops.set_route(runner, HOST, Route("blog", "b:80", ["example.com"])))
    assert _files(runner) == before and len(runner.calls) == 1


def test_broken_route_file_is_named(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,))
    (runner.dir / "routes" / "api.json").write_text('{"app": "api", "upstream": "x"}')
    with pytest.raises(RouteError, match=r"h1: .*/routes/api.json: upstream 'x' is not <container>:<port>"):
        asyncio.run(ops.set_route(runner, HOST, WEB))


def test_set_route_without_a_proxy(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path)
    with pytest.raises(ConflictError, match="no proxy is set up"):
        asyncio.run(ops.set_route(runner, HOST, WEB))


def test_ensure_proxy_creates_then_is_idempotent(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path, FAKE_NETWORK="no", FAKE_VERSION="v2.7.6 h1:xyz=")
    (runner.dir / "routes").mkdir(parents=True)
    (runner.dir / "routes" / "web.json").write_text(WEB.to_json())
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "nextdeploy-caddy:local"))
    assert status.changes == [
        "created network nextdeploy",
        "wrote /var/lib/nextdeploy/proxy/caddy.json (1 route(s))",
        "started nextdeploy-proxy (caddy, nextdeploy-caddy:local)",
    ]
    # the first config already fits the image's Caddy version (2.7: stream_close_delay)
    assert (runner.dir / "caddy.json").read_text() == render_caddy([WEB], (2, 7, 6))
    assert (runner.dir / "version").read_text() == "2.7.6\n"
    calls = runner.docker_calls()
    assert calls[-4:] == [
        "network create --driver bridge --label com.nextdeploy.role=network nextdeploy",
        "run --rm --network none --entrypoint  nextdeploy-caddy:local caddy version",
        " ".join(cmd.run_proxy_argv("caddy", "nextdeploy-caddy:local", proxy_dir=str(runner.dir))[1:]),
        "exec nextdeploy-proxy caddy reload --config /etc/nextdeploy/proxy/caddy.json",
    ]

    runner.env.update(FAKE_NETWORK="yes", FAKE_CONTAINER="running caddy nextdeploy-caddy:local")
    runner.calls.clear()
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "nextdeploy-caddy:local"))
    assert status.changes == [] and not status.changed and len(runner.calls) == 1

    with pytest.raises(ConflictError, match="the proxy container nextdeploy-proxy is caddy, not nginx"):
        asyncio.run(ops.ensure_proxy(runner, HOST, "nginx", "nginx"))


# ----- live markers (Caddy 2.6.2 on) -------------------------------------------------------

MARKED = (2, 6, 2)


def _setup_marked(tmp_path: Path, routes: tuple[Route, ...], **env: str) -> LocalRunner:
    runner = _setup(tmp_path, "caddy", routes, **env)
    (runner.dir / "version").write_text("2.6.2\n")
    (runner.dir / "caddy.json").write_text(render_caddy(routes, MARKED))
    for r in routes:
        (runner.dir / "live" / r.app).mkdir(parents=True)
        (runner.dir / "live" / r.app / r.upstream).touch()
    return runner


def _live(runner: LocalRunner) -> dict[str, list[str]]:
    """Each app's markers, the one Caddy takes (most recently modified) first."""
    base = runner.dir / "live"
    return {d.name: [p.name for p in sorted(d.iterdir(), key=lambda p: -p.stat().st_mtime_ns)]
            for d in sorted(base.iterdir()) if d.is_dir()} if base.exists() else {}


def _demoted(runner: LocalRunner, app: str, marker: str) -> bool:
    """Left for a request that listed it just before the switch, dated 1980 so Caddy skips it."""
    return (runner.dir / "live" / app / marker).stat().st_mtime < 400_000_000


def test_caddy_switch_makes_the_new_marker_the_newest_and_reloads_nothing(tmp_path: Path) -> None:
    runner = _setup_marked(tmp_path, (API, WEB))
    config = (runner.dir / "caddy.json").read_text()
    green = replace(WEB, upstream="nd-web-99999999:9090")
    change = asyncio.run(ops.set_route(runner, HOST, green))
    assert (change.action, change.via, change.before, change.after) == ("updated", "marker", WEB, green)
    assert runner.docker_calls() == []  # no reload, not even a lookup
    assert (runner.dir / "caddy.json").read_text() == config
    # blue's marker stays, demoted: a request that listed the directory just before still finds it
    assert _live(runner) == {"api": [API.upstream], "web": [green.upstream, WEB.upstream]}
    assert _demoted(runner, "web", WEB.upstream) and not _demoted(runner, "web", green.upstream)
    assert (runner.dir / "routes" / "web.json").read_text() == green.to_json()
    assert sorted(p.name for p in (runner.dir / "live").iterdir()) == ["api", "web"]  # no temporary file left
    assert asyncio.run(ops.set_route(runner, HOST, green)).action == "unchanged"
    # back again (a rollback): blue's marker, still there, becomes the newest again
    assert asyncio.run(ops.set_route(runner, HOST, WEB)).via == "marker"
    assert _live(runner)["web"] == [WEB.upstream, green.upstream] and _demoted(runner, "web", green.upstream)
    # a change the config does show (the host rule) reloads, and still switches the marker
    moved = replace(green, hosts=("shop.example.com",))
    change = asyncio.run(ops.set_route(runner, HOST, moved))
    assert change.via == "docker-exec" and _live(runner)["web"] == [green.upstream, WEB.upstream]
    assert (runner.dir / "caddy.json").read_text() == render_caddy([API, moved], MARKED)
    # the next switch removes the marker demoted one switch ago
    third = replace(moved, upstream="nd-web-33333333:80")
    assert asyncio.run(ops.set_route(runner, HOST, third)).via == "marker"
    assert _live(runner)["web"] == [third.upstream, green.upstream]


def test_caddy_new_app_gets_its_marker_before_the_reload_and_loses_it_with_its_route(tmp_path: Path) -> None:
    runner = _setup_marked(tmp_path, (WEB,))
    seen = tmp_path / "seen"
    # the fake reload records which markers exist when Caddy is asked to load the config
    runner.env["FAKE_ON_RELOAD"] = f"ls {runner.dir}/live/api > {seen}"
    change = asyncio.run(ops.set_route(runner, HOST, API))
    assert (change.action, change.via) == ("created", "docker-exec")
    assert seen.read_text().split() == [API.upstream]
    assert _live(runner) == {"api": [API.upstream], "web": [WEB.upstream]}
    change = asyncio.run(ops.remove_route(runner, HOST, "api"))
    assert change.action == "removed" and _live(runner) == {"web": [WEB.upstream]}
    assert (runner.dir / "caddy.json").read_text() == render_caddy([WEB], MARKED)


def test_caddy_refusing_a_new_app_leaves_no_marker(tmp_path: Path) -> None:
    runner = _setup_marked(tmp_path, (WEB,), FAKE_FAIL="reload")
    before = _files(runner)
    with pytest.raises(RemoteError, match="refused the new config; nothing was changed"):
        asyncio.run(ops.set_route(runner, HOST, API))
    assert _files(runner) == before and _live(runner) == {"web": [WEB.upstream]}


def test_first_marker_config_on_a_host_marks_every_app_before_it_loads(tmp_path: Path) -> None:
    """A host whose config still names containers (written before 2.6.2 was recorded): the first
    switch writes every app's marker, then loads the marker config: the other apps keep theirs."""
    runner = _setup(tmp_path, "caddy", (API, WEB))
    (runner.dir / "version").write_text("2.6.2\n")
    green = replace(WEB, upstream="nd-web-99999999:9090")
    change = asyncio.run(ops.set_route(runner, HOST, green))
    assert change.via == "docker-exec"
    assert _live(runner) == {"api": [API.upstream], "web": [green.upstream]}
    assert (runner.dir / "caddy.json").read_text() == render_caddy([API, green], MARKED)


def test_an_older_stray_marker_is_removed_by_the_next_switch(tmp_path: Path) -> None:
    runner = _setup_marked(tmp_path, (WEB,))
    stray = runner.dir / "live" / "web" / "nd-web-77777777:80"  # by hand, or a torn earlier run
    stray.touch()
    os.utime(stray, (1_000_000_000, 1_000_000_000))
    green = replace(WEB, upstream="nd-web-99999999:9090")
    assert asyncio.run(ops.set_route(runner, HOST, green)).via == "marker"
    assert _live(runner) == {"web": [green.upstream, WEB.upstream]}


def test_ensure_proxy_writes_the_markers_of_the_routes_it_renders(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path, FAKE_NETWORK="no", FAKE_VERSION="v2.6.2 h1:x")
    (runner.dir / "routes").mkdir(parents=True)
    (runner.dir / "routes" / "web.json").write_text(WEB.to_json())
    (runner.dir / "live" / "web").mkdir(parents=True)
    (runner.dir / "live" / "web" / "nd-web-55555555:80").touch()  # an existing marker is kept
    (runner.dir / "routes" / "api.json").write_text(API.to_json())
    asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert (runner.dir / "caddy.json").read_text() == render_caddy([API, WEB], MARKED)
    assert _live(runner) == {"api": [API.upstream], "web": ["nd-web-55555555:80"]}


def test_ensure_proxy_that_cannot_start_leaves_nothing(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path, FAKE_NETWORK="no", FAKE_FAIL="-d")  # `docker run -d` fails (port taken)
    with pytest.raises(RemoteError, match="starting the caddy proxy"):
        asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert runner.docker_calls()[-2:] == ["rm -f nextdeploy-proxy", "network rm nextdeploy"]
    assert not (runner.dir / "caddy.json").exists()


# ----- versions -------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("v2.7.6 h1:Ab3=", (2, 7, 6)), ("2.6.2", (2, 6, 2)), ("nginx version: nginx/1.22.1", (1, 22, 1)),
    ("v2.10", (2, 10)), ("", None), ("unknown", None),
])
def test_parse_version(text: str, expected) -> None:
    from ndctl.core.proxy import parse_version
    assert parse_version(text) == expected


def _proxy_of(route: dict) -> dict:
    """The reverse_proxy handler of a rendered app route (inside the live-marker subroute, if any)."""
    h = route["handle"][0]
    if h["handler"] == "subroute":
        h = h["routes"][0]["handle"][1]["routes"][1]["handle"][0]
    assert h["handler"] == "reverse_proxy"
    return h


def test_caddy_stream_close_delay_only_where_supported() -> None:
    assert render_caddy([WEB, API], (2, 6, 1)) == render_caddy([WEB, API]) == render_caddy([WEB, API], None)
    for version, dial in (((2, 7, 0), "{nd_upstream}"), ((2, 6, 1), None)):
        doc = json.loads(render_caddy([WEB, API], version))
        routes = doc["apps"]["http"]["servers"]["nextdeploy"]["routes"]
        assert [_proxy_of(r) for r in routes[:2]] == [
            {"handler": "reverse_proxy", "upstreams": [{"dial": dial or "nd-api-11223344:3000"}],
             **({"stream_close_delay": "45s"} if dial else {})},
            {"handler": "reverse_proxy", "upstreams": [{"dial": dial or "nd-web-0a1b2c3d:8080"}],
             **({"stream_close_delay": "10s"} if dial else {})}]
        assert routes[2] == NOT_ROUTED
    assert render("nginx", [WEB], (2, 7, 0)) == render_nginx([WEB])


def test_caddy_with_live_markers_names_no_container() -> None:
    """From 2.6.2 the config reads each app's upstream from its live marker: switching
    containers leaves it byte for byte the same, so a switch needs no reload."""
    green = replace(WEB, upstream="nd-web-99999999:9090")
    assert render_caddy([WEB, API], (2, 6, 2)) == render_caddy([green, API], (2, 6, 2))
    assert render_caddy([WEB, API], (2, 6, 1)) != render_caddy([green, API], (2, 6, 1))
    assert "nd-web-" not in render_caddy([WEB], (2, 6, 2))
    route = json.loads(render_caddy([WEB], (2, 6, 2)))["apps"]["http"]["servers"]["nextdeploy"]["routes"][0]
    assert route["match"] == [{"host": ["example.com", "www.example.com"]}] and route["terminal"] is True
    assert route["handle"] == [{"handler": "subroute", "routes": [
        {"match": [{"file": {"root": "/etc/nextdeploy/proxy/live/web", "try_files": ["/*:*"],
                             "try_policy": "most_recently_modified"}}],
         "handle": [
             {"handler": "map", "source": "{http.matchers.file.relative}", "destinations": ["{nd_upstream}"],
              "mappings": [{"input_regexp": "^/([a-zA-Z0-9][a-zA-Z0-9_.-]*:[0-9]{1,5})$", "outputs": ["${1}"]}],
              "defaults": [""]},
             {"handler": "subroute", "routes": [
                 {"match": [{"vars": {"{nd_upstream}": [""]}}], "terminal": True,
                  "handle": [{"handler": "static_response", "status_code": 502,
                              "body": "nextdeploy: app web: its live marker is not <container>:<port> "
                                      "(/var/lib/nextdeploy/proxy/live/web)\n"}]},
                 {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "{nd_upstream}"}]}]}]}],
         "terminal": True},
        {"handle": [{"handler": "static_response", "status_code": 502,
                     "body": "nextdeploy: app web: no live marker (/var/lib/nextdeploy/proxy/live/web)\n"}]}]}]


def _backend(body: bytes):
    """An HTTP server on a free loopback port answering ``body`` to every GET: (server, port)."""
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, seconds: float = 5.0) -> None:
    """Until something accepts connections on the loopback ``port`` (Caddy has loaded its config)."""
    import socket

    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _local_caddy(tmp_path: Path, live_root: Path, upstream: str) -> tuple[subprocess.Popen, int]:
    """This machine's Caddy running the marker config rendered for app ``web`` (2.6.2) on free
    loopback ports, its markers under ``live_root`` instead of the proxy's directory: (process, port)."""
    port, admin = _free_port(), _free_port()
    doc = json.loads(render_caddy([Route("web", upstream)], (2, 6, 2)))
    doc["admin"]["listen"] = f"127.0.0.1:{admin}"
    doc["apps"]["http"]["servers"]["nextdeploy"]["listen"] = [f"127.0.0.1:{port}"]
    conf = tmp_path / "caddy.json"
    conf.write_text(json.dumps(doc).replace("/etc/nextdeploy/proxy/live", str(live_root)))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "HOME": str(tmp_path)}
    return subprocess.Popen(["caddy", "run", "--config", str(conf)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), port


@pytest.mark.skipif(not os.path.exists("/usr/bin/caddy"), reason="no caddy binary here")
def test_no_request_misses_the_marker_while_the_commit_scripts_flip_switches(tmp_path: Path) -> None:
    """Requests through this machine's Caddy while the commit script's ``flip`` switches back
    and forth as fast as it can. Caddy lists the marker directory, then looks at what it
    listed: a rename between the two made some requests see no marker (8-11 of ~1,000 over
    4,000 renames, measured); flip's newest-then-demote must lose none."""
    import http.client
    import threading

    (blue, bport), (green, gport) = _backend(b"blue"), _backend(b"green")
    proxy_dir = tmp_path / "proxy"
    (proxy_dir / "live" / "web").mkdir(parents=True)
    (proxy_dir / "live" / "web" / f"127.0.0.1:{bport}").touch()
    caddy, port = _local_caddy(tmp_path, proxy_dir / "live", f"127.0.0.1:{bport}")
    stop = threading.Event()
    seen: dict[bytes, int] = {}
    bad: list[tuple[int, bytes]] = []

    def hammer() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            c.request("GET", "/")
            r = c.getresponse()
            body = r.read()
            if r.status == 200:
                seen[body] = seen.get(body, 0) + 1
            else:
                bad.append((r.status, body[:80]))

    threads: list[threading.Thread] = []
    try:
        _wait_for_port(port)
        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        flips = ('d=$1; b=$2; g=$3; i=0; while [ "$i" -lt 800 ]; do '
                 'flip web "$g" >/dev/null || exit 1; flip web "$b" >/dev/null || exit 1; i=$((i+1)); done')
        cp = subprocess.run(["sh", "-c", cmd._MARKERS + flips, "flips", str(proxy_dir), f"127.0.0.1:{bport}",
                             f"127.0.0.1:{gport}"], capture_output=True, text=True, timeout=300)
        assert cp.returncode == 0, cp.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        caddy.terminate()
        caddy.wait(10)
        blue.shutdown()
        green.shutdown()
    print(f"\n1600 flips: {seen} {len(bad)} bad")
    assert bad == []
    assert seen.get(b"blue", 0) > 0 and seen.get(b"green", 0) > 0, seen
    # and the last flip left blue serving, green demoted beside it
    assert sorted(p.name for p in (proxy_dir / "live" / "web").iterdir()) == sorted(
        [f"127.0.0.1:{bport}", f"127.0.0.1:{gport}"])


@pytest.mark.skipif(not os.path.exists("/usr/bin/caddy"), reason="no caddy binary here")
def test_caddy_routes_by_live_marker_and_switches_without_a_reload(tmp_path: Path) -> None:
    """This machine's Caddy serving the rendered config: requests follow the newest marker,
    a malformed or missing marker is a 502 naming the app, and the config never changes."""
    import urllib.error
    import urllib.request

    (blue, bport), (green, gport) = _backend(b"blue"), _backend(b"green")
    live = tmp_path / "live" / "web"
    live.mkdir(parents=True)
    (live / f"127.0.0.1:{bport}").touch()
    caddy, port = _local_caddy(tmp_path, tmp_path / "live", f"127.0.0.1:{bport}")

    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        _wait_for_port(port)
        assert get() == (200, "blue")
        # a switch as flip does it: the new marker first, then the old one demoted (kept)
        (live / f"127.0.0.1:{gport}").touch()
        os.utime(live / f"127.0.0.1:{bport}", (315532800, 315532800))
        assert get() == (200, "green")
        (live / f"127.0.0.1:{bport}").touch()  # back: the old marker is the newest again
        assert get() == (200, "blue")
        for p in live.iterdir():
            p.unlink()
        (live / "no port:x").touch()
        assert get() == (502, f"nextdeploy: app web: its live marker is not <container>:<port> "
                               f"({PROXY_DIR}/live/web)\n")
        (live / "no port:x").unlink()
        assert get() == (502, f"nextdeploy: app web: no live marker ({PROXY_DIR}/live/web)\n")
    finally:
        caddy.terminate()
        caddy.wait(10)
        blue.shutdown()
        green.shutdown()


def test_version_argv() -> None:
    assert cmd.version_argv("caddy") == ["docker", "exec", "nextdeploy-proxy", "caddy", "version"]
    assert cmd.version_argv("nginx", "nginx:1.27") == ["docker", "run", "--rm", "--network", "none",
                                                      "--entrypoint", "", "nginx:1.27", "nginx", "-v"]


def test_set_route_renders_for_the_recorded_version(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", ())
    (runner.dir / "version").write_text("2.8.4\n")
    asyncio.run(ops.set_route(runner, HOST, WEB))
    assert (runner.dir / "caddy.json").read_text() == render_caddy([WEB], (2, 8, 4))


def test_check_route_refuses_a_clash_and_reads_only_without_a_snapshot(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER="running caddy img")
    clash = Route("blog", "nd-blog-1:80", ["example.com"])
    with pytest.raises(RouteConflict, match="h1: host 'example.com' is claimed by apps 'blog' and 'web'"):
        asyncio.run(ops.check_route(runner, HOST, clash))
    assert [c[3] for c in runner.calls] == ["ndctl-proxy-read"]
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    runner.calls.clear()
    asyncio.run(ops.check_route(runner, HOST, API, known=status.snapshot))  # no clash: fine
    asyncio.run(ops.check_route(runner, HOST, replace(WEB, upstream="nd-web-2:80")))  # its own route: fine
    assert [c[3] for c in runner.calls] == ["ndctl-proxy-read"]


@pytest.mark.parametrize("kind,version,cuts", [("caddy", (2, 6, 1), True), ("caddy", (2, 6, 2), False),
                                               ("caddy", (2, 7, 6), False),
                                               ("caddy", None, False), ("nginx", (1, 22, 1), False)])
def test_which_proxies_cut_upgraded_connections_at_a_switch(kind: str, version, cuts: bool) -> None:
    assert ProxyStatus(kind, "img", version=version).cuts_upgraded_connections is cuts


# ----- TLS ----------------------------------------------------------------------------------
SHOP = Route("shop", "nd-shop-1:8080", ["shop.test", "www.shop.test"], tls="internal")


def test_tls_routes_get_a_443_server_and_a_redirect_on_80() -> None:
    doc = json.loads(render_caddy([WEB, SHOP, ALL], (2, 6, 2)))
    servers = doc["apps"]["http"]["servers"]
    plain, secure = servers["nextdeploy"], servers["nextdeploy-tls"]
    assert plain["listen"] == [":80"] and secure["listen"] == [":443"]
    redirect = next(r for r in plain["routes"] if r.get("match") == [{"host": ["shop.test", "www.shop.test"]}])
    assert redirect["handle"][0]["status_code"] == 308
    assert redirect["handle"][0]["headers"]["Location"] == ["https://{http.request.host}{http.request.uri}"]
    assert [_proxy_of(r)["upstreams"][0]["dial"] for r in secure["routes"][:-1]] == ["{nd_upstream}"]
    assert render_caddy([WEB, SHOP, ALL], (2, 6, 1)).count('"dial": "nd-shop-1:8080"') == 1
    assert secure["routes"][-1]["handle"][0]["status_code"] == 404
    assert doc["apps"]["tls"]["automation"]["policies"] == [
        {"subjects": ["shop.test", "www.shop.test"], "issuers": [{"module": "internal"}]}]
    assert doc["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    auto = json.loads(render_caddy([replace(SHOP, tls="auto")]))
    assert "tls" not in auto["apps"] and "nextdeploy-tls" in auto["apps"]["http"]["servers"]  # ACME: defaults
    assert "nextdeploy-tls" not in json.loads(render_caddy([WEB]))["apps"]["http"]["servers"]


def test_tls_route_rules() -> None:
    assert Route.from_json(SHOP.to_json()) == SHOP and '"tls":"internal"' in SHOP.to_json()
    assert "tls" not in WEB.to_json()  # plain routes' files are unchanged
    with pytest.raises(RouteError, match="needs host names"):
        Route("shop", "nd-shop-1:80", [], tls="auto")
    with pytest.raises(RouteError, match="must be one of off, auto, internal"):
        Route("shop", "nd-shop-1:80", ["a.test"], tls="yes")
    with pytest.raises(RouteError, match="only the caddy proxy manages"):
        render_nginx([WEB, SHOP])


@pytest.mark.skipif(not os.path.exists("/usr/bin/caddy"), reason="no caddy binary here")
def test_caddy_accepts_the_tls_config(tmp_path: Path) -> None:
    f = tmp_path / "caddy.json"
    f.write_text(render_caddy([WEB, SHOP, ALL], (2, 6, 2)))
    r = subprocess.run(["caddy", "validate", "--config", str(f)], capture_output=True, text=True,
                       env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]


# ----- Caddy's reload through its admin API (commit script, fake nsenter) ---------------

FAKE_NSENTER = """#!/bin/sh
echo "$*" >> "$FAKE_LOG.nsenter"
[ "$1" = -t ] && [ "$3" = -n ] || exit 1
shift 3
exec "$@"
"""


class _Admin:
    """Stands in for Caddy's admin API: records POST /load bodies, answers ``status``."""

    def __init__(self, status: int = 200, body: bytes = b"") -> None:
        import http.server
        import threading

        admin = self
        self.loads: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers["Content-Length"]))
                admin.loads.append(data)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def admin_runner(tmp_path: Path):
    """A runner whose host has nsenter (a fake that runs the command in place) and python3;
    the proxy's pid is this test process, whose cgroup file names no container."""
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER=f"running caddy img {os.getpid()}:{'c' * 64}")
    nsenter = tmp_path / "bin" / "nsenter"
    nsenter.write_text(FAKE_NSENTER)
    nsenter.chmod(0o755)
    # the cgroup check must pass for the hint to be used: make the "container id" one this pid's file names
    cgroup = Path(f"/proc/{os.getpid()}/cgroup").read_text()
    runner.cid = next(iter(re.findall(r"[0-9a-f]{12,64}", cgroup)), None)
    admins: list[_Admin] = []
    yield runner, admins
    for a in admins:
        a.close()


def _nsenter_calls(runner: LocalRunner) -> list[str]:
    p = Path(str(runner.log) + ".nsenter")
    return p.read_text().splitlines() if p.exists() else []


def test_caddy_switch_posts_the_config_to_the_admin_api(admin_runner) -> None:
    runner, admins = admin_runner
    admins.append(admin := _Admin())
    runner.admin = admin.address
    runner.env["FAKE_PIDID"] = f"{os.getpid()}:{'d' * 64}"  # what docker says when asked
    change = asyncio.run(ops.set_route(runner, HOST, API))
    assert change.via == "admin-api" and change.to_dict()["via"] == "admin-api"
    assert admin.loads == [render_caddy([WEB, API]).encode()]  # exactly the file that went live
    assert _files(runner)["caddy.json"] == render_caddy([WEB, API])
    assert not any(c.startswith("exec ") for c in runner.docker_calls())  # no docker exec
    assert _nsenter_calls(runner) and _nsenter_calls(runner)[0].startswith(f"-t {os.getpid()} -n python3 -I -S -c ")


def test_a_valid_hint_saves_the_docker_lookup(admin_runner) -> None:
    runner, admins = admin_runner
    if runner.cid is None:
        pytest.skip("this process's cgroup path has no hex id to stand for a container id")
    admins.append(admin := _Admin())
    runner.admin = admin.address
    runner.env["FAKE_CONTAINER"] = f"running caddy img {os.getpid()}:{'0' * 64}"
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    snap = status.snapshot
    snap.handle = f"{os.getpid()}:{runner.cid}"
    runner.log.unlink()
    change = asyncio.run(ops.set_route(runner, HOST, API, known=snap))
    assert change.via == "admin-api" and len(admin.loads) == 1
    assert runner.docker_calls() == []  # neither an inspect nor an exec


def test_ensure_proxy_reads_the_running_proxys_handle(tmp_path: Path) -> None:
    runner = _setup(tmp_path, "caddy", (WEB,), FAKE_CONTAINER=f"running caddy img 4242:{'e' * 64}")
    status = asyncio.run(ops.ensure_proxy(runner, HOST, "caddy", "img"))
    assert status.snapshot.handle == f"4242:{'e' * 64}"
    assert ops._parse_state(HOST, "container exited caddy img 0:" + "e" * 64 + "\n").handle == ""  # not running
    # no kind label: the fields stay in place
    assert ops._parse_state(HOST, "container running  img 7:" + "e" * 64 + "\n").container == ("running", "", "img")


def test_caddy_refusal_through_the_admin_api_changes_nothing(admin_runner) -> None:
    runner, admins = admin_runner
    admins.append(admin := _Admin(400, b'{"error":"loading new config: bad upstream"}'))
    runner.admin = admin.address
    runner.env["FAKE_PIDID"] = f"{os.getpid()}:{'d' * 64}"
    before = _files(runner)
    with pytest.raises(RemoteError, match="refused the new config; nothing was changed: caddy: .*bad upstream"):
        asyncio.run(ops.set_route(runner, HOST, API))
    assert _files(runner) == before
    assert not any(c.startswith("exec ") for c in runner.docker_calls())  # the verdict came from Caddy


@pytest.mark.parametrize("how", ["no answer", "not root", "other status"])
def test_no_verdict_from_the_admin_api_falls_back_to_docker_exec(admin_runner, how: str) -> None:
    runner, admins = admin_runner
    runner.env["FAKE_PIDID"] = f"{os.getpid()}:{'d' * 64}"
    if how == "no answer":
        admins.append(admin := _Admin())
        runner.admin = admin.address
        admin.close()
        admins.clear()
    elif how == "not root":  # nsenter itself fails
        (tmp := Path(runner.env["FAKE_LOG"]).parent / "bin" / "nsenter").write_text("#!/bin/sh\nexit 1\n")
        tmp.chmod(0o755)
    else:
        admins.append(admin := _Admin(403, b"host not allowed"))
        runner.admin = admin.address
    change = asyncio.run(ops.set_route(runner, HOST, API))
    assert change.via == "docker-exec"
    assert runner.docker_calls()[-1] == "exec nextdeploy-proxy caddy reload --config /etc/nextdeploy/proxy/.caddy.json.new"
    assert _files(runner)["caddy.json"] == render_caddy([WEB, API])
