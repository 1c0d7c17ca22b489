"""Synthetic bundles: shapes, determinism, and long-tail expert behaviour (asserted)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from core.bundles import load_bundle, validate_bundle
from core.data_stats import expert_accuracy
from core.errors import InputError
from core.synth import (
    default_bundle_path,
    digits_longtail_bundle,
    ensure_default_bundle,
    longtail_counts,
    synth_argse_bundle,
    synth_stage1_bundle,
)


def group_acc(bundle, split="test"):
    """{expert: [head acc, ..., tail acc]} on ``split``."""
    s = bundle.splits[split]
    return {
        name: expert_accuracy(s.logits[:, i], s.labels, bundle.class_to_group,
                              bundle.num_groups)["group_accuracy"]
        for i, name in enumerate(bundle.expert_names)
    }


def test_longtail_profile_matches_cifar100_lt():
    counts = longtail_counts(100, 100.0, 500)
    assert counts[0] == 500 and counts[-1] == 5
    assert counts.sum() == 10847
    assert np.all(np.diff(counts) <= 0)
    assert (counts <= 20).sum() == 31  # tail under the default boundary


@pytest.fixture(scope="module")
def default_bundle():
    t0 = time.perf_counter()
    b = synth_argse_bundle()
    return b, time.perf_counter() - t0


def test_default_synth_shape_and_speed(default_bundle):
    b, seconds = default_bundle
    validate_bundle(b, "synth")
    assert seconds < 60, seconds  # "well under a minute"; ~3-5 s on a quiet 2-core box
    assert b.expert_names == ("ce", "logit_adjust", "balanced_softmax")
    assert b.num_classes == 100 and int(b.class_counts.sum()) == 10847
    assert {k: s.logits.shape for k, s in b.splits.items()} == {
        "tunev": (3000, 3, 100), "val": (2000, 3, 100), "test": (5000, 3, 100)}
    for s in b.splits.values():  # balanced evaluation splits
        assert np.all(np.bincount(s.labels, minlength=100) == len(s) // 100)


def test_default_experts_differ_like_long_tail_experts(default_bundle):
    b, _ = default_bundle
    acc = group_acc(b)
    head_ce, tail_ce = acc["ce"]
    for name in ("logit_adjust", "balanced_softmax"):
        head, tail = acc[name]
        assert head_ce > head + 0.02, (name, acc)  # CE better on the head
        assert tail > tail_ce + 0.15, (name, acc)  # prior-corrected experts on the tail
    # hard enough to be interesting, not trivial
    overall = {e: float((b.splits["test"].logits[:, i].argmax(1) == b.splits["test"].labels).mean())
               for i, e in enumerate(b.expert_names)}
    assert all(0.35 < v < 0.8 for v in overall.values()), overall
    assert overall["logit_adjust"] > overall["ce"]  # better balanced accuracy


def test_small_synth_also_long_tail_shaped():
    b = synth_argse_bundle(classes=20, per_class=(10, 10, 100))
    acc = group_acc(b)
    assert acc["ce"][0] > acc["logit_adjust"][0] + 0.02, acc
    assert acc["logit_adjust"][1] > acc["ce"][1] + 0.15, acc
    assert acc["balanced_softmax"][1] > acc["ce"][1] + 0.15, acc


def test_synth_deterministic_for_a_seed():
    a = synth_argse_bundle(classes=20, seed=3, per_class=(5, 5, 5))
    b = synth_argse_bundle(classes=20, seed=3, per_class=(5, 5, 5))
    c = synth_argse_bundle(classes=20, seed=4, per_class=(5, 5, 5))
    for name in a.splits:
        assert a.splits[name].logits.tobytes() == b.splits[name].logits.tobytes()
        assert a.splits[name].labels.tobytes() == b.splits[name].labels.tobytes()
    assert a.splits["test"].logits.tobytes() != c.splits["test"].logits.tobytes()


def test_synth_options(tmp_path):
    b = synth_argse_bundle(classes=20, experts=("balanced_softmax", "ce"),
                           group_boundaries=(20, 100), per_class=(3, 3, 3))
    assert b.expert_names == ("balanced_softmax", "ce")
    assert b.num_groups == 3 and b.splits["val"].logits.shape == (60, 2, 20)
    np.testing.assert_array_equal(
        b.class_to_group, (b.class_counts <= 20).astype(int) + (b.class_counts <= 100))


@pytest.mark.parametrize("kwargs, match", [
    ({"experts": ("ce", "focal")}, "experts"),
    ({"experts": ()}, "experts"),
    ({"imbalance": 0.5}, "imbalance"),
    ({"classes": 1}, "classes"),
    ({"imbalance": 2.0}, "group 1 has no class"),  # no class with <= 20 samples
])
def test_synth_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        synth_argse_bundle(**{"classes": 20, **kwargs})


def test_digits_example_is_long_tailed_real_data():
    b = digits_longtail_bundle()
    validate_bundle(b, "digits")
    assert b.num_classes == 10
    assert b.class_counts.tolist() == [100, 64, 41, 27, 17, 11, 7, 4, 3, 2]
    assert b.class_to_group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert b.splits["test"].logits.shape == (300, 3, 10)
    acc = group_acc(b)
    assert acc["ce"][0] > acc["logit_adjust"][0], acc
    assert acc["logit_adjust"][1] > acc["ce"][1] + 0.03, acc


def test_stage1_bundle_has_imbalance_hard_group_and_noise():
    from sklearn.linear_model import LogisticRegression

    b = synth_stage1_bundle()
    validate_bundle(b, "stage1")
    assert b.num_classes == 2 and b.feature_dim == 64
    assert {k: len(s) for k, s in b.splits.items()} == {"train": 6000, "val": 3000, "test": 3000}
    assert b.group_names == ("source_a", "source_b", "source_hard")
    tr, te = b.splits["train"], b.splits["test"]
    assert 0.15 < tr.labels.mean() < 0.3  # ~80/20 imbalance (plus flipped labels)
    assert set(np.unique(tr.group)) == {0, 1, 2}
    assert len(tr.path) == 6000 and tr.path[0].startswith("synth/")
    clf = LogisticRegression(max_iter=1000).fit(tr.features, tr.labels)
    correct = clf.predict(te.features) == te.labels
    acc = [correct[te.group == g].mean() for g in range(3)]
    majority = [1 - te.labels[te.group == g].mean() for g in range(3)]
    assert acc[0] > majority[0] + 0.08  # learnable on the easy source
    assert acc[2] < acc[0] - 0.05  # the hard source is hard
    assert acc[0] < 0.97  # label noise caps accuracy
    again = synth_stage1_bundle()
    assert again.splits["val"].features.tobytes() == b.splits["val"].features.tobytes()


def test_default_bundle_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELTUNE_CACHE", str(tmp_path / "cache"))
    path = default_bundle_path("stage1")
    assert path.parent == tmp_path / "cache"
    assert path.name.startswith("stage1-default-v")  # versioned: a new generator never reuses
    assert ensure_default_bundle("stage1") == path
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert ensure_default_bundle("stage1") == path  # reused, not rebuilt
    assert (path / "manifest.json").stat().st_mtime_ns == stamp
    assert load_bundle(path).kind == "stage1"
    with pytest.raises(InputError, match="kind"):
        default_bundle_path("nope")
