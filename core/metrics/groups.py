"""Group-aware selective classification metrics (docs/METHODS.md §3, §5).

Shapes: B samples, K groups. Groups partition the *classes* (head/tail by default);
``label_groups[i]`` is the group of sample i's **true** label, i.e.
``class_to_group[labels]``. (Any partition of the samples works the same way, e.g.
Stage-1's per-sample source groups or one group per class.) Following Narasimhan et al. (ICLR 2024, "Learning to Reject
Meets Long-tail Learning"), with ``a_i`` the accept decision:

- per-group coverage ``c_k = P(accept | y ∈ G_k)``;
- per-group selective error ``e_k = P(ŷ ≠ y | accept, y ∈ G_k)``;
- balanced error ``mean_k e_k``; worst-group error ``max_k e_k``;
- selective error ``P(ŷ ≠ y | accept)`` over all groups; coverage ``P(accept)``.

Empty groups: when a group has no accepted sample its conditional error is undefined.
We set it to **1.0** (the worst case), the convention of the AR-GSE reference code
(``calculate_selective_errors``), and report how many groups were empty under
``empty_groups``. The worst case matters for optimisation: with 0.0 a search over
thresholds or ``μ`` could "win" by rejecting an entire group. Likewise the selective
error with nothing accepted is 1.0, and a group with no samples at all has coverage 0.0
(and, having nothing accepted, error 1.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import InputError
from core.metrics.risk_coverage import _confidences, _no_nan, _same_length, _vector

__all__ = [
    "DEFAULT_REJECTION_RATES",
    "area_under_group_curves",
    "group_error_curves",
    "group_selective_report",
]

# Rejection rates 0, 0.01, ..., 0.8: the range plotted by Narasimhan et al.
DEFAULT_REJECTION_RATES = np.linspace(0.0, 0.8, 81)
DEFAULT_REJECTION_RATES.setflags(write=False)  # shared constant: callers get copies

# Guards floor(r·B) against r·B landing a hair below an integer (0.3·10 = 2.9999...).
_FLOOR_EPS = 1e-9


def _num_groups(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(field="num_groups", value=value, expected="an integer >= 1")
    return int(value)


def _int_vector(value: Any, name: str, upper: int | None = None) -> np.ndarray:
    """Integer-valued 1-D array in ``[0, upper)``, as int64."""
    arr = _vector(value, name)
    if arr.dtype == bool:
        raise InputError("dtype bool", field=name, expected="integer class/group indices")
    if not np.issubdtype(arr.dtype, np.integer):
        _no_nan(arr, name)
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))[0])
            raise InputError(f"value {arr[bad]!r} at index {bad}", field=name,
                             expected="integer indices")
    arr = arr.astype(np.int64, copy=False)
    bad_mask = arr < 0 if upper is None else (arr < 0) | (arr >= upper)
    if bad_mask.any():
        bad = int(np.flatnonzero(bad_mask)[0])
        expected = "indices >= 0" if upper is None else f"indices in [0, {upper})"
        raise InputError(f"value {int(arr[bad])} at index {bad}", field=name, expected=expected)
    return arr


def _accept_vector(value: Any) -> np.ndarray:
    arr = _vector(value, "accept")
    if arr.dtype != bool:
        _no_nan(arr, "accept")
        if not np.all((arr == 0) | (arr == 1)):
            bad = int(np.flatnonzero((arr != 0) & (arr != 1))[0])
            raise InputError(f"value {arr[bad]!r} at index {bad}", field="accept",
                             expected="booleans or 0/1")
        arr = arr.astype(bool)
    return arr


def _report_from_counts(
    n_g: np.ndarray, acc_g: np.ndarray, err_g: np.ndarray,
) -> dict[str, np.ndarray]:
    """Metrics from per-group counts (any leading shape ``[..., K]``).

    ``n_g``: samples per group, ``acc_g``: accepted per group, ``err_g``: accepted and
    wrong per group. Returns arrays of shape ``[...]`` (scalars) and ``[..., K]``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        coverage_g = np.where(n_g > 0, acc_g / np.maximum(n_g, 1), 0.0)
        error_g = np.where(acc_g > 0, err_g / np.maximum(acc_g, 1), 1.0)
    total_acc = acc_g.sum(axis=-1)
    total_err = err_g.sum(axis=-1)
    return {
        "coverage": total_acc / n_g.sum(axis=-1),
        "selective_error": np.where(total_acc > 0, total_err / np.maximum(total_acc, 1), 1.0),
        "balanced_error": error_g.mean(axis=-1),
        "worst_group_error": error_g.max(axis=-1),
        "coverage_g": coverage_g,
        "error_g": error_g,
        "empty_groups": (acc_g == 0).sum(axis=-1),
    }


def group_selective_report(
    accept: Any, predictions: Any, labels: Any, label_groups: Any, num_groups: int,
) -> dict[str, float]:
    """Coverage and selective errors, overall and per group, of hard accept decisions.

    Args:
        accept: ``[B]`` bool (or 0/1), True = the prediction is accepted.
        predictions: ``[B]`` predicted class ``ŷ``.
        labels: ``[B]`` true class ``y``.
        label_groups: ``[B]`` group of the true class, in ``[0, num_groups)``.
        num_groups: K.

    Returns:
        ``{"coverage", "selective_error", "balanced_error", "worst_group_error",
        "coverage_g0".."coverage_g{K-1}", "error_g0".."error_g{K-1}", "empty_groups"}``,
        python floats. Groups with no accepted sample have ``error_g{k} = 1.0`` (module
        docstring) and are counted in ``empty_groups``.
    """
    k = _num_groups(num_groups)
    acc = _accept_vector(accept)
    pred = _int_vector(predictions, "predictions")
    lab = _int_vector(labels, "labels")
    grp = _int_vector(label_groups, "label_groups", upper=k)
    _same_length({"accept": acc, "predictions": pred, "labels": lab, "label_groups": grp})
    wrong = pred != lab
    n_g = np.bincount(grp, minlength=k).astype(np.float64)
    acc_g = np.bincount(grp, weights=acc.astype(np.float64), minlength=k)
    err_g = np.bincount(grp, weights=(acc & wrong).astype(np.float64), minlength=k)
    stats = _report_from_counts(n_g, acc_g, err_g)
    report: dict[str, float] = {
        name: float(stats[name])
        for name in ("coverage", "selective_error", "balanced_error", "worst_group_error")
    }
    for g in range(k):
        report[f"coverage_g{g}"] = float(stats["coverage_g"][g])
    for g in range(k):
        report[f"error_g{g}"] = float(stats["error_g"][g])
    report["empty_groups"] = float(stats["empty_groups"])
    return report


def _rates(value: Any) -> np.ndarray:
    arr = _vector(value, "rejection_rates").astype(np.float64, copy=False)
    _no_nan(arr, "rejection_rates")
    bad = (arr < 0.0) | (arr > 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"value {arr[first]!r} at index {first}", field="rejection_rates",
                         expected="rates in [0, 1]")
    return arr


def group_error_curves(
    confidences: Any, predictions: Any, labels: Any, label_groups: Any, num_groups: int,
    rejection_rates: Any = None,
) -> dict[str, np.ndarray]:
    """Balanced and worst-group selective error as functions of the rejection rate.

    For each rate ``r`` the ``floor(r·B)`` least confident samples are rejected (the
    threshold is the confidence percentile), except that a tie block straddling the cut
    is accepted whole (accept iff ``κ ≥`` the confidence of the last accepted sample),
    consistent with :func:`~core.metrics.risk_coverage.risk_coverage_curve`; the
    realised coverage is returned. ``r = 1`` rejects everything (errors 1.0).

    Args:
        confidences: ``[B]`` confidence ``κ`` (AR-GSE: margin minus threshold).
        predictions, labels, label_groups, num_groups: as in
            :func:`group_selective_report`.
        rejection_rates: ``[R]`` in [0, 1]; default ``np.linspace(0, 0.8, 81)``.

    Returns:
        dict of numpy arrays: ``rejection_rates [R]``, ``coverage [R]`` (realised),
        ``balanced_error [R]``, ``worst_group_error [R]``, ``selective_error [R]``,
        ``group_error [R, K]``, ``group_coverage [R, K]``.

    Cost: ``O(B log B + R·K·log B)``; no Python loop over samples or groups.
    """
    k = _num_groups(num_groups)
    conf = _confidences(confidences)
    pred = _int_vector(predictions, "predictions")
    lab = _int_vector(labels, "labels")
    grp = _int_vector(label_groups, "label_groups", upper=k)
    _same_length({"confidences": conf, "predictions": pred, "labels": lab,
                  "label_groups": grp})
    rates = DEFAULT_REJECTION_RATES.copy() if rejection_rates is None else _rates(rejection_rates)
    b = len(conf)

    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    sorted_grp = grp[order]
    sorted_wrong = (pred != lab)[order]
    # Ends (exclusive) of the tie blocks in the sorted order, ascending, last = B.
    ends = np.concatenate((np.flatnonzero(sorted_conf[:-1] != sorted_conf[1:]) + 1, [b]))
    raw_accept = b - np.floor(rates * b + _FLOOR_EPS).astype(np.int64)
    raw_accept = np.clip(raw_accept, 0, b)
    n_accept = np.where(raw_accept > 0,
                        ends[np.searchsorted(ends, np.maximum(raw_accept, 1), side="left")], 0)

    # The number of group-g samples among the top a is the number of their sorted
    # positions below a. Encode (group, position) as one sorted key g·(B+1) + position so
    # that a single searchsorted answers every (rate, group) pair: O(B log B + R·K log B)
    # with no loop, also when K is large (per-class groups).
    def counts_below(mask: np.ndarray) -> np.ndarray:
        keys = np.sort(sorted_grp[mask] * (b + 1) + np.flatnonzero(mask))
        base = np.arange(k) * (b + 1)
        starts = np.searchsorted(keys, base, side="left")
        below = np.searchsorted(keys, base[None, :] + n_accept[:, None], side="left")
        return (below - starts[None, :]).astype(np.float64)  # [R, K]

    acc_g = counts_below(np.ones(b, dtype=bool))
    err_g = counts_below(sorted_wrong)
    n_g = np.bincount(grp, minlength=k).astype(np.float64)
    stats = _report_from_counts(np.broadcast_to(n_g, acc_g.shape), acc_g, err_g)
    return {
        "rejection_rates": rates,
        "coverage": n_accept / b,
        "balanced_error": stats["balanced_error"],
        "worst_group_error": stats["worst_group_error"],
        "selective_error": stats["selective_error"],
        "group_error": stats["error_g"],
        "group_coverage": stats["coverage_g"],
    }


def area_under_group_curves(curves: dict[str, Any]) -> dict[str, float]:
    """Normalised areas under the balanced and worst-group error curves.

    Trapezoid over the curves' rejection rates, divided by the width of their range
    (``max − min``; 0.8 for the default rates [0, 0.8]), so the area is the *mean* error
    over that range and lies in [0, 1].

    Args:
        curves: the output of :func:`group_error_curves` (needs ``rejection_rates``,
            strictly increasing with at least two values, ``balanced_error`` and
            ``worst_group_error``).

    Returns:
        ``{"balanced_area": float, "worst_group_area": float}``: the mean balanced and
        worst-group error over the rejection rates (areas normalised by the range's
        width, 0.8 for [0, 0.8], as in Narasimhan et al., ICLR 2024, Table 2).
    """
    for key in ("rejection_rates", "balanced_error", "worst_group_error"):
        if key not in curves:
            raise InputError("missing key", field=f"curves[{key!r}]",
                             expected="the dict returned by group_error_curves")
    rates = _rates(curves["rejection_rates"])
    if len(rates) < 2 or np.any(np.diff(rates) <= 0):
        raise InputError(f"{len(rates)} value(s), not strictly increasing or too few",
                         field="rejection_rates",
                         expected="at least two strictly increasing rates")
    width = rates[-1] - rates[0]
    out: dict[str, float] = {}
    for key, name in (("balanced_error", "balanced_area"),
                      ("worst_group_error", "worst_group_area")):
        values = np.asarray(curves[key], dtype=np.float64)
        if values.shape != rates.shape:
            raise InputError(f"shape {values.shape}", field=f"curves[{key!r}]",
                             expected=f"shape {rates.shape} like rejection_rates")
        area = np.sum(np.diff(rates) * (values[:-1] + values[1:])) / 2.0
        out[name] = float(area / width)
    return out
