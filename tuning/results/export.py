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
    report.html        self-contained report (images embedded), PNGs in report/

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
import math
import tempfile
from pathlib import Path
from typing import Any

from core.errors import InputError
from tuning.experiment.layout import find_experiment
from tuning.experiment.records import load_ledger
from tuning.experiment.spec import SweepSpec, load_spec
from tuning.results.baselines import verdicts
from tuning.results.status import best_iteration, experiment_status, max_gap_of
from tuning.trainables import get_trainable, load_checked_bundle


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def select_best(status: dict[str, Any], ledger: dict[str, Any], metric: str,
                mode: str, max_gap: float | None = None) -> tuple[str, int, dict[str, Any]]:
    """``(trial_id, iteration, metrics)`` of the best checkpointed feasible result
    (module doc)."""
    by_id = {t["trial_id"]: t for t in status["trials"]}
    finished = [tid for tid, t in by_id.items() if t["status"] == "TERMINATED"]
    pool = finished or list(by_id)
    best = None
    for tid in pool:
        history = {k: v for k, v in ledger["trials"][tid].get("history", {}).items()
                   if v.get("checkpoint_dir_name")}
        found = best_iteration(history, metric, mode, max_gap)
        if found is None:
            continue
        value = found[1][metric]
        if best is None or (value < best[0] if mode == "min" else value > best[0]):
            best = (value, tid, found[0], found[1])
    if best is None:
        at = "" if max_gap is None else f" at the operating point (coverage gap <= {max_gap:g})"
        raise InputError(f"no trial reported {metric} with a checkpoint{at} yet",
                         file=status["path"], expected="a sweep with at least one result")
    return best[1], best[2], best[3]


def _trial_checkpoint(spec: SweepSpec, entry: dict[str, Any], iteration: int,
                      scratch: Path) -> Path:
    """The local directory of a trial's checkpoint; for an experiment in object storage
    it is downloaded into ``scratch`` first."""
    name = entry["history"][str(iteration)]["checkpoint_dir_name"]
    trial_dir = entry.get("dir") or f"trial_{entry['trial_id']}"
    if spec.uri:
        from tuning.experiment.mirror import download_dir, exists, join_uri, open_storage

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


def _last_checkpoint_iteration(entry: dict[str, Any]) -> int:
    its = [int(k) for k, v in entry.get("history", {}).items() if v.get("checkpoint_dir_name")]
    return max(its)


def full_config(spec: SweepSpec, trial_config: dict[str, Any]) -> dict[str, Any]:
    """Fixed + sampled values, built into the trainable's config (defaults filled in)."""
    from core.config import config_to_dict

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
    from core.atomic import atomic_dir, check_output_path
    from tuning.experiment.spec import parse_metrics
    from tuning.terminal import progress, to_jsonable

    path = find_experiment(experiment, storage)
    spec = load_spec(path)
    out_path = check_output_path(out, overwrite)
    metrics, modes = parse_metrics(metric or spec.metric,
                                   mode if (metric is not None or mode is not None) else spec.mode)
    if len(metrics) != 1:
        raise InputError(field="--metric", value=metric, expected="one metric to select by")
    sel_metric, sel_mode = metrics[0], modes[0]
    status = experiment_status(path, spec)
    ledger = load_ledger(path)
    trial_id, iteration, best_metrics = select_best(status, ledger, sel_metric, sel_mode,
                                                    max_gap_of(spec))
    entry = ledger["trials"][trial_id]
    info = get_trainable(spec.trainable)
    if info.exports_last_checkpoint:
        iteration = _last_checkpoint_iteration(entry)
    bundle = load_checked_bundle(spec.data, info.bundle_kind, info.name)
    config = full_config(spec, entry.get("config", {}))

    with atomic_dir(out_path, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix="seltune-export-") as scratch, \
            progress() as bar:
        # on stderr, with elapsed/remaining time: the baselines and the report take a while
        task = bar.add_task(f"export {trial_id}", total=4, status="checkpoint")
        src = _trial_checkpoint(spec, entry, iteration, Path(scratch))
        ckpt = info.materialise(src, config, bundle, tmp / "checkpoint", device)
        bar.update(task, advance=1, status="metrics beside the baselines on val and test")
        result = info.model_beside_baselines(ckpt, bundle, spec.coverage, device)
        result["config"] = config
        bar.update(task, advance=1, status="predictor.pt and the compat report")
        result["checkpoint"] = str(info.checkpoint_path(out_path.resolve() / "checkpoint"))
        result["trial_id"] = trial_id
        result["iteration"] = iteration
        result["selection"] = {"metric": sel_metric, "mode": sel_mode,
                               "value": best_metrics.get(sel_metric),
                               "experiment": status["path"]}
        result["operating_point"] = {"coverage": spec.coverage,
                                     "max_coverage_gap": spec.max_coverage_gap}
        result["verdict"] = verdicts({s: result[s] for s in ("val", "test") if s in result},
                                     result.get("baselines", {}), sel_metric, sel_mode,
                                     spec.coverage)
        info.write_predictor(ckpt, tmp / "predictor.pt")
        compat = info.compat_reports(ckpt, bundle, fmt)
        if compat:
            result.setdefault("compat", {}).update(compat)
        bar.update(task, advance=1, status="report")
        (tmp / "best_config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(
            json.dumps(to_jsonable(result), indent=2, allow_nan=False))
        pareto = None
        if spec.multi_objective:
            pareto = _export_pareto(spec, status, ledger, Path(scratch), bundle, tmp,
                                    device)
        from tuning.results.html_report import write_report

        write_report(tmp, spec=spec, status=status, ledger=ledger, result=result,
                     bundle=bundle, checkpoint=ckpt, device=device, pareto=pareto,
                     metric=sel_metric, mode=sel_mode)
        bar.update(task, advance=1, status="done")
    return {"out": str(out_path.resolve()), "metrics": result, "trial_id": trial_id,
            "iteration": iteration, "pareto": pareto}


def _export_pareto(spec, status, ledger, scratch: Path, bundle, tmp: Path,
                   device: str) -> list[dict[str, Any]]:
    front = []
    by_id = {t["trial_id"]: t for t in status["trials"]}
    for tid in status.get("pareto", []):
        entry = ledger["trials"][tid]
        it = _last_checkpoint_iteration(entry)
        config = full_config(spec, entry.get("config", {}))
        dest = tmp / "pareto" / tid
        dest.parent.mkdir(parents=True, exist_ok=True)
        get_trainable(spec.trainable).materialise(_trial_checkpoint(spec, entry, it, scratch),
                                                  config, bundle, dest, device)
        front.append({"trial_id": tid, "iteration": it, "config": config,
                      "values": {m: by_id[tid]["metrics"].get(m) for m in spec.metrics},
                      "checkpoint": f"pareto/{tid}"})
    (tmp / "pareto.json").write_text(json.dumps({"metrics": spec.metrics, "modes": spec.modes,
                                                 "front": front}, indent=2, default=str))
    return front
