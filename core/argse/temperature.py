"""Per-expert temperature scaling (docs/METHODS.md §3).

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


#: Rows per chunk of the NLL passes: the float64 scratch is ~3 x CHUNK x C (100 MB at
#: C = 1000), never ``[N, C]`` (at iNaturalist-2018 shape 1.3 GB per copy).
CHUNK = 4096


class _ScaledNLL:
    """NLL of ``softmax(z / T)`` and its derivatives in ``x = log T`` for one expert.

    With ``theta = 1/T`` and ``p = softmax(theta z)``: ``dNLL/dtheta = mean(E_p z - z_y)``
    and ``d2NLL/dtheta2 = mean(Var_p z)``; the chain rule through ``theta = exp(-x)``
    gives ``g = -theta F'`` and ``h = theta^2 F'' + theta F'``. The same numbers as
    ``cross_entropy`` and two rounds of autograd through it (to rounding), for one exp
    over ``[N, C]`` per point, computed :data:`CHUNK` rows at a time in float64 from
    the logits as stored (a float16 or float32 view into the bundle: no copy of the
    split), with one scratch buffer kept across points and chunks (a fresh float64
    allocation per pass costs as much as the exp: page faults).
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, chunk: int = CHUNK):
        self.z = logits  # [N, C], any float dtype, possibly strided
        self.n = int(logits.shape[0])
        self.chunk = int(chunk)
        self.zy = logits.gather(1, labels.unsqueeze(1)).squeeze(1).double()  # [N]
        rows = min(self.chunk, self.n)
        self.zbuf = torch.empty(rows, logits.shape[1], dtype=torch.float64, device=logits.device)
        self.buf = torch.empty_like(self.zbuf)
        self.sqbuf = torch.empty_like(self.zbuf)

    def __call__(self, log_t: torch.Tensor, derivatives: bool = True
                 ) -> tuple[float, float, float]:
        """``(nll, g, h)`` at ``log_t``; ``g = h = nan`` unless ``derivatives``."""
        theta = torch.exp(-log_t)
        th = float(theta)
        nll_sum = 0.0
        f_t_sum = 0.0
        f_tt_sum = 0.0
        for i in range(0, self.n, self.chunk):
            m = min(self.chunk, self.n - i)
            z = self.zbuf[:m]
            z.copy_(self.z[i:i + m])  # float64, one chunk
            e = torch.mul(z, theta, out=self.buf[:m])
            top = e.max(dim=1, keepdim=True).values
            e.sub_(top).exp_()  # unnormalised softmax, in place
            s0 = e.sum(dim=1)
            zy = self.zy[i:i + m]
            nll_sum += float((top.squeeze(1) + torch.log(s0) - theta * zy).sum())
            if not derivatives:
                continue
            sq = torch.mul(z, z, out=self.sqbuf[:m])
            # row-wise dot products as [m, 1, C] @ [m, C, 1]: no [m, C] temporary
            ez = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1) / s0
            ez2 = torch.bmm(e.unsqueeze(1), sq.unsqueeze(2)).view(-1) / s0
            f_t_sum += float((ez - zy).sum())
            f_tt_sum += float((ez2 - ez * ez).sum())  # Var_p z; float64, no harmful cancellation
        nll = nll_sum / self.n
        if not derivatives:
            return nll, float("nan"), float("nan")
        f_t, f_tt = f_t_sum / self.n, f_tt_sum / self.n
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
    logits = logits.detach()
    labels = labels.long().to(logits.device)
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


#: fit_temperatures results by content fingerprint (see _fingerprint): a training run
#: and the baselines beside it fit the same temperatures on the same tunev split.
_CACHE: dict[tuple, list[float]] = {}
_CACHE_SIZE = 4


def _fingerprint(expert_logits: torch.Tensor, labels: torch.Tensor) -> tuple:
    """Identifies the data, not the buffer: shape, dtype, device, a hash of all labels
    and of 64 evenly spaced full rows of logits. Two different splits agreeing on all of
    that is not a case that occurs (a cache hit on them would need identical labels and
    identical sampled rows)."""
    import hashlib

    n = int(expert_logits.shape[0])
    rows = torch.linspace(0, max(n - 1, 0), min(n, 64)).long() if n else torch.zeros(0).long()
    h = hashlib.sha256()
    h.update(labels.detach().cpu().contiguous().numpy().tobytes())
    sample = expert_logits.detach()[rows.to(expert_logits.device)].float().cpu().contiguous()
    h.update(sample.numpy().tobytes())
    return (tuple(expert_logits.shape), str(expert_logits.dtype), str(expert_logits.device),
            h.hexdigest())


def fit_temperatures(expert_logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """One temperature per expert for ``expert_logits [N, E, C]``, in expert order.

    Deterministic in the data, so a repeat call on the same split (the baselines after a
    training run) returns the remembered result instead of fitting again."""
    key = _fingerprint(expert_logits, labels)
    if key in _CACHE:
        return list(_CACHE[key])
    temps = [fit_temperature(expert_logits[:, e, :], labels)
             for e in range(expert_logits.shape[1])]
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = list(temps)
    return temps


def apply_temperatures(expert_logits: torch.Tensor, temperatures: Sequence[float]
                       ) -> torch.Tensor:
    """``expert_logits [N, E, C] / T [E]`` (broadcast over samples and classes)."""
    t = torch.as_tensor(list(temperatures), dtype=expert_logits.dtype,
                        device=expert_logits.device)
    if t.numel() != expert_logits.shape[1]:
        raise ValueError(f"{t.numel()} temperatures for {expert_logits.shape[1]} experts")
    return expert_logits / t.view(1, -1, 1)
