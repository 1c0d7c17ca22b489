"""Stage-1 exit-gate head over frozen backbone features (docs/METHODS.md §4).

Train with :func:`train_stage1` on a feature bundle; load the written artefacts with
:func:`load_predictor` (features in, class / calibrated probs / exit out) or score them
with :func:`evaluate_checkpoint`.

Names are imported on first use (:mod:`core.lazy`): ``import core.stage1.config`` does not
import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from core.stage1.artifacts import evaluate_checkpoint, load_artifacts, save_artifacts
    from core.stage1.calibration import ClassCalibrator, fit_class_calibrator, odir_penalty
    from core.stage1.config import Stage1Config, resolve_ema_decay
    from core.stage1.data import Stage1Data, prepare_data, split_val
    from core.stage1.evaluation import (
        Stage1Calibration,
        Stage1Outputs,
        evaluate_model,
        fit_calibration,
        model_outputs,
        operating_point_metrics,
        split_metrics,
        stage1_baselines,
    )
    from core.stage1.gate_calibration import (
        GateCalibrator,
        ScoreCombiner,
        coverage_threshold,
        fit_gate_calibrator,
        fit_score_combiner,
    )
    from core.stage1.head import Stage1Head
    from core.stage1.losses import Stage1Loss, bce_gate_loss, selectivenet_loss
    from core.stage1.predictor import Stage1Predictor, load_predictor
    from core.stage1.train import Stage1Result, train_stage1

_SOURCES: dict[str, str] = {
    "ClassCalibrator": "core.stage1.calibration",
    "GateCalibrator": "core.stage1.gate_calibration",
    "Stage1Calibration": "core.stage1.evaluation",
    "Stage1Config": "core.stage1.config",
    "Stage1Data": "core.stage1.data",
    "Stage1Head": "core.stage1.head",
    "Stage1Loss": "core.stage1.losses",
    "Stage1Outputs": "core.stage1.evaluation",
    "Stage1Predictor": "core.stage1.predictor",
    "Stage1Result": "core.stage1.train",
    "ScoreCombiner": "core.stage1.gate_calibration",
    "bce_gate_loss": "core.stage1.losses",
    "coverage_threshold": "core.stage1.gate_calibration",
    "evaluate_checkpoint": "core.stage1.artifacts",
    "evaluate_model": "core.stage1.evaluation",
    "fit_calibration": "core.stage1.evaluation",
    "fit_class_calibrator": "core.stage1.calibration",
    "fit_gate_calibrator": "core.stage1.gate_calibration",
    "fit_score_combiner": "core.stage1.gate_calibration",
    "operating_point_metrics": "core.stage1.evaluation",
    "stage1_baselines": "core.stage1.evaluation",
    "load_artifacts": "core.stage1.artifacts",
    "load_predictor": "core.stage1.predictor",
    "model_outputs": "core.stage1.evaluation",
    "odir_penalty": "core.stage1.calibration",
    "prepare_data": "core.stage1.data",
    "resolve_ema_decay": "core.stage1.config",
    "save_artifacts": "core.stage1.artifacts",
    "selectivenet_loss": "core.stage1.losses",
    "split_metrics": "core.stage1.evaluation",
    "split_val": "core.stage1.data",
    "train_stage1": "core.stage1.train",
}

__all__ = [
    "ClassCalibrator",
    "GateCalibrator",
    "ScoreCombiner",
    "Stage1Calibration",
    "Stage1Config",
    "Stage1Data",
    "Stage1Head",
    "Stage1Loss",
    "Stage1Outputs",
    "Stage1Predictor",
    "Stage1Result",
    "bce_gate_loss",
    "coverage_threshold",
    "evaluate_checkpoint",
    "evaluate_model",
    "fit_calibration",
    "fit_class_calibrator",
    "fit_gate_calibrator",
    "fit_score_combiner",
    "load_artifacts",
    "load_predictor",
    "model_outputs",
    "odir_penalty",
    "operating_point_metrics",
    "prepare_data",
    "resolve_ema_decay",
    "save_artifacts",
    "selectivenet_loss",
    "split_metrics",
    "split_val",
    "stage1_baselines",
    "train_stage1",
]


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
