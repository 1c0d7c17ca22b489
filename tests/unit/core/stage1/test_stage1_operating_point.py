"""Stage-1 at one operating point: exit scores, thresholds, baselines, old checkpoints.

Issues 10 / 11: ``eval_coverage`` (the operating point) sets the exit threshold on
``val_calib`` and every headline metric, whatever the training knob
``target_coverage``; the exit score is ``gate | msp | combined`` and round-trips through
the artefacts; msp / DOCTOR / MaxLogit are reported beside it at the same coverage.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.stage1 import (
    Stage1Config,
    evaluate_checkpoint,
    fit_score_combiner,
    load_artifacts,
    load_predictor,
    model_outputs,
    prepare_data,
    stage1_baselines,
    train_stage1,
)
from core.stage1.config import upgrade_config_dict
from core.stage1.evaluation import BASELINE_NAMES, doctor_confidence
from core.stage1.gate_calibration import msp_logit

EXIT_SCORES = ("gate", "msp", "combined")
FAST = {"epochs": 3, "hidden_dim": 16, "batch_size": 64, "early_stop_patience": 0}


def _bundle(seed, n):
    """A small binary feature bundle with two per-sample groups (as in test_train)."""
    from core.bundles import FeatureBundle, FeatureSplit

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 2))
    splits = {}
    for name, m in zip(("train", "val", "test"), n):
        x = rng.normal(size=(m, 8)).astype(np.float32)
        y = np.argmax(x @ w + rng.normal(size=(m, 2)) * 1.5, axis=1)
        splits[name] = FeatureSplit(x, y, (x[:, 0] > 0.8).astype(np.int64))
    return FeatureBundle(num_classes=2, splits=splits, group_names=("main", "edge"))


@pytest.fixture(scope="module")
def bundle():
    return _bundle(11, n=(400, 300, 200))


@pytest.fixture(scope="module")
def trained(bundle):
    """One short run per exit score, target_coverage 0.6 and operating point 0.75."""
    return {es: train_stage1({**FAST, "exit_score": es, "target_coverage": 0.6,
                              "eval_coverage": 0.75}, bundle, device="cpu")
            for es in EXIT_SCORES}


@pytest.mark.parametrize("exit_score", EXIT_SCORES)
def test_threshold_from_eval_coverage_gives_it_on_val_calib(bundle, trained, exit_score):
    res = trained[exit_score]
    assert res.calibration.exit_score == exit_score
    assert res.calibration.eval_coverage == 0.75 and res.calibration.target_coverage == 0.6
    cal = prepare_data(bundle, res.config.calib_fraction, res.config.seed).splits["val_calib"]
    score = res.calibration.scores(model_outputs(res.model, cal.features))
    assert np.mean(score >= res.calibration.threshold) == round(0.75 * len(cal)) / len(cal)


@pytest.mark.parametrize("exit_score", EXIT_SCORES)
def test_headline_metrics_at_the_operating_point(trained, exit_score):
    res = trained[exit_score]
    for split in (res.val, res.test):
        assert split is not None
        assert abs(split["coverage"] - 0.75) <= 0.005
        assert split["coverage_gap"] == pytest.approx(abs(split["coverage"] - 0.75))
        for key in ("augrc", "aurc", "worst_group_error", "balanced_error", "coverage",
                    "coverage_gap", "worst_group_area", "balanced_area", "risk_at_coverage",
                    "ece", "nll", "exit_coverage", "exit_accuracy", "gate_accuracy"):
            assert key in split, key
    for name in (*BASELINE_NAMES, "softmax_confidence"):
        b = res.baselines["test"][name]
        assert abs(b["coverage"] - 0.75) <= 0.005, name
        assert set(b) >= {"augrc", "worst_group_error", "balanced_error", "worst_group_area",
                          "risk_at_coverage", "coverage_gap", "ece", "nll"}
    assert res.baselines["test"]["softmax_confidence"] == res.baselines["test"]["msp"]


def test_msp_exit_score_is_the_msp_baseline(trained):
    res = trained["msp"]
    for key in ("augrc", "aurc", "worst_group_error", "coverage", "worst_group_area"):
        assert res.test[key] == res.baselines["test"]["msp"][key], key


@pytest.mark.parametrize("target", [0.5, 0.95])
def test_coverage_does_not_follow_the_training_knob(bundle, target):
    res = train_stage1({**FAST, "epochs": 2, "loss": "selectivenet", "exit_score": "gate",
                        "target_coverage": target}, bundle, device="cpu")
    assert res.config.eval_coverage == 0.8
    for split in (res.val, res.test):
        assert split is not None and abs(split["coverage"] - 0.8) <= 0.005
    for h in res.history:  # every epoch's report too
        assert abs(h["coverage"] - 0.8) <= 0.005
        assert h["best_baseline_augrc"] == min(h[f"{b}_augrc"] for b in BASELINE_NAMES)


@pytest.mark.parametrize("exit_score", EXIT_SCORES)
def test_exit_score_round_trips_through_artifacts(tmp_path, bundle, trained, exit_score):
    res = trained[exit_score]
    out = res.save(tmp_path / exit_score)
    gate = json.loads((out / "gate_calibrator.json").read_text())
    assert gate["exit_score"] == exit_score and gate["eval_coverage"] == 0.75
    assert (gate["combiner"] is None) == (exit_score != "combined")
    art = load_artifacts(out)
    assert art.calibration == res.calibration
    for split, expected, base in (("test", res.test, res.baselines["test"]),
                                  ("val", res.val, res.baselines["val"])):
        ev = evaluate_checkpoint(out, bundle, split, device="cpu")
        assert ev["metrics"] == expected
        assert ev["baselines"] == base
    pred = load_predictor(out)
    x = bundle.splits["test"].features
    _, _, exit_, score = pred.predict_with_scores(x)
    assert pred.exit_score == exit_score
    np.testing.assert_array_equal(exit_, score >= res.calibration.threshold)
    assert exit_.mean() == pytest.approx(res.test["exit_coverage"])


def test_old_checkpoint_loads_as_it_behaved(tmp_path, bundle):
    """A directory written before eval_coverage / exit_score: gate exit, judged at its
    target_coverage, probability-scale thresholds."""
    res = train_stage1({**FAST, "epochs": 1, "exit_score": "gate", "target_coverage": 0.7,
                        "eval_coverage": 0.7}, bundle, device="cpu")
    out = res.save(tmp_path / "old")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["eval_coverage"], cfg["exit_score"]
    (out / "config.json").write_text(json.dumps(cfg))
    gate = json.loads((out / "gate_calibrator.json").read_text())
    for key in ("eval_coverage", "exit_score", "combiner", "score_scale"):
        del gate[key]
    gate["threshold"] = float(torch.sigmoid(torch.tensor(gate["threshold"],
                                                         dtype=torch.float64)))
    gate["softmax_threshold"] = float(torch.sigmoid(torch.tensor(gate["softmax_threshold"],
                                                                 dtype=torch.float64)))
    (out / "gate_calibrator.json").write_text(json.dumps(gate))
    art = load_artifacts(out)
    assert art.config.exit_score == "gate" and art.config.eval_coverage == 0.7
    assert art.calibration.exit_score == "gate" and art.calibration.eval_coverage == 0.7
    assert art.calibration.threshold == pytest.approx(res.calibration.threshold, abs=1e-9)
    ev = evaluate_checkpoint(out, bundle, "test", device="cpu")
    for key in ("augrc", "coverage", "worst_group_error", "worst_group_area"):
        assert ev["metrics"][key] == res.test[key], key
    assert upgrade_config_dict({}) == {"exit_score": "gate", "eval_coverage": 0.8}
    assert upgrade_config_dict({"target_coverage": 0.6})["eval_coverage"] == 0.6
    assert upgrade_config_dict({"eval_coverage": 0.9, "target_coverage": 0.6,
                                "exit_score": "msp"}) == {
        "eval_coverage": 0.9, "target_coverage": 0.6, "exit_score": "msp"}


def test_resume_from_checkpoint_predating_new_fields(tmp_path, bundle):
    from core.errors import InputError
    from core.stage1.train import STATE_FILE

    cfg = {**FAST, "epochs": 2}
    ckpts: list[str] = []
    full = train_stage1(cfg, bundle, lambda m, c: ckpts.append(c), device="cpu",
                        workdir=tmp_path / "w")
    state = torch.load(f"{ckpts[-1]}/{STATE_FILE}", weights_only=True)
    del state["config"]["eval_coverage"], state["config"]["exit_score"]
    torch.save(state, f"{ckpts[-1]}/{STATE_FILE}")
    # the caller's exit score and operating point decide the final calibration
    again = train_stage1({**cfg, "exit_score": "msp", "eval_coverage": 0.7}, bundle,
                         resume_from=ckpts[-1], device="cpu")
    assert again.best_epoch == full.best_epoch
    assert again.calibration.exit_score == "msp"
    assert again.test is not None and abs(again.test["coverage"] - 0.7) <= 0.005
    with pytest.raises(InputError, match="different config"):
        train_stage1({**cfg, "lr": 0.5}, bundle, resume_from=ckpts[-1], device="cpu")
    with pytest.raises(InputError, match="eval_coverage"):
        Stage1Config(eval_coverage=0.0)
    with pytest.raises(InputError, match="exit_score"):
        Stage1Config(exit_score="doctor")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- baselines


def test_baseline_signs_on_a_known_answer_case():
    """Sample 0: a huge max logit but a near tie (msp 0.52), wrong; sample 1: a small max
    logit with a clear margin (msp 0.98), right. At coverage 0.5 msp and DOCTOR keep
    sample 1 (error 0); MaxLogit keeps sample 0 (error 1)."""
    logits = np.array([[10.0, 9.9], [1.0, -3.0]])
    labels = np.array([1, 0])
    out = stage1_baselines(logits, logits, labels, None, coverage=0.5)
    assert out["msp"]["selective_error"] == 0.0 and out["msp"]["coverage"] == 0.5
    assert out["doctor"]["selective_error"] == 0.0
    assert out["maxlogit"]["selective_error"] == 1.0
    assert out["msp"]["augrc"] < out["maxlogit"]["augrc"]
    # three classes: DOCTOR (sum p^2) and msp disagree; each keeps its own confident one
    p = np.array([[0.5, 0.5 - 1e-9, 1e-9], [0.55, 0.225, 0.225]])
    z = np.log(p)
    labels3 = np.array([0, 1])  # DOCTOR's favourite is right, msp's is wrong
    out3 = stage1_baselines(z, z, labels3, None, coverage=0.5)
    assert out3["doctor"]["selective_error"] == 0.0
    assert out3["msp"]["selective_error"] == 1.0


def test_doctor_confidence_orders_by_sum_p_squared_without_saturating():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 4)) * 2.0
    p = torch.softmax(torch.as_tensor(z), dim=1).numpy()
    ref = -np.log(1.0 - (p ** 2).sum(axis=1))
    np.testing.assert_allclose(doctor_confidence(z), ref, rtol=1e-9)
    big = np.array([[50.0, 0.0], [60.0, 0.0], [70.0, 0.0, ]])
    d, m = doctor_confidence(big), msp_logit(big)
    assert np.all(np.isfinite(d)) and np.all(np.diff(d) > 0)
    np.testing.assert_allclose(m, [50.0, 60.0, 70.0])


def test_combiner_learns_which_evidence_predicts_correctness():
    rng = np.random.default_rng(1)
    n = 3000
    gate = rng.normal(size=n)
    z = np.stack([rng.normal(size=n) * 2.0, np.zeros(n)], axis=1)
    msp = msp_logit(z)
    # correctness depends on the gate only: the fit moves weight from msp to the gate
    correct = (rng.random(n) < 1.0 / (1.0 + np.exp(-2.0 * gate))).astype(float)
    comb = fit_score_combiner(gate, msp, correct)
    assert comb.w_gate > 1.0 and abs(comb.w_msp) < 0.3
    # correctness follows msp: the gate gets (almost) no weight
    correct = (rng.random(n) < 1.0 / (1.0 + np.exp(-msp))).astype(float)
    comb = fit_score_combiner(gate, msp, correct)
    assert abs(comb.w_gate) < 0.2 and comb.w_msp == pytest.approx(1.0, abs=0.25)
    # all correct: nothing to fit, msp itself
    assert fit_score_combiner(gate, msp, np.ones(n)).to_json() == {
        "w_gate": 0.0, "w_msp": 1.0, "bias": 0.0}
