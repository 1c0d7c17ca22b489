"""ECE, classwise-ECE, NLL, Brier and accuracy (docs/METHODS.md §5)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from core.metrics import accuracy, brier, classwise_ece, ece, nll


def rows(*pairs):
    """Stack (prob_row, count) pairs into probs [N, C]."""
    return np.concatenate([np.tile(np.asarray(p, float), (n, 1)) for p, n in pairs])


def sample_labels(probs, rng):
    """Draw y_i ~ Categorical(probs_i): perfectly calibrated labels."""
    u = rng.random((len(probs), 1))
    return np.minimum((u > np.cumsum(probs, axis=1)).sum(axis=1), probs.shape[1] - 1)


# ----------------------------------------------------------------------------- ECE


def test_ece_exactly_calibrated_is_zero():
    # conf 0.6 with 6/10 correct, conf 0.8 with 8/10 correct
    probs = rows(([0.6, 0.4], 10), ([0.2, 0.8], 10))
    labels = np.r_[[0] * 6, [1] * 4, [1] * 8, [0] * 2]
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # each class's forecast is also calibrated: p0 = 0.6 (6/10 hits), 0.2 (2/10 hits)
    assert classwise_ece(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_miscalibrated_case():
    # 10 samples at conf 0.9 with 6 correct (gap 0.3), 30 at conf 0.7 with 15 correct
    # (gap 0.2): ECE = (10·0.3 + 30·0.2) / 40 = 0.225
    probs = rows(([0.9, 0.1], 10), ([0.3, 0.7], 30))
    labels = np.r_[[0] * 6, [1] * 4, [1] * 15, [0] * 15]
    assert ece(probs, labels) == pytest.approx(0.225, abs=1e-12)
    # always-wrong confident predictions: ECE equals the confidence
    assert ece(rows(([0.95, 0.05], 7)), [1] * 7) == pytest.approx(0.95, abs=1e-12)


def test_classwise_ece_differs_from_top_label_known_answer():
    # p = [0.5, 0.3, 0.2] x 10, labels five 0s and five 1s.
    # top label: conf 0.5, accuracy 0.5 -> ECE 0
    # class 0: forecast 0.5, frequency 0.5 -> 0; class 1: 0.3 vs 0.5 -> 0.2;
    # class 2: 0.2 vs 0 -> 0.2. classwise-ECE = (0 + 0.2 + 0.2) / 3
    probs = rows(([0.5, 0.3, 0.2], 10))
    labels = np.r_[[0] * 5, [1] * 5]
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert classwise_ece(probs, labels) == pytest.approx(0.4 / 3, abs=1e-12)


def test_bins_are_right_closed():
    # n_bins = 2: bins (0, 0.5] and (0.5, 1]. Conf 0.5 (correct) and 0.6 (wrong) fall in
    # different bins: ECE = (|1 - 0.5| + |0 - 0.6|) / 2 = 0.55 (0.05 if 0.5 went right).
    probs = np.array([[0.5, 0.5], [0.6, 0.4]])
    assert ece(probs, [0, 1], n_bins=2) == pytest.approx(0.55, abs=1e-12)
    # one bin: |1 - 1.1| / 2
    assert ece(probs, [0, 1], n_bins=1) == pytest.approx(0.05, abs=1e-12)


def test_ece_of_calibrated_synthetic_data_is_near_zero():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(5, 0.5), size=100_000)
    labels = sample_labels(probs, rng)
    assert ece(probs, labels) < 0.01
    assert classwise_ece(probs, labels) < 0.005
    # sharpening the same probabilities makes them over-confident
    sharp = probs**3 / (probs**3).sum(axis=1, keepdims=True)
    assert ece(sharp, labels) > 0.05


@given(st.integers(1, 30), st.integers(2, 6), st.integers(1, 20), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_ece_matches_a_direct_loop_over_bins(n, c, n_bins, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), size=n)
    labels = rng.integers(0, c, n)
    edges = np.linspace(0, 1, n_bins + 1)

    def direct(conf, hit):
        total = 0.0
        for b in range(n_bins):
            lo, hi = edges[b], edges[b + 1]
            in_bin = (conf > lo) & (conf <= hi) if b else (conf <= hi)
            if in_bin.any():
                total += in_bin.mean() * abs(hit[in_bin].mean() - conf[in_bin].mean())
        return total

    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    assert ece(probs, labels, n_bins) == pytest.approx(direct(conf, (pred == labels) * 1.0), abs=1e-12)
    per_class = [direct(probs[:, k], (labels == k) * 1.0) for k in range(c)]
    assert classwise_ece(probs, labels, n_bins) == pytest.approx(np.mean(per_class), abs=1e-12)


# ----------------------------------------------------------------------------- NLL, Brier


def test_nll_known_answers():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert nll(probs, [0, 1]) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2, abs=1e-15)
    assert nll([[1.0, 0.0]], [0]) == 0.0
    # a zero probability on the true class is clipped at eps
    assert nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))
    assert nll([[1.0, 0.0]], [1], eps=1e-3) == pytest.approx(-math.log(1e-3))


def test_brier_known_answers():
    # Σ_c (p_c − onehot_c)²: [0.5, 0.5] vs class 0 -> 0.25 + 0.25; [0.25, 0.75] vs class 1
    # -> 0.0625 + 0.0625; mean 0.3125
    assert brier([[0.5, 0.5], [0.25, 0.75]], [0, 1]) == pytest.approx(0.3125, abs=1e-15)
    assert brier([[1.0, 0.0]], [0]) == 0.0
    assert brier([[1.0, 0.0]], [1]) == 2.0  # the maximum: sum over classes, not the mean
    assert brier([[0.2, 0.3, 0.5]], [2]) == pytest.approx(0.04 + 0.09 + 0.25, abs=1e-15)


def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy(torch.tensor([3]), np.array([3])) == 1.0
    assert isinstance(accuracy([0], [1]), float)


def test_torch_float32_softmax_is_accepted():
    torch.manual_seed(0)
    logits = torch.randn(1000, 100) * 4
    probs = torch.softmax(logits, dim=1)
    labels = torch.randint(0, 100, (1000,))
    value = nll(probs, labels)
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert value == pytest.approx(expected, rel=1e-4)
    assert 0.0 <= ece(probs, labels) <= 1.0
    assert 0.0 <= brier(probs, labels) <= 2.0


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        ([0.5, 0.5], [0], "probs"),  # 1-D
        (np.empty((0, 2)), [], "probs"),
        ([[0.5, 0.5]], [0, 1], "length mismatch"),
        ([[0.9, 0.5]], [0], "probs.*sums to"),
        ([[2.0, -1.0]], [0], "probs"),  # logits, not probabilities
        ([[np.nan, 0.5]], [0], "probs"),
        ([[0.5, 0.5]], [2], "labels"),
        ([[0.5, 0.5]], [-1], "labels"),
        ([[0.5, 0.5]], [0.5], "labels"),
    ],
)
def test_bad_inputs(probs, labels, match):
    for fn in (ece, classwise_ece, nll, brier):
        with pytest.raises(InputError, match=match):
            fn(probs, labels)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_n_bins(n_bins):
    with pytest.raises(InputError, match="n_bins"):
        ece([[0.5, 0.5]], [0], n_bins=n_bins)
    with pytest.raises(InputError, match="n_bins"):
        classwise_ece([[0.5, 0.5]], [0], n_bins=n_bins)


def test_accuracy_bad_input():
    with pytest.raises(InputError, match="length mismatch"):
        accuracy([0, 1], [0])
    with pytest.raises(InputError, match="predictions"):
        accuracy([], [])


def test_fast_for_100k_samples():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(100), size=100_000)
    labels = rng.integers(0, 100, 100_000)
    start = time.perf_counter()
    ece(probs, labels)
    nll(probs, labels)
    brier(probs, labels)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"{elapsed:.2f}s"
