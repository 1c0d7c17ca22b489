"""Calibration and accuracy metrics of class probabilities (docs/METHODS.md §5).

Shapes: N samples, C classes. ``probs [N, C]`` are probabilities (rows sum to 1 within
1e-3, entries in [0, 1]); ``labels [N]`` are integer classes in ``[0, C)``.

Binning (ECE and classwise-ECE): ``n_bins`` equal-width bins over [0, 1]; bin ``b``
holds confidences in ``(b/n_bins, (b+1)/n_bins]`` (Guo et al., ICML 2017), and a
confidence of exactly 0 goes to the first bin. Empty bins contribute nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import InputError
from core.metrics.groups import _int_vector
from core.metrics.risk_coverage import _same_length, _to_numpy

__all__ = ["accuracy", "brier", "classwise_ece", "ece", "nll"]

_ROW_SUM_TOL = 1e-3
_ENTRY_TOL = 1e-6


def _probs(value: Any) -> np.ndarray:
    arr = _to_numpy(value)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise InputError(f"shape {arr.shape}", field="probs",
                         expected="a 2-D array [N, C] with N >= 1 and C >= 2")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"dtype {arr.dtype}", field="probs", expected="real numbers")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise InputError(f"non-finite value in row {row}", field="probs",
                         expected="finite probabilities")
    out_of_range = (arr < -_ENTRY_TOL) | (arr > 1 + _ENTRY_TOL)
    if out_of_range.any():
        row, col = (int(i[0]) for i in np.nonzero(out_of_range))
        raise InputError(f"value {arr[row, col]!r} at [{row}, {col}]", field="probs",
                         expected="probabilities in [0, 1] (pass softmax(logits), not logits)")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > _ROW_SUM_TOL
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"row {row} sums to {sums[row]!r}", field="probs",
                         expected="rows summing to 1")
    return arr


def _probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _probs(probs)
    y = _int_vector(labels, "labels", upper=p.shape[1])
    _same_length({"probs": p, "labels": y})
    return p, y


def _n_bins(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(field="n_bins", value=value, expected="an integer >= 1")
    return int(value)


def _bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each value in (b/n, (b+1)/n]; 0 goes to bin 0."""
    return np.clip(np.ceil(values * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _binned_gap(conf: np.ndarray, hit: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """``Σ_b (n_b / N) |mean(hit)_b − mean(conf)_b|`` = ``Σ_b |Σ_b hit − Σ_b conf| / N``."""
    sum_conf = np.bincount(bins, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(bins, weights=hit, minlength=n_bins)
    return float(np.abs(sum_hit - sum_conf).sum() / len(conf))


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins (Guo et al., 2017).

    ``ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` where the confidence is the max
    probability and the prediction its argmax (ties: lowest class index).
    """
    p, y = _probs_labels(probs, labels)
    bins_n = _n_bins(n_bins)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    return _binned_gap(conf, hit, _bin_index(conf, bins_n), bins_n)


def classwise_ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., NeurIPS 2019): the mean over classes c of the ECE of
    the one-vs-rest forecast ``p_c`` against ``1[y = c]``, each over all N samples with
    the same equal-width bins.
    """
    p, y = _probs_labels(probs, labels)
    bins_n = _n_bins(n_bins)
    n, c = p.shape
    hit = np.zeros_like(p)
    hit[np.arange(n), y] = 1.0
    # One bincount over (class, bin) pairs instead of a loop over classes.
    flat = (np.arange(c)[None, :] * bins_n + _bin_index(p, bins_n)).ravel()
    sum_conf = np.bincount(flat, weights=p.ravel(), minlength=c * bins_n)
    sum_hit = np.bincount(flat, weights=hit.ravel(), minlength=c * bins_n)
    return float(np.abs(sum_hit - sum_conf).sum() / n / c)


def nll(probs: Any, labels: Any, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood ``−mean_i log max(p_{i, y_i}, eps)`` in nats."""
    p, y = _probs_labels(probs, labels)
    if not (isinstance(eps, (int, float)) and 0.0 < eps < 1.0):
        raise InputError(field="eps", value=eps, expected="a number in (0, 1)")
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], eps))))


def brier(probs: Any, labels: Any) -> float:
    """Multiclass Brier score: ``mean_i Σ_c (p_ic − 1[y_i = c])²``, in [0, 2].

    This is Brier's original (1950) convention, summed over classes, not divided by C.
    """
    p, y = _probs_labels(probs, labels)
    sq = np.square(p).sum(axis=1)
    # Σ_c (p_c − onehot_c)² = Σ_c p_c² − 2 p_y + 1, without building the one-hot matrix.
    return float(np.mean(sq - 2.0 * p[np.arange(len(y)), y] + 1.0))


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of ``predictions [N]`` equal to ``labels [N]``."""
    pred = _int_vector(predictions, "predictions")
    y = _int_vector(labels, "labels")
    _same_length({"predictions": pred, "labels": y})
    return float(np.mean(pred == y))
