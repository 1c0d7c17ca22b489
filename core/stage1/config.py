"""Stage-1 training config (ALGORITHMS.md §3).

The field names are a contract with the search spaces (``search_spaces/``) and the
Tune trainable: do not rename them. Defaults follow the seed
(``stage1-exit-gate-calibration.md``) where it gives one, otherwise they were chosen
on the default synthetic Stage-1 bundle (see ``tests/integration/test_stage1_quality.py``).
Build one from a dict, a JSON/YAML file or ``--set key=value`` overrides with
:func:`core.config.build_config` / :func:`core.config.config_from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from core.config import check_range
from core.errors import InputError

LossName = Literal["bce", "selectivenet"]
CalibratorName = Literal["temperature", "vector", "matrix", "dirichlet", "none"]
GateCalibratorName = Literal["platt", "isotonic"]

LOSSES = ("bce", "selectivenet")
CALIBRATORS = ("temperature", "vector", "matrix", "dirichlet", "none")
GATE_CALIBRATORS = ("platt", "isotonic")
EARLY_STOP_METRICS = ("augrc", "loss")


@dataclasses.dataclass
class Stage1Config:
    """Hyperparameters of one Stage-1 training.

    Loss (``loss``):
        ``bce``: ``CE(f) + gate_weight * BCE(g, 1[argmax f = y])`` (seed v1).
        ``selectivenet``: ``sn_alpha * [r + sn_lambda * max(0, target_coverage - phi)^2]
        + (1 - sn_alpha) * CE(h)`` (Geifman & El-Yaniv, ICML 2019).
    ``target_coverage`` in (0, 1] is the coverage the exit threshold is calibrated to
    (and SelectiveNet's ``c``).

    Optimisation: AdamW(``lr``, ``weight_decay``), linear warm-up over
    ``warmup_epochs`` then cosine decay to 0, counted in optimiser steps;
    ``batch_size`` samples per micro-batch, ``grad_accum_steps`` micro-batches per
    optimiser step, gradient norm clipped at ``max_grad_norm`` (0 disables).

    EMA: ``use_ema`` keeps an exponential moving average of the weights, used for
    evaluation and saved as the model. ``ema_decay=None`` picks
    ``1 - 1/max(10, total_steps/10)`` clamped to [0.9, 0.9999]: the average's time
    constant is a tenth of the run, whatever the dataset size and batch size (a fixed
    0.999 would average over more steps than a short run has).

    Early stopping: after every epoch the EMA (or raw) model is scored on
    ``val_select`` by ``early_stop_metric`` (``augrc`` of the calibrated gate, or the
    training ``loss``); training stops after ``early_stop_patience`` epochs without
    improvement (0 disables) and the best epoch's weights are kept.

    Class weights: ``balanced`` (``w_c = N / (C n_c)``) is the default because the
    Stage-1 data are imbalanced (about 80/20) and the headline metrics include
    worst-group and balanced error. It also decides what the gate is for: the
    weighted classifier's probabilities are prior-shifted, so its max-softmax is a poor
    exit score and the learned gate, trained on the correctness of the same
    predictions, beats it clearly (ALGORITHMS.md §3 quality check). With
    ``class_weights="none"`` (or a bias-correcting calibrator such as ``vector``) on
    the synthetic bundle the classifier is well specified, calibrated max-softmax is
    close to Bayes-optimal, and the gate does not beat it (see benchmarks/RESULTS.md).

    Gate input: ``trunk`` (the gate head reads the shared trunk, as in the seed) or
    ``trunk+confidence`` (also the detached log max-prob, top-2 margin and entropy of
    the class logits).

    Calibration on ``val_calib`` (the ``calib_fraction`` share of ``val``, split
    stratified by label with ``seed``): class ``calibrator`` with ODIR strengths
    ``odir_lambda`` / ``odir_mu`` (matrix and Dirichlet only), ``gate_calibrator``.
    """

    loss: LossName = "bce"
    gate_weight: float = 1.0
    target_coverage: float = 0.8
    sn_lambda: float = 32.0
    sn_alpha: float = 0.5
    hidden_dim: int = 512
    gate_input: Literal["trunk", "trunk+confidence"] = "trunk"
    dropout: float = 0.3
    label_smoothing: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 15
    warmup_epochs: float = 1.0
    batch_size: int = 256
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_decay: float | None = None
    early_stop_patience: int = 3
    early_stop_metric: Literal["augrc", "loss"] = "augrc"
    class_weights: Literal["none", "balanced"] = "balanced"
    calibrator: CalibratorName = "temperature"
    odir_lambda: float = 1e-2
    odir_mu: float = 1e-2
    gate_calibrator: GateCalibratorName = "platt"
    calib_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range checks; raise InputError naming the field, value and valid range."""
        for name, choices in (("loss", LOSSES), ("calibrator", CALIBRATORS),
                              ("gate_calibrator", GATE_CALIBRATORS),
                              ("class_weights", ("none", "balanced")),
                              ("early_stop_metric", EARLY_STOP_METRICS),
                              ("gate_input", ("trunk", "trunk+confidence"))):
            value = getattr(self, name)
            if value not in choices:
                raise InputError(field=name, value=value, expected="one of " + ", ".join(choices))
        check_range("gate_weight", self.gate_weight, low=0.0)
        check_range("target_coverage", self.target_coverage, low=0.0, high=1.0, low_open=True)
        check_range("sn_lambda", self.sn_lambda, low=0.0)
        check_range("sn_alpha", self.sn_alpha, low=0.0, high=1.0)
        check_range("hidden_dim", self.hidden_dim, low=1)
        check_range("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        check_range("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        check_range("lr", self.lr, low=0.0, low_open=True)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("epochs", self.epochs, low=1)
        check_range("warmup_epochs", self.warmup_epochs, low=0.0)
        check_range("batch_size", self.batch_size, low=1)
        check_range("grad_accum_steps", self.grad_accum_steps, low=1)
        check_range("max_grad_norm", self.max_grad_norm, low=0.0)
        if self.ema_decay is not None:
            check_range("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        check_range("early_stop_patience", self.early_stop_patience, low=0)
        check_range("odir_lambda", self.odir_lambda, low=0.0)
        check_range("odir_mu", self.odir_mu, low=0.0)
        check_range("calib_fraction", self.calib_fraction, low=0.0, high=1.0,
                    low_open=True, high_open=True)
        for name in ("gate_weight", "sn_lambda", "lr", "weight_decay", "odir_lambda", "odir_mu"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(field=name, value=getattr(self, name), expected="a finite number")


def resolve_ema_decay(config: Stage1Config, total_steps: int) -> float:
    """The EMA decay used for a run of ``total_steps`` optimiser steps (see Stage1Config)."""
    if config.ema_decay is not None:
        return float(config.ema_decay)
    horizon = max(10.0, total_steps / 10.0)
    return float(min(0.9999, max(0.9, 1.0 - 1.0 / horizon)))
