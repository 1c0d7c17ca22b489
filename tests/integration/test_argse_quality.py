"""AR-GSE selective quality on the default synthetic bundle (no Ray; slow).

At its target coverage the selective model's worst-group error on ``test`` must be
lower than Chow's rule on the best single expert and on the uniform mixture, at the
same coverage, and the realised coverage must be within 0.03 of the target.
"""

import pytest

from core.argse import SelectiveConfig, load_predictor, model_metrics, train_selective
from core.argse.baselines import baseline_metrics
from core.bundles import load_expert_bundle
from core.synth import ensure_default_bundle

TARGET = 0.7


@pytest.mark.slow
def test_selective_beats_chow_at_target_coverage(tmp_path):
    bundle = load_expert_bundle(ensure_default_bundle("argse"))
    res = train_selective(SelectiveConfig(target_coverage=TARGET), bundle, device="cpu",
                          workdir=tmp_path)
    test = model_metrics(load_predictor(res.checkpoint_file, "cpu"), bundle, "test")
    assert abs(test["coverage"] - TARGET) <= 0.03
    base = baseline_metrics(bundle, "test", test["coverage"])
    best_expert = min(base[f"chow:{e}"]["worst_group_error"] for e in bundle.expert_names)
    assert test["worst_group_error"] < best_expert
    assert test["worst_group_error"] < base["chow:mixture"]["worst_group_error"]
