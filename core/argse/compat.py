"""What the public AR-GSE code (github DngBack/AR-GSE) decides with a seltune checkpoint.

The repository's evaluation (``src/train/eval_gse_plugin.py``, with the per-group
thresholds of ``src/train/per_group_threshold.py``) loads ``gating_net_state_dict``,
``alpha``, ``mu``, ``class_to_group`` and ``t_param`` from the checkpoint and applies
its own rule, whatever the checkpoint's other fields say. Read from its code:

- experts are fed in its ``CONFIG['experts']['names']`` order
  (``ce_baseline, logitadjust_baseline, balsoftmax_baseline``);
- no temperatures: ``get_mixture_posteriors`` softmaxes the raw logits (its
  ``temperature_scale_logits`` looks temperatures up by its own names and falls back to
  T = 1, and the evaluation never calls it);
- gating features from the raw logits with ``GatingFeatureBuilder()`` (``top_k = 5``),
  gate ``GatingNet(in_dim, [128, 64], E, 0.1)`` in eval mode, ``w = softmax``,
  ``eta = sum_e w_e softmax(logits_e)``;
- the seed margin ``m = max_y alpha_[y] eta_y - sum_y (1/alpha_[y] - mu_[y]) eta_y``,
  prediction ``argmax_y alpha_[y] eta_y`` (``compute_raw_margin`` and the ``preds`` of
  ``eval_gse_plugin.main``);
- accept iff ``m >= t[group(prediction)]`` (``accept_with_group_thresholds``: the
  group of the *predicted* class, ``>=``; seltune's predictor accepts iff
  ``m - t > 0``, which differs only on exact ties).

This module implements that rule independently of :mod:`core.argse.predictor` (its
own feature code, written from the repository's, with ``torch.var``/``torch.std``), so
that a difference between the two is measured, not assumed away.
:func:`argse_repo_report` compares the two rules row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.argse.checkpoint import load_checkpoint
from core.argse.data import split_tensors
from core.argse.evaluation import selective_metrics
from core.argse.gating import GatingNet
from core.argse.predictor import check_bundle_matches, load_predictor
from core.errors import InputError

#: The repository's expert order (``CONFIG['experts']['names']`` without ``_baseline``).
REPO_EXPERTS = ("ce", "logitadjust", "balsoftmax")
REPO_TOP_K = 5
REPO_HIDDEN_DIMS = (128, 64)
_EPS = 1e-8


def _canonical(name: str) -> str:
    return name[: -len("_baseline")] if name.endswith("_baseline") else name


def check_expert_order(checkpoint_names: Sequence[str], bundle_names: Sequence[str], *,
                       checkpoint: str | Path, bundle: str | Path | None) -> None:
    """InputError when a bundle's experts are not the checkpoint's, in the same order.

    The gate's inputs are per-expert features, so swapped experts give other weights
    and other decisions without any shape error.
    """
    ck, bd = [str(n) for n in checkpoint_names], [str(n) for n in bundle_names]
    if ck == bd:
        return
    if sorted(ck) == sorted(bd):
        problem = f"expert order {bd} differs from the checkpoint's {ck} ({checkpoint})"
        hint = f"the checkpoint's order (re-import with --experts {','.join(ck)})"
    else:
        problem = (f"experts {bd} (E={len(bd)}) are not the checkpoint's {ck} "
                   f"(E={len(ck)}, {checkpoint})")
        hint = "the bundle the checkpoint was trained on"
    raise InputError(problem, file=bundle or "bundle", field="expert_names", expected=hint)


def repo_features(expert_logits: torch.Tensor, top_k: int = REPO_TOP_K) -> torch.Tensor:
    """The repository's ``GatingFeatureBuilder``: raw logits ``[B, E, C]`` -> ``[B, 7E+3]``.

    Per expert (feature-major): entropy, top-k mass, residual mass, max prob, top1-top2
    gap, cosine and KL to the mean posterior; global: mean-posterior entropy, mean
    (unbiased) cross-expert variance, std of the experts' max prob (NaN for E = 1, as
    there).
    """
    x = expert_logits.float()
    p = torch.softmax(x, dim=-1)
    log_p = torch.log(p + _EPS)
    entropy = -(p * log_p).sum(-1)
    topk = torch.topk(p, k=min(top_k, p.size(-1)), dim=-1).values
    mass = topk.sum(-1)
    max_p = p.max(dim=-1).values
    gap = topk[..., 0] - topk[..., 1] if topk.size(-1) >= 2 else torch.zeros_like(max_p)
    mean_p = p.mean(dim=1)
    cosine = F.cosine_similarity(p, mean_p.unsqueeze(1), dim=-1)
    kl = (p * (log_p - torch.log(mean_p.unsqueeze(1) + _EPS))).sum(-1)
    mean_entropy = -(mean_p * torch.log(mean_p + _EPS)).sum(-1)
    mean_var = p.var(dim=1).mean(dim=-1)
    std_max = max_p.std(dim=-1)
    per_expert = torch.cat([entropy, mass, 1.0 - mass, max_p, gap, cosine, kl], dim=1)
    return torch.cat([per_expert, torch.stack([mean_entropy, mean_var, std_max], dim=1)], dim=1)


class RepoRule:
    """The repository's decision rule with one checkpoint's gate, alpha, mu and t_param.

    Attributes:
        order: bundle expert index fed at each of the repository's expert positions
            (identity unless the checkpoint's experts are the repository's in another
            order).
        reasons: why this rule may decide differently from seltune's predictor.
    """

    def __init__(self, ckpt: dict[str, Any]):
        e = int(ckpt["num_experts"])
        k = int(ckpt["num_groups"])
        cfg = ckpt.get("config", {}) or {}
        hidden = tuple(int(h) for h in ckpt.get("hidden_dims", cfg.get("hidden_dims",
                                                                        REPO_HIDDEN_DIMS)))
        # dropout is inactive in eval mode; the net is built as the checkpoint's so that
        # its state dict loads (see the hidden_dims reason below)
        self.net = GatingNet(int(ckpt["gating_feature_dim"]), hidden, e, 0.1)
        self.net.load_state_dict(ckpt["gating_net_state_dict"])
        self.net.eval()
        self.alpha = torch.as_tensor(ckpt.get("alpha", torch.ones(k)), dtype=torch.float32)
        self.mu = torch.as_tensor(ckpt.get("mu", torch.zeros(k)), dtype=torch.float32)
        self.t = torch.as_tensor(ckpt.get("t_param", torch.full((k,), -float("inf"))),
                                 dtype=torch.float32)
        self.c2g = torch.as_tensor(ckpt["class_to_group"], dtype=torch.int64)
        names = [str(n) for n in (ckpt.get("expert_names") or [f"expert{i}" for i in range(e)])]
        self.expert_names = names
        self.order = list(range(e))
        reasons: list[str] = []
        margin = str(ckpt.get("margin", "seed"))
        if margin != "seed":
            reasons.append(f"margin={margin} (repo applies the seed margin: argmax alpha*eta)")
        temps = ckpt.get("temperatures")
        if isinstance(temps, dict):
            values = [float(temps.get(n, 1.0)) for n in names]
        elif temps is not None:
            values = [float(x) for x in temps]
        else:
            values = [1.0] * e
        if any(abs(v - 1.0) > 1e-6 for v in values):
            shown = ", ".join(f"{n}={v:.3g}" for n, v in zip(names, values))
            reasons.append(f"temperatures fitted ({shown}; repo applies none)")
        top_k = int(ckpt.get("top_k", cfg.get("top_k", REPO_TOP_K)))
        if top_k != REPO_TOP_K:
            reasons.append(f"top_k={top_k} (repo uses {REPO_TOP_K})")
        if hidden != REPO_HIDDEN_DIMS:
            reasons.append(f"hidden_dims={list(hidden)} (repo builds {list(REPO_HIDDEN_DIMS)} "
                           "and cannot load this gate; its decisions here assume it could)")
        canon = [_canonical(n) for n in names]
        if sorted(canon) == sorted(REPO_EXPERTS) and len(set(canon)) == e:
            self.order = [canon.index(r) for r in REPO_EXPERTS]
            if self.order != list(range(e)):
                reasons.append(f"expert order {', '.join(names)} (repo feeds "
                               f"{', '.join(REPO_EXPERTS)}: the gate sees its experts swapped)")
        self.reasons = reasons

    @torch.no_grad()
    def decide(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert logits ``[N, E, C]`` (checkpoint order) -> ``(class [N], accept [N] bool,
        margin [N])`` as the repository computes them."""
        x = logits.float()[:, self.order, :]
        w = torch.softmax(self.net(repo_features(x)), dim=1)
        eta = torch.einsum("be,bec->bc", w, torch.softmax(x, dim=-1))
        alpha_c = self.alpha[self.c2g]
        scored = alpha_c * eta
        pred = scored.argmax(dim=1)
        margin = scored.max(dim=1).values - ((1.0 / alpha_c - self.mu[self.c2g]) * eta).sum(dim=1)
        accept = margin >= self.t[self.c2g[pred]]
        return pred, accept, margin


def argse_repo_report(checkpoint_path: str | Path, bundle,
                      splits: Sequence[str] = ("val", "test")) -> dict[str, Any]:
    """Compare the repository's decisions with seltune's on ``bundle``'s ``splits``.

    Args:
        checkpoint_path: a ``*.ckpt`` or a directory holding one.
        bundle: the :class:`core.bundles.ExpertBundle` the checkpoint was trained on
            (same experts, same order; checked).
        splits: splits present in the bundle to compare on (others are skipped).

    Returns:
        ``{"agreement": {split: fraction of rows whose (class, accept) agree},
        "metrics": {split: selective_metrics of the repository's rule},
        "differs_because": [short reasons]}`` (empty reasons when the repository's
        rule is the checkpoint's own).
    """
    ckpt = load_checkpoint(checkpoint_path)
    file = ckpt["_file"]
    names = ckpt.get("expert_names")
    if names:
        check_expert_order(names, bundle.expert_names, checkpoint=file,
                           bundle=getattr(bundle, "path", None))
    predictor = load_predictor(file, device="cpu")
    check_bundle_matches(predictor, bundle)
    rule = RepoRule(ckpt)
    k = int(ckpt["num_groups"])
    agreement: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    for split in splits:
        if split not in bundle.splits:
            continue
        logits, labels = split_tensors(bundle, split)
        ours_pred, ours_acc, _, _ = predictor.decide(logits)
        pred, acc, margin = rule.decide(logits)
        same = (pred == ours_pred) & (acc == ours_acc)
        agreement[split] = float(same.float().mean())
        conf = margin - rule.t[rule.c2g[pred]]
        metrics[split] = selective_metrics(conf, pred, labels, rule.c2g, k, accept=acc)
    return {"agreement": agreement, "metrics": metrics, "differs_because": list(rule.reasons)}


def report_line(report: dict[str, Any]) -> str:
    """One stderr line summarising :func:`argse_repo_report`'s result."""
    agree = ", ".join(f"{s} {v:.1%}" for s, v in report["agreement"].items())
    line = f"AR-GSE repository rule agrees with seltune on {agree or 'no split'}"
    if report["differs_because"]:
        line += "; differs because: " + "; ".join(report["differs_because"])
    return line


__all__ = ["REPO_EXPERTS", "RepoRule", "argse_repo_report", "check_expert_order",
           "repo_features", "report_line"]
