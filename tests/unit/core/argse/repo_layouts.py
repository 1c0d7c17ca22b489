"""The two logit layouts the public AR-GSE code (github DngBack/AR-GSE) writes, built
with random but informative logits, with the exact file names, keys, dtypes and split
names of that code:

- ``outputs/logits_fixed/<expert>/<split>_logits.npz`` (``recompute_logits.py``):
  ``np.savez_compressed(logits=float32 [N, C], targets=int64 [N], predictions=int64 [N])``,
  splits ``tunev``, ``val``, ``test``.
- ``outputs/logits/<dataset>/<expert>/<split>_logits.pt`` (``src/train/train_expert.py``):
  ``torch.save(logits.to(torch.float16))``, splits ``train``, ``tuneV``, ``val_small``,
  ``val_lt``, ``test_lt``, ``calib``; no labels in the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

REPO_EXPERTS = ("ce_baseline", "logitadjust_baseline", "balsoftmax_baseline")
C = 10
IMBALANCE, MAX_COUNT = 100, 500  # CIFAR-100-LT's rule, here over C = 10 classes
# floor(500 * 100^(-c/9)) -> tail (<= 20): 3 classes
COUNTS = [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
FIXED_ROWS = {"tunev": 240, "val": 150, "test": 150}
PT_ROWS = {"train": 40, "tuneV": 240, "val_small": 60, "val_lt": 150, "test_lt": 150, "calib": 30}


def _split(rng: np.random.Generator, n: int, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn half long-tailed, half uniform; each expert boosts the true class."""
    prior = np.asarray(COUNTS, dtype=np.float64) / sum(COUNTS)
    y = rng.choice(C, size=n, p=0.5 * prior + 0.5 / C)
    logits = rng.normal(0.0, 1.0, size=(n, num_experts, C))
    logits[np.arange(n), :, y] += rng.uniform(0.5, 3.0, size=(n, num_experts))
    logits[:, 0, :] += 0.3 * np.log(prior + 1e-3)[None, :]  # the CE expert favours the head
    return logits.astype(np.float32), y.astype(np.int64)


def write_logits_fixed(root: Path, experts=REPO_EXPERTS, seed: int = 0,
                       rows=FIXED_ROWS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layout A under ``root`` (= ``outputs/logits_fixed``).

    Returns ``{split: (logits [N, E, C] in ``experts`` order, labels [N])}``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in rows.items():
        logits, y = _split(rng, n, len(experts))
        for e, name in enumerate(experts):
            (root / name).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(root / name / f"{split}_logits.npz", logits=logits[:, e],
                                targets=y, predictions=logits[:, e].argmax(axis=1))
        out[split] = (logits, y)
    return out


def write_logits_pt(root: Path, experts=REPO_EXPERTS, seed: int = 1, rows=PT_ROWS,
                    labels_dir: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layout B under ``root`` (= ``outputs/logits/<dataset>``); labels (which the
    repository takes from CIFAR by split indices) go to ``labels_dir/<split>_labels.npy``
    under the repository's split names when ``labels_dir`` is given.

    Returns ``{split: (float16-rounded logits [N, E, C] as float32, labels [N])}``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in rows.items():
        logits, y = _split(rng, n, len(experts))
        half = torch.from_numpy(logits).to(torch.float16)
        for e, name in enumerate(experts):
            (root / name).mkdir(parents=True, exist_ok=True)
            torch.save(half[:, e].clone(), root / name / f"{split}_logits.pt")
        if labels_dir is not None:
            labels_dir.mkdir(parents=True, exist_ok=True)
            np.save(labels_dir / f"{split}_labels.npy", y)
        out[split] = (half.float().numpy(), y)
    return out
