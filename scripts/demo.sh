#!/usr/bin/env bash
# (1) Install everything and run the main job on the embedded default: a local sandbox fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ndctl sandbox demo "$@"
