"""Losses of the two gating modes (docs/METHODS.md §3). Small pure functions.

Shapes: B samples, E experts, C classes, K groups. ``eta [B, C]`` is the mixture
posterior, ``w [B, E]`` the gating weights, ``labels [B]`` int64, ``label_groups [B]``
the group of each true label, ``class_to_group [C]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from core.argse.margins import GroupedPosterior, MarginVariant, grouped_margin_and_prediction

EPS = 1e-8
HEAD_KEYWORDS = ("ce", "irm")
TAIL_KEYWORDS = ("balsoft", "balanced", "logitadjust", "logit_adjust", "ride", "ldam")


# ---- sample weights (pretrain) ---------------------------------------------------------

def class_frequency_weights(class_counts: torch.Tensor, smoothing: float = 0.5) -> torch.Tensor:
    """Per-class weights ``(n_y + 1)^-smoothing``, ``[C]`` (not yet normalised)."""
    return (class_counts.double() + 1.0).pow(-smoothing).float()


def frequency_sample_weights(labels: torch.Tensor, per_class: torch.Tensor) -> torch.Tensor:
    """Seed ``compute_frequency_weights``: per-class weights of ``labels [B]``, mean 1."""
    w = per_class[labels]
    return w / w.mean()


def group_sample_weights(label_groups: torch.Tensor, tail_weight: float) -> torch.Tensor:
    """Seed hard weighting: 1 for the head group (0), ``tail_weight`` otherwise, ``[B]``."""
    return torch.where(label_groups == 0, 1.0, float(tail_weight)).float()


# ---- pretrain --------------------------------------------------------------------------

def mixture_nll(eta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-log eta_y`` per sample ``[B]``, eta clamped to [1e-7, 1 - 1e-7] as in the seed."""
    return F.nll_loss(torch.log(eta.clamp(1e-7, 1.0 - 1e-7)), labels, reduction="none")


def mixture_nll_at_label(weights: torch.Tensor, label_probs: torch.Tensor) -> torch.Tensor:
    """:func:`mixture_nll` from the experts' posteriors of the true label alone:
    ``-log sum_e w_e p_e(y)`` per sample ``[B]`` for ``weights, label_probs [B, E]``.

    The same value as ``mixture_nll(mixture_posterior(w, probs), labels)`` (eta is
    clamped the same way) in O(B·E) instead of O(B·E·C) per step, forward and backward:
    the NLL reads only ``eta_y``.
    """
    eta_y = (weights * label_probs).sum(dim=1)
    return -torch.log(eta_y.clamp(1e-7, 1.0 - 1e-7))


def gating_entropy(w: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the gating weights ``H(w)``, scalar."""
    return -(w * torch.log(w + EPS)).sum(dim=1).mean()


def usage_kl_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """``KL(mean_b w || uniform)``, scalar (the seed's diversity penalty)."""
    p_bar = w.mean(dim=0) + EPS
    return (p_bar * torch.log(p_bar * p_bar.numel())).sum()


def pretrain_loss(eta: torch.Tensor, w: torch.Tensor, labels: torch.Tensor,
                  sample_weights: torch.Tensor | None = None, entropy_penalty: float = 0.0,
                  diversity_penalty: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Seed ``mixture_cross_entropy_loss``: ``mean s*NLL - l_H H(w) + l_D KL(w_bar||U)``."""
    nll = mixture_nll(eta, labels)
    if sample_weights is not None:
        nll = nll * sample_weights
    ce = nll.mean()
    total = ce
    parts = {"ce": ce.detach()}
    if entropy_penalty > 0:
        h = gating_entropy(w)
        total = total - entropy_penalty * h
        parts["entropy"] = h.detach()
    if diversity_penalty > 0:
        d = usage_kl_to_uniform(w)
        total = total + diversity_penalty * d
        parts["diversity"] = d.detach()
    return total, parts


# ---- selective (B1) --------------------------------------------------------------------

def build_group_priors(expert_names: Sequence[str], num_groups: int, head_boost: float = 1.5,
                       tail_boost: float = 1.5) -> torch.Tensor:
    """Seed ``build_group_priors``: expert priors per group ``[K, E]``, rows sum to 1.

    Head experts (name token ``ce``/``irm``) are boosted in group 0, tail experts
    (``balsoft``, ``logitadjust``, ``ride``, ``ldam``, ``balanced``) in every group
    g >= 1. ``ce`` is matched as a whole name token, so ``balanced_softmax`` is not a
    head expert (the seed's substring test would say it is).
    """
    num_experts = len(expert_names)
    pi = torch.ones(num_groups, num_experts)
    for e, name in enumerate(expert_names):
        lname = name.lower()
        tokens = [t for t in re.split(r"[^a-z0-9]+", lname) if t]
        if any(t in HEAD_KEYWORDS for t in tokens):
            pi[0, e] *= head_boost
        if num_groups > 1 and any(k in lname for k in TAIL_KEYWORDS):
            pi[1:, e] *= tail_boost
    return pi / pi.sum(dim=1, keepdim=True)


def pinball_loss(z: torch.Tensor, quantile: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss ``q relu(z) + (1 - q) relu(-z)``; its minimiser over a constant
    shift of ``z`` puts a fraction ``q`` of the samples below the threshold."""
    return (quantile * torch.relu(z) + (1.0 - quantile) * torch.relu(-z)).mean()


def coverage_penalty(s: torch.Tensor, label_groups: torch.Tensor, targets: torch.Tensor
                     ) -> torch.Tensor:
    """``sum_k (mean_{g=k} s - tau_k)^2`` over groups present in the batch, scalar."""
    k = targets.numel()
    onehot = F.one_hot(label_groups, k).to(s.dtype)  # [B, K]
    counts = onehot.sum(0)
    present = counts > 0
    cov = (onehot * s.unsqueeze(1)).sum(0) / counts.clamp_min(1.0)
    return ((cov - targets.to(s.dtype)) ** 2 * present).sum()


def group_prior_kl(w: torch.Tensor, pi_by_group: torch.Tensor, label_groups: torch.Tensor
                   ) -> torch.Tensor:
    """Mean ``KL(w || pi_{g(y)})``, scalar."""
    pi = pi_by_group.to(w.device)[label_groups]
    return (w * (torch.log(w + EPS) - torch.log(pi + EPS))).sum(dim=1).mean()


def selective_loss(
    eta: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, label_groups: torch.Tensor,
    *, alpha: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, class_to_group: torch.Tensor,
    targets: torch.Tensor, pi_by_group: torch.Tensor, kappa: float, beta_tail: float,
    lambda_q: float, lambda_cov: float, lambda_H: float, lambda_GA: float,
    margin: MarginVariant = "seed",
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """B1 loss ``L_sel + l_q L_pinball + l_cov L_cov + l_H H(w) + l_GA KL(w || pi_g)``.

    Soft acceptance ``s = sigmoid(kappa (m - t[g(y)]))`` (true-label group, training
    only). ``L_sel``: s-weighted CE of the alpha-rescaled posterior (normalised), with
    weight ``beta_tail`` on non-head groups. Pinball at quantile level ``1 - tau_g``
    learns ``t``. Returns ``(total, parts, margin [B] detached, s [B] detached)``.
    """
    gp = GroupedPosterior.from_posterior(eta, class_to_group, int(alpha.numel()))
    m, _ = grouped_margin_and_prediction(gp, alpha, mu, margin)
    t_g = t[label_groups]
    z = m - t_g
    s = torch.sigmoid(kappa * z)
    # CE of the normalised rescaled posterior q = s_[y] eta_y / sum_y' s_[y'] eta_y' at
    # the label only: the normaliser is sum_k s_k mass_k (O(B·K)), no [B, C] log
    scale = alpha.to(eta.device, eta.dtype)
    scale = scale if margin == "seed" else 1.0 / scale
    q_y = eta.gather(1, labels.unsqueeze(1)).squeeze(1) * scale[gp.class_to_group[labels]]
    q_y = q_y / ((gp.mass * scale).sum(dim=1) + EPS)
    ce = -torch.log(q_y + EPS)
    sample_w = torch.where(label_groups >= 1, float(beta_tail), 1.0).to(s.dtype)
    l_sel = (s * ce * sample_w).sum() / (s * sample_w).sum().clamp_min(EPS)
    tau = targets.to(s.dtype)[label_groups]
    l_q = pinball_loss(z, 1.0 - tau)
    l_cov = coverage_penalty(s, label_groups, targets)
    h_w = gating_entropy(w)
    kl = group_prior_kl(w, pi_by_group, label_groups)
    total = l_sel + lambda_q * l_q + lambda_cov * l_cov + lambda_H * h_w + lambda_GA * kl
    parts = {"sel": l_sel.detach(), "pinball": l_q.detach(), "cov": l_cov.detach(),
             "entropy": h_w.detach(), "prior_kl": kl.detach()}
    return total, parts, m.detach(), s.detach()
