"""Stage-1 training: data split, config checks, resume equality, artefacts, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.bundles import FeatureBundle, FeatureSplit, save_bundle
from core.config import build_config, config_from_dict
from core.errors import InputError
from core.stage1 import (
    Stage1Config,
    evaluate_checkpoint,
    load_predictor,
    prepare_data,
    split_val,
    train_stage1,
)
from core.stage1.train import WarmupCosine

FAST = {"epochs": 3, "hidden_dim": 16, "batch_size": 64, "early_stop_patience": 0}


def _bundle(seed=0, n=(400, 240, 200), d=8, groups=True, c=2):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c))
    splits = {}
    for name, m in zip(("train", "val", "test"), n):
        x = rng.normal(size=(m, d)).astype(np.float32)
        y = np.argmax(x @ w + rng.normal(size=(m, c)) * 1.5, axis=1)
        g = (x[:, 0] > 0.8).astype(np.int64) if groups else None
        splits[name] = FeatureSplit(x, y, g)
    return FeatureBundle(num_classes=c, splits=splits,
                         group_names=("main", "edge") if groups else None)


def test_val_split_disjoint_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 30, 7])
    sel, cal = split_val(labels, 0.5, seed=3)
    assert len(np.intersect1d(sel, cal)) == 0
    assert sorted(np.concatenate([sel, cal]).tolist()) == list(range(len(labels)))
    for c in (0, 1, 2):
        assert abs(np.sum(labels[cal] == c) - 0.5 * np.sum(labels == c)) <= 1
    _, cal2 = split_val(labels, 0.5, seed=3)
    np.testing.assert_array_equal(cal, cal2)
    assert not np.array_equal(cal, split_val(labels, 0.5, seed=4)[1])
    data = prepare_data(_bundle(), 0.3, seed=0)
    assert len(data.splits["val_calib"]) == pytest.approx(72, abs=2)
    assert len(data.splits["val_select"]) + len(data.splits["val_calib"]) == 240


def test_config_contract_and_bad_values():
    cfg = Stage1Config()
    for name in ("loss", "gate_weight", "target_coverage", "sn_lambda", "sn_alpha", "hidden_dim",
                 "dropout", "label_smoothing", "lr", "weight_decay", "epochs", "warmup_epochs",
                 "batch_size", "grad_accum_steps", "max_grad_norm", "use_ema", "ema_decay",
                 "early_stop_patience", "class_weights", "calibrator", "odir_lambda", "odir_mu",
                 "gate_calibrator", "calib_fraction", "seed"):
        assert hasattr(cfg, name), name
    with pytest.raises(InputError, match="unknown config key"):
        config_from_dict(Stage1Config, {"gate_wieght": 1.0})
    for bad in (0.0, 1.2, -0.1):
        with pytest.raises(InputError, match="target_coverage"):
            config_from_dict(Stage1Config, {"target_coverage": bad})
    config_from_dict(Stage1Config, {"target_coverage": 1.0})
    with pytest.raises(InputError, match="calibrator"):
        build_config(Stage1Config, overrides=["calibrator=platt"])
    assert build_config(Stage1Config, overrides=["lr=0.01", "loss=selectivenet"]).lr == 0.01


def test_wrong_bundle_kind():
    from core.bundles import ExpertBundle, ExpertSplit

    eb = ExpertBundle(expert_names=("a",), class_counts=np.array([5, 5]),
                      class_to_group=np.array([0, 1]),
                      splits={s: ExpertSplit(np.zeros((2, 1, 2), np.float32), np.array([0, 1]))
                              for s in ("tunev", "val", "test")})
    with pytest.raises(InputError, match="stage1"):
        train_stage1(FAST, eb)


def test_warmup_cosine_schedule():
    s = WarmupCosine(4, 20)
    assert [round(s(i), 3) for i in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert s(4) == pytest.approx(1.0) and s(20) == pytest.approx(0.0)
    assert s(12) == pytest.approx(0.5)


def test_report_and_resume_equality(tmp_path):
    b = _bundle()
    cfg = {**FAST, "epochs": 4, "dropout": 0.2, "use_ema": True}
    seen = []
    full = train_stage1(cfg, b, report=lambda m, d: seen.append((m, d)), device="cpu",
                        workdir=tmp_path / "w1")
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3, 4]
    for key in ("augrc", "aurc", "risk_at_coverage", "coverage", "ece", "uncal_ece", "nll",
                "brier", "classwise_ece", "worst_group_error", "balanced_error", "loss",
                "accuracy", "gate_accuracy", "exit_accuracy"):
        assert key in seen[0][0], key

    # interrupted after epoch 2, resumed from that checkpoint
    ckpts = []

    class Stop(Exception):
        pass

    def stop_after_two(m, d):
        import shutil

        if m["epoch"] == 2:
            keep = tmp_path / "kept"
            shutil.copytree(d, keep)
            ckpts.append(keep)
            raise Stop

    with pytest.raises(Stop):
        train_stage1(cfg, b, report=stop_after_two, device="cpu", workdir=tmp_path / "w2")
    rest = []
    resumed = train_stage1(cfg, b, report=lambda m, d: rest.append(m), resume_from=ckpts[0],
                           device="cpu", workdir=tmp_path / "w3")
    assert [m["epoch"] for m in rest] == [3, 4]
    assert rest == [m for m, _ in seen[2:]]
    assert resumed.test == full.test and resumed.val == full.val
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k])
    with pytest.raises(InputError, match="different config"):
        train_stage1({**cfg, "lr": 0.5}, b, resume_from=ckpts[0])


def test_same_seed_same_numbers_and_early_stopping():
    b = _bundle(1)
    cfg = {**FAST, "epochs": 4, "early_stop_patience": 1, "lr": 0.05, "use_ema": False}
    r1 = train_stage1(cfg, b, device="cpu")
    r2 = train_stage1(cfg, b, device="cpu")
    assert r1.val == r2.val and r1.test == r2.test
    assert r1.epochs_run <= 4
    if r1.stopped_early:
        assert r1.epochs_run == r1.best_epoch + 1
    # the final val metrics are those reported at the best epoch
    best = r1.history[r1.best_epoch - 1]
    assert all(best[k] == v for k, v in r1.val.items())


def test_grad_accumulation_matches_big_batch():
    b = _bundle(2, n=(256, 100, 60))
    base = {**FAST, "epochs": 1, "dropout": 0.0, "use_ema": False, "class_weights": "none",
            "max_grad_norm": 0.0, "warmup_epochs": 0.0}
    big = train_stage1({**base, "batch_size": 64}, b, device="cpu")
    acc = train_stage1({**base, "batch_size": 32, "grad_accum_steps": 2}, b, device="cpu")
    for k, v in big.model.state_dict().items():
        torch.testing.assert_close(acc.model.state_dict()[k], v, atol=1e-5, rtol=1e-4)
    # an odd number of micro-batches: the last group is flushed, not dropped
    odd = train_stage1({**base, "batch_size": 48, "grad_accum_steps": 2}, b, device="cpu")
    assert odd.epochs_run == 1


@pytest.mark.parametrize("over", [
    {"loss": "selectivenet", "calibrator": "dirichlet", "gate_calibrator": "isotonic"},
    {"calibrator": "matrix", "class_weights": "none", "gate_input": "trunk+confidence"},
    {"calibrator": "vector"},
    {"calibrator": "none"},
])
def test_artifacts_predictor_and_evaluate_equal_training(tmp_path, over):
    b = _bundle(3, c=3, groups=False)
    res = train_stage1({**FAST, **over}, b, device="cpu")
    out = res.save(tmp_path / "run")
    kind = res.config.calibrator
    assert (out / "stage1_head.pth").is_file() and (out / f"calibrator_{kind}.pth").is_file()
    assert (out / "gate_calibrator.json").is_file() and (out / "config.json").is_file()
    ev = evaluate_checkpoint(out, b, "test", device="cpu")
    assert ev["metrics"] == res.test
    assert ev["baselines"] == res.baselines["test"]
    assert evaluate_checkpoint(out, b, "val", device="cpu")["metrics"] == res.val
    pred = load_predictor(out)
    x = b.splits["test"].features
    cls, probs, exit_ = pred.predict(x)
    assert cls.shape == (len(x),) and probs.shape == (len(x), 3) and exit_.dtype == bool
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert exit_.mean() == pytest.approx(res.test["exit_coverage"])
    assert np.array_equal(cls, probs.argmax(1))
    with pytest.raises(InputError, match="already exists"):
        res.save(out)


def test_cli_train_then_evaluate_identical(tmp_path, capsys):
    from tuning.cli import main

    data = tmp_path / "bundle"
    save_bundle(_bundle(4), data)
    out = tmp_path / "run"
    rc = main(["train", "stage1", "--data", str(data), "--out", str(out), "--device", "cpu",
               "--set", "epochs=2", "--set", "hidden_dim=16", "--json"])
    assert rc == 0
    trained = json.loads(capsys.readouterr().out)
    assert set(trained) >= {"val", "test", "baselines", "config", "checkpoint"}
    assert "softmax_confidence" in trained["baselines"]["test"]
    for key in ("risk_at_coverage", "ece", "nll", "brier", "accuracy", "augrc", "aurc",
                "worst_group_error", "balanced_error", "coverage"):
        assert key in trained["test"], key
    rc = main(["evaluate", str(out), "--data", str(data), "--split", "test", "--device", "cpu",
               "--json"])
    assert rc == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["split"] == "test"
    assert evaluated["metrics"] == trained["test"]


@pytest.mark.parametrize("argv,message", [
    (["--set", "bogus=1"], "unknown config key"),
    (["--set", "target_coverage=1.5"], "target_coverage"),
    (["--set", "target_coverage=0"], "target_coverage"),
])
def test_cli_bad_inputs_one_line(tmp_path, capsys, argv, message):
    from tuning.cli import main

    data = tmp_path / "bundle"
    save_bundle(_bundle(5, n=(40, 20, 20)), data)
    rc = main(["train", "stage1", "--data", str(data), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and message in err[0]


def test_cli_missing_bundle_and_wrong_kind(tmp_path, capsys):
    from tuning.cli import main

    rc = main(["train", "stage1", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1


def test_cli_wrong_bundle_kind_one_line(tmp_path, capsys):
    from core.bundles import ExpertBundle, ExpertSplit
    from tuning.cli import main

    eb = ExpertBundle(expert_names=("a",), class_counts=np.array([30, 30]),
                      class_to_group=np.array([0, 1]),
                      splits={s: ExpertSplit(np.zeros((4, 1, 2), np.float32),
                                             np.array([0, 1, 0, 1]))
                              for s in ("tunev", "val", "test")})
    save_bundle(eb, tmp_path / "argse")
    rc = main(["train", "stage1", "--data", str(tmp_path / "argse"), "--out",
               str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "stage1" in err[0], err


def test_calibrators_and_threshold_fit_on_val_calib_only():
    from core.stage1 import coverage_threshold, fit_calibration, model_outputs

    b = _bundle(6)
    # the training knob (0.7) and the operating point (0.6) differ: tau follows the latter
    res = train_stage1({**FAST, "epochs": 1, "target_coverage": 0.7, "eval_coverage": 0.6},
                       b, device="cpu")
    data = prepare_data(b, res.config.calib_fraction, res.config.seed)
    cal = data.splits["val_calib"]
    out = model_outputs(res.model, cal.features)
    refit = fit_calibration(out, cal.labels, calibrator=res.config.calibrator,
                            gate_calibrator=res.config.gate_calibrator, target_coverage=0.7,
                            eval_coverage=0.6, exit_score=res.config.exit_score,
                            odir_lambda=res.config.odir_lambda, odir_mu=res.config.odir_mu)
    assert refit.threshold == res.calibration.threshold
    assert refit.gate_calibrator.params == res.calibration.gate_calibrator.params
    scores = res.calibration.scores(out)
    assert np.mean(scores >= res.calibration.threshold) == round(0.6 * len(cal)) / len(cal)
    assert coverage_threshold(scores, 0.6) == res.calibration.threshold
