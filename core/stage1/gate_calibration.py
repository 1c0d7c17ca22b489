"""Gate calibration and coverage calibration, fit on ``val_calib`` only (ALGORITHMS.md §3).

The gate logit ``g(x)`` is turned into a calibrated probability that the (calibrated)
class prediction is correct:

- ``platt``: ``sigma(a * g + b)``, logistic regression on the gate logit (Platt, 1999),
  fit by LBFGS in float64 from ``a = 1, b = 0`` (the raw sigmoid).
- ``isotonic``: a non-decreasing step map fit by pool-adjacent-violators
  (:func:`isotonic_fit`, same result as scikit-learn's ``IsotonicRegression``), stored
  as its knots and applied by linear interpolation with clipping. Isotonic maps are flat on intervals, which would tie
  many samples at one score and make the coverage threshold coarse; ties are broken by
  adding ``1e-6 * sigmoid(g)``, which keeps the ranking of the raw gate within a flat
  step and moves the calibrated value by at most 1e-6.

Coverage calibration: ``tau`` = the ``(1 - c)`` quantile of calibrated gate scores on
the calibration split, taken as the ``k``-th largest score with ``k = round(c N)``, so
``exit = score >= tau`` accepts exactly ``k`` of the ``N`` samples there (ties aside).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GATE_KINDS = ("platt", "isotonic")
ISOTONIC_TIE_BREAK = 1e-6


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


@dataclasses.dataclass
class GateCalibrator:
    """A fitted gate calibrator.

    ``platt``: ``params = {"a": float, "b": float}``; ``isotonic``:
    ``params = {"x": [knots], "y": [values]}`` (lists of floats, JSON-exact).
    """

    kind: str
    params: dict[str, Any]

    def scores(self, gate_logit: np.ndarray | torch.Tensor) -> np.ndarray:
        """``gate_logit [N]`` -> calibrated gate scores ``[N]`` in [0, 1] (float64)."""
        g = np.asarray(torch.as_tensor(gate_logit).detach().cpu().double().numpy())
        if self.kind == "platt":
            return _sigmoid(self.params["a"] * g + self.params["b"])
        if self.kind == "isotonic":
            x = np.asarray(self.params["x"], dtype=np.float64)
            y = np.asarray(self.params["y"], dtype=np.float64)
            base = np.interp(g, x, y) if len(x) else np.full_like(g, 0.5)
            return base + ISOTONIC_TIE_BREAK * _sigmoid(g)
        raise ValueError(f"gate calibrator kind {self.kind!r}: expected platt or isotonic")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.params}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateCalibrator:
        if data.get("kind") not in GATE_KINDS:
            raise ValueError(f"gate calibrator kind {data.get('kind')!r}: expected platt or isotonic")
        return cls(kind=data["kind"], params=dict(data["params"]))


def fit_gate_calibrator(kind: str, gate_logit: np.ndarray | torch.Tensor,
                        correct: np.ndarray | torch.Tensor) -> GateCalibrator:
    """Fit on gate logits ``[N]`` and correctness targets ``[N]`` in {0, 1}."""
    g = torch.as_tensor(gate_logit).detach().to("cpu", torch.float64)
    t = torch.as_tensor(correct).detach().to("cpu", torch.float64)
    if kind == "platt":
        a = torch.ones(1, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        if len(g) and 0.0 < float(t.mean()) < 1.0:
            opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                                    tolerance_change=1e-12, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = F.binary_cross_entropy_with_logits(a * g + b, t)
                loss.backward()
                return loss

            opt.step(closure)
        av, bv = float(a.item()), float(b.item())
        if not (math.isfinite(av) and math.isfinite(bv)):
            av, bv = 1.0, 0.0
        return GateCalibrator("platt", {"a": av, "b": bv})
    if kind == "isotonic":
        x, y = isotonic_fit(g.numpy(), t.numpy())
        return GateCalibrator("isotonic", {"x": [float(v) for v in x], "y": [float(v) for v in y]})
    raise ValueError(f"gate calibrator kind {kind!r}: expected platt or isotonic")


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-decreasing least-squares fit of ``y`` on ``x``.

    Equal ``x`` values are pooled first (their mean ``y``, weighted by count), as
    scikit-learn's ``IsotonicRegression`` does. Returns knots ``(x_unique [U],
    fitted [U])`` for :func:`numpy.interp`; fitted values lie in [min y, max y].
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0), np.zeros(0)
    xu, inv = np.unique(x, return_inverse=True)
    w = np.bincount(inv).astype(np.float64)
    m = np.bincount(inv, weights=y) / w
    # stack of blocks: (mean, weight, number of unique points)
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for mi, wi in zip(m.tolist(), w.tolist()):
        means.append(mi)
        weights.append(wi)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            w2 = weights[-2] + weights[-1]
            means[-2] = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w2
            weights[-2] = w2
            sizes[-2] += sizes[-1]
            means.pop()
            weights.pop()
            sizes.pop()
    fitted = np.repeat(np.asarray(means), np.asarray(sizes))
    return xu, fitted


def coverage_threshold(scores: np.ndarray, target_coverage: float) -> float:
    """``tau`` such that ``mean(scores >= tau) = round(c N) / N`` (ties aside).

    Args:
        scores: calibrated gate scores on the calibration split, ``[N]``.
        target_coverage: ``c`` in (0, 1].
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        return 0.5
    k = min(len(s), max(1, round(target_coverage * len(s))))
    return float(s[k - 1])
