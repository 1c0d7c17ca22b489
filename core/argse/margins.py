"""Selective margins of the AR-GSE rule (ALGORITHMS.md §2).

Shapes: B samples, C classes, K groups. ``eta`` is the mixture posterior ``[B, C]``,
``alpha`` and ``mu`` are per-group ``[K]``, ``class_to_group`` maps classes to groups
``[C]`` (int64). Works on torch tensors (differentiable) — callers with numpy arrays
convert once with ``torch.as_tensor``.

Two variants:
- ``seed``:   m(x) = max_y α_[y] η_y − Σ_y (1/α_[y] − μ_[y]) η_y, ŷ = argmax_y α_[y] η_y
- ``plugin``: m(x) = max_y η_y/α_[y] − Σ_y (1/α_[y] − μ_[y]) η_y, ŷ = argmax_y η_y/α_[y]
  (Theorem 1 of Narasimhan et al., ICLR 2024, "Plugin estimators for selective
  classification with out-of-distribution detection" / learning to reject meets
  long-tail learning.)
A sample is accepted iff ``m(x) > t[group(ŷ)]`` (the group of the *predicted* class).
"""

from __future__ import annotations

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


def _per_class(values: torch.Tensor, class_to_group: torch.Tensor) -> torch.Tensor:
    return values.to(class_to_group.device)[class_to_group]


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


def margin_and_prediction(
    eta: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, class_to_group: torch.Tensor,
    variant: MarginVariant = "seed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(margin [B], predicted class [B])`` for the chosen variant."""
    scored = scored_posterior(eta, alpha, class_to_group, variant)
    best, pred = scored.max(dim=1)
    alpha_c = _per_class(alpha, class_to_group).to(eta.dtype)
    mu_c = _per_class(mu, class_to_group).to(eta.dtype)
    threshold_term = (eta * (1.0 / alpha_c - mu_c)).sum(dim=1)
    return best - threshold_term, pred


def accept(
    margin: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, class_to_group: torch.Tensor,
) -> torch.Tensor:
    """Hard acceptance ``m(x) > t[group(ŷ)]``, bool ``[B]``."""
    return margin > t.to(margin.device)[class_to_group[pred]]
