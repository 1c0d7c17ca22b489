"""Synthetic and bundled-real data with real long-tailed experts.

* :func:`synth_argse_bundle`: a CIFAR-100-LT-shaped expert-logit bundle. A long-tailed
  training set (exponential profile ``n_c = floor(n_max * imbalance^(-c/(C-1)))``;
  ``n_max = 500``, imbalance 100 and C = 100 give 10,847 samples, as CIFAR-100-LT)
  is drawn from class-conditional Gaussians, three experts are **trained** on it in
  torch (plain CE, logit-adjusted CE, balanced softmax), and balanced ``tunev`` /
  ``val`` / ``test`` splits from the same class-conditionals are scored by every
  expert.
* :func:`digits_longtail_bundle`: the same pipeline on scikit-learn's bundled 8x8
  ``digits`` (real images, nothing to download), made long-tailed by subsampling the
  training classes.
* :func:`synth_stage1_bundle`: a binary feature bundle for the Stage-1 exit gate,
  with class imbalance, a hard data source and label noise.

Why the class-conditionals look the way they do. If class means are scattered at
random, a prior-biased (CE) classifier's gain on frequent classes is paid for mostly by
*medium* classes that are still in the head group, so CE and logit adjustment end up
equal on the head and the K = 2 head/tail asymmetry of real long-tailed experts does not
appear. Real rare classes tend to be fine-grained variants of common ones (a rare
species beside a common one), so here the most frequent ``root_fraction`` of classes
are well separated "roots" and every rarer class sits close to a random root (mean =
root mean + ``sub_spread`` noise) in a low-dimensional latent space, embedded in
``dim`` dimensions through a random linear map plus a mild ``tanh`` warp (so a small
MLP beats a linear model), with isotropic unit noise. CE then wins its root/rare
confusions for the root (head accuracy up, tail accuracy down) and the
prior-corrected experts do the opposite: at the defaults, on ``test``, CE has about
0.73 head / 0.15 tail accuracy, logit adjustment 0.69 / 0.42 and balanced softmax
0.69 / 0.43 (overall 0.55, 0.60, 0.61); ``seltune data inspect`` shows these.

Experts (all the same MLP ``dim -> hidden -> C`` with ReLU, mini-batch Adam):

* ``ce``: cross-entropy on ``f(x)``.
* ``logit_adjust``: Menon et al. (ICLR 2021), logit-adjusted loss
  ``CE(f(x) + tau * log pi, y)`` with the training prior ``pi`` (``tau = 1``);
  predicts with ``f(x)``.
* ``balanced_softmax``: Ren et al. (NeurIPS 2020), ``CE(f(x) + log n_y, y)``;
  predicts with ``f(x)``. (With ``tau = 1`` it is the same loss as ``logit_adjust``
  up to a constant; the two experts differ by their initialisation, as two
  independently trained networks do.)

Determinism: numpy draws come from ``np.random.default_rng(seed)``, each expert is
initialised from ``torch.manual_seed`` of a seed derived from ``seed``, mini-batch
shuffling uses a seeded ``torch.Generator`` and runs on one CPU thread (the thread count is restored
afterwards), so a seed gives the same bytes on the same torch build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.bundles import (
    DEFAULT_GROUP_BOUNDARIES,
    ExpertBundle,
    ExpertSplit,
    FeatureBundle,
    FeatureSplit,
    check_group_boundaries,
    class_to_group_from_counts,
    save_bundle,
)
from core.errors import InputError

EXPERT_LOSSES = ("ce", "logit_adjust", "balanced_softmax")
DEFAULT_EXPERTS = EXPERT_LOSSES
DEFAULT_KINDS = ("argse", "stage1", "digits")
STAGE1_GROUP_NAMES = ("source_a", "source_b", "source_hard")


# --------------------------------------------------------------------------- helpers


def longtail_counts(classes: int, imbalance: float, n_max: int) -> np.ndarray:
    """Exponential long-tail profile ``floor(n_max * imbalance^(-c/(C-1)))``, at least 1.

    Returns:
        ``[C]`` int64 training counts, class 0 the most frequent.
    """
    c = np.arange(classes, dtype=np.float64)
    counts = np.floor(n_max * float(imbalance) ** (-c / max(classes - 1, 1)) + 1e-9)
    return np.maximum(counts, 1).astype(np.int64)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(field=name, value=value, expected=f"an integer >= {low}")
    return int(value)


def _check_experts(experts: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(e).strip() for e in experts)
    if not names:
        raise InputError(field="experts", value=list(names),
                         expected=f"one or more of {list(EXPERT_LOSSES)}")
    for name in names:
        if name not in EXPERT_LOSSES:
            raise InputError(field="experts", value=name,
                             expected=f"one of {list(EXPERT_LOSSES)}")
    if len(set(names)) != len(names):
        raise InputError(field="experts", value=list(names), expected="distinct experts")
    return names


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread (bitwise-stable sums), then restore the setting."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def train_experts(
    x_train: np.ndarray,
    y_train: np.ndarray,
    class_counts: np.ndarray,
    experts: Sequence[str] = DEFAULT_EXPERTS,
    *,
    seed: int = 0,
    hidden: int = 64,
    epochs: int = 15,
    batch_size: int = 512,
    lr: float = 1e-2,
    weight_decay: float = 5e-4,
    tau: float = 1.0,
) -> list[Any]:
    """Train one MLP expert per loss in ``experts`` on the (long-tailed) training set.

    Args:
        x_train: ``[N, D]`` float32 inputs (standardised by the caller).
        y_train: ``[N]`` int64 labels in ``[0, C)``.
        class_counts: ``[C]`` training counts (all > 0), for the loss adjustments.
        experts: names from :data:`EXPERT_LOSSES`.
        seed: base seed; expert ``e`` is initialised from ``seed * 1009 + e``.
        hidden: hidden width; epochs, batch_size: mini-batch Adam (seeded shuffling);
            lr, weight_decay: Adam's.
        tau: the logit-adjustment strength of ``logit_adjust`` (Menon et al.'s tau).

    Returns:
        E ``torch.nn.Module`` in eval mode, each mapping ``[B, D] -> [B, C]`` logits.
    """
    import torch
    import torch.nn.functional as F

    names = _check_experts(experts)
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32)
    log_prior = torch.log(counts / counts.sum())
    adjust = {
        "ce": torch.zeros_like(counts),
        "logit_adjust": tau * log_prior,
        "balanced_softmax": torch.log(counts),
    }
    x = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64))
    n = int(x.shape[0])
    models = []
    with _one_thread():
        for e, name in enumerate(names):
            torch.manual_seed(seed * 1009 + e)
            model = torch.nn.Sequential(
                torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                torch.nn.Linear(hidden, counts.shape[0]),
            )
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
            gen = torch.Generator().manual_seed(seed * 1009 + e)
            for _ in range(epochs):
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, batch_size):
                    idx = order[start: start + batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x[idx]) + adjust[name], y[idx])
                    loss.backward()
                    opt.step()
            models.append(model.eval())
    return models


def score_experts(models: Sequence[Any], x: np.ndarray) -> np.ndarray:
    """Logits of every expert: ``[N, D]`` -> ``[N, E, C]`` float32."""
    import torch

    with _one_thread(), torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        out = torch.stack([m(xt) for m in models], dim=1)
    return out.numpy().astype(np.float32, copy=False)


def _balanced_labels(classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(classes, dtype=np.int64), per_class)


# --------------------------------------------------------------------------- argse


def synth_argse_bundle(
    classes: int = 100,
    imbalance: float = 100.0,
    experts: Sequence[str] = DEFAULT_EXPERTS,
    seed: int = 0,
    *,
    n_max: int = 500,
    per_class: tuple[int, int, int] = (30, 20, 50),
    group_boundaries: Sequence[int] = DEFAULT_GROUP_BOUNDARIES,
    dim: int = 32,
    latent_dim: int = 8,
    root_fraction: float = 0.7,
    root_spread: float = 1.0,
    sub_spread: float = 0.3,
    hidden: int = 64,
    epochs: int = 15,
) -> ExpertBundle:
    """A CIFAR-100-LT-shaped expert-logit bundle with trained CE / LA / BS experts.

    Args:
        classes: C >= 2.
        imbalance: ratio of the largest to the smallest training class (>= 1).
        experts: expert losses, a subset of :data:`EXPERT_LOSSES`, in logit order.
        seed: the only source of randomness.
        n_max: training samples of the most frequent class.
        per_class: balanced samples per class of ``tunev``, ``val``, ``test``.
        group_boundaries: count boundaries of the class->group map (default: tail =
            classes with <= 20 training samples).
        dim: input width D; latent_dim: dimension of the class-mean manifold.
        root_fraction: fraction of (most frequent) classes that are well-separated
            roots; the rarer classes are variants of a random root.
        root_spread, sub_spread: std of root means / of a variant's offset from its
            root, in latent units (the sample noise has std 1).
        hidden, epochs: expert MLP width and training epochs.

    Returns:
        An in-memory :class:`ExpertBundle` (``path=None``); save it with
        :func:`core.bundles.save_bundle`.
    """
    classes = _check_int("classes", classes, 2)
    n_max = _check_int("n_max", n_max, 1)
    if not np.isfinite(imbalance) or imbalance < 1:
        raise InputError(field="imbalance", value=imbalance, expected="a number >= 1")
    if len(per_class) != 3:
        raise InputError(field="per_class", value=per_class,
                         expected="3 counts (tunev, val, test)")
    sizes = [_check_int(f"per_class[{s}]", v, 1)
             for s, v in zip(("tunev", "val", "test"), per_class, strict=True)]
    names = _check_experts(experts)
    bounds = check_group_boundaries(group_boundaries)
    counts = longtail_counts(classes, imbalance, n_max)
    class_to_group = class_to_group_from_counts(
        counts, bounds, source=f"synth(classes={classes}, imbalance={imbalance:g})")

    rng = np.random.default_rng(seed)
    n_roots = min(classes, max(1, round(root_fraction * classes)))
    latent = np.empty((classes, latent_dim))
    latent[:n_roots] = rng.standard_normal((n_roots, latent_dim)) * root_spread
    parents = rng.integers(0, n_roots, classes - n_roots)
    latent[n_roots:] = latent[parents] + rng.standard_normal(
        (classes - n_roots, latent_dim)) * sub_spread
    embed = rng.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)
    means = latent @ embed  # [C, D]
    warp = rng.standard_normal((dim, dim)) / np.sqrt(dim)

    def draw(labels: np.ndarray) -> np.ndarray:
        h = means[labels] + rng.standard_normal((labels.shape[0], dim))
        return (h + 0.5 * np.tanh(h @ warp)).astype(np.float32)

    y_train = np.repeat(np.arange(classes, dtype=np.int64), counts)
    x_train = draw(y_train)
    eval_labels = [_balanced_labels(classes, n) for n in sizes]
    eval_x = [draw(y) for y in eval_labels]

    models = train_experts(x_train, y_train, counts, names, seed=seed, hidden=hidden,
                           epochs=epochs)
    splits = {
        name: ExpertSplit(logits=score_experts(models, x), labels=y)
        for name, x, y in zip(("tunev", "val", "test"), eval_x, eval_labels, strict=True)
    }
    return ExpertBundle(expert_names=names, class_counts=counts,
                        class_to_group=class_to_group, splits=splits,
                        group_boundaries=bounds)


# --------------------------------------------------------------------------- digits


def digits_longtail_bundle(
    seed: int = 0,
    *,
    imbalance: float = 50.0,
    n_max: int = 100,
    per_class: tuple[int, int, int] = (24, 20, 30),
    experts: Sequence[str] = DEFAULT_EXPERTS,
    group_boundaries: Sequence[int] = DEFAULT_GROUP_BOUNDARIES,
    hidden: int = 64,
    epochs: int = 60,
) -> ExpertBundle:
    """A long-tailed expert-logit bundle from scikit-learn's bundled ``digits``.

    1,797 real 8x8 images of 10 digits (about 180 per class) ship with scikit-learn,
    so nothing is downloaded. Per class, a seeded permutation gives ``n_c`` training
    images (``floor(n_max * imbalance^(-c/9))``: 100, 64, 41, 27, 17, 11, 7, 4, 3, 2;
    digit 0 is the head), and balanced ``tunev`` / ``val`` / ``test`` images from the
    rest (``per_class``; their sum plus ``n_max`` must not exceed 174, the smallest
    class). Pixels are scaled by the training mean/std; the experts are those of
    :func:`synth_argse_bundle`. With the default boundary (20) digits 0-3 are the head,
    4-9 the tail.
    """
    from sklearn.datasets import load_digits

    sizes = [_check_int("per_class", v, 1) for v in per_class]
    data = load_digits()
    x_all = np.asarray(data.data, dtype=np.float64)
    y_all = np.asarray(data.target, dtype=np.int64)
    classes = int(y_all.max()) + 1
    counts = longtail_counts(classes, imbalance, n_max)
    smallest = int(np.bincount(y_all).min())
    if int(counts.max()) + sum(sizes) > smallest:
        raise InputError(field="per_class", value=list(per_class),
                         expected=f"n_max + sum(per_class) <= {smallest} "
                         "(images in the smallest digit class)")
    names = _check_experts(experts)
    bounds = check_group_boundaries(group_boundaries)
    class_to_group = class_to_group_from_counts(
        counts, bounds, source=f"digits(imbalance={imbalance:g})")

    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(4)]
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(y_all == c))
        cuts = np.cumsum([counts[c], *sizes])
        parts[0].append(idx[: cuts[0]])
        for s in range(3):
            parts[s + 1].append(idx[cuts[s]: cuts[s + 1]])
    index = [np.concatenate(p) for p in parts]
    mean = x_all[index[0]].mean(axis=0)
    std = x_all[index[0]].std(axis=0) + 1.0  # +1: constant border pixels, 0-16 scale

    def prep(idx: np.ndarray) -> np.ndarray:
        return ((x_all[idx] - mean) / std).astype(np.float32)

    models = train_experts(prep(index[0]), y_all[index[0]], counts, names, seed=seed,
                           hidden=hidden, epochs=epochs, batch_size=64)
    splits = {
        name: ExpertSplit(logits=score_experts(models, prep(idx)), labels=y_all[idx])
        for name, idx in zip(("tunev", "val", "test"), index[1:], strict=True)
    }
    return ExpertBundle(expert_names=names, class_counts=counts,
                        class_to_group=class_to_group, splits=splits,
                        group_boundaries=bounds)


# --------------------------------------------------------------------------- stage1


def synth_stage1_bundle(
    seed: int = 0,
    *,
    dim: int = 64,
    sizes: tuple[int, int, int] = (6000, 3000, 3000),
    positive_rate: float = 0.2,
    group_rates: tuple[float, float, float] = (0.45, 0.35, 0.20),
    separations: tuple[float, float, float] = (3.5, 2.5, 0.6),
    label_noise: float = 0.05,
    latent_dim: int = 8,
) -> FeatureBundle:
    """A binary feature bundle that gives an exit gate something to learn.

    Each sample comes from one of three sources (``group``: ``source_a``,
    ``source_b``, ``source_hard``, with ``group_rates``), has label 1 with probability
    ``positive_rate`` (imbalance ~80/20), a latent ``z ~ N(mu[group, y], I)`` in
    ``latent_dim`` dimensions where the two class means of a source are
    ``separations[g]`` apart (the hard source overlaps heavily), and features
    ``tanh(z W1 + b_g) W2 + 0.3 noise`` of width ``dim`` (a frozen-backbone-like
    nonlinear embedding with a per-source shift). Then ``label_noise`` of the labels
    are flipped, in every split. ``path`` holds a fake file name per sample.

    Args:
        seed: the only source of randomness.
        dim: feature width D.
        sizes: rows of ``train``, ``val``, ``test``.
    """
    sizes_ = [_check_int(f"sizes[{i}]", v, 1) for i, v in enumerate(sizes)]
    dim = _check_int("dim", dim, 1)
    if not 0 < positive_rate < 1:
        raise InputError(field="positive_rate", value=positive_rate, expected="in (0, 1)")
    if not 0 <= label_noise < 0.5:
        raise InputError(field="label_noise", value=label_noise, expected="in [0, 0.5)")
    rates = np.asarray(group_rates, dtype=np.float64)
    rates = rates / rates.sum()
    rng = np.random.default_rng(seed)
    k = len(rates)
    # one label direction shared by the sources, tilted a little per source
    direction = rng.standard_normal(latent_dim) + 0.4 * rng.standard_normal((k, latent_dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    centre = rng.standard_normal((k, latent_dim)) * 0.5
    w1 = rng.standard_normal((latent_dim, 4 * latent_dim)) / np.sqrt(latent_dim)
    shift = rng.standard_normal((k, 4 * latent_dim)) * 0.5
    w2 = rng.standard_normal((4 * latent_dim, dim)) / np.sqrt(4 * latent_dim)
    lin = rng.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)
    sep = np.asarray(separations, dtype=np.float64)

    splits: dict[str, FeatureSplit] = {}
    for name, n in zip(("train", "val", "test"), sizes_, strict=True):
        group = rng.choice(k, size=n, p=rates).astype(np.int64)
        clean = (rng.random(n) < positive_rate).astype(np.int64)
        sign = np.where(clean == 1, 0.5, -0.5)[:, None]
        z = centre[group] + sign * sep[group][:, None] * direction[group]
        z = z + rng.standard_normal((n, latent_dim))
        x = (z @ lin + 0.5 * np.tanh(z @ w1 + shift[group]) @ w2
             + 0.3 * rng.standard_normal((n, dim)))
        flip = rng.random(n) < label_noise
        labels = np.where(flip, 1 - clean, clean).astype(np.int64)
        paths = [f"synth/{STAGE1_GROUP_NAMES[g] if g < 3 else g}/{name}_{i:06d}.png"
                 for i, g in enumerate(group.tolist())]
        splits[name] = FeatureSplit(features=x.astype(np.float32), labels=labels,
                                    group=group, path=paths)
    group_names = STAGE1_GROUP_NAMES if k == 3 else tuple(f"source_{g}" for g in range(k))
    return FeatureBundle(num_classes=2, splits=splits, group_names=group_names)


# --------------------------------------------------------------------------- defaults


def cache_root() -> Path:
    """``$SELTUNE_CACHE`` if set, else ``~/.cache/seltune``."""
    env = os.environ.get("SELTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "seltune"


# Bumped whenever a generator's output changes, so a stale cached default is never reused.
DEFAULT_BUNDLE_VERSION = 1


def default_bundle_path(kind: str) -> Path:
    """Where the default bundle of ``kind`` (argse, stage1, digits) is cached (versioned)."""
    if kind not in DEFAULT_KINDS:
        raise InputError(field="kind", value=kind, expected=f"one of {list(DEFAULT_KINDS)}")
    return cache_root() / f"{kind}-default-v{DEFAULT_BUNDLE_VERSION}"


def build_default_bundle(kind: str) -> ExpertBundle | FeatureBundle:
    """The default bundle of ``kind``, in memory (seed 0, default sizes)."""
    if kind == "argse":
        return synth_argse_bundle()
    if kind == "stage1":
        return synth_stage1_bundle()
    if kind == "digits":
        return digits_longtail_bundle()
    raise InputError(field="kind", value=kind, expected=f"one of {list(DEFAULT_KINDS)}")


def ensure_default_bundle(kind: str) -> Path:
    """Path of the cached default bundle of ``kind``, built (atomically) on first use."""
    path = default_bundle_path(kind)
    if (path / "manifest.json").is_file():
        return path
    bundle = build_default_bundle(kind)
    try:
        save_bundle(bundle, path, overwrite=path.exists())
    except InputError:
        # another process built it meanwhile: theirs is as good as ours
        if not (path / "manifest.json").is_file():
            raise
    return path


__all__ = [
    "DEFAULT_EXPERTS",
    "DEFAULT_KINDS",
    "EXPERT_LOSSES",
    "STAGE1_GROUP_NAMES",
    "build_default_bundle",
    "cache_root",
    "default_bundle_path",
    "digits_longtail_bundle",
    "ensure_default_bundle",
    "longtail_counts",
    "score_experts",
    "synth_argse_bundle",
    "synth_stage1_bundle",
    "train_experts",
]
