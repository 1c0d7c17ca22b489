"""The non-gradient steps of selective training (docs/METHODS.md §3, Stage B2/B3).

Shapes: N samples, C classes, K groups, M candidates. All steps are vectorised over
samples and candidates; python loops run only over groups, grid coordinates and EG
iterations. Hard acceptance everywhere is the evaluation rule
``m(x) > t[group(ŷ)]`` (group of the *predicted* class).

- B2 :func:`update_alpha_seed` (the seed's conditional fixed point with EMA, geometric
  mean 1, clamp) and :func:`update_alpha_paper` (``alpha_k = K P(accept, y in G_k)``,
  the power iteration of Narasimhan et al., ICLR 2024, Algorithm 1).
- B3 :func:`search_mu`: the 41-point grid ``mu = [l/2, -l/2]`` for K = 2 and, for
  K > 2, a coordinate grid (balanced objective) or exponentiated gradient over group
  weights around it (worst objective; Algorithm 2 of the paper).
- :func:`calibrate_thresholds`: thresholds that realise the coverage targets.

Every step takes the posterior ``eta [N, C]`` or its
:class:`core.argse.margins.GroupedPosterior`; the posterior is summarised per group once
per call (O(N·C)) and every alpha/mu candidate, power-iteration and EG step after that
costs O(N·K) (see :mod:`core.argse.margins`). Callers that run several steps on one
posterior can pass the grouped form and skip even that pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.argse.margins import (
    GroupedPosterior,
    MarginVariant,
    as_grouped,
    grouped_margin_and_prediction,
)

ALPHA_EPS = 1e-3


def quantile(x: torch.Tensor, q: float, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
    """``torch.quantile(x, q, dim, keepdim)`` (linear interpolation), bit for bit.

    ``x``: ``[N]`` or ``[N, M]`` with ``dim`` 0 (one quantile per column). On CPU the two
    order statistics come from one ``numpy.partition`` (introselect, O(N) per column)
    instead of a full sort, ~5x faster at ``[20000, 41]``; the rank, weight and
    ``lerp`` are torch's own steps in ``x``'s dtype, so the result is identical. Other
    devices, other layouts, NaNs or a bad ``q`` go to ``torch.quantile`` itself.
    """
    n = x.shape[0] if x.dim() else 0
    if (x.device.type != "cpu" or x.dim() not in (1, 2) or dim not in (0, -x.dim())
            or n == 0 or not 0.0 <= q <= 1.0 or x.dtype not in (torch.float32, torch.float64)
            or x.requires_grad or bool(torch.isnan(x).any())):
        return torch.quantile(x, q, dim=dim, keepdim=keepdim)
    rank = torch.tensor(q, dtype=x.dtype) * (n - 1)  # as torch: q in x's dtype
    lo = int(rank)
    hi = int(torch.ceil(rank))
    weight = rank - lo
    cols = x.detach().reshape(n, -1).T.contiguous().numpy()  # [M, N]
    part = np.partition(cols, [lo, hi] if hi != lo else [lo], axis=1)
    below = torch.from_numpy(np.ascontiguousarray(part[:, lo]))
    above = torch.from_numpy(np.ascontiguousarray(part[:, hi]))
    out = torch.lerp(below, above, weight)
    if x.dim() == 1:
        return out.reshape(1) if keepdim else out.reshape(())
    return out.unsqueeze(0) if keepdim else out


def predicted_groups(pred: torch.Tensor, class_to_group: torch.Tensor) -> torch.Tensor:
    return class_to_group[pred]


def hard_accept(eta: torch.Tensor | GroupedPosterior, alpha, mu, t, class_to_group,
                variant: MarginVariant) -> torch.Tensor:
    """``m(x) > t[group(ŷ)]``, bool ``[N]``; ``eta [N, C]`` or its grouped form."""
    gp = as_grouped(eta, class_to_group, int(alpha.numel()))
    m, pred = grouped_margin_and_prediction(gp, alpha, mu, variant)
    return m > t.to(m.device)[gp.class_to_group[pred]]


def _normalise_alpha(alpha: torch.Tensor, alpha_min: float, alpha_max: float,
                     floor_first: bool = True) -> torch.Tensor:
    """Geometric mean 1, then clamp. ``floor_first`` (the seed's order) clamps at
    ``alpha_min`` before normalising, which is right for alphas already near 1 but would
    flatten the paper's absolute ``K P(accept, G_k)`` values, so that variant skips it."""
    if floor_first:
        alpha = alpha.clamp_min(alpha_min)
    log_a = alpha.clamp_min(1e-12).log()
    alpha = torch.exp(log_a - log_a.mean())  # geometric mean 1
    return alpha.clamp(min=alpha_min, max=alpha_max)


@torch.no_grad()
def update_alpha_seed(eta, label_groups, alpha, mu, t, class_to_group, num_groups: int, *,
                      gamma: float, alpha_min: float, alpha_max: float,
                      variant: MarginVariant = "seed", steps: int = 1) -> torch.Tensor:
    """Seed ``update_alpha_fixed_point_conditional`` applied ``steps`` times: ``[K]``.

    ``alpha_hat_k = P(accept | y in G_k) + 1e-3`` (1 for an absent group), EMA with
    ``gamma``, then geometric mean 1 and clamp to ``[alpha_min, alpha_max]``.
    """
    gp = as_grouped(eta, class_to_group, num_groups)
    onehot = F.one_hot(label_groups, num_groups).to(gp.mass.dtype)
    counts = onehot.sum(0)
    for _ in range(steps):
        acc = hard_accept(gp, alpha, mu, t, class_to_group, variant).to(gp.mass.dtype)
        rate = (onehot * acc.unsqueeze(1)).sum(0) / counts.clamp_min(1.0)
        alpha_hat = torch.where(counts > 0, rate + ALPHA_EPS, torch.ones_like(rate))
        alpha = _normalise_alpha((1 - gamma) * alpha + gamma * alpha_hat, alpha_min, alpha_max)
    return alpha


@torch.no_grad()
def update_alpha_paper(eta, label_groups, alpha, mu, t, class_to_group, num_groups: int, *,
                       alpha_min: float, alpha_max: float, variant: MarginVariant = "seed",
                       steps: int = 2) -> torch.Tensor:
    """Power iteration ``alpha_k <- K P(accept, y in G_k)``, ``steps`` times: ``[K]``.

    Each step re-evaluates acceptance with the current alpha; the result is put on the
    seed's scale (geometric mean 1, clamp) so both variants are interchangeable.
    """
    gp = as_grouped(eta, class_to_group, num_groups)
    onehot = F.one_hot(label_groups, num_groups).to(gp.mass.dtype)
    n = max(int(label_groups.numel()), 1)
    for _ in range(steps):
        acc = hard_accept(gp, alpha, mu, t, class_to_group, variant).to(gp.mass.dtype)
        joint = (onehot * acc.unsqueeze(1)).sum(0) / n
        alpha = _normalise_alpha(num_groups * joint + ALPHA_EPS, alpha_min, alpha_max,
                                 floor_first=False)
    return alpha


def group_errors(accept: torch.Tensor, wrong: torch.Tensor, label_groups: torch.Tensor,
                 num_groups: int) -> torch.Tensor:
    """Selective error per group for M accept vectors: ``accept [N, M]`` -> ``[M, K]``.

    ``wrong``: ``[N]`` (same predictions for all candidates) or ``[N, M]``.
    A group with nothing accepted has error 1.0 (the convention of core/metrics).
    """
    onehot = F.one_hot(label_groups, num_groups).to(torch.float64)  # [N, K]
    acc = accept.to(torch.float64)
    wrong = wrong.to(torch.float64)
    if wrong.dim() == 1:
        wrong = wrong.unsqueeze(1)
    n_acc = acc.T @ onehot  # [M, K]
    n_err = (acc * wrong).T @ onehot
    return torch.where(n_acc > 0, n_err / n_acc.clamp_min(1.0), torch.ones_like(n_acc))


def _score(errors: torch.Tensor, objective: str, weights: torch.Tensor | None = None
           ) -> torch.Tensor:
    if weights is not None:
        return (errors * weights.to(errors.dtype)).sum(1)
    if objective == "worst":
        return errors.max(1).values
    if objective == "balanced":
        return errors.mean(1)
    raise ValueError(f"mu objective {objective!r}: expected 'worst' or 'balanced'")


class MuScorer:
    """Group errors of many ``mu`` candidates on one split, alpha and t fixed.

    ``eta``: the posterior ``[N, C]`` or its :class:`GroupedPosterior` (built once here
    otherwise).

    The margin is affine in mu: ``m(mu) = m(0) + P @ mu`` with ``P [N, K]`` the
    posterior mass of each group, and the prediction does not depend on mu, so M
    candidates cost one ``[N, K] x [K, M]`` product.

    ``global_target``: when set, each candidate's thresholds are shifted by one constant
    so that its coverage is the target (scoring at equal coverage). ``group_targets``
    ``[K]``: each candidate's threshold for predicted group k is its ``1 - tau_k``
    quantile there. Neither: the fixed ``t`` is used (the seed's B3).
    """

    def __init__(self, eta, labels, label_groups, alpha, t, class_to_group, num_groups: int,
                 variant: MarginVariant, global_target: float | None = None,
                 group_targets: Sequence[float] | None = None):
        gp = as_grouped(eta, class_to_group, num_groups)
        zero = torch.zeros(num_groups, dtype=gp.mass.dtype, device=gp.mass.device)
        m0, pred = grouped_margin_and_prediction(gp, alpha, zero, variant)
        class_to_group = gp.class_to_group
        self.base = m0 - t.to(m0.device, m0.dtype)[class_to_group[pred]]  # [N]
        self.mass = gp.mass  # [N, K]
        self.wrong = pred != labels
        self.groups = label_groups
        self.pred_groups = class_to_group[pred]
        self.k = num_groups
        self.global_target = global_target
        self.group_targets = None if group_targets is None else [float(x) for x in group_targets]

    def errors(self, mus: torch.Tensor) -> torch.Tensor:
        """``mus [M, K]`` -> group errors ``[M, K]``."""
        z = self.base.unsqueeze(1) + self.mass @ mus.to(self.mass.dtype).T  # [N, M]
        if self.global_target is not None and self.global_target < 1.0:
            shift = quantile(z, 1.0 - self.global_target, dim=0, keepdim=True)
            accept = z > shift
        elif self.global_target is not None:
            accept = torch.ones_like(z, dtype=torch.bool)
        elif self.group_targets is not None:
            thr = torch.zeros_like(z)
            for g, tau in enumerate(self.group_targets):
                sel = self.pred_groups == g
                if sel.any() and tau < 1.0:
                    thr[sel] = quantile(z[sel], 1.0 - tau, dim=0, keepdim=True)
                elif sel.any():
                    thr[sel] = z[sel].min(0, keepdim=True).values - 1e-6
            accept = z > thr
        else:
            accept = z > 0
        return group_errors(accept, self.wrong, self.groups, self.k)


def lambda_grid(points: int, grid_range: float, dtype=torch.float32, device=None) -> torch.Tensor:
    return torch.linspace(-grid_range, grid_range, points, dtype=dtype, device=device)


def _coordinate_search(scorer: MuScorer, start: torch.Tensor, lambdas: torch.Tensor,
                       objective: str, weights: torch.Tensor | None, passes: int = 2
                       ) -> torch.Tensor:
    """Coordinate grid over mu (zero-sum kept by re-centring): ``[K]``."""
    mu = start.clone()
    for _ in range(passes):
        for k in range(scorer.k):
            cands = mu.unsqueeze(0).repeat(lambdas.numel(), 1)
            cands[:, k] = lambdas
            cands = cands - cands.mean(1, keepdim=True)
            cands = torch.cat([mu.unsqueeze(0), cands])  # keep the incumbent on ties
            scores = _score(scorer.errors(cands), objective, weights)
            mu = cands[int(torch.argmin(scores))]
    return mu


@torch.no_grad()
def search_mu(scorer: MuScorer, current_mu: torch.Tensor, *, objective: str = "worst",
              grid_points: int = 41, grid_range: float = 2.0, eg_steps: int = 10,
              eg_step_size: float = 1.0) -> tuple[torch.Tensor, float, torch.Tensor]:
    """B3: the best ``mu [K]`` on the scorer's split, its score and group errors ``[K]``.

    K = 2: ``mu = [l/2, -l/2]`` for ``l`` in ``linspace(-range, range, points)`` (the
    seed's grid; the first minimum wins). K > 2, ``balanced``: coordinate grid from
    ``current_mu``. K > 2, ``worst``: exponentiated gradient over group weights
    ``beta`` (Narasimhan et al., ICLR 2024, Algorithm 2): each step minimises the
    ``beta``-weighted error by coordinate grid, then ``beta_k *= exp(step * e_k)``;
    the iterate with the lowest worst-group error is returned.
    """
    k = scorer.k
    dtype = scorer.mass.dtype
    lambdas = lambda_grid(grid_points, grid_range, dtype, scorer.mass.device)
    if k == 2:
        mus = torch.stack([lambdas / 2.0, -lambdas / 2.0], dim=1)
        errs = scorer.errors(mus)
        scores = _score(errs, objective)
        i = int(torch.argmin(scores))
        return mus[i], float(scores[i]), errs[i]
    if k == 1:
        mu = torch.zeros(1, dtype=dtype, device=scorer.mass.device)
        errs = scorer.errors(mu.unsqueeze(0))
        return mu, float(_score(errs, objective)[0]), errs[0]
    start = current_mu.to(dtype)
    if objective == "balanced":
        mu = _coordinate_search(scorer, start, lambdas, "balanced", None)
        errs = scorer.errors(mu.unsqueeze(0))[0]
        return mu, float(errs.mean()), errs
    beta = torch.full((k,), 1.0 / k, dtype=torch.float64, device=scorer.mass.device)
    best = None
    mu = start
    for _ in range(eg_steps):
        mu = _coordinate_search(scorer, mu, lambdas, "weighted", beta)
        errs = scorer.errors(mu.unsqueeze(0))[0]
        worst = float(errs.max())
        if best is None or worst < best[1]:
            best = (mu.clone(), worst, errs.clone())
        beta = beta * torch.exp(eg_step_size * errs)
        beta = beta / beta.sum()
    if best is None:  # the loop never ran: there is no iterate to return
        raise ValueError(f"search_mu: eg_steps must be >= 1 for the worst objective, "
                         f"got {eg_steps}")
    return best


@torch.no_grad()
def calibrate_thresholds(margin: torch.Tensor, pred_groups: torch.Tensor, t: torch.Tensor,
                         targets: Sequence[float], global_target: bool) -> torch.Tensor:
    """Thresholds ``[K]`` that realise the coverage targets under ``m > t[group(ŷ)]``.

    ``global_target``: all ``t_k`` move by one constant so the overall coverage is the
    target (relative group thresholds, i.e. the learnt trade-off, are kept).
    Otherwise ``t_k`` is the ``1 - tau_k`` quantile of the margins predicted in group k
    (kept as is when no sample is predicted there).
    """
    t = t.clone().to(margin.dtype)
    if margin.numel() == 0:
        return t
    if global_target:
        tau = float(targets[0])
        z = margin - t[pred_groups]
        if tau >= 1.0:
            return t + (z.min() - 1e-6)
        return t + quantile(z, 1.0 - tau)
    for k, tau in enumerate(targets):
        sel = margin[pred_groups == k]
        if sel.numel() == 0:
            continue
        t[k] = sel.min() - 1e-6 if tau >= 1.0 else quantile(sel, 1.0 - float(tau))
    return t
