"""Checkpoint files in the seed's format, written atomically (docs/METHODS.md §3).

``gating_pretrained.ckpt``: ``gating_net_state_dict``, ``num_experts``,
``num_classes``, ``num_groups``, ``gating_feature_dim``, ``config``.
``gating_selective.ckpt`` adds ``alpha``, ``mu``, ``t_param``, ``pi_by_group``,
``temperatures``, ``cycle_logs``, ``mode``. Both also carry the keys the predictor
needs (``expert_names``, ``class_to_group``, ``temperatures``, ``alpha``, ``mu``,
``t_param``, ``margin``, ``hidden_dims``, ``dropout``, ``top_k``), so a pretrained
gate is also a (Chow-on-the-mixture) predictor. ``t_param`` holds the thresholds the
predictor uses (calibrated for the coverage targets); the thresholds B1 trains are
under ``t_learned``.

The full resumable training state (optimizer, RNG states, counters, logs) is in a
separate ``trainer_state.pt`` next to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_file
from core.errors import InputError
from core.jsonable import to_jsonable

PRETRAIN_FILE = "gating_pretrained.ckpt"
SELECTIVE_FILE = "gating_selective.ckpt"
LOGS_FILE = "selective_training_logs.json"
STATE_FILE = "trainer_state.pt"
SEED_KEYS = ("gating_net_state_dict", "num_experts", "num_classes", "num_groups",
             "gating_feature_dim", "config")
SELECTIVE_KEYS = (*SEED_KEYS, "alpha", "mu", "t_param", "pi_by_group", "temperatures",
                  "cycle_logs", "mode")


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through a temporary sibling + rename."""
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    return path


def resolve_checkpoint_file(path: str | Path) -> Path:
    """A ``*.ckpt`` file, or a directory holding the selective (preferred) or pretrain one."""
    path = Path(path)
    if path.is_dir():
        for name in (SELECTIVE_FILE, PRETRAIN_FILE):
            if (path / name).is_file():
                return path / name
        raise InputError("no checkpoint in directory", file=path,
                         expected=f"{SELECTIVE_FILE} or {PRETRAIN_FILE}")
    if not path.is_file():
        raise InputError("no such file", file=path, expected="an AR-GSE *.ckpt checkpoint")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a seed-format checkpoint dict (tensors on CPU); checks the seed keys."""
    file = resolve_checkpoint_file(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise InputError(f"cannot read checkpoint: {exc}".splitlines()[0], file=file) from None
    if not isinstance(ckpt, dict):
        raise InputError(file=file, value=type(ckpt).__name__, expected="a checkpoint dict")
    missing = [k for k in SEED_KEYS if k not in ckpt]
    if missing:
        raise InputError("missing keys", file=file, value=missing,
                         expected="an AR-GSE gating checkpoint with " + ", ".join(SEED_KEYS))
    ckpt["_file"] = str(file)
    return ckpt
