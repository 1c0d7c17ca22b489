"""Small in-memory expert bundles for the AR-GSE unit tests."""

from __future__ import annotations

import numpy as np
import pytest

from core.bundles import ExpertBundle, ExpertSplit


def make_bundle(num_experts: int = 2, num_classes: int = 10, num_groups: int = 2,
                n: int = 240, seed: int = 0, names=None) -> ExpertBundle:
    """A long-tailed toy bundle: informative logits (true class boosted), K groups.

    Class counts decay geometrically so groups by count boundaries are head..tail.
    """
    rng = np.random.default_rng(seed)
    counts = np.maximum((500 * 0.6 ** np.arange(num_classes)).astype(np.int64), 1)
    # boundaries placing classes into num_groups non-empty groups, head = group 0
    order = np.sort(counts)
    cuts = [int(order[int(len(order) * q)]) for q in np.linspace(0, 1, num_groups + 1)[1:-1]]
    boundaries = tuple(sorted(set(cuts)))
    c2g = np.array([sum(c <= b for b in boundaries) for c in counts], dtype=np.int64)
    names = names or tuple(["ce_baseline", "logitadjust_baseline", "balsoftmax_baseline",
                            "ride"][:num_experts])
    prior = counts / counts.sum()
    splits = {}
    for name in ("tunev", "val", "test"):
        y = rng.choice(num_classes, size=n, p=0.5 * prior + 0.5 / num_classes)
        logits = rng.normal(0, 1.0, size=(n, num_experts, num_classes)).astype(np.float32)
        strength = rng.uniform(0.5, 3.0, size=(n, num_experts)).astype(np.float32)
        logits[np.arange(n), :, y] += strength
        # expert 0 favours head classes, others are flatter
        logits[:, 0, :] += np.log(prior + 1e-3).astype(np.float32)[None, :] * 0.3
        splits[name] = ExpertSplit(logits=logits, labels=y.astype(np.int64))
    return ExpertBundle(expert_names=tuple(names), class_counts=counts, class_to_group=c2g,
                        splits=splits, group_boundaries=boundaries)


@pytest.fixture
def small_bundle():
    return make_bundle()
