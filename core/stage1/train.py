"""Stage-1 training on cached features (docs/METHODS.md §4), no Ray.

:func:`train_stage1` is the entry point the Tune trainable, the CLI and the tests call.
Per epoch it trains the head, scores the EMA (or raw) weights on ``val_select`` with
calibrators fit on ``val_calib`` (:mod:`core.stage1.evaluation`), writes a full,
resumable checkpoint and calls ``report(metrics, checkpoint_dir)``. At the end it takes
the best epoch's weights (by ``early_stop_metric`` on ``val_select``), fits the final
calibrators on ``val_calib`` and computes the metrics on ``val_select`` (reported as
``val``) and ``test``.

Fixes of the seed's script: probabilities come from ``torch.softmax`` (there is no
``np.softmax``); calibrators are never fit on the model-selection split; gradient
accumulation is decided by the micro-batch index within the epoch (the last, partial
group is flushed and scaled by its own size); the gate logits are kept and calibrated;
the gate's accuracy and the exit set's accuracy are separate metrics.

Determinism: with the same config and seed on the CPU, two runs give identical numbers,
and a run resumed from any epoch's checkpoint gives the same numbers as an
uninterrupted one (the checkpoint holds model, optimiser, scheduler, EMA, grad scaler,
epoch, best state, early-stopping counters and RNG states).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_dir
from core.config import config_from_dict, config_to_dict
from core.device import resolve_device
from core.errors import InputError
from core.rng import rng_state, set_rng_state
from core.stage1.config import LEGACY_FIELDS, Stage1Config, resolve_ema_decay
from core.stage1.data import Stage1Data, prepare_data
from core.stage1.evaluation import (
    BASELINE_NAME,
    BASELINE_NAMES,
    Stage1Calibration,
    evaluate_model,
    fit_calibration,
    model_outputs,
)
from core.stage1.head import Stage1Head
from core.stage1.losses import build_loss

ReportFn = Callable[[dict[str, float], str], None]
STATE_FILE = "state.pt"
CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- pieces


class WarmupCosine:
    """LR factor at optimiser step ``s``: linear warm-up to 1 over ``warmup`` steps,
    then cosine decay to 0 at ``total`` steps. A callable object (not a lambda), so
    ``LambdaLR.state_dict()`` saves it."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = int(warmup)
        self.total = int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's parameters.

    After optimiser step ``n`` (1-based): ``shadow <- d * shadow + (1 - d) * param`` with
    ``d = min(decay, (1 + n) / (10 + n))``; the warm-up term keeps the average from
    being dominated by the random initialisation in short runs.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for sp, p in zip(self.module.parameters(), model.parameters()):
            sp.lerp_(p.detach(), 1.0 - d)
        for sb, b in zip(self.module.buffers(), model.buffers()):
            sb.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``w_c = N / (C * n_c)`` (sklearn's "balanced"), ``[C]`` float32; absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def build_model(config: Stage1Config, feature_dim: int, num_classes: int) -> Stage1Head:
    return Stage1Head(feature_dim, num_classes, config.hidden_dim, config.dropout,
                      gate_input=config.gate_input)


# --------------------------------------------------------------------------- result


@dataclasses.dataclass
class Stage1Result:
    """What a Stage-1 training returns.

    ``val`` are the metrics on ``val_select`` and ``test`` on ``test`` (None without a
    test split) of the final model (best epoch + calibrators fit on ``val_calib``);
    ``baselines = {"val": {"msp": {...}, "doctor": {...}, "maxlogit": {...},
    "softmax_confidence": {...}}, "test": {...}}`` (same split, same operating point,
    :func:`core.stage1.evaluation.stage1_baselines`); ``history`` holds the per-epoch
    reported metrics.
    """

    config: Stage1Config
    model: Stage1Head
    calibration: Stage1Calibration
    class_weights: np.ndarray | None
    val: dict[str, float]
    test: dict[str, float] | None
    baselines: dict[str, dict[str, dict[str, float]]]
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    num_groups: int | None

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the artefacts directory atomically (see :mod:`core.stage1.artifacts`)."""
        from core.stage1.artifacts import save_artifacts

        return save_artifacts(self, out, overwrite=overwrite)

    def to_dict(self, checkpoint: str | Path | None = None) -> dict[str, Any]:
        """The ``seltune train --json`` shape."""
        out: dict[str, Any] = {"val": self.val}
        if self.test is not None:
            out["test"] = self.test
        out["baselines"] = self.baselines
        out["config"] = config_to_dict(self.config)
        out["best_epoch"] = self.best_epoch
        out["epochs_run"] = self.epochs_run
        out["temperature"] = self.calibration.class_calibrator.temperature
        out["gate_threshold"] = self.calibration.threshold
        out["exit_score"] = self.calibration.exit_score
        out["eval_coverage"] = self.calibration.eval_coverage
        out["checkpoint"] = None if checkpoint is None else str(checkpoint)
        return out


# --------------------------------------------------------------------------- training


def _as_config(config: Stage1Config | dict[str, Any] | None) -> Stage1Config:
    if config is None:
        return Stage1Config()
    if isinstance(config, Stage1Config):
        config.validate()
        return config
    return config_from_dict(Stage1Config, config, source="config")


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_checkpoint_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`train_stage1`."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise InputError("no Stage-1 training checkpoint", file=path,
                         expected=f"a directory written by train_stage1 holding {STATE_FILE}")
    return torch.load(path, map_location="cpu", weights_only=True)


#: Baseline metrics copied into every epoch's report as ``{baseline}_{metric}``.
REPORTED_BASELINE_METRICS = ("augrc", "risk_at_coverage", "worst_group_error",
                             "balanced_error", "worst_group_area")
_LEGACY_BASELINE_METRICS = ("augrc", "coverage", "risk_at_coverage")


def baseline_report_metrics(baselines: dict[str, dict[str, float]]) -> dict[str, float]:
    """The flat per-epoch baseline keys: ``{msp,doctor,maxlogit}_{augrc, risk_at_coverage,
    worst_group_error, balanced_error, worst_group_area}``, ``best_baseline_augrc`` (the
    lowest of the three) and the old ``softmax_confidence_{augrc, coverage,
    risk_at_coverage}`` (= msp)."""
    out: dict[str, float] = {}
    for name in BASELINE_NAMES:
        for key in REPORTED_BASELINE_METRICS:
            out[f"{name}_{key}"] = baselines[name][key]
    out["best_baseline_augrc"] = min(baselines[name]["augrc"] for name in BASELINE_NAMES)
    for key in _LEGACY_BASELINE_METRICS:
        out[f"{BASELINE_NAME}_{key}"] = baselines[BASELINE_NAME][key]
    return out


def _check_resume_config(saved: dict[str, Any], cfg: Stage1Config, path: Path) -> None:
    """Raise unless ``cfg`` is the config the checkpoint was written with.

    Fields the checkpoint predates (:data:`LEGACY_FIELDS`: post-hoc choices added
    later) are not compared: the run never knew them, and the caller's values
    decide the calibration that follows (so an old sweep's trial can be exported and
    judged at the new operating point).
    """
    current = config_to_dict(cfg)
    for key in LEGACY_FIELDS:
        if key not in saved:
            current.pop(key, None)
    if current != saved:
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise InputError("checkpoint was written with a different config", file=path,
                         field="config", value=", ".join(diff),
                         expected="the same config as the run being resumed")


def train_stage1(config: Stage1Config | dict[str, Any] | None, bundle: Any,
                 report: ReportFn | None = None, *, resume_from: str | Path | None = None,
                 device: str = "auto", workdir: str | Path | None = None) -> Stage1Result:
    """Train, select, calibrate and score one Stage-1 head.

    Args:
        config: a :class:`Stage1Config` or a dict of its fields.
        bundle: a :class:`core.bundles.FeatureBundle` (kind ``stage1``).
        report: called once per epoch as ``report(metrics, checkpoint_dir)`` with the
            metrics on ``val_select`` at the operating point ``eval_coverage``
            (:func:`core.stage1.evaluation.split_metrics`), the baselines' flat keys
            (:func:`baseline_report_metrics`), ``epoch`` (1-based) and ``train_loss``.
            ``checkpoint_dir`` holds the full resumable state; it stays valid until
            the next epoch's report (only the latest checkpoint is kept).
        resume_from: a ``checkpoint_dir`` from an earlier report; training continues
            after its epoch and ends with the same numbers as an uninterrupted run.
        device: ``auto|cpu|cuda``.
        workdir: where checkpoints are written (default: a temporary directory removed
            at the end).

    Returns:
        :class:`Stage1Result`.
    """
    cfg = _as_config(config)
    data = prepare_data(bundle, cfg.calib_fraction, cfg.seed)
    dev = resolve_device(device)
    resume_state = None
    if resume_from is not None:
        resume_state = load_checkpoint_state(resume_from)
        _check_resume_config(resume_state["config"], cfg, Path(resume_from) / STATE_FILE)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    train = data.splits["train"]
    c = data.num_classes
    cw = (balanced_class_weights(train.labels, c) if cfg.class_weights == "balanced" else None)
    model = build_model(cfg, data.feature_dim, c).to(dev)
    loss_fn = build_loss(cfg, cw, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    n = len(train)
    n_micro = max(1, math.ceil(n / cfg.batch_size))
    steps_per_epoch = math.ceil(n_micro / cfg.grad_accum_steps)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
    ema = EMA(model, resolve_ema_decay(cfg, total_steps)) if cfg.use_ema else None
    amp_dtype = _amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch = 0
    best_score = math.inf
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    stopped = False
    history: list[dict[str, float]] = []
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if ema is not None:
            ema.load_state_dict(resume_state["ema"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch = int(resume_state["epoch"])
        best_score = float(resume_state["best_score"])
        best_epoch = int(resume_state["best_epoch"])
        best_state = resume_state["best_state"]
        bad_epochs = int(resume_state["bad_epochs"])
        stopped = bool(resume_state["stopped"])
        history = [dict(h) for h in resume_state["history"]]
        set_rng_state(gen, resume_state["rng"], key="shuffle")

    x_train = torch.as_tensor(train.features).to(dev)
    y_train = torch.as_tensor(train.labels).to(dev)
    select = data.splits["val_select"]

    own_workdir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="seltune-stage1-")) if workdir is None else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    previous_ckpt: Path | None = None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if stopped:
                break
            train_loss = _train_epoch(model, loss_fn, optimizer, scheduler, scaler, ema,
                                      x_train, y_train, gen, cfg, amp_dtype, dev)
            eval_model = ema.module if ema is not None else model
            calibration = _calibrate(eval_model, data, cfg, dev)
            metrics, baselines = evaluate_model(
                eval_model, calibration, select.features, select.labels, select.group,
                data.num_groups, loss_fn=loss_fn, device=dev)
            metrics["train_loss"] = train_loss
            metrics["epoch"] = epoch + 1
            metrics.update(baseline_report_metrics(baselines))
            history.append(dict(metrics))
            score = metrics[cfg.early_stop_metric]
            if score < best_score:
                best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                best_state = _cpu_state(eval_model)
            else:
                bad_epochs += 1
            if cfg.early_stop_patience > 0 and bad_epochs >= cfg.early_stop_patience:
                stopped = True
            if report is not None:
                ckpt = root / f"checkpoint_{epoch + 1:04d}"
                state = {
                    "format": CHECKPOINT_FORMAT,
                    "config": config_to_dict(cfg),
                    "model": _cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": None if ema is None else ema.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "bad_epochs": bad_epochs,
                    "stopped": stopped,
                    "history": history,
                    "rng": rng_state(gen, key="shuffle"),
                }
                with atomic_dir(ckpt, overwrite=True) as tmp:
                    torch.save(state, tmp / STATE_FILE)
                    (tmp / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
                report(dict(metrics), str(ckpt))
                if previous_ckpt is not None and previous_ckpt != ckpt:
                    shutil.rmtree(previous_ckpt, ignore_errors=True)
                previous_ckpt = ckpt
    finally:
        if own_workdir:
            shutil.rmtree(root, ignore_errors=True)

    return _finish(cfg, data, best_state, best_epoch, history, stopped, cw, dev)


def _train_epoch(model, loss_fn, optimizer, scheduler, scaler, ema, x, y, gen, cfg: Stage1Config,
                 amp_dtype, dev) -> float:
    """One pass over ``x [N, D]``; returns the sample-weighted mean training loss."""
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    n_micro = max(1, math.ceil(n / cfg.batch_size))
    accum = cfg.grad_accum_steps
    # summed on the device: a float() per micro-batch would force a GPU sync each step
    total = torch.zeros((), dtype=torch.float64, device=dev)
    seen = 0
    optimizer.zero_grad(set_to_none=True)
    for i in range(n_micro):
        idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(dev)
        xb, yb = x[idx], y[idx]
        # accumulation group of micro-batch i: [start, start + size); the last group of
        # the epoch may be shorter and its loss is averaged over its own size
        start = (i // accum) * accum
        size = min(accum, n_micro - start)
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            outputs = model(xb)
            loss, _ = loss_fn(outputs, yb)
        scaler.scale(loss / size).backward()
        total += loss.detach().double() * len(idx)
        seen += len(idx)
        if i + 1 == start + size:
            if cfg.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(model)
    return float(total.item()) / max(seen, 1)


def _calibrate(model: torch.nn.Module, data: Stage1Data, cfg: Stage1Config,
               dev: torch.device) -> Stage1Calibration:
    calib = data.splits["val_calib"]
    out = model_outputs(model, calib.features, dev)
    return fit_calibration(out, calib.labels, calibrator=cfg.calibrator,
                           gate_calibrator=cfg.gate_calibrator,
                           target_coverage=cfg.target_coverage,
                           eval_coverage=cfg.eval_coverage, exit_score=cfg.exit_score,
                           odir_lambda=cfg.odir_lambda, odir_mu=cfg.odir_mu)


def _finish(cfg: Stage1Config, data: Stage1Data, best_state, best_epoch: int,
            history: list[dict[str, float]], stopped: bool, cw: np.ndarray | None,
            dev: torch.device) -> Stage1Result:
    model = build_model(cfg, data.feature_dim, data.num_classes)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(dev).eval()
    loss_fn = build_loss(cfg, cw, dev)
    calibration = _calibrate(model, data, cfg, dev)
    results: dict[str, dict[str, float]] = {}
    baselines: dict[str, dict[str, dict[str, float]]] = {}
    for key, split in (("val", "val_select"), ("test", "test")):
        if split not in data.splits:
            continue
        s = data.splits[split]
        results[key], baselines[key] = evaluate_model(
            model, calibration, s.features, s.labels, s.group, data.num_groups,
            loss_fn=loss_fn, device=dev)
    return Stage1Result(config=cfg, model=model.cpu(), calibration=calibration,
                        class_weights=cw, val=results["val"], test=results.get("test"),
                        baselines=baselines, history=history, best_epoch=best_epoch,
                        epochs_run=len(history), stopped_early=stopped,
                        num_groups=data.num_groups)
