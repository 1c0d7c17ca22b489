"""One operating point per sweep: never searched, feasibility, baselines beside trials,
warm-start points (no Ray: the pure parts of tuning/)."""

from __future__ import annotations

import json

import pytest

from core.errors import InputError
from search_spaces import load_space
from tuning.cli import main
from tuning.experiment.records import Ledger, SweepStatus
from tuning.results.baselines import gap, strongest, verdicts
from tuning.results.selection import best_iteration, feasible, select_best
from tuning.sweep.options import SweepOptions
from tuning.sweep.prepare import _operating_point, warm_start_points
from tuning.sweep.searcher import CoverageConstraint
from tuning.trainables import get_trainable


def _space(name="argse-selective"):
    info = get_trainable("argse-selective")
    return info, load_space(name, trainable=info.name, known_keys=info.config_fields())


def test_the_operating_point_comes_from_coverage_or_the_default_and_is_never_searched(tmp_path):
    info, space = _space()
    assert _operating_point(SweepOptions(), info, space, {}) == 0.7
    assert _operating_point(SweepOptions(coverage=0.6), info, space, {}) == 0.6
    assert _operating_point(SweepOptions(), info, space, {"eval_coverage": 0.5}) == 0.5
    with pytest.raises(InputError, match="contradicts --coverage"):
        _operating_point(SweepOptions(coverage=0.6), info, space, {"eval_coverage": 0.5})
    with pytest.raises(InputError, match="--coverage"):
        _operating_point(SweepOptions(coverage=1.5), info, space, {})
    searched = tmp_path / "s.json"
    searched.write_text(json.dumps({"trainable": "argse-selective", "params": [
        {"name": "eval_coverage", "type": "float", "low": 0.5, "high": 0.9}]}))
    with pytest.raises(InputError, match="not a searched parameter"):
        _operating_point(SweepOptions(), info, load_space(str(searched)), {})
    assert get_trainable("stage1").default_coverage == 0.8
    assert get_trainable("argse-pretrain").coverage_key == "target_coverage"


def test_bad_coverage_on_the_command_line_is_one_line(capsys, tmp_path):
    assert main(["sweep", "--coverage", "0", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--coverage" in err and "(0, 1]" in err
    assert not any(tmp_path.iterdir())


def test_a_report_off_the_operating_point_is_never_best():
    history = {"1": {"worst_group_error": 0.10, "coverage": 0.40, "coverage_gap": 0.30,
                     "checkpoint_dir_name": "c1"},
               "2": {"worst_group_error": 0.25, "coverage": 0.70, "coverage_gap": 0.0,
                     "checkpoint_dir_name": "c2"}}
    assert best_iteration(history, "worst_group_error", "min")[0] == 1  # no operating point
    assert best_iteration(history, "worst_group_error", "min", 0.02)[0] == 2
    assert not feasible(history["1"], 0.02) and feasible(history["2"], 0.02)
    assert feasible({"worst_group_error": 0.1}, 0.02)  # older reports carry no gap
    status = SweepStatus.from_dict(
        {"name": "x", "path": "p", "metric": "worst_group_error", "mode": "min",
         "trials": [{"trial_id": "a", "status": "TERMINATED"},
                    {"trial_id": "b", "status": "TERMINATED"}]})
    ledger = Ledger.from_dict({"trials": {"a": {"history": {"1": history["1"]}},
                                          "b": {"history": {"2": history["2"]}}}})
    assert select_best(status, ledger, "worst_group_error", "min", 0.02)[0] == "b"
    assert select_best(status, ledger, "worst_group_error", "min", None)[0] == "a"
    with pytest.raises(InputError, match="operating point"):
        select_best(SweepStatus("x", "p", "worst_group_error", "min",
                                trials=status.trials[:1]), ledger,
                    "worst_group_error", "min", 0.02)


def test_the_coverage_constraint_is_feasible_iff_the_gap_is_small():
    class T:
        def __init__(self, attrs):
            self.user_attrs = attrs

    c = CoverageConstraint(0.02)
    assert c(T({"coverage_gap": 0.0}))[0] <= 0
    assert c(T({"coverage_gap": 0.02}))[0] <= 0
    assert c(T({"coverage_gap": 0.05}))[0] > 0
    assert c(T({}))[0] <= 0


def test_the_gap_to_the_strongest_baseline_is_negative_when_the_trial_is_better():
    values = {"chow:mixture": {"worst_group_error": 0.6, "augrc": 0.13},
              "plugin_worst": {"worst_group_error": 0.3, "augrc": 0.14}}
    b_min = {"metric": "worst_group_error", "mode": "min",
             "best": strongest(values, "worst_group_error", "min")}
    assert b_min["best"] == {"name": "plugin_worst", "value": 0.3}
    assert gap(0.25, b_min) == pytest.approx(-0.05)
    assert gap(0.35, b_min) == pytest.approx(0.05)
    b_max = {"metric": "coverage_at_risk", "mode": "max", "best": {"name": "x", "value": 0.5}}
    assert gap(0.6, b_max) == pytest.approx(-0.1)  # higher is better: still negative
    assert gap(None, b_min) is None and gap(0.2, None) is None


def test_the_verdict_names_every_baseline_and_says_when_one_is_not_beaten():
    model = {"val": {"worst_group_error": 0.29}, "test": {"worst_group_error": 0.32}}
    base = {"val": {"plugin_worst": {"worst_group_error": 0.30},
                    "chow:mixture": {"worst_group_error": 0.60}},
            "test": {"plugin_worst": {"worst_group_error": 0.31},
                     "chow:mixture": {"worst_group_error": 0.61}}}
    val, test = verdicts(model, base, "worst_group_error", "min", 0.7)
    assert val.startswith("val:") and "beats every baseline" in val and "coverage 0.7" in val
    assert test.startswith("test:") and "does NOT beat 1 of 2" in test
    assert "plugin_worst 0.31 (NOT beaten)" in test


def test_warm_start_points_are_the_defaults_then_the_baseline_then_the_user_file(tmp_path):
    from core.argse.config import SelectiveConfig

    info, space = _space()
    cfg = SelectiveConfig()
    points = warm_start_points(info, space, cfg, None)
    assert points[0] == {k: getattr(cfg, k) for k in space.names}  # the seed's defaults
    # the uniform gate with the plug-in rule (= Plug-in[Worst]), keys the space does
    # not search included
    assert points[1] == {**points[0], "gate": "uniform", "final_rule": "plugin",
                         "final_fit_split": "tunev", "mu_objective": "worst"}
    f = tmp_path / "q.yaml"
    f.write_text("- {gate_loss: nll, lr: 0.001}\n")
    assert warm_start_points(info, space, cfg, str(f))[-1] == {"gate_loss": "nll", "lr": 0.001}
    f.write_text("- {kapa: 50.0}\n")
    with pytest.raises(InputError, match=r"\[0\]\.kapa.*not a searched key"):
        warm_start_points(info, space, cfg, str(f))
    f.write_text("- {lr: 5.0}\n")
    with pytest.raises(InputError, match="inside the search space"):
        warm_start_points(info, space, cfg, str(f))
    # a sweep that fixes a baseline key otherwise (--compat argse-repo: final_rule=none)
    # cannot express the baseline: only the defaults are enqueued
    seed_info, seed_space = _space("argse-selective-seed")
    assert len(warm_start_points(seed_info, seed_space, cfg, None)) == 1


def test_enqueued_points_fix_keys_outside_the_space_for_their_trial_only():
    import optuna

    from tuning.sweep.searcher import SpaceFunction, enqueue_points

    _, space = _space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = SpaceFunction(space.to_dict())
    enqueue_points(study, [{"lr": 0.001}, {"lr": 0.002, "gate": "uniform"}], space.to_dict())
    configs = []
    for _ in range(3):
        trial = study.ask()
        fixed = fn(trial)  # searched values are suggested on the trial (Ray captures them)
        configs.append({**trial.params, **fixed})
        study.tell(trial, 0.5)
    assert configs[0]["lr"] == 0.001 and "gate" not in configs[0]
    assert configs[1]["lr"] == 0.002 and configs[1]["gate"] == "uniform"
    assert "gate" not in configs[2]  # sampled trials never get it


def test_a_stage1_report_is_compared_with_its_own_baselines():
    sweep = {"metric": "augrc", "mode": "min", "best": {"name": "msp", "value": 0.5}}
    report = {"augrc": 0.040, "msp_augrc": 0.043, "doctor_augrc": 0.043,
              "maxlogit_augrc": 0.045}
    assert gap(0.040, sweep, report) == pytest.approx(-0.003)
    assert gap(0.040, sweep, {"augrc": 0.040}) == pytest.approx(-0.46)  # the sweep's
