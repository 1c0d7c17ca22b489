"""Which trial is best: the one comparison of values, feasibility at the operating
point, the best iteration of a trial, export's choice of trial and the Pareto front.

Every "is this value better" in the results layer (status, export, the baselines and
their verdicts, the report) goes through :func:`better` / :func:`rank_key`, and every
"is this a usable number" through :func:`num` / :func:`finite`: a value is a finite
int or float, never a bool.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

from core.errors import InputError
from tuning.experiment.records import Ledger, SweepStatus, TrialState
from tuning.experiment.spec import SweepSpec


# --------------------------------------------------------------------------- values
def finite(x: Any) -> TypeGuard[float]:
    """Whether ``x`` is a finite real number (bools are not numbers here)."""
    return (isinstance(x, numbers.Real) and not isinstance(x, bool)
            and math.isfinite(float(x)))


def num(x: Any) -> float | None:
    """``x`` as a float if it is a finite number (:func:`finite`), else None."""
    return float(x) if finite(x) else None


def better(a: float, b: float, mode: str) -> bool:
    """Whether ``a`` is strictly better than ``b`` for ``mode`` (``min`` / ``max``)."""
    return a < b if mode == "min" else a > b


def rank_key(value: Any, mode: str) -> float:
    """A sort key, best first; values that are not finite numbers last."""
    v = num(value)
    if v is None:
        return math.inf
    return v if mode == "min" else -v


def best_name(values: Mapping[str, Any], mode: str) -> str | None:
    """The key of the best finite value in ``values`` (the first on ties), or None."""
    best: tuple[str, float] | None = None
    for name, value in values.items():
        v = num(value)
        if v is not None and (best is None or better(v, best[1], mode)):
            best = (name, v)
    return None if best is None else best[0]


# --------------------------------------------------------------------------- iterations
def feasible(metrics: Mapping[str, Any], max_gap: float | None) -> bool:
    """Whether a report is at the operating point (``coverage_gap <= max_gap``); reports
    without a gap (older sweeps) and sweeps without an operating point always are."""
    gap = num(metrics.get("coverage_gap"))
    return max_gap is None or gap is None or gap <= max_gap + 1e-12


def max_gap_of(spec: SweepSpec) -> float | None:
    return None if spec.coverage is None else float(spec.max_coverage_gap)


def best_iteration(history: Mapping[str, dict[str, Any]], metric: str,
                   mode: str, max_gap: float | None = None) -> tuple[int, dict[str, Any]] | None:
    """``(iteration, metrics)`` of the best value of ``metric`` in ``history`` among the
    feasible iterations (:func:`feasible`); ties keep the earliest iteration; None if no
    finite feasible value."""
    best: tuple[float, int, dict[str, Any]] | None = None
    for key in sorted(history, key=int):
        value = num(history[key].get(metric))
        if value is None or not feasible(history[key], max_gap):
            continue
        if best is None or better(value, best[0], mode):
            best = (value, int(key), history[key])
    return None if best is None else (best[1], best[2])


# --------------------------------------------------------------------------- trials
def select_best(status: SweepStatus, ledger: Ledger, metric: str,
                mode: str, max_gap: float | None = None) -> tuple[str, int, dict[str, Any]]:
    """``(trial_id, iteration, metrics)`` of the best checkpointed feasible result:
    among trials that ran to their end (if any did, else all trials), the (trial,
    iteration) with the best value of ``metric`` over every reported iteration."""
    finished = [t.trial_id for t in status.trials if t.status == TrialState.TERMINATED]
    pool = finished or [t.trial_id for t in status.trials]
    best: tuple[float, str, int, dict[str, Any]] | None = None
    for tid in pool:
        found = best_iteration(ledger.trials[tid].checkpointed(), metric, mode, max_gap)
        if found is None:
            continue
        value = float(found[1][metric])
        if best is None or better(value, best[0], mode):
            best = (value, tid, found[0], found[1])
    if best is None:
        at = "" if max_gap is None else f" at the operating point (coverage gap <= {max_gap:g})"
        raise InputError(f"no trial reported {metric} with a checkpoint{at} yet",
                         file=status.path, expected="a sweep with at least one result")
    return best[1], best[2], best[3]


def dominates(a: Iterable[float], b: Iterable[float], modes: Iterable[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` on every objective and better on one."""
    pairs = list(zip(a, b, modes))
    return (all(not better(y, x, m) for x, y, m in pairs)
            and any(better(x, y, m) for x, y, m in pairs))


def pareto_front(points: Mapping[str, list[float]], modes: list[str]) -> list[str]:
    """Keys of the non-dominated points (input order kept)."""
    return [k for k, v in points.items()
            if not any(dominates(w, v, modes) for j, w in points.items() if j != k)]
