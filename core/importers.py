"""Import the layouts users already have into bundles (``seltune data import``).

AR-GSE layout (``import_argse_dir``)::

    DIR/class_counts.json                  [n_0, ..., n_{C-1}] training counts
                                           (or {"class_counts": [...]})
    DIR/<split>_labels.{npy,npz,pt}        [N] int labels, split in tunev, val, test
    DIR/<expert>/<split>_logits.{npy,npz,pt}   [N, C] logits of one expert

Every sub-directory of DIR holding a ``*_logits.*`` file is an expert (sorted by name,
unless ``experts`` gives the names and order). A ``.npz`` holds one array, or the key
``logits`` / ``labels``; a ``.pt`` holds a tensor, or a dict with that key (loaded with
``weights_only=True``, so no code is executed). Logits may be float16/32/64; they are
stored as float32.

Stage-1 layout (``import_stage1_dir``)::

    DIR/<split>.npz   features [N, D], labels [N], optional group [N], optional path [N]
                      for split in train, val, test

Every problem raises :class:`core.errors.InputError` naming the offending file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.bundles import (
    DEFAULT_GROUP_BOUNDARIES,
    EXPERT_SPLITS,
    FEATURE_SPLITS,
    ExpertBundle,
    ExpertSplit,
    FeatureBundle,
    FeatureSplit,
    class_to_group_from_counts,
    validate_bundle,
)
from core.errors import InputError

ARRAY_SUFFIXES = (".npy", ".npz", ".pt")


def _check_dir(src: str | Path) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise InputError("is not a directory" if src.exists() else "does not exist",
                         file=src, expected="the directory to import")
    return src


def _find(directory: Path, stem: str, what: str) -> Path:
    found = [directory / f"{stem}{s}" for s in ARRAY_SUFFIXES if (directory / f"{stem}{s}").is_file()]
    if not found:
        raise InputError(f"{what} is missing", file=directory / f"{stem}.{{npy,npz,pt}}",
                         expected="one of .npy, .npz, .pt")
    if len(found) > 1:
        raise InputError(f"{what} exists in several formats",
                         file=", ".join(str(f) for f in found), expected="exactly one file")
    return found[0]


def read_array(path: str | Path, key: str) -> np.ndarray:
    """Read one array from ``.npy`` / ``.npz`` / ``.pt``; ``key`` picks it in a container."""
    path = Path(path)
    suffix = path.suffix
    try:
        if suffix == ".npy":
            value: Any = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                if key in names:
                    value = z[key]
                elif len(names) == 1:
                    value = z[names[0]]
                else:
                    raise InputError(file=path, field="arrays", value=names,
                                     expected=f"one array or an array named {key!r}")
        elif suffix == ".pt":
            import torch

            value = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(value, dict):
                if key not in value:
                    raise InputError(file=path, field="keys", value=sorted(map(str, value)),
                                     expected=f"a tensor or a dict with key {key!r}")
                value = value[key]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                if value.dtype == torch.bfloat16:
                    value = value.float()
                value = value.numpy()
        else:
            raise InputError(file=path, field="suffix", value=suffix,
                             expected="one of .npy, .npz, .pt")
    except InputError:
        raise
    except Exception as exc:  # any reader failure is a bad file, reported on one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"unreadable ({type(exc).__name__}: {msg})", file=path,
                         expected="a valid array file") from None
    arr = np.asarray(value)
    if arr.dtype == object:
        raise InputError(file=path, field=key, value="object array",
                         expected="a numeric array")
    return arr


def _logits(path: Path) -> np.ndarray:
    arr = read_array(path, "logits")
    if arr.ndim != 2:
        raise InputError(file=path, field="logits", value=f"shape {list(arr.shape)}",
                         expected="shape [N, C]")
    if arr.dtype.kind not in "fiu":
        raise InputError(file=path, field="logits", value=str(arr.dtype),
                         expected="floating-point logits")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"non-finite value {float(arr[tuple(bad)])!r} at index {bad.tolist()}",
                         file=path, field="logits", expected="finite numbers (no NaN/inf)")
    return arr


def _labels(path: Path) -> np.ndarray:
    return _as_int_labels(read_array(path, "labels"), path, "labels")


def _as_int_labels(arr: Any, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(file=path, field=key, value=f"shape {list(arr.shape)}",
                         expected="shape [N]")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise InputError(file=path, field=key, value="non-integer values",
                             expected="integer class labels")
    elif arr.dtype.kind not in "iub":
        raise InputError(file=path, field=key, value=str(arr.dtype),
                         expected="integer class labels")
    return arr.astype(np.int64)


def _class_counts(src: Path) -> np.ndarray:
    path = src / "class_counts.json"
    if not path.is_file():
        raise InputError("is missing", file=path,
                         expected="a JSON list of the C training class counts")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable JSON ({exc})", file=path,
                         expected="a JSON list of counts") from None
    if isinstance(data, dict) and "class_counts" in data:
        data = data["class_counts"]
    if (not isinstance(data, list) or not data
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data)):
        raise InputError(file=path, field="class_counts",
                         value=data if not isinstance(data, list) or len(data) <= 8
                         else f"list of {len(data)}",
                         expected="a non-empty JSON list of integer counts >= 0")
    return np.asarray(data, dtype=np.int64)


def _expert_dirs(src: Path, experts: Sequence[str] | None) -> list[str]:
    if experts:
        names = [str(e) for e in experts]
        for name in names:
            if not (src / name).is_dir():
                raise InputError("expert directory is missing", file=src / name,
                                 expected="DIR/<expert>/<split>_logits.{npy,npz,pt}")
        return names
    names = sorted(
        p.name for p in src.iterdir()
        if p.is_dir() and not p.name.startswith(".")
        and any(f.name.split("_logits")[0] in EXPERT_SPLITS and f.suffix in ARRAY_SUFFIXES
                for f in p.iterdir() if "_logits" in f.name)
    )
    if not names:
        raise InputError("no expert directory found", file=src,
                         expected="sub-directories DIR/<expert>/<split>_logits.{npy,npz,pt}")
    return names


def import_argse_dir(
    src: str | Path,
    group_boundaries: Sequence[int] = DEFAULT_GROUP_BOUNDARIES,
    experts: Sequence[str] | None = None,
) -> ExpertBundle:
    """Read the AR-GSE layout (module docstring) into a validated :class:`ExpertBundle`.

    Args:
        src: the layout's root directory.
        group_boundaries: count boundaries of the class->group map (default: tail =
            classes with <= 20 training samples).
        experts: expert sub-directories to use, in this order (default: all, sorted).

    Raises:
        InputError: a missing split/expert/labels/class_counts file, NaN/inf logits,
            experts with different shapes, labels outside ``[0, C)``, an empty split,
            class counts of the wrong length, or a group with no class.
    """
    src = _check_dir(src)
    counts = _class_counts(src)
    names = _expert_dirs(src, experts)
    splits: dict[str, ExpertSplit] = {}
    num_classes: int | None = None
    for split in EXPERT_SPLITS:
        per_expert: list[np.ndarray] = []
        first_path: Path | None = None
        for name in names:
            path = _find(src / name, f"{split}_logits", f"logits of expert {name!r}, split {split!r}")
            arr = _logits(path)
            if first_path is not None and arr.shape != per_expert[0].shape:
                raise InputError(
                    "experts have different shapes", file=path, field="logits",
                    value=f"shape {list(arr.shape)}",
                    expected=f"{list(per_expert[0].shape)} like {first_path}",
                )
            if num_classes is not None and arr.shape[1] != num_classes:
                raise InputError(file=path, field="logits", value=f"shape {list(arr.shape)}",
                                 expected=f"C={num_classes} classes like the other splits")
            first_path = first_path or path
            per_expert.append(arr)
        n, c = per_expert[0].shape
        num_classes = c
        if n == 0:
            raise InputError("split is empty", file=first_path, field="logits",
                             value=f"shape [0, {c}]", expected="at least one row")
        label_path = _find(src, f"{split}_labels", f"labels of split {split!r}")
        labels = _labels(label_path)
        if labels.shape[0] != n:
            raise InputError(file=label_path, field="labels", value=f"{labels.shape[0]} rows",
                             expected=f"{n} rows like {first_path}")
        if labels.min() < 0 or labels.max() >= c:
            bad = labels[(labels < 0) | (labels >= c)][0]
            raise InputError(f"label {int(bad)} out of range", file=label_path,
                             field="labels", expected=f"labels in [0, {c})")
        splits[split] = ExpertSplit(logits=np.stack(per_expert, axis=1), labels=labels)
    num_classes = int(splits["test"].logits.shape[2])
    if counts.shape[0] != num_classes:
        raise InputError(f"has {counts.shape[0]} entries", file=src / "class_counts.json",
                         field="class_counts",
                         expected=f"{num_classes} entries (the logits have C={num_classes})")
    class_to_group = class_to_group_from_counts(counts, group_boundaries,
                                                source=src / "class_counts.json")
    bundle = ExpertBundle(expert_names=tuple(names), class_counts=counts,
                          class_to_group=class_to_group, splits=splits,
                          group_boundaries=tuple(int(b) for b in group_boundaries))
    validate_bundle(bundle, source=src)
    return bundle


def import_stage1_dir(src: str | Path) -> FeatureBundle:
    """Read ``DIR/<split>.npz`` (train, val, test) into a validated :class:`FeatureBundle`.

    Each file holds ``features [N, D]``, ``labels [N]`` and optionally ``group [N]``
    (ints) and ``path [N]`` (strings). ``num_classes`` is ``max(2, max label + 1)``.
    """
    src = _check_dir(src)
    splits: dict[str, FeatureSplit] = {}
    for split in FEATURE_SPLITS:
        path = src / f"{split}.npz"
        if not path.is_file():
            raise InputError(f"split {split!r} is missing", file=path,
                             expected="an .npz with features, labels (optional group, path)")
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"unreadable ({type(exc).__name__})", file=path,
                             expected="a valid .npz file") from None
        with z:
            for key in ("features", "labels"):
                if key not in z.files:
                    raise InputError("array is missing", file=path, field=key,
                                     expected=f"arrays features and labels (found {z.files})")
            feats = np.asarray(z["features"])
            labels = _as_int_labels(z["labels"], path, "labels")
            group = _as_int_labels(z["group"], path, "group") if "group" in z.files else None
            paths = [str(p) for p in z["path"].tolist()] if "path" in z.files else None
        if feats.ndim != 2:
            raise InputError(file=path, field="features", value=f"shape {list(feats.shape)}",
                             expected="shape [N, D]")
        if feats.dtype.kind not in "fiu":
            raise InputError(file=path, field="features", value=str(feats.dtype),
                             expected="numeric features")
        feats = feats.astype(np.float32, copy=False)
        if feats.shape[0] == 0:
            raise InputError("split is empty", file=path, field="features",
                             value=f"shape {list(feats.shape)}", expected="at least one row")
        if not np.isfinite(feats).all():
            bad = np.argwhere(~np.isfinite(feats))[0]
            raise InputError(f"non-finite value {float(feats[tuple(bad)])!r} at index {bad.tolist()}",
                             file=path, field="features", expected="finite numbers (no NaN/inf)")
        for key, arr in (("labels", labels), ("group", group)):
            if arr is not None and arr.shape[0] != feats.shape[0]:
                raise InputError(file=path, field=key, value=f"{arr.shape[0]} rows",
                                 expected=f"{feats.shape[0]} rows like features")
        if labels.min() < 0:
            raise InputError(f"label {int(labels.min())} out of range", file=path,
                             field="labels", expected="labels >= 0")
        if group is not None and group.min() < 0:
            raise InputError(file=path, field="group", value=int(group.min()),
                             expected="group ids >= 0")
        if paths is not None and len(paths) != feats.shape[0]:
            raise InputError(file=path, field="path", value=f"{len(paths)} entries",
                             expected=f"{feats.shape[0]} entries like features")
        splits[split] = FeatureSplit(features=feats, labels=labels, group=group, path=paths)
    num_classes = max(2, max(int(s.labels.max()) for s in splits.values()) + 1)
    bundle = FeatureBundle(num_classes=num_classes, splits=splits)
    validate_bundle(bundle, source=src)
    return bundle


__all__ = ["ARRAY_SUFFIXES", "import_argse_dir", "import_stage1_dir", "read_array"]
