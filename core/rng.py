"""The random state a checkpoint keeps, so a resumed training draws what an
uninterrupted one would have: a data-order generator, torch's global state, and every
CUDA device's when there is one."""

from __future__ import annotations

from typing import Any

import torch


def rng_state(generator: torch.Generator, key: str = "generator") -> dict[str, Any]:
    """``{key: generator state, "torch": global CPU state[, "cuda": per-device states]}``
    (ByteTensors). ``key`` names the generator in the checkpoint: AR-GSE checkpoints say
    ``"generator"``, Stage-1 ones ``"shuffle"``; both formats are read back as written."""
    state: dict[str, Any] = {key: generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: torch.Generator, state: dict[str, Any],
                  key: str = "generator") -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is present)."""
    generator.set_state(state[key])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
