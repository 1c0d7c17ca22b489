"""Risk-coverage curves and their areas: AUGRC, AURC, risk@coverage, coverage@risk.

docs/METHODS.md §5. Reference: fd-shifts (``IML-DKFZ/fd-shifts``,
``fd_shifts/analysis/rc_stats.py``) and Traub et al., "Overcoming Common Flaws in the
Evaluation of Selective Classification Systems", NeurIPS 2024.

Symbols (N samples): confidence ``κ_i`` (higher = more confident, accepted first) and
residual ``r_i ∈ [0, 1]`` (``1[ŷ_i ≠ y_i]`` for classification). Accepting the samples
with ``κ ≥ θ`` gives

- coverage ``φ(θ) = #{κ_i ≥ θ} / N``,
- generalized risk ``R_g(θ) = Σ_{κ_i ≥ θ} r_i / N`` (the joint probability of "accepted
  and wrong"),
- selective risk ``R_s(θ) = Σ_{κ_i ≥ θ} r_i / #{κ_i ≥ θ}``.

Ties: samples with equal confidence are accepted or rejected together (one curve point
per distinct confidence, a straight line across the tie), as in fd-shifts. For the
generalized risk this straight line is exactly the expectation over random tie-breaks,
so AUGRC with ties equals the mean AUGRC over all orderings of the tied samples.

Everything is vectorised: one sort, one cumulative sum, O(N log N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError

__all__ = [
    "RiskCoverageCurve",
    "augrc",
    "aurc",
    "coverage_at_risk",
    "risk_at_coverage",
    "risk_coverage_curve",
]

# Slack for comparing a requested coverage/risk with values computed as k/N or S/k, so
# that e.g. coverage 0.3 matches the working point 3/10 whatever the rounding.
_TOL = 1e-12


# --------------------------------------------------------------------------- inputs


def _to_numpy(value: Any) -> np.ndarray:
    """``np.asarray`` that also takes torch tensors (on any device, with grad)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _vector(value: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """A 1-D numeric array, or an InputError naming ``name``."""
    arr = _to_numpy(value)
    if arr.ndim != 1:
        raise InputError(f"shape {arr.shape}", field=name, expected="a 1-D array [N]")
    if arr.size == 0 and not allow_empty:
        raise InputError("empty array", field=name, expected="at least one sample")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"dtype {arr.dtype}", field=name, expected="numbers")
    return arr


def _same_length(arrays: dict[str, np.ndarray]) -> None:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise InputError(f"length mismatch ({shown})", field=next(iter(arrays)),
                         expected="the same number of samples in every argument")


def _no_nan(arr: np.ndarray, name: str) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.isnan(arr)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(f"{int(bad.sum())} NaN value(s), first at index {first}",
                             field=name, expected="no NaN")


def _confidences(value: Any, name: str = "confidences") -> np.ndarray:
    """Confidences ``[N]`` as float64; ``±inf`` is allowed (it sorts), NaN is not."""
    arr = _vector(value, name)
    _no_nan(arr, name)
    return arr.astype(np.float64, copy=False)


def _residuals(value: Any, name: str = "residuals") -> np.ndarray:
    """Residuals ``[N]`` in [0, 1] as float64."""
    arr = _vector(value, name).astype(np.float64, copy=False)
    _no_nan(arr, name)
    bad = (arr < 0.0) | (arr > 1.0) | ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"value {arr[first]!r} at index {first}", field=name,
                         expected="residuals in [0, 1]")
    return arr


def _unit_interval(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(field=name, value=value, expected="a number in [0, 1]") from None
    if not 0.0 <= number <= 1.0:
        raise InputError(field=name, value=value, expected="a number in [0, 1]")
    return number


# --------------------------------------------------------------------------- curve


@dataclass(frozen=True)
class RiskCoverageCurve:
    """The working points of a selective classifier, from full coverage down to 0.

    All arrays have shape ``[P]`` with ``P = (number of distinct confidences) + 1``.
    Point ``i`` accepts the samples with ``confidence ≥ thresholds[i]``.

    Attributes:
        coverage: fraction accepted, strictly decreasing from 1.0 to 0.0.
        selective_risk: mean residual among the accepted samples. At the final
            coverage-0 point nothing is accepted and the ratio is undefined; following
            fd-shifts it repeats the selective risk of the smallest non-zero coverage,
            so the AURC trapezoid ends with a flat segment.
        generalized_risk: sum of accepted residuals divided by N; 0.0 at coverage 0.
        thresholds: the lowest accepted confidence of each point (``+inf`` at the
            coverage-0 point, which accepts nothing).
    """

    coverage: np.ndarray
    selective_risk: np.ndarray
    generalized_risk: np.ndarray
    thresholds: np.ndarray


def _sorted_blocks(confidences: np.ndarray, residuals: np.ndarray):
    """Sort by confidence (descending) and find the ends of the tie blocks.

    Returns ``(counts, cum_residuals, sorted_confidences)``: ``counts`` are the numbers
    of accepted samples at each working point, descending from N to 0 (``[P]``);
    ``cum_residuals[k]`` is the residual sum of the k most confident samples (``[N+1]``).
    """
    order = np.argsort(-confidences, kind="stable")
    conf = confidences[order]
    cum = np.empty(len(conf) + 1, dtype=np.float64)
    cum[0] = 0.0
    np.cumsum(residuals[order], out=cum[1:])
    # A working point ends after the last member of each tie block.
    ends = np.flatnonzero(conf[:-1] != conf[1:]) + 1
    counts = np.concatenate(([len(conf)], ends[::-1], [0]))
    return counts, cum, conf


def risk_coverage_curve(confidences: Any, residuals: Any) -> RiskCoverageCurve:
    """The risk-coverage curve, one point per distinct confidence plus ``(0, ·)``.

    Args:
        confidences: ``κ [N]``, higher means accept first. NaN is rejected.
        residuals: ``r [N]`` in [0, 1] (binary 0/1 for the 0-1 loss; floats allowed).

    Returns:
        A :class:`RiskCoverageCurve` ordered from coverage 1.0 down to 0.0.

    Raises:
        InputError (a ValueError): empty or non-1-D inputs, different lengths, NaN
            confidences, residuals outside [0, 1].
    """
    conf = _confidences(confidences)
    res = _residuals(residuals)
    _same_length({"confidences": conf, "residuals": res})
    counts, cum, sorted_conf = _sorted_blocks(conf, res)
    n = float(len(conf))
    accepted = counts[:-1]
    selective = cum[accepted] / accepted
    return RiskCoverageCurve(
        coverage=counts / n,
        selective_risk=np.concatenate((selective, selective[-1:])),
        generalized_risk=cum[counts] / n,
        thresholds=np.concatenate((sorted_conf[accepted - 1], [np.inf])),
    )


def _trapezoid(x_desc: np.ndarray, y: np.ndarray) -> float:
    """Area under ``y(x)`` for ``x`` sorted descending (trapezoid rule)."""
    return float(np.sum((x_desc[:-1] - x_desc[1:]) * (y[:-1] + y[1:])) / 2.0)


def augrc(confidences: Any, residuals: Any) -> float:
    """Area under the generalized risk-coverage curve (Traub et al., NeurIPS 2024).

    Trapezoid over the working points of :func:`risk_coverage_curve`, ending at (0, 0).
    A fraction in [0, 1] (at most the mean residual); fd-shifts prints the same number
    multiplied by 1000 (its ``AUC_DISPLAY_SCALE``). Interpretable as the average risk of
    undetected failures. For binary residuals with error rate ``err`` the optimum (every
    failure less confident than every success) is exactly ``err**2 / 2``, for any N.

    Computed in integer-exact arithmetic for binary residuals (the sum is
    ``Σ Δcount · (S_i + S_{i+1}) / (2 N²)`` with integer terms while they stay below 2**53).
    """
    conf = _confidences(confidences)
    res = _residuals(residuals)
    _same_length({"confidences": conf, "residuals": res})
    counts, cum, _ = _sorted_blocks(conf, res)
    n = float(len(conf))
    sums = cum[counts]
    twice_area_n2 = np.sum((counts[:-1] - counts[1:]).astype(np.float64) * (sums[:-1] + sums[1:]))
    return float(twice_area_n2 / (2.0 * n * n))


def aurc(confidences: Any, residuals: Any) -> float:
    """Area under the selective risk-coverage curve (trapezoid, as fd-shifts' ``aurc``).

    The last segment, from the smallest non-zero coverage to 0, is flat at that point's
    selective risk (see :class:`RiskCoverageCurve`). A fraction in [0, 1]; fd-shifts
    prints it x1000. All-correct predictions give exactly 0.
    """
    curve = risk_coverage_curve(confidences, residuals)
    return _trapezoid(curve.coverage, curve.selective_risk)


def risk_at_coverage(confidences: Any, residuals: Any, coverage: float) -> float:
    """Lowest selective risk among the working points with coverage ``≥ coverage``.

    The working points are those of :func:`risk_coverage_curve` except the final
    coverage-0 point (as fd-shifts' ``get_working_point``). ``coverage`` in [0, 1];
    full coverage is always a working point, so a value always exists.
    """
    target = _unit_interval(coverage, "coverage")
    curve = risk_coverage_curve(confidences, residuals)
    cov, risk = curve.coverage[:-1], curve.selective_risk[:-1]
    return float(np.min(risk[cov >= target - _TOL]))


def coverage_at_risk(confidences: Any, residuals: Any, risk: float) -> float:
    """Highest coverage among the working points with selective risk ``≤ risk``.

    Same working points as :func:`risk_at_coverage`. Returns 0.0 when no working point
    reaches the requested risk (the classifier must then reject everything).
    """
    target = _unit_interval(risk, "risk")
    curve = risk_coverage_curve(confidences, residuals)
    cov, sel = curve.coverage[:-1], curve.selective_risk[:-1]
    ok = sel <= target + _TOL
    return float(cov[ok].max()) if ok.any() else 0.0
