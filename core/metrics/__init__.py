"""Metrics: one implementation, used by training, baselines, export and evaluate.

docs/METHODS.md §5. Inputs are numpy arrays (lists and torch tensors are converted);
outputs are python floats or numpy arrays. Bad input raises
:class:`core.errors.InputError` (a ``ValueError``) naming the argument and the value.

- :mod:`.risk_coverage`: risk-coverage curve, AUGRC (a fraction; fd-shifts prints it
  x1000), AURC, risk@coverage, coverage@risk.
- :mod:`.groups`: per-group coverage and selective error, balanced and worst-group
  error, their curves over rejection rates and the areas over [0, 0.8].
- :mod:`.calibration`: ECE, classwise-ECE, NLL, Brier, accuracy.
- :mod:`.operating_point`: judge every rule at one coverage (the sweep's operating
  point): shift its confidences so the split's coverage is that point.
- :mod:`.names`: every metric name with its direction (``min``/``max``).
"""

from core.metrics.calibration import accuracy, brier, classwise_ece, ece, nll
from core.metrics.groups import (
    DEFAULT_REJECTION_RATES,
    area_under_group_curves,
    group_error_curves,
    group_selective_report,
)
from core.metrics.names import METRIC_DIRECTIONS, metric_direction
from core.metrics.operating_point import (
    check_coverage,
    coverage_gap,
    coverage_shift,
    shift_to_coverage,
)
from core.metrics.risk_coverage import (
    RiskCoverageCurve,
    augrc,
    aurc,
    coverage_at_risk,
    risk_at_coverage,
    risk_coverage_curve,
)

__all__ = [
    "DEFAULT_REJECTION_RATES",
    "METRIC_DIRECTIONS",
    "RiskCoverageCurve",
    "accuracy",
    "area_under_group_curves",
    "augrc",
    "aurc",
    "brier",
    "check_coverage",
    "classwise_ece",
    "coverage_at_risk",
    "coverage_gap",
    "coverage_shift",
    "ece",
    "group_error_curves",
    "group_selective_report",
    "metric_direction",
    "nll",
    "risk_at_coverage",
    "risk_coverage_curve",
    "shift_to_coverage",
]
