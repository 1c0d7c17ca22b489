"""The operating point: one coverage at which every candidate rule is judged.

Selective classifiers are compared at the same coverage (or by coverage-free areas):
comparing each at its own coverage rewards rejecting more. :func:`shift_to_coverage`
moves a rule's confidences by one constant so that exactly ``round(coverage · N)``
samples of the split are accepted under ``accept iff confidence > 0`` (ties at the cut
are accepted or rejected together, so a tie block can make the realised coverage
differ; :func:`coverage_gap` measures that). The shift uses no labels: it is the
threshold a deployment would set on unlabelled data from the split's distribution,
and it is what "risk at coverage c" means in the literature (SelectiveNet; Narasimhan
et al., ICLR 2024, Table 2; Traub et al., NeurIPS 2024).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import InputError
from core.metrics.risk_coverage import _confidences

__all__ = ["check_coverage", "coverage_gap", "coverage_shift", "shift_to_coverage"]


def check_coverage(coverage: Any, field: str = "coverage") -> float:
    """``coverage`` as a float in (0, 1]; InputError naming ``field`` otherwise."""
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        raise InputError(field=field, value=coverage, expected="a number in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise InputError(field=field, value=coverage, expected="a number in (0, 1]")
    return value


def coverage_shift(confidence: Any, coverage: float) -> float:
    """The constant ``s`` such that ``round(coverage · N)`` of ``confidence [N]`` are ``> s``.

    ``s`` is the midpoint between the ``n``-th and ``(n+1)``-th largest confidence
    (``n = round(coverage · N)``, at least 1); below the smallest one at ``n = N``.
    A threshold rule ``accept iff m > t`` operates at the coverage with ``t + s``.
    """
    conf = _confidences(confidence).astype(np.float64)
    c = check_coverage(coverage)
    n_all = conf.size
    if n_all == 0:
        return 0.0
    n = min(max(round(c * n_all), 1), n_all)
    desc = np.sort(conf)[::-1]
    if n == n_all:
        return float(desc[-1] - 1.0)
    hi, lo = desc[n - 1], desc[n]
    # equal values straddle the cut: the whole tie block goes one way (rejected, since
    # ``> s`` fails for it), which coverage_gap reports
    return float((hi + lo) / 2.0 if hi > lo else hi)


def shift_to_coverage(confidence: Any, coverage: float) -> np.ndarray:
    """``confidence [N] - coverage_shift(confidence, coverage)``, float64 ``[N]``: exactly
    ``round(coverage · N)`` values are ``> 0`` (ties aside); order and distances kept."""
    conf = _confidences(confidence).astype(np.float64)
    return conf - coverage_shift(conf, coverage)


def coverage_gap(accept: Any, coverage: float) -> float:
    """``|mean(accept) - coverage|``: how far a rule's realised coverage is from the
    operating point (0 up to rounding for :func:`shift_to_coverage`)."""
    acc = np.asarray(accept, dtype=bool)
    if acc.size == 0:
        return float(coverage)
    return float(abs(acc.mean() - float(coverage)))
