"""Metrics of a selective rule on one split: the one function train, evaluate,
baselines and export share (ALGORITHMS.md §2 "Evaluation", §4).

A rule is given by its predictions ``ŷ [N]`` and confidences ``conf [N]`` with
acceptance ``conf > 0``; for AR-GSE ``conf = m(x) - t[group(ŷ)]``. All numbers come
from :mod:`core.metrics`.
"""

from __future__ import annotations

import numpy as np
import torch

from core import metrics as M

#: Keys every AR-GSE metrics dict has (plus ``coverage_g{k}``/``error_g{k}``).
HEADLINE = ("augrc", "aurc", "worst_group_error", "balanced_error", "coverage",
            "selective_error", "area_balanced_error", "area_worst_group_error", "accuracy")


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def selective_metrics(confidence, predictions, labels, class_to_group, num_groups: int,
                      accept=None) -> dict[str, float]:
    """Metrics dict of a selective rule.

    Args:
        confidence: ``[N]`` float, larger = more confident; accepted iff ``> 0`` unless
            ``accept`` is given.
        predictions, labels: ``[N]`` int64 classes.
        class_to_group: ``[C]`` int64.
        num_groups: K.
        accept: optional ``[N]`` bool overriding ``confidence > 0``.

    Returns: ``augrc``, ``aurc`` (over the confidence ranking), the operating point's
    ``coverage``, ``selective_error``, ``balanced_error``, ``worst_group_error``,
    ``coverage_g{k}``, ``error_g{k}``, ``empty_groups``, the areas under the balanced
    and worst-group error curves over rejection rates [0, 0.8], and the full-coverage
    ``accuracy`` of the predictions. Python floats.
    """
    conf = _np(confidence).astype(np.float64)
    pred = _np(predictions).astype(np.int64)
    lab = _np(labels).astype(np.int64)
    c2g = _np(class_to_group).astype(np.int64)
    acc = conf > 0 if accept is None else _np(accept).astype(bool)
    groups = c2g[lab]
    residuals = (pred != lab).astype(np.float64)
    out: dict[str, float] = {"augrc": float(M.augrc(conf, residuals)),
                             "aurc": float(M.aurc(conf, residuals))}
    out.update(M.group_selective_report(acc, pred, lab, groups, num_groups))
    curves = M.group_error_curves(conf, pred, lab, groups, num_groups)
    out.update(M.area_under_group_curves(curves))
    out["accuracy"] = float(M.accuracy(pred, lab))
    return {k: float(v) for k, v in out.items()}
