"""``core.argse.compat``: the AR-GSE repository's decision rule vs seltune's (issue 13).

The bundle is the repository's own ``outputs/logits_fixed`` layout, imported through
the CLI. A checkpoint the repository's rule can express (seed margin, no temperatures,
its feature and gate settings, per-group thresholds) must agree on every row; the
default ``plugin`` rule with fitted temperatures must not, and must say why.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.argse import SelectiveConfig, load_checkpoint, train_selective
from core.argse.checkpoint import save_torch
from core.argse.compat import (
    RepoRule,
    argse_repo_report,
    check_expert_order,
    repo_features,
    report_line,
)
from core.argse.features import GatingFeatureBuilder
from core.bundles import load_expert_bundle
from core.errors import InputError
from tuning.cli import main

from .repo_layouts import write_logits_fixed

TINY = dict(stageA_epochs=1, cycles=1, b1_epochs=1, batch_size=64, mu_grid_points=11)
#: what makes seltune's deployed rule the seed rule, where the config has these knobs
SEED_RULE = dict(margin="seed", fit_temperature=False, final_rule="none", uniform_check=False)


def _config(**kw) -> SelectiveConfig:
    known = {f.name for f in dataclasses.fields(SelectiveConfig)}
    return SelectiveConfig(**{k: v for k, v in {**TINY, **kw}.items() if k in known})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_logits_fixed(root / "outputs" / "logits_fixed")
    assert main(["data", "import", "--kind", "argse", "--from",
                 str(root / "outputs" / "logits_fixed"), "--out", str(root / "bundle"),
                 "--imbalance", "100", "--max-count", "500"]) == 0
    return load_expert_bundle(root / "bundle")


@pytest.fixture(scope="module")
def seed_ckpt(bundle, tmp_path_factory):
    return train_selective(_config(**SEED_RULE), bundle, device="cpu",
                           workdir=tmp_path_factory.mktemp("seed")).checkpoint_file


@pytest.fixture(scope="module")
def plugin_ckpt(bundle, tmp_path_factory):
    return train_selective(_config(margin="plugin", fit_temperature=True), bundle,
                           device="cpu", workdir=tmp_path_factory.mktemp("plugin")).checkpoint_file


def test_repo_features_equal_ours():
    x = torch.randn(64, 3, 10) * 3
    torch.testing.assert_close(repo_features(x), GatingFeatureBuilder(5)(x), atol=1e-6, rtol=0)


def test_seed_rule_without_temperatures_agrees_on_every_row(bundle, seed_ckpt):
    ckpt = load_checkpoint(seed_ckpt)
    assert ckpt["margin"] == "seed"
    report = argse_repo_report(seed_ckpt, bundle)
    assert report["agreement"] == {"val": 1.0, "test": 1.0}
    assert report["differs_because"] == []
    for split in ("val", "test"):
        m = report["metrics"][split]
        assert {"coverage", "worst_group_error", "balanced_error", "augrc"} <= set(m)
    assert report_line(report) == ("AR-GSE repository rule agrees with seltune on val 100.0%, "
                                   "test 100.0%")


def test_plugin_rule_with_temperatures_disagrees_and_says_why(bundle, plugin_ckpt):
    report = argse_repo_report(plugin_ckpt, bundle, splits=("val", "test", "nope"))
    assert set(report["agreement"]) == {"val", "test"}  # absent splits are skipped
    assert all(v < 1.0 for v in report["agreement"].values()), report["agreement"]
    reasons = report["differs_because"]
    assert reasons[0] == "margin=plugin (repo applies the seed margin: argmax alpha*eta)"
    assert reasons[1].startswith("temperatures fitted (ce_baseline=")
    assert reasons[1].endswith("; repo applies none)")
    assert "differs because: margin=plugin" in report_line(report)


def test_settings_the_repository_ignores_are_reasons(bundle, seed_ckpt, tmp_path):
    ckpt = load_checkpoint(seed_ckpt)
    ckpt.pop("_file")
    ckpt["top_k"] = 7
    ckpt["expert_names"] = ["logitadjust_baseline", "ce_baseline", "balsoftmax_baseline"]
    rule = RepoRule(ckpt)
    assert "top_k=7 (repo uses 5)" in rule.reasons
    assert rule.order == [1, 0, 2]  # the repository feeds ce first
    assert any(r.startswith("expert order logitadjust_baseline, ce_baseline") for r in rule.reasons)
    # a bundle in another order than the checkpoint is refused, naming both orders
    save_torch(ckpt, tmp_path / "gating_selective.ckpt")
    with pytest.raises(InputError, match=r"expert order \['ce_baseline', 'logitadjust_baseline', "
                       r"'balsoftmax_baseline'\] differs from the checkpoint's"):
        argse_repo_report(tmp_path, bundle)


def test_check_expert_order_messages():
    check_expert_order(["a", "b"], ["a", "b"], checkpoint="c.ckpt", bundle="B")
    with pytest.raises(InputError, match=r"re-import with --experts b,a"):
        check_expert_order(["b", "a"], ["a", "b"], checkpoint="c.ckpt", bundle="B")
    with pytest.raises(InputError, match=r"experts \['a', 'x'\] \(E=2\) are not the checkpoint's"):
        check_expert_order(["a", "b"], ["a", "x"], checkpoint="c.ckpt", bundle="B")
