"""Tune trainables: thin wrappers over the core training functions.

Each trial calls ``core.argse.train_selective`` / ``train_pretrain`` or
``core.stage1.train_stage1`` with

- ``config`` = the sweep's fixed values + the values Optuna sampled for this trial,
  built into the trainable's config dataclass (field names = search-space names);
- ``bundle`` = the data, loaded once by the driver and passed through Ray's object
  store (:func:`build_trainable` uses ``tune.with_parameters``), never re-read from
  disk by a trial;
- ``report`` = one ``tune.report(metrics, checkpoint=Checkpoint.from_directory(dir))``
  per epoch (Stage-1, pretrain) or per Stage A + cycle (selective): Tune's
  ``training_iteration`` counts these reports, and ASHA's ``max_t`` is in them;
- ``resume_from`` = the trial's last checkpoint (``tune.get_checkpoint()``) when Tune
  restarts the trial after a failure or a driver restart, so it continues instead of
  starting over.

Resources come from ``tune.with_resources`` (fractional CPUs/GPUs allowed); torch in
a trial uses as many threads as CPUs it was given. ``reuse_actors`` is safe for these
trainables: a trial keeps no state outside the call, all of it is rebuilt from
``config`` (seeded), and every trial asks for the same resources.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from core.errors import InputError


@dataclass(frozen=True)
class TrainableInfo:
    """What the tuning layer needs to know about one trainable.

    Attributes:
        name: CLI name.
        bundle_kind: ``"argse"`` (expert logits) or ``"stage1"`` (features).
        config_path: ``module:Class`` of the config dataclass.
        train_path: ``module:function`` of the training function.
        iteration_key: the metric that counts reports (``cycle`` / ``epoch``).
        checkpoint_file: the file that marks an exportable checkpoint directory.
        reported: metrics in every report (validation side).
        coverage_key: the config field that sets the operating point (``--coverage``).
        default_coverage: the operating point when ``--coverage`` is not given.
        baseline_point: the config (of searched keys) that reproduces the strongest
            training-free baseline, enqueued as a warm start when the space searches
            those keys (AR-GSE: a uniform gate with the plug-in rule is Plug-in[Worst];
            Stage-1: the calibrated max-softmax exit score).
    """

    name: str
    bundle_kind: str
    config_path: str
    train_path: str
    iteration_key: str
    checkpoint_file: str
    reported: tuple[str, ...] = ()
    coverage_key: str = "eval_coverage"
    default_coverage: float = 0.7
    baseline_point: tuple[tuple[str, Any], ...] = ()

    def reports(self, metric: str) -> bool:
        """Whether every report of this trainable carries ``metric`` (per-group
        ``coverage_gK`` / ``error_gK`` depend on the bundle's groups and are accepted)."""
        import re

        return metric in self.reported or bool(re.fullmatch(r"(coverage|error)_g\d+", metric))

    @property
    def config_class(self) -> type:
        return _attr(self.config_path)

    @property
    def train_function(self):
        return _attr(self.train_path)

    @property
    def worker_modules(self) -> tuple[str, ...]:
        """What a trial process imports before it can start (see ``start_ray(preload=)``)."""
        return ("torch", "ray.tune", "tuning.trainables", self.train_path.partition(":")[0])

    def config_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config_class)]

    def build_config(self, values: dict[str, Any], source: str = "sweep config"):
        from core.config import config_from_dict

        return config_from_dict(self.config_class, values, source=source)

    def expected_iterations(self, config) -> int:
        """Number of reports a full run of ``config`` makes (ASHA's default ``max_t``)."""
        if self.name == "argse-selective":
            return 1 + int(config.cycles)  # Stage A, then one report per cycle
        return int(config.epochs)


#: Metrics in every report (validation side), as the core trainers write them.
_ARGSE_METRICS = ("accuracy", "augrc", "aurc", "balanced_area", "balanced_error", "coverage",
                  "coverage_gap", "deployed_coverage", "empty_groups", "loss",
                  "selective_error", "worst_group_area", "worst_group_error")
_STAGE1_METRICS = ("accuracy", "augrc", "aurc", "balanced_area", "balanced_error", "brier",
                   "classwise_ece", "coverage", "coverage_gap", "ece", "worst_group_area", "empty_groups", "exit_accuracy", "gate_accuracy",
                   "gate_ece", "loss", "nll", "risk_at_coverage", "selective_error",
                   "softmax_confidence_augrc", "softmax_confidence_coverage",
                   "softmax_confidence_risk_at_coverage", "train_loss", "uncal_brier",
                   "uncal_classwise_ece", "uncal_ece", "uncal_nll", "worst_group_error",
                   "exit_coverage", "best_baseline_augrc",
                   *(f"{b}_{m}" for b in ("msp", "doctor", "maxlogit")
                     for m in ("augrc", "risk_at_coverage", "worst_group_error",
                               "balanced_error", "worst_group_area")))

TRAINABLES: dict[str, TrainableInfo] = {
    "argse-selective": TrainableInfo(
        "argse-selective", "argse", "core.argse.config:SelectiveConfig", "core.argse.selective:train_selective",
        "cycle", "gating_selective.ckpt", _ARGSE_METRICS,
        baseline_point=(("gate", "uniform"), ("final_rule", "plugin"),
                        ("final_fit_split", "tunev"), ("mu_objective", "worst"))),
    "argse-pretrain": TrainableInfo(
        "argse-pretrain", "argse", "core.argse.config:PretrainConfig", "core.argse.pretrain:train_pretrain",
        "epoch", "gating_pretrained.ckpt", _ARGSE_METRICS, coverage_key="target_coverage"),
    "stage1": TrainableInfo(
        "stage1", "stage1", "core.stage1.config:Stage1Config", "core.stage1.train:train_stage1",
        "epoch", "state.pt", _STAGE1_METRICS, default_coverage=0.8,
        baseline_point=(("exit_score", "msp"),)),
}


def _attr(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def get_trainable(name: str) -> TrainableInfo:
    if name not in TRAINABLES:
        raise InputError(field="--trainable", value=name,
                         expected=f"one of {', '.join(TRAINABLES)}")
    return TRAINABLES[name]


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Keep the scalar metrics (numpy / torch scalars become Python numbers)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, str):
            out[key] = value
    return out


def run_trial(config: dict[str, Any], *, trainable: str, bundle: Any, fixed: dict[str, Any],
              device: str = "auto", threads: int = 1,
              baselines: dict[str, Any] | None = None) -> None:
    """The body of every trial (see the module docstring). Runs inside a Ray worker."""
    import logging

    import torch
    from ray import tune

    # Ray logs one INFO line per persisted checkpoint from the worker; keep warnings.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(threads)))
    info = TRAINABLES[trainable]
    cfg = info.build_config({**fixed, **config}, source=f"trial config of {trainable}")

    from tuning.baselines import gap

    objective = (baselines or {}).get("metric")

    def report(metrics: dict[str, Any], checkpoint_dir: str) -> None:
        out = _scalar_metrics(metrics)
        g = gap(out.get(objective), baselines, out) if objective else None
        if g is not None:  # beside every report: how far from the strongest baseline
            out["gap_to_best_baseline"] = g
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    workdir = tempfile.mkdtemp(prefix="seltune-trial-")
    # Ray forwards a worker's stdout to the driver's stdout; keep that for `--json`.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            resume_from = None
            checkpoint = tune.get_checkpoint()
            if checkpoint is not None:
                # A private copy: the trainer reads it while new checkpoints are written.
                resume_from = checkpoint.to_directory(os.path.join(workdir, "resume"))
            info.train_function(cfg, bundle, report, resume_from=resume_from, device=device,
                                workdir=os.path.join(workdir, "ckpt"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _named(trainable: str):
    """A function named after the trainable (Ray shows the name in logs and tables)."""

    def fn(config, bundle=None, fixed=None, device="auto", threads=1, baselines=None):
        run_trial(config, trainable=trainable, bundle=bundle, fixed=fixed or {},
                  device=device, threads=threads, baselines=baselines)

    fn.__name__ = fn.__qualname__ = trainable.replace("-", "_")
    return fn


argse_selective = _named("argse-selective")
argse_pretrain = _named("argse-pretrain")
stage1 = _named("stage1")
_FUNCTIONS = {"argse-selective": argse_selective, "argse-pretrain": argse_pretrain,
              "stage1": stage1}


def build_trainable(trainable: str, bundle: Any, fixed: dict[str, Any], *, device: str,
                    cpus_per_trial: float, gpus_per_trial: float,
                    baselines: dict[str, Any] | None = None):
    """The Tune trainable: data through the object store, resources attached.

    ``bundle`` is put in the object store once (``tune.with_parameters``); every trial
    gets a zero-copy view of its numpy arrays.
    """
    from ray import tune

    threads = max(1, math.floor(cpus_per_trial)) if cpus_per_trial >= 1 else 1
    fn = tune.with_parameters(_FUNCTIONS[trainable], bundle=bundle, fixed=dict(fixed),
                              device=device, threads=threads, baselines=baselines)
    return tune.with_resources(fn, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
