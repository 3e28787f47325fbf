#!/usr/bin/env bash
# Install everything ndctl needs on a fresh Debian 12 machine (as root) and start dockerd.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

PKGS=(docker.io openssh-server openssh-client iptables age caddy nginx debootstrap busybox-static docker-registry iproute2 procps
      python3 python3-venv python3-pip ca-certificates)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# sshd needs its privilege-separation directory even when systemd is not running.
mkdir -p /run/sshd

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  (setsid dockerd >/var/log/ndctl-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/ndctl-dockerd.log" >&2; tail -20 /var/log/ndctl-dockerd.log >&2; exit 1; }
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import ndctl, asyncssh, pytest, hypothesis, mockssh' >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  log "pip install -e .[test]"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.installed
fi
