"""``seltune export EXPERIMENT --out DIR``: the winner as files the training code loads.

Written atomically into ``DIR``::

    best_config.json   the full config of the best trial (fixed + sampled values);
                       ``seltune train TRAINABLE --config best_config.json`` re-runs it
    checkpoint/        the best trial's best checkpoint in the trainable's own format:
                       AR-GSE: gating_selective.ckpt | gating_pretrained.ckpt,
                       trainer_state.pt, selective_training_logs.json;
                       Stage-1: stage1_head.pth, calibrator_*.pth, gate_calibration.json,
                       config.json (the trial's last checkpoint, finished exactly as
                       ``train_stage1`` finishes a run: best epoch + calibrators)
    metrics.json       {"val", "test", "baselines": {"val", "test"}, "config",
                       "checkpoint", "trial_id", "iteration", "selection"}: the
                       ``train --json`` shape, recomputed from ``checkpoint/`` with the
                       core evaluation functions (``seltune evaluate`` gives the same)
    pareto.json        multi-objective sweeps: the Pareto front (trial, config, values),
                       with each front trial's checkpoint in pareto/<trial_id>/
    predictor.pt       a TorchScript module holding the whole rule, usable without
                       seltune (AR-GSE: expert logits [N, E, C] -> (class, accept,
                       margin); Stage-1: features [N, D] -> (class, exit, probs))
    report.html        self-contained report (images embedded), PNGs in report/; a
                       section that cannot be drawn is a note there and its traceback
                       is logged on stderr

``--format argse-repo`` (part of the default ``both``) adds
``metrics.json["compat"]["argse_repo"]``: the decisions the AR-GSE repository's own
rule makes with this checkpoint (:mod:`core.argse.compat`), their agreement with
seltune's on val and test, both sets of metrics and why they differ; one line on stderr.

Selection: among trials that ran to their end (if any did, else all trials), the
(trial, iteration) with the best value of ``--metric`` over every reported iteration,
on the validation side; ``test`` is read only here, after the choice. Iterations off
the sweep's operating point (``coverage_gap > --max-coverage-gap``) are never chosen.
The model and the baselines are judged at the operating point on val and test, and
``metrics.json["verdict"]`` (also printed) says in one line per split whether the
model beats each baseline. For Stage-1 the
checkpoint is the chosen trial's last one (its training already keeps its best epoch).

An experiment in object storage (``URI/NAME``): only the checkpoint directories the
export needs are downloaded, into a temporary directory removed afterwards.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.atomic import atomic_dir, check_output_path
from core.config import config_to_dict
from core.errors import InputError
from core.jsonable import to_jsonable
from tuning.experiment.layout import find_experiment
from tuning.experiment.mirror import download_dir, exists, join_uri, open_storage
from tuning.experiment.records import (
    ExportMetrics,
    Ledger,
    LedgerEntry,
    Selection,
    SweepStatus,
    load_ledger,
)
from tuning.experiment.spec import SweepSpec, load_spec, parse_metrics
from tuning.results.baselines import verdicts
from tuning.results.html_report import logged_to_stderr, write_report
from tuning.results.selection import max_gap_of, select_best
from tuning.results.status import sweep_status
from tuning.terminal import progress
from tuning.trainables import get_trainable, load_checked_bundle
from tuning.trainables.base import RuleScores


def _trial_checkpoint(spec: SweepSpec, entry: LedgerEntry, iteration: int,
                      scratch: Path) -> Path:
    """The local directory of a trial's checkpoint; for an experiment in object storage
    it is downloaded into ``scratch`` first."""
    name = entry.history[str(iteration)]["checkpoint_dir_name"]
    trial_dir = entry.dir or f"trial_{entry.trial_id}"
    if spec.uri:
        remote = open_storage(spec.storage)
        if not exists(remote, spec.name, trial_dir, name):
            raise InputError("checkpoint directory is missing",
                             file=join_uri(spec.storage, spec.name, trial_dir, name),
                             expected="the trial's checkpoint written by the sweep")
        path = scratch / trial_dir / name
        download_dir(remote, path, spec.name, trial_dir, name)
        return path
    path = spec.path / trial_dir / name
    if not path.is_dir():
        raise InputError("checkpoint directory is missing", file=path,
                         expected="the trial's checkpoint written by the sweep")
    return path


def full_config(spec: SweepSpec, trial_config: dict[str, Any]) -> dict[str, Any]:
    """Fixed + sampled values, built into the trainable's config (defaults filled in)."""
    info = get_trainable(spec.trainable)
    return config_to_dict(info.build_config({**spec.fixed, **trial_config},
                                            source="best trial config"))


EXPORT_FORMATS = ("both", "seltune", "argse-repo")


def export(experiment: str, out: str, *, metric: str | None = None, mode: str | None = None,
           storage: str | None = None, device: str = "cpu",
           overwrite: bool = False, fmt: str = "both") -> dict[str, Any]:
    """Export the best trial of ``experiment`` into ``out`` (module docstring)."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(field="--format", value=fmt, expected="one of " + ", ".join(EXPORT_FORMATS))
    path = find_experiment(experiment, storage)
    spec = load_spec(path)
    out_path = check_output_path(out, overwrite)
    metrics, modes = parse_metrics(metric or spec.metric,
                                   mode if (metric is not None or mode is not None) else spec.mode)
    if len(metrics) != 1:
        raise InputError(field="--metric", value=metric, expected="one metric to select by")
    sel_metric, sel_mode = metrics[0], modes[0]
    status = sweep_status(path, spec)
    ledger = load_ledger(path)
    trial_id, iteration, best_metrics = select_best(status, ledger, sel_metric, sel_mode,
                                                    max_gap_of(spec))
    entry = ledger.trials[trial_id]
    info = get_trainable(spec.trainable)
    if info.exports_last_checkpoint:
        iteration = entry.last_checkpoint_iteration()
    bundle = load_checked_bundle(spec.data, info.bundle_kind, info.name)
    config = full_config(spec, entry.config)

    with atomic_dir(out_path, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix="seltune-export-") as scratch, \
            progress() as bar:
        # on stderr, with elapsed/remaining time: the baselines and the report take a while
        task = bar.add_task(f"export {trial_id}", total=4, status="checkpoint")
        src = _trial_checkpoint(spec, entry, iteration, Path(scratch))
        ckpt = info.materialise(src, config, bundle, tmp / "checkpoint", device)
        bar.update(task, advance=1, status="metrics beside the baselines on val and test")
        result = ExportMetrics.from_dict(
            {**info.model_beside_baselines(ckpt, bundle, spec.coverage, device),
             "config": config})
        bar.update(task, advance=1, status="predictor.pt and the compat report")
        result.checkpoint = str(info.checkpoint_path(out_path.resolve() / "checkpoint"))
        result.trial_id = trial_id
        result.iteration = iteration
        result.selection = Selection(sel_metric, sel_mode, best_metrics.get(sel_metric),
                                     status.path)
        result.operating_point = {"coverage": spec.coverage,
                                  "max_coverage_gap": spec.max_coverage_gap}
        result.verdict = verdicts(result.splits(), result.baselines, sel_metric, sel_mode,
                                  spec.coverage)
        info.write_predictor(ckpt, tmp / "predictor.pt")
        result.compat = info.compat_reports(ckpt, bundle, fmt) or None
        bar.update(task, advance=1, status="report")
        (tmp / "best_config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(
            json.dumps(to_jsonable(result.to_dict()), indent=2, allow_nan=False))
        pareto = None
        if spec.multi_objective:
            pareto = _export_pareto(spec, status, ledger, Path(scratch), bundle, tmp,
                                    device)
        with logged_to_stderr():  # a section that cannot be drawn: why, on stderr
            write_report(tmp, spec=spec, status=status, ledger=ledger, result=result,
                         rule_scores=_rule_scores(spec, bundle, ckpt, device, result),
                         pareto=pareto, metric=sel_metric, mode=sel_mode)
        bar.update(task, advance=1, status="done")
    return {"out": str(out_path.resolve()), "metrics": result.to_dict(), "trial_id": trial_id,
            "iteration": iteration, "pareto": pareto}


def _rule_scores(spec: SweepSpec, bundle: Any, ckpt: Path, device: str,
                 result: ExportMetrics) -> Callable[[str, float], RuleScores]:
    """What the report draws its curves from: the per-sample scores of the exported
    model and of every baseline on a split, at the operating point."""
    info = get_trainable(spec.trainable)
    return lambda split, coverage: info.rule_scores(
        bundle, ckpt, split, coverage=coverage, device=device,
        baselines=list(result.baselines.get(split) or {}))


def _export_pareto(spec: SweepSpec, status: SweepStatus, ledger: Ledger, scratch: Path,
                   bundle: Any, tmp: Path, device: str) -> list[dict[str, Any]]:
    front = []
    for tid in status.pareto or []:
        entry = ledger.trials[tid]
        it = entry.last_checkpoint_iteration()
        config = full_config(spec, entry.config)
        dest = tmp / "pareto" / tid
        dest.parent.mkdir(parents=True, exist_ok=True)
        get_trainable(spec.trainable).materialise(_trial_checkpoint(spec, entry, it, scratch),
                                                  config, bundle, dest, device)
        front.append({"trial_id": tid, "iteration": it, "config": config,
                      "values": {m: status.row(tid).metrics.get(m) for m in spec.metrics},
                      "checkpoint": f"pareto/{tid}"})
    (tmp / "pareto.json").write_text(json.dumps({"metrics": spec.metrics, "modes": spec.modes,
                                                 "front": front}, indent=2, default=str))
    return front
