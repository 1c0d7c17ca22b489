"""Metrics of a trained Stage-1 model on a split: the one shared implementation.

Used by training (every epoch on ``val_select``, at the end on ``test``), by
:func:`core.stage1.artifacts.evaluate_checkpoint` and by export, so that every place
reports the same numbers for the same model, calibrators and split.

Shapes: N samples, C classes, K groups. Every metric comes from :mod:`core.metrics`.

The operating point (``Stage1Config.eval_coverage``): every headline metric of a split
is measured with the exit score shifted by one label-free constant so that exactly
``round(eval_coverage * N)`` samples of that split exit
(:func:`core.metrics.shift_to_coverage`). The model and every baseline are judged at
the same coverage on the same split; a trial's SelectiveNet ``target_coverage`` is a
training knob and moves nothing here. The deployed rule ``score >= tau`` (tau fit on
``val_calib``) is reported apart, as ``exit_coverage`` / ``exit_accuracy``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from core.metrics import (
    accuracy,
    area_under_group_curves,
    augrc,
    aurc,
    brier,
    classwise_ece,
    coverage_gap,
    ece,
    group_error_curves,
    group_selective_report,
    nll,
    risk_at_coverage,
    shift_to_coverage,
)
from core.stage1.calibration import ClassCalibrator, fit_class_calibrator
from core.stage1.gate_calibration import (
    GateCalibrator,
    ScoreCombiner,
    coverage_threshold,
    exit_scores,
    fit_gate_calibrator,
    fit_score_combiner,
    msp_logit,
)

EVAL_BATCH = 8192
#: The training-free baselines reported beside every Stage-1 result (docs/METHODS.md §6).
BASELINE_NAMES = ("msp", "doctor", "maxlogit")
#: The pre-issue-11 name of the ``msp`` baseline, still reported (same numbers) so that
#: readers of older results keep working.
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
    """Everything fit on ``val_calib``: class calibrator, gate calibrator, exit score,
    thresholds.

    ``exit_score``: ``gate``, ``msp`` or ``combined`` (``combiner`` holds the fitted
    combination for ``combined``, else None); scores are on the logit scale
    (:mod:`core.stage1.gate_calibration`). ``threshold``: ``tau`` on the exit score
    (exit iff ``score >= tau``), the ``(1 - eval_coverage)`` quantile on ``val_calib``;
    ``softmax_threshold``: the same for the msp logit; ``target_coverage``:
    SelectiveNet's training ``c`` (kept for the record, it sets no threshold);
    ``eval_coverage``: the operating point every metric is measured at.
    """

    class_calibrator: ClassCalibrator
    gate_calibrator: GateCalibrator
    threshold: float
    softmax_threshold: float
    target_coverage: float
    eval_coverage: float
    exit_score: str = "gate"
    combiner: ScoreCombiner | None = None

    def scores(self, outputs: Stage1Outputs) -> np.ndarray:
        """The exit score ``[N]`` of ``outputs`` (logit scale, higher = exit first)."""
        return exit_scores(self.exit_score, outputs.gate,
                           self.class_calibrator.calibrated_logits(outputs.logits),
                           self.gate_calibrator, self.combiner)


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
                    gate_calibrator: str, target_coverage: float,
                    eval_coverage: float | None = None, exit_score: str = "gate",
                    odir_lambda: float = 0.0, odir_mu: float = 0.0) -> Stage1Calibration:
    """Fit all post-hoc maps on the calibration split (``val_calib`` only).

    The gate calibrator's (and the combiner's) target is the correctness of the
    *calibrated* prediction (``argmax`` of calibrated probs), the class that exits. The
    exit threshold is the ``(1 - eval_coverage)`` quantile of the exit score
    (``eval_coverage=None``: ``target_coverage``, as before the two were separate).
    """
    c_eval = float(target_coverage if eval_coverage is None else eval_coverage)
    cc = fit_class_calibrator(calibrator, outputs.logits, labels,
                              odir_lambda=odir_lambda, odir_mu=odir_mu)
    cal_logits = cc.calibrated_logits(outputs.logits)
    correct = (cal_logits.argmax(dim=1).numpy() == labels).astype(np.float64)
    gc = fit_gate_calibrator(gate_calibrator, outputs.gate, correct)
    msp = msp_logit(cal_logits)
    combiner = (fit_score_combiner(outputs.gate, msp, correct)
                if exit_score == "combined" else None)
    score = exit_scores(exit_score, outputs.gate, cal_logits, gc, combiner)
    tau = coverage_threshold(score, c_eval)
    sm_tau = coverage_threshold(msp, c_eval)
    return Stage1Calibration(cc, gc, tau, sm_tau, float(target_coverage), c_eval,
                             exit_score, combiner)


def predict(outputs: Stage1Outputs, calibration: Stage1Calibration
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The exit rule: ``(class [N], calibrated probs [N, C], exit [N] bool, exit score [N])``.

    ``exit = score >= tau`` (``tau`` fit on ``val_calib``); ``class = argmax`` of
    calibrated probs; the score is the configured exit score on the logit scale.
    """
    probs = calibration.class_calibrator.probs(outputs.logits)
    score = calibration.scores(outputs)
    return probs.argmax(axis=1), probs, score >= calibration.threshold, score


def _groups(labels: np.ndarray, groups: np.ndarray | None, num_groups: int | None,
            num_classes: int) -> tuple[np.ndarray, int]:
    """``(group [N], K)``: the per-sample groups, or the classes when there are none."""
    if groups is None:
        return labels, num_classes
    grp = np.asarray(groups, dtype=np.int64)
    return grp, int(num_groups or (int(grp.max()) + 1 if len(grp) else 1))


def operating_point_metrics(confidence: np.ndarray, pred: np.ndarray, labels: np.ndarray,
                            groups: np.ndarray, num_groups: int, coverage: float
                            ) -> dict[str, float]:
    """Selective metrics of one exit score at the operating point ``coverage``.

    Args:
        confidence: ``[N]`` exit score (higher = accepted first; any monotone scale).
        pred, labels: ``[N]`` predicted and true classes.
        groups: ``[N]`` group of each sample in ``[0, num_groups)``.
        coverage: the operating point in (0, 1].

    The accept set is ``shift_to_coverage(confidence, coverage) > 0``: exactly
    ``round(coverage * N)`` samples of this split (a tie block at the cut aside,
    reported by ``coverage_gap``), so every rule is judged at the same coverage.

    Returns:
        ``augrc, aurc`` (coverage-free), ``risk_at_coverage`` (at ``coverage``),
        ``coverage`` (realised), ``coverage_gap``, ``selective_error``,
        ``balanced_error``, ``worst_group_error``, ``coverage_g{k}``, ``error_g{k}``,
        ``empty_groups`` (at the operating point), ``worst_group_area`` and
        ``balanced_area`` (mean error over rejection rates [0, 0.8], i.e. the area
        normalised by 0.8).
    """
    residuals = (pred != labels).astype(np.float64)
    accept = shift_to_coverage(confidence, coverage) > 0
    out = {
        "augrc": augrc(confidence, residuals),
        "aurc": aurc(confidence, residuals),
        "risk_at_coverage": risk_at_coverage(confidence, residuals, coverage),
    }
    out.update(group_selective_report(accept, pred, labels, groups, num_groups))
    out["coverage_gap"] = coverage_gap(accept, coverage)
    curves = group_error_curves(confidence, pred, labels, groups, num_groups)
    out.update(area_under_group_curves(curves))
    return out


def _class_metrics(probs: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}ece": ece(probs, labels),
        f"{prefix}classwise_ece": classwise_ece(probs, labels),
        f"{prefix}nll": nll(probs, labels),
        f"{prefix}brier": brier(probs, labels),
    }


def doctor_confidence(calibrated_logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """DOCTOR's confidence ``-log(1 - sum_c p_c^2)`` ``[N]`` from logits ``[N, C]``.

    DOCTOR (Granese et al., NeurIPS 2021) rejects when the Gini impurity
    ``1 - sum_c p_c^2`` is large, so its confidence is any decreasing function of it;
    ``-log`` keeps the order and does not saturate. ``1 - sum p^2 = sum_c p_c (1 - p_c)``
    is computed in log space: ``log(1 - p_c)`` is ``log1p(-p_c)`` except for the argmax,
    where it is ``logsumexp`` of the other logits minus ``logsumexp`` of all.
    """
    z = torch.as_tensor(calibrated_logits).detach().to("cpu", torch.float64)
    logp = torch.log_softmax(z, dim=1)
    log1m = torch.log1p(-logp.exp())
    if z.shape[1] >= 2:
        top = z.argmax(dim=1, keepdim=True)
        rest = torch.logsumexp(z.scatter(1, top, float("-inf")), dim=1) - torch.logsumexp(z, dim=1)
        log1m = log1m.scatter(1, top, rest.unsqueeze(1))
    return (-torch.logsumexp(logp + log1m, dim=1)).numpy()


def stage1_baselines(calibrated_logits: np.ndarray | torch.Tensor, logits: np.ndarray,
                     labels: np.ndarray, groups: np.ndarray | None, coverage: float,
                     num_groups: int | None = None) -> dict[str, dict[str, float]]:
    """The training-free baselines at the operating point ``coverage`` on one split.

    Args:
        calibrated_logits: the class calibrator's logits ``[N, C]`` (fit on
            ``val_calib``); ``softmax`` of them are the calibrated probabilities.
        logits: the raw class logits ``[N, C]``.
        labels: ``[N]`` true classes.
        groups: ``[N]`` per-sample groups, or None for one group per class.
        coverage: the operating point in (0, 1].
        num_groups: K (default: ``max(groups) + 1``; C without groups).

    Returns:
        ``{"msp", "doctor", "maxlogit"}`` -> the metric keys of
        :func:`operating_point_metrics` plus ``accuracy, ece, classwise_ece, nll,
        brier`` of the probabilities the baseline predicts with:

        - ``msp``: calibrated max-softmax (confidence :func:`msp_logit`, the same
          order as ``max p``); class ``argmax p``.
        - ``doctor``: :func:`doctor_confidence` of the calibrated probabilities;
          class ``argmax p``.
        - ``maxlogit``: ``max_c`` of the raw logits (Hendrycks et al., 2022); class
          ``argmax`` of the raw logits, probabilities ``softmax`` of them.
    """
    labels = np.asarray(labels, dtype=np.int64)
    zc = torch.as_tensor(calibrated_logits).detach().to("cpu", torch.float64)
    zr = torch.as_tensor(np.asarray(logits)).detach().to("cpu", torch.float64)
    grp, k = _groups(labels, groups, num_groups, int(zc.shape[1]))
    probs_cal = torch.softmax(zc, dim=1).numpy()
    probs_raw = torch.softmax(zr, dim=1).numpy()
    pred_cal = probs_cal.argmax(axis=1)
    pred_raw = zr.argmax(dim=1).numpy()
    rules = {
        "msp": (msp_logit(zc), pred_cal, probs_cal),
        "doctor": (doctor_confidence(zc), pred_cal, probs_cal),
        "maxlogit": (zr.max(dim=1).values.numpy(), pred_raw, probs_raw),
    }
    out: dict[str, dict[str, float]] = {}
    for name, (conf, pred, probs) in rules.items():
        m: dict[str, float] = {"accuracy": accuracy(pred, labels)}
        m.update(operating_point_metrics(conf, pred, labels, grp, k, coverage))
        m.update(_class_metrics(probs, labels))
        out[name] = m
    return out


def split_metrics(outputs: Stage1Outputs, labels: np.ndarray, groups: np.ndarray | None,
                  num_groups: int | None, calibration: Stage1Calibration,
                  loss: float | None = None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics of the model and of the training-free baselines on one split.

    Args:
        outputs: head outputs on the split.
        labels: ``[N]`` true classes.
        groups: ``[N]`` sample groups, or None to use the class as the group.
        num_groups: K (ignored when ``groups`` is None: K = C).
        calibration: maps fit on ``val_calib``.
        loss: the training loss on this split, reported as ``loss`` when given.

    Headline metrics are measured at the operating point
    ``calibration.eval_coverage`` on *this* split (:func:`operating_point_metrics`):
    every model and baseline accepts the same number of samples here.

    Returns:
        ``(metrics, baselines)``; ``metrics`` has ``accuracy`` and the keys of
        :func:`operating_point_metrics` for the configured exit score, then
        ``exit_coverage`` / ``exit_accuracy`` (the deployed rule ``score >= tau``, tau
        fit on ``val_calib``: its coverage and accuracy on this split, which shows how
        the threshold transfers), ``gate_accuracy`` / ``gate_ece`` (the calibrated gate
        as a classifier of "the prediction is correct", whatever the exit score),
        ``ece, classwise_ece, nll, brier``, ``uncal_*`` (+ ``loss``); ``baselines``
        maps ``msp``, ``doctor``, ``maxlogit`` (:func:`stage1_baselines`) and
        ``softmax_confidence`` (= ``msp``, its old name) to the same metric keys.
    """
    labels = np.asarray(labels, dtype=np.int64)
    c = calibration.eval_coverage
    pred, probs, exit_mask, score = predict(outputs, calibration)
    grp, k = _groups(labels, groups, num_groups, probs.shape[1])
    correct = pred == labels

    metrics: dict[str, float] = {"accuracy": accuracy(pred, labels)}
    metrics.update(operating_point_metrics(score, pred, labels, grp, k, c))
    metrics["exit_coverage"] = float(exit_mask.mean()) if len(exit_mask) else 0.0
    metrics["exit_accuracy"] = (float(correct[exit_mask].mean()) if exit_mask.any()
                                else 0.0)
    gate = np.clip(calibration.gate_calibrator.scores(outputs.gate), 0.0, 1.0)
    metrics["gate_accuracy"] = float(np.mean((gate >= 0.5) == correct))
    metrics["gate_ece"] = ece(np.stack([1.0 - gate, gate], axis=1), correct.astype(np.int64))
    metrics.update(_class_metrics(probs, labels))
    metrics.update(_class_metrics(softmax_probs(outputs.logits), labels, prefix="uncal_"))
    if loss is not None:
        metrics["loss"] = float(loss)

    cal_logits = calibration.class_calibrator.calibrated_logits(outputs.logits)
    base = stage1_baselines(cal_logits, outputs.logits, labels, grp, c, k)
    base[BASELINE_NAME] = dict(base["msp"])
    return metrics, base


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
