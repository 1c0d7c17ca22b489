"""Metrics of a trained Stage-1 model on a split: the one shared implementation.

Used by training (every epoch on ``val_select``, at the end on ``test``), by
:func:`core.stage1.artifacts.evaluate_checkpoint` and by export, so that every place
reports the same numbers for the same model, calibrators and split.

Shapes: N samples, C classes, K groups. Every metric comes from :mod:`core.metrics`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from core.metrics import (
    accuracy,
    augrc,
    aurc,
    brier,
    classwise_ece,
    ece,
    group_selective_report,
    nll,
    risk_at_coverage,
)
from core.stage1.calibration import ClassCalibrator, fit_class_calibrator
from core.stage1.gate_calibration import GateCalibrator, coverage_threshold, fit_gate_calibrator

EVAL_BATCH = 8192
BASELINE_NAME = "softmax_confidence"


@dataclasses.dataclass
class Stage1Outputs:
    """Raw head outputs on one split (float32 numpy): ``logits [N, C]``, ``gate [N]``
    (the gate *logit*, kept before any sigmoid), ``aux [N, C]``."""

    logits: np.ndarray
    gate: np.ndarray
    aux: np.ndarray


@dataclasses.dataclass
class Stage1Calibration:
    """Everything fit on ``val_calib``: class calibrator, gate calibrator, thresholds.

    ``threshold``: ``tau`` on the calibrated gate score (exit iff ``score >= tau``);
    ``softmax_threshold``: the same coverage calibration for the baseline exit score
    ``max calibrated prob``; ``target_coverage``: ``c``.
    """

    class_calibrator: ClassCalibrator
    gate_calibrator: GateCalibrator
    threshold: float
    softmax_threshold: float
    target_coverage: float


@torch.inference_mode()
def model_outputs(model: torch.nn.Module, features: np.ndarray | torch.Tensor,
                  device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH) -> Stage1Outputs:
    """Run ``model`` in eval mode (float32, no autocast) on ``features [N, D]``."""
    was_training = model.training
    model.eval()
    x = torch.as_tensor(features)
    outs: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device, torch.float32, non_blocking=True)
        for acc, t in zip(outs, model(xb)):
            acc.append(t.float().cpu())
    model.train(was_training)
    if x.shape[0] == 0:
        c = getattr(model, "num_classes", 2)
        return Stage1Outputs(np.zeros((0, c), np.float32), np.zeros(0, np.float32),
                             np.zeros((0, c), np.float32))
    logits, gate, aux = (torch.cat(o).numpy() for o in outs)
    return Stage1Outputs(logits, gate, aux)


def softmax_probs(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """``softmax(logits)`` ``[N, C]`` in float64 (torch's, numerically stable)."""
    return torch.softmax(torch.as_tensor(logits).to(torch.float64), dim=1).numpy()


def fit_calibration(outputs: Stage1Outputs, labels: np.ndarray, *, calibrator: str,
                    gate_calibrator: str, target_coverage: float, odir_lambda: float = 0.0,
                    odir_mu: float = 0.0) -> Stage1Calibration:
    """Fit all post-hoc maps on the calibration split (``val_calib`` only).

    The gate calibrator's target is the correctness of the *calibrated* prediction
    (``argmax`` of calibrated probs), the class that exits.
    """
    cc = fit_class_calibrator(calibrator, outputs.logits, labels,
                              odir_lambda=odir_lambda, odir_mu=odir_mu)
    probs = cc.probs(outputs.logits)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    gc = fit_gate_calibrator(gate_calibrator, outputs.gate, correct)
    tau = coverage_threshold(gc.scores(outputs.gate), target_coverage)
    sm_tau = coverage_threshold(probs.max(axis=1), target_coverage)
    return Stage1Calibration(cc, gc, tau, sm_tau, float(target_coverage))


def predict(outputs: Stage1Outputs, calibration: Stage1Calibration
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The exit rule: ``(class [N], calibrated probs [N, C], exit [N] bool, gate score [N])``.

    ``exit = calibrated_gate >= tau``; ``class = argmax`` of calibrated probs.
    """
    probs = calibration.class_calibrator.probs(outputs.logits)
    score = calibration.gate_calibrator.scores(outputs.gate)
    return probs.argmax(axis=1), probs, score >= calibration.threshold, score


def _selective(conf: np.ndarray, accept: np.ndarray, pred: np.ndarray, labels: np.ndarray,
               groups: np.ndarray, num_groups: int, c: float) -> dict[str, float]:
    residuals = (pred != labels).astype(np.float64)
    out = {
        "augrc": augrc(conf, residuals),
        "aurc": aurc(conf, residuals),
        "risk_at_coverage": risk_at_coverage(conf, residuals, c),
    }
    rep = group_selective_report(accept, pred, labels, groups, num_groups)
    out.update(rep)
    # accuracy of the samples that exit, logged apart from the gate's own accuracy
    out["exit_accuracy"] = 1.0 - rep["selective_error"]
    return out


def _class_metrics(probs: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}ece": ece(probs, labels),
        f"{prefix}classwise_ece": classwise_ece(probs, labels),
        f"{prefix}nll": nll(probs, labels),
        f"{prefix}brier": brier(probs, labels),
    }


def split_metrics(outputs: Stage1Outputs, labels: np.ndarray, groups: np.ndarray | None,
                  num_groups: int | None, calibration: Stage1Calibration,
                  loss: float | None = None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics of the model and of the softmax-confidence baseline on one split.

    Args:
        outputs: head outputs on the split.
        labels: ``[N]`` true classes.
        groups: ``[N]`` sample groups, or None to use the class as the group.
        num_groups: K (ignored when ``groups`` is None: K = C).
        calibration: maps fit on ``val_calib``.
        loss: the training loss on this split, reported as ``loss`` when given.

    Returns:
        ``(metrics, baselines)``; ``metrics`` has ``accuracy, augrc, aurc,
        risk_at_coverage, coverage, selective_error, exit_accuracy, balanced_error,
        worst_group_error, coverage_g{k}, error_g{k}, empty_groups, gate_accuracy,
        gate_ece, ece, classwise_ece, nll, brier, uncal_*`` (+ ``loss``);
        ``baselines = {"softmax_confidence": {...}}`` with the same selective metrics
        when the exit score is the max calibrated probability.
    """
    labels = np.asarray(labels, dtype=np.int64)
    c = calibration.target_coverage
    pred, probs, exit_mask, score = predict(outputs, calibration)
    if groups is None:
        grp, k = labels, probs.shape[1]
    else:
        grp, k = np.asarray(groups, dtype=np.int64), int(num_groups or (int(groups.max()) + 1))
    correct = pred == labels

    metrics: dict[str, float] = {"accuracy": accuracy(pred, labels)}
    metrics.update(_selective(score, exit_mask, pred, labels, grp, k, c))
    # the gate as a classifier of "the prediction is correct" (seed: logged apart from
    # the exit set's accuracy)
    metrics["gate_accuracy"] = float(np.mean((score >= 0.5) == correct))
    gate_probs = np.stack([1.0 - np.clip(score, 0.0, 1.0), np.clip(score, 0.0, 1.0)], axis=1)
    metrics["gate_ece"] = ece(gate_probs, correct.astype(np.int64))
    metrics.update(_class_metrics(probs, labels))
    metrics.update(_class_metrics(softmax_probs(outputs.logits), labels, prefix="uncal_"))
    if loss is not None:
        metrics["loss"] = float(loss)

    sm_conf = probs.max(axis=1)
    sm_exit = sm_conf >= calibration.softmax_threshold
    base: dict[str, float] = {"accuracy": metrics["accuracy"]}
    base.update(_selective(sm_conf, sm_exit, pred, labels, grp, k, c))
    base.update(_class_metrics(probs, labels))
    return metrics, {BASELINE_NAME: base}


def outputs_loss(loss_fn: torch.nn.Module, outputs: Stage1Outputs, labels: np.ndarray) -> float:
    """The training objective (``Stage1Loss``) on a whole split's outputs, float."""
    cw = getattr(loss_fn, "class_weights", None)
    dev = cw.device if isinstance(cw, torch.Tensor) else torch.device("cpu")
    with torch.no_grad():
        t = tuple(torch.as_tensor(a).to(dev) for a in (outputs.logits, outputs.gate, outputs.aux))
        loss, _ = loss_fn(t, torch.as_tensor(labels, dtype=torch.long).to(dev))
    return float(loss.item())


def evaluate_model(model: torch.nn.Module, calibration: Stage1Calibration, features: np.ndarray,
                   labels: np.ndarray, groups: np.ndarray | None, num_groups: int | None, *,
                   loss_fn: torch.nn.Module | None = None, device: Any = "cpu"
                   ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """:func:`split_metrics` of ``model`` on ``features [N, D]`` (the shared entry point)."""
    out = model_outputs(model, features, device)
    loss = None if loss_fn is None else outputs_loss(loss_fn, out, labels)
    return split_metrics(out, labels, groups, num_groups, calibration, loss)
