"""Data bundles: what the trainables read (docs/METHODS.md §1).

Two kinds of bundle, both a directory::

    BUNDLE/manifest.json             kind, format version, names, counts, groups, split rows
    BUNDLE/<split>_logits.npy        expert-logit bundles: [N, E, C] logits of a split
    BUNDLE/<split>_labels.npy        expert-logit bundles: [N] int64 labels
    BUNDLE/<split>.parquet           feature bundles (and expert bundles of version 1)

* **Expert-logit bundle** (``kind = "argse"``), splits ``tunev``, ``val``, ``test``:
  labels (int64) and logits ``[N, E, C]`` float32, or float16 when the bundle was built
  from float16 logits (half the disk and memory; trainers compute in float32, one
  chunk of rows at a time). Version 1 stored them as Parquet columns ``label`` and
  ``logits`` (``fixed_shape_tensor``). The manifest holds the expert names, the
  *training* ``class_counts`` of the experts, ``class_to_group`` and the count
  ``group_boundaries`` the groups were derived from.
* **Feature bundle** (``kind = "stage1"``), splits ``train``, ``val``, ``test``:
  columns ``label`` (int64), ``features`` (``fixed_shape_tensor(float32, [D])``),
  optional ``group`` (int64) and optional ``path`` (string).

Storage (format version 2, expert-logit bundles). Each split is two NumPy ``.npy``
files, ``<split>_logits.npy`` ``[N, E, C]`` (float32, or float16 as built) and
``<split>_labels.npy`` ``[N]`` int64. Loading **maps** them (``mmap`` with
copy-on-write access) and hands out arrays that view the mapping: nothing is decoded
or copied, pages are read from the page cache when first touched, and a bundle costs
resident memory only for the rows a caller actually reads. Writing to a loaded array
changes the process's private copy of that page, never the file. Parquet (format
version 1, ``<split>.parquet``) could not do this: its pages must be decoded into a
second buffer, so a loaded bundle cost its size twice (mapped file + decoded copy).
Version-1 expert bundles and feature bundles (``kind = "stage1"``, still written as
Parquet: small, with string columns) load as before: the file is mapped, each column
decoded once into an Arrow buffer and viewed by numpy without a further copy
(``FixedShapeTensorArray.to_numpy_ndarray``). Arrays that come out of Ray's object
store are read-only whatever the source: :func:`as_tensor` wraps either kind without
torch's read-only warning.

Validation (:func:`validate_bundle`) runs before every save and after every load, so
a bundle on disk is always well-formed: finite logits/features, consistent shapes,
labels in ``[0, C)``, no empty or missing split, ``class_counts`` of length C and
every group holding at least one class. Every problem raises
:class:`core.errors.InputError` with one line naming the file, field, value and what
was expected.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from core.atomic import atomic_dir, check_output_path
from core.errors import InputError

FORMAT_NAME = "seltune-bundle"
#: written for expert-logit bundles (``.npy`` splits); feature bundles are version 1
FORMAT_VERSION = 2
FEATURE_FORMAT_VERSION = 1
#: versions this code reads (1: Parquet splits, 2: ``.npy`` expert-logit splits)
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
EXPERT_SPLITS = ("tunev", "val", "test")
FEATURE_SPLITS = ("train", "val", "test")
DEFAULT_GROUP_BOUNDARIES: tuple[int, ...] = (20,)


# --------------------------------------------------------------------------- types


def _as_labels(labels: Any) -> Any:
    """int64 view/cast of integer labels; anything else is left for validation to reject."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "iu" and arr.dtype != np.int64:
        return arr.astype(np.int64)
    return arr


def _as_float32(values: Any) -> Any:
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        return arr.astype(np.float32)
    return arr


def _as_logits(values: Any) -> Any:
    """float16 kept as is (half the memory and disk; compute upcasts per split, see
    ``core.argse.data.split_tensors``), any other float as float32."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float16):
        return arr.astype(np.float32)
    return arr


@dataclass(frozen=True)
class ExpertSplit:
    """One split of an expert-logit bundle.

    Attributes:
        logits: ``[N, E, C]`` float32 or float16 (stored as such on disk; compute is
            float32), raw (pre-softmax) logits of every expert.
        labels: ``[N]`` int64 true classes in ``[0, C)``.
    """

    logits: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "logits", _as_logits(self.logits))
        object.__setattr__(self, "labels", _as_labels(self.labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ExpertBundle:
    """Expert logits for AR-GSE (splits :data:`EXPERT_SPLITS`).

    Attributes:
        expert_names: E names, in the order of the logits' second axis.
        class_counts: ``[C]`` int64, training-set counts of the experts' training data.
        class_to_group: ``[C]`` int64 group of each class; group 0 is the head (most
            frequent), the last group the tail.
        splits: split name -> :class:`ExpertSplit`.
        path: the directory it was loaded from (``None`` if built in memory).
        group_boundaries: ascending count boundaries; a class with count ``n`` is in
            group ``sum(n <= b for b in group_boundaries)``.
    """

    expert_names: tuple[str, ...]
    class_counts: np.ndarray
    class_to_group: np.ndarray
    splits: dict[str, ExpertSplit]
    path: Path | None = None
    group_boundaries: tuple[int, ...] = DEFAULT_GROUP_BOUNDARIES
    kind: ClassVar[str] = "argse"

    def __post_init__(self) -> None:
        object.__setattr__(self, "expert_names", tuple(self.expert_names))
        object.__setattr__(self, "class_counts", _as_labels(self.class_counts))
        object.__setattr__(self, "class_to_group", _as_labels(self.class_to_group))
        object.__setattr__(self, "group_boundaries", tuple(self.group_boundaries))

    @property
    def num_experts(self) -> int:
        return len(self.expert_names)

    @property
    def num_classes(self) -> int:
        return int(np.asarray(self.class_counts).shape[0])

    @property
    def num_groups(self) -> int:
        return len(self.group_boundaries) + 1


@dataclass(frozen=True)
class FeatureSplit:
    """One split of a feature bundle.

    Attributes:
        features: ``[N, D]`` float32 backbone features.
        labels: ``[N]`` int64 classes in ``[0, num_classes)``.
        group: optional ``[N]`` int64 group (e.g. data source) of each sample.
        path: optional N source paths (e.g. image files), for reports.
    """

    features: np.ndarray
    labels: np.ndarray
    group: np.ndarray | None = None
    path: list[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", _as_float32(self.features))
        object.__setattr__(self, "labels", _as_labels(self.labels))
        if self.group is not None:
            object.__setattr__(self, "group", _as_labels(self.group))
        if self.path is not None:
            object.__setattr__(self, "path", [str(p) for p in self.path])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class FeatureBundle:
    """Cached backbone features for the Stage-1 head (splits :data:`FEATURE_SPLITS`).

    Attributes:
        num_classes: C >= 2 (binary by default).
        splits: split name -> :class:`FeatureSplit`.
        path: the directory it was loaded from (``None`` if built in memory).
        group_names: optional names of the values of ``FeatureSplit.group``.
    """

    num_classes: int
    splits: dict[str, FeatureSplit]
    path: Path | None = None
    group_names: tuple[str, ...] | None = None
    kind: ClassVar[str] = "stage1"

    def __post_init__(self) -> None:
        if self.group_names is not None:
            object.__setattr__(self, "group_names", tuple(self.group_names))

    @property
    def feature_dim(self) -> int:
        first = next(iter(self.splits.values()))
        return int(first.features.shape[1])


Bundle = ExpertBundle | FeatureBundle


def as_tensor(array: np.ndarray):
    """A torch tensor sharing ``array``'s memory, without torch's read-only warning.

    For a read-only array (e.g. one that came through Ray's object store) the tensor
    must be treated as read-only too: copy it before any in-place operation.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.asarray(array))


# --------------------------------------------------------------------------- groups


def check_group_boundaries(boundaries: Any, source: str | Path = "group_boundaries") -> tuple[int, ...]:
    """Validate count boundaries: a non-empty, strictly ascending tuple of ints >= 0."""
    try:
        values = tuple(int(b) for b in boundaries)
        ok = all(float(b) == int(b) for b in boundaries)
    except (TypeError, ValueError):
        values, ok = (), False
    if not ok or not values or any(b < 0 for b in values) or any(
        a >= b for a, b in itertools.pairwise(values)
    ):
        raise InputError(
            file=source, field="group_boundaries", value=boundaries,
            expected="one or more strictly ascending integer counts >= 0 (e.g. 20 or 20,100)",
        )
    return values


def class_to_group_from_counts(
    class_counts: Any, boundaries: Any = DEFAULT_GROUP_BOUNDARIES, source: str | Path = "class_counts"
) -> np.ndarray:
    """Map each class to a group by its training count.

    Args:
        class_counts: ``[C]`` training counts.
        boundaries: ascending counts ``b_1 < ... < b_{K-1}``; group of a class with
            count ``n`` is ``sum(n <= b_j)``, so group 0 holds the most frequent (head)
            classes and group K-1 the rarest. The default ``(20,)`` is the K = 2 split
            of Narasimhan et al. (ICLR 2024): tail = classes with at most 20 samples.
        source: names the input in error messages.

    Returns:
        ``[C]`` int64 group indices in ``[0, K)``.

    Raises:
        InputError: bad boundaries, or a group that would hold no class.
    """
    bounds = check_group_boundaries(boundaries, source)
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.size == 0 or counts.dtype.kind not in "iu":
        raise InputError(file=source, field="class_counts", value=_brief(counts),
                         expected="a non-empty list of integer counts")
    groups = (counts[:, None] <= np.asarray(bounds)[None, :]).sum(axis=1).astype(np.int64)
    _check_groups_nonempty(groups, len(bounds) + 1, source, bounds)
    return groups


def _check_groups_nonempty(groups: np.ndarray, k: int, source: Any, bounds: Any = None) -> None:
    present = np.bincount(groups, minlength=k)
    empty = [g for g in range(k) if present[g] == 0]
    if empty:
        detail = f" with group_boundaries={list(bounds)}" if bounds is not None else ""
        raise InputError(
            f"group {empty[0]} has no class{detail}", file=source, field="class_to_group",
            expected=f"every one of the {k} groups to hold at least one class "
            "(choose other --group-boundaries)",
        )


def _brief(arr: Any) -> Any:
    arr = np.asarray(arr)
    return arr.tolist() if arr.size <= 8 else f"array{list(arr.shape)} {arr.dtype}"


# --------------------------------------------------------------------------- validation


#: Elements checked at a time by _check_finite: a whole-array mask would add a quarter of
#: a float32 bundle to the peak memory of every load.
_FINITE_CHUNK = 1 << 22


def _check_finite(values: np.ndarray, source: Any, name: str) -> None:
    if values.dtype.kind != "f":
        raise InputError(file=source, field=name, value=str(values.dtype),
                         expected="floating-point values")
    flat = values.reshape(-1)  # a view for the contiguous arrays bundles hold
    ok = all(np.isfinite(flat[i:i + _FINITE_CHUNK]).all()
             for i in range(0, flat.size, _FINITE_CHUNK))
    if not ok:
        bad = np.argwhere(~np.isfinite(values))[0]
        raise InputError(
            f"non-finite value {float(values[tuple(bad)])!r} at index {bad.tolist()}",
            file=source, field=name, expected="finite numbers (no NaN/inf)",
        )


def _check_labels(labels: np.ndarray, n: int, num_classes: int, source: Any, name: str) -> None:
    if labels.dtype.kind not in "iu":
        raise InputError(file=source, field=name, value=str(labels.dtype),
                         expected="integer class labels")
    if labels.shape != (n,):
        raise InputError(file=source, field=name, value=f"shape {list(labels.shape)}",
                         expected=f"shape [{n}] (one label per row)")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise InputError(f"label {int(bad)} out of range", file=source, field=name,
                         expected=f"labels in [0, {num_classes})")


def validate_bundle(bundle: Bundle, source: str | Path | None = None, *,
                    check_finite: bool = True) -> None:
    """Check a bundle completely; raise :class:`InputError` on the first problem.

    Args:
        bundle: an :class:`ExpertBundle` or :class:`FeatureBundle`.
        source: names the bundle in messages (a path); defaults to ``bundle.path``.
        check_finite: False when the caller has already checked every logit (the
            loader of mapped splits does it while handing the pages back).
    """
    src = str(source if source is not None else (bundle.path or "<bundle>"))
    if isinstance(bundle, ExpertBundle):
        _validate_expert(bundle, src, check_finite)
    elif isinstance(bundle, FeatureBundle):
        _validate_feature(bundle, src)
    else:
        raise InputError(file=src, field="bundle", value=type(bundle).__name__,
                         expected="an ExpertBundle or FeatureBundle")


def _check_split_names(splits: dict, required: tuple[str, ...], src: str) -> None:
    for name in required:
        if name not in splits:
            raise InputError(f"split {name!r} is missing", file=src, field="splits",
                             value=sorted(splits), expected=f"splits {list(required)}")


def _validate_expert(b: ExpertBundle, src: str, check_finite: bool = True) -> None:
    names = b.expert_names
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InputError(file=src, field="expert_names", value=list(names),
                         expected="one or more non-empty names")
    if len(set(names)) != len(names):
        raise InputError(file=src, field="expert_names", value=list(names),
                         expected="distinct names")
    _check_split_names(b.splits, EXPERT_SPLITS, src)
    counts = np.asarray(b.class_counts)
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
        raise InputError(file=src, field="class_counts", value=_brief(counts),
                         expected="a list of integer training counts >= 0")
    shapes = {}
    for name, split in b.splits.items():
        where = f"{src}[{name}]"
        lg = np.asarray(split.logits)
        if lg.ndim != 3:
            raise InputError(file=where, field="logits", value=f"shape {list(lg.shape)}",
                             expected="shape [N, E, C]")
        if lg.shape[0] == 0:
            raise InputError("split is empty", file=where, field="logits",
                             value=f"shape {list(lg.shape)}", expected="at least one row")
        shapes[name] = lg.shape
    # all splits agree on E and C
    first = next(iter(shapes))
    e, c = shapes[first][1:]
    for name, shape in shapes.items():
        if shape[1:] != (e, c):
            raise InputError(file=f"{src}[{name}]", field="logits",
                             value=f"shape {list(shape)}",
                             expected=f"[N, {e}, {c}] like split {first!r}")
    if e != len(names):
        raise InputError(file=src, field="expert_names", value=list(names),
                         expected=f"{e} names, one per expert in the logits")
    if c < 2:
        raise InputError(file=src, field="num_classes", value=c, expected="at least 2 classes")
    if counts.shape[0] != c:
        raise InputError(f"has {counts.shape[0]} entries", file=src, field="class_counts",
                         expected=f"{c} entries (one per class of the logits)")
    for name, split in b.splits.items():
        where = f"{src}[{name}]"
        if check_finite:
            _check_finite(np.asarray(split.logits), where, "logits")
        _check_labels(np.asarray(split.labels), shapes[name][0], c, where, "labels")
    bounds = check_group_boundaries(b.group_boundaries, src)
    k = len(bounds) + 1
    ctg = np.asarray(b.class_to_group)
    if ctg.shape != (c,) or ctg.dtype.kind not in "iu":
        raise InputError(file=src, field="class_to_group", value=_brief(ctg),
                         expected=f"{c} integer group indices")
    if ctg.min() < 0 or ctg.max() >= k:
        raise InputError(file=src, field="class_to_group", value=_brief(ctg),
                         expected=f"group indices in [0, {k})")
    _check_groups_nonempty(ctg, k, src, bounds)


def _validate_feature(b: FeatureBundle, src: str) -> None:
    if not isinstance(b.num_classes, (int, np.integer)) or b.num_classes < 2:
        raise InputError(file=src, field="num_classes", value=b.num_classes,
                         expected="an integer >= 2")
    _check_split_names(b.splits, FEATURE_SPLITS, src)
    dims = {}
    for name, split in b.splits.items():
        where = f"{src}[{name}]"
        x = np.asarray(split.features)
        if x.ndim != 2:
            raise InputError(file=where, field="features", value=f"shape {list(x.shape)}",
                             expected="shape [N, D]")
        if x.shape[0] == 0:
            raise InputError("split is empty", file=where, field="features",
                             value=f"shape {list(x.shape)}", expected="at least one row")
        if x.shape[1] == 0:
            raise InputError(file=where, field="features", value=f"shape {list(x.shape)}",
                             expected="D >= 1 feature columns")
        dims[name] = x.shape[1]
    first = next(iter(dims))
    for name, d in dims.items():
        if d != dims[first]:
            raise InputError(file=f"{src}[{name}]", field="features", value=f"D={d}",
                             expected=f"D={dims[first]} like split {first!r}")
    has_group = {name: s.group is not None for name, s in b.splits.items()}
    if len(set(has_group.values())) > 1:
        raise InputError(file=src, field="group", value=has_group,
                         expected="a group column in every split or in none")
    for name, split in b.splits.items():
        where = f"{src}[{name}]"
        n = split.features.shape[0]
        _check_finite(np.asarray(split.features), where, "features")
        _check_labels(np.asarray(split.labels), n, int(b.num_classes), where, "labels")
        if split.group is not None:
            g = np.asarray(split.group)
            if g.dtype.kind not in "iu" or g.shape != (n,) or (g.min() < 0):
                raise InputError(file=where, field="group", value=_brief(g),
                                 expected=f"{n} integer group ids >= 0")
            if b.group_names is not None and g.max() >= len(b.group_names):
                raise InputError(file=where, field="group", value=int(g.max()),
                                 expected=f"group ids in [0, {len(b.group_names)}) "
                                 f"(group_names={list(b.group_names)})")
        if split.path is not None and len(split.path) != n:
            raise InputError(file=where, field="path", value=f"{len(split.path)} entries",
                             expected=f"{n} entries (one per row)")


# --------------------------------------------------------------------------- save


def _tensor_column(values: np.ndarray):
    """An Arrow ``fixed_shape_tensor`` column from ``[N, *shape]`` float32 or float16
    (no copy when already contiguous); other dtypes are written as float32."""
    import pyarrow as pa

    dtype = np.float16 if np.asarray(values).dtype == np.float16 else np.float32
    values = np.ascontiguousarray(values, dtype=dtype)
    shape = list(values.shape[1:])
    width = int(np.prod(shape))
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
    value_type = pa.float16() if dtype == np.float16 else pa.float32()
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, shape), storage)


def _write_table(columns: dict[str, Any], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    # floats do not compress; plain + uncompressed keeps decoding a memcpy. One row
    # group per split so each column loads as a single contiguous chunk.
    compression = {name: ("none" if name in ("logits", "features") else "zstd")
                   for name in table.column_names}
    pq.write_table(
        table, path, compression=compression, use_dictionary=["path"] if "path" in columns else False,
        row_group_size=max(table.num_rows, 1), write_statistics=False,
    )


def _write_npy(path: Path, values: np.ndarray) -> None:
    """``values`` as a ``.npy`` file, streamed (no copy of a contiguous array, e.g. a
    mapped split being re-saved)."""
    with open(path, "wb") as f:
        np.lib.format.write_array(f, values, allow_pickle=False)


def write_expert_split(directory: Path, name: str, logits: np.ndarray, labels: np.ndarray
                       ) -> dict[str, Any]:
    """Write one split of an expert-logit bundle into ``directory``; returns its manifest
    entry. ``logits`` ``[N, E, C]`` is written as float16 if it is float16, else float32
    (a non-float32 array is converted in 4096-row chunks, so no whole-split copy)."""
    logits = np.asarray(logits)
    dtype = np.float16 if logits.dtype == np.float16 else np.float32
    lfile, yfile = f"{name}_logits.npy", f"{name}_labels.npy"
    if logits.dtype == dtype and logits.flags.c_contiguous:
        _write_npy(directory / lfile, logits)
    else:
        out = np.lib.format.open_memmap(directory / lfile, mode="w+", dtype=dtype,
                                        shape=logits.shape)
        for i in range(0, logits.shape[0], 4096):
            out[i:i + 4096] = logits[i:i + 4096]
        out.flush()
        del out
    _write_npy(directory / yfile, np.ascontiguousarray(labels, dtype=np.int64))
    return {"logits": lfile, "labels": yfile, "rows": int(logits.shape[0]),
            "dtype": np.dtype(dtype).name}


def expert_manifest(expert_names, class_counts, class_to_group, group_boundaries,
                    num_experts: int, num_classes: int,
                    splits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest of an expert-logit bundle (format version 2)."""
    bounds = list(group_boundaries)
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": "argse",
        "splits": splits, "num_classes": int(num_classes), "num_experts": int(num_experts),
        "expert_names": list(expert_names),
        "class_counts": np.asarray(class_counts).tolist(),
        "group_boundaries": bounds, "num_groups": len(bounds) + 1,
        "class_to_group": np.asarray(class_to_group).tolist(),
        "logits_shape": ["N", int(num_experts), int(num_classes)],
    }


def save_bundle(bundle: Bundle, out: str | Path, overwrite: bool = False) -> Path:
    """Validate ``bundle`` and write it atomically to the directory ``out``.

    Expert-logit bundles are written as format version 2 (``.npy`` splits, see the
    module docstring), feature bundles as version 1 (Parquet).

    Raises:
        InputError: invalid bundle, or ``out`` exists and not ``overwrite``. Nothing is
            written in either case.
    """
    out = Path(out)
    check_output_path(out, overwrite)
    validate_bundle(bundle, source=bundle.path or "<bundle>")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if isinstance(bundle, ExpertBundle):
            lg0 = next(iter(bundle.splits.values())).logits
            entries = {name: write_expert_split(tmp, name, split.logits, split.labels)
                       for name, split in bundle.splits.items()}
            manifest = expert_manifest(bundle.expert_names, bundle.class_counts,
                                       bundle.class_to_group, bundle.group_boundaries,
                                       int(lg0.shape[1]), int(lg0.shape[2]), entries)
        else:
            manifest = _save_parquet_splits(bundle, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _save_parquet_splits(bundle: Bundle, tmp: Path) -> dict[str, Any]:
    """Format version 1: one Parquet file per split (feature bundles; expert bundles
    only through :func:`save_bundle_v1`, which the compatibility tests use)."""
    import pyarrow as pa

    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": 1,
        "kind": bundle.kind,
        "splits": {},
    }
    if isinstance(bundle, ExpertBundle):
        lg0 = next(iter(bundle.splits.values())).logits
        manifest.update(
            num_classes=bundle.num_classes,
            num_experts=bundle.num_experts,
            expert_names=list(bundle.expert_names),
            class_counts=np.asarray(bundle.class_counts).tolist(),
            group_boundaries=list(bundle.group_boundaries),
            num_groups=bundle.num_groups,
            class_to_group=np.asarray(bundle.class_to_group).tolist(),
            logits_shape=["N", int(lg0.shape[1]), int(lg0.shape[2])],
        )
        for name, split in bundle.splits.items():
            file = f"{name}.parquet"
            _write_table(
                {"label": pa.array(np.asarray(split.labels), pa.int64()),
                 "logits": _tensor_column(split.logits)},
                tmp / file,
            )
            manifest["splits"][name] = {"file": file, "rows": len(split)}
    else:
        manifest.update(
            num_classes=int(bundle.num_classes),
            feature_dim=bundle.feature_dim,
            group_names=None if bundle.group_names is None else list(bundle.group_names),
        )
        for fname, fsplit in bundle.splits.items():
            file = f"{fname}.parquet"
            cols: dict[str, Any] = {
                "label": pa.array(np.asarray(fsplit.labels), pa.int64()),
                "features": _tensor_column(fsplit.features),
            }
            if fsplit.group is not None:
                cols["group"] = pa.array(np.asarray(fsplit.group), pa.int64())
            if fsplit.path is not None:
                cols["path"] = pa.array(fsplit.path, pa.string())
            _write_table(cols, tmp / file)
            manifest["splits"][fname] = {
                "file": file, "rows": len(fsplit),
                "has_group": fsplit.group is not None, "has_path": fsplit.path is not None,
            }
    return manifest


def save_bundle_v1(bundle: Bundle, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``bundle`` in format version 1 (Parquet splits), as seltune did before
    version 2: for the tests that check old bundles still load."""
    out = Path(out)
    check_output_path(out, overwrite)
    validate_bundle(bundle, source=bundle.path or "<bundle>")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        manifest = _save_parquet_splits(bundle, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- load


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise InputError("does not exist", file=path, expected="a bundle directory "
                         "(made by `seltune data synth` or `seltune data import`)")
    mf = path / MANIFEST
    if not path.is_dir() or not mf.is_file():
        raise InputError(f"no {MANIFEST}", file=path,
                         expected="a bundle directory with manifest.json")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable JSON ({exc})", file=mf, expected="a JSON object") from None
    if not isinstance(manifest, dict):
        raise InputError(file=mf, field="<root>", value=type(manifest).__name__,
                         expected="a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise InputError(file=mf, field="format", value=manifest.get("format"),
                         expected=repr(FORMAT_NAME))
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise InputError(file=mf, field="format_version", value=manifest.get("format_version"),
                         expected=" or ".join(map(str, READABLE_VERSIONS))
                         + " (a newer seltune wrote it?)")
    if manifest.get("kind") not in ("argse", "stage1"):
        raise InputError(file=mf, field="kind", value=manifest.get("kind"),
                         expected="'argse' or 'stage1'")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise InputError(file=mf, field="splits", value=splits,
                         expected="an object mapping split names to {file, rows}")
    return manifest


def _field(manifest: dict, mf: Path, key: str) -> Any:
    if key not in manifest:
        raise InputError("is missing", file=mf, field=key, expected="the field to be present")
    return manifest[key]


def _list_field(manifest: dict, mf: Path, key: str, kind: type) -> list:
    """``manifest[key]`` checked to be a JSON list of ``kind`` (``int``: no bools, no
    floats; ``str``), so a hand-edited manifest is one line, not a TypeError later."""
    value = _field(manifest, mf, key)
    ok = isinstance(value, list) and all(
        isinstance(v, kind) and not (kind is int and isinstance(v, bool)) for v in value)
    if not ok:
        shown = value if not isinstance(value, list) or len(value) <= 8 else f"{value[:8]}..."
        raise InputError(file=mf, field=key, value=shown,
                         expected=f"a list of {'integers' if kind is int else 'strings'}")
    return value


def _read_split_table(path: Path, info: Any, mf: Path, name: str, columns: tuple[str, ...]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(info, dict) or not isinstance(info.get("file"), str):
        raise InputError(file=mf, field=f"splits.{name}", value=info,
                         expected='{"file": NAME, "rows": N}')
    file = path / info["file"]
    if not file.is_file():
        raise InputError("is missing", file=file, field=f"split {name}",
                         expected="the split's Parquet file")
    try:
        table = pq.read_table(file, memory_map=True)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"unreadable Parquet ({exc})", file=file) from None
    for col in columns:
        if col not in table.column_names:
            raise InputError("column is missing", file=file, field=col,
                             expected=f"columns {list(columns)}")
    if table.num_rows != info.get("rows"):
        raise InputError(f"has {table.num_rows} rows", file=file, field="rows",
                         expected=f"{info.get('rows')} rows as in {MANIFEST}")
    return file, table


def _column_numpy(table, name: str, file: Path) -> np.ndarray:
    """Zero-copy numpy view of one column (a single chunk, as written by save_bundle)."""
    import pyarrow as pa

    col = table.column(name)
    chunk = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if chunk.null_count:
        raise InputError("has null rows", file=file, field=name, expected="no nulls")
    if isinstance(chunk.type, pa.FixedShapeTensorType):
        arr = chunk.to_numpy_ndarray()
    elif pa.types.is_integer(chunk.type):
        # a view straight on the values buffer (to_numpy's view would be read-only)
        width = chunk.type.bit_width // 8
        arr = np.frombuffer(chunk.buffers()[1], dtype=chunk.type.to_pandas_dtype(),
                            count=len(chunk), offset=chunk.offset * width)
    else:
        arr = chunk.to_numpy(zero_copy_only=False)
    try:
        # the decoded buffer is private to this load (see the module docstring)
        arr.flags.writeable = True
    except ValueError:  # an immutable (e.g. file-mapped) buffer: stay read-only
        pass
    return arr


def _map_npy(file: Path, field: str, rows: Any) -> tuple[np.ndarray, mmap.mmap | None, int]:
    """``(array, mapping, data offset)`` of the ``.npy`` file, viewing a copy-on-write
    mapping of it (module docstring); ``mapping`` is None for an empty array."""
    if not file.is_file():
        raise InputError("is missing", file=file, field=field,
                         expected="the split's .npy file (see manifest.json)")
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            count = int(np.prod(shape)) if shape else 1
            if dtype.hasobject or fortran:
                raise InputError(file=file, field=field, value=str(dtype),
                                 expected="a C-ordered numeric .npy array")
            if offset + count * dtype.itemsize > size:
                raise InputError(f"is truncated ({size} bytes)", file=file, field=field,
                                 expected=f"{offset + count * dtype.itemsize} bytes for "
                                 f"shape {list(shape)} {dtype}")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if count else None
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"unreadable .npy ({msg})", file=file, field=field,
                         expected="a .npy file written by seltune") from None
    if not shape or shape[0] != rows:
        raise InputError(f"has shape {list(shape)}", file=file, field=field,
                         expected=f"{rows} rows as in {MANIFEST}")
    if mm is None:
        return np.zeros(shape, dtype=dtype), None, offset
    arr = np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)
    return arr, mm, offset


def _check_mapped_finite(arr: np.ndarray, mm: mmap.mmap | None, offset: int,
                         source: Any, name: str) -> None:
    """The finiteness check of a mapped split, ``_FINITE_CHUNK`` elements at a time,
    handing each checked chunk's pages back (``MADV_DONTNEED``): validating a bundle
    reads all of it once but leaves none of it resident, so a split costs memory only
    once someone reads it. Nothing has written to the mapping yet, so no page of the
    private copy is lost."""
    if arr.dtype.kind != "f":
        raise InputError(file=source, field=name, value=str(arr.dtype),
                         expected="floating-point values")
    n = arr.shape[0]
    row = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
    step = max(1, _FINITE_CHUNK // max(row, 1))
    page = mmap.PAGESIZE
    can_release = mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")
    done = 0  # bytes of the mapping released so far (page aligned)
    for i in range(0, n, step):
        chunk = arr[i:i + step]
        if not np.isfinite(chunk).all():
            bad = np.argwhere(~np.isfinite(chunk))[0]
            bad[0] += i
            raise InputError(
                f"non-finite value {float(arr[tuple(bad)])!r} at index {bad.tolist()}",
                file=source, field=name, expected="finite numbers (no NaN/inf)")
        if can_release:
            assert mm is not None
            end = offset + (i + chunk.shape[0]) * row * arr.dtype.itemsize
            end = len(mm) if i + step >= n else (end // page) * page
            if end > done:
                mm.madvise(mmap.MADV_DONTNEED, done, end - done)
                done = end


def _load_expert_split_v2(path: Path, info: Any, mf: Path, name: str) -> ExpertSplit:
    if (not isinstance(info, dict) or not isinstance(info.get("logits"), str)
            or not isinstance(info.get("labels"), str)):
        raise InputError(file=mf, field=f"splits.{name}", value=info,
                         expected='{"logits": FILE, "labels": FILE, "rows": N}')
    rows = info.get("rows")
    lfile = path / info["logits"]
    logits, mm, offset = _map_npy(lfile, "logits", rows)
    if logits.ndim != 3 or logits.dtype not in (np.float32, np.float16):
        raise InputError(file=lfile, field="logits",
                         value=f"shape {list(logits.shape)} {logits.dtype}",
                         expected="[N, E, C] float32 or float16")
    _check_mapped_finite(logits, mm, offset, f"{path}[{name}]", "logits")
    labels, _, _ = _map_npy(path / info["labels"], "labels", rows)
    # labels are small: a private in-memory copy (no mapping kept open for them)
    return ExpertSplit(logits=logits, labels=np.array(labels, dtype=np.int64))


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate the bundle directory ``path`` (either kind, format 1 or 2).

    Format 2 (expert logits): arrays view copy-on-write mappings of the ``.npy`` files;
    format 1: zero-copy views of the decoded Arrow buffers (see the module docstring).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    mf = path / MANIFEST
    splits_info = manifest["splits"]
    finite_checked = False
    if manifest["kind"] == "argse":
        splits: dict[str, Any] = {}
        for name, info in splits_info.items():
            if manifest["format_version"] >= 2:
                splits[name] = _load_expert_split_v2(path, info, mf, name)
                continue
            file, table = _read_split_table(path, info, mf, name, ("label", "logits"))
            splits[name] = ExpertSplit(logits=_column_numpy(table, "logits", file),
                                       labels=_column_numpy(table, "label", file))
        finite_checked = manifest["format_version"] >= 2
        bundle: Bundle = ExpertBundle(
            expert_names=tuple(_list_field(manifest, mf, "expert_names", str)),
            class_counts=np.asarray(_list_field(manifest, mf, "class_counts", int),
                                    dtype=np.int64),
            class_to_group=np.asarray(_list_field(manifest, mf, "class_to_group", int),
                                      dtype=np.int64),
            splits=splits,
            path=path,
            group_boundaries=tuple(_list_field(manifest, mf, "group_boundaries", int)),
        )
        if int(manifest.get("num_classes", bundle.num_classes)) != bundle.num_classes:
            raise InputError(file=mf, field="num_classes", value=manifest["num_classes"],
                             expected=f"{bundle.num_classes} (the length of class_counts)")
    else:
        fsplits: dict[str, FeatureSplit] = {}
        for name, info in splits_info.items():
            file, table = _read_split_table(path, info, mf, name, ("label", "features"))
            group = _column_numpy(table, "group", file) if "group" in table.column_names else None
            paths = table.column("path").to_pylist() if "path" in table.column_names else None
            fsplits[name] = FeatureSplit(features=_column_numpy(table, "features", file),
                                         labels=_column_numpy(table, "label", file),
                                         group=group, path=paths)
        names = None if manifest.get("group_names") is None else \
            _list_field(manifest, mf, "group_names", str)
        num_classes = _field(manifest, mf, "num_classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise InputError(file=mf, field="num_classes", value=num_classes,
                             expected="an integer >= 2")
        bundle = FeatureBundle(num_classes=num_classes,
                               splits=fsplits, path=path,
                               group_names=None if names is None else tuple(names))
    validate_bundle(bundle, source=path, check_finite=not finite_checked)
    return bundle


def load_expert_bundle(path: str | Path) -> ExpertBundle:
    """Load an expert-logit (``argse``) bundle; a feature bundle is an InputError."""
    bundle = load_bundle(path)
    if not isinstance(bundle, ExpertBundle):
        raise InputError(file=Path(path) / MANIFEST, field="kind", value=bundle.kind,
                         expected="'argse' (an expert-logit bundle)")
    return bundle


def load_feature_bundle(path: str | Path) -> FeatureBundle:
    """Load a feature (``stage1``) bundle; an expert-logit bundle is an InputError."""
    bundle = load_bundle(path)
    if not isinstance(bundle, FeatureBundle):
        raise InputError(file=Path(path) / MANIFEST, field="kind", value=bundle.kind,
                         expected="'stage1' (a feature bundle)")
    return bundle


__all__ = [
    "DEFAULT_GROUP_BOUNDARIES",
    "EXPERT_SPLITS",
    "FEATURE_SPLITS",
    "Bundle",
    "ExpertBundle",
    "ExpertSplit",
    "FeatureBundle",
    "FeatureSplit",
    "as_tensor",
    "check_group_boundaries",
    "class_to_group_from_counts",
    "expert_manifest",
    "load_bundle",
    "load_expert_bundle",
    "load_feature_bundle",
    "save_bundle",
    "save_bundle_v1",
    "validate_bundle",
    "write_expert_split",
]
