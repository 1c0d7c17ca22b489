"""Stage-1 exit-gate head over frozen backbone features (ALGORITHMS.md §3).

Train with :func:`train_stage1` on a feature bundle; load the written artefacts with
:func:`load_predictor` (features in, class / calibrated probs / exit out) or score them
with :func:`evaluate_checkpoint`.
"""

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
    split_metrics,
)
from core.stage1.gate_calibration import GateCalibrator, coverage_threshold, fit_gate_calibrator
from core.stage1.head import Stage1Head
from core.stage1.losses import Stage1Loss, bce_gate_loss, selectivenet_loss
from core.stage1.predictor import Stage1Predictor, load_predictor
from core.stage1.train import Stage1Result, train_stage1

__all__ = [
    "Stage1Config",
    "resolve_ema_decay",
    "Stage1Head",
    "Stage1Loss",
    "bce_gate_loss",
    "selectivenet_loss",
    "ClassCalibrator",
    "fit_class_calibrator",
    "odir_penalty",
    "GateCalibrator",
    "fit_gate_calibrator",
    "coverage_threshold",
    "Stage1Data",
    "prepare_data",
    "split_val",
    "Stage1Calibration",
    "Stage1Outputs",
    "model_outputs",
    "fit_calibration",
    "split_metrics",
    "evaluate_model",
    "Stage1Result",
    "train_stage1",
    "save_artifacts",
    "load_artifacts",
    "evaluate_checkpoint",
    "Stage1Predictor",
    "load_predictor",
]
