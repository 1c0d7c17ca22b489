"""Frozen-backbone feature extraction into a Stage-1 feature bundle (docs/METHODS.md §4).

A ``transformers`` vision backbone (``AutoModel`` + ``AutoImageProcessor``; DINOv2 and
DINOv3 ViTs) runs once over an image folder; the CLS token
``last_hidden_state[:, 0]`` of each image becomes its feature row ``[D]``. Every trial
then trains on the cached features.

Input: ``images`` (a directory) and a labels CSV with rows ``path,label[,group]``
(``path`` relative to ``images``; a header row ``path,label[,group]`` is optional;
``label`` an integer class >= 0 or a class name; ``group`` any string, e.g. the data
source). Images that cannot be read are listed and skipped, never fatal. The kept
images are split stratified by label into ``train/val/test`` by ``split_ratios`` and
``seed``.

Speed: batched, ``torch.inference_mode``, bf16 (or fp16 where bf16 is unsupported)
autocast on CUDA, image decoding on a small thread pool overlapping the forward pass.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError

DEFAULT_SPLIT_RATIOS = (0.7, 0.15, 0.15)
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class LabelRows:
    """Rows of a labels CSV: ``paths [N]``, ``labels [N]`` int64, ``groups [N]`` int64 or
    None, ``group_names`` (index -> name) and ``class_names`` (None for integer labels)."""

    paths: list[str]
    labels: np.ndarray
    groups: np.ndarray | None
    group_names: tuple[str, ...] | None
    class_names: tuple[str, ...] | None


@dataclasses.dataclass
class ExtractionResult:
    """The bundle plus what happened: ``skipped`` = [(path, reason)], timings."""

    bundle: Any
    skipped: list[tuple[str, str]]
    num_images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else float("nan")


def read_labels_csv(path: str | Path) -> LabelRows:
    """Parse ``path,label[,group]`` rows (optional header). InputError on bad rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path, expected="a labels CSV with rows path,label[,group]")
    raw = path.read_bytes()
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first path.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})",
                         file=path, expected="a UTF-8 CSV with rows path,label[,group] "
                         "(re-save it as UTF-8)") from None
    if "\x00" in text:  # Python's csv reads NUL bytes as data: a binary file given
        line = text[: text.index("\x00")].count("\n") + 1
        raise InputError(f"not a CSV (a NUL byte on line {line}: a binary file?)", file=path,
                         expected="a UTF-8 CSV with rows path,label[,group]")
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""))
                if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        raise InputError(f"not a CSV ({exc})", file=path,
                         expected="a UTF-8 CSV with rows path,label[,group]") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    else:
        header = ["path", "label", "group"][: len(rows[0])] if rows else []
    if not rows:
        raise InputError("no rows", file=path, expected="at least one row path,label[,group]")
    has_group = "group" in header
    width = 3 if has_group else 2
    paths: list[str] = []
    raw_labels: list[str] = []
    raw_groups: list[str] = []
    for i, row in enumerate(rows, start=1):
        if len(row) < 2 or len(row) > 3 or (has_group and len(row) != 3):
            raise InputError(f"row {i} has {len(row)} columns", file=path, value=",".join(row),
                             expected=f"{width} columns path,label" + (",group" if has_group else ""))
        paths.append(row[0].strip())
        raw_labels.append(row[1].strip())
        if has_group:
            raw_groups.append(row[2].strip())
    class_names = None
    try:
        labels = np.asarray([int(v) for v in raw_labels], dtype=np.int64)
        if (labels < 0).any():
            bad = int(np.flatnonzero(labels < 0)[0])
            raise InputError(f"row {bad + 1}", file=path, field="label", value=raw_labels[bad],
                             expected="an integer class >= 0 or a class name")
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        class_names = tuple(sorted(set(raw_labels)))
        index = {n: i for i, n in enumerate(class_names)}
        labels = np.asarray([index[v] for v in raw_labels], dtype=np.int64)
    groups, group_names = None, None
    if has_group:
        group_names = tuple(sorted(set(raw_groups)))
        gindex = {n: i for i, n in enumerate(group_names)}
        groups = np.asarray([gindex[v] for v in raw_groups], dtype=np.int64)
    return LabelRows(paths, labels, groups, group_names, class_names)


def parse_split_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> (0.7, 0.15, 0.15); three positive numbers summing to 1."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise InputError(field="--split-ratios", value=text,
                         expected="three numbers train,val,test such as 0.7,0.15,0.15") from None
    if len(values) != 3 or any(not math.isfinite(v) or v <= 0 for v in values) \
            or abs(sum(values) - 1.0) > 1e-6:
        raise InputError(field="--split-ratios", value=text,
                         expected="three positive numbers train,val,test summing to 1")
    return values[0], values[1], values[2]


def stratified_split(labels: np.ndarray, ratios: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Indices per split, stratified by label: within each class a seeded permutation is
    cut at ``round(r_train n)`` and ``round((r_train + r_val) n)``."""
    rng = np.random.default_rng(int(seed))
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        a = round(ratios[0] * len(idx))
        b = round((ratios[0] + ratios[1]) * len(idx))
        for name, chunk in zip(SPLITS, (idx[:a], idx[a:b], idx[b:])):
            parts[name].append(chunk)
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def looks_like_path(model: str) -> bool:
    """Whether ``--model`` names a local directory rather than a hub id.

    A hub id is ``NAME`` or ``ORG/NAME``; anything absolute, relative with ``./``/``../``
    or ``~``, with more than one ``/``, or whose first component is an existing local
    directory is a path (``models/dinov2`` when ``models/`` exists here).
    """
    if model.startswith(("/", "./", "../", "~", ".\\")) or model in (".", ".."):
        return True
    parts = model.split("/")
    if len(parts) > 2 or "\\" in model or (len(parts) == 2 and not all(parts)):
        return True
    return len(parts) == 2 and Path(parts[0]).is_dir()


def check_model(model: str) -> None:
    """Fail at once, in one line, for a ``--model`` path that does not exist.

    Without this, transformers takes a missing directory for a hub id and retries the
    network for about 100 s before failing with a long traceback.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError("not a directory", field="--model", value=model,
                             expected="a directory saved by save_pretrained (config.json, "
                             "weights) or a hub id ORG/NAME")
        if not (path / "config.json").is_file():
            raise InputError("no config.json in the directory", field="--model", value=model,
                             expected="a directory saved by save_pretrained (config.json, "
                             "weights) or a hub id ORG/NAME")
        return
    if looks_like_path(model):
        raise InputError("no such directory", field="--model", value=model,
                         expected="a directory saved by save_pretrained, or a hub id "
                         "ORG/NAME (e.g. facebook/dinov2-small)")


def load_backbone(model: str, device: Any):
    """``(model, processor)`` from a local directory or a hub id (offline cache)."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    try:
        try:
            processor = AutoImageProcessor.from_pretrained(model)
        except ImportError as exc:
            # DINOv3's processor exists only as a torchvision ("fast") class; without
            # torchvision, rebuild the same preprocessing with the PIL Bit processor.
            processor = _pil_fallback_processor(model, exc)
        net = AutoModel.from_pretrained(model)
    except Exception as exc:  # OSError / ValueError from transformers, one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load backbone: {first}", field="--model", value=model,
                         expected="a directory saved by save_pretrained or a cached hub id "
                         "of a vision model (DINOv2/DINOv3)") from None
    net.eval().requires_grad_(False).to(device)
    del torch
    return net, processor


def _pil_fallback_processor(model: str, exc: ImportError):
    """A PIL-only processor equal to DINOv3's: resize to (H, W), rescale, normalise."""
    from transformers import BitImageProcessorPil
    from transformers.image_processing_utils import ImageProcessingMixin

    if "torchvision" not in str(exc).lower():
        raise exc
    cfg, _ = ImageProcessingMixin.get_image_processor_dict(model)
    size = cfg.get("size") or {"height": 224, "width": 224}
    return BitImageProcessorPil(
        do_resize=cfg.get("do_resize", True), size=size, do_center_crop=False,
        do_rescale=cfg.get("do_rescale", True), rescale_factor=cfg.get("rescale_factor", 1 / 255),
        do_normalize=cfg.get("do_normalize", True),
        image_mean=cfg.get("image_mean", [0.485, 0.456, 0.406]),
        image_std=cfg.get("image_std", [0.229, 0.224, 0.225]), do_convert_rgb=True)


def _open_image(path: Path) -> tuple[Any, str | None]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB"), None
    except FileNotFoundError:
        return None, "file not found"
    except Exception as exc:  # PIL raises many types for broken files
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def extract_features(model: str, images: str | Path, labels_csv: str | Path, *,
                     batch_size: int = 32, device: str = "auto",
                     split_ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS, seed: int = 0,
                     on_batch: Callable[[int, int], None] | None = None,
                     on_skip: Callable[[str, str], None] | None = None) -> ExtractionResult:
    """Run the frozen backbone over the listed images and build a FeatureBundle.

    Args:
        model: directory written by ``save_pretrained`` or a hub id (offline cache).
        images: image root; CSV paths are relative to it.
        labels_csv: ``path,label[,group]`` rows.
        batch_size: images per forward pass.
        device: ``auto|cpu|cuda``.
        split_ratios: train/val/test shares (stratified by label).
        seed: seed of the split.
        on_batch: called as ``on_batch(done, total)`` after each batch (progress).
        on_skip: called as ``on_skip(path, reason)`` for each unreadable image.

    Returns:
        :class:`ExtractionResult` whose bundle has ``features [N, D]`` float32 (the CLS
        token), ``labels``, ``group`` (when the CSV has one) and ``path`` per split.
    """
    import torch

    from core.bundles import FeatureBundle, FeatureSplit
    from core.device import resolve_device

    images = Path(images)
    if not images.is_dir():
        raise InputError("no such directory", file=images, expected="the image root directory")
    if batch_size < 1:
        raise InputError(field="--batch-size", value=batch_size, expected="an integer >= 1")
    ratios = parse_split_ratios(split_ratios)
    rows = read_labels_csv(labels_csv)
    check_model(model)
    dev = resolve_device(device)
    net, processor = load_backbone(model, dev)
    amp = None
    if dev.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    total = len(rows.paths)
    kept: list[int] = []
    feats: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = [range(i, min(i + batch_size, total)) for i in range(0, total, batch_size)]
        pending: Iterator[tuple[Any, str | None]] = iter(())
        if batches:
            pending = pool.map(_open_image, [images / rows.paths[j] for j in batches[0]])
        for b, idx in enumerate(batches):
            loaded = list(pending)
            if b + 1 < len(batches):  # decode the next batch while this one runs
                pending = pool.map(_open_image, [images / rows.paths[j] for j in batches[b + 1]])
            good: list[int] = []
            imgs: list[Any] = []
            for j, (img, reason) in zip(idx, loaded):
                if img is None:
                    skipped.append((rows.paths[j], reason or "unreadable"))
                    if on_skip is not None:
                        on_skip(rows.paths[j], reason or "unreadable")
                else:
                    good.append(j)
                    imgs.append(img)
            if imgs:
                pixels = processor(images=imgs, return_tensors="pt")["pixel_values"]
                with torch.inference_mode(), torch.autocast(
                        dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                    out = net(pixel_values=pixels.to(dev))
                cls = out.last_hidden_state[:, 0].float().cpu().numpy()
                feats.append(cls)
                kept.extend(good)
            if on_batch is not None:
                on_batch(idx[-1] + 1, total)
    seconds = time.perf_counter() - start
    if not kept:
        raise InputError("no readable image", file=labels_csv,
                         expected=f"image files under {images} named by the CSV")
    features = np.concatenate(feats).astype(np.float32)
    kept_arr = np.asarray(kept, dtype=np.int64)
    labels = rows.labels[kept_arr]
    num_classes = int(rows.labels.max()) + 1 if rows.class_names is None else len(rows.class_names)
    if num_classes < 2:
        raise InputError("only one class", file=labels_csv, field="label",
                         expected="at least two classes")
    parts = stratified_split(labels, ratios, seed)
    for name, part in parts.items():
        if len(part) == 0:
            raise InputError(f"split {name!r} would be empty with {len(labels)} readable images",
                             field="--split-ratios", value=",".join(map(str, ratios)),
                             expected="more images or ratios giving every split a sample")
    splits = {}
    for name, part in parts.items():
        rows_idx = kept_arr[part]
        splits[name] = FeatureSplit(
            features=features[part], labels=labels[part],
            group=None if rows.groups is None else rows.groups[rows_idx],
            path=[rows.paths[j] for j in rows_idx])
    bundle = FeatureBundle(num_classes=num_classes, splits=splits, group_names=rows.group_names)
    return ExtractionResult(bundle=bundle, skipped=skipped, num_images=len(kept), seconds=seconds)


def save_tiny_dinov3(path: str | Path, *, image_size: int, hidden_size: int = 32,
                     patch_size: int = 7, num_heads: int = 2, num_register_tokens: int = 2,
                     seed: int = 0) -> Path:
    """Save a tiny randomly initialised DINOv3 ViT (2 layers) with the hub's processor config.

    For offline smoke tests and benchmarks of the extraction pipeline: the result loads
    with ``AutoModel`` / ``AutoImageProcessor`` and ``HF_HUB_OFFLINE=1``. ``image_size``
    is in pixels and must be a multiple of ``patch_size``. Returns ``path``.
    """
    import json

    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    path = Path(path)
    cfg = DINOv3ViTConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=2, num_attention_heads=num_heads,
                          patch_size=patch_size, image_size=image_size,
                          num_register_tokens=num_register_tokens)
    torch.manual_seed(seed)
    DINOv3ViTModel(cfg).save_pretrained(path)
    # what the hub ships for DINOv3; the class itself needs torchvision, so
    # load_backbone falls back to an equal PIL pipeline when torchvision is absent
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DINOv3ViTImageProcessorFast", "do_resize": True,
        "size": {"height": image_size, "width": image_size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return path
