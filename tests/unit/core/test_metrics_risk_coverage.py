"""Risk-coverage curve, AUGRC, AURC, risk@coverage, coverage@risk (docs/METHODS.md §5).

Known answers are worked out by hand in the comments; the property tests compare with a
direct O(N^2) reading of the definitions and check the invariants of Traub et al.
(NeurIPS 2024) and fd-shifts.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from core.metrics import (
    augrc,
    aurc,
    coverage_at_risk,
    risk_at_coverage,
    risk_coverage_curve,
)

# ----------------------------------------------------------------------------- helpers


def naive_curve(conf, res):
    """The definitions read literally: one point per distinct threshold, then (0, ·)."""
    conf = np.asarray(conf, dtype=float)
    res = np.asarray(res, dtype=float)
    n = len(conf)
    cov, sel, gen = [], [], []
    for t in sorted(set(conf.tolist()), reverse=True)[::-1]:  # ascending threshold
        accepted = conf >= t
        cov.append(accepted.sum() / n)
        gen.append(res[accepted].sum() / n)
        sel.append(res[accepted].sum() / accepted.sum())
    cov.append(0.0)
    gen.append(0.0)
    sel.append(sel[-1])
    return np.array(cov), np.array(sel), np.array(gen)


def trapezoid_desc(x, y):
    return sum((x[i] - x[i + 1]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))


small_cases = st.integers(min_value=1, max_value=30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-4, 4), min_size=n, max_size=n),  # few values -> many ties
        st.lists(st.sampled_from([0.0, 1.0, 0.25, 0.5]), min_size=n, max_size=n),
    )
)

# ----------------------------------------------------------------------------- known answers

# Hand case with a tie: confidences 0.9 | 0.8 0.8 | 0.3, residuals 0 | 1 0 | 1 (N = 4).
#   accept {0.9, 0.8, 0.8, 0.3}: cov 1,    errors 2 -> gen 2/4, sel 2/4
#   accept {0.9, 0.8, 0.8}:      cov 3/4,  errors 1 -> gen 1/4, sel 1/3
#   accept {0.9}:                cov 1/4,  errors 0 -> gen 0,   sel 0
#   accept {}:                   cov 0               -> gen 0,   sel 0 (repeats last)
# AUGRC = 1/4·(1/2 + 1/4)/2 + 1/2·(1/4 + 0)/2 + 1/4·0 = 3/32 + 2/32 = 5/32
# AURC  = 1/4·(1/2 + 1/3)/2 + 1/2·(1/3 + 0)/2 + 0    = 5/48 + 4/48 = 9/48 = 3/16
TIE_CONF = [0.8, 0.3, 0.9, 0.8]  # deliberately unsorted
TIE_RES = [1, 1, 0, 0]


def test_curve_known_answer_with_tie():
    curve = risk_coverage_curve(TIE_CONF, TIE_RES)
    np.testing.assert_array_equal(curve.coverage, [1.0, 0.75, 0.25, 0.0])
    np.testing.assert_allclose(curve.generalized_risk, [0.5, 0.25, 0.0, 0.0], atol=0)
    np.testing.assert_allclose(curve.selective_risk, [0.5, 1 / 3, 0.0, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(curve.thresholds, [0.3, 0.8, 0.9, np.inf])


def test_augrc_aurc_known_answer_with_tie():
    assert augrc(TIE_CONF, TIE_RES) == 5 / 32
    assert aurc(TIE_CONF, TIE_RES) == pytest.approx(3 / 16, abs=1e-15)


def test_known_answer_without_ties():
    # conf 4 3 2 1, residuals 0 1 0 1:
    #   gen: 2/4, 1/4, 1/4, 0, 0 at cov 1, 3/4, 1/2, 1/4, 0
    #   sel: 1/2, 1/3, 1/2, 0, 0
    # AUGRC = 1/4·[(1/2+1/4) + (1/4+1/4) + (1/4+0) + 0]/2 = 1/4·(3/2)/2 = 3/16
    # AURC  = 1/4·[(1/2+1/3) + (1/3+1/2) + (1/2+0) + 0]/2 = 1/4·(13/6)/2 = 13/48
    conf, res = [4, 3, 2, 1], [0, 1, 0, 1]
    assert augrc(conf, res) == 3 / 16
    assert aurc(conf, res) == pytest.approx(13 / 48, abs=1e-15)
    assert risk_at_coverage(conf, res, 0.5) == 1 / 3  # points with cov >= 1/2: 1/2, 1/3, 1/2
    assert risk_at_coverage(conf, res, 0.6) == 1 / 3
    assert risk_at_coverage(conf, res, 0.8) == 0.5  # only full coverage qualifies
    assert risk_at_coverage(conf, res, 0.25) == 0.0
    assert coverage_at_risk(conf, res, 0.5) == 1.0
    assert coverage_at_risk(conf, res, 0.4) == 0.75
    assert coverage_at_risk(conf, res, 0.0) == 0.25


def test_float_residuals_known_answer():
    # conf 3 2 1, residuals 0.2 0.4 0.6 (N = 3):
    #   gen: 1.2/3, 0.6/3, 0.2/3, 0 at cov 1, 2/3, 1/3, 0
    # AUGRC = 1/3·[(0.4+0.2) + (0.2+0.2/3) + (0.2/3+0)]/2 = 1/3·(14/15)/2 = 7/45
    assert augrc([3, 2, 1], [0.2, 0.4, 0.6]) == pytest.approx(7 / 45, abs=1e-15)
    # sel: 0.4, 0.3, 0.2, 0.2 -> AURC = 1/3·[(0.7) + (0.5) + (0.4)]/2 = 1.6/6
    assert aurc([3, 2, 1], [0.2, 0.4, 0.6]) == pytest.approx(1.6 / 6, abs=1e-15)


def test_all_correct_gives_zero():
    rng = np.random.default_rng(0)
    conf = rng.normal(size=200)
    conf[:50] = 0.0  # ties too
    zeros = np.zeros(200)
    assert augrc(conf, zeros) == 0.0
    assert aurc(conf, zeros) == 0.0
    assert risk_at_coverage(conf, zeros, 1.0) == 0.0
    assert coverage_at_risk(conf, zeros, 0.0) == 1.0


def test_all_wrong():
    # Generalized risk equals coverage: area 1/2. Selective risk is 1 everywhere.
    conf = np.arange(10.0)
    ones = np.ones(10)
    assert augrc(conf, ones) == 0.5
    assert aurc(conf, ones) == 1.0
    assert coverage_at_risk(conf, ones, 0.99) == 0.0


def test_single_confidence_block():
    # Everything tied: points (1, err) and (0, 0): AUGRC = err/2; AURC = err (flat).
    res = [1, 0, 0, 1, 0]
    assert augrc(np.full(5, 0.7), res) == 0.2
    assert aurc(np.full(5, 0.7), res) == pytest.approx(0.4, abs=1e-15)
    assert risk_at_coverage(np.full(5, 0.7), res, 0.1) == pytest.approx(0.4)


def test_single_sample():
    assert augrc([0.3], [1]) == 0.5
    assert aurc([0.3], [1]) == 1.0
    assert augrc([0.3], [0]) == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 101, 1000])
def test_perfect_ranking_is_exactly_err_squared_over_two(n):
    # m failures all less confident than every success: the generalized risk is 0 down to
    # coverage (n-m)/n, then rises by 1/n per sample; the trapezoid sums
    # Σ_{i=1..m} (2i-1)/(2n²) = m²/(2n²) = err²/2 exactly, for any finite n.
    for m in range(0, n + 1, max(1, n // 7)):
        conf = np.arange(n, 0, -1, dtype=float)  # descending, distinct
        res = np.r_[np.zeros(n - m), np.ones(m)]
        expected = m * m / (2 * n * n)  # correctly rounded, like the implementation
        assert augrc(conf, res) == expected, (n, m)
        # Ties inside the failures or inside the successes do not change it: the
        # straight line across a block of failures has the same area.
        tied = conf.copy()
        tied[n - m:] = -1.0
        tied[: n - m] = 5.0
        assert augrc(tied, res) == expected, (n, m)


def test_perfect_ranking_aurc_tends_to_fd_shifts_optimum():
    # fd-shifts' optimal AURC for binary residuals: err + (1 - err)·ln(1 - err) (limit).
    n, err = 20000, 0.3
    m = int(err * n)
    conf = np.arange(n, 0, -1, dtype=float)
    res = np.r_[np.zeros(n - m), np.ones(m)]
    assert aurc(conf, res) == pytest.approx(err + (1 - err) * math.log(1 - err), abs=1e-4)


def test_reversed_ranking_is_worst():
    n, m = 100, 20
    conf = np.arange(n, dtype=float)  # failures (last) are the most confident
    res = np.r_[np.zeros(n - m), np.ones(m)]
    best = augrc(-conf, res)
    worst = augrc(conf, res)
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert best <= augrc(rng.normal(size=n), res) <= worst
    # worst: risk rises 1/n per step over the first m/n coverage then stays at err:
    # area = err·(1 - err) + err²/2.
    err = m / n
    assert worst == pytest.approx(err * (1 - err) + err * err / 2, abs=1e-15)


# ----------------------------------------------------------------------------- properties


@given(small_cases)
@settings(max_examples=150, deadline=None)
def test_curve_matches_the_definition(case):
    conf, res = case
    cov, sel, gen = naive_curve(conf, res)
    curve = risk_coverage_curve(conf, res)
    np.testing.assert_allclose(curve.coverage, cov, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.selective_risk, sel, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.generalized_risk, gen, rtol=0, atol=1e-12)
    assert curve.coverage[0] == 1.0 and curve.coverage[-1] == 0.0
    assert np.all(np.diff(curve.coverage) < 0)
    assert len(curve.coverage) == len(set(conf)) + 1
    assert augrc(conf, res) == pytest.approx(trapezoid_desc(cov, gen), abs=1e-12)
    assert aurc(conf, res) == pytest.approx(trapezoid_desc(cov, sel), abs=1e-12)
    # generalized risk = selective risk x coverage, so AUGRC <= AURC, and both in [0, 1]
    np.testing.assert_allclose(curve.generalized_risk[:-1],
                               curve.selective_risk[:-1] * curve.coverage[:-1], atol=1e-12)
    assert 0.0 <= augrc(conf, res) <= aurc(conf, res) + 1e-12 <= 1.0 + 1e-12
    assert augrc(conf, res) <= np.mean(res) + 1e-12


@given(
    st.integers(min_value=1, max_value=6).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 2), min_size=n, max_size=n),
            st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.125]), min_size=n, max_size=n),
        )
    )
)
@settings(max_examples=60, deadline=None)
def test_augrc_with_ties_is_the_mean_over_all_tie_breaks(case):
    # Exact enumeration: every permutation of the N samples used as a secondary key is
    # one tie-break; all N! are equally likely under a uniform random tie-break.
    conf, res = np.asarray(case[0], dtype=float), np.asarray(case[1])
    n = len(conf)
    values = [
        augrc(conf * (n + 1) + np.asarray(perm, dtype=float), res)  # perm < n+1 keeps order
        for perm in itertools.permutations(range(n))
    ]
    assert augrc(conf, res) == pytest.approx(np.mean(values), abs=1e-12)


def test_augrc_ties_mean_over_random_tie_breaks_large_block():
    # A block too big to enumerate: the mean over random tie-breaks converges to it.
    rng = np.random.default_rng(3)
    conf = np.r_[np.full(40, 1.0), rng.normal(size=20)]
    res = (rng.random(60) < 0.4).astype(float)
    tie_break = [augrc(conf * 1000 + rng.permutation(60), res) for _ in range(4000)]
    sem = np.std(tie_break) / np.sqrt(len(tie_break))
    assert abs(augrc(conf, res) - np.mean(tie_break)) < 5 * sem + 1e-12


@given(small_cases, st.sampled_from(["cube", "exp", "affine", "rank"]))
@settings(max_examples=100, deadline=None)
def test_invariant_under_strictly_increasing_transforms(case, transform):
    conf, res = np.asarray(case[0], dtype=float), case[1]
    f = {
        "cube": lambda x: x**3 + 7 * x,
        "exp": lambda x: np.exp(x / 3),
        "affine": lambda x: 2.5 * x - 11,
        "rank": lambda x: np.unique(x, return_inverse=True)[1].astype(float),
    }[transform]
    assert augrc(f(conf), res) == augrc(conf, res)
    assert aurc(f(conf), res) == aurc(conf, res)


@given(small_cases, st.randoms(use_true_random=False))
@settings(max_examples=50, deadline=None)
def test_invariant_under_sample_order(case, rnd):
    conf, res = np.asarray(case[0], dtype=float), np.asarray(case[1])
    perm = np.array(rnd.sample(range(len(conf)), len(conf)))
    assert augrc(conf[perm], res[perm]) == pytest.approx(augrc(conf, res), abs=1e-15)
    assert aurc(conf[perm], res[perm]) == pytest.approx(aurc(conf, res), abs=1e-15)


@given(small_cases, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
@settings(max_examples=150, deadline=None)
def test_risk_at_coverage_and_coverage_at_risk_are_consistent(case, c, r):
    conf, res = case
    risk = risk_at_coverage(conf, res, c)
    # the working point that achieves that risk has coverage >= c
    assert coverage_at_risk(conf, res, risk) >= c - 1e-12
    cov = coverage_at_risk(conf, res, r)
    if cov > 0:
        assert risk_at_coverage(conf, res, cov) <= r + 1e-12
        assert cov in set(risk_coverage_curve(conf, res).coverage.tolist())
    else:  # no working point reaches r
        assert risk_at_coverage(conf, res, 0.0) > r
    # monotone: asking for more coverage never lowers the achievable risk
    assert risk_at_coverage(conf, res, min(1.0, c + 0.2)) >= risk
    assert risk_at_coverage(conf, res, 1.0) == pytest.approx(np.mean(res), abs=1e-12)
    assert coverage_at_risk(conf, res, 1.0) == 1.0


# ----------------------------------------------------------------------------- inputs


def test_accepts_lists_torch_tensors_and_bools():
    expected = augrc(TIE_CONF, TIE_RES)
    t_conf = torch.tensor(TIE_CONF, requires_grad=True)
    assert augrc(t_conf, torch.tensor(TIE_RES)) == expected
    assert augrc(np.asarray(TIE_CONF, dtype=np.float32), np.asarray(TIE_RES, dtype=bool)) == expected
    assert isinstance(augrc(TIE_CONF, TIE_RES), float)
    assert isinstance(risk_at_coverage(TIE_CONF, TIE_RES, 0.5), float)


def test_infinite_confidences_sort_like_numbers():
    assert augrc([np.inf, 1.0, -np.inf], [0, 0, 1]) == augrc([3, 2, 1], [0, 0, 1])


@pytest.mark.parametrize(
    "conf, res, name",
    [
        ([], [], "confidences"),
        ([1.0, np.nan], [0, 1], "confidences"),
        ([1.0, 2.0], [0], "confidences"),
        ([[1.0, 2.0]], [[0, 1]], "confidences"),
        ([1.0, 2.0], [0, 1.5], "residuals"),
        ([1.0, 2.0], [0, -0.1], "residuals"),
        ([1.0, 2.0], [0, np.nan], "residuals"),
        (["a", "b"], [0, 1], "confidences"),
    ],
)
def test_bad_inputs_name_the_argument(conf, res, name):
    for fn in (augrc, aurc, risk_coverage_curve):
        with pytest.raises(InputError, match=name):
            fn(conf, res)
    with pytest.raises(ValueError):  # InputError is a ValueError
        augrc(conf, res)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "x"])
def test_bad_operating_points(value):
    with pytest.raises(InputError, match="coverage"):
        risk_at_coverage([1, 2], [0, 1], value)
    with pytest.raises(InputError, match="risk"):
        coverage_at_risk([1, 2], [0, 1], value)


def test_fast_for_100k_samples():
    rng = np.random.default_rng(0)
    n = 100_000
    conf = np.round(rng.normal(size=n), 3)  # many ties as well
    res = (rng.random(n) < 0.2).astype(float)
    start = time.perf_counter()
    augrc(conf, res)
    aurc(conf, res)
    risk_at_coverage(conf, res, 0.8)
    coverage_at_risk(conf, res, 0.1)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{elapsed:.2f}s for four metrics on 100k samples"
