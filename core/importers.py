"""Import the layouts users already have into bundles (``seltune data import``).

AR-GSE layout (``import_argse_dir``)::

    DIR/<expert>/<split>_logits.{npy,npz,pt}   [N, C] logits of one expert
    DIR/<split>_labels.{npy,npz,pt}            [N] int labels (optional, see below)
    DIR/class_counts.json                      [n_0, ..., n_{C-1}] training counts
                                               (or {"class_counts": [...]}; optional,
                                               see below)

for the splits ``tunev``, ``val``, ``test``. Both layouts the public AR-GSE code
(github DngBack/AR-GSE) writes are read as they are:

* ``outputs/logits_fixed/<expert>/<split>_logits.npz`` (``recompute_logits.py``):
  arrays ``logits`` [N, C], ``targets`` [N], ``predictions`` [N]; splits ``tunev``,
  ``val``, ``test``; no labels file, no ``class_counts.json``.
* ``outputs/logits/<dataset>/<expert>/<split>_logits.pt`` (``train_expert.py``): a
  float16 tensor [N, C]; splits ``train``, ``tuneV``, ``val_small``, ``val_lt``,
  ``test_lt``, ``calib``. Point ``DIR`` at ``outputs/logits/<dataset>``.

Split names. A bundle split is read from the first source split present, in this
order (:data:`SPLIT_SOURCES`): ``tunev`` <- ``tunev``, ``tuneV``; ``val`` <- ``val``,
``val_lt``, ``val_small``; ``test`` <- ``test``, ``test_lt``. ``val_lt`` comes before
``val_small`` because the repository validates its thresholds on ``tuneV + val_lt``
(``src/train/eval_gse_plugin.py``). ``split_map`` (``--split-map val_small=val``)
names the source of a split explicitly. Other source splits (``train``, ``calib``)
are ignored, and said so.

Labels. ``DIR/<split>_labels.*`` (bundle or source split name) when it exists;
otherwise the ``targets`` / ``labels`` array inside each expert's logits file (an
``.npz`` array or a key of a ``.pt`` dict). All experts (and the labels file, when
both exist) must agree row by row, else one error naming both files.

Class counts (training counts of the experts; they define the groups): ``class_counts``
(a JSON file, ``--class-counts FILE``), else the CIFAR-LT rule from ``imbalance`` IF and
``max_count`` N (``--imbalance IF --max-count N``): ``n_c = max(1, floor(N *
IF^(-c/(C-1))))``, as the repository's ``get_cifar100_lt_counts`` (CIFAR-100-LT:
IF=100, N=500), else ``DIR/class_counts.json``.

Expert order: ``experts`` as given (a name may omit the repository's ``_baseline``
suffix: ``ce`` finds ``DIR/ce_baseline``); else, when every expert directory is one
of the repository's (``ce``, ``logitadjust``, ``balsoftmax``, with or without
``_baseline``), the repository's order ``ce, logitadjust, balsoftmax`` (the order its
gate was trained with); else the directory names sorted. The order used is passed to
``note`` (one line) and is the manifest's ``expert_names``.

Files. Every sub-directory of DIR holding a ``*_logits.*`` file of a known split is an
expert. A ``.npz`` holds one array, or the key ``logits`` (plus optional label
arrays); a ``.pt`` holds a tensor, or a dict with that key (loaded with
``weights_only=True``, so no code is executed). Logits may be float16/32/64; they are
stored as float32. :func:`import_argse_bundle` (what ``seltune data import`` runs)
streams: one split at a time is assembled, one expert file at a time, into that
split's ``[N, E, C]`` array, written to the bundle directory and dropped, so peak
memory is the largest split plus one expert file, not the bundle.
:func:`import_argse_dir` builds the whole bundle in memory (for callers that want the
object).

Stage-1 layout (``import_stage1_dir``)::

    DIR/<split>.npz   features [N, D], labels [N], optional group [N], optional path [N]
                      for split in train, val, test

Every problem raises :class:`core.errors.InputError` naming the offending file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.bundles import (
    DEFAULT_GROUP_BOUNDARIES,
    EXPERT_SPLITS,
    FEATURE_SPLITS,
    MANIFEST,
    ExpertBundle,
    ExpertSplit,
    FeatureBundle,
    FeatureSplit,
    class_to_group_from_counts,
    expert_manifest,
    load_bundle,
    validate_bundle,
    write_expert_split,
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


def _check_logits(arr: np.ndarray, path: Path) -> None:
    if arr.ndim != 2:
        raise InputError(file=path, field="logits", value=f"shape {list(arr.shape)}",
                         expected="shape [N, C]")
    if arr.dtype.kind not in "fiu":
        raise InputError(file=path, field="logits", value=str(arr.dtype),
                         expected="floating-point logits")


def _check_finite_logits(arr: np.ndarray, path: Path) -> None:
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"non-finite value {float(arr[tuple(bad)])!r} at index {bad.tolist()}",
                         file=path, field="logits", expected="finite numbers (no NaN/inf)")


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


# --------------------------------------------------------------------------- AR-GSE layout

#: The expert order of the AR-GSE repository's gate (``CONFIG['experts']['names']`` of
#: ``src/train/train_gating_only.py`` without the ``_baseline`` suffix).
REPO_EXPERT_ORDER = ("ce", "logitadjust", "balsoftmax")
REPO_EXPERT_SUFFIX = "_baseline"
#: Source split names read for each bundle split, in order of preference.
SPLIT_SOURCES: dict[str, tuple[str, ...]] = {
    "tunev": ("tunev", "tuneV"),
    "val": ("val", "val_lt", "val_small"),
    "test": ("test", "test_lt"),
}
#: Arrays (``.npz``) or keys (``.pt`` dict) that hold the labels inside a logits file.
LABEL_KEYS = ("targets", "labels")

Note = Callable[[str], None]


def _read_logits_file(path: Path) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """``(logits [N, C] in the file's dtype, labels [N] int64 or None, label key)``.

    Reads the file once; labels come from a :data:`LABEL_KEYS` array/key when present.
    """
    suffix = path.suffix
    labels: Any = None
    label_key: str | None = None
    try:
        if suffix == ".npy":
            value: Any = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                if "logits" in names:
                    value = z["logits"]
                elif len(names) == 1:
                    value = z[names[0]]
                else:
                    raise InputError(file=path, field="arrays", value=names,
                                     expected="one array or an array named 'logits'")
                label_key = next((k for k in LABEL_KEYS if k in names), None)
                if label_key is not None:
                    labels = z[label_key]
        elif suffix == ".pt":
            import torch

            value = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(value, dict):
                if "logits" not in value:
                    raise InputError(file=path, field="keys", value=sorted(map(str, value)),
                                     expected="a tensor or a dict with key 'logits'")
                label_key = next((k for k in LABEL_KEYS if k in value), None)
                if label_key is not None:
                    labels = value[label_key]
                value = value["logits"]
            value, labels = (_torch_to_numpy(v) for v in (value, labels))
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
        raise InputError(file=path, field="logits", value="object array",
                         expected="a numeric array")
    _check_logits(arr, path)
    lab = None if labels is None else _as_int_labels(labels, path, str(label_key))
    return arr, lab, label_key


def _torch_to_numpy(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return value


def _read_counts_file(path: Path) -> np.ndarray:
    """Training counts ``[C]`` int64 from a JSON list (or ``{"class_counts": [...]}``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable JSON ({exc})".splitlines()[0], file=path,
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


def cifar_lt_counts(num_classes: int, imbalance: float, max_count: int) -> np.ndarray:
    """CIFAR-LT training counts ``[C]``: ``n_c = max(1, floor(N * IF^(-c/(C-1))))``.

    The exponential profile of Cao et al. (2019), computed in the same float order as
    the AR-GSE repository's ``get_cifar100_lt_counts`` (CIFAR-100-LT: ``IF=100``,
    ``N=500``), so the counts, and hence the groups, are the same.
    """
    if num_classes < 2:
        raise InputError(field="num_classes", value=num_classes, expected=">= 2 classes")
    return np.asarray(
        [max(1, int(float(max_count) * (float(imbalance) ** (-c / (num_classes - 1.0)))))
         for c in range(num_classes)], dtype=np.int64)


def _check_counts_options(src: Path, class_counts: str | Path | None, imbalance: float | None,
                          max_count: int | None) -> str:
    """Which count source applies (``"file"``, ``"rule"``, ``"dir"``); fail early."""
    if class_counts is not None and (imbalance is not None or max_count is not None):
        raise InputError(field="--class-counts", value=str(class_counts),
                         expected="either --class-counts or --imbalance/--max-count, not both")
    if class_counts is not None:
        path = Path(class_counts)
        if not path.is_file():
            raise InputError("no such file", file=path, field="--class-counts",
                             expected="a JSON list of the C training class counts")
        return "file"
    if imbalance is not None or max_count is not None:
        if imbalance is None or max_count is None:
            raise InputError(field="--imbalance" if imbalance is None else "--max-count",
                             value=None, expected="--imbalance IF and --max-count N together")
        if not np.isfinite(imbalance) or imbalance < 1.0:
            raise InputError(field="--imbalance", value=imbalance,
                             expected="the largest/smallest class ratio, a number >= 1")
        if int(max_count) != max_count or max_count < 1:
            raise InputError(field="--max-count", value=max_count,
                             expected="the largest class's training count, an integer >= 1")
        return "rule"
    if not (src / "class_counts.json").is_file():
        raise InputError("is missing", file=src / "class_counts.json",
                         expected="a JSON list of the C training class counts "
                         "(or --class-counts FILE, or --imbalance IF --max-count N)")
    return "dir"


def _canonical_expert(name: str) -> str:
    return name[: -len(REPO_EXPERT_SUFFIX)] if name.endswith(REPO_EXPERT_SUFFIX) else name


def _logit_splits(directory: Path) -> set[str]:
    """Source split names of the ``<split>_logits.<suffix>`` files in ``directory``."""
    return {f.name[: -len("_logits" + f.suffix)] for f in directory.iterdir()
            if f.suffix in ARRAY_SUFFIXES and f.name.endswith("_logits" + f.suffix)}


def _expert_dirs(src: Path, experts: Sequence[str] | None, known: set[str]
                 ) -> tuple[list[str], str]:
    """Expert directory names, in order, and a phrase saying where the order comes from."""
    if experts:
        names = []
        for name in (str(e) for e in experts):
            if (src / name).is_dir():
                names.append(name)
            elif (src / f"{name}{REPO_EXPERT_SUFFIX}").is_dir():
                names.append(f"{name}{REPO_EXPERT_SUFFIX}")
            else:
                raise InputError("expert directory is missing", file=src / name,
                                 expected="DIR/<expert>/<split>_logits.{npy,npz,pt}")
        if len(set(names)) != len(names):
            raise InputError(field="--experts", value=list(experts), expected="distinct experts")
        return names, "as given by --experts"
    found = sorted(p.name for p in src.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and _logit_splits(p) & known)
    if not found:
        nested = sorted(p.name for p in src.iterdir() if p.is_dir() and any(
            q.is_dir() and _logit_splits(q) & known for q in p.iterdir()))
        hint = f" (DIR/{nested[0]} holds expert directories: import that directory)" \
            if nested else ""
        raise InputError("no expert directory found", file=src,
                         expected=f"sub-directories DIR/<expert>/<split>_logits.{{npy,npz,pt}}{hint}")
    canon = [_canonical_expert(n) for n in found]
    if set(canon) <= set(REPO_EXPERT_ORDER) and len(set(canon)) == len(canon):
        order = sorted(found, key=lambda n: REPO_EXPERT_ORDER.index(_canonical_expert(n)))
        return order, "the AR-GSE repository's order " + ", ".join(REPO_EXPERT_ORDER)
    return found, "directory names, sorted"


def parse_split_map(text: str) -> dict[str, str]:
    """``"tuneV=tunev,val_small=val"`` -> ``{"tuneV": "tunev", "val_small": "val"}``."""
    out: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        source, sep, target = (s.strip() for s in item.partition("="))
        if not sep or not source or target not in EXPERT_SPLITS:
            raise InputError(field="--split-map", value=item,
                             expected="SOURCE=SPLIT pairs with SPLIT in " + ", ".join(EXPERT_SPLITS)
                             + " (e.g. tuneV=tunev,val_small=val,test_lt=test)")
        if source in out:
            raise InputError(field="--split-map", value=item,
                             expected=f"each source split once ({source!r} is mapped twice)")
        out[source] = target
    if not out:
        raise InputError(field="--split-map", value=text, expected="SOURCE=SPLIT pairs")
    return out


def _split_sources(split_map: Mapping[str, str] | None) -> dict[str, tuple[str, ...]]:
    sources = dict(SPLIT_SOURCES)
    if split_map:
        for target in EXPERT_SPLITS:
            mapped = tuple(s for s, t in split_map.items() if t == target)
            if len(mapped) > 1:
                raise InputError(field="--split-map", value=dict(split_map),
                                 expected=f"one source for split {target!r} (got {list(mapped)})")
            if mapped:
                sources[target] = mapped
    return sources


def _choose_sources(src: Path, names: list[str], sources: dict[str, tuple[str, ...]]
                    ) -> tuple[dict[str, str], list[str]]:
    """Source split of each bundle split, and the source splits present but unused."""
    present: set[str] = set()
    for name in names:
        present |= _logit_splits(src / name)
    chosen: dict[str, str] = {}
    for target, candidates in sources.items():
        # a split no expert has: keep the preferred name, so the error names that file
        chosen[target] = next((c for c in candidates if c in present), candidates[0])
    unused = sorted(present - set(chosen.values()))
    return chosen, unused


def _find_optional(directory: Path, stem: str, what: str) -> Path | None:
    found = [directory / f"{stem}{s}" for s in ARRAY_SUFFIXES if (directory / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise InputError(f"{what} exists in several formats",
                         file=", ".join(str(f) for f in found), expected="exactly one file")
    return found[0] if found else None


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"{a.shape[0]} vs {b.shape[0]} rows"
    i = int(np.flatnonzero(a != b)[0])
    return f"row {i}: {int(a[i])} vs {int(b[i])}"


def _read_split(src: Path, names: list[str], split: str, source: str, num_classes: int | None,
                on_file: Callable[[], None] | None = None) -> ExpertSplit:
    """One bundle split: every expert's file read in turn into one ``[N, E, C]`` array."""
    logits: np.ndarray | None = None
    first_path: Path | None = None
    inner: tuple[Path, np.ndarray] | None = None  # first labels found inside a logits file
    for e, name in enumerate(names):
        what = f"logits of expert {name!r}, split {split!r}"
        if source != split:
            what += f" (read from {source!r})"
        path = _find(src / name, f"{source}_logits", what)
        arr, lab, key = _read_logits_file(path)
        if logits is None:
            n, c = arr.shape
            if num_classes is not None and c != num_classes:
                raise InputError(file=path, field="logits", value=f"shape {list(arr.shape)}",
                                 expected=f"C={num_classes} classes like the other splits")
            if n == 0:
                raise InputError("split is empty", file=path, field="logits",
                                 value=f"shape [0, {c}]", expected="at least one row")
            # the bundle's array, filled one expert at a time (module docstring)
            logits = np.empty((n, len(names), c), dtype=np.float32)
            first_path = path
        elif arr.shape != logits.shape[::2]:
            raise InputError("experts have different shapes", file=path, field="logits",
                             value=f"shape {list(arr.shape)}",
                             expected=f"{list(logits.shape[::2])} like {first_path}")
        logits[:, e, :] = arr
        del arr
        _check_finite_logits(logits[:, e, :], path)
        if on_file is not None:
            on_file()
        if lab is not None:
            if inner is None:
                inner = (path, lab)
            elif not np.array_equal(inner[1], lab):
                raise InputError(
                    f"labels differ between experts ({_first_difference(inner[1], lab)})",
                    file=f"{inner[0]}, {path}", field=str(key),
                    expected="the same labels in every expert's file (the same samples, "
                    "in the same order)")
    assert logits is not None and first_path is not None  # names is never empty
    n, _, c = logits.shape
    label_path = (_find_optional(src, f"{split}_labels", f"labels of split {split!r}")
                  or (_find_optional(src, f"{source}_labels", f"labels of split {split!r}")
                      if source != split else None))
    if label_path is not None:
        labels = _labels(label_path)
        if inner is not None and not np.array_equal(inner[1], labels):
            raise InputError(
                f"labels differ from the logits file's ({_first_difference(labels, inner[1])})",
                file=f"{label_path}, {inner[0]}", field="labels",
                expected="the same labels in both files")
        where = label_path
    elif inner is not None:
        labels, where = inner[1], inner[0]
    else:
        raise InputError(f"labels of split {split!r} is missing",
                         file=src / f"{split}_labels.{{npy,npz,pt}}",
                         expected="a labels file, or a 'targets'/'labels' array in each "
                         f"expert's {source}_logits file")
    if labels.shape[0] != n:
        raise InputError(file=where, field="labels", value=f"{labels.shape[0]} rows",
                         expected=f"{n} rows like {first_path}")
    if labels.min() < 0 or labels.max() >= c:
        bad = labels[(labels < 0) | (labels >= c)][0]
        raise InputError(f"label {int(bad)} out of range", file=where,
                         field="labels", expected=f"labels in [0, {c})")
    return ExpertSplit(logits=logits, labels=labels)


def _argse_plan(src: Path, experts, split_map, class_counts, imbalance, max_count, say: Note):
    counts_from = _check_counts_options(src, class_counts, imbalance, max_count)
    sources = _split_sources(split_map)
    known = {s for cands in sources.values() for s in cands} | set(split_map or {})
    names, order_from = _expert_dirs(src, experts, known)
    chosen, unused = _choose_sources(src, names, sources)
    say(f"experts: {', '.join(names)} ({order_from})")
    if any(s != t for t, s in chosen.items()) or unused:
        line = "splits: " + ", ".join(f"{t} <- {s}" for t, s in chosen.items())
        if unused:
            line += f" (ignored: {', '.join(unused)})"
        say(line + "; --split-map SOURCE=SPLIT to change")
    return counts_from, names, chosen


def _argse_groups(src: Path, counts_from: str, num_classes: int, group_boundaries,
                  class_counts, imbalance, max_count, say: Note):
    if counts_from == "rule":
        assert imbalance is not None and max_count is not None
        counts = cifar_lt_counts(num_classes, imbalance, int(max_count))
        counts_source: str | Path = f"--imbalance {imbalance:g} --max-count {int(max_count)}"
        say(f"class counts: CIFAR-LT rule IF={imbalance:g}, N={int(max_count)} "
            f"({counts[0]} ... {counts[-1]})")
    else:
        counts_source = Path(class_counts) if counts_from == "file" and class_counts is not None \
            else src / "class_counts.json"
        counts = _read_counts_file(Path(counts_source))
        if counts_from == "file":
            say(f"class counts: {counts_source}")
    if counts_from != "dir" and (src / "class_counts.json").is_file():
        say(f"class counts: {src / 'class_counts.json'} ignored (an explicit source was given)")
    if counts.shape[0] != num_classes:
        raise InputError(f"has {counts.shape[0]} entries", file=counts_source,
                         field="class_counts",
                         expected=f"{num_classes} entries (the logits have C={num_classes})")
    return counts, class_to_group_from_counts(counts, group_boundaries, source=counts_source)


def import_argse_dir(
    src: str | Path,
    group_boundaries: Sequence[int] = DEFAULT_GROUP_BOUNDARIES,
    experts: Sequence[str] | None = None,
    *,
    split_map: Mapping[str, str] | None = None,
    class_counts: str | Path | None = None,
    imbalance: float | None = None,
    max_count: int | None = None,
    note: Note | None = None,
) -> ExpertBundle:
    """Read the AR-GSE layout (module docstring) into a validated :class:`ExpertBundle`.

    Args:
        src: the layout's root directory.
        group_boundaries: count boundaries of the class->group map (default: tail =
            classes with <= 20 training samples).
        experts: expert sub-directories to use, in this order (default: the
            repository's order for its experts, else all, sorted).
        split_map: source split -> bundle split (``{"val_small": "val"}``); bundle
            splits not named keep :data:`SPLIT_SOURCES`.
        class_counts: a JSON file of the C training counts.
        imbalance, max_count: the CIFAR-LT rule (:func:`cifar_lt_counts`), both or
            neither.
        note: called with one line each for the expert order, the split sources (when
            not the bundle's own names) and the class counts' source.

    Raises:
        InputError: a missing split/expert/labels/class-count source, NaN/inf logits,
            experts with different shapes or labels, labels outside ``[0, C)``, an
            empty split, class counts of the wrong length, or a group with no class.
    """
    src = _check_dir(src)
    say: Note = note or (lambda _line: None)
    counts_from, names, chosen = _argse_plan(src, experts, split_map, class_counts,
                                             imbalance, max_count, say)
    splits: dict[str, ExpertSplit] = {}
    num_classes: int | None = None
    for split in EXPERT_SPLITS:
        splits[split] = _read_split(src, names, split, chosen[split], num_classes)
        num_classes = int(splits[split].logits.shape[2])
    assert num_classes is not None
    counts, class_to_group = _argse_groups(src, counts_from, num_classes, group_boundaries,
                                           class_counts, imbalance, max_count, say)
    bundle = ExpertBundle(expert_names=tuple(names), class_counts=counts,
                          class_to_group=class_to_group, splits=splits,
                          group_boundaries=tuple(int(b) for b in group_boundaries))
    validate_bundle(bundle, source=src)
    return bundle


def import_argse_bundle(
    src: str | Path,
    out: str | Path,
    group_boundaries: Sequence[int] = DEFAULT_GROUP_BOUNDARIES,
    experts: Sequence[str] | None = None,
    *,
    split_map: Mapping[str, str] | None = None,
    class_counts: str | Path | None = None,
    imbalance: float | None = None,
    max_count: int | None = None,
    note: Note | None = None,
    overwrite: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """:func:`import_argse_dir` straight into the bundle directory ``out``, streaming
    (module docstring): the same checks, the same bundle, written atomically (nothing
    is left at ``out`` when an input is bad). ``on_step(done, total)`` after each expert
    file read (``total`` = 3 splits x E experts). Returns ``out``."""
    from core.atomic import atomic_dir, check_output_path

    src = _check_dir(src)
    out = Path(out)
    check_output_path(out, overwrite)
    say: Note = note or (lambda _line: None)
    counts_from, names, chosen = _argse_plan(src, experts, split_map, class_counts,
                                             imbalance, max_count, say)
    total = len(EXPERT_SPLITS) * len(names)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        entries: dict[str, dict[str, Any]] = {}
        num_classes: int | None = None
        for split in EXPERT_SPLITS:
            part = _read_split(src, names, split, chosen[split], num_classes, tick)
            num_classes = int(part.logits.shape[2])
            entries[split] = write_expert_split(tmp, split, part.logits, part.labels)
            del part  # the next split is assembled in its place
        assert num_classes is not None
        counts, class_to_group = _argse_groups(src, counts_from, num_classes,
                                               group_boundaries, class_counts, imbalance,
                                               max_count, say)
        manifest = expert_manifest(names, counts, class_to_group,
                                   tuple(int(b) for b in group_boundaries), len(names),
                                   num_classes, entries)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        load_bundle(tmp)  # validated as every loaded bundle is (mapped: no copy)
    return out


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


__all__ = ["ARRAY_SUFFIXES", "LABEL_KEYS", "REPO_EXPERT_ORDER", "SPLIT_SOURCES", "cifar_lt_counts",
           "import_argse_bundle", "import_argse_dir", "import_stage1_dir", "parse_split_map", "read_array"]
