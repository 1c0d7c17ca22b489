#!/usr/bin/env bash
# Set everything up, then run the test suite (unit + integration; `gpu` tests skip
# without CUDA). Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not integration"`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
venv="${SELTUNE_VENV:-$repo/.venv}"
cd "$repo"
exec "$venv/bin/python" -m pytest "$@"
