"""Pretrain mode: the gate learns a plain mixture of experts (docs/METHODS.md §3).

``train_pretrain(config, bundle, report)`` trains on all of ``tunev`` with the seed's
mixture cross-entropy (sample weights, entropy/diversity penalties, gradient
clipping), reporting ``val`` metrics once per epoch. The rule used for the reported
selective metrics is Chow's on the gated mixture (alpha = 1, mu = 0: margin
``max eta - 1``), thresholded on ``tunev`` for ``config.target_coverage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.argse.checkpoint import PRETRAIN_FILE
from core.argse.config import PretrainConfig
from core.argse.data import (
    batch_order,
    check_training_bundle,
    class_to_group_tensor,
    prepare_split,
    split_tensors,
)
from core.argse.features import gating_feature_dim
from core.argse.gating import GatingNet, gate, gate_all
from core.argse.losses import (
    class_frequency_weights,
    frequency_sample_weights,
    group_sample_weights,
    pretrain_loss,
)
from core.argse.margins import margin_and_prediction
from core.argse.predictor import model_metrics, predictor_from_state
from core.argse.rules import calibrate_thresholds
from core.argse.temperature import fit_temperatures
from core.argse.training import (
    ArgseResult,
    CheckpointWriter,
    Report,
    check_resume_config,
    load_state,
    optimizer_to,
    rng_state,
    set_rng_state,
)
from core.config import config_to_dict
from core.device import resolve_device


def _chow_threshold(net, data, c2g, k: int, coverage: float) -> torch.Tensor:
    _, eta = gate_all(net, data.features, data.probs)
    ones, zeros = torch.ones(k, device=eta.device), torch.zeros(k, device=eta.device)
    m, pred = margin_and_prediction(eta, ones, zeros, c2g, "seed")
    t0 = torch.zeros(k, device=eta.device, dtype=m.dtype)
    return calibrate_thresholds(m, c2g[pred], t0, [coverage] * k, global_target=True)


def build_pretrain_checkpoint(net, config: PretrainConfig, bundle, temperatures, t) -> dict:
    e, k = bundle.num_experts, bundle.num_groups
    return {
        "gating_net_state_dict": {n: v.detach().cpu() for n, v in net.state_dict().items()},
        "num_experts": e, "num_classes": bundle.num_classes, "num_groups": k,
        "gating_feature_dim": gating_feature_dim(e), "config": config_to_dict(config),
        "mode": "pretrain", "expert_names": list(bundle.expert_names),
        "class_to_group": class_to_group_tensor(bundle),
        "temperatures": {n: float(x) for n, x in zip(bundle.expert_names, temperatures)},
        "alpha": torch.ones(k), "mu": torch.zeros(k), "t_param": t.detach().float().cpu(),
        "margin": "seed", "hidden_dims": list(config.hidden_dims),
        "dropout": config.dropout, "top_k": config.top_k,
        "eval_coverage": float(config.target_coverage),
    }


def train_pretrain(config: PretrainConfig, bundle, report: Report | None = None, *,
                   resume_from: str | Path | None = None, device="auto",
                   workdir: str | Path | None = None) -> ArgseResult:
    """Train the gate in pretrain mode; see the module docstring.

    Args:
        config: :class:`PretrainConfig`.
        bundle: an ``ExpertBundle`` with ``tunev`` (training) and ``val`` (reports).
        report: ``report(metrics, checkpoint_dir)`` once per epoch; metrics are on
            ``val`` (``augrc``, ``aurc``, ``worst_group_error``, ``balanced_error``,
            ``coverage``, per group, ``loss``, ``epoch``).
        resume_from: a checkpoint directory written by this function: training
            continues after its epoch, identically to an uninterrupted run (CPU).
        device: ``auto|cpu|cuda``.
        workdir: where checkpoint directories go (a temporary directory if None).
    """
    check_training_bundle(bundle)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    cfg_dict = config_to_dict(config)
    e, k = bundle.num_experts, bundle.num_groups
    c2g = class_to_group_tensor(bundle).to(dev)
    logits, labels = split_tensors(bundle, "tunev")
    state = load_state(resume_from) if resume_from is not None else None
    if state is not None:
        check_resume_config(state["config"], cfg_dict, resume_from)
        temps = state["temperatures"]
    else:
        temps = fit_temperatures(logits, labels) if config.fit_temperature else [1.0] * e
    data = prepare_split(logits, labels, temps, c2g, config.top_k, dev)
    del logits

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    net = GatingNet(gating_feature_dim(e), config.hidden_dims, e, config.dropout).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_class = class_frequency_weights(torch.as_tensor(bundle.class_counts),
                                        config.freq_smoothing).to(dev)
    logs: list[dict] = []
    start = 0
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        optimizer_to(opt, dev)
        logs = state["logs"]
        start = state["epoch"]
        set_rng_state(gen, state["rng"])

    writer = CheckpointWriter(workdir)
    last_dir: Path | None = None
    metrics: dict[str, float] = {}
    for epoch in range(start, config.epochs):
        net.train()
        total, n_batches = torch.zeros((), device=dev), 0
        for idx in batch_order(len(data), config.batch_size, gen):
            idx = idx.to(dev)
            y = data.labels[idx]
            w, eta = gate(net, data.features[idx], data.probs[idx])
            sw = None
            if config.balanced_training:
                sw = (frequency_sample_weights(y, per_class) if config.use_freq_weighting
                      else group_sample_weights(data.groups[idx], config.tail_weight))
            loss, _ = pretrain_loss(eta, w, y, sw, config.entropy_penalty,
                                    config.diversity_penalty)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            opt.step()
            total += loss.detach()
            n_batches += 1
        t = _chow_threshold(net, data, c2g, k, config.target_coverage)
        pred = predictor_from_state(net, temperatures=temps, alpha=torch.ones(k),
                                    mu=torch.zeros(k), t=t, class_to_group=c2g, margin="seed",
                                    top_k=config.top_k, expert_names=bundle.expert_names,
                                    device=dev)
        log: dict[str, Any] = {"epoch": epoch + 1, "loss": float(total) / max(n_batches, 1),
                               "t": t.tolist()}
        if report is not None or epoch + 1 == config.epochs:  # val only where it is read
            # at the operating point (target_coverage; the sweep's --coverage)
            metrics = model_metrics(pred, bundle, "val", coverage=config.target_coverage)
            metrics["loss"] = log["loss"]
            metrics["epoch"] = float(epoch + 1)
            log["val"] = dict(metrics)
        logs.append(log)
        rng = rng_state(gen)
        ckpt = build_pretrain_checkpoint(net, config, bundle, temps, t)
        st = {"net": ckpt["gating_net_state_dict"], "optimizer": opt.state_dict(),
              "rng": rng, "epoch": epoch + 1, "logs": logs, "temperatures": list(temps),
              "config": cfg_dict}
        if report is not None or epoch + 1 == config.epochs:
            written = writer.write(f"epoch_{epoch + 1:04d}", PRETRAIN_FILE, ckpt, st, logs)
            last_dir = written
            if report is not None:
                report(dict(metrics), str(written))
                writer.reported(written)
                set_rng_state(gen, rng)
    if last_dir is None:  # resumed after the last epoch: nothing left to train
        if resume_from is None:
            raise ValueError(f"train_pretrain: no epoch was trained and there is nothing to "
                             f"resume from (epochs={config.epochs})")
        last_dir = Path(resume_from)
        metrics = dict(logs[-1].get("val", {})) if logs else {}
    return ArgseResult(config=config, metrics=metrics, checkpoint_dir=str(last_dir),
                       checkpoint_file=str(Path(last_dir) / PRETRAIN_FILE),
                       temperatures=dict(zip(bundle.expert_names, map(float, temps))),
                       logs=logs, alpha=[1.0] * k, mu=[0.0] * k,
                       t=torch.as_tensor(logs[-1]["t"]).tolist() if logs else [])
