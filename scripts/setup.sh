#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install seltune into it.
#
#   SELTUNE_VENV        where the virtualenv lives (default: <repo>/.venv)
#   SELTUNE_TORCH_SPEC  what to pip-install when the venv has no torch
#                       (default: torch==2.13.0, the CPU build; set it to your own
#                       CUDA build's spec, or install torch into the venv first, and
#                       this script leaves your torch alone)
#
# Idempotent and quick on a second run: the editable install is redone only when
# pyproject.toml changed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SELTUNE_VENV:-$repo/.venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtualenv $venv" >&2
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"

if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  spec="${SELTUNE_TORCH_SPEC:-torch==2.13.0}"
  echo "[setup] no torch in $venv: installing $spec" >&2
  # shellcheck disable=SC2086  # the spec may carry pip options on purpose
  "$vpy" -m pip install -q $spec
fi

stamp="$venv/.seltune-installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1) $repo"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing seltune (editable, with dev extras) into $venv" >&2
  "$vpy" -m pip install -q -e "$repo[dev]"
  echo "$want" > "$stamp"
fi
