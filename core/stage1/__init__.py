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
    "ClassCalibrator",
    "GateCalibrator",
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
    "load_artifacts",
    "load_predictor",
    "model_outputs",
    "odir_penalty",
    "prepare_data",
    "resolve_ema_decay",
    "save_artifacts",
    "selectivenet_loss",
    "split_metrics",
    "split_val",
    "train_stage1",
]
