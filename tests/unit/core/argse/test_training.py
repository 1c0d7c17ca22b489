"""Training loops: reports, checkpoints, predictor round trip, resume, warm start."""

import json

import pytest
import torch

from core.argse import (
    PRETRAIN_FILE,
    SELECTIVE_FILE,
    PretrainConfig,
    SelectiveConfig,
    load_checkpoint,
    load_predictor,
    model_metrics,
    train_pretrain,
    train_selective,
)
from core.argse.checkpoint import LOGS_FILE, SEED_KEYS, SELECTIVE_KEYS, STATE_FILE
from core.errors import InputError

from .conftest import make_bundle

FAST_SEL = dict(stageA_epochs=1, cycles=4, b1_epochs=1, batch_size=64, hidden_dims=(16,),
                target_coverage=0.7, mu_grid_points=11)
REQUIRED = {"augrc", "aurc", "worst_group_error", "balanced_error", "coverage", "coverage_g0",
            "coverage_g1", "error_g0", "error_g1", "loss"}


@pytest.fixture(scope="module")
def bundle():
    return make_bundle(num_experts=3, num_classes=10, num_groups=2, n=200)


def test_pretrain_reports_each_epoch_and_writes_seed_checkpoint(bundle, tmp_path):
    seen = []
    cfg = PretrainConfig(epochs=3, batch_size=64, hidden_dims=(16,), target_coverage=0.8)
    res = train_pretrain(cfg, bundle, lambda m, d: seen.append((m, d)), device="cpu",
                         workdir=tmp_path)
    assert [m["epoch"] for m, _ in seen] == [1.0, 2.0, 3.0]
    assert all(REQUIRED <= set(m) for m, _ in seen)
    assert len({d for _, d in seen}) == 3  # a fresh directory per report
    ckpt = load_checkpoint(seen[-1][1])
    assert set(SEED_KEYS) <= set(ckpt) and ckpt["gating_feature_dim"] == 7 * 3 + 3
    assert res.checkpoint_file.endswith(PRETRAIN_FILE)
    assert set(res.temperatures) == set(bundle.expert_names)
    val = model_metrics(load_predictor(res.checkpoint_file, "cpu"), bundle, "val")
    assert val == {k: v for k, v in res.metrics.items() if k in val}
    assert abs(val["coverage"] - 0.8) < 0.12


def test_selective_checkpoint_keys_logs_and_predictor(bundle, tmp_path):
    seen = []
    res = train_selective(SelectiveConfig(**FAST_SEL), bundle, lambda m, d: seen.append(m),
                          device="cpu", workdir=tmp_path)
    assert [m["cycle"] for m in seen] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(REQUIRED <= set(m) for m in seen)
    d = res.checkpoint_dir
    ckpt = torch.load(f"{d}/{SELECTIVE_FILE}", weights_only=True)
    assert set(SELECTIVE_KEYS) <= set(ckpt)
    assert ckpt["mode"] == "selective_pinball" and len(ckpt["cycle_logs"]) == 5
    assert ckpt["alpha"].shape == ckpt["mu"].shape == ckpt["t_param"].shape == (2,)
    assert ckpt["pi_by_group"].shape == (2, 3)
    logs = json.loads(open(f"{d}/{LOGS_FILE}").read())
    assert [entry["cycle"] for entry in logs] == [0, 1, 2, 3, 4]
    # predictor round trip: same decisions as the in-memory rule, metrics as reported
    pred = load_predictor(d, "cpu")
    cls, acc, margin = pred.predict(bundle.splits["val"].logits)
    assert cls.shape == acc.shape == margin.shape == (200,) and acc.dtype == torch.bool
    thr = pred.t[pred.class_to_group[cls]]
    assert torch.equal(acc, margin > thr)
    assert model_metrics(pred, bundle, "val") == {
        k: v for k, v in res.metrics.items() if k not in ("loss", "cycle")}


def _final_state(res):
    ckpt = torch.load(f"{res.checkpoint_dir}/{SELECTIVE_FILE}", weights_only=True)
    return ckpt


def test_resume_equals_uninterrupted_run(bundle, tmp_path):
    cfg = SelectiveConfig(**FAST_SEL)
    full = train_selective(cfg, bundle, lambda m, d: None, device="cpu", workdir=tmp_path / "a")

    class Stop(Exception):
        pass

    dirs = []

    def stop_after_3(m, d):
        dirs.append(d)
        if m["cycle"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train_selective(cfg, bundle, stop_after_3, device="cpu", workdir=tmp_path / "b")
    resumed = train_selective(cfg, bundle, lambda m, d: None, resume_from=dirs[-1],
                              device="cpu", workdir=tmp_path / "c")
    a, b = _final_state(full), _final_state(resumed)
    for key in ("alpha", "mu", "t_param", "t_learned"):
        assert torch.equal(a[key], b[key]), key
    for name, tensor in a["gating_net_state_dict"].items():
        assert torch.equal(tensor, b["gating_net_state_dict"][name]), name
    assert full.metrics == resumed.metrics
    assert len(resumed.logs) == 5


def test_pretrain_resume_and_warm_start(bundle, tmp_path):
    cfg = PretrainConfig(epochs=3, batch_size=64, hidden_dims=(16,))
    dirs = []
    full = train_pretrain(cfg, bundle, lambda m, d: dirs.append(d), device="cpu",
                          workdir=tmp_path / "a")
    resumed = train_pretrain(cfg, bundle, None, resume_from=dirs[0], device="cpu",
                             workdir=tmp_path / "b")
    sa = load_checkpoint(full.checkpoint_file)["gating_net_state_dict"]
    sb = load_checkpoint(resumed.checkpoint_file)["gating_net_state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    sel = train_selective(SelectiveConfig(**{**FAST_SEL, "cycles": 1,
                                             "pretrain_checkpoint": full.checkpoint_file}),
                          bundle, device="cpu", workdir=tmp_path / "c")
    assert sel.temperatures == full.temperatures
    with pytest.raises(InputError, match="hidden_dims"):
        train_selective(SelectiveConfig(**{**FAST_SEL, "hidden_dims": (8,),
                                           "pretrain_checkpoint": full.checkpoint_file}),
                        bundle, device="cpu", workdir=tmp_path / "d")
    other = make_bundle(num_experts=2, num_classes=10, n=100)
    with pytest.raises(InputError, match="E=2"):
        train_selective(SelectiveConfig(**{**FAST_SEL, "pretrain_checkpoint":
                                           full.checkpoint_file}), other, device="cpu")


@pytest.mark.parametrize("margin,alpha_update,objective", [
    ("seed", "seed", "worst"), ("plugin", "paper", "balanced")])
def test_selective_k3_and_variants(margin, alpha_update, objective, tmp_path):
    b3 = make_bundle(num_experts=2, num_classes=10, num_groups=3, n=240, seed=1)
    cfg = SelectiveConfig(**{**FAST_SEL, "cycles": 2, "target_coverage": None,
                             "tau_groups": (0.8, 0.6, 0.5), "margin": margin,
                             "alpha_update": alpha_update, "mu_objective": objective,
                             "mu_eg_steps": 3, "group_priors": "uniform"})
    res = train_selective(cfg, b3, device="cpu", workdir=tmp_path)
    assert len(res.alpha) == len(res.mu) == len(res.t) == 3
    assert {"coverage_g2", "error_g2"} <= set(res.metrics)
    assert abs(sum(res.mu)) < 1e-5


def test_evaluate_rejects_mismatched_bundle(bundle, tmp_path):
    res = train_pretrain(PretrainConfig(epochs=1, batch_size=64, hidden_dims=(16,)), bundle,
                         device="cpu", workdir=tmp_path)
    from core.argse import evaluate_checkpoint

    wrong = make_bundle(num_experts=3, num_classes=12, n=50)
    with pytest.raises(InputError, match=r"E=3, C=12.*E=3, C=10"):
        evaluate_checkpoint(res.checkpoint_dir, wrong, "val", device="cpu")
    assert (tmp_path / "epoch_0001" / STATE_FILE).is_file()


def test_private_checkpoint_dirs_are_pruned_after_the_next_report(bundle):
    import os

    seen = []

    def report(m, d):
        seen.append(d)
        assert os.path.isdir(d)  # the callback can always read its directory

    res = train_pretrain(PretrainConfig(epochs=3, batch_size=64, hidden_dims=(16,)), bundle,
                         report, device="cpu")
    assert [os.path.isdir(d) for d in seen] == [False, False, True]
    assert res.checkpoint_dir == seen[-1]
