"""Metrics of a selective rule on one split: the one function train, evaluate,
baselines and export share (docs/METHODS.md §3, §5).

A rule is given by its predictions ``ŷ [N]`` and confidences ``conf [N]`` with
acceptance ``conf > 0``; for AR-GSE ``conf = m(x) - t[group(ŷ)]``. With ``coverage``
(the operating point) the confidences are first shifted by one constant so that the
split's coverage is that point (:func:`core.metrics.shift_to_coverage`): every rule,
model or baseline, is then judged at the same coverage. All numbers come from
:mod:`core.metrics`.
"""

from __future__ import annotations

import numpy as np
import torch

from core import metrics as M

#: Keys every AR-GSE metrics dict has (plus ``coverage_g{k}``/``error_g{k}``).
HEADLINE = ("augrc", "aurc", "worst_group_error", "balanced_error", "coverage",
            "selective_error", "balanced_area", "worst_group_area", "accuracy")


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def selective_metrics(confidence, predictions, labels, class_to_group, num_groups: int,
                      accept=None, coverage: float | None = None) -> dict[str, float]:
    """Metrics dict of a selective rule.

    Args:
        confidence: ``[N]`` float, larger = more confident; accepted iff ``> 0`` unless
            ``accept`` is given.
        predictions, labels: ``[N]`` int64 classes.
        class_to_group: ``[C]`` int64.
        num_groups: K.
        accept: optional ``[N]`` bool overriding ``confidence > 0`` (ignored when
            ``coverage`` is given).
        coverage: the operating point in (0, 1]: judge the rule at this coverage on
            this split (the confidences are shifted; ``coverage_gap`` is added).

    Returns: ``augrc``, ``aurc`` (over the confidence ranking), the operating point's
    ``coverage``, ``selective_error``, ``balanced_error``, ``worst_group_error``,
    ``coverage_g{k}``, ``error_g{k}``, ``empty_groups``, the areas under the balanced
    and worst-group error curves over rejection rates [0, 0.8], and the full-coverage
    ``accuracy`` of the predictions (``balanced_area``, ``worst_group_area``: mean error
    over rejection rates [0, 0.8], i.e. the area divided by 0.8, as in Narasimhan et
    al., ICLR 2024, Table 2). Python floats.
    """
    conf = _np(confidence).astype(np.float64)
    if coverage is not None:
        conf = M.shift_to_coverage(conf, coverage)
        accept = None
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
    if coverage is not None:
        out["coverage_gap"] = M.coverage_gap(acc, coverage)
    return {k: float(v) for k, v in out.items()}
