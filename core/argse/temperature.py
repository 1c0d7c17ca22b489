"""Per-expert temperature scaling (ALGORITHMS.md §2).

Each expert's temperature ``T_e`` minimises the NLL of ``softmax(logits_e / T_e)`` on
the gating's training split, optimised over ``log T`` (so T stays positive) by Newton's
method on the one scalar with a backtracking step (the NLL is convex in ``1/T`` and
smooth in ``log T``); gradient and curvature are closed-form (mean and variance of the
logits under the scaled softmax), one pass over the logits per Newton point. The
seed's 8-point grid is used as the start and the fallback.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SEED_GRID = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0)
LOG_T_BOUNDS = (-4.6, 4.6)  # T in about [0.01, 100]


def _nll(logits: torch.Tensor, labels: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits * torch.exp(-log_t), labels)


class _ScaledNLL:
    """NLL of ``softmax(z / T)`` and its derivatives in ``x = log T`` for one expert.

    With ``theta = 1/T`` and ``p = softmax(theta z)``: ``dNLL/dtheta = mean(E_p z - z_y)``
    and ``d2NLL/dtheta2 = mean(Var_p z)``; the chain rule through ``theta = exp(-x)``
    gives ``g = -theta F'`` and ``h = theta^2 F'' + theta F'``. The same numbers as
    ``cross_entropy`` and two rounds of autograd through it (to rounding), for one exp
    over ``[N, C]`` per point, written into one scratch buffer kept across points (a
    fresh ``[N, C]`` float64 allocation costs as much as the exp: page faults).
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor):
        self.z = logits  # [N, C] float64
        self.zy = logits.gather(1, labels.unsqueeze(1)).squeeze(1)  # [N]
        self.buf = torch.empty_like(logits)
        self.sq: torch.Tensor | None = None  # z * z, made on the first derivative call

    def __call__(self, log_t: torch.Tensor, derivatives: bool = True
                 ) -> tuple[float, float, float]:
        """``(nll, g, h)`` at ``log_t``; ``g = h = nan`` unless ``derivatives``."""
        theta = torch.exp(-log_t)
        e = torch.mul(self.z, theta, out=self.buf)
        top = e.max(dim=1, keepdim=True).values
        e.sub_(top).exp_()  # unnormalised softmax, in place
        s0 = e.sum(dim=1)
        nll = float((top.squeeze(1) + torch.log(s0) - theta * self.zy).mean())
        if not derivatives:
            return nll, float("nan"), float("nan")
        if self.sq is None:
            self.sq = self.z * self.z
        # row-wise dot products as [N, 1, C] @ [N, C, 1]: no [N, C] temporary
        ez = torch.bmm(e.unsqueeze(1), self.z.unsqueeze(2)).view(-1) / s0
        ez2 = torch.bmm(e.unsqueeze(1), self.sq.unsqueeze(2)).view(-1) / s0
        f_t = float((ez - self.zy).mean())
        f_tt = float((ez2 - ez * ez).mean())  # Var_p z; float64, no harmful cancellation
        th = float(theta)
        return nll, -th * f_t, th * th * f_tt + th * f_t


def _grid_minimum(nll: _ScaledNLL) -> tuple[float, float]:
    """``min((NLL(T), T) for T in SEED_GRID)`` without evaluating every grid point.

    The NLL is convex in ``1/T`` (log-sum-exp minus a linear term), so along the
    sorted grid it falls, then rises: walk from ``T = 1`` in the falling direction and
    stop at the first rise. Same minimiser as the full grid, in 3-4 passes of 8.
    """
    grid = sorted(SEED_GRID)
    vals: dict[int, float] = {}

    def f(i: int) -> float:
        if i not in vals:
            vals[i] = nll(torch.tensor(grid[i]).log().double(), derivatives=False)[0]
        return vals[i]

    i = min(range(len(grid)), key=lambda j: abs(grid[j] - 1.0))
    direction = 1 if i + 1 < len(grid) and f(i + 1) < f(i) else -1
    while 0 <= i + direction < len(grid) and f(i + direction) <= f(i):
        i += direction
    return min((v, grid[j]) for j, v in vals.items())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 50,
                    tol: float = 1e-7) -> float:
    """Temperature ``T`` minimising NLL of ``softmax(logits [N, C] / T)`` for ``labels [N]``.

    The seed's grid picks the start (and is the fallback), then Newton steps on
    ``log T`` with a backtracking line search; each point costs one pass over
    ``[N, C]`` (:class:`_ScaledNLL`), and an accepted point's derivatives are reused
    for the next step.
    """
    logits = logits.detach().double().contiguous()
    labels = labels.long()
    if logits.shape[0] == 0:
        return 1.0
    with torch.no_grad():
        nll = _ScaledNLL(logits, labels)
        best_nll, best_t = _grid_minimum(nll)
        x = torch.tensor(float(torch.tensor(best_t).log()), dtype=torch.float64)
        f, g, h = nll(x)
        f = float(best_nll)
        for _ in range(max_iter):
            if abs(g) < tol:
                break
            step = -g / h if h > 1e-12 else -g  # gradient step where not convex
            improved = False
            for _ in range(30):  # backtracking line search
                cand = torch.clamp(x + step, *LOG_T_BOUNDS)
                fc, gc, hc = nll(cand)
                if fc <= f - 1e-4 * abs(step * g) or fc < f:
                    x, f, g, h, improved = cand, fc, gc, hc, True
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
