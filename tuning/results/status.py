"""``seltune status EXPERIMENT``: trial counts, the best trial so far, a per-trial table.

Reads only files (``seltune/sweep.json``, ``seltune/trials.json``,
``seltune/asha_state.json``), never Ray, so it works while the sweep runs (the driver
rewrites the ledger atomically) and after it ended or died. For an experiment in object
storage they are the local mirror's, downloaded by ``find_experiment``; ``path`` is
then the experiment's URI.

A trial's score is the best value of the sweep's (first) metric over all its reported
iterations; ``best`` is the trial with the best score, with the metrics of that
iteration (``training_iteration`` says which). Multi-objective sweeps add ``pareto``:
the non-dominated trials on their last reported values.

The operating point (sweeps that have one, ``spec.coverage``): an iteration whose
``coverage_gap`` exceeds ``spec.max_coverage_gap`` is infeasible and never best; every
trial row says ``feasible``. ``baselines`` is ``seltune/baselines.json`` (the
training-free rules at the operating point, :mod:`tuning.results.baselines`) and ``verdict``
the one line saying whether the best trial beats each of them on ``val``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from tuning.experiment.records import load_asha_state, load_baselines, load_ledger
from tuning.experiment.spec import SweepSpec, load_spec
from tuning.results.baselines import verdicts


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def feasible(metrics: dict[str, Any], max_gap: float | None) -> bool:
    """Whether a report is at the operating point (``coverage_gap <= max_gap``); reports
    without a gap (older sweeps) and sweeps without an operating point always are."""
    gap = _num(metrics.get("coverage_gap"))
    return max_gap is None or gap is None or gap <= max_gap + 1e-12


def max_gap_of(spec: SweepSpec) -> float | None:
    return None if spec.coverage is None else float(spec.max_coverage_gap)


def best_iteration(history: dict[str, dict[str, Any]], metric: str,
                   mode: str, max_gap: float | None = None) -> tuple[int, dict[str, Any]] | None:
    """``(iteration, metrics)`` of the best value of ``metric`` in ``history`` among the
    feasible iterations (:func:`feasible`); ties keep the earliest iteration; None if no
    finite feasible value."""
    best = None
    for key in sorted(history, key=int):
        value = _num(history[key].get(metric))
        if value is None or not feasible(history[key], max_gap):
            continue
        if best is None or (value < best[0] if mode == "min" else value > best[0]):
            best = (value, int(key), history[key])
    return None if best is None else (best[1], best[2])


def trial_status(entry: dict[str, Any], stopped: set[str]) -> str:
    """Ray's status, with TERMINATED split into STOPPED (by ASHA) and TERMINATED."""
    status = entry.get("status") or "PENDING"
    if entry["trial_id"] in stopped and status in ("TERMINATED", "RUNNING", "PENDING",
                                                   "PAUSED"):
        return "STOPPED"
    return status


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` on every objective and better on one."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    aa = [s * x for s, x in zip(sign, a)]
    bb = [s * x for s, x in zip(sign, b)]
    return all(x <= y for x, y in zip(aa, bb)) and any(x < y for x, y in zip(aa, bb))


def pareto_front(points: dict[str, list[float]], modes: list[str]) -> list[str]:
    """Keys of the non-dominated points (input order kept)."""
    return [k for k, v in points.items()
            if not any(dominates(w, v, modes) for j, w in points.items() if j != k)]


def experiment_status(path: str | Path, spec: SweepSpec | None = None) -> dict[str, Any]:
    """The ``status --json`` object (see the module docstring and ``seltune status -h``)."""
    path = Path(path)
    spec = spec or load_spec(path)
    ledger = load_ledger(path)
    asha = load_asha_state(path) or {}
    stopped = set(asha.get("stopped", {}))
    metric, mode = spec.metric, spec.mode
    max_gap = max_gap_of(spec)
    trials: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    best = None
    for entry in sorted(ledger["trials"].values(), key=lambda e: e.get("order", 0)):
        status = trial_status(entry, stopped)
        counts[status] = counts.get(status, 0) + 1
        history = entry.get("history", {})
        last = history[max(history, key=int)] if history else {}
        found = best_iteration(history, metric, mode, max_gap)
        trials.append({"trial_id": entry["trial_id"], "status": status,
                       "config": entry.get("config", {}), "metrics": last,
                       "iterations": int(entry.get("iterations", 0)),
                       "feasible": found is not None or not history})
        if found is not None:
            value = found[1][metric]
            if best is None or (value < best[0] if mode == "min" else value > best[0]):
                best = (value, entry, found[1])
    out: dict[str, Any] = {
        "name": spec.name,
        "path": spec.uri or str(path),
        "metric": ",".join(spec.metrics),
        "mode": ",".join(spec.modes),
        "counts": counts,
        "best": None if best is None else {"trial_id": best[1]["trial_id"],
                                           "config": best[1].get("config", {}),
                                           "metrics": best[2]},
        "trials": trials,
    }
    if spec.coverage is not None:
        out["coverage"] = spec.coverage
    baselines = load_baselines(path)
    if baselines is not None:
        out["baselines"] = baselines
        if best is not None:
            out["verdict"] = verdicts({baselines["split"]: best[2]},
                                      {baselines["split"]: baselines["values"]},
                                      metric, mode, spec.coverage)
    if ledger.get("lost"):
        # started by a driver that was killed before Tune's next snapshot; replaced by
        # new suggestions on resume (see LedgerCallback.on_step_begin)
        out["lost"] = sorted(ledger["lost"])
    if spec.multi_objective:
        points: dict[str, list[float]] = {}
        for t in trials:
            values = [_num(t["metrics"].get(m)) for m in spec.metrics]
            present = [v for v in values if v is not None]
            if t["status"] in ("TERMINATED",) and len(present) == len(values):
                points[t["trial_id"]] = present
        out["pareto"] = pareto_front(points, spec.modes)
    return out


def print_status(status: dict[str, Any], *, top: int | None = None, stderr: bool = False) -> None:
    """Human-readable status: counts, best, and the trials sorted by score."""
    from tuning.terminal import console, print_table

    metrics = status["metric"].split(",")
    mode = status["mode"].split(",")[0]
    con = console(stderr)
    con.print(f"experiment {status['name']}  ({status['path']})")
    con.print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items()))
              if status["counts"] else "trials: none yet")
    rows = status["trials"]

    def key(t):
        v = _num(t["metrics"].get(metrics[0]))
        if v is None:
            return math.inf
        return v if mode == "min" else -v

    rows = sorted(rows, key=key)
    if top is not None:
        rows = rows[:top]
    # Columns for the parameters that differ between trials (fixed ones say nothing).
    params = sorted(k for k in {k for t in rows for k in t["config"]}
                    if len({repr(t["config"].get(k)) for t in rows}) > 1)[:4]
    extra = [m for m in ("coverage", "augrc", "worst_group_error", "gap_to_best_baseline")
             if m not in metrics]
    print_table(
        f"trials ({'top ' + str(top) if top else 'all'}, by {metrics[0]} {mode}, last values)",
        ["trial", "status", "iter", *metrics, *extra, *params],
        [[t["trial_id"], t["status"], t["iterations"],
          *[t["metrics"].get(m) for m in metrics], *[t["metrics"].get(m) for m in extra],
          *[t["config"].get(p) for p in params]] for t in rows],
        stderr=stderr,
    )
    best = status.get("best")
    if best:
        value = best["metrics"].get(metrics[0])
        at = "" if status.get("coverage") is None else f" at coverage {status['coverage']:g}"
        con.print(f"best: trial {best['trial_id']}  {metrics[0]}={value:.4f}{at} at iteration "
                  f"{best['metrics'].get('training_iteration')}")
    if status.get("baselines"):
        from tuning.results.baselines import print_baselines

        print_baselines(status["baselines"], stderr=stderr)
    for line in status.get("verdict", []):
        # plain print: one unwrapped line a reader (or grep) can take whole
        print(line, file=sys.stderr if stderr else sys.stdout, flush=True)
    if status.get("pareto") is not None:
        con.print("pareto front: " + (", ".join(status["pareto"]) or "none yet"))
