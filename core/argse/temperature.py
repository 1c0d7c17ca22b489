"""Per-expert temperature scaling (ALGORITHMS.md §2).

Each expert's temperature ``T_e`` minimises the NLL of ``softmax(logits_e / T_e)`` on
the gating's training split, optimised over ``log T`` (so T stays positive) by Newton's
method on the one scalar with a backtracking step (the NLL is convex in ``1/T`` and
smooth in ``log T``). The seed's 8-point grid is used as the start and the fallback.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SEED_GRID = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0)
LOG_T_BOUNDS = (-4.6, 4.6)  # T in about [0.01, 100]


def _nll(logits: torch.Tensor, labels: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits * torch.exp(-log_t), labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 50,
                    tol: float = 1e-7) -> float:
    """Temperature ``T`` minimising NLL of ``softmax(logits [N, C] / T)`` for ``labels [N]``."""
    logits = logits.detach().double()
    labels = labels.long()
    if logits.shape[0] == 0:
        return 1.0
    with torch.no_grad():
        grid = [(float(_nll(logits, labels, torch.tensor(t).log().double())), t)
                for t in SEED_GRID]
    best_nll, best_t = min(grid)
    x = torch.tensor(float(torch.tensor(best_t).log()), dtype=torch.float64)
    f = float(best_nll)
    for _ in range(max_iter):
        xg = x.clone().requires_grad_(True)
        val = _nll(logits, labels, xg)
        (g_t,) = torch.autograd.grad(val, xg, create_graph=True)
        (h_t,) = torch.autograd.grad(g_t, xg)
        g, h = float(g_t.detach()), float(h_t.detach())
        if abs(g) < tol:
            break
        step = -g / h if h > 1e-12 else -g  # gradient step where not convex
        improved = False
        for _ in range(30):  # backtracking line search
            cand = torch.clamp(x + step, *LOG_T_BOUNDS)
            with torch.no_grad():
                fc = float(_nll(logits, labels, cand))
            if fc <= f - 1e-4 * abs(step * g) or fc < f:
                x, f, improved = cand, fc, True
                break
            step *= 0.5
        if not improved:
            break
    t = float(torch.exp(x))
    return t if f <= best_nll else float(best_t)


def fit_temperatures(expert_logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """One temperature per expert for ``expert_logits [N, E, C]``, in expert order."""
    return [fit_temperature(expert_logits[:, e, :], labels)
            for e in range(expert_logits.shape[1])]


def apply_temperatures(expert_logits: torch.Tensor, temperatures: Sequence[float]
                       ) -> torch.Tensor:
    """``expert_logits [N, E, C] / T [E]`` (broadcast over samples and classes)."""
    t = torch.as_tensor(list(temperatures), dtype=expert_logits.dtype,
                        device=expert_logits.device)
    if t.numel() != expert_logits.shape[1]:
        raise ValueError(f"{t.numel()} temperatures for {expert_logits.shape[1]} experts")
    return expert_logits / t.view(1, -1, 1)
