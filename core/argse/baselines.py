"""Baselines reported beside every AR-GSE result (docs/METHODS.md §6).

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

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from core.argse.data import CHUNK, class_to_group_tensor, scaled_probs, split_tensors
from core.argse.evaluation import selective_metrics
from core.argse.margins import (
    GroupedPosterior,
    batched_margin_values,
    batched_margins,
    grouped_margin_and_prediction,
)
from core.argse.rules import MuScorer, _coordinate_search, group_errors, lambda_grid, quantile
from core.argse.temperature import fit_temperatures

BASELINE_NAMES = ("chow:mixture", "plugin_balanced", "plugin_worst")

#: ``on_step(done, total)``: progress of a long computation (core never draws bars;
#: the CLI passes one that advances a bar).
OnStep = Callable[[int, int], None]


def coverage_confidence(score: torch.Tensor, coverage: float) -> torch.Tensor:
    """``score - q`` with ``q`` the ``1 - coverage`` quantile: accept iff ``> 0``."""
    score = score.double()
    if coverage >= 1.0:
        return score - (score.min() - 1e-9)
    return score - quantile(score, 1.0 - coverage)


def _batched_margins(gp: GroupedPosterior, alpha: torch.Tensor, mu: torch.Tensor,
                     with_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plug-in margins and predictions for M rules at once: ``alpha, mu [M, K]`` ->
    ``(m [N, M], pred [N, M] or None without with_pred)``, O(N·M·K) on the grouped
    posterior (the same rule as ``margins.margin_and_prediction``). Chunked over M so
    the ``[N, M, K]`` scratch stays below ~2e7 elements."""
    n, k = gp.mass.shape
    chunk = max(1, int(2e7 // max(n * k, 1)))
    ms, preds = [], []
    for i in range(0, max(alpha.shape[0], 1), chunk):  # M = 0: one empty call
        a, u = alpha[i:i + chunk], mu[i:i + chunk]
        if with_pred:
            m, pred = batched_margins(gp, a, u, "plugin")
            preds.append(pred)
        else:
            m = batched_margin_values(gp, a, u, "plugin")
        ms.append(m)
    if len(ms) == 1:
        return ms[0], (preds[0] if with_pred else None)
    return torch.cat(ms, 1), (torch.cat(preds, 1) if with_pred else None)


def _accept_cols(m: torch.Tensor, coverage: float) -> torch.Tensor:
    """Per column, accept the ``coverage`` fraction with the largest margin."""
    if coverage >= 1.0:
        return torch.ones_like(m, dtype=torch.bool)
    return m > quantile(m, 1.0 - coverage, dim=0, keepdim=True)


def _power_alpha(gp: GroupedPosterior, groups, k, mus, beta, coverage, iters) -> torch.Tensor:
    """Algorithm 1's ``alpha`` per candidate ``mus [M, K]`` -> ``[M, K]``:
    ``alpha_k <- K P(accept, y in G_k)`` at the coverage, cost-weighted by ``beta``."""
    dtype = gp.mass.dtype
    onehot = F.one_hot(groups, k).to(dtype)
    tilde = torch.ones_like(mus)
    scale = k * beta.to(dtype).unsqueeze(0)
    for _ in range(iters):
        m, _ = _batched_margins(gp, tilde / scale, mus, with_pred=False)
        acc = _accept_cols(m, coverage).to(dtype)  # [N, M]
        tilde = k * (acc.T @ onehot) / groups.numel() + 1e-3
    return tilde / scale


def _errors(gp: GroupedPosterior, labels, groups, k, alphas, mus, coverage) -> torch.Tensor:
    m, pred = _batched_margins(gp, alphas, mus)
    return group_errors(_accept_cols(m, coverage), pred != labels.unsqueeze(1), groups, k)


def _inner(gp: GroupedPosterior, labels, groups, k, beta, coverage, lambdas, iters):
    """Minimise the beta-weighted group error over mu (alpha re-fit per candidate)."""
    dtype = gp.mass.dtype
    if k == 2:
        mus = torch.stack([lambdas / 2.0, -lambdas / 2.0], dim=1).to(dtype)
        alphas = _power_alpha(gp, groups, k, mus, beta, coverage, iters)
        errs = _errors(gp, labels, groups, k, alphas, mus, coverage)
        i = int(torch.argmin((errs * beta).sum(1)))
        return alphas[i], mus[i], errs[i]
    mu = torch.zeros(1, k, dtype=dtype)
    alpha = _power_alpha(gp, groups, k, mu, beta, coverage, iters)[0]
    scorer = MuScorer(gp, labels, groups, alpha, torch.zeros(k, dtype=dtype),
                      gp.class_to_group, k, "plugin", global_target=coverage)
    mu = _coordinate_search(scorer, mu[0], lambdas, "weighted", beta).unsqueeze(0)
    alpha = _power_alpha(gp, groups, k, mu, beta, coverage, iters)
    return alpha[0], mu[0], _errors(gp, labels, groups, k, alpha, mu, coverage)[0]


@torch.no_grad()
def fit_plugin(eta: torch.Tensor | GroupedPosterior, labels: torch.Tensor, class_to_group: torch.Tensor,
               num_groups: int, coverage: float, objective: str = "balanced", *,
               grid_points: int = 41, grid_range: float = 2.0, power_iters: int = 5,
               eg_steps: int = 10, eg_step_size: float = 1.0, on_step: OnStep | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha [K], mu [K])`` of Plug-in[Balanced] / Plug-in[Worst] fit on ``eta [N, C]``.

    ``eta``: any posterior ``[N, C]`` (e.g. a gated mixture), or its
    :class:`GroupedPosterior` in float64. It is summarised per group once; every
    candidate, power iteration and EG step then costs O(N·K), on the CPU (the summary
    is moved there: ``[N, K]`` is small, and the quantiles run on numpy).
    ``on_step(done, total)`` after each inner fit (1 for balanced, ``eg_steps`` for worst;
    ``(1, 1)`` when the same fit was done before: fits are remembered by content).
    """
    gp = eta if isinstance(eta, GroupedPosterior) else GroupedPosterior.from_posterior(
        eta.double(), class_to_group, num_groups)
    if gp.mass.device.type != "cpu":
        gp = GroupedPosterior(gp.group_max.cpu(), gp.group_argmax.cpu(), gp.mass.cpu(),
                              gp.class_to_group.cpu())
    labels = labels.to(gp.mass.device)
    params = (num_groups, float(coverage), objective, grid_points, float(grid_range),
              power_iters, eg_steps, float(eg_step_size))
    key = (_digest(gp, labels), params)
    hit = _FITS.get(key)
    if hit is None:
        hit = _fit_plugin(gp, labels, *params, on_step=on_step)
        _FITS[key] = hit
        while len(_FITS) > _FITS_KEPT:
            _FITS.pop(next(iter(_FITS)))
    elif on_step is not None:
        on_step(1, 1)
    return hit[0].clone(), hit[1].clone()


# Plug-in fits by the content of what they read: a training run's uniform-gate check
# and the Plug-in[Worst] baseline fit the same rule on the same tunev mixture (~a third
# of a default run's plug-in arithmetic), and a sweep's trials in one worker repeat it.
_FITS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_FITS_KEPT = 16


def _digest(gp: GroupedPosterior, labels: torch.Tensor) -> str:
    """sha1 of the grouped posterior and labels (``[N, K]`` and ``[N]``: ~1 ms at N = 20k)."""
    h = hashlib.sha1()
    for t in (gp.group_max, gp.group_argmax, gp.mass, gp.class_to_group, labels):
        arr = t.detach().contiguous().numpy()
        h.update(str((arr.dtype, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _fit_plugin(gp: GroupedPosterior, labels: torch.Tensor, k: int, coverage: float,
                objective: str, grid_points: int, grid_range: float, power_iters: int,
                eg_steps: int, eg_step_size: float, on_step: OnStep | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fit_plugin` on a CPU float64 grouped posterior, not memoised."""
    groups = gp.class_to_group[labels]
    lambdas = lambda_grid(grid_points, grid_range, torch.float64)
    beta = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if objective == "balanced":
        alpha, mu, _ = _inner(gp, labels, groups, k, beta, coverage, lambdas, power_iters)
        if on_step is not None:
            on_step(1, 1)
        return alpha.float(), mu.float()
    best = None
    for step in range(eg_steps):
        alpha, mu, errs = _inner(gp, labels, groups, k, beta, coverage, lambdas, power_iters)
        if on_step is not None:
            on_step(step + 1, eg_steps)
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
    """Temperatures (fit on ``tunev``) and plug-in parameters per objective and coverage.

    ``fit_grouped``: the fit split's uniform-mixture posterior summarised per group in
    float64 (``[N, K]``, CPU), all the plug-in fits read; ``fit_eta`` ``[N, C]`` is kept
    only when asked for (``fit_baselines(keep_eta=True)``: at iNaturalist-2018 shape
    it is 650 MB). ``device``: where the passes over ``[N, E, C]`` run.
    """

    expert_names: tuple[str, ...]
    temperatures: list[float]
    class_to_group: torch.Tensor
    num_groups: int
    plugin: dict  # (objective, rounded coverage) -> (alpha, mu)
    fit_eta: torch.Tensor | None
    fit_labels: torch.Tensor
    fit_grouped: GroupedPosterior | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def grouped_fit(self) -> GroupedPosterior:
        """``fit_eta`` summarised per group in float64 (computed on first use)."""
        if self.fit_grouped is None:
            assert self.fit_eta is not None
            self.fit_grouped = GroupedPosterior.from_posterior(
                self.fit_eta.double(), self.class_to_group, self.num_groups)
        return self.fit_grouped


def _probs(logits, temperatures) -> torch.Tensor:
    return scaled_probs(logits, temperatures, logits.device)


def _cat_grouped(parts: list[GroupedPosterior], c2g: torch.Tensor) -> GroupedPosterior:
    return GroupedPosterior(torch.cat([p.group_max for p in parts]),
                            torch.cat([p.group_argmax for p in parts]),
                            torch.cat([p.mass for p in parts]), c2g)


def _split_pass(logits: torch.Tensor, temperatures, c2g: torch.Tensor, k: int,
                device: torch.device, chow: bool, keep_eta: bool = False,
                on_chunk: Callable[[], None] | None = None):
    """One chunked pass over a split's ``logits [N, E, C]`` (any float dtype, on CPU):
    ``(per-expert chow (score, pred) lists [N] each, mixture chow (score, pred) [N],
    grouped mixture posterior float64 [N, K] (on CPU), eta [N, C] or None)``. Nothing of
    size ``[N, E, C]`` or ``[N, C]`` float64 exists at once: ``CHUNK`` rows at a time."""
    n, e, _ = logits.shape
    c2g_dev = c2g.to(device)
    chow_parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(e)]
    mix_parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    gparts: list[GroupedPosterior] = []
    etas: list[torch.Tensor] = []
    for i in range(0, n, CHUNK):
        probs = scaled_probs(logits[i:i + CHUNK], temperatures, device)
        if chow:
            for j in range(e):
                sc, pr = probs[:, j, :].max(dim=1)
                chow_parts[j].append((sc.cpu(), pr.cpu()))
        eta = probs.mean(dim=1)
        del probs
        if chow:
            sc, pr = eta.max(dim=1)
            mix_parts.append((sc.cpu(), pr.cpu()))
        g = GroupedPosterior.from_posterior(eta.double(), c2g_dev, k)
        gparts.append(GroupedPosterior(g.group_max.cpu(), g.group_argmax.cpu(), g.mass.cpu(),
                                       c2g))
        if keep_eta:
            etas.append(eta.cpu())
        if on_chunk is not None:
            on_chunk()

    def cat(parts):
        return (torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts]))

    experts = [cat(p) for p in chow_parts] if chow else []
    mixture = cat(mix_parts) if chow else None
    return experts, mixture, _cat_grouped(gparts, c2g), (torch.cat(etas) if keep_eta else None)


def _chunks(n: int) -> int:
    return max(1, -(-n // CHUNK))


def fit_baselines(bundle, fit_split: str = "tunev", device="cpu", keep_eta: bool = False,
                  on_step: OnStep | None = None) -> FittedBaselines:
    """Temperatures and the fit split's grouped mixture posterior (the plug-in rules are
    fit lazily per coverage by :func:`baseline_rules`). ``device``: ``cpu`` (default),
    ``cuda`` or a ``torch.device``, where the pass over the logits runs. ``on_step``:
    after temperatures and after each chunk of the pass."""
    from core.device import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    logits, labels = split_tensors(bundle, fit_split, upcast=False)
    total = 1 + _chunks(logits.shape[0])
    temps = fit_temperatures(logits.to(dev) if dev.type != "cpu" else logits, labels)
    done = [1]
    if on_step is not None:
        on_step(1, total)

    def tick() -> None:
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total)

    c2g = class_to_group_tensor(bundle)
    _, _, gp, eta = _split_pass(logits, temps, c2g, bundle.num_groups, dev, chow=False,
                                keep_eta=keep_eta, on_chunk=tick)
    return FittedBaselines(tuple(bundle.expert_names), temps, c2g, bundle.num_groups, {},
                           eta, labels, gp, dev)


def baseline_rules(bundle, split: str, coverage: float,
                   fitted: FittedBaselines | None = None, on_step: OnStep | None = None
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every baseline's rule on ``split`` at ``coverage``: ``{NAME: (confidence [N],
    prediction [N])}``, the confidence shifted so that ``coverage`` of the split is
    ``> 0`` (:func:`coverage_confidence`). The plug-in rules are fit on ``tunev`` at
    ``coverage`` once per ``fitted``. One place for what :func:`baseline_metrics`
    scores and the report draws. One chunked pass over the split (on
    ``fitted.device``); ``on_step(done, total)`` after each chunk and each plug-in fit.
    """
    fitted = fitted or fit_baselines(bundle)
    logits, _ = split_tensors(bundle, split, upcast=False)
    c2g, k = fitted.class_to_group, fitted.num_groups
    coverage = float(min(max(coverage, 1e-6), 1.0))
    todo = [o for o in ("balanced", "worst") if (o, round(coverage, 4)) not in fitted.plugin]
    total = _chunks(logits.shape[0]) + len(todo)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total)

    experts, mixture, gp, _ = _split_pass(logits, fitted.temperatures, c2g, k, fitted.device,
                                          chow=True, on_chunk=tick)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for (score, pred), name in zip(experts, fitted.expert_names, strict=True):
        out[f"chow:{name}"] = (coverage_confidence(score, coverage), pred)
    assert mixture is not None
    out["chow:mixture"] = (coverage_confidence(mixture[0], coverage), mixture[1])
    for objective in ("balanced", "worst"):
        key = (objective, round(coverage, 4))
        if key not in fitted.plugin:
            fitted.plugin[key] = fit_plugin(fitted.grouped_fit(), fitted.fit_labels, c2g, k,
                                            coverage, objective)
            tick()
        alpha, mu = fitted.plugin[key]
        m, pred = grouped_margin_and_prediction(gp, alpha.double(), mu.double(), "plugin")
        out[f"plugin_{objective}"] = (coverage_confidence(m, coverage), pred)
    return out


def baseline_metrics(bundle, split: str, coverage: float,
                     fitted: FittedBaselines | None = None,
                     on_step: OnStep | None = None) -> dict[str, dict[str, float]]:
    """``{NAME: metrics}`` for every baseline on ``split`` at ``coverage`` (the operating
    point, in (0, 1]; every baseline is judged at exactly that coverage on the split).
    ``on_step``: see :func:`baseline_rules`."""
    fitted = fitted or fit_baselines(bundle)
    _, labels = split_tensors(bundle, split, upcast=False)
    c2g, k = fitted.class_to_group, fitted.num_groups
    rules = baseline_rules(bundle, split, coverage, fitted, on_step)
    return {name: selective_metrics(conf, pred, labels, c2g, k)
            for name, (conf, pred) in rules.items()}
