"""Baselines reported beside every AR-GSE result (ALGORITHMS.md §5).

All on the same expert logits, temperature-calibrated per expert on ``tunev``, with no
trained gate, and evaluated at the *same coverage* as the model being compared (the
coverage it realised on that split; each baseline's threshold is the matching quantile
of its confidence on that split):

- ``chow:<expert>`` and ``chow:mixture``: Chow's rule, confidence = max posterior of one
  expert / of the uniform mixture.
- ``plugin_balanced`` / ``plugin_worst``: the plug-in rules of Narasimhan et al.
  (ICLR 2024, "Learning to reject meets long-tail learning"), Theorem 1, on the uniform
  mixture posterior ``eta``: predict ``argmax_y eta_y / alpha_[y]``, confidence
  ``max_y eta_y/alpha_[y] - sum_y (1/alpha_[y] - mu_[y]) eta_y``. ``alpha`` by power
  iteration ``alpha_k = K P(accept, y in G_k)`` (Algorithm 1), ``mu`` by the
  ``[l/2, -l/2]`` grid (K = 2) or a coordinate grid (K > 2), both on ``tunev`` at the
  target coverage. ``plugin_worst`` wraps this in exponentiated gradient over group
  weights ``beta`` (Algorithm 2; the cost-weighted rule uses ``alpha / (K beta)``) and
  keeps the iterate with the lowest worst-group error on ``tunev``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.argse.data import class_to_group_tensor, split_tensors
from core.argse.evaluation import selective_metrics
from core.argse.margins import margin_and_prediction
from core.argse.rules import MuScorer, _coordinate_search, group_errors, lambda_grid
from core.argse.temperature import apply_temperatures, fit_temperatures

BASELINE_NAMES = ("chow:mixture", "plugin_balanced", "plugin_worst")


def coverage_confidence(score: torch.Tensor, coverage: float) -> torch.Tensor:
    """``score - q`` with ``q`` the ``1 - coverage`` quantile: accept iff ``> 0``."""
    score = score.double()
    if coverage >= 1.0:
        return score - (score.min() - 1e-9)
    return score - torch.quantile(score, 1.0 - coverage)


def _batched_margins(eta: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor,
                     c2g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plug-in margins and predictions for M rules at once: ``alpha, mu [M, K]`` ->
    ``(m [N, M], pred [N, M])``. Same formula as ``margins.margin_and_prediction``."""
    a_c, mu_c = alpha[:, c2g], mu[:, c2g]  # [M, C]
    n, c = eta.shape
    chunk = max(1, int(2e7 // max(n * c, 1)))
    ms, preds = [], []
    for i in range(0, alpha.shape[0], chunk):
        best, pred = (eta.unsqueeze(1) / a_c[i:i + chunk].unsqueeze(0)).max(dim=-1)
        ms.append(best - eta @ (1.0 / a_c[i:i + chunk] - mu_c[i:i + chunk]).T)
        preds.append(pred)
    return torch.cat(ms, 1), torch.cat(preds, 1)


def _accept_cols(m: torch.Tensor, coverage: float) -> torch.Tensor:
    """Per column, accept the ``coverage`` fraction with the largest margin."""
    if coverage >= 1.0:
        return torch.ones_like(m, dtype=torch.bool)
    return m > torch.quantile(m, 1.0 - coverage, dim=0, keepdim=True)


def _power_alpha(eta, groups, c2g, k, mus, beta, coverage, iters) -> torch.Tensor:
    """Algorithm 1's ``alpha`` per candidate ``mus [M, K]`` -> ``[M, K]``:
    ``alpha_k <- K P(accept, y in G_k)`` at the coverage, cost-weighted by ``beta``."""
    onehot = F.one_hot(groups, k).to(eta.dtype)
    tilde = torch.ones_like(mus)
    scale = k * beta.to(eta.dtype).unsqueeze(0)
    for _ in range(iters):
        m, _ = _batched_margins(eta, tilde / scale, mus, c2g)
        acc = _accept_cols(m, coverage).to(eta.dtype)  # [N, M]
        tilde = k * (acc.T @ onehot) / groups.numel() + 1e-3
    return tilde / scale


def _errors(eta, labels, groups, c2g, k, alphas, mus, coverage) -> torch.Tensor:
    m, pred = _batched_margins(eta, alphas, mus, c2g)
    return group_errors(_accept_cols(m, coverage), pred != labels.unsqueeze(1), groups, k)


def _inner(eta, labels, groups, c2g, k, beta, coverage, lambdas, iters):
    """Minimise the beta-weighted group error over mu (alpha re-fit per candidate)."""
    if k == 2:
        mus = torch.stack([lambdas / 2.0, -lambdas / 2.0], dim=1).to(eta.dtype)
        alphas = _power_alpha(eta, groups, c2g, k, mus, beta, coverage, iters)
        errs = _errors(eta, labels, groups, c2g, k, alphas, mus, coverage)
        i = int(torch.argmin((errs * beta).sum(1)))
        return alphas[i], mus[i], errs[i]
    mu = torch.zeros(1, k, dtype=eta.dtype)
    alpha = _power_alpha(eta, groups, c2g, k, mu, beta, coverage, iters)[0]
    scorer = MuScorer(eta, labels, groups, alpha, torch.zeros(k, dtype=eta.dtype), c2g, k,
                      "plugin", global_target=coverage)
    mu = _coordinate_search(scorer, mu[0], lambdas, "weighted", beta).unsqueeze(0)
    alpha = _power_alpha(eta, groups, c2g, k, mu, beta, coverage, iters)
    return alpha[0], mu[0], _errors(eta, labels, groups, c2g, k, alpha, mu, coverage)[0]


@torch.no_grad()
def fit_plugin(eta: torch.Tensor, labels: torch.Tensor, class_to_group: torch.Tensor,
               num_groups: int, coverage: float, objective: str = "balanced", *,
               grid_points: int = 41, grid_range: float = 2.0, power_iters: int = 5,
               eg_steps: int = 10, eg_step_size: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha [K], mu [K])`` of Plug-in[Balanced] / Plug-in[Worst] fit on ``eta [N, C]``."""
    eta = eta.double()
    k = num_groups
    groups = class_to_group[labels]
    lambdas = lambda_grid(grid_points, grid_range, torch.float64)
    beta = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if objective == "balanced":
        alpha, mu, _ = _inner(eta, labels, groups, class_to_group, k, beta, coverage, lambdas,
                              power_iters)
        return alpha.float(), mu.float()
    best = None
    for _ in range(eg_steps):
        alpha, mu, errs = _inner(eta, labels, groups, class_to_group, k, beta, coverage,
                                 lambdas, power_iters)
        if best is None or float(errs.max()) < best[0]:
            best = (float(errs.max()), alpha, mu)
        beta = beta * torch.exp(eg_step_size * errs)
        beta = beta / beta.sum()
    if best is None:  # the loop never ran: there is no iterate to return
        raise ValueError(f"fit_plugin: eg_steps must be >= 1 for the worst objective, "
                         f"got {eg_steps}")
    return best[1].float(), best[2].float()


@dataclass
class FittedBaselines:
    """Temperatures (fit on ``tunev``) and plug-in parameters per objective and coverage."""

    expert_names: tuple[str, ...]
    temperatures: list[float]
    class_to_group: torch.Tensor
    num_groups: int
    plugin: dict  # (objective, rounded coverage) -> (alpha, mu)
    fit_eta: torch.Tensor
    fit_labels: torch.Tensor


def _probs(logits, temperatures) -> torch.Tensor:
    return torch.softmax(apply_temperatures(logits, temperatures), dim=-1)


def fit_baselines(bundle, fit_split: str = "tunev") -> FittedBaselines:
    logits, labels = split_tensors(bundle, fit_split)
    temps = fit_temperatures(logits, labels)
    eta = _probs(logits, temps).mean(dim=1)
    return FittedBaselines(tuple(bundle.expert_names), temps, class_to_group_tensor(bundle),
                           bundle.num_groups, {}, eta, labels)


def baseline_metrics(bundle, split: str, coverage: float,
                     fitted: FittedBaselines | None = None) -> dict[str, dict[str, float]]:
    """``{NAME: metrics}`` for every baseline on ``split`` at ``coverage``.

    ``coverage``: the model's realised coverage on that split (in (0, 1]).
    """
    fitted = fitted or fit_baselines(bundle)
    logits, labels = split_tensors(bundle, split)
    c2g, k = fitted.class_to_group, fitted.num_groups
    probs = _probs(logits, fitted.temperatures)
    coverage = float(min(max(coverage, 1e-6), 1.0))
    out: dict[str, dict[str, float]] = {}
    for e, name in enumerate(fitted.expert_names):
        score, pred = probs[:, e, :].max(dim=1)
        out[f"chow:{name}"] = selective_metrics(coverage_confidence(score, coverage), pred,
                                                labels, c2g, k)
    eta = probs.mean(dim=1)
    score, pred = eta.max(dim=1)
    out["chow:mixture"] = selective_metrics(coverage_confidence(score, coverage), pred, labels,
                                            c2g, k)
    for objective in ("balanced", "worst"):
        key = (objective, round(coverage, 4))
        if key not in fitted.plugin:
            fitted.plugin[key] = fit_plugin(fitted.fit_eta, fitted.fit_labels, c2g, k,
                                            coverage, objective)
        alpha, mu = fitted.plugin[key]
        m, pred = margin_and_prediction(eta.double(), alpha.double(), mu.double(), c2g, "plugin")
        out[f"plugin_{objective}"] = selective_metrics(coverage_confidence(m, coverage), pred,
                                                       labels, c2g, k)
    return out
