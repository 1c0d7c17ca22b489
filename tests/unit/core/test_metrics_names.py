"""Metric names and directions live in one place (``core/metrics/names.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.metrics import (
    METRIC_DIRECTIONS,
    area_under_group_curves,
    group_error_curves,
    group_selective_report,
    metric_direction,
)

EXPECTED = {
    "augrc": "min", "aurc": "min", "worst_group_error": "min", "balanced_error": "min",
    "coverage": "max", "risk_at_coverage": "min", "coverage_at_risk": "max",
    "accuracy": "max", "ece": "min", "classwise_ece": "min", "nll": "min", "brier": "min",
    "loss": "min", "area_balanced_error": "min", "area_worst_group_error": "min",
    "balanced_area": "min", "worst_group_area": "min", "coverage_gap": "min",
    "gap_to_best_baseline": "min",
    "selective_error": "min",
}


def test_the_agreed_names_and_directions():
    for name, direction in EXPECTED.items():
        assert METRIC_DIRECTIONS[name] == direction, name
        assert metric_direction(name) == direction
    assert set(METRIC_DIRECTIONS.values()) == {"min", "max"}


@pytest.mark.parametrize(
    "name, direction",
    [
        ("coverage_g0", "max"),
        ("coverage_g12", "max"),
        ("error_g1", "min"),
        ("val/augrc", "min"),
        ("test/coverage_g1", "max"),
        ("uncal_ece", "min"),
        ("val_coverage_at_risk", "max"),  # longest suffix wins: not "risk"/"at_risk"
        ("val_risk_at_coverage", "min"),
        ("train_loss", "min"),
        ("val/uncal_classwise_ece", "min"),
        ("risk_at_coverage@0.8", "min"),
        ("val/coverage_at_risk@0.05", "max"),
    ],
)
def test_derived_names(name, direction):
    assert metric_direction(name) == direction


@pytest.mark.parametrize("name", ["foo", "val/foo", "coverage_gx", "error_", "", "augrcx"])
def test_unknown_name_is_named_and_known_ones_listed(name):
    with pytest.raises(InputError) as info:
        metric_direction(name)
    message = str(info.value)
    assert repr(name) in message
    assert "augrc" in message and "worst_group_error" in message
    assert isinstance(info.value, ValueError)


def test_every_name_the_metrics_write_resolves():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 50)
    preds = rng.integers(0, 6, 50)
    groups = labels // 2
    report = group_selective_report(rng.random(50) < 0.5, preds, labels, groups, 3)
    areas = area_under_group_curves(group_error_curves(rng.random(50), preds, labels, groups, 3))
    for name in [*report, *areas]:
        assert metric_direction(name) in ("min", "max")
        assert metric_direction(f"val/{name}") == metric_direction(name)
