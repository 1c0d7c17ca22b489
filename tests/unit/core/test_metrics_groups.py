"""Group-aware selective metrics: per-group coverage and error, balanced / worst-group
error, their curves over rejection rates and the areas (docs/METHODS.md §3, §5)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from core.metrics import (
    DEFAULT_REJECTION_RATES,
    area_under_group_curves,
    group_error_curves,
    group_selective_report,
    metric_direction,
)

# Eight samples, classes 0..3, class_to_group = [0, 0, 1, 1]:
#   i  group  correct  accept  conf
#   0    0      yes     yes    0.9
#   1    0      no      yes    0.8
#   2    0      yes     yes    0.7
#   3    0      no      no     0.1
#   4    1      no      yes    0.6
#   5    1      yes     no     0.2
#   6    1      no      no     0.3
#   7    1      yes     yes    0.5
LABELS = np.array([0, 1, 0, 1, 2, 3, 2, 3])
PREDS = np.array([0, 0, 0, 0, 3, 3, 3, 3])
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
ACCEPT = np.array([1, 1, 1, 0, 1, 0, 0, 1], dtype=bool)
CONF = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.2, 0.3, 0.5])


def test_report_two_groups_known_answer():
    # g0: 4 samples, 3 accepted (0, 1, 2), 1 wrong -> cov 3/4, e0 = 1/3
    # g1: 4 samples, 2 accepted (4, 7), 1 wrong    -> cov 1/2, e1 = 1/2
    # overall: 5/8 accepted, 2 of them wrong
    report = group_selective_report(ACCEPT, PREDS, LABELS, GROUPS, 2)
    assert report == pytest.approx({
        "coverage": 5 / 8,
        "selective_error": 2 / 5,
        "balanced_error": (1 / 3 + 1 / 2) / 2,
        "worst_group_error": 1 / 2,
        "coverage_g0": 3 / 4,
        "coverage_g1": 1 / 2,
        "error_g0": 1 / 3,
        "error_g1": 1 / 2,
        "empty_groups": 0.0,
    }, abs=1e-15)
    assert all(isinstance(v, float) for v in report.values())
    for name in report:  # every name it writes has a direction
        metric_direction(name)


def test_report_three_groups_known_answer():
    # add group 2: sample 8 (correct, accepted), sample 9 (wrong, rejected)
    labels = np.r_[LABELS, 4, 4]
    preds = np.r_[PREDS, 4, 5]
    groups = np.r_[GROUPS, 2, 2]
    accept = np.r_[ACCEPT, True, False]
    report = group_selective_report(accept, preds, labels, groups, 3)
    assert report == pytest.approx({
        "coverage": 6 / 10,
        "selective_error": 2 / 6,
        "balanced_error": (1 / 3 + 1 / 2 + 0) / 3,
        "worst_group_error": 1 / 2,
        "coverage_g0": 3 / 4, "coverage_g1": 1 / 2, "coverage_g2": 1 / 2,
        "error_g0": 1 / 3, "error_g1": 1 / 2, "error_g2": 0.0,
        "empty_groups": 0.0,
    }, abs=1e-15)


def test_group_without_accepted_sample_counts_as_error_one():
    # group 2 present but fully rejected; group 3 has no sample at all
    labels = np.r_[LABELS, 4, 4]
    preds = np.r_[PREDS, 4, 5]
    groups = np.r_[GROUPS, 2, 2]
    accept = np.r_[ACCEPT, False, False]
    report = group_selective_report(accept, preds, labels, groups, 4)
    assert report["coverage_g2"] == 0.0 and report["error_g2"] == 1.0
    assert report["coverage_g3"] == 0.0 and report["error_g3"] == 1.0
    assert report["empty_groups"] == 2.0
    assert report["worst_group_error"] == 1.0
    assert report["balanced_error"] == pytest.approx((1 / 3 + 1 / 2 + 1 + 1) / 4)
    assert report["coverage"] == 5 / 10


def test_nothing_accepted():
    report = group_selective_report(np.zeros(8, bool), PREDS, LABELS, GROUPS, 2)
    assert report["coverage"] == 0.0
    assert report["selective_error"] == 1.0
    assert report["worst_group_error"] == report["balanced_error"] == 1.0
    assert report["empty_groups"] == 2.0


def test_all_correct_all_accepted():
    report = group_selective_report(np.ones(8, bool), LABELS, LABELS, GROUPS, 2)
    assert report["selective_error"] == report["worst_group_error"] == 0.0
    assert report["coverage"] == report["coverage_g0"] == report["coverage_g1"] == 1.0


def test_report_accepts_torch_and_int_accept():
    report = group_selective_report(
        torch.tensor(ACCEPT.astype(int)), torch.tensor(PREDS), torch.tensor(LABELS),
        torch.tensor(GROUPS), 2,
    )
    assert report == group_selective_report(ACCEPT, PREDS, LABELS, GROUPS, 2)


# ----------------------------------------------------------------------------- curves


def test_curves_known_answer():
    rates = [0.0, 3 / 8, 0.5, 1.0]
    curves = group_error_curves(CONF, PREDS, LABELS, GROUPS, 2, rejection_rates=rates)
    # r = 0: accept all: e0 = 2/4, e1 = 2/4
    # r = 3/8: reject 3 least confident (0.1, 0.2, 0.3) -> the hand report above
    # r = 1/2: accept 0.9 0.8 0.7 0.6: e0 = 1/3, e1 = 1/1
    # r = 1: nothing accepted -> errors 1
    np.testing.assert_allclose(curves["coverage"], [1.0, 5 / 8, 0.5, 0.0])
    np.testing.assert_allclose(curves["balanced_error"], [0.5, 5 / 12, 2 / 3, 1.0])
    np.testing.assert_allclose(curves["worst_group_error"], [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curves["group_error"], [[0.5, 0.5], [1 / 3, 0.5], [1 / 3, 1], [1, 1]])
    np.testing.assert_allclose(curves["group_coverage"], [[1, 1], [0.75, 0.5], [0.75, 0.25], [0, 0]])
    np.testing.assert_allclose(curves["selective_error"], [0.5, 0.4, 0.5, 1.0])
    np.testing.assert_array_equal(curves["rejection_rates"], rates)


def test_curves_at_rejection_zero_equal_full_coverage_report():
    rng = np.random.default_rng(0)
    n = 500
    labels = rng.integers(0, 10, n)
    preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 10, n))
    groups = (labels >= 7).astype(int) + (labels >= 9).astype(int)  # 3 groups
    curves = group_error_curves(rng.normal(size=n), preds, labels, groups, 3)
    full = group_selective_report(np.ones(n, bool), preds, labels, groups, 3)
    assert curves["rejection_rates"][0] == 0.0
    assert curves["coverage"][0] == 1.0
    assert curves["balanced_error"][0] == pytest.approx(full["balanced_error"], abs=1e-15)
    assert curves["worst_group_error"][0] == pytest.approx(full["worst_group_error"], abs=1e-15)
    assert curves["selective_error"][0] == pytest.approx(full["selective_error"], abs=1e-15)


def test_default_rates():
    np.testing.assert_allclose(DEFAULT_REJECTION_RATES, np.linspace(0, 0.8, 81))
    curves = group_error_curves(CONF, PREDS, LABELS, GROUPS, 2)
    assert len(curves["balanced_error"]) == 81


def test_rejection_count_is_floor_of_rate_times_n_without_rounding_noise():
    n = 100
    conf = np.arange(n, dtype=float)
    labels = np.zeros(n, int)
    # 0.29 * 100 = 28.999999999999996 in floating point: must still reject 29
    curves = group_error_curves(conf, labels, labels, labels, 1, rejection_rates=[0.29, 0.295])
    np.testing.assert_allclose(curves["coverage"], [0.71, 0.71])


def test_tie_block_straddling_the_cut_is_accepted_whole():
    conf = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    labels = np.array([0, 0, 1, 1, 1])
    preds = np.array([0, 0, 0, 0, 1])
    groups = labels.copy()
    curves = group_error_curves(conf, preds, labels, groups, 2, rejection_rates=[0.2, 0.4, 0.6, 0.8])
    # r=0.2 rejects the 1.0; r=0.4 and 0.6 cut into the block of 2.0s -> accepted whole
    np.testing.assert_allclose(curves["coverage"], [0.8, 0.8, 0.8, 0.2])
    np.testing.assert_allclose(curves["group_error"][1], [0.0, 1.0])


cases = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6), min_size=n, max_size=n),  # confidences with ties
        st.lists(st.integers(0, 5), min_size=n, max_size=n),  # labels
        st.lists(st.integers(0, 5), min_size=n, max_size=n),  # predictions
        st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),  # rates
    )
)


@given(cases)
@settings(max_examples=120, deadline=None)
def test_curves_equal_the_report_at_the_percentile_threshold(case):
    conf, labels, preds, rates = (np.asarray(x) for x in case)
    groups = (labels >= 2).astype(int) + (labels >= 4).astype(int)  # K = 3
    curves = group_error_curves(conf, preds, labels, groups, 3, rejection_rates=rates)
    order = np.sort(conf)[::-1]
    n = len(conf)
    for i, r in enumerate(rates):
        n_keep = n - int(np.floor(r * n + 1e-9))
        accept = conf >= order[n_keep - 1] if n_keep > 0 else np.zeros(n, bool)
        report = group_selective_report(accept, preds, labels, groups, 3)
        assert curves["coverage"][i] == pytest.approx(report["coverage"])
        assert curves["coverage"][i] >= 1 - r - 1e-12  # never rejects more than asked
        assert curves["balanced_error"][i] == pytest.approx(report["balanced_error"])
        assert curves["worst_group_error"][i] == pytest.approx(report["worst_group_error"])
        for g in range(3):
            assert curves["group_error"][i, g] == pytest.approx(report[f"error_g{g}"])
            assert curves["group_coverage"][i, g] == pytest.approx(report[f"coverage_g{g}"])


def test_curves_with_one_group_per_class():
    # K = C = 40: the many-groups path agrees with the report at every rate
    rng = np.random.default_rng(5)
    n = 600
    labels = rng.integers(0, 40, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 40, n))
    conf = rng.normal(size=n)
    rates = [0.0, 0.25, 0.5, 0.9]
    curves = group_error_curves(conf, preds, labels, labels, 40, rejection_rates=rates)
    for i, r in enumerate(rates):
        keep = n - int(np.floor(r * n + 1e-9))
        accept = conf >= np.sort(conf)[::-1][keep - 1]
        report = group_selective_report(accept, preds, labels, labels, 40)
        np.testing.assert_allclose(curves["group_error"][i],
                                   [report[f"error_g{g}"] for g in range(40)], atol=1e-15)
        assert curves["worst_group_error"][i] == report["worst_group_error"]


# ----------------------------------------------------------------------------- areas


def test_area_known_answers():
    curves = {
        "rejection_rates": np.array([0.0, 0.4, 0.8]),
        "balanced_error": np.array([0.6, 0.4, 0.2]),  # linear: mean 0.4
        "worst_group_error": np.array([1.0, 1.0, 0.0]),  # (0.4·1 + 0.4·0.5) / 0.8 = 0.75
    }
    assert area_under_group_curves(curves) == pytest.approx(
        {"balanced_area": 0.4, "worst_group_area": 0.75}, abs=1e-15)


def test_area_of_constant_curve_is_the_constant_over_any_range():
    rates = np.linspace(0.1, 0.5, 9)
    curves = {"rejection_rates": rates, "balanced_error": np.full(9, 0.3),
              "worst_group_error": np.full(9, 0.7)}
    out = area_under_group_curves(curves)
    assert out["balanced_area"] == pytest.approx(0.3)
    assert out["worst_group_area"] == pytest.approx(0.7)


def test_area_of_real_curves_is_between_min_and_max():
    rng = np.random.default_rng(2)
    n = 2000
    labels = rng.integers(0, 4, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 4, n))
    curves = group_error_curves(rng.normal(size=n), preds, labels, labels % 2, 2)
    area = area_under_group_curves(curves)
    for key, name in (("balanced_error", "balanced_area"),
                      ("worst_group_error", "worst_group_area")):
        assert curves[key].min() <= area[name] <= curves[key].max()
    assert area["balanced_area"] <= area["worst_group_area"]
    for name in area:
        assert metric_direction(name) == "min"


@pytest.mark.parametrize(
    "curves, field",
    [
        ({"rejection_rates": [0.0], "balanced_error": [0.1], "worst_group_error": [0.1]},
         "rejection_rates"),
        ({"rejection_rates": [0.2, 0.1], "balanced_error": [0.1, 0.1],
          "worst_group_error": [0.1, 0.1]}, "rejection_rates"),
        ({"rejection_rates": [0.0, 0.1], "balanced_error": [0.1, 0.1]}, "worst_group_error"),
        ({"rejection_rates": [0.0, 0.1], "balanced_error": [0.1],
          "worst_group_error": [0.1, 0.2]}, "balanced_error"),
    ],
)
def test_area_bad_input(curves, field):
    with pytest.raises(InputError, match=field):
        area_under_group_curves(curves)


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"label_groups": np.r_[GROUPS[:-1], 2]}, "label_groups"),
        ({"label_groups": np.r_[GROUPS[:-1], -1]}, "label_groups"),
        ({"num_groups": 0}, "num_groups"),
        ({"num_groups": 2.0}, "num_groups"),
        ({"labels": LABELS[:-1]}, "length mismatch"),
        ({"predictions": PREDS + 0.5}, "predictions"),
        ({"accept": np.r_[ACCEPT[:-1].astype(int), 2]}, "accept"),
        ({"accept": []}, "accept"),
    ],
)
def test_report_bad_input(kwargs, field):
    args = {"accept": ACCEPT, "predictions": PREDS, "labels": LABELS,
            "label_groups": GROUPS, "num_groups": 2, **kwargs}
    with pytest.raises(InputError, match=field):
        group_selective_report(**args)


def test_curves_bad_input():
    with pytest.raises(InputError, match="confidences"):
        group_error_curves(np.r_[CONF[:-1], np.nan], PREDS, LABELS, GROUPS, 2)
    with pytest.raises(InputError, match="rejection_rates"):
        group_error_curves(CONF, PREDS, LABELS, GROUPS, 2, rejection_rates=[0.1, 1.2])
    with pytest.raises(InputError, match="length mismatch"):
        group_error_curves(CONF[:-1], PREDS, LABELS, GROUPS, 2)


def test_curves_fast_for_100k_samples():
    rng = np.random.default_rng(0)
    n = 100_000
    labels = rng.integers(0, 100, n)
    preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 100, n))
    conf = np.round(rng.normal(size=n), 3)
    start = time.perf_counter()
    curves = group_error_curves(conf, preds, labels, (labels >= 50).astype(int), 2)
    area_under_group_curves(curves)
    group_selective_report(conf > 0, preds, labels, (labels >= 50).astype(int), 2)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{elapsed:.2f}s on 100k samples"
