"""Selective margins of the AR-GSE rule (docs/METHODS.md §3).

Shapes: B samples, C classes, K groups, M candidate rules. ``eta`` is the mixture
posterior ``[B, C]``, ``alpha`` and ``mu`` are per-group ``[K]``, ``class_to_group``
maps classes to groups ``[C]`` (int64). Works on torch tensors (differentiable) —
callers with numpy arrays convert once with ``torch.as_tensor``.

Two variants:
- ``seed``:   m(x) = max_y α_[y] η_y − Σ_y (1/α_[y] − μ_[y]) η_y, ŷ = argmax_y α_[y] η_y
- ``plugin``: m(x) = max_y η_y/α_[y] − Σ_y (1/α_[y] − μ_[y]) η_y, ŷ = argmax_y η_y/α_[y]
  (Theorem 1 of Narasimhan et al., ICLR 2024, "Plugin estimators for selective
  classification with out-of-distribution detection" / learning to reject meets
  long-tail learning.)
A sample is accepted iff ``m(x) > t[group(ŷ)]`` (the group of the *predicted* class).

Group-constant rules in O(B·K). ``alpha`` and ``mu`` are constant within a group, so
``max_y s_[y] η_y = max_k s_k (max_{y in G_k} η_y)`` for any positive per-group scale
``s`` (``α`` or ``1/α``), the argmax is the argmax class of the winning group, and
``Σ_y (1/α_[y] − μ_[y]) η_y = Σ_k (1/α_k − μ_k) mass_k`` with ``mass_k = Σ_{y in G_k} η_y``.
:class:`GroupedPosterior` holds the per-group max, argmax and mass ``[B, K]``, computed
once per posterior (O(B·C)); every rule evaluated on it afterwards costs O(B·K)
(:func:`grouped_margin_and_prediction`, or O(B·M·K) for M rules at once with
:func:`batched_margins`). :func:`margin_and_prediction` keeps its signature and goes
through the grouped form; :func:`direct_margin_and_prediction` is the O(B·C) formula
the known-answer tests compare against.

Ties. ``torch.max(dim=1)`` of the direct formula returns the first (smallest) maximal
class; the grouped form returns the same class: within a group the first maximal class
of ``η`` and, across groups tied on the scaled value, the smallest of their argmax
classes. The one case where they can differ is a tie *created by rounding* when a
group's posteriors are scaled (two classes of one group whose ``η`` differ by less
than an ulp of the scaled value); the margin is the same there and both classes are
maximisers of the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

MarginVariant = Literal["seed", "plugin"]
MARGIN_VARIANTS = ("seed", "plugin")


def as_margin_variant(value: str) -> MarginVariant:
    """``value`` narrowed to :data:`MarginVariant`; ValueError naming it otherwise."""
    if value == "seed":
        return "seed"
    if value == "plugin":
        return "plugin"
    raise ValueError(f"margin variant {value!r}: expected one of {MARGIN_VARIANTS}")


def _check_variant(variant: str) -> None:
    if variant not in MARGIN_VARIANTS:
        raise ValueError(f"margin variant {variant!r}: expected one of {MARGIN_VARIANTS}")


def _per_class(values: torch.Tensor, class_to_group: torch.Tensor) -> torch.Tensor:
    return values.to(class_to_group.device)[class_to_group]


@dataclass(frozen=True)
class GroupedPosterior:
    """A posterior summarised per group: all a group-constant rule reads.

    Attributes:
        group_max: ``[B, K]`` ``max_{y in G_k} eta_y`` (``-inf`` for a group with no
            class).
        group_argmax: ``[B, K]`` int64, the first (smallest) class attaining it.
        mass: ``[B, K]`` ``sum_{y in G_k} eta_y``.
        class_to_group: ``[C]`` int64.
    Differentiable in ``eta`` (the max passes its gradient to the argmax class, as
    ``torch.max`` of the direct formula does).
    """

    group_max: torch.Tensor
    group_argmax: torch.Tensor
    mass: torch.Tensor
    class_to_group: torch.Tensor

    @classmethod
    def from_posterior(cls, eta: torch.Tensor, class_to_group: torch.Tensor,
                       num_groups: int | None = None) -> GroupedPosterior:
        """Summarise ``eta [B, C]`` under ``class_to_group [C]``: one O(B·C) pass."""
        if eta.dim() != 2:
            raise ValueError(f"eta has shape {tuple(eta.shape)}: expected [B, C]")
        c2g = class_to_group.to(eta.device)
        if c2g.shape != (eta.shape[1],):
            raise ValueError(f"class_to_group has shape {tuple(c2g.shape)} for "
                             f"{eta.shape[1]} classes")
        k = int(num_groups) if num_groups is not None else (
            int(c2g.max()) + 1 if c2g.numel() else 1)
        b = eta.shape[0]
        maxes, args, masses = [], [], []
        for g in range(k):
            idx = torch.nonzero(c2g == g).flatten()  # ascending: first max = smallest class
            if idx.numel() == 0:
                maxes.append(eta.new_full((b,), -float("inf")))
                args.append(torch.zeros(b, dtype=torch.int64, device=eta.device))
                masses.append(eta.new_zeros(b))
                continue
            sub = eta if idx.numel() == eta.shape[1] else eta.index_select(1, idx)
            if b:
                v, a = sub.max(dim=1)
            else:
                v, a = sub.new_zeros(0), torch.zeros(0, dtype=torch.int64, device=eta.device)
            maxes.append(v)
            args.append(idx[a])
            masses.append(sub.sum(dim=1))
        return cls(torch.stack(maxes, 1), torch.stack(args, 1), torch.stack(masses, 1), c2g)

    @property
    def num_groups(self) -> int:
        return int(self.mass.shape[1])

    def __len__(self) -> int:
        return int(self.mass.shape[0])

    def subset(self, index: torch.Tensor) -> GroupedPosterior:
        """The rows ``index`` (any 1-d index or bool mask over B)."""
        return GroupedPosterior(self.group_max[index], self.group_argmax[index],
                                self.mass[index], self.class_to_group)


def as_grouped(eta: torch.Tensor | GroupedPosterior, class_to_group: torch.Tensor,
               num_groups: int | None = None) -> GroupedPosterior:
    """``eta`` itself if already grouped, else :meth:`GroupedPosterior.from_posterior`."""
    if isinstance(eta, GroupedPosterior):
        return eta
    return GroupedPosterior.from_posterior(eta, class_to_group, num_groups)


def _scale(alpha: torch.Tensor, variant: str) -> torch.Tensor:
    _check_variant(variant)
    return alpha if variant == "seed" else 1.0 / alpha


def _batched_terms(gp: GroupedPosterior, alpha: torch.Tensor, mu: torch.Tensor,
                   variant: MarginVariant) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scored [B, M, K], threshold term [B, M])`` of M rules ``alpha, mu [M, K]``."""
    dtype, dev = gp.mass.dtype, gp.mass.device
    alpha = alpha.to(dev, dtype)
    mu = mu.to(dev, dtype)
    if variant == "seed":
        scored = gp.group_max.unsqueeze(1) * alpha.unsqueeze(0)  # [B, M, K]
    else:
        _check_variant(variant)
        # the same division as the direct formula's eta_y / alpha_[y], so the values
        # (and hence ties) agree bit for bit
        scored = gp.group_max.unsqueeze(1) / alpha.unsqueeze(0)
    return scored, gp.mass @ (1.0 / alpha - mu).T


def batched_margins(gp: GroupedPosterior, alpha: torch.Tensor, mu: torch.Tensor,
                    variant: MarginVariant = "plugin") -> tuple[torch.Tensor, torch.Tensor]:
    """Margins and predictions of M rules at once: ``alpha, mu [M, K]`` ->
    ``(m [B, M], pred [B, M] int64)``, O(B·M·K)."""
    scored, threshold_term = _batched_terms(gp, alpha, mu, variant)
    best = scored.max(dim=2, keepdim=True).values
    big = torch.iinfo(torch.int64).max
    cand = torch.where(scored == best, gp.group_argmax.unsqueeze(1), big)
    pred = cand.min(dim=2).values
    return best.squeeze(2) - threshold_term, pred


def batched_margin_values(gp: GroupedPosterior, alpha: torch.Tensor, mu: torch.Tensor,
                          variant: MarginVariant = "plugin") -> torch.Tensor:
    """The margins ``m [B, M]`` of :func:`batched_margins` (the same values) without
    the predictions: a third of its cost, for the loops that only rank samples (the
    power iteration's acceptances)."""
    scored, threshold_term = _batched_terms(gp, alpha, mu, variant)
    return scored.amax(dim=2) - threshold_term


def grouped_margin_and_prediction(gp: GroupedPosterior, alpha: torch.Tensor, mu: torch.Tensor,
                                  variant: MarginVariant = "seed"
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(margin [B], predicted class [B])`` of one rule ``alpha, mu [K]``, O(B·K)."""
    dtype, dev = gp.mass.dtype, gp.mass.device
    alpha = alpha.to(dev, dtype)
    mu = mu.to(dev, dtype)
    if variant == "seed":
        scored = gp.group_max * alpha
    else:
        _check_variant(variant)
        scored = gp.group_max / alpha  # [B, K]
    if scored.shape[0] == 0:
        return scored.new_zeros(0), torch.zeros(0, dtype=torch.int64, device=dev)
    top = scored.max(dim=1, keepdim=True).values
    big = torch.iinfo(torch.int64).max
    pred = torch.where(scored == top, gp.group_argmax, big).min(dim=1).values
    # take the value of the group that holds pred, so the gradient reaches eta[pred]
    # as torch.max of the direct formula sends it
    best = scored.gather(1, gp.class_to_group[pred].unsqueeze(1)).squeeze(1)
    threshold_term = (gp.mass * (1.0 / alpha - mu)).sum(dim=1)
    return best - threshold_term, pred


def scored_posterior(
    eta: torch.Tensor, alpha: torch.Tensor, class_to_group: torch.Tensor,
    variant: MarginVariant = "seed",
) -> torch.Tensor:
    """The rescaled posterior whose max is the first margin term, ``[B, C]``."""
    alpha_c = _per_class(alpha, class_to_group).to(eta.dtype)
    if variant == "seed":
        return eta * alpha_c
    if variant == "plugin":
        return eta / alpha_c
    raise ValueError(f"margin variant {variant!r}: expected one of {MARGIN_VARIANTS}")


def direct_margin_and_prediction(
    eta: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, class_to_group: torch.Tensor,
    variant: MarginVariant = "seed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The O(B·C) formula, for known-answer tests: ``(margin [B], class [B])``."""
    scored = scored_posterior(eta, alpha, class_to_group, variant)
    best, pred = scored.max(dim=1)
    alpha_c = _per_class(alpha, class_to_group).to(eta.dtype)
    mu_c = _per_class(mu, class_to_group).to(eta.dtype)
    threshold_term = (eta * (1.0 / alpha_c - mu_c)).sum(dim=1)
    return best - threshold_term, pred


def margin_and_prediction(
    eta: torch.Tensor | GroupedPosterior, alpha: torch.Tensor, mu: torch.Tensor,
    class_to_group: torch.Tensor, variant: MarginVariant = "seed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(margin [B], predicted class [B])`` for the chosen variant.

    ``eta``: the posterior ``[B, C]`` (summarised per group here, O(B·C)) or a
    :class:`GroupedPosterior` of it (O(B·K)). Differentiable in ``eta``.
    """
    _check_variant(variant)
    gp = as_grouped(eta, class_to_group, int(alpha.numel()))
    return grouped_margin_and_prediction(gp, alpha, mu, variant)


def accept(
    margin: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, class_to_group: torch.Tensor,
) -> torch.Tensor:
    """Hard acceptance ``m(x) > t[group(ŷ)]``, bool ``[B]``."""
    return margin > t.to(margin.device)[class_to_group[pred]]
