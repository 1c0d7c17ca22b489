#!/usr/bin/env bash
# Set everything up, then run the main job: the embedded default sweep (a TPE + ASHA
# search of the AR-GSE selective space on the default synthetic long-tailed bundle,
# built on first use into ~/.cache/seltune). Extra arguments go to `seltune sweep`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
venv="${SELTUNE_VENV:-$repo/.venv}"
exec "$venv/bin/seltune" sweep "$@"
