"""Gate calibration and coverage calibration, fit on ``val_calib`` only (docs/METHODS.md §4).

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

Exit scores (``Stage1Config.exit_score``), all on the logit scale (the sigmoid of a
score is a calibrated probability that the class prediction is correct; higher = exit
first). Logits, not probabilities, because a probability saturates at exactly 1.0 in
float64 for confident samples, and a block of tied scores at the coverage cut would
make the realised coverage miss the operating point:

- ``gate``: :meth:`GateCalibrator.logits`, the calibrated gate score;
- ``msp``: :func:`msp_logit`, the logit of the max calibrated class probability;
- ``combined``: :class:`ScoreCombiner`, ``w_g * g + w_m * msp_logit + b``, a logistic
  regression of the correctness of the calibrated prediction on the raw gate logit
  ``g`` and the msp logit, fit on the calibration split with a prior towards msp
  (``COMBINER_PRIOR`` pseudo-samples, so that a small split stays near msp and a
  separable one has a finite fit). The gate brings what
  the trunk knows about errors, the softmax brings the class posterior; the fit
  decides how much each is worth. It starts at ``msp`` (``w_g = 0, w_m = 1, b = 0``)
  and contains Platt's ``gate`` (``w_m = 0``); its penalised log-loss on the
  calibration split is never worse than msp's.

Coverage calibration: ``tau`` = the ``(1 - c)`` quantile of the exit score on the
calibration split (``c`` = ``Stage1Config.eval_coverage``, the operating point), taken
as the ``k``-th largest score with ``k = round(c N)``, so ``exit = score >= tau``
accepts exactly ``k`` of the ``N`` samples there (ties aside).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GATE_KINDS = ("platt", "isotonic")
EXIT_SCORES = ("gate", "msp", "combined")
ISOTONIC_TIE_BREAK = 1e-6
#: Strength of the combiner's prior towards msp, in pseudo-samples: the penalty
#: ``COMBINER_PRIOR / N * ||w - w_msp||^2`` on the standardised weights (``w_msp`` = the
#: start point, the calibrated msp) is added to the mean log-loss over the N samples of
#: the calibration split. A small split (few errors) cannot move far from msp; a large
#: one hardly feels it. It also keeps a separable split's fit finite.
COMBINER_PRIOR = 10.0
#: Probabilities are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before a logit.
LOGIT_EPS = 1e-12
#: The combiner's fit sees msp logits clipped to +-MSP_LOGIT_CAP: a few huge margins would
#: otherwise dominate the standardisation (scoring uses the unclipped value).
MSP_LOGIT_CAP = 50.0


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

    def logits(self, gate_logit: np.ndarray | torch.Tensor) -> np.ndarray:
        """The calibrated gate score on the logit scale ``[N]`` (float64): the exit score
        ``gate``. Same order as :meth:`scores`, without its saturation at 1.0.

        ``platt``: ``a * g + b`` exactly. ``isotonic``: ``logit`` of the step value
        (clipped to [LOGIT_EPS, 1 - LOGIT_EPS]) plus ``ISOTONIC_TIE_BREAK * sigmoid(g)``,
        the tie-break added after the logit so that the clip cannot undo it.
        """
        g = np.asarray(torch.as_tensor(gate_logit).detach().cpu().double().numpy())
        if self.kind == "platt":
            return self.params["a"] * g + self.params["b"]
        if self.kind == "isotonic":
            x = np.asarray(self.params["x"], dtype=np.float64)
            y = np.asarray(self.params["y"], dtype=np.float64)
            base = np.interp(g, x, y) if len(x) else np.full_like(g, 0.5)
            return _logit(base) + ISOTONIC_TIE_BREAK * _sigmoid(g)
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


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(q) - np.log1p(-q)


def msp_logit(calibrated_logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """``logit(max_c softmax(z)_c)`` ``[N]`` float64 from calibrated logits ``z [N, C]``.

    Computed as ``z_max - logsumexp_{c != argmax} z_c`` (for C = 2: the logit margin),
    which does not saturate: ``max softmax`` itself is exactly 1.0 in float64 once the
    margin exceeds about 37, and such ties would make the coverage cut coarse.
    """
    z = torch.as_tensor(calibrated_logits).detach().to("cpu", torch.float64)
    if z.shape[1] < 2:
        return np.full(z.shape[0], np.inf)
    top = z.argmax(dim=1, keepdim=True)
    rest = z.scatter(1, top, float("-inf"))
    return (z.gather(1, top).squeeze(1) - torch.logsumexp(rest, dim=1)).numpy()


@dataclasses.dataclass
class ScoreCombiner:
    """The ``combined`` exit score on the logit scale:
    ``w_gate * gate_logit + w_msp * msp_logit + bias`` (its sigmoid is the fitted
    probability that the calibrated prediction is correct). JSON-exact floats."""

    w_gate: float
    w_msp: float
    bias: float

    def scores(self, gate_logit: np.ndarray | torch.Tensor, msp: np.ndarray) -> np.ndarray:
        """Raw ``gate_logit [N]`` and :func:`msp_logit` ``[N]`` -> scores ``[N]`` (float64)."""
        g = np.asarray(torch.as_tensor(gate_logit).detach().cpu().double().numpy())
        return self.w_gate * g + self.w_msp * np.asarray(msp, dtype=np.float64) + self.bias

    def to_json(self) -> dict[str, float]:
        return {"w_gate": self.w_gate, "w_msp": self.w_msp, "bias": self.bias}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreCombiner:
        return cls(float(data["w_gate"]), float(data["w_msp"]), float(data["bias"]))


def fit_score_combiner(gate_logit: np.ndarray | torch.Tensor, msp: np.ndarray,
                       correct: np.ndarray) -> ScoreCombiner:
    """Fit :class:`ScoreCombiner` on the calibration split.

    Args:
        gate_logit: raw gate logits ``[N]``.
        msp: :func:`msp_logit` of the calibrated class logits ``[N]``.
        correct: ``[N]`` in {0, 1}, 1 where the calibrated prediction is the true class.

    Mean log-loss + ``COMBINER_PRIOR / N * ||w - w0||^2`` on the standardised weights
    (``w0`` = the start point), LBFGS in float64 from ``(w_gate, w_msp, bias) =
    (0, 1, 0)``, the calibrated msp itself: the objective never increases, so the fit
    is never worse than msp there, and the prior keeps a small calibration split from
    trading msp for a noisy gate. The inputs are standardised for the fit
    (conditioning) and the weights mapped back. A split whose predictions are all right
    (or all wrong) returns the start point.
    """
    g = np.asarray(torch.as_tensor(gate_logit).detach().cpu().double().numpy())
    m = np.clip(np.asarray(msp, dtype=np.float64), -MSP_LOGIT_CAP, MSP_LOGIT_CAP)
    t = np.asarray(correct, dtype=np.float64)
    if len(t) == 0 or not 0.0 < float(t.mean()) < 1.0:
        return ScoreCombiner(0.0, 1.0, 0.0)
    x = np.stack([g, m], axis=1)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    xs = torch.as_tensor((x - mean) / std)
    tt = torch.as_tensor(t)
    # the start (0, 1, 0) in raw units, expressed in standardised units
    w0 = torch.tensor([0.0, float(std[1])], dtype=torch.float64)
    w = w0.clone().requires_grad_(True)
    strength = COMBINER_PRIOR / len(t)
    b = torch.tensor([float(mean[1])], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w + b, tt)
        loss = loss + strength * torch.sum((w - w0) ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    ws = w.detach().numpy() / std
    bias = float(b.item()) - float(np.sum(ws * mean))
    if not (np.all(np.isfinite(ws)) and math.isfinite(bias)):
        raise ValueError(f"score combiner fit diverged: weights {ws.tolist()}, bias {bias}")
    return ScoreCombiner(float(ws[0]), float(ws[1]), bias)


def exit_scores(kind: str, gate_logit: np.ndarray | torch.Tensor,
                calibrated_logits: np.ndarray | torch.Tensor, gate_calibrator: GateCalibrator,
                combiner: ScoreCombiner | None) -> np.ndarray:
    """The exit score ``[N]`` named by ``kind``, on the logit scale (module docstring).

    Args:
        kind: ``gate``, ``msp`` or ``combined``.
        gate_logit: raw gate logits ``[N]``.
        calibrated_logits: calibrated class logits ``[N, C]``.
        gate_calibrator: the fitted gate calibrator (used by ``gate``).
        combiner: the fitted combiner (required by ``combined``).
    """
    if kind == "gate":
        return gate_calibrator.logits(gate_logit)
    if kind == "msp":
        return msp_logit(calibrated_logits)
    if kind == "combined":
        if combiner is None:
            raise ValueError("exit_score 'combined' needs a fitted ScoreCombiner")
        return combiner.scores(gate_logit, msp_logit(calibrated_logits))
    raise ValueError(f"exit score {kind!r}: expected one of {', '.join(EXIT_SCORES)}")


def coverage_threshold(scores: np.ndarray, target_coverage: float) -> float:
    """``tau`` such that ``mean(scores >= tau) = round(c N) / N`` (ties aside).

    Args:
        scores: exit scores on the calibration split, ``[N]``.
        target_coverage: ``c`` in (0, 1], the operating point (``eval_coverage``).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        return 0.5
    k = min(len(s), max(1, round(target_coverage * len(s))))
    return float(s[k - 1])
