"""The reported rule of selective mode (issue 11): a uniform gate with the plug-in rule
fit on tunev *is* Plug-in[Worst]; the proper-scoring-rule gate, cross-fitted over
S1/S2, trains, resumes and works for K > 2 groups."""

from __future__ import annotations

import pytest
import torch

from core.argse import load_predictor, model_metrics
from core.argse.baselines import baseline_metrics, fit_baselines
from core.argse.checkpoint import load_checkpoint
from core.argse.config import SelectiveConfig
from core.argse.selective import train_selective
from core.errors import InputError

from .conftest import make_bundle

TINY = dict(stageA_epochs=2, cycles=1, b1_epochs=1, batch_size=64)
KEYS = ("worst_group_error", "balanced_error", "worst_group_area", "balanced_area",
        "coverage", "augrc")


@pytest.mark.parametrize("k,cross_fit", [(2, False), (2, True), (3, True)])
def test_uniform_gate_with_the_plugin_rule_is_plugin_worst(k, cross_fit, tmp_path):
    bundle = make_bundle(n=600, num_classes=12, num_groups=k, num_experts=3)
    cfg = SelectiveConfig(**TINY, gate="uniform", final_rule="plugin", final_fit_split="tunev",
                          cross_fit=cross_fit, eval_coverage=0.7)
    res = train_selective(cfg, bundle, workdir=tmp_path)
    got = model_metrics(load_predictor(res.checkpoint_dir), bundle, "test")
    want = baseline_metrics(bundle, "test", 0.7, fit_baselines(bundle))["plugin_worst"]
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


@pytest.mark.parametrize("gate_loss,cross_fit", [("nll", True), ("balanced_nll", True),
                                                 ("balanced_nll", False)])
def test_nll_gate_for_three_groups(gate_loss, cross_fit, tmp_path):
    bundle = make_bundle(n=600, num_classes=12, num_groups=3, num_experts=3)
    cfg = SelectiveConfig(**TINY, gate_loss=gate_loss, cross_fit=cross_fit,
                          uniform_check=False)
    res = train_selective(cfg, bundle, workdir=tmp_path)
    ckpt = load_checkpoint(res.checkpoint_dir)
    assert ckpt["gate"] == "learned" and ckpt["num_groups"] == 3
    assert len(res.alpha) == len(res.mu) == 3
    test = model_metrics(load_predictor(res.checkpoint_dir), bundle, "test")
    assert test["coverage"] == pytest.approx(0.7, abs=0.005)
    # the gate moved away from uniform weights
    assert any(float(v.abs().max()) > 0 for n, v in ckpt["gating_net_state_dict"].items()
               if n.endswith("weight"))


def test_nll_gate_is_trained_in_stage_a_only(tmp_path):
    """The cycles do not touch a proper-scoring-rule gate: the rule is the same after
    Stage A and after the last cycle."""
    bundle = make_bundle(n=400, num_classes=10)
    cfg = SelectiveConfig(stageA_epochs=2, cycles=2, b1_epochs=2, batch_size=64,
                          uniform_check=False)
    reports: list[tuple[dict, str]] = []
    train_selective(cfg, bundle, lambda m, d: reports.append((m, d)), workdir=tmp_path)
    first, last = load_checkpoint(reports[0][1]), load_checkpoint(reports[-1][1])
    for name, v in first["gating_net_state_dict"].items():
        assert torch.equal(v, last["gating_net_state_dict"][name]), name
    assert torch.equal(first["alpha"], last["alpha"]) and torch.equal(first["mu"], last["mu"])


def test_cross_fit_resume_equals_uninterrupted_run(tmp_path):
    bundle = make_bundle(n=400, num_classes=10)
    cfg = SelectiveConfig(stageA_epochs=2, cycles=1, b1_epochs=1, batch_size=64)
    dirs: list[str] = []
    full = train_selective(cfg, bundle, lambda m, d: dirs.append(d), workdir=tmp_path / "a")
    resumed = train_selective(cfg, bundle, resume_from=dirs[0], workdir=tmp_path / "b")
    assert full.alpha == resumed.alpha and full.mu == resumed.mu and full.t == resumed.t
    a, b = load_checkpoint(full.checkpoint_dir), load_checkpoint(resumed.checkpoint_dir)
    for name, v in a["gating_net_state_dict"].items():
        assert torch.equal(v, b["gating_net_state_dict"][name]), name


def test_uniform_check_falls_back_to_the_uniform_mixture(tmp_path):
    """A gate wrecked by a huge learning rate, checked with tolerance 0: when the check
    falls back, the exported rule is exactly Plug-in[Worst]'s."""
    bundle = make_bundle(n=600, num_classes=12)
    cfg = SelectiveConfig(**TINY, lr=1.0, eval_coverage=0.7, uniform_check_tol=0.0)
    res = train_selective(cfg, bundle, workdir=tmp_path)
    ckpt = load_checkpoint(res.checkpoint_dir)
    if ckpt["gate"] == "uniform":
        got = model_metrics(load_predictor(res.checkpoint_dir), bundle, "test")
        want = baseline_metrics(bundle, "test", 0.7)["plugin_worst"]
        assert got["worst_group_error"] == pytest.approx(want["worst_group_error"], abs=1e-9)
    else:  # kept: then it was no worse on the area on tunev out of fold
        assert ckpt["gate"] == "learned"


def test_bad_gate_loss_and_tolerance_name_the_field():
    with pytest.raises(InputError, match="gate_loss"):
        SelectiveConfig(gate_loss="pinball")
    with pytest.raises(InputError, match="uniform_check_tol"):
        SelectiveConfig(uniform_check_tol=-0.1)
