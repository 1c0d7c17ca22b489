"""The export report: PNG plots (matplotlib, Agg) and one self-contained HTML page.

Contents: the top trials, the chosen model's val/test metrics beside the baselines,
the optimisation history (every Optuna trial's value, pruned trials at their last
intermediate value, and the running best), parameter importances
(``optuna.importance.get_param_importances``, fANOVA, on the study's complete trials),
risk-coverage curves on ``test`` of the chosen model and the baselines (selective risk
against coverage, from the core metrics), and for multi-objective sweeps the Pareto
front. A plot that cannot be drawn (e.g. importances with fewer than two complete
trials) is replaced by a one-line note, never a failed export.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPORT_DIR = "report"


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    path.write_bytes(data)
    _fig().close(fig)
    return data


def load_study(spec):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=spec.study_name, storage=spec.study_storage)


# --------------------------------------------------------------------------- plots
def plot_history(study, path: Path, title: str) -> bytes:
    """Trial number vs objective (first objective for multi-objective), running best."""
    from optuna.trial import TrialState

    plt = _fig()
    multi = len(study.directions) > 1
    minimize = study.directions[0].name == "MINIMIZE"
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs_c, ys_c, xs_p, ys_p = [], [], [], []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            xs_c.append(t.number)
            ys_c.append(t.values[0] if multi else t.value)
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            xs_p.append(t.number)
            ys_p.append(t.intermediate_values[max(t.intermediate_values)])
    ax.scatter(xs_c, ys_c, s=18, label="complete", color="tab:blue")
    if xs_p:
        ax.scatter(xs_p, ys_p, s=14, marker="x", label="pruned (last rung)", color="tab:gray")
    if ys_c:
        best, run = [], None
        for y in ys_c:
            run = y if run is None else (min(run, y) if minimize else max(run, y))
            best.append(run)
        ax.step(xs_c, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("Optuna trial number")
    ax.set_ylabel(title)
    ax.set_title("optimisation history")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_importances(importances: dict[str, float], path: Path) -> bytes:
    plt = _fig()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("parameter importances")
    return _save(fig, path)


def plot_risk_coverage(curves: dict[str, tuple[Any, Any]], path: Path, split: str) -> bytes:
    """``curves``: name -> (confidences [N], residuals [N]); selective risk vs coverage."""
    from core.metrics.risk_coverage import augrc, risk_coverage_curve

    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (name, (conf, res)) in enumerate(curves.items()):
        c = risk_coverage_curve(conf, res)
        ax.plot(c.coverage, c.selective_risk, lw=2.2 if i == 0 else 1.2,
                label=f"{name} (AUGRC {augrc(conf, res):.4f})")
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk")
    ax.set_xlim(0, 1)
    ax.set_title(f"risk-coverage on {split}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_pareto(points: list[tuple[str, float, float, bool]], names: list[str],
                path: Path) -> bytes:
    plt = _fig()
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


# --------------------------------------------------------------------------- curves
def argse_curves(bundle, checkpoint: Path, coverage: float, split: str,
                 device: str) -> dict[str, tuple[Any, Any]]:
    """Confidences and residuals on ``split`` of the model and the baselines (AR-GSE)."""
    import torch

    from core.argse import apply_temperatures, load_predictor
    from core.argse.baselines import baseline_metrics
    from core.argse.data import split_tensors
    from core.argse.margins import margin_and_prediction

    logits, labels = split_tensors(bundle, split)
    pred, _, _, conf = load_predictor(checkpoint, device).decide(logits)
    curves = {"tuned model": (conf.double().numpy(), (pred != labels).double().numpy())}
    from tuning.export import fitted_baselines

    fitted = fitted_baselines(bundle)
    baseline_metrics(bundle, split, coverage, fitted)  # fits the plug-in rules at coverage
    eta = torch.softmax(apply_temperatures(logits, fitted.temperatures), dim=-1).mean(dim=1)
    score, p = eta.max(dim=1)
    curves["chow:mixture"] = (score.double().numpy(), (p != labels).double().numpy())
    for objective in ("balanced", "worst"):
        key = (objective, round(float(min(max(coverage, 1e-6), 1.0)), 4))
        if key not in fitted.plugin:
            continue
        alpha, mu = fitted.plugin[key]
        m, p = margin_and_prediction(eta.double(), alpha.double(), mu.double(),
                                     fitted.class_to_group, "plugin")
        curves[f"plugin_{objective}"] = (m.double().numpy(), (p != labels).double().numpy())
    return curves


def stage1_curves(bundle, checkpoint: Path, split: str, device: str) -> dict[str, tuple[Any, Any]]:
    """Gate score (model) and max calibrated probability (baseline) on ``split``."""
    from core.stage1 import load_artifacts, model_outputs, prepare_data
    from core.stage1.evaluation import predict

    art = load_artifacts(checkpoint, device)
    data = prepare_data(bundle, art.config.calib_fraction, art.config.seed)
    s = data.split(split)
    outputs = model_outputs(art.model, s.features)
    pred, probs, _, score = predict(outputs, art.calibration)
    res = (pred != s.labels).astype(float)
    return {"tuned model (gate)": (score, res), "softmax_confidence": (probs.max(axis=1), res)}


# --------------------------------------------------------------------------- HTML
def _table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.4f}"
        return html.escape("-" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: bytes | None, note: str | None = None) -> str:
    if data is None:
        return f"<p class='note'>{html.escape(note or 'not available')}</p>"
    return f"<img src='data:image/png;base64,{base64.b64encode(data).decode()}'/>"


HEADLINE = ("augrc", "aurc", "worst_group_error", "balanced_error", "coverage",
            "risk_at_coverage", "accuracy", "ece")


def write_report(out: Path, *, spec, status: dict[str, Any], ledger: dict[str, Any],
                 result: dict[str, Any], bundle, checkpoint: Path, device: str,
                 pareto: list[dict[str, Any]] | None, metric: str, mode: str) -> Path:
    """Write ``out/report/*.png`` and ``out/report.html``; returns the HTML path."""
    rdir = out / REPORT_DIR
    rdir.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []

    # Top trials (by their best value of the selection metric).
    from tuning.status import best_iteration

    scored = []
    for t in status["trials"]:
        found = best_iteration(ledger["trials"][t["trial_id"]].get("history", {}), metric, mode)
        if found is not None:
            scored.append((found[1][metric], found[0], t))
    scored.sort(key=lambda x: x[0] if mode == "min" else -x[0])
    params = sorted({k for *_, t in scored for k in t["config"]} - set(spec.fixed))
    rows = [[t["trial_id"], t["status"], t["iterations"], v, it,
             t["metrics"].get("augrc"), *[t["config"].get(p) for p in params]]
            for v, it, t in scored[:15]]
    sections.append("<h2>Top trials</h2>" + _table(
        ["trial", "status", "iters", f"best {metric}", "at iter", "augrc (last)", *params], rows))

    # Model vs baselines.
    for split in ("val", "test"):
        if split not in result:
            continue
        src = {"tuned model": result[split], **result.get("baselines", {}).get(split, {})}
        cols = [m for m in HEADLINE if any(m in r for r in src.values())]
        sections.append(f"<h2>{split}: exported model vs baselines</h2>" + _table(
            ["", *cols], [[n, *[r.get(m) for m in cols]] for n, r in src.items()]))

    # Optimisation history and importances from the study.
    hist = imp = None
    hist_note = imp_note = None
    try:
        study = load_study(spec)
        hist = plot_history(study, rdir / "history.png", ",".join(spec.metrics))
        try:
            import optuna

            # multi-objective: rank parameters by the first objective (None: the value)
            target: Callable[[optuna.trial.FrozenTrial], float] | None = (
                (lambda t: t.values[0]) if spec.multi_objective else None)
            importances = optuna.importance.get_param_importances(study, target=target)
            imp = plot_importances(importances, rdir / "importances.png") if importances else None
            imp_note = None if importances else "no parameter to rank"
        except Exception as exc:  # too few complete trials, single-valued params, ...
            imp_note = f"parameter importances not available: {str(exc).splitlines()[0]}"
    except Exception as exc:
        hist_note = f"study not readable: {str(exc).splitlines()[0]}"
    sections.append("<h2>Optimisation history</h2>" + _img(hist, hist_note))
    sections.append("<h2>Parameter importances</h2>" + _img(imp, imp_note))

    # Risk-coverage curves.
    rc = rc_note = None
    split = "test" if "test" in result else "val"
    try:
        if spec.trainable == "stage1":
            curves = stage1_curves(bundle, checkpoint, split, device)
        else:
            curves = argse_curves(bundle, checkpoint, result[split]["coverage"], split, device)
        rc = plot_risk_coverage(curves, rdir / "risk_coverage.png", split)
    except Exception as exc:
        rc_note = f"risk-coverage curves not available: {str(exc).splitlines()[0]}"
    sections.append("<h2>Risk-coverage curves</h2>" + _img(rc, rc_note))

    if pareto is not None and len(spec.metrics) >= 2:
        front = {p["trial_id"] for p in pareto}
        pts = []
        for t in status["trials"]:
            x, y = (t["metrics"].get(m) for m in spec.metrics[:2])
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                pts.append((t["trial_id"], float(x), float(y), t["trial_id"] in front))
        data = plot_pareto(pts, spec.metrics[:2], rdir / "pareto.png")
        sections.append("<h2>Pareto front</h2>" + _img(data) + _table(
            ["trial", *spec.metrics], [[p["trial_id"], *[p["values"].get(m) for m in spec.metrics]]
                                       for p in pareto]))

    title = f"seltune export: {spec.name}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}img{{max-width:100%}}.note{{color:#888}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>trainable <b>{html.escape(spec.trainable)}</b>, data {html.escape(spec.data)},
selected by <b>{html.escape(metric)}</b> ({mode}) on the validation side:
trial {html.escape(str(result.get('trial_id')))} at iteration {result.get('iteration')}.
Trials: {html.escape(', '.join(f'{k} {v}' for k, v in sorted(status['counts'].items())))}.</p>
{''.join(sections)}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
