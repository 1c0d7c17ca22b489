"""Descriptive statistics of a bundle, for ``seltune data inspect`` and the tests.

These are plain top-1 accuracies of each expert on a split (no rejection); the
selective metrics live in ``core.metrics``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.bundles import Bundle, ExpertBundle, FeatureBundle


def expert_accuracy(
    logits: np.ndarray, labels: np.ndarray, class_to_group: np.ndarray, num_groups: int
) -> dict[str, Any]:
    """Top-1 accuracy of one expert, overall, class-balanced and per group.

    Args:
        logits: ``[N, C]`` one expert's logits.
        labels: ``[N]`` true classes.
        class_to_group: ``[C]`` group of each class.
        num_groups: K.

    Returns:
        ``accuracy`` (fraction of rows correct), ``balanced_accuracy`` (mean per-class
        recall over the classes present), ``group_accuracy`` (K values,
        ``P(correct | y in G_k)``, ``None`` for a group with no row) and
        ``worst_group_accuracy`` (the smallest of those).
    """
    labels = np.asarray(labels)
    correct = np.asarray(logits).argmax(axis=1) == labels
    c = class_to_group.shape[0]
    per_class_n = np.bincount(labels, minlength=c)
    per_class_ok = np.bincount(labels, weights=correct, minlength=c)
    present = per_class_n > 0
    groups = np.asarray(class_to_group)[labels]
    group_n = np.bincount(groups, minlength=num_groups)
    group_ok = np.bincount(groups, weights=correct, minlength=num_groups)
    group_acc = [float(group_ok[k] / group_n[k]) if group_n[k] else None
                 for k in range(num_groups)]
    seen = [a for a in group_acc if a is not None]
    return {
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float((per_class_ok[present] / per_class_n[present]).mean()),
        "worst_group_accuracy": float(min(seen)) if seen else None,
        "group_accuracy": group_acc,
    }


def group_names(num_groups: int) -> list[str]:
    """Display names of K groups: head/tail for K = 2, else head, mid1.., tail."""
    if num_groups == 2:
        return ["head", "tail"]
    return ["head", *[f"mid{k}" for k in range(1, num_groups - 1)], "tail"]


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    """The JSON object printed by ``seltune data inspect --json``.

    Keys: ``path``, ``kind``, ``num_classes``, ``experts`` (names; empty for a feature
    bundle), ``class_counts`` and ``class_to_group`` (empty lists for a feature
    bundle), ``num_groups``, ``group_names``, ``group_boundaries``, ``classes_per_group``,
    and ``splits``: ``{name: {"n": rows, "shape": [...], "experts": {expert:
    expert_accuracy(...)}}}``; feature bundles give ``label_counts`` and, when present,
    ``group_counts`` per split instead of ``experts`` (which is then empty).
    """
    out: dict[str, Any] = {"path": None if bundle.path is None else str(bundle.path),
                           "kind": bundle.kind}
    if isinstance(bundle, ExpertBundle):
        k = bundle.num_groups
        ctg = np.asarray(bundle.class_to_group)
        out.update(
            num_classes=bundle.num_classes,
            experts=list(bundle.expert_names),
            class_counts=np.asarray(bundle.class_counts).tolist(),
            class_to_group=ctg.tolist(),
            num_groups=k,
            group_names=group_names(k),
            group_boundaries=list(bundle.group_boundaries),
            classes_per_group=np.bincount(ctg, minlength=k).tolist(),
            training_samples_per_group=np.bincount(
                ctg, weights=np.asarray(bundle.class_counts), minlength=k).astype(int).tolist(),
            splits={},
        )
        for name, split in bundle.splits.items():
            logits = np.asarray(split.logits)
            out["splits"][name] = {
                "n": int(logits.shape[0]),
                "shape": list(logits.shape),
                "experts": {
                    e: expert_accuracy(logits[:, i, :], split.labels, ctg, k)
                    for i, e in enumerate(bundle.expert_names)
                },
            }
    elif isinstance(bundle, FeatureBundle):
        out.update(
            num_classes=int(bundle.num_classes),
            experts=[],
            class_counts=[],
            class_to_group=[],
            feature_dim=bundle.feature_dim,
            group_names=None if bundle.group_names is None else list(bundle.group_names),
            splits={},
        )
        for fname, fsplit in bundle.splits.items():
            info: dict[str, Any] = {
                "n": len(fsplit),
                "shape": list(np.asarray(fsplit.features).shape),
                "experts": {},
                "label_counts": np.bincount(fsplit.labels,
                                            minlength=bundle.num_classes).tolist(),
            }
            if fsplit.group is not None:
                g = np.asarray(fsplit.group)
                info["group_counts"] = np.bincount(g).tolist()
                info["positive_rate_per_group"] = [
                    float(np.asarray(fsplit.labels)[g == k].mean()) if (g == k).any() else None
                    for k in range(int(g.max()) + 1)
                ] if bundle.num_classes == 2 else None
            out["splits"][fname] = info
    return out


__all__ = ["bundle_summary", "expert_accuracy", "group_names"]
