"""A loaded Stage-1 model as a predictor: features in, (class, calibrated probs, exit) out.

Example::

    pred = load_predictor("runs/stage1")
    cls, probs, exit_ = pred.predict(features)   # [N], [N, C], [N] bool
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.stage1.artifacts import Stage1Artifacts, load_artifacts
from core.stage1.evaluation import model_outputs, predict


class Stage1Predictor:
    """Applies the exit rule ``exit = score >= tau``, ``class = argmax`` of calibrated
    probs (docs/METHODS.md §4).

    ``score`` is the checkpoint's exit score (``exit_score``: the calibrated gate, the
    calibrated max-softmax or their fitted combination, on the logit scale; see
    :mod:`core.stage1.gate_calibration`) and ``tau`` its ``(1 - eval_coverage)``
    quantile on ``val_calib``, both stored in the artefacts.
    """

    def __init__(self, artifacts: Stage1Artifacts, device: torch.device | str = "cpu") -> None:
        self.artifacts = artifacts
        self.device = device
        self.threshold = artifacts.calibration.threshold
        self.exit_score = artifacts.calibration.exit_score
        self.num_classes = artifacts.model.num_classes
        self.feature_dim = artifacts.model.in_dim

    def predict(self, features: np.ndarray | torch.Tensor
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``features [N, D]`` -> ``(class [N] int64, probs [N, C] float64, exit [N] bool)``."""
        cls, probs, exit_, _ = self.predict_with_scores(features)
        return cls, probs, exit_

    def predict_with_scores(self, features: np.ndarray | torch.Tensor):
        """As :meth:`predict`, plus the exit score ``[N]`` (float64, logit scale)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)
                            if not isinstance(features, torch.Tensor) else features)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"features shape {list(x.shape)}: expected [N, {self.feature_dim}]")
        out = model_outputs(self.artifacts.model, x, self.device)
        cls, probs, exit_, score = predict(out, self.artifacts.calibration)
        return cls.astype(np.int64), probs, exit_, score


def load_predictor(path: str | Path, device: str = "cpu") -> Stage1Predictor:
    """Load the artefacts directory written by training / export as a predictor."""
    from core.device import resolve_device

    dev = resolve_device(device)
    return Stage1Predictor(load_artifacts(path, dev), dev)
