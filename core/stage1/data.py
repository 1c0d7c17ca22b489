"""Stage-1 data: a feature bundle's splits as arrays, with ``val`` split in two.

docs/METHODS.md §1, §4: ``val`` is split, disjointly and reproducibly, into ``val_select``
(early stopping / model selection) and ``val_calib`` (class calibrator, gate calibrator
and exit threshold). The split is stratified by label: within each class a seeded
permutation sends ``round(calib_fraction * n_class)`` samples to ``val_calib`` (at
least one to each side when the class has two or more samples).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from core.errors import InputError

SPLIT_NAMES = ("train", "val_select", "val_calib", "test")


def split_val(labels: np.ndarray, calib_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(select [Ns], calib [Nc])`` into ``val`` (sorted, disjoint, covering).

    Args:
        labels: ``[N]`` int labels of the ``val`` split.
        calib_fraction: share of each class sent to ``val_calib``, in (0, 1).
        seed: seed of the permutation (``Stage1Config.seed``).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0x5E1EC7])
    select: list[np.ndarray] = []
    calib: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_cal = round(calib_fraction * len(idx))
        if len(idx) >= 2:
            n_cal = min(max(n_cal, 1), len(idx) - 1)
        calib.append(idx[:n_cal])
        select.append(idx[n_cal:])
    sel = np.sort(np.concatenate(select)) if select else np.zeros(0, np.int64)
    cal = np.sort(np.concatenate(calib)) if calib else np.zeros(0, np.int64)
    return sel.astype(np.int64), cal.astype(np.int64)


@dataclasses.dataclass
class SplitArrays:
    """One split: ``features [N, D]`` float32, ``labels [N]`` int64, ``group [N]`` int64 or None."""

    features: np.ndarray
    labels: np.ndarray
    group: np.ndarray | None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass
class Stage1Data:
    """Everything a Stage-1 run reads: splits ``train, val_select, val_calib, test``."""

    num_classes: int
    feature_dim: int
    num_groups: int | None
    splits: dict[str, SplitArrays]

    def split(self, name: str) -> SplitArrays:
        """A split by name; ``val`` is an alias of ``val_select`` (the split reported as val)."""
        key = "val_select" if name == "val" else name
        if key not in self.splits:
            raise InputError(field="split", value=name,
                             expected="one of " + ", ".join(("val", *self.splits)))
        return self.splits[key]


def prepare_data(bundle: Any, calib_fraction: float, seed: int) -> Stage1Data:
    """Check that ``bundle`` is a Stage-1 feature bundle and split its ``val``.

    Raises InputError for an expert-logit bundle, missing splits, or a ``val`` too
    small to split.
    """
    kind = getattr(bundle, "kind", None)
    src = getattr(bundle, "path", None) or "bundle"
    if kind != "stage1":
        raise InputError(file=src, field="kind", value=kind,
                         expected="'stage1' (a feature bundle; see `seltune data`)")
    for name in ("train", "val"):
        if name not in bundle.splits:
            raise InputError("missing split", file=src, field=name,
                             expected="splits train, val and test")
    arrays: dict[str, SplitArrays] = {}
    for name, sp in bundle.splits.items():
        group = None if sp.group is None else np.asarray(sp.group, dtype=np.int64)
        arrays[name] = SplitArrays(np.asarray(sp.features, dtype=np.float32),
                                   np.asarray(sp.labels, dtype=np.int64), group)
    val = arrays.pop("val")
    if len(val) < 2:
        raise InputError("val split too small to split into val_select and val_calib",
                         file=src, field="val", value=len(val), expected=">= 2 samples")
    sel, cal = split_val(val.labels, calib_fraction, seed)
    if len(sel) == 0 or len(cal) == 0:
        raise InputError("val split leaves val_select or val_calib empty", file=src,
                         field="calib_fraction", value=calib_fraction,
                         expected="a fraction leaving samples on both sides")

    def take(idx: np.ndarray) -> SplitArrays:
        return SplitArrays(val.features[idx], val.labels[idx],
                           None if val.group is None else val.group[idx])

    splits = {"train": arrays.pop("train"), "val_select": take(sel), "val_calib": take(cal)}
    splits.update(arrays)  # test (and any extra split)
    num_groups = None
    if val.group is not None:
        names = getattr(bundle, "group_names", None)
        seen = max(int(s.group.max()) for s in splits.values() if s.group is not None and len(s))
        num_groups = max(seen + 1, len(names) if names else 0)
    return Stage1Data(num_classes=int(bundle.num_classes), feature_dim=int(val.features.shape[1]),
                      num_groups=num_groups, splits=splits)
