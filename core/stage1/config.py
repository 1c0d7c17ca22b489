"""Stage-1 training config (docs/METHODS.md §4).

The field names are a contract with the search spaces (``search_spaces/``) and the
Tune trainable: do not rename them. Defaults follow the seed
(``stage1-exit-gate-calibration.md``) where it gives one, otherwise they were chosen
on the default synthetic Stage-1 bundle (see ``tests/integration/test_stage1_quality.py``);
``exit_score`` and ``class_weights`` by ``benchmarks/stage1_quality.py`` (they depart
from the seed's learned gate, see :class:`Stage1Config`).
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
ExitScoreName = Literal["gate", "msp", "combined"]

LOSSES = ("bce", "selectivenet")
CALIBRATORS = ("temperature", "vector", "matrix", "dirichlet", "none")
GATE_CALIBRATORS = ("platt", "isotonic")
EXIT_SCORES = ("gate", "msp", "combined")
EARLY_STOP_METRICS = ("augrc", "loss")


@dataclasses.dataclass
class Stage1Config:
    """Hyperparameters of one Stage-1 training.

    Loss (``loss``):
        ``bce``: ``CE(f) + gate_weight * BCE(g, 1[argmax f = y])`` (seed v1).
        ``selectivenet``: ``sn_alpha * [r + sn_lambda * max(0, target_coverage - phi)^2]
        + (1 - sn_alpha) * CE(h)`` (Geifman & El-Yaniv, ICML 2019).
    ``target_coverage`` in (0, 1] is SelectiveNet's training coverage ``c``: a training
    knob (searchable), never the point a model is judged at.

    Operating point: ``eval_coverage`` in (0, 1] (default 0.8, the seed's exit
    coverage). The exit threshold ``tau`` is the ``(1 - eval_coverage)`` quantile of the
    exit score on ``val_calib``, and every reported headline metric on a split is
    measured at exactly this coverage there (the exit score shifted by one label-free
    constant, :func:`core.metrics.shift_to_coverage`), so every trial of a sweep is
    compared at the same coverage. A sweep fixes it; it is never searched.

    Exit score (``exit_score``), all calibrated on ``val_calib``:
        ``gate``: the calibrated gate score (``gate_calibrator`` on the gate logit);
        ``msp``: the max of the calibrated class probabilities;
        ``combined``: ``sigma(w_g * g + w_m * logit(msp) + b)``, a logistic regression
        on the raw gate logit and the logit of the calibrated max-softmax predicting
        the correctness of the calibrated prediction
        (:class:`core.stage1.gate_calibration.ScoreCombiner`).

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

    Class weights: ``balanced`` (``w_c = N / (C n_c)``) or ``none``. The weighted
    classifier's probabilities are prior-shifted, so its max-softmax is a poor exit
    score and the learned gate beats it; but the unweighted classifier with the
    ``combined`` exit score has the lower AUGRC (and worst-source error) at the
    operating point on the default synthetic bundle and ties on the scikit-learn
    bundles (benchmarks/RESULTS.md, "Stage-1 vs training-free baselines (issues 10,
    11)"), hence the defaults ``class_weights="none"``, ``exit_score="combined"``.
    The seed's choice (a learned gate on a balanced classifier) stays reachable:
    ``--set exit_score=gate --set class_weights=balanced``, or the search space
    ``search_spaces/presets/stage1-seed.json``.

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
    eval_coverage: float = 0.8
    exit_score: ExitScoreName = "combined"
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
    class_weights: Literal["none", "balanced"] = "none"
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
                              ("gate_input", ("trunk", "trunk+confidence")),
                              ("exit_score", EXIT_SCORES)):
            value = getattr(self, name)
            if value not in choices:
                raise InputError(field=name, value=value, expected="one of " + ", ".join(choices))
        check_range("gate_weight", self.gate_weight, low=0.0)
        check_range("target_coverage", self.target_coverage, low=0.0, high=1.0, low_open=True)
        check_range("eval_coverage", self.eval_coverage, low=0.0, high=1.0, low_open=True)
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
        for name in ("target_coverage", "eval_coverage", "gate_weight", "sn_lambda", "lr", "weight_decay", "odir_lambda", "odir_mu"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(field=name, value=getattr(self, name), expected="a finite number")


def resolve_ema_decay(config: Stage1Config, total_steps: int) -> float:
    """The EMA decay used for a run of ``total_steps`` optimiser steps (see Stage1Config)."""
    if config.ema_decay is not None:
        return float(config.ema_decay)
    horizon = max(10.0, total_steps / 10.0)
    return float(min(0.9999, max(0.9, 1.0 - 1.0 / horizon)))


#: Values of the fields added after the first checkpoints were written, as those
#: checkpoints behaved: the exit score was the calibrated gate and the exit threshold
#: was calibrated to ``target_coverage``. ``eval_coverage`` is filled in from the
#: checkpoint's own ``target_coverage`` by :func:`upgrade_config_dict`.
LEGACY_DEFAULTS: dict[str, object] = {"exit_score": "gate"}
#: The fields a checkpoint may predate.
LEGACY_FIELDS = ("eval_coverage", "exit_score")


def upgrade_config_dict(data: dict[str, object]) -> dict[str, object]:
    """A saved config dict with the fields it predates filled in as it behaved.

    A config without ``eval_coverage`` judged (and thresholded) at its
    ``target_coverage`` (default 0.8 when that is missing too); one without
    ``exit_score`` exited on the gate. Returns a new dict; ``data`` is not changed.
    """
    out = dict(data)
    for key, value in LEGACY_DEFAULTS.items():
        out.setdefault(key, value)
    if "eval_coverage" not in out:
        out["eval_coverage"] = out.get("target_coverage", Stage1Config.target_coverage)
    return out
