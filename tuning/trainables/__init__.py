"""The trainables seltune tunes, and what the tuning layer knows about each.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
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
        return ("torch", "ray.tune", "tuning.trainables.trial", self.train_path.partition(":")[0])

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


def load_checked_bundle(data: str, kind: str, trainable: str):
    """Load the bundle at ``data`` and check it is the kind ``trainable`` reads."""
    from core.bundles import load_bundle

    path = Path(data)
    if not path.exists():
        raise InputError("no such bundle", file=path, expected="a bundle directory "
                         "(see `seltune data`)")
    bundle = load_bundle(path)
    if getattr(bundle, "kind", None) != kind:
        raise InputError(f"bundle is of kind {getattr(bundle, 'kind', '?')!r}", file=path,
                         expected=f"a {kind} bundle for trainable {trainable}")
    return bundle


