"""Metric names and their optimisation directions, in one place.

Every metric that training, baselines, Tune, export and evaluate report is listed in
:data:`METRIC_DIRECTIONS` with ``"min"`` (lower is better) or ``"max"`` (higher is
better). :func:`metric_direction` also resolves the derived names the project writes:

- per-group names ``coverage_g{k}`` (``max``) and ``error_g{k}`` (``min``);
- split/namespace prefixes separated by ``/``: ``val/augrc``, ``test/error_g1``;
- word prefixes separated by ``_``: ``uncal_ece``, ``val_worst_group_error``, resolved to
  the longest known suffix (``val_coverage_at_risk`` is ``coverage_at_risk``, not
  ``risk``);
- an operating-point suffix after ``@``: ``risk_at_coverage@0.8``.
"""

from __future__ import annotations

import re

from core.errors import InputError

MIN = "min"
MAX = "max"

METRIC_DIRECTIONS: dict[str, str] = {
    # risk-coverage family (core/metrics/risk_coverage.py)
    "augrc": MIN,
    "aurc": MIN,
    "risk_at_coverage": MIN,
    "coverage_at_risk": MAX,
    # group-aware selective classification (core/metrics/groups.py)
    "coverage": MAX,
    "selective_error": MIN,
    "balanced_error": MIN,
    "worst_group_error": MIN,
    # areas over rejection rates [0, 0.8], normalised by 0.8 (coverage-free)
    "balanced_area": MIN,
    "worst_group_area": MIN,
    # the names experiments before the operating point used (still read by status/export)
    "area_balanced_error": MIN,
    "area_worst_group_error": MIN,
    # distance of the realised coverage from the sweep's operating point
    "coverage_gap": MIN,
    # signed gap of a trial's objective to the strongest training-free baseline
    "gap_to_best_baseline": MIN,
    # number of groups with no accepted sample (their error is set to 1.0)
    "empty_groups": MIN,
    # classification and calibration (core/metrics/calibration.py)
    "accuracy": MAX,
    "ece": MIN,
    "classwise_ece": MIN,
    "nll": MIN,
    "brier": MIN,
    # training objective
    "loss": MIN,
}

# Per-group metrics written by group_selective_report: coverage_g0, error_g1, ...
_PER_GROUP = re.compile(r"^(coverage|error)_g\d+$")
_PER_GROUP_DIRECTIONS = {"coverage": MAX, "error": MIN}


def _direction_of_bare(name: str) -> str | None:
    """Direction of a name without ``/`` prefix or ``@`` suffix, or None if unknown."""
    if name in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[name]
    match = _PER_GROUP.match(name)
    if match:
        return _PER_GROUP_DIRECTIONS[match.group(1)]
    return None


def metric_direction(name: str) -> str:
    """Return ``"min"`` or ``"max"`` for a metric name (see the module docstring).

    Raises:
        InputError (a ValueError): the name resolves to no known metric; the message
            names it and lists the known ones.
    """
    if not isinstance(name, str):
        raise InputError(field="metric", value=name, expected="a metric name (str)")
    bare = name.rsplit("/", 1)[-1].split("@", 1)[0]
    found = _direction_of_bare(bare)
    if found is not None:
        return found
    # Word prefixes ("uncal_ece", "val_coverage_g0"): try suffixes, longest first.
    words = bare.split("_")
    for start in range(1, len(words)):
        found = _direction_of_bare("_".join(words[start:]))
        if found is not None:
            return found
    raise InputError(
        "unknown metric", field="metric", value=name,
        expected=f"one of {', '.join(sorted(METRIC_DIRECTIONS))}, coverage_g<k> or error_g<k>"
        " (optionally prefixed 'split/' or 'word_')",
    )
