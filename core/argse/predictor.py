"""A trained AR-GSE gate as a predictor: expert logits in, (class, accept, margin) out.

:func:`load_predictor` reads a checkpoint written by :mod:`core.argse.pretrain` or
:mod:`core.argse.selective`; :func:`model_metrics` is the one "metrics of a trained
model on a split" function used by training reports, ``seltune train``,
``seltune evaluate`` and export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.argse.checkpoint import load_checkpoint
from core.argse.data import CHUNK, scaled_probs, split_tensors
from core.argse.evaluation import selective_metrics
from core.argse.features import GatingFeatureBuilder, gating_feature_dim
from core.argse.gating import GatingNet, gate
from core.argse.margins import (
    GroupedPosterior,
    as_margin_variant,
    grouped_margin_and_prediction,
)
from core.device import resolve_device
from core.errors import InputError


@dataclass
class ArgsePredictor:
    """Gating net + temperatures + selective rule ``(alpha, mu, t, margin variant)``.

    Shapes: E experts, C classes, K groups; ``alpha``, ``mu``, ``t`` are ``[K]``,
    ``class_to_group`` ``[C]``.
    """

    net: GatingNet
    temperatures: list[float]
    alpha: torch.Tensor
    mu: torch.Tensor
    t: torch.Tensor
    class_to_group: torch.Tensor
    margin_variant: str
    top_k: int
    expert_names: tuple[str, ...]
    device: torch.device
    source: str = "<memory>"
    #: the operating point the checkpoint was trained for (None: older checkpoints,
    #: judged at their own thresholds)
    eval_coverage: float | None = None

    @property
    def num_experts(self) -> int:
        return len(self.temperatures)

    @property
    def num_classes(self) -> int:
        return int(self.class_to_group.numel())

    @property
    def num_groups(self) -> int:
        return int(self.alpha.numel())

    def _check(self, logits: torch.Tensor) -> None:
        if logits.dim() != 3 or logits.shape[1] != self.num_experts \
                or logits.shape[2] != self.num_classes:
            raise InputError(
                "logits do not match the checkpoint", file=self.source, field="logits shape",
                value=tuple(logits.shape),
                expected=f"[N, E={self.num_experts}, C={self.num_classes}] "
                         f"(checkpoint E={self.num_experts}, C={self.num_classes})")

    def _as_logits(self, logits) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor):
            arr = np.asarray(logits)
            if arr.dtype not in (np.float16, np.float32):
                arr = arr.astype(np.float32)
            from core.bundles import as_tensor

            logits = as_tensor(arr)  # shared, read only here; upcast per chunk
        self._check(logits)
        return logits

    @torch.no_grad()
    def _chunks(self, logits, features: torch.Tensor | None = None, chunk: int = CHUNK):
        """``(start, probs [B, E, C], features [B, 7E+3])`` over ``logits [N, E, C]`` (any
        float dtype and device), ``chunk`` rows at a time on the predictor's device."""
        logits = self._as_logits(logits)
        builder = GatingFeatureBuilder(self.top_k)
        for i in range(0, logits.shape[0], chunk):
            probs = scaled_probs(logits[i:i + chunk], self.temperatures, self.device)
            feats = (builder.from_probs(probs) if features is None
                     else features[i:i + probs.shape[0]].to(self.device))
            yield i, probs, feats

    @torch.no_grad()
    def posterior(self, logits) -> torch.Tensor:
        """Mixture posterior ``eta [N, C]`` (on the predictor's device)."""
        logits = self._as_logits(logits)
        eta = torch.empty(logits.shape[0], self.num_classes, device=self.device)
        was_training = self.net.training
        self.net.eval()
        for i, probs, feats in self._chunks(logits):
            eta[i:i + probs.shape[0]] = gate(self.net, feats, probs)[1]
        self.net.train(was_training)
        return eta

    @torch.no_grad()
    def grouped_posterior(self, logits, features: torch.Tensor | None = None,
                          on_step=None) -> GroupedPosterior:
        """The mixture posterior summarised per group (``[N, K]`` max, argmax, mass;
        float32), chunked over rows: the whole ``[N, C]`` posterior never exists.
        ``features``: the split's gating features when already computed
        (:func:`split_features`; they depend only on the logits and temperatures).
        ``on_step(done, total)``: after each chunk of rows."""
        logits = self._as_logits(logits)
        n = logits.shape[0]
        c2g = self.class_to_group.to(self.device)
        parts: list[GroupedPosterior] = []
        was_training = self.net.training
        self.net.eval()
        total = -(-n // CHUNK)
        for _, probs, feats in self._chunks(logits, features):
            parts.append(GroupedPosterior.from_posterior(gate(self.net, feats, probs)[1],
                                                         c2g, self.num_groups))
            if on_step is not None:
                on_step(len(parts), total)
        self.net.train(was_training)
        if not parts:
            empty = torch.empty(0, self.num_groups, device=self.device)
            return GroupedPosterior(empty, empty.long(), empty, c2g)
        gp = GroupedPosterior(torch.cat([p.group_max for p in parts]),
                              torch.cat([p.group_argmax for p in parts]),
                              torch.cat([p.mass for p in parts]), c2g)
        assert len(gp) == n
        return gp

    @torch.no_grad()
    def decide_grouped(self, gp: GroupedPosterior
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decide` from the grouped posterior, O(N·K)."""
        dev = gp.mass.device
        c2g = self.class_to_group.to(dev)
        m, pred = grouped_margin_and_prediction(gp, self.alpha.to(dev), self.mu.to(dev),
                                                as_margin_variant(self.margin_variant))
        conf = m - self.t.to(dev, m.dtype)[c2g[pred]]
        return pred.cpu(), (conf > 0).cpu(), m.cpu(), conf.cpu()

    @torch.no_grad()
    def decide(self, logits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(class [N], accept [N] bool, margin [N], confidence [N])`` on CPU;
        ``confidence = margin - t[group(class)]`` and ``accept = confidence > 0``.
        Chunked over rows (:meth:`grouped_posterior`)."""
        return self.decide_grouped(self.grouped_posterior(logits))

    def predict(self, logits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert logits ``[N, E, C]`` -> ``(class [N], accept [N] bool, margin [N])``."""
        pred, acc, m, _ = self.decide(logits)
        return pred, acc, m


def predictor_from_state(net: GatingNet, *, temperatures: Sequence[float], alpha, mu, t,
                         class_to_group, margin: str, top_k: int, expert_names: Sequence[str],
                         device: torch.device, source: str = "<memory>",
                         eval_coverage: float | None = None) -> ArgsePredictor:
    net = net.to(device).eval()
    return ArgsePredictor(
        net=net, temperatures=[float(x) for x in temperatures],
        alpha=torch.as_tensor(alpha, dtype=torch.float32).detach().clone().cpu(),
        mu=torch.as_tensor(mu, dtype=torch.float32).detach().clone().cpu(),
        t=torch.as_tensor(t, dtype=torch.float32).detach().clone().cpu(),
        class_to_group=torch.as_tensor(class_to_group, dtype=torch.int64).clone().cpu(),
        margin_variant=margin, top_k=int(top_k), expert_names=tuple(expert_names),
        device=device, source=source,
        eval_coverage=None if eval_coverage is None else float(eval_coverage))


def predictor_from_checkpoint(ckpt: dict[str, Any], device="auto") -> ArgsePredictor:
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    e = int(ckpt["num_experts"])
    cfg = ckpt.get("config", {}) or {}
    hidden = tuple(ckpt.get("hidden_dims", cfg.get("hidden_dims", (128, 64))))
    dropout = float(ckpt.get("dropout", cfg.get("dropout", 0.1)))
    net = GatingNet(int(ckpt["gating_feature_dim"]), hidden, e, dropout)
    net.load_state_dict(ckpt["gating_net_state_dict"])
    k = int(ckpt["num_groups"])
    temps = ckpt.get("temperatures")
    if isinstance(temps, dict):
        names = ckpt.get("expert_names") or list(temps)
        temps = [float(temps[n]) for n in names]
    return predictor_from_state(
        net, temperatures=temps if temps is not None else [1.0] * e,
        alpha=ckpt.get("alpha", torch.ones(k)), mu=ckpt.get("mu", torch.zeros(k)),
        t=ckpt.get("t_param", torch.full((k,), -float("inf"))),
        class_to_group=ckpt["class_to_group"], margin=ckpt.get("margin", "seed"),
        top_k=int(ckpt.get("top_k", cfg.get("top_k", 5))),
        expert_names=ckpt.get("expert_names") or [f"expert{i}" for i in range(e)],
        device=dev, source=ckpt.get("_file", "<memory>"),
        eval_coverage=ckpt.get("eval_coverage", cfg.get("eval_coverage")))


def load_predictor(path: str | Path, device="auto") -> ArgsePredictor:
    """Predictor from a ``*.ckpt`` file or a directory holding one."""
    ckpt = load_checkpoint(path)
    if gating_feature_dim(int(ckpt["num_experts"])) != int(ckpt["gating_feature_dim"]):
        raise InputError(file=ckpt["_file"], field="gating_feature_dim",
                         value=ckpt["gating_feature_dim"],
                         expected=f"7E+3 = {gating_feature_dim(int(ckpt['num_experts']))}")
    return predictor_from_checkpoint(ckpt, device)


def check_bundle_matches(predictor: ArgsePredictor, bundle) -> None:
    """InputError naming both shapes when the bundle's E/C differ from the checkpoint's."""
    be, bc = bundle.num_experts, bundle.num_classes
    if be != predictor.num_experts or bc != predictor.num_classes:
        raise InputError(
            f"bundle has E={be}, C={bc} but checkpoint {predictor.source} has "
            f"E={predictor.num_experts}, C={predictor.num_classes}",
            file=getattr(bundle, "path", None) or "bundle", field="experts/classes",
            expected="the bundle the checkpoint was trained on")


def split_features(predictor: ArgsePredictor, logits) -> torch.Tensor:
    """Gating features ``[N, 7E+3]`` of ``logits [N, E, C]`` under the predictor's
    temperatures, chunked (on the predictor's device)."""
    feats = [f for _, _, f in predictor._chunks(logits)]
    if not feats:
        return torch.empty(0, gating_feature_dim(predictor.num_experts), device=predictor.device)
    return torch.cat(feats)


def grouped_metrics(predictor: ArgsePredictor, gp: GroupedPosterior, labels: torch.Tensor,
                    coverage: float | None = None) -> dict[str, float]:
    """:func:`model_metrics` from the split's grouped posterior
    (:meth:`ArgsePredictor.grouped_posterior`) and labels ``[N]``."""
    pred, acc, _, conf = predictor.decide_grouped(gp)
    coverage = predictor.eval_coverage if coverage is None else coverage
    out = selective_metrics(conf, pred, labels, predictor.class_to_group,
                            predictor.num_groups, accept=acc, coverage=coverage)
    out["deployed_coverage"] = float(acc.double().mean()) if acc.numel() else 0.0
    return out


def model_metrics(predictor: ArgsePredictor, bundle, split: str,
                  coverage: float | None = None, on_step=None) -> dict[str, float]:
    """Metrics dict (see :func:`core.argse.evaluation.selective_metrics`) on ``split``.

    ``coverage``: the operating point; the rule is judged at exactly that coverage on the
    split (one threshold shift). Default: the checkpoint's ``eval_coverage``; a
    checkpoint without one is judged at its own thresholds. ``deployed_coverage`` is
    the coverage of the stored thresholds as they are. The split is read in chunks of
    rows (``on_step(done, total)`` after each), float16 bundles upcast per chunk.
    """
    check_bundle_matches(predictor, bundle)
    logits, labels = split_tensors(bundle, split, upcast=False)
    gp = predictor.grouped_posterior(logits, on_step=on_step)
    return grouped_metrics(predictor, gp, labels, coverage)


def evaluate_checkpoint(path: str | Path, bundle, split: str, device="auto",
                        coverage: float | None = None) -> dict[str, float]:
    """Metrics of the checkpoint at ``path`` on ``bundle``'s ``split`` (see
    :func:`model_metrics` for ``coverage``)."""
    return model_metrics(load_predictor(path, device), bundle, split, coverage)
