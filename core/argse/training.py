"""Plumbing shared by the two trainers: result type, RNG capture, checkpoint dirs.

Determinism: one CPU ``torch.Generator`` orders the batches; dropout uses torch's
global RNG, seeded from ``config.seed`` at the start. Both RNG states are saved in
every checkpoint directory and restored on resume, and restored again after each
``report`` call (so a callback that draws random numbers cannot change training).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.argse.checkpoint import LOGS_FILE, STATE_FILE, save_json, save_torch
from core.errors import InputError
from core.rng import rng_state, set_rng_state  # noqa: F401  (re-exported to the trainers)

Report = Callable[[dict[str, float], str], None]


@dataclass
class ArgseResult:
    """What a training run returns.

    Attributes:
        config: the config dataclass used.
        metrics: final ``val`` metrics (the last reported dict, with ``loss``).
        checkpoint_dir: directory of the final checkpoint (seed-format ``*.ckpt``,
            ``trainer_state.pt``, ``selective_training_logs.json``).
        checkpoint_file: the ``*.ckpt`` inside it.
        temperatures: expert name -> fitted temperature.
        logs: one dict per epoch (pretrain) / Stage A + cycle (selective).
        alpha, mu, t: final rule parameters ``[K]`` (lists).
    """

    config: Any
    metrics: dict[str, float]
    checkpoint_dir: str
    checkpoint_file: str
    temperatures: dict[str, float]
    logs: list[dict[str, Any]] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    mu: list[float] = field(default_factory=list)
    t: list[float] = field(default_factory=list)


class CheckpointWriter:
    """Fresh checkpoint directories ``<workdir>/<prefix>_<step>``, one per report.

    With ``workdir=None`` they go to a private temporary directory, and each one is
    deleted once the *next* report has returned (the callback has had its chance to
    copy it, as ``tune.report`` does); the final one is kept. A given ``workdir`` is
    never pruned.
    """

    def __init__(self, workdir: str | Path | None):
        self.owned = workdir is None
        self.root = Path(tempfile.mkdtemp(prefix="argse-")) if workdir is None else Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._previous: Path | None = None

    def reported(self, directory: Path) -> None:
        """Call after ``report`` returned for ``directory``: prunes the one before it."""
        if self.owned and self._previous is not None and self._previous != directory:
            shutil.rmtree(self._previous, ignore_errors=True)
        self._previous = directory

    def write(self, name: str, ckpt_file: str, ckpt: dict, state: dict, logs: list) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        save_torch(ckpt, d / ckpt_file)
        save_torch(state, d / STATE_FILE)
        save_json(logs, d / LOGS_FILE)
        return d


def load_state(resume_from: str | Path) -> dict[str, Any]:
    path = Path(resume_from) / STATE_FILE
    if not path.is_file():
        raise InputError("no trainer state to resume from", file=path,
                         expected="a checkpoint directory written by an AR-GSE trainer")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise InputError(f"cannot read trainer state: {exc}".splitlines()[0],
                         file=path) from None


def optimizer_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = v.to(device)


def check_resume_config(saved: dict, config_dict: dict, path) -> None:
    if saved != config_dict:
        diff = sorted(k for k in set(saved) | set(config_dict) if saved.get(k) != config_dict.get(k))
        raise InputError("config differs from the run being resumed", file=path,
                         field=",".join(diff[:5]), expected="the same config as the saved run")
