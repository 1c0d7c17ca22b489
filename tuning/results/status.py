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

import sys
from pathlib import Path
from typing import Any

from tuning.experiment.records import (
    BestTrial,
    LedgerEntry,
    SweepStatus,
    TrialRow,
    TrialState,
    load_asha_state,
    load_baselines,
    load_ledger,
)
from tuning.experiment.spec import SweepSpec, load_spec
from tuning.results.baselines import print_baselines, verdicts
from tuning.results.selection import (
    best_iteration,
    better,
    max_gap_of,
    num,
    pareto_front,
    rank_key,
)
from tuning.terminal import console, print_table

#: Ray states that a trial ASHA stopped can still carry (Ray calls it TERMINATED; a
#: restored copy the scheduler stops before it runs is PENDING or PAUSED).
_STOPPABLE = (TrialState.TERMINATED, TrialState.RUNNING, TrialState.PENDING,
              TrialState.PAUSED)


def trial_status(entry: LedgerEntry, stopped: set[str]) -> TrialState:
    """Ray's status, with TERMINATED split into STOPPED (by ASHA) and TERMINATED."""
    if entry.trial_id in stopped and entry.status in _STOPPABLE:
        return TrialState.STOPPED
    return entry.status


def sweep_status(path: str | Path, spec: SweepSpec | None = None) -> SweepStatus:
    """The status of the experiment at ``path`` (module docstring), read from files."""
    path = Path(path)
    spec = spec or load_spec(path)
    ledger = load_ledger(path)
    asha = load_asha_state(path) or {}
    stopped = set(asha.get("stopped", {}))
    metric, mode = spec.metric, spec.mode
    max_gap = max_gap_of(spec)
    out = SweepStatus(name=spec.name, path=spec.uri or str(path),
                      metric=",".join(spec.metrics), mode=",".join(spec.modes))
    best: tuple[float, LedgerEntry, dict[str, Any]] | None = None
    for entry in sorted(ledger.trials.values(), key=lambda e: e.order):
        status = trial_status(entry, stopped)
        out.counts[status] = out.counts.get(status, 0) + 1
        found = best_iteration(entry.history, metric, mode, max_gap)
        out.trials.append(TrialRow(entry.trial_id, status, entry.config, entry.last_metrics(),
                                   entry.iterations,
                                   feasible=found is not None or not entry.history))
        if found is not None:
            value = float(found[1][metric])
            if best is None or better(value, best[0], mode):
                best = (value, entry, found[1])
    if best is not None:
        out.best = BestTrial(best[1].trial_id, best[1].config, best[2])
    out.coverage = spec.coverage
    baselines = load_baselines(path)
    if baselines is not None:
        out.baselines = baselines
        if best is not None:
            out.verdict = verdicts({baselines["split"]: best[2]},
                                   {baselines["split"]: baselines["values"]},
                                   metric, mode, spec.coverage)
    if ledger.lost:
        # started by a driver that was killed before Tune's next snapshot; replaced by
        # new suggestions on resume (see LedgerCallback.on_step_begin)
        out.lost = sorted(ledger.lost)
    if spec.multi_objective:
        points: dict[str, list[float]] = {}
        for t in out.trials:
            values = [num(t.metrics.get(m)) for m in spec.metrics]
            present = [v for v in values if v is not None]
            if t.status == TrialState.TERMINATED and len(present) == len(values):
                points[t.trial_id] = present
        out.pareto = pareto_front(points, spec.modes)
    return out


def experiment_status(path: str | Path, spec: SweepSpec | None = None) -> dict[str, Any]:
    """The ``status --json`` object (see the module docstring and ``seltune status -h``):
    :func:`sweep_status` as JSON."""
    return sweep_status(path, spec).to_dict()


def print_status(status: SweepStatus | dict[str, Any], *, top: int | None = None,
                 stderr: bool = False) -> None:
    """Human-readable status: counts, best, and the trials sorted by score. ``status``
    is a :class:`SweepStatus` or its JSON (what ``run_sweep`` / ``resume`` return)."""
    if isinstance(status, dict):
        status = SweepStatus.from_dict(status)
    metrics = status.metrics
    mode = status.modes[0]
    con = console(stderr)
    con.print(f"experiment {status.name}  ({status.path})")
    con.print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(status.counts.items()))
              if status.counts else "trials: none yet")
    rows = sorted(status.trials, key=lambda t: rank_key(t.metrics.get(metrics[0]), mode))
    if top is not None:
        rows = rows[:top]
    # Columns for the parameters that differ between trials (fixed ones say nothing).
    params = sorted(k for k in {k for t in rows for k in t.config}
                    if len({repr(t.config.get(k)) for t in rows}) > 1)[:4]
    extra = [m for m in ("coverage", "augrc", "worst_group_error", "gap_to_best_baseline")
             if m not in metrics]
    print_table(
        f"trials ({'top ' + str(top) if top else 'all'}, by {metrics[0]} {mode}, last values)",
        ["trial", "status", "iter", *metrics, *extra, *params],
        [[t.trial_id, t.status.value, t.iterations,
          *[t.metrics.get(m) for m in metrics], *[t.metrics.get(m) for m in extra],
          *[t.config.get(p) for p in params]] for t in rows],
        stderr=stderr,
    )
    best = status.best
    if best:
        value = best.metrics.get(metrics[0])
        at = "" if status.coverage is None else f" at coverage {status.coverage:g}"
        con.print(f"best: trial {best.trial_id}  {metrics[0]}={value:.4f}{at} at iteration "
                  f"{best.metrics.get('training_iteration')}")
    if status.baselines:
        print_baselines(status.baselines, stderr=stderr)
    for line in status.verdict or []:
        # plain print: one unwrapped line a reader (or grep) can take whole
        print(line, file=sys.stderr if stderr else sys.stdout, flush=True)
    if status.pareto is not None:
        con.print("pareto front: " + (", ".join(status.pareto) or "none yet"))
