"""The export report a researcher chooses from: ``report.html`` plus PNGs in ``report/``.

Every trial of a sweep is judged at one operating point, the coverage ``C`` of the
sweep (``spec.coverage``; experiments made before it existed use the exported trial's
realised val coverage). The page shows, in this order:

1. a paper-style table on ``test`` (Narasimhan et al., ICLR 2024, Table 2): area under
   the balanced / worst-group error curves over rejection rates [0, 0.8] (normalised
   by 0.8, i.e. the mean error) and the balanced / worst-group error at ``C``, for
   Chow (best expert on val, and the mixture), Plug-in[Balanced], Plug-in[Worst] and
   the tuned model (Stage-1: the model's exit score against its baselines), and one
   line per baseline saying whether the tuned model beats it (``result["verdict"]``
   when export gives one);
2. balanced and worst-group error against the rejection rate on ``test`` for the
   model and every baseline, the operating point (rejection ``1 - C``) marked;
3. overall risk-coverage curves (selective risk against coverage);
4. a scatter of all trials: the objective (best value per trial) against the trial's
   realised coverage, ASHA-stopped trials grey, the baselines as horizontal lines;
5. the optimisation history of the Optuna study;
6. parameter importances, labelled with the evaluator used (fANOVA, passed
   explicitly), only when at least :data:`MIN_COMPLETE_FOR_IMPORTANCES` trials are
   complete (pruned trials do not count: Optuna's evaluators ignore them);
7. the top trials, the full val/test metrics beside the baselines, and for
   multi-objective sweeps the Pareto front.

A section that cannot be drawn is logged with its traceback on the
``seltune.report`` logger (on stderr while export writes the report, see
:func:`logged_to_stderr`) and replaced by a one-line note: the report never fails an
export, and never hides why a section is missing.

The report draws what it is given (:func:`write_report`): the sweep's status and
ledger, the exported result, and the per-sample scores of the model and its
baselines; it imports nothing from export and never branches on the trainable. Numbers are printed with four
significant digits, small ones in scientific notation (never ``0.0000``), and every
table sits in a horizontally scrolling container so the page never grows wider than
the window.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import math
import numbers
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import (
    DEFAULT_REJECTION_RATES,
    augrc,
    group_error_curves,
    risk_coverage_curve,
)
from tuning.experiment.records import ExportMetrics, Ledger, SweepStatus, TrialState
from tuning.experiment.spec import SweepSpec
from tuning.results.selection import best_iteration, best_name, better, num, rank_key
from tuning.trainables.base import MODEL, RuleScores

REPORT_DIR = "report"
#: Parameter importances are drawn from this many complete trials on: fANOVA's forest
#: on fewer points ranks noise.
MIN_COMPLETE_FOR_IMPORTANCES = 5

#: This module's logger; its records reach stderr during an export (:func:`logged_to_stderr`).
log = logging.getLogger("seltune.report")

#: Display names of the AR-GSE baselines in the paper table.
PAPER_LABELS = {"chow:mixture": "Chow [mixture]", "plugin_balanced": "Plug-in [Balanced]",
                "plugin_worst": "Plug-in [Worst]", "msp": "MSP", "softmax_confidence": "MSP",
                "doctor": "DOCTOR", "maxlogit": "MaxLogit"}
#: Paper-table columns: header and the metric names carrying it (new name first).
PAPER_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("area bal", ("balanced_area", "area_balanced_error")),
    ("area worst", ("worst_group_area", "area_worst_group_error")),
    ("error bal", ("balanced_error",)),
    ("error worst", ("worst_group_error",)),
    ("coverage", ("coverage",)),
)
#: Columns of the full model-vs-baselines tables, when present.
HEADLINE = ("worst_group_error", "balanced_error", "coverage", "coverage_gap",
            "worst_group_area", "balanced_area", "area_worst_group_error",
            "area_balanced_error", "augrc", "aurc", "risk_at_coverage", "selective_error",
            "accuracy", "ece")


# --------------------------------------------------------------------------- formatting
def fmt(value: Any) -> str:
    """A number as the report prints it: 4 significant digits, scientific notation for
    magnitudes below 1e-3 or from 1e5 on, exact zero as ``0``; ints and strings as
    they are; None and NaN as ``-``.

    Never ``0.0000``: a small non-zero error must stay visible as non-zero.
    """
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0.0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e5:
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(value)


def fmt_signed(value: Any) -> str:
    """:func:`fmt` with an explicit ``+`` for positive numbers (gaps)."""
    text = fmt(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value) > 0:
        return "+" + text
    return text


def metric_value(metrics: dict[str, Any] | None, names: Sequence[str]) -> float | None:
    """The first of ``names`` present (finite) in ``metrics``: new metric names first,
    the names of older experiments after them."""
    for name in names:
        v = num((metrics or {}).get(name))
        if v is not None:
            return v
    return None


# --------------------------------------------------------------------------- HTML pieces
CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;
 margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.table-wrap{max-width:100%;overflow-x:auto;margin:.4em 0 1em}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap;
 font-variant-numeric:tabular-nums}
th{background:#f4f4f4}
td.text,th.text{text-align:left;white-space:normal;overflow-wrap:break-word;max-width:24em}
tr.model td{font-weight:bold;background:#eef5ff}
img{display:block;max-width:100%;height:auto}
.note{color:#777;font-style:italic}
ul.verdict{padding-left:1.2em}ul.verdict li{overflow-wrap:anywhere}
"""


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
               text_columns: Sequence[int] = (0,), row_classes: Sequence[str] = ()) -> str:
    """A table inside a ``.table-wrap`` container (scrolls horizontally instead of
    widening the page); numbers through :func:`fmt`; ``text_columns`` may wrap."""
    text = set(text_columns)

    def cls(i: int) -> str:
        return " class='text'" if i in text else ""

    head = "".join(f"<th{cls(i)}>{html.escape(c)}</th>" for i, c in enumerate(columns))
    body = []
    for r, row in enumerate(rows):
        rc = row_classes[r] if r < len(row_classes) and row_classes[r] else ""
        cells = "".join(f"<td{cls(i)}>{html.escape(fmt(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr class='{rc}'>{cells}</tr>" if rc else f"<tr>{cells}</tr>")
    return (f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _img(data: bytes, alt: str) -> str:
    return (f"<img alt='{html.escape(alt)}' "
            f"src='data:image/png;base64,{base64.b64encode(data).decode()}'/>")


def guarded(title: str, build: Callable[[], str]) -> str:
    """``build()``, or, if it raises, the traceback on the ``seltune.report`` logger and
    a one-line note in its place (a report section never fails an export)."""
    try:
        return build()
    except Exception as exc:
        log.exception("report: section %r could not be drawn", title)
        first = (str(exc).strip().splitlines() or [""])[0]
        return _note(f"{title} could not be drawn: {type(exc).__name__}: {first} "
                     "(traceback in the seltune.report log)")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a progress bar may
    have wrapped it since the handler was made)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[seltune] %(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; stderr it stays
        pass


@contextlib.contextmanager
def logged_to_stderr() -> Iterator[None]:
    """While the block runs, the report's warnings and errors (with their tracebacks)
    go to stderr, the log of the command the user ran, unless logging is configured
    already (a handler anywhere up the logger's hierarchy: then it goes there)."""
    if log.hasHandlers():
        yield
        return
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


# --------------------------------------------------------------------------- matplotlib
def _plt():
    # matplotlib takes ~0.5 s to import: only an export that draws pays for it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    path.write_bytes(data)
    _plt().close(fig)
    return data


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Line styles: the tuned model thick and black, each baseline its own colour."""
    plt = _plt()
    colours = plt.get_cmap("tab10").colors
    out: dict[str, dict[str, Any]] = {}
    i = 0
    for name in names:
        if name == MODEL:
            out[name] = {"color": "black", "lw": 2.4, "zorder": 5}
        else:
            out[name] = {"color": colours[i % len(colours)], "lw": 1.3,
                         "ls": "-" if i < len(colours) else "--"}
            i += 1
    return out


# --------------------------------------------------------------------------- plots
def _rejection_rates(coverage: float) -> np.ndarray:
    """[0, 0.8] in steps of 0.01 (the range of the areas), widened to include 1 - C."""
    top = 1.0 - coverage
    if top <= float(DEFAULT_REJECTION_RATES[-1]):
        return DEFAULT_REJECTION_RATES.copy()
    return np.linspace(0.0, min(1.0, top + 0.05), 101)


def plot_group_curves(scores: RuleScores, coverage: float, path: Path) -> bytes:
    """Balanced (left) and worst-group (right) selective error against the rejection
    rate, every rule, the operating point ``1 - C`` as a dashed line with each rule's
    value on it."""
    plt = _plt()
    rates = _rejection_rates(coverage)
    op = 1.0 - coverage
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
    styles = _styles(list(scores.rules))
    for name, (conf, pred) in scores.rules.items():
        curves = group_error_curves(conf, pred, scores.labels, scores.label_groups,
                                    scores.num_groups, rates)
        at = group_error_curves(conf, pred, scores.labels, scores.label_groups,
                                scores.num_groups, np.array([op]))
        for ax, key in zip(axes, ("balanced_error", "worst_group_error")):
            ax.plot(rates, curves[key], label=name, **styles[name])
            ax.plot([op], [at[key][0]], "o", ms=4, color=styles[name]["color"])
    for ax, title in zip(axes, ("balanced error", "worst-group error")):
        ax.axvline(op, ls="--", color="grey", lw=1)
        ax.text(op, 1.0, f" operating point\n rejection {fmt(op)} (C={fmt(coverage)})",
                transform=ax.get_xaxis_transform(), va="top", fontsize=7, color="grey")
        ax.set_xlabel("rejection rate")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs rejection rate ({scores.split})")
        ax.set_xlim(rates[0], rates[-1])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def plot_risk_coverage(scores: RuleScores, coverage: float, path: Path) -> bytes:
    """Selective risk (overall error among accepted) against coverage, every rule."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    styles = _styles(list(scores.rules))
    for name, (conf, pred) in scores.rules.items():
        res = (pred != scores.labels).astype(np.float64)
        c = risk_coverage_curve(conf, res)
        ax.plot(c.coverage, c.selective_risk, label=f"{name} (AUGRC {fmt(augrc(conf, res))})",
                **styles[name])
    ax.axvline(coverage, ls="--", color="grey", lw=1)
    ax.text(coverage, 1.0, f" C={fmt(coverage)}", transform=ax.get_xaxis_transform(),
            va="top", fontsize=7, color="grey")
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"risk-coverage ({scores.split})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


@dataclass
class TrialPoint:
    trial_id: str
    status: TrialState
    objective: float
    coverage: float | None
    iteration: int


def trial_points(status: SweepStatus, ledger: Ledger, metric: str,
                 mode: str) -> list[TrialPoint]:
    """Each trial's best value of ``metric`` over its reported iterations (as export
    selects), with the realised coverage reported at that same iteration."""
    points = []
    for t in status.trials:
        entry = ledger.trials.get(t.trial_id)
        found = None if entry is None else best_iteration(entry.history, metric, mode)
        if found is None:
            continue
        it, m = found
        points.append(TrialPoint(t.trial_id, t.status, float(m[metric]),
                                 num(m.get("coverage")), it))
    return points


def baseline_values(status: SweepStatus, result: ExportMetrics,
                    metric: str) -> tuple[dict[str, float], str | None, str]:
    """``({baseline: value of metric on val}, name of the strongest, source)``: the
    sweep's baselines from ``status.baselines`` when present, else the export's
    val baselines."""
    sb = status.baselines or {}
    values: dict[str, float] = {}
    best = None
    source = ""
    for name, m in (sb.get("values") or {}).items():
        v = metric_value(m, (metric,))
        if v is not None:
            values[name] = v
    if values:
        source = f"sweep baselines ({sb.get('split', 'val')}, C={fmt(sb.get('coverage'))})"
        best = (sb.get("best") or {}).get("name") if sb.get("metric") == metric else None
    else:
        for name, m in (result.baselines.get("val") or {}).items():
            v = metric_value(m, (metric,))
            if v is not None:
                values[name] = v
        source = "export's val baselines"
    if values and best not in values:
        best = None
    return values, best, source


def plot_trials(points: list[TrialPoint], baselines: dict[str, float], best: str | None,
                metric: str, coverage: float, chosen: str | None, path: Path) -> bytes:
    """Objective against realised coverage, one point per trial; stopped trials grey,
    baselines as horizontal lines, the operating point as a vertical line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    kinds = ((TrialState.TERMINATED, "finished", {"color": "tab:blue", "marker": "o"}),
             (TrialState.STOPPED, "stopped by ASHA", {"color": "#b0b0b0", "marker": "o"}),
             (TrialState.ERROR, "error", {"color": "tab:red", "marker": "x"}))
    known = {k for k, *_ in kinds}
    groups = [(label, style, [p for p in points if p.status == k and p.coverage is not None])
              for k, label, style in kinds]
    groups.append(("other (running, pending)", {"color": "tab:orange", "marker": "^"},
                   [p for p in points if p.status not in known and p.coverage is not None]))
    for label, style, pts in groups:
        if pts:
            ax.scatter([p.coverage for p in pts], [p.objective for p in pts], s=22,
                       label=f"{label} ({len(pts)})", zorder=3, **style)
    chosen_pts = [p for p in points if p.trial_id == chosen and p.coverage is not None]
    if chosen_pts:
        ax.scatter([chosen_pts[0].coverage], [chosen_pts[0].objective], s=160, marker="*",
                   color="gold", edgecolor="black", zorder=4, label=f"exported ({chosen})")
    colours = plt.get_cmap("tab10").colors
    for i, (name, v) in enumerate(sorted(baselines.items())):
        ax.axhline(v, color=colours[(i + 3) % len(colours)], lw=1.6 if name == best else 1.0,
                   ls="-" if name == best else "--",
                   label=f"{name}{' (best)' if name == best else ''}: {fmt(v)}")
    ax.axvline(coverage, ls=":", color="grey", lw=1)
    ax.set_xlabel("realised coverage (val, at the trial's best iteration)")
    ax.set_ylabel(metric)
    ax.set_title(f"all trials: {metric} vs coverage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def load_study(spec: SweepSpec):
    # optuna (and SQLAlchemy under it) take ~1 s to import: only the report's study
    # sections need them
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=spec.study_name, storage=spec.study_storage)


def plot_history(study, path: Path, title: str, baseline: tuple[str, float] | None = None
                 ) -> bytes:
    """Trial number vs objective (first objective for multi-objective), the running
    best, pruned trials at their last intermediate value, the strongest baseline."""
    from optuna.trial import TrialState as OptunaState  # optuna: see load_study

    plt = _plt()
    multi = len(study.directions) > 1
    mode = "min" if study.directions[0].name == "MINIMIZE" else "max"
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    xs_c, ys_c, xs_p, ys_p = [], [], [], []
    for t in study.get_trials(deepcopy=False):
        if t.state == OptunaState.COMPLETE:
            xs_c.append(t.number)
            ys_c.append(t.values[0] if multi else t.value)
        elif t.state == OptunaState.PRUNED and t.intermediate_values:
            xs_p.append(t.number)
            ys_p.append(t.intermediate_values[max(t.intermediate_values)])
    ax.scatter(xs_c, ys_c, s=18, label="complete", color="tab:blue", zorder=3)
    if xs_p:
        ax.scatter(xs_p, ys_p, s=16, marker="x", label="pruned (last rung)", color="#999999")
    if ys_c:
        best, run = [], None
        for y in ys_c:
            run = y if run is None or better(y, run, mode) else run
            best.append(run)
        ax.step(xs_c, best, where="post", color="tab:red", label="best so far")
    if baseline is not None:
        ax.axhline(baseline[1], ls="--", color="tab:green", lw=1,
                   label=f"{baseline[0]}: {fmt(baseline[1])}")
    ax.set_xlabel("Optuna trial number")
    ax.set_ylabel(title)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def importances_section(study, spec, path: Path) -> str:
    """Importances by an explicitly chosen evaluator (fANOVA, seeded), named in the plot
    and the text, or one line saying why there are none."""
    import optuna  # see load_study
    from optuna.trial import TrialState as OptunaState

    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == OptunaState.COMPLETE for t in trials)
    pruned = sum(t.state == OptunaState.PRUNED for t in trials)
    if complete < MIN_COMPLETE_FOR_IMPORTANCES:
        return _note(f"parameter importances are shown from {MIN_COMPLETE_FOR_IMPORTANCES} "
                     f"complete trials on; this study has {complete} complete and {pruned} "
                     "pruned (pruned trials are not used by the evaluators)")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    name = type(evaluator).__name__
    # multi-objective: rank parameters by the first objective (None: the value)
    target: Callable[[optuna.trial.FrozenTrial], float] | None = (
        (lambda t: t.values[0]) if spec.multi_objective else None)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                          target=target)
    if not importances:
        return _note(f"{name}: no searched parameter to rank")
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * len(names) + 1.3))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance ({name}, {complete} complete trials)")
    ax.set_title("parameter importances")
    data = _save(fig, path)
    objective = spec.metrics[0] + (" (first objective)" if spec.multi_objective else "")
    return (f"<p>evaluator: <code>optuna.importance.{name}(seed=0)</code> on {complete} "
            f"complete trials ({pruned} pruned not used), target {html.escape(objective)}.</p>"
            + _img(data, "parameter importances"))


def plot_pareto(points: list[tuple[str, float, float, bool]], names: list[str],
                path: Path) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    dom = [(x, y) for _, x, y, front in points if not front]
    fr = sorted((x, y) for _, x, y, front in points if front)
    if dom:
        ax.scatter(*zip(*dom), s=14, color="tab:gray", label="dominated")
    if fr:
        ax.plot(*zip(*fr), "o-", color="tab:red", label="Pareto front")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("Pareto front (last values)")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- paper table
def paper_rows(result: ExportMetrics, split: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``[(label, baseline key or MODEL, metrics)]`` of the paper table on ``split``:
    Chow on the best single expert (chosen on val by worst-group error, so test is not
    used to choose), Chow on the mixture, Plug-in[Balanced], Plug-in[Worst] (Stage-1:
    its baselines), then the tuned model."""
    base = result.baselines.get(split) or {}
    val = result.baselines.get("val") or {}
    rows: list[tuple[str, str, dict[str, Any]]] = []
    experts = [n for n in base if n.startswith("chow:") and n != "chow:mixture"]
    if experts:
        best = min(experts, key=lambda n: rank_key(
            metric_value(val.get(n) or base.get(n), ("worst_group_error",)), "min"))
        rows.append((f"Chow [{best[5:]}] (best expert on val)", best, base[best]))
    for name, metrics in base.items():
        if name in experts:
            continue
        rows.append((PAPER_LABELS.get(name, name), name, metrics))
    model = result.splits().get(split)
    if model is not None:
        trial = "?" if result.trial_id is None else result.trial_id
        rows.append((f"{MODEL} (trial {trial})", MODEL, model))
    return rows


def verdict_lines(result: ExportMetrics, rows: list[tuple[str, str, dict[str, Any]]],
                  metric: str, mode: str, split: str) -> tuple[list[str], str]:
    """The export's verdict lines if it wrote any, else one line per baseline computed
    here: whether the tuned model beats it on ``metric`` on ``split`` (gap = model
    minus baseline, signed)."""
    if result.verdict:
        return [str(v) for v in result.verdict], "from export"
    model = metric_value(result.splits().get(split), (metric,))
    if model is None:
        return [f"the tuned model has no {metric} on {split}: no verdict"], "computed here"
    lines = []
    for label, key, metrics in rows:
        if key == MODEL:
            continue
        b = metric_value(metrics, (metric,))
        if b is None:
            continue
        beats = better(model, b, mode)
        lines.append(f"{split} {metric}: tuned model {fmt(model)} vs {label} {fmt(b)} "
                     f"(gap {fmt_signed(model - b)}): "
                     f"{'beats it' if beats else 'does not beat it'}")
    return lines, "computed by the report (export gave no verdict)"


def _shown_split(result: ExportMetrics) -> str:
    """The split the report draws on: test when the result has it, else val."""
    return "test" if result.test is not None else "val"


def paper_section(result: ExportMetrics, metric: str, mode: str) -> str:
    split = _shown_split(result)
    rows = paper_rows(result, split)
    table = table_html(
        ["rule", *[c for c, _ in PAPER_COLUMNS]],
        [[label, *[metric_value(m, names) for _, names in PAPER_COLUMNS]]
         for label, _, m in rows],
        row_classes=["model" if key == MODEL else "" for _, key, _ in rows])
    lines, source = verdict_lines(result, rows, metric, mode, split)
    verdict = ("<ul class='verdict'>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines)
               + f"</ul><p class='note'>verdict {html.escape(source)}</p>")
    return (f"<p>On <b>{split}</b>. area = mean error over rejection rates [0, 0.8] "
            "(area / 0.8); error = at the operating point.</p>" + table + verdict)


# --------------------------------------------------------------------------- the page
def _operating_point(spec: SweepSpec, result: ExportMetrics) -> tuple[float, str]:
    c = num(spec.coverage)
    if c is not None:
        return c, "the sweep's operating point (--coverage)"
    c = num((result.val or {}).get("coverage"))
    if c is None:
        raise ValueError("no operating point: spec.coverage is unset and the result has "
                         "no val coverage")
    return c, "old experiment without an operating point: the exported trial's val coverage"


def _top_trials(status: SweepStatus, ledger: Ledger, metric: str, mode: str,
                spec: SweepSpec) -> str:
    points = {p.trial_id: p for p in trial_points(status, ledger, metric, mode)}
    by_id = {t.trial_id: t for t in status.trials}
    order = sorted(points.values(), key=lambda p: rank_key(p.objective, mode))
    rows_t = [by_id[p.trial_id] for p in order[:15]]
    params = sorted(k for k in {k for t in rows_t for k in t.config} - set(spec.fixed)
                    if len({repr(t.config.get(k)) for t in rows_t}) > 1)
    rows = []
    for p in order[:15]:
        t = by_id[p.trial_id]
        hist = ledger.trials[p.trial_id].history.get(str(p.iteration), {})
        rows.append([p.trial_id, t.status.value, t.iterations, p.objective, p.iteration,
                     p.coverage, hist.get("gap_to_best_baseline"),
                     *[t.config.get(k) for k in params]])
    if not rows:
        return _note(f"no trial reported {metric} yet")
    return table_html(["trial", "status", "iters", f"best {metric}", "at iter", "coverage",
                       "gap to best baseline", *params], rows, text_columns=(0, 1))


def _full_tables(result: ExportMetrics) -> str:
    parts = []
    for split, model in result.splits().items():
        src = {MODEL: model, **(result.baselines.get(split) or {})}
        cols = [m for m in HEADLINE if any(m in r for r in src.values())]
        parts.append(f"<h3>{split}</h3>" + table_html(
            ["", *cols], [[n, *[r.get(m) for m in cols]] for n, r in src.items()],
            row_classes=["model" if n == MODEL else "" for n in src]))
    return "".join(parts) or _note("the result has no val/test metrics")


def write_report(out: Path, *, spec: SweepSpec, status: SweepStatus, ledger: Ledger,
                 result: ExportMetrics,
                 rule_scores: Callable[[str, float], RuleScores] | None,
                 pareto: list[dict[str, Any]] | None, metric: str, mode: str) -> Path:
    """Write ``out/report/*.png`` and ``out/report.html`` (module docstring); returns
    the HTML path. Sections that cannot be drawn become notes (see :func:`guarded`).

    The report draws what it is given: the sweep's status and ledger, the exported
    result, and ``rule_scores(split, coverage)``, the per-sample scores of the model
    and its baselines (computed by the caller's trainable-specific code, called here
    so that a failure is one note, not a failed export).
    """
    out = Path(out)
    rdir = out / REPORT_DIR
    rdir.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str]] = []

    try:
        coverage, coverage_source = _operating_point(spec, result)
    except ValueError:
        log.exception("report: no operating point")
        coverage, coverage_source = math.nan, "unknown"
    have_c = math.isfinite(coverage)

    sections.append(("Tuned model vs baselines at the operating point",
                     guarded("the paper table", lambda: paper_section(result, metric, mode))))

    # Per-sample scores of the model and the baselines, shared by two plots.
    split = _shown_split(result)
    scores: list[RuleScores] = []

    def compute_scores() -> str:
        if not have_c:
            raise ValueError("no operating point to mark")
        if rule_scores is None:
            raise ValueError("no per-sample scores were given to the report")
        scores.append(rule_scores(split, coverage))
        return "".join(_note(n) for n in scores[0].notes)

    score_note = guarded(f"per-sample scores on {split}", compute_scores)

    def scored(title: str, draw: Callable[[RuleScores], bytes]) -> str:
        if not scores:
            return score_note
        return score_note + guarded(title, lambda: _img(draw(scores[0]), title))

    sections.append((f"Balanced and worst-group error vs rejection rate ({split})", scored(
        "the group error curves",
        lambda s: plot_group_curves(s, coverage, rdir / "group_error_curves.png"))))
    sections.append((f"Risk-coverage ({split})", scored(
        "the risk-coverage curves",
        lambda s: plot_risk_coverage(s, coverage, rdir / "risk_coverage.png"))))

    def trials_plot() -> str:
        points = trial_points(status, ledger, metric, mode)
        missing = sum(p.coverage is None for p in points)
        values, best, source = baseline_values(status, result, metric)
        data = plot_trials(points, values, best, metric, coverage, result.trial_id,
                           rdir / "trials.png")
        note = (_note(f"{missing} trial(s) reported no coverage and are not drawn")
                if missing else "")
        return (_img(data, "trials") + note
                + f"<p class='note'>baselines: {html.escape(source)}</p>")

    sections.append((f"All trials: {metric} vs realised coverage",
                     guarded("the trial scatter", trials_plot)))

    study_box: list[Any] = []

    def history() -> str:
        study_box.append(load_study(spec))
        values, best, _ = baseline_values(status, result, spec.metrics[0])
        if best is None:
            best = best_name(values, spec.modes[0])
        line = (best, values[best]) if best is not None else None
        data = plot_history(study_box[0], rdir / "history.png", ",".join(spec.metrics), line)
        return _img(data, "optimisation history")

    sections.append(("Optimisation history", guarded("the optimisation history", history)))
    sections.append(("Parameter importances", guarded(
        "the parameter importances",
        lambda: importances_section(study_box[0], spec, rdir / "importances.png")
        if study_box else _note("parameter importances need the study, which was not read"))))

    sections.append(("Top trials", guarded(
        "the top trials", lambda: _top_trials(status, ledger, metric, mode, spec))))
    sections.append(("All metrics: exported model vs baselines",
                     guarded("the metric tables", lambda: _full_tables(result))))

    if pareto is not None and len(spec.metrics) >= 2:
        def pareto_section() -> str:
            front = {p["trial_id"] for p in pareto}
            pts = []
            for t in status.trials:
                x, y = (num(t.metrics.get(m)) for m in spec.metrics[:2])
                if x is not None and y is not None:
                    pts.append((t.trial_id, x, y, t.trial_id in front))
            data = plot_pareto(pts, spec.metrics[:2], rdir / "pareto.png")
            return _img(data, "Pareto front") + table_html(
                ["trial", *spec.metrics],
                [[p["trial_id"], *[p["values"].get(m) for m in spec.metrics]] for p in pareto])

        sections.append(("Pareto front", guarded("the Pareto front", pareto_section)))

    title = f"seltune export: {spec.name}"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status.counts.items()))
    selected = None if result.selection is None else result.selection.value
    summary = (
        f"<p>trainable <b>{html.escape(spec.trainable)}</b>, data "
        f"<code>{html.escape(str(spec.data))}</code>.<br>"
        f"Operating point: coverage <b>C = {html.escape(fmt(coverage))}</b> "
        f"({html.escape(coverage_source)}); every trial and baseline is judged at this "
        "coverage.<br>"
        f"Selected by <b>{html.escape(metric)}</b> ({html.escape(mode)}) on val: trial "
        f"<b>{html.escape(str(result.trial_id))}</b> at iteration "
        f"{html.escape(str(result.iteration))}"
        f" (value {html.escape(fmt(selected))}).<br>"
        f"Trials: {html.escape(counts or 'none')}.</p>")
    body = "".join(f"<h2>{html.escape(t)}</h2>{s}" for t, s in sections)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{summary}{body}</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
