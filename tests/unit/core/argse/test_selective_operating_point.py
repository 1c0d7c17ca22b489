"""A trial's target_coverage is a training knob: every selective run reports at its
eval_coverage, and the exported thresholds operate there."""

from __future__ import annotations

import pytest

from core.argse import load_predictor, model_metrics
from core.argse.config import SelectiveConfig
from core.argse.selective import train_selective

from .conftest import make_bundle

TINY = dict(stageA_epochs=1, cycles=1, b1_epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def bundle():
    return make_bundle(n=600, num_classes=12)


@pytest.mark.parametrize("target", [0.4, 0.9])
def test_every_target_coverage_reports_at_the_operating_point(bundle, target, tmp_path):
    reports = []
    cfg = SelectiveConfig(**TINY, target_coverage=target, eval_coverage=0.7)
    result = train_selective(cfg, bundle, lambda m, d: reports.append(m), workdir=tmp_path)
    assert len(reports) == 2
    for m in reports:
        assert m["coverage"] == pytest.approx(0.7, abs=0.005)
        assert m["coverage_gap"] <= 0.005
    # the exported thresholds operate near the point on unseen data (shift fit on tunev)
    pred = load_predictor(result.checkpoint_dir)
    assert pred.eval_coverage == 0.7
    test = model_metrics(pred, bundle, "test")
    assert test["coverage"] == pytest.approx(0.7, abs=0.005)
    assert abs(test["deployed_coverage"] - 0.7) < 0.1


def test_a_rule_cannot_win_by_rejecting_more(bundle, tmp_path):
    """Lower target coverages used to report lower error at their own coverage; at one
    operating point the reported coverage is the same whatever the knob."""
    covs = set()
    for target in (0.3, 0.95):
        cfg = SelectiveConfig(**TINY, target_coverage=target, eval_coverage=0.6,
                              final_rule="none", uniform_check=False)
        r = train_selective(cfg, bundle, None, workdir=tmp_path / str(target))
        covs.add(round(r.metrics["coverage"], 3))
    assert covs == {0.6}
