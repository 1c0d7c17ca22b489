"""Stage-1 artefacts on disk, and metrics recomputed from them.

An artefacts directory (written atomically: a temporary sibling renamed into place)::

    stage1_head.pth          {"format", "state_dict", "feature_dim", "num_classes",
                              "hidden_dim", "class_weights" ([C] or None), "num_groups"}
    calibrator_<kind>.pth    the class calibrator {"kind", "num_classes", "params"}
    gate_calibrator.json     {"kind", "params", "threshold", "softmax_threshold",
                              "target_coverage", "class_calibrator"}
                             (floats round-trip exactly through JSON)
    config.json              the full Stage1Config
    metrics.json             the metrics reported at the end of training (for reading
                             only; :func:`evaluate_checkpoint` recomputes them)

Everything is read back with ``torch.load(weights_only=True)`` or JSON: no pickles.

Older directories (written before the operating point and the exit-score choice) still
load, as they behaved: a config without ``eval_coverage`` takes its
``target_coverage``, one without ``exit_score`` exits on the gate
(:func:`core.stage1.config.upgrade_config_dict`), and their thresholds, stored on the
probability scale, are mapped to the logit scale the exit scores now use
(``logit(tau)``, exact up to float rounding).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core.atomic import atomic_dir
from core.config import config_from_dict, config_to_dict
from core.device import resolve_device
from core.errors import InputError
from core.jsonable import to_jsonable
from core.stage1.calibration import ClassCalibrator
from core.stage1.config import Stage1Config, upgrade_config_dict
from core.stage1.data import prepare_data
from core.stage1.evaluation import Stage1Calibration, evaluate_model
from core.stage1.gate_calibration import LOGIT_EPS, GateCalibrator, ScoreCombiner
from core.stage1.head import Stage1Head
from core.stage1.losses import build_loss


class TrainedHead(Protocol):
    """What :func:`save_artifacts` writes: a :class:`core.stage1.train.Stage1Result`,
    named structurally so this module never imports the training module that saves
    through it."""

    config: Stage1Config
    model: Stage1Head
    calibration: Stage1Calibration
    class_weights: np.ndarray | None
    num_groups: int | None
    val: dict[str, float]
    test: dict[str, float] | None
    baselines: dict[str, dict[str, dict[str, float]]]
    best_epoch: int
    epochs_run: int

HEAD_FILE = "stage1_head.pth"
GATE_FILE = "gate_calibrator.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
ARTIFACT_FORMAT = 1
#: The scale of the stored thresholds (absent in older directories: probabilities).
SCORE_SCALE = "logit"


def _threshold_from_probability(tau: float) -> float:
    """An old, probability-scale threshold on the logit scale of today's exit scores."""
    p = min(max(float(tau), LOGIT_EPS), 1.0 - LOGIT_EPS)
    return math.log(p) - math.log1p(-p)


def calibrator_file(kind: str) -> str:
    return f"calibrator_{kind}.pth"


@dataclasses.dataclass
class Stage1Artifacts:
    """A loaded artefacts directory."""

    path: Path
    config: Stage1Config
    model: Stage1Head
    calibration: Stage1Calibration
    class_weights: np.ndarray | None
    num_groups: int | None


def save_artifacts(result: TrainedHead, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``result``'s model, calibrators, threshold and config to ``out`` atomically."""
    cal = result.calibration
    model = result.model
    head = {
        "format": ARTIFACT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "feature_dim": model.in_dim,
        "num_classes": model.num_classes,
        "hidden_dim": model.hidden_dim,
        "class_weights": None if result.class_weights is None
        else torch.as_tensor(result.class_weights, dtype=torch.float32),
        "num_groups": result.num_groups,
    }
    gate = {
        **cal.gate_calibrator.to_json(),
        "threshold": cal.threshold,
        "softmax_threshold": cal.softmax_threshold,
        "target_coverage": cal.target_coverage,
        "eval_coverage": cal.eval_coverage,
        "exit_score": cal.exit_score,
        "combiner": None if cal.combiner is None else cal.combiner.to_json(),
        "score_scale": SCORE_SCALE,
        "class_calibrator": cal.class_calibrator.kind,
    }
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        torch.save(head, tmp / HEAD_FILE)
        torch.save(cal.class_calibrator.state_dict(), tmp / calibrator_file(cal.class_calibrator.kind))
        (tmp / GATE_FILE).write_text(json.dumps(gate, indent=2))
        (tmp / CONFIG_FILE).write_text(json.dumps(config_to_dict(result.config), indent=2))
        metrics = {"val": result.val, "test": result.test, "baselines": result.baselines,
                   "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
        (tmp / METRICS_FILE).write_text(json.dumps(to_jsonable(metrics), indent=2))
    return out


def load_artifacts(path: str | Path, device: str | torch.device = "cpu") -> Stage1Artifacts:
    """Load an artefacts directory (or its ``stage1_head.pth``) onto ``device``."""
    path = Path(path)
    if path.is_file() and path.name == HEAD_FILE:
        path = path.parent
    for name in (HEAD_FILE, GATE_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise InputError("missing file of a Stage-1 checkpoint", file=path / name,
                             expected=f"a directory written by `seltune train stage1` "
                             f"({HEAD_FILE}, calibrator_<kind>.pth, {GATE_FILE}, {CONFIG_FILE})")
    try:
        config = config_from_dict(
            Stage1Config, upgrade_config_dict(json.loads((path / CONFIG_FILE).read_text())),
            source=str(path / CONFIG_FILE))
        gate = json.loads((path / GATE_FILE).read_text())
        head = torch.load(path / HEAD_FILE, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read Stage-1 checkpoint: {exc}".splitlines()[0],
                         file=path) from None
    _check_head(head, path / HEAD_FILE)
    if not isinstance(gate, dict):
        raise InputError(file=path / GATE_FILE, value=type(gate).__name__,
                         expected="a JSON object written by `seltune train stage1`")
    kind = gate.get("class_calibrator", config.calibrator)
    if not isinstance(kind, str):
        raise InputError(file=path / GATE_FILE, field="class_calibrator", value=kind,
                         expected="a calibrator kind (a string)")
    cal_path = path / calibrator_file(kind)
    if not cal_path.is_file():
        raise InputError("missing class calibrator", file=cal_path,
                         expected=f"{calibrator_file(kind)} beside {HEAD_FILE}")
    # The files parsed, but their contents may still not be what training wrote (a
    # hand-edited or foreign file): a missing key, a wrong type or a tensor of another
    # shape is the file's fault, named with it, not a traceback.
    where = cal_path
    try:
        class_cal = ClassCalibrator.from_state_dict(
            torch.load(cal_path, map_location="cpu", weights_only=True))
        where = path / HEAD_FILE
        model = Stage1Head(int(head["feature_dim"]), int(head["num_classes"]),
                           int(head["hidden_dim"]), config.dropout,
                           gate_input=config.gate_input)
        model.load_state_dict(head["state_dict"])
        where = path / GATE_FILE
        threshold, sm_threshold = float(gate["threshold"]), float(gate["softmax_threshold"])
        if gate.get("score_scale") != SCORE_SCALE:
            threshold = _threshold_from_probability(threshold)
            sm_threshold = _threshold_from_probability(sm_threshold)
        combiner = gate.get("combiner")
        calibration = Stage1Calibration(
            class_calibrator=class_cal, gate_calibrator=GateCalibrator.from_json(gate),
            threshold=threshold, softmax_threshold=sm_threshold,
            target_coverage=float(gate["target_coverage"]),
            eval_coverage=float(gate.get("eval_coverage", config.eval_coverage)),
            exit_score=str(gate.get("exit_score", config.exit_score)),
            combiner=None if combiner is None else ScoreCombiner.from_json(combiner))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else \
            (" ".join(str(exc).split()) or type(exc).__name__)[:240]
        raise InputError(f"not a Stage-1 checkpoint file as `seltune train stage1` writes "
                         f"it ({detail})", file=where,
                         expected="the file as training wrote it (retrain or restore it)"
                         ) from None
    dev = resolve_device(device) if isinstance(device, str) else device
    model.to(dev).eval()
    if calibration.exit_score != config.exit_score or \
            calibration.eval_coverage != config.eval_coverage:
        raise InputError("gate calibration and config disagree", file=path / GATE_FILE,
                         field="exit_score/eval_coverage",
                         value=f"{calibration.exit_score}/{calibration.eval_coverage}",
                         expected=f"{config.exit_score}/{config.eval_coverage} "
                         f"as in {CONFIG_FILE}")
    if calibration.exit_score == "combined" and calibration.combiner is None:
        raise InputError("exit_score 'combined' without a fitted combiner",
                         file=path / GATE_FILE, field="combiner",
                         expected="{w_gate, w_msp, bias}")
    cw = head.get("class_weights")
    return Stage1Artifacts(path=path, config=config, model=model, calibration=calibration,
                           class_weights=None if cw is None else np.asarray(cw),
                           num_groups=head.get("num_groups"))


def _check_head(head: Any, file: Path) -> None:
    """``stage1_head.pth`` must be the dict :func:`save_artifacts` writes (a bare tensor
    or a plain state dict loads with ``weights_only=True`` too)."""
    expected = ('{"format", "state_dict", "feature_dim", "num_classes", "hidden_dim", '
                '"class_weights", "num_groups"} as `seltune train stage1` writes it')
    if not isinstance(head, dict):
        raise InputError(f"holds a {type(head).__name__}", file=file, expected=expected)
    for key in ("feature_dim", "num_classes", "hidden_dim"):
        value = head.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(file=file, field=key, value=value, expected="an integer >= 1")
    if not isinstance(head.get("state_dict"), dict):
        raise InputError(file=file, field="state_dict", value=type(head.get("state_dict")).__name__,
                         expected="a mapping of parameter name: tensor")
    num_groups = head.get("num_groups")
    if num_groups is not None and (isinstance(num_groups, bool) or not isinstance(num_groups, int)):
        raise InputError(file=file, field="num_groups", value=num_groups,
                         expected="an integer or null")


def evaluate_checkpoint(path: str | Path, bundle: Any, split: str = "test",
                        device: str = "cpu") -> dict[str, Any]:
    """Recompute the metrics of a saved Stage-1 model on ``bundle``'s ``split``.

    ``split`` is ``train``, ``val`` (= ``val_select``, as reported by training),
    ``val_select``, ``val_calib`` or ``test``; ``val`` is re-split with the saved
    config's seed and ``calib_fraction``, so the numbers equal what training reported.

    Every metric is measured at the checkpoint's operating point ``eval_coverage`` on
    ``split`` with its stored exit score (:func:`core.stage1.evaluation.split_metrics`).

    Returns:
        ``{"metrics": {...}, "baselines": {"msp": {...}, "doctor": {...},
        "maxlogit": {...}, "softmax_confidence": {...}}}`` (``softmax_confidence`` is
        ``msp`` under its old name).
    """

    dev = resolve_device(device)
    art = load_artifacts(path, dev)
    data = prepare_data(bundle, art.config.calib_fraction, art.config.seed)
    if data.feature_dim != art.model.in_dim:
        raise InputError(file=getattr(bundle, "path", None) or "bundle", field="feature_dim",
                         value=data.feature_dim,
                         expected=f"{art.model.in_dim} (the checkpoint's feature width)")
    if data.num_classes != art.model.num_classes:
        raise InputError(file=getattr(bundle, "path", None) or "bundle", field="num_classes",
                         value=data.num_classes,
                         expected=f"{art.model.num_classes} (the checkpoint's classes)")
    s = data.split(split)
    loss_fn = build_loss(art.config, art.class_weights, dev)
    metrics, baselines = evaluate_model(art.model, art.calibration, s.features, s.labels,
                                        s.group, data.num_groups, loss_fn=loss_fn, device=dev)
    return {"metrics": metrics, "baselines": baselines}
