"""Post-hoc class calibrators, fit on ``val_calib`` only (docs/METHODS.md §4).

Shapes: N samples, C classes. All fitting is full-batch LBFGS (strong-Wolfe line
search) in float64 on the CPU, so it is deterministic and independent of the training
device. Every calibrator starts at the identity map and LBFGS never increases its
objective, so the fitted map's NLL (+ penalty) on the fitting split is never worse than
the identity's.

- ``temperature``: ``softmax(z / T)``, optimised over ``log T`` (Guo et al., 2017).
- ``vector``: ``softmax(z * w + b)``, ``w, b in R^C`` (Guo et al., 2017).
- ``matrix``: ``softmax(W z + b)`` on logits, with ODIR.
- ``dirichlet``: ``softmax(W log p + b)`` on log-probs ``log p = log_softmax(z)``,
  with ODIR (Kull et al., "Beyond temperature scaling", NeurIPS 2019).
- ``none``: identity.

ODIR (Off-Diagonal and Intercept Regularisation, Kull et al. 2019):
``lambda / (C (C - 1)) * sum_{i != j} W_ij^2 + mu / C * sum_j b_j^2`` added to the
mean NLL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("temperature", "vector", "matrix", "dirichlet", "none")


@dataclasses.dataclass
class ClassCalibrator:
    """A fitted class calibrator: ``kind`` and its float64 parameters.

    ``params``: ``{"log_t": [1]}`` (temperature), ``{"w": [C], "b": [C]}`` (vector),
    ``{"W": [C, C], "b": [C]}`` (matrix, dirichlet), ``{}`` (none).
    """

    kind: str
    num_classes: int
    params: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def temperature(self) -> float | None:
        """The fitted temperature ``T`` (temperature scaling only)."""
        if self.kind != "temperature":
            return None
        return float(torch.exp(self.params["log_t"]).item())

    def calibrated_logits(self, logits: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``logits [N, C]`` -> calibrated logits ``[N, C]`` (float64 tensor)."""
        z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
        return _apply(self.kind, self.params, z)

    def probs(self, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """Calibrated probabilities ``[N, C]`` (float64 numpy)."""
        return torch.softmax(self.calibrated_logits(logits), dim=1).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes,
                "params": {k: v.detach().clone() for k, v in self.params.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClassCalibrator:
        kind = state["kind"]
        if kind not in KINDS:
            raise ValueError(f"calibrator kind {kind!r}: expected one of {', '.join(KINDS)}")
        params = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state["params"].items()}
        return cls(kind=kind, num_classes=int(state["num_classes"]), params=params)


def _apply(kind: str, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    if kind == "none":
        return z
    if kind == "temperature":
        return z / torch.exp(params["log_t"])
    if kind == "vector":
        return z * params["w"] + params["b"]
    if kind == "matrix":
        return z @ params["W"].T + params["b"]
    if kind == "dirichlet":
        return torch.log_softmax(z, dim=1) @ params["W"].T + params["b"]
    raise ValueError(f"calibrator kind {kind!r}: expected one of {', '.join(KINDS)}")


def odir_penalty(W: torch.Tensor, b: torch.Tensor, lam: float, mu: float) -> torch.Tensor:
    """``lam/(C(C-1)) * sum_{i!=j} W_ij^2 + mu/C * sum_j b_j^2`` (scalar); ``W [C, C]``, ``b [C]``."""
    c = W.shape[0]
    off = W - torch.diag(torch.diagonal(W))
    off_term = (off**2).sum() / max(c * (c - 1), 1)
    return lam * off_term + mu * (b**2).sum() / c


def _identity_params(kind: str, c: int) -> dict[str, torch.Tensor]:
    f64 = torch.float64
    if kind == "temperature":
        return {"log_t": torch.zeros(1, dtype=f64)}
    if kind == "vector":
        return {"w": torch.ones(c, dtype=f64), "b": torch.zeros(c, dtype=f64)}
    if kind in ("matrix", "dirichlet"):
        return {"W": torch.eye(c, dtype=f64), "b": torch.zeros(c, dtype=f64)}
    return {}


def fit_class_calibrator(kind: str, logits: np.ndarray | torch.Tensor,
                         labels: np.ndarray | torch.Tensor, *, odir_lambda: float = 0.0,
                         odir_mu: float = 0.0, max_iter: int = 200) -> ClassCalibrator:
    """Fit a ``kind`` calibrator on ``logits [N, C]`` and ``labels [N]`` (the calib split).

    Minimises mean NLL (+ ODIR for ``matrix`` / ``dirichlet``) from the identity with
    LBFGS. ``odir_lambda`` and ``odir_mu`` are ignored by the other kinds.
    """
    if kind not in KINDS:
        raise ValueError(f"calibrator kind {kind!r}: expected one of {', '.join(KINDS)}")
    z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu", torch.long)
    c = z.shape[1]
    params = _identity_params(kind, c)
    if kind == "none" or len(y) == 0:
        return ClassCalibrator(kind, c, params)
    for p in params.values():
        p.requires_grad_(True)
    regularised = kind in ("matrix", "dirichlet")

    def objective() -> torch.Tensor:
        loss = F.cross_entropy(_apply(kind, params, z), y)
        if regularised:
            loss = loss + odir_penalty(params["W"], params["b"], odir_lambda, odir_mu)
        return loss

    opt = torch.optim.LBFGS(list(params.values()), lr=1.0, max_iter=max_iter,
                            tolerance_grad=1e-10, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    start = float(objective().item())
    opt.step(closure)
    fitted = {k: v.detach().clone() for k, v in params.items()}
    with torch.no_grad():
        end = float(objective().item())
    if not np.isfinite(end) or end > start:
        # LBFGS with a strong-Wolfe search does not increase the objective; this only
        # triggers on numerical breakdown (e.g. separable data sending T -> 0).
        fitted = _identity_params(kind, c)
    return ClassCalibrator(kind, c, fitted)
