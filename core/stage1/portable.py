"""``predictor.pt`` for Stage-1: the head, its calibrators and the exit rule as one
TorchScript file that needs no seltune.

:func:`write_portable_predictor` scripts the whole rule of
:class:`core.stage1.predictor.Stage1Predictor` — the head (trunk, class head ``f``,
gate ``g``; the auxiliary head is dropped), the class calibrator, the exit score
(``gate`` with its Platt or isotonic calibrator, ``msp`` or ``combined``) and the
threshold ``tau`` as the artefacts store them — into one module::

    import torch
    rule = torch.jit.load("predictor.pt")            # only torch needed
    pred, exit_, probs = rule(features)              # [N, D] -> [N], [N] bool, [N, C]
    answer = torch.where(exit_, pred, -1)            # -1: not confident enough to exit

``prediction`` is int64 class ids (``argmax`` of the calibrated probabilities),
``exit`` is ``score >= tau`` and ``probs`` the calibrated probabilities (float64).
Every calibrator kind scripts (``temperature``, ``vector``, ``matrix``, ``dirichlet``,
``none``; gate ``platt`` and ``isotonic``: numpy's ``interp`` is re-written with
``torch.searchsorted``, knot for knot). The head runs in float32 and the calibration in
float64, as the predictor does, so the classes and calibrated probabilities are the
predictor's bit for bit; the exit scores too, except on the ``isotonic`` gate path,
which calls torch's ``exp``/``log`` where the predictor calls numpy's: they may differ
in the last bit, so a decision could only flip for a sample whose score is within that
bit of ``tau`` (none did in the tests, on every row of every split).
Attributes: ``threshold``, ``exit_score``, ``calibrator_kind``, ``gate_calibrator_kind``,
``num_classes``, ``feature_dim``.
"""

# no `from __future__ import annotations`: TorchScript reads the buffer annotations
# below as objects, not strings
import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from core.atomic import atomic_file
from core.stage1.artifacts import Stage1Artifacts, load_artifacts
from core.stage1.gate_calibration import ISOTONIC_TIE_BREAK, LOGIT_EPS
from core.stage1.head import Stage1Head

PORTABLE_FILE = "predictor.pt"
_F64 = torch.float64


class _Head(nn.Module):
    """The parts of ``Stage1Head`` a prediction needs: trunk, ``f`` and ``g``."""

    def __init__(self, head: Stage1Head):
        super().__init__()
        self.trunk = copy.deepcopy(head.trunk)
        self.f = copy.deepcopy(head.f)
        self.g = copy.deepcopy(head.g)
        self.with_confidence = head.gate_input == "trunk+confidence"

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features [N, D]`` -> ``(class logits [N, C], gate logit [N])`` in float32."""
        z = self.trunk(features)
        logits = self.f(z)
        gate_in = z
        if self.with_confidence:
            # core.stage1.head.confidence_features, on the detached logits
            lf = logits.detach().float()
            logp = torch.log_softmax(lf, dim=1)
            top2 = torch.topk(lf, k=min(2, lf.shape[1]), dim=1).values
            conf = torch.stack([logp.max(dim=1).values, top2[:, 0] - top2[:, -1],
                                -(logp.exp() * logp).sum(dim=1)], dim=1).to(logits.dtype)
            gate_in = torch.cat([z, conf], dim=1)
        return logits, self.g(gate_in).squeeze(-1)


class PortableStage1Rule(nn.Module):
    """``features [N, D]`` -> ``(prediction [N] int64, exit [N] bool, probs [N, C]
    float64)``; see the module docstring. Scriptable."""

    # buffers, declared for the type checker (register_buffer sets them)
    cal_log_t: torch.Tensor
    cal_w: torch.Tensor
    cal_W: torch.Tensor
    cal_b: torch.Tensor
    iso_x: torch.Tensor
    iso_y: torch.Tensor

    def __init__(self, artifacts: Stage1Artifacts):
        super().__init__()
        cal = artifacts.calibration
        self.head = _Head(artifacts.model).cpu().eval()
        self.feature_dim = int(artifacts.model.in_dim)
        self.num_classes = int(artifacts.model.num_classes)
        cc = cal.class_calibrator
        self.calibrator_kind = str(cc.kind)
        c = self.num_classes
        params = {k: torch.as_tensor(v, dtype=_F64).detach().clone().cpu()
                  for k, v in cc.params.items()}
        # unused parameters are stored empty, so one forward serves every kind
        self.register_buffer("cal_log_t", params.get("log_t", torch.zeros(1, dtype=_F64)))
        self.register_buffer("cal_w", params.get("w", torch.ones(c, dtype=_F64)))
        self.register_buffer("cal_W", params.get("W", torch.eye(c, dtype=_F64)))
        self.register_buffer("cal_b", params.get("b", torch.zeros(c, dtype=_F64)))
        gc = cal.gate_calibrator
        self.gate_calibrator_kind = str(gc.kind)
        self.platt_a = float(gc.params.get("a", 1.0))
        self.platt_b = float(gc.params.get("b", 0.0))
        self.register_buffer("iso_x", torch.tensor(gc.params.get("x", []), dtype=_F64))
        self.register_buffer("iso_y", torch.tensor(gc.params.get("y", []), dtype=_F64))
        self.logit_eps = float(LOGIT_EPS)
        self.tie_break = float(ISOTONIC_TIE_BREAK)
        self.exit_score = str(cal.exit_score)
        comb = cal.combiner
        self.w_gate = 0.0 if comb is None else float(comb.w_gate)
        self.w_msp = 1.0 if comb is None else float(comb.w_msp)
        self.bias = 0.0 if comb is None else float(comb.bias)
        self.threshold = float(cal.threshold)
        if self.exit_score not in ("gate", "msp", "combined"):
            raise ValueError(f"exit score {self.exit_score!r}: expected gate, msp or combined")
        if self.exit_score == "combined" and comb is None:
            raise ValueError("exit_score 'combined' without a fitted combiner")

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``core.stage1.calibration._apply`` on float64 logits ``[N, C]``."""
        z = logits.to(torch.float64)
        kind = self.calibrator_kind
        if kind == "temperature":
            return z / torch.exp(self.cal_log_t)
        if kind == "vector":
            return z * self.cal_w + self.cal_b
        if kind == "matrix":
            return z @ self.cal_W.T + self.cal_b
        if kind == "dirichlet":
            return torch.log_softmax(z, dim=1) @ self.cal_W.T + self.cal_b
        return z

    def _interp(self, g: torch.Tensor) -> torch.Tensor:
        """``numpy.interp(g, x, y)`` for increasing knots ``x`` (float64)."""
        x, y = self.iso_x, self.iso_y
        n = x.shape[0]
        if n == 0:
            return torch.full_like(g, 0.5)
        if n == 1:
            return torch.full_like(g, float(y[0]))
        j = (torch.searchsorted(x, g, right=True) - 1).clamp(0, n - 2)
        x0, x1, y0, y1 = x[j], x[j + 1], y[j], y[j + 1]
        out = (y1 - y0) / (x1 - x0) * (g - x0) + y0
        out = torch.where(g == x0, y0, out)  # numpy returns the knot's value exactly
        out = torch.where(g < x[0], y[0].expand_as(g), out)
        return torch.where(g >= x[n - 1], y[n - 1].expand_as(g), out)

    def _sigmoid(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.logaddexp(torch.zeros_like(x), -x))

    def _msp_logit(self, cal_logits: torch.Tensor) -> torch.Tensor:
        """``core.stage1.gate_calibration.msp_logit``."""
        if cal_logits.shape[1] < 2:
            return torch.full([cal_logits.shape[0]], float("inf"), dtype=torch.float64,
                              device=cal_logits.device)
        top = cal_logits.argmax(dim=1, keepdim=True)
        rest = cal_logits.scatter(1, top, float("-inf"))
        return cal_logits.gather(1, top).squeeze(1) - torch.logsumexp(rest, dim=1)

    def scores(self, gate_logit: torch.Tensor, cal_logits: torch.Tensor) -> torch.Tensor:
        """The exit score ``[N]`` on the logit scale (``core.stage1.gate_calibration``)."""
        g = gate_logit.to(torch.float64)
        if self.exit_score == "msp":
            return self._msp_logit(cal_logits)
        if self.exit_score == "combined":
            return self.w_gate * g + self.w_msp * self._msp_logit(cal_logits) + self.bias
        if self.gate_calibrator_kind == "platt":
            return self.platt_a * g + self.platt_b
        q = self._interp(g).clamp(self.logit_eps, 1.0 - self.logit_eps)
        return torch.log(q) - torch.log1p(-q) + self.tie_break * self._sigmoid(g)

    def forward(self, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError("features must have shape [N, D] with D = " + str(self.feature_dim))
        x = features.to(self.cal_b.device, torch.float32)
        logits, gate = self.head(x)
        cal_logits = self.calibrated_logits(logits)
        probs = torch.softmax(cal_logits, dim=1)
        pred = probs.argmax(dim=1)
        return pred, self.scores(gate, cal_logits) >= self.threshold, probs


def _frozen(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter needing a gradient: outputs are plain tensors."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


def portable_module(artifacts_dir: str | Path) -> torch.jit.ScriptModule:
    """The scripted rule of the Stage-1 artefacts at ``artifacts_dir`` (CPU, eval)."""
    return torch.jit.script(_frozen(PortableStage1Rule(load_artifacts(artifacts_dir, "cpu"))))


def write_portable_predictor(artifacts_dir: str | Path, out_file: str | Path) -> Path:
    """Write ``predictor.pt`` (module docstring) for a Stage-1 artefacts directory, atomically
    (a temporary sibling renamed into place). Returns ``out_file``."""
    module = portable_module(artifacts_dir)
    out = Path(out_file)
    with atomic_file(out) as tmp, warnings.catch_warnings():
        # TorchScript is the format asked for (loads with torch alone); torch >= 2.5
        # warns that it prefers torch.export, which needs more than torch to run
        warnings.filterwarnings("ignore", message=".*torch.jit.save.*deprecated",
                                category=DeprecationWarning)
        torch.jit.save(module, str(tmp))
    return out


__all__ = ["PORTABLE_FILE", "PortableStage1Rule", "portable_module", "write_portable_predictor"]
