"""The reverse proxy's route model and config rendering (pure: no I/O).

Every app on a host has one route file ``proxy/routes/<app>.json``; the proxy's
whole config (Caddy JSON or nginx.conf) is rendered from all of them, sorted,
so apps never overwrite each other and re-rendering unchanged routes gives the
same bytes (a no-op). Values that end up in a config are validated here first:
app names, DNS host names, ``<container>:<port>`` upstreams, drain seconds.

Caddy's admin API listens on ``localhost:2019`` inside the proxy container's
own network namespace: only the host reaches it, and the port is never published.
Caddy (from 2.6.2) does not find an app's container in its config but in the app's
live marker, the newest empty file ``proxy/live/<app>/<container>:<port>``, looked up per
request: a switch makes another marker the newest, and reloads nothing.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ndctl.core.errors import ConflictError, UsageError

NETWORK = "nextdeploy"
PROXY_CONTAINER = "nextdeploy-proxy"
KINDS = ("caddy", "nginx")
STATE_DIR = "/var/lib/nextdeploy"
PROXY_DIR = f"{STATE_DIR}/proxy"
ROUTES_DIR = f"{PROXY_DIR}/routes"
#: where the proxy container sees PROXY_DIR (bind-mounted read-only)
CONTAINER_DIR = "/etc/nextdeploy/proxy"
CONFIG_FILES = {"caddy": "caddy.json", "nginx": "nginx.conf"}
CADDY_ADMIN = "localhost:2019"
#: Docker's embedded DNS server on user-defined networks (nginx resolves upstreams at request time)
DOCKER_DNS = "127.0.0.11"
DEFAULT_DRAIN = 30
MAX_DRAIN = 86400
NOT_ROUTED_BODY = "nextdeploy: no app is routed for this host\n"
#: Caddy version that added reverse_proxy's stream_close_delay
STREAM_CLOSE_DELAY_SINCE = (2, 7, 0)
#: Caddy versions known to switch by live marker (glob in the file matcher's try_files, the
#: map handler's regexp captures, placeholders in upstream dial addresses): tested on 2.6.2
MARKERS_SINCE = (2, 6, 2)
#: empty files ``live/<app>/<container>:<port>``; the most recently modified one is the upstream
#: Caddy sends the app's requests to, looked up per request: a switch with no config reload
LIVE_DIR = f"{PROXY_DIR}/live"
#: off: plain HTTP on 80; auto: Caddy obtains certificates (ACME) for the route's hosts and
#: redirects HTTP to HTTPS; internal: the same with Caddy's own local CA (private networks)
TLS_MODES = ("off", "auto", "internal")

_APP_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")  # the same names nextdeploy.yaml accepts
#: a container name as Docker accepts it; also what Caddy's map admits from a live marker (RE2)
_CONTAINER_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]*"
_CONTAINER_RE = re.compile(_CONTAINER_NAME + r"\Z")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")


class RouteError(UsageError):
    """A route (or a set of routes) that cannot be rendered; the message names the field."""


class RouteConflict(ConflictError):
    """Two apps claim the same host, or both want to be the catch-all."""


def check_app(app: object, what: str = "app") -> str:
    if not isinstance(app, str) or not _APP_RE.match(app) or len(app) > 63:
        raise RouteError(f"{what} {app!r} is not a valid app name: lowercase letters, digits, '_' and '-', "
                         "starting with a letter or digit, at most 63 characters")
    return app


def check_host(host: object) -> str:
    """A DNS name (``*.`` allowed as the first label), lowercased, without a trailing dot."""
    if not isinstance(host, str):
        raise RouteError(f"hosts: {host!r} is not a string")
    h = host.strip().lower().removesuffix(".")
    labels = h.split(".")
    if labels and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if not h or len(h) > 253 or not all(_LABEL_RE.match(lab) and len(lab) <= 63 for lab in labels):
        raise RouteError(f"hosts: {host!r} is not a DNS name (letters, digits, '-' and dots; "
                         "'*.' allowed as the first label)")
    return h


def check_upstream(upstream: object) -> tuple[str, int]:
    """``<container>:<port>`` -> (container, port)."""
    if not isinstance(upstream, str) or upstream.count(":") != 1:
        raise RouteError(f"upstream {upstream!r} is not <container>:<port>")
    name, _, port_s = upstream.partition(":")
    if not _CONTAINER_RE.match(name) or len(name) > 128:
        raise RouteError(f"upstream {upstream!r}: {name!r} is not a container name")
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535 or port_s != str(int(port_s)):
        raise RouteError(f"upstream {upstream!r}: port {port_s!r} is not a number from 1 to 65535")
    return name, int(port_s)


@dataclass(frozen=True)
class Route:
    """Traffic for ``hosts`` (empty: every host not claimed by another route) goes to ``upstream``.

    ``drain_seconds``: how long connections on the previous upstream (in-flight
    requests, WebSockets, streamed responses) may finish after a switch.
    """

    app: str
    upstream: str
    hosts: tuple[str, ...] = ()
    drain_seconds: int = DEFAULT_DRAIN
    tls: str = "off"  # one of TLS_MODES

    def __post_init__(self) -> None:
        check_app(self.app)
        if self.tls not in TLS_MODES:
            raise RouteError(f"tls of app {self.app!r} must be one of {', '.join(TLS_MODES)}, not {self.tls!r}")
        check_upstream(self.upstream)
        hosts = self.hosts
        if isinstance(hosts, str) or not isinstance(hosts, Iterable):
            raise RouteError(f"hosts of app {self.app!r} must be a list of host names, not {hosts!r}")
        object.__setattr__(self, "hosts", tuple(sorted({check_host(h) for h in hosts})))
        d = self.drain_seconds
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DRAIN:
            raise RouteError(f"drain_seconds of app {self.app!r} must be a whole number of seconds "
                             f"from 1 to {MAX_DRAIN}, not {d!r}")
        if self.tls != "off" and not self.hosts:
            raise RouteError(f"tls of app {self.app!r} needs host names (proxy.hosts): certificates are per name")

    @property
    def catch_all(self) -> bool:
        return not self.hosts

    @property
    def container(self) -> str:
        return check_upstream(self.upstream)[0]

    @property
    def port(self) -> int:
        return check_upstream(self.upstream)[1]

    @classmethod
    def from_dict(cls, data: object, source: str = "route") -> Route:
        """From a route file's mapping; errors name ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise RouteError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"app", "hosts", "upstream", "drain_seconds", "tls"})
        if unknown:
            raise RouteError(f"{source}: unknown field(s) {', '.join(unknown)}")
        for req in ("app", "upstream"):
            if req not in data:
                raise RouteError(f"{source}: missing field {req!r}")
        hosts = data.get("hosts", [])
        if not isinstance(hosts, list):
            raise RouteError(f"{source}: hosts must be a list, not {hosts!r}")
        try:
            return cls(app=data["app"], upstream=data["upstream"], hosts=tuple(hosts),
                       drain_seconds=data.get("drain_seconds", DEFAULT_DRAIN), tls=data.get("tls", "off"))
        except RouteError as e:
            raise RouteError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "route") -> Route:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise RouteError(f"{source}: not valid JSON: {e}") from None
        return cls.from_dict(data, source)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"app": self.app, "hosts": list(self.hosts), "upstream": self.upstream,
                               "drain_seconds": self.drain_seconds}
        if self.tls != "off":  # route files of plain-HTTP apps stay as they always were
            out["tls"] = self.tls
        return out

    def to_json(self) -> str:
        """The route file's content: one line, sorted keys, newline-terminated."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"


@dataclass
class ProxyChange:
    """What ``set_route``/``remove_route`` did on one host."""

    app: str
    action: str  # "created" | "updated" | "removed" | "unchanged"
    kind: str
    before: Route | None = None
    after: Route | None = None
    duration: float = 0.0
    #: how the proxy took the change: "admin-api" (Caddy, from its network namespace),
    #: "docker-exec" (``caddy reload``), "signal" (nginx), "marker" (Caddy's live marker
    #: made the newest, no reload); None when nothing changed for the proxy
    via: str | None = None

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return {"app": self.app, "action": self.action, "kind": self.kind,
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None,
                "duration": round(self.duration, 3), "via": self.via}


@dataclass
class ProxyStatus:
    """What ``ensure_proxy`` found and did on one host."""

    kind: str
    image: str
    changes: list[str] = field(default_factory=list)
    #: what the inspection read, when nothing changed since: a later switch may start from it
    #: instead of reading again (its compare-and-swap catches any change in between)
    snapshot: object = field(default=None, repr=False, compare=False)
    version: tuple[int, ...] | None = None  # the proxy's, when known

    @property
    def cuts_upgraded_connections(self) -> bool:
        """Caddy closes WebSockets (and other upgraded connections) at every config change
        before 2.7 (which added ``stream_close_delay``); a switch is a config change only
        where it cannot switch by live marker."""
        return self.kind == "caddy" and self.version is not None and self.version < MARKERS_SINCE

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise RouteError(f"proxy {kind!r} is not supported: use one of {', '.join(KINDS)}")
    return kind


def check_routes(routes: Iterable[Route]) -> list[Route]:
    """Routes in render order (host rules by app, then the catch-all); refuses clashes."""
    by_app: dict[str, Route] = {}
    owner: dict[str, str] = {}
    catch_all: str | None = None
    for r in sorted(routes, key=lambda r: r.app):
        if r.app in by_app:
            raise RouteConflict(f"two routes for app {r.app!r}")
        by_app[r.app] = r
        if r.catch_all:
            if catch_all is not None:
                raise RouteConflict(f"apps {catch_all!r} and {r.app!r} both want every host (empty hosts); "
                                    "give one of them a host rule")
            catch_all = r.app
        for h in r.hosts:
            if h in owner:
                raise RouteConflict(f"host {h!r} is claimed by apps {owner[h]!r} and {r.app!r}")
            owner[h] = r.app
    ordered = [r for r in by_app.values() if not r.catch_all]
    return ordered + [r for r in by_app.values() if r.catch_all]


def grace_seconds(routes: Iterable[Route]) -> int:
    """Drain time of the whole proxy: its graceful shutdown is global, so the longest route wins."""
    return max((r.drain_seconds for r in routes), default=DEFAULT_DRAIN)


def parse_version(text: str) -> tuple[int, ...] | None:
    """``v2.7.6 h1:...``, ``2.6.2``, ``nginx version: nginx/1.22.1`` -> (2, 7, 6) ..."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def uses_markers(kind: str, version: tuple[int, ...] | None) -> bool:
    """Does this proxy switch by live marker (no config reload)? Caddy of a known version only."""
    return kind == "caddy" and version is not None and version >= MARKERS_SINCE


def _caddy_marker_handler(r: Route, proxy: dict[str, Any]) -> dict[str, Any]:
    """Send ``r.app``'s requests where its live marker names (``proxy`` dials ``{nd_upstream}``).

    The file matcher globs the app's marker directory on every request (a directory read)
    and takes the most recently modified marker: a switch makes the new one the newest and
    leaves the old one, demoted, for a request that listed it just before to find. The map
    handler turns ``/<container>:<port>`` into the dial address, accepting nothing else. No
    marker, or a malformed one: 502 naming the app, never another upstream.
    """
    def fail(why: str) -> dict[str, Any]:
        return {"handler": "static_response", "status_code": 502,
                "body": f"nextdeploy: app {r.app}: {why} ({LIVE_DIR}/{r.app})\n"}

    to_dial = {"handler": "map", "source": "{http.matchers.file.relative}", "destinations": ["{nd_upstream}"],
               "mappings": [{"input_regexp": f"^/({_CONTAINER_NAME}:[0-9]{{1,5}})$", "outputs": ["${1}"]}],
               "defaults": [""]}
    return {"handler": "subroute", "routes": [
        {"match": [{"file": {"root": f"{CONTAINER_DIR}/live/{r.app}", "try_files": ["/*:*"],
                             "try_policy": "most_recently_modified"}}],
         "handle": [to_dial, {"handler": "subroute", "routes": [
             {"match": [{"vars": {"{nd_upstream}": [""]}}], "terminal": True,
              "handle": [fail("its live marker is not <container>:<port>")]},
             {"handle": [proxy]},
         ]}],
         "terminal": True},
        {"handle": [fail("no live marker")]},
    ]}


def render_caddy(routes: Iterable[Route], version: tuple[int, ...] | None = None) -> str:
    """Caddy's full JSON config (``caddy run/reload --config``), deterministic.

    Where :func:`uses_markers`, each app's upstream is its live marker, read per request:
    the config does not name containers, so a switch (another marker made the newest)
    reloads nothing and cuts no connection. Otherwise a switch is a reload: in-flight requests on the old
    upstream finish within ``grace_period``, and upgraded connections (WebSockets), which
    Caddy closes when a config is unloaded, keep the route's drain time from 2.7 on
    (``stream_close_delay``, rendered when ``version`` is known to have it).
    """
    ordered = check_routes(routes)
    delays = version is not None and version >= STREAM_CLOSE_DELAY_SINCE
    markers = uses_markers("caddy", version)
    plain: list[dict[str, Any]] = []  # the :80 server
    secure: list[dict[str, Any]] = []  # the :443 server (apps with tls)
    for r in ordered:
        handler: dict[str, Any] = {"handler": "reverse_proxy",
                                   "upstreams": [{"dial": "{nd_upstream}" if markers else r.upstream}]}
        if delays:
            handler["stream_close_delay"] = f"{r.drain_seconds}s"
        if markers:
            handler = _caddy_marker_handler(r, handler)
        route: dict[str, Any] = {"handle": [handler], "terminal": True}
        if r.hosts:
            route["match"] = [{"host": list(r.hosts)}]
        if r.tls == "off":
            plain.append(route)
            continue
        secure.append(route)
        plain.append({"match": [{"host": list(r.hosts)}], "terminal": True, "handle": [{
            "handler": "static_response", "status_code": 308,
            "headers": {"Location": ["https://{http.request.host}{http.request.uri}"]}}]})
    not_routed = {"handle": [{"handler": "static_response", "status_code": 404, "body": NOT_ROUTED_BODY}]}
    if not any(r.catch_all for r in ordered):
        plain.append(not_routed)
    servers: dict[str, Any] = {"nextdeploy": {
        "listen": [":80"],
        # Caddy's own automation stays off on :80: redirects are the routes above.
        "automatic_https": {"disable": True},
        "routes": plain,
    }}
    http: dict[str, Any] = {"grace_period": f"{grace_seconds(ordered)}s", "servers": servers}
    config: dict[str, Any] = {"admin": {"listen": CADDY_ADMIN, "config": {"persist": False}}, "apps": {"http": http}}
    if secure:
        # Certificates for the hosts of these routes (TLS-ALPN on 443 for ACME); kept in the
        # proxy's data volume, so a restart does not ask again.
        servers["nextdeploy-tls"] = {"listen": [":443"], "automatic_https": {"disable_redirects": True},
                                     "routes": secure + [not_routed]}
        internal = sorted({h for r in ordered if r.tls == "internal" for h in r.hosts})
        if internal:
            config["apps"]["tls"] = {"automation": {"policies": [
                {"subjects": internal, "issuers": [{"module": "internal"}]}]}}
            config["apps"]["pki"] = {"certificate_authorities": {"local": {"install_trust": False}}}
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _nginx_str(value: str) -> str:
    """A double-quoted nginx string (values are validated; quoting is belt and braces)."""
    if any(c in value for c in '"\\$;{}\n\r\t '):
        raise RouteError(f"{value!r} cannot go into an nginx config")
    return f'"{value}"'


def render_nginx(routes: Iterable[Route]) -> str:
    """nginx.conf for ``nginx -c``; upstreams resolve at request time through Docker's DNS,
    so one app's removed container never makes the whole config fail to load."""
    ordered = check_routes(routes)
    with_tls = [r.app for r in ordered if r.tls != "off"]
    if with_tls:
        raise RouteError(f"app(s) {', '.join(with_tls)} want TLS, which only the caddy proxy manages",
                         hint="use proxy.kind: caddy, or terminate TLS in front of nginx")
    out = [
        "# Rendered by ndctl from /var/lib/nextdeploy/proxy/routes/*.json; edits are overwritten.",
        "worker_processes auto;",
        "pid /run/nginx.pid;",
        "error_log stderr warn;",
        f"worker_shutdown_timeout {grace_seconds(ordered)}s;",
        "events {",
        "    worker_connections 4096;",
        "}",
        "http {",
        "    access_log off;",
        f"    resolver {DOCKER_DNS} valid=5s ipv6=off;",
        "    resolver_timeout 5s;",
        "    map $http_upgrade $nd_connection {",
        "        default upgrade;",
        "        \"\" \"\";",
        "    }",
        "    proxy_http_version 1.1;",
        "    proxy_set_header Host $http_host;",
        "    proxy_set_header Upgrade $http_upgrade;",
        "    proxy_set_header Connection $nd_connection;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header X-Forwarded-Host $http_host;",
    ]

    def server(r: Route | None) -> None:
        out.append("    server {")
        if r is None or r.catch_all:
            out.append("        listen 80 default_server;")
            out.append('        server_name "";')
        else:
            out.append("        listen 80;")
            out.append("        server_name " + " ".join(_nginx_str(h) for h in r.hosts) + ";")
        if r is None:
            out.append(f"        return 404 {_nginx_json(NOT_ROUTED_BODY)};")
        else:
            out.extend([
                "        location / {",
                f"            set $nd_upstream {_nginx_str(r.upstream)};",
                "            proxy_pass http://$nd_upstream;",
                "        }",
            ])
        out.append("    }")

    for r in ordered:
        server(r)
    if not any(r.catch_all for r in ordered):
        server(None)
    out.append("}")
    return "\n".join(out) + "\n"


def _nginx_json(text: str) -> str:
    # A constant of ours; json.dumps gives a double-quoted string with \n escaped as nginx expects.
    return json.dumps(text)


def render(kind: str, routes: Iterable[Route], version: tuple[int, ...] | None = None) -> str:
    return render_caddy(routes, version) if check_kind(kind) == "caddy" else render_nginx(routes)


def config_name(kind: str) -> str:
    return CONFIG_FILES[check_kind(kind)]


def kind_of_config(name: str) -> str:
    for k, v in CONFIG_FILES.items():
        if v == name:
            return k
    raise RouteError(f"unknown proxy config file {name!r}")


def parse_route_listing(text: str) -> list[Route]:
    """Route files as listed on a host: ``route <file> <json on one line>`` lines."""
    routes: list[Route] = []
    for line in text.splitlines():
        if not line.startswith("route "):
            continue
        _, fname, body = (line.split(" ", 2) + [""])[:3]
        source = f"{ROUTES_DIR}/{fname}"
        r = Route.from_json(body, source)
        if fname != f"{r.app}.json":
            raise RouteError(f"{source}: holds the route of app {r.app!r}; expected {r.app}.json")
        routes.append(r)
    return routes
