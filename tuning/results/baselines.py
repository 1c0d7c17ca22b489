"""The training-free baselines of a sweep, at its operating point (``seltune/baselines.json``).

Fit once per sweep, before the first trial, on the sweep's own data and operating point,
so every trial is shown beside the rules it has to beat (docs/METHODS.md §6):

- AR-GSE trainables: Chow's rule on each expert and on the uniform mixture,
  Plug-in[Balanced] and Plug-in[Worst] (:mod:`core.argse.baselines`: temperatures and
  plug-in parameters fit on ``tunev``), judged on ``val`` at the operating point.
- Stage-1: the exit scores that need no learned gate (calibrated max-softmax, DOCTOR,
  MaxLogit) of a head trained with the default config, judged on ``val_select`` at
  the operating point.

The file::

    {"coverage": C, "split": "val", "metric": M, "mode": "min",
     "values": {NAME: {metric: value, ...}},
     "best": {"name": NAME, "value": v}}      # the strongest baseline on M

:func:`gap` is a trial's signed distance to ``best`` (negative = the trial is better
for a ``min`` metric; the sign is flipped for ``max`` metrics so that negative always
means better), reported by every trial as ``gap_to_best_baseline``; :func:`verdicts`
are the one-line statements ``status`` and ``export`` print.
"""

from __future__ import annotations

import sys
from typing import Any

from tuning.results.selection import better, finite, num, rank_key
from tuning.terminal import print_table

#: Baselines of each bundle kind, in the order tables show them.
ARGSE_ORDER = ("chow:mixture", "plugin_balanced", "plugin_worst")
STAGE1_ORDER = ("msp", "doctor", "maxlogit")


def strongest(values: dict[str, dict[str, Any]], metric: str, mode: str
              ) -> dict[str, Any] | None:
    """``{"name", "value"}`` of the baseline with the best ``metric``, or None."""
    best: dict[str, Any] | None = None
    for name, metrics in values.items():
        v = num(metrics.get(metric))
        if v is not None and (best is None or better(v, best["value"], mode)):
            best = {"name": name, "value": v}
    return best


def gap(value: Any, baselines: dict[str, Any] | None,
        report: dict[str, Any] | None = None) -> float | None:
    """Signed gap of ``value`` to the strongest baseline (negative = better), or None.

    Stage-1 baselines depend on each trial's own classifier, so a report that carries
    them (``msp_<metric>``, ``doctor_<metric>``, ``maxlogit_<metric>``) is compared with
    its own strongest one; otherwise with the sweep's (``baselines["best"]``).
    """
    if not baselines or not finite(value):
        return None
    mode, metric = baselines.get("mode", "min"), baselines.get("metric")
    own = [float(report[f"{n}_{metric}"]) for n in STAGE1_ORDER
           if report is not None and finite(report.get(f"{n}_{metric}"))]
    if own:
        ref = min(own, key=lambda v: rank_key(v, mode))
    elif baselines.get("best"):
        ref = float(baselines["best"]["value"])
    else:
        return None
    diff = float(value) - ref
    return diff if mode == "min" else -diff


def verdicts(model: dict[str, dict[str, Any]], baselines: dict[str, dict[str, dict[str, Any]]],
             metric: str, mode: str, coverage: float | None) -> list[str]:
    """One line per split: does the model beat each baseline on ``metric``?

    ``model``: ``{split: metrics}``; ``baselines``: ``{split: {NAME: metrics}}``.
    """
    lines = []
    at = "" if coverage is None else f" at coverage {coverage:g}"
    for split, m in model.items():
        v = m.get(metric)
        rows = baselines.get(split) or {}
        if not finite(v) or not rows:
            continue
        parts, beaten = [], 0
        for name, b in rows.items():
            bv = b.get(metric)
            if not finite(bv):
                continue
            wins = better(float(v), float(bv), mode)
            beaten += wins
            parts.append(f"{name} {float(bv):.4g} ({'beaten' if wins else 'NOT beaten'})")
        if not parts:
            continue
        head = ("beats every baseline" if beaten == len(parts)
                else f"does NOT beat {len(parts) - beaten} of {len(parts)} baselines")
        lines.append(f"{split}: tuned {metric}{at} {float(v):.4g} {head}: " + ", ".join(parts))
    return lines


def print_baselines(baselines: dict[str, Any], *, seconds: float | None = None,
                    stderr: bool = True) -> None:
    """The baselines as a table (stderr by default), the strongest one named."""
    metric = baselines["metric"]
    cols = list(dict.fromkeys((metric, "worst_group_error", "balanced_error",
                               "worst_group_area", "augrc", "coverage")))
    rows = [[name, *[v.get(c) for c in cols]] for name, v in baselines["values"].items()]
    took = "" if seconds is None else f", fit in {seconds:.1f} s"
    print_table(f"training-free baselines on {baselines['split']} at coverage "
                f"{baselines['coverage']:g}{took}", ["baseline", *cols], rows, stderr=stderr)
    best = baselines.get("best")
    if best:
        print(f"[seltune] strongest baseline: {best['name']} {metric}={best['value']:.4f}; "
              f"every trial reports gap_to_best_baseline (negative = better)",
              file=sys.stderr if stderr else sys.stdout, flush=True)
