"""Tensors the gating trainers read, built once per split (docs/METHODS.md §1, §3).

A :class:`PreparedSplit` holds, for one split and one set of expert temperatures, the
gating features ``[N, 7E+3]``, the expert posteriors ``[N, E, C]``, the posteriors of
the true label ``[N, E]`` (all the mixture NLL reads), the labels ``[N]`` and their
groups ``[N]``, already on the training device: the training loops only index them (no
per-batch feature building, no host-device copies). A subset (S1, S2 of ``tunev``)
shares its parent's ``[N, E, C]`` posteriors through a row index instead of copying
them (at ImageNet-LT shape that copy was 240 MB per trial).

Memory. Temperature scaling, softmax and features are computed :data:`CHUNK` rows at
a time (float16 bundles are upcast per chunk), so preparing a split costs its
float32 posteriors plus one chunk, never a float32 copy of its logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.argse.features import GatingFeatureBuilder, gating_feature_dim
from core.argse.temperature import apply_temperatures
from core.bundles import as_tensor
from core.errors import InputError

REQUIRED_SPLITS = ("tunev", "val")


#: Rows per chunk of the chunked passes over ``[N, E, C]`` (scratch ~ CHUNK x E x C
#: floats: 50 MB at E = 3, C = 1000).
CHUNK = 4096


@dataclass
class PreparedSplit:
    """One prepared split (module docstring). Shapes: N rows of this split.

    Attributes:
        features: ``[N, 7E+3]`` gating features.
        probs: ``[P, E, C]`` expert posteriors of the parent split (``P = N`` unless
            ``rows`` is set); read them with :meth:`probs_at` / :meth:`iter_probs`.
        labels: ``[N]`` int64. groups: ``[N]`` int64 group of the true label.
        label_probs: ``[N, E]`` ``probs[i, :, labels[i]]``.
        rows: ``[N]`` int64 rows of ``probs`` this split is, or None (all of them).
    """

    features: torch.Tensor
    probs: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    label_probs: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> PreparedSplit:
        """The rows ``index``: small tensors copied, the posteriors shared."""
        rows = index if self.rows is None else self.rows[index]
        lp = None if self.label_probs is None else self.label_probs[index]
        return PreparedSplit(self.features[index], self.probs, self.labels[index],
                             self.groups[index], lp, rows)

    def label_probs_at(self, index: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` expert posteriors of the true label of rows ``index``."""
        if self.label_probs is None:
            raise ValueError("PreparedSplit without label_probs (made by prepare_split)")
        return self.label_probs[index]

    def probs_at(self, index: torch.Tensor) -> torch.Tensor:
        """Expert posteriors ``[B, E, C]`` of this split's rows ``index``."""
        return self.probs[index if self.rows is None else self.rows[index]]

    def iter_probs(self, chunk: int = CHUNK):
        """``(start, probs [B, E, C])`` over this split's rows, ``chunk`` at a time."""
        for i in range(0, len(self), chunk):
            if self.rows is None:
                yield i, self.probs[i:i + chunk]
            else:
                yield i, self.probs[self.rows[i:i + chunk]]

    def mean_probs(self) -> torch.Tensor:
        """The uniform mixture ``probs.mean(dim=1)`` ``[N, C]``, chunked."""
        out = torch.empty(len(self), self.probs.shape[2], dtype=self.probs.dtype,
                          device=self.probs.device)
        for i, p in self.iter_probs():
            out[i:i + p.shape[0]] = p.mean(dim=1)
        return out


def gate_split(net, split: PreparedSplit, chunk: int = CHUNK
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``gate_all`` over a prepared split (``(w [N, E], eta [N, C])``, eval mode, chunked,
    the net's mode restored), reading shared posteriors through the split's rows."""
    from core.argse.gating import gate

    was_training = net.training
    net.eval()
    e, c = split.probs.shape[1], split.probs.shape[2]
    w = torch.empty(len(split), e, device=split.probs.device)
    eta = torch.empty(len(split), c, device=split.probs.device)
    with torch.no_grad():
        for i, p in split.iter_probs(chunk):
            wi, ei = gate(net, split.features[i:i + p.shape[0]], p)
            w[i:i + p.shape[0]] = wi
            eta[i:i + p.shape[0]] = ei
    net.train(was_training)
    return w, eta


def scaled_probs(logits: torch.Tensor, temperatures: Sequence[float], device) -> torch.Tensor:
    """``softmax(logits / T)`` ``[B, E, C]`` float32 on ``device`` of one chunk of logits
    (float16 or float32, on any device)."""
    return torch.softmax(apply_temperatures(logits.to(device, torch.float32), temperatures),
                         dim=-1)


def split_tensors(bundle, split: str, upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [N, E, C] float32, labels [N] int64)`` of a bundle split, on CPU.

    float32 logits and int64 labels are **shared** with the bundle (no copy; a 50k x 3
    x 1000 split is 600 MB): treat them as read-only, as every caller here does (they
    only read, index or make new tensors). float16 logits are upcast (one float32
    copy of this split only) unless ``upcast=False``: then they stay float16 and shared,
    for callers that upcast one chunk at a time.
    """
    if split not in bundle.splits:
        where = getattr(bundle, "path", None) or "bundle"
        raise InputError("no such split", file=where, field="split", value=split,
                         expected="one of " + ", ".join(sorted(bundle.splits)))
    s = bundle.splits[split]
    logits = as_tensor(s.logits)
    if upcast and logits.dtype != torch.float32:
        logits = logits.float()
    labels = as_tensor(np.asarray(s.labels, dtype=np.int64))
    return logits, labels


def class_to_group_tensor(bundle) -> torch.Tensor:
    return torch.from_numpy(np.array(bundle.class_to_group, dtype=np.int64, copy=True))


def check_training_bundle(bundle) -> None:
    """The splits a trainer needs are present and non-empty."""
    where = getattr(bundle, "path", None) or "bundle"
    for name in REQUIRED_SPLITS:
        if name not in bundle.splits or len(bundle.splits[name].labels) == 0:
            raise InputError("missing or empty split", file=where, field="splits",
                             value=name, expected="non-empty splits " + ", ".join(REQUIRED_SPLITS))
    if bundle.num_classes < 2:
        raise InputError(file=where, field="num_classes", value=bundle.num_classes,
                         expected=">= 2")


def prepare_split(logits: torch.Tensor, labels: torch.Tensor, temperatures: Sequence[float],
                  class_to_group: torch.Tensor, top_k: int, device: torch.device,
                  chunk: int = CHUNK) -> PreparedSplit:
    """Temperature-scale, softmax and featurise one split, on ``device``, ``chunk`` rows
    at a time (module docstring). ``logits`` ``[N, E, C]`` float16/32 on any device."""
    n, e, c = logits.shape
    builder = GatingFeatureBuilder(top_k)
    probs = torch.empty(n, e, c, dtype=torch.float32, device=device)
    feats = torch.empty(n, gating_feature_dim(e), dtype=torch.float32, device=device)
    labels = labels.to(device)
    for i in range(0, n, chunk):
        p = scaled_probs(logits[i:i + chunk], temperatures, device)
        probs[i:i + p.shape[0]] = p
        feats[i:i + p.shape[0]] = builder.from_probs(p)
    label_probs = probs.gather(2, labels.view(-1, 1, 1).expand(n, e, 1)).squeeze(2)
    return PreparedSplit(feats, probs, labels, class_to_group.to(device)[labels], label_probs)


def stratified_split(label_groups: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint index sets ``(S1, S2)`` of ``tunev``, ``fraction`` of each group in S1.

    Stratified by group so both halves see the tail; deterministic in ``seed``.
    """
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    groups = label_groups.cpu()
    s1, s2 = [], []
    for g in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == g).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n1 = round(fraction * idx.numel())
        if idx.numel() >= 2:
            n1 = min(max(n1, 1), idx.numel() - 1)
        s1.append(idx[:n1])
        s2.append(idx[n1:])
    return torch.sort(torch.cat(s1)).values, torch.sort(torch.cat(s2)).values


def batch_order(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled mini-batch index tensors for one epoch (CPU generator).

    A trailing batch of one sample is dropped: BatchNorm cannot train on it.
    """
    perm = torch.randperm(n, generator=generator)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and batches[-1].numel() == 1:
        batches.pop()
    return batches
