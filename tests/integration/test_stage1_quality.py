"""Stage-1 quality on the default synthetic bundle, with the default config (no Ray).

docs/METHODS.md §4: the calibrated learned gate must be a better exit score
than max-softmax (lower test AUGRC), the coverage threshold fit on ``val_calib`` must
transfer to ``test`` (within 0.03 of the target) and post-hoc calibration must lower
ECE. One full default training (15 epochs on 6000 x 64 features): tens of seconds on a
busy CPU, hence ``slow``.
"""

from __future__ import annotations

import pytest

from core.bundles import load_feature_bundle
from core.stage1 import Stage1Config, train_stage1
from core.synth import ensure_default_bundle


@pytest.fixture(scope="module")
def result():
    bundle = load_feature_bundle(ensure_default_bundle("stage1"))
    return train_stage1(Stage1Config(), bundle, device="cpu")


@pytest.mark.slow
def test_gate_beats_softmax_confidence_on_test(result):
    gate = result.test["augrc"]
    softmax = result.baselines["test"]["softmax_confidence"]["augrc"]
    assert gate < softmax, (gate, softmax)


@pytest.mark.slow
def test_realised_coverage_near_target(result):
    target = result.config.target_coverage
    assert abs(result.test["coverage"] - target) <= 0.03, result.test["coverage"]


@pytest.mark.slow
def test_calibration_lowers_ece(result):
    assert result.test["ece"] < result.test["uncal_ece"], (result.test["ece"],
                                                           result.test["uncal_ece"])
