"""Argv builders for secrets on a host: store ciphertext, unseal into tmpfs, audit.

Layout on the host::

    /var/lib/nextdeploy/secrets/<app>/<NAME>.age   age ciphertext (0600 root); decryptable by the host key
    /run/nextdeploy/secrets/<app>/<NAME>           plaintext in tmpfs (0400 root), gone at reboot
    /var/lib/nextdeploy/bin/nd-unseal-secrets      re-creates the tmpfs files (boot, and every deploy)
    /var/lib/nextdeploy/bin/nd-secrets-entrypoint  exports /run/secrets/* as env vars, execs the app
    /var/lib/nextdeploy/audit/secrets.jsonl        who used which secret on this host, when
    /etc/systemd/system/nextdeploy-secrets.service oneshot Before=docker.service (systemd hosts)
    /etc/cron.d/nextdeploy-secrets                 @reboot unseal + restart (hosts without systemd)

Only ciphertext travels, on stdin. Every builder is a fixed ``sh -c`` script
whose values are positional parameters (names are validated first); no value
ever appears in an argv.
"""
from __future__ import annotations

import re

from ndctl.commands.appstate import _app  # the one app-name check of the host commands
from ndctl.core.secretstore import SECRET_NAME_RE

Argv = list[str]

STATE_DIR = "/var/lib/nextdeploy/secrets"
RUN_DIR = "/run/nextdeploy/secrets"
BIN_DIR = "/var/lib/nextdeploy/bin"
UNSEAL = f"{BIN_DIR}/nd-unseal-secrets"
ENTRYPOINT = f"{BIN_DIR}/nd-secrets-entrypoint"
AUDIT_LOG = "/var/lib/nextdeploy/audit/secrets.jsonl"
UNIT = "/etc/systemd/system/nextdeploy-secrets.service"
CRON = "/etc/cron.d/nextdeploy-secrets"
#: inside the container
CONTAINER_DIR = "/run/secrets"
CONTAINER_ENTRYPOINT = "/run/nd-secrets-entrypoint"
LABEL_SECRETS = "com.nextdeploy.secrets"  # names only, never values

# Exit statuses of the unseal script (sysexits): what the deploy turns into a clear message.
NO_AGE = 69  # EX_UNAVAILABLE
NO_HOST_KEY = 78  # EX_CONFIG
KEY_CHANGED = 77  # EX_NOPERM
UNSEAL_FAILED = 65  # EX_DATAERR

_WHO_RE = re.compile(r"[^A-Za-z0-9@._+-]")

# The container's entrypoint (a file on the host, bind-mounted read-only): each
# /run/secrets/NAME becomes the environment variable NAME of the app process
# (trailing newlines kept), then the image's own entrypoint and command run in
# its place (exec: same PID, signals go to the app). The values only exist in
# the process's environment, never in the container's configuration.
ENTRYPOINT_SCRIPT = r"""#!/bin/sh
# ndctl: export each /run/secrets/NAME as $NAME, then run the image's entrypoint and command.
for f in /run/secrets/*; do
  [ -f "$f" ] || continue
  n=${f##*/}
  case "$n" in [!A-Za-z_]*|*[!A-Za-z0-9_]*) continue ;; esac
  v=$(cat "$f"; printf x) || exit 70
  export "$n=${v%x}"
done
unset f n v
[ "$#" -gt 0 ] || { echo "nd-secrets-entrypoint: no command" >&2; exit 64; }
exec "$@"
"""

# Decrypt every stored ciphertext (of APP, or of all apps) into tmpfs with the host's
# own SSH key. Idempotent; run at boot before Docker and by every deploy.
# Usage: nd-unseal-secrets [--restart] [--check] [APP [WHO [EXPECTED_HOST_KEY]]]
# (--check: only verify that age and the expected host key are there)
UNSEAL_SCRIPT = r"""#!/bin/sh
# ndctl: decrypt app secrets (age, with this host's SSH host key) into tmpfs under /run.
umask 077
state=/var/lib/nextdeploy/secrets run=/run/nextdeploy/secrets audit=/var/lib/nextdeploy/audit/secrets.jsonl
restart=0 check=0
[ "$1" = --restart ] && { restart=1; shift; }
[ "$1" = --check ] && { check=1; shift; }
only=$1 who=${2:-boot} want=$3
command -v age >/dev/null 2>&1 || { echo "nd-unseal: age is not installed" >&2; exit 69; }
set --
match=0
for k in /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_rsa_key; do
  [ -r "$k" ] || continue
  set -- "$@" -i "$k"
  [ "$(cut -d' ' -f1,2 "$k.pub" 2>/dev/null)" = "$want" ] && match=1
done
[ "$#" -gt 0 ] || { echo "nd-unseal: no ssh-ed25519 (or ssh-rsa) host key in /etc/ssh" >&2; exit 78; }
if [ -n "$want" ] && [ "$match" = 0 ]; then
  echo "nd-unseal: the host key is not the one pinned at registration" >&2; exit 77
fi
[ "$check" = 0 ] || exit 0
[ -d "$state" ] || exit 0
mkdir -p "$run" "${audit%/*}" && chmod 0711 /run/nextdeploy "$run" 2>/dev/null
at=$(date -u +%Y-%m-%dT%H:%M:%SZ) rc=0 host=$(hostname)
for d in "$state"/*/; do
  [ -d "$d" ] || continue
  app=${d%/}; app=${app##*/}
  [ -z "$only" ] || [ "$app" = "$only" ] || continue
  mkdir -p "$run/$app" && chmod 0755 "$run/$app"
  for f in "$d"*.age; do
    [ -f "$f" ] || continue
    n=${f##*/}; n=${n%.age}
    if age -d "$@" -o "$run/$app/.$n.tmp" "$f" 2>/dev/null; then
      chmod 0400 "$run/$app/.$n.tmp" && mv -f "$run/$app/.$n.tmp" "$run/$app/$n"
      printf '{"at":"%s","who":"%s","action":"unseal","env":"","secret":"%s","host":"%s","app":"%s"}\n' \
        "$at" "$who" "$n" "$host" "$app" >> "$audit"
    else
      rm -f "$run/$app/.$n.tmp"; echo "nd-unseal: cannot decrypt $app/$n with the host key" >&2; rc=65
    fi
  done
  chmod 0600 "$audit" 2>/dev/null
done
if [ "$restart" = 1 ] && command -v docker >/dev/null 2>&1; then
  docker ps -q --filter "label=com.nextdeploy.secrets" | xargs -r docker restart >/dev/null
fi
exit $rc
"""

SYSTEMD_UNIT = f"""[Unit]
Description=ndctl: unseal app secrets into /run before Docker restarts containers
After=local-fs.target
Before=docker.service

[Service]
Type=oneshot
ExecStart={UNSEAL}
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
RequiredBy=docker.service
"""

CRON_LINE = f"@reboot root {UNSEAL} --restart\n"

# Write the two scripts and the boot hook, each only when its content differs ($1..$4:
# contents; prints what changed). systemd when it runs, else cron.d, else nothing (said).
_INSTALL = (
    'set -e; umask 022; mkdir -p ' + BIN_DIR + ' ' + STATE_DIR + ' /var/lib/nextdeploy/audit; '
    'chmod 0700 ' + STATE_DIR + ' /var/lib/nextdeploy/audit; '
    'put() { if [ "$(cat "$1" 2>/dev/null; printf x)" != "$2"x ]; then '
    'printf "%s" "$2" > "$1.tmp" && chmod "$3" "$1.tmp" && mv -f "$1.tmp" "$1" && echo "changed $1"; fi; }; '
    'put ' + UNSEAL + ' "$1" 0755; put ' + ENTRYPOINT + ' "$2" 0755; '
    'if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then '
    'c=$(put ' + UNIT + ' "$3" 0644); [ -z "$c" ] || { echo "$c"; systemctl daemon-reload; '
    'systemctl enable nextdeploy-secrets.service >/dev/null 2>&1; }; echo "boot: systemd"; '
    'elif [ -d /etc/cron.d ]; then put ' + CRON + ' "$4" 0644; echo "boot: cron"; '
    'else echo "boot: none"; fi'
)


def _secret(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME_RE.match(name):
        raise ValueError(f"invalid secret name {name!r}")
    return name


def _host_key(key: str) -> str:
    parts = key.split() if isinstance(key, str) else []
    if len(parts) < 2 or parts[0] not in ("ssh-ed25519", "ssh-rsa") or not re.fullmatch(r"[A-Za-z0-9+/=]+", parts[1]):
        raise ValueError(f"invalid host key {key!r}")
    return f"{parts[0]} {parts[1]}"


def who_safe(who: str) -> str:
    """An operator name as the host's audit log records it (no quotes or escapes)."""
    return _WHO_RE.sub("_", who)[:100] or "unknown"


def install_support() -> Argv:
    """Install (or update) the unseal script, the entrypoint wrapper and the boot hook (idempotent)."""
    return ["sh", "-c", _INSTALL, "nd-secrets-install", UNSEAL_SCRIPT, ENTRYPOINT_SCRIPT, SYSTEMD_UNIT, CRON_LINE]


# Store one ciphertext (stdin) for an app, atomically. $1 app, $2 name.
_STORE = (
    'set -e; umask 077; d=' + STATE_DIR + '/"$1"; mkdir -p "$d"; '
    'cat > "$d/.$2.age.tmp"; '
    'grep -q "^-----BEGIN AGE ENCRYPTED FILE-----" "$d/.$2.age.tmp" || '
    '{ rm -f "$d/.$2.age.tmp"; echo "not an age ciphertext" >&2; exit 65; }; '
    'mv -f "$d/.$2.age.tmp" "$d/$2.age"'
)


def store_ciphertext(app: str, name: str) -> Argv:
    """Write stdin (ASCII-armored age) to the app's ciphertext for ``name`` (0600)."""
    return ["sh", "-c", _STORE, "nd-secret-store", _app(app), _secret(name)]


def unseal(app: str, *, who: str, expected_host_key: str, check: bool = False) -> Argv:
    """Decrypt the app's secrets into tmpfs; refuses when the host key is not the pinned one.
    ``check``: only verify that ``age`` and that host key are there (before anything is stored)."""
    return [UNSEAL, *(["--check"] if check else []), _app(app), who_safe(who), _host_key(expected_host_key)]


# Remove ciphertexts of the app that this deploy does not deliver ($1 app, then the kept names).
_PRUNE = (
    'd=' + STATE_DIR + '/"$1"; r=' + RUN_DIR + '/"$1"; shift; [ -d "$d" ] || exit 0; '
    'for f in "$d"/*.age; do [ -f "$f" ] || continue; n=${f##*/}; n=${n%.age}; keep=0; '
    'for k do [ "$k" = "$n" ] && keep=1; done; '
    '[ "$keep" = 1 ] || { rm -f "$f" "$r/$n"; echo "$n"; }; done; exit 0'
)


def prune(app: str, keep: list[str]) -> Argv:
    """Delete the stored ciphertexts of ``app`` not in ``keep``, and their tmpfs copies (a release
    still running keeps the values it exported at start). Prints the names removed."""
    return ["sh", "-c", _PRUNE, "nd-secret-prune", _app(app), *(_secret(n) for n in keep)]


# Append audit lines (stdin, one JSON object each) to the host's log, mode 0600.
_AUDIT = (
    'umask 077; mkdir -p /var/lib/nextdeploy/audit && cat >> ' + AUDIT_LOG + ' && chmod 0600 ' + AUDIT_LOG
)


def append_audit() -> Argv:
    return ["sh", "-c", _AUDIT, "nd-secret-audit"]


def read_audit() -> Argv:
    """The host's secret audit log (empty when there is none)."""
    return ["sh", "-c", 'cat "$1" 2>/dev/null; exit 0', "nd-secret-audit-read", AUDIT_LOG]


def mounts(app: str) -> list[str]:
    """``docker run -v`` specs: the app's tmpfs secrets dir and the wrapper, both read-only."""
    return [f"{RUN_DIR}/{_app(app)}:{CONTAINER_DIR}:ro", f"{ENTRYPOINT}:{CONTAINER_ENTRYPOINT}:ro"]


__all__ = [
    "AUDIT_LOG", "CONTAINER_DIR", "CONTAINER_ENTRYPOINT", "ENTRYPOINT", "ENTRYPOINT_SCRIPT", "KEY_CHANGED",
    "LABEL_SECRETS", "NO_AGE", "NO_HOST_KEY", "RUN_DIR", "STATE_DIR", "UNSEAL", "UNSEAL_FAILED", "UNSEAL_SCRIPT",
    "append_audit", "install_support", "mounts", "prune", "read_audit", "store_ciphertext", "unseal", "who_safe",
]
