"""Builders (argv lists) for the reverse proxy on a host.

Values travel as positional parameters of fixed ``sh -c`` scripts, never
spliced into shell syntax. The proxy container ``nextdeploy-proxy`` sees the
host's ``/var/lib/nextdeploy/proxy`` read-only at ``/etc/nextdeploy/proxy``;
configs are written next to the live one and renamed into place, so the proxy
never reads a half-written file.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from ndctl.commands import docker
from ndctl.core.proxy import (
    CADDY_ADMIN,
    CONFIG_FILES,
    CONTAINER_DIR,
    NETWORK,
    PROXY_CONTAINER,
    PROXY_DIR,
    check_app,
    check_kind,
    check_upstream,
    config_name,
)

Argv = list[str]

#: ``<pid>:<container id>`` of the running proxy (commit_argv's ``handle``)
HANDLE_RE = re.compile(r"^[0-9]+:[0-9a-f]{12,64}\Z")

#: exit statuses of the commit script
CAS_MISMATCH = 75  # the route files changed since they were read: read again and retry
LOCK_TIMEOUT = 73
INVALID = 65  # the proxy refused the new config; nothing was changed
RELOAD_FAILED = 70  # the reload failed; the previous config and route file were restored

LABEL_ROLE = "com.nextdeploy.role"
LABEL_KIND = "com.nextdeploy.proxy-kind"

# Shared by the read and the commit scripts: the commit compares a hash of this
# exact output with the one the controller rendered from (compare-and-swap).
# A JSON document's newlines are insignificant whitespace, so each file is one line.
_LIST_ROUTES = (
    'list_routes() { for f in "$1"/routes/*.json; do [ -f "$f" ] || continue; '
    "printf 'route %s ' \"${f##*/}\"; tr '\\n' ' ' < \"$f\"; echo; done; }; "
)


def container_config_path(kind: str, name: str | None = None) -> str:
    return f"{CONTAINER_DIR}/{name or config_name(kind)}"


def network_create_argv(network: str = NETWORK) -> Argv:
    """Create the network if missing (idempotent, race-safe); prints ``created`` or ``exists``."""
    return docker.ensure_network(network)


def network_remove_argv(network: str = NETWORK) -> Argv:
    return ["docker", "network", "rm", network]


def inspect_argv(proxy_dir: str = PROXY_DIR, container: str = PROXY_CONTAINER, network: str = NETWORK,
                 container_dir: str = CONTAINER_DIR) -> Argv:
    """One round trip: network, proxy container, config files, route files.

    Prints ``network yes|no``, ``container absent`` or ``container <status> <kind label> <image> <pid>:<id>``,
    for a running proxy ``view same|stale`` (whether its ``container_dir`` is the host's
    ``proxy_dir`` as it is now; no line when that cannot be told), ``config <file> <sha256>``
    per existing config, then the route listing.
    """
    # One docker call in the usual case: a running proxy attached to the network proves the
    # network exists (a stopped one does not: its network may have been removed since).
    # A bind mount holds the directory that was there when the container started: if the
    # host's directory has been replaced since (a restore, an rm -rf and a new prepare), the
    # proxy reads the old one, and neither markers nor configs written now reach it. The
    # container's view, through /proc/<pid>/root, must be the same directory (-ef: device and inode).
    script = _LIST_ROUTES + (
        'd=$1; c=$2; n=$3; net=; '
        'st=$(docker container inspect -f '
        "'{{.State.Status}} {{index .Config.Labels \"" + LABEL_KIND + "\"}} {{.Config.Image}} {{.State.Pid}}:{{.Id}}"
        "|{{range $k, $v := .NetworkSettings.Networks}} {{$k}}{{end}}'"
        ' "$c" 2>/dev/null) && echo "container ${st%%|*}" || echo "container absent"; '
        'case "$st" in running\\ *) case " ${st#*|} " in *" $n "*) net=yes;; esac; '
        '  h=${st%%|*}; v="/proc/${h##* }"; v="${v%%:*}/root$4"; '
        '  if [ -d "$v" ]; then if [ "$v" -ef "$d" ]; then echo "view same"; else echo "view stale"; fi; fi;; esac; '
        'if [ -z "$net" ]; then '
        'if docker network inspect "$n" >/dev/null 2>&1; then net=yes; else net=no; fi; fi; '
        'echo "network $net"; '
        + _READ_CONFIGS + 'list_routes "$d"'
    )
    return ["sh", "-c", script, "ndctl-proxy-inspect", proxy_dir, container, network, container_dir]


_READ_CONFIGS = (
    'for k in ' + " ".join(sorted(CONFIG_FILES.values())) + '; do if [ -f "$d/$k" ]; then '
    'printf "config %s %s\\n" "$k" "$(sha256sum < "$d/$k" | cut -c1-64)"; fi; done; '
    'if [ -f "$d/version" ]; then printf "version %s\\n" "$(head -n 1 "$d/version")"; fi; '
)


def read_state_argv(proxy_dir: str = PROXY_DIR) -> Argv:
    """``config <file> <sha256>`` per existing config, then ``route <file> <json>`` per route file."""
    return ["sh", "-c", _LIST_ROUTES + 'd=$1; ' + _READ_CONFIGS + 'list_routes "$d"', "ndctl-proxy-read", proxy_dir]


def write_file_argv(path: str, mode: str = "0644") -> Argv:
    """Write stdin to ``path`` atomically (temporary file in the same directory, then rename)."""
    script = ('f=$1; m=$2; dir=${f%/*}; t="$dir/.${f##*/}.tmp.$$"; '
              'mkdir -p -m 0755 "$dir" && cat > "$t" && chmod "$m" "$t" && mv -f "$t" "$f" '
              '|| { rm -f "$t"; exit 1; }')
    return ["sh", "-c", script, "ndctl-write", path, mode]


def mkdirs_argv(proxy_dir: str = PROXY_DIR) -> Argv:
    return ["mkdir", "-p", "-m", "0755", f"{proxy_dir}/routes"]


CADDY_DATA_VOLUME = "nextdeploy-proxy-data"


def run_proxy_argv(kind: str, image: str, *, ports: Sequence[int] = (80, 443), proxy_dir: str = PROXY_DIR,
                   container: str = PROXY_CONTAINER, network: str = NETWORK) -> Argv:
    """``docker run`` of the proxy. Only the HTTP(S) ports are published: Caddy's admin API
    (localhost:2019 in the container's own network namespace) is reachable only by ``docker exec``."""
    check_kind(kind)
    argv = ["docker", "run", "-d", "--name", container, "--network", network, "--restart", "unless-stopped",
            "--label", f"{LABEL_ROLE}=proxy", "--label", f"{LABEL_KIND}={kind}"]
    for p in ports:
        if not isinstance(p, int) or not 1 <= p <= 65535:
            raise ValueError(f"port {p!r} is not a number from 1 to 65535")
        argv += ["-p", f"{p}:{p}"]
    argv += ["-v", f"{proxy_dir}:{CONTAINER_DIR}:ro"]
    if kind == "caddy":
        # Certificates and Caddy's local CA outlive the container (ACME rate limits, trust).
        argv += ["-v", f"{CADDY_DATA_VOLUME}:/data", "-e", "XDG_DATA_HOME=/data", "-e", "XDG_CONFIG_HOME=/config"]
        return argv + [image, "caddy", "run", "--config", container_config_path(kind)]
    argv.append(image)
    return argv + ["nginx", "-c", container_config_path(kind), "-g", "daemon off;"]


def version_argv(kind: str, image: str | None = None, container: str = PROXY_CONTAINER) -> Argv:
    """The proxy's version (stdout or stderr): from the running container, or from ``image``
    in a throw-away container (before the proxy is created, so its first config fits it)."""
    probe = ["caddy", "version"] if check_kind(kind) == "caddy" else ["nginx", "-v"]
    if image is None:
        return ["docker", "exec", container, *probe]
    return ["docker", "run", "--rm", "--network", "none", "--entrypoint", "", image, *probe]


def start_argv(container: str = PROXY_CONTAINER) -> Argv:
    return ["docker", "start", container]


def remove_container_argv(container: str = PROXY_CONTAINER) -> Argv:
    return ["docker", "rm", "-f", container]


def validate_argv(kind: str, config_path: str | None = None, container: str = PROXY_CONTAINER) -> Argv:
    """Check a config inside the proxy container (path as the container sees it)."""
    path = config_path or container_config_path(kind)
    if check_kind(kind) == "caddy":
        return ["docker", "exec", container, "caddy", "validate", "--config", path]
    return ["docker", "exec", container, "nginx", "-t", "-q", "-c", path]


def reload_argv(kind: str, config_path: str | None = None, container: str = PROXY_CONTAINER) -> Argv:
    """Graceful reload. Caddy's is atomic and synchronous: the new config is provisioned
    in full before it replaces the old one, which keeps serving if it fails. nginx's is a
    signal to the master (run ``validate_argv`` first): new workers take new connections,
    old ones finish theirs within ``worker_shutdown_timeout``."""
    path = config_path or container_config_path(kind)
    if check_kind(kind) == "caddy":
        return ["docker", "exec", container, "caddy", "reload", "--config", path]
    return ["docker", "exec", container, "nginx", "-c", path, "-s", "reload"]


def wait_ready_argv(kind: str, container: str = PROXY_CONTAINER, attempts: int = 100) -> Argv:
    """Poll (every 0.1 s) until the proxy serves its config; show its log if it died.

    Caddy: a reload of the unchanged config succeeds once the admin API is up.
    nginx: a worker process exists (the master starts them after binding its listeners);
    seen with ``docker top`` because the image may hold nothing but nginx.
    """
    probe = (reload_argv(kind, container=container) if kind == "caddy"
             else ["sh", "-c", 'docker top "$1" -eo pid,args | grep -q " nginx: worker process$"', "ndctl-probe",
                   container])
    script = ('c=$1; n=$2; shift 2; i=0; while [ "$i" -lt "$n" ]; do '
              '"$@" >/dev/null 2>&1 && exit 0; '
              'if [ "$(docker container inspect -f "{{.State.Running}}" "$c" 2>/dev/null)" != true ]; then '
              'echo "ndctl: the proxy container $c is not running; its last log lines:" >&2; '
              'docker logs --tail 20 "$c" >&2; exit 1; fi; '
              'sleep 0.1; i=$((i+1)); done; '
              'echo "ndctl: the proxy container $c did not become ready; its last log lines:" >&2; '
              'docker logs --tail 20 "$c" >&2; exit 1')
    return ["sh", "-c", script, "ndctl-proxy-wait", container, str(attempts), *probe]


#: POST a Caddy config (the file named by argv[1]) to the admin API, run inside the proxy's
#: network namespace. Exit 0: serving it; 65: Caddy refused it (400, its reason on stderr);
#: 3: no verdict this way (no answer, another status). A bare socket, not http.client:
#: importing that costs python3 ~17 ms more, on every switch.
_CADDY_LOAD_PY = (
    "import socket, sys\n"
    "admin = sys.argv[2]\n"
    "host, _, port = admin.rpartition(':')\n"
    "body = open(sys.argv[1], 'rb').read()\n"
    "head = ('POST /load HTTP/1.1\\r\\nHost: %s\\r\\nContent-Type: application/json\\r\\n'\n"
    "        'Content-Length: %d\\r\\nConnection: close\\r\\n\\r\\n' % (admin, len(body))).encode()\n"
    "data = b''\n"
    "try:\n"
    "    s = socket.create_connection(('127.0.0.1' if host == 'localhost' else host, int(port)), 120)\n"
    "    s.sendall(head + body)\n"
    "    while True:\n"
    "        chunk = s.recv(65536)\n"
    "        if not chunk:\n"
    "            break\n"
    "        data += chunk\n"
    "except OSError:\n"
    "    sys.exit(3)\n"
    "status, _, rest = data.partition(b'\\r\\n')\n"
    "words = status.split()\n"
    "code = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0\n"
    "if code == 400:\n"
    "    sys.stderr.write('caddy: %s\\n' % rest.partition(b'\\r\\n\\r\\n')[2].decode('utf-8', 'replace').strip())\n"
    "    sys.exit(65)\n"
    "sys.exit(0 if code == 200 else 3)\n"
)

# Caddy's reload without ``docker exec`` (a runc exec and a Go binary's start, ~85 ms a
# switch): python3 posts the config to the admin API from inside the proxy's network
# namespace (nsenter, as root). ``hint`` is ``<pid>:<container id>`` from the inspection;
# it is used only while that pid still belongs to the container, else looked up again.
# Anything that does not give a verdict (no nsenter or python3, not root, no answer)
# falls back to ``docker exec caddy reload``, so the result is the same either way.
_CADDY_RELOAD = (
    'caddy_load() { c=$1; hint=$2; f=$3; cf=$4; pid=${hint%%:*}; cid=${hint#*:}; '
    '  if [ -z "$pid" ] || [ -z "$cid" ] || ! grep -qs -- "$cid" "/proc/$pid/cgroup"; then '
    "    hint=$(docker container inspect -f '{{.State.Pid}}:{{.Id}}' \"$c\" 2>/dev/null); "
    '    pid=${hint%%:*}; cid=${hint#*:}; fi; '
    '  if [ -n "$pid" ] && [ "$pid" != 0 ] && command -v nsenter >/dev/null 2>&1 '
    '     && command -v python3 >/dev/null 2>&1; then '
    '    err=$(nsenter -t "$pid" -n python3 -I -S -c "$load_py" "$f" "$admin" 2>&1); rc=$?; '
    '    if [ "$rc" = 0 ]; then echo "reloaded admin-api"; return 0; fi; '
    '    if [ "$rc" = 65 ]; then printf "%s\\n" "$err" >&2; return 1; fi; fi; '
    '  docker exec "$c" caddy reload --config "$cf" >&2 && echo "reloaded docker-exec"; }; '
)

# Live markers (Caddy): ``live/<app>/<container>:<port>``, empty files Caddy globs per
# request, taking the most recently modified. ``mk`` creates one where the app has none
# (before a reload that may start reading it). ``flip`` makes the app's new upstream the
# newest (created, or touched if still there) and only then demotes the one it replaces
# to 1980: a request that listed the directory just before may still look at that one, so
# it stays until the next flip, which removes it (a rename here made such a request see
# no marker at all). Temporary files stay outside the glob's reach.
#: ``newest_live DIR``: the name of the newest marker in DIR (what Caddy takes), if any; shell
#: builtins only. Seconds are enough for ``-nt``: a replaced marker is dated 1980.
NEWEST_LIVE = (
    'newest_live() { nl=; for f in "$1"/*:*; do [ -e "$f" ] || continue; '
    '  if [ -z "$nl" ] || [ "$f" -nt "$1/$nl" ]; then nl=${f##*/}; fi; done; '
    '  [ -z "$nl" ] || echo "$nl"; }; '
)

_MARKERS = NEWEST_LIVE + (
    'cur_live() { newest_live "$d/live/$1"; }; '
    # (shell functions share their variables with the script: lt, not the commit's t)
    'new_live() { lt="$d/live/.$1.new"; : > "$lt" && chmod 0644 "$lt" && mv -f "$lt" "$d/live/$1/$2"; }; '
    'mk() { [ -n "$(cur_live "$1")" ] && return 0; mkdir -p -m 0755 "$d/live/$1" && new_live "$1" "$2" || return 1; '
    '  made="$made $1"; }; '
    'mk_all() { while [ $# -ge 2 ]; do mk "$1" "$2" || return 1; shift 2; done; }; '
    'flip() { a=$1; u=$2; cur=$(cur_live "$a"); '
    '  if [ "$cur" != "$u" ]; then mkdir -p -m 0755 "$d/live/$a" || return 1; '
    '    if [ -e "$d/live/$a/$u" ]; then touch -m "$d/live/$a/$u" || return 1; '
    '    else new_live "$a" "$u" || return 1; fi; echo "switched marker"; fi; '
    '  for f in "$d/live/$a"/* "$d/live/$a"/.[!.]*; do [ -e "$f" ] || continue; n=${f##*/}; '
    '    [ "$n" = "$u" ] && continue; '
    '    if [ "$n" = "$cur" ]; then touch -m -t 198001010000 "$f"; else rm -f "$f"; fi; done; '
    '  return 0; }; '
)

_COMMIT = _LIST_ROUTES + _CADDY_RELOAD + _MARKERS + (
    'd=$1; kind=$2; app=$3; want=$4; route=$5; c=$6; cd_=$7; hint=$8; load_py=$9; admin=${10}; live=${11}; '
    'shift 11; made=; '
    'case $kind in caddy) conf=caddy.json;; nginx) conf=nginx.conf;; *) echo "ndctl: bad kind $kind" >&2; exit 2;; esac; '
    'mkdir -p -m 0755 "$d/routes" || exit 1; '
    # Serialise commits of different apps on this host (flock is util-linux on Debian, an applet in busybox).
    'if command -v flock >/dev/null 2>&1; then exec 9>"$d/.lock"; '
    'flock -w 60 9 || { echo "ndctl: timed out waiting for the proxy config lock $d/.lock" >&2; exit 73; }; fi; '
    'got=$(list_routes "$d" | sha256sum | cut -c1-64); '
    '[ "$got" = "$want" ] || { echo "ndctl: the route files changed meanwhile" >&2; exit 75; }; '
    'new="$d/.$conf.new"; rf="$d/routes/$app.json"; bak="$d/.$app.json.bak"; '
    'cat > "$new" && chmod 0644 "$new" || { rm -f "$new"; exit 1; }; '
    'if [ "$kind" = caddy ]; then '
    # The remaining arguments: <app> <container>:<port> for every route the new config reads a marker of.
    '  mk_all "$@" || exit 1; '
    '  if cmp -s "$new" "$d/$conf"; then rm -f "$new"; '
    # Caddy's reload is the validation: an invalid config is refused and the old one keeps serving.
    '  elif ! caddy_load "$c" "$hint" "$new" "$cd_/.$conf.new"; then rm -f "$new"; '
    '    for a in $made; do rm -rf "$d/live/$a"; done; exit 65; '
    '  else mv -f "$new" "$d/$conf" || exit 1; fi; '
    'else '
    '  if ! docker exec "$c" nginx -t -q -c "$cd_/.$conf.new" >&2; then rm -f "$new"; exit 65; fi; '
    '  [ -f "$d/$conf" ] && cp -p "$d/$conf" "$d/.$conf.bak"; '
    '  mv -f "$new" "$d/$conf" || exit 1; '
    # nginx reloads asynchronously (a signal to the master): wait until every worker that
    # accepts connections is a new one, so traffic is switched when this returns.
    '  workers() { docker top "$c" -eo pid,args 2>/dev/null | '
    "awk '$2==\"nginx:\" && $3==\"worker\" && $4==\"process\" && NF==4 {print $1}' | tr '\\n' ' '; }; "
    '  old=$(workers); '
    '  if ! docker exec "$c" nginx -c "$cd_/$conf" -s reload >&2; then '
    '    [ -f "$d/.$conf.bak" ] && mv -f "$d/.$conf.bak" "$d/$conf"; exit 70; fi; '
    '  rm -f "$d/.$conf.bak"; i=0; while [ "$i" -lt 200 ]; do cur=$(workers); fresh=${cur:+yes}; '
    '    for p in $cur; do case " $old " in *" $p "*) fresh=;; esac; done; '
    '    [ -n "$fresh" ] && break; sleep 0.025; i=$((i+1)); done; '
    '  [ -n "$fresh" ] || echo "ndctl: warning: nginx workers did not turn over within 5 s" >&2; '
    'fi; '
    # The marker before the route file: what serves is what a crash in between leaves recorded.
    'if [ -n "$route" ]; then t="$d/routes/.$app.json.tmp"; '
    '  printf "%s\\n" "$route" > "$t" && chmod 0644 "$t" || { rm -f "$t"; exit 1; }; '
    '  if [ -n "$live" ]; then flip "$app" "$live" || { rm -f "$t"; exit 1; }; fi; '
    '  mv -f "$t" "$rf" || { rm -f "$t"; exit 1; }; '
    'else rm -f "$rf"; rm -rf "$d/live/$app"; fi'
)


def commit_argv(kind: str, app: str, expected: str, route_json: str | None, *, proxy_dir: str = PROXY_DIR,
                container: str = PROXY_CONTAINER, handle: str = "", live: str = "",
                markers: Sequence[tuple[str, str]] = ()) -> Argv:
    """Apply a rendered config (on stdin) and the app's route file, under the host's proxy lock.

    ``expected``: sha256 of the route listing the config was rendered from; if the route
    files changed since (another app's deploy), nothing is done and the exit status is
    ``CAS_MISMATCH``. The config is validated by the proxy before it goes live (status
    ``INVALID`` otherwise); the route file is written last, once the proxy serves the new
    config. ``route_json`` None removes the app's route. ``handle``: ``<pid>:<id>`` of the
    Caddy container as inspected (saves a lookup). Prints ``reloaded admin-api`` or
    ``reloaded docker-exec`` when Caddy took a new config.
    """
    check_kind(kind)
    check_app(app)
    route = "" if route_json is None else route_json.strip()
    if "\n" in route:
        raise ValueError("route_json must be one line")
    if handle and not HANDLE_RE.match(handle):
        raise ValueError(f"invalid proxy container handle {handle!r}")
    if (live or markers) and kind != "caddy":
        raise ValueError("live markers are Caddy's")
    if live:
        check_upstream(live)
    return ["sh", "-c", _COMMIT, "ndctl-proxy-commit", proxy_dir, kind, app, expected, route, container,
            CONTAINER_DIR, handle, _CADDY_LOAD_PY, CADDY_ADMIN, live, *_marker_args(markers)]


def _marker_args(markers: Sequence[tuple[str, str]]) -> list[str]:
    """(app, ``<container>:<port>``) pairs, checked, as the positional parameters ``mk_all`` takes."""
    out: list[str] = []
    for a, upstream in markers:
        check_app(a)
        check_upstream(upstream)
        out += [a, upstream]
    return out


def ensure_markers_argv(markers: Sequence[tuple[str, str]], proxy_dir: str = PROXY_DIR) -> Argv:
    """Create the live markers (app, ``<container>:<port>``) that are missing; keep existing ones."""
    return ["sh", "-c", _MARKERS + 'd=$1; shift; made=; mk_all "$@"', "ndctl-proxy-markers", proxy_dir,
            *_marker_args(markers)]


def remove_state_argv(proxy_dir: str = PROXY_DIR) -> Argv:
    """Delete the proxy's config and routes (refuses any directory not ending in ``nextdeploy/proxy``)."""
    return ["sh", "-c", 'case "$1" in */nextdeploy/proxy) ;; *) echo "ndctl: refusing to remove $1" >&2; exit 2;; '
            'esac; rm -rf -- "$1"', "ndctl-proxy-purge", proxy_dir]
