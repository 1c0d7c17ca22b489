"""Tensors the gating trainers read, built once per split (ALGORITHMS.md §1-2).

A :class:`PreparedSplit` holds, for one split and one set of expert temperatures, the
gating features ``[N, 7E+3]``, the expert posteriors ``[N, E, C]``, the labels ``[N]``
and their groups ``[N]``, already on the training device: the training loops only
index them (no per-batch feature building, no host-device copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.argse.features import GatingFeatureBuilder
from core.argse.temperature import apply_temperatures
from core.bundles import as_tensor
from core.errors import InputError

REQUIRED_SPLITS = ("tunev", "val")


@dataclass
class PreparedSplit:
    features: torch.Tensor  # [N, 7E+3]
    probs: torch.Tensor  # [N, E, C]
    labels: torch.Tensor  # [N] int64
    groups: torch.Tensor  # [N] int64, group of the true label

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> PreparedSplit:
        return PreparedSplit(self.features[index], self.probs[index], self.labels[index],
                             self.groups[index])


def split_tensors(bundle, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [N, E, C] float32, labels [N] int64)`` of a bundle split, on CPU.

    float32 logits and int64 labels are **shared** with the bundle (no copy; a 50k x 3
    x 1000 split is 600 MB): treat them as read-only, as every caller here does (they
    only read, index or make new tensors). float16 logits are upcast (one float32
    copy of this split only).
    """
    if split not in bundle.splits:
        where = getattr(bundle, "path", None) or "bundle"
        raise InputError("no such split", file=where, field="split", value=split,
                         expected="one of " + ", ".join(sorted(bundle.splits)))
    s = bundle.splits[split]
    logits = as_tensor(s.logits)
    if logits.dtype != torch.float32:
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
                  class_to_group: torch.Tensor, top_k: int, device: torch.device
                  ) -> PreparedSplit:
    """Temperature-scale, softmax and featurise one split, on ``device``."""
    logits = apply_temperatures(logits.to(device), temperatures)
    probs = torch.softmax(logits, dim=-1)
    feats = GatingFeatureBuilder(top_k).from_probs(probs)
    labels = labels.to(device)
    return PreparedSplit(feats, probs, labels, class_to_group.to(device)[labels])


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
