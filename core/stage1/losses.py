"""Stage-1 training losses (docs/METHODS.md §4). Shapes: B samples, C classes.

- ``bce`` (seed v1): ``CE(f) + w_gate * BCE(g, 1[argmax f = y])``; the correctness
  target is computed without gradient (it is a label, not a path to ``f``).
- ``selectivenet`` (Geifman & El-Yaniv, "SelectiveNet", ICML 2019, eq. 4-6):
  ``alpha * [r_hat + lam * max(0, c - phi_hat)^2] + (1 - alpha) * CE(h)`` with
  ``phi_hat = mean sigma(g)`` (empirical coverage) and
  ``r_hat = mean(sigma(g) * CE_f) / phi_hat`` (empirical selective risk).

Both honour label smoothing and class weights through :func:`per_sample_ce`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # annotations only: the config module imports nothing of torch
    import numpy as np

    from core.stage1.config import Stage1Config


def per_sample_ce(logits: torch.Tensor, labels: torch.Tensor,
                  class_weights: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy per sample ``[B]`` (weighted by ``class_weights[y]`` when given)."""
    return F.cross_entropy(logits.float(), labels, weight=class_weights,
                           label_smoothing=label_smoothing, reduction="none")


def mean_ce(logits: torch.Tensor, labels: torch.Tensor,
            class_weights: torch.Tensor | None = None,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the batch, scalar; with class weights the mean is
    ``sum_i w_{y_i} ce_i / sum_i w_{y_i}`` (as ``F.cross_entropy`` does)."""
    return F.cross_entropy(logits.float(), labels, weight=class_weights,
                           label_smoothing=label_smoothing)


def bce_gate_loss(logits: torch.Tensor, gate_logit: torch.Tensor, labels: torch.Tensor, *,
                  gate_weight: float = 1.0, class_weights: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Seed v1 loss.

    Args:
        logits: class logits ``f(x)``, ``[B, C]``.
        gate_logit: gate logit ``g(x)``, ``[B]``.
        labels: ``[B]`` int64.
        gate_weight: ``w_gate``.

    Returns:
        ``(loss, parts)``: scalar loss and detached parts ``{"ce", "gate_bce"}``.
    """
    ce = mean_ce(logits, labels, class_weights, label_smoothing)
    with torch.no_grad():
        correct = (logits.argmax(dim=1) == labels).float()
    gate = F.binary_cross_entropy_with_logits(gate_logit.float(), correct)
    loss = ce + gate_weight * gate
    return loss, {"ce": ce.detach(), "gate_bce": gate.detach()}


def selectivenet_loss(logits: torch.Tensor, gate_logit: torch.Tensor, aux_logits: torch.Tensor,
                      labels: torch.Tensor, *, target_coverage: float, lam: float = 32.0,
                      alpha: float = 0.5, class_weights: torch.Tensor | None = None,
                      label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SelectiveNet loss.

    Args:
        logits: ``f(x)``, ``[B, C]``.
        gate_logit: ``g(x)`` before the sigmoid, ``[B]``.
        aux_logits: ``h(x)``, ``[B, C]``.
        labels: ``[B]`` int64.
        target_coverage: ``c`` in (0, 1].
        lam: ``lambda``, weight of the quadratic coverage penalty.
        alpha: weight of the selective term against the auxiliary CE.

    Returns:
        ``(loss, parts)`` with detached ``{"selective_risk", "coverage", "aux_ce"}``.
    """
    sel = torch.sigmoid(gate_logit.float())
    ce_f = per_sample_ce(logits, labels, class_weights, label_smoothing)
    phi = sel.mean()
    # clamp keeps r_hat finite if the gate collapses to 0 on a batch
    risk = (sel * ce_f).mean() / phi.clamp_min(1e-6)
    penalty = torch.clamp(target_coverage - phi, min=0.0) ** 2
    aux = mean_ce(aux_logits, labels, class_weights, label_smoothing)
    loss = alpha * (risk + lam * penalty) + (1.0 - alpha) * aux
    return loss, {"selective_risk": risk.detach(), "coverage": phi.detach(), "aux_ce": aux.detach()}


class Stage1Loss(nn.Module):
    """Config-selected loss: ``forward(outputs, labels) -> (loss, parts)``.

    ``outputs`` is the tuple returned by :class:`core.stage1.head.Stage1Head`.
    """

    def __init__(self, kind: str = "bce", *, gate_weight: float = 1.0,
                 target_coverage: float = 0.8, sn_lambda: float = 32.0, sn_alpha: float = 0.5,
                 label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if kind not in ("bce", "selectivenet"):
            raise ValueError(f"loss kind {kind!r}: expected 'bce' or 'selectivenet'")
        self.kind = kind
        self.gate_weight = gate_weight
        self.target_coverage = target_coverage
        self.sn_lambda = sn_lambda
        self.sn_alpha = sn_alpha
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, outputs, labels: torch.Tensor):
        logits, gate_logit, aux_logits = outputs
        cw = self.class_weights if isinstance(self.class_weights, torch.Tensor) else None
        if self.kind == "bce":
            return bce_gate_loss(logits, gate_logit, labels, gate_weight=self.gate_weight,
                                 class_weights=cw, label_smoothing=self.label_smoothing)
        return selectivenet_loss(logits, gate_logit, aux_logits, labels,
                                 target_coverage=self.target_coverage, lam=self.sn_lambda,
                                 alpha=self.sn_alpha, class_weights=cw,
                                 label_smoothing=self.label_smoothing)


def build_loss(config: Stage1Config, class_weights: np.ndarray | None,
               device: torch.device | str = "cpu") -> Stage1Loss:
    """The loss of ``config`` (``class_weights``: [C] float32 or None), on ``device``."""
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    return Stage1Loss(config.loss, gate_weight=config.gate_weight,
                      target_coverage=config.target_coverage, sn_lambda=config.sn_lambda,
                      sn_alpha=config.sn_alpha, label_smoothing=config.label_smoothing,
                      class_weights=cw).to(device)
